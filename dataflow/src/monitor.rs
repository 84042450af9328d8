//! One sensor's whole per-reading path, in event-time order: validation against the sensor
//! registry, duplicates and the late policy, the robust detector, and the episodes it and the
//! health rules (stuck, silence) open and close.
//!
//! The dataflow's sensor stage and the benchmark's hand-written loop both run this, so they do
//! identical work.

use std::sync::Arc;

use millstream_events::event_id::event_id;
use millstream_events::{Anomaly, Episode, EpisodeState, EventTime, Reading, Reason, Severity};
use millstream_operators::cusum::{Cusum, CUSUM_DETECTOR};
use millstream_operators::detector::{explain, RobustZ};
use millstream_operators::episode::{EpisodeTracker, Transition};
use millstream_operators::sensor::{Outcome, SensorState, STUCK_DETECTOR};
use millstream_operators::validate::{self, Check, QualityFlags, SensorRules, ValidationState};

use crate::config::PipelineConfig;

/// The `detector` of silence health episodes.
pub const SILENCE_DETECTOR: &str = "silence";
/// Score of a stuck or silent sensor's episode: certain, not as urgent as an extreme outlier.
const HEALTH_SCORE: f64 = 0.8;

/// What became of one reading.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Scored by the detector.
    Scored { score: f64 },
    /// Kept with quality flags; not scored, not learnt from.
    Flagged(QualityFlags),
    /// Late and kept: flagged `late`, not scored.
    LateKept,
    /// Refused: a dead letter.
    Rejected { reason: Reason, detail: Option<String> },
}

/// A health episode in progress (stuck or silent).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct HealthEpisode {
    started_at: EventTime,
    value: f64,
}

/// A [`SensorMonitor`]'s state in a checkpoint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MonitorState {
    state: SensorState,
    validation: ValidationState,
    cusum: Cusum,
    anomaly: EpisodeTracker,
    /// The open anomaly episode was opened by CUSUM (otherwise by robust_z).
    cusum_opened: bool,
    shift_hold: Option<(f64, EventTime)>,
    shift_returned: bool,
    stuck: Option<HealthEpisode>,
    silent: Option<HealthEpisode>,
    last: Option<(EventTime, f64)>,
    heard: Option<EventTime>,
}

#[derive(Debug)]
pub struct SensorMonitor {
    state: SensorState,
    rules: Option<Arc<SensorRules>>,
    validation: ValidationState,
    cusum: Cusum,
    /// The sensor's anomaly episode, and the detector that opened it.
    anomaly: EpisodeTracker,
    anomaly_detector: &'static str,
    /// A sustained shift holding the episode open: its direction and until when.
    shift_hold: Option<(f64, EventTime)>,
    /// The held shift has shifted back: the episode may close.
    shift_returned: bool,
    stuck: Option<HealthEpisode>,
    silent: Option<HealthEpisode>,
    /// The newest on-time reading: its time and value.
    last: Option<(EventTime, f64)>,
    /// The newest on-time reading heard, valid or not: a sensor sending readings that fail
    /// validation is misbehaving, not silent.
    heard: Option<EventTime>,
}

impl SensorMonitor {
    pub fn new(sensor_id: &str, config: &PipelineConfig) -> SensorMonitor {
        SensorMonitor {
            state: SensorState::default(),
            rules: config.validation.rules_for(sensor_id),
            validation: ValidationState::new(),
            cusum: Cusum::default(),
            anomaly: EpisodeTracker::default(),
            anomaly_detector: RobustZ::NAME,
            shift_hold: None,
            shift_returned: false,
            stuck: None,
            silent: None,
            last: None,
            heard: None,
        }
    }

    /// Everything the monitor has learnt, for a checkpoint (the rules come from the config).
    pub fn snapshot(&self) -> MonitorState {
        let SensorMonitor {
            state,
            rules: _,
            validation,
            cusum,
            anomaly,
            anomaly_detector,
            shift_hold,
            shift_returned,
            stuck,
            silent,
            last,
            heard,
        } = self;
        MonitorState {
            state: state.clone(),
            validation: *validation,
            cusum: *cusum,
            anomaly: anomaly.clone(),
            cusum_opened: *anomaly_detector == CUSUM_DETECTOR,
            shift_hold: *shift_hold,
            shift_returned: *shift_returned,
            stuck: *stuck,
            silent: *silent,
            last: *last,
            heard: *heard,
        }
    }

    /// A monitor for `sensor_id` that continues from `saved`.
    pub fn restore(sensor_id: &str, config: &PipelineConfig, saved: MonitorState) -> SensorMonitor {
        let MonitorState {
            state,
            validation,
            cusum,
            anomaly,
            cusum_opened,
            shift_hold,
            shift_returned,
            stuck,
            silent,
            last,
            heard,
        } = saved;
        SensorMonitor {
            state,
            rules: config.validation.rules_for(sensor_id),
            validation,
            cusum,
            anomaly,
            anomaly_detector: if cusum_opened { CUSUM_DETECTOR } else { RobustZ::NAME },
            shift_hold,
            shift_returned,
            stuck,
            silent,
            last,
            heard,
        }
    }

    /// The newest on-time reading's event time, valid or not (what silence is measured from).
    pub fn last_ts(&self) -> Option<EventTime> {
        self.heard
    }

    pub fn is_silent(&self) -> bool {
        self.silent.is_some()
    }

    /// Validates, scores and tracks one reading; episode events go to `out`.
    pub fn observe(
        &mut self,
        reading: &Reading,
        late: bool,
        now_ms: EventTime,
        config: &PipelineConfig,
        out: &mut Vec<Anomaly>,
    ) -> Observed {
        let max_future = config.validation.max_future_ms;
        if !late && max_future.is_none_or(|f| reading.ts <= now_ms.saturating_add(f)) {
            self.heard = Some(self.heard.map_or(reading.ts, |h| h.max(reading.ts)));
            if let Some(silent) = self.silent.take() {
                out.push(health_event(SILENCE_DETECTOR, reading, silent, Some(reading.ts), "sends again"));
            }
        }
        let check = match (&self.rules, late) {
            (Some(rules), false) => {
                validate::validate(rules, &mut self.validation, reading, now_ms, max_future)
            }
            (Some(rules), true) => validate::validate_late(rules, reading, now_ms, max_future),
            (None, _) => match validate::check_future(reading.ts, now_ms, max_future) {
                Some(rejection) => Check::Reject { reason: rejection.reason, detail: rejection.detail },
                None => Check::Pass(QualityFlags::EMPTY),
            },
        };
        match check {
            Check::Reject { reason, detail } => return Observed::Rejected { reason, detail: Some(detail) },
            Check::Pass(flags) if !flags.is_empty() => return Observed::Flagged(flags),
            Check::Pass(_) => {}
        }
        let outcome = self.state.process(
            reading.ts,
            reading.value,
            late,
            config.late_policy,
            &config.detector,
            &config.stuck,
        );
        match outcome {
            Outcome::Scored { verdict, stuck, unstuck } => {
                self.last = Some((reading.ts, reading.value));
                if unstuck {
                    if let Some(episode) = self.stuck.take() {
                        out.push(health_event(
                            STUCK_DETECTOR,
                            reading,
                            episode,
                            Some(reading.ts),
                            "value changes again",
                        ));
                    }
                }
                if stuck {
                    let episode = HealthEpisode { started_at: reading.ts, value: reading.value };
                    self.stuck = Some(episode);
                    let why = match config.stuck.repeats {
                        0 => format!("value {} unchanged for {} ms", reading.value, config.stuck.duration_ms),
                        n => format!("value {} repeated exactly {n} times in a row", reading.value),
                    };
                    out.push(health_event(STUCK_DETECTOR, reading, episode, None, &why));
                }
                // One anomaly episode per sensor, whichever detector sees it: robust_z (outliers)
                // or cusum (sustained shifts). It opens when either is hot, stays open while
                // either is warm, and is named after the detector that opened it.
                let shift = (config.cusum.enabled
                    && self.state.detector().count() > u64::from(config.detector.warmup))
                .then(|| self.cusum.observe(verdict.z, &config.cusum));
                let shift_score = shift.map_or(0.0, |s| s.score);
                let score = verdict.score.max(shift_score);
                let hot = verdict.severity.max(shift.and_then(|s| s.severity));
                // A sustained shift holds its episode open until the signal shifts back (the
                // CUSUM alarms the other way) or `hold_ms` has passed, so that a shift and its
                // return are one episode although the baseline adapts in between.
                if let Some(shift) = shift.filter(|s| s.severity.is_some()) {
                    let episode_open = self.anomaly.current().is_some() || hot.is_some();
                    match self.shift_hold {
                        None if episode_open && !self.shift_returned => {
                            self.shift_hold =
                                Some((shift.direction, reading.ts.saturating_add(config.cusum.hold_ms)))
                        }
                        Some((direction, _)) if shift.direction != direction => {
                            self.shift_hold = None;
                            self.shift_returned = true;
                        }
                        _ => {}
                    }
                }
                let held = self.shift_hold.is_some_and(|(_, until)| reading.ts < until);
                let warm_score = if held { score.max(config.episodes.close_score) } else { score };
                let before = self.anomaly.current().copied();
                let transition = self.anomaly.observe(reading.ts, warm_score, hot, &config.episodes);
                if matches!(transition, Some(Transition::Closed { .. })) {
                    self.shift_hold = None;
                    self.shift_returned = false;
                }
                if let Some(transition) = transition {
                    if transition == Transition::Opened {
                        self.anomaly_detector =
                            if verdict.severity.is_some() { RobustZ::NAME } else { CUSUM_DETECTOR };
                    }
                    let open =
                        self.anomaly.current().copied().or(before).expect("a transition has an episode");
                    let explanation = match shift {
                        Some(shift) if verdict.severity.is_none() => format!(
                            "sustained shift {}: CUSUM {:.1} (threshold {}) against baseline {:.4}",
                            if shift.direction > 0.0 { "up" } else { "down" },
                            shift.sum,
                            config.cusum.threshold,
                            verdict.baseline
                        ),
                        _ => explain(&verdict, reading.value),
                    };
                    out.push(episode_event(EpisodeEvent {
                        detector: self.anomaly_detector,
                        subject: &reading.sensor_id,
                        sensor_id: &reading.sensor_id,
                        asset_id: &reading.asset_id,
                        ts: reading.ts,
                        value: reading.value,
                        score,
                        severity: open.severity,
                        started_at: open.started_at,
                        peak_score: open.peak_score,
                        transition,
                        model_version: None,
                        explanation,
                    }));
                }
                Observed::Scored { score }
            }
            Outcome::LateKept => Observed::LateKept,
            Outcome::Rejected(reason) => Observed::Rejected { reason, detail: None },
        }
    }

    /// The frontier passed `at` and this sensor has said nothing since its last reading more
    /// than `silence_ms` earlier: opens a silence episode.
    pub fn fall_silent(
        &mut self,
        sensor_id: &str,
        asset_id: &str,
        at: EventTime,
        silence_ms: u64,
    ) -> Option<Anomaly> {
        if self.silent.is_some() {
            return None;
        }
        let last_ts = self.heard?;
        let value = self.last.map_or(0.0, |(_, v)| v);
        let episode = HealthEpisode { started_at: at, value };
        self.silent = Some(episode);
        let reading =
            Reading { sensor_id: sensor_id.into(), asset_id: asset_id.into(), ts: at, value, unit: None };
        let why = format!(
            "no reading for {} ms (the last at {})",
            silence_ms,
            millstream_events::time::format_rfc3339_millis(last_ts)
        );
        Some(health_event(SILENCE_DETECTOR, &reading, episode, None, &why))
    }
}

/// Everything an episode transition event says.
pub struct EpisodeEvent<'a> {
    pub detector: &'a str,
    /// What the episode is about (a sensor_id or an asset_id): part of its id.
    pub subject: &'a str,
    pub sensor_id: &'a str,
    pub asset_id: &'a str,
    pub ts: EventTime,
    pub value: f64,
    pub score: f64,
    pub severity: Severity,
    pub started_at: EventTime,
    pub peak_score: f64,
    pub transition: Transition,
    pub model_version: Option<String>,
    pub explanation: String,
}

/// The anomaly event of one episode transition. Ids are deterministic: the opening event's
/// id is the episode's id.
pub fn episode_event(e: EpisodeEvent<'_>) -> Anomaly {
    let opened_id = event_id("anomaly", e.detector, e.subject, e.started_at);
    let (state, ended_at) = match e.transition {
        Transition::Opened => (EpisodeState::Opened, None),
        Transition::Escalated => (EpisodeState::Escalated, None),
        Transition::Closed { ended_at } => (EpisodeState::Closed, Some(ended_at)),
    };
    Anomaly {
        event_id: match state {
            EpisodeState::Opened => opened_id.clone(),
            other => event_id(&format!("anomaly:{}", other.as_str()), e.detector, e.subject, e.ts),
        },
        sensor_id: e.sensor_id.to_owned(),
        asset_id: e.asset_id.to_owned(),
        ts: e.ts,
        value: if e.value.is_finite() { e.value } else { 0.0 },
        score: e.score,
        severity: e.severity,
        detector: e.detector.to_owned(),
        model_version: e.model_version,
        explanation: Some(e.explanation),
        episode: Some(Episode {
            episode_id: opened_id,
            state,
            started_at: e.started_at,
            ended_at,
            peak_score: e.peak_score.max(e.score),
        }),
    }
}

fn health_event(
    detector: &str,
    reading: &Reading,
    episode: HealthEpisode,
    closed_at: Option<EventTime>,
    why: &str,
) -> Anomaly {
    episode_event(EpisodeEvent {
        detector,
        subject: &reading.sensor_id,
        sensor_id: &reading.sensor_id,
        asset_id: &reading.asset_id,
        ts: reading.ts,
        value: if closed_at.is_some() { reading.value } else { episode.value },
        score: HEALTH_SCORE,
        severity: Severity::Medium,
        started_at: episode.started_at,
        peak_score: HEALTH_SCORE,
        transition: match closed_at {
            // A health episode lasts until the reading that ends it.
            Some(at) => Transition::Closed { ended_at: at.saturating_sub(1).max(episode.started_at) },
            None => Transition::Opened,
        },
        model_version: None,
        explanation: why.to_owned(),
    })
}
