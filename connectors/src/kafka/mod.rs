//! The Kafka source: partitions spread statically over every worker of every process, one
//! watermark per partition, prefetch bounded, and offsets committed only once every durable
//! sink has the results of the records before them (ARCHITECTURE.md §2).

pub mod checkpoint;
pub mod committer;
pub use millstream_kafka::diagnostics;
pub mod discovery;
pub mod offsets;
pub mod options;
pub mod source;

pub use options::{KafkaAddress, KafkaAddressError, KafkaSourceOptions, StartFrom};
pub use source::{kafka_source, KafkaInput, KafkaSourceHandle, KafkaSourceObserver};
