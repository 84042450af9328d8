//! The `kafka://` sink stage: every worker produces its own anomalies (to the notification
//! topic) and dead letters (to the dead-letter topic), and holds the time of each record until
//! the broker acknowledges it, so a probe after this stage passes a time only once everything
//! at that time is delivered. That is what lets the Kafka source commit offsets.
//!
//! Faults: a failed delivery is sent again after an exponential backoff with jitter, and the
//! sink's circuit opens (health not ready, `millstream_sink_circuit_open{sink="kafka"}` = 1)
//! until a delivery succeeds. A full producer queue pauses sending (the records wait here, and
//! the source's in-flight bound stops reading); nothing is ever dropped.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millstream_events::{EventTime, SinkEvent};
use millstream_sinks::kafka::{encode, KafkaSinkTopics, KafkaWriter, Outgoing, SendError};
use rdkafka::ClientConfig;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::health::{ComponentHealth, Health};
use crate::stats::RunStats;

/// Backoff after a failed delivery: doubles from `FIRST_RETRY` up to `MAX_RETRY`, ±25 %.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// How the Kafka sink is set up.
#[derive(Clone, Debug)]
pub struct KafkaSinkSettings {
    pub client: ClientConfig,
    pub topics: KafkaSinkTopics,
}

pub fn write_kafka<'scope>(
    events: Stream<'scope, EventTime, Vec<SinkEvent>>,
    settings: KafkaSinkSettings,
    health: Arc<Health>,
    stats: Arc<RunStats>,
) -> Stream<'scope, EventTime, Vec<()>> {
    let scope = events.scope();
    let worker = scope.index();
    events.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "WriteKafka",
        move |_, info| {
            let activator = scope.activator_for(std::rc::Rc::clone(&info.address));
            let wake = scope.worker().sync_activator_for(info.address.to_vec());
            let component = format!("kafka sink (worker {worker})");
            let circuit_gauge = stats.sink_circuit_open.with_label_values(&["kafka"]);
            let (health_cb, component_cb, gauge_cb) =
                (Arc::clone(&health), component.clone(), circuit_gauge.clone());
            let writer = KafkaWriter::new(
                &settings.client,
                settings.topics.clone(),
                move || {
                    let _ = wake.activate();
                },
                move |up, why| {
                    if up {
                        tracing::info!(worker_id = worker, "kafka sink: brokers reachable");
                        // Failed deliveries, if any, open the circuit again until one succeeds.
                        gauge_cb.set(0);
                        health_cb.set(&component_cb, ComponentHealth::Ready);
                    } else {
                        tracing::warn!(worker_id = worker, why, "kafka sink: brokers unreachable");
                        gauge_cb.set(1);
                        health_cb.set(
                            &component_cb,
                            ComponentHealth::NotReady(format!("brokers unreachable: {why}")),
                        );
                    }
                },
            )
            .unwrap_or_else(|e| fatal(&format!("cannot create the Kafka producer: {e}")));
            health.set(&component, ComponentHealth::Ready);
            let delivered = stats.sink_records.with_label_values(&["kafka"]);
            let latency = stats.sink_batch_seconds.with_label_values(&["kafka"]);
            let freshness = stats.event_to_durable_seconds.with_label_values(&["kafka"]);

            // Capabilities held, by time, with how many records at that time are not yet acknowledged.
            let mut owed: BTreeMap<EventTime, (Capability<EventTime>, usize)> = BTreeMap::new();
            // Records waiting to be sent (new, or retried after a failure), oldest first.
            let mut queue: VecDeque<(usize, Option<Instant>)> = VecDeque::new();
            // Records sent or waiting, by id, until acknowledged: with when they were last sent
            // and how many deliveries of them failed (each record backs off on its own).
            let mut records: BTreeMap<usize, (Outgoing, Instant, u32)> = BTreeMap::new();
            let mut next_id = 0usize;
            let mut open = false;
            move |(input, _frontier), _output| {
                input.for_each(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    let mut added = 0;
                    for event in data.drain(..) {
                        if let Some(record) = encode(&event, time, writer.max_record_bytes()) {
                            records.insert(next_id, (record, Instant::now(), 0));
                            queue.push_back((next_id, None));
                            next_id += 1;
                            added += 1;
                        }
                    }
                    if added > 0 {
                        let entry = owed
                            .entry(time)
                            .or_insert_with(|| (cap.retain_least(0).expect("the input has a time"), 0));
                        entry.1 += added;
                    }
                });

                for delivery in writer.take_deliveries() {
                    let Some((record, sent, attempts)) = records.get_mut(&delivery.id) else { continue };
                    match delivery.result {
                        Ok(()) => {
                            latency.observe(sent.elapsed().as_secs_f64());
                            delivered.inc();
                            let time = record.time;
                            freshness.observe(millstream_events::time::seconds_since(time));
                            records.remove(&delivery.id);
                            if let Some(entry) = owed.get_mut(&time) {
                                entry.1 -= 1;
                                if entry.1 == 0 {
                                    owed.remove(&time);
                                }
                            }
                            if open {
                                open = false;
                                circuit_gauge.set(0);
                                health.set(&component, ComponentHealth::Ready);
                                tracing::info!(
                                    worker_id = worker,
                                    "kafka sink: circuit closed, deliveries succeed again"
                                );
                            }
                        }
                        Err(error) => {
                            *attempts += 1;
                            let delay = backoff(*attempts, delivery.id);
                            // On every failure: the brokers coming back marks the sink ready
                            // again, but failing deliveries keep it open until one succeeds.
                            open = true;
                            circuit_gauge.set(1);
                            health.set(
                                &component,
                                ComponentHealth::NotReady(format!("deliveries failing: {error}")),
                            );
                            tracing::warn!(
                                worker_id = worker,
                                %error,
                                retry_in_ms = delay.as_millis() as u64,
                                "kafka sink: delivery failed; retrying"
                            );
                            queue.push_back((delivery.id, Some(Instant::now() + delay)));
                        }
                    }
                }

                // Send what is due, in order; a full queue or a pending retry stops the round.
                let mut wait: Option<Duration> = None;
                while let Some(&(id, due)) = queue.front() {
                    if let Some(due) = due {
                        let now = Instant::now();
                        if due > now {
                            wait = Some(due - now);
                            break;
                        }
                    }
                    let (record, sent, _) = records.get_mut(&id).expect("a queued record is kept");
                    match writer.send(id, record) {
                        Ok(()) => {
                            *sent = Instant::now();
                            queue.pop_front();
                        }
                        Err(SendError::QueueFull) => {
                            wait = Some(Duration::from_millis(5));
                            break;
                        }
                        Err(SendError::Kafka(error)) => {
                            // Not retryable in place (the record is too large, say): it would
                            // stall the sink forever. Stop, with the reason.
                            fatal(&format!("the Kafka sink cannot send a record: {error}"));
                        }
                    }
                }
                if let Some(wait) = wait {
                    activator.activate_after(wait);
                }
            }
        },
    )
}

fn backoff(failures: u32, salt: usize) -> Duration {
    let base = FIRST_RETRY.saturating_mul(1 << failures.saturating_sub(1).min(8)).min(MAX_RETRY);
    let hash = xxhash_rust::xxh3::xxh3_64(&[failures.to_le_bytes(), (salt as u32).to_le_bytes()].concat());
    base.mul_f64(0.75 + 0.5 * (hash as f64 / u64::MAX as f64))
}

fn fatal(message: &str) -> ! {
    eprintln!("millstream: fatal: {message}");
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let first = backoff(1, 0);
        assert!(first >= FIRST_RETRY.mul_f64(0.75) && first <= FIRST_RETRY.mul_f64(1.25));
        assert!(backoff(4, 0) > backoff(1, 0));
        assert!(backoff(50, 3) <= MAX_RETRY.mul_f64(1.25));
    }
}
