//! The stash that frontier-driven stages share: records kept by time until the frontier passes
//! them, and one capability held at the earliest time kept.

use std::collections::BTreeMap;

use millstream_events::EventTime;
use timely::communication::Pull;
use timely::dataflow::channels::Message;
use timely::dataflow::operators::generic::InputHandleCore;
use timely::dataflow::operators::Capability;

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
        input.for_each(|cap, data| {
            let Some(&time) = cap.least() else { return };
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
