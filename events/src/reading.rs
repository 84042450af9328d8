//! A sensor reading: the unit of input.

use compact_str::CompactString;
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
    ///
    /// Identifiers are [`CompactString`]s: up to 24 bytes live inline, so a typical reading
    /// allocates nothing. That matters because readings are decoded on one worker and dropped
    /// on another after the exchange, and cross-thread frees were a quarter of the CPU at two
    /// workers with `String`s.
    pub sensor_id: CompactString,
    /// The asset; defaults to `sensor_id` up to its last `/`.
    pub asset_id: CompactString,
    /// Event time, epoch milliseconds. Serialized as a plain integer: this type crosses
    /// process boundaries in bincode, which needs a fixed shape (use [`Reading::to_contract_json`]
    /// for the contract's text form).
    pub ts: EventTime,
    /// A finite measurement.
    pub value: f64,
    /// Engineering unit, when the producer sent one.
    pub unit: Option<CompactString>,
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

    /// The reading as one line of the input contract, with an RFC 3339 `ts`.
    pub fn to_contract_json(&self) -> String {
        #[derive(Serialize)]
        struct Contract<'a> {
            sensor_id: &'a str,
            asset_id: &'a str,
            #[serde(serialize_with = "crate::time::serialize_rfc3339")]
            ts: EventTime,
            value: f64,
            #[serde(skip_serializing_if = "Option::is_none")]
            unit: Option<&'a str>,
        }
        serde_json::to_string(&Contract {
            sensor_id: &self.sensor_id,
            asset_id: &self.asset_id,
            ts: self.ts,
            value: self.value,
            unit: self.unit.as_deref(),
        })
        .expect("a reading always serializes")
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

    #[test]
    fn contract_json_decodes_back_to_the_same_reading() {
        let r = Reading {
            sensor_id: "p/t".into(),
            asset_id: "p".into(),
            ts: 1_772_323_200_001,
            value: -3.25,
            unit: Some("degC".into()),
        };
        let line = r.to_contract_json();
        assert_eq!(
            line,
            r#"{"sensor_id":"p/t","asset_id":"p","ts":"2026-03-01T00:00:00.001Z","value":-3.25,"unit":"degC"}"#
        );
        assert_eq!(crate::decode::decode_json(line.as_bytes()).unwrap(), r);
    }
}
