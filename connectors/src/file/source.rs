//! The timely operators of the file source: decode (per worker, its own chunks) and classify
//! (file-order lateness and line numbers, from every worker's chunk summaries).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use millstream_events::{Accepted, EventTime, Ingested, Origin, TimeModel, Watermark};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Scope, Stream};

use crate::route::{source_outputs, RoutedBatches, SourceStreams};

use super::{ChunkLayout, ChunkRecord, ChunkSummary, FileInput};

/// Output of the decode stage: a worker's decoded chunk, or the summary every worker needs.
#[derive(Debug, Clone)]
enum Decoded {
    Batch { chunk: u64, records: Vec<ChunkRecord> },
    Summary(ChunkSummary),
}

/// Reads `input` on every worker and returns its accepted readings (in batches routed by
/// `sensor_id`, see [`crate::route`]) and its dead letters, each stamped with a deterministic
/// event time: an on-time reading at its own `ts`, a late reading or a dead letter at the
/// file-order watermark where it was read. `workers_per_process` tells which workers share a
/// process, and so which chunks they may take from one another.
pub fn file_source<'scope>(
    scope: Scope<'scope, EventTime>,
    input: Arc<FileInput>,
    time: TimeModel,
    workers_per_process: usize,
) -> SourceStreams<'scope> {
    // Chunk buffers go from the decode stage to the classify stage of the same worker and
    // back: a chunk's records are a large allocation, and reusing it avoids the page faults
    // of fresh memory for every chunk.
    let pool = BufferPool::default();
    let flow = FlowControl::default();
    let layout =
        ChunkLayout::of_worker(scope.index() as u64, scope.peers() as u64, workers_per_process as u64);
    let decoded = decode_stage(scope, Arc::clone(&input), time, layout, pool.clone(), flow.clone());
    let (summaries, batches) = decoded.ok_err::<Vec<_>, _, Vec<_>, _, _>(|d| match d {
        Decoded::Summary(s) => Ok(s),
        Decoded::Batch { chunk, records } => Err((chunk, records)),
    });
    classify_stage(batches, summaries.broadcast(), input, time, pool, flow)
}

/// How far a worker may decode ahead of the slowest: chunks beyond `folded + peers × AHEAD`
/// wait. Without it one worker can race through the file while the frontier, held by the
/// slowest worker, keeps everything it decoded buffered (a third of the file, measured).
const AHEAD: u64 = 4;

/// Shared by one worker's decode and classify stages: how many chunks (from the start of the
/// file) have been summarised by all workers, and how to wake the decoder when that grows.
#[derive(Clone, Default)]
struct FlowControl {
    folded: Rc<Cell<u64>>,
    decoder: Rc<RefCell<Option<timely::scheduling::Activator>>>,
}

/// Spare chunk buffers of one worker, shared by its decode and classify stages.
#[derive(Clone, Default)]
struct BufferPool(Rc<RefCell<Vec<Vec<ChunkRecord>>>>);

impl BufferPool {
    /// At most this many spare buffers are kept (one per chunk in flight is plenty).
    const SPARES: usize = 4;

    fn take(&self) -> Vec<ChunkRecord> {
        self.0.borrow_mut().pop().unwrap_or_default()
    }

    fn give(&self, mut buffer: Vec<ChunkRecord>) {
        buffer.clear();
        let mut spares = self.0.borrow_mut();
        if spares.len() < Self::SPARES {
            spares.push(buffer);
        }
    }
}

fn decode_stage<'scope>(
    scope: Scope<'scope, EventTime>,
    input: Arc<FileInput>,
    time: TimeModel,
    layout: ChunkLayout,
    pool: BufferPool,
    flow: FlowControl,
) -> Stream<'scope, EventTime, Vec<Decoded>> {
    let peers = layout.peers;
    source(scope, "FileDecode", move |capability, info| {
        let activator = scope.activator_for(info.address);
        *flow.decoder.borrow_mut() = Some(activator.clone());
        let mut capability = Some(capability);
        let mut csv = input.csv_header();
        // Largest timestamp in this worker's chunks so far: a lower bound for the file-order
        // watermark of every later chunk, so it is safe to hold time back only this far.
        let mut local = time.watermark();
        move |output| {
            let Some(cap) = capability.as_mut() else { return };
            if input.next_chunk(layout) >= input.chunk_count() {
                capability = None;
                return;
            }
            if input.next_chunk(layout) >= flow.folded.get() + AHEAD * peers {
                return; // the classify stage wakes us when the others catch up
            }
            let next_chunk = input.claim_chunk(layout);
            if next_chunk >= input.chunk_count() {
                capability = None; // another worker of this process took the last one
                return;
            }
            let cutoff = time
                .max_future_ms
                .map_or(EventTime::MAX, |f| millstream_events::time::now_ms().saturating_add(f));
            let (summary, records) = input.decode_chunk_into(next_chunk, &mut csv, pool.take(), cutoff);
            {
                let mut session = output.session(&*cap);
                session.give(Decoded::Batch { chunk: next_chunk, records });
                session.give(Decoded::Summary(summary));
            }
            if let Some(max) = summary.max_ts {
                local.observe(max);
            }
            cap.downgrade(&time.epoch(local.time()));
            activator.activate();
        }
    })
}

/// Per-chunk prefix: lines and largest timestamp of all earlier chunks.
#[derive(Debug, Clone, Copy)]
struct Prefix {
    lines_before: u64,
    max_before: Option<EventTime>,
}

fn classify_stage<'scope>(
    batches: Stream<'scope, EventTime, Vec<(u64, Vec<ChunkRecord>)>>,
    summaries: Stream<'scope, EventTime, Vec<ChunkSummary>>,
    input: Arc<FileInput>,
    time: TimeModel,
    pool: BufferPool,
    flow: FlowControl,
) -> SourceStreams<'scope> {
    let peers = batches.scope().peers();
    let mut builder = OperatorBuilder::new("FileClassify".to_owned(), batches.scope());
    let mut batch_input = builder.new_input(batches, Pipeline);
    let mut summary_input = builder.new_input(summaries, Pipeline);
    let (mut accepted_output, mut rejected_output, streams) = source_outputs(&mut builder);
    builder.build(move |_initial| {
        // Per chunk: a capability for each output (accepted, rejected) and its records.
        let mut pending: BTreeMap<u64, ([Capability<EventTime>; 2], Vec<ChunkRecord>)> = BTreeMap::new();
        let mut unfolded: BTreeMap<u64, ChunkSummary> = BTreeMap::new();
        let mut folded = Prefix { lines_before: 0, max_before: None };
        let mut next_to_fold = 0u64;
        let mut prefixes: BTreeMap<u64, Prefix> = BTreeMap::new();
        // Accepted readings go out in batches per owning worker, for the sensor exchange to
        // move whole (crate::route).
        let mut routed = RoutedBatches::new(peers);
        move |_frontiers| {
            let mut accepted_output = accepted_output.activate();
            let mut rejected_output = rejected_output.activate();
            batch_input.for_each(|cap, data| {
                let caps = [0, 1].map(|port| cap.retain_least(port).expect("a batch has a time"));
                for (chunk, records) in data.drain(..) {
                    pending.insert(chunk, (caps.clone(), records));
                }
            });
            summary_input.for_each(|_, data| {
                for summary in data.drain(..) {
                    unfolded.insert(summary.chunk, summary);
                }
            });
            while let Some(summary) = unfolded.remove(&next_to_fold) {
                prefixes.insert(summary.chunk, folded);
                folded.lines_before += summary.lines;
                folded.max_before = match (folded.max_before, summary.max_ts) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                next_to_fold += 1;
            }
            if next_to_fold > flow.folded.get() {
                flow.folded.set(next_to_fold);
                if let Some(decoder) = flow.decoder.borrow().as_ref() {
                    decoder.activate();
                }
            }
            while let Some(entry) = pending.first_entry() {
                let chunk = *entry.key();
                let Some(prefix) = prefixes.remove(&chunk) else { break };
                let ([accepted_cap, rejected_cap], mut records) = entry.remove();
                let mut watermark = Watermark::resume(prefix.max_before, time.allowed_lateness_ms)
                    .with_max_future(time.max_future_ms);
                // The time of the readings in `routed`: they go out before it changes.
                let mut run_time = None;
                for record in records.drain(..) {
                    let (stamp, item) =
                        classify(record, prefix, &mut watermark, *accepted_cap.time(), &input);
                    let stamp = time.epoch(stamp);
                    match item {
                        Ingested::Accepted(accepted) => {
                            if run_time != Some(stamp) {
                                if let Some(t) = run_time {
                                    let cap = accepted_cap.delayed(&t);
                                    let mut session = accepted_output.session(&cap);
                                    routed.flush(|_, batch| session.give_container(batch));
                                }
                                run_time = Some(stamp);
                            }
                            routed.push(accepted.route(), accepted, |_, batch| {
                                accepted_output.session(&accepted_cap.delayed(&stamp)).give_container(batch)
                            });
                        }
                        Ingested::Rejected(dead) => {
                            rejected_output.session(&rejected_cap.delayed(&stamp)).give(dead);
                        }
                    }
                }
                if let Some(t) = run_time {
                    let cap = accepted_cap.delayed(&t);
                    let mut session = accepted_output.session(&cap);
                    routed.flush(|_, batch| session.give_container(batch));
                }
                pool.give(records);
            }
        }
    });
    streams
}

/// Decides a record's lateness and event time from the file-order watermark.
fn classify(
    record: ChunkRecord,
    prefix: Prefix,
    watermark: &mut Watermark,
    batch_time: EventTime,
    input: &FileInput,
) -> (EventTime, Ingested) {
    match record {
        ChunkRecord::Reading { reading, line_in_chunk, raw } => {
            let arrival = watermark.arrive(reading.ts);
            let late = arrival == millstream_events::Arrival::Late;
            let time = arrival.stamp(reading.ts, watermark.time().max(batch_time));
            let origin = Origin { stream: 0, offset: prefix.lines_before + line_in_chunk + 1 };
            (time, Ingested::Accepted(Accepted::new(reading, origin, raw, late)))
        }
        ChunkRecord::Rejected { rejection, line_in_chunk, raw } => {
            let line = prefix.lines_before + line_in_chunk + 1;
            (watermark.time().max(batch_time), Ingested::Rejected(input.dead_letter(rejection, line, raw)))
        }
    }
}
