//! The Kafka source's part of a checkpoint: per partition, where reading stands at a boundary,
//! and which records read before it were emitted at times at or after it (they are not in any
//! other component's state yet, so a restore emits them again, at the same times).

use std::collections::VecDeque;

use millstream_events::EventTime;
use serde::{Deserialize, Serialize};

/// The component name of the source's parts.
pub const COMPONENT: &str = "kafka_source";

/// One partition at a boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPartition {
    pub topic: String,
    pub partition: i32,
    /// The next offset to read.
    pub next_offset: i64,
    /// The partition watermark's largest event time seen.
    pub max_seen: Option<EventTime>,
    /// Records read and emitted at or after the boundary, in offset order. There can be as
    /// many as the in-flight budget: stored as varint deltas (a few bytes each, not 17).
    #[serde(with = "compact")]
    pub in_flight: Vec<InFlight>,
}

/// [`SavedPartition::in_flight`] as varint-encoded deltas: offsets mostly step by one and
/// times by little, so most entries take two or three bytes.
mod compact {
    use bincode::Options;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::InFlight;

    pub fn serialize<S: Serializer>(entries: &[InFlight], s: S) -> Result<S::Ok, S::Error> {
        let mut previous = (0i64, 0u64);
        let deltas: Vec<(i64, i64, bool)> = entries
            .iter()
            .map(|e| {
                let delta =
                    (e.offset.wrapping_sub(previous.0), e.stamp.wrapping_sub(previous.1) as i64, e.late);
                previous = (e.offset, e.stamp);
                delta
            })
            .collect();
        let bytes = bincode::DefaultOptions::new().serialize(&deltas).map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<InFlight>, D::Error> {
        let bytes: Vec<u8> = Deserialize::deserialize(d)?;
        let deltas: Vec<(i64, i64, bool)> =
            bincode::DefaultOptions::new().deserialize(&bytes).map_err(serde::de::Error::custom)?;
        let mut previous = (0i64, 0u64);
        Ok(deltas
            .into_iter()
            .map(|(offset, stamp, late)| {
                previous = (previous.0.wrapping_add(offset), previous.1.wrapping_add(stamp as u64));
                InFlight { offset: previous.0, stamp: previous.1, late }
            })
            .collect())
    }
}

/// A record emitted at `stamp`, and whether it was late.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub offset: i64,
    pub stamp: EventTime,
    pub late: bool,
}

/// A restored partition's re-reading: records before `until` are emitted again only if listed
/// (at their recorded time), the others were applied before the boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    pub until: i64,
    pub entries: VecDeque<InFlight>,
}

impl SavedPartition {
    /// Where to start reading, and what to replay, for a restore at `boundary`.
    pub fn resume(&self, boundary: EventTime) -> (i64, Option<Replay>) {
        let entries: VecDeque<InFlight> =
            self.in_flight.iter().copied().filter(|e| e.stamp >= boundary).collect();
        let start = entries.front().map_or(self.next_offset, |e| e.offset.min(self.next_offset));
        let replay = (start < self.next_offset).then_some(Replay { until: self.next_offset, entries });
        (start, replay)
    }
}

/// What a replaying partition does with the record at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replayed {
    /// Emit it again at this time, late or not.
    Emit { stamp: EventTime, late: bool },
    /// It was applied before the boundary.
    Skip,
    /// The replay is over: process it as new.
    Done,
}

impl Replay {
    pub fn next(&mut self, offset: i64) -> Replayed {
        if offset >= self.until {
            return Replayed::Done;
        }
        while self.entries.front().is_some_and(|e| e.offset < offset) {
            self.entries.pop_front();
        }
        match self.entries.front() {
            Some(e) if e.offset == offset => {
                let e = self.entries.pop_front().expect("front exists");
                Replayed::Emit { stamp: e.stamp, late: e.late }
            }
            _ => Replayed::Skip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_lists_round_trip_compactly() {
        let in_flight: Vec<InFlight> = (0..10_000i64)
            .map(|i| InFlight {
                offset: 1_000 + i,
                stamp: 1_772_323_200_000 + (i as u64 / 7) * 1_000,
                late: i % 97 == 0,
            })
            .chain([InFlight { offset: i64::MAX, stamp: 0, late: false }])
            .collect();
        let saved = SavedPartition {
            topic: "t".into(),
            partition: 3,
            next_offset: 20_000,
            max_seen: Some(5),
            in_flight,
        };
        let bytes = millstream_events::checkpoint::encode(&saved);
        assert!(bytes.len() < 4 * 10_001, "{} bytes for 10 001 entries", bytes.len());
        let back: SavedPartition = millstream_events::checkpoint::decode(COMPONENT, &bytes).unwrap();
        assert_eq!(back, saved);
    }

    #[test]
    fn replays_exactly_the_records_at_or_after_the_boundary() {
        let saved = SavedPartition {
            topic: "t".into(),
            partition: 0,
            next_offset: 10,
            max_seen: Some(500),
            in_flight: vec![
                InFlight { offset: 3, stamp: 90, late: false },
                InFlight { offset: 5, stamp: 120, late: false },
                InFlight { offset: 8, stamp: 100, late: true },
            ],
        };
        let (start, replay) = saved.resume(100);
        assert_eq!(start, 5, "offset 3 was emitted before the boundary");
        let mut replay = replay.unwrap();
        assert_eq!(replay.next(5), Replayed::Emit { stamp: 120, late: false });
        assert_eq!(replay.next(6), Replayed::Skip);
        assert_eq!(replay.next(7), Replayed::Skip);
        assert_eq!(replay.next(8), Replayed::Emit { stamp: 100, late: true });
        assert_eq!(replay.next(9), Replayed::Skip);
        assert_eq!(replay.next(10), Replayed::Done);
        let (start, replay) = saved.resume(200);
        assert_eq!((start, replay), (10, None), "nothing in flight: start where reading stood");
    }
}
