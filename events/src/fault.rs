//! Fault ground truth: which readings a simulator deliberately corrupted, so that detections
//! can be scored against it (`millstream demo`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::EventTime;

/// The kind of a signal fault injected into a sensor's readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// One reading far off the signal (at least 8 noise σ).
    Spike,
    /// A sustained offset of several σ for a few minutes.
    LevelShift,
    /// A slow upward trend of vibration (and, slightly, temperature).
    BearingWear,
    /// The sensor repeats one value exactly.
    Stuck,
    /// The sensor sends nothing: `start..=end` is the gap.
    Dropout,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Spike,
        FaultKind::LevelShift,
        FaultKind::BearingWear,
        FaultKind::Stuck,
        FaultKind::Dropout,
    ];

    /// The snake_case name used in files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Spike => "spike",
            FaultKind::LevelShift => "level_shift",
            FaultKind::BearingWear => "bearing_wear",
            FaultKind::Stuck => "stuck",
            FaultKind::Dropout => "dropout",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One injected signal fault: the readings of `sensor_id` with `start <= ts <= end` are affected
/// (for a dropout: are missing). Times serialize as RFC 3339, like every other output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InjectedFault {
    pub asset_id: String,
    pub sensor_id: String,
    pub kind: FaultKind,
    /// Event time of the first affected reading.
    #[serde(
        serialize_with = "crate::time::serialize_rfc3339",
        deserialize_with = "crate::time::deserialize_event_time"
    )]
    pub start: EventTime,
    /// Event time of the last affected reading (inclusive).
    #[serde(
        serialize_with = "crate::time::serialize_rfc3339",
        deserialize_with = "crate::time::deserialize_event_time"
    )]
    pub end: EventTime,
}

impl InjectedFault {
    /// Whether `ts` lies in `start..=end`.
    pub fn contains(&self, ts: EventTime) -> bool {
        self.start <= ts && ts <= self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_serde() {
        for kind in FaultKind::ALL {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{}\"", kind.as_str()));
        }
    }

    #[test]
    fn round_trips_through_json() {
        let fault = InjectedFault {
            asset_id: "line1-pump-00".into(),
            sensor_id: "line1-pump-00/vibration".into(),
            kind: FaultKind::LevelShift,
            start: 1_772_323_200_000,
            end: 1_772_323_260_000,
        };
        let text = serde_json::to_string(&fault).unwrap();
        assert!(text.contains("\"start\":\"2026-03-01T00:00:00.000Z\""), "{text}");
        assert!(text.contains("\"kind\":\"level_shift\""), "{text}");
        assert_eq!(serde_json::from_str::<InjectedFault>(&text).unwrap(), fault);
        assert!(fault.contains(fault.start) && fault.contains(fault.end) && !fault.contains(fault.end + 1));
    }
}
