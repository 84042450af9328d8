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

use std::collections::BTreeMap;
use std::sync::Arc;

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

/// A model version in service.
struct Served {
    version: u64,
    artifact: ModelArtifact,
    plan: FeaturePlan,
    label: String,
}

/// One asset's rolling state.
struct AssetState {
    /// The model serving it, by name (resolved once: the rules are static).
    model: Option<String>,
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
    row: Vec<f64>,
    /// The last score's deviations, reused (no allocation per bucket).
    deviations: Vec<f64>,
}

pub fn score_assets<'scope>(
    events: Stream<'scope, EventTime, Vec<SinkEvent>>,
    updates: Stream<'scope, EventTime, Vec<ModelUpdate>>,
    settings: Arc<ModelsSettings>,
    context: Arc<RunContext>,
) -> Stream<'scope, EventTime, Vec<SinkEvent>> {
    // Readings by asset; the few other events (anomalies, dead letters) pass through, routed
    // anywhere: no split of the stream before this stage, no concatenation after it.
    let pact = Exchange::new(|e: &SinkEvent| match e {
        SinkEvent::Reading(r) => crate::score::sensor_route(&r.asset_id),
        SinkEvent::Anomaly(a) => crate::score::sensor_route(&a.asset_id),
        _ => 0,
    });
    events.binary_frontier(updates, pact, Pipeline, "ScoreAssets", move |_, _| {
        let epoch_ms = context.config.epoch_ms.max(1);
        let mut models: FxHashMap<String, Arc<Served>> = FxHashMap::default();
        let mut assets: FxHashMap<CompactString, AssetState> = FxHashMap::default();
        let mut pending: BTreeMap<EventTime, Vec<SinkEvent>> = BTreeMap::new();
        let mut pending_updates: BTreeMap<EventTime, Vec<ModelUpdate>> = BTreeMap::new();
        let mut capability: Option<Capability<EventTime>> = None;
        let mut out: Vec<SinkEvent> = Vec::new();
        let mut emit: Vec<(EventTime, SinkEvent)> = Vec::new();
        move |(readings, readings_frontier), (updates, updates_frontier), output| {
            readings.for_each(|cap, data| {
                let Some(&time) = cap.least() else { return };
                if capability.as_ref().is_none_or(|c| time < *c.time()) {
                    capability = cap.retain_least(0);
                }
                pending.entry(time).or_default().append(data);
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
                        // Every reading before `u` is in: a bucket that ends before `u` is
                        // complete, and is scored by the version it was aligned for.
                        close_buckets_before(
                            u,
                            &mut assets,
                            &models,
                            epoch_ms,
                            &settings,
                            &context,
                            &mut out,
                            &mut emit,
                        );
                        for update in pending_updates.remove(&u).unwrap_or_default() {
                            apply(&mut models, update);
                        }
                    }
                    (_, Some(time)) => {
                        let mut group = pending.remove(&time).unwrap_or_default();
                        // By event time only, stably: each sensor's readings come from the one
                        // worker that owns it, already in event-time order, and readings of
                        // different sensors add into different sums, so their relative order
                        // changes nothing.
                        let ts = |e: &SinkEvent| match e {
                            SinkEvent::Reading(r) => r.ts,
                            _ => 0,
                        };
                        if !group.is_sorted_by_key(ts) {
                            group.sort_by_key(ts);
                        }
                        for event in group {
                            let SinkEvent::Reading(reading) = event else {
                                emit.push((time, event));
                                continue;
                            };
                            admit(
                                reading,
                                time,
                                &mut assets,
                                &models,
                                &settings,
                                &context,
                                &mut out,
                                &mut emit,
                            );
                        }
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
            close_buckets_before(
                in_flight,
                &mut assets,
                &models,
                epoch_ms,
                &settings,
                &context,
                &mut out,
                &mut emit,
            );
            if !emit.is_empty() {
                let cap =
                    capability.as_ref().expect("outputs come from held readings, which hold a capability");
                emit.sort_by_key(|(t, _)| *t);
                let mut items = emit.drain(..).peekable();
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
                .chain(assets.values().filter_map(|s| s.held_time))
                .min();
            match (earliest, capability.as_mut()) {
                (Some(t), Some(cap)) => cap.downgrade(&t),
                (None, _) => capability = None,
                (Some(_), None) => unreachable!("held readings came with a capability"),
            }
        }
    })
}

fn epoch(t: EventTime, epoch_ms: u64) -> EventTime {
    t - t % epoch_ms
}

/// Closes every asset's open bucket whose last possible timely time is before `limit`.
#[allow(clippy::too_many_arguments)]
fn close_buckets_before(
    limit: EventTime,
    assets: &mut FxHashMap<CompactString, AssetState>,
    models: &FxHashMap<String, Arc<Served>>,
    epoch_ms: u64,
    settings: &ModelsSettings,
    context: &RunContext,
    out: &mut Vec<SinkEvent>,
    emit: &mut Vec<(EventTime, SinkEvent)>,
) {
    for (asset, state) in assets.iter_mut() {
        let Some(bucket) = state.bucket else { continue };
        let Some(served) = state.model.as_ref().and_then(|m| models.get(m)) else { continue };
        if epoch(bucket.saturating_add(served.artifact.bucket_ms - 1), epoch_ms) < limit {
            close_bucket(asset, state, served, settings, context, out, emit);
        }
    }
}

fn apply(models: &mut FxHashMap<String, Arc<Served>>, update: ModelUpdate) {
    let served = update.artifact().map_err(|e| e.to_string()).and_then(|artifact| {
        let plan = FeaturePlan::from_names(&artifact.features).map_err(|e| e.to_string())?;
        let label = format!("{}@v{}", update.name, update.version);
        Ok(Served { version: update.version, artifact, plan, label })
    });
    match served {
        Ok(served) => {
            models.insert(update.name, Arc::new(served));
        }
        Err(e) => {
            tracing::error!(model = %update.name, version = update.version, error = %e, "model refused")
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn admit(
    reading: ReadingRow,
    time: EventTime,
    assets: &mut FxHashMap<CompactString, AssetState>,
    models: &FxHashMap<String, Arc<Served>>,
    settings: &ModelsSettings,
    context: &RunContext,
    out: &mut Vec<SinkEvent>,
    emit: &mut Vec<(EventTime, SinkEvent)>,
) {
    let pass_through = |reading: ReadingRow, emit: &mut Vec<(EventTime, SinkEvent)>| {
        if context.emit_readings {
            emit.push((time, SinkEvent::Reading(reading)));
        }
    };
    if reading.late {
        return pass_through(reading, emit);
    }
    let state = match assets.get_mut(reading.asset_id.as_str()) {
        Some(state) => state,
        None => {
            let model = settings.model_for(&reading.asset_id).map(str::to_owned);
            assets.entry(reading.asset_id.clone()).or_insert(AssetState::new(model))
        }
    };
    let Some(served) = state.model.as_ref().and_then(|m| models.get(m)) else {
        return pass_through(reading, emit);
    };
    if state.version != served.version {
        // A new version keeps the rolling features when it computes the same ones.
        let same =
            state.feature_names == served.artifact.features && state.bucket_ms == served.artifact.bucket_ms;
        if !same {
            if state.bucket.is_some() {
                // The open bucket was aligned for the old model: score it no more.
                state.bucket = None;
                for reading in state.held.drain(..) {
                    if context.emit_readings {
                        emit.push((state.held_time.unwrap_or(time), SinkEvent::Reading(reading)));
                    }
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
    let bucket = reading.ts - reading.ts % served.artifact.bucket_ms;
    if state.bucket.is_some_and(|b| b != bucket) {
        let asset = reading.asset_id.clone();
        close_bucket(&asset, state, served, settings, context, out, emit);
    }
    state.bucket = Some(bucket);
    if let Some(sensor) = served.plan.sensor_index(sensor_name(&reading.sensor_id)) {
        state.accumulator.add(sensor, reading.value);
    }
    state.held_time = Some(state.held_time.map_or(time, |t| t.min(time)));
    // Readings are held only to leave with their combined score; without a sink that wants
    // them, the bucket's sums are all that is needed.
    if context.emit_readings {
        state.held.push(reading);
    }
}

impl AssetState {
    fn new(model: Option<String>) -> AssetState {
        AssetState {
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
    asset: &str,
    state: &mut AssetState,
    served: &Served,
    settings: &ModelsSettings,
    context: &RunContext,
    out: &mut Vec<SinkEvent>,
    emit: &mut Vec<(EventTime, SinkEvent)>,
) {
    let Some(bucket) = state.bucket.take() else { return };
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
