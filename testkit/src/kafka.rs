//! [`TestKafka`]: a throwaway Kafka-protocol broker ([tansu]) for tests.
//!
//! The broker runs as a child process on a free loopback port, with its `sqlite://` storage in
//! a temporary directory (so its data survives [`TestKafka::stop`] and [`TestKafka::restart`]),
//! and is killed when the value is dropped. Helpers produce, read back and inspect topics with
//! rdkafka, synchronously.
//!
//! ```no_run
//! let kafka = millstream_testkit::kafka::TestKafka::start()?;
//! kafka.create_topic("readings", 4)?;
//! kafka.produce("readings", &[(Some(b"s1".to_vec()), b"{}".to_vec())])?;
//! assert_eq!(kafka.consume_all("readings")?.len(), 1);
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! The broker program is found through the `TANSU` environment variable (a path), else in
//! `$CARGO_HOME/bin`, `~/.cargo/bin` or on `PATH`. Install it with
//! `cargo install tansu --locked --features dynostore,libsql` (about 15 to 19 minutes).
//!
//! [tansu]: https://github.com/tansu-io/tansu

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::process::{free_port, log_tail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

/// How long [`TestKafka::start`] and [`TestKafka::restart`] wait for the broker to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one produce, read or admin call may take before it fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The broker's log, in its data directory.
const LOG_FILE: &str = "tansu.log";

/// A tansu broker for tests, on `127.0.0.1:PORT`, killed on drop.
pub struct TestKafka {
    /// The data directory (the broker's working directory): `broker.db` and [`LOG_FILE`].
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    /// The running broker; `None` after [`TestKafka::stop`].
    child: Mutex<Option<Child>>,
}

/// A record read back by [`TestKafka::consume_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// In the order they were sent; a header without a value reads as an empty value.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A record for [`TestKafka::produce_records`]: an explicit partition and headers, when a test
/// needs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestRecord {
    /// `None`: the producer's partitioner chooses (by key hash; any partition without a key).
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl TestKafka {
    /// Starts a broker on a free loopback port with fresh `sqlite://` storage, and waits (up to
    /// 30 s) until it accepts connections and answers a metadata request. Fails with a clear
    /// error when the `tansu` program is missing.
    pub fn start() -> Result<Self> {
        let bin = find_tansu()?;
        let dir = tempfile::Builder::new()
            .prefix("millstream-kafka-")
            .tempdir()
            .context("cannot create a temporary directory for the broker")?;
        let mut kafka = TestKafka { dir, port: 0, bin, child: Mutex::new(None) };
        // A free port is only free until someone takes it: retry on a clash.
        let mut last_error = None;
        for _ in 0..5 {
            kafka.port = free_port()?;
            match kafka.launch() {
                Ok(()) => return Ok(kafka),
                Err(e) if kafka.log().contains("in use") => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no free port")))
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `kafka://127.0.0.1:PORT`, as millstream's sources and sinks name a cluster.
    pub fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's data directory (its working directory).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates `name` with `partitions` partitions (replication 1) and waits until the broker's
    /// metadata shows all of them. Fails when the topic exists already.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> =
            self.config().create().context("cannot create a Kafka admin client")?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let options =
            AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT)).request_timeout(Some(CALL_TIMEOUT));
        let results = block_on(admin.create_topics([&topic], &options))
            .with_context(|| format!("cannot create topic {name}"))?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("cannot create topic {topic}: {code}");
            }
        }
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            match self.partitions(name) {
                Ok(n) if n == partitions => return Ok(()),
                Ok(n) if Instant::now() >= deadline => {
                    bail!("topic {name} has {n} partitions after creation, expected {partitions}")
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// How many partitions `topic` has, from the broker's metadata. Fails when it is missing.
    pub fn partitions(&self, topic: &str) -> Result<i32> {
        let consumer = self.consumer(None)?;
        Ok(partition_ids(consumer.client(), topic)?.len() as i32)
    }

    /// The topics the broker knows, sorted.
    pub fn topics(&self) -> Result<Vec<String>> {
        let consumer = self.consumer(None)?;
        let metadata = consumer.fetch_metadata(None, CALL_TIMEOUT).context("cannot fetch metadata")?;
        let mut names: Vec<String> = metadata.topics().iter().map(|t| t.name().to_owned()).collect();
        names.sort();
        Ok(names)
    }

    /// Kills the broker (SIGKILL): a crash, for fault tests. Its data stays for
    /// [`TestKafka::restart`]. Does nothing when it is not running.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(mut process) = child.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts the broker again on the same port and data directory (killing it first if it
    /// is running), and waits until it answers.
    pub fn restart(&self) -> Result<()> {
        self.stop();
        // The port was ours a moment ago; if the kernel has not let it go yet, try again.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Err(e) if Instant::now() < deadline && self.log().contains("in use") => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                result => return result,
            }
        }
    }

    /// Whether the broker process is running (it was started and has not exited).
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        matches!(child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The broker's log so far (stdout and stderr of every start).
    pub fn log(&self) -> String {
        std::fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Produces `records` (key, value) to `topic`, partitioned by key, with `acks=all`, and
    /// waits until every one is delivered.
    pub fn produce(&self, topic: &str, records: &[(Option<Vec<u8>>, Vec<u8>)]) -> Result<()> {
        let records: Vec<TestRecord> = records
            .iter()
            .map(|(key, value)| TestRecord {
                key: key.clone(),
                value: value.clone(),
                ..TestRecord::default()
            })
            .collect();
        self.produce_records(topic, &records)
    }

    /// Produces `records` to `topic` (to their partition when they name one, with their
    /// headers), with `acks=all` and idempotence, and waits until every one is delivered.
    pub fn produce_records(&self, topic: &str, records: &[TestRecord]) -> Result<()> {
        let mut config = self.config();
        config.set("acks", "all").set("enable.idempotence", "true").set("linger.ms", "5");
        let producer: BaseProducer<Deliveries> =
            config.create_with_context(Deliveries::default()).context("cannot create a Kafka producer")?;
        // tansu creates no topic on demand: a record for a missing topic would wait until
        // the timeout, so say so at once.
        partition_ids(producer.client(), topic)?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        for record in records {
            let mut message = BaseRecord::to(topic).payload(&record.value);
            if let Some(key) = &record.key {
                message = message.key(key);
            }
            if let Some(partition) = record.partition {
                message = message.partition(partition);
            }
            if !record.headers.is_empty() {
                let headers = record.headers.iter().fold(OwnedHeaders::new(), |headers, (key, value)| {
                    headers.insert(Header { key, value: Some(value.as_slice()) })
                });
                message = message.headers(headers);
            }
            loop {
                match producer.send(message) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        message = back;
                        producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => return Err(e).with_context(|| format!("cannot produce to {topic}")),
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer
            .flush(deadline.saturating_duration_since(Instant::now()))
            .with_context(|| format!("records to {topic} not delivered within {CALL_TIMEOUT:?}"))?;
        let context = producer.context();
        let failed = context.failed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(first) = failed.first() {
            bail!("{} of {} records to {topic} failed; first: {first}", failed.len(), records.len());
        }
        let delivered = context.delivered.load(Ordering::Relaxed);
        if delivered != records.len() as u64 {
            bail!("{delivered} of {} records to {topic} were delivered", records.len());
        }
        Ok(())
    }

    /// Every record of every partition of `topic`, from the beginning up to the high watermark
    /// each partition had when called, sorted by (partition, offset). Commits nothing. Fails
    /// when the topic is missing or the records do not arrive within 30 s.
    pub fn consume_all(&self, topic: &str) -> Result<Vec<ConsumedRecord>> {
        let consumer = self.consumer(None)?;
        let partitions = partition_ids(consumer.client(), topic)?;
        let mut assignment = TopicPartitionList::new();
        // Per partition, the offset to read up to (exclusive).
        let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
        for &partition in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, CALL_TIMEOUT)
                .with_context(|| format!("cannot fetch the watermarks of {topic}/{partition}"))?;
            if high > low {
                pending.insert(partition, high);
                assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
            }
        }
        let mut records = Vec::new();
        if pending.is_empty() {
            return Ok(records);
        }
        consumer.assign(&assignment).with_context(|| format!("cannot assign the partitions of {topic}"))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        while !pending.is_empty() {
            if Instant::now() >= deadline {
                bail!(
                    "reading {topic}: still waiting after {CALL_TIMEOUT:?} for partitions (partition: end \
                     offset) {pending:?}; read {} records",
                    records.len()
                );
            }
            let Some(result) = consumer.poll(Duration::from_millis(200)) else { continue };
            let message = match result {
                Ok(message) => message,
                // End-of-partition events and transient fetch errors: keep polling.
                Err(KafkaError::PartitionEOF(_)) => continue,
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {topic}")),
            };
            let (partition, offset) = (message.partition(), message.offset());
            let Some(&end) = pending.get(&partition) else { continue };
            if offset < end {
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect()
                    })
                    .unwrap_or_default();
                records.push(ConsumedRecord {
                    partition,
                    offset,
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            if offset + 1 >= end {
                pending.remove(&partition);
            }
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        Ok(records)
    }

    /// The offsets consumer group `group` has committed for `topic`, by partition (the next
    /// offset to read). Partitions without a commit are absent.
    pub fn committed_offsets(&self, group: &str, topic: &str) -> Result<BTreeMap<i32, i64>> {
        let consumer = self.consumer(Some(group))?;
        let partitions = partition_ids(consumer.client(), topic)?;
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            list.add_partition(topic, partition);
        }
        let committed = consumer
            .committed_offsets(list, CALL_TIMEOUT)
            .with_context(|| format!("cannot fetch the offsets of group {group} on {topic}"))?;
        Ok(committed
            .elements_for_topic(topic)
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) if offset >= 0 => Some((e.partition(), offset)),
                _ => None,
            })
            .collect())
    }

    /// A client configuration for this broker (`bootstrap.servers` set), for tests that need
    /// their own producer or consumer.
    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap()).set("broker.address.family", "v4");
        config
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    /// A consumer that commits nothing; in `group` (for committed offsets) or a private one.
    fn consumer(&self, group: Option<&str>) -> Result<BaseConsumer> {
        static PRIVATE: AtomicU64 = AtomicU64::new(0);
        let group = match group {
            Some(g) => g.to_owned(),
            None => format!(
                "millstream-testkit-{}-{}",
                std::process::id(),
                PRIVATE.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let mut config = self.config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        config.create().context("cannot create a Kafka consumer")
    }

    /// Spawns the broker and waits until it answers; on failure the broker is killed and the
    /// error carries the end of its log.
    fn launch(&self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("cannot open {}", self.log_path().display()))?;
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .arg("broker")
            .args(["--listener-url", &listener, "--advertised-listener-url", &listener])
            // tansu 0.6 reads the path after sqlite:// relative to its working directory.
            .args(["--storage-engine", "sqlite://broker.db"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        *self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(child);
        self.wait_ready().map_err(|e| {
            self.stop();
            let log = self.log();
            e.context(format!("tansu did not start on port {}; log:\n{}", self.port, log_tail(&log, 15)))
        })
    }

    fn wait_ready(&self) -> Result<()> {
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        loop {
            if !self.is_running() {
                bail!("the broker exited");
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok() {
                match self.consumer(None).and_then(|c| {
                    let metadata = c.fetch_metadata(None, Duration::from_secs(2))?;
                    if metadata.brokers().is_empty() {
                        bail!("metadata lists no broker");
                    }
                    Ok(())
                }) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!("no metadata from 127.0.0.1:{} within {READY_TIMEOUT:?} ({last})", self.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TestKafka {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for TestKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestKafka(127.0.0.1:{}, {})", self.port, self.dir.path().display())
    }
}

/// Counts deliveries and keeps failures, so a produce call can tell that all arrived.
#[derive(Default)]
struct Deliveries {
    delivered: AtomicU64,
    failed: Mutex<Vec<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => self.failed.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string()),
        }
    }
}

/// The partition ids of `topic`, sorted; fails when the broker does not know the topic.
fn partition_ids<C: ClientContext>(client: &Client<C>, topic: &str) -> Result<Vec<i32>> {
    let metadata = client
        .fetch_metadata(Some(topic), CALL_TIMEOUT)
        .with_context(|| format!("cannot fetch the metadata of {topic}"))?;
    let entry = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow!("topic {topic} is not in the broker's metadata"))?;
    if let Some(error) = entry.error() {
        bail!("topic {topic}: {}", RDKafkaErrorCode::from(error));
    }
    let mut ids: Vec<i32> = entry.partitions().iter().map(|p| p.id()).collect();
    if ids.is_empty() {
        bail!("topic {topic} has no partitions");
    }
    ids.sort_unstable();
    Ok(ids)
}

fn is_transient(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
        )
    )
}

/// Runs an rdkafka future (admin calls) to completion on this thread.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds")
        .block_on(future)
}

/// The tansu program: `TANSU`, `$CARGO_HOME/bin/tansu`, `~/.cargo/bin/tansu`, or on `PATH`.
fn find_tansu() -> Result<PathBuf> {
    crate::process::find_program(
        "tansu",
        "TANSU",
        "the Kafka-protocol broker",
        "`cargo install tansu --locked --features dynostore,libsql` (about 15 to 19 minutes)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, key: &str, value: String, headers: &[(&str, &str)]) -> TestRecord {
        TestRecord {
            partition: Some(partition),
            key: Some(key.as_bytes().to_vec()),
            value: value.into_bytes(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(),
        }
    }

    #[test]
    fn kafka_produces_and_reads_back_every_partition() -> Result<()> {
        let kafka = TestKafka::start()?;
        kafka.create_topic("t4", 4)?;
        assert_eq!(kafka.partitions("t4")?, 4);
        assert!(kafka.topics()?.contains(&"t4".to_owned()));
        assert!(kafka.create_topic("t4", 4).is_err(), "creating an existing topic fails");

        // Keyed: a key always lands on the same partition.
        let keyed: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..200)
            .map(|i| (Some(format!("sensor-{}", i % 10).into_bytes()), format!("v{i}").into_bytes()))
            .collect();
        kafka.produce("t4", &keyed)?;
        let records = kafka.consume_all("t4")?;
        assert_eq!(records.len(), 200);
        let mut partition_of_key = BTreeMap::new();
        for r in &records {
            let key = r.key.clone().expect("keyed");
            assert_eq!(*partition_of_key.entry(key).or_insert(r.partition), r.partition);
        }
        // Offsets are dense from 0 in every partition, and values of a key keep their order.
        for partition in 0..4 {
            let offsets: Vec<i64> =
                records.iter().filter(|r| r.partition == partition).map(|r| r.offset).collect();
            assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>(), "partition {partition}");
        }
        let values_of = |key: &str| -> Vec<usize> {
            records
                .iter()
                .filter(|r| r.key.as_deref() == Some(key.as_bytes()))
                .map(|r| String::from_utf8_lossy(&r.value)[1..].parse().unwrap())
                .collect()
        };
        assert_eq!(values_of("sensor-3"), (0..20).map(|i| i * 10 + 3).collect::<Vec<_>>());

        // Explicit partitions, headers, and a record without a key.
        kafka.produce_records(
            "t4",
            &[
                record(2, "h", "with headers".into(), &[("reason", "bad_json"), ("source", "{}")]),
                TestRecord { partition: Some(3), value: b"no key".to_vec(), ..TestRecord::default() },
            ],
        )?;
        let records = kafka.consume_all("t4")?;
        assert_eq!(records.len(), 202);
        let with_headers = records.iter().find(|r| r.value == b"with headers").unwrap();
        assert_eq!(with_headers.partition, 2);
        assert_eq!(
            with_headers.headers,
            vec![("reason".to_owned(), b"bad_json".to_vec()), ("source".to_owned(), b"{}".to_vec())]
        );
        let no_key = records.iter().find(|r| r.value == b"no key").unwrap();
        assert_eq!((no_key.partition, no_key.key.as_ref()), (3, None));
        assert!(records.iter().filter(|r| r.value != b"with headers").all(|r| r.headers.is_empty()));

        // An empty topic reads as nothing; a missing one is an error.
        kafka.create_topic("empty", 2)?;
        assert!(kafka.consume_all("empty")?.is_empty());
        assert!(kafka.consume_all("missing").is_err());
        let error = kafka.produce("missing", &[(None, b"x".to_vec())]).unwrap_err();
        assert!(format!("{error:#}").contains("UnknownTopicOrPartition"), "{error:#}");
        assert!(kafka.committed_offsets("nobody", "t4")?.is_empty());
        Ok(())
    }

    #[test]
    fn kafka_keeps_its_data_across_a_restart() -> Result<()> {
        let kafka = TestKafka::start()?;
        kafka.create_topic("durable", 2)?;
        let first: Vec<_> = (0..50).map(|i| (Some(vec![i as u8]), format!("a{i}").into_bytes())).collect();
        kafka.produce("durable", &first)?;

        // A group commits offsets, then the broker crashes.
        let mut config = kafka.config();
        config.set("group.id", "g1").set("enable.auto.commit", "false");
        let consumer: BaseConsumer = config.create()?;
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset("durable", 0, Offset::Offset(7))?;
        consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync)?;
        drop(consumer);
        assert_eq!(kafka.committed_offsets("g1", "durable")?, BTreeMap::from([(0, 7)]));

        kafka.stop();
        assert!(!kafka.is_running());
        kafka.restart()?;
        assert!(kafka.is_running());

        let records = kafka.consume_all("durable")?;
        assert_eq!(records.len(), 50);
        assert_eq!(kafka.partitions("durable")?, 2);
        assert_eq!(kafka.committed_offsets("g1", "durable")?, BTreeMap::from([(0, 7)]));
        // Offsets continue after the restart.
        kafka.produce("durable", &[(Some(vec![0]), b"after".to_vec())])?;
        let records = kafka.consume_all("durable")?;
        assert_eq!(records.len(), 51);
        let after = records.iter().find(|r| r.value == b"after").unwrap();
        let before = records.iter().filter(|r| r.partition == after.partition).count() as i64 - 1;
        assert_eq!(after.offset, before);
        assert!(kafka.log().contains("tansu"), "the log has the broker's banner");
        Ok(())
    }
}
