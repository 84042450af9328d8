//! Per-sensor validation and scoring: the stateful step every accepted reading goes through,
//! in event-time order, after the dataflow has grouped readings by sensor.
//!
//! The same code runs inside the timely operator and in the benchmark's hand-written loop, so
//! the two do identical work.

use millstream_events::{EventTime, Reason};
use serde::{Deserialize, Serialize};

use crate::detector::{RobustZ, RobustZConfig, Verdict};

/// What to do with a reading older than the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Keep it, flagged `late`, without stateful scoring (the default).
    #[default]
    Keep,
    /// Send it to the dead letters with reason `late`.
    DeadLetter,
}

impl std::str::FromStr for LatePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "keep" => Ok(LatePolicy::Keep),
            "dead_letter" | "dead-letter" => Ok(LatePolicy::DeadLetter),
            other => Err(format!("unknown late policy `{other}` (expected keep or dead_letter)")),
        }
    }
}

/// The stuck-sensor rule: a sensor that used to vary and then repeats exactly the same value
/// `repeats` readings in a row, or for `duration_ms` of event time, is stuck until its value
/// changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StuckConfig {
    /// Consecutive identical readings that make a stuck sensor; 0 turns this rule off.
    pub repeats: u32,
    /// A flat line this long (ms of event time, at least two readings) makes a stuck sensor;
    /// 0 turns this rule off.
    pub duration_ms: u64,
}

impl Default for StuckConfig {
    fn default() -> Self {
        StuckConfig { repeats: 30, duration_ms: 0 }
    }
}

/// The `detector` of stuck-sensor anomalies.
pub const STUCK_DETECTOR: &str = "stuck";

/// How many recent readings a sensor remembers to recognise a late exact repeat.
const RECENT: usize = 32;

/// The state of one sensor (serialisable: checkpoints carry it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SensorState {
    detector: RobustZ,
    /// The newest on-time timestamp, and the values already accepted at it: on-time readings
    /// arrive in time order, so an on-time repeat can only match these.
    last_ts: Option<EventTime>,
    values_at_last_ts: Vec<u64>,
    /// A ring of recent (ts, value bits), for late repeats.
    recent: [(EventTime, u64); RECENT],
    recent_len: usize,
    recent_next: usize,
    /// Length of the current run of identical values, and the event time it began.
    repeat_run: u32,
    repeat_since: EventTime,
    /// The current run was found stuck.
    stuck: bool,
}

impl Default for SensorState {
    fn default() -> Self {
        SensorState {
            detector: RobustZ::new(),
            last_ts: None,
            values_at_last_ts: Vec::new(),
            recent: [(0, 0); RECENT],
            recent_len: 0,
            recent_next: 0,
            repeat_run: 0,
            repeat_since: 0,
            stuck: false,
        }
    }
}

/// What became of one reading.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Scored by the detector (its state updated). `stuck` is true on the reading that
    /// completes a stuck run (once per run), `unstuck` on the first reading after a stuck run.
    Scored { verdict: Verdict, stuck: bool, unstuck: bool },
    /// Late and kept: flagged, not scored.
    LateKept,
    /// Refused: `duplicate`, or `late` under [`LatePolicy::DeadLetter`].
    Rejected(Reason),
}

impl SensorState {
    /// Validates and scores one reading. Readings must arrive in the dataflow's order: on-time
    /// ones by event time, late ones where the source's watermark placed them.
    pub fn process(
        &mut self,
        ts: EventTime,
        value: f64,
        late: bool,
        policy: LatePolicy,
        detector: &RobustZConfig,
        stuck: &StuckConfig,
    ) -> Outcome {
        let bits = value.to_bits();
        if late {
            if self.recent_contains(ts, bits) {
                return Outcome::Rejected(Reason::Duplicate);
            }
            if policy == LatePolicy::DeadLetter {
                return Outcome::Rejected(Reason::Late);
            }
            self.remember(ts, bits);
            return Outcome::LateKept;
        }
        if self.last_ts == Some(ts) {
            if self.values_at_last_ts.contains(&bits) {
                return Outcome::Rejected(Reason::Duplicate);
            }
            self.values_at_last_ts.push(bits);
        } else if self.recent_contains(ts, bits) {
            // An earlier late reading that was kept can be repeated on time only when a
            // reading is both late and early, i.e. never in order; checked for safety.
            return Outcome::Rejected(Reason::Duplicate);
        } else {
            self.last_ts = Some(ts);
            self.values_at_last_ts.clear();
            self.values_at_last_ts.push(bits);
        }
        self.remember(ts, bits);
        let repeat = self.detector.count() > 0 && self.detector.last_value() == Some(value);
        let unstuck = !repeat && std::mem::take(&mut self.stuck);
        if unstuck {
            // The baseline learnt the flat line; the jump back is the signal returning (the
            // stuck episode covers it), not an outlier.
            self.detector.restart_level(value);
        }
        if repeat {
            self.repeat_run = self.repeat_run.saturating_add(1);
        } else {
            self.repeat_run = 1;
            self.repeat_since = ts;
        }
        let noisy = self.detector.has_noise(detector);
        let verdict = self.detector.observe(value, detector);
        let long = (stuck.repeats > 0 && self.repeat_run >= stuck.repeats)
            || (stuck.duration_ms > 0
                && self.repeat_run >= 2
                && ts.saturating_sub(self.repeat_since) >= stuck.duration_ms);
        let began = long && noisy && !self.stuck;
        self.stuck |= began;
        Outcome::Scored { verdict, stuck: began, unstuck }
    }

    pub fn detector(&self) -> &RobustZ {
        &self.detector
    }

    fn remember(&mut self, ts: EventTime, bits: u64) {
        self.recent[self.recent_next] = (ts, bits);
        self.recent_next = (self.recent_next + 1) % RECENT;
        self.recent_len = (self.recent_len + 1).min(RECENT);
    }

    fn recent_contains(&self, ts: EventTime, bits: u64) -> bool {
        self.recent[..self.recent_len].contains(&(ts, bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: &mut SensorState, ts: EventTime, value: f64, late: bool, policy: LatePolicy) -> Outcome {
        state.process(ts, value, late, policy, &RobustZConfig::default(), &StuckConfig::default())
    }

    #[test]
    fn a_varying_sensor_that_repeats_is_stuck_once_per_run() {
        let mut s = SensorState::default();
        let mut stuck_at = Vec::new();
        for ts in 0..400u64 {
            let value =
                if (100..200).contains(&ts) || (250..300).contains(&ts) { 7.0 } else { (ts % 7) as f64 };
            if let Outcome::Scored { stuck: true, .. } = run(&mut s, ts, value, false, LatePolicy::Keep) {
                stuck_at.push(ts);
            }
        }
        // Runs start at 100 and 250 (the first 7.0 is the run's first reading).
        assert_eq!(stuck_at, vec![129, 279]);
    }

    #[test]
    fn the_jump_back_after_a_stuck_run_is_not_an_outlier() {
        let mut s = SensorState::default();
        let noisy = |ts: u64| 50.0 + ((ts * 37) % 11) as f64 * 0.1;
        for ts in 0..200u64 {
            run(&mut s, ts, noisy(ts), false, LatePolicy::Keep);
        }
        for ts in 200..260u64 {
            run(&mut s, ts, 10.0, false, LatePolicy::Keep); // stuck far below the signal
        }
        match run(&mut s, 260, noisy(260), false, LatePolicy::Keep) {
            Outcome::Scored { verdict, unstuck, .. } => {
                assert!(unstuck);
                assert_eq!(verdict.severity, None, "{verdict:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_constant_sensor_is_not_stuck() {
        let mut s = SensorState::default();
        for ts in 0..200u64 {
            assert!(matches!(
                run(&mut s, ts, 3.0, false, LatePolicy::Keep),
                Outcome::Scored { stuck: false, .. }
            ));
        }
    }

    #[test]
    fn exact_repeats_are_duplicates_and_near_repeats_are_not() {
        let mut s = SensorState::default();
        assert!(matches!(run(&mut s, 1, 1.0, false, LatePolicy::Keep), Outcome::Scored { .. }));
        assert_eq!(run(&mut s, 1, 1.0, false, LatePolicy::Keep), Outcome::Rejected(Reason::Duplicate));
        assert!(matches!(run(&mut s, 1, 2.0, false, LatePolicy::Keep), Outcome::Scored { .. }));
        assert!(matches!(run(&mut s, 2, 1.0, false, LatePolicy::Keep), Outcome::Scored { .. }));
        assert!(matches!(run(&mut s, 3, 0.0, false, LatePolicy::Keep), Outcome::Scored { .. }));
        assert!(matches!(run(&mut s, 3, -0.0, false, LatePolicy::Keep), Outcome::Scored { .. }));
    }

    #[test]
    fn late_readings_follow_the_policy_and_late_repeats_are_duplicates() {
        let mut s = SensorState::default();
        for ts in 10..20 {
            run(&mut s, ts, ts as f64, false, LatePolicy::Keep);
        }
        assert_eq!(run(&mut s, 12, 12.0, true, LatePolicy::Keep), Outcome::Rejected(Reason::Duplicate));
        assert_eq!(run(&mut s, 5, 1.0, true, LatePolicy::Keep), Outcome::LateKept);
        assert_eq!(run(&mut s, 5, 1.0, true, LatePolicy::Keep), Outcome::Rejected(Reason::Duplicate));
        assert_eq!(run(&mut s, 6, 1.0, true, LatePolicy::DeadLetter), Outcome::Rejected(Reason::Late));
        let count = s.detector().count();
        assert_eq!(count, 10, "late readings never reach the detector");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    proptest! {
        /// On-time readings in event-time order: exactly the exact repeats are duplicates,
        /// everything else is scored, and the detector sees each scored reading once.
        #[test]
        fn on_time_duplicates_are_exactly_the_repeats(
            steps in prop::collection::vec((0u64..3, prop::collection::vec(0u8..4, 1..4)), 1..80)
        ) {
            let mut state = SensorState::default();
            let (mut ts, mut seen, mut scored) = (0u64, HashSet::new(), 0u64);
            for (advance, values) in steps {
                ts += advance;
                for v in values {
                    let value = f64::from(v);
                    let fresh = seen.insert((ts, v));
                    let outcome = state.process(ts, value, false, LatePolicy::Keep,
                        &RobustZConfig::default(), &StuckConfig::default());
                    match outcome {
                        Outcome::Scored { .. } => { prop_assert!(fresh); scored += 1; }
                        Outcome::Rejected(Reason::Duplicate) => prop_assert!(!fresh),
                        other => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
            }
            prop_assert_eq!(state.detector().count(), scored);
        }

        /// Late readings never reach the detector, whatever the policy.
        #[test]
        fn late_readings_skip_the_detector(
            values in prop::collection::vec(-1e6f64..1e6, 1..60),
            late_mask in prop::collection::vec(any::<bool>(), 60),
            dead_letter in any::<bool>(),
        ) {
            let policy = if dead_letter { LatePolicy::DeadLetter } else { LatePolicy::Keep };
            let mut state = SensorState::default();
            let mut on_time = 0;
            for (i, value) in values.iter().enumerate() {
                let late = late_mask[i];
                let outcome = state.process(1000 + i as u64, *value, late, policy,
                    &RobustZConfig::default(), &StuckConfig::default());
                match (late, outcome) {
                    (false, Outcome::Scored { .. }) => on_time += 1,
                    (true, Outcome::LateKept) => prop_assert_eq!(policy, LatePolicy::Keep),
                    (true, Outcome::Rejected(Reason::Late)) => prop_assert_eq!(policy, LatePolicy::DeadLetter),
                    (_, Outcome::Rejected(Reason::Duplicate)) => {}
                    (late, other) => prop_assert!(false, "late={late}: {other:?}"),
                }
            }
            prop_assert_eq!(state.detector().count(), on_time);
        }
    }
}
