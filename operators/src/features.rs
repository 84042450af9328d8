//! Per-asset feature vectors: an asset's sensors aligned to event-time buckets, smoothed, and
//! optionally turned into rates, one vector per bucket.
//!
//! A feature is named by what it computes, and the name is the whole specification, so a
//! model artifact's feature list tells the dataflow exactly what to compute:
//!
//! ```text
//! Pressure:ma15          the trailing mean of the Pressure sensor over 15 buckets
//! Temperature:ma15:diff30  that mean now less that mean 30 buckets ago (a rate)
//! Current                the bucket's value as it is (same as Current:ma1)
//! ```
//!
//! The sensor is the last `/`-separated segment of a `sensor_id` (`line1-pump-00/Pressure`).
//!
//! # Alignment
//!
//! A sensor's value in a bucket is the mean of its readings in that bucket. A sensor that said
//! nothing in a bucket keeps its previous value (carry-forward); one that has never spoken is
//! missing (NaN, which the k-means scorer treats as missing). The moving mean and the rate
//! count buckets that were emitted, not wall time: at the start there are fewer than `ma`
//! buckets and the mean is over those, and a rate looks back to the first bucket when there
//! are fewer than `diff` (the same, causal, rule offline training uses, so that training and
//! serving compute identical features).
//!
//! Training ([`FeatureState::push`] over the training data) and the dataflow use this one
//! implementation.

/// One feature, parsed from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureDef {
    /// The sensor's name within its asset: the last segment of its `sensor_id`.
    pub sensor: String,
    /// Trailing mean over this many buckets (1: the bucket's own value).
    pub smoothing: u32,
    /// When set, the feature is the smoothed value less the smoothed value this many buckets
    /// earlier.
    pub lag: Option<u32>,
}

/// A feature name that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("feature `{name}`: {why} (expected SENSOR[:maN][:diffN])")]
pub struct FeatureError {
    pub name: String,
    pub why: String,
}

/// Bounds that keep per-asset state small.
pub const MAX_WINDOW: u32 = 10_000;

impl FeatureDef {
    pub fn parse(name: &str) -> Result<FeatureDef, FeatureError> {
        let err = |why: &str| FeatureError { name: name.to_owned(), why: why.to_owned() };
        let mut parts = name.split(':');
        let sensor = parts.next().unwrap_or_default();
        if sensor.is_empty() || sensor.contains('/') {
            return Err(err("the sensor name must be non-empty and without `/`"));
        }
        let mut def = FeatureDef { sensor: sensor.to_owned(), smoothing: 1, lag: None };
        let mut seen_ma = false;
        for part in parts {
            let number = |prefix: &str| -> Result<u32, FeatureError> {
                let n: u32 =
                    part[prefix.len()..].parse().map_err(|_| err(&format!("`{part}` is not {prefix}N")))?;
                if n == 0 || n > MAX_WINDOW {
                    return Err(err(&format!("`{part}`: N must be in 1..={MAX_WINDOW}")));
                }
                Ok(n)
            };
            if part.starts_with("ma") && !seen_ma && def.lag.is_none() {
                def.smoothing = number("ma")?;
                seen_ma = true;
            } else if part.starts_with("diff") && def.lag.is_none() {
                def.lag = Some(number("diff")?);
            } else {
                return Err(err(&format!("unexpected `{part}`")));
            }
        }
        Ok(def)
    }

    /// The canonical name (`parse(name()) == self`).
    pub fn name(&self) -> String {
        let mut name = self.sensor.clone();
        if self.smoothing != 1 || self.lag.is_some() {
            name.push_str(&format!(":ma{}", self.smoothing));
        }
        if let Some(lag) = self.lag {
            name.push_str(&format!(":diff{lag}"));
        }
        name
    }
}

/// The features of a model, and the distinct sensors they read.
#[derive(Debug, Clone, PartialEq)]
pub struct FeaturePlan {
    pub defs: Vec<FeatureDef>,
    /// Distinct sensor names, in order of first use.
    pub sensors: Vec<String>,
    /// For each def, its index in `sensors`.
    def_sensor: Vec<usize>,
}

impl FeaturePlan {
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<FeaturePlan, FeatureError> {
        let defs = names.iter().map(|n| FeatureDef::parse(n.as_ref())).collect::<Result<Vec<_>, _>>()?;
        let mut sensors: Vec<String> = Vec::new();
        let def_sensor = defs
            .iter()
            .map(|d| match sensors.iter().position(|s| *s == d.sensor) {
                Some(i) => i,
                None => {
                    sensors.push(d.sensor.clone());
                    sensors.len() - 1
                }
            })
            .collect();
        Ok(FeaturePlan { defs, sensors, def_sensor })
    }

    /// The index of `sensor` (a sensor name, not a full id) among [`Self::sensors`].
    pub fn sensor_index(&self, sensor: &str) -> Option<usize> {
        self.sensors.iter().position(|s| s == sensor)
    }

    pub fn width(&self) -> usize {
        self.defs.len()
    }
}

/// The sensor name of a `sensor_id`: its last `/`-separated segment.
pub fn sensor_name(sensor_id: &str) -> &str {
    sensor_id.rsplit('/').next().unwrap_or(sensor_id)
}

/// The rolling state of one asset's features: bounded by the plan's windows, never by time.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct FeatureState {
    /// The carried-forward value of each sensor.
    last: Vec<Option<f64>>,
    /// Per def: the last `smoothing` bucket values (only present ones).
    window: Vec<Ring>,
    /// Per def with a lag: the last `lag + 1` smoothed values.
    history: Vec<Ring>,
}

/// The last `capacity` values pushed (all of them when `capacity` is 0), in a fixed buffer:
/// once full, a push overwrites the oldest.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Ring {
    values: Vec<f64>,
    capacity: usize,
    /// Where the oldest value is once the buffer is full (0 until then).
    oldest: usize,
}

impl Ring {
    fn with_capacity(capacity: usize) -> Ring {
        Ring { values: Vec::with_capacity(capacity), capacity, oldest: 0 }
    }

    fn push(&mut self, value: f64) {
        if self.values.len() < self.capacity || self.capacity == 0 {
            self.values.push(value);
        } else {
            self.values[self.oldest] = value;
            self.oldest = if self.oldest + 1 == self.capacity { 0 } else { self.oldest + 1 };
        }
    }

    fn len(&self) -> usize {
        self.values.len()
    }

    fn oldest(&self) -> Option<f64> {
        self.values.get(self.oldest).copied()
    }

    /// The sum from the oldest value to the newest, in that order (so always the same
    /// rounding for the same values).
    fn sum(&self) -> f64 {
        let (newer, older) = self.values.split_at(self.oldest);
        older.iter().chain(newer).sum()
    }
}

impl FeatureState {
    pub fn new(plan: &FeaturePlan) -> FeatureState {
        FeatureState {
            last: vec![None; plan.sensors.len()],
            window: plan.defs.iter().map(|d| Ring::with_capacity(d.smoothing as usize)).collect(),
            history: plan
                .defs
                .iter()
                .map(|d| Ring::with_capacity(d.lag.map_or(0, |l| l as usize + 1)))
                .collect(),
        }
    }

    /// Closes one bucket. `values[s]` is the mean of sensor `s`'s readings in the bucket, or
    /// `None` when it sent none. Writes the bucket's feature vector into `out` (NaN for a
    /// feature whose sensor has never sent anything).
    pub fn push(&mut self, plan: &FeaturePlan, values: &[Option<f64>], out: &mut Vec<f64>) {
        for (last, value) in self.last.iter_mut().zip(values) {
            if let Some(v) = value.filter(|v| v.is_finite()) {
                *last = Some(v);
            }
        }
        out.clear();
        let defs = plan.defs.iter().zip(&plan.def_sensor).zip(self.window.iter_mut().zip(&mut self.history));
        for ((def, &sensor), (window, history)) in defs {
            let Some(value) = self.last[sensor] else {
                out.push(f64::NAN);
                continue;
            };
            window.push(value);
            // Summed afresh: windows are short, and a running sum would drift over months.
            let smoothed = window.sum() / window.len() as f64;
            match def.lag {
                None => out.push(smoothed),
                Some(_) => {
                    history.push(smoothed);
                    out.push(smoothed - history.oldest().unwrap_or(smoothed));
                }
            }
        }
    }
}

/// Accumulates one bucket's readings per sensor (sum and count), for [`FeatureState::push`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct BucketAccumulator {
    sums: Vec<(f64, u32)>,
    values: Vec<Option<f64>>,
}

impl BucketAccumulator {
    pub fn new(sensors: usize) -> BucketAccumulator {
        BucketAccumulator { sums: vec![(0.0, 0); sensors], values: Vec::with_capacity(sensors) }
    }

    pub fn add(&mut self, sensor: usize, value: f64) {
        if let Some(s) = self.sums.get_mut(sensor) {
            s.0 += value;
            s.1 += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sums.iter().all(|s| s.1 == 0)
    }

    /// The per-sensor means, resetting the accumulator.
    pub fn take(&mut self) -> &[Option<f64>] {
        self.values.clear();
        for s in &mut self.sums {
            self.values.push((s.1 > 0).then(|| s.0 / f64::from(s.1)));
            *s = (0.0, 0);
        }
        &self.values
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_parse_and_round_trip() {
        let d = FeatureDef::parse("Temperature:ma15:diff30").unwrap();
        assert_eq!(d, FeatureDef { sensor: "Temperature".into(), smoothing: 15, lag: Some(30) });
        assert_eq!(d.name(), "Temperature:ma15:diff30");
        assert_eq!(FeatureDef::parse("Current").unwrap().smoothing, 1);
        assert_eq!(FeatureDef::parse("Current:diff5").unwrap().name(), "Current:ma1:diff5");
        for bad in
            ["", ":ma3", "a/b", "x:ma0", "x:ma", "x:diff3:ma2", "x:ma2:ma3", "x:foo", "x:ma99999999999"]
        {
            let e = FeatureDef::parse(bad).unwrap_err();
            assert!(e.to_string().contains("expected SENSOR"), "{bad}: {e}");
        }
    }

    #[test]
    fn smoothing_rates_and_carry_forward_match_the_offline_rule() {
        let plan = FeaturePlan::from_names(&["A:ma2", "B:ma1:diff2", "C"]).unwrap();
        assert_eq!(plan.sensors, vec!["A", "B", "C"]);
        let mut state = FeatureState::new(&plan);
        let mut out = Vec::new();
        state.push(&plan, &[Some(1.0), Some(10.0), None], &mut out);
        assert_eq!(out[..2], [1.0, 0.0]);
        assert!(out[2].is_nan(), "C has never spoken");
        state.push(&plan, &[Some(3.0), Some(11.0), Some(5.0)], &mut out);
        assert_eq!(out, vec![2.0, 1.0, 5.0]);
        // A and C silent: carried forward.
        state.push(&plan, &[None, Some(13.0), None], &mut out);
        assert_eq!(out, vec![3.0, 3.0, 5.0]);
        state.push(&plan, &[Some(5.0), Some(14.0), None], &mut out);
        assert_eq!(out, vec![4.0, 3.0, 5.0], "B: 14 less the value two buckets back (11)");
    }

    #[test]
    fn buckets_average_their_readings() {
        let mut acc = BucketAccumulator::new(2);
        assert!(acc.is_empty());
        acc.add(0, 1.0);
        acc.add(0, 3.0);
        acc.add(7, 1.0); // out of range: ignored
        assert_eq!(acc.take(), &[Some(2.0), None]);
        assert!(acc.is_empty());
    }

    proptest! {
        #[test]
        fn features_are_finite_once_every_sensor_has_spoken(
            buckets in proptest::collection::vec(proptest::collection::vec(proptest::option::of(-1e6f64..1e6), 3), 1..60),
            ma in 1u32..20, lag in 1u32..20,
        ) {
            let names = [format!("A:ma{ma}"), format!("B:ma{ma}:diff{lag}"), "C".to_owned()];
            let plan = FeaturePlan::from_names(&names).unwrap();
            let mut state = FeatureState::new(&plan);
            let mut seen = [false; 3];
            let mut out = Vec::new();
            for bucket in &buckets {
                state.push(&plan, bucket, &mut out);
                for (s, v) in bucket.iter().enumerate() { seen[s] |= v.is_some(); }
                prop_assert_eq!(out.len(), 3);
                for (s, &seen) in seen.iter().enumerate() {
                    prop_assert_eq!(out[s].is_finite(), seen);
                }
            }
        }

        /// The windows are sums over a fixed buffer: bit for bit what sums over a queue
        /// (oldest dropped, newest pushed) give, so trained models and served features agree.
        #[test]
        fn windows_sum_like_a_queue_bit_for_bit(
            buckets in proptest::collection::vec(proptest::collection::vec(proptest::option::of(-1e9f64..1e9), 2), 1..80),
            ma in 1u32..12, lag in 1u32..12,
        ) {
            let names = [format!("A:ma{ma}"), format!("B:ma{ma}:diff{lag}")];
            let plan = FeaturePlan::from_names(&names).unwrap();
            let mut state = FeatureState::new(&plan);
            let (mut last, mut window, mut history) = ([None::<f64>; 2], [VecDeque::new(), VecDeque::new()], VecDeque::new());
            let mut out = Vec::new();
            for bucket in &buckets {
                state.push(&plan, bucket, &mut out);
                for (s, v) in bucket.iter().enumerate() {
                    if v.is_some() { last[s] = *v; }
                }
                for (s, expected) in out.iter().enumerate() {
                    let Some(value) = last[s] else { prop_assert!(expected.is_nan()); continue };
                    if window[s].len() == ma as usize { window[s].pop_front(); }
                    window[s].push_back(value);
                    let smoothed = window[s].iter().sum::<f64>() / window[s].len() as f64;
                    let feature = if s == 0 {
                        smoothed
                    } else {
                        if history.len() == lag as usize + 1 { history.pop_front(); }
                        history.push_back(smoothed);
                        smoothed - history[0]
                    };
                    prop_assert_eq!(expected.to_bits(), feature.to_bits());
                }
            }
        }

        #[test]
        fn parse_never_panics(name in ".{0,40}") {
            if let Ok(d) = FeatureDef::parse(&name) {
                prop_assert_eq!(FeatureDef::parse(&d.name()).unwrap(), d);
            }
        }
    }
}
