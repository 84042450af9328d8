//! The Kafka source operator: each worker reads the partitions it owns, stamps records with
//! event time, holds its capability at the smallest partition watermark, and commits, per
//! partition, the offsets whose results every durable sink has.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::CString;
use std::rc::Rc;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use millstream_events::checkpoint::WorkerCheckpoints;
use millstream_events::decode::decode_json;
use millstream_events::time::now_ms;
use millstream_events::{
    Accepted, DeadLetter, EventTime, Ingested, Origin, RawRef, SourceLocation, TimeModel, Watermark,
};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::Capability;
use timely::dataflow::{ProbeHandle, Scope, Stream};
use timely::scheduling::SyncActivator;

use super::checkpoint::{InFlight, Replay, Replayed, SavedPartition, COMPONENT};
use super::committer::Committer;
use super::diagnostics::{self, ConnectionLog, Throttle};
use super::discovery::{self, Discovery, Found};
use super::offsets::OffsetLedger;
use super::options::{KafkaSourceOptions, StartFrom};
use crate::RecordResolver;

/// Bits of [`Origin::stream`] that hold the partition; the topic's index is above them.
const PARTITION_BITS: u32 = 20;

/// Messages read from one partition per activation, so one busy partition cannot starve the
/// others or the rest of the worker.
const READ_BUDGET: usize = 4_096;

/// In-flight records a partition lists (with checkpoints) before those the capability has
/// passed are dropped, between boundaries.
const FLIGHT_PRUNE_AT: usize = 1 << 16;

/// How often lag and idleness are looked at when nothing else wakes the operator.
const TICK: Duration = Duration::from_millis(250);

/// What the source reports, for metrics and health. Every method has a no-op default.
pub trait KafkaSourceObserver: Send + Sync {
    /// `records` were read from a partition.
    fn consumed(&self, _topic: &str, _partition: i32, _records: u64) {}
    /// High watermark less the next offset to process; `None` while either is unknown.
    fn lag(&self, _topic: &str, _partition: i32, _lag: Option<i64>) {}
    /// The broker acknowledged a commit.
    fn committed(&self, _topic: &str, _partition: i32, _offset: i64) {}
    /// A commit failed; it is retried at the next commit interval.
    fn commit_failed(&self, _error: &str) {}
    /// The brokers became unreachable (`false`, with why) or reachable again (`true`).
    fn connection(&self, _up: bool, _detail: &str) {}
    /// This worker's source watermark (the time it holds its capability at).
    fn watermark(&self, _worker: usize, _time: EventTime) {}
    /// `records` read `latency` ago are now durable in every sink (ingest → durable).
    fn durable(&self, _latency: Duration, _records: usize) {}
}

/// A no-op observer.
impl KafkaSourceObserver for () {}

/// A Kafka source opened in one process, shared by its workers.
pub struct KafkaInput {
    pub options: KafkaSourceOptions,
    pub observer: Arc<dyn KafkaSourceObserver>,
}

impl KafkaInput {
    fn topic_of(&self, origin: Origin) -> (&str, i32) {
        let index = (origin.stream >> PARTITION_BITS) as usize;
        let topic = self.options.topics.get(index).map_or("?", String::as_str);
        (topic, (origin.stream & ((1 << PARTITION_BITS) - 1)) as i32)
    }
}

impl RecordResolver for KafkaInput {
    /// Readings do not carry their bytes through the dataflow; a reading refused after the
    /// exchange (a duplicate, or late under the dead-letter policy) is given in the contract's
    /// JSON form, which decodes to the same reading. Decode failures keep their exact bytes.
    fn raw_text(&self, accepted: &Accepted) -> String {
        accepted.reading.to_contract_json()
    }

    fn location(&self, accepted: &Accepted) -> SourceLocation {
        let (topic, partition) = self.topic_of(accepted.origin);
        SourceLocation::Kafka { topic: topic.to_owned(), partition, offset: accepted.origin.offset as i64 }
    }
}

/// Lets the worker commit what is left once the dataflow is complete.
#[derive(Clone)]
pub struct KafkaSourceHandle(Rc<RefCell<Option<Reader>>>);

impl KafkaSourceHandle {
    /// Commits every offset read (all of it is durable once the dataflow is complete) and
    /// waits for the broker to acknowledge, up to `timeout`.
    pub fn commit_all(&self, timeout: Duration) -> Result<(), String> {
        let mut reader = self.0.borrow_mut();
        let Some(reader) = reader.as_mut() else { return Ok(()) };
        let empty = timely::progress::Antichain::new();
        for p in &mut reader.partitions {
            p.ledger.advance(empty.borrow());
        }
        reader.hand_durable_offsets();
        reader.committer.flush(timeout).map_err(|e| format!("final commit failed: {e}"))
    }
}

/// Per-consumer callbacks: wake the operator, record commit outcomes, report broker health,
/// and keep librdkafka's reasons for failing connections.
struct SourceContext {
    wake: Mutex<Option<SyncActivator>>,
    observer: Arc<dyn KafkaSourceObserver>,
    worker: usize,
    /// The brokers were reported unreachable and nothing has worked since.
    down: std::sync::atomic::AtomicBool,
    /// Broker failures, from librdkafka's `FAIL` log lines and error events: the latest
    /// reason, and refusals (TLS, SASL, the wrong `security.protocol`) that end the run.
    connection: ConnectionLog,
    /// Holds back warnings identical to recent ones.
    throttle: Throttle,
    /// The level librdkafka's log lines are forwarded from (the client asks librdkafka for
    /// `Info` at least, to see every broker failure).
    log_level: RDKafkaLogLevel,
}

impl SourceContext {
    /// Something worked: refusals so far were one-offs, and if the brokers were down, they
    /// are back.
    fn reachable(&self) {
        self.connection.worked();
        if self.down.swap(false, std::sync::atomic::Ordering::Relaxed) {
            tracing::info!(worker_id = self.worker, "kafka brokers reachable again");
            self.observer.connection(true, "");
        }
    }

    fn unreachable(&self, why: &str) {
        if !self.down.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.observer.connection(false, &self.with_last_failure(why));
        }
    }

    /// `why`, with the latest broker failure librdkafka reported, if any.
    fn with_last_failure(&self, why: &str) -> String {
        match self.connection.last_failure() {
            Some(last) if !why.contains(&last) => format!("{why} (last broker failure: {last})"),
            _ => why.to_owned(),
        }
    }

    /// Ends the run once the brokers kept refusing this client (a TLS, SASL or protocol
    /// mismatch): retrying cannot help, and the reason is what the user needs.
    fn end_if_refused(&self) {
        if let Some(verdict) = self.connection.verdict() {
            fatal(&format!("kafka source: {verdict}"));
        }
    }

    fn wake(&self) {
        if let Some(activator) = self.wake.lock().expect("wake lock").as_ref() {
            let _ = activator.activate();
        }
    }
}

impl ClientContext for SourceContext {
    /// librdkafka says when every broker is down, but not when one is back: its statistics
    /// (every second) tell, even while no record flows.
    fn stats(&self, statistics: rdkafka::Statistics) {
        if statistics.brokers.values().any(|b| b.state == "UP") {
            self.reachable();
        }
    }

    /// Every broker failure comes as a `FAIL` line (the error events carry only the worst),
    /// and is recorded; lines are forwarded to `tracing` from the configured level up, an
    /// identical one at most every ten seconds.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        diagnostics::on_log(&self.connection, &self.throttle, self.log_level, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is not an error: it arrives here as `Global(PartitionEOF)`
        // when librdkafka reports it through the error callback, and used to log a warning.
        let code = error.rdkafka_error_code();
        if matches!(error, KafkaError::PartitionEOF(_))
            || code == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        {
            return;
        }
        // Only refusals: other broker failures came as `FAIL` lines already, and "all brokers
        // down" is not one (it must not break a run of refusals).
        if diagnostics::Refusal::classify(code, reason).is_some() {
            self.connection.failure(code, reason);
        }
        if let Some(repeats) = self.throttle.admit(&format!("{error}: {reason}")) {
            tracing::warn!(worker_id = self.worker, %error, reason, repeats, "kafka client error");
        }
        if matches!(code, Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown)) {
            self.unreachable(reason);
        }
        self.wake();
    }
}

/// Stops the process with a one-line reason, as the binary does for other fatal faults: the
/// source cannot continue, and the run must not look like it is merely waiting.
fn fatal(message: &str) -> ! {
    eprintln!("millstream: fatal: {message}");
    std::process::exit(1);
}

/// Commits are made synchronously by the committer thread, so there is no callback to serve.
impl ConsumerContext for SourceContext {}

/// One owned partition.
struct Partition {
    topic_index: usize,
    topic: Arc<str>,
    c_topic: CString,
    partition: i32,
    queue: Option<PartitionQueue<SourceContext>>,
    watermark: Watermark,
    /// The next offset to process.
    next_offset: i64,
    /// With `--stop-at-end`: where this partition's backfill ends.
    end: Option<i64>,
    done: bool,
    /// Reached the end of the log (no record waiting) and since then read nothing.
    at_end: bool,
    last_record: Instant,
    ledger: OffsetLedger,
    /// Started from the group's committed offset.
    resumed: bool,
    /// Restored from a checkpoint: the records read again up to where the checkpoint stood.
    replay: Option<Replay>,
    /// With checkpoints: the records emitted at times the source's capability has not passed.
    flight: VecDeque<InFlight>,
}

impl Partition {
    fn new(
        found: &Found,
        topic: &str,
        time: &TimeModel,
        floor: EventTime,
        restore: Option<&Restore>,
    ) -> Self {
        // A partition joining a running source starts at the source's capability: it must
        // not emit before times that may already have been passed.
        let mut watermark = if floor == 0 {
            time.watermark()
        } else {
            Watermark::resume(Some(floor + time.allowed_lateness_ms), time.allowed_lateness_ms)
                .with_max_future(time.max_future_ms)
        };
        let mut found = found.clone();
        let mut replay = None;
        if let Some(restore) = restore {
            // With checkpoints the group's commits are for monitoring only: a partition starts
            // where the checkpoint stood, or (unknown to it) where `start_from` says.
            found.resumed = false;
            match restore.partitions.get(&(topic.to_owned(), found.partition)) {
                Some(saved) => {
                    let (start, replaying) = saved.resume(restore.boundary);
                    tracing::info!(
                        topic,
                        partition = found.partition,
                        start,
                        replay_until = replaying.as_ref().map(|r| r.until),
                        replayed = replaying.as_ref().map_or(0, |r| r.entries.len()),
                        boundary = restore.boundary,
                        "partition restored from the checkpoint"
                    );
                    found.start = start;
                    replay = replaying;
                    watermark = Watermark::resume(saved.max_seen, time.allowed_lateness_ms)
                        .with_max_future(time.max_future_ms);
                }
                None => {
                    tracing::info!(
                        topic,
                        partition = found.partition,
                        start = found.fresh_start,
                        "partition not in the checkpoint: starting where start_from says"
                    );
                    found.start = found.fresh_start;
                }
            }
        }
        let found = &found;
        Partition {
            topic_index: found.topic_index,
            topic: Arc::from(topic),
            c_topic: CString::new(topic).expect("topic names have no NUL"),
            partition: found.partition,
            queue: None,
            watermark,
            next_offset: found.start,
            end: found.end,
            done: found.end.is_some_and(|end| found.start >= end),
            at_end: false,
            last_record: Instant::now(),
            ledger: OffsetLedger::default(),
            resumed: found.resumed,
            replay,
            flight: VecDeque::new(),
        }
    }

    /// The partition as a checkpoint at `boundary` saves it.
    fn saved(&self, boundary: EventTime) -> SavedPartition {
        SavedPartition {
            topic: self.topic.to_string(),
            partition: self.partition,
            next_offset: self.replay.as_ref().map_or(self.next_offset, |r| r.until.max(self.next_offset)),
            max_seen: self.watermark.max_seen(),
            in_flight: self
                .flight
                .iter()
                .copied()
                .filter(|e| e.stamp >= boundary)
                .chain(self.replay.iter().flat_map(|r| r.entries.iter().copied()))
                .collect(),
        }
    }

    fn origin(&self, offset: i64) -> Origin {
        Origin {
            stream: ((self.topic_index as u32) << PARTITION_BITS) | self.partition as u32,
            offset: offset as u64,
        }
    }
}

/// A worker's reading state, shared with its [`KafkaSourceHandle`].
struct Reader {
    consumer: Arc<BaseConsumer<SourceContext>>,
    partitions: Vec<Partition>,
    discovered: bool,
    discovery: Receiver<Discovery>,
    _stop_discovery: Sender<()>,
    committer: Committer,
}

impl Reader {
    /// Hands every partition's durable offset to the committer.
    fn hand_durable_offsets(&self) {
        for p in &self.partitions {
            if let Some(durable) = p.ledger.durable() {
                self.committer.want(&p.topic, p.partition, durable);
            }
        }
    }

    /// Assigns every live partition at its next offset and gives each its own queue, whose
    /// becoming non-empty wakes the operator.
    fn reassign(&mut self, wake: &SyncActivator) -> KafkaResult<()> {
        let mut list = TopicPartitionList::new();
        for p in self.partitions.iter().filter(|p| !p.done) {
            list.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next_offset))?;
        }
        self.consumer.assign(&list)?;
        for p in self.partitions.iter_mut() {
            p.queue = None;
            if p.done {
                continue;
            }
            let mut queue = self.consumer.split_partition_queue(&p.topic, p.partition).ok_or_else(|| {
                KafkaError::Subscription(format!("no queue for {}/{}", p.topic, p.partition))
            })?;
            let wake = wake.clone();
            queue.set_nonempty_callback(move || {
                let _ = wake.activate();
            });
            p.queue = Some(queue);
        }
        Ok(())
    }
}

/// Reads `input` on every worker. `durable` is the probe of every durable sink: offsets are
/// committed once it has passed the times of their records.
pub fn kafka_source<'scope>(
    scope: Scope<'scope, EventTime>,
    input: Arc<KafkaInput>,
    time: TimeModel,
    durable: ProbeHandle<EventTime>,
    checkpoints: Option<WorkerCheckpoints>,
) -> Result<(Stream<'scope, EventTime, Vec<Ingested>>, KafkaSourceHandle), KafkaError> {
    let (worker, peers) = (scope.index(), scope.peers());
    let options = input.options.clone();
    let restore = match &checkpoints {
        Some((checkpointing, _)) => {
            let mut partitions = std::collections::HashMap::new();
            if let Some(restored) = &checkpointing.restored {
                for bytes in restored.states(COMPONENT) {
                    let saved: Vec<SavedPartition> = millstream_events::checkpoint::decode(COMPONENT, bytes)
                        .unwrap_or_else(|e| fatal(&format!("kafka source: {e}")));
                    for p in saved {
                        if discovery::owner(&p.topic, p.partition, peers) == worker {
                            partitions.insert((p.topic.clone(), p.partition), p);
                        }
                    }
                }
            }
            Some(Restore { boundary: checkpointing.restored_boundary().unwrap_or(0), partitions })
        }
        None => None,
    };
    let mut config = options.client.clone();
    config
        .set("group.id", &options.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set(
            "auto.offset.reset",
            match options.start_from {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            },
        );
    if config.get("client.id").is_none() {
        config.set("client.id", format!("millstream-{worker}"));
    }
    // Bounded prefetch: librdkafka buffers this much per partition queue, whatever the lag.
    if config.get("queued.max.messages.kbytes").is_none() {
        config.set("queued.max.messages.kbytes", "4096");
    }
    if config.get("queued.min.messages").is_none() {
        config.set("queued.min.messages", "10000");
    }
    if config.get("statistics.interval.ms").is_none() {
        config.set("statistics.interval.ms", "1000");
    }
    // A fetch waits at most this long for data: librdkafka's 500 ms default adds up to half a
    // second to the latency of a quiet partition (measured with `millstream bench-kafka`).
    if config.get("fetch.wait.max.ms").is_none() {
        config.set("fetch.wait.max.ms", "100");
    }
    // librdkafka reports a disconnect (a plaintext client at a TLS listener, say) at `Info`:
    // ask for that much, and forward only what was configured.
    let log_level = config.log_level;
    if !diagnostics::at_least(RDKafkaLogLevel::Info, log_level) {
        config.set_log_level(RDKafkaLogLevel::Info);
    }
    let context = SourceContext {
        wake: Mutex::new(None),
        observer: Arc::clone(&input.observer),
        worker,
        down: std::sync::atomic::AtomicBool::new(false),
        connection: ConnectionLog::default(),
        throttle: Throttle::default(),
        log_level,
    };
    let consumer: Arc<BaseConsumer<SourceContext>> = Arc::new(config.create_with_context(context)?);
    let shared: Rc<RefCell<Option<Reader>>> = Rc::new(RefCell::new(None));
    let handle = KafkaSourceHandle(Rc::clone(&shared));

    let stream = source(scope, "KafkaSource", move |capability, info| {
        let wake = scope.worker().sync_activator_for(info.address.to_vec());
        *consumer.context().wake.lock().expect("wake lock") = Some(wake.clone());
        let discovery_wake = wake.clone();
        let (discovery, stop) =
            discovery::spawn(Arc::clone(&consumer), options.clone(), worker, peers, move || {
                let _ = discovery_wake.activate();
            });
        let committer = {
            let consumer_for_commits = Arc::clone(&consumer);
            let reachable = Arc::clone(&consumer);
            Committer::spawn(consumer_for_commits, Arc::clone(&input.observer), worker, move || {
                reachable.context().reachable()
            })
        };
        *shared.borrow_mut() = Some(Reader {
            committer,
            consumer,
            partitions: Vec::new(),
            discovered: false,
            discovery,
            _stop_discovery: stop,
        });
        let activator = scope.activator_for(Rc::clone(&info.address));
        let mut capability = capability;
        // Restored at boundary B: records of B and later are emitted again, and the first
        // downgrade (to B) registers the source's state at B.
        if let Some(boundary) = restore.as_ref().map(|r| r.boundary).filter(|b| *b > 0) {
            capability.downgrade(&(boundary - 1));
        }
        let mut capability: Option<Capability<EventTime>> = Some(capability);
        let mut last_commit = Instant::now();
        let mut last_tick = Instant::now();
        let mut stamped: Vec<(EventTime, Ingested)> = Vec::new();
        move |output| {
            let Some(cap) = capability.as_mut() else { return };
            let mut guard = shared.borrow_mut();
            let reader = guard.as_mut().expect("the reader is set at construction");

            // Partitions found by the discovery thread.
            let mut changed = false;
            while let Ok(report) = reader.discovery.try_recv() {
                match report {
                    Discovery::Partitions(found) => {
                        for f in &found {
                            let topic = &options.topics[f.topic_index];
                            let partition = Partition::new(f, topic, &time, *cap.time(), restore.as_ref());
                            if partition.resumed {
                                reader.committer.already_committed(&partition.topic, f.partition, f.start);
                            }
                            reader.partitions.push(partition);
                        }
                        reader.discovered = true;
                        changed |= !found.is_empty();
                        reader.consumer.context().reachable();
                    }
                    Discovery::Failed(why) => {
                        let context = reader.consumer.context();
                        let why = context.with_last_failure(&why);
                        if let Some(repeats) = context.throttle.admit(&why) {
                            tracing::warn!(
                                worker_id = worker,
                                why,
                                repeats,
                                "kafka discovery failed; retrying"
                            );
                        }
                        context.unreachable(&why);
                    }
                }
            }
            // Messages that reached the consumer's queue before their partition's own queue
            // existed come first: they are older than anything in the partition queue. (This
            // also serves librdkafka's log lines and error events.)
            drain_main_queue(reader, &time, *cap.time(), &mut stamped, checkpoints.is_some());
            reader.consumer.context().end_if_refused();
            if changed {
                if let Err(e) = reader.reassign(&wake) {
                    tracing::error!(worker_id = worker, error = %e, "cannot assign partitions; retrying");
                    activator.activate_after(Duration::from_secs(1));
                }
                drain_main_queue(reader, &time, *cap.time(), &mut stamped, checkpoints.is_some());
            }

            // Read, within the in-flight budget. Over budget, only the partitions holding the
            // watermark back are read: records become durable only as the frontier moves, and
            // only they can move it. Pausing them too would wait forever.
            let in_flight: usize = reader.partitions.iter().map(|p| p.ledger.in_flight()).sum();
            let in_flight_bytes: usize = reader.partitions.iter().map(|p| p.ledger.in_flight_bytes()).sum();
            let over_budget =
                in_flight >= options.max_in_flight_records || in_flight_bytes >= options.max_in_flight_bytes;
            let laggard =
                reader.partitions.iter().filter(|p| !p.done).map(|p| time.epoch(p.watermark.time())).min();
            let budget = if over_budget {
                READ_BUDGET.min(options.max_in_flight_records.max(64))
            } else {
                READ_BUDGET.min(options.max_in_flight_records.saturating_sub(in_flight).max(1))
            };
            let mut more = false;
            let now = Instant::now();
            for p in reader.partitions.iter_mut().filter(|p| !p.done) {
                if over_budget && Some(time.epoch(p.watermark.time())) != laggard {
                    continue;
                }
                let Some(queue) = p.queue.take() else { continue };
                let mut read = 0usize;
                let mut batch_max: Option<EventTime> = None;
                let mut records = 0usize;
                let mut bytes = 0usize;
                while read < budget && bytes < options.max_in_flight_bytes {
                    match queue.poll(Duration::ZERO) {
                        None => break,
                        Some(Ok(message)) => {
                            read += 1;
                            let size = message.payload_len();
                            if let Some((t, item)) =
                                ingest(&message, p, &time, *cap.time(), checkpoints.is_some())
                            {
                                batch_max = Some(batch_max.map_or(t, |m: EventTime| m.max(t)));
                                records += 1;
                                bytes += size;
                                stamped.push((t, item));
                            }
                        }
                        Some(Err(KafkaError::PartitionEOF(_))) => {
                            p.at_end = true;
                            // Whatever the replay still expected is no longer in the log.
                            p.replay = None;
                            if p.end.is_some() {
                                p.done = true;
                            }
                            break;
                        }
                        Some(Err(error)) => {
                            tracing::warn!(worker_id = worker, topic = &*p.topic, partition = p.partition, %error, "kafka fetch error");
                            break;
                        }
                    }
                }
                p.queue = Some(queue);
                if read > 0 {
                    p.last_record = now;
                }
                if records > 0 {
                    p.ledger.push_bytes(batch_max.expect("records were read"), p.next_offset, records, bytes);
                    input.observer.consumed(&p.topic, p.partition, records as u64);
                }
                if p.end.is_some_and(|end| p.next_offset >= end) {
                    p.done = true;
                }
                more |= read == budget;
            }
            if over_budget {
                // Paused until the sinks catch up; the probe does not wake us, so look again soon.
                activator.activate_after(Duration::from_millis(5));
            } else if more {
                activator.activate();
            }
            if !stamped.is_empty() {
                reader.consumer.context().reachable();
            }
            let mut run_time = None;
            let mut run: Vec<Ingested> = Vec::new();
            for (t, item) in stamped.drain(..) {
                if run_time != Some(t) {
                    if let Some(previous) = run_time {
                        output.session(&cap.delayed(&previous)).give_iterator(run.drain(..));
                    }
                    run_time = Some(t);
                }
                run.push(item);
            }
            if let Some(t) = run_time {
                output.session(&cap.delayed(&t)).give_iterator(run.drain(..));
            }

            // Idle partitions stop holding time back: their watermark follows the wall clock.
            let now = Instant::now();
            for p in reader.partitions.iter_mut().filter(|p| !p.done && p.at_end) {
                if now.duration_since(p.last_record) >= options.idle_timeout {
                    let wall = now_ms();
                    if p.watermark.max_seen().is_none_or(|m| m < wall) {
                        p.watermark = Watermark::resume(Some(wall), time.allowed_lateness_ms)
                            .with_max_future(time.max_future_ms);
                    }
                }
            }

            // Commit what every durable sink has.
            if last_commit.elapsed() >= options.commit_interval {
                last_commit = Instant::now();
                durable.with_frontier(|frontier| {
                    for p in &mut reader.partitions {
                        p.ledger.advance_observing(frontier, |latency, records| {
                            input.observer.durable(latency, records)
                        });
                    }
                });
                reader.hand_durable_offsets();
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                report_lag(reader, &*input.observer);
            }

            // Where this worker's time stands.
            let live: Vec<&Partition> = reader.partitions.iter().filter(|p| !p.done).collect();
            if reader.discovered && live.is_empty() && options.stop_at_end {
                tracing::info!(worker_id = worker, "every partition reached its end offset");
                capability = None;
                return;
            }
            let hold = if !reader.discovered {
                *cap.time()
            } else if live.is_empty() {
                // Owning nothing, this worker must not hold the others back.
                time.epoch(now_ms().saturating_sub(time.allowed_lateness_ms))
            } else {
                live.iter()
                    .map(|p| match &p.replay {
                        // Replayed records carry their times, none before the boundary.
                        Some(_) => restore.as_ref().map_or(0, |r| r.boundary),
                        None => time.epoch(p.watermark.time()),
                    })
                    .min()
                    .expect("non-empty")
            };
            if hold > *cap.time() {
                let mut crossed = false;
                if let (Some((checkpointing, registry)), true) = (&checkpoints, reader.discovered) {
                    crossed = register_boundaries(
                        checkpointing.interval_ms,
                        registry,
                        &reader.partitions,
                        *cap.time(),
                        hold,
                    );
                }
                cap.downgrade(&hold);
                input.observer.watermark(worker, hold);
                // Records emitted before the capability are in no later checkpoint: drop them
                // when a boundary passes (or the list grows long), not at every downgrade.
                if checkpoints.is_some() {
                    for p in
                        reader.partitions.iter_mut().filter(|p| crossed || p.flight.len() >= FLIGHT_PRUNE_AT)
                    {
                        p.flight.retain(|e| e.stamp >= hold);
                    }
                }
            }
            activator.activate_after(TICK.min(options.commit_interval));
        }
    });
    Ok((stream, handle))
}

/// Handles messages found on the consumer's own queue (before partition queues were split).
fn drain_main_queue(
    reader: &mut Reader,
    time: &TimeModel,
    floor: EventTime,
    stamped: &mut Vec<(EventTime, Ingested)>,
    track_flight: bool,
) {
    let consumer = Arc::clone(&reader.consumer);
    while let Some(result) = consumer.poll(Duration::ZERO) {
        let Ok(message) = result else { continue };
        let Some(p) = reader
            .partitions
            .iter_mut()
            .find(|p| *p.topic == *message.topic() && p.partition == message.partition())
        else {
            continue;
        };
        p.last_record = Instant::now();
        let size = message.payload_len();
        if let Some((t, item)) = ingest(&message, p, time, floor, track_flight) {
            p.ledger.push_bytes(t, p.next_offset, 1, size);
            stamped.push((t, item));
        }
    }
}

/// Decodes one message and stamps it: an on-time reading at its event time, a late reading
/// or a dead letter at the partition's watermark. Returns `None` for a message already read.
fn ingest(
    message: &BorrowedMessage<'_>,
    p: &mut Partition,
    time: &TimeModel,
    floor: EventTime,
    track_flight: bool,
) -> Option<(EventTime, Ingested)> {
    let offset = message.offset();
    if offset < p.next_offset {
        return None;
    }
    p.next_offset = offset + 1;
    p.at_end = false;
    let step = p.replay.as_mut().map(|r| r.next(offset));
    if p.replay.as_ref().is_some_and(|r| p.next_offset >= r.until) {
        p.replay = None;
    }
    let replayed = match step {
        Some(Replayed::Emit { stamp, late }) => Some((stamp, late)),
        Some(Replayed::Skip) => return None,
        Some(Replayed::Done) | None => None,
    };
    let payload = message.payload().unwrap_or(&[]);
    let (stamp, item) = match decode_json(payload) {
        Ok(reading) => {
            // A replayed record keeps the time and lateness it had: the watermark restored
            // already counts it.
            let (stamp, late) = match replayed {
                Some(again) => again,
                None => {
                    let arrival = p.watermark.arrive(reading.ts);
                    (
                        arrival.stamp(reading.ts, p.watermark.time()),
                        arrival == millstream_events::Arrival::Late,
                    )
                }
            };
            let origin = p.origin(offset);
            (stamp, Ingested::Accepted(Accepted::new(reading, origin, RawRef::default(), late)))
        }
        Err(rejection) => (
            p.watermark.time(),
            Ingested::Rejected(DeadLetter {
                reason: rejection.reason,
                detail: rejection.detail,
                raw: String::from_utf8_lossy(payload).into_owned(),
                source: SourceLocation::Kafka { topic: p.topic.to_string(), partition: p.partition, offset },
            }),
        ),
    };
    let stamp = match replayed {
        Some((again, _)) => again,
        None => time.epoch(stamp).max(floor),
    };
    if track_flight {
        let late = matches!(&item, Ingested::Accepted(a) if a.late);
        p.flight.push_back(InFlight { offset, stamp, late });
    }
    Some((stamp, item))
}

/// Registers the source's state for the boundaries its capability passes moving from `from`
/// to `to`: the same positions for each, with the records in flight at or after the first.
fn register_boundaries(
    interval_ms: u64,
    registry: &millstream_events::checkpoint::SharedRegistry,
    partitions: &[Partition],
    from: EventTime,
    to: EventTime,
) -> bool {
    let first = millstream_events::checkpoint::boundary_after(from, interval_ms);
    if first > to {
        return false;
    }
    let last = millstream_events::checkpoint::boundary_at_or_before(to, interval_ms);
    let saved: Vec<SavedPartition> = partitions.iter().map(|p| p.saved(first)).collect();
    registry.borrow_mut().register(millstream_events::checkpoint::Part {
        component: COMPONENT,
        from: first,
        to: last,
        state: millstream_events::checkpoint::encode(&saved),
    });
    true
}

fn report_lag(reader: &Reader, observer: &dyn KafkaSourceObserver) {
    for p in reader.partitions.iter().filter(|p| !p.done) {
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: a plain read of librdkafka's cached offsets for a partition of this consumer;
        // the topic is a valid C string that outlives the call.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                reader.consumer.client().native_ptr(),
                p.c_topic.as_ptr(),
                p.partition,
                &mut low,
                &mut high,
            )
        };
        let lag = (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
            .then(|| (high - p.next_offset).max(0));
        observer.lag(&p.topic, p.partition, lag);
    }
}

/// What a source restores: the boundary, and the saved partitions it owns now.
struct Restore {
    boundary: EventTime,
    partitions: std::collections::HashMap<(String, i32), SavedPartition>,
}
