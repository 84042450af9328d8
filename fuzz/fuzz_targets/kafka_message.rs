//! A Kafka message's bytes on their way through millstream: decoded by the Kafka source into a
//! reading or a dead letter (`ingest` in `connectors/src/kafka/source.rs`, mirrored below
//! because it takes an rdkafka message), then a dead letter encoded for the dead-letter topic
//! by the Kafka sink (`sinks/src/kafka/encode.rs`, the real function).
//!
//! Invariants: nothing panics or overflows a small stack (see `common::on_small_stack`); an
//! accepted reading satisfies the contract (see `common::check_reading`); a dead letter has a
//! decode reason, survives bincode and JSON, carries the message's bytes (exactly, when they
//! are UTF-8; lossily otherwise, since `DeadLetter::raw` is a `String`), and its Kafka record
//! has the reason and the source topic, partition and offset in headers, as
//! `dataflow/tests/hostile.rs` reads them back.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use millstream_events::decode::decode_json;
use millstream_events::{DeadLetter, Reason, SourceLocation};
use millstream_sinks::kafka::encode::{dead_letter, DEFAULT_MAX_RECORD_BYTES};
use millstream_sinks::kafka::TopicRole;

fuzz_target!(|data: &[u8]| common::on_small_stack(data, check));

fn check(data: &[u8]) {
    // The location: from the first bytes, so that odd partitions and offsets are tried too.
    let (partition, offset) = match data {
        [a, b, ..] => (i32::from(*a) - 1, i64::from(*b) << 40),
        _ => (0, 0),
    };
    let topic = "readings";
    match decode_json(data) {
        Ok(reading) => common::check_reading(&reading),
        Err(rejection) => {
            let dead = DeadLetter {
                reason: rejection.reason,
                detail: rejection.detail,
                raw: String::from_utf8_lossy(data).into_owned(),
                source: SourceLocation::Kafka { topic: topic.to_owned(), partition, offset },
            };
            common::check_rejection(&millstream_events::Rejection::new(dead.reason, dead.detail.clone()));
            common::check_dead_letter(&dead);
            let record = dead_letter(&dead, 7, DEFAULT_MAX_RECORD_BYTES);
            assert_eq!(record.role, TopicRole::DeadLetters);
            let size: usize = record.payload.len() + record.headers.iter().map(|(k, v)| k.len() + v.len() + 10).sum::<usize>();
            assert!(size + 36 <= DEFAULT_MAX_RECORD_BYTES, "the record fits the producer's limit");
            if std::str::from_utf8(data).is_ok() && data.len() < DEFAULT_MAX_RECORD_BYTES / 2 {
                assert_eq!(record.payload, data, "the dead letter carries the message's bytes");
            }
            let header = |name: &str| {
                record
                    .headers
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            };
            let reason = header("reason").expect("a reason header");
            assert!(Reason::ALL.iter().any(|r| r.as_str() == reason), "reason header {reason:?}");
            assert_eq!(header("source_topic").as_deref(), Some(topic));
            assert_eq!(header("source_partition"), Some(partition.to_string()));
            assert_eq!(header("source_offset"), Some(offset.to_string()));
            assert_eq!(header("event_id").map(|id| id.len()), Some(32));
        }
    }
}
