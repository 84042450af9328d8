//! Drift and model lineage events: what the drift stage found, and each model version the
//! retrainer made (or refused to make).

use serde::{Deserialize, Serialize};

use crate::EventTime;

/// What a drift event measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftStatistic {
    /// Population stability index of a window against the model's reference.
    Psi,
    /// Kolmogorov–Smirnov statistic (binned) of a window against the reference.
    Ks,
    /// Wasserstein-1 distance over the reference's interdecile range.
    Wasserstein,
    /// A sequential detector found a shift in mean (up or down: see `value`'s sign).
    MeanShift,
    /// A sequential detector found a change of variance (`value` > 0: up).
    VarianceShift,
}

impl DriftStatistic {
    pub const ALL: [DriftStatistic; 5] = [
        DriftStatistic::Psi,
        DriftStatistic::Ks,
        DriftStatistic::Wasserstein,
        DriftStatistic::MeanShift,
        DriftStatistic::VarianceShift,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DriftStatistic::Psi => "psi",
            DriftStatistic::Ks => "ks",
            DriftStatistic::Wasserstein => "wasserstein",
            DriftStatistic::MeanShift => "mean_shift",
            DriftStatistic::VarianceShift => "variance_shift",
        }
    }
}

/// One statistic of one window (or one sequential detection) past its threshold. Emitted
/// when the statistic crosses its threshold, not at every slide while it stays above.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct DriftEvent {
    /// XXH3-128 of (statistic, subject, window end, model version): the same in a replay.
    pub event_id: String,
    pub asset_id: compact_str::CompactString,
    /// The sensor, for a per-sensor window or detector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor_id: Option<compact_str::CompactString>,
    /// The model feature, for a per-asset feature window (e.g. `Pressure:ma15`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    pub statistic: DriftStatistic,
    pub value: f64,
    pub threshold: f64,
    /// The window's event-time span `[window_start, window_end)`; for a sequential detection,
    /// from the end of its reference warm-up to the detection.
    #[serde(
        serialize_with = "crate::time::serialize_rfc3339",
        deserialize_with = "crate::time::deserialize_event_time"
    )]
    pub window_start: EventTime,
    #[serde(
        serialize_with = "crate::time::serialize_rfc3339",
        deserialize_with = "crate::time::deserialize_event_time"
    )]
    pub window_end: EventTime,
    /// Values the window held (or the detector read since its reference was set).
    pub count: u64,
    /// The reference: `NAME@vN`.
    pub model_version: String,
}

crate::wire::json_when_binary!(DriftEvent);

impl DriftEvent {
    /// The subject for ids and messages: the sensor, or `asset/feature`.
    pub fn subject(&self) -> String {
        match (&self.sensor_id, &self.feature) {
            (Some(sensor), _) => sensor.to_string(),
            (None, Some(feature)) => format!("{}/{feature}", self.asset_id),
            (None, None) => self.asset_id.to_string(),
        }
    }

    /// Sets `event_id` from the fields that make this event itself.
    pub fn with_id(mut self) -> Self {
        let subject = format!("{}|{}", self.subject(), self.model_version);
        self.event_id =
            crate::event_id::event_id("drift", self.statistic.as_str(), &subject, self.window_end);
        self
    }
}

/// What became of a retrained model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelVersionStatus {
    /// Published and served from `effective_from`.
    Serving,
    /// Trained but refused by a guard rail (`reason` says which); the parent stays in service.
    Refused,
    /// Served, then replaced by its parent again because its anomaly rate exploded.
    RolledBack,
}

impl ModelVersionStatus {
    pub const ALL: [ModelVersionStatus; 3] =
        [ModelVersionStatus::Serving, ModelVersionStatus::Refused, ModelVersionStatus::RolledBack];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelVersionStatus::Serving => "serving",
            ModelVersionStatus::Refused => "refused",
            ModelVersionStatus::RolledBack => "rolled_back",
        }
    }
}

/// One step of a model's lineage (the `model_versions` table, `model_versions.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersionEvent {
    pub model: String,
    /// The new version; for a refused retraining, the version it would have had.
    pub version: u64,
    pub parent_version: Option<u64>,
    pub status: ModelVersionStatus,
    /// Why it was trained (the drift that triggered it), and for a refusal, why it was refused.
    pub reason: String,
    /// When it is served from (or would have been).
    #[serde(
        serialize_with = "crate::time::serialize_rfc3339",
        deserialize_with = "crate::time::deserialize_event_time"
    )]
    pub effective_from: EventTime,
    /// Rows it was fitted on, and rows held back to check it.
    pub training_rows: u64,
    pub holdback_rows: u64,
    /// Share of the held-back rows the new model, and the parent, score as anomalous.
    pub holdback_anomaly_rate: f64,
    pub parent_holdback_anomaly_rate: f64,
    /// Mean silhouette of the clustering (none with one cluster).
    pub silhouette: Option<f64>,
    /// Whether the version reached the model store (it is served either way).
    pub published: bool,
}
