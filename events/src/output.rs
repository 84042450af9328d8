//! Rendered outputs on their way to the sinks.

use serde::{Deserialize, Serialize};

/// Which output file or topic a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OutputKind {
    Anomaly,
    DeadLetter,
    Score,
    AssetScore,
    Drift,
    ModelVersion,
}

impl OutputKind {
    pub const ALL: [OutputKind; 6] = [
        OutputKind::Anomaly,
        OutputKind::DeadLetter,
        OutputKind::Score,
        OutputKind::AssetScore,
        OutputKind::Drift,
        OutputKind::ModelVersion,
    ];

    /// Written only with `--emit-scores`.
    pub fn is_score(self) -> bool {
        matches!(self, OutputKind::Score | OutputKind::AssetScore)
    }

    /// The file name in a `jsonl:DIR` sink.
    pub fn file_name(self) -> &'static str {
        match self {
            OutputKind::Anomaly => "anomalies.jsonl",
            OutputKind::DeadLetter => "dead_letters.jsonl",
            OutputKind::Score => "scores.jsonl",
            OutputKind::AssetScore => "asset_scores.jsonl",
            OutputKind::Drift => "drift.jsonl",
            OutputKind::ModelVersion => "model_versions.jsonl",
        }
    }

    /// The `kind` tag on the `stdout` sink.
    pub fn tag(self) -> &'static str {
        match self {
            OutputKind::Anomaly => "anomaly",
            OutputKind::DeadLetter => "dead_letter",
            OutputKind::Score => "score",
            OutputKind::AssetScore => "asset_score",
            OutputKind::Drift => "drift",
            OutputKind::ModelVersion => "model_version",
        }
    }
}

/// One JSON object, rendered by the worker that produced it (so rendering runs in parallel)
/// and written by the sink.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OutputLine {
    pub kind: OutputKind,
    pub json: String,
}

/// An accepted reading on its way to the sinks (the `readings` table, `scores.jsonl`); it
/// crosses workers on its way to the per-asset stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingRow {
    pub sensor_id: compact_str::CompactString,
    pub asset_id: compact_str::CompactString,
    pub unit: Option<compact_str::CompactString>,
    pub ts: crate::EventTime,
    pub value: f64,
    /// In `[0, 1]`; 0 for late readings.
    pub score: f64,
    pub late: bool,
    /// Quality flags set by validation (a bit set; the names belong to the validator). A
    /// flagged reading is kept but not scored.
    pub quality: u8,
}

/// The current statistics of one sensor over one minute (a `readings_1m` row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinuteRow {
    pub sensor_id: String,
    /// Start of the minute, epoch ms.
    pub minute: crate::EventTime,
    pub count: i64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// Population standard deviation.
    pub stddev: f64,
}

/// What the pipeline hands to its sinks, typed; each sink renders what it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SinkEvent {
    Reading(ReadingRow),
    /// Boxed: an anomaly is more than twice the size of a reading, and every reading that
    /// flows as a `SinkEvent` would pay for the larger variant.
    Anomaly(Box<crate::Anomaly>),
    DeadLetter(crate::DeadLetter),
    /// A new value of a `readings_1m` row (database sinks only).
    MinuteAggregate(MinuteRow),
    /// An asset's multivariate score for one time bucket (`asset_scores.jsonl`).
    AssetScore(crate::AssetScore),
    /// A drift statistic past its threshold (`drift.jsonl`, `drift_events`, notifications).
    Drift(Box<crate::DriftEvent>),
    /// A model version the retrainer made or refused (`model_versions`).
    ModelVersion(Box<crate::ModelVersionEvent>),
}
