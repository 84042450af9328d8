//! Detector outputs: anomaly events and per-reading scores.

use serde::{Deserialize, Serialize};

use crate::EventTime;

/// How bad an anomaly is; derived from the score by the detector's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

/// An anomaly event, as written to `anomalies.jsonl` and the notification topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Anomaly {
    /// Deterministic id: see [`crate::event_id`].
    pub event_id: String,
    pub sensor_id: String,
    pub asset_id: String,
    #[serde(
        serialize_with = "crate::time::serialize_rfc3339",
        deserialize_with = "crate::time::deserialize_event_time"
    )]
    pub ts: EventTime,
    pub value: f64,
    /// In `[0, 1]`.
    pub score: f64,
    pub severity: Severity,
    /// Which detector fired, e.g. `robust_z`.
    pub detector: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
    /// The episode this event belongs to: detectors report an anomaly once when it opens,
    /// again when its severity rises, and once when it closes (not once per reading).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub episode: Option<Episode>,
}

crate::wire::json_when_binary!(Anomaly);

/// Where an anomaly event sits in its episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeState {
    Opened,
    /// The severity rose.
    Escalated,
    Closed,
}

impl EpisodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            EpisodeState::Opened => "opened",
            EpisodeState::Escalated => "escalated",
            EpisodeState::Closed => "closed",
        }
    }
}

/// The episode fields of an anomaly event (flattened into it in JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// The `event_id` of the event that opened the episode.
    pub episode_id: String,
    pub state: EpisodeState,
    /// Event time of the episode's first anomalous reading.
    #[serde(
        serialize_with = "crate::time::serialize_rfc3339",
        deserialize_with = "crate::time::deserialize_event_time"
    )]
    pub started_at: EventTime,
    /// On `closed`: the event time of its last anomalous reading.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_optional_time",
        deserialize_with = "deserialize_optional_time"
    )]
    pub ended_at: Option<EventTime>,
    /// The highest score so far.
    pub peak_score: f64,
}

fn serialize_optional_time<S: serde::Serializer>(ts: &Option<EventTime>, s: S) -> Result<S::Ok, S::Error> {
    match ts {
        Some(ts) => crate::time::serialize_rfc3339(ts, s),
        None => s.serialize_none(),
    }
}

fn deserialize_optional_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<EventTime>, D::Error> {
    crate::time::deserialize_event_time(d).map(Some)
}

/// An asset's score for one time bucket, as written to `asset_scores.jsonl` with
/// `--emit-scores`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssetScore {
    pub asset_id: compact_str::CompactString,
    /// Start of the bucket.
    #[serde(
        serialize_with = "crate::time::serialize_rfc3339",
        deserialize_with = "crate::time::deserialize_event_time"
    )]
    pub ts: EventTime,
    /// In `[0, 1]`.
    pub score: f64,
    /// `NAME@vN`.
    pub model_version: String,
}

/// The score of one accepted reading, as written to `scores.jsonl` with `--emit-scores`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredReading {
    pub sensor_id: compact_str::CompactString,
    #[serde(
        serialize_with = "crate::time::serialize_rfc3339",
        deserialize_with = "crate::time::deserialize_event_time"
    )]
    pub ts: EventTime,
    pub value: f64,
    /// In `[0, 1]`; 0 for late readings, which skip stateful scoring.
    pub score: f64,
    /// Present and true only for readings older than the watermark.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
    /// Quality flags from validation (`out_of_range`, `rate_of_change`); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}
