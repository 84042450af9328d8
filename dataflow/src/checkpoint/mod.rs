//! Checkpoints of the dataflow's state, committed with the rows by each worker's PostgreSQL
//! sink, restored when a run starts.
//!
//! - **What is saved.** At every boundary (a multiple of `[checkpoint] interval_ms` of event
//!   time) each stateful component of a worker registers its state as of that boundary: the Kafka
//!   source its partitions' positions, watermarks and the records it emitted at or after the
//!   boundary; the sensor stage every sensor's validation, detector and episode state; the
//!   `readings_1m` stage its open minutes; the k-means stage its open buckets; the drift stage
//!   its observer, judge and retrainer (`crate::drift`); the first worker the model versions in
//!   service. Components keep registering from their first input,
//!   holding a capability at their next boundary so that the sink cannot pass a boundary before
//!   they have registered it.
//! - **When.** The worker's sink, once its frontier has passed a boundary, commits every part
//!   registered so far and the boundary it now covers, in the transaction of its rows.
//! - **Restore.** A run starts at the newest boundary that every worker of the last complete
//!   run covered. Every worker reads every old worker's parts and keeps the keys it owns under
//!   the new number of workers (sensors by their exchange hash, partitions by their owner), so
//!   a run may restart with another number of workers or processes. The source re-reads from
//!   the oldest record still in flight at the boundary and emits again exactly the records that
//!   were emitted at or after it, at the same times; everything after continues as before.
//!   Rows written after the boundary by the crashed run are written again, identically, and
//!   the sink's idempotent writes keep one copy.

pub mod settings;

use millstream_events::checkpoint::{boundary_after, boundary_at_or_before, Part, SharedRegistry};
use millstream_events::EventTime;
use timely::dataflow::operators::Capability;
use timely::dataflow::ProbeHandle;

pub use settings::CheckpointSettings;

pub use millstream_events::checkpoint::{decode, encode};

/// What a component inside the drift stage's feedback loop checkpoints with: the worker's
/// checkpoints, and a probe of the stream that drives the loop ([`Checkpointer::driven_by`]).
pub type LoopCheckpoints = (millstream_events::checkpoint::WorkerCheckpoints, ProbeHandle<EventTime>);

/// The earlier of two inputs' frontiers (event time is totally ordered): how far an operator
/// with two inputs has passed.
pub fn earlier(
    a: timely::progress::frontier::AntichainRef<'_, EventTime>,
    b: timely::progress::frontier::AntichainRef<'_, EventTime>,
) -> timely::progress::Antichain<EventTime> {
    a.iter().chain(b.iter()).min().copied().into_iter().collect()
}

/// Decodes every old worker's part of `component`, or ends the run: a checkpoint that cannot
/// be read must not be silently replaced by empty state.
pub fn restore_parts<T: serde::de::DeserializeOwned>(
    checkpointing: Option<&millstream_events::checkpoint::Checkpointing>,
    component: &str,
) -> Vec<T> {
    let Some(restored) = checkpointing.and_then(|c| c.restored.as_ref()) else { return Vec::new() };
    restored
        .states(component)
        .iter()
        .map(|bytes| decode(component, bytes).unwrap_or_else(|e| crate::fatal(&e)))
        .collect()
}

/// A frontier-driven operator's side of checkpointing: the next boundary to register, and a
/// capability held there.
pub struct Checkpointer {
    component: &'static str,
    interval_ms: u64,
    registry: SharedRegistry,
    next: Option<EventTime>,
    capability: Option<Capability<EventTime>>,
    /// For a component inside a feedback loop: the stream that drives it from outside.
    driver: Option<ProbeHandle<EventTime>>,
    /// Registering has ended: inputs that still come (a loop draining) start nothing again.
    ended: bool,
}

impl Checkpointer {
    /// `restored`: the boundary the run restored, when this component had state there; it
    /// registers from that boundary on, holding `initial` (the operator's initial capability)
    /// there. Otherwise it starts with its first input ([`Self::on_input`]).
    pub fn new(
        component: &'static str,
        interval_ms: u64,
        registry: SharedRegistry,
        restored: Option<EventTime>,
        initial: Capability<EventTime>,
    ) -> Self {
        let capability = restored.map(|b| {
            let mut cap = initial;
            cap.downgrade(&b);
            cap
        });
        Checkpointer {
            component,
            interval_ms,
            registry,
            next: restored,
            capability,
            driver: None,
            ended: false,
        }
    }

    /// [`Self::new`] for a run's checkpoints as a worker sees them.
    pub fn for_worker(
        component: &'static str,
        checkpointing: &millstream_events::checkpoint::Checkpointing,
        registry: SharedRegistry,
        initial: Capability<EventTime>,
    ) -> Self {
        Self::new(component, checkpointing.interval_ms, registry, checkpointing.restored_boundary(), initial)
    }

    /// [`Self::for_worker`] for a component inside the drift stage's loop, ended by `driver`
    /// ([`Self::driven_by`]).
    pub fn in_loop(
        component: &'static str,
        checkpointing: &millstream_events::checkpoint::Checkpointing,
        registry: SharedRegistry,
        driver: ProbeHandle<EventTime>,
        initial: Capability<EventTime>,
    ) -> Self {
        Self::for_worker(component, checkpointing, registry, initial).driven_by(driver)
    }

    /// Ends the registering once `driver` (a stream from outside the component's feedback
    /// loop) is complete. Inside a loop, the capability held at the next boundary comes back
    /// through the loop into the component's own input frontier, which then never empties: the
    /// component would keep registering boundary after boundary, each a step of the loop's delay
    /// further, and the run would never end. A driver completes only once the source has ended,
    /// and the sinks commit no checkpoint after that, so nothing later needs a part.
    pub fn driven_by(mut self, driver: ProbeHandle<EventTime>) -> Self {
        self.driver = Some(driver);
        self
    }

    /// The next boundary to register, once registering has started.
    pub fn next(&self) -> Option<EventTime> {
        self.next
    }

    /// An input at `time` with its capability: the first one starts the registering (the
    /// boundaries up to it had empty state, which needs no part).
    pub fn on_input(
        &mut self,
        capability: &timely::dataflow::operators::InputCapability<EventTime>,
        time: EventTime,
    ) {
        if self.next.is_none() && !self.ended {
            let next = boundary_after(time, self.interval_ms);
            self.next = Some(next);
            self.capability = Some(capability.delayed(&next, 0));
        }
    }

    /// The state is about to change at `time`: registers the boundaries passed before it,
    /// at which the state is what it is now. Returns the last boundary registered, if any: an
    /// operator must emit nothing before it from then on (what it emits later comes of inputs
    /// after it, which no downstream state at the boundary may hold).
    pub fn before(&mut self, time: EventTime, snapshot: impl FnOnce() -> Vec<u8>) -> Option<EventTime> {
        let next = self.next?;
        if next > time {
            return None;
        }
        // `next` is off the grid only right after a restore written with another interval:
        // the restored boundary, then the grid's boundaries after it.
        let to = boundary_at_or_before(time, self.interval_ms).max(next);
        self.registry.borrow_mut().register(Part {
            component: self.component,
            from: next,
            to,
            state: snapshot(),
        });
        self.next = Some(boundary_after(to, self.interval_ms));
        Some(to)
    }

    /// Everything before `frontier` is applied: registers the boundaries up to it and holds the
    /// capability at the next one. An empty frontier (the input ended) ends the registering.
    /// Returns the last boundary registered, as [`Self::before`] does.
    pub fn passed(
        &mut self,
        frontier: timely::progress::frontier::AntichainRef<'_, EventTime>,
        snapshot: impl FnOnce() -> Vec<u8>,
    ) -> Option<EventTime> {
        if self.driver.as_ref().is_some_and(|d| d.done()) {
            self.capability = None;
            self.next = None;
            self.ended = true;
            return None;
        }
        let Some(&f) = frontier.first() else {
            self.capability = None;
            self.next = None;
            self.ended = true;
            return None;
        };
        let registered = self.before(f, snapshot);
        if let (Some(next), Some(cap)) = (self.next, self.capability.as_mut()) {
            cap.downgrade(&next);
        }
        registered
    }
}

/// Checks that a run can checkpoint and reads the checkpoint to restore. `None` when
/// checkpoints are off.
pub fn prepare(
    settings: &CheckpointSettings,
    source: &crate::source::SourceSpec,
    sinks: &[millstream_sinks::SinkSpec],
    postgres: &crate::pg_sink::PgSinkSettings,
    cluster: &crate::run::ClusterOptions,
) -> anyhow::Result<Option<std::sync::Arc<millstream_events::checkpoint::Checkpointing>>> {
    let CheckpointSettings { interval_ms } = settings;
    if !settings.enabled() {
        return Ok(None);
    }
    if !matches!(source, crate::source::SourceSpec::Kafka(_)) {
        anyhow::bail!(
            "[checkpoint] needs a kafka:// source: a file or the simulator is read from its start by every run"
        );
    }
    let urls: Vec<&String> = sinks
        .iter()
        .filter_map(|s| match s {
            millstream_sinks::SinkSpec::Postgres(url) => Some(url),
            _ => None,
        })
        .collect();
    let [url] = urls.as_slice() else {
        anyhow::bail!(
            "[checkpoint] needs exactly one postgres:// sink (checkpoints are committed with its rows); got {}",
            urls.len()
        );
    };
    let found = millstream_sinks::postgres::checkpoint::load_blocking(url, postgres.password.as_deref())
        .map_err(|e| anyhow::anyhow!(e))?;
    match &found.restored {
        // At `warn`, the default level: resuming is what an operator looks for after a crash.
        Some(restored) => tracing::warn!(
            boundary = restored.boundary,
            generation = restored.generation,
            components = restored.parts.len(),
            process = cluster.process,
            "restored checkpoint"
        ),
        None => {
            tracing::info!(process = cluster.process, "no checkpoint to restore; starting from the beginning")
        }
    }
    Ok(Some(std::sync::Arc::new(millstream_events::checkpoint::Checkpointing {
        interval_ms: *interval_ms,
        generation: found.generation,
        restored: found.restored,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceSpec;
    use millstream_sinks::SinkSpec;

    fn prepare_with(
        source: &str,
        sinks: &[&str],
    ) -> anyhow::Result<Option<std::sync::Arc<millstream_events::checkpoint::Checkpointing>>> {
        let source: SourceSpec = source.parse().unwrap();
        let sinks: Vec<SinkSpec> = sinks.iter().map(|s| s.parse().unwrap()).collect();
        prepare(
            &CheckpointSettings { interval_ms: 10_000 },
            &source,
            &sinks,
            &Default::default(),
            &Default::default(),
        )
    }

    #[test]
    fn off_by_default_and_refused_where_it_cannot_hold() {
        let off = prepare(
            &CheckpointSettings::default(),
            &"file:x.jsonl".parse().unwrap(),
            &[],
            &Default::default(),
            &Default::default(),
        );
        assert!(off.unwrap().is_none());
        let pg = "postgres://u@127.0.0.1:1/db";
        let e = prepare_with("file:x.jsonl", &[pg]).unwrap_err().to_string();
        assert!(e.contains("needs a kafka:// source"), "{e}");
        let e = prepare_with("kafka://127.0.0.1:1/t", &["null"]).unwrap_err().to_string();
        assert!(e.contains("exactly one postgres:// sink") && e.contains("got 0"), "{e}");
        let e = prepare_with("kafka://127.0.0.1:1/t", &[pg, pg]).unwrap_err().to_string();
        assert!(e.contains("got 2"), "{e}");
    }
}
