//! `readings_1m`: per sensor and minute, count, mean, min, max and standard deviation of the
//! accepted readings, maintained incrementally and with bounded state.
//!
//! Readings are exchanged by sensor and buffered until the frontier passes their time; then, in
//! time order, each folds its value into its minute's [`Moments`] (counts and sums add, min and
//! max combine), and every minute changed at a time is emitted at that time as an upsert of its
//! whole row. A late reading for an earlier minute is just another change: it corrects that
//! minute's row.
//!
//! State is bounded: a minute is forgotten once the frontier is [`MINUTE_RETENTION_MS`] past its
//! end. A reading that comes even later (its time that far past its minute) cannot correct a row
//! it no longer knows; it is not folded into any row (its own row in `readings` is written as
//! usual), and it is counted (`millstream_aggregate_too_late_total`) and logged. (This stage was a
//! differential `reduce`, whose arrangement kept every sensor × minute ever seen: the 30-minute
//! soak grew by 30 MiB an hour.)

use std::collections::{BTreeMap, HashMap};

use millstream_events::checkpoint::WorkerCheckpoints;
use millstream_events::{CompactString, EventTime, MinuteRow, SinkEvent};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

/// Sufficient statistics of a set of values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub count: i64,
    pub sum: f64,
    pub sum_squares: f64,
    pub min: f64,
    pub max: f64,
}

impl Moments {
    pub fn of(value: f64) -> Self {
        Moments { count: 1, sum: value, sum_squares: value * value, min: value, max: value }
    }
}

impl Moments {
    fn add(&mut self, rhs: &Self) {
        self.count += rhs.count;
        self.sum += rhs.sum;
        self.sum_squares += rhs.sum_squares;
        self.min = self.min.min(rhs.min);
        self.max = self.max.max(rhs.max);
    }
}

/// One row of `readings_1m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MinuteStats {
    pub count: i64,
    mean: u64,
    min: u64,
    max: u64,
    stddev: u64,
}

impl MinuteStats {
    pub fn from_moments(m: &Moments) -> Self {
        let n = m.count.max(1) as f64;
        let mean = m.sum / n;
        // Population standard deviation; clamp the tiny negatives of cancellation.
        let variance = (m.sum_squares / n - mean * mean).max(0.0);
        MinuteStats {
            count: m.count,
            mean: mean.to_bits(),
            min: m.min.to_bits(),
            max: m.max.to_bits(),
            stddev: variance.sqrt().to_bits(),
        }
    }
    pub fn mean(&self) -> f64 {
        f64::from_bits(self.mean)
    }
    pub fn min_value(&self) -> f64 {
        f64::from_bits(self.min)
    }
    pub fn max_value(&self) -> f64 {
        f64::from_bits(self.max)
    }
    pub fn stddev(&self) -> f64 {
        f64::from_bits(self.stddev)
    }
}

pub const MINUTE_MS: u64 = 60_000;

/// How long after a minute ends (in event time, by the frontier) its moments are kept for late
/// readings to correct it: an hour, far beyond any sensible allowed lateness.
pub const MINUTE_RETENTION_MS: u64 = 3_600_000;

/// The changed `readings_1m` rows, as sink events, at the time they changed. Readings folded
/// into no row because they came more than [`MINUTE_RETENTION_MS`] after their minute are
/// counted in `too_late`.
pub fn minute_aggregates<'scope>(
    events: Stream<'scope, EventTime, Vec<SinkEvent>>,
    too_late: IntCounter,
    checkpoints: Option<WorkerCheckpoints>,
) -> Stream<'scope, EventTime, Vec<SinkEvent>> {
    type Value = (CompactString, EventTime, f64);
    let (worker, peers) = (events.scope().index(), events.scope().peers());
    let values = events.flat_map(|event| match event {
        SinkEvent::Reading(r) => Some((r.sensor_id, r.ts - r.ts % MINUTE_MS, r.value)),
        _ => None,
    });
    let pact = Exchange::new(|(sensor, _, _): &Value| millstream_events::routing::key_route(sensor));
    values.unary_frontier::<CapacityContainerBuilder<Vec<SinkEvent>>, _, _, _>(
        pact,
        "MinuteStats",
        move |initial, _| {
            // Readings by the time they flow at, with a capability for that time.
            let mut pending: BTreeMap<EventTime, (Capability<EventTime>, Vec<Value>)> = BTreeMap::new();
            let mut open: HashMap<(CompactString, EventTime), Moments> = HashMap::new();
            // Minutes by the frontier time at which they are forgotten.
            let mut expiry: BTreeMap<EventTime, Vec<(CompactString, EventTime)>> = BTreeMap::new();
            let mut changed: Vec<(CompactString, EventTime)> = Vec::new();
            let mut checkpointer = checkpoints.map(|(checkpointing, registry)| {
                let restored: Vec<MinutesState> =
                    crate::checkpoint::restore_parts(Some(&checkpointing), CHECKPOINT_COMPONENT);
                for state in restored {
                    for (sensor, minute, moments) in state.minutes {
                        let route = millstream_events::routing::key_route(&sensor);
                        if millstream_events::checkpoint::owner(route, peers) != worker {
                            continue;
                        }
                        let key = (CompactString::from(sensor), minute);
                        expiry.entry(minute + MINUTE_MS + MINUTE_RETENTION_MS).or_default().push(key.clone());
                        open.insert(key, moments);
                    }
                }
                crate::checkpoint::Checkpointer::for_worker(
                    CHECKPOINT_COMPONENT,
                    &checkpointing,
                    registry,
                    initial,
                )
            });
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    if let Some(c) = checkpointer.as_mut() {
                        c.on_input(&cap, time);
                    }
                    let entry = pending
                        .entry(time)
                        .or_insert_with(|| (cap.retain_least(0).expect("an input has a time"), Vec::new()));
                    entry.1.append(data);
                });
                while let Some(entry) = pending.first_entry() {
                    let time = *entry.key();
                    if frontier.less_equal(&time) {
                        break;
                    }
                    let (cap, readings) = entry.remove();
                    if let Some(c) = checkpointer.as_mut() {
                        c.before(time, || snapshot(&open, time));
                    }
                    for (sensor, minute, value) in readings {
                        let forget_at = minute + MINUTE_MS + MINUTE_RETENTION_MS;
                        if time >= forget_at {
                            too_late.inc();
                            tracing::warn!(
                                worker_id = worker,
                                sensor_id = %sensor,
                                minute,
                                "reading too late for readings_1m: its minute ended more than an hour \
                                 before; stored in readings, not aggregated"
                            );
                            continue;
                        }
                        let key = (sensor, minute);
                        match open.get_mut(&key) {
                            Some(moments) => moments.add(&Moments::of(value)),
                            None => {
                                open.insert(key.clone(), Moments::of(value));
                                expiry.entry(forget_at).or_default().push(key.clone());
                            }
                        }
                        changed.push(key);
                    }
                    changed.sort_unstable();
                    changed.dedup();
                    let mut session = output.session(&cap);
                    for key in changed.drain(..) {
                        let stats = MinuteStats::from_moments(&open[&key]);
                        session.give(SinkEvent::MinuteAggregate(MinuteRow {
                            sensor_id: key.0.to_string(),
                            minute: key.1,
                            count: stats.count,
                            mean: stats.mean(),
                            min: stats.min_value(),
                            max: stats.max_value(),
                            stddev: stats.stddev(),
                        }));
                    }
                }
                // Forget minutes the frontier has left far enough behind.
                while let Some(entry) = expiry.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    for key in entry.remove() {
                        open.remove(&key);
                    }
                }
                if let Some(c) = checkpointer.as_mut() {
                    c.passed(frontier.frontier(), || {
                        snapshot(&open, frontier.frontier().first().copied().unwrap_or(0))
                    });
                }
            }
        },
    )
}

/// The stage's name in checkpoints.
const CHECKPOINT_COMPONENT: &str = "readings_1m";

/// The stage's state at a boundary: the minutes it still keeps, with their moments.
#[derive(Debug, Serialize, Deserialize)]
struct MinutesState {
    minutes: Vec<(String, EventTime, Moments)>,
}

/// The open minutes as of `boundary` (those forgotten before it are left out).
fn snapshot(open: &HashMap<(CompactString, EventTime), Moments>, boundary: EventTime) -> Vec<u8> {
    let minutes = open
        .iter()
        .filter(|((_, minute), _)| minute + MINUTE_MS + MINUTE_RETENTION_MS >= boundary)
        .map(|((sensor, minute), moments)| (sensor.to_string(), *minute, *moments))
        .collect();
    crate::checkpoint::encode(&MinutesState { minutes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use millstream_events::ReadingRow;
    use timely::dataflow::operators::capture::{Capture, Event};
    use timely::dataflow::operators::Input;

    fn reading(sensor: &str, ts: EventTime, value: f64) -> SinkEvent {
        SinkEvent::Reading(ReadingRow {
            sensor_id: sensor.into(),
            asset_id: "a".into(),
            unit: None,
            ts,
            value,
            score: 0.0,
            late: false,
            quality: 0,
        })
    }

    /// `(time, rows)` for readings given as `(time, sensor, ts, value)`; also the too-late count.
    fn run(
        readings: Vec<(EventTime, &'static str, EventTime, f64)>,
    ) -> (Vec<(EventTime, Vec<MinuteRow>)>, u64) {
        let too_late = IntCounter::new("t", "t").unwrap();
        let counter = too_late.clone();
        let captured = timely::execute_directly(move |worker| {
            let (mut input, captured) = worker.dataflow::<EventTime, _, _>(|scope| {
                let (input, events) = scope.new_input::<Vec<SinkEvent>>();
                let captured = minute_aggregates(events, counter.clone(), None).capture();
                (input, captured)
            });
            for (time, sensor, ts, value) in readings.clone() {
                input.advance_to(time);
                input.send(reading(sensor, ts, value));
            }
            input.close();
            while worker.step() {}
            captured
        });
        let mut out: Vec<(EventTime, Vec<MinuteRow>)> = captured
            .try_iter()
            .filter_map(|event| match event {
                Event::Messages(t, events) => Some((*t.expect_singleton(), events)),
                Event::Progress(_) => None,
            })
            .map(|(t, events)| {
                let rows = events
                    .into_iter()
                    .map(|e| match e {
                        SinkEvent::MinuteAggregate(row) => row,
                        other => panic!("not a minute row: {other:?}"),
                    })
                    .collect();
                (t, rows)
            })
            .collect();
        out.sort_by_key(|(t, _)| *t);
        (out, too_late.get())
    }

    #[test]
    fn each_change_upserts_the_whole_minute_and_late_readings_correct_it() {
        let (out, too_late) = run(vec![
            (1_000, "s", 1_000, 1.0),
            (2_000, "s", 2_000, 3.0),
            (61_000, "s", 61_000, 10.0),
            // Late, within the retention: corrects minute 0.
            (70_000, "s", 5_000, 5.0),
        ]);
        assert_eq!(too_late, 0);
        let at =
            |t: EventTime| out.iter().find(|(time, _)| *time == t).map(|(_, rows)| rows.clone()).unwrap();
        assert_eq!(at(2_000)[0].count, 2);
        assert_eq!(at(2_000)[0].mean, 2.0);
        assert_eq!((at(61_000)[0].minute, at(61_000)[0].count), (60_000, 1));
        let corrected = &at(70_000)[0];
        assert_eq!((corrected.minute, corrected.count, corrected.mean), (0, 3, 3.0));
        assert_eq!((corrected.min, corrected.max), (1.0, 5.0));
    }

    #[test]
    fn minutes_are_forgotten_after_the_retention_and_later_readings_are_counted() {
        let (out, too_late) = run(vec![
            (1_000, "s", 1_000, 1.0),
            // Flows an hour and a minute after minute 0 ended: too late to correct it.
            (MINUTE_MS + MINUTE_RETENTION_MS + 1, "s", 2_000, 9.0),
            (MINUTE_MS + MINUTE_RETENTION_MS + 2, "s", MINUTE_MS + MINUTE_RETENTION_MS, 4.0),
        ]);
        assert_eq!(too_late, 1);
        let rows: Vec<&MinuteRow> = out.iter().flat_map(|(_, rows)| rows).collect();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(rows.iter().all(|r| r.minute != 0 || r.count == 1), "minute 0 was not overwritten: {rows:?}");
    }
}
