//! Dead letters: every record the processor refuses, with why and where it came from.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The closed set of reasons a record is refused. Names are part of the output contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not parseable as JSON (or an empty line).
    MalformedJson,
    /// A CSV row that does not fit the header.
    MalformedCsv,
    /// A required field (`sensor_id`, `ts`, `value`) is absent.
    MissingField,
    /// A field, or the record itself, has the wrong JSON type.
    WrongType,
    /// `value` is NaN, infinite, or out of the f64 range.
    NonFinite,
    /// `ts` is neither RFC 3339 nor integer epoch milliseconds in 1970..=9999.
    BadTimestamp,
    /// `sensor_id` is empty or only whitespace.
    EmptySensorId,
    /// An exact repeat (sensor, ts, value) of an earlier reading.
    Duplicate,
    /// Older than the watermark, when the late policy is `dead_letter`.
    Late,
    /// Larger than the maximum record size.
    TooLarge,
    /// `value` is outside the `[min, max]` of the sensor's registry rules, when their
    /// `range_action` is `reject` (with `flag` the reading is kept, flagged `out_of_range`).
    OutOfRange,
    /// The value changed faster than the sensor's `max_rate_per_s` since its previous accepted
    /// reading, when the `rate_action` is `reject` (with `flag` it is kept, flagged).
    RateOfChange,
    /// `ts` is further ahead of the wall clock than the registry's `max_future_ms`.
    FutureTimestamp,
    /// `unit` differs from the unit the sensor's registry rules expect.
    UnitMismatch,
    /// `sensor_id`, `asset_id` or `unit` is longer than `MAX_FIELD_BYTES` (1 KiB): such a key
    /// would not fit a PostgreSQL index entry or a Kafka record with its headers.
    FieldTooLong,
}

impl Reason {
    /// Every reason, in declaration order: `ALL[r as usize] == r` (metrics index by it).
    pub const ALL: [Reason; 15] = [
        Reason::MalformedJson,
        Reason::MalformedCsv,
        Reason::MissingField,
        Reason::WrongType,
        Reason::NonFinite,
        Reason::BadTimestamp,
        Reason::EmptySensorId,
        Reason::Duplicate,
        Reason::Late,
        Reason::TooLarge,
        Reason::OutOfRange,
        Reason::RateOfChange,
        Reason::FutureTimestamp,
        Reason::UnitMismatch,
        Reason::FieldTooLong,
    ];

    /// The snake_case name used in files, headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::MalformedCsv => "malformed_csv",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::NonFinite => "non_finite",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::EmptySensorId => "empty_sensor_id",
            Reason::Duplicate => "duplicate",
            Reason::Late => "late",
            Reason::TooLarge => "too_large",
            Reason::OutOfRange => "out_of_range",
            Reason::RateOfChange => "rate_of_change",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::UnitMismatch => "unit_mismatch",
            Reason::FieldTooLong => "field_too_long",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal before the source location is attached: what the decoders and validators return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection { reason, detail: detail.into() }
    }
}

/// Where a record was read. Serialized untagged, as the contract's
/// `{"file": …, "line": N}` or `{"topic": …, "partition": P, "offset": O}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged, remote = "Self")]
pub enum SourceLocation {
    File { file: String, line: u64 },
    Kafka { topic: String, partition: i32, offset: i64 },
    Simulator { simulator: String, seq: u64 },
}

crate::wire::json_when_binary!(SourceLocation);

impl DeadLetter {
    /// A deterministic id: the same refused record at the same place gets the same id on a
    /// replay, so idempotent sinks store it once. 32 hex digits of XXH3-128 over the reason
    /// and the source location.
    pub fn id(&self) -> String {
        let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
        hasher.update(self.reason.as_str().as_bytes());
        hasher.update(&[0]);
        match &self.source {
            SourceLocation::File { file, line } => {
                hasher.update(b"file\0");
                hasher.update(file.as_bytes());
                hasher.update(&line.to_le_bytes());
            }
            SourceLocation::Kafka { topic, partition, offset } => {
                hasher.update(b"kafka\0");
                hasher.update(topic.as_bytes());
                hasher.update(&partition.to_le_bytes());
                hasher.update(&offset.to_le_bytes());
            }
            SourceLocation::Simulator { simulator, seq } => {
                hasher.update(b"simulator\0");
                hasher.update(simulator.as_bytes());
                hasher.update(&seq.to_le_bytes());
            }
        }
        format!("{:032x}", hasher.digest128())
    }
}

/// A refused record: reason, human-readable detail, the original text, and where it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: Reason,
    pub detail: String,
    /// The original record, lossily decoded as UTF-8 when it was not valid UTF-8.
    pub raw: String,
    pub source: SourceLocation,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order_with_distinct_names() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r}");
        }
        let names: std::collections::BTreeSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len(), "names are distinct");
    }

    #[test]
    fn serde_names_are_as_str() {
        for r in Reason::ALL {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), r);
        }
    }
}
