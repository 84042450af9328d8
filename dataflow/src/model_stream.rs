//! Model updates as a stream: one worker (the first of process 0) emits every new model version
//! at an event time, and the stream is broadcast, so every worker applies it at that same time.
//!
//! The operator follows the frontier of the readings (it reads a small stream that has the
//! source's frontier: the decode dead letters), holding a capability there, so:
//! - the versions found at start-up are emitted at the very first time, before any reading;
//! - a version found later is emitted at its `effective_from` event time when that is still
//!   ahead of the readings (deterministic: the same outputs at any number of workers), and
//!   otherwise at the readings' current frontier (the earliest time not yet complete);
//! - the stream never holds the dataflow back: its frontier is the source's.

use std::collections::BTreeMap;
use std::sync::Arc;

use millstream_events::checkpoint::{Checkpointing, WorkerCheckpoints};
use millstream_events::{DeadLetter, EventTime};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::{Scope, Stream};

use crate::models::{ModelFeed, ModelUpdate};
use crate::stats::RunStats;

pub fn model_updates<'scope>(
    scope: Scope<'scope, EventTime>,
    follow: Stream<'scope, EventTime, Vec<DeadLetter>>,
    feed: Option<ModelFeed>,
    stats: Arc<RunStats>,
) -> Stream<'scope, EventTime, Vec<ModelUpdate>> {
    let worker = scope.worker().clone();
    follow
        .unary_frontier(Pipeline, "ModelUpdates", move |capability, info| {
            let mut feed = feed;
            if let Some(feed) = &feed {
                *feed.waker.lock().expect("never poisoned") = Some(worker.sync_activator_for(info.address.to_vec()));
            }
            let mut initial = feed.as_mut().map(|f| std::mem::take(&mut f.initial)).unwrap_or_default();
            // Workers without the feed hold nothing back.
            let mut capability = feed.is_some().then_some(capability);
            move |(input, frontier), output| {
                input.for_each(|_, data| data.clear());
                let Some(cap) = capability.as_mut() else { return };
                if !initial.is_empty() {
                    for update in &initial {
                        stats.model_version.with_label_values(&[&update.name]).set(update.version as i64);
                    }
                    output.session(&*cap).give_iterator(initial.drain(..));
                }
                if let Some(feed) = &feed {
                    while let Ok(update) = feed.updates.try_recv() {
                        let now = *cap.time();
                        let effective = update.effective_from.unwrap_or(now);
                        let at = effective.max(now);
                        if effective < now {
                            tracing::warn!(model = %update.name, version = update.version, effective_from = effective, applied_from = at,
                                "model version arrived after its effective time: applied from the current frontier");
                        }
                        tracing::info!(model = %update.name, version = update.version, event_time = at, "switching model version");
                        stats.model_version.with_label_values(&[&update.name]).set(update.version as i64);
                        stats.model_switches.inc();
                        output.session(&cap.delayed(&at)).give(update);
                    }
                }
                match frontier.frontier().iter().min() {
                    Some(&t) if t > *cap.time() => cap.downgrade(&t),
                    Some(_) => {}
                    None => capability = None,
                }
            }
        })
        .broadcast()
}

/// The model versions' name in checkpoints.
const CHECKPOINT_COMPONENT: &str = "model_versions";

/// With checkpoints: passes `updates` (every model update, broadcast: the store's and the
/// retrainer's) on unchanged, and on the first worker registers the versions in service at
/// each boundary, the newest of each model applied before it. A restore serves those again
/// from its very start ([`restored_versions`], [`crate::models::start`]), whatever the store
/// holds by then: a version the crashed run switched to after the boundary must not serve
/// before its time, and one it never published must not be lost.
pub fn checkpoint_versions<'scope>(
    updates: Stream<'scope, EventTime, Vec<ModelUpdate>>,
    checkpoints: Option<WorkerCheckpoints>,
) -> Stream<'scope, EventTime, Vec<ModelUpdate>> {
    let Some((checkpointing, registry)) = checkpoints else { return updates };
    let worker = updates.scope().index();
    updates.unary_frontier(Pipeline, "ModelVersionsCheckpoint", move |initial, _| {
        // Every worker sees every update; one registers them.
        let mut checkpointer = (worker == 0).then(|| {
            crate::checkpoint::Checkpointer::for_worker(
                CHECKPOINT_COMPONENT,
                &checkpointing,
                registry,
                initial,
            )
        });
        let mut serving: BTreeMap<String, ModelUpdate> = BTreeMap::new();
        let mut pending: BTreeMap<EventTime, Vec<ModelUpdate>> = BTreeMap::new();
        let snapshot = |serving: &BTreeMap<String, ModelUpdate>| {
            crate::checkpoint::encode(&serving.values().collect::<Vec<_>>())
        };
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                let Some(&time) = cap.least() else { return };
                if let Some(c) = checkpointer.as_mut() {
                    c.on_input(&cap, time);
                    pending.entry(time).or_default().extend(data.iter().cloned());
                }
                output.session(&cap).give_container(data);
            });
            let Some(c) = checkpointer.as_mut() else { return };
            let frontier = frontier.frontier();
            while let Some(entry) = pending.first_entry() {
                if frontier.less_equal(entry.key()) {
                    break;
                }
                let (time, updates) = entry.remove_entry();
                c.before(time, || snapshot(&serving));
                for update in updates {
                    if serving.get(&update.name).is_none_or(|s| s.version < update.version) {
                        serving.insert(update.name.clone(), update);
                    }
                }
            }
            c.passed(frontier, || snapshot(&serving));
        }
    })
}

/// What a restored checkpoint says of the models: the versions in service at its boundary, and
/// those the retrainer had decided that switch at or after it.
pub fn restored_models(checkpointing: Option<&Checkpointing>) -> (Vec<ModelUpdate>, Vec<ModelUpdate>) {
    (restored_versions(checkpointing), crate::drift::retrain::restored_in_flight(checkpointing))
}

/// The versions in service at the restored boundary, newest per model.
fn restored_versions(checkpointing: Option<&Checkpointing>) -> Vec<ModelUpdate> {
    let saved: Vec<Vec<ModelUpdate>> = crate::checkpoint::restore_parts(checkpointing, CHECKPOINT_COMPONENT);
    let mut newest: BTreeMap<String, ModelUpdate> = BTreeMap::new();
    for update in saved.into_iter().flatten() {
        if newest.get(&update.name).is_none_or(|s| s.version < update.version) {
            newest.insert(update.name.clone(), update);
        }
    }
    newest.into_values().collect()
}
