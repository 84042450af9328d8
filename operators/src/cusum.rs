//! `cusum`: a per-sensor sequential change detector for sustained shifts (Page's two-sided
//! CUSUM) on the robust detector's standardised residuals.
//!
//! `robust_z` flags readings far from the forecast; its baseline then adapts, so a shift of a
//! few σ that lasts minutes is seen for a handful of readings at best (a 5.5 σ shift not at
//! all, its threshold being |z| ≈ 5.5). The CUSUM adds up the evidence instead:
//!
//! ```text
//! S⁺ ← max(0, S⁺ + min(z, clip) − drift)      S⁻ ← max(0, S⁻ − max(z, −clip) − drift)
//! ```
//!
//! and alarms while `max(S⁺, S⁻) ≥ threshold`. With the defaults (drift 1 σ, threshold 15,
//! clip 6), noise alone drifts the sums down by about 1 a reading; one spike, however large,
//! adds at most 5, so isolated outliers (robust_z's business) never alarm; a 4 σ shift alarms
//! within about 5 readings and stays alarmed while the baseline adapts. Load cycles and
//! seasonality are followed by robust_z's baseline, so they do not accumulate.
//!
//! The score is `S / (S + threshold)`: 0.5 at the threshold, so an episode with the default
//! close score (0.5) stays open exactly while the CUSUM is alarmed.

use millstream_events::Severity;
use serde::{Deserialize, Serialize};

/// The detector's name in anomaly events.
pub const CUSUM_DETECTOR: &str = "cusum";

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CusumConfig {
    /// Run the detector.
    pub enabled: bool,
    /// Allowance per reading, in σ: shifts smaller than this are not accumulated.
    pub drift: f64,
    /// Alarm when a sum reaches this, in σ·readings.
    pub threshold: f64,
    /// Residuals are clipped to ±this before they are added (spikes are robust_z's business).
    pub clip: f64,
    /// An episode with a sustained shift stays open until the signal shifts back, or this long
    /// (ms of event time) at most: a shift and its return are one episode.
    pub hold_ms: u64,
}

impl Default for CusumConfig {
    fn default() -> Self {
        CusumConfig { enabled: true, drift: 1.0, threshold: 15.0, clip: 6.0, hold_ms: 300_000 }
    }
}

/// One sensor's sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Cusum {
    up: f64,
    down: f64,
}

/// What one residual did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CusumVerdict {
    /// `S / (S + threshold)`, in `[0, 1)`.
    pub score: f64,
    /// `Some` while alarmed.
    pub severity: Option<Severity>,
    /// +1 for an upward shift, −1 downward.
    pub direction: f64,
    /// The larger sum.
    pub sum: f64,
}

impl Cusum {
    /// Adds one standardised residual (`z` of the robust detector, before it learnt from the
    /// reading). A non-finite `z` leaves the sums unchanged.
    pub fn observe(&mut self, z: f64, config: &CusumConfig) -> CusumVerdict {
        if z.is_finite() {
            let z = z.clamp(-config.clip, config.clip);
            self.up = (self.up + z - config.drift).max(0.0);
            self.down = (self.down - z - config.drift).max(0.0);
        }
        let (sum, direction) = if self.up >= self.down { (self.up, 1.0) } else { (self.down, -1.0) };
        let threshold = config.threshold.max(f64::MIN_POSITIVE);
        let score = sum / (sum + threshold);
        let severity = (sum >= threshold).then(|| match sum / threshold {
            r if r >= 4.0 => Severity::High,
            r if r >= 2.0 => Severity::Medium,
            _ => Severity::Low,
        });
        CusumVerdict { score, severity, direction, sum }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic pseudo-normal noise (sum of uniforms), σ ≈ 1.
    fn noise(i: u64) -> f64 {
        (0..12)
            .map(|k| ((i * 12 + k).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64)
            .sum::<f64>()
            - 6.0
    }

    #[test]
    fn noise_and_lone_spikes_never_alarm() {
        let c = CusumConfig::default();
        let mut s = Cusum::default();
        for i in 0..100_000u64 {
            let z = if i % 500 == 0 { 50.0 } else { noise(i) };
            assert_eq!(s.observe(z, &c).severity, None, "reading {i}");
        }
    }

    #[test]
    fn a_sustained_shift_alarms_quickly_and_in_its_direction() {
        let c = CusumConfig::default();
        let mut s = Cusum::default();
        for i in 0..1000 {
            s.observe(noise(i), &c);
        }
        let first = (0..50).find(|i| s.observe(-4.0 + noise(2000 + i), &c).severity.is_some());
        assert!(first.is_some_and(|i| i < 8), "{first:?}");
        let v = s.observe(-4.0, &c);
        assert_eq!(v.direction, -1.0);
        assert!(v.score > 0.5);
    }

    proptest! {
        #[test]
        fn scores_stay_in_the_unit_interval(zs in proptest::collection::vec(proptest::num::f64::ANY, 0..300)) {
            let c = CusumConfig::default();
            let mut s = Cusum::default();
            for z in zs {
                let v = s.observe(z, &c);
                prop_assert!((0.0..1.0).contains(&v.score), "{v:?}");
                prop_assert_eq!(v.severity.is_some(), v.sum >= c.threshold);
            }
        }
    }
}
