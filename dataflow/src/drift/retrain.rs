//! The retrainer: one worker per model (the stream is exchanged by model name) keeps the
//! model's recent training rows and answers retraining requests.
//!
//! A request for the serving version (from a window in drift for `sustain_ms`) fits a new
//! version on the clean buckets since the drift began (at most `window_ms` back), sorted by
//! (time, asset) so the fit does not depend on how rows reached this worker. The newest
//! `holdback_fraction` of them is held back: a version that scores more of those as anomalous
//! than `max_holdback_anomaly_rate` is refused, as is one with fewer than `min_rows` rows to
//! fit, or one within `min_interval_ms` of the last. A version that passes is published to the
//! store and sent back into the dataflow, which serves it from `decision + switch_delay_ms`
//! on every worker (the loop's delay is that switch delay). After a switch, the new version's
//! anomaly rate on its first `min_rows` buckets is watched; above `rollback_anomaly_rate`, the
//! parent is published again as a newer version, and served instead.
//!
//! Everything here is a function of the data: the same versions at the same event times for
//! any number of workers or processes. Only the version numbers come from the store (one
//! above the highest there); a store that cannot be reached leaves the version unpublished
//! but served, numbered one above the serving one.

use std::collections::VecDeque;
use std::sync::Arc;

use millstream_connectors::model_store::ModelStore;
use millstream_events::checkpoint::owner;
use millstream_events::{EventTime, ModelVersionEvent, ModelVersionStatus, SinkEvent};
use millstream_operators::kmeans;
use millstream_operators::model::{signal_references, ModelArtifact};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use super::observe::TrainingRow;
use super::settings::RetrainSettings;
use super::windows::RetrainRequest;
use crate::checkpoint::Checkpointer;
use crate::models::{ModelUpdate, ModelsSettings};
use crate::stash::{Next, Ordered};
use crate::stats::RunStats;

/// Into the retrainer, by model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TrainerInput {
    Row(Box<TrainingRow>),
    Request(RetrainRequest),
}

impl TrainerInput {
    fn model(&self) -> &str {
        match self {
            TrainerInput::Row(r) => &r.model,
            TrainerInput::Request(r) => &r.model,
        }
    }
}

/// Out of the retrainer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Retrained {
    /// A version to serve, at the time it carries plus the loop's delay.
    Update(ModelUpdate),
    Lineage(Box<ModelVersionEvent>),
}

struct Serving {
    version: u64,
    artifact: ModelArtifact,
}

/// A version just switched to, on probation.
struct Probation {
    from: EventTime,
    version: u64,
    parent: Arc<Serving>,
    scored: usize,
    anomalous: usize,
}

#[derive(Default)]
struct ModelState {
    serving: Option<Arc<Serving>>,
    /// The recent clean rows (`window_ms`), oldest first.
    rows: VecDeque<TrainingRow>,
    last_retrain: Option<EventTime>,
    /// The version a new one was made from (one per version).
    answered: Option<u64>,
    /// The last attempt: at most one per `sustain_ms` (windows of many assets ask together).
    attempted_at: Option<EventTime>,
    probation: Option<Probation>,
    /// With checkpoints: versions sent into the loop that may not have come back yet (they
    /// switch at `effective_from`). At a boundary, those still to come are part of the state: a
    /// restore feeds them in again ([`restored_in_flight`]).
    in_flight: Vec<ModelUpdate>,
}

pub fn retrain<'scope>(
    inputs: Stream<'scope, EventTime, Vec<TrainerInput>>,
    updates: Stream<'scope, EventTime, Vec<ModelUpdate>>,
    models_settings: Arc<ModelsSettings>,
    stats: Arc<RunStats>,
    checkpoints: Option<crate::checkpoint::LoopCheckpoints>,
) -> Stream<'scope, EventTime, Vec<Retrained>> {
    let settings = models_settings.retrain.clone();
    let pact = Exchange::new(|i: &TrainerInput| millstream_events::routing::key_route(i.model()));
    let (worker, peers) = (inputs.scope().index(), inputs.scope().peers());
    inputs.binary_frontier(updates, pact, Pipeline, "Retrain", move |initial, _| {
        let mut models: FxHashMap<String, ModelState> = FxHashMap::default();
        let mut ordered: Ordered<TrainerInput, ModelUpdate> = Ordered::default();
        let mut publisher = Publisher { settings: Arc::clone(&models_settings), store: None };
        let mut checkpointer = checkpoints.map(|((checkpointing, registry), driver)| {
            let saved: Vec<Vec<SavedModel>> =
                crate::checkpoint::restore_parts(Some(&checkpointing), CHECKPOINT_COMPONENT);
            for saved in saved.into_iter().flatten() {
                if owner(millstream_events::routing::key_route(&saved.name), peers) == worker {
                    let (name, state) = saved.restore().unwrap_or_else(|e| crate::fatal(&e));
                    models.insert(name, state);
                }
            }
            Checkpointer::in_loop(CHECKPOINT_COMPONENT, &checkpointing, registry, driver, initial)
        });
        move |(input, input_frontier), (updates, updates_frontier), output| {
            ordered.records.take_noting(input, |cap, time| {
                if let Some(c) = checkpointer.as_mut() {
                    c.on_input(cap, time);
                }
            });
            ordered.take_updates(updates);
            while let Some(next) = ordered.next(input_frontier.frontier(), updates_frontier.frontier()) {
                if let Some(c) = checkpointer.as_mut() {
                    let time = match &next {
                        Next::Updates(t, _) | Next::Records(t, _) => *t,
                    };
                    if let Some(b) = c.before(time, || snapshot(&models, worker, peers)) {
                        arrived_before(&mut models, b);
                    }
                }
                match next {
                    Next::Updates(u, updates) => {
                        for update in updates {
                            serve(&mut models, &update, u);
                        }
                    }
                    Next::Records(t, group) => {
                        let (mut rows, mut requests): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
                        for item in group {
                            match item {
                                TrainerInput::Row(row) => rows.push(*row),
                                TrainerInput::Request(request) => requests.push(request),
                            }
                        }
                        rows.sort_by(|a, b| (a.ts, &a.asset_id).cmp(&(b.ts, &b.asset_id)));
                        requests.sort_by(|a, b| {
                            (&a.model, a.since, &a.subject).cmp(&(&b.model, b.since, &b.subject))
                        });
                        let mut out = Vec::new();
                        for row in rows {
                            add_row(&mut models, row, t, &settings, &mut publisher, &stats, &mut out);
                        }
                        for request in requests {
                            answer(&mut models, &request, t, &settings, &mut publisher, &stats, &mut out);
                        }
                        if checkpointer.is_some() {
                            for item in &out {
                                if let Retrained::Update(update) = item {
                                    let state = models.entry(update.name.clone()).or_default();
                                    state.in_flight.push(update.clone());
                                }
                            }
                        }
                        if !out.is_empty() {
                            let cap =
                                ordered.records.capability.as_ref().expect("held with the pending inputs");
                            output.session(&cap.delayed(&t)).give_iterator(out.into_iter());
                        }
                    }
                }
            }
            ordered.records.hold(None);
            if let Some(c) = checkpointer.as_mut() {
                let both = crate::checkpoint::earlier(input_frontier.frontier(), updates_frontier.frontier());
                if let Some(b) = c.passed(both.borrow(), || snapshot(&models, worker, peers)) {
                    arrived_before(&mut models, b);
                }
            }
        }
    })
}

/// The retrainer's name in checkpoints.
const CHECKPOINT_COMPONENT: &str = "retrain";

/// One model's retraining state in a checkpoint: everything but the serving version, which
/// the model updates bring back.
#[derive(Serialize, Deserialize)]
struct SavedModel {
    name: String,
    rows: Vec<TrainingRow>,
    last_retrain: Option<EventTime>,
    answered: Option<u64>,
    attempted_at: Option<EventTime>,
    probation: Option<SavedProbation>,
    in_flight: Vec<ModelUpdate>,
}

#[derive(Serialize, Deserialize)]
struct SavedProbation {
    from: EventTime,
    version: u64,
    parent_version: u64,
    /// The parent's artifact, encoded (it comes back if the new version is rolled back).
    parent: Vec<u8>,
    scored: usize,
    anomalous: usize,
}

impl SavedModel {
    fn restore(self) -> Result<(String, ModelState), String> {
        let SavedModel { name, rows, last_retrain, answered, attempted_at, probation, in_flight } = self;
        let probation = match probation {
            None => None,
            Some(SavedProbation { from, version, parent_version, parent, scored, anomalous }) => {
                let artifact = ModelArtifact::decode(&parent)
                    .map_err(|e| format!("checkpoint part {CHECKPOINT_COMPONENT}: model {name}: {e}"))?;
                let parent = Arc::new(Serving { version: parent_version, artifact });
                Some(Probation { from, version, parent, scored, anomalous })
            }
        };
        let state = ModelState {
            serving: None,
            rows: rows.into(),
            last_retrain,
            answered,
            attempted_at,
            probation,
            in_flight,
        };
        Ok((name, state))
    }
}

/// Forgets the versions sent into the loop that came back before `boundary`.
fn arrived_before(models: &mut FxHashMap<String, ModelState>, boundary: EventTime) {
    for state in models.values_mut() {
        state.in_flight.retain(|u| u.effective_from.is_some_and(|at| at >= boundary));
    }
}

/// The versions the retrainer had sent into its loop at the restored boundary that switch at
/// or after it: the restored run feeds them in at their `effective_from`, as the loop would have.
pub fn restored_in_flight(
    checkpointing: Option<&millstream_events::checkpoint::Checkpointing>,
) -> Vec<ModelUpdate> {
    let Some(boundary) = checkpointing.and_then(|c| c.restored_boundary()) else { return Vec::new() };
    let saved: Vec<Vec<SavedModel>> = crate::checkpoint::restore_parts(checkpointing, CHECKPOINT_COMPONENT);
    // (A part valid over a range of boundaries may still list versions that came back within it.)
    saved
        .into_iter()
        .flatten()
        .flat_map(|m| m.in_flight)
        .filter(|u| u.effective_from.is_some_and(|at| at >= boundary))
        .collect()
}

/// Every model's retraining state, for a checkpoint.
/// Only the models this worker owns: every worker serves every model (the updates are
/// broadcast), but only the owner has rows and decisions, and another worker's empty state
/// must not overwrite the owner's at a restore.
fn snapshot(models: &FxHashMap<String, ModelState>, worker: usize, peers: usize) -> Vec<u8> {
    let mut names: Vec<&String> = models
        .keys()
        .filter(|name| owner(millstream_events::routing::key_route(name), peers) == worker)
        .collect();
    names.sort();
    let saved: Vec<SavedModel> = names
        .into_iter()
        .map(|name| {
            let state = &models[name];
            SavedModel {
                name: name.clone(),
                rows: state.rows.iter().cloned().collect(),
                last_retrain: state.last_retrain,
                answered: state.answered,
                attempted_at: state.attempted_at,
                probation: state.probation.as_ref().map(|p| SavedProbation {
                    from: p.from,
                    version: p.version,
                    parent_version: p.parent.version,
                    parent: p.parent.artifact.encode().expect("a served artifact encodes"),
                    scored: p.scored,
                    anomalous: p.anomalous,
                }),
                in_flight: state.in_flight.clone(),
            }
        })
        .collect();
    crate::checkpoint::encode(&saved)
}

/// Puts new versions into the model store, opened on first use.
struct Publisher {
    settings: Arc<ModelsSettings>,
    store: Option<Option<Box<dyn ModelStore>>>,
}

impl Publisher {
    /// Publishes `bytes` as the next version of `model`: that version, or `None` (logged and
    /// counted) when the store cannot take it. A version above `above` (the one the new
    /// version replaces) that holds the same bytes is that version, already published: a run
    /// restored from a checkpoint decides again, to the byte, what the run before it decided
    /// after the checkpoint, and must not publish it twice under two numbers.
    fn publish(&mut self, model: &str, bytes: &[u8], above: u64, stats: &RunStats) -> Option<u64> {
        let settings = &self.settings;
        let store = self.store.get_or_insert_with(|| {
            let opened = settings.store.as_ref()?.open();
            opened
                .map_err(|e| tracing::error!(error = %e, "the retrainer cannot open the model store: new versions are served but not published"))
                .ok()
        });
        let store = store.as_ref()?;
        match store.versions(model) {
            Ok(versions) => {
                for version in versions.into_iter().filter(|v| *v > above) {
                    if store.get(model, version).is_ok_and(|published| published == bytes) {
                        tracing::info!(
                            model,
                            version,
                            "this model version was published before (by the run this one restored)"
                        );
                        return Some(version);
                    }
                }
            }
            Err(e) => {
                // Not put blindly: after a restore the version may be there already, and a second
                // copy under a new number would change every label after it.
                stats.model_store_errors.inc();
                tracing::error!(model, error = %e, "cannot list the model's versions; serving the new one unpublished");
                return None;
            }
        }
        match store.put(model, bytes) {
            Ok(version) => Some(version),
            Err(e) => {
                stats.model_store_errors.inc();
                tracing::error!(model, error = %e, "cannot publish a new model version; serving it unpublished");
                None
            }
        }
    }
}

fn serve(models: &mut FxHashMap<String, ModelState>, update: &ModelUpdate, at: EventTime) {
    let state = models.entry(update.name.clone()).or_default();
    if state.serving.as_ref().is_some_and(|s| s.version >= update.version) {
        return;
    }
    match update.artifact() {
        Ok(artifact) => {
            // The first version a run serves is no switch: after a restore it is the version in
            // service at the boundary, and a restored probation goes on as it was.
            let switch = state.serving.is_some();
            state.serving = Some(Arc::new(Serving { version: update.version, artifact }));
            if let Some(probation) = state.probation.as_mut().filter(|_| switch) {
                if probation.version == update.version {
                    probation.from = at;
                } else {
                    state.probation = None;
                }
            }
        }
        Err(e) => {
            tracing::error!(model = %update.name, version = update.version, error = %e, "model refused by the retrainer")
        }
    }
}

fn add_row(
    models: &mut FxHashMap<String, ModelState>,
    row: TrainingRow,
    now: EventTime,
    settings: &RetrainSettings,
    publisher: &mut Publisher,
    stats: &RunStats,
    out: &mut Vec<Retrained>,
) {
    let state = models.entry(row.model.clone()).or_default();
    while state.rows.front().is_some_and(|r| r.ts + settings.window_ms < now) {
        state.rows.pop_front();
    }
    let mut rollback = None;
    if let (Some(probation), Some(serving)) = (state.probation.as_mut(), state.serving.as_ref()) {
        if serving.version == probation.version && row.ts >= probation.from {
            // Buckets the model cannot score (features still filling after the switch) do not count.
            if let Ok(scored) = kmeans::score(&serving.artifact, &row.features) {
                probation.scored += 1;
                probation.anomalous += usize::from(scored.score >= serving.artifact.calibration.threshold);
            }
            if probation.scored >= settings.min_rows {
                let rate = probation.anomalous as f64 / probation.scored as f64;
                if rate > settings.rollback_anomaly_rate {
                    rollback = Some((Arc::clone(&probation.parent), probation.version, rate));
                }
                state.probation = None;
            }
        }
    }
    if let Some((parent, bad_version, rate)) = rollback {
        tracing::warn!(model = %row.model, version = bad_version, anomaly_rate = rate, "new model version rolled back: its anomaly rate exploded");
        let lineage = ModelVersionEvent {
            model: row.model.clone(),
            version: bad_version,
            parent_version: Some(parent.version),
            status: ModelVersionStatus::RolledBack,
            reason: format!(
                "anomaly rate {rate:.3} over its first {} buckets (limit {})",
                settings.min_rows, settings.rollback_anomaly_rate
            ),
            effective_from: now + settings.switch_delay_ms,
            training_rows: 0,
            holdback_rows: 0,
            holdback_anomaly_rate: rate,
            parent_holdback_anomaly_rate: 0.0,
            silhouette: None,
            published: false,
        };
        out.push(Retrained::Lineage(Box::new(lineage)));
        // The parent comes back as a newer version (versions only go up), published so that a
        // restart serves it too.
        let mut artifact = parent.artifact.clone();
        artifact.effective_from = Some(now + settings.switch_delay_ms);
        if let Ok(bytes) = artifact.encode() {
            let published = publisher.publish(&row.model, &bytes, bad_version, stats);
            let version = published.unwrap_or(bad_version + 1);
            let restored = ModelVersionEvent {
                model: row.model.clone(),
                version,
                parent_version: Some(bad_version),
                status: ModelVersionStatus::Serving,
                reason: format!("rollback of v{bad_version}: v{} restored", parent.version),
                effective_from: now + settings.switch_delay_ms,
                training_rows: parent.artifact.training.rows_used,
                holdback_rows: 0,
                holdback_anomaly_rate: 0.0,
                parent_holdback_anomaly_rate: rate,
                silhouette: parent.artifact.metrics.silhouette,
                published: published.is_some(),
            };
            out.push(Retrained::Lineage(Box::new(restored)));
            out.push(Retrained::Update(ModelUpdate {
                name: row.model.clone(),
                version,
                effective_from: artifact.effective_from,
                bytes,
            }));
        }
        state.last_retrain = Some(now);
    }
    // Only clean buckets are ever fitted on (the rest served the probation above), and the
    // rows are a checkpoint's largest part.
    if row.clean {
        state.rows.push_back(row);
    }
}

fn answer(
    models: &mut FxHashMap<String, ModelState>,
    request: &RetrainRequest,
    now: EventTime,
    settings: &RetrainSettings,
    publisher: &mut Publisher,
    stats: &RunStats,
    out: &mut Vec<Retrained>,
) {
    let Some(state) = models.get_mut(&request.model) else { return };
    let Some(serving) = state.serving.clone() else { return };
    if serving.version != request.version || state.answered == Some(serving.version) {
        return;
    }
    if state.last_retrain.is_some_and(|last| now < last + settings.min_interval_ms) {
        return; // Asked again later: the window stays in drift.
    }
    if state.attempted_at.is_some_and(|at| now < at + settings.sustain_ms) {
        return;
    }
    state.attempted_at = Some(now);
    let effective_from = now + settings.switch_delay_ms;
    let reason = format!(
        "drift: {} on {} at {:.2}× its threshold since {}",
        request.statistic.as_str(),
        request.subject,
        request.value,
        millstream_events::time::format_rfc3339_millis(request.since)
    );
    let since = request.since.max(now.saturating_sub(settings.window_ms));
    let clean: Vec<&TrainingRow> =
        state.rows.iter().filter(|r| r.clean && r.ts >= since && r.ts <= now).collect();
    let holdback = ((clean.len() as f64) * settings.holdback_fraction).round() as usize;
    let (fit, check) = clean.split_at(clean.len() - holdback);
    let mut lineage = ModelVersionEvent {
        model: request.model.clone(),
        version: serving.version + 1,
        parent_version: Some(serving.version),
        status: ModelVersionStatus::Refused,
        reason: reason.clone(),
        effective_from,
        training_rows: fit.len() as u64,
        holdback_rows: check.len() as u64,
        holdback_anomaly_rate: 0.0,
        parent_holdback_anomaly_rate: anomaly_rate(&serving.artifact, check),
        silhouette: None,
        published: false,
    };
    if fit.len() < settings.min_rows {
        lineage.reason = format!(
            "{reason}; refused: {} clean buckets to fit, fewer than {}",
            fit.len(),
            settings.min_rows
        );
        tracing::warn!(model = %request.model, rows = fit.len(), "retraining refused: too little clean data");
        out.push(Retrained::Lineage(Box::new(lineage)));
        return;
    }
    let data: Vec<Vec<f64>> = fit.iter().map(|r| r.features.clone()).collect();
    let mut artifact = match kmeans::train(&data, &serving.artifact.features, &serving.artifact.params) {
        Ok(artifact) => artifact,
        Err(e) => {
            lineage.reason = format!("{reason}; refused: training failed: {e}");
            tracing::warn!(model = %request.model, error = %e, "retraining failed");
            out.push(Retrained::Lineage(Box::new(lineage)));
            return;
        }
    };
    let first = fit.first().map(|r| r.ts).unwrap_or(now);
    let last = fit.last().map(|r| r.ts).unwrap_or(now);
    artifact = artifact.with_window(first, last).effective_from(Some(effective_from));
    artifact.name = serving.artifact.name.clone();
    artifact.class = serving.artifact.class.clone();
    artifact.bucket_ms = serving.artifact.bucket_ms;
    let sensors: Vec<String> = millstream_operators::features::FeaturePlan::from_names(&artifact.features)
        .map(|plan| plan.sensors)
        .unwrap_or_default();
    artifact.signals = signal_references(
        &sensors,
        fit.iter().map(|r| r.sensors.as_slice()),
        artifact.params.sketch_points as usize,
    );
    lineage.silhouette = artifact.metrics.silhouette;
    lineage.holdback_anomaly_rate = anomaly_rate(&artifact, check);
    if lineage.holdback_anomaly_rate > settings.max_holdback_anomaly_rate {
        lineage.reason = format!(
            "{reason}; refused: it scores {:.3} of the held-back buckets as anomalous (limit {})",
            lineage.holdback_anomaly_rate, settings.max_holdback_anomaly_rate
        );
        tracing::warn!(model = %request.model, rate = lineage.holdback_anomaly_rate, "retrained model refused on the held-back buckets");
        out.push(Retrained::Lineage(Box::new(lineage)));
        return;
    }
    let bytes = match artifact.encode() {
        Ok(bytes) => bytes,
        Err(e) => {
            lineage.reason = format!("{reason}; refused: {e}");
            out.push(Retrained::Lineage(Box::new(lineage)));
            return;
        }
    };
    let published = publisher.publish(&request.model, &bytes, serving.version, stats);
    lineage.published = published.is_some();
    let version = published.unwrap_or(serving.version + 1);
    tracing::info!(model = %request.model, version, parent = serving.version, effective_from, rows = fit.len(), "retrained model version");
    lineage.version = version;
    lineage.status = ModelVersionStatus::Serving;
    state.answered = Some(serving.version);
    out.push(Retrained::Lineage(Box::new(lineage)));
    out.push(Retrained::Update(ModelUpdate {
        name: request.model.clone(),
        version,
        effective_from: Some(effective_from),
        bytes,
    }));
    state.last_retrain = Some(now);
    state.probation =
        Some(Probation { from: effective_from, version, parent: serving, scored: 0, anomalous: 0 });
}

fn anomaly_rate(artifact: &ModelArtifact, rows: &[&TrainingRow]) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    let threshold = artifact.calibration.threshold;
    let anomalous = rows
        .iter()
        .filter(|r| kmeans::score(artifact, &r.features).is_ok_and(|s| s.score >= threshold))
        .count();
    anomalous as f64 / rows.len() as f64
}

/// The lineage event as a sink event.
pub fn lineage_event(retrained: &Retrained) -> Option<SinkEvent> {
    match retrained {
        Retrained::Lineage(l) => Some(SinkEvent::ModelVersion(l.clone())),
        Retrained::Update(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, ts: EventTime) -> TrainingRow {
        TrainingRow {
            model: model.to_owned(),
            asset_id: format!("{model}-asset"),
            ts,
            features: vec![1.0, 2.5],
            sensors: vec![Some(3.0), None],
            clean: true,
        }
    }

    fn update(name: &str, version: u64, effective_from: EventTime) -> ModelUpdate {
        ModelUpdate {
            name: name.to_owned(),
            version,
            effective_from: Some(effective_from),
            bytes: vec![7; 3],
        }
    }

    /// Each model's state goes into exactly one worker's part (its owner's), whole, and comes
    /// back as it was; the versions sent into the loop are kept until they have come back.
    #[test]
    fn a_checkpoint_holds_each_model_once_and_restores_it() {
        let names = ["pump-00", "pump-01", "pump-02", "pump-03", "pump-04"];
        let mut models: FxHashMap<String, ModelState> = FxHashMap::default();
        for (i, name) in names.iter().enumerate() {
            let state = ModelState {
                rows: (0..3).map(|k| row(name, 1_000 * (i as u64 + k))).collect(),
                last_retrain: Some(5_000),
                answered: Some(1),
                attempted_at: Some(4_000),
                in_flight: vec![update(name, 2, 9_000), update(name, 3, 20_000)],
                ..ModelState::default()
            };
            models.insert((*name).to_owned(), state);
        }
        for peers in [1, 2, 3] {
            let mut restored: FxHashMap<String, ModelState> = FxHashMap::default();
            for worker in 0..peers {
                let saved: Vec<SavedModel> =
                    crate::checkpoint::decode(CHECKPOINT_COMPONENT, &snapshot(&models, worker, peers))
                        .unwrap();
                for saved in saved {
                    assert_eq!(owner(millstream_events::routing::key_route(&saved.name), peers), worker);
                    let (name, state) = saved.restore().unwrap();
                    assert!(restored.insert(name, state).is_none(), "a model in two workers' parts");
                }
            }
            assert_eq!(restored.len(), names.len(), "{peers} workers");
            for name in names {
                let (before, after) = (&models[name], &restored[name]);
                assert_eq!(before.rows, after.rows);
                assert_eq!(
                    (before.last_retrain, before.answered, before.attempted_at),
                    (after.last_retrain, after.answered, after.attempted_at)
                );
                assert_eq!(before.in_flight, after.in_flight);
                assert!(after.serving.is_none() && after.probation.is_none());
            }
            arrived_before(&mut restored, 10_000);
            assert!(restored.values().all(|s| s.in_flight == vec![update(&s.rows[0].model, 3, 20_000)]));
        }
    }
}
