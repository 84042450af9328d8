//! Records routed to their owning worker where they are made, and the exchange that moves
//! such batches whole.
//!
//! The sensor stage exchanges every accepted reading by `sensor_id`. timely's `Exchange`
//! copies each record into a buffer per target worker, which on a 2-core machine costs about
//! a tenth of the run (measured: README, "Benchmarks"). A source already touches every record
//! once, so it can put each into its owner's batch ([`RoutedBatches`]); the exchange then only
//! checks that a batch has one owner and moves it ([`WholeBatches`]). A batch that mixes owners
//! (from a source that does not route) is split record by record, as timely's exchange would,
//! so routing at the source is an optimisation, never a correctness requirement.

use std::marker::PhantomData;

use millstream_events::routing::owner;
use millstream_events::{Accepted, DeadLetter, EventTime, Ingested};
use timely::communication::Push;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{DistributorPact, Pipeline};
use timely::dataflow::channels::pushers::exchange::Distributor;
use timely::dataflow::channels::{Message, Stamp};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Stream;

/// Records in a routed batch: large enough that a batch is one move per many records, small
/// enough (128 KiB of `Accepted`) that the receiving worker starts on it early.
pub const BATCH: usize = 1024;
/// The smallest allocation for a batch.
const MIN_BATCH: usize = 16;

/// A source's output buffers, one per worker: each record goes into the buffer of the worker
/// that owns its route.
#[derive(Debug)]
pub struct RoutedBatches<T> {
    buffers: Vec<Vec<T>>,
    /// Per worker, the length of the last batch sent: the next one is allocated at that size.
    /// Batches are usually cut by a change of time (an epoch's readings, split over workers)
    /// long before [`BATCH`]; allocating `BATCH` each time would make every batch a large
    /// allocation, freed by another thread, which measurably costs more than it saves.
    sizes: Vec<usize>,
}

impl<T> RoutedBatches<T> {
    /// Buffers for `peers` workers.
    pub fn new(peers: usize) -> Self {
        let peers = peers.max(1);
        RoutedBatches { buffers: (0..peers).map(|_| Vec::new()).collect(), sizes: vec![0; peers] }
    }

    /// Adds `item` for the worker that owns `route`, and returns that worker's buffer when it
    /// holds a full batch (to be sent, which empties it).
    pub fn push(&mut self, route: u64, item: T) -> Option<&mut Vec<T>> {
        let target = owner(route, self.buffers.len());
        let buffer = &mut self.buffers[target];
        if buffer.capacity() == 0 {
            buffer.reserve_exact(self.sizes[target].clamp(MIN_BATCH, BATCH));
        }
        buffer.push(item);
        if buffer.len() < BATCH {
            return None;
        }
        self.sizes[target] = BATCH;
        Some(buffer)
    }

    /// The buffers holding records: to be sent before the records' time changes.
    pub fn pending(&mut self) -> impl Iterator<Item = &mut Vec<T>> {
        self.buffers.iter_mut().zip(self.sizes.iter_mut()).filter(|(b, _)| !b.is_empty()).map(|(b, size)| {
            *size = b.len();
            b
        })
    }
}

/// An exchange by `route` that moves a batch whole when all its records have one owner.
pub fn whole_batches<T, F>(route: F) -> DistributorPact<impl FnOnce(usize) -> WholeBatches<T, F>>
where
    F: FnMut(&T) -> u64 + 'static,
{
    DistributorPact(move |peers| WholeBatches {
        route,
        mixed: RoutedBatches::new(peers),
        _records: PhantomData,
    })
}

/// The distributor of [`whole_batches`].
pub struct WholeBatches<T, F> {
    route: F,
    /// Records of batches that mixed owners, regrouped per owner.
    mixed: RoutedBatches<T>,
    _records: PhantomData<fn(T)>,
}

impl<T, F: FnMut(&T) -> u64> Distributor<Vec<T>> for WholeBatches<T, F> {
    fn partition<S: Clone, P: Push<Message<S, Vec<T>>>>(
        &mut self,
        container: &mut Vec<T>,
        stamp: &Stamp<S>,
        pushers: &mut [P],
    ) {
        let peers = pushers.len();
        let route = &mut self.route;
        let Some(first) = container.first() else { return };
        let target = owner(route(first), peers);
        if container[1..].iter().all(|record| owner(route(record), peers) == target) {
            Message::push_at(container, stamp.clone(), &mut pushers[target]);
            return;
        }
        for record in container.drain(..) {
            let hash = route(&record);
            if let Some(full) = self.mixed.push(hash, record) {
                Message::push_at(full, stamp.clone(), &mut pushers[owner(hash, peers)]);
            }
        }
    }

    fn flush<S: Clone, P: Push<Message<S, Vec<T>>>>(&mut self, stamp: &Stamp<S>, pushers: &mut [P]) {
        for (buffer, pusher) in self.mixed.buffers.iter_mut().zip(pushers.iter_mut()) {
            if !buffer.is_empty() {
                Message::push_at(buffer, stamp.clone(), pusher);
            }
        }
    }

    fn relax(&mut self) {
        for buffer in &mut self.mixed.buffers {
            *buffer = Vec::new();
        }
    }
}

/// A source's two streams: accepted readings, in routed batches, and dead letters.
pub type SourceStreams<'scope> =
    (Stream<'scope, EventTime, Vec<Accepted>>, Stream<'scope, EventTime, Vec<DeadLetter>>);

/// An output of containers `Vec<D>` of a source's last operator.
pub(crate) type VecOutput<D> = OutputBuilder<EventTime, CapacityContainerBuilder<Vec<D>>>;

/// The accepted and dead-letter outputs of a source's last operator, and their streams.
pub(crate) fn source_outputs<'scope>(
    builder: &mut OperatorBuilder<'scope, EventTime>,
) -> (VecOutput<Accepted>, VecOutput<DeadLetter>, SourceStreams<'scope>) {
    let (accepted_output, accepted) = builder.new_output();
    let (rejected_output, rejected) = builder.new_output();
    (OutputBuilder::from(accepted_output), OutputBuilder::from(rejected_output), (accepted, rejected))
}

/// Splits a source's records into accepted readings, in batches routed by `sensor_id` for
/// [`whole_batches`], and dead letters. For sources that do not route as they read (the
/// file source routes in its classify stage instead).
pub fn split_routed<'scope>(ingested: Stream<'scope, EventTime, Vec<Ingested>>) -> SourceStreams<'scope> {
    let mut builder = OperatorBuilder::new("SplitRouted".to_owned(), ingested.scope());
    let peers = ingested.scope().peers();
    let mut input = builder.new_input(ingested, Pipeline);
    let (mut accepted_output, mut rejected_output, streams) = source_outputs(&mut builder);
    builder.build(move |_| {
        let mut batches = RoutedBatches::new(peers);
        move |_frontiers| {
            let mut accepted_handle = accepted_output.activate();
            let mut rejected_handle = rejected_output.activate();
            input.for_each_stamp(|cap, containers| {
                let mut accepted = accepted_handle.session(&cap);
                let mut rejected = rejected_handle.session(&cap);
                for record in containers.flat_map(|c| c.drain(..)) {
                    match record {
                        Ingested::Accepted(a) => {
                            let route = a.route();
                            if let Some(full) = batches.push(route, a) {
                                accepted.give_container(full);
                            }
                        }
                        Ingested::Rejected(d) => rejected.give(d),
                    }
                }
                for batch in batches.pending() {
                    accepted.give_container(batch);
                }
            });
        }
    });
    streams
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use timely::dataflow::operators::generic::operator::source;
    use timely::dataflow::operators::generic::Operator;

    use super::*;

    /// Every record reaches its owner exactly once, whether its batch was routed (one owner,
    /// moved whole) or mixed (split record by record), at 1, 2 and 3 workers.
    #[test]
    fn every_record_reaches_its_owner_once_from_routed_and_mixed_batches() {
        for workers in [1, 2, 3] {
            let received: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
            let shared = Arc::clone(&received);
            timely::execute(timely::Config::process(workers), move |worker| {
                let (index, peers) = (worker.index(), worker.peers());
                let received = Arc::clone(&shared);
                worker.dataflow::<u64, _, _>(|scope| {
                    let batches = source(scope, "Batches", move |capability, _| {
                        let mut capability = Some(capability);
                        move |output| {
                            let Some(cap) = capability.take() else { return };
                            // Worker w sends records w·1000 ..: a mixed batch, then the
                            // same number of records routed per owner.
                            let base = index as u64 * 1000;
                            let mut mixed: Vec<u64> = (base..base + 300).collect();
                            let mut routed = RoutedBatches::new(peers);
                            let mut session = output.session(&cap);
                            session.give_container(&mut mixed);
                            for record in base + 300..base + 600 {
                                if let Some(full) = routed.push(record, record) {
                                    session.give_container(full);
                                }
                            }
                            session.give_containers(routed.pending());
                        }
                    });
                    batches.sink(whole_batches(|r: &u64| *r), "Check", move |(input, _)| {
                        input.for_each(|_, data| {
                            received.lock().unwrap().extend(data.drain(..).map(|r| (index, r)));
                        });
                    });
                });
            })
            .unwrap()
            .join();
            let mut received = received.lock().unwrap().clone();
            received.sort_by_key(|&(_, r)| r);
            let expected: Vec<u64> = (0..workers as u64).flat_map(|w| w * 1000..w * 1000 + 600).collect();
            assert_eq!(received.iter().map(|&(_, r)| r).collect::<Vec<_>>(), expected, "{workers} workers");
            for (worker, record) in received {
                assert_eq!(owner(record, workers), worker, "record {record} at {workers} workers");
            }
        }
    }

    #[test]
    fn batches_fill_per_owner_and_report_when_full() {
        let mut batches = RoutedBatches::new(2);
        for i in 0..(2 * BATCH as u64 - 1) {
            let full = batches.push(i, i).map(std::mem::take);
            if i == 2 * BATCH as u64 - 2 {
                let full = full.expect("owner 0's batch is full at its BATCH-th record");
                assert_eq!(full.len(), BATCH);
                assert!(full.iter().all(|r| owner(*r, 2) == 0));
            } else {
                assert!(full.is_none(), "record {i}");
            }
        }
        let pending: Vec<Vec<u64>> = batches.pending().map(std::mem::take).collect();
        assert_eq!(pending.len(), 1, "owner 1 holds BATCH - 1 records");
        assert_eq!(pending[0].len(), BATCH - 1);
        assert!(pending[0].iter().all(|r| owner(*r, 2) == 1));
        assert_eq!(batches.pending().count(), 0);
    }
}
