//! Sliding event-time windows, maintained by differential dataflow, and their judge.
//!
//! The observer counts each slide's bucket values per key and bin; a count `n` of `(key, bin)`
//! enters the collection at the slide's boundary `s` (the first at or after its buckets' ends)
//! with difference +n, and leaves at `s + W` with −n. The collection at boundary `s` therefore
//! holds the buckets of the last W of event time, and it changes only at boundaries: a `reduce`
//! per key turns it into a histogram once per slide, however many readings arrived. The arrangements compact as the
//! frontier advances (nothing else holds their traces), so state is the live windows, not the
//! history.
//!
//! The judge compares each new histogram with the serving version's reference bins and
//! keeps, per key, which statistics are in drift: a statistic that crosses its threshold
//! emits one drift event; it clears below `clear_ratio × threshold`. A key whose window
//! empties (a quiet sensor: W without a bucket) closes, and its drift state with it. A key in
//! drift without a break for `sustain_ms` sends one retraining request for its model.

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::AsCollection;
use millstream_events::checkpoint::owner;
use millstream_events::{CompactString, DriftEvent, DriftStatistic, EventTime};
use millstream_operators::drift::window::WindowStats;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::observe::{apply_update, References, WindowEntry, WindowKey};
use super::settings::{DriftSettings, RetrainSettings};
use crate::checkpoint::Checkpointer;
use crate::models::ModelUpdate;

/// A model whose window stayed in drift for `sustain_ms`: retrain it on data since `since`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrainRequest {
    pub model: String,
    /// The version in drift.
    pub version: u64,
    /// When the drift began (the first slide it was seen at).
    pub since: EventTime,
    /// What drifted, for the lineage's `reason`.
    pub subject: String,
    pub statistic: DriftStatistic,
    pub value: f64,
}

/// Out of the judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Judgement {
    Drift(Box<DriftEvent>),
    Retrain(RetrainRequest),
}

/// A window's histogram (counts per reference bin) as a differential update.
pub type HistogramUpdate = ((WindowKey, Vec<u64>), EventTime, isize);

/// Histograms per key, one new value per slide boundary at which the window changed.
pub fn window_histograms<'scope>(
    entries: Stream<'scope, EventTime, Vec<WindowEntry>>,
    settings: &DriftSettings,
) -> Stream<'scope, EventTime, Vec<HistogramUpdate>> {
    let bins = settings.bins;
    entries
        .flat_map(move |WindowEntry { key, bin, enter, leave, count }| {
            let count = count as isize;
            [((key.clone(), bin), enter, count), ((key, bin), leave, -count)]
        })
        .as_collection()
        .reduce_named("DriftHistogram", move |_key, input: &[(&u16, isize)], output| {
            let mut counts = vec![0u64; bins];
            for (bin, count) in input {
                if let Some(slot) = counts.get_mut(usize::from(**bin)) {
                    *slot += (*count).max(0) as u64;
                }
            }
            output.push((counts, 1isize));
        })
        .inner
}

/// Per key, which statistics are in drift and since when.
#[derive(Default, Serialize, Deserialize)]
struct KeyState {
    /// The histogram last judged: after a restore, the reduce gives every window's histogram
    /// at the boundary again, and one that did not change was judged already.
    last: Vec<u64>,
    drifting: [bool; 3],
    /// The first boundary of the current unbroken drift, and when it last asked for a new
    /// version (again every `sustain_ms` while the drift lasts: a refused retraining may pass
    /// with more data).
    since: Option<EventTime>,
    requested_at: Option<EventTime>,
}

const WINDOW_STATISTICS: [DriftStatistic; 3] =
    [DriftStatistic::Psi, DriftStatistic::Ks, DriftStatistic::Wasserstein];

pub fn judge<'scope>(
    histograms: Stream<'scope, EventTime, Vec<HistogramUpdate>>,
    updates: Stream<'scope, EventTime, Vec<ModelUpdate>>,
    drift: DriftSettings,
    retrain: RetrainSettings,
    stats: Arc<crate::stats::RunStats>,
    checkpoints: Option<crate::checkpoint::LoopCheckpoints>,
) -> Stream<'scope, EventTime, Vec<Judgement>> {
    let (worker, peers) = (histograms.scope().index(), histograms.scope().peers());
    // The reduce's output is already partitioned by key: judge where it is.
    histograms.binary_frontier(updates, Pipeline, Pipeline, "DriftJudge", move |initial, _| {
        let mut models: FxHashMap<String, Arc<References>> = FxHashMap::default();
        // Per time: the new histogram of each key that changed (None: its window emptied).
        let mut pending: BTreeMap<EventTime, BTreeMap<WindowKey, Option<Vec<u64>>>> = BTreeMap::new();
        let mut pending_updates: BTreeMap<EventTime, Vec<ModelUpdate>> = BTreeMap::new();
        let mut states: BTreeMap<WindowKey, KeyState> = BTreeMap::new();
        let mut capability: Option<Capability<EventTime>> = None;
        // This worker's share of the open-windows gauge.
        let mut counted = 0i64;
        // After a restore, the boundary: the reduce gives every window still open there, so a
        // restored key it does not give had emptied by then.
        let mut sweep: Option<EventTime> = None;
        let mut checkpointer = checkpoints.map(|((checkpointing, registry), driver)| {
            let saved: Vec<Vec<(WindowKey, KeyState)>> =
                crate::checkpoint::restore_parts(Some(&checkpointing), CHECKPOINT_COMPONENT);
            for (key, state) in saved.into_iter().flatten() {
                // Where the reduce's arrangement puts the key.
                if owner(differential_dataflow::Hashable::hashed(&key), peers) == worker {
                    states.insert(key, state);
                }
            }
            sweep = checkpointing.restored_boundary();
            Checkpointer::in_loop(CHECKPOINT_COMPONENT, &checkpointing, registry, driver, initial)
        });
        let snapshot = |states: &BTreeMap<WindowKey, KeyState>| {
            crate::checkpoint::encode(&states.iter().collect::<Vec<_>>())
        };
        move |(input, input_frontier), (updates, updates_frontier), output| {
            input.for_each(|cap, data| {
                let Some(&time) = cap.least() else { return };
                if let Some(c) = checkpointer.as_mut() {
                    c.on_input(&cap, time);
                }
                if capability.as_ref().is_none_or(|c| time < *c.time()) {
                    capability = cap.retain_least(0);
                }
                for ((key, counts), t, diff) in data.drain(..) {
                    let slot = pending.entry(t).or_default().entry(key).or_insert(None);
                    if diff > 0 {
                        *slot = Some(counts);
                    }
                }
            });
            updates.for_each(|cap, data| {
                let Some(&time) = cap.least() else { return };
                pending_updates.entry(time).or_default().append(data);
            });
            let complete = |t: &EventTime| {
                !input_frontier.frontier().less_equal(t) && !updates_frontier.frontier().less_equal(t)
            };
            loop {
                let next_update = pending_updates.first_key_value().map(|(t, _)| *t).filter(&complete);
                let next = pending.first_key_value().map(|(t, _)| *t).filter(&complete);
                match (next_update, next) {
                    (Some(u), t) if t.is_none_or(|t| u <= t) => {
                        sweep_unseen(&mut sweep, u, &mut states, checkpointer.as_mut(), &snapshot);
                        if let Some(c) = checkpointer.as_mut() {
                            c.before(u, || snapshot(&states));
                        }
                        for update in pending_updates.remove(&u).unwrap_or_default() {
                            apply_update(&mut models, &update, drift.bins);
                        }
                    }
                    (_, Some(t)) => {
                        sweep_unseen(&mut sweep, t, &mut states, checkpointer.as_mut(), &snapshot);
                        if let Some(c) = checkpointer.as_mut() {
                            c.before(t, || snapshot(&states));
                        }
                        let changed = pending.remove(&t).unwrap_or_default();
                        if sweep.take_if(|b| *b == t).is_some() {
                            // The histograms of the restored boundary: the windows not among
                            // them had emptied there.
                            states.retain(|key, _| changed.contains_key(key));
                        }
                        let cap = capability.as_ref().expect("held with the pending histograms");
                        let time_cap = cap.delayed(&t);
                        let mut session = output.session(&time_cap);
                        for (key, counts) in changed {
                            let Some(counts) = counts else {
                                // The window emptied: it closes, and its drift with it.
                                states.remove(&key);
                                continue;
                            };
                            judge_window(&key, &counts, t, &models, &drift, &retrain, &mut states, |j| {
                                session.give(j)
                            });
                        }
                    }
                    _ => break,
                }
            }
            if let Some(b) = sweep {
                if !input_frontier.frontier().less_equal(&b)
                    && pending.first_key_value().is_none_or(|(t, _)| *t > b)
                {
                    sweep_unseen(&mut sweep, b + 1, &mut states, checkpointer.as_mut(), &snapshot);
                }
            }
            let open = states.len() as i64;
            stats.drift_windows.add(open - counted);
            counted = open;
            match (pending.first_key_value().map(|(t, _)| *t), capability.as_mut()) {
                (Some(t), Some(cap)) => cap.downgrade(&t),
                (None, _) => capability = None,
                (Some(_), None) => unreachable!("pending histograms came with a capability"),
            }
            if let Some(c) = checkpointer.as_mut() {
                let both = crate::checkpoint::earlier(input_frontier.frontier(), updates_frontier.frontier());
                c.passed(both.borrow(), || snapshot(&states));
            }
        }
    })
}

/// After a restore at boundary `b` (`sweep`), once the judge gets to a time after `b` with no
/// histogram at `b`: no window was open at `b`, so every restored state closes. The state at `b`
/// itself (restored) is registered first: boundaries after `b` must not hold the closed windows.
fn sweep_unseen(
    sweep: &mut Option<EventTime>,
    time: EventTime,
    states: &mut BTreeMap<WindowKey, KeyState>,
    checkpointer: Option<&mut Checkpointer>,
    snapshot: &impl Fn(&BTreeMap<WindowKey, KeyState>) -> Vec<u8>,
) {
    let Some(b) = sweep.take_if(|b| time > *b) else { return };
    if let Some(c) = checkpointer {
        c.before(b, || snapshot(states));
    }
    states.clear();
}

/// The judge's name in checkpoints.
const CHECKPOINT_COMPONENT: &str = "drift_judge";

#[allow(clippy::too_many_arguments)]
fn judge_window(
    key: &WindowKey,
    counts: &[u64],
    t: EventTime,
    models: &FxHashMap<String, Arc<References>>,
    drift: &DriftSettings,
    retrain: &RetrainSettings,
    states: &mut BTreeMap<WindowKey, KeyState>,
    mut give: impl FnMut(Judgement),
) {
    let state = states.entry(key.clone()).or_default();
    if state.last == counts {
        return;
    }
    state.last = counts.to_vec();
    let Some((name, refs)) = key.model.split_once('@').and_then(|(name, _)| Some((name, models.get(name)?)))
    else {
        return;
    };
    // A window of an older version than the one serving (buckets still in it) is not judged.
    if refs.label != key.model {
        return;
    }
    let bins = if key.is_feature {
        refs.artifact.features.iter().position(|f| *f == key.subject).and_then(|j| refs.features[j].as_ref())
    } else {
        refs.plan
            .sensors
            .iter()
            .position(|s| s == sensor_of(&key.subject))
            .and_then(|i| refs.sensors[i].as_ref())
    };
    let Some(stats) = bins.and_then(|b| b.compare(counts)) else { return };
    if stats.count < drift.min_count {
        return;
    }
    let thresholds = [drift.psi_threshold, drift.ks_threshold, drift.wasserstein_threshold];
    let mut worst: Option<(DriftStatistic, f64)> = None;
    for (i, statistic) in WINDOW_STATISTICS.into_iter().enumerate() {
        let value = statistic_value(&stats, statistic);
        let threshold = thresholds[i];
        if state.drifting[i] {
            state.drifting[i] = value >= threshold * drift.clear_ratio;
        } else if value >= threshold {
            state.drifting[i] = true;
            let event = DriftEvent {
                event_id: String::new(),
                asset_id: CompactString::from(key.asset_id.as_str()),
                sensor_id: (!key.is_feature).then(|| CompactString::from(key.subject.as_str())),
                feature: key.is_feature.then(|| key.subject.clone()),
                statistic,
                value,
                threshold,
                window_start: t.saturating_sub(drift.window_ms),
                window_end: t,
                count: stats.count,
                model_version: key.model.clone(),
            }
            .with_id();
            give(Judgement::Drift(Box::new(event)));
        }
        if state.drifting[i] && worst.is_none_or(|(_, v)| value / threshold > v) {
            worst = Some((statistic, value / threshold));
        }
    }
    let Some((statistic, ratio)) = worst else {
        state.since = None;
        state.requested_at = None;
        return;
    };
    let since = *state.since.get_or_insert(t);
    let due = state.requested_at.is_none_or(|at| t >= at + retrain.sustain_ms);
    if retrain.enabled && due && t >= since + retrain.sustain_ms {
        state.requested_at = Some(t);
        give(Judgement::Retrain(RetrainRequest {
            model: name.to_owned(),
            version: refs.version,
            since,
            subject: if key.is_feature {
                format!("{}/{}", key.asset_id, key.subject)
            } else {
                key.subject.clone()
            },
            statistic,
            value: ratio,
        }));
    }
}

fn statistic_value(stats: &WindowStats, statistic: DriftStatistic) -> f64 {
    match statistic {
        DriftStatistic::Psi => stats.psi,
        DriftStatistic::Ks => stats.ks,
        _ => stats.wasserstein_relative,
    }
}

fn sensor_of(sensor_id: &str) -> &str {
    millstream_operators::features::sensor_name(sensor_id)
}
