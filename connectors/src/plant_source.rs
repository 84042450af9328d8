//! The `simulate` source: the plant simulator as a timely source.
//!
//! Assets are spread over all workers (`asset % peers`); every worker advances its assets
//! through simulated time in lockstep. A record delivered at `d` is late when its event time
//! is more than the allowed lateness before `d`; late records and dead letters are stamped
//! `d − lateness`. Stamps depend only on the record, so outputs do not depend on the number of
//! workers.

use std::iter::Peekable;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use millstream_events::decode::decode_json;
use millstream_events::{
    Accepted, DeadLetter, EventTime, Ingested, Origin, RawRef, Reading, SourceLocation, TimeModel,
};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

use crate::simulate::{AssetStream, SimPayload, Simulator, SimulatorConfig};
use crate::RecordResolver;

/// A simulator plus how to pace it.
#[derive(Debug)]
pub struct SimulatedPlant {
    pub simulator: Simulator,
    /// `None`: as fast as possible. `Some(s)`: `s` simulated seconds per wall-clock second.
    pub realtime_speed: Option<f64>,
    asset_ids: Vec<String>,
}

impl SimulatedPlant {
    pub fn new(config: SimulatorConfig, realtime_speed: Option<f64>) -> Self {
        let simulator = Simulator::new(config);
        let asset_ids = simulator.asset_ids();
        SimulatedPlant { simulator, realtime_speed, asset_ids }
    }

    /// Builds from `simulate:key=value,…` options: `seed`, `assets`, `steps`, `period_ms`,
    /// `start` (RFC 3339 or epoch ms), `faults`, `delivery_faults` (true/false), `realtime`
    /// (speed factor; 1 = wall-clock pace).
    pub fn from_options(options: &[(String, String)]) -> Result<Self, String> {
        let mut config = SimulatorConfig::default();
        let mut realtime = None;
        for (key, value) in options {
            let bad = |what: &str| format!("option {key}={value}: expected {what}");
            match key.as_str() {
                "seed" => config.seed = value.parse().map_err(|_| bad("an integer"))?,
                "assets" => config.assets = value.parse().map_err(|_| bad("an integer"))?,
                "steps" => config.steps = value.parse().map_err(|_| bad("an integer"))?,
                "period_ms" => {
                    config.period_ms = value.parse().ok().filter(|p| *p > 0).ok_or_else(|| bad("a positive integer"))?
                }
                "start" => {
                    config.start = match value.parse::<u64>() {
                        Ok(ms) => ms,
                        Err(_) => millstream_events::time::parse_rfc3339(value).map_err(|e| e.to_string())?,
                    }
                }
                "faults" => config.inject_faults = value.parse().map_err(|_| bad("true or false"))?,
                "delivery_faults" => config.delivery_faults = value.parse().map_err(|_| bad("true or false"))?,
                "realtime" => {
                    let speed: f64 = value.parse().map_err(|_| bad("a speed factor"))?;
                    if !(speed.is_finite() && speed > 0.0) {
                        return Err(bad("a positive speed factor"));
                    }
                    realtime = Some(speed);
                }
                other => {
                    return Err(format!(
                        "unknown option `{other}` (known: seed, assets, steps, period_ms, start, faults, delivery_faults, realtime)"
                    ))
                }
            }
        }
        // The whole run must fit in the contract's time range (to 9999-12-31): beyond it the
        // readings would be refused, and the source's clock would wrap.
        let span = config.steps.checked_mul(config.period_ms).and_then(|span| config.start.checked_add(span));
        if span.is_none_or(|end| end > millstream_events::time::MAX_EVENT_TIME) {
            return Err(format!(
                "start={} + steps={} × period_ms={} ends after 9999-12-31, the last time a reading may have",
                config.start, config.steps, config.period_ms
            ));
        }
        Ok(SimulatedPlant::new(config, realtime))
    }

    fn location(&self, asset: u32, seq: u64) -> SourceLocation {
        SourceLocation::Simulator { simulator: self.asset_ids[asset as usize].clone(), seq }
    }
}

impl RecordResolver for SimulatedPlant {
    fn raw_text(&self, accepted: &Accepted) -> String {
        accepted.reading.to_contract_json()
    }

    fn location(&self, accepted: &Accepted) -> SourceLocation {
        SimulatedPlant::location(self, accepted.origin.stream, accepted.origin.offset)
    }
}

/// Target records per activation, so a worker yields to the rest of the dataflow often.
const RECORDS_PER_BATCH: u64 = 8192;

pub fn simulator_source<'scope>(
    scope: Scope<'scope, EventTime>,
    plant: Arc<SimulatedPlant>,
    time: TimeModel,
) -> Stream<'scope, EventTime, Vec<Ingested>> {
    let (index, peers) = (scope.index() as u32, scope.peers() as u32);
    source(scope, "Simulate", move |capability, info| {
        let activator = scope.activator_for(Rc::clone(&info.address));
        let activations = scope.activations();
        let address = info.address;
        let config = plant.simulator.config().clone();
        let mut streams: Vec<(u32, Peekable<AssetStream>)> = (0..config.assets)
            .filter(|a| a % peers == index)
            .map(|a| (a, plant.simulator.asset_stream(a).peekable()))
            .collect();
        let per_step = (streams.len() * plant.simulator.sensors_per_asset()).max(1) as u64;
        let steps_per_batch =
            if plant.realtime_speed.is_some() { 1 } else { (RECORDS_PER_BATCH / per_step).max(1) };
        let mut now = config.start;
        let mut capability = Some(capability);
        if let Some(cap) = capability.as_mut() {
            cap.downgrade(&time.epoch(now.saturating_sub(time.allowed_lateness_ms)));
        }
        let wall_start = Instant::now();
        let mut batch: Vec<(EventTime, Ingested)> = Vec::new();
        move |output| {
            let Some(cap) = capability.as_mut() else { return };
            if let Some(speed) = plant.realtime_speed {
                let due = wall_start + Duration::from_secs_f64((now - config.start) as f64 / 1000.0 / speed);
                let wait = due.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    activations.borrow_mut().activate_after(&address, wait);
                    return;
                }
            }
            let until = now + steps_per_batch * config.period_ms;
            for (asset, stream) in streams.iter_mut() {
                while let Some(record) = stream.next_if(|r| r.delivered_at < until) {
                    batch.push(stamp(&plant, *asset, record.delivered_at, record.seq, record.payload, time));
                }
            }
            batch.sort_by_key(|(time, _)| *time);
            let mut items = batch.drain(..).peekable();
            while let Some((time, first)) = items.next() {
                let time_cap = cap.delayed(&time);
                let mut session = output.session(&time_cap);
                session.give(first);
                while let Some((_, item)) = items.next_if(|(t, _)| *t == time) {
                    session.give(item);
                }
            }
            drop(items);
            now = until;
            if streams.iter_mut().all(|(_, s)| s.peek().is_none()) {
                capability = None;
            } else {
                cap.downgrade(&time.epoch(now.saturating_sub(time.allowed_lateness_ms)));
                activator.activate();
            }
        }
    })
}

fn stamp(
    plant: &SimulatedPlant,
    asset: u32,
    delivered_at: EventTime,
    seq: u64,
    payload: SimPayload,
    time: TimeModel,
) -> (EventTime, Ingested) {
    let watermark = delivered_at.saturating_sub(time.allowed_lateness_ms);
    let origin = Origin { stream: asset, offset: seq };
    let accept = |reading: Reading| {
        let late = reading.ts < watermark;
        let stamp = time.epoch(if late { watermark } else { reading.ts });
        (stamp, Ingested::Accepted(Accepted::new(reading, origin, RawRef::default(), late)))
    };
    match payload {
        SimPayload::Reading(reading) => accept(reading),
        SimPayload::Malformed(text) => match decode_json(text.as_bytes()) {
            Ok(reading) => accept(reading),
            Err(rejection) => (
                time.epoch(watermark),
                Ingested::Rejected(DeadLetter {
                    reason: rejection.reason,
                    detail: rejection.detail,
                    raw: text,
                    source: plant.location(asset, seq),
                }),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(text: &str) -> Vec<(String, String)> {
        text.split(',')
            .map(|kv| kv.split_once('=').unwrap())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn a_run_that_would_end_after_9999_is_refused() {
        assert!(SimulatedPlant::from_options(&options("assets=1,steps=100")).is_ok());
        for text in [
            "assets=2,steps=300,period_ms=18446744073709551615",
            "assets=1,steps=100,start=18446744073709551000",
            "assets=1,steps=2,start=253402300799999,period_ms=1",
        ] {
            let Err(err) = SimulatedPlant::from_options(&options(text)) else {
                panic!("{text} was accepted")
            };
            assert!(err.contains("ends after 9999-12-31"), "{text}: {err}");
        }
    }
}
