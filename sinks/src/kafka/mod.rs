//! The Kafka sink: anomalies to the notification topic, dead letters to the dead-letter topic,
//! through an idempotent producer whose acknowledgements gate the dataflow's frontier.

use millstream_kafka::diagnostics;
pub mod encode;
pub mod producer;

pub use encode::{encode, Outgoing, TopicRole, DEFAULT_MAX_RECORD_BYTES};
pub use producer::{ensure_topics, Delivery, KafkaSinkTopics, KafkaWriter, SendError};
