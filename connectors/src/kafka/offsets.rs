//! Which offsets of a partition may be committed: the contiguous prefix of records whose
//! results every durable sink has.
//!
//! The source stamps each record with a timely time. Records of one partition are emitted in
//! offset order, but their times are event times, so they are not in order. The ledger keeps
//! one entry per emitted batch (its largest time and the offset after it), in offset order; a
//! batch is durable once the durable frontier has passed its largest time, and the committable
//! offset is the end of the longest durable prefix. A durable batch behind one that is not
//! stays in the ledger: committing past it would skip the earlier batch's records on a restart.

use std::collections::VecDeque;

use millstream_events::EventTime;
use timely::progress::frontier::AntichainRef;

/// One partition's emitted-but-not-yet-durable records.
#[derive(Debug, Clone, Default)]
pub struct OffsetLedger {
    batches: VecDeque<Batch>,
    /// Records in `batches`: the partition's share of the source's in-flight budget.
    records: usize,
    /// Their message bytes: the partition's share of the in-flight byte budget.
    bytes: usize,
    /// The offset up to which (exclusive) everything is durable, if anything has been.
    durable: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
struct Batch {
    max_time: EventTime,
    next_offset: i64,
    records: usize,
    bytes: usize,
    /// When the batch was read: its records' ingest → durable latency ends when it is popped.
    read_at: std::time::Instant,
}

impl OffsetLedger {
    /// Records a batch of `records` records, read up to (exclusive) `next_offset`, whose
    /// largest time is `max_time`. A batch may be empty (`records == 0`): skipped offsets
    /// (transaction markers, compaction) still move the commit point once durable.
    pub fn push(&mut self, max_time: EventTime, next_offset: i64, records: usize) {
        self.push_bytes(max_time, next_offset, records, 0);
    }

    /// As [`Self::push`], with the batch's message bytes.
    pub fn push_bytes(&mut self, max_time: EventTime, next_offset: i64, records: usize, bytes: usize) {
        self.records += records;
        self.bytes += bytes;
        if let Some(last) = self.batches.back_mut() {
            if last.max_time == max_time {
                last.next_offset = next_offset;
                last.records += records;
                last.bytes += bytes;
                return;
            }
        }
        self.batches.push_back(Batch {
            max_time,
            next_offset,
            records,
            bytes,
            read_at: std::time::Instant::now(),
        });
    }

    /// Drops the durable prefix (batches whose largest time `durable` has passed) and
    /// returns the new commit point when it moved.
    pub fn advance(&mut self, durable: AntichainRef<'_, EventTime>) -> Option<i64> {
        self.advance_observing(durable, |_, _| {})
    }

    /// As [`Self::advance`], telling `durable_after` how long each durable batch took from
    /// being read to being durable, and how many records it held.
    pub fn advance_observing(
        &mut self,
        durable: AntichainRef<'_, EventTime>,
        mut durable_after: impl FnMut(std::time::Duration, usize),
    ) -> Option<i64> {
        let mut moved = None;
        while let Some(front) = self.batches.front() {
            if durable.less_equal(&front.max_time) {
                break;
            }
            if front.records > 0 {
                durable_after(front.read_at.elapsed(), front.records);
            }
            self.records -= front.records;
            self.bytes -= front.bytes;
            moved = Some(front.next_offset);
            self.batches.pop_front();
        }
        if moved.is_some() {
            self.durable = moved;
        }
        moved
    }

    /// The offset up to which everything is durable.
    pub fn durable(&self) -> Option<i64> {
        self.durable
    }

    /// Records emitted and not yet durable.
    pub fn in_flight(&self) -> usize {
        self.records
    }

    /// Message bytes emitted and not yet durable.
    pub fn in_flight_bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use timely::progress::Antichain;

    fn frontier(t: EventTime) -> Antichain<EventTime> {
        Antichain::from_elem(t)
    }

    #[test]
    fn commits_only_the_durable_prefix() {
        let mut ledger = OffsetLedger::default();
        ledger.push(10, 5, 5); // offsets 0..5 at times ≤ 10
        ledger.push(30, 8, 3); // offsets 5..8 at times ≤ 30
        ledger.push(20, 12, 4); // offsets 8..12 at times ≤ 20
        assert_eq!(ledger.in_flight(), 12);
        assert_eq!(ledger.advance(frontier(10).borrow()), None, "time 10 is not yet passed");
        assert_eq!(ledger.advance(frontier(25).borrow()), Some(5), "the second batch holds the third");
        assert_eq!(ledger.in_flight(), 7);
        assert_eq!(ledger.advance(frontier(31).borrow()), Some(12));
        assert_eq!(ledger.durable(), Some(12));
        assert_eq!(ledger.in_flight(), 0);
    }

    #[test]
    fn bytes_in_flight_follow_the_records() {
        let mut ledger = OffsetLedger::default();
        ledger.push_bytes(10, 2, 2, 2_000);
        ledger.push_bytes(10, 3, 1, 500_000);
        ledger.push_bytes(20, 4, 1, 100);
        assert_eq!(ledger.in_flight_bytes(), 502_100);
        ledger.advance(frontier(11).borrow());
        assert_eq!((ledger.in_flight(), ledger.in_flight_bytes()), (1, 100));
        ledger.advance(Antichain::new().borrow());
        assert_eq!(ledger.in_flight_bytes(), 0);
    }

    #[test]
    fn an_empty_frontier_makes_everything_durable() {
        let mut ledger = OffsetLedger::default();
        ledger.push(u64::MAX - 1, 3, 3);
        assert_eq!(ledger.advance(Antichain::new().borrow()), Some(3));
    }

    #[test]
    fn batches_at_the_same_time_merge() {
        let mut ledger = OffsetLedger::default();
        ledger.push(7, 1, 1);
        ledger.push(7, 2, 1);
        ledger.push(7, 9, 0);
        assert_eq!(ledger.batches.len(), 1);
        assert_eq!(ledger.advance(frontier(8).borrow()), Some(9));
    }

    proptest! {
        /// The commit point never passes a record whose time the frontier has not passed,
        /// never goes back, and reaches the end once the frontier is empty.
        #[test]
        fn never_commits_past_a_pending_record(
            times in prop::collection::vec(0u64..50, 1..60),
            frontiers in prop::collection::vec(0u64..60, 1..20),
        ) {
            let mut ledger = OffsetLedger::default();
            for (offset, &t) in times.iter().enumerate() {
                ledger.push(t, offset as i64 + 1, 1);
            }
            let mut sorted = frontiers.clone();
            sorted.sort_unstable();
            let mut last = 0i64;
            for f in sorted {
                if let Some(point) = ledger.advance(frontier(f).borrow()) {
                    prop_assert!(point > last);
                    // Every record before the commit point has a time the frontier passed.
                    prop_assert!(times[..point as usize].iter().all(|&t| t < f));
                    last = point;
                }
                // The first record not committed is one the frontier has not passed.
                if (last as usize) < times.len() {
                    prop_assert!(times[last as usize..].iter().any(|&t| t >= f));
                }
            }
            prop_assert_eq!(ledger.advance(Antichain::new().borrow()).unwrap_or(last), times.len() as i64);
        }
    }
}
