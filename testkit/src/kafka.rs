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
//! # TLS and SASL
//!
//! [`TestKafka::builder`] starts a broker that wants TLS ([`TestKafkaBuilder::tls`]), SASL/SCRAM
//! ([`TestKafkaBuilder::scram_user`]), or both; the helpers of this module then use them too.
//!
//! - **SASL** is tansu's own: `tansu broker --authentication` accepts `SCRAM-SHA-256` and
//!   `SCRAM-SHA-512` (checked against credentials in its storage), and refuses `PLAIN`
//!   (tansu-auth 0.6.0 builds rsasl with only the `scram-sha-2` and `oauthbearer` mechanisms;
//!   librdkafka sees `NoSharedMechanism`). Users are provisioned with
//!   `tansu user create --broker tcp://… NAME PASSWORD --mechanism scram256|scram512`, an
//!   AlterUserScramCredentials request; a broker with `--authentication` refuses it from an
//!   unauthenticated client (and the `tansu` CLI cannot authenticate), so users are created
//!   on a first start without `--authentication`, kept in the `sqlite://` storage, and the
//!   broker is then started again with it. A failed authentication closes the connection
//!   (there is no SaslAuthenticate error response): clients see a disconnect in state
//!   `AUTH_HANDSHAKE`/`AUTH_REQ`.
//! - **TLS** is *not* something tansu 0.6.0 can do, although `tansu broker --help` lists
//!   `--cert` and `--key`: (1) `tansu-cli-0.6.0/src/cli/broker.rs:98,102` puts both in the clap
//!   group `tls`, so giving both fails (`the argument '--cert <CERT>' cannot be used with
//!   '--key <KEY>'`), while (2) line 265-267 builds the rustls config only when both are given
//!   (and drops a loading error with `.ok()`); and (3) even then
//!   `tansu-broker-0.6.0/src/broker.rs:268` builds the acceptor as `let _acceptor = …` and
//!   never uses it: every connection is served as plain TCP. The listener URL scheme is not
//!   looked at (only its host and port). Unchanged on tansu's main branch (now `nisshi-*`,
//!   2026). So for TLS the broker listens on a second, private loopback port and a small TLS
//!   terminator (Python's `ssl` and `asyncio`, a script written to the data directory and run
//!   with `python3`, or `PYTHON`) listens on [`TestKafka::port`] with a server certificate for
//!   `localhost` and `127.0.0.1` signed by a throwaway CA ([`TestKafka::ca_certificate`]);
//!   the broker advertises the terminator's port, so every connection a client makes goes
//!   through TLS. Certificates are made with the `openssl` program.
//!
//! [tansu]: https://github.com/tansu-io/tansu

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
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
/// The TLS terminator's log, in the data directory.
const TLS_LOG_FILE: &str = "tls-proxy.log";
/// The SCRAM user the helpers of a SASL broker authenticate as.
const TESTKIT_USER: &str = "millstream-testkit";
const TESTKIT_PASSWORD: &str = "millstream-testkit-secret";

/// A TLS terminator: accepts TLS on `argv[1]` (certificate `argv[3]`, key `argv[4]`) and
/// forwards the bytes to the broker on `127.0.0.1:argv[2]`. Exits when its stdin closes (when
/// the test process ends, even by a crash).
const TLS_PROXY: &str = r#"
import asyncio, ssl, sys

listen_port, broker_port, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)

async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except Exception:
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass

async def handle(client_reader, client_writer):
    try:
        broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", broker_port)
    except OSError as error:
        print(f"cannot reach the broker: {error}", flush=True)
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, broker_writer), pipe(broker_reader, client_writer))

async def main():
    server = await asyncio.start_server(
        handle, "127.0.0.1", listen_port, ssl=context, ssl_handshake_timeout=10, reuse_address=True
    )
    print(f"tls proxy on 127.0.0.1:{listen_port} -> 127.0.0.1:{broker_port}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    server.close()

asyncio.run(main())
"#;

/// A tansu broker for tests, on `127.0.0.1:PORT`, killed on drop.
pub struct TestKafka {
    /// The data directory (the broker's working directory): `broker.db` and [`LOG_FILE`].
    dir: tempfile::TempDir,
    /// The port clients connect to (and the broker advertises).
    port: u16,
    /// The broker's own listener: [`TestKafka::port`], or a private port behind TLS.
    broker_port: u16,
    bin: PathBuf,
    /// The running broker; `None` after [`TestKafka::stop`].
    child: Mutex<Option<Child>>,
    tls: Option<Tls>,
    /// Whether the broker requires SASL (`--authentication`).
    sasl: bool,
}

/// The TLS side of a [`TestKafka`]: the certificates and the terminator in front of the broker.
struct Tls {
    ca: PathBuf,
    certificate: PathBuf,
    key: PathBuf,
    python: PathBuf,
    /// The terminator and its stdin (closing it ends the terminator).
    proxy: Mutex<Option<(Child, ChildStdin)>>,
}

/// A SCRAM mechanism a [`TestKafka`] user is provisioned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scram {
    Sha256,
    Sha512,
}

impl Scram {
    /// The name librdkafka's `sasl.mechanism` and millstream's `kafka.sasl.mechanism` use.
    pub fn mechanism(self) -> &'static str {
        match self {
            Scram::Sha256 => "SCRAM-SHA-256",
            Scram::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The name `tansu user create --mechanism` uses.
    fn tansu_name(self) -> &'static str {
        match self {
            Scram::Sha256 => "scram256",
            Scram::Sha512 => "scram512",
        }
    }
}

/// A broker that wants TLS, SASL, or both: from [`TestKafka::builder`].
#[derive(Debug, Clone, Default)]
pub struct TestKafkaBuilder {
    tls: bool,
    users: Vec<(String, String, Scram)>,
}

impl TestKafkaBuilder {
    /// Clients must connect with TLS (`security.protocol=ssl`, or `sasl_ssl` with SASL),
    /// trusting [`TestKafka::ca_certificate`].
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Clients must authenticate with SASL/SCRAM (the broker runs with `--authentication`);
    /// `name` may, with `password` and `mechanism` (only that one). Repeatable.
    pub fn scram_user(mut self, name: &str, password: &str, mechanism: Scram) -> Self {
        self.users.push((name.to_owned(), password.to_owned(), mechanism));
        self
    }

    /// Starts the broker (as [`TestKafka::start`] does), with its users and TLS.
    pub fn start(self) -> Result<TestKafka> {
        TestKafka::start_with(self)
    }
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
        Self::start_with(TestKafkaBuilder::default())
    }

    /// Starts a broker that wants TLS; see [`TestKafka::ca_certificate`] for the root to trust.
    pub fn start_tls() -> Result<Self> {
        Self::builder().tls().start()
    }

    /// A broker with TLS or SASL (see the [module documentation](self) for how each is done).
    pub fn builder() -> TestKafkaBuilder {
        TestKafkaBuilder::default()
    }

    fn start_with(options: TestKafkaBuilder) -> Result<Self> {
        let bin = find_tansu()?;
        let dir = tempfile::Builder::new()
            .prefix("millstream-kafka-")
            .tempdir()
            .context("cannot create a temporary directory for the broker")?;
        let tls = if options.tls {
            let python = crate::process::find_program(
                "python3",
                "PYTHON",
                "Python 3 (the TLS terminator in front of tansu, which cannot do TLS itself)",
                "your system's package manager (`apt-get install python3`)",
            )?;
            let (ca, certificate, key) = crate::tls::make_certificates(dir.path())?;
            std::fs::write(dir.path().join("tls_proxy.py"), TLS_PROXY)?;
            Some(Tls { ca, certificate, key, python, proxy: Mutex::new(None) })
        } else {
            None
        };
        let sasl = !options.users.is_empty();
        let mut kafka = TestKafka { dir, port: 0, broker_port: 0, bin, child: Mutex::new(None), tls, sasl };
        // A free port is only free until someone takes it: retry on a clash.
        let mut last_error = None;
        for _ in 0..5 {
            kafka.port = free_port()?;
            kafka.broker_port = kafka.port;
            if kafka.tls.is_some() {
                while kafka.broker_port == kafka.port {
                    kafka.broker_port = free_port()?;
                }
            }
            // Each attempt reads its own log for a clash.
            let _ = std::fs::remove_file(kafka.log_path());
            let _ = std::fs::remove_file(kafka.dir.path().join(TLS_LOG_FILE));
            match kafka.first_launch(&options.users) {
                Ok(()) => return Ok(kafka),
                Err(e) if kafka.port_clash() => {
                    kafka.stop();
                    kafka.stop_proxy();
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no free port")))
    }

    /// Provisions the SCRAM users (when there are any), starts the TLS terminator (with TLS),
    /// and starts the broker.
    fn first_launch(&self, users: &[(String, String, Scram)]) -> Result<()> {
        if !users.is_empty() {
            self.provision(users)?;
        }
        if self.tls.is_some() {
            self.start_proxy()?;
        }
        self.launch()
    }

    /// Creates the SCRAM users, and the helpers' own, on a broker started for the purpose
    /// without `--authentication` (which would refuse the request), then stops it: the users
    /// stay in its storage.
    fn provision(&self, users: &[(String, String, Scram)]) -> Result<()> {
        let listener = format!("tcp://127.0.0.1:{}", self.broker_port);
        self.spawn_broker(&listener, false)?;
        let mut plain = ClientConfig::new();
        plain
            .set("bootstrap.servers", format!("127.0.0.1:{}", self.broker_port))
            .set("broker.address.family", "v4");
        self.wait_ready(self.broker_port, &plain).map_err(|e| self.launch_failed(e))?;
        let own = (TESTKIT_USER.to_owned(), TESTKIT_PASSWORD.to_owned(), Scram::Sha512);
        for (name, password, mechanism) in users.iter().chain(std::iter::once(&own)) {
            let out = Command::new(&self.bin)
                .args(["user", "create", "--broker", &listener, name, password])
                .args(["--mechanism", mechanism.tansu_name()])
                .current_dir(self.dir.path())
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("cannot run {} user create", self.bin.display()))?;
            if !out.status.success() {
                self.stop();
                bail!(
                    "tansu user create {name} failed ({}): {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        self.stop();
        Ok(())
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

    /// With TLS: the (PEM) root that signed the server certificate, for `ssl.ca.location` or
    /// millstream's `kafka.tls.ca`. The certificate names `localhost` and `127.0.0.1`.
    pub fn ca_certificate(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.ca.as_path())
    }

    /// Whether clients must authenticate with SASL/SCRAM.
    pub fn requires_sasl(&self) -> bool {
        self.sasl
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
    /// [`TestKafka::restart`]. Does nothing when it is not running. With TLS the terminator
    /// stays up (as a load balancer would) and closes each connection it cannot forward.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(mut process) = child.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    fn stop_proxy(&self) {
        if let Some(tls) = &self.tls {
            let mut proxy = tls.proxy.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((mut process, stdin)) = proxy.take() {
                drop(stdin);
                let _ = process.kill();
                let _ = process.wait();
            }
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
        read_lossy(&self.log_path())
    }

    /// With TLS: the terminator's log (its handshake failures, among others); else empty.
    pub fn tls_log(&self) -> String {
        read_lossy(&self.dir.path().join(TLS_LOG_FILE))
    }

    fn port_clash(&self) -> bool {
        self.log().contains("in use") || self.tls_log().contains("in use")
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
    /// their own producer or consumer. With TLS it trusts [`TestKafka::ca_certificate`]; with
    /// SASL it authenticates as the helpers' own SCRAM-SHA-512 user.
    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap()).set("broker.address.family", "v4");
        let protocol = match (self.tls.is_some(), self.sasl) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        config.set("security.protocol", protocol);
        if let Some(tls) = &self.tls {
            config.set("ssl.ca.location", tls.ca.display().to_string());
        }
        if self.sasl {
            config
                .set("sasl.mechanism", Scram::Sha512.mechanism())
                .set("sasl.username", TESTKIT_USER)
                .set("sasl.password", TESTKIT_PASSWORD);
        }
        config
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    /// A consumer that commits nothing; in `group` (for committed offsets) or a private one.
    fn consumer(&self, group: Option<&str>) -> Result<BaseConsumer> {
        consumer_with(self.config(), group)
    }

    /// Spawns the broker (with `--authentication` when it wants SASL, advertising
    /// [`TestKafka::port`]) and waits until it answers; on failure the broker is killed and the
    /// error carries the end of its log.
    fn launch(&self) -> Result<()> {
        self.spawn_broker(&format!("tcp://127.0.0.1:{}", self.port), self.sasl)?;
        self.wait_ready(self.port, &self.config()).map_err(|e| self.launch_failed(e))
    }

    fn launch_failed(&self, e: anyhow::Error) -> anyhow::Error {
        self.stop();
        let mut message =
            format!("tansu did not start on port {}; log:\n{}", self.port, log_tail(&self.log(), 15));
        if self.tls.is_some() {
            message.push_str(&format!("\nTLS terminator log:\n{}", log_tail(&self.tls_log(), 10)));
        }
        e.context(message)
    }

    /// Spawns tansu listening on [`TestKafka::broker_port`] and advertising `advertised`.
    fn spawn_broker(&self, advertised: &str, authentication: bool) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("cannot open {}", self.log_path().display()))?;
        let listener = format!("tcp://127.0.0.1:{}", self.broker_port);
        let mut command = Command::new(&self.bin);
        command
            .arg("broker")
            .args(["--listener-url", &listener, "--advertised-listener-url", advertised])
            // tansu 0.6 reads the path after sqlite:// relative to its working directory.
            .args(["--storage-engine", "sqlite://broker.db"]);
        if authentication {
            command.arg("--authentication");
        }
        let child = command
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        *self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(child);
        Ok(())
    }

    /// Starts the TLS terminator on [`TestKafka::port`], in front of the broker's port.
    fn start_proxy(&self) -> Result<()> {
        let Some(tls) = &self.tls else { return Ok(()) };
        let path = self.dir.path().join(TLS_LOG_FILE);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut child = Command::new(&tls.python)
            .arg("-u")
            .arg(self.dir.path().join("tls_proxy.py"))
            .arg(self.port.to_string())
            .arg(self.broker_port.to_string())
            .arg(&tls.certificate)
            .arg(&tls.key)
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", tls.python.display()))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        *tls.proxy.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((child, stdin));
        // Listening: it prints a line once it is.
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.tls_log().contains("tls proxy on") {
            let exited = {
                let mut proxy = tls.proxy.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                !matches!(proxy.as_mut().map(|(c, _)| c.try_wait()), Some(Ok(None)))
            };
            if exited || Instant::now() >= deadline {
                let log = self.tls_log();
                self.stop_proxy();
                bail!("the TLS terminator did not start on port {}; log:\n{}", self.port, log_tail(&log, 15));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn wait_ready(&self, port: u16, config: &ClientConfig) -> Result<()> {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        loop {
            if !self.is_running() {
                bail!("the broker exited");
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok() {
                match consumer_with(config.clone(), None).and_then(|c| {
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
                bail!("no metadata from 127.0.0.1:{port} within {READY_TIMEOUT:?} ({last})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TestKafka {
    fn drop(&mut self) {
        self.stop();
        self.stop_proxy();
    }
}

impl std::fmt::Debug for TestKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestKafka(127.0.0.1:{}, {})", self.port, self.dir.path().display())
    }
}

/// A consumer with `config` that commits nothing; in `group` (for committed offsets) or a
/// private one.
fn consumer_with(mut config: ClientConfig, group: Option<&str>) -> Result<BaseConsumer> {
    static PRIVATE: AtomicU64 = AtomicU64::new(0);
    let group = match group {
        Some(g) => g.to_owned(),
        None => {
            format!("millstream-testkit-{}-{}", std::process::id(), PRIVATE.fetch_add(1, Ordering::Relaxed))
        }
    };
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    config.create().context("cannot create a Kafka consumer")
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
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
    fn kafka_with_tls_and_scram_serves_its_own_helpers_and_refuses_plaintext() -> Result<()> {
        let kafka = TestKafka::builder().tls().scram_user("alice", "alice-secret", Scram::Sha256).start()?;
        assert!(kafka.requires_sasl());
        let ca = kafka.ca_certificate().expect("a TLS broker has a CA").to_owned();
        kafka.create_topic("secure", 2)?;
        kafka.produce("secure", &[(Some(b"k".to_vec()), b"v".to_vec())])?;
        assert_eq!(kafka.consume_all("secure")?.len(), 1);

        // A provisioned user, over TLS, with its mechanism.
        let metadata_with = |config: &mut ClientConfig| -> Result<usize> {
            config.set("socket.timeout.ms", "3000");
            let consumer = consumer_with(config.clone(), None)?;
            Ok(consumer.fetch_metadata(Some("secure"), Duration::from_secs(3))?.topics().len())
        };
        let mut alice = kafka.config();
        alice.set("sasl.mechanism", "SCRAM-SHA-256").set("sasl.username", "alice");
        alice.set("sasl.password", "alice-secret");
        assert_eq!(metadata_with(&mut alice)?, 1);
        alice.set("sasl.password", "wrong");
        assert!(metadata_with(&mut alice).is_err(), "a wrong password is refused");
        // Plaintext against the TLS port, and TLS without SASL, are refused.
        let mut plain = ClientConfig::new();
        plain.set("bootstrap.servers", kafka.bootstrap()).set("broker.address.family", "v4");
        assert!(metadata_with(&mut plain).is_err());
        plain.set("security.protocol", "ssl").set("ssl.ca.location", ca.display().to_string());
        assert!(metadata_with(&mut plain).is_err());

        // A crash and restart keeps users and TLS.
        kafka.restart()?;
        assert_eq!(kafka.consume_all("secure")?.len(), 1);
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
