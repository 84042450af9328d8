//! Faults injected with librdkafka's mock cluster (`rdkafka::mocking::MockCluster`). The mock
//! brokers run inside this test process, on loopback ports. The real `millstream` binary reads
//! from them and writes to them, and meanwhile the test takes every broker down and up again,
//! then makes offset commits fail, then produce requests. All through the run the test checks
//! that no offset is committed past a result that is not durable yet (every anomaly and dead
//! letter whose record lies before a committed offset is in the sink already). At the end it
//! checks that nothing was lost.
//!
//! What the mock cluster cannot do, and what these tests do about it:
//! - It has no CreateTopics API (rdkafka's `mocking.rs`: "The Topic Admin API (CreateTopics) is
//!   not supported by the mock broker"). The test creates every topic with
//!   `MockCluster::create_topic`, and the Kafka sink finds them there.
//! - It does not check the sequence numbers of an idempotent producer that is not
//!   transactional (see [`RUN_OPTIONS`]), so the run keeps one request in flight per connection.
//! - Injected errors are consumed by whichever request of that API comes next, from any client.
//!   The test tops them up while a fault lasts.
//!
//! The two tests take a lock and run one at a time. When they ran side by side (two mock
//! clusters, two runs, on two cores), runs stalled for tens of seconds, one cluster's outage went
//! unseen by its run, and committed offsets fell back and ended short of the end offsets.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{
    free_port, http_get, millstream, read_json, reading_identity, run_ok, write_mixed_input, Mixed,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer, ProducerContext};
use rdkafka::types::{RDKafkaApiKey, RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde_json::Value;

const INPUT: &str = "readings";
const NOTIFICATIONS: &str = "millstream.notifications";
const DEAD_LETTERS: &str = "millstream.dead-letters";
const GROUP: &str = "millstream";
const PARTITIONS: i32 = 4;
/// How long one faulty run may take before the test gives up on it (it takes 12 to 28 s).
const RUN_LIMIT: Duration = Duration::from_secs(45);
/// How long the brokers stay down.
const OUTAGE: Duration = Duration::from_secs(4);
/// How long offset commits fail, at least: until one has failed (after the outage, librdkafka
/// may take a few seconds to find the coordinator again, and sends no commit until then), or
/// [`GIVE_UP`].
const COMMIT_FAULT: Duration = Duration::from_secs(3);
const GIVE_UP: Duration = Duration::from_secs(10);
/// How long produce requests fail: longer than the delivery timeout.
const PRODUCE_FAULT: Duration = Duration::from_secs(3);
/// The run's librdkafka options. A short delivery timeout, so that deliveries fail and come
/// back to the sink, instead of librdkafka retrying them for 30 s. Small fetches (with the
/// brokers' 20 ms round trip), so that the run lasts long enough for every fault. Reconnects
/// at least once a second once the brokers are back (librdkafka's default backoff grows to
/// 10 s). One request in flight per connection: the mock broker does not check the sequence
/// numbers of an idempotent producer that is not transactional, so with two produce requests
/// in flight, a failed first one and a successful second one make librdkafka report the first
/// one's records delivered (an "implicit ack", offset -1001) although the mock never wrote them.
/// A real broker refuses the second request (OUT_OF_ORDER_SEQUENCE_NUMBER).
const RUN_OPTIONS: &str = "[kafka.options]\n\
                           \"message.timeout.ms\" = \"2000\"\n\
                           \"max.partition.fetch.bytes\" = \"2048\"\n\
                           \"reconnect.backoff.max.ms\" = \"1000\"\n\
                           \"max.in.flight.requests.per.connection\" = \"1\"\n";

type Mock = MockCluster<'static, DefaultProducerContext>;

/// A mock cluster of 3 brokers with the input topic and the sink's two topics, 4 partitions each.
fn mock_cluster() -> (Mock, String) {
    let mock = MockCluster::new(3).expect("a mock cluster starts");
    for topic in [INPUT, NOTIFICATIONS, DEAD_LETTERS] {
        mock.create_topic(topic, PARTITIONS, 1).expect("the mock cluster creates a topic");
    }
    let bootstrap = mock.bootstrap_servers();
    (mock, bootstrap)
}

/// A client configuration for the test's own consumers.
fn client(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("reconnect.backoff.max.ms", "1000")
        .set("fetch.wait.max.ms", "10");
    config
}

/// Where each input line went.
struct Produced {
    /// By line index (0-based): (partition, offset).
    placed: Vec<(i32, i64)>,
    /// The end offset of every partition.
    ends: BTreeMap<i32, i64>,
}

/// (partition, offset) of a record.
type At = (i32, i64);

/// Delivery reports of the input: (line index, where it went or why not).
#[derive(Default)]
struct Placements(Mutex<Vec<(usize, Result<At, String>)>>);

impl ClientContext for Placements {}

impl ProducerContext for Placements {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, line: usize) {
        let placed = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.0.lock().unwrap().push((line, placed));
    }
}

/// Produces every line of `path` (empty and invalid lines too) to the input topic, keyed by its
/// `sensor_id` when it has one, in small batches (a fetch returns few records: the run takes a
/// while).
fn produce_input(bootstrap: &str, path: &Path) -> Produced {
    let producer: BaseProducer<Placements> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("batch.num.messages", "64")
        .create_with_context(Placements::default())
        .expect("a producer");
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let key = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v["sensor_id"].as_str().filter(|s| !s.is_empty()).map(str::to_owned));
        let mut record = BaseRecord::with_opaque_to(INPUT, i).payload(line.as_bytes());
        if let Some(key) = &key {
            record = record.key(key.as_str());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("cannot produce line {i}: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("the input is delivered");
    let mut placed = vec![(-1, -1); lines.len()];
    for (line, result) in producer.context().0.lock().unwrap().drain(..) {
        placed[line] = result.unwrap_or_else(|e| panic!("line {line} was not delivered: {e}"));
    }
    assert!(placed.iter().all(|&(p, _)| p >= 0), "every line was delivered");
    let mut ends: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    for &(p, o) in &placed {
        let end = ends.get_mut(&p).unwrap();
        *end = (*end).max(o + 1);
    }
    assert_eq!(ends.values().sum::<i64>(), lines.len() as i64, "offsets are dense from 0");
    Produced { placed, ends }
}

/// What a file-source run of the same input gives, located in the input topic.
struct Reference {
    /// Anomalies by event id, with the (partition, offset) of their reading.
    anomalies: BTreeMap<String, (Value, (i32, i64))>,
    /// Dead letters by the (partition, offset) of the refused record: their reason.
    dead_letters: BTreeMap<(i32, i64), String>,
}

fn reference_run(dir: &Path, input: &Mixed, produced: &Produced) -> Reference {
    let out = dir.join("reference");
    run_ok(&[
        "run",
        "--source",
        &format!("file:{}", input.path.display()),
        "--sink",
        &format!("jsonl:{}", out.display()),
    ]);
    // (sensor_id, ts, value bits) → the first line with that reading. A later exact copy is a
    // duplicate, in the same partition (same key), after it.
    let text = std::fs::read_to_string(&input.path).unwrap();
    let mut first_line: BTreeMap<(String, u64, u64), usize> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        if let Some(identity) = reading_identity(&v) {
            first_line.entry(identity).or_insert(i);
        }
    }
    let anomalies = read_json(&out.join("anomalies.jsonl"))
        .into_iter()
        .map(|a| {
            let line = first_line[&reading_identity(&a).unwrap()];
            (a["event_id"].as_str().unwrap().to_owned(), (a, produced.placed[line]))
        })
        .collect();
    let dead_letters = read_json(&out.join("dead_letters.jsonl"))
        .into_iter()
        .map(|d| {
            let line = d["source"]["line"].as_u64().expect("a file dead letter has its line") as usize;
            (produced.placed[line - 1], d["reason"].as_str().unwrap().to_owned())
        })
        .collect();
    Reference { anomalies, dead_letters }
}

/// The group's committed offsets by partition; `None` when the brokers do not answer in time.
fn committed_offsets(consumer: &BaseConsumer, timeout: Duration) -> Option<BTreeMap<i32, i64>> {
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(INPUT, p);
    }
    let committed = consumer.committed_offsets(list, timeout).ok()?;
    Some(
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => (e.partition(), o),
                _ => (e.partition(), 0),
            })
            .collect(),
    )
}

/// A consumer in the run's group that never commits: it reads the group's committed offsets.
fn group_watcher(bootstrap: &str) -> BaseConsumer {
    client(bootstrap).set("group.id", GROUP).set("enable.auto.commit", "false").create().expect("a consumer")
}

/// A record read back from a sink topic.
struct Record {
    value: Vec<u8>,
    key: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
}

impl Record {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Reads a topic from the beginning, incrementally: each [`TopicReader::catch_up`] reads up to
/// the high watermarks the brokers report at that moment.
struct TopicReader {
    topic: &'static str,
    consumer: BaseConsumer,
    next: BTreeMap<i32, i64>,
    records: Vec<Record>,
}

impl TopicReader {
    fn new(bootstrap: &str, topic: &'static str) -> Self {
        let consumer: BaseConsumer = client(bootstrap)
            .set("group.id", format!("kafka-faults-reader-{}-{topic}", std::process::id()))
            .set("enable.auto.commit", "false")
            .create()
            .expect("a consumer");
        let mut list = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            list.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&list).unwrap();
        TopicReader { topic, consumer, next: (0..PARTITIONS).map(|p| (p, 0)).collect(), records: Vec::new() }
    }

    /// Reads everything written so far; false when the brokers did not answer in time.
    fn catch_up(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ends = BTreeMap::new();
        for p in 0..PARTITIONS {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.consumer.fetch_watermarks(self.topic, p, left) {
                Ok((_, high)) => ends.insert(p, high),
                Err(_) => return false,
            };
        }
        while ends.iter().any(|(p, end)| self.next[p] < *end) {
            if Instant::now() >= deadline {
                return false;
            }
            let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(50)) else { continue };
            let next = self.next.get_mut(&m.partition()).unwrap();
            if m.offset() < *next {
                continue;
            }
            *next = m.offset() + 1;
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            self.records.push(Record {
                value: m.payload().unwrap_or_default().to_vec(),
                key: m.key().map(<[u8]>::to_vec),
                headers,
            });
        }
        true
    }

    /// The (partition, offset) of the records the dead letters read so far refer to.
    fn dead_letter_sources(&self) -> BTreeSet<(i32, i64)> {
        self.records.iter().map(dead_letter_source).collect()
    }
}

fn dead_letter_source(dead: &Record) -> (i32, i64) {
    let partition = dead.header("source_partition").expect("a source_partition header");
    let offset = dead.header("source_offset").expect("a source_offset header");
    (partition.parse().unwrap(), offset.parse().unwrap())
}

/// The complete lines of a JSONL file being written (none when it does not exist yet).
fn complete_json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete.lines().map(|l| serde_json::from_str(l).expect("output lines are JSON")).collect()
}

/// The (partition, offset) of a jsonl dead letter's Kafka record.
fn jsonl_dead_letter_source(dead: &Value) -> (i32, i64) {
    assert_eq!(dead["source"]["topic"], INPUT, "a dead letter from the input topic: {dead}");
    (dead["source"]["partition"].as_i64().unwrap() as i32, dead["source"]["offset"].as_i64().unwrap())
}

/// The value of a metric sample (the line starting with `sample`, labels included).
fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The faults, in the order they are injected as the run reads its way through the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Until a tenth of the input is read.
    Start,
    /// Every broker is down, since then, for [`OUTAGE`].
    Down(Instant),
    /// The brokers are up again.
    Up,
    /// OffsetCommit requests fail, since then, for [`COMMIT_FAULT`] (once 30 % of the input
    /// is read).
    CommitErrors(Instant),
    /// Commits work again.
    CommitsWork,
    /// Produce requests fail, since then, for [`PRODUCE_FAULT`] (once half the input is read,
    /// with the Kafka sink).
    ProduceErrors(Instant),
    /// Produce requests work again.
    ProducesWork,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Down(_) => "down",
            Phase::Up => "up",
            Phase::CommitErrors(_) => "commit errors",
            Phase::CommitsWork => "commits work",
            Phase::ProduceErrors(_) => "produce errors",
            Phase::ProducesWork => "produces work",
        }
    }
}

/// What the test saw while the run went on.
#[derive(Debug, Default)]
struct Observed {
    /// Points at which the committed offsets and the durable outputs were compared.
    checks: usize,
    /// Checks skipped because the brokers did not answer in time.
    skipped: usize,
    /// The most reference anomalies and dead letters found behind the committed offsets at one
    /// check (all of them durable).
    behind_commit: (usize, usize),
    /// Components /health/ready called not ready while the brokers were down.
    not_ready_while_down: BTreeSet<String>,
    /// The phase in which /health/ready first answered 200 after the outage.
    ready_after_outage: Option<&'static str>,
    /// millstream_kafka_source_disconnected was 1 at some point.
    source_disconnected: bool,
    /// Phases in which millstream_sink_circuit_open{sink="kafka"} was seen at 1.
    circuit_open_in: BTreeSet<&'static str>,
    /// The largest value of millstream_kafka_commit_failures_total.
    commit_failures_metric: f64,
    /// How often a partition's committed offset was seen lower than at an earlier check, and
    /// the first few: (partition, highest seen before, now, phase). librdkafka sends older
    /// commits after newer ones: those it retries, and those it held back while the outage
    /// lasted, sent seconds later. Not a loss: only more to read again after a crash.
    regressions: (usize, Vec<(i32, i64, i64, &'static str)>),
    /// millstream_sink_records_total{sink="kafka"} when the Produce errors were injected, and last.
    sink_records: (f64, f64),
    /// The Kafka sink's log lines from the moment the Produce errors were injected.
    sink_log_after_produce_errors: Vec<String>,
    /// Changes of readiness, circuit and source connection: (seconds into the run, phase, state).
    timeline: Vec<(f64, &'static str, String)>,
    /// Phases reached, with the share of the input read when each began.
    phases: Vec<(&'static str, f64)>,
}

/// The running processor, killed if the test fails before it exits: left running, it would
/// reconnect to the mock brokers' ports, which a later test's mock cluster may be given.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

struct FaultRun<'a> {
    mock: &'a Mock,
    bootstrap: &'a str,
    dir: &'a Path,
    produced: &'a Produced,
    reference: &'a Reference,
    kafka_sink: bool,
}

impl FaultRun<'_> {
    /// Runs the processor on the input topic, injecting the faults as it goes, and checks the
    /// commit invariant at every step. Returns the exit status, the run's log and what was seen.
    fn run(&self) -> (ExitStatus, String, Observed) {
        let out = self.dir.join("kafka-out");
        let config = self.dir.join("faults.toml");
        std::fs::write(&config, RUN_OPTIONS).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let source = format!("kafka://{}/{INPUT}", self.bootstrap);
        let jsonl = format!("jsonl:{}", out.display());
        let sink = format!("kafka://{}", self.bootstrap);
        let mut args = vec!["run", "--source", &source, "--sink", &jsonl, "--emit-scores", "--stop-at-end"];
        if self.kafka_sink {
            args.extend(["--sink", &sink]);
        }
        args.extend(["-w", "2", "--http", &addr, "--config", config.to_str().unwrap()]);
        let log_path = self.dir.join("run.log");
        self.mock.broker_round_trip_time(-1, Duration::from_millis(20)).unwrap();
        let mut child = Running(
            millstream()
                .args(&args)
                .env("MILLSTREAM_KAFKA__MAX_IN_FLIGHT_RECORDS", "500")
                .env("MILLSTREAM_KAFKA__COMMIT_INTERVAL_MS", "50")
                .env("MILLSTREAM_LOG__LEVEL", "info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path).unwrap())
                .spawn()
                .expect("millstream starts"),
        );

        let total: i64 = self.produced.ends.values().sum();
        let watcher = group_watcher(self.bootstrap);
        let mut topics = self.kafka_sink.then(|| {
            (TopicReader::new(self.bootstrap, NOTIFICATIONS), TopicReader::new(self.bootstrap, DEAD_LETTERS))
        });
        let mut seen = Observed::default();
        let mut phase = Phase::Start;
        let mut highest: BTreeMap<i32, i64> = BTreeMap::new();
        let mut log_at_produce_errors = usize::MAX;
        // The share of the input the run has read, from its metrics.
        let mut consumed = 0.0;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > RUN_LIMIT {
                drop(child);
                panic!(
                    "the run did not finish within {RUN_LIMIT:?} (phase {}; seen {seen:#?})\n{}",
                    phase.name(),
                    log_note(&std::fs::read_to_string(&log_path).unwrap_or_default())
                );
            }
            let down = matches!(phase, Phase::Down(_));

            // The invariant: every result of a record before the committed offset of its
            // partition is durable. Committed offsets first, then the outputs: they only grow,
            // so what was durable when the offset was committed is there when read after.
            let timeout = if down { Duration::from_millis(200) } else { Duration::from_secs(2) };
            let committed = committed_offsets(&watcher, timeout);
            if let Some(committed) = &committed {
                for (p, o) in committed {
                    let highest = highest.entry(*p).or_insert(*o);
                    if o < highest {
                        seen.regressions.0 += 1;
                        if seen.regressions.1.len() < 10 {
                            seen.regressions.1.push((*p, *highest, *o, phase.name()));
                        }
                    }
                    *highest = (*highest).max(*o);
                }
                let durable: Option<(BTreeSet<String>, BTreeSet<At>)> = match topics.as_mut() {
                    Some((notifications, dead_letters)) => {
                        let read = notifications.catch_up(Duration::from_secs(2))
                            && dead_letters.catch_up(Duration::from_secs(2));
                        read.then(|| {
                            let ids = notifications.records.iter().filter_map(|r| r.header("event_id"));
                            (ids.map(str::to_owned).collect(), dead_letters.dead_letter_sources())
                        })
                    }
                    None => Some((
                        complete_json_lines(&out.join("anomalies.jsonl"))
                            .iter()
                            .map(|a| a["event_id"].as_str().unwrap().to_owned())
                            .collect(),
                        complete_json_lines(&out.join("dead_letters.jsonl"))
                            .iter()
                            .map(jsonl_dead_letter_source)
                            .collect(),
                    )),
                };
                match durable {
                    Some((anomalies, dead_letters)) => {
                        let behind = self.check_durable(committed, &anomalies, &dead_letters, phase);
                        seen.checks += 1;
                        seen.behind_commit.0 = seen.behind_commit.0.max(behind.0);
                        seen.behind_commit.1 = seen.behind_commit.1.max(behind.1);
                    }
                    None => seen.skipped += 1,
                }
            } else {
                seen.skipped += 1;
            }

            // Readiness and metrics.
            let mut state = String::new();
            if let Some((code, body)) = http_get(&addr, "/health/ready") {
                state = format!("ready {code} {body}");
                if down && code == 503 {
                    let body: Value = serde_json::from_str(&body).expect("the readiness answer is JSON");
                    if let Some(reasons) = body["reasons"].as_object() {
                        seen.not_ready_while_down.extend(reasons.keys().cloned());
                    }
                } else if phase >= Phase::Up && code == 200 && seen.ready_after_outage.is_none() {
                    seen.ready_after_outage = Some(phase.name());
                }
            }
            if let Some((200, text)) = http_get(&addr, "/metrics") {
                let read: f64 = text
                    .lines()
                    .filter(|l| l.starts_with("millstream_kafka_records_total{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
                consumed = read / total as f64;
                let failures = metric(&text, "millstream_kafka_commit_failures_total").unwrap_or(0.0);
                seen.commit_failures_metric = seen.commit_failures_metric.max(failures);
                seen.sink_records.1 =
                    metric(&text, "millstream_sink_records_total{sink=\"kafka\"}").unwrap_or(0.0);
                let circuit = metric(&text, "millstream_sink_circuit_open{sink=\"kafka\"}");
                let disconnected = metric(&text, "millstream_kafka_source_disconnected");
                if circuit == Some(1.0) {
                    seen.circuit_open_in.insert(phase.name());
                }
                seen.source_disconnected |= disconnected == Some(1.0);
                state += &format!("; circuit {circuit:?}; source disconnected {disconnected:?}");
            }
            if !state.is_empty() && seen.timeline.last().is_none_or(|(_, _, last)| *last != state) {
                seen.timeline.push((started.elapsed().as_secs_f64(), phase.name(), state));
            }

            // The next fault, by how much of the input the run has read (not committed: while
            // commits fail, reading goes on, and the run could end with commits still failing).
            // While requests are to fail, the errors are topped up: every request of that kind
            // fails for a while.
            let next = match (phase, consumed) {
                (Phase::Start, share) if share >= 0.10 => {
                    self.mock.broker_down(-1).unwrap();
                    Some(Phase::Down(Instant::now()))
                }
                (Phase::Down(since), _) if since.elapsed() >= OUTAGE => {
                    self.mock.broker_up(-1).unwrap();
                    Some(Phase::Up)
                }
                (Phase::Up, share) if share >= 0.30 => {
                    self.mock.request_errors(RDKafkaApiKey::OffsetCommit, &commit_errors());
                    Some(Phase::CommitErrors(Instant::now()))
                }
                (Phase::CommitErrors(since), _)
                    if since.elapsed() >= COMMIT_FAULT
                        && (commit_failed(&log_path) || since.elapsed() >= GIVE_UP) =>
                {
                    self.mock.clear_request_errors(RDKafkaApiKey::OffsetCommit);
                    Some(Phase::CommitsWork)
                }
                (Phase::CommitErrors(_), _) => {
                    self.mock.request_errors(RDKafkaApiKey::OffsetCommit, &commit_errors());
                    None
                }
                (Phase::CommitsWork, share) if self.kafka_sink && share >= 0.50 => {
                    self.mock.request_errors(RDKafkaApiKey::Produce, &produce_errors());
                    seen.sink_records.0 = seen.sink_records.1;
                    log_at_produce_errors = std::fs::metadata(&log_path).map_or(0, |m| m.len() as usize);
                    Some(Phase::ProduceErrors(Instant::now()))
                }
                (Phase::ProduceErrors(since), _) if since.elapsed() >= PRODUCE_FAULT => {
                    self.mock.clear_request_errors(RDKafkaApiKey::Produce);
                    Some(Phase::ProducesWork)
                }
                (Phase::ProduceErrors(_), _) => {
                    self.mock.request_errors(RDKafkaApiKey::Produce, &produce_errors());
                    None
                }
                _ => None,
            };
            if let Some(next) = next {
                phase = next;
                seen.phases.push((phase.name(), consumed));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        seen.sink_log_after_produce_errors = log
            .get(log_at_produce_errors..)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("millstream::kafka_sink"))
            .map(str::to_owned)
            .collect();
        // Leave the cluster healthy for the checks that follow.
        self.mock.clear_request_errors(RDKafkaApiKey::OffsetCommit);
        self.mock.clear_request_errors(RDKafkaApiKey::Produce);
        let last = if self.kafka_sink { "produce errors" } else { "commit errors" };
        assert!(
            seen.phases.iter().any(|(name, _)| *name == last),
            "the run ended before every fault was injected ({seen:#?})"
        );
        (status, log, seen)
    }

    /// Asserts that every reference anomaly and dead letter whose record lies before the
    /// committed offset of its partition is durable; returns how many there were.
    fn check_durable(
        &self,
        committed: &BTreeMap<i32, i64>,
        anomalies: &BTreeSet<String>,
        dead_letters: &BTreeSet<(i32, i64)>,
        phase: Phase,
    ) -> (usize, usize) {
        let is_committed = |(partition, offset): (i32, i64)| offset < committed[&partition];
        let mut behind = (0, 0);
        for (id, (anomaly, at)) in &self.reference.anomalies {
            if is_committed(*at) {
                behind.0 += 1;
                assert!(
                    anomalies.contains(id),
                    "offsets {committed:?} are committed (phase {}), but the anomaly of the reading at \
                     (partition, offset) {at:?} is not durable: {anomaly}",
                    phase.name()
                );
            }
        }
        for (at, reason) in &self.reference.dead_letters {
            if is_committed(*at) {
                behind.1 += 1;
                assert!(
                    dead_letters.contains(at),
                    "offsets {committed:?} are committed (phase {}), but the dead letter ({reason}) of the \
                     record at (partition, offset) {at:?} is not durable",
                    phase.name()
                );
            }
        }
        behind
    }
}

/// OffsetCommit errors to top up, a retriable one, plenty of it: two workers commit every
/// 50 ms, and a commit fails only when its request meets three in a row (librdkafka retries a
/// commit request twice, then gives up on it; millstream commits again at its next interval).
/// Not NOT_COORDINATOR or COORDINATOR_NOT_AVAILABLE: librdkafka holds those commits back until
/// it has found the coordinator again, and they never fail. Not REQUEST_TIMED_OUT either: it
/// sends librdkafka looking for the coordinator, which under load can outlast the window.
fn commit_errors() -> Vec<RDKafkaRespErr> {
    vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 200]
}

/// Produce errors to top up, ones that say the records were not written. librdkafka retries a
/// batch itself, with a growing backoff, until `message.timeout.ms` (2 s here) runs out; then
/// the delivery fails and the sink sends the record again after its own backoff. Errors after
/// which a record may have been written, such as REQUEST_TIMED_OUT, are left out: see
/// [`RUN_OPTIONS`]. A non-retriable error such as TOPIC_AUTHORIZATION_FAILED makes librdkafka
/// refuse every later record for the topic, and the sink stops the run.
fn produce_errors() -> Vec<RDKafkaRespErr> {
    [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR,
    ]
    .repeat(50)
}

/// Whether the run's log shows an offset commit that failed on an injected error: the
/// committer's warning, with the error's text. (The outage makes commits fail too, with another
/// error: "Waiting for coordinator".)
fn injected_commit_failure(log: &str) -> bool {
    log.lines().any(|l| l.contains("offset commit failed") && l.contains("Coordinator load in progress"))
}

fn commit_failed(log_path: &Path) -> bool {
    std::fs::read_to_string(log_path).is_ok_and(|log| injected_commit_failure(&log))
}

/// The end of the run's log, for assertion messages.
fn log_note(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" anomaly ")).collect();
    format!("the run's log (end):\n{}", lines[lines.len().saturating_sub(40)..].join("\n"))
}

/// After the run: exit 0, every offset committed, every record processed (a score line) or
/// refused (a dead letter), and the jsonl sink holds the file source's anomalies and dead letters.
fn check_complete(
    bootstrap: &str,
    out: &Path,
    produced: &Produced,
    reference: &Reference,
    status: ExitStatus,
    log: &str,
) {
    assert!(status.success(), "the run failed: {status}\n{}", log_note(log));
    let committed =
        committed_offsets(&group_watcher(bootstrap), Duration::from_secs(10)).expect("committed offsets");
    assert_eq!(committed, produced.ends, "every offset is committed at the end");

    let scores = read_json(&out.join("scores.jsonl"));
    let dead = read_json(&out.join("dead_letters.jsonl"));
    assert_eq!(scores.len() + dead.len(), produced.placed.len(), "scores + dead letters = produced records");
    let dead_by_offset: BTreeMap<(i32, i64), String> = dead
        .iter()
        .map(|d| (jsonl_dead_letter_source(d), d["reason"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(dead_by_offset.len(), dead.len(), "one dead letter per refused record");
    assert_eq!(dead_by_offset, reference.dead_letters, "the jsonl dead letters are the file source's");

    let anomalies = read_json(&out.join("anomalies.jsonl"));
    let by_id: BTreeMap<String, Value> =
        anomalies.iter().map(|a| (a["event_id"].as_str().unwrap().to_owned(), a.clone())).collect();
    assert_eq!(by_id.len(), anomalies.len(), "the jsonl sink writes each anomaly once");
    let expected: BTreeMap<String, Value> =
        reference.anomalies.iter().map(|(id, (a, _))| (id.clone(), a.clone())).collect();
    assert_eq!(by_id, expected, "the jsonl anomalies are the file source's");
}

/// The faults were visible from outside, and the run recovered from the outage.
fn check_faults_seen(seen: &Observed, log: &str) {
    assert!(seen.checks >= 20, "the invariant was checked at {} points only", seen.checks);
    assert!(
        seen.behind_commit.0 > 0 && seen.behind_commit.1 > 0,
        "no anomaly or no dead letter was behind the committed offsets at a check ({:?})",
        seen.behind_commit
    );
    assert!(
        seen.not_ready_while_down.contains("kafka source"),
        "/health/ready did not call the source not ready while the brokers were down ({:?})\n{}",
        seen.not_ready_while_down,
        log_note(log)
    );
    assert!(seen.source_disconnected, "millstream_kafka_source_disconnected did not rise during the outage");
    // The OffsetCommit errors made commits fail: the source's committer logs each failure
    // (and counts it in millstream_kafka_commit_failures_total) and retries.
    assert!(
        injected_commit_failure(log),
        "no offset commit failed after the OffsetCommit errors\n{}",
        log_note(log)
    );
}

/// One faulty run at a time: each is timed against the others' CPU (two workers, a mock
/// cluster, and the test polling), and the test machine may have two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn prepare(dir: &Path, seed: u64) -> (Produced, Reference, Mock, String) {
    let (mock, bootstrap) = mock_cluster();
    let input = write_mixed_input(dir, 20, 3_000, seed);
    let produced = produce_input(&bootstrap, &input.path);
    let reference = reference_run(dir, &input, &produced);
    assert!(reference.anomalies.len() >= 10, "the input has anomalies ({})", reference.anomalies.len());
    assert!(
        reference.dead_letters.len() >= 10,
        "the input has dead letters ({})",
        reference.dead_letters.len()
    );
    (produced, reference, mock, bootstrap)
}

/// Every broker goes down for 4 s, then offset commits fail: the source never commits past a
/// result the (jsonl) sink does not have, and the run completes with everything.
#[test]
fn broker_outage_and_commit_errors_lose_nothing_and_commit_only_durable_results() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (produced, reference, mock, bootstrap) = prepare(dir.path(), 11);
    let prepared = started.elapsed();
    let run = FaultRun {
        mock: &mock,
        bootstrap: &bootstrap,
        dir: dir.path(),
        produced: &produced,
        reference: &reference,
        kafka_sink: false,
    };
    let (status, log, seen) = run.run();
    eprintln!("prepared in {prepared:.1?}, ran in {:.1?}; seen: {seen:#?}", started.elapsed() - prepared);
    check_complete(&bootstrap, &dir.path().join("kafka-out"), &produced, &reference, status, &log);
    check_faults_seen(&seen, &log);
    assert!(seen.ready_after_outage.is_some(), "/health/ready never answered 200 again after the outage");
}

/// The same faults, then failing produce requests, with the Kafka sink: no offset is committed
/// past an anomaly or a dead letter that is not in its topic yet, and at the end the topics hold
/// every anomaly and dead letter.
#[test]
fn broker_outage_commit_and_produce_errors_with_the_kafka_sink_lose_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (produced, reference, mock, bootstrap) = prepare(dir.path(), 23);
    let prepared = started.elapsed();
    let run = FaultRun {
        mock: &mock,
        bootstrap: &bootstrap,
        dir: dir.path(),
        produced: &produced,
        reference: &reference,
        kafka_sink: true,
    };
    let (status, log, seen) = run.run();
    eprintln!("prepared in {prepared:.1?}, ran in {:.1?}; seen: {seen:#?}", started.elapsed() - prepared);
    check_complete(&bootstrap, &dir.path().join("kafka-out"), &produced, &reference, status, &log);

    // Every anomaly is in the notification topic: at least once, and every copy is the event the
    // file source gives.
    let mut notifications = TopicReader::new(&bootstrap, NOTIFICATIONS);
    assert!(notifications.catch_up(Duration::from_secs(20)), "the notification topic can be read");
    let mut delivered: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for n in &notifications.records {
        let value: Value = serde_json::from_slice(&n.value).unwrap();
        assert_eq!(n.header("event_id"), value["event_id"].as_str(), "event_id travels in a header");
        assert_eq!(n.key.as_deref(), value["asset_id"].as_str().map(str::as_bytes), "keyed by asset");
        delivered.entry(value["event_id"].as_str().unwrap().to_owned()).or_default().push(value);
    }
    for (id, (anomaly, _)) in &reference.anomalies {
        let copies =
            delivered.get(id).unwrap_or_else(|| panic!("anomaly {id} was never notified: {anomaly}"));
        assert!(
            copies.iter().all(|c| c == anomaly),
            "copies of {id} differ from the file source's: {copies:?}"
        );
    }
    let unexpected: Vec<&String> =
        delivered.keys().filter(|id| !reference.anomalies.contains_key(*id)).collect();
    assert!(unexpected.is_empty(), "notifications the file source does not give: {unexpected:?}");

    // Every dead letter is in the dead-letter topic, by its source offset, with its reason.
    let mut dead_topic = TopicReader::new(&bootstrap, DEAD_LETTERS);
    assert!(dead_topic.catch_up(Duration::from_secs(20)), "the dead-letter topic can be read");
    let mut dead: BTreeMap<(i32, i64), BTreeSet<String>> = BTreeMap::new();
    for d in &dead_topic.records {
        assert_eq!(d.header("source_topic"), Some(INPUT));
        dead.entry(dead_letter_source(d)).or_default().insert(d.header("reason").unwrap().to_owned());
    }
    let dead: BTreeMap<(i32, i64), String> = dead
        .into_iter()
        .map(|(at, reasons)| {
            assert_eq!(reasons.len(), 1, "copies of the dead letter of {at:?} differ: {reasons:?}");
            (at, reasons.into_iter().next().unwrap())
        })
        .collect();
    assert_eq!(dead, reference.dead_letters, "the dead-letter topic holds the file source's dead letters");

    check_faults_seen(&seen, &log);
    assert!(
        seen.not_ready_while_down.iter().any(|c| c.starts_with("kafka sink")),
        "/health/ready did not call the Kafka sink not ready while the brokers were down ({:?})",
        seen.not_ready_while_down
    );
    // Ready again once the brokers are back, before anything else fails.
    assert!(
        matches!(seen.ready_after_outage, Some("up" | "commit errors" | "commits work")),
        "/health/ready did not answer 200 between the outage and the produce errors (first 200 in: \
         {:?}); timeline: {:#?}",
        seen.ready_after_outage,
        seen.timeline
    );
    // The produce errors reached the sink: deliveries failed (its circuit opened), were sent
    // again, and succeeded.
    assert!(
        seen.circuit_open_in.contains("produce errors"),
        "millstream_sink_circuit_open{{sink=\"kafka\"}} was not 1 while produce requests failed"
    );
    let after = &seen.sink_log_after_produce_errors;
    assert!(
        after.iter().any(|l| l.contains("delivery failed; retrying")),
        "no delivery failed after the Produce errors: {after:#?}"
    );
    assert!(
        after.iter().any(|l| l.contains("circuit closed")),
        "the sink's circuit did not close again after the Produce errors: {after:#?}"
    );
}
