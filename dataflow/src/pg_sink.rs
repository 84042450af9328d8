//! The `postgres://` sink stage: every worker writes its own share of the events over its own
//! connection (so several connections work in parallel), in frontier-complete batches.
//!
//! A batch holds every event whose time the frontier has passed, gathered until it reaches
//! `batch_rows` or has waited `max_delay`, or the input ends. The stage holds a capability for
//! the oldest time not yet committed, so a probe after it passes a time only once that time's
//! rows are durable; while a batch commits (or retries a lost connection) the worker blocks,
//! which is backpressure rather than unbounded buffering.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use millstream_events::{EventTime, SinkEvent};
use millstream_sinks::postgres::writer::{Backoff, PgBatch, PgWriter};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

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

pub fn write_postgres<'scope>(
    events: Stream<'scope, EventTime, Vec<SinkEvent>>,
    url: String,
    batching: PgBatching,
) -> Stream<'scope, EventTime, Vec<()>> {
    let scope = events.scope();
    let worker = scope.index();
    events.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "WritePostgres",
        move |_, info| {
            let activator = scope.activator_for(info.address);
            let mut writer =
                PgWriter::new(&url, Backoff::default()).unwrap_or_else(|e| fatal(&e.to_string()));
            let mut pending: BTreeMap<EventTime, Vec<SinkEvent>> = BTreeMap::new();
            let mut capability: Option<Capability<EventTime>> = None;
            let mut batch = PgBatch::default();
            // The oldest time in `batch` (ready, not yet committed) and when it became ready.
            let mut batch_since: Option<(EventTime, Instant)> = None;
            move |(input, frontier), _output| {
                input.for_each(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    if capability.as_ref().is_none_or(|c| time < *c.time()) {
                        capability = cap.retain_least(0);
                    }
                    pending.entry(time).or_default().append(data);
                });
                let frontier = frontier.frontier();
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let time = *entry.key();
                    for event in entry.remove() {
                        match event {
                            SinkEvent::Reading(r) => batch.readings.push(r),
                            SinkEvent::Anomaly(a) => batch.anomalies.push(a),
                            SinkEvent::DeadLetter(d) => batch.dead_letters.push(d),
                            SinkEvent::MinuteAggregate(m) => batch.minutes.push(m),
                        }
                    }
                    batch_since.get_or_insert((time, Instant::now()));
                }
                if let Some((_, since)) = batch_since {
                    let due = batch.rows() >= batching.batch_rows
                        || frontier.is_empty()
                        || since.elapsed() >= batching.max_delay;
                    if due {
                        match writer.write(&mut batch) {
                            Ok(report) => tracing::debug!(
                                worker,
                                rows = report.rows,
                                replayed = report.replayed,
                                attempts = report.attempts,
                                "postgres batch committed"
                            ),
                            Err(e) => fatal(&e.to_string()),
                        }
                        batch.clear();
                        batch_since = None;
                    } else {
                        activator.activate_after(batching.max_delay.saturating_sub(since.elapsed()));
                    }
                }
                let oldest =
                    batch_since.map(|(t, _)| t).into_iter().chain(pending.keys().next().copied()).min();
                match (oldest, capability.as_mut()) {
                    (Some(time), Some(cap)) => cap.downgrade(&time),
                    _ => capability = None,
                }
            }
        },
    )
}

fn fatal(message: &str) -> ! {
    eprintln!("millstream: fatal: {message}");
    std::process::exit(1);
}
