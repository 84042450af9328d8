//! The per-asset stage: readings exchanged by `asset_id`, aligned into event-time buckets,
//! turned into feature vectors and scored by the asset's k-means model.
//!
//! Every reading of an asset that has a model waits here until its bucket is complete (the
//! frontier has passed every time a reading of the bucket could have), then leaves with its
//! combined score: the larger of its own sensor's score and its asset's score for the bucket.
//! The asset score feeds an episode tracker (hysteresis), whose transitions are the `kmeans`
//! anomaly events; each names the sensor that contributes most, and explains the top three.
//!
//! Models arrive on their own stream ([`crate::model_stream`]), broadcast: an update at time
//! `t` is applied before any reading at `t` or later, on every worker, so the switch is the same
//! for any number of workers. Buckets that end before `t` are scored by the old version; a
//! bucket that straddles `t` (an `effective_from` off a bucket boundary) completes after the
//! switch and is scored by the new one. Late readings skip the stage's state (as they skip the sensor
//! detectors) and pass straight through.
//!
//! Per reading the stage does one hash lookup, by `sensor_id`: a sensor's slot remembers its
//! asset (an index, not a key to hash again) and its place in the asset's model plan, and an
//! asset remembers which model serves it (an index into the models in service). Readings are
//! kept in the containers they arrived in until their time is complete (no copy into one
//! buffer per time).

use std::collections::BTreeMap;
use std::sync::Arc;

use millstream_events::checkpoint::WorkerCheckpoints;
use millstream_events::{AssetScore, CompactString, EventTime, ReadingRow, Severity, SinkEvent};
use millstream_operators::episode::EpisodeTracker;
use millstream_operators::features::{sensor_name, BucketAccumulator, FeaturePlan, FeatureState};
use millstream_operators::kmeans;
use millstream_operators::model::{ModelArtifact, KMEANS_DETECTOR};
use rustc_hash::FxHashMap;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::models::{ModelUpdate, ModelsSettings};
use crate::monitor::{episode_event, EpisodeEvent};
use crate::score::RunContext;
use crate::stash::epoch;

/// A model version in service.
struct Served {
    version: u64,
    artifact: ModelArtifact,
    plan: FeaturePlan,
    label: String,
}

/// One asset's rolling state; a checkpoint holds it all but the model (the config's, by name,
/// at the version the model stream serves) and the scratch buffers.
#[derive(serde::Serialize, serde::Deserialize)]
struct AssetState {
    asset_id: CompactString,
    /// The model serving it, as an index into the stage's models (resolved once: the rules
    /// are static).
    #[serde(skip)]
    model: Option<usize>,
    /// The version its feature state was built for, and what that state computes.
    version: u64,
    feature_names: Vec<String>,
    bucket_ms: u64,
    features: FeatureState,
    /// The open bucket's start, its per-sensor sums, and its readings (to be released with
    /// their combined scores), and the earliest time among them.
    bucket: Option<EventTime>,
    accumulator: BucketAccumulator,
    held: Vec<ReadingRow>,
    held_time: Option<EventTime>,
    episode: EpisodeTracker,
    #[serde(skip)]
    row: Vec<f64>,
    /// The last score's deviations, reused (no allocation per bucket).
    #[serde(skip)]
    deviations: Vec<f64>,
}

/// What the stage knows of one sensor: the asset it last reported for, and its index among
/// that asset's model's sensors, as of a generation of the models in service.
struct SensorSlot {
    asset_id: CompactString,
    asset: usize,
    generation: u64,
    feature: Option<usize>,
}

/// The models in service, by index; an asset's index never changes, its version may.
#[derive(Default)]
struct Models {
    index: FxHashMap<String, usize>,
    served: Vec<Option<Arc<Served>>>,
    /// Bumped by every version put in service: what a [`SensorSlot`] computed before is stale.
    generation: u64,
}

impl Models {
    fn id(&mut self, name: &str) -> usize {
        match self.index.get(name) {
            Some(&id) => id,
            None => {
                self.served.push(None);
                self.index.insert(name.to_owned(), self.served.len() - 1);
                self.served.len() - 1
            }
        }
    }

    fn get(&self, id: Option<usize>) -> Option<&Served> {
        id.and_then(|id| self.served[id].as_deref())
    }

    fn apply(&mut self, update: ModelUpdate) {
        let served = update.artifact().map_err(|e| e.to_string()).and_then(|artifact| {
            let plan = FeaturePlan::from_names(&artifact.features).map_err(|e| e.to_string())?;
            let label = format!("{}@v{}", update.name, update.version);
            Ok(Served { version: update.version, artifact, plan, label })
        });
        match served {
            Ok(served) => {
                let id = self.id(&update.name);
                self.served[id] = Some(Arc::new(served));
                self.generation += 1;
            }
            Err(e) => {
                tracing::error!(model = %update.name, version = update.version, error = %e, "model refused")
            }
        }
    }
}

/// The stage's state on one worker.
struct Stage {
    settings: Arc<ModelsSettings>,
    context: Arc<RunContext>,
    epoch_ms: u64,
    models: Models,
    assets: Vec<AssetState>,
    asset_index: FxHashMap<CompactString, usize>,
    sensors: FxHashMap<CompactString, SensorSlot>,
    out: Vec<SinkEvent>,
    /// Events to release, each at its time.
    emit: Vec<(EventTime, SinkEvent)>,
}

pub fn score_assets<'scope>(
    events: Stream<'scope, EventTime, Vec<SinkEvent>>,
    updates: Stream<'scope, EventTime, Vec<ModelUpdate>>,
    settings: Arc<ModelsSettings>,
    context: Arc<RunContext>,
    checkpoints: Option<WorkerCheckpoints>,
) -> Stream<'scope, EventTime, Vec<SinkEvent>> {
    let (worker, peers) = (events.scope().index(), events.scope().peers());
    // Readings by asset; the few other events (anomalies, dead letters) pass through, routed
    // anywhere: no split of the stream before this stage, no concatenation after it.
    let pact = Exchange::new(|e: &SinkEvent| match e {
        SinkEvent::Reading(r) => millstream_events::routing::key_route(&r.asset_id),
        SinkEvent::Anomaly(a) => millstream_events::routing::key_route(&a.asset_id),
        _ => 0,
    });
    events.binary_frontier(updates, pact, Pipeline, "ScoreAssets", move |initial, _| {
        let mut stage = Stage {
            epoch_ms: context.config.epoch_ms.max(1),
            settings,
            context,
            models: Models::default(),
            assets: Vec::new(),
            asset_index: FxHashMap::default(),
            sensors: FxHashMap::default(),
            out: Vec::new(),
            emit: Vec::new(),
        };
        // The containers received at each time, as they came.
        let mut pending: BTreeMap<EventTime, Vec<Vec<SinkEvent>>> = BTreeMap::new();
        let mut pending_updates: BTreeMap<EventTime, Vec<ModelUpdate>> = BTreeMap::new();
        let mut capability: Option<Capability<EventTime>> = None;
        let mut checkpointer = checkpoints.map(|(checkpointing, registry)| {
            let saved: Vec<Vec<AssetState>> =
                crate::checkpoint::restore_parts(Some(&checkpointing), CHECKPOINT_COMPONENT);
            for saved in saved.into_iter().flatten() {
                if millstream_events::checkpoint::owner(
                    millstream_events::routing::key_route(&saved.asset_id),
                    peers,
                ) != worker
                {
                    continue;
                }
                stage.restore(saved);
            }
            if let Some(b) = checkpointing.restored_boundary() {
                stage.release_from(b);
            }
            // Readings held with open buckets leave at the boundary or later (see `release_from`).
            if let Some(held) = stage.assets.iter().filter_map(|a| a.held_time).min() {
                capability = Some(initial.delayed(&held));
            }
            crate::checkpoint::Checkpointer::for_worker(
                CHECKPOINT_COMPONENT,
                &checkpointing,
                registry,
                initial,
            )
        });
        move |(readings, readings_frontier), (updates, updates_frontier), output| {
            readings.for_each(|cap, data| {
                let Some(&time) = cap.least() else { return };
                if let Some(c) = checkpointer.as_mut() {
                    c.on_input(&cap, time);
                }
                if capability.as_ref().is_none_or(|c| time < *c.time()) {
                    capability = cap.retain_least(0);
                }
                pending.entry(time).or_default().push(std::mem::take(data));
            });
            updates.for_each(|cap, data| {
                let Some(&time) = cap.least() else { return };
                pending_updates.entry(time).or_default().append(data);
            });
            let complete = |t: &EventTime| {
                !readings_frontier.frontier().less_equal(t) && !updates_frontier.frontier().less_equal(t)
            };
            // Updates and readings, in time order; an update at t comes before readings at t.
            loop {
                let next_update = pending_updates.first_key_value().map(|(t, _)| *t).filter(&complete);
                let next_readings = pending.first_key_value().map(|(t, _)| *t).filter(&complete);
                match (next_update, next_readings) {
                    (Some(u), r) if r.is_none_or(|r| u <= r) => {
                        if let Some(b) = checkpointer.as_mut().and_then(|c| c.before(u, || stage.snapshot()))
                        {
                            stage.release_from(b);
                        }
                        // Every reading before `u` is in: a bucket that ends before `u` is
                        // complete, and is scored by the version it was aligned for.
                        stage.close_buckets_before(u);
                        for update in pending_updates.remove(&u).unwrap_or_default() {
                            stage.models.apply(update);
                        }
                    }
                    (_, Some(time)) => {
                        if let Some(b) =
                            checkpointer.as_mut().and_then(|c| c.before(time, || stage.snapshot()))
                        {
                            stage.release_from(b);
                        }
                        let group = pending.remove(&time).unwrap_or_default();
                        stage.admit_group(group, time);
                    }
                    _ => break,
                }
            }
            // Buckets that no reading still in flight can fall into are complete: those that end
            // before both the frontiers and the first time still pending.
            let in_flight = [readings_frontier.frontier().first(), updates_frontier.frontier().first()]
                .into_iter()
                .flatten()
                .copied()
                .chain(pending.first_key_value().map(|(t, _)| *t))
                .min()
                .unwrap_or(EventTime::MAX);
            stage.close_buckets_before(in_flight);
            if !stage.emit.is_empty() {
                let cap =
                    capability.as_ref().expect("outputs come from held readings, which hold a capability");
                stage.emit.sort_by_key(|(t, _)| *t);
                let mut items = stage.emit.drain(..).peekable();
                while let Some((t, first)) = items.next() {
                    let time_cap = cap.delayed(&t);
                    let mut session = output.session(&time_cap);
                    session.give(first);
                    while let Some((_, event)) = items.next_if(|(u, _)| *u == t) {
                        session.give(event);
                    }
                }
            }
            // Hold the capability at the earliest time still to be released.
            let earliest = pending
                .first_key_value()
                .map(|(t, _)| *t)
                .into_iter()
                .chain(stage.assets.iter().filter_map(|s| s.held_time))
                .min();
            match (earliest, capability.as_mut()) {
                (Some(t), Some(cap)) => cap.downgrade(&t),
                (None, _) => capability = None,
                (Some(_), None) => unreachable!("held readings came with a capability"),
            }
            if let Some(c) = checkpointer.as_mut() {
                let frontier =
                    crate::checkpoint::earlier(readings_frontier.frontier(), updates_frontier.frontier());
                if let Some(b) = c.passed(frontier.borrow(), || stage.snapshot()) {
                    stage.release_from(b);
                }
            }
        }
    })
}

/// The stage's name in checkpoints.
const CHECKPOINT_COMPONENT: &str = "assets";

/// The event time a reading is ordered by within its timely time (other events: 0).
fn event_ts(e: &SinkEvent) -> EventTime {
    match e {
        SinkEvent::Reading(r) => r.ts,
        _ => 0,
    }
}

impl Stage {
    /// Every asset's state, for a checkpoint.
    fn snapshot(&self) -> Vec<u8> {
        crate::checkpoint::encode(&self.assets)
    }

    /// From now on, held readings leave at `boundary` or later. Once a checkpoint boundary is
    /// registered, what the stage emits comes partly of inputs after it (readings that join an
    /// open bucket), and nothing downstream may count those in its state at the boundary:
    /// `readings_1m` would count the bucket's readings twice after a restore. A restore applies
    /// the same rule to the buckets it brings back, so both runs emit them at the same time.
    fn release_from(&mut self, boundary: EventTime) {
        for asset in &mut self.assets {
            if let Some(t) = asset.held_time.as_mut() {
                *t = (*t).max(boundary);
            }
        }
    }

    /// Puts an asset back as a checkpoint saved it.
    fn restore(&mut self, mut state: AssetState) {
        state.model = self.settings.model_for(&state.asset_id).map(|m| self.models.id(m));
        self.asset_index.insert(state.asset_id.clone(), self.assets.len());
        self.assets.push(state);
    }

    /// Admits the events of one complete time, by event time only, stably: each sensor's
    /// readings come from the one worker that owns it, already in event-time order, and
    /// readings of different sensors add into different sums, so their relative order changes
    /// nothing.
    fn admit_group(&mut self, mut group: Vec<Vec<SinkEvent>>, time: EventTime) {
        // Other events than readings go on as they are: where they lie in the group is no matter.
        let readings_ts = group.iter().flatten().filter_map(|e| match e {
            SinkEvent::Reading(r) => Some(r.ts),
            _ => None,
        });
        if !readings_ts.is_sorted() {
            let mut all: Vec<SinkEvent> = group.into_iter().flatten().collect();
            all.sort_by_key(event_ts);
            group = vec![all];
        }
        if self.context.emit_readings {
            for event in group.into_iter().flatten() {
                match event {
                    SinkEvent::Reading(reading) => match self.admit(&reading, time) {
                        Admitted::Held(asset) => self.assets[asset].held.push(reading),
                        Admitted::Passed => self.emit.push((time, SinkEvent::Reading(reading))),
                    },
                    event => self.emit.push((time, event)),
                }
            }
            return;
        }
        // Without a sink that wants the readings, a bucket's sums are all that is needed: the
        // readings are read where they lie, and only the other events are moved on.
        for events in group {
            let mut others = false;
            for event in &events {
                match event {
                    SinkEvent::Reading(reading) => {
                        self.admit(reading, time);
                    }
                    _ => others = true,
                }
            }
            if others {
                let others = events.into_iter().filter(|e| !matches!(e, SinkEvent::Reading(_)));
                self.emit.extend(others.map(|e| (time, e)));
            }
        }
    }

    /// Closes every asset's open bucket whose last possible timely time is before `limit`.
    fn close_buckets_before(&mut self, limit: EventTime) {
        let Stage { settings, context, epoch_ms, models, assets, out, emit, .. } = self;
        for state in assets.iter_mut() {
            let Some(bucket) = state.bucket else { continue };
            let Some(served) = models.get(state.model) else { continue };
            if epoch(bucket.saturating_add(served.artifact.bucket_ms - 1), *epoch_ms) < limit {
                close_bucket(state, served, settings, context, out, emit);
            }
        }
    }

    /// The asset a reading is for, and what its sensor's slot holds (generation, feature): one
    /// lookup by `sensor_id` when the sensor is known and reports for the same asset as before.
    fn locate(&mut self, reading: &ReadingRow) -> (usize, u64, Option<usize>) {
        if let Some(slot) = self.sensors.get(reading.sensor_id.as_str()) {
            if slot.asset_id == reading.asset_id {
                return (slot.asset, slot.generation, slot.feature);
            }
        }
        let asset = match self.asset_index.get(reading.asset_id.as_str()) {
            Some(&a) => a,
            None => {
                let model = self.settings.model_for(&reading.asset_id).map(|m| self.models.id(m));
                self.assets.push(AssetState::new(reading.asset_id.clone(), model));
                self.asset_index.insert(reading.asset_id.clone(), self.assets.len() - 1);
                self.assets.len() - 1
            }
        };
        let slot =
            SensorSlot { asset_id: reading.asset_id.clone(), asset, generation: u64::MAX, feature: None };
        self.sensors.insert(reading.sensor_id.clone(), slot);
        (asset, u64::MAX, None)
    }

    /// Adds a reading to its asset's open bucket (closing the one before when it is past).
    /// Says whether the reading is to be held with the bucket, to leave with its combined
    /// score, or passes through as it is.
    fn admit(&mut self, reading: &ReadingRow, time: EventTime) -> Admitted {
        if reading.late {
            return Admitted::Passed;
        }
        let (asset, generation, feature) = self.locate(reading);
        let Stage { settings, context, models, assets, sensors, out, emit, .. } = self;
        let state = &mut assets[asset];
        let Some(served) = models.get(state.model) else {
            return Admitted::Passed;
        };
        if state.version != served.version {
            // A new version keeps the rolling features when it computes the same ones.
            let same = state.feature_names == served.artifact.features
                && state.bucket_ms == served.artifact.bucket_ms;
            if !same {
                if state.bucket.is_some() {
                    // The open bucket was aligned for the old model: score it no more.
                    state.bucket = None;
                    for reading in state.held.drain(..) {
                        emit.push((state.held_time.unwrap_or(time), SinkEvent::Reading(reading)));
                    }
                    state.held_time = None;
                }
                state.features = FeatureState::new(&served.plan);
                state.accumulator = BucketAccumulator::new(served.plan.sensors.len());
                state.feature_names = served.artifact.features.clone();
                state.bucket_ms = served.artifact.bucket_ms;
            }
            state.version = served.version;
        }
        // The open bucket is aligned to this model's width: a reading within it needs no division.
        let (ts, width) = (reading.ts, served.artifact.bucket_ms);
        match state.bucket {
            Some(open) if ts >= open && ts - open < width => {}
            open => {
                let bucket = ts - ts % width;
                if open.is_some_and(|b| b != bucket) {
                    close_bucket(state, served, settings, context, out, emit);
                }
                state.bucket = Some(bucket);
            }
        }
        debug_assert_eq!(state.bucket, Some(ts - ts % width));
        // The sensor's place in the plan, computed once per generation of the models.
        let feature = if generation == models.generation {
            feature
        } else {
            let feature = served.plan.sensor_index(sensor_name(&reading.sensor_id));
            if let Some(slot) = sensors.get_mut(reading.sensor_id.as_str()) {
                (slot.generation, slot.feature) = (models.generation, feature);
            }
            feature
        };
        if let Some(sensor) = feature {
            state.accumulator.add(sensor, reading.value);
        }
        state.held_time = Some(state.held_time.map_or(time, |t| t.min(time)));
        Admitted::Held(asset)
    }
}

/// What becomes of an admitted reading (when the sinks want readings).
enum Admitted {
    /// Held with its asset's open bucket (the asset's index).
    Held(usize),
    /// Passed on as it is: late, or its asset has no model.
    Passed,
}

impl AssetState {
    fn new(asset_id: CompactString, model: Option<usize>) -> AssetState {
        AssetState {
            asset_id,
            model,
            version: 0,
            feature_names: Vec::new(),
            bucket_ms: 0,
            features: FeatureState::default(),
            bucket: None,
            accumulator: BucketAccumulator::default(),
            held: Vec::new(),
            held_time: None,
            episode: EpisodeTracker::default(),
            row: Vec::new(),
            deviations: Vec::new(),
        }
    }
}
/// Scores the open bucket; its episode transition (if any) and its held readings, with their
/// combined scores, go to `emit` at the bucket's earliest time.
fn close_bucket(
    state: &mut AssetState,
    served: &Served,
    settings: &ModelsSettings,
    context: &RunContext,
    out: &mut Vec<SinkEvent>,
    emit: &mut Vec<(EventTime, SinkEvent)>,
) {
    let Some(bucket) = state.bucket.take() else { return };
    let asset = state.asset_id.as_str();
    let at = state.held_time.take().unwrap_or(bucket);
    let values = state.accumulator.take();
    let mut row = std::mem::take(&mut state.row);
    state.features.push(&served.plan, values, &mut row);
    let scored = kmeans::score_into(&served.artifact, &row, std::mem::take(&mut state.deviations)).ok();
    context.stats.asset_buckets.inc();
    let asset_score = scored.as_ref().map_or(0.0, |s| s.score);
    if let Some(scored) = &scored {
        let threshold = served.artifact.calibration.threshold;
        let hot = (scored.score >= threshold).then(|| severity(scored.score, threshold));
        let before = state.episode.current().copied();
        if let Some(transition) = state.episode.observe(bucket, scored.score, hot, &settings.episodes) {
            let open = state.episode.current().copied().or(before).expect("a transition has an episode");
            let top = scored.top_contributors(1).first().map_or(0, |(i, _)| *i);
            let sensor = &served.plan.defs[top].sensor;
            let value = served.plan.sensor_index(sensor).and_then(|i| values[i]).unwrap_or(0.0);
            let anomaly = episode_event(EpisodeEvent {
                detector: KMEANS_DETECTOR,
                subject: asset,
                sensor_id: &format!("{asset}/{sensor}"),
                asset_id: asset,
                ts: bucket,
                value,
                score: scored.score,
                severity: open.severity,
                started_at: open.started_at,
                peak_score: open.peak_score,
                transition,
                model_version: Some(served.label.clone()),
                explanation: kmeans::explain(&served.artifact, scored, 3),
            });
            context.stats.record_anomaly(&anomaly);
            out.push(SinkEvent::Anomaly(Box::new(anomaly)));
        }
    }
    if let (Some(scored), true) = (&scored, context.config.emit_scores) {
        out.push(SinkEvent::AssetScore(AssetScore {
            asset_id: asset.into(),
            ts: bucket,
            score: scored.score,
            model_version: served.label.clone(),
        }));
    }
    state.row = row;
    if let Some(scored) = scored {
        state.deviations = scored.deviations;
    }
    for mut reading in state.held.drain(..) {
        if context.emit_readings {
            reading.score = reading.score.max(asset_score);
            out.push(SinkEvent::Reading(reading));
        }
    }
    emit.extend(out.drain(..).map(|e| (at, e)));
}

/// Severity of an asset score at or above `threshold`: low up to halfway to 1, medium up to
/// three quarters, high beyond.
fn severity(score: f64, threshold: f64) -> Severity {
    let span = (1.0 - threshold).max(f64::EPSILON);
    match (score - threshold) / span {
        x if x >= 0.75 => Severity::High,
        x if x >= 0.5 => Severity::Medium,
        _ => Severity::Low,
    }
}
