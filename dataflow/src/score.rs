//! The per-sensor stage: readings exchanged by `sensor_id`, buffered until the frontier
//! passes their time, then validated (duplicates, late policy) and scored in event-time order.

use std::collections::BTreeMap;
use std::sync::Arc;

use millstream_connectors::route::whole_batches;
use millstream_connectors::RecordResolver;
use millstream_events::checkpoint::WorkerCheckpoints;
use millstream_events::routing::{key_route, owner};
use millstream_events::{Accepted, Anomaly, DeadLetter, EventTime, Origin, ReadingRow, Reason, SinkEvent};
use rustc_hash::FxHashMap;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::config::PipelineConfig;
use crate::monitor::{Observed, SensorMonitor};
use crate::stats::RunStats;

/// Everything the stage (and the sinks after it) need besides the input: settings, the raw-text
/// resolver, and the process's shared counters and health.
pub struct RunContext {
    pub config: PipelineConfig,
    pub resolver: Arc<dyn RecordResolver>,
    pub stats: Arc<RunStats>,
    /// The PostgreSQL sinks' settings.
    pub postgres: crate::pg_sink::PgSinkSettings,
    /// The Kafka sink's settings, when there is one.
    pub kafka_sink: Option<crate::kafka_sink::KafkaSinkSettings>,
    /// Component health, for `/health/ready`.
    pub health: Arc<crate::health::Health>,
    /// Emit an event for every accepted reading (for `scores.jsonl` or the `readings` table);
    /// without it only anomalies and dead letters leave the stage.
    pub emit_readings: bool,
    /// Workers in each process of the cluster (the file source shares chunks among them).
    pub workers_per_process: usize,
    /// The per-asset models, when a store is configured.
    pub models: Option<Arc<crate::models::ModelsSettings>>,
    /// The watcher's feed of model versions: taken by the worker that emits model updates
    /// (the first worker of process 0).
    pub model_feed: std::sync::Mutex<Option<crate::models::ModelFeed>>,
    /// Checkpoints, when `[checkpoint] interval_ms` is set: the generation, and what the run
    /// restored.
    pub checkpointing: Option<Arc<millstream_events::checkpoint::Checkpointing>>,
}

impl RunContext {
    /// Whether the sensor stage passes every accepted reading on: for the sinks, or for the
    /// asset stage, which needs them whatever the sinks want.
    pub fn readings_leave_sensor_stage(&self) -> bool {
        self.emit_readings || self.models.is_some()
    }
}

/// Events a container (timely's usual container size: a small allocation).
const CHUNK: usize = timely::container::buffer::default_capacity::<SinkEvent>();

pub fn score_readings<'scope>(
    accepted: Stream<'scope, EventTime, Vec<Accepted>>,
    context: Arc<RunContext>,
    checkpoints: Option<WorkerCheckpoints>,
) -> Stream<'scope, EventTime, Vec<SinkEvent>> {
    let (worker, peers) = (accepted.scope().index(), accepted.scope().peers());
    // Sources route their readings in batches per owner; the exchange moves those whole.
    let pact = whole_batches(Accepted::route);
    accepted.unary_frontier(pact, "ScoreSensors", move |initial, _| {
        let mut sensor_index: FxHashMap<millstream_events::CompactString, u32> = FxHashMap::default();
        let mut sensors: Vec<Sensor> = Vec::new();
        let mut pending: BTreeMap<EventTime, Vec<(u32, Accepted)>> = BTreeMap::new();
        let mut capability: Option<Capability<EventTime>> = None;
        // Silence: per deadline (last reading + silence_ms), the sensors that fall silent then
        // unless they speak first; and a capability to announce it at the earliest deadline.
        let mut deadlines: BTreeMap<EventTime, Vec<u32>> = BTreeMap::new();
        let mut deadline_capability: Option<Capability<EventTime>> = None;
        let mut checkpointer = checkpoints.map(|(checkpointing, registry)| {
            let saved: Vec<Vec<SavedSensor>> =
                crate::checkpoint::restore_parts(Some(&checkpointing), CHECKPOINT_COMPONENT);
            for saved in saved.into_iter().flatten() {
                if owner(key_route(&saved.sensor_id), peers) != worker {
                    continue;
                }
                let index = sensors.len() as u32;
                let sensor_id = millstream_events::CompactString::from(saved.sensor_id.as_str());
                sensor_index.insert(sensor_id.clone(), index);
                if let Some(deadline) = saved.deadline {
                    deadlines.entry(deadline).or_default().push(index);
                    if deadline_capability.as_ref().is_none_or(|c| deadline < *c.time()) {
                        deadline_capability = Some(initial.delayed(&deadline));
                    }
                }
                sensors.push(Sensor {
                    scheduled: saved.deadline.is_some(),
                    monitor: SensorMonitor::restore(&saved.sensor_id, &context.config, saved.monitor),
                    sensor_id,
                    asset_id: saved.asset_id.into(),
                });
            }
            crate::checkpoint::Checkpointer::for_worker(
                CHECKPOINT_COMPONENT,
                &checkpointing,
                registry,
                initial,
            )
        });
        let silence_ms = context.config.silence_ms;
        let mut events: Vec<SinkEvent> = Vec::new();
        let mut anomalies: Vec<Anomaly> = Vec::new();
        let mut order: Vec<(EventTime, Origin, u32)> = Vec::new();
        // Emptied epoch groups, reused: every epoch has one, and growing a fresh one each time
        // was a measurable share of the run, paid again by every worker.
        let mut spare_groups: Vec<Vec<(u32, Accepted)>> = Vec::new();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                let Some(&time) = cap.least() else { return };
                if let Some(c) = checkpointer.as_mut() {
                    c.on_input(&cap, time);
                }
                if capability.as_ref().is_none_or(|c| time < *c.time()) {
                    capability = cap.retain_least(0);
                }
                let bucket = pending.entry(time).or_insert_with(|| spare_groups.pop().unwrap_or_default());
                bucket.reserve(data.len());
                for accepted in data.drain(..) {
                    let index = match sensor_index.get(accepted.reading.sensor_id.as_str()) {
                        Some(&i) => i,
                        None => {
                            let i = sensors.len() as u32;
                            sensor_index.insert(accepted.reading.sensor_id.clone(), i);
                            sensors.push(Sensor {
                                scheduled: false,
                                monitor: SensorMonitor::new(&accepted.reading.sensor_id, &context.config),
                                sensor_id: accepted.reading.sensor_id.clone(),
                                asset_id: accepted.reading.asset_id.clone(),
                            });
                            i
                        }
                    };
                    bucket.push((index, accepted));
                }
            });
            let frontier = frontier.frontier();
            if let Some(cap) = capability.as_mut() {
                let now = millstream_events::time::now_ms();
                while let Some(entry) = pending.first_entry() {
                    let time = *entry.key();
                    if frontier.less_equal(&time) {
                        break;
                    }
                    let mut group = entry.remove();
                    // Deadlines before this time have passed for every sensor of this worker:
                    // announce them before the readings that follow them.
                    fire_deadlines(
                        time,
                        &mut deadlines,
                        &mut deadline_capability,
                        &mut sensors,
                        silence_ms,
                        &context,
                        output,
                        &mut checkpointer,
                    );
                    if let Some(c) = checkpointer.as_mut() {
                        c.before(time, || snapshot(&sensors, &deadlines));
                    }
                    // Per sensor, by event time, ties by where the reading was read: the first
                    // copy of an exact repeat is the one kept. Sorting the whole group by
                    // (ts, origin) gives every sensor that order, and a group in file order
                    // is already sorted: sensors write into separate state, so how their
                    // readings interleave changes nothing. (Sorting by sensor first made
                    // every epoch a full sort at two workers, whose sensor numbering follows
                    // arrival, not the file: 2 % of the run, measured.) Sort small keys, not
                    // the records: an epoch's records can arrive interleaved from every source.
                    order.clear();
                    order.extend(
                        group.iter().enumerate().map(|(pos, (_, a))| (a.reading.ts, a.origin, pos as u32)),
                    );
                    if !order.is_sorted() {
                        order.sort_unstable();
                    }
                    let mut scored = 0;
                    // With an event a reading, the events go downstream in containers of
                    // timely's usual size, filled here (not copied into the output's own).
                    let chunk = if context.readings_leave_sensor_stage() { CHUNK } else { usize::MAX };
                    if chunk != usize::MAX {
                        events.reserve(chunk.min(group.len()));
                    }
                    for &(_, _, pos) in &order {
                        let (index, accepted) = &mut group[pos as usize];
                        let index = *index;
                        let sensor = &mut sensors[index as usize];
                        scored += process(
                            &mut sensor.monitor,
                            accepted,
                            time,
                            now,
                            &context,
                            &mut events,
                            &mut anomalies,
                        );
                        if events.len() >= chunk {
                            output.session(&cap.delayed(&time)).give_container(&mut events);
                            events.reserve(chunk);
                        }
                        // One deadline entry per sensor at a time: when it comes due and the
                        // sensor spoke since, it moves to the new deadline (see fire_deadlines).
                        // A deadline already behind this time has been announced: the sensor
                        // fell silent then, and a late reading (which leaves its state, and so
                        // its last time, as it was) does not bring it back.
                        if silence_ms > 0 && !sensor.scheduled {
                            let deadline =
                                sensor.monitor.last_ts().map(|last| last.saturating_add(silence_ms));
                            if let Some(deadline) = deadline.filter(|d| *d >= time) {
                                if deadline_capability.as_ref().is_none_or(|c| deadline < *c.time()) {
                                    deadline_capability = Some(cap.delayed(&deadline));
                                }
                                deadlines.entry(deadline).or_default().push(index);
                                sensor.scheduled = true;
                            }
                        }
                    }
                    context.stats.readings.inc_by(group.len() as u64);
                    context.stats.scored.inc_by(scored);
                    if !events.is_empty() {
                        output.session(&cap.delayed(&time)).give_container(&mut events);
                    }
                    group.clear();
                    if spare_groups.len() < SPARE_GROUPS && group.capacity() <= SPARE_GROUP_CAPACITY {
                        spare_groups.push(group);
                    }
                }
                match pending.first_key_value() {
                    Some((&time, _)) => cap.downgrade(&time),
                    None => capability = None,
                }
            }
            // Sensors whose deadline the frontier has passed, without a newer reading, are
            // silent. At the end of a finite input (an empty frontier) nobody falls silent.
            if frontier.is_empty() {
                deadlines.clear();
                deadline_capability = None;
            }
            if let Some(&bound) = frontier.first() {
                fire_deadlines(
                    bound,
                    &mut deadlines,
                    &mut deadline_capability,
                    &mut sensors,
                    silence_ms,
                    &context,
                    output,
                    &mut checkpointer,
                );
            }
            if let Some(c) = checkpointer.as_mut() {
                c.passed(frontier, || snapshot(&sensors, &deadlines));
            }
        }
    })
}

/// Emptied epoch groups kept for reuse: a few cover the epochs in flight at once.
const SPARE_GROUPS: usize = 4;
/// A group that grew larger than this (a burst, or catching up) is freed, not kept.
const SPARE_GROUP_CAPACITY: usize = 16 * 1024;

/// The stage's name in checkpoints.
const CHECKPOINT_COMPONENT: &str = "sensors";

/// One sensor in a checkpoint of the stage.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedSensor {
    sensor_id: String,
    asset_id: String,
    monitor: crate::monitor::MonitorState,
    /// Its pending silence deadline.
    deadline: Option<EventTime>,
}

/// The stage's state: every sensor, with its pending deadline.
fn snapshot(sensors: &[Sensor], deadlines: &BTreeMap<EventTime, Vec<u32>>) -> Vec<u8> {
    let mut deadline_of = vec![None; sensors.len()];
    for (&deadline, indices) in deadlines {
        for &i in indices {
            deadline_of[i as usize] = Some(deadline);
        }
    }
    let saved: Vec<SavedSensor> = sensors
        .iter()
        .zip(deadline_of)
        .map(|(s, deadline)| SavedSensor {
            sensor_id: s.sensor_id.to_string(),
            asset_id: s.asset_id.to_string(),
            monitor: s.monitor.snapshot(),
            deadline,
        })
        .collect();
    crate::checkpoint::encode(&saved)
}

/// Announces the sensors whose silence deadline lies before `bound` (all times before it are
/// complete) and that have not spoken since; then holds the deadline capability at the next
/// deadline.
#[allow(clippy::too_many_arguments)]
fn fire_deadlines(
    bound: EventTime,
    deadlines: &mut BTreeMap<EventTime, Vec<u32>>,
    deadline_capability: &mut Option<Capability<EventTime>>,
    sensors: &mut [Sensor],
    silence_ms: u64,
    context: &RunContext,
    output: &mut timely::dataflow::operators::generic::OutputBuilderSession<
        '_,
        EventTime,
        timely::container::CapacityContainerBuilder<Vec<SinkEvent>>,
    >,
    checkpointer: &mut Option<crate::checkpoint::Checkpointer>,
) {
    let Some(cap) = deadline_capability.as_mut() else { return };
    while let Some(entry) = deadlines.first_entry() {
        let deadline = *entry.key();
        if deadline >= bound {
            break;
        }
        // Firing changes the state at `deadline`: the boundaries up to it are registered first.
        if let Some(c) = checkpointer.as_mut() {
            c.before(deadline, || snapshot(sensors, deadlines));
        }
        let due = deadlines.remove(&deadline).expect("the first entry exists");
        for index in due {
            let sensor = &mut sensors[index as usize];
            sensor.scheduled = false;
            let due = sensor.monitor.last_ts().map(|t| t.saturating_add(silence_ms));
            if let Some(later) = due.filter(|d| *d > deadline) {
                // It spoke since: its deadline moved (possibly before `bound` too, in which
                // case this loop meets it again).
                deadlines.entry(later).or_default().push(index);
                sensor.scheduled = true;
                continue;
            }
            if let Some(event) =
                sensor.monitor.fall_silent(&sensor.sensor_id, &sensor.asset_id, deadline, silence_ms)
            {
                context.stats.record_anomaly(&event);
                output.session(&cap.delayed(&deadline)).give(SinkEvent::Anomaly(Box::new(event)));
            }
        }
    }
    match deadlines.first_key_value() {
        Some((&deadline, _)) => cap.downgrade(&deadline),
        None => *deadline_capability = None,
    }
}

/// One sensor of the stage.
struct Sensor {
    /// Whether it has an entry in the silence deadlines.
    scheduled: bool,
    monitor: SensorMonitor,
    sensor_id: millstream_events::CompactString,
    asset_id: millstream_events::CompactString,
}

/// Observes one reading. Its identifiers move into the event that carries it on: the
/// `Accepted` is not read again.
fn process(
    sensor: &mut SensorMonitor,
    accepted: &mut Accepted,
    time: EventTime,
    now: EventTime,
    context: &RunContext,
    events: &mut Vec<SinkEvent>,
    anomalies: &mut Vec<Anomaly>,
) -> u64 {
    let config = &context.config;
    let reading = &accepted.reading;
    let observed = sensor.observe(reading, accepted.late, now, config, anomalies);
    for anomaly in anomalies.drain(..) {
        context.stats.record_anomaly(&anomaly);
        events.push(SinkEvent::Anomaly(Box::new(anomaly)));
    }
    match observed {
        Observed::Scored { score } => {
            if context.readings_leave_sensor_stage() {
                events.push(reading_event(accepted, score, false, 0));
            }
            return 1;
        }
        Observed::Flagged(flags) => {
            context.stats.flagged.inc();
            if context.readings_leave_sensor_stage() {
                let late = accepted.late;
                events.push(reading_event(accepted, 0.0, late, flags.bits()));
            }
        }
        Observed::LateKept => {
            context.stats.late_kept.inc();
            if context.readings_leave_sensor_stage() {
                events.push(reading_event(accepted, 0.0, true, 0));
            }
        }
        Observed::Rejected { reason, detail } => {
            let detail = match (reason, detail) {
                (_, Some(detail)) => detail,
                (Reason::Duplicate, None) => {
                    "exact repeat of an earlier reading (same sensor_id, ts and value)".to_owned()
                }
                (Reason::Late, None) => format!(
                    "ts {} is older than the watermark {} (allowed lateness {} ms)",
                    millstream_events::time::format_rfc3339_millis(reading.ts),
                    millstream_events::time::format_rfc3339_millis(time),
                    config.allowed_lateness_ms
                ),
                (other, None) => other.as_str().to_owned(),
            };
            let dead = DeadLetter {
                reason,
                detail,
                raw: context.resolver.raw_text(accepted),
                source: context.resolver.location(accepted),
            };
            context.stats.record_dead_letter(&dead);
            events.push(SinkEvent::DeadLetter(dead));
        }
    }
    0
}

#[inline]
fn reading_event(accepted: &mut Accepted, score: f64, late: bool, quality: u8) -> SinkEvent {
    let r = &mut accepted.reading;
    SinkEvent::Reading(ReadingRow {
        sensor_id: std::mem::take(&mut r.sensor_id),
        asset_id: std::mem::take(&mut r.asset_id),
        unit: r.unit.take(),
        ts: r.ts,
        value: r.value,
        score,
        late,
        quality,
    })
}
