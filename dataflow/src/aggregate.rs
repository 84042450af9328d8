//! `readings_1m`: per sensor and minute, count, mean, min, max and standard deviation of the
//! accepted readings, maintained incrementally by differential dataflow.
//!
//! Each reading enters as an update of `((sensor, minute), ())` whose *difference* is its
//! [`Moments`] (a semigroup: counts and sums add, min and max combine), so the arrangement
//! holds one accumulated value per key rather than every reading. A `reduce` turns the
//! accumulation into [`MinuteStats`]; its output changes (a retraction of the old value and an
//! insertion of the new one) become upserts. A late reading for an old minute is just another
//! update at a later time, so it corrects that minute's row.
//!
//! State grows with sensors × minutes (the size of the table itself), not with readings.

use differential_dataflow::difference::{IsZero, Semigroup};
use differential_dataflow::AsCollection;
use millstream_events::{EventTime, MinuteRow, SinkEvent};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
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

impl IsZero for Moments {
    fn is_zero(&self) -> bool {
        self.count == 0
    }
}

impl Semigroup for Moments {
    fn plus_equals(&mut self, rhs: &Self) {
        self.count += rhs.count;
        self.sum += rhs.sum;
        self.sum_squares += rhs.sum_squares;
        self.min = self.min.min(rhs.min);
        self.max = self.max.max(rhs.max);
    }
}

// Differential sorts updates; the order only has to be total and consistent.
impl Eq for Moments {}
impl PartialOrd for Moments {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Moments {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let key = |m: &Moments| {
            (m.count, m.sum.to_bits(), m.sum_squares.to_bits(), m.min.to_bits(), m.max.to_bits())
        };
        key(self).cmp(&key(other))
    }
}

/// One row of `readings_1m`. Floats are kept as bits so the row is `Ord` for differential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

/// The changed `readings_1m` rows, as sink events, at the time they changed.
pub fn minute_aggregates<'scope>(
    events: Stream<'scope, EventTime, Vec<SinkEvent>>,
) -> Stream<'scope, EventTime, Vec<SinkEvent>> {
    type Update = (((String, EventTime), ()), EventTime, Moments);
    // Each reading becomes an update at the time it flows at, with its moments as the difference.
    let updates =
        events.unary::<CapacityContainerBuilder<Vec<Update>>, _, _, _>(Pipeline, "MinuteMoments", |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    let mut session = output.session(&cap);
                    for event in data.drain(..) {
                        if let SinkEvent::Reading(r) = event {
                            let key = (r.sensor_id.to_string(), r.ts - r.ts % MINUTE_MS);
                            session.give(((key, ()), time, Moments::of(r.value)));
                        }
                    }
                });
            }
        });
    updates
        .as_collection()
        .reduce_named("MinuteStats", |_key, input: &[(&(), Moments)], output| {
            output.push((MinuteStats::from_moments(&input[0].1), 1isize));
        })
        .inner
        .flat_map(|(((sensor_id, minute), stats), _time, diff)| {
            (diff > 0).then(|| {
                SinkEvent::MinuteAggregate(MinuteRow {
                    sensor_id,
                    minute,
                    count: stats.count,
                    mean: stats.mean(),
                    min: stats.min_value(),
                    max: stats.max_value(),
                    stddev: stats.stddev(),
                })
            })
        })
}
