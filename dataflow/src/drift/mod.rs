//! The drift stage: how far live data has moved from each serving model's reference, and the
//! retraining it leads to.
//!
//! ```text
//! sensor-stage events ─► observe (by asset: buckets, sequential detectors) ─┬─► windows (differential) ─► judge ─┬─► drift events
//!                                                                            └─► training rows ─► retrain ◄──────┘ (requests)
//!                                                        model updates ◄─(loop, + switch_delay_ms)─┘
//! ```
//!
//! The loop's delay is what makes a retrained version switch at one event time everywhere:
//! the retrainer decides at `t`, and every worker's model-update input receives the version at
//! `t + switch_delay_ms`, before any reading of that time.

pub mod observe;
pub mod retrain;
pub mod settings;
pub mod windows;

use std::sync::Arc;

use millstream_events::checkpoint::WorkerCheckpoints;
use millstream_events::{EventTime, SinkEvent};
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Concat, ConnectLoop, Feedback, Probe};
use timely::dataflow::{ProbeHandle, Scope, Stream};

use crate::models::{ModelUpdate, ModelsSettings};
use crate::stats::RunStats;
use observe::Observation;
use retrain::{Retrained, TrainerInput};
use windows::Judgement;

/// The drift stage's outputs.
pub struct DriftOutputs<'scope> {
    /// Drift events and model lineage, for the sinks.
    pub events: Stream<'scope, EventTime, Vec<SinkEvent>>,
    /// Every model update: the store's and the retrainer's, broadcast, for the asset stage.
    pub updates: Stream<'scope, EventTime, Vec<ModelUpdate>>,
}

/// Builds the drift stage on the sensor stage's `events`, with the store's model `updates`
/// (already broadcast).
pub fn drift_stage<'scope>(
    scope: Scope<'scope, EventTime>,
    events: Stream<'scope, EventTime, Vec<SinkEvent>>,
    store_updates: Stream<'scope, EventTime, Vec<ModelUpdate>>,
    settings: Arc<ModelsSettings>,
    epoch_ms: u64,
    stats: Arc<RunStats>,
    checkpoints: Option<WorkerCheckpoints>,
) -> DriftOutputs<'scope> {
    let (handle, updates) = if settings.retrain.enabled {
        let (handle, retrained) = scope.feedback::<Vec<ModelUpdate>>(settings.retrain.switch_delay_ms.max(1));
        (Some(handle), store_updates.concat(retrained.broadcast()))
    } else {
        (None, store_updates)
    };

    // The loop is driven by the sensor stage's events: once they are complete, the stage's
    // components stop holding checkpoint boundaries (see `Checkpointer::driven_by`).
    let driver = ProbeHandle::new();
    let events = events.probe_with(&driver);
    let checkpoints = checkpoints.map(|c| (c, driver));
    let observations =
        observe::observe(events, updates.clone(), Arc::clone(&settings), epoch_ms, checkpoints.clone());
    let window_entries = observations.clone().flat_map(|o| match o {
        Observation::Window(entry) => Some(entry),
        _ => None,
    });
    let recorder = Arc::clone(&stats);
    let sequential = observations.clone().flat_map(move |o| match o {
        Observation::Drift(event) => {
            recorder.record_drift(&event);
            Some(SinkEvent::Drift(event))
        }
        _ => None,
    });
    let histograms = windows::window_histograms(window_entries, &settings.drift);
    let judged = windows::judge(
        histograms,
        updates.clone(),
        settings.drift.clone(),
        settings.retrain.clone(),
        Arc::clone(&stats),
        checkpoints.clone(),
    );
    let recorder = Arc::clone(&stats);
    let window_drift = judged.clone().flat_map(move |j| match j {
        Judgement::Drift(event) => {
            recorder.record_drift(&event);
            Some(SinkEvent::Drift(event))
        }
        Judgement::Retrain(_) => None,
    });
    let mut events = sequential.concat(window_drift);

    if let Some(handle) = handle {
        let rows = observations.flat_map(|o| match o {
            Observation::Row(row) => Some(TrainerInput::Row(row)),
            _ => None,
        });
        let requests = judged.flat_map(|j| match j {
            Judgement::Retrain(request) => Some(TrainerInput::Request(request)),
            Judgement::Drift(_) => None,
        });
        let retrained = retrain::retrain(
            rows.concat(requests),
            updates.clone(),
            Arc::clone(&settings),
            Arc::clone(&stats),
            checkpoints,
        );
        events = events.concat(retrained.clone().flat_map(move |r| {
            let event = retrain::lineage_event(&r)?;
            if let SinkEvent::ModelVersion(lineage) = &event {
                stats.record_model_version(lineage);
            }
            Some(event)
        }));
        retrained
            .flat_map(|r| match r {
                Retrained::Update(update) => Some(update),
                Retrained::Lineage(_) => None,
            })
            .connect_loop(handle);
    }
    DriftOutputs { events, updates }
}
