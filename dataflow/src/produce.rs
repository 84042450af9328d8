//! `millstream produce`: loads readings into a Kafka topic, keyed by `sensor_id`.
//!
//! The input is a file (JSON lines sent as they are; CSV rows converted to contract JSON) or
//! the plant simulator. The topic is created with `--partitions` partitions when it is
//! missing. The producer is idempotent with `acks=all`, and a full local queue makes it wait,
//! never drop: every input record is delivered once, or the command fails.
//!
//! Records without a usable `sensor_id` (not JSON, no such field, not a string, empty) are
//! still sent, without a key: the processor dead-letters them with their reason.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal};
use std::iter::Peekable;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use millstream_connectors::plant_source::SimulatedPlant;
use millstream_connectors::simulate::{AssetStream, SimPayload};
use millstream_events::decode::{trim_line_end, CsvHeader};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use serde::Deserialize;

use crate::source::SourceSpec;

/// How long to wait for the brokers to answer (metadata, topic creation) before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long librdkafka may try to deliver one record (retries included) before it fails.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["file", "simulate"])))]
pub struct ProduceArgs {
    /// Bootstrap brokers: HOST:PORT[,HOST:PORT…] (a kafka:// prefix is accepted).
    #[arg(long)]
    pub brokers: String,
    /// The topic to write to; created with --partitions partitions when missing.
    #[arg(long)]
    pub topic: String,
    /// JSON lines (each line sent as it is), or CSV with a header sensor_id,ts,value[,asset_id,unit]
    /// (each row converted to a contract JSON line). Empty lines are skipped.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Readings of the plant simulator, as contract JSON lines (with its malformed records when
    /// delivery faults are on). Options as for `--source simulate:…`: seed, assets, steps,
    /// period_ms, start, faults, delivery_faults, realtime (pace by event time).
    #[arg(long, value_name = "KEY=VALUE,…", num_args = 0..=1, default_missing_value = "")]
    pub simulate: Option<String>,
    /// Records per second (default: as fast as the brokers take them).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Partitions of the topic when it has to be created (an existing topic is left as it is).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
}

/// Runs `millstream produce`; prints one summary line to stdout at the end.
pub fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let ProduceArgs { brokers, topic, file, simulate, rate, partitions } = args;
    // The input first: an unreadable file fails before any broker is contacted.
    let mut input = match (&file, &simulate) {
        (Some(path), None) => Input::File(FileLines::open(path)?),
        (None, Some(options)) => Input::Simulated(Simulated::new(options)?),
        _ => bail!("give exactly one of --file PATH and --simulate"),
    };
    let brokers = bootstrap_servers(&brokers)?;
    if topic.is_empty() {
        bail!("--topic must not be empty");
    }

    let producer = create_producer(&brokers)?;
    let partitions = ensure_topic(&brokers, &producer, &topic, partitions)?;

    let bar = progress_bar(&input);
    let started = Instant::now();
    let mut pacer = rate.map(Pacer::new);
    let mut sent = 0u64;
    let mut unkeyed = 0u64;
    let mut progress = 0u64;
    while let Some(record) = input.next_record() {
        let record = record?;
        if let Some(after) = record.due {
            wait_until(&producer, started + after);
        }
        if let Some(pacer) = pacer.as_mut() {
            pacer.wait(&producer);
        }
        if record.key.is_none() {
            unkeyed += 1;
        }
        send(&producer, &topic, record.key.as_deref(), &record.value)?;
        sent += 1;
        progress += record.progress;
        if sent & 1023 == 0 {
            bar.set_position(progress);
            producer.context().check()?;
        }
    }
    bar.set_position(progress);
    bar.set_message("flushing");
    let flushed = producer.flush(MESSAGE_TIMEOUT + Duration::from_secs(30));
    bar.finish_and_clear();
    producer.context().check()?;
    flushed.context("records were not delivered in time")?;
    let delivered = producer.context().delivered.load(Ordering::Relaxed);
    if delivered != sent {
        bail!("only {delivered} of {sent} records were delivered to {topic}");
    }
    let seconds = started.elapsed().as_secs_f64();
    if unkeyed > 0 {
        eprintln!("millstream: {unkeyed} records had no sensor_id and were sent without a key");
    }
    println!(
        "produced {sent} records to {topic} ({partitions} partitions) in {seconds:.2} s ({:.0} records/s)",
        sent as f64 / seconds.max(1e-9)
    );
    Ok(())
}

/// `HOST:PORT[,HOST:PORT…]`, with an optional `kafka://` prefix and trailing `/`.
fn bootstrap_servers(brokers: &str) -> anyhow::Result<String> {
    let list = brokers.trim();
    let list = list.strip_prefix("kafka://").unwrap_or(list).trim_end_matches('/');
    let hosts: Vec<&str> = list.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() || hosts.iter().any(|h| h.contains('/') || !h.contains(':')) {
        bail!("--brokers `{brokers}`: expected HOST:PORT[,HOST:PORT…]");
    }
    Ok(hosts.join(","))
}

fn create_producer(brokers: &str) -> anyhow::Result<BaseProducer<Deliveries>> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Java's partitioner, so other clients agree on which partition holds a sensor.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("compression.type", "none")
        .set("message.timeout.ms", MESSAGE_TIMEOUT.as_millis().to_string())
        // Metadata requests must not create the topic with the broker's defaults.
        .set("allow.auto.create.topics", "false")
        .create_with_context(Deliveries::default())
        .context("cannot create a Kafka producer")
}

/// Makes sure `topic` exists (creating it with `partitions` partitions when missing) and
/// returns how many partitions it has.
fn ensure_topic(
    brokers: &str,
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let count = topic_partitions(producer, topic, CONNECT_TIMEOUT)
        .map_err(|e| anyhow!("cannot reach the Kafka brokers {brokers} within {CONNECT_TIMEOUT:?}: {e}"))?;
    if let Some(count) = count {
        return Ok(count);
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("cannot create a Kafka admin client")?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options =
        AdminOptions::new().operation_timeout(Some(CONNECT_TIMEOUT)).request_timeout(Some(CONNECT_TIMEOUT));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let results = runtime
        .block_on(admin.create_topics([&new_topic], &options))
        .with_context(|| format!("cannot create topic {topic}"))?;
    for result in results {
        match result {
            // Someone else created it meanwhile: use it as it is.
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name}: {code}"),
        }
    }
    // Creation is asynchronous on some brokers: wait until the metadata shows the topic.
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        if let Some(count) = topic_partitions(producer, topic, left)? {
            return Ok(count);
        }
        if Instant::now() >= deadline {
            bail!("topic {topic} was created but does not appear in the brokers' metadata");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The partition count of `topic`, or `None` when the brokers do not know it.
fn topic_partitions(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Option<usize>> {
    let metadata = producer.client().fetch_metadata(Some(topic), timeout)?;
    let Some(entry) = metadata.topics().iter().find(|t| t.name() == topic) else { return Ok(None) };
    match entry.error().map(RDKafkaErrorCode::from) {
        None if !entry.partitions().is_empty() => Ok(Some(entry.partitions().len())),
        None
        | Some(RDKafkaErrorCode::UnknownTopicOrPartition)
        | Some(RDKafkaErrorCode::LeaderNotAvailable) => Ok(None),
        Some(code) => bail!("topic {topic}: {code}"),
    }
}

/// Enqueues one record; when librdkafka's queue is full, serves delivery reports until there
/// is room (never drops).
fn send(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    key: Option<&str>,
    value: &[u8],
) -> anyhow::Result<()> {
    let mut record = BaseRecord::<str, [u8]>::to(topic).payload(value);
    if let Some(key) = key {
        record = record.key(key);
    }
    loop {
        match producer.send(record) {
            Ok(()) => {
                producer.poll(Duration::ZERO);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(5));
                producer.context().check()?;
            }
            Err((e, _)) => return Err(e).with_context(|| format!("cannot produce to {topic}")),
        }
    }
}

/// Serves delivery reports until `deadline` (a wait that still does useful work).
fn wait_until(producer: &BaseProducer<Deliveries>, deadline: Instant) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        producer.poll(left.min(Duration::from_millis(100)));
    }
}

/// `--rate`: a token bucket of one second's records. Sending while behind does not wait; a
/// stall longer than the bucket is not made up with a burst.
struct Pacer {
    interval: Duration,
    burst: Duration,
    next: Instant,
}

impl Pacer {
    fn new(rate: u64) -> Self {
        Pacer {
            interval: Duration::from_secs(1) / rate.min(u32::MAX as u64) as u32,
            burst: Duration::from_secs(1),
            next: Instant::now(),
        }
    }

    fn wait(&mut self, producer: &BaseProducer<Deliveries>) {
        let now = Instant::now();
        if self.next > now + Duration::from_millis(1) {
            // Ahead of the rate: sleep (serving delivery reports) instead of spinning.
            wait_until(producer, self.next);
        } else if now.saturating_duration_since(self.next) > self.burst {
            self.next = now - self.burst;
        }
        self.next += self.interval;
    }
}

/// Counts deliveries and keeps the first failure (also the benchmark's producer context).
#[derive(Default)]
pub(crate) struct Deliveries {
    pub(crate) delivered: AtomicU64,
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

impl Deliveries {
    /// Fails once any record has failed: with an idempotent producer that is fatal.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        let failed = self.failed.load(Ordering::Relaxed);
        if failed == 0 {
            return Ok(());
        }
        let first = self.first_failure.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
        bail!("{failed} records could not be delivered; first error: {first}")
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| error.to_string());
            }
        }
    }
}

/// One record to send.
struct Outgoing {
    key: Option<String>,
    value: Vec<u8>,
    /// Progress units this record completes (bytes of the file, or 1 simulated record).
    progress: u64,
    /// When to send it, counted from the start (the simulator's `realtime` option).
    due: Option<Duration>,
}

enum Input {
    File(FileLines),
    Simulated(Simulated),
}

impl Input {
    fn next_record(&mut self) -> Option<anyhow::Result<Outgoing>> {
        match self {
            Input::File(f) => f.next_record(),
            Input::Simulated(s) => s.next().map(Ok),
        }
    }
}

fn progress_bar(input: &Input) -> ProgressBar {
    let (total, template) = match input {
        Input::File(f) => (f.size, "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}"),
        Input::Simulated(s) => {
            (s.total, "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} records {per_sec} {msg}")
        }
    };
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template(template).expect("template is valid"));
    bar
}

/// The key of a JSON line: its `sensor_id` when that is a non-empty string. Only that field is
/// parsed; anything else (not JSON, no such field) gives no key.
fn sensor_key(line: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct KeyOnly<'a> {
        #[serde(borrow, default)]
        sensor_id: Option<Cow<'a, str>>,
    }
    let parsed: KeyOnly<'_> = serde_json::from_slice(line).ok()?;
    parsed.sensor_id.filter(|s| !s.is_empty()).map(Cow::into_owned)
}

/// The lines of a file, as records: JSON lines as they are, CSV rows as contract JSON.
struct FileLines {
    path: PathBuf,
    reader: BufReader<File>,
    /// `Some` for CSV (its header line is already read).
    csv: Option<CsvHeader>,
    size: u64,
    line: Vec<u8>,
    line_number: u64,
}

impl FileLines {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let size = file.metadata().with_context(|| format!("cannot read {}", path.display()))?.len();
        let mut lines = FileLines {
            path: path.to_owned(),
            reader: BufReader::with_capacity(1 << 20, file),
            csv: None,
            size,
            line: Vec::new(),
            line_number: 0,
        };
        // The format, decided like the file source does: a `.csv` extension, or a first line
        // that is not a JSON object but is a CSV header naming the contract's columns.
        let first = lines.reader.fill_buf().with_context(|| format!("cannot read {}", path.display()))?;
        let end = memchr::memchr(b'\n', first).unwrap_or(first.len());
        let first_line = trim_line_end(&first[..end]);
        let first_line = first_line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(first_line);
        let csv_extension = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        let looks_like_json = first_line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let header = if csv_extension {
            Some(CsvHeader::parse(first_line).map_err(|e| anyhow!("{}: {e}", path.display()))?)
        } else if !looks_like_json && !first_line.is_empty() {
            CsvHeader::parse(first_line).ok()
        } else {
            None
        };
        if header.is_some() {
            // Skip the header line.
            let consumed = (end + 1).min(first.len());
            lines.reader.consume(consumed);
            lines.line_number = 1;
        }
        lines.csv = header;
        Ok(lines)
    }

    fn next_record(&mut self) -> Option<anyhow::Result<Outgoing>> {
        loop {
            self.line.clear();
            let read = match self.reader.read_until(b'\n', &mut self.line) {
                Ok(0) => return None,
                Ok(n) => n as u64,
                Err(e) => {
                    return Some(Err(e).with_context(|| format!("cannot read {}", self.path.display())))
                }
            };
            self.line_number += 1;
            let text = trim_line_end(&self.line);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let (key, value) = match self.csv.as_mut() {
                None => (sensor_key(text), text.to_vec()),
                Some(header) => match header.decode(text) {
                    Ok(reading) => {
                        (Some(reading.sensor_id.to_string()), reading.to_contract_json().into_bytes())
                    }
                    // A row that is no reading is still sent, as it is: the processor
                    // dead-letters it.
                    Err(_) => (None, text.to_vec()),
                },
            };
            return Some(Ok(Outgoing { key, value, progress: read, due: None }));
        }
    }
}

/// The simulator's records of all assets, merged in delivery order (ties by asset index).
struct Simulated {
    streams: Vec<Peekable<AssetStream>>,
    /// (delivered_at, asset) of each stream's next record.
    heads: BinaryHeap<Reverse<(u64, usize)>>,
    start: u64,
    speed: Option<f64>,
    total: u64,
}

impl Simulated {
    fn new(options: &str) -> anyhow::Result<Self> {
        let spec: SourceSpec =
            format!("simulate:{options}").parse().map_err(|e| anyhow!("--simulate: {e}"))?;
        let SourceSpec::Simulate(options) = spec else { unreachable!("a simulate: spec parses as Simulate") };
        let plant = SimulatedPlant::from_options(&options).map_err(|e| anyhow!("--simulate: {e}"))?;
        let simulator = &plant.simulator;
        let mut streams: Vec<_> =
            (0..simulator.config().assets).map(|a| simulator.asset_stream(a).peekable()).collect();
        let heads = streams
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.peek().map(|r| Reverse((r.delivered_at, i))))
            .collect();
        Ok(Simulated {
            streams,
            heads,
            start: simulator.config().start,
            speed: plant.realtime_speed,
            total: simulator.total_records(),
        })
    }
}

impl Iterator for Simulated {
    type Item = Outgoing;

    fn next(&mut self) -> Option<Outgoing> {
        let Reverse((_, asset)) = self.heads.pop()?;
        let stream = &mut self.streams[asset];
        let record = stream.next().expect("a stream in the heap has a record");
        if let Some(next) = stream.peek() {
            self.heads.push(Reverse((next.delivered_at, asset)));
        }
        let due = self.speed.map(|speed| {
            Duration::from_secs_f64(record.delivered_at.saturating_sub(self.start) as f64 / 1000.0 / speed)
        });
        let (key, value) = match record.payload {
            SimPayload::Reading(reading) => (Some(reading.sensor_id.to_string()), reading.to_contract_json()),
            SimPayload::Malformed(text) => (sensor_key(text.as_bytes()), text),
        };
        Some(Outgoing { key, value: value.into_bytes(), progress: 1, due })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_sensor_id_when_there_is_one() {
        assert_eq!(sensor_key(br#"{"sensor_id":"p1/t","ts":1,"value":2}"#).as_deref(), Some("p1/t"));
        assert_eq!(
            sensor_key(br#"{"ts":1,"value":{"x":[1,2]},"sensor_id":"a\/b\u0041"}"#).as_deref(),
            Some("a/bA")
        );
        assert_eq!(sensor_key(br#"{"sensor_id":"","ts":1,"value":2}"#), None);
        assert_eq!(sensor_key(br#"{"sensor_id":7,"ts":1,"value":2}"#), None);
        assert_eq!(sensor_key(br#"{"ts":1,"value":2}"#), None);
        assert_eq!(sensor_key(br#"{"sensor_id":"x/y","ts":1,"#), None);
        assert_eq!(sensor_key(b"not json"), None);
        assert_eq!(sensor_key(b"\xff\xfe"), None);
    }

    #[test]
    fn brokers_accept_a_list_and_a_kafka_prefix() {
        assert_eq!(bootstrap_servers("h:1").unwrap(), "h:1");
        assert_eq!(bootstrap_servers("kafka://h:1, g:2/").unwrap(), "h:1,g:2");
        assert!(bootstrap_servers("").is_err());
        assert!(bootstrap_servers("kafka://h:1/topic").is_err());
        assert!(bootstrap_servers("justahost").is_err());
    }

    #[test]
    fn csv_rows_become_contract_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        std::fs::write(
            &path,
            "sensor_id,ts,value,unit\np1/t,1772323200000,1.5,degC\n\nbad,row\np2/v,2026-03-01T00:00:01Z,2,\n",
        )
        .unwrap();
        let mut lines = FileLines::open(&path).unwrap();
        let mut out = Vec::new();
        while let Some(record) = lines.next_record() {
            let record = record.unwrap();
            out.push((record.key, String::from_utf8(record.value).unwrap()));
        }
        assert_eq!(
            out,
            vec![
                (
                    Some("p1/t".to_owned()),
                    r#"{"sensor_id":"p1/t","asset_id":"p1","ts":"2026-03-01T00:00:00.000Z","value":1.5,"unit":"degC"}"#
                        .to_owned()
                ),
                (None, "bad,row".to_owned()),
                (
                    Some("p2/v".to_owned()),
                    r#"{"sensor_id":"p2/v","asset_id":"p2","ts":"2026-03-01T00:00:01.000Z","value":2.0}"#.to_owned()
                ),
            ]
        );
    }

    #[test]
    fn json_lines_are_sent_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"sensor_id\":\"a/b\", \"ts\":1,\"value\":1}\r\n\n  \nnot json\n{\"x\":1}")
            .unwrap();
        let mut lines = FileLines::open(&path).unwrap();
        let mut out = Vec::new();
        while let Some(record) = lines.next_record() {
            let record = record.unwrap();
            out.push((record.key, String::from_utf8(record.value).unwrap()));
        }
        assert_eq!(
            out,
            vec![
                (Some("a/b".to_owned()), "{\"sensor_id\":\"a/b\", \"ts\":1,\"value\":1}".to_owned()),
                (None, "not json".to_owned()),
                (None, "{\"x\":1}".to_owned()),
            ]
        );
        assert!(FileLines::open(&dir.path().join("missing.jsonl")).is_err());
    }

    #[test]
    fn the_simulator_yields_every_record_in_delivery_order() {
        let mut sim = Simulated::new("assets=3,steps=20,seed=5").unwrap();
        let total = sim.total;
        let records: Vec<Outgoing> = sim.by_ref().collect();
        assert_eq!(records.len() as u64, total);
        assert!(records.iter().all(|r| r.due.is_none()));
        let keyed = records.iter().filter(|r| r.key.is_some()).count();
        assert!(keyed >= 3 * 5 * 19, "{keyed} keyed records");
        // Deterministic.
        let again: Vec<Vec<u8>> =
            Simulated::new("assets=3,steps=20,seed=5").unwrap().map(|r| r.value).collect();
        assert_eq!(again, records.iter().map(|r| r.value.clone()).collect::<Vec<_>>());
        assert!(Simulated::new("bogus=1").is_err());
    }

    #[test]
    fn the_pacer_keeps_the_rate_without_bursting_after_a_stall() {
        let mut pacer = Pacer::new(1000);
        pacer.next = Instant::now() - Duration::from_secs(10);
        let producer = create_producer("127.0.0.1:9").unwrap();
        pacer.wait(&producer);
        // A 10 s stall leaves at most one second of records to send at once.
        assert!(pacer.next + Duration::from_millis(1100) >= Instant::now());
        let started = Instant::now();
        for _ in 0..1200 {
            pacer.wait(&producer);
        }
        let elapsed = started.elapsed();
        // 1000 records of catch-up, then 200 at 1 ms each.
        assert!(
            elapsed >= Duration::from_millis(150) && elapsed < Duration::from_millis(1500),
            "{elapsed:?}"
        );
    }
}
