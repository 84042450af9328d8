//! What sources hand to the dataflow: an accepted reading with its provenance, or a dead letter.

use serde::{Deserialize, Serialize};

use crate::{DeadLetter, EventTime, Origin, Reading};

/// Where the original bytes of an accepted record can be found again, so that a later stage
/// (duplicate or late handling) can dead-letter it with its raw text without every reading
/// carrying a copy of its bytes. For files it is a byte range of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RawRef {
    pub byte_offset: u64,
    pub len: u32,
}

/// A reading that passed decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    pub reading: Reading,
    pub origin: Origin,
    pub raw: RawRef,
    /// Older than the source's watermark at the point it was read.
    pub late: bool,
    /// The route of `reading.sensor_id` ([`crate::routing::key_route`]), computed once where
    /// the record is made: the source batches by it and the exchange checks it, and hashing
    /// the identifier twice was a measurable cost at two workers. It fits in the struct's
    /// padding, so carrying it costs no memory.
    route: u32,
}

impl Accepted {
    /// An accepted reading, with its sensor's route computed here, once.
    pub fn new(reading: Reading, origin: Origin, raw: RawRef, late: bool) -> Accepted {
        let route = crate::routing::key_route(&reading.sensor_id) as u32;
        Accepted { reading, origin, raw, late, route }
    }

    /// The route of the reading's sensor, as [`crate::routing::key_route`] gives it.
    pub fn route(&self) -> u64 {
        u64::from(self.route)
    }
}

/// One record out of a source, stamped by the source with a deterministic event time.
#[derive(Debug, Clone, PartialEq)]
pub enum Ingested {
    Accepted(Accepted),
    Rejected(DeadLetter),
}

/// How sources turn event time into timely time.
///
/// Lateness is decided on exact event times; the timely timestamp is the event time rounded
/// down to an epoch of `epoch_ms`. Coarser epochs mean fewer distinct timestamps, so less
/// progress-tracking traffic between workers; within an epoch, operators still order readings
/// by their exact event time, so results do not depend on the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeModel {
    pub allowed_lateness_ms: u64,
    pub epoch_ms: u64,
    /// Readings more than this far ahead of the wall clock do not move event time (they are
    /// refused downstream as `future_timestamp`); `None`: every reading does.
    pub max_future_ms: Option<u64>,
}

impl TimeModel {
    /// The timely timestamp of event time `t`.
    pub fn epoch(&self, t: EventTime) -> EventTime {
        t - t % self.epoch_ms.max(1)
    }

    /// A fresh watermark with this model's allowed lateness.
    pub fn watermark(&self) -> Watermark {
        Watermark::new(self.allowed_lateness_ms).with_max_future(self.max_future_ms)
    }

    /// Whether `ts` is further ahead of the wall clock than the model lets event time move.
    pub fn is_future(&self, ts: EventTime) -> bool {
        self.max_future_ms.is_some_and(|f| ts > crate::time::now_ms().saturating_add(f))
    }
}

/// Allowed lateness arithmetic shared by every source: the watermark is the largest event
/// time seen less the allowed lateness, and a record older than the watermark is late.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Watermark {
    max_seen: Option<EventTime>,
    allowed_lateness_ms: u64,
    /// See [`TimeModel::max_future_ms`]: one reading with a wild clock must not make every
    /// later reading late.
    max_future_ms: Option<u64>,
}

impl Watermark {
    pub fn new(allowed_lateness_ms: u64) -> Self {
        Watermark { max_seen: None, allowed_lateness_ms, max_future_ms: None }
    }

    /// The same watermark, ignoring readings more than `max_future_ms` ahead of the wall clock.
    pub fn with_max_future(mut self, max_future_ms: Option<u64>) -> Self {
        self.max_future_ms = max_future_ms;
        self
    }

    /// Starts from the maximum of what came before (another chunk, another partition).
    pub fn resume(max_seen: Option<EventTime>, allowed_lateness_ms: u64) -> Self {
        Watermark { max_seen, allowed_lateness_ms, max_future_ms: None }
    }

    /// The current watermark; 0 before anything was seen.
    pub fn time(&self) -> EventTime {
        self.max_seen.map_or(0, |m| m.saturating_sub(self.allowed_lateness_ms))
    }

    pub fn max_seen(&self) -> Option<EventTime> {
        self.max_seen
    }

    /// Whether `ts` is older than the watermark.
    pub fn is_late(&self, ts: EventTime) -> bool {
        ts < self.time()
    }

    /// Records `ts`; returns whether it was late.
    pub fn observe(&mut self, ts: EventTime) -> bool {
        self.arrive(ts) == Arrival::Late
    }

    /// Records `ts` and says how it arrived.
    pub fn arrive(&mut self, ts: EventTime) -> Arrival {
        if self.is_late(ts) {
            return Arrival::Late;
        }
        let advances = self.max_seen.is_none_or(|m| ts > m);
        if advances && self.max_future_ms.is_some_and(|f| ts > crate::time::now_ms().saturating_add(f)) {
            return Arrival::Future; // refused downstream; it must not move event time
        }
        self.max_seen = Some(self.max_seen.map_or(ts, |m| m.max(ts)));
        Arrival::OnTime
    }
}

/// How a record's event time relates to the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    OnTime,
    /// Older than the watermark.
    Late,
    /// Too far ahead of the wall clock to be trusted: stamped at the watermark, like a late
    /// record, so it holds no time open, and refused downstream as `future_timestamp`.
    Future,
}

impl Arrival {
    /// The timely time of a record that arrived so: its own event time when on time, else
    /// `watermark`.
    pub fn stamp(self, ts: EventTime, watermark: EventTime) -> EventTime {
        match self {
            Arrival::OnTime => ts,
            Arrival::Late | Arrival::Future => watermark,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_round_down() {
        let model = TimeModel { allowed_lateness_ms: 0, epoch_ms: 1000, max_future_ms: None };
        assert_eq!(model.epoch(1_999), 1_000);
        assert_eq!(model.epoch(2_000), 2_000);
        assert_eq!(TimeModel { epoch_ms: 0, ..model }.epoch(1_999), 1_999);
    }

    #[test]
    fn jitter_within_lateness_is_not_late() {
        let mut wm = Watermark::new(5_000);
        assert!(!wm.observe(10_000));
        assert!(!wm.observe(6_000));
        assert!(!wm.observe(5_000));
        assert!(wm.observe(4_999));
        assert_eq!(wm.time(), 5_000);
        assert!(!wm.observe(20_000));
        assert_eq!(wm.time(), 15_000);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A reading is late exactly when it is older than the largest earlier on-time
        /// timestamp less the allowed lateness; the watermark never goes back.
        #[test]
        fn lateness_matches_its_definition(ts in prop::collection::vec(0u64..100_000, 0..200), lateness in 0u64..20_000) {
            let mut wm = Watermark::new(lateness);
            let mut max_on_time: Option<u64> = None;
            let mut last_time = 0;
            for t in ts {
                let expected = max_on_time.is_some_and(|m| t < m.saturating_sub(lateness));
                prop_assert_eq!(wm.observe(t), expected);
                if !expected {
                    max_on_time = Some(max_on_time.map_or(t, |m| m.max(t)));
                }
                prop_assert!(wm.time() >= last_time);
                last_time = wm.time();
            }
        }
    }
}
