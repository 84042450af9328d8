//! The model artifact: everything a trained per-asset detector needs to score, explain and be
//! watched for drift, in one self-describing, versioned blob.
//!
//! # Encoding
//!
//! ```text
//! offset  size  field
//! 0       7     magic b"MSMODEL"
//! 7       2     format version, u16 little-endian (FORMAT_VERSION)
//! 9       4     body length in bytes, u32 little-endian
//! 13      4     CRC-32 (IEEE) of the body, u32 little-endian
//! 17      n     body: the ModelArtifact, bincode 1 (little-endian, varint integers)
//! ```
//!
//! Binary rather than JSON so that every `f64` round-trips bit for bit (an artifact encoded,
//! decoded and encoded again is the same bytes). [`ModelArtifact::decode`] refuses a wrong
//! magic, an unknown version, a wrong length, a bad checksum, an undecodable body and a body
//! that decodes but is inconsistent (see [`ModelArtifact::validate`]), each with a
//! [`ModelError`]; it never panics, whatever the bytes. bincode is positional, so any change to
//! the fields of [`ModelArtifact`] (or of the types in it, `KMeansConfig` included) is a new
//! [`FORMAT_VERSION`]; a newer build adds a version and keeps decoding the old ones.
//!
//! # What is in it
//!
//! - identity: a model name and the asset class it serves, and the detector (`kmeans`);
//! - the features, in order (sensor kinds, possibly with a derivation suffix such as
//!   `Temperature:ma15:diff30`), each with its robust standardisation ([`FeatureScale`]);
//! - the k-means centroids (in standardised units), each cluster's per-feature spread and size;
//! - the score calibration ([`Calibration`]);
//! - a reference distribution per feature ([`QuantileSketch`], raw units), for drift checks;
//! - the training window and training metrics, and the parameters it was trained with.

use serde::{Deserialize, Serialize};

use crate::kmeans::KMeansConfig;

/// The first bytes of every encoded artifact.
pub const MAGIC: &[u8; 7] = b"MSMODEL";
/// The format version [`ModelArtifact::encode`] writes. `decode` reads it and version 2.
/// Version 3 added `signals` (per-sensor drift references); version 2 added `bucket_ms` and
/// `effective_from`; version 1 was never released.
pub const FORMAT_VERSION: u16 = 3;
/// The oldest format version `decode` reads.
pub const OLDEST_FORMAT_VERSION: u16 = 2;
/// Magic, version, length and checksum.
pub const HEADER_LEN: usize = 7 + 2 + 4 + 4;
/// The largest body `decode` accepts (a model with thousands of features is still far below).
pub const MAX_BODY_LEN: usize = 64 << 20;
/// The `detector` of a k-means artifact.
pub const KMEANS_DETECTOR: &str = "kmeans";

/// Why an artifact could not be decoded (or is not usable).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("model artifact: {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    #[error("model artifact: bad magic bytes (not a millstream model)")]
    BadMagic,
    #[error("model artifact: format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("model artifact: the header announces a {declared}-byte body, {actual} bytes follow")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("model artifact: body of {0} bytes exceeds the limit of {MAX_BODY_LEN}")]
    TooLarge(usize),
    #[error("model artifact: checksum mismatch (corrupt or truncated)")]
    Checksum,
    #[error("model artifact: cannot decode the body: {0}")]
    Decode(String),
    #[error("model artifact: cannot encode: {0}")]
    Encode(String),
    #[error("model artifact: inconsistent: {0}")]
    Invalid(String),
}

/// The robust standardisation of one feature: `z = (x − location) / scale`.
///
/// `location` is the training median. `scale` is IQR / 1.349 (σ for a normal distribution), or,
/// when the IQR is 0 (a quantised sensor that sits on one level more than half of the time, such
/// as SKAB's pressure and flow), 1.2533 · mean |x − median| (also σ for a normal), and never
/// below `1e-6 · |median| + 1e-9`. Median and IQR rather than mean and σ: a training window
/// is rarely clean, and a few spikes or a short fault in it would inflate σ and hide later faults
/// of the same size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FeatureScale {
    pub location: f64,
    pub scale: f64,
}

/// Maps the normalised distance of a row to a score in `[0, 1]`.
///
/// With `r` the normalised distance to the nearest centroid (see `kmeans`), and
/// `x = r / reference`, the score is `x² / (x² + 1)`: 0.5 when the row is as unusual as the
/// `quantile` of the training rows, 0.8 at twice that distance, 0.9 at three times. `threshold`
/// is the score the trainer recommends for an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The quantile of the training rows' normalised distances that maps to score 0.5.
    pub quantile: f64,
    /// That quantile's value (a normalised distance, > 0).
    pub reference: f64,
    /// Recommended anomaly threshold on the score, in `(0, 1)`.
    pub threshold: f64,
}

impl Calibration {
    /// The score of a normalised distance.
    pub fn score(&self, normalised_distance: f64) -> f64 {
        let x = normalised_distance / self.reference;
        let x2 = x * x;
        let s = x2 / (x2 + 1.0);
        if s.is_nan() {
            // inf/inf: an infinite distance is the most anomalous row there is.
            if normalised_distance.is_nan() {
                0.0
            } else {
                1.0
            }
        } else {
            s
        }
    }

    /// The normalised distance at which the score reaches `score` (inverse of [`Self::score`]).
    pub fn distance_for(&self, score: f64) -> f64 {
        self.reference * (score / (1.0 - score)).sqrt()
    }
}

/// A feature's training distribution: values at evenly spaced quantile levels
/// (`levels[i] = i / (n − 1)`, so the first is the minimum and the last the maximum), with
/// linear interpolation between order statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantileSketch {
    /// Finite training values it summarises.
    pub count: u64,
    pub levels: Vec<f64>,
    pub values: Vec<f64>,
}

impl QuantileSketch {
    /// A sketch of `values` at `points` evenly spaced levels (at least 2). Non-finite values are
    /// left out; with none left, every quantile is NaN and `count` is 0.
    pub fn from_values(values: &[f64], points: usize) -> QuantileSketch {
        let points = points.max(2);
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let levels: Vec<f64> = (0..points).map(|i| i as f64 / (points - 1) as f64).collect();
        let values = levels.iter().map(|&q| quantile_sorted(&sorted, q)).collect();
        QuantileSketch { count: sorted.len() as u64, levels, values }
    }

    /// Whether [`Self::quantile`] and [`Self::cdf`] can trust it: as many levels as values, both
    /// non-decreasing, levels in `[0, 1]`, and every value finite unless the sketch is empty
    /// (`count` 0, whose quantiles are NaN by construction). A decoded artifact is checked, so
    /// a hostile one cannot make `cdf` index out of bounds.
    pub fn check(&self) -> Result<(), String> {
        if self.levels.len() != self.values.len() {
            return Err(format!("has {} levels and {} values", self.levels.len(), self.values.len()));
        }
        if !self.levels.iter().all(|l| (0.0..=1.0).contains(l)) {
            return Err("has a level outside [0, 1]".into());
        }
        if self.count > 0 && !self.values.iter().all(|v| v.is_finite()) {
            return Err("has a value that is not finite".into());
        }
        let values_sorted = self.count == 0 || self.values.windows(2).all(|w| w[0] <= w[1]);
        if !self.levels.windows(2).all(|w| w[0] <= w[1]) || !values_sorted {
            return Err("is not non-decreasing".into());
        }
        Ok(())
    }

    /// The interpolated quantile at level `q` in `[0, 1]` (clamped); NaN for an empty sketch.
    pub fn quantile(&self, q: f64) -> f64 {
        let n = self.values.len();
        if n == 0 || self.count == 0 || q.is_nan() {
            return f64::NAN;
        }
        if n == 1 {
            return self.values[0];
        }
        let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
        let i = (pos.floor() as usize).min(n - 2);
        let f = pos - i as f64;
        self.values[i] + f * (self.values[i + 1] - self.values[i])
    }

    /// The estimated CDF at `x`: the fraction of the training distribution at or below `x`,
    /// interpolated between the stored quantiles; 0 below the minimum, 1 above the maximum.
    pub fn cdf(&self, x: f64) -> f64 {
        let n = self.values.len();
        if n == 0 || self.count == 0 || x.is_nan() {
            return f64::NAN;
        }
        if x < self.values[0] {
            return 0.0;
        }
        if x >= self.values[n - 1] {
            return 1.0;
        }
        // The last i with values[i] <= x (values are non-decreasing); i < n − 1 here.
        let i = self.values.partition_point(|&v| v <= x) - 1;
        let (lo, hi) = (self.values[i], self.values[i + 1]);
        let f = if hi > lo { (x - lo) / (hi - lo) } else { 0.0 };
        self.levels[i] + f * (self.levels[i + 1] - self.levels[i])
    }
}

/// Linear interpolation between order statistics (R's type 7) of an ascending slice.
pub(crate) fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let i = (pos.floor() as usize).min(n - 2);
            let f = pos - i as f64;
            sorted[i] + f * (sorted[i + 1] - sorted[i])
        }
    }
}

/// The rows the model was trained on.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TrainingWindow {
    /// Event time (ms since the epoch) of the first and last training row, when known.
    pub first_ts: Option<u64>,
    pub last_ts: Option<u64>,
    /// Rows given to the trainer.
    pub rows: u64,
    /// Rows it used: those with every feature finite.
    pub rows_used: u64,
}

/// How well the clustering fits its training rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainingMetrics {
    /// Sum of squared (standardised) distances of the used rows to their nearest centroid.
    pub inertia: f64,
    /// Mean silhouette in `[-1, 1]` on at most `SILHOUETTE_SAMPLE` evenly spaced rows; `None`
    /// with a single cluster.
    pub silhouette: Option<f64>,
    /// Clusters k-means was asked for, and clusters kept (tiny ones are dropped).
    pub k_requested: u32,
    pub k: u32,
}

/// A trained per-asset multivariate model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelArtifact {
    /// The model's name, e.g. `pump-kmeans`.
    pub name: String,
    /// The asset class (equipment category) it is for, e.g. `pump`.
    pub class: String,
    /// The detector that uses it: [`KMEANS_DETECTOR`].
    pub detector: String,
    /// Feature names, in the order rows must be given.
    pub features: Vec<String>,
    /// One per feature.
    pub standardisation: Vec<FeatureScale>,
    /// k centroids of `features.len()` standardised coordinates each.
    pub centroids: Vec<Vec<f64>>,
    /// Per cluster, per feature: the RMS standardised deviation of its training rows from its
    /// centroid (floored, > 0).
    pub spreads: Vec<Vec<f64>>,
    /// Per cluster: training rows assigned to it.
    pub cluster_sizes: Vec<u64>,
    pub calibration: Calibration,
    /// Rows with fewer finite features than this are not scored (see `kmeans::score`).
    pub min_present: u32,
    /// One per feature, in raw units.
    pub reference: Vec<QuantileSketch>,
    pub training: TrainingWindow,
    pub metrics: TrainingMetrics,
    /// The parameters it was trained with.
    pub params: KMeansConfig,
    /// Width of the event-time buckets its feature vectors are aligned to, in ms (the feature
    /// windows, `:ma15`, count these buckets).
    pub bucket_ms: u64,
    /// The event time from which the dataflow serves this version (all workers switch at
    /// that time); `None`: as soon as it is seen.
    pub effective_from: Option<u64>,
    /// The drift reference of each sensor the features read, in [`crate::features::FeaturePlan`]
    /// order: the distribution of the sensor's bucket means in training (format 3). Empty: the
    /// model gives no per-sensor drift reference (its feature references still serve).
    pub signals: Vec<SignalReference>,
}

/// The drift references of `sensors` from training buckets: `buckets[i][j]` is sensor `j`'s
/// mean in bucket `i` (`None`: no reading). Sketches of `points` quantiles.
pub fn signal_references<'a>(
    sensors: &[String],
    buckets: impl IntoIterator<Item = &'a [Option<f64>]>,
    points: usize,
) -> Vec<SignalReference> {
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); sensors.len()];
    for bucket in buckets {
        for (column, value) in columns.iter_mut().zip(bucket) {
            column.extend(value.filter(|v| v.is_finite()));
        }
    }
    sensors
        .iter()
        .zip(columns)
        .map(|(sensor, column)| SignalReference {
            sensor: sensor.clone(),
            sketch: QuantileSketch::from_values(&column, points),
        })
        .collect()
}

/// One sensor's training distribution (its bucket means), the reference of its drift windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalReference {
    /// The sensor name (the last `/` part of a sensor id), as the features name it.
    pub sensor: String,
    pub sketch: QuantileSketch,
}

impl ModelArtifact {
    /// The artifact as bytes: header, then body (see the module documentation).
    pub fn encode(&self) -> Result<Vec<u8>, ModelError> {
        use bincode::Options;
        let body = bincode_options().serialize(self).map_err(|e| ModelError::Encode(e.to_string()))?;
        if body.len() > MAX_BODY_LEN {
            return Err(ModelError::TooLarge(body.len()));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Reads an artifact written by [`Self::encode`], and checks it with [`Self::validate`].
    pub fn decode(bytes: &[u8]) -> Result<ModelArtifact, ModelError> {
        use bincode::Options;
        if bytes.len() < HEADER_LEN {
            return Err(ModelError::TooShort(bytes.len()));
        }
        if &bytes[..7] != MAGIC {
            return Err(ModelError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[7], bytes[8]]);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(ModelError::UnsupportedVersion { found: version });
        }
        let declared = u32::from_le_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]);
        let crc = u32::from_le_bytes([bytes[13], bytes[14], bytes[15], bytes[16]]);
        let body = &bytes[HEADER_LEN..];
        if body.len() as u64 != u64::from(declared) {
            return Err(ModelError::LengthMismatch { declared: declared.into(), actual: body.len() as u64 });
        }
        if body.len() > MAX_BODY_LEN {
            return Err(ModelError::TooLarge(body.len()));
        }
        if crc32fast::hash(body) != crc {
            return Err(ModelError::Checksum);
        }
        // Version 2 is version 3 without its last field, `signals`: append it, empty (a varint
        // length of 0), and read both alike.
        let upgraded;
        let body = if version == 2 {
            upgraded = [body, &[0u8]].concat();
            &upgraded[..]
        } else {
            body
        };
        let artifact: ModelArtifact =
            bincode_options().deserialize(body).map_err(|e| ModelError::Decode(e.to_string()))?;
        artifact.validate()?;
        Ok(artifact)
    }

    /// Checks that the artifact can be scored with: consistent dimensions, finite centroids,
    /// positive finite scales and spreads, a usable calibration. `decode` calls it, so a
    /// decoded artifact never makes scoring panic or produce NaN scores.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |what: String| Err(ModelError::Invalid(what));
        let f = self.features.len();
        if f == 0 {
            return bad("no features".into());
        }
        if self.standardisation.len() != f {
            return bad(format!("{} scales for {f} features", self.standardisation.len()));
        }
        if self.reference.len() != f {
            return bad(format!("{} reference sketches for {f} features", self.reference.len()));
        }
        for (name, s) in self.features.iter().zip(&self.standardisation) {
            if !(s.location.is_finite() && s.scale.is_finite() && s.scale > 0.0) {
                return bad(format!("feature {name}: bad standardisation {s:?}"));
            }
        }
        for (name, sketch) in self.features.iter().zip(&self.reference) {
            if let Err(what) = sketch.check() {
                return bad(format!("feature {name}: reference sketch {what}"));
            }
        }
        for signal in &self.signals {
            if let Err(what) = signal.sketch.check() {
                return bad(format!("sensor {}: reference sketch {what}", signal.sensor));
            }
        }
        let k = self.centroids.len();
        if k == 0 {
            return bad("no clusters".into());
        }
        if self.spreads.len() != k || self.cluster_sizes.len() != k {
            return bad(format!(
                "{k} centroids, {} spreads, {} sizes",
                self.spreads.len(),
                self.cluster_sizes.len()
            ));
        }
        for (j, c) in self.centroids.iter().enumerate() {
            if c.len() != f {
                return bad(format!("centroid {j} has {} coordinates for {f} features", c.len()));
            }
            if !c.iter().all(|v| v.is_finite()) {
                return bad(format!("centroid {j} is not finite"));
            }
        }
        for (j, s) in self.spreads.iter().enumerate() {
            if s.len() != f || !s.iter().all(|s| s.is_finite() && *s > 0.0) {
                return bad(format!("spread of cluster {j} must be {f} positive finite values"));
            }
        }
        let c = &self.calibration;
        if !(c.reference.is_finite() && c.reference > 0.0) {
            return bad(format!("calibration reference {} must be positive", c.reference));
        }
        if !(c.threshold > 0.0 && c.threshold < 1.0 && c.quantile > 0.0 && c.quantile <= 1.0) {
            return bad(format!("calibration {c:?} out of range"));
        }
        if self.bucket_ms == 0 {
            return bad("bucket_ms must be positive".into());
        }
        if let Err(e) = crate::features::FeaturePlan::from_names(&self.features) {
            return bad(e.to_string());
        }
        if self.min_present == 0 || self.min_present as usize > f {
            return bad(format!("min_present {} not in 1..={f}", self.min_present));
        }
        Ok(())
    }

    /// The same artifact, served from event time `ts` on.
    pub fn effective_from(mut self, ts: Option<u64>) -> ModelArtifact {
        self.effective_from = ts;
        self
    }

    /// The number of features a row must have.
    pub fn width(&self) -> usize {
        self.features.len()
    }

    /// The same artifact with its training window's event times set.
    pub fn with_window(mut self, first_ts: u64, last_ts: u64) -> ModelArtifact {
        self.training.first_ts = Some(first_ts);
        self.training.last_ts = Some(last_ts);
        self
    }
}

fn bincode_options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new().with_limit(MAX_BODY_LEN as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> ModelArtifact {
        ModelArtifact {
            name: "pump-kmeans".into(),
            class: "pump".into(),
            detector: KMEANS_DETECTOR.into(),
            features: vec!["vibration".into(), "temperature".into()],
            standardisation: vec![
                FeatureScale { location: 2.4, scale: 0.3 },
                FeatureScale { location: 61.0, scale: 1.5 },
            ],
            centroids: vec![vec![0.1, -0.2], vec![-1.5, 2.0]],
            spreads: vec![vec![0.9, 0.5], vec![1.1, 0.2]],
            cluster_sizes: vec![300, 100],
            calibration: Calibration { quantile: 0.99, reference: 2.5, threshold: 0.8 },
            min_present: 1,
            reference: vec![
                QuantileSketch::from_values(&[1.0, 2.0, 3.0, 4.0], 33),
                QuantileSketch::from_values(&[60.0, 61.0, 62.5], 33),
            ],
            training: TrainingWindow { first_ts: Some(1), last_ts: Some(400_000), rows: 400, rows_used: 399 },
            metrics: TrainingMetrics { inertia: 812.5, silhouette: Some(0.41), k_requested: 3, k: 2 },
            params: KMeansConfig::default(),
            bucket_ms: 1_000,
            effective_from: None,
            signals: vec![SignalReference {
                sensor: "vibration".into(),
                sketch: QuantileSketch::from_values(&[1.0, 2.0, 3.0], 33),
            }],
        }
    }

    #[test]
    fn encode_decode_round_trips_bit_for_bit() {
        let a = sample();
        let bytes = a.encode().unwrap();
        assert_eq!(&bytes[..7], b"MSMODEL");
        assert_eq!(u16::from_le_bytes([bytes[7], bytes[8]]), FORMAT_VERSION);
        let b = ModelArtifact::decode(&bytes).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.encode().unwrap(), bytes);
    }

    /// A version-2 artifact (no `signals`) still decodes, with no per-sensor references.
    #[test]
    fn format_2_artifacts_still_decode() {
        let v3 = ModelArtifact { signals: Vec::new(), ..sample() };
        let bytes = v3.encode().unwrap();
        // The version-2 encoding of the same model: the body without the empty `signals`.
        let body = &bytes[HEADER_LEN..bytes.len() - 1];
        let mut v2 = Vec::new();
        v2.extend_from_slice(MAGIC);
        v2.extend_from_slice(&2u16.to_le_bytes());
        v2.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v2.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        v2.extend_from_slice(body);
        assert_eq!(ModelArtifact::decode(&v2), Ok(v3));
    }

    #[test]
    fn unknown_versions_and_corruption_are_refused() {
        let bytes = sample().encode().unwrap();
        for other in [1u16, FORMAT_VERSION + 1] {
            assert!(!(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&other));
            let mut v = bytes.clone();
            v[7..9].copy_from_slice(&other.to_le_bytes());
            assert_eq!(ModelArtifact::decode(&v), Err(ModelError::UnsupportedVersion { found: other }));
        }
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(ModelArtifact::decode(&magic), Err(ModelError::BadMagic));
        assert_eq!(ModelArtifact::decode(&bytes[..10]), Err(ModelError::TooShort(10)));
        assert!(matches!(
            ModelArtifact::decode(&bytes[..bytes.len() - 1]),
            Err(ModelError::LengthMismatch { .. })
        ));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert_eq!(ModelArtifact::decode(&flipped), Err(ModelError::Checksum));
        let mut v1 = bytes.clone();
        v1[7..9].copy_from_slice(&1u16.to_le_bytes());
        let err = ModelArtifact::decode(&v1).unwrap_err().to_string();
        assert!(err.contains("version 1"), "{err}");
    }

    #[test]
    fn inconsistent_bodies_are_refused_even_with_a_good_checksum() {
        let mut a = sample();
        a.centroids[1].pop();
        assert!(matches!(ModelArtifact::decode(&a.encode().unwrap()), Err(ModelError::Invalid(_))));
        let mut a = sample();
        a.spreads[0][1] = 0.0;
        assert!(matches!(ModelArtifact::decode(&a.encode().unwrap()), Err(ModelError::Invalid(_))));
        let mut a = sample();
        a.calibration.reference = f64::NAN;
        assert!(matches!(ModelArtifact::decode(&a.encode().unwrap()), Err(ModelError::Invalid(_))));
    }

    /// Found by fuzzing: a one-point sketch holding NaN passed the monotonicity check, and
    /// `cdf` then computed index −1. Every malformed sketch is now refused at decode.
    #[test]
    fn malformed_reference_sketches_are_refused() {
        let one = |levels: Vec<f64>, values: Vec<f64>| QuantileSketch { count: 5, levels, values };
        let malformed = [
            one(vec![0.0], vec![f64::NAN]),
            one(vec![f64::NAN], vec![1.0]),
            one(vec![0.0, 2.0], vec![1.0, 2.0]),
            one(vec![0.0, 1.0], vec![1.0, f64::INFINITY]),
            one(vec![0.0, 1.0], vec![2.0, 1.0]),
            one(vec![0.0, 1.0], vec![1.0]),
        ];
        for sketch in malformed {
            assert!(sketch.check().is_err(), "{sketch:?}");
            let mut a = sample();
            a.reference[0] = sketch.clone();
            assert!(matches!(ModelArtifact::decode(&a.encode().unwrap()), Err(ModelError::Invalid(_))));
            let mut a = sample();
            a.signals[0].sketch = sketch;
            assert!(matches!(ModelArtifact::decode(&a.encode().unwrap()), Err(ModelError::Invalid(_))));
        }
        // An empty sketch (no finite training value) is valid: its quantiles are NaN by design.
        assert!(QuantileSketch::from_values(&[f64::NAN], 9).check().is_ok());
        assert!(one(vec![0.0], vec![3.0]).cdf(3.0) == 1.0);
    }

    #[test]
    fn calibration_maps_distances_to_scores() {
        let c = Calibration { quantile: 0.99, reference: 2.0, threshold: 0.8 };
        assert_eq!(c.score(0.0), 0.0);
        assert!((c.score(2.0) - 0.5).abs() < 1e-12);
        assert!((c.score(4.0) - 0.8).abs() < 1e-12);
        assert_eq!(c.score(f64::INFINITY), 1.0);
        assert_eq!(c.score(f64::NAN), 0.0);
        assert!((c.distance_for(0.8) - 4.0).abs() < 1e-12);
    }

    #[test]
    fn quantile_sketch_interpolates() {
        let values: Vec<f64> = (0..=100).map(f64::from).collect();
        let s = QuantileSketch::from_values(&values, 33);
        assert_eq!(s.count, 101);
        assert_eq!((s.quantile(0.0), s.quantile(1.0)), (0.0, 100.0));
        assert!((s.quantile(0.5) - 50.0).abs() < 1e-9);
        assert!((s.quantile(0.3) - 30.0).abs() < 1e-9);
        assert!((s.cdf(25.0) - 0.25).abs() < 1e-9);
        assert_eq!((s.cdf(-1.0), s.cdf(101.0)), (0.0, 1.0));
        let empty = QuantileSketch::from_values(&[f64::NAN], 33);
        assert_eq!(empty.count, 0);
        assert!(empty.quantile(0.5).is_nan() && empty.cdf(1.0).is_nan());
        let constant = QuantileSketch::from_values(&[3.0; 10], 5);
        assert_eq!((constant.quantile(0.4), constant.cdf(3.0), constant.cdf(2.9)), (3.0, 1.0, 0.0));
    }

    fn artifacts() -> impl Strategy<Value = ModelArtifact> {
        let finite = -1e6..1e6f64;
        (1usize..6, 1usize..5, prop::collection::vec(finite, 64), "[a-z]{0,12}").prop_map(
            |(f, k, pool, name)| {
                let mut it = pool.iter().copied().cycle();
                let mut a = sample();
                a.name = name;
                a.features = (0..f).map(|i| format!("s{i}")).collect();
                a.standardisation = (0..f)
                    .map(|_| FeatureScale {
                        location: it.next().unwrap(),
                        scale: it.next().unwrap().abs() + 1e-3,
                    })
                    .collect();
                a.centroids = (0..k).map(|_| (0..f).map(|_| it.next().unwrap()).collect()).collect();
                a.spreads =
                    (0..k).map(|_| (0..f).map(|_| it.next().unwrap().abs() + 1e-3).collect()).collect();
                a.cluster_sizes = (0..k as u64).collect();
                a.reference =
                    (0..f).map(|_| QuantileSketch::from_values(&pool[..(f * 7).min(64)], 17)).collect();
                a.min_present = f as u32;
                a
            },
        )
    }

    proptest! {
        #[test]
        fn any_valid_artifact_round_trips(a in artifacts()) {
            let bytes = a.encode().unwrap();
            let b = ModelArtifact::decode(&bytes).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(b.encode().unwrap(), bytes);
        }

        /// Random bytes, with or without a valid header in front, never panic.
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), valid_header in any::<bool>()) {
            let input = if valid_header {
                let mut v = MAGIC.to_vec();
                v.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
                v.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                v.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
                v.extend_from_slice(&bytes);
                v
            } else {
                bytes
            };
            let _ = ModelArtifact::decode(&input);
        }

        /// Flipping any one byte of a valid artifact is detected.
        #[test]
        fn any_single_byte_corruption_is_refused(a in artifacts(), at in any::<prop::sample::Index>(), xor in 1u8..=255) {
            let mut bytes = a.encode().unwrap();
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
            prop_assert!(ModelArtifact::decode(&bytes).is_err());
        }
    }
}
