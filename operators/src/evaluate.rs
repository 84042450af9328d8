//! Scoring detections against injected faults, for `millstream demo`.
//!
//! Anomalies are counted by episode: the event that opened it (escalations and closings of the
//! same episode are not new alarms). A fault's window is `start..=end + grace` on its own sensor. A fault is detected when an
//! anomaly of that sensor falls in its window; its delay is the first such anomaly's time less
//! the fault's start. An anomaly is true when it falls in the window of any fault of its sensor.
//! The rule is the same for every kind: a stuck sensor or a dropout counts as detected by any
//! anomaly of that sensor in the window (for a dropout, typically the first reading after the
//! gap, which the grace period covers).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use millstream_events::fault::{FaultKind, InjectedFault};
use millstream_events::{Anomaly, EpisodeState, EventTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvaluationConfig {
    /// An anomaly up to this long after a fault's end still counts for it.
    pub grace_ms: u64,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        EvaluationConfig { grace_ms: 30_000 }
    }
}

/// Detection quality over a set of faults and anomalies.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub faults: usize,
    pub detected: usize,
    pub anomalies: usize,
    /// Anomalies inside some fault's window.
    pub true_anomalies: usize,
    /// `true_anomalies / anomalies`; 1.0 without anomalies.
    pub precision: f64,
    /// `detected / faults`; 1.0 without faults.
    pub recall: f64,
    /// Median over detected faults of the first detection's delay (the mean of the two middle
    /// delays, rounded down, for an even count).
    pub median_delay_ms: Option<u64>,
    pub max_delay_ms: Option<u64>,
}

impl Scores {
    fn new(faults: usize, mut delays: Vec<u64>, anomalies: usize, true_anomalies: usize) -> Self {
        delays.sort_unstable();
        let n = delays.len();
        let median_delay_ms = match n {
            0 => None,
            _ if n % 2 == 1 => Some(delays[n / 2]),
            _ => Some(delays[n / 2 - 1] + (delays[n / 2] - delays[n / 2 - 1]) / 2),
        };
        Scores {
            faults,
            detected: n,
            anomalies,
            true_anomalies,
            precision: ratio(true_anomalies, anomalies),
            recall: ratio(n, faults),
            median_delay_ms,
            max_delay_ms: delays.last().copied(),
        }
    }
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AssetEvaluation {
    pub asset_id: String,
    pub scores: Scores,
}

/// Recall and delay for one kind of fault. Precision has no meaning per kind (a false alarm
/// has no kind), so `scores.anomalies` and `scores.true_anomalies` both count the anomalies
/// inside a window of a fault of this kind, and `scores.precision` is 1.0.
#[derive(Debug, Clone, PartialEq)]
pub struct KindEvaluation {
    pub kind: FaultKind,
    pub scores: Scores,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Every asset with a fault or an anomaly, sorted by asset id.
    pub assets: Vec<AssetEvaluation>,
    /// Every kind with at least one fault, in [`FaultKind::ALL`] order.
    pub by_kind: Vec<KindEvaluation>,
    pub overall: Scores,
    pub config: EvaluationConfig,
}

/// Scores `anomalies` against the ground truth `faults`.
pub fn evaluate(faults: &[InjectedFault], anomalies: &[Anomaly], config: &EvaluationConfig) -> Evaluation {
    // An episode counts once, by the event that opened it; escalations and closings are
    // updates of the same alarm, not new ones.
    let anomalies: Vec<&Anomaly> = anomalies
        .iter()
        .filter(|a| a.episode.as_ref().is_none_or(|e| e.state == EpisodeState::Opened))
        .collect();
    let window_end = |f: &InjectedFault| f.end.saturating_add(config.grace_ms);

    // Anomaly times per sensor, sorted, to find each fault's first detection.
    let mut times: HashMap<&str, Vec<EventTime>> = HashMap::new();
    for a in &anomalies {
        times.entry(a.sensor_id.as_str()).or_default().push(a.ts);
    }
    for ts in times.values_mut() {
        ts.sort_unstable();
    }
    let delays: Vec<Option<u64>> = faults
        .iter()
        .map(|f| {
            let ts = times.get(f.sensor_id.as_str())?;
            let first = *ts.get(ts.partition_point(|&t| t < f.start))?;
            (first <= window_end(f)).then(|| first - f.start)
        })
        .collect();

    // Which kinds' windows each anomaly falls in (empty: a false alarm).
    let mut by_sensor: HashMap<&str, Vec<&InjectedFault>> = HashMap::new();
    for f in faults {
        by_sensor.entry(f.sensor_id.as_str()).or_default().push(f);
    }
    let matched: Vec<[bool; 5]> = anomalies
        .iter()
        .map(|a| {
            let mut kinds = [false; 5];
            for f in by_sensor.get(a.sensor_id.as_str()).into_iter().flatten() {
                if f.start <= a.ts && a.ts <= window_end(f) {
                    kinds[kind_index(f.kind)] = true;
                }
            }
            kinds
        })
        .collect();
    let is_true = |i: usize| matched[i].iter().any(|&m| m);

    // Per asset.
    #[derive(Default)]
    struct Tally {
        faults: usize,
        delays: Vec<u64>,
        anomalies: usize,
        true_anomalies: usize,
    }
    let mut assets: BTreeMap<&str, Tally> = BTreeMap::new();
    for (f, delay) in faults.iter().zip(&delays) {
        let t = assets.entry(f.asset_id.as_str()).or_default();
        t.faults += 1;
        t.delays.extend(*delay);
    }
    for (i, a) in anomalies.iter().enumerate() {
        let t = assets.entry(a.asset_id.as_str()).or_default();
        t.anomalies += 1;
        t.true_anomalies += is_true(i) as usize;
    }
    let assets = assets
        .into_iter()
        .map(|(asset_id, t)| AssetEvaluation {
            asset_id: asset_id.to_owned(),
            scores: Scores::new(t.faults, t.delays, t.anomalies, t.true_anomalies),
        })
        .collect();

    let by_kind = FaultKind::ALL
        .into_iter()
        .filter_map(|kind| {
            let of_kind = faults.iter().zip(&delays).filter(|(f, _)| f.kind == kind);
            let (count, delays) = of_kind.fold((0, Vec::new()), |(n, mut d), (_, delay)| {
                d.extend(*delay);
                (n + 1, d)
            });
            let inside = matched.iter().filter(|m| m[kind_index(kind)]).count();
            (count > 0).then(|| KindEvaluation { kind, scores: Scores::new(count, delays, inside, inside) })
        })
        .collect();

    let true_anomalies = (0..anomalies.len()).filter(|&i| is_true(i)).count();
    let overall =
        Scores::new(faults.len(), delays.into_iter().flatten().collect(), anomalies.len(), true_anomalies);
    Evaluation { assets, by_kind, overall, config: *config }
}

fn kind_index(kind: FaultKind) -> usize {
    FaultKind::ALL.iter().position(|&k| k == kind).expect("every kind is in ALL")
}

fn percent(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn delay(ms: Option<u64>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(ms) if ms < 1_000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

impl fmt::Display for Evaluation {
    /// One row per asset, then per fault kind, then overall:
    ///
    /// ```text
    /// asset          faults  detected  recall  anomalies  precision  median delay  max delay
    /// line1-pump-00       9         8   88.9%         11      90.9%         1.0 s     2m 05s
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name_width = self
            .assets
            .iter()
            .map(|a| a.asset_id.len())
            .chain(self.by_kind.iter().map(|k| k.kind.as_str().len()))
            .chain(["overall".len(), "fault kind".len()])
            .max()
            .unwrap_or(0);
        let header = |f: &mut fmt::Formatter<'_>, first: &str| {
            writeln!(
                f,
                "{first:<name_width$}  {:>6}  {:>8}  {:>6}  {:>9}  {:>9}  {:>12}  {:>9}",
                "faults", "detected", "recall", "anomalies", "precision", "median delay", "max delay"
            )
        };
        let row = |f: &mut fmt::Formatter<'_>, name: &str, s: &Scores, with_precision: bool| {
            let dash = || "-".to_owned();
            let recall = if s.faults > 0 { percent(s.recall) } else { dash() };
            let precision = if with_precision && s.anomalies > 0 { percent(s.precision) } else { dash() };
            writeln!(
                f,
                "{name:<name_width$}  {:>6}  {:>8}  {:>6}  {:>9}  {:>9}  {:>12}  {:>9}",
                s.faults,
                s.detected,
                recall,
                s.anomalies,
                precision,
                delay(s.median_delay_ms),
                delay(s.max_delay_ms)
            )
        };
        header(f, "asset")?;
        for a in &self.assets {
            row(f, &a.asset_id, &a.scores, true)?;
        }
        if !self.by_kind.is_empty() {
            writeln!(f)?;
            header(f, "fault kind")?;
            for k in &self.by_kind {
                row(f, k.kind.as_str(), &k.scores, false)?;
            }
        }
        writeln!(f)?;
        row(f, "overall", &self.overall, true)?;
        write!(
            f,
            "(a fault counts as detected by an anomaly on its sensor up to {} after it ends)",
            delay(Some(self.config.grace_ms))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millstream_events::Severity;

    fn fault(sensor: &str, kind: FaultKind, start: EventTime, end: EventTime) -> InjectedFault {
        InjectedFault {
            asset_id: sensor.split('/').next().unwrap().to_owned(),
            sensor_id: sensor.to_owned(),
            kind,
            start,
            end,
        }
    }

    fn anomaly(sensor: &str, ts: EventTime) -> Anomaly {
        Anomaly {
            event_id: format!("{sensor}@{ts}"),
            sensor_id: sensor.to_owned(),
            asset_id: sensor.split('/').next().unwrap().to_owned(),
            ts,
            value: 1.0,
            score: 0.9,
            severity: Severity::High,
            detector: "robust_z".to_owned(),
            model_version: None,
            explanation: None,
            episode: None,
        }
    }

    fn example() -> Evaluation {
        let faults = [
            fault("A/vib", FaultKind::Spike, 1_000, 1_000),
            fault("A/temp", FaultKind::LevelShift, 2_000, 5_000),
            fault("B/flow", FaultKind::Dropout, 10_000, 20_000),
            fault("B/cur", FaultKind::Stuck, 40_000, 50_000),
        ];
        let anomalies = [
            anomaly("A/vib", 31_000),  // the last instant of the grace period: true
            anomaly("A/vib", 1_000),   // on time: true, delay 0
            anomaly("A/vib", 31_001),  // past the grace period: false
            anomaly("A/temp", 3_000),  // true
            anomaly("A/temp", 2_500),  // true, the first: delay 500
            anomaly("A/temp", 1_999),  // before the start: false
            anomaly("B/flow", 21_000), // after the gap, in grace: true, delay 11 000
            anomaly("B/pres", 15_000), // another sensor: false
            anomaly("C/x", 0),         // an asset without faults: false
        ];
        evaluate(&faults, &anomalies, &EvaluationConfig::default())
    }

    #[test]
    fn overall_numbers() {
        let e = example();
        let o = &e.overall;
        assert_eq!((o.faults, o.detected, o.anomalies, o.true_anomalies), (4, 3, 9, 5));
        assert_eq!(o.recall, 0.75);
        assert_eq!(o.precision, 5.0 / 9.0);
        assert_eq!((o.median_delay_ms, o.max_delay_ms), (Some(500), Some(11_000)));
    }

    #[test]
    fn per_asset_numbers() {
        let e = example();
        let ids: Vec<&str> = e.assets.iter().map(|a| a.asset_id.as_str()).collect();
        assert_eq!(ids, ["A", "B", "C"]);
        let a = &e.assets[0].scores;
        assert_eq!((a.faults, a.detected, a.anomalies, a.true_anomalies), (2, 2, 6, 4));
        assert_eq!((a.recall, a.precision), (1.0, 4.0 / 6.0));
        assert_eq!((a.median_delay_ms, a.max_delay_ms), (Some(250), Some(500)));
        let b = &e.assets[1].scores;
        assert_eq!((b.faults, b.detected, b.anomalies, b.true_anomalies), (2, 1, 2, 1));
        assert_eq!((b.recall, b.precision, b.median_delay_ms), (0.5, 0.5, Some(11_000)));
        let c = &e.assets[2].scores;
        assert_eq!((c.faults, c.detected, c.anomalies, c.true_anomalies), (0, 0, 1, 0));
        assert_eq!((c.recall, c.precision, c.median_delay_ms), (1.0, 0.0, None));
    }

    #[test]
    fn per_kind_numbers() {
        let e = example();
        let kinds: Vec<FaultKind> = e.by_kind.iter().map(|k| k.kind).collect();
        assert_eq!(kinds, [FaultKind::Spike, FaultKind::LevelShift, FaultKind::Stuck, FaultKind::Dropout]);
        let got: Vec<(usize, usize, usize, Option<u64>)> = e
            .by_kind
            .iter()
            .map(|k| (k.scores.faults, k.scores.detected, k.scores.anomalies, k.scores.median_delay_ms))
            .collect();
        assert_eq!(got, [(1, 1, 2, Some(0)), (1, 1, 2, Some(500)), (1, 0, 0, None), (1, 1, 1, Some(11_000))]);
    }

    #[test]
    fn grace_is_configurable() {
        let faults = [fault("A/vib", FaultKind::Stuck, 1_000, 2_000)];
        let anomalies = [anomaly("A/vib", 2_000), anomaly("A/vib", 2_001)];
        let strict = evaluate(&faults, &anomalies, &EvaluationConfig { grace_ms: 0 });
        assert_eq!((strict.overall.detected, strict.overall.true_anomalies), (1, 1));
        assert_eq!(strict.overall.median_delay_ms, Some(1_000));
        let loose = evaluate(&faults, &anomalies, &EvaluationConfig { grace_ms: 1 });
        assert_eq!(loose.overall.true_anomalies, 2);
    }

    #[test]
    fn nothing_to_score_is_perfect() {
        let e = evaluate(&[], &[], &EvaluationConfig::default());
        assert_eq!((e.overall.precision, e.overall.recall), (1.0, 1.0));
        assert_eq!(e.overall.median_delay_ms, None);
        assert!(e.assets.is_empty() && e.by_kind.is_empty());
        assert!(e.to_string().contains("overall"));
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(Scores::new(4, vec![30, 10, 20, 41], 0, 0).median_delay_ms, Some(25));
        assert_eq!(Scores::new(3, vec![30, 10, 20], 0, 0).median_delay_ms, Some(20));
    }

    #[test]
    fn the_table_is_aligned() {
        let text = example().to_string();
        let rows: Vec<&str> = text.lines().filter(|l| !l.is_empty() && !l.starts_with('(')).collect();
        assert_eq!(rows.len(), 1 + 3 + 1 + 4 + 1, "{text}");
        assert!(rows.iter().all(|r| r.len() == rows[0].len()), "{text}");
        let a = rows.iter().find(|r| r.starts_with("A ")).unwrap();
        assert!(a.contains("100.0%") && a.contains("66.7%") && a.contains("250 ms"), "{a}");
        let overall = rows.last().unwrap();
        assert!(
            overall.contains("75.0%") && overall.contains("55.6%") && overall.contains("11.0 s"),
            "{overall}"
        );
        assert!(text.contains("stuck") && text.contains("dropout"));
        assert_eq!(delay(Some(125_000)), "2m 05s");
    }
}
