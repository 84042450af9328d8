//! The fault schedule of one asset, drawn up front: signal faults (the ground truth a detector
//! is scored against) and delivery faults (duplicates, late and malformed records, which
//! exercise the dead-letter path and are not ground truth).

use millstream_events::fault::{FaultKind, InjectedFault};
use millstream_events::time::format_rfc3339_millis;
use millstream_events::Reading;

use super::plant::{splitmix64, Purpose, SimRng, NOISE_SIGMA, SENSORS, TEMPERATURE, VIBRATION};
use super::SimulatorConfig;

/// No fault touches the first samples of a sensor: detectors are still warming up.
pub const WARMUP_STEPS: u64 = 120;
/// Minimum gap, in samples, between two faults of the same sensor.
const MARGIN_STEPS: u64 = 30;
/// How long after its event time a late record is delivered.
pub const LATE_DELIVERY_MS: u64 = 120_000;
/// One spike per this many samples of an asset, on average.
const SAMPLES_PER_SPIKE: u64 = 600;
/// Rates of delivery faults: one per this many readings.
const READINGS_PER_DUPLICATE: u64 = 5_000;
const READINGS_PER_LATE: u64 = 10_000;
const READINGS_PER_MALFORMED: u64 = 5_000;
const MALFORMED_VARIANTS: u64 = 6;
const PLACEMENT_ATTEMPTS: usize = 64;

/// One signal fault on one sensor, in sample steps (`start..=end`).
#[derive(Debug, Clone, PartialEq)]
pub struct SignalFault {
    pub kind: FaultKind,
    pub start: u64,
    pub end: u64,
    /// Offset of a spike or level shift, or the final offset of a wear ramp, in the sensor's unit.
    pub magnitude: f64,
}

impl SignalFault {
    /// The value a sensor reports at `step` (inside the fault) given its clean value and the
    /// value it reported last. `None` for a dropout.
    #[inline]
    pub fn apply(&self, sensor: usize, step: u64, clean: f64, last: f64) -> Option<f64> {
        match self.kind {
            FaultKind::Spike | FaultKind::LevelShift => Some(clean + self.magnitude),
            FaultKind::BearingWear => {
                let frac = (step - self.start) as f64 / (self.end - self.start).max(1) as f64;
                let ramp = if sensor == VIBRATION { frac * frac } else { frac };
                Some(clean + self.magnitude * ramp)
            }
            FaultKind::Stuck => Some(last),
            FaultKind::Dropout => None,
        }
    }
}

/// What goes wrong in delivering one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered twice in a row.
    Duplicate,
    /// Delivered [`LATE_DELIVERY_MS`] after its event time.
    Late,
    /// Followed by a corrupted text copy of it (variant of [`malformed_line`]).
    Malformed(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryFault {
    pub step: u64,
    pub sensor: usize,
    pub kind: Delivery,
}

/// Every fault of one asset.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Per sensor, sorted by start, never overlapping.
    pub signal: [Vec<SignalFault>; SENSORS],
    /// Sorted by (step, sensor), at most one per reading, never on a reading a signal fault touches.
    pub delivery: Vec<DeliveryFault>,
    /// Readings missing because of dropouts.
    pub dropped: u64,
}

impl FaultPlan {
    pub fn build(config: &SimulatorConfig, asset: u32) -> Self {
        let mut plan = FaultPlan::default();
        if config.inject_faults {
            plan.schedule_signal_faults(config, asset);
        }
        plan.dropped = plan
            .signal
            .iter()
            .flatten()
            .filter(|f| f.kind == FaultKind::Dropout)
            .map(|f| f.end - f.start + 1)
            .sum();
        if config.delivery_faults {
            plan.schedule_delivery_faults(config, asset);
        }
        plan
    }

    /// Readings produced (each exactly once, however it is delivered).
    pub fn readings(&self, steps: u64) -> u64 {
        steps * SENSORS as u64 - self.dropped
    }

    /// Records the stream yields: readings, plus duplicate copies and malformed lines.
    pub fn records(&self, steps: u64) -> u64 {
        let extra = self.delivery.iter().filter(|d| d.kind != Delivery::Late).count() as u64;
        self.readings(steps) + extra
    }

    pub fn ground_truth(
        &self,
        config: &SimulatorConfig,
        asset_id: &str,
        sensor_ids: &[String],
    ) -> Vec<InjectedFault> {
        let ts = |step: u64| config.start + step * config.period_ms;
        self.signal
            .iter()
            .enumerate()
            .flat_map(|(sensor, faults)| {
                faults.iter().map(move |f| InjectedFault {
                    asset_id: asset_id.to_owned(),
                    sensor_id: sensor_ids[sensor].clone(),
                    kind: f.kind,
                    start: ts(f.start),
                    end: ts(f.end),
                })
            })
            .collect()
    }

    fn schedule_signal_faults(&mut self, config: &SimulatorConfig, asset: u32) {
        let steps = config.steps;
        let period = config.period_ms.max(1);
        let samples = |ms: u64| (ms / period).max(1);
        let mut rng = SimRng::new(config.seed, asset, Purpose::SignalFaults);

        // Bearing wear on one asset in each block of four: the last third of the run.
        let wear_magnitudes = (rng.uniform(2.5, 4.0), rng.uniform(2.0, 4.0));
        let wear_start = steps - steps / 3;
        if is_wear_asset(config.seed, asset) && wear_start >= WARMUP_STEPS && steps / 3 >= 2 {
            for (sensor, magnitude) in [(VIBRATION, wear_magnitudes.0), (TEMPERATURE, wear_magnitudes.1)] {
                self.signal[sensor].push(SignalFault {
                    kind: FaultKind::BearingWear,
                    start: wear_start,
                    end: steps - 1,
                    magnitude,
                });
            }
        }

        // A level shift of about 6σ for 3–6 minutes on half the assets.
        if rng.chance(1, 2) {
            let sensor = rng.below(0, SENSORS as u64) as usize;
            let len = samples(rng.below(180, 361) * 1000);
            let magnitude = rng.sign() * rng.uniform(5.5, 7.0) * NOISE_SIGMA[sensor];
            self.place(&mut rng, FaultKind::LevelShift, sensor, len, magnitude, steps);
        }
        // A stuck sensor for 2–5 minutes on three assets in eight.
        if rng.chance(3, 8) {
            let sensor = rng.below(0, SENSORS as u64) as usize;
            let len = samples(rng.below(120, 301) * 1000);
            self.place(&mut rng, FaultKind::Stuck, sensor, len, 0.0, steps);
        }
        // A dropout of 1–4 minutes on three assets in eight.
        if rng.chance(3, 8) {
            let sensor = rng.below(0, SENSORS as u64) as usize;
            let len = samples(rng.below(60, 241) * 1000);
            self.place(&mut rng, FaultKind::Dropout, sensor, len, 0.0, steps);
        }
        // Spikes: one per 600 samples on average, 9–13σ, on random sensors. Vibration spikes
        // are impacts and always positive; the others take a random sign.
        let spikes =
            steps / SAMPLES_PER_SPIKE + rng.chance(steps % SAMPLES_PER_SPIKE, SAMPLES_PER_SPIKE) as u64;
        for _ in 0..spikes {
            let sensor = rng.below(0, SENSORS as u64) as usize;
            let sign = if sensor == VIBRATION { 1.0 } else { rng.sign() };
            let magnitude = sign * rng.uniform(9.0, 13.0) * NOISE_SIGMA[sensor];
            self.place(&mut rng, FaultKind::Spike, sensor, 1, magnitude, steps);
        }
    }

    /// Puts a fault of `len` samples at a random free place of `sensor` after the warm-up;
    /// gives up (no fault) when none is found.
    fn place(
        &mut self,
        rng: &mut SimRng,
        kind: FaultKind,
        sensor: usize,
        len: u64,
        magnitude: f64,
        steps: u64,
    ) {
        if steps < WARMUP_STEPS + len {
            return;
        }
        let faults = &mut self.signal[sensor];
        for _ in 0..PLACEMENT_ATTEMPTS {
            let start = rng.below(WARMUP_STEPS, steps - len + 1);
            let end = start + len - 1;
            if faults.iter().all(|f| start > f.end + MARGIN_STEPS || f.start > end + MARGIN_STEPS) {
                let at = faults.partition_point(|f| f.start < start);
                faults.insert(at, SignalFault { kind, start, end, magnitude });
                return;
            }
        }
    }

    fn schedule_delivery_faults(&mut self, config: &SimulatorConfig, asset: u32) {
        let steps = config.steps;
        if steps == 0 {
            return;
        }
        let mut rng = SimRng::new(config.seed, asset, Purpose::DeliveryFaults);
        let readings = self.readings(steps);
        let count = |rng: &mut SimRng, per: u64| readings / per + rng.chance(readings % per, per) as u64;
        let wanted = [
            (Delivery::Duplicate, count(&mut rng, READINGS_PER_DUPLICATE)),
            (Delivery::Late, count(&mut rng, READINGS_PER_LATE)),
            (Delivery::Malformed(0), count(&mut rng, READINGS_PER_MALFORMED)),
        ];
        for (kind, n) in wanted {
            for _ in 0..n {
                for _ in 0..PLACEMENT_ATTEMPTS {
                    let step = rng.below(0, steps);
                    let sensor = rng.below(0, SENSORS as u64) as usize;
                    let kind = match kind {
                        Delivery::Malformed(_) => Delivery::Malformed(rng.below(0, MALFORMED_VARIANTS) as u8),
                        other => other,
                    };
                    let touched = self.signal[sensor].iter().any(|f| f.start <= step && step <= f.end);
                    let taken = self.delivery.iter().any(|d| d.step == step && d.sensor == sensor);
                    // A late record is delivered while the plant still runs: one delivered after
                    // the last sample would carry event time past the end of every sensor,
                    // which would all look silent.
                    let after_end = kind == Delivery::Late
                        && step.saturating_add(LATE_DELIVERY_MS.div_ceil(config.period_ms.max(1))) >= steps;
                    if !touched && !taken && !after_end {
                        self.delivery.push(DeliveryFault { step, sensor, kind });
                        break;
                    }
                }
            }
        }
        self.delivery.sort_by_key(|d| (d.step, d.sensor));
    }
}

/// One asset in each block of four consecutive assets wears its bearing; which one depends
/// on the seed and the block only.
pub fn is_wear_asset(seed: u64, asset: u32) -> bool {
    let block = (asset / 4) as u64;
    splitmix64(seed ^ 0x0bea_0000_0000_0000 ^ block) % 4 == (asset % 4) as u64
}

/// The contract's JSON form of a reading, as a producer would write it.
pub fn reading_json(r: &Reading, ts: &str, value: &str) -> String {
    let unit = r.unit.as_deref().unwrap_or("");
    format!(
        r#"{{"sensor_id":"{}","asset_id":"{}","ts":{ts},"value":{value},"unit":"{unit}"}}"#,
        r.sensor_id, r.asset_id
    )
}

/// A corrupted text copy of `r` that the decoder must dead-letter.
pub fn malformed_line(variant: u8, r: &Reading) -> String {
    let ts = format!("\"{}\"", format_rfc3339_millis(r.ts));
    let value = format!("{}", r.value);
    match variant {
        // Truncated mid-record, as by a producer killed while writing.
        0 => {
            let mut line = reading_json(r, &ts, &value);
            line.truncate(line.len() * 3 / 5);
            line
        }
        // No value at all.
        1 => format!(
            r#"{{"sensor_id":"{}","asset_id":"{}","ts":{ts},"unit":"{}"}}"#,
            r.sensor_id,
            r.asset_id,
            r.unit.as_deref().unwrap_or("")
        ),
        // A NaN, as Python's json.dumps writes it.
        2 => reading_json(r, &ts, "NaN"),
        // A value of the wrong type.
        3 => reading_json(r, &ts, "\"n/a\""),
        // An impossible hour.
        4 => {
            let mut bad = format_rfc3339_millis(r.ts);
            bad.replace_range(11..13, "25");
            reading_json(r, &format!("\"{bad}\""), &value)
        }
        // An empty sensor id.
        _ => {
            let empty = Reading { sensor_id: Default::default(), ..r.clone() };
            reading_json(&empty, &ts, &value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millstream_events::decode::decode_json;

    fn reading() -> Reading {
        Reading {
            sensor_id: "line1-pump-00/flow".into(),
            asset_id: "line1-pump-00".into(),
            ts: 1_772_323_200_000,
            value: 81.25,
            unit: Some("m3/h".into()),
        }
    }

    #[test]
    fn the_clean_json_decodes_and_every_malformed_variant_is_refused() {
        let r = reading();
        let ts = format!("\"{}\"", format_rfc3339_millis(r.ts));
        assert_eq!(decode_json(reading_json(&r, &ts, "81.25").as_bytes()).unwrap(), r);
        for variant in 0..MALFORMED_VARIANTS as u8 {
            let line = malformed_line(variant, &r);
            assert!(decode_json(line.as_bytes()).is_err(), "variant {variant} accepted: {line}");
        }
    }

    #[test]
    fn one_asset_in_four_wears() {
        for seed in 0..20 {
            for block in 0..10u32 {
                let n = (block * 4..block * 4 + 4).filter(|&a| is_wear_asset(seed, a)).count();
                assert_eq!(n, 1);
            }
        }
    }

    #[test]
    fn faults_never_overlap_and_respect_the_warm_up() {
        for seed in 0..50 {
            let config = SimulatorConfig { seed, ..SimulatorConfig::default() };
            let plan = FaultPlan::build(&config, (seed % 8) as u32);
            for faults in &plan.signal {
                for pair in faults.windows(2) {
                    assert!(pair[0].end + MARGIN_STEPS < pair[1].start, "{pair:?}");
                }
                assert!(faults.iter().all(|f| f.start >= WARMUP_STEPS && f.end < config.steps));
            }
        }
    }
}
