//! `[models.drift]` and `[models.retrain]`: how drift is measured and when it leads to a new
//! model version.

use millstream_operators::drift::sequential::SequentialConfig;
use serde::{Deserialize, Serialize};

/// `[models.drift]`: sliding event-time windows of each sensor's bucket means and each model
/// feature, compared with the serving model's reference at every slide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftSettings {
    /// Measure drift at all (it needs models: its references are theirs).
    pub enabled: bool,
    /// Window length W, in ms of event time: a bucket enters at its end `e` and leaves at
    /// `e + W`. A sensor quiet for W has an empty window, which closes (and ends its drift).
    pub window_ms: u64,
    /// Windows are compared every `slide_ms` (a divisor of nothing in particular; boundaries are
    /// multiples of it since the epoch).
    pub slide_ms: u64,
    /// Equiprobable bins cut at the reference's quantiles.
    pub bins: usize,
    /// Values a window must hold before it is compared (fewer: no statistic, no drift).
    pub min_count: u64,
    /// PSI at or above which a window drifts (0.25: the usual "significant shift").
    pub psi_threshold: f64,
    /// Binned Kolmogorov–Smirnov statistic at or above which a window drifts.
    pub ks_threshold: f64,
    /// Wasserstein-1 over the reference's interdecile range at or above which a window drifts.
    pub wasserstein_threshold: f64,
    /// A statistic in drift clears once it falls below `clear_ratio × threshold` (hysteresis, so
    /// a statistic near its threshold does not flap).
    pub clear_ratio: f64,
    /// The per-sensor sequential detectors (mean and variance shifts) read the means of blocks
    /// of this many consecutive buckets (60: one a minute with 1 s buckets). A block should
    /// span the sensors' fastest cycle, so that block means are nearly independent.
    pub block_buckets: u32,
    /// The per-sensor sequential detectors (their `warmup` counts blocks).
    pub sequential: SequentialConfig,
}

impl Default for DriftSettings {
    fn default() -> Self {
        DriftSettings {
            enabled: false,
            window_ms: 600_000,
            slide_ms: 60_000,
            bins: 10,
            min_count: 100,
            psi_threshold: 0.25,
            ks_threshold: 0.25,
            wasserstein_threshold: 0.5,
            clear_ratio: 0.8,
            block_buckets: 60,
            // 20 blocks: 20 minutes of reference after a start or a detection.
            sequential: SequentialConfig { warmup: 20, ..SequentialConfig::default() },
        }
    }
}

/// `[models.retrain]`: sustained drift fits a new version on recent clean data, checks it on a
/// held-back slice, publishes it, and every worker switches to it at one event time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrainSettings {
    /// Retrain at all (needs `[models.drift] enabled`).
    pub enabled: bool,
    /// A window must stay in drift (PSI, KS or Wasserstein) this long, in ms of event time.
    pub sustain_ms: u64,
    /// The newest clean buckets a new version may be fitted on: those since the drift began,
    /// at most this far back (ms).
    pub window_ms: u64,
    /// Fewest clean buckets to fit on (after the held-back slice is set aside).
    pub min_rows: usize,
    /// The newest fraction of the buckets is held back to check the new version.
    pub holdback_fraction: f64,
    /// A new version that scores more than this share of the held-back buckets as anomalous
    /// is refused (the parent stays).
    pub max_holdback_anomaly_rate: f64,
    /// At most one new version of a model per this span of event time (ms).
    pub min_interval_ms: u64,
    /// The new version is served from the decision time plus this (ms, > 0): the same event
    /// time on every worker of every process.
    pub switch_delay_ms: u64,
    /// After a switch, the new version's anomaly rate over its first `min_rows` buckets is
    /// watched; above this it is rolled back to its parent.
    pub rollback_anomaly_rate: f64,
}

impl Default for RetrainSettings {
    fn default() -> Self {
        RetrainSettings {
            enabled: false,
            sustain_ms: 300_000,
            window_ms: 1_800_000,
            min_rows: 200,
            holdback_fraction: 0.2,
            max_holdback_anomaly_rate: 0.1,
            min_interval_ms: 3_600_000,
            switch_delay_ms: 60_000,
            rollback_anomaly_rate: 0.3,
        }
    }
}

impl DriftSettings {
    pub fn check(&self) -> anyhow::Result<()> {
        let DriftSettings {
            enabled: _,
            window_ms,
            slide_ms,
            bins,
            min_count: _,
            psi_threshold,
            ks_threshold,
            wasserstein_threshold,
            clear_ratio,
            block_buckets,
            sequential,
        } = self;
        sequential.validate().map_err(|e| anyhow::anyhow!("[models.drift.sequential] {e}"))?;
        if *block_buckets == 0 {
            anyhow::bail!("[models.drift] block_buckets must be positive");
        }
        if *slide_ms == 0 || *window_ms < *slide_ms {
            anyhow::bail!("[models.drift] needs 0 < slide_ms <= window_ms");
        }
        if !(2..=1000).contains(bins) {
            anyhow::bail!("[models.drift] bins must be in 2..=1000");
        }
        for (name, value) in [
            ("psi_threshold", psi_threshold),
            ("ks_threshold", ks_threshold),
            ("wasserstein_threshold", wasserstein_threshold),
        ] {
            if !(value.is_finite() && *value > 0.0) {
                anyhow::bail!("[models.drift] {name} must be positive");
            }
        }
        if !(0.0..=1.0).contains(clear_ratio) {
            anyhow::bail!("[models.drift] clear_ratio must be in [0, 1]");
        }
        Ok(())
    }
}

impl RetrainSettings {
    pub fn check(&self, drift: &DriftSettings) -> anyhow::Result<()> {
        let RetrainSettings {
            enabled,
            sustain_ms: _,
            window_ms,
            min_rows,
            holdback_fraction,
            max_holdback_anomaly_rate,
            min_interval_ms: _,
            switch_delay_ms,
            rollback_anomaly_rate,
        } = self;
        if *enabled && !drift.enabled {
            anyhow::bail!("[models.retrain] is enabled but [models.drift] is not: retraining follows drift");
        }
        if *switch_delay_ms == 0 {
            anyhow::bail!("[models.retrain] switch_delay_ms must be positive");
        }
        if *window_ms == 0 || *min_rows < 2 {
            anyhow::bail!("[models.retrain] needs window_ms > 0 and min_rows >= 2");
        }
        if !(0.0..0.9).contains(holdback_fraction) {
            anyhow::bail!("[models.retrain] holdback_fraction must be in [0, 0.9)");
        }
        for (name, value) in [
            ("max_holdback_anomaly_rate", max_holdback_anomaly_rate),
            ("rollback_anomaly_rate", rollback_anomaly_rate),
        ] {
            if !(0.0..=1.0).contains(value) {
                anyhow::bail!("[models.retrain] {name} must be in [0, 1]");
            }
        }
        Ok(())
    }
}
