//! The per-sensor robust z-score detector, `robust_z`.
//!
//! One [`RobustZ`] holds the state of one sensor: a count, a robust location (the
//! *baseline*) and a robust scale (an estimate of σ). Each reading costs O(1) time and the
//! state is three numbers, so it can be kept per key and checkpointed as is.
//!
//! # How a reading is scored
//!
//! With `s` the scale (never below a floor, see below) and `m` the baseline,
//! `z = (value − m) / s` and
//!
//! ```text
//! score = z² / (z² + K²),   K = SCORE_HALF_Z = 4.5
//! ```
//!
//! a smooth, monotone map of |z| into `[0, 1)` that is 0.5 at |z| = 4.5. With the default
//! cut-offs a reading is an anomaly from |z| ≈ 5.5 (score 0.6, [`Severity::Low`]), medium
//! from |z| = 9 (0.8) and high from |z| = 13.5 (0.9); [`z_for_score`] inverts the map. The
//! first `warmup` readings of a sensor score 0.
//!
//! The baseline is Holt's linear method (level plus trend, the trend weighted by `trend`),
//! so a slow ramp or a load cycle is followed rather than lagged; `z` is measured against the
//! forecast `baseline + slope`, and the slope is bounded by one scale a reading. An exact
//! repeat of the previous value does not update the scale, so a stuck sensor does not teach
//! the detector that the signal has no noise.
//!
//! # How the state is updated
//!
//! The deviation from the baseline is clipped to ±`clip`·s (a Huber ψ), then
//!
//! ```text
//! m ← m + a · clipped
//! s ← (1 − b) · s + b · 1.2533 · |clipped|      (1.2533 = √(π/2): mean |dev| → σ for a normal)
//! ```
//!
//! `a` and `b` are `alpha`, except for a sensor's first readings, where they are 1/(n+1) and
//! 1/n (plain running averages, so the start-up value does not linger). Consequences:
//!
//! - A single spike, however large, moves the baseline by at most `alpha·clip` σ (0.15 σ) and
//!   raises the scale by at most a factor `1 + alpha·(1.2533·clip − 1)` (×1.14), which then
//!   decays.
//! - After a level shift of D σ the clipped steps, and the scale, grow geometrically (×1.14
//!   a sample) until the baseline is within `clip` scales of the new level; the rest is an
//!   ordinary EWMA approach with time constant 1/`alpha`, while the inflated scale relaxes
//!   at the same rate. The adaptation time is thus about (1/`alpha`)·ln D, bounded for any
//!   D: measured with the defaults, a 10 σ shift is flagged for ~5 readings and the
//!   baseline is within 1 σ after ~50 (a plain EWMA needs 46), 100 σ: ~22 and ~110,
//!   1000 σ: ~40 and ~175.
//! - During warm-up the clip is twice as loose and off while the scale is still exactly 0
//!   (a sensor whose first readings are all equal), so that a scale estimated from too few
//!   readings cannot lock the state.
//!
//! The scale used for z and for clipping is never below
//! `rel_min_scale · |baseline| + min_scale`: constant signals, exact zero variance and
//! quantised sensors never divide by zero or produce NaN. One consequence is deliberate: a
//! sensor that has been perfectly constant for a long time and then moves by even one
//! quantisation step is flagged (its scale is the floor), until the scale has grown to match
//! the new noise (×1.14 a sample).
//!
//! Values are assumed finite (the validator guarantees it). A non-finite value is not
//! scored and leaves the state unchanged; nothing here panics for any input, and the
//! arithmetic saturates at ±`f64::MAX`, so magnitudes such as ±1e300 are safe.

use millstream_events::Severity;
use serde::{Deserialize, Serialize};

/// √(π/2): for a normal distribution, σ = √(π/2) · E|X − μ|.
const MAD_TO_SIGMA: f64 = 1.253_314_137_315_500_3;

/// The |z| at which the score is 0.5: `score = z² / (z² + SCORE_HALF_Z²)`.
pub const SCORE_HALF_Z: f64 = 4.5;

/// During warm-up, deviations are clipped at this multiple of `clip`.
const WARMUP_CLIP_FACTOR: f64 = 2.0;

/// Tuning of [`RobustZ`]. Every field has a default, so a configuration file may name only
/// the fields it changes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RobustZConfig {
    /// EWMA weight of a new reading, in `(0, 1]`; 1/`alpha` is the memory in readings.
    pub alpha: f64,
    /// Weight of the trend (Holt's β), in `[0, 1]`: the baseline follows slow ramps and load
    /// cycles instead of lagging them. 0 turns the trend off (a plain robust EWMA).
    pub trend: f64,
    /// Deviations are clipped at ±`clip` scale units before they update the state.
    pub clip: f64,
    /// Readings of a sensor before it is scored; they score 0.
    pub warmup: u32,
    /// Score at or above which a reading is an anomaly ([`Severity::Low`]).
    pub threshold: f64,
    /// Score at or above which an anomaly is [`Severity::Medium`].
    pub medium: f64,
    /// Score at or above which an anomaly is [`Severity::High`].
    pub high: f64,
    /// Absolute floor of the scale, in the sensor's unit.
    pub min_scale: f64,
    /// Floor of the scale relative to |baseline|.
    pub rel_min_scale: f64,
}

impl Default for RobustZConfig {
    fn default() -> Self {
        RobustZConfig {
            alpha: 0.05,
            trend: 0.2,
            clip: 3.0,
            warmup: 30,
            threshold: 0.6,
            medium: 0.8,
            high: 0.9,
            min_scale: 1e-9,
            rel_min_scale: 1e-6,
        }
    }
}

impl RobustZConfig {
    /// Checks the ranges; the detector never panics on a bad configuration, but its results
    /// are meaningless.
    pub fn validate(&self) -> Result<(), String> {
        let in_unit = |x: f64| x > 0.0 && x <= 1.0;
        if !in_unit(self.alpha) {
            return Err(format!("robust_z: alpha must be in (0, 1], got {}", self.alpha));
        }
        if !(0.0..=1.0).contains(&self.trend) {
            return Err(format!("robust_z: trend must be in [0, 1], got {}", self.trend));
        }
        if !(self.clip > 0.0 && self.clip.is_finite()) {
            return Err(format!("robust_z: clip must be positive, got {}", self.clip));
        }
        if !(in_unit(self.threshold)
            && self.threshold <= self.medium
            && self.medium <= self.high
            && self.high <= 1.0)
        {
            return Err(format!(
                "robust_z: need 0 < threshold <= medium <= high <= 1, got {} / {} / {}",
                self.threshold, self.medium, self.high
            ));
        }
        if !(self.min_scale > 0.0 && self.min_scale.is_finite()) {
            return Err(format!("robust_z: min_scale must be positive, got {}", self.min_scale));
        }
        if !(self.rel_min_scale >= 0.0 && self.rel_min_scale.is_finite()) {
            return Err(format!("robust_z: rel_min_scale must be non-negative, got {}", self.rel_min_scale));
        }
        Ok(())
    }

    /// The severity of a score: `None` below `threshold`.
    pub fn severity(&self, score: f64) -> Option<Severity> {
        if score >= self.threshold {
            Some(if score >= self.high {
                Severity::High
            } else if score >= self.medium {
                Severity::Medium
            } else {
                Severity::Low
            })
        } else {
            None
        }
    }
}

/// The score of one reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// In `[0, 1]`; 0 during warm-up.
    pub score: f64,
    /// `Some` exactly when `score >= threshold`.
    pub severity: Option<Severity>,
    /// `(value − baseline) / scale`; NaN only for a non-finite value.
    pub z: f64,
    /// The baseline the reading was compared with.
    pub baseline: f64,
    /// The scale (σ estimate, floor applied) the reading was compared with.
    pub scale: f64,
}

/// The state of one sensor. Small, `Clone` and serde-serialisable for checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RobustZ {
    /// Readings observed.
    count: u64,
    /// Robust location.
    baseline: f64,
    /// Robust σ estimate before the floor; 0 until two readings differ.
    scale: f64,
    /// Holt trend: expected change of the baseline per reading.
    #[serde(default)]
    slope: f64,
    /// The previous value: an exact repeat does not shrink the scale (a stuck sensor must
    /// not leave the detector believing the signal has no noise).
    #[serde(default)]
    last: f64,
}

impl RobustZ {
    /// The `detector` field of anomalies from this detector.
    pub const NAME: &'static str = "robust_z";

    pub fn new() -> Self {
        RobustZ::default()
    }

    /// Scores `value` against the state so far, then updates the state. Readings must come
    /// in event-time order.
    pub fn observe(&mut self, value: f64, config: &RobustZConfig) -> Verdict {
        let verdict = self.peek(value, config);
        self.update(value, config);
        verdict
    }

    /// Scores without updating (for late readings).
    pub fn peek(&self, value: f64, config: &RobustZConfig) -> Verdict {
        if !value.is_finite() {
            return Verdict {
                score: 0.0,
                severity: None,
                z: f64::NAN,
                baseline: self.baseline,
                scale: self.effective_scale(config),
            };
        }
        if self.count == 0 {
            let first = RobustZ { count: 0, baseline: value, scale: 0.0, slope: 0.0, last: value };
            return Verdict {
                score: 0.0,
                severity: None,
                z: 0.0,
                baseline: value,
                scale: first.effective_scale(config),
            };
        }
        let scale = self.effective_scale(config);
        let forecast = self.forecast();
        let z = saturate(saturate(value - forecast) / scale);
        let score = if self.warming_up(config) { 0.0 } else { score_from_z(z) };
        Verdict { score, severity: config.severity(score), z, baseline: forecast, scale }
    }

    /// Readings observed so far (non-finite ones excepted).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The robust location.
    pub fn baseline(&self) -> f64 {
        self.baseline
    }

    /// The previous value observed, if any.
    pub fn last_value(&self) -> Option<f64> {
        (self.count > 0).then_some(self.last)
    }

    /// Whether the sensor has shown noise above the scale floor: a sensor that never varied
    /// cannot be said to be stuck.
    pub fn has_noise(&self, config: &RobustZConfig) -> bool {
        self.scale > config.rel_min_scale * self.baseline.abs() + config.min_scale
    }

    /// Restarts the baseline at `value`, with no trend, keeping the scale: for a sensor coming
    /// back from a stuck run, whose flat line said nothing about the signal.
    pub fn restart_level(&mut self, value: f64) {
        if value.is_finite() && self.count > 0 {
            self.baseline = value;
            self.slope = 0.0;
        }
    }

    /// The trend: expected change of the baseline per reading.
    pub fn slope(&self) -> f64 {
        self.slope
    }

    /// The robust σ estimate with the floor applied: what z is measured in.
    pub fn scale(&self, config: &RobustZConfig) -> f64 {
        self.effective_scale(config)
    }

    /// The expected value of the next reading: baseline plus trend.
    fn forecast(&self) -> f64 {
        saturate(self.baseline + self.slope)
    }

    fn warming_up(&self, config: &RobustZConfig) -> bool {
        self.count < u64::from(config.warmup.max(1))
    }

    fn effective_scale(&self, config: &RobustZConfig) -> f64 {
        let floor = config.rel_min_scale * self.baseline.abs() + config.min_scale;
        // `floor` may be NaN under a bad configuration; `max` then ignores it.
        self.scale.max(floor).clamp(f64::MIN_POSITIVE, f64::MAX)
    }

    fn update(&mut self, value: f64, config: &RobustZConfig) {
        if !value.is_finite() {
            return;
        }
        let n = self.count;
        self.count = n.saturating_add(1);
        if n == 0 {
            self.baseline = value;
            self.scale = 0.0;
            self.slope = 0.0;
            self.last = value;
            return;
        }
        let repeat = value == self.last;
        self.last = value;
        let s = self.effective_scale(config);
        let limit = if !self.warming_up(config) {
            config.clip * s
        } else if self.scale > 0.0 {
            WARMUP_CLIP_FACTOR * config.clip * s
        } else {
            f64::INFINITY
        };
        // `max`/`min` rather than `clamp`: no panic even for a NaN or negative `clip`.
        let forecast = self.forecast();
        let clipped = saturate(value - forecast).max(-limit).min(limit);
        let n = n as f64;
        let a = config.alpha.max(1.0 / (n + 1.0));
        let b = config.alpha.max(1.0 / n);
        // Holt's linear method in error-correction form, on the clipped error.
        self.baseline = saturate(forecast + a * clipped);
        if !self.warming_up(config) {
            // A trend steeper than one scale a reading is a level change, not a trend: bound
            // it, so the forecast never runs away from the data.
            let bound = self.effective_scale(config);
            let slope = saturate(self.slope + a * config.trend.clamp(0.0, 1.0) * clipped);
            self.slope = slope.max(-bound).min(bound);
        }
        if !repeat {
            self.scale = saturate((1.0 - b) * self.scale + b * (MAD_TO_SIGMA * clipped.abs()));
        }
    }
}

/// Maps |z| to a score in `[0, 1]`: `z² / (z² + SCORE_HALF_Z²)`; 0 for z = 0 or NaN, 1 for
/// infinite z.
pub fn score_from_z(z: f64) -> f64 {
    let r = SCORE_HALF_Z / z.abs();
    let score = 1.0 / (1.0 + r * r);
    if score.is_nan() {
        0.0
    } else {
        score
    }
}

/// The |z| at which the score reaches `score` (inverse of [`score_from_z`] on `[0, 1)`).
pub fn z_for_score(score: f64) -> f64 {
    SCORE_HALF_Z * (score / (1.0 - score)).sqrt()
}

/// A one-line explanation, e.g. `value 12.30 is 9.1 robust σ above the baseline 2.41`.
pub fn explain(v: &Verdict, value: f64) -> String {
    if v.z.is_nan() || !value.is_finite() {
        return format!("value {value} is not finite and was not scored");
    }
    let direction = if v.z < 0.0 { "below" } else { "above" };
    // Enough decimals to show differences of a tenth of the scale, at least two.
    let decimals = if v.scale > 0.0 { ((-v.scale.log10()).ceil() + 1.0).clamp(2.0, 9.0) as usize } else { 2 };
    format!(
        "value {} is {:.1} robust σ {direction} the baseline {}",
        number(value, decimals),
        v.z.abs(),
        number(v.baseline, decimals)
    )
}

fn number(x: f64, decimals: usize) -> String {
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e12).contains(&a) {
        format!("{x:.3e}")
    } else {
        format!("{x:.decimals$}")
    }
}

fn saturate(x: f64) -> f64 {
    x.clamp(-f64::MAX, f64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// xorshift64 with Box–Muller: seeded Gaussian noise without a `rand` dependency.
    struct Noise(u64);

    impl Noise {
        fn new(seed: u64) -> Self {
            Noise(seed.max(1))
        }
        fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        /// Uniform in (0, 1).
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn gaussian(&mut self) -> f64 {
            let (u1, u2) = (self.uniform(), self.uniform());
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        }
    }

    fn feed(d: &mut RobustZ, values: impl IntoIterator<Item = f64>, c: &RobustZConfig) -> Vec<Verdict> {
        values.into_iter().map(|v| d.observe(v, c)).collect()
    }

    #[test]
    fn score_map_and_default_cut_offs() {
        let c = RobustZConfig::default();
        c.validate().unwrap();
        assert_eq!(score_from_z(0.0), 0.0);
        assert_eq!(score_from_z(f64::NAN), 0.0);
        assert_eq!(score_from_z(f64::INFINITY), 1.0);
        assert_eq!(score_from_z(-f64::MAX), 1.0);
        assert!((score_from_z(4.5) - 0.5).abs() < 1e-12);
        assert!((score_from_z(-4.5) - 0.5).abs() < 1e-12);
        // The documented |z| of each cut-off.
        assert!((z_for_score(c.threshold) - 5.511).abs() < 1e-3);
        assert!((z_for_score(c.medium) - 9.0).abs() < 1e-9);
        assert!((z_for_score(c.high) - 13.5).abs() < 1e-9);
        for p in [0.1, 0.6, 0.8, 0.9, 0.99] {
            assert!((score_from_z(z_for_score(p)) - p).abs() < 1e-12);
        }
        let mut last = 0.0;
        for i in 0..1000 {
            let s = score_from_z(i as f64 * 0.05);
            assert!(s >= last && s < 1.0);
            last = s;
        }
        assert_eq!(c.severity(0.59), None);
        assert_eq!(c.severity(0.6), Some(Severity::Low));
        assert_eq!(c.severity(0.8), Some(Severity::Medium));
        assert_eq!(c.severity(0.95), Some(Severity::High));
        assert_eq!(c.severity(f64::NAN), None);
    }

    #[test]
    fn bad_configs_are_refused_and_partial_ones_default() {
        let bad = [
            RobustZConfig { alpha: 0.0, ..Default::default() },
            RobustZConfig { alpha: f64::NAN, ..Default::default() },
            RobustZConfig { clip: -1.0, ..Default::default() },
            RobustZConfig { threshold: 0.9, medium: 0.8, ..Default::default() },
            RobustZConfig { high: 1.5, ..Default::default() },
            RobustZConfig { min_scale: 0.0, ..Default::default() },
            RobustZConfig { rel_min_scale: -1.0, ..Default::default() },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
            // Meaningless but harmless.
            let mut d = RobustZ::new();
            for v in [1.0, 2.0, 0.0, 5.0, 1e300, -1e300, 3.0] {
                let _ = d.observe(v, &c);
            }
        }
        let c: RobustZConfig = serde_json::from_str(r#"{"threshold": 0.7, "warmup": 10}"#).unwrap();
        assert_eq!(c, RobustZConfig { threshold: 0.7, warmup: 10, ..Default::default() });
    }

    #[test]
    fn warm_up_scores_zero() {
        let c = RobustZConfig::default();
        let mut d = RobustZ::new();
        let mut noise = Noise::new(7);
        let verdicts = feed(&mut d, (0..100).map(|i| if i == 10 { 1e6 } else { noise.gaussian() }), &c);
        for v in &verdicts[..c.warmup as usize] {
            assert_eq!((v.score, v.severity), (0.0, None));
        }
        assert!(verdicts[c.warmup as usize..].iter().any(|v| v.score > 0.0));
        assert_eq!(d.count(), 100);
        // warmup 0 still leaves the first reading unscored: there is nothing to compare with.
        let c0 = RobustZConfig { warmup: 0, ..Default::default() };
        let mut d = RobustZ::new();
        assert_eq!(d.observe(5.0, &c0).score, 0.0);
        assert!(d.observe(500.0, &c0).severity.is_some());
    }

    #[test]
    fn an_8_sigma_spike_after_warm_up_is_flagged() {
        let c = RobustZConfig::default();
        for seed in 1..=20 {
            let mut noise = Noise::new(seed);
            let mut d = RobustZ::new();
            feed(&mut d, (0..300).map(|_| 10.0 + 0.5 * noise.gaussian()), &c);
            let v = d.observe(10.0 + 8.0 * 0.5, &c);
            assert!(v.score >= c.threshold && v.severity.is_some(), "seed {seed}: {v:?}");
            // The baseline reported is the forecast (baseline + trend): noisier than a plain
            // EWMA by the trend's wander.
            assert!((v.baseline - 10.0).abs() < 0.4, "{v:?}");
            assert!((v.scale / 0.5 - 1.0).abs() < 0.4, "{v:?}");
            let v = d.observe(10.0 - 8.0 * 0.5, &c);
            assert!(v.severity.is_some() && v.z < 0.0, "seed {seed}: {v:?}");
        }
    }

    #[test]
    fn false_positive_rate_on_gaussian_noise_is_below_half_a_percent() {
        let c = RobustZConfig::default();
        let mut worst = 0.0f64;
        for seed in [1, 2, 3, 42, 0x5eed] {
            let mut noise = Noise::new(seed);
            let mut d = RobustZ::new();
            let verdicts = feed(&mut d, (0..10_000).map(|_| 3.0 + 0.2 * noise.gaussian()), &c);
            let flagged = verdicts.iter().filter(|v| v.severity.is_some()).count();
            let rate = flagged as f64 / (10_000 - c.warmup) as f64;
            worst = worst.max(rate);
        }
        assert!(worst < 0.005, "false-positive rate {worst}");
    }

    #[test]
    fn a_single_huge_spike_barely_moves_the_state() {
        let c = RobustZConfig::default();
        let mut noise = Noise::new(11);
        let mut d = RobustZ::new();
        feed(&mut d, (0..500).map(|_| noise.gaussian()), &c);
        let (m0, s0, t0) = (d.baseline(), d.scale(&c), d.slope());
        let v = d.observe(1e12, &c);
        assert_eq!(v.severity, Some(Severity::High));
        // The baseline moves by its trend plus at most alpha·clip scales.
        assert!((d.baseline() - m0 - t0).abs() <= c.alpha * c.clip * s0 * 1.0001);
        assert!((d.slope() - t0).abs() <= c.alpha * c.trend * c.clip * s0 * 1.0001);
        assert!(d.scale(&c) / s0 < 1.0 + c.alpha * (MAD_TO_SIGMA * c.clip - 1.0) + 1e-9);
        // The next ordinary readings are ordinary again.
        let after = feed(&mut d, (0..200).map(|_| noise.gaussian()), &c);
        assert!(after.iter().all(|v| v.severity.is_none()));
    }

    /// Returns how many readings after a shift of `shift` σ were flagged, and after how
    /// many readings the baseline was within 1 σ of the new level.
    fn shift_response(shift: f64, seed: u64) -> (usize, usize) {
        let c = RobustZConfig::default();
        let mut noise = Noise::new(seed);
        let mut d = RobustZ::new();
        feed(&mut d, (0..500).map(|_| noise.gaussian()), &c);
        let mut flagged = 0;
        let mut caught_up = None;
        for i in 0..1000 {
            if d.observe(shift + noise.gaussian(), &c).severity.is_some() {
                flagged += 1;
            }
            if caught_up.is_none() && (d.baseline() - shift).abs() < 1.0 {
                caught_up = Some(i + 1);
            }
        }
        (flagged, caught_up.unwrap_or(usize::MAX))
    }

    #[test]
    fn the_baseline_adapts_to_a_level_shift_in_bounded_time() {
        // Measured: 10 σ → ~5 flagged, within 1 σ after ~50 readings (a plain EWMA with the
        // same alpha needs 46); 1000 σ → 40 flagged, ~175 readings.
        for seed in 1..=5 {
            let (flagged, caught_up) = shift_response(10.0, seed);
            assert!((1..=8).contains(&flagged), "10σ seed {seed}: {flagged} flagged");
            assert!(caught_up <= 60, "10σ seed {seed}: caught up after {caught_up}");
            let (flagged, caught_up) = shift_response(1000.0, seed);
            assert!(flagged <= 45, "1000σ seed {seed}: {flagged} flagged");
            assert!(caught_up <= 200, "1000σ seed {seed}: caught up after {caught_up}");
        }
        // A downward shift behaves the same.
        let (flagged, caught_up) = shift_response(-10.0, 3);
        assert!((1..=8).contains(&flagged) && caught_up <= 60);
    }

    #[test]
    fn constant_and_zero_signals_are_safe() {
        let c = RobustZConfig::default();
        for level in [0.0, 5.0, -1e300, 1e300, f64::MAX, f64::MIN_POSITIVE] {
            let mut d = RobustZ::new();
            let verdicts = feed(&mut d, std::iter::repeat_n(level, 1000), &c);
            for v in &verdicts {
                assert_eq!((v.score, v.severity, v.z), (0.0, None, 0.0), "{level}: {v:?}");
            }
            assert_eq!(d.baseline(), level);
            assert!(d.scale(&c) > 0.0 && d.scale(&c).is_finite());
        }
        // After a long constant run the scale is the floor, so any move is flagged.
        let mut d = RobustZ::new();
        feed(&mut d, std::iter::repeat_n(21.0, 500), &c);
        assert_eq!(d.scale(&c), 21.0 * c.rel_min_scale + c.min_scale);
        assert_eq!(d.observe(21.1, &c).severity, Some(Severity::High));
    }

    #[test]
    fn quantised_start_does_not_lock_the_scale() {
        // Equal first readings (scale exactly 0), then ordinary noise on a 0.01 grid.
        let c = RobustZConfig::default();
        let mut noise = Noise::new(5);
        let mut d = RobustZ::new();
        feed(&mut d, std::iter::repeat_n(2.43, 10), &c);
        let verdicts =
            feed(&mut d, (0..2000).map(|_| ((2.43 + 0.05 * noise.gaussian()) * 100.0).round() / 100.0), &c);
        let flagged = verdicts.iter().filter(|v| v.severity.is_some()).count();
        assert!(flagged <= 5, "{flagged} flagged");
        assert!((d.scale(&c) / 0.05 - 1.0).abs() < 0.4, "scale {}", d.scale(&c));
    }

    #[test]
    fn peek_is_observe_without_the_update() {
        let c = RobustZConfig::default();
        let mut noise = Noise::new(3);
        let mut d = RobustZ::new();
        for i in 0..200 {
            let v = if i % 37 == 0 { 50.0 } else { noise.gaussian() };
            let before = d.clone();
            let peeked = d.peek(v, &c);
            assert_eq!(d, before);
            assert_eq!(peeked, d.observe(v, &c));
        }
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let c = RobustZConfig::default();
        let mut d = RobustZ::new();
        feed(&mut d, (0..50).map(|i| i as f64 % 3.0), &c);
        let before = d.clone();
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let verdict = d.observe(v, &c);
            assert_eq!((verdict.score, verdict.severity), (0.0, None));
            assert!(verdict.z.is_nan());
            assert!(explain(&verdict, v).contains("not finite"));
        }
        assert_eq!(d, before);
        let mut fresh = RobustZ::new();
        fresh.observe(f64::NAN, &c);
        assert_eq!(fresh, RobustZ::new());
    }

    #[test]
    fn state_is_deterministic_and_round_trips_through_serde() {
        let c = RobustZConfig::default();
        let values: Vec<f64> = {
            let mut noise = Noise::new(99);
            (0..5000).map(|i| noise.gaussian() + if i % 500 == 0 { 20.0 } else { 0.0 }).collect()
        };
        let (mut a, mut b) = (RobustZ::new(), RobustZ::new());
        let va = feed(&mut a, values.iter().copied(), &c);
        let vb = feed(&mut b, values.iter().copied(), &c);
        assert_eq!(va, vb);
        assert_eq!(a, b);
        // A checkpoint restored half-way continues exactly.
        let mut first = RobustZ::new();
        feed(&mut first, values[..2500].iter().copied(), &c);
        let json = serde_json::to_string(&first).unwrap();
        let mut restored: RobustZ = serde_json::from_str(&json).unwrap();
        assert_eq!(restored, first);
        let rest = feed(&mut restored, values[2500..].iter().copied(), &c);
        assert_eq!(rest, va[2500..]);
        assert_eq!(restored, a);
    }

    #[test]
    fn explanations_read_well() {
        let v =
            Verdict { score: 0.8, severity: Some(Severity::Medium), z: 9.07, baseline: 2.41, scale: 1.09 };
        assert_eq!(explain(&v, 12.3), "value 12.30 is 9.1 robust σ above the baseline 2.41");
        let v = Verdict { z: -7.0, baseline: 2.4310, scale: 0.0012, ..v };
        assert_eq!(explain(&v, 2.4226), "value 2.4226 is 7.0 robust σ below the baseline 2.4310");
        let v = Verdict { z: 8.0, baseline: 1e300, scale: 1e290, ..v };
        assert_eq!(
            explain(&v, 1.00000008e300),
            "value 1.000e300 is 8.0 robust σ above the baseline 1.000e300"
        );
    }

    fn finite() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
            -1e300..1e300f64,
            prop_oneof![Just(1e300), Just(-1e300), Just(f64::MAX), Just(-f64::MAX), Just(0.0), Just(-0.0)],
            -10.0..10.0f64,
            (0i32..5).prop_map(f64::from),
        ]
    }

    fn sequences() -> impl Strategy<Value = Vec<f64>> {
        prop_oneof![
            prop::collection::vec(finite(), 0..200),
            (finite(), 1usize..200).prop_map(|(v, n)| vec![v; n]),
            (finite(), prop::collection::vec(finite(), 0..100)).prop_map(|(c, tail)| std::iter::repeat_n(
                c, 60
            )
            .chain(tail)
            .collect()),
        ]
    }

    proptest! {
        /// For any finite input: scores in [0, 1], severity consistent with the score, no
        /// NaN anywhere, a positive finite scale; peek matches observe and changes nothing;
        /// two detectors fed the same input are identical.
        #[test]
        fn verdicts_are_bounded_and_consistent(values in sequences(), warmup in 0u32..40) {
            let c = RobustZConfig { warmup, ..Default::default() };
            let mut d = RobustZ::new();
            let mut twin = RobustZ::new();
            for &x in &values {
                let before = d.clone();
                let peeked = d.peek(x, &c);
                prop_assert_eq!(&d, &before);
                let v = d.observe(x, &c);
                prop_assert_eq!(v, peeked);
                prop_assert_eq!(twin.observe(x, &c), v);
                prop_assert!(v.score.is_finite() && (0.0..=1.0).contains(&v.score), "{:?}", v);
                prop_assert_eq!(v.severity.is_some(), v.score >= c.threshold);
                prop_assert!(!v.z.is_nan() && v.z.is_finite(), "{:?}", v);
                prop_assert!(v.baseline.is_finite() && v.scale.is_finite() && v.scale > 0.0, "{:?}", v);
                prop_assert!(d.baseline().is_finite() && d.scale(&c).is_finite() && d.scale(&c) > 0.0);
                prop_assert!(!explain(&v, x).is_empty());
            }
            prop_assert_eq!(d.count(), values.len() as u64);
            prop_assert_eq!(&d, &twin);
        }

        /// The baseline stays within the range of the values seen.
        #[test]
        fn baseline_stays_within_the_observed_range(values in prop::collection::vec(finite(), 1..200)) {
            // Without a trend the baseline is a convex combination of the readings; a trend
            // may extrapolate (bounded by the scale), which this property does not cover.
            let c = RobustZConfig { trend: 0.0, ..Default::default() };
            let mut d = RobustZ::new();
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for &x in &values {
                d.observe(x, &c);
                lo = lo.min(x);
                hi = hi.max(x);
                let tolerance = 1e-9 * lo.abs().max(hi.abs());
                prop_assert!(d.baseline() >= lo - tolerance && d.baseline() <= hi + tolerance,
                    "{} not in [{}, {}]", d.baseline(), lo, hi);
            }
        }
    }
}
