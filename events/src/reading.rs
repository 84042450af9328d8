//! A sensor reading: the unit of input.

use serde::{Deserialize, Serialize};

use crate::EventTime;

/// Where an accepted record came from, compactly: enough to order exact ties
/// deterministically (the first copy of a duplicate wins) without carrying a file name or
/// topic string on every reading.
///
/// For files `stream` is 0 and `offset` the 1-based line; for Kafka `stream` is the partition
/// and `offset` the message offset; for the simulator `stream` is the asset index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Origin {
    pub stream: u32,
    pub offset: u64,
}

/// One sample of one sensor, decoded and checked against the input contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Non-empty sensor identifier, conventionally `asset/measurement`.
    pub sensor_id: String,
    /// The asset; defaults to `sensor_id` up to its last `/`.
    pub asset_id: String,
    /// Event time, epoch milliseconds.
    #[serde(serialize_with = "crate::time::serialize_rfc3339", deserialize_with = "crate::time::deserialize_event_time")]
    pub ts: EventTime,
    /// A finite measurement.
    pub value: f64,
    /// Engineering unit, when the producer sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

impl Reading {
    /// The asset a sensor belongs to when the record does not say: the part of the id before
    /// its last `/`, or the whole id when it has none.
    pub fn default_asset_id(sensor_id: &str) -> &str {
        match sensor_id.rfind('/') {
            Some(cut) if cut > 0 => &sensor_id[..cut],
            _ => sensor_id,
        }
    }

    /// The exact-repeat key of the contract: same sensor, same time, same value (bitwise, so
    /// that `0.0` and `-0.0` are different readings).
    pub fn duplicate_key(&self) -> (EventTime, u64) {
        (self.ts, self.value.to_bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_defaults_to_prefix_before_last_slash() {
        assert_eq!(Reading::default_asset_id("line1-pump-00/vibration"), "line1-pump-00");
        assert_eq!(Reading::default_asset_id("plant/line1/pump/temp"), "plant/line1/pump");
        assert_eq!(Reading::default_asset_id("lonely"), "lonely");
        assert_eq!(Reading::default_asset_id("/leading"), "/leading");
    }
}
