//! The dataflow, as built on every worker: source → (dead letters | exchange by sensor →
//! validate + score) → sinks.

use std::sync::Arc;

use millstream_connectors::file::file_source;
use millstream_connectors::kafka::{kafka_source, KafkaSourceHandle};
use millstream_connectors::plant_source::simulator_source;
use millstream_connectors::route::split_routed;
use millstream_events::{EventTime, SinkEvent, TimeModel};
use millstream_sinks::{JsonlSink, LineSink, SinkSpec, StdoutSink};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::{ProbeHandle, Scope};

use crate::render::render;
use crate::score::{score_readings, RunContext};
use crate::source::OpenedSource;

/// A graph built on one worker: the probe passes a time once every sink has it durably, and
/// a Kafka source leaves a handle to commit its last offsets once the run is complete.
pub struct Built {
    pub probe: ProbeHandle<EventTime>,
    pub kafka: Option<KafkaSourceHandle>,
}

/// Builds the graph into `scope`.
pub fn build<'scope>(
    scope: Scope<'scope, EventTime>,
    source: &OpenedSource,
    sinks: &[SinkSpec],
    context: Arc<RunContext>,
) -> Built {
    let time = TimeModel {
        allowed_lateness_ms: context.config.allowed_lateness_ms,
        epoch_ms: context.config.epoch_ms,
        max_future_ms: context.config.validation.max_future_ms,
    };
    let probe = ProbeHandle::new();
    let mut kafka = None;
    // With checkpoints: the worker's registry of the parts its components register, for its
    // PostgreSQL sink to commit (every clone of `checkpoints` shares it).
    let checkpoints = context
        .checkpointing
        .as_ref()
        .map(|c| (Arc::clone(c), millstream_events::checkpoint::Registry::shared()));
    let (accepted, rejected) = match source {
        OpenedSource::File(input) => file_source(scope, Arc::clone(input), time, context.workers_per_process),
        OpenedSource::Simulate(plant) => split_routed(simulator_source(scope, Arc::clone(plant), time)),
        OpenedSource::Kafka(input) => {
            let (stream, handle) =
                kafka_source(scope, Arc::clone(input), time, probe.clone(), checkpoints.clone())
                    .unwrap_or_else(|e| crate::fatal(&format!("cannot create the Kafka consumer: {e}")));
            kafka = Some(handle);
            split_routed(stream)
        }
    };
    // Whether the source has ended: the PostgreSQL sinks commit no checkpoint after that.
    let source_probe = ProbeHandle::new();
    let accepted = accepted.probe_with(&source_probe);
    let stats = Arc::clone(&context.stats);
    let decode_dead_letters = rejected.clone().map(move |dead| {
        stats.record_dead_letter(&dead);
        SinkEvent::DeadLetter(dead)
    });
    let mut events = score_readings(accepted, Arc::clone(&context), checkpoints.clone());
    if let Some(models) = &context.models {
        let feed =
            if scope.index() == 0 { context.model_feed.lock().expect("never poisoned").take() } else { None };
        let mut updates =
            crate::model_stream::model_updates(scope, rejected.clone(), feed, Arc::clone(&context.stats));
        let mut drift_events = None;
        if models.drift.enabled {
            let drift = crate::drift::drift_stage(
                scope,
                events.clone(),
                updates,
                Arc::clone(models),
                context.config.epoch_ms,
                Arc::clone(&context.stats),
                checkpoints.clone(),
            );
            updates = drift.updates;
            drift_events = Some(drift.events);
        }
        let updates = crate::model_stream::checkpoint_versions(updates, checkpoints.clone());
        events = crate::asset::score_assets(
            events,
            updates,
            Arc::clone(models),
            Arc::clone(&context),
            checkpoints.clone(),
        );
        if let Some(drift_events) = drift_events {
            events = events.concat(drift_events);
        }
    }
    let events = events.concat(decode_dead_letters);
    let emit_scores = context.config.emit_scores;
    let lines = events.clone().flat_map(move |event| render(&event, emit_scores));

    for spec in sinks {
        let written = match spec {
            SinkSpec::Jsonl(dir) => {
                let (dir, emit_scores) = (dir.clone(), context.config.emit_scores);
                crate::sink::write_lines(
                    lines.clone(),
                    &format!("jsonl:{}", dir.display()),
                    move || JsonlSink::create(&dir, emit_scores).map(|s| Box::new(s) as Box<dyn LineSink>),
                    context.stats.sink_records.with_label_values(&["jsonl"]),
                )
            }
            SinkSpec::Stdout => crate::sink::write_lines(
                lines.clone(),
                "stdout",
                || Ok(Box::new(StdoutSink::default()) as Box<dyn LineSink>),
                context.stats.sink_records.with_label_values(&["stdout"]),
            ),
            SinkSpec::Null => crate::sink::discard_lines(lines.clone()),
            SinkSpec::Postgres(url) => {
                let minutes = crate::aggregate::minute_aggregates(
                    events.clone(),
                    context.stats.aggregate_too_late.clone(),
                    checkpoints.clone(),
                );
                let rows = events.clone().concat(minutes);
                crate::pg_sink::write_postgres(
                    rows,
                    url.clone(),
                    context.postgres.clone(),
                    Arc::clone(&context.health),
                    Arc::clone(&context.stats),
                    checkpoints.clone().map(|(c, r)| {
                        crate::pg_sink::SinkCheckpoints::new(
                            c,
                            r,
                            scope.index(),
                            scope.peers(),
                            source_probe.clone(),
                        )
                    }),
                )
            }
            SinkSpec::Kafka(_) => crate::kafka_sink::write_kafka(
                events.clone(),
                context.kafka_sink.clone().expect("the run prepares the Kafka sink"),
                Arc::clone(&context.health),
                Arc::clone(&context.stats),
            ),
        };
        written.probe_with(&probe);
    }
    Built { probe, kafka }
}
