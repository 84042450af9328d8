//! The stash that frontier-driven stages share: records kept by time until the frontier passes
//! them, and one capability held at the earliest time kept.

use std::collections::BTreeMap;

use millstream_events::EventTime;
use timely::communication::Pull;
use timely::dataflow::channels::Message;
use timely::dataflow::operators::generic::InputHandleCore;
use timely::dataflow::operators::{Capability, InputCapability};

/// The start of the epoch (timely time) that event time `t` falls in.
pub fn epoch(t: EventTime, epoch_ms: u64) -> EventTime {
    t - t % epoch_ms
}

/// Records by time, and a capability for the earliest of them (or for an earlier time still
/// owed downstream, which the stage keeps by downgrading no further).
pub struct Stash<D> {
    pub pending: BTreeMap<EventTime, Vec<D>>,
    pub capability: Option<Capability<EventTime>>,
}

impl<D> Default for Stash<D> {
    fn default() -> Self {
        Stash { pending: BTreeMap::new(), capability: None }
    }
}

impl<D: 'static> Stash<D> {
    /// Moves everything `input` holds into the stash.
    pub fn take<P: Pull<Message<EventTime, Vec<D>>>>(
        &mut self,
        input: &mut InputHandleCore<EventTime, Vec<D>, P>,
    ) {
        self.take_noting(input, |_, _| {});
    }

    /// [`Self::take`], showing `noted` each input's capability and time first (a
    /// [`crate::checkpoint::Checkpointer`] starts registering with the first input).
    pub fn take_noting<P: Pull<Message<EventTime, Vec<D>>>>(
        &mut self,
        input: &mut InputHandleCore<EventTime, Vec<D>, P>,
        mut noted: impl FnMut(&InputCapability<EventTime>, EventTime),
    ) {
        input.for_each(|cap, data| {
            let Some(&time) = cap.least() else { return };
            noted(&cap, time);
            if self.capability.as_ref().is_none_or(|c| time < *c.time()) {
                self.capability = cap.retain_least(0);
            }
            self.pending.entry(time).or_default().append(data);
        });
    }

    /// The earliest stashed time with its records, if the frontier has passed it.
    pub fn pop_ready(
        &mut self,
        frontier: timely::progress::frontier::AntichainRef<'_, EventTime>,
    ) -> Option<(EventTime, Vec<D>)> {
        let entry = self.pending.first_entry()?;
        if frontier.less_equal(entry.key()) {
            return None;
        }
        let time = *entry.key();
        Some((time, entry.remove()))
    }

    /// Holds the capability at `owed` (an earlier time still owed downstream) or at the
    /// earliest stashed time, whichever is earlier; drops it when nothing is owed.
    pub fn hold(&mut self, owed: Option<EventTime>) {
        let earliest = owed.into_iter().chain(self.pending.keys().next().copied()).min();
        match (earliest, self.capability.as_mut()) {
            (Some(time), Some(cap)) => cap.downgrade(&time),
            _ => self.capability = None,
        }
    }
}

/// What [`Ordered::next`] hands out: the updates of one time, or the records of one time.
pub enum Next<D, U> {
    Updates(EventTime, Vec<U>),
    Records(EventTime, Vec<D>),
}

/// Records and the updates they depend on (model versions), released in event-time order once
/// both inputs' frontiers have passed their time: the updates of a time before its records,
/// so a version effective at `t` serves every record of `t` on every worker.
pub struct Ordered<D, U> {
    pub records: Stash<D>,
    pub updates: BTreeMap<EventTime, Vec<U>>,
}

impl<D, U> Default for Ordered<D, U> {
    fn default() -> Self {
        Ordered { records: Stash::default(), updates: BTreeMap::new() }
    }
}

impl<D: 'static, U: 'static> Ordered<D, U> {
    /// Moves everything the updates `input` holds in (updates hold no capability: outputs come
    /// from records).
    pub fn take_updates<P: Pull<Message<EventTime, Vec<U>>>>(
        &mut self,
        input: &mut InputHandleCore<EventTime, Vec<U>, P>,
    ) {
        input.for_each(|cap, data| {
            if let Some(&time) = cap.least() {
                self.updates.entry(time).or_default().append(data);
            }
        });
    }

    /// The earliest complete time's updates, else its records; `None` when the earliest time
    /// pending is not complete yet (a frontier has not passed it).
    pub fn next(
        &mut self,
        records_frontier: timely::progress::frontier::AntichainRef<'_, EventTime>,
        updates_frontier: timely::progress::frontier::AntichainRef<'_, EventTime>,
    ) -> Option<Next<D, U>> {
        let complete = |t: &EventTime| !records_frontier.less_equal(t) && !updates_frontier.less_equal(t);
        let update = self.updates.first_key_value().map(|(t, _)| *t).filter(complete);
        let record = self.records.pending.first_key_value().map(|(t, _)| *t).filter(complete);
        match (update, record) {
            (Some(u), r) if r.is_none_or(|r| u <= r) => {
                Some(Next::Updates(u, self.updates.remove(&u).unwrap_or_default()))
            }
            (_, Some(r)) => Some(Next::Records(r, self.records.pending.remove(&r).unwrap_or_default())),
            _ => None,
        }
    }

    /// The earliest time a record still pending, or in flight on either input, may have:
    /// work before it (buckets, slides) is complete.
    pub fn in_flight(
        &self,
        records_frontier: timely::progress::frontier::AntichainRef<'_, EventTime>,
        updates_frontier: timely::progress::frontier::AntichainRef<'_, EventTime>,
    ) -> EventTime {
        [records_frontier.first(), updates_frontier.first()]
            .into_iter()
            .flatten()
            .copied()
            .chain(self.records.pending.keys().next().copied())
            .min()
            .unwrap_or(EventTime::MAX)
    }
}
