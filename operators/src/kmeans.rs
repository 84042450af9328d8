//! The per-asset multivariate detector: k-means on an asset's aligned feature vectors.
//!
//! [`train`] turns training rows (one feature vector per time bucket, features in a fixed
//! order) into a [`ModelArtifact`]; [`score`] scores one row against it. Scoring is a plain loop
//! over the artifact (no linfa, no allocation beyond the result), so it can run per row in the
//! dataflow; training uses linfa-clustering's k-means (k-means++ initialisation, best of
//! `n_runs` runs) with a seeded RNG, so the same rows and configuration give a bit-identical
//! artifact.
//!
//! # The score
//!
//! A row `x` is standardised feature by feature, `z_i = (x_i − location_i) / scale_i`
//! ([`crate::model::FeatureScale`]). Each cluster `j` has a centroid `c_j` and a *spread*
//! `σ_j`, per feature: the RMS deviation of its training rows from the centroid in that
//! feature (floored at `min_spread`). The *normalised distance* to cluster `j` is
//!
//! ```text
//! r_j = √( mean_i ((z_i − c_ji) / σ_ji)² )
//! ```
//!
//! the distance to the centroid relative to that cluster's own spread, feature by feature (a
//! diagonal Mahalanobis distance), so that "pressure is normal for this mode but the flow is not"
//! is seen even when the flow's global range is wide. The row belongs to the cluster with the
//! smallest `r_j` (ties: the lower index), and its score is
//! [`crate::model::Calibration::score`] of that `r`: 0.5 when the row is as far out as the
//! `calibration_quantile` (default 99 %) of the training rows, 0.8 at twice that (the default
//! threshold), 0.9 at three times.
//!
//! The explanation is each feature's share of `Σ ((z_i − c_i)/σ_i)²`: the features that pull
//! the row away from its cluster, with the signed deviation in units of the cluster's spread
//! ([`Scored::deviations`]).
//!
//! # Missing features (NaN)
//!
//! A feature that is NaN or infinite in a row is *missing* (a time bucket in which that sensor
//! said nothing, or said something invalid). Policy:
//!
//! - **Scoring**: the distance is the RMS over the present features only, i.e. the missing
//!   features are assumed to deviate as much, on average, as the present ones (neither "missing means normal", which would hide a fault
//!   behind a dead sensor, nor "missing means anomalous"). A missing feature's deviation is NaN
//!   and its contribution 0. With fewer than `min_present` features present (by default more
//!   than half of them), the row is not scored: [`ScoreError::TooFewFeatures`]. Silence of a
//!   sensor is the sensor-health detector's business, not this one's.
//! - **Training**: a row with any missing feature is left out (counted in
//!   `training.rows - training.rows_used`).

use linfa::prelude::*;
use linfa_clustering::KMeans;
use ndarray::Array2;
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;
use serde::{Deserialize, Serialize};

use crate::model::{
    quantile_sorted, Calibration, FeatureScale, ModelArtifact, QuantileSketch, TrainingMetrics,
    TrainingWindow, KMEANS_DETECTOR,
};

/// σ of a normal distribution per unit of interquartile range.
const IQR_TO_SIGMA: f64 = 1.0 / 1.348_979_500_392_163_5;
/// √(π/2): σ of a normal distribution per unit of mean absolute deviation.
const MAD_TO_SIGMA: f64 = 1.253_314_137_315_500_3;
/// Standardised coordinates are clamped to ±this in training (astronomic values would turn
/// squared distances into infinities).
const Z_CLAMP: f64 = 1e12;
/// Deviations are clamped to ±this when scoring, so that squares and their sums stay finite.
const DEVIATION_CLAMP: f64 = 1e150;
/// The bucket width [`train`] records; callers aligning at another width set `bucket_ms`.
pub const DEFAULT_BUCKET_MS: u64 = 1_000;
/// The silhouette is computed on at most this many evenly spaced training rows.
pub const SILHOUETTE_SAMPLE: usize = 1000;

/// Training parameters. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KMeansConfig {
    /// Clusters (operating modes) to fit.
    pub k: u32,
    /// Seed of the k-means++ initialisation.
    pub seed: u64,
    /// k-means runs from different initialisations; the lowest inertia wins.
    pub n_runs: u32,
    /// Lloyd iterations per run at most.
    pub max_iterations: u32,
    /// A run has converged when the centroids move less than this (standardised units).
    pub tolerance: f64,
    /// Clusters holding fewer than this fraction of the training rows are dropped (a handful
    /// of outliers in the training window must not become a "normal" mode of their own).
    pub min_cluster_fraction: f64,
    /// How each feature is standardised before clustering.
    pub scaling: Scaling,
    /// Floor of a cluster's per-feature spread, in robust σ of the feature: a feature that is
    /// constant within a mode (a quantised sensor) must not make every later step infinite.
    pub min_spread: f64,
    /// The quantile of the training rows' normalised distances that scores 0.5.
    pub calibration_quantile: f64,
    /// Recommended anomaly threshold on the score (0.8: twice the calibration distance).
    pub threshold: f64,
    /// A row needs more than this fraction of its features present to be scored.
    pub min_present_fraction: f64,
    /// Points of each feature's reference quantile sketch (evenly spaced levels, min to max).
    pub sketch_points: u32,
}

impl Default for KMeansConfig {
    fn default() -> Self {
        KMeansConfig {
            k: 4,
            seed: 0x6d69_6c6c_7374_7265,
            n_runs: 10,
            max_iterations: 300,
            tolerance: 1e-6,
            min_cluster_fraction: 0.01,
            scaling: Scaling::Robust,
            min_spread: 0.1,
            calibration_quantile: 0.99,
            threshold: 0.8,
            min_present_fraction: 0.5,
            sketch_points: 33,
        }
    }
}

impl KMeansConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: String| Err(TrainError::Config(what));
        if self.k == 0 || self.k > 1000 {
            return bad(format!("k must be in 1..=1000, got {}", self.k));
        }
        if self.n_runs == 0 || self.max_iterations == 0 {
            return bad("n_runs and max_iterations must be positive".into());
        }
        if !(self.tolerance > 0.0 && self.tolerance.is_finite()) {
            return bad(format!("tolerance must be positive, got {}", self.tolerance));
        }
        if !(0.0..1.0).contains(&self.min_cluster_fraction) {
            return bad(format!("min_cluster_fraction must be in [0, 1), got {}", self.min_cluster_fraction));
        }
        if !(self.min_spread > 0.0 && self.min_spread.is_finite()) {
            return bad(format!("min_spread must be positive, got {}", self.min_spread));
        }
        if !(self.calibration_quantile > 0.0 && self.calibration_quantile <= 1.0) {
            return bad(format!("calibration_quantile must be in (0, 1], got {}", self.calibration_quantile));
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return bad(format!("threshold must be in (0, 1), got {}", self.threshold));
        }
        if !(0.0..1.0).contains(&self.min_present_fraction) {
            return bad(format!("min_present_fraction must be in [0, 1), got {}", self.min_present_fraction));
        }
        if self.sketch_points < 2 || self.sketch_points > 4096 {
            return bad(format!("sketch_points must be in 2..=4096, got {}", self.sketch_points));
        }
        Ok(())
    }
}

/// The per-feature standardisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scaling {
    /// Median and IQR / 1.349, falling back to 1.2533 · mean |x − median| when the IQR is 0
    /// ([`robust_scale`]). The default: a few spikes or a short fault in the training window
    /// do not inflate the scale.
    #[default]
    Robust,
    /// Mean and standard deviation ([`mean_std_scale`]).
    MeanStd,
}

/// Why training failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error("kmeans: no features")]
    NoFeatures,
    #[error("kmeans: feature `{0}` appears twice")]
    DuplicateFeature(String),
    #[error("kmeans: row {row} has {got} values for {expected} features")]
    RowWidth { row: usize, expected: usize, got: usize },
    #[error("kmeans: {usable} usable training rows (every feature finite); need at least {required}")]
    TooFewRows { usable: usize, required: usize },
    #[error("kmeans: bad configuration: {0}")]
    Config(String),
    #[error("kmeans: fitting failed: {0}")]
    Fit(String),
}

/// Why a row was not scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScoreError {
    #[error("kmeans: row has {got} values, the model has {expected} features")]
    WrongWidth { expected: usize, got: usize },
    #[error("kmeans: {present} of the features present, the model needs {required}")]
    TooFewFeatures { present: usize, required: usize },
}

/// The score of one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// In `[0, 1]`.
    pub score: f64,
    /// The nearest cluster (by normalised distance).
    pub cluster: usize,
    /// The normalised distance to that centroid (RMS over the present features).
    pub distance: f64,
    /// Features present (finite) in the row.
    pub present: usize,
    /// Per feature: `(z_i − c_i) / σ_i`, in units of the cluster's spread of that feature
    /// (signed: positive means above the cluster's usual value); NaN for a missing feature.
    pub deviations: Vec<f64>,
}

impl Scored {
    /// Per feature, its share of the squared distance (sums to 1 unless the row sits exactly
    /// on the centroid; 0 for a missing feature).
    pub fn contributions(&self) -> Vec<f64> {
        let total: f64 = self.deviations.iter().filter(|d| !d.is_nan()).map(|d| d * d).sum();
        self.deviations
            .iter()
            .map(|d| if d.is_nan() || total <= 0.0 || !total.is_finite() { 0.0 } else { d * d / total })
            .collect()
    }

    /// The `n` features contributing most, as (feature index, share), largest first (ties: lower
    /// index first); features with no contribution are left out.
    pub fn top_contributors(&self, n: usize) -> Vec<(usize, f64)> {
        let mut shares: Vec<(usize, f64)> =
            self.contributions().into_iter().enumerate().filter(|(_, s)| *s > 0.0).collect();
        shares.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        shares.truncate(n);
        shares
    }
}

/// A one-line explanation naming the `n` features that contribute most, e.g.
/// `cluster 2, 3.4× its usual spread: Volume_Flow_RateRMS 7.3 σ below (81 %), Current 2.1 σ above (9 %)`,
/// σ being the cluster's spread of that feature.
pub fn explain(artifact: &ModelArtifact, scored: &Scored, n: usize) -> String {
    let mut text = format!("cluster {}, {:.1}× its usual spread", scored.cluster, scored.distance);
    let top = scored.top_contributors(n);
    for (i, (feature, share)) in top.iter().enumerate() {
        let d = scored.deviations[*feature];
        let name = artifact.features.get(*feature).map(String::as_str).unwrap_or("?");
        let direction = if d < 0.0 { "below" } else { "above" };
        text.push_str(if i == 0 { ": " } else { ", " });
        text.push_str(&format!("{name} {:.1} σ {direction} ({:.0} %)", d.abs(), 100.0 * share));
    }
    if scored.present < artifact.width() {
        text.push_str(&format!(
            " [{} of {} features missing]",
            artifact.width() - scored.present,
            artifact.width()
        ));
    }
    text
}

/// Trains a k-means model on `rows` (each `feature_names.len()` values, in that order).
pub fn train(
    rows: &[Vec<f64>],
    feature_names: &[String],
    config: &KMeansConfig,
) -> Result<ModelArtifact, TrainError> {
    config.validate()?;
    let f = feature_names.len();
    if f == 0 {
        return Err(TrainError::NoFeatures);
    }
    for (i, name) in feature_names.iter().enumerate() {
        if feature_names[..i].contains(name) {
            return Err(TrainError::DuplicateFeature(name.clone()));
        }
    }
    if let Some((row, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != f) {
        return Err(TrainError::RowWidth { row, expected: f, got: r.len() });
    }
    let used: Vec<&Vec<f64>> = rows.iter().filter(|r| r.iter().all(|v| v.is_finite())).collect();
    let k_requested = config.k as usize;
    let required = k_requested.max(2);
    if used.len() < required {
        return Err(TrainError::TooFewRows { usable: used.len(), required });
    }
    let n = used.len();

    // Per-feature robust standardisation and reference sketch, on the used rows.
    let mut standardisation = Vec::with_capacity(f);
    let mut reference = Vec::with_capacity(f);
    let mut column = vec![0.0; n];
    for i in 0..f {
        for (c, r) in column.iter_mut().zip(&used) {
            *c = r[i];
        }
        standardisation.push(match config.scaling {
            Scaling::Robust => robust_scale(&column),
            Scaling::MeanStd => mean_std_scale(&column),
        });
        reference.push(QuantileSketch::from_values(&column, config.sketch_points as usize));
    }
    let zrows: Vec<Vec<f64>> = used
        .iter()
        .map(|r| {
            r.iter()
                .zip(&standardisation)
                .map(|(x, s)| ((x - s.location) / s.scale).clamp(-Z_CLAMP, Z_CLAMP))
                .collect()
        })
        .collect();
    let z = Array2::from_shape_vec((n, f), zrows.concat()).map_err(|e| TrainError::Fit(e.to_string()))?;

    // k-means (linfa), seeded.
    let rng = Xoshiro256Plus::seed_from_u64(config.seed);
    let fitted = KMeans::params_with_rng(k_requested, rng)
        .n_runs(config.n_runs as usize)
        .max_n_iterations(u64::from(config.max_iterations))
        .tolerance(config.tolerance)
        .fit(&DatasetBase::from(z))
        .map_err(|e| TrainError::Fit(e.to_string()))?;
    let mut centroids: Vec<Vec<f64>> = fitted.centroids().rows().into_iter().map(|c| c.to_vec()).collect();
    if centroids.iter().flatten().any(|v| !v.is_finite()) {
        return Err(TrainError::Fit("non-finite centroid".into()));
    }

    // Drop tiny clusters (keeping at least the largest), then order: largest first.
    let rows_z: Vec<&[f64]> = zrows.iter().map(Vec::as_slice).collect();
    let sizes = cluster_sizes(&rows_z, &centroids);
    let min_size = ((config.min_cluster_fraction * n as f64).ceil() as u64).max(1);
    let largest = (0..centroids.len()).max_by(|&a, &b| sizes[a].cmp(&sizes[b]).then(b.cmp(&a))).unwrap_or(0);
    let mut keep: Vec<usize> =
        (0..centroids.len()).filter(|&j| sizes[j] >= min_size || j == largest).collect();
    keep.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then_with(|| lexicographic(&centroids[a], &centroids[b])));
    centroids = keep.iter().map(|&j| centroids[j].clone()).collect();

    // Memberships (Euclidean, as k-means) for sizes, spreads, inertia and silhouette.
    let membership: Vec<usize> = rows_z.iter().map(|r| nearest(r, &centroids).0).collect();
    let k = centroids.len();
    let mut cluster_sizes = vec![0u64; k];
    let mut sum_sq = vec![vec![0.0f64; f]; k];
    for (r, &j) in rows_z.iter().zip(&membership) {
        cluster_sizes[j] += 1;
        for ((s, z), c) in sum_sq[j].iter_mut().zip(r.iter()).zip(&centroids[j]) {
            *s += (z - c) * (z - c);
        }
    }
    let inertia: f64 = sum_sq.iter().flatten().sum();
    let spreads: Vec<Vec<f64>> = sum_sq
        .iter()
        .zip(&cluster_sizes)
        .map(|(sums, &size)| {
            sums.iter()
                .map(|s| {
                    let rms = if size > 0 { (s / size as f64).sqrt() } else { 0.0 };
                    if rms.is_finite() {
                        rms.max(config.min_spread)
                    } else {
                        f64::MAX
                    }
                })
                .collect()
        })
        .collect();

    // Calibration on the training rows, scored exactly as live rows are.
    let mut normalised: Vec<f64> =
        rows_z.iter().map(|r| nearest_normalised(r, &centroids, &spreads).1).collect();
    normalised.sort_by(f64::total_cmp);
    let q = quantile_sorted(&normalised, config.calibration_quantile);
    let reference_distance = if q.is_finite() && q > 1e-9 { q } else { 1e-9 };

    let silhouette = silhouette(&rows_z, &membership, k);
    let min_present = ((config.min_present_fraction * f as f64).floor() as u32 + 1).min(f as u32);
    let artifact = ModelArtifact {
        name: KMEANS_DETECTOR.into(),
        class: "default".into(),
        detector: KMEANS_DETECTOR.into(),
        features: feature_names.to_vec(),
        standardisation,
        centroids,
        spreads,
        cluster_sizes,
        calibration: Calibration {
            quantile: config.calibration_quantile,
            reference: reference_distance,
            threshold: config.threshold,
        },
        min_present,
        reference,
        training: TrainingWindow {
            first_ts: None,
            last_ts: None,
            rows: rows.len() as u64,
            rows_used: n as u64,
        },
        metrics: TrainingMetrics { inertia, silhouette, k_requested: config.k, k: k as u32 },
        params: config.clone(),
        bucket_ms: DEFAULT_BUCKET_MS,
        effective_from: None,
        signals: Vec::new(),
    };
    artifact.validate().map_err(|e| TrainError::Fit(e.to_string()))?;
    Ok(artifact)
}

/// Scores one row (the artifact's features, in order; NaN for a missing one).
pub fn score(artifact: &ModelArtifact, row: &[f64]) -> Result<Scored, ScoreError> {
    score_into(artifact, row, Vec::new())
}

/// [`score`], building [`Scored::deviations`] in `buffer` (cleared first), so that a caller
/// scoring row after row can hand the previous result's vector back and allocate nothing.
pub fn score_into(artifact: &ModelArtifact, row: &[f64], buffer: Vec<f64>) -> Result<Scored, ScoreError> {
    let f = artifact.width();
    if row.len() != f {
        return Err(ScoreError::WrongWidth { expected: f, got: row.len() });
    }
    let mut deviations = buffer;
    deviations.clear();
    deviations.extend(row.iter().zip(&artifact.standardisation).map(|(x, s)| {
        if x.is_finite() {
            (x - s.location) / s.scale
        } else {
            f64::NAN
        }
    }));
    let present = deviations.iter().filter(|z| !z.is_nan()).count();
    let required = artifact.min_present as usize;
    if present < required || present == 0 {
        return Err(ScoreError::TooFewFeatures { present, required: required.max(1) });
    }
    let (cluster, distance) = nearest_normalised(&deviations, &artifact.centroids, &artifact.spreads);
    for ((d, c), s) in deviations.iter_mut().zip(&artifact.centroids[cluster]).zip(&artifact.spreads[cluster])
    {
        *d = ((*d - c) / s).clamp(-DEVIATION_CLAMP, DEVIATION_CLAMP); // NaN stays NaN
    }
    Ok(Scored { score: artifact.calibration.score(distance), cluster, distance, present, deviations })
}

/// The cluster minimising `r_j = √(mean_i ((z_i − c_ji) / σ_ji)²)` over the non-NaN coordinates
/// of `z`, and that normalised distance.
fn nearest_normalised(z: &[f64], centroids: &[Vec<f64>], spreads: &[Vec<f64>]) -> (usize, f64) {
    let present = z.iter().filter(|v| !v.is_nan()).count().max(1) as f64;
    let mut best = (0, f64::INFINITY);
    for (j, (c, s)) in centroids.iter().zip(spreads).enumerate() {
        let mut sum = 0.0;
        for ((zi, ci), si) in z.iter().zip(c).zip(s) {
            if !zi.is_nan() {
                let d = ((zi - ci) / si).clamp(-DEVIATION_CLAMP, DEVIATION_CLAMP);
                sum += d * d;
            }
        }
        let r = (sum / present).sqrt();
        if j == 0 || r < best.1 {
            best = (j, r);
        }
    }
    best
}

/// The Euclidean-nearest centroid and the squared distance.
fn nearest(z: &[f64], centroids: &[Vec<f64>]) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (j, c) in centroids.iter().enumerate() {
        let d = squared_distance(z, c);
        if d < best.1 {
            best = (j, d);
        }
    }
    best
}

fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn lexicographic(a: &[f64], b: &[f64]) -> std::cmp::Ordering {
    a.iter().zip(b).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne()).unwrap_or(std::cmp::Ordering::Equal)
}

fn cluster_sizes(rows: &[&[f64]], centroids: &[Vec<f64>]) -> Vec<u64> {
    let mut sizes = vec![0u64; centroids.len()];
    for r in rows {
        sizes[nearest(r, centroids).0] += 1;
    }
    sizes
}

/// Mean and standard deviation of one feature's (finite) training values, the deviation never
/// below `1e-6 · |mean| + 1e-9`.
pub fn mean_std_scale(values: &[f64]) -> FeatureScale {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return FeatureScale { location: 0.0, scale: 1.0 };
    }
    let n = finite.len() as f64;
    let mean = finite.iter().map(|v| v / n).sum::<f64>();
    let var = finite.iter().map(|v| (v - mean) * (v - mean) / n).sum::<f64>();
    let sd = if var.is_finite() { var.sqrt() } else { f64::MAX };
    FeatureScale { location: mean, scale: sd.max(1e-6 * mean.abs() + 1e-9) }
}

/// Median and robust σ of one feature's (finite) training values; see
/// [`FeatureScale`] for the rule.
pub fn robust_scale(values: &[f64]) -> FeatureScale {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let median = quantile_sorted(&sorted, 0.5);
    if sorted.is_empty() {
        return FeatureScale { location: 0.0, scale: 1.0 };
    }
    let iqr = quantile_sorted(&sorted, 0.75) - quantile_sorted(&sorted, 0.25);
    let mut scale = iqr * IQR_TO_SIGMA;
    if !(scale > 0.0 && scale.is_finite()) {
        let mad = sorted.iter().map(|v| (v - median).abs()).sum::<f64>() / sorted.len() as f64;
        scale = MAD_TO_SIGMA * mad;
    }
    let floor = 1e-6 * median.abs() + 1e-9;
    if !scale.is_finite() {
        scale = f64::MAX;
    }
    FeatureScale { location: median, scale: scale.max(floor) }
}

/// Mean silhouette on at most [`SILHOUETTE_SAMPLE`] evenly spaced rows; `None` for one cluster.
fn silhouette(rows: &[&[f64]], membership: &[usize], k: usize) -> Option<f64> {
    if k < 2 || rows.len() < 2 {
        return None;
    }
    let step = rows.len().div_ceil(SILHOUETTE_SAMPLE);
    let sample: Vec<usize> = (0..rows.len()).step_by(step).collect();
    let mut total = 0.0;
    let mut sums = vec![0.0f64; k];
    let mut counts = vec![0usize; k];
    for &i in &sample {
        sums.iter_mut().for_each(|s| *s = 0.0);
        counts.iter_mut().for_each(|c| *c = 0);
        for &j in &sample {
            if i != j {
                sums[membership[j]] += squared_distance(rows[i], rows[j]).sqrt();
                counts[membership[j]] += 1;
            }
        }
        let own = membership[i];
        if counts[own] == 0 {
            continue; // a singleton's silhouette is 0 by convention
        }
        let a = sums[own] / counts[own] as f64;
        let b = (0..k)
            .filter(|&c| c != own && counts[c] > 0)
            .map(|c| sums[c] / counts[c] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() && a.max(b) > 0.0 {
            total += (b - a) / a.max(b);
        }
    }
    let s = total / sample.len() as f64;
    s.is_finite().then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// xorshift64 with Box–Muller.
    struct Noise(u64);

    impl Noise {
        fn gaussian(&mut self) -> f64 {
            let mut uniform = || {
                let mut x = self.0;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.0 = x;
                ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
            };
            let (u1, u2) = (uniform(), uniform());
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        }
    }

    fn names(f: usize) -> Vec<String> {
        (0..f).map(|i| format!("s{i}")).collect()
    }

    /// Two operating modes of a 4-sensor asset: idle and loaded (sensors 0–2 move together,
    /// sensor 3 is independent noise).
    fn two_modes(n: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut noise = Noise(seed);
        (0..n)
            .map(|i| {
                let load = if (i / 50) % 2 == 0 { 0.0 } else { 1.0 };
                vec![
                    10.0 + 5.0 * load + 0.2 * noise.gaussian(),
                    2.0 + 1.0 * load + 0.05 * noise.gaussian(),
                    60.0 + 8.0 * load + 0.3 * noise.gaussian(),
                    1.0 + 0.1 * noise.gaussian(),
                ]
            })
            .collect()
    }

    #[test]
    fn training_is_deterministic_bit_for_bit() {
        let rows = two_modes(600, 7);
        let config = KMeansConfig::default();
        let a = train(&rows, &names(4), &config).unwrap();
        let b = train(&rows, &names(4), &config).unwrap();
        assert_eq!(a.encode().unwrap(), b.encode().unwrap());
        // A different seed may find another local optimum, but here both modes are obvious.
        let c = train(&rows, &names(4), &KMeansConfig { seed: 99, ..config }).unwrap();
        assert_eq!(c.metrics.k, a.metrics.k);
    }

    #[test]
    fn artifact_holds_what_it_should() {
        let rows = two_modes(600, 3);
        let a = train(&rows, &names(4), &KMeansConfig { k: 2, ..Default::default() })
            .unwrap()
            .with_window(1_000, 600_000);
        assert_eq!(a.features, names(4));
        assert_eq!((a.metrics.k, a.centroids.len(), a.spreads.len()), (2, 2, 2));
        assert_eq!(a.cluster_sizes.iter().sum::<u64>(), 600);
        assert_eq!((a.training.rows, a.training.rows_used), (600, 600));
        assert_eq!((a.training.first_ts, a.training.last_ts), (Some(1_000), Some(600_000)));
        assert!(a.metrics.silhouette.unwrap() > 0.5, "{:?}", a.metrics);
        assert!(a.metrics.inertia > 0.0);
        assert_eq!(a.reference[0].values.len(), 33);
        assert!((a.reference[3].quantile(0.5) - 1.0).abs() < 0.05);
        assert_eq!(a.min_present, 3);
        // The bytes round-trip.
        assert_eq!(ModelArtifact::decode(&a.encode().unwrap()).unwrap(), a);
    }

    #[test]
    fn an_outlier_scores_high_and_normal_rows_low() {
        let rows = two_modes(1000, 11);
        let a = train(&rows, &names(4), &KMeansConfig::default()).unwrap();
        let threshold = a.calibration.threshold;
        // Fresh normal rows from both modes: nearly all below the threshold.
        let fresh = two_modes(1000, 12);
        let flagged = fresh.iter().filter(|r| score(&a, r).unwrap().score >= threshold).count();
        assert!(flagged <= 10, "{flagged} of 1000 normal rows flagged");
        let typical = score(&a, &[10.0, 2.0, 60.0, 1.0]).unwrap();
        assert!(typical.score < 0.2, "{typical:?}");
        // Each sensor individually normal, jointly impossible: loaded on sensor 0, idle on 1–2.
        let broken_relation = score(&a, &[15.0, 2.0, 60.0, 1.0]).unwrap();
        assert!(broken_relation.score > 0.95, "{broken_relation:?}");
        let far = score(&a, &[10.0, 2.0, 60.0, 50.0]).unwrap();
        assert!(far.score > 0.99, "{far:?}");
    }

    #[test]
    fn contributions_point_at_the_deviating_feature() {
        let rows = two_modes(1000, 5);
        let a = train(&rows, &names(4), &KMeansConfig::default()).unwrap();
        let s = score(&a, &[15.0, 3.0, 68.0, 2.0]).unwrap(); // loaded, sensor 3 ten σ high
        assert!(s.score >= a.calibration.threshold, "{s:?}");
        let top = s.top_contributors(2);
        assert_eq!(top[0].0, 3, "{s:?}");
        assert!(top[0].1 > 0.9, "{top:?}");
        assert!(s.deviations[3] > 5.0);
        let total: f64 = s.contributions().iter().sum();
        assert!((total - 1.0).abs() < 1e-9);
        let text = explain(&a, &s, 2);
        assert!(text.starts_with("cluster ") && text.contains("s3 ") && text.contains("above"), "{text}");
        let low = score(&a, &[10.0, 2.0, 60.0, 0.0]).unwrap();
        assert_eq!(low.top_contributors(1)[0].0, 3);
        assert!(explain(&a, &low, 1).contains("below"));
    }

    #[test]
    fn missing_features_follow_the_policy() {
        let rows = two_modes(800, 9);
        let a = train(&rows, &names(4), &KMeansConfig::default()).unwrap();
        // One missing: scored on the rest, the missing one contributes nothing.
        let s = score(&a, &[10.0, f64::NAN, 60.0, 8.0]).unwrap();
        assert_eq!(s.present, 3);
        assert!(s.deviations[1].is_nan() && s.contributions()[1] == 0.0);
        assert!(s.score > 0.99 && s.top_contributors(1)[0].0 == 3, "{s:?}");
        assert!(explain(&a, &s, 1).contains("1 of 4 features missing"));
        let ok = score(&a, &[10.0, 2.0, f64::INFINITY, 1.0]).unwrap();
        assert!(ok.score < 0.5, "{ok:?}");
        // Half or more missing: not scored.
        assert_eq!(
            score(&a, &[10.0, f64::NAN, f64::NAN, 1.0]),
            Err(ScoreError::TooFewFeatures { present: 2, required: 3 })
        );
        assert_eq!(score(&a, &[1.0]), Err(ScoreError::WrongWidth { expected: 4, got: 1 }));
        // Training skips incomplete rows.
        let mut with_gaps = rows.clone();
        with_gaps[3][2] = f64::NAN;
        with_gaps[10][0] = f64::INFINITY;
        let b = train(&with_gaps, &names(4), &KMeansConfig::default()).unwrap();
        assert_eq!((b.training.rows, b.training.rows_used), (800, 798));
    }

    #[test]
    fn bad_input_is_refused_clearly() {
        let rows = two_modes(100, 1);
        assert_eq!(train(&rows, &[], &KMeansConfig::default()), Err(TrainError::NoFeatures));
        let dup = vec!["a".to_string(), "b".into(), "a".into(), "c".into()];
        assert_eq!(
            train(&rows, &dup, &KMeansConfig::default()),
            Err(TrainError::DuplicateFeature("a".into()))
        );
        assert_eq!(
            train(&rows, &names(3), &KMeansConfig::default()),
            Err(TrainError::RowWidth { row: 0, expected: 3, got: 4 })
        );
        assert_eq!(
            train(&rows[..3], &names(4), &KMeansConfig::default()),
            Err(TrainError::TooFewRows { usable: 3, required: 4 })
        );
        let err = train(&rows, &names(4), &KMeansConfig { k: 0, ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("k must be"), "{err}");
    }

    #[test]
    fn degenerate_training_data_still_gives_a_usable_model() {
        // Constant rows: every scale and spread is at its floor; the same row scores 0, any
        // move scores ~1.
        let rows = vec![vec![5.0, 0.0, -3.0]; 50];
        let a = train(&rows, &names(3), &KMeansConfig::default()).unwrap();
        assert_eq!(a.metrics.k, 1, "duplicate centroids collapse into one kept cluster");
        assert_eq!(score(&a, &[5.0, 0.0, -3.0]).unwrap().score, 0.0);
        assert!(score(&a, &[5.1, 0.0, -3.0]).unwrap().score > 0.99);
        // A quantised sensor sitting on one level most of the time gets a MAD-based scale.
        let mut values = vec![32.0; 90];
        values.extend([31.0, 33.0, 32.5, 31.5, 33.0, 32.0, 31.0, 34.0, 30.0, 32.0]);
        let s = robust_scale(&values);
        assert_eq!(s.location, 32.0);
        assert!(s.scale > 0.05 && s.scale < 0.5, "{s:?}");
    }

    #[test]
    fn mean_std_scaling_is_available() {
        let rows = two_modes(600, 13);
        let config = KMeansConfig { scaling: Scaling::MeanStd, ..Default::default() };
        let a = train(&rows, &names(4), &config).unwrap();
        assert!((a.standardisation[0].location - 12.5).abs() < 0.1, "{:?}", a.standardisation[0]);
        assert!((a.standardisation[0].scale - 2.5).abs() < 0.1, "{:?}", a.standardisation[0]);
        assert!(score(&a, &[10.0, 2.0, 60.0, 1.0]).unwrap().score < 0.5);
        let s = mean_std_scale(&[1.0, 3.0, f64::NAN]);
        assert_eq!((s.location, s.scale), (2.0, 1.0));
    }

    #[test]
    fn tiny_clusters_are_dropped() {
        let mut rows = two_modes(1000, 21);
        for r in rows.iter_mut().take(3) {
            r[3] = 40.0; // three training outliers far away
        }
        let a = train(&rows, &names(4), &KMeansConfig { k: 3, ..Default::default() }).unwrap();
        assert_eq!(a.metrics.k_requested, 3);
        assert!(a.cluster_sizes.iter().all(|&s| s >= 10), "{:?}", a.cluster_sizes);
        assert!(score(&a, &[10.0, 2.0, 60.0, 40.0]).unwrap().score >= a.calibration.threshold);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any finite or missing values: scores in [0, 1], a valid cluster, no panic.
        #[test]
        fn scores_are_bounded(row in prop::collection::vec(
            prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -1e300..1e300f64, -100.0..100.0f64, Just(f64::MAX)], 4)) {
            static MODEL: std::sync::OnceLock<ModelArtifact> = std::sync::OnceLock::new();
            let a = MODEL.get_or_init(|| train(&two_modes(300, 4), &names(4), &KMeansConfig::default()).unwrap());
            match score(a, &row) {
                Ok(s) => {
                    prop_assert!((0.0..=1.0).contains(&s.score), "{:?}", s);
                    prop_assert!(s.cluster < a.centroids.len());
                    let total: f64 = s.contributions().iter().sum();
                    prop_assert!(total == 0.0 || (total - 1.0).abs() < 1e-6, "{}", total);
                }
                Err(ScoreError::TooFewFeatures { .. }) => {}
                Err(e) => prop_assert!(false, "{}", e),
            }
        }
    }
}
