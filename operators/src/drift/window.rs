//! How far a window of live values is from a reference distribution, computed from the
//! window's histogram over bins cut at the reference's quantiles.
//!
//! The bins are equiprobable under the reference (deciles by default), so a reading maps to a
//! small bin index and a window is just a count per bin: that is what the differential drift
//! windows maintain incrementally (a reading adds one to its bin at `t` and takes it back at
//! `t + W`). From the counts:
//! - **PSI** (population stability index), `Σ (q − p) ln(q / p)`, with both shares floored at
//!   [`PSI_FLOOR`] so an empty bin is finite; 0.1 is the usual "moderate", 0.25 "significant";
//! - **KS**, the largest gap between the two CDFs at the bin edges (the binned statistic, a lower
//!   bound of the exact one);
//! - **Wasserstein-1**, the area between the two CDFs with each bin's mass at its reference
//!   median, in the sensor's units, and relative to the reference's interdecile range so one
//!   threshold fits every sensor. Mass beyond the reference's extremes sits at the outer bins'
//!   centres, so a shift out of the reference's range is underestimated, never overestimated.

use serde::{Deserialize, Serialize};

use crate::model::QuantileSketch;

/// The smallest share a bin counts with in PSI (an empty bin would make it infinite).
pub const PSI_FLOOR: f64 = 1e-4;

/// A reference distribution cut into bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceBins {
    /// Interior edges, strictly increasing: bin `i` holds values in `[edges[i-1], edges[i])`,
    /// the first bin everything below `edges[0]`, the last everything at or above the last edge.
    edges: Vec<f64>,
    /// The reference's share of each bin (sums to 1).
    shares: Vec<f64>,
    /// Where each bin's mass sits (its reference median), for Wasserstein-1.
    centres: Vec<f64>,
    /// The reference's interdecile range (q90 − q10), floored: the scale for Wasserstein-1.
    spread: f64,
}

/// One window compared with its reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    /// Values in the window.
    pub count: u64,
    pub psi: f64,
    pub ks: f64,
    /// In the sensor's units.
    pub wasserstein: f64,
    /// `wasserstein` over the reference's interdecile range.
    pub wasserstein_relative: f64,
}

impl ReferenceBins {
    /// Bins at `bins` equiprobable levels of `sketch` (at least 2). Quantiles that coincide (a
    /// sensor with few distinct values) merge their bins, so edges stay strictly increasing.
    /// `None` for an empty sketch.
    pub fn from_sketch(sketch: &QuantileSketch, bins: usize) -> Option<ReferenceBins> {
        if sketch.count == 0 || sketch.values.is_empty() {
            return None;
        }
        let bins = bins.max(2);
        let mut edges: Vec<f64> = Vec::with_capacity(bins - 1);
        let mut shares: Vec<f64> = Vec::with_capacity(bins);
        let mut lower_level = 0.0;
        for i in 1..bins {
            let level = i as f64 / bins as f64;
            let edge = sketch.quantile(level);
            if edges.last().is_some_and(|&last| edge <= last) || !edge.is_finite() {
                continue;
            }
            // The reference share below this edge: the sketch's CDF, which accounts for ties.
            let below = sketch.cdf(edge - edge.abs().max(1.0) * f64::EPSILON).max(lower_level);
            shares.push(below - lower_level);
            lower_level = below;
            edges.push(edge);
        }
        shares.push(1.0 - lower_level);
        // A bin with no reference mass (possible with ties) would make every share argument
        // degenerate; floor them and renormalise.
        let total: f64 = shares.iter().map(|s| s.max(PSI_FLOOR)).sum();
        let shares: Vec<f64> = shares.iter().map(|s| s.max(PSI_FLOOR) / total).collect();
        let mut cumulative = 0.0;
        let centres = shares
            .iter()
            .map(|share| {
                let centre = sketch.quantile(cumulative + share / 2.0);
                cumulative += share;
                centre
            })
            .collect();
        let spread = (sketch.quantile(0.9) - sketch.quantile(0.1)).abs();
        let floor = 1e-9_f64.max(sketch.quantile(0.5).abs() * 1e-6);
        Some(ReferenceBins { edges, shares, centres, spread: spread.max(floor) })
    }

    /// The number of bins.
    pub fn len(&self) -> usize {
        self.shares.len()
    }

    /// Never: a reference has at least one bin.
    pub fn is_empty(&self) -> bool {
        self.shares.is_empty()
    }

    /// The bin of `value`; `None` for a non-finite value.
    pub fn bin_of(&self, value: f64) -> Option<u16> {
        value.is_finite().then(|| self.edges.partition_point(|&edge| edge <= value) as u16)
    }

    /// Compares a window's counts per bin (indexed like [`Self::bin_of`]; missing bins are 0)
    /// with the reference. `None` for an empty window.
    pub fn compare(&self, counts: &[u64]) -> Option<WindowStats> {
        let count: u64 = counts.iter().take(self.len()).sum();
        if count == 0 {
            return None;
        }
        let n = count as f64;
        let share = |i: usize| counts.get(i).copied().unwrap_or(0) as f64 / n;
        let (mut psi, mut ks, mut wasserstein) = (0.0, 0.0_f64, 0.0);
        let (mut cdf_window, mut cdf_reference) = (0.0, 0.0);
        for i in 0..self.len() {
            let (q, p) = (share(i), self.shares[i]);
            let (qf, pf) = (q.max(PSI_FLOOR), p.max(PSI_FLOOR));
            psi += (qf - pf) * (qf / pf).ln();
            cdf_window += q;
            cdf_reference += p;
            let gap = (cdf_window - cdf_reference).abs();
            if i + 1 < self.len() {
                ks = ks.max(gap);
                wasserstein += gap * (self.centres[i + 1] - self.centres[i]);
            }
        }
        Some(WindowStats { count, psi, ks, wasserstein, wasserstein_relative: wasserstein / self.spread })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn uniform_sketch(lo: f64, hi: f64) -> QuantileSketch {
        let values: Vec<f64> = (0..=10_000).map(|i| lo + (hi - lo) * i as f64 / 10_000.0).collect();
        QuantileSketch::from_values(&values, 101)
    }

    fn histogram(bins: &ReferenceBins, values: impl IntoIterator<Item = f64>) -> Vec<u64> {
        let mut counts = vec![0; bins.len()];
        for v in values {
            counts[bins.bin_of(v).unwrap() as usize] += 1;
        }
        counts
    }

    #[test]
    fn deciles_of_a_uniform_reference() {
        let bins = ReferenceBins::from_sketch(&uniform_sketch(0.0, 100.0), 10).unwrap();
        assert_eq!(bins.len(), 10);
        assert_eq!(
            (bins.bin_of(-5.0), bins.bin_of(5.0), bins.bin_of(95.0), bins.bin_of(500.0)),
            (Some(0), Some(0), Some(9), Some(9))
        );
        assert_eq!(bins.bin_of(f64::NAN), None);
        for share in &bins.shares {
            assert!((share - 0.1).abs() < 1e-3, "{share}");
        }
    }

    #[test]
    fn the_reference_itself_does_not_drift() {
        let bins = ReferenceBins::from_sketch(&uniform_sketch(0.0, 100.0), 10).unwrap();
        let stats = bins.compare(&histogram(&bins, (0..1000).map(|i| i as f64 / 10.0 + 0.05))).unwrap();
        assert_eq!(stats.count, 1000);
        assert!(stats.psi < 0.01 && stats.ks < 0.02 && stats.wasserstein_relative < 0.02, "{stats:?}");
    }

    #[test]
    fn a_shift_shows_in_every_statistic() {
        let bins = ReferenceBins::from_sketch(&uniform_sketch(0.0, 100.0), 10).unwrap();
        // Shifted by a fifth of the range: KS ≈ 0.2, PSI large (two bins emptied). The exact
        // Wasserstein-1 is 20 units; the binned one sees the mass beyond the reference's
        // maximum at the last bin's centre, so it is lower (17), never higher.
        let stats =
            bins.compare(&histogram(&bins, (0..1000).map(|i| 20.0 + i as f64 / 10.0 + 0.05))).unwrap();
        assert!((stats.ks - 0.2).abs() < 0.02, "{stats:?}");
        assert!((15.0..=20.0).contains(&stats.wasserstein), "{stats:?}");
        assert!((stats.wasserstein_relative - stats.wasserstein / 80.0).abs() < 0.01, "{stats:?}");
        assert!(stats.psi > 1.0, "{stats:?}");
    }

    #[test]
    fn ties_merge_bins_and_empty_windows_compare_to_nothing() {
        let sketch = QuantileSketch::from_values(&[1.0, 1.0, 1.0, 1.0, 2.0], 11);
        let bins = ReferenceBins::from_sketch(&sketch, 10).unwrap();
        assert!(bins.len() < 10);
        assert!(bins.edges.windows(2).all(|w| w[0] < w[1]));
        assert!((bins.shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(bins.compare(&vec![0; bins.len()]), None);
        let empty = QuantileSketch::from_values(&[], 11);
        assert_eq!(ReferenceBins::from_sketch(&empty, 10), None);
    }

    proptest! {
        #[test]
        fn statistics_are_finite_and_bounded(
            reference in prop::collection::vec(-1e6f64..1e6, 1..200),
            window in prop::collection::vec(prop_oneof![-1e7f64..1e7, Just(f64::NAN), Just(f64::INFINITY)], 0..200),
            bins in 2usize..20,
        ) {
            let bins = ReferenceBins::from_sketch(&QuantileSketch::from_values(&reference, 21), bins).unwrap();
            let mut counts = vec![0u64; bins.len()];
            for v in window {
                if let Some(b) = bins.bin_of(v) {
                    prop_assert!((b as usize) < bins.len());
                    counts[b as usize] += 1;
                }
            }
            if let Some(s) = bins.compare(&counts) {
                prop_assert!(s.psi.is_finite() && s.psi >= -1e-12);
                prop_assert!((0.0..=1.0 + 1e-9).contains(&s.ks));
                prop_assert!(s.wasserstein.is_finite() && s.wasserstein >= 0.0);
                prop_assert!(s.wasserstein_relative.is_finite());
            }
        }
    }
}
