//! An idempotent producer whose deliveries come back as (id, outcome) pairs, waking the
//! caller: the sink keeps each record until its delivery is acknowledged, so a failure means
//! a retry, never a loss.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};

use super::encode::{Outgoing, TopicRole};

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

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka producer error");
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

/// Creates the topics that do not exist yet, with `partitions` partitions each. Brokers that
/// create topics on first use, or topics made by an operator beforehand, are both fine.
pub fn ensure_topics(client: &ClientConfig, names: &[&str], partitions: i32) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        client.create().map_err(|e| format!("cannot create a Kafka admin client: {e}"))?;
    // Only the missing ones: some brokers (and librdkafka's mock cluster) do not implement
    // CreateTopics at all, and topics made beforehand need no permission to create.
    let mut missing = Vec::new();
    for name in names {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(name), Duration::from_secs(30))
            .map_err(|e| format!("cannot read metadata of topic {name}: {e}"))?;
        let exists = metadata
            .topics()
            .iter()
            .any(|t| t.name() == *name && t.error().is_none() && !t.partitions().is_empty());
        if !exists {
            missing.push(*name);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
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
