//! Outlier-detection scoring the SKAB way: confusion counts over labelled rows, and F1, the
//! false-alarm rate (FAR) and the missed-alarm rate (MAR) from them, exactly as
//! `shared/eval/skab_score.py` computes them. Used by `millstream eval` and the offline study.

/// Confusion counts over test rows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    pub fn_: u64,
}

impl Counts {
    /// Adds the rows of one file, after its first `skip` (training) rows.
    pub fn add(&mut self, predicted: &[bool], labels: &[bool], skip: usize) {
        for (&p, &truth) in predicted.iter().zip(labels).skip(skip) {
            match (p, truth) {
                (true, true) => self.tp += 1,
                (true, false) => self.fp += 1,
                (false, false) => self.tn += 1,
                (false, true) => self.fn_ += 1,
            }
        }
    }

    /// F1, FAR in %, MAR in %.
    pub fn metrics(&self) -> (f64, f64, f64) {
        let (tp, fp, tn, fn_) = (self.tp as f64, self.fp as f64, self.tn as f64, self.fn_ as f64);
        (tp / (tp + (fp + fn_) / 2.0), 100.0 * fp / (fp + tn).max(1.0), 100.0 * fn_ / (fn_ + tp).max(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_skip_training_rows_and_give_skab_metrics() {
        let mut c = Counts::default();
        c.add(&[true, true, true, false, false, true], &[false, true, true, true, false, false], 1);
        assert_eq!(c, Counts { tp: 2, fp: 1, tn: 1, fn_: 1 });
        let (f1, far, mar) = c.metrics();
        assert!((f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!((far - 50.0).abs() < 1e-12);
        assert!((mar - 100.0 / 3.0).abs() < 1e-12);
    }
}
