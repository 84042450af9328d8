//! Anomaly episodes: hysteresis over a detector's per-reading (or per-bucket) scores, so that a
//! fault is one episode (opened, escalated, closed), not a storm of events.
//!
//! An episode **opens** on the first reading a detector calls anomalous (`hot`). It stays open
//! while readings keep the score at or above the close threshold (`warm`), and **closes** once
//! the score has stayed below it for `close_after_ms` of event time (0: at the first reading
//! below). In between, it **escalates** when its severity rises. Everything is keyed on event
//! time, so episodes are a deterministic function of the input.

use millstream_events::{EventTime, Severity};
use serde::{Deserialize, Serialize};

/// Hysteresis settings of one detector's episodes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EpisodeConfig {
    /// An open episode stays open while the score is at least this (in `[0, 1]`).
    pub close_score: f64,
    /// ... and closes once the score has been below `close_score` this long, in ms of event time.
    pub close_after_ms: u64,
}

impl Default for EpisodeConfig {
    fn default() -> Self {
        EpisodeConfig { close_score: 0.5, close_after_ms: 60_000 }
    }
}

/// What one observation did to the episode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    Opened,
    /// The severity rose to the new value.
    Escalated,
    /// Closed; the episode's last anomalous (warm) reading was at `ended_at`.
    Closed {
        ended_at: EventTime,
    },
}

impl Transition {
    pub fn state(&self) -> &'static str {
        match self {
            Transition::Opened => "opened",
            Transition::Escalated => "escalated",
            Transition::Closed { .. } => "closed",
        }
    }
}

/// An episode in progress.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OpenEpisode {
    pub started_at: EventTime,
    pub severity: Severity,
    pub peak_score: f64,
    /// The last reading at or above the close score.
    pub last_warm: EventTime,
    /// The first reading of the current run below the close score.
    below_since: Option<EventTime>,
}

/// One detector's episode state for one sensor or asset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpisodeTracker {
    open: Option<OpenEpisode>,
}

impl EpisodeTracker {
    /// Feeds one observation, in event-time order. `hot` is the detector's verdict (anomalous,
    /// with this severity); `score` decides whether an open episode stays warm.
    pub fn observe(
        &mut self,
        ts: EventTime,
        score: f64,
        hot: Option<Severity>,
        config: &EpisodeConfig,
    ) -> Option<Transition> {
        match &mut self.open {
            None => {
                let severity = hot?;
                self.open = Some(OpenEpisode {
                    started_at: ts,
                    severity,
                    peak_score: score,
                    last_warm: ts,
                    below_since: None,
                });
                Some(Transition::Opened)
            }
            Some(open) => {
                if hot.is_some() || score >= config.close_score {
                    open.last_warm = ts;
                    open.below_since = None;
                    open.peak_score = open.peak_score.max(score);
                    if let Some(severity) = hot.filter(|s| *s > open.severity) {
                        open.severity = severity;
                        return Some(Transition::Escalated);
                    }
                    return None;
                }
                let since = *open.below_since.get_or_insert(ts);
                if ts.saturating_sub(since) >= config.close_after_ms {
                    let ended_at = open.last_warm;
                    self.open = None;
                    return Some(Transition::Closed { ended_at });
                }
                None
            }
        }
    }

    /// The episode in progress, if any (read it before `observe` to see what closed).
    pub fn current(&self) -> Option<&OpenEpisode> {
        self.open.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CONFIG: EpisodeConfig = EpisodeConfig { close_score: 0.5, close_after_ms: 10 };

    #[test]
    fn one_episode_per_burst_despite_flicker() {
        let mut t = EpisodeTracker::default();
        let hot = Some(Severity::Low);
        assert_eq!(t.observe(0, 0.1, None, &CONFIG), None);
        assert_eq!(t.observe(1, 0.9, hot, &CONFIG), Some(Transition::Opened));
        assert_eq!(t.observe(2, 0.4, None, &CONFIG), None, "below, but not for long");
        assert_eq!(t.observe(3, 0.95, Some(Severity::High), &CONFIG), Some(Transition::Escalated));
        assert_eq!(t.observe(4, 0.9, Some(Severity::Medium), &CONFIG), None, "no de-escalation");
        assert_eq!(t.observe(5, 0.6, None, &CONFIG), None, "warm");
        assert_eq!(t.observe(8, 0.2, None, &CONFIG), None);
        assert_eq!(t.current().unwrap().peak_score, 0.95);
        assert_eq!(t.observe(18, 0.2, None, &CONFIG), Some(Transition::Closed { ended_at: 5 }));
        assert_eq!(t.current(), None);
    }

    #[test]
    fn without_delay_the_first_cold_reading_closes() {
        let c = EpisodeConfig { close_score: 0.8, close_after_ms: 0 };
        let mut t = EpisodeTracker::default();
        assert_eq!(t.observe(1, 0.85, Some(Severity::Low), &c), Some(Transition::Opened));
        assert_eq!(t.observe(2, 0.79, None, &c), Some(Transition::Closed { ended_at: 1 }));
    }

    proptest! {
        /// Transitions alternate: opened, any escalations, closed, opened, …
        #[test]
        fn transitions_are_well_formed(obs in proptest::collection::vec((0.0f64..1.0, 0u8..4), 0..200)) {
            let mut t = EpisodeTracker::default();
            let mut open = false;
            for (i, (score, hot)) in obs.into_iter().enumerate() {
                let hot = [None, Some(Severity::Low), Some(Severity::Medium), Some(Severity::High)][hot as usize];
                match t.observe(i as u64, score, hot, &CONFIG) {
                    Some(Transition::Opened) => { prop_assert!(!open); open = true; }
                    Some(Transition::Escalated) => prop_assert!(open),
                    Some(Transition::Closed { ended_at }) => {
                        prop_assert!(open);
                        prop_assert!(ended_at < i as u64);
                        open = false;
                    }
                    None => {}
                }
                prop_assert_eq!(open, t.current().is_some());
            }
        }
    }
}
