//! The `postgres://` sink stage: every worker writes its own share of the events over its own
//! connection (so several connections work in parallel), in frontier-complete batches.
//!
//! A batch holds events whose time the frontier has passed, gathered until it reaches
//! `batch_rows` or has waited `max_delay`, or the input ends. Batches are committed by a
//! writer thread of the worker, so the dataflow keeps computing while PostgreSQL commits (a
//! pipeline); at most [`IN_FLIGHT`] batches are outstanding, and when that many are, the worker
//! waits: backpressure, not unbounded buffering. The stage holds a capability for the oldest
//! time not yet committed, so a probe after it passes a time only once its rows are durable.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millstream_events::{EventTime, SinkEvent};
use millstream_sinks::postgres::writer::{
    Backoff, CheckpointCommit, Circuit, PgBatch, PgWriter, WriteReport,
};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use crate::health::{ComponentHealth, Health};
use crate::stash::Stash;
use crate::stats::RunStats;

/// Batches committing (or queued to commit) at once, per worker.
pub const IN_FLIGHT: usize = 2;

/// Batch shaping for the PostgreSQL sink.
#[derive(Debug, Clone, Copy)]
pub struct PgBatching {
    /// Commit once this many rows are ready.
    pub batch_rows: usize,
    /// Commit ready rows that have waited this long, however few.
    pub max_delay: Duration,
}

impl Default for PgBatching {
    fn default() -> Self {
        PgBatching { batch_rows: 50_000, max_delay: Duration::from_millis(500) }
    }
}

/// The PostgreSQL sink's settings beyond its URL.
#[derive(Clone, Default)]
pub struct PgSinkSettings {
    /// A password for URLs without one (from the config or `MILLSTREAM_POSTGRES__PASSWORD`).
    pub password: Option<String>,
    pub batching: PgBatching,
}

impl std::fmt::Debug for PgSinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSinkSettings")
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("batching", &self.batching)
            .finish()
    }
}

/// A worker's writer thread: batches in, acknowledgements out.
struct WriterThread {
    jobs: SyncSender<PgBatch>,
    done: Receiver<Result<(WriteReport, PgBatch), String>>,
}

impl WriterThread {
    fn spawn(
        url: &str,
        password: Option<&str>,
        worker: usize,
        wake: timely::scheduling::SyncActivator,
        health: Arc<Health>,
        stats: Arc<RunStats>,
    ) -> Self {
        let mut writer =
            PgWriter::new(url, password, Backoff::default()).unwrap_or_else(|e| fatal(&e.to_string()));
        let component = format!("postgres sink (worker {worker})");
        health.set(&component, ComponentHealth::Ready);
        let circuit_gauge = stats.sink_circuit_open.with_label_values(&["postgres"]);
        writer.observe_circuit(Box::new(move |circuit, why| {
            let state = match circuit {
                Circuit::Closed => {
                    circuit_gauge.set(0);
                    ComponentHealth::Ready
                }
                Circuit::Open { .. } => {
                    circuit_gauge.set(1);
                    ComponentHealth::NotReady(why.to_owned())
                }
            };
            health.set(&component, state);
        }));
        let rows = stats.sink_batch_rows.with_label_values(&["postgres"]);
        let seconds = stats.sink_batch_seconds.with_label_values(&["postgres"]);
        let freshness = stats.event_to_durable_seconds.with_label_values(&["postgres"]);
        let committed = stats.sink_records.with_label_values(&["postgres"]);
        let checkpoint_boundary = stats.checkpoint_boundary_seconds.with_label_values(&[&worker.to_string()]);
        let checkpoint_commits = stats.checkpoint_commits.clone();
        let checkpoint_bytes = stats.checkpoint_state_bytes.clone();
        let (jobs, job_queue) = mpsc::sync_channel::<PgBatch>(IN_FLIGHT);
        let (acks, done) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("pg-writer-{worker}"))
            .spawn(move || {
                for mut batch in job_queue {
                    let started = Instant::now();
                    let newest = batch.readings.iter().map(|r| r.ts).max();
                    let result =
                        writer.write(&mut batch).map(|report| (report, batch)).map_err(|e| e.to_string());
                    if let Ok((report, batch)) = &result {
                        rows.observe(report.rows as f64);
                        committed.inc_by(report.rows as u64);
                        seconds.observe(started.elapsed().as_secs_f64());
                        if let Some(ts) = newest {
                            freshness.observe(millstream_events::time::seconds_since(ts));
                        }
                        if let Some(checkpoint) = &batch.checkpoint {
                            checkpoint_boundary.set((checkpoint.covered_to / 1000) as i64);
                            checkpoint_commits.inc();
                            checkpoint_bytes
                                .inc_by(checkpoint.parts.iter().map(|p| p.state.len() as u64).sum());
                            tracing::debug!(
                                worker_id = worker,
                                boundary = checkpoint.covered_to,
                                parts = checkpoint.parts.len(),
                                "checkpoint committed"
                            );
                        }
                    }
                    let failed = result.is_err();
                    if acks.send(result).is_err() {
                        return;
                    }
                    let _ = wake.activate();
                    if failed {
                        return;
                    }
                }
            })
            .expect("cannot start a PostgreSQL writer thread");
        WriterThread { jobs, done }
    }
}

/// The sink's side of checkpoints: the worker's registry of parts, the boundary it has
/// covered so far, and a probe of the source.
pub struct SinkCheckpoints {
    checkpointing: Arc<millstream_events::checkpoint::Checkpointing>,
    registry: millstream_events::checkpoint::SharedRegistry,
    worker: usize,
    workers: usize,
    covered: u64,
    source: timely::dataflow::ProbeHandle<EventTime>,
}

impl SinkCheckpoints {
    pub fn new(
        checkpointing: Arc<millstream_events::checkpoint::Checkpointing>,
        registry: millstream_events::checkpoint::SharedRegistry,
        worker: usize,
        workers: usize,
        source: timely::dataflow::ProbeHandle<EventTime>,
    ) -> Self {
        // A restored run covers nothing before the boundary it restored: its parts begin there.
        let covered = checkpointing.restored_boundary().unwrap_or(0);
        SinkCheckpoints { checkpointing, registry, worker, workers, covered, source }
    }

    /// The checkpoint to commit with the rows before `frontier`, once it has passed a new
    /// boundary: every component of the worker has registered it by then.
    fn due(
        &mut self,
        frontier: timely::progress::frontier::AntichainRef<'_, EventTime>,
    ) -> Option<CheckpointCommit> {
        let &f = frontier.first()?;
        // Once the source has ended (a bounded run), components stop registering as their
        // inputs end, while the frontier may still step through boundaries (windows draining):
        // coverage after that would name boundaries some components have no part for. A restart
        // after a bounded run restores the last boundary passed while the source was live, and
        // replays the rest identically.
        if self.source.done() {
            return None;
        }
        let passed = millstream_events::checkpoint::last_passed(f, self.checkpointing.interval_ms)?;
        // A restored run's first commit is past its boundary: until then the generation it
        // restored from stays the newest complete one, at the same boundary.
        if passed <= self.covered {
            return None;
        }
        self.covered = passed;
        Some(CheckpointCommit {
            generation: self.checkpointing.generation,
            worker: self.worker,
            workers: self.workers,
            covered_to: passed,
            parts: self.registry.borrow_mut().take(),
        })
    }
}

pub fn write_postgres<'scope>(
    events: Stream<'scope, EventTime, Vec<SinkEvent>>,
    url: String,
    settings: PgSinkSettings,
    health: Arc<Health>,
    stats: Arc<RunStats>,
    mut checkpoints: Option<SinkCheckpoints>,
) -> Stream<'scope, EventTime, Vec<()>> {
    let scope = events.scope();
    let worker = scope.index();
    events.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "WritePostgres",
        move |_, info| {
            let activator = scope.activator_for(std::rc::Rc::clone(&info.address));
            let wake = scope.worker().sync_activator_for(info.address.to_vec());
            let thread = WriterThread::spawn(&url, settings.password.as_deref(), worker, wake, health, stats);
            let batching = settings.batching;
            let mut stash: Stash<SinkEvent> = Stash::default();
            let mut batch = PgBatch::default();
            // The oldest time in `batch` (ready, not yet sent) and when it became ready.
            let mut batch_since: Option<(EventTime, Instant)> = None;
            // The oldest time of each batch sent and not yet acknowledged, in send order (none
            // for a batch that carries only a checkpoint).
            let mut in_flight: VecDeque<Option<EventTime>> = VecDeque::new();
            // When the checkpoint in `batch` was attached, for a batch without rows.
            let mut checkpoint_since: Option<Instant> = None;
            // Emptied batches come back from the writer, to be filled again.
            let mut spare: Vec<PgBatch> = Vec::new();
            let acknowledge = move |ack: Result<(WriteReport, PgBatch), String>,
                                    in_flight: &mut VecDeque<Option<EventTime>>,
                                    spare: &mut Vec<PgBatch>| {
                match ack {
                    Ok((report, mut emptied)) => {
                        tracing::debug!(
                            worker_id = worker,
                            rows = report.rows,
                            replayed = report.replayed,
                            attempts = report.attempts,
                            "postgres batch committed"
                        );
                        in_flight.pop_front();
                        emptied.clear();
                        spare.push(emptied);
                    }
                    Err(message) => fatal(&message),
                }
            };
            move |(input, frontier), _output| {
                while let Ok(ack) = thread.done.try_recv() {
                    acknowledge(ack, &mut in_flight, &mut spare);
                }
                stash.take(input);
                let frontier = frontier.frontier();
                while let Some((time, events)) = stash.pop_ready(frontier) {
                    for event in events {
                        match event {
                            SinkEvent::Reading(r) => batch.readings.push(r),
                            SinkEvent::Anomaly(a) => batch.anomalies.push(*a),
                            SinkEvent::DeadLetter(d) => batch.dead_letters.push(d),
                            SinkEvent::MinuteAggregate(m) => batch.minutes.push(m),
                            // No table yet: asset scores go to the file sinks only.
                            SinkEvent::AssetScore(_) => {}
                            SinkEvent::Drift(d) => batch.drift.push(*d),
                            SinkEvent::ModelVersion(m) => batch.model_versions.push(*m),
                        }
                    }
                    batch_since.get_or_insert((time, Instant::now()));
                }
                if let Some(commit) = checkpoints.as_mut().and_then(|c| c.due(frontier)) {
                    match batch.checkpoint.as_mut() {
                        Some(pending) => pending.absorb(commit),
                        None => batch.checkpoint = Some(commit),
                    }
                    checkpoint_since.get_or_insert_with(Instant::now);
                }
                let ready = batch_since
                    .map(|(oldest, since)| (Some(oldest), since))
                    .or(checkpoint_since.map(|s| (None, s)));
                if let Some((oldest, since)) = ready {
                    let due = batch.rows() >= batching.batch_rows
                        || frontier.is_empty()
                        || since.elapsed() >= batching.max_delay;
                    if due {
                        // Backpressure: with the pipeline full, wait for a commit before sending.
                        while in_flight.len() >= IN_FLIGHT {
                            match thread.done.recv() {
                                Ok(ack) => acknowledge(ack, &mut in_flight, &mut spare),
                                Err(_) => fatal("the PostgreSQL writer thread stopped"),
                            }
                        }
                        let full = std::mem::replace(&mut batch, spare.pop().unwrap_or_default());
                        if thread.jobs.send(full).is_err() {
                            fatal("the PostgreSQL writer thread stopped");
                        }
                        in_flight.push_back(oldest);
                        batch_since = None;
                        checkpoint_since = None;
                    } else {
                        activator.activate_after(batching.max_delay.saturating_sub(since.elapsed()));
                    }
                }
                let owed = in_flight
                    .iter()
                    .flatten()
                    .next()
                    .copied()
                    .into_iter()
                    .chain(batch_since.map(|(t, _)| t))
                    .min();
                stash.hold(owed);
            }
        },
    )
}

fn fatal(message: &str) -> ! {
    eprintln!("millstream: fatal: {message}");
    std::process::exit(1);
}
