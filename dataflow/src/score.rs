//! The per-sensor stage: readings exchanged by `sensor_id`, buffered until the frontier
//! passes their time, then validated (duplicates, late policy) and scored in event-time order.

use std::collections::BTreeMap;
use std::sync::Arc;

use millstream_connectors::RecordResolver;
use millstream_events::event_id::event_id;
use millstream_events::{
    Accepted, Anomaly, DeadLetter, EventTime, Origin, Reading, ReadingRow, Reason, Severity, SinkEvent,
};
use millstream_operators::detector::{explain, RobustZ, Verdict};
use millstream_operators::sensor::{Outcome, SensorState, StuckConfig, STUCK_DETECTOR};
use rustc_hash::FxHashMap;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::config::PipelineConfig;
use crate::stats::RunStats;

/// Everything the stage (and the sinks after it) need besides the input: settings, the raw-text
/// resolver, and the process's shared counters and health.
pub struct RunContext {
    pub config: PipelineConfig,
    pub resolver: Arc<dyn RecordResolver>,
    pub stats: Arc<RunStats>,
    /// The PostgreSQL sinks' settings.
    pub postgres: crate::pg_sink::PgSinkSettings,
    /// The Kafka sink's settings, when there is one.
    pub kafka_sink: Option<crate::kafka_sink::KafkaSinkSettings>,
    /// Component health, for `/health/ready`.
    pub health: Arc<crate::health::Health>,
    /// Emit an event for every accepted reading (for `scores.jsonl` or the `readings` table);
    /// without it only anomalies and dead letters leave the stage.
    pub emit_readings: bool,
    /// The per-asset models, when a store is configured.
    pub models: Option<Arc<crate::models::ModelsSettings>>,
    /// The watcher's feed of model versions: taken by the worker that emits model updates
    /// (the first worker of process 0).
    pub model_feed: std::sync::Mutex<Option<crate::models::ModelFeed>>,
}

impl RunContext {
    /// Whether the sensor stage passes every accepted reading on: for the sinks, or for the
    /// asset stage, which needs them whatever the sinks want.
    pub fn readings_leave_sensor_stage(&self) -> bool {
        self.emit_readings || self.models.is_some()
    }
}

/// Routes a sensor to a worker; a fixed hash, so every process agrees.
pub fn sensor_route(sensor_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(sensor_id.as_bytes())
}

pub fn score_readings<'scope>(
    accepted: Stream<'scope, EventTime, Vec<Accepted>>,
    context: Arc<RunContext>,
) -> Stream<'scope, EventTime, Vec<SinkEvent>> {
    let pact = Exchange::new(|a: &Accepted| sensor_route(&a.reading.sensor_id));
    accepted.unary_frontier(pact, "ScoreSensors", move |_, _| {
        let mut sensor_index: FxHashMap<millstream_events::CompactString, u32> = FxHashMap::default();
        let mut sensors: Vec<SensorState> = Vec::new();
        let mut pending: BTreeMap<EventTime, Vec<(u32, Accepted)>> = BTreeMap::new();
        let mut capability: Option<Capability<EventTime>> = None;
        let mut events: Vec<SinkEvent> = Vec::new();
        let mut order: Vec<(u32, EventTime, Origin, u32)> = Vec::new();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                let Some(&time) = cap.least() else { return };
                if capability.as_ref().is_none_or(|c| time < *c.time()) {
                    capability = cap.retain_least(0);
                }
                let bucket = pending.entry(time).or_default();
                for accepted in data.drain(..) {
                    let index = match sensor_index.get(accepted.reading.sensor_id.as_str()) {
                        Some(&i) => i,
                        None => {
                            let i = sensors.len() as u32;
                            sensor_index.insert(accepted.reading.sensor_id.clone(), i);
                            sensors.push(SensorState::default());
                            i
                        }
                    };
                    bucket.push((index, accepted));
                }
            });
            let Some(cap) = capability.as_mut() else { return };
            let frontier = frontier.frontier();
            while let Some(entry) = pending.first_entry() {
                let time = *entry.key();
                if frontier.less_equal(&time) {
                    break;
                }
                let group = entry.remove();
                // Per sensor, by event time, ties by where the reading was read: the first copy
                // of an exact repeat is the one kept. Sort small keys, not the records: with
                // several workers an epoch's records arrive interleaved from every source.
                order.clear();
                order.extend(
                    group.iter().enumerate().map(|(pos, (i, a))| (*i, a.reading.ts, a.origin, pos as u32)),
                );
                if !order.is_sorted() {
                    order.sort_unstable();
                }
                let mut scored = 0;
                for &(index, _, _, pos) in &order {
                    let sensor = &mut sensors[index as usize];
                    scored += process(sensor, &group[pos as usize].1, time, &context, &mut events);
                }
                context.stats.readings.inc_by(group.len() as u64);
                context.stats.scored.inc_by(scored);
                if !events.is_empty() {
                    output.session(&cap.delayed(&time)).give_iterator(events.drain(..));
                }
            }
            match pending.first_key_value() {
                Some((&time, _)) => cap.downgrade(&time),
                None => capability = None,
            }
        }
    })
}

fn process(
    state: &mut SensorState,
    accepted: &Accepted,
    time: EventTime,
    context: &RunContext,
    events: &mut Vec<SinkEvent>,
) -> u64 {
    let config = &context.config;
    let reading = &accepted.reading;
    let outcome = state.process(
        reading.ts,
        reading.value,
        accepted.late,
        config.late_policy,
        &config.detector,
        &config.stuck,
    );
    match outcome {
        Outcome::Scored { verdict, stuck } => {
            if context.readings_leave_sensor_stage() {
                events.push(reading_event(accepted, verdict.score, false));
            }
            for anomaly in anomalies_of(reading, &verdict, stuck, &config.stuck) {
                context.stats.record_anomaly(&anomaly);
                events.push(SinkEvent::Anomaly(anomaly));
            }
            return 1;
        }
        Outcome::LateKept => {
            context.stats.late_kept.inc();
            if context.readings_leave_sensor_stage() {
                events.push(reading_event(accepted, 0.0, true));
            }
        }
        Outcome::Rejected(reason) => {
            let detail = match reason {
                Reason::Duplicate => {
                    "exact repeat of an earlier reading (same sensor_id, ts and value)".to_owned()
                }
                Reason::Late => format!(
                    "ts {} is older than the watermark {} (allowed lateness {} ms)",
                    millstream_events::time::format_rfc3339_millis(reading.ts),
                    millstream_events::time::format_rfc3339_millis(time),
                    config.allowed_lateness_ms
                ),
                other => other.as_str().to_owned(),
            };
            let dead = DeadLetter {
                reason,
                detail,
                raw: context.resolver.raw_text(accepted),
                source: context.resolver.location(accepted),
            };
            context.stats.record_dead_letter(&dead);
            events.push(SinkEvent::DeadLetter(dead));
        }
    }
    0
}

/// The anomaly events one scored reading raises: a robust-z outlier, a stuck sensor, or both.
pub fn anomalies_of(reading: &Reading, verdict: &Verdict, stuck: bool, rule: &StuckConfig) -> Vec<Anomaly> {
    let mut out = Vec::new();
    let event = |detector: &str, score: f64, severity: Severity, explanation: String| Anomaly {
        event_id: event_id("anomaly", detector, &reading.sensor_id, reading.ts),
        sensor_id: reading.sensor_id.to_string(),
        asset_id: reading.asset_id.to_string(),
        ts: reading.ts,
        value: reading.value,
        score,
        severity,
        detector: detector.to_owned(),
        model_version: None,
        explanation: Some(explanation),
        episode: None,
    };
    if let Some(severity) = verdict.severity {
        out.push(event(RobustZ::NAME, verdict.score, severity, explain(verdict, reading.value)));
    }
    if stuck {
        let why = format!("value {} repeated exactly {} times in a row", reading.value, rule.repeats);
        out.push(event(STUCK_DETECTOR, STUCK_SCORE, Severity::Medium, why));
    }
    out
}

/// Score of a stuck-sensor event: certain, but not as urgent as an extreme outlier.
const STUCK_SCORE: f64 = 0.8;

fn reading_event(accepted: &Accepted, score: f64, late: bool) -> SinkEvent {
    let r = &accepted.reading;
    SinkEvent::Reading(ReadingRow {
        sensor_id: r.sensor_id.clone(),
        asset_id: r.asset_id.clone(),
        unit: r.unit.clone(),
        ts: r.ts,
        value: r.value,
        score,
        late,
    })
}
