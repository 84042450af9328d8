//! Run counters, shared by every worker of a process. Every counter of the run is defined
//! here; the demo report and the run summary read them, and the metrics endpoint will.

use std::sync::atomic::{AtomicU64, Ordering};

use millstream_events::Reason;

#[derive(Debug, Default)]
pub struct RunStats {
    /// Accepted readings that reached the per-sensor stage (scored, late or refused there).
    pub readings: AtomicU64,
    /// Readings scored by the detector.
    pub scored: AtomicU64,
    /// Late readings kept with the `late` flag.
    pub late_kept: AtomicU64,
    /// Anomaly events emitted.
    pub anomalies: AtomicU64,
    dead_letters: [AtomicU64; Reason::ALL.len()],
}

impl RunStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn dead_letter(&self, reason: Reason) {
        self.dead_letters[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Dead letters by reason, omitting zeros, in the order of [`Reason::ALL`].
    pub fn dead_letters_by_reason(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .map(|&r| (r, self.dead_letters[r as usize].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}
