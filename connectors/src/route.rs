//! Records routed to their owning worker where they are made, and the exchange that moves
//! such batches whole.
//!
//! The sensor stage exchanges every accepted reading by `sensor_id`. timely's `Exchange`
//! copies each record into a buffer per target worker, which on a 2-core machine costs about
//! a tenth of the run (measured: README, "Performance"). A source already touches every record
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

    /// Adds `item` for the worker that owns `route`; when that worker's batch is full, hands it
    /// to `send` with the worker's index.
    pub fn push(&mut self, route: u64, item: T, send: impl FnOnce(usize, &mut Vec<T>)) {
        let target = owner(route, self.buffers.len());
        let buffer = &mut self.buffers[target];
        if buffer.capacity() == 0 {
            buffer.reserve_exact(self.sizes[target].clamp(MIN_BATCH, BATCH));
        }
        buffer.push(item);
        if buffer.len() >= BATCH {
            self.sizes[target] = BATCH;
            send_batch(buffer, |batch| send(target, batch));
        }
    }

    /// Hands every batch holding records to `send`, with its worker's index: to be done
    /// before the records' time changes.
    pub fn flush(&mut self, mut send: impl FnMut(usize, &mut Vec<T>)) {
        for (target, (buffer, size)) in self.buffers.iter_mut().zip(self.sizes.iter_mut()).enumerate() {
            if !buffer.is_empty() {
                *size = buffer.len();
                send_batch(buffer, |batch| send(target, batch));
            }
        }
    }

    /// Drops the buffers' memory.
    fn relax(&mut self) {
        for buffer in &mut self.buffers {
            *buffer = Vec::new();
        }
    }
}

/// Sends `batch`, then empties what the pusher handed back: timely's pushers may hand a sent
/// container back with its records still in it (those that serialize, between processes),
/// for the sender to reuse, and reusing it as it is would send those records again.
fn send_batch<T>(batch: &mut Vec<T>, send: impl FnOnce(&mut Vec<T>)) {
    send(batch);
    batch.clear();
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
            send_batch(container, |batch| Message::push_at(batch, stamp.clone(), &mut pushers[target]));
            return;
        }
        for record in container.drain(..) {
            let hash = route(&record);
            self.mixed.push(hash, record, |target, batch| {
                Message::push_at(batch, stamp.clone(), &mut pushers[target])
            });
        }
    }

    fn flush<S: Clone, P: Push<Message<S, Vec<T>>>>(&mut self, stamp: &Stamp<S>, pushers: &mut [P]) {
        self.mixed.flush(|target, batch| Message::push_at(batch, stamp.clone(), &mut pushers[target]));
    }

    fn relax(&mut self) {
        self.mixed.relax();
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
                            batches.push(a.route(), a, |_, batch| accepted.give_container(batch));
                        }
                        Ingested::Rejected(d) => rejected.give(d),
                    }
                }
                batches.flush(|_, batch| accepted.give_container(batch));
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
    /// moved whole) or mixed (split record by record): at 1, 2 and 3 workers, and at 2 workers
    /// that exchange serialized data as processes do (whose pushers hand the sent data back).
    #[test]
    fn every_record_reaches_its_owner_once_from_routed_and_mixed_batches() {
        use timely::CommunicationConfig::{Process, ProcessBinary};
        for communication in [Process(1), Process(2), Process(3), ProcessBinary(2)] {
            let (Process(workers) | ProcessBinary(workers)) = communication else { unreachable!() };
            let label = format!("{communication:?}");
            let config = timely::Config { communication, worker: Default::default() };
            let received: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
            let shared = Arc::clone(&received);
            timely::execute(config, move |worker| {
                let (index, peers) = (worker.index(), worker.peers());
                let received = Arc::clone(&shared);
                worker.dataflow::<u64, _, _>(|scope| {
                    let batches = source(scope, "Batches", move |capability, info| {
                        let activator = scope.activator_for(info.address);
                        let mut capability = Some(capability);
                        // Routed buffers reused over rounds, as a source's are.
                        let mut routed = RoutedBatches::new(peers);
                        let mut round = 0u64;
                        move |output| {
                            let Some(cap) = capability.as_mut() else { return };
                            // Worker w sends, in each of 3 rounds at times 0, 1, 2, records
                            // w·100 000 + round·10 000 ..: a mixed batch, then as many records
                            // routed per owner (more than a batch, so one is sent when full).
                            let base = index as u64 * 100_000 + round * 10_000;
                            let mut mixed: Vec<u64> = (base..base + 300).collect();
                            let mut session = output.session(&*cap);
                            session.give_container(&mut mixed);
                            for record in base + 300..base + 300 + BATCH as u64 + 50 {
                                routed.push(record, record, |_, batch| session.give_container(batch));
                            }
                            routed.flush(|_, batch| session.give_container(batch));
                            drop(session);
                            round += 1;
                            if round == 3 {
                                capability = None;
                            } else {
                                cap.downgrade(&round);
                                activator.activate();
                            }
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
            let expected: Vec<u64> = (0..workers as u64)
                .flat_map(|w| {
                    (0..3).flat_map(move |round| {
                        let base = w * 100_000 + round * 10_000;
                        base..base + 300 + BATCH as u64 + 50
                    })
                })
                .collect();
            assert_eq!(received.iter().map(|&(_, r)| r).collect::<Vec<_>>(), expected, "{label}");
            for (worker, record) in received {
                assert_eq!(owner(record, workers), worker, "record {record}, {label}");
            }
        }
    }

    /// A pusher that keeps a copy of what it is given and hands the message back untouched, as
    /// timely's pushers between processes do (they serialize it).
    #[derive(Default)]
    struct HandsBack(Vec<Vec<u64>>);

    impl Push<Message<u64, Vec<u64>>> for HandsBack {
        fn push(&mut self, message: &mut Option<Message<u64, Vec<u64>>>) {
            if let Some(message) = message {
                self.0.push(message.data.clone());
            }
        }
    }

    /// The distributor sends each record once even when its pushers hand the data back, and
    /// leaves the container it moved empty for the sender to reuse.
    #[test]
    fn the_distributor_sends_each_record_once_through_pushers_that_hand_data_back() {
        let mut distributor =
            WholeBatches { route: |r: &u64| *r, mixed: RoutedBatches::new(2), _records: PhantomData };
        let mut pushers = [HandsBack::default(), HandsBack::default()];
        let stamp = Stamp::from_elem(0u64);
        for round in 0..3u64 {
            let mut routed: Vec<u64> = (0..100).map(|i| round * 1000 + 2 * i).collect();
            distributor.partition(&mut routed, &stamp, &mut pushers);
            assert!(routed.is_empty(), "a moved batch comes back empty");
            let mut mixed: Vec<u64> = (0..2 * BATCH as u64 + 10).map(|i| round * 100_000 + 500 + i).collect();
            distributor.partition(&mut mixed, &stamp, &mut pushers);
        }
        distributor.flush(&stamp, &mut pushers);
        let mut sent: Vec<(usize, u64)> = pushers
            .iter()
            .enumerate()
            .flat_map(|(w, p)| p.0.iter().flatten().map(move |&r| (w, r)))
            .collect();
        sent.sort_by_key(|&(_, r)| r);
        let mut expected: Vec<u64> = (0..3u64)
            .flat_map(|round| {
                (0..100)
                    .map(move |i| round * 1000 + 2 * i)
                    .chain((0..2 * BATCH as u64 + 10).map(move |i| round * 100_000 + 500 + i))
            })
            .collect();
        expected.sort();
        assert_eq!(sent.iter().map(|&(_, r)| r).collect::<Vec<_>>(), expected);
        assert!(sent.iter().all(|&(w, r)| owner(r, 2) == w));
    }

    #[test]
    fn batches_fill_per_owner_and_go_out_when_full_or_flushed() {
        let mut batches = RoutedBatches::new(2);
        let mut sent: Vec<Vec<u64>> = Vec::new();
        for i in 0..(2 * BATCH as u64 - 1) {
            batches.push(i, i, |_, batch| sent.push(batch.clone()));
            let expected = usize::from(i >= 2 * BATCH as u64 - 2);
            assert_eq!(sent.len(), expected, "owner 0's batch is full at its BATCH-th record, {i}");
        }
        assert_eq!(sent[0].len(), BATCH);
        assert!(sent[0].iter().all(|r| owner(*r, 2) == 0));
        batches.flush(|_, batch| sent.push(batch.clone()));
        assert_eq!(sent.len(), 2, "owner 1 holds BATCH - 1 records");
        assert_eq!(sent[1].len(), BATCH - 1);
        assert!(sent[1].iter().all(|r| owner(*r, 2) == 1));
        batches.flush(|_, _| panic!("nothing is left to send"));
    }

    /// A pusher may hand a sent batch back with its records: they are not sent again.
    #[test]
    fn a_batch_handed_back_full_is_emptied() {
        let mut batches = RoutedBatches::new(1);
        let mut sent = 0;
        for i in 0..3 * BATCH as u64 {
            batches.push(i, i, |_, _| sent += 1); // hands the batch back untouched
        }
        batches.push(0, 0, |_, _| {});
        let mut left = 0;
        batches.flush(|_, batch| left = batch.len());
        assert_eq!((sent, left), (3, 1));
    }
}
