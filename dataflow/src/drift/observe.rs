//! The drift stage's first operator: per asset, in event-time order, the readings are aligned
//! into the serving model's buckets (as the asset stage and `train` align them), and each
//! closed bucket yields
//! - one window observation per sensor (its bucket mean's reference bin) and per model feature,
//!   for the differential windows ([`super::windows`]);
//! - a step of each sensor's sequential change detector, and a drift event when it fires;
//! - a training row (features, sensor means, and whether the bucket was clean) for the
//!   retrainer.
//!
//! A bucket is clean when none of its readings was flagged by validation or scored as
//! anomalous by the per-sensor detectors: retraining must not learn the faults.

use std::collections::BTreeMap;
use std::sync::Arc;

use millstream_events::{CompactString, DriftEvent, DriftStatistic, EventTime, ReadingRow, SinkEvent};
use millstream_operators::drift::sequential::{ChangeDetector, ChangeKind};
use millstream_operators::drift::window::ReferenceBins;
use millstream_operators::features::{sensor_name, BucketAccumulator, FeaturePlan, FeatureState};
use millstream_operators::model::ModelArtifact;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::Stream;

use millstream_events::checkpoint::owner;

use super::settings::DriftSettings;
use crate::checkpoint::Checkpointer;
use crate::models::{ModelUpdate, ModelsSettings};
use crate::stash::{epoch, Next, Ordered};

/// What the observer does: the drift settings, and whether the retrainer wants rows.
struct Params {
    drift: DriftSettings,
    rows: bool,
    /// Keep the window entries still in a window, for checkpoints.
    keep_live: bool,
}

impl std::ops::Deref for Params {
    type Target = DriftSettings;
    fn deref(&self) -> &DriftSettings {
        &self.drift
    }
}

/// A per-sensor score at or above this marks its bucket unclean (the severity "warning" level).
const UNCLEAN_SCORE: f64 = 0.8;

/// What one window is over: a sensor, or a feature of an asset, against one model version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowKey {
    /// A hash of the rest, first so that differential's sorts and merges compare one integer
    /// rather than three strings.
    pub id: u64,
    /// `NAME@vN`.
    pub model: String,
    pub asset_id: String,
    /// The sensor id, or the feature name.
    pub subject: String,
    pub is_feature: bool,
}

impl WindowKey {
    pub fn new(model: String, asset_id: String, subject: String, is_feature: bool) -> WindowKey {
        let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
        for part in [model.as_bytes(), asset_id.as_bytes(), subject.as_bytes()] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.update(&[u8::from(is_feature)]);
        WindowKey { id: hasher.digest(), model, asset_id, subject, is_feature }
    }
}

/// One bucket of one asset, for the retrainer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRow {
    pub model: String,
    pub asset_id: String,
    /// Start of the bucket.
    pub ts: EventTime,
    pub features: Vec<f64>,
    pub sensors: Vec<Option<f64>>,
    pub clean: bool,
}

/// `count` values in `bin` of `key`'s reference, in the windows from `enter` (a slide
/// boundary) until `leave` (the slide boundary at which the window no longer covers them):
/// one per key and bin per slide, not per bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowEntry {
    pub key: WindowKey,
    pub bin: u16,
    pub enter: EventTime,
    pub leave: EventTime,
    pub count: u32,
}

/// What the observer hands on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Observation {
    Window(WindowEntry),
    Drift(Box<DriftEvent>),
    Row(Box<TrainingRow>),
}

/// A model version's references, decoded once per worker.
pub struct References {
    pub version: u64,
    pub label: String,
    pub artifact: ModelArtifact,
    pub plan: FeaturePlan,
    /// Per plan sensor, and per feature.
    pub sensors: Vec<Option<ReferenceBins>>,
    pub features: Vec<Option<ReferenceBins>>,
}

impl References {
    pub fn decode(update: &ModelUpdate, bins: usize) -> Result<References, String> {
        let artifact = update.artifact().map_err(|e| e.to_string())?;
        let plan = FeaturePlan::from_names(&artifact.features).map_err(|e| e.to_string())?;
        let sensors = plan
            .sensors
            .iter()
            .map(|sensor| {
                artifact
                    .signals
                    .iter()
                    .find(|s| &s.sensor == sensor)
                    .and_then(|s| ReferenceBins::from_sketch(&s.sketch, bins))
            })
            .collect();
        let features =
            artifact.reference.iter().map(|sketch| ReferenceBins::from_sketch(sketch, bins)).collect();
        Ok(References {
            version: update.version,
            label: format!("{}@v{}", update.name, update.version),
            artifact,
            plan,
            sensors,
            features,
        })
    }
}

/// Applies `update` to `models` unless that version (or a newer one) is already there: the
/// retrainer's own versions also come back through the store's watcher.
pub fn apply_update(models: &mut FxHashMap<String, Arc<References>>, update: &ModelUpdate, bins: usize) {
    if models.get(&update.name).is_some_and(|m| m.version >= update.version) {
        return;
    }
    match References::decode(update, bins) {
        Ok(refs) => {
            models.insert(update.name.clone(), Arc::new(refs));
        }
        Err(e) => {
            tracing::error!(model = %update.name, version = update.version, error = %e, "model refused by the drift stage")
        }
    }
}

/// A sensor's sequential detector, fed block means: `block_buckets` consecutive bucket means
/// averaged. Sensors are autocorrelated (cycles, slow states), and a CUSUM fed every bucket of
/// a cycle would read each half-cycle as a shift; averaged over blocks as long as the cycle,
/// the values are nearly independent, which is what the detector's thresholds assume.
#[derive(Serialize, Deserialize)]
struct SensorDetector {
    detector: ChangeDetector,
    /// When the current reference began (the first bucket after a reset).
    since: Option<EventTime>,
    block_sum: f64,
    block_count: u32,
}

#[derive(Serialize, Deserialize)]
struct AssetState {
    /// From the configuration, not the checkpoint.
    #[serde(skip)]
    model: Option<String>,
    version: u64,
    bucket_ms: u64,
    features: FeatureState,
    accumulator: BucketAccumulator,
    bucket: Option<EventTime>,
    /// The timely time of the open bucket's first reading: its outputs are owed from then.
    bucket_time: Option<EventTime>,
    clean: bool,
    detectors: Vec<SensorDetector>,
    /// The sensor ids seen, per plan sensor (for event subjects).
    sensor_ids: Vec<Option<CompactString>>,
    row: Vec<f64>,
    /// The window observations of the current slide, counted.
    slide: Option<Slide>,
    /// With checkpoints: the window entries emitted that may still be in a window (a restore
    /// puts them back into the windows, which are not checkpointed themselves).
    live: Vec<WindowEntry>,
}

/// One asset's window observations for one slide, counted per subject and bin; flushed when
/// no bucket can still fall into the slide.
#[derive(Serialize, Deserialize)]
struct Slide {
    /// The slide boundary at which they enter the windows: also the time they are emitted at,
    /// and the capability is held there until then. (Not earlier: the retrainer's versions come
    /// back into this operator through a loop as late as the observer's output frontier plus
    /// the switch delay, and readings wait for them; a hold a slide behind the readings would
    /// leave them waiting for ever when the delay is shorter than a slide.)
    enter: EventTime,
    /// (is a feature, plan sensor or feature index, bin) → count.
    counts: BTreeMap<(bool, u16, u16), u32>,
}

pub fn observe<'scope>(
    events: Stream<'scope, EventTime, Vec<SinkEvent>>,
    updates: Stream<'scope, EventTime, Vec<ModelUpdate>>,
    models_settings: Arc<ModelsSettings>,
    epoch_ms: u64,
    checkpoints: Option<crate::checkpoint::LoopCheckpoints>,
) -> Stream<'scope, EventTime, Vec<Observation>> {
    let settings = Params {
        drift: models_settings.drift.clone(),
        rows: models_settings.retrain.enabled,
        keep_live: checkpoints.is_some(),
    };
    let (worker, peers) = (events.scope().index(), events.scope().peers());
    // Only on-time readings cross to the observer; the rest never leaves its worker (an
    // anomaly's flattened episode cannot cross processes as bincode).
    let readings = events.flat_map(|e| match e {
        SinkEvent::Reading(r) if !r.late => Some(r),
        _ => None,
    });
    let pact = Exchange::new(|r: &ReadingRow| millstream_events::routing::key_route(&r.asset_id));
    readings.binary_frontier(updates, pact, Pipeline, "DriftObserve", move |initial, _| {
        let epoch_ms = epoch_ms.max(1);
        let mut models: FxHashMap<String, Arc<References>> = FxHashMap::default();
        let mut assets: FxHashMap<CompactString, AssetState> = FxHashMap::default();
        let mut ordered: Ordered<ReadingRow, ModelUpdate> = Ordered::default();
        let mut emit: Vec<(EventTime, Observation)> = Vec::new();
        let mut checkpointer = checkpoints.map(|((checkpointing, registry), driver)| {
            let saved: Vec<Vec<(CompactString, AssetState)>> =
                crate::checkpoint::restore_parts(Some(&checkpointing), CHECKPOINT_COMPONENT);
            for (asset, mut state) in saved.into_iter().flatten() {
                if owner(millstream_events::routing::key_route(&asset), peers) == worker {
                    state.model = models_settings.model_for(&asset).map(str::to_owned);
                    assets.insert(asset, state);
                }
            }
            if let Some(b) = checkpointing.restored_boundary() {
                // The windows are not checkpointed: the entries still in them enter again at
                // the boundary (the windows from it on are the same), and leave when they did.
                for state in assets.values_mut() {
                    state.live.retain(|e| e.leave > b);
                    for entry in &state.live {
                        emit.push((
                            b,
                            Observation::Window(WindowEntry { enter: entry.enter.max(b), ..entry.clone() }),
                        ));
                    }
                    state.release_from(b);
                }
                if !emit.is_empty() || assets.values().any(|s| s.owed().is_some()) {
                    ordered.records.capability = Some(initial.delayed(&b));
                }
            }
            Checkpointer::in_loop(CHECKPOINT_COMPONENT, &checkpointing, registry, driver, initial)
        });
        move |(readings, readings_frontier), (updates, updates_frontier), output| {
            ordered.records.take_noting(readings, |cap, time| {
                if let Some(c) = checkpointer.as_mut() {
                    c.on_input(cap, time);
                }
            });
            ordered.take_updates(updates);
            let (readings_frontier, updates_frontier) =
                (readings_frontier.frontier(), updates_frontier.frontier());
            while let Some(next) = ordered.next(readings_frontier, updates_frontier) {
                let time = match &next {
                    Next::Updates(t, _) | Next::Records(t, _) => *t,
                };
                if let Some(c) = checkpointer.as_mut() {
                    register_through(time, c, &mut assets, &models, &settings, &mut emit);
                }
                // Everything before `time` is in: buckets and slides that end before it are
                // complete.
                close_buckets_before(time, epoch_ms, &mut assets, &models, &settings, &mut emit);
                match next {
                    Next::Updates(_, updates) => {
                        for update in updates {
                            // The old version's slides end here: its windows get no more.
                            if let Some(refs) = models.get(&update.name) {
                                for (asset, state) in assets.iter_mut() {
                                    if state.model.as_deref() == Some(update.name.as_str()) {
                                        state.flush_slide(asset, refs, &settings, &mut emit);
                                    }
                                }
                            }
                            apply_update(&mut models, &update, settings.bins);
                        }
                    }
                    Next::Records(time, mut group) => {
                        // By event time, stably: a sensor's readings come from one worker in
                        // order, and different sensors add into different sums.
                        if !group.is_sorted_by_key(|r| r.ts) {
                            group.sort_by_key(|r| r.ts);
                        }
                        for reading in group {
                            admit(
                                reading,
                                time,
                                &mut assets,
                                &models,
                                &models_settings,
                                &settings,
                                &mut emit,
                            );
                        }
                    }
                }
            }
            let both = crate::checkpoint::earlier(readings_frontier, updates_frontier);
            if let (Some(c), Some(&f)) = (checkpointer.as_mut(), both.first()) {
                register_through(f, c, &mut assets, &models, &settings, &mut emit);
            }
            let in_flight = ordered.in_flight(readings_frontier, updates_frontier);
            close_buckets_before(in_flight, epoch_ms, &mut assets, &models, &settings, &mut emit);
            if !emit.is_empty() {
                let cap = ordered.records.capability.as_ref().expect("observations come from held readings");
                emit.sort_by_key(|(t, _)| *t);
                let mut items = emit.drain(..).peekable();
                while let Some((t, first)) = items.next() {
                    let time_cap = cap.delayed(&t);
                    let mut session = output.session(&time_cap);
                    session.give(first);
                    while let Some((_, item)) = items.next_if(|(u, _)| *u == t) {
                        session.give(item);
                    }
                }
            }
            if let Some(c) = checkpointer.as_mut() {
                if let Some(b) = c.passed(both.borrow(), || snapshot(&assets)) {
                    assets.values_mut().for_each(|s| s.release_from(b));
                }
            }
            // Hold the capability at the earliest reading still pending, in an open bucket, or
            // in a slide not yet flushed.
            ordered.records.hold(assets.values().filter_map(AssetState::owed).min());
        }
    })
}

/// The stage's name in checkpoints.
const CHECKPOINT_COMPONENT: &str = "drift_observe";

/// Every asset's state, for a checkpoint.
fn snapshot(assets: &FxHashMap<CompactString, AssetState>) -> Vec<u8> {
    crate::checkpoint::encode(&assets.iter().collect::<Vec<_>>())
}

/// Registers the checkpoint boundaries up to `time` (every input before it applied). The state
/// at a boundary must hold exactly what comes out at or after it: buckets and slides whose
/// outputs come out before the boundary are closed before it is registered, and a range of
/// boundaries registered as one part ends before the next output that an open bucket or slide
/// owes (later boundaries are registered once it is out).
fn register_through(
    time: EventTime,
    checkpointer: &mut crate::checkpoint::Checkpointer,
    assets: &mut FxHashMap<CompactString, AssetState>,
    models: &FxHashMap<String, Arc<References>>,
    settings: &Params,
    emit: &mut Vec<(EventTime, Observation)>,
) {
    while let Some(next) = checkpointer.next().filter(|n| *n <= time) {
        for (asset, state) in assets.iter_mut() {
            let Some(refs) = state.model.as_ref().and_then(|m| models.get(m)) else { continue };
            if state.bucket.is_some_and(|b| b + state.bucket_ms < next) {
                close_bucket(asset, state, refs, settings, emit);
            }
            if state.slide.as_ref().is_some_and(|slide| slide.enter < next) {
                state.flush_slide(asset, refs, settings, emit);
            }
        }
        let owed = assets
            .values()
            .filter_map(|s| s.bucket.map(|b| b + s.bucket_ms))
            .chain(assets.values().filter_map(|s| s.slide.as_ref().map(|slide| slide.enter)))
            .min();
        let upto = owed.map_or(time, |o| o.min(time)).max(next);
        if let Some(b) = checkpointer.before(upto, || snapshot(assets)) {
            assets.values_mut().for_each(|s| s.release_from(b));
        }
    }
}

fn close_buckets_before(
    limit: EventTime,
    epoch_ms: u64,
    assets: &mut FxHashMap<CompactString, AssetState>,
    models: &FxHashMap<String, Arc<References>>,
    settings: &Params,
    emit: &mut Vec<(EventTime, Observation)>,
) {
    for (asset, state) in assets.iter_mut() {
        let Some(refs) = state.model.as_ref().and_then(|m| models.get(m)) else { continue };
        if state.bucket.is_some_and(|b| epoch(b.saturating_add(state.bucket_ms.max(1) - 1), epoch_ms) < limit)
        {
            close_bucket(asset, state, refs, settings, emit);
        }
        // A slide no reading still in flight can add to is complete.
        if state.slide.as_ref().is_some_and(|slide| slide.enter < limit) {
            state.flush_slide(asset, refs, settings, emit);
        }
    }
}

fn admit(
    reading: ReadingRow,
    time: EventTime,
    assets: &mut FxHashMap<CompactString, AssetState>,
    models: &FxHashMap<String, Arc<References>>,
    models_settings: &ModelsSettings,
    settings: &Params,
    emit: &mut Vec<(EventTime, Observation)>,
) {
    let state = match assets.get_mut(reading.asset_id.as_str()) {
        Some(state) => state,
        None => {
            let model = models_settings.model_for(&reading.asset_id).map(str::to_owned);
            assets.entry(reading.asset_id.clone()).or_insert(AssetState::new(model))
        }
    };
    let Some(refs) = state.model.as_ref().and_then(|m| models.get(m)) else { return };
    if state.version != refs.version {
        // A new version: its references replace the old ones; the open bucket (aligned for
        // the old one) is dropped, and the detectors learn their reference again.
        // Entries of the old version stay in the windows until they leave.
        let live = std::mem::take(&mut state.live);
        *state = AssetState::new(state.model.take());
        state.live = live;
        state.version = refs.version;
        state.bucket_ms = refs.artifact.bucket_ms.max(1);
        state.features = FeatureState::new(&refs.plan);
        state.accumulator = BucketAccumulator::new(refs.plan.sensors.len());
        state.detectors = (0..refs.plan.sensors.len())
            .map(|_| SensorDetector {
                detector: ChangeDetector::new(&settings.sequential),
                since: None,
                block_sum: 0.0,
                block_count: 0,
            })
            .collect();
        state.sensor_ids = vec![None; refs.plan.sensors.len()];
    }
    let bucket = reading.ts - reading.ts % state.bucket_ms;
    if state.bucket.is_some_and(|b| b != bucket) {
        let asset = reading.asset_id.clone();
        close_bucket(&asset, state, refs, settings, emit);
    }
    if state.bucket.is_none() {
        state.bucket = Some(bucket);
        state.bucket_time = Some(time);
        state.clean = true;
    }
    if let Some(i) = refs.plan.sensor_index(sensor_name(&reading.sensor_id)) {
        state.accumulator.add(i, reading.value);
        if state.sensor_ids[i].is_none() {
            state.sensor_ids[i] = Some(reading.sensor_id.clone());
        }
    }
    state.clean &= reading.quality == 0 && reading.score < UNCLEAN_SCORE;
}

fn close_bucket(
    asset: &CompactString,
    state: &mut AssetState,
    refs: &References,
    settings: &Params,
    emit: &mut Vec<(EventTime, Observation)>,
) {
    let Some(bucket) = state.bucket.take() else { return };
    state.bucket_time = None;
    let end = bucket + state.bucket_ms;
    let sensors = state.accumulator.take().to_vec();
    state.features.push(&refs.plan, &sensors, &mut state.row);
    let enter = end.div_ceil(settings.slide_ms) * settings.slide_ms;
    if state.slide.as_ref().is_some_and(|slide| slide.enter != enter) {
        state.flush_slide(asset, refs, settings, emit);
    }
    let slide = state.slide.get_or_insert_with(|| Slide { enter, counts: BTreeMap::new() });
    for (i, value) in sensors.iter().enumerate() {
        if let Some(bin) = value.and_then(|v| refs.sensors[i].as_ref()?.bin_of(v)) {
            *slide.counts.entry((false, i as u16, bin)).or_default() += 1;
        }
    }
    for (j, value) in state.row.iter().enumerate() {
        if let Some(bin) = refs.features[j].as_ref().and_then(|bins| bins.bin_of(*value)) {
            *slide.counts.entry((true, j as u16, bin)).or_default() += 1;
        }
    }
    for (i, value) in sensors.iter().enumerate() {
        let (Some(value), Some(sensor_id)) = (value, &state.sensor_ids[i]) else { continue };
        if !settings.sequential.enabled {
            continue;
        }
        let detector = &mut state.detectors[i];
        let since = *detector.since.get_or_insert(bucket);
        detector.block_sum += value;
        detector.block_count += 1;
        if detector.block_count < settings.block_buckets {
            continue;
        }
        let block_mean = detector.block_sum / f64::from(detector.block_count);
        (detector.block_sum, detector.block_count) = (0.0, 0);
        if let Some(change) = detector.detector.update(block_mean) {
            let (statistic, signed) = match change.kind {
                ChangeKind::MeanUp => (DriftStatistic::MeanShift, change.statistic),
                ChangeKind::MeanDown => (DriftStatistic::MeanShift, -change.statistic),
                ChangeKind::VarianceUp => (DriftStatistic::VarianceShift, change.statistic),
                ChangeKind::VarianceDown => (DriftStatistic::VarianceShift, -change.statistic),
            };
            let event = DriftEvent {
                event_id: String::new(),
                asset_id: asset.clone(),
                sensor_id: Some(sensor_id.clone()),
                feature: None,
                statistic,
                value: signed,
                threshold: change.threshold,
                window_start: since,
                window_end: end,
                count: change.samples,
                model_version: refs.label.clone(),
            }
            .with_id();
            emit.push((end, Observation::Drift(Box::new(event))));
            detector.since = None;
        }
    }
    if !settings.rows {
        return;
    }
    let row = TrainingRow {
        model: state.model.clone().unwrap_or_default(),
        asset_id: asset.to_string(),
        ts: bucket,
        features: state.row.clone(),
        sensors,
        clean: state.clean,
    };
    emit.push((end, Observation::Row(Box::new(row))));
}

impl AssetState {
    fn new(model: Option<String>) -> AssetState {
        AssetState {
            model,
            version: 0,
            bucket_ms: 1,
            features: FeatureState::default(),
            accumulator: BucketAccumulator::default(),
            bucket: None,
            bucket_time: None,
            clean: true,
            detectors: Vec::new(),
            sensor_ids: Vec::new(),
            row: Vec::new(),
            slide: None,
            live: Vec::new(),
        }
    }

    /// The earliest time this asset still owes outputs at: its open bucket's end (where the
    /// bucket's row and sequential drift go out), or its slide's.
    ///
    /// Holding at the bucket's end, not at its first reading, matters in the retraining loop:
    /// the model updates fed back reach this stage `switch_delay_ms` after what it holds, and
    /// it closes a bucket only once they have passed the bucket's end. Held at the first
    /// reading, a bucket longer than the delay waited for itself, and the run stalled.
    fn owed(&self) -> Option<EventTime> {
        let bucket = self.bucket_time.map(|first| match self.bucket {
            Some(start) => first.max(start.saturating_add(self.bucket_ms)),
            None => first,
        });
        bucket.into_iter().chain(self.slide.as_ref().map(|s| s.enter)).min()
    }

    /// From now on, what is owed leaves at `boundary` or later (as in the asset stage: what
    /// comes out after a registered boundary comes partly of inputs after it, which no state
    /// downstream may hold at the boundary). Nothing is emitted before the boundary anyway:
    /// buckets and slides that end before it are closed before it is registered, so only the
    /// capability held for an open bucket that began before it moves up.
    fn release_from(&mut self, boundary: EventTime) {
        if let Some(t) = self.bucket_time.as_mut() {
            *t = (*t).max(boundary);
        }
        self.live.retain(|e| e.leave > boundary);
    }

    /// Emits the slide's counts as window observations.
    fn flush_slide(
        &mut self,
        asset: &CompactString,
        refs: &References,
        settings: &Params,
        emit: &mut Vec<(EventTime, Observation)>,
    ) {
        let Some(slide) = self.slide.take() else { return };
        let (window, step) = (settings.window_ms, settings.slide_ms);
        let leave = (slide.enter + window).div_ceil(step) * step;
        for ((is_feature, index, bin), count) in slide.counts {
            let subject = if is_feature {
                refs.artifact.features[usize::from(index)].clone()
            } else {
                match &self.sensor_ids[usize::from(index)] {
                    Some(id) => id.to_string(),
                    None => continue,
                }
            };
            let key = WindowKey::new(refs.label.clone(), asset.to_string(), subject, is_feature);
            let entry = WindowEntry { key, bin, enter: slide.enter, leave, count };
            if settings.keep_live {
                self.live.push(entry.clone());
            }
            emit.push((slide.enter, Observation::Window(entry)));
        }
    }
}
