//! An idempotent producer whose deliveries come back as (id, outcome) pairs, waking the
//! caller: the sink keeps each record until its delivery is acknowledged, so a failure means
//! a retry, never a loss.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};

use super::diagnostics::{self, ConnectionLog, Refusal, Throttle};
use super::encode::{Outgoing, TopicRole};

/// How long the sink waits for the brokers at start-up, unless they refuse it sooner.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The topics the sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSinkTopics {
    pub notifications: String,
    pub dead_letters: String,
    /// Model-updated events (the retrainer's lineage), for whatever manages models.
    pub control: String,
}

impl Default for KafkaSinkTopics {
    fn default() -> Self {
        KafkaSinkTopics {
            notifications: "millstream.notifications".to_owned(),
            dead_letters: "millstream.dead-letters".to_owned(),
            control: "millstream.control".to_owned(),
        }
    }
}

/// The outcome of one delivery.
#[derive(Debug)]
pub struct Delivery {
    /// The id given to [`KafkaWriter::send`].
    pub id: usize,
    pub result: Result<(), KafkaError>,
}

/// Why a record was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// librdkafka's queue is full: wait for deliveries, then send again.
    #[error("the producer queue is full")]
    QueueFull,
    #[error(transparent)]
    Kafka(KafkaError),
}

type Wake = Box<dyn Fn() + Send + Sync>;
/// Told `true` when the brokers are reachable again, `false` (with why) when they are not.
type OnConnection = Box<dyn Fn(bool, &str) + Send + Sync>;

pub struct DeliveryContext {
    deliveries: Mutex<Vec<Delivery>>,
    wake: Wake,
    brokers_down: AtomicBool,
    on_connection: OnConnection,
    /// Holds back warnings identical to recent ones.
    throttle: Throttle,
}

impl DeliveryContext {
    fn reachable(&self) {
        if self.brokers_down.swap(false, Ordering::Relaxed) {
            (self.on_connection)(true, "");
        }
    }
}

impl ClientContext for DeliveryContext {
    /// librdkafka says when every broker is down, but not when one is back: its statistics
    /// (every second) tell, even while nothing is produced.
    fn stats(&self, statistics: rdkafka::Statistics) {
        if statistics.brokers.values().any(|b| b.state == "UP") {
            self.reachable();
        }
    }

    /// Forwarded to `tracing`, an identical line at most every ten seconds.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        diagnostics::forward_log(&self.throttle, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(repeats) = self.throttle.admit(&format!("{error}: {reason}")) {
            tracing::warn!(%error, reason, repeats, "kafka producer error");
        }
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown)
            && !self.brokers_down.swap(true, Ordering::Relaxed)
        {
            (self.on_connection)(false, reason);
        }
        (self.wake)();
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, id: usize) {
        let result = match result {
            Ok(_) => {
                self.reachable();
                Ok(())
            }
            Err((error, _)) => Err(error.clone()),
        };
        self.deliveries.lock().expect("delivery lock").push(Delivery { id, result });
        (self.wake)();
    }
}

/// The notification and dead-letter producer of one worker.
pub struct KafkaWriter {
    producer: ThreadedProducer<DeliveryContext>,
    topics: KafkaSinkTopics,
    /// The producer's `message.max.bytes`.
    max_record_bytes: usize,
}

impl KafkaWriter {
    /// `wake` is called (from librdkafka's thread) whenever deliveries are waiting;
    /// `on_connection` when the brokers become unreachable or reachable again.
    pub fn new(
        client: &ClientConfig,
        topics: KafkaSinkTopics,
        wake: impl Fn() + Send + Sync + 'static,
        on_connection: impl Fn(bool, &str) + Send + Sync + 'static,
    ) -> Result<Self, KafkaError> {
        let mut config = client.clone();
        config.set("enable.idempotence", "true").set("acks", "all");
        for (key, default) in
            [("linger.ms", "5"), ("message.timeout.ms", "30000"), ("statistics.interval.ms", "1000")]
        {
            if config.get(key).is_none() {
                config.set(key, default);
            }
        }
        let context = DeliveryContext {
            deliveries: Mutex::new(Vec::new()),
            wake: Box::new(wake),
            brokers_down: AtomicBool::new(false),
            on_connection: Box::new(on_connection),
            throttle: Throttle::default(),
        };
        let max_record_bytes = config
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(super::DEFAULT_MAX_RECORD_BYTES);
        let producer = config.create_with_context(context)?;
        Ok(KafkaWriter { producer, topics, max_record_bytes })
    }

    pub fn topics(&self) -> &KafkaSinkTopics {
        &self.topics
    }

    /// The largest record the producer sends (its `message.max.bytes`).
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// Queues `record`; its delivery comes back from [`Self::take_deliveries`] with `id`.
    pub fn send(&self, id: usize, record: &Outgoing) -> Result<(), SendError> {
        let topic = match record.role {
            TopicRole::Notifications => &self.topics.notifications,
            TopicRole::DeadLetters => &self.topics.dead_letters,
            TopicRole::Control => &self.topics.control,
        };
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header { key, value: Some(value) });
        }
        let mut base = BaseRecord::<str, [u8], usize>::with_opaque_to(topic, id)
            .payload(&record.payload[..])
            .headers(headers);
        if let Some(key) = &record.key {
            base = base.key(key.as_str());
        }
        self.producer.send(base).map_err(|(error, _)| match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => SendError::QueueFull,
            _ => SendError::Kafka(error),
        })
    }

    /// Deliveries since the last call.
    pub fn take_deliveries(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.producer.context().deliveries.lock().expect("delivery lock"))
    }

    /// Waits up to `timeout` for queued records to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    /// Records queued or in flight.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

/// The client that reads the topics' metadata at start-up. librdkafka gives the reasons for a
/// failing connection (`certificate verify failed`, a SASL failure, the wrong
/// `security.protocol`) only as log lines and error events on the client's main queue, which
/// nothing polls for an admin client: this is a producer whose own thread polls it, so the
/// reasons reach this context.
struct StartupContext {
    connection: ConnectionLog,
    throttle: Throttle,
    /// The level librdkafka's log lines are forwarded from (the client asks for `Info`).
    log_level: RDKafkaLogLevel,
}

impl ClientContext for StartupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        diagnostics::on_log(&self.connection, &self.throttle, self.log_level, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if Refusal::classify(code, reason).is_some() {
            self.connection.failure(code, reason);
        }
        if let Some(repeats) = self.throttle.admit(&format!("{error}: {reason}")) {
            tracing::warn!(%error, reason, repeats, "kafka sink: client error while reading topic metadata");
        }
    }
}

/// Sends nothing.
impl ProducerContext for StartupContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// Which of `names` have no partitions yet. An error says why, with librdkafka's latest reason.
fn missing_topics(
    producer: &ThreadedProducer<StartupContext>,
    names: &[String],
) -> Result<Vec<String>, String> {
    let mut missing = Vec::new();
    for name in names {
        let metadata = producer.client().fetch_metadata(Some(name), STARTUP_TIMEOUT).map_err(|e| {
            match producer.context().connection.last_failure() {
                Some(last) => {
                    format!("cannot read metadata of topic {name}: {e} (last broker failure: {last})")
                }
                None => format!("cannot read metadata of topic {name}: {e}"),
            }
        })?;
        producer.context().connection.worked();
        let exists = metadata
            .topics()
            .iter()
            .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty());
        if !exists {
            missing.push(name.clone());
        }
    }
    Ok(missing)
}

/// Creates the topics that do not exist yet, with `partitions` partitions each. Brokers that
/// create topics on first use, or topics made by an operator beforehand, are both fine.
///
/// Gives up after 30 s without an answer, or sooner, with the reason, once the brokers keep
/// refusing the client (TLS, SASL, the wrong `security.protocol`: see
/// `diagnostics::Refusal`).
pub fn ensure_topics(client: &ClientConfig, names: &[&str], partitions: i32) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let mut config = client.clone();
    let log_level = config.log_level;
    if !diagnostics::at_least(RDKafkaLogLevel::Info, log_level) {
        // librdkafka reports a disconnect (plaintext at a TLS listener, say) at `Info`.
        config.set_log_level(RDKafkaLogLevel::Info);
    }
    let context =
        StartupContext { connection: ConnectionLog::default(), throttle: Throttle::default(), log_level };
    let producer: ThreadedProducer<StartupContext> = config
        .create_with_context(context)
        .map_err(|e| format!("cannot create a Kafka client to read topic metadata: {e}"))?;
    let context = Arc::clone(producer.context());
    let owned: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let (answer, answered) = mpsc::channel();
    // The metadata requests block; this thread watches for a refusal meanwhile. Given up on,
    // the requester finishes on its own (within the timeout) and drops its client.
    std::thread::Builder::new()
        .name("kafka-sink-metadata".to_owned())
        .spawn(move || {
            let _ = answer.send(missing_topics(&producer, &owned));
        })
        .map_err(|e| format!("cannot start a thread to read topic metadata: {e}"))?;
    let missing = loop {
        match answered.recv_timeout(Duration::from_millis(100)) {
            Ok(missing) => break missing?,
            Err(RecvTimeoutError::Timeout) => {
                if let Some(verdict) = context.connection.verdict() {
                    return Err(format!("cannot read topic metadata: {verdict}"));
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Err("the topic metadata thread stopped".to_owned()),
        }
    };
    // Only the missing ones: some brokers (and librdkafka's mock cluster) do not implement
    // CreateTopics at all, and topics made beforehand need no permission to create.
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        client.create().map_err(|e| format!("cannot create a Kafka admin client: {e}"))?;
    let topics: Vec<NewTopic<'_>> =
        missing.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(-1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("cannot start a runtime for the Kafka admin client: {e}"))?;
    let results = runtime
        .block_on(admin.create_topics(&topics, &options))
        .map_err(|e| format!("cannot create topics {names:?}: {e}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("cannot create topic {topic}: {code}")),
        }
    }
    Ok(())
}

/// Shared so that the sink operator and its callbacks see one producer.
pub type SharedWriter = Arc<KafkaWriter>;
