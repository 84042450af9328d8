//! Finding the partitions a worker owns, and where each starts, off the worker's thread.
//!
//! Metadata, committed offsets and watermarks are blocking broker round trips (seconds when
//! a broker is down), so one thread per worker makes them and sends what it found; the
//! source operator stays responsive and only applies the result.

use std::collections::BTreeSet;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::options::{KafkaSourceOptions, StartFrom};

/// How long one broker round trip may take before the attempt counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The worker, of `peers`, that reads `partition` of `topic`. Static and the same in every
/// process; the topic's hash spreads the first partitions of several topics over different
/// workers, and consecutive partitions go to consecutive workers. Partitions added later
/// keep the owners of the existing ones.
pub fn owner(topic: &str, partition: i32, peers: usize) -> usize {
    let base = xxhash_rust::xxh3::xxh3_64(topic.as_bytes());
    (base.wrapping_add(partition as u64) % peers.max(1) as u64) as usize
}

/// A partition newly owned by this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub topic_index: usize,
    pub partition: i32,
    /// The first offset to read: the group's committed offset, or `start_from`.
    pub start: i64,
    /// With `stop_at_end`: the partition's end offset when the run started.
    pub end: Option<i64>,
    /// Whether `start` came from a committed offset.
    pub resumed: bool,
    /// Where `start_from` alone would start (the group's commits ignored): with checkpoints,
    /// a partition the checkpoint does not know starts here.
    pub fresh_start: i64,
}

/// What the discovery thread reports.
#[derive(Debug)]
pub enum Discovery {
    /// Partitions newly owned. The first report comes once every topic was read, even if
    /// this worker owns nothing.
    Partitions(Vec<Found>),
    /// A round failed (the broker is unreachable, say); it will be tried again.
    Failed(String),
}

/// Runs discovery for `worker` of `peers` until the returned sender is dropped.
pub fn spawn<C: ConsumerContext + 'static>(
    consumer: Arc<BaseConsumer<C>>,
    options: KafkaSourceOptions,
    worker: usize,
    peers: usize,
    wake: impl Fn() + Send + 'static,
) -> (Receiver<Discovery>, Sender<()>) {
    let (reports, received) = mpsc::channel();
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(format!("kafka-discovery-{worker}"))
        .spawn(move || {
            let mut known: BTreeSet<(usize, i32)> = BTreeSet::new();
            let mut first = true;
            let mut failures = 0u32;
            loop {
                let report = match round(&consumer, &options, worker, peers, &known, first) {
                    Ok(found) => {
                        failures = 0;
                        if found.is_empty() && !first {
                            None
                        } else {
                            known.extend(found.iter().map(|f| (f.topic_index, f.partition)));
                            first = false;
                            Some(Discovery::Partitions(found))
                        }
                    }
                    Err(error) => {
                        failures += 1;
                        Some(Discovery::Failed(error))
                    }
                };
                if let Some(report) = report {
                    if reports.send(report).is_err() {
                        return;
                    }
                    wake();
                }
                let wait = if failures > 0 { retry_delay(failures) } else { options.metadata_refresh };
                match stopped.recv_timeout(wait) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
        .expect("cannot start a Kafka discovery thread");
    (received, stop)
}

/// Exponential backoff with jitter: 0.5 s, 1 s, 2 s … up to 30 s, each ±25 %.
fn retry_delay(failures: u32) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1 << failures.min(6).saturating_sub(1));
    let base = base.min(Duration::from_secs(30));
    let jitter = 0.75 + 0.5 * (xxhash_rust::xxh3::xxh3_64(&failures.to_le_bytes()) as f64 / u64::MAX as f64);
    base.mul_f64(jitter)
}

fn round<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    options: &KafkaSourceOptions,
    worker: usize,
    peers: usize,
    known: &BTreeSet<(usize, i32)>,
    first: bool,
) -> Result<Vec<Found>, String> {
    let mut owned = Vec::new();
    for (topic_index, topic) in options.topics.iter().enumerate() {
        let metadata = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(|e| format!("cannot read metadata of topic {topic}: {e}"))?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else { continue };
        if let Some(error) = found.error() {
            let error = KafkaError::MetadataFetch(error.into());
            if first {
                tracing::warn!(topic, %error, "topic has no partitions yet; waiting for it to be created");
            }
            continue;
        }
        for p in found.partitions() {
            let partition = p.id();
            if owner(topic, partition, peers) == worker && !known.contains(&(topic_index, partition)) {
                owned.push((topic_index, partition));
            }
        }
    }
    if owned.is_empty() {
        return Ok(Vec::new());
    }
    if options.stop_at_end && !first {
        // A backfill covers the partitions that existed when it started.
        tracing::info!(
            worker_id = worker,
            new = owned.len(),
            "partitions added during a --stop-at-end run are left for later runs"
        );
        return Ok(Vec::new());
    }
    let mut request = TopicPartitionList::new();
    for &(topic_index, partition) in &owned {
        request.add_partition(&options.topics[topic_index], partition);
    }
    let committed = consumer
        .committed_offsets(request, REQUEST_TIMEOUT)
        .map_err(|e| format!("cannot read the committed offsets of group {}: {e}", options.group_id))?;
    let mut out = Vec::with_capacity(owned.len());
    for (topic_index, partition) in owned {
        let topic = &options.topics[topic_index];
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .map_err(|e| format!("cannot read the offsets of {topic}/{partition}: {e}"))?;
        let committed = committed.find_partition(topic, partition).and_then(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        });
        let (start, resumed) = match committed {
            Some(o) if o < low => {
                tracing::warn!(
                    topic,
                    partition,
                    committed = o,
                    low,
                    "committed offset is no longer retained; starting at the oldest retained record"
                );
                (low, true)
            }
            Some(o) => (o, true),
            None => match options.start_from {
                StartFrom::Earliest => (low, false),
                StartFrom::Latest => (high, false),
            },
        };
        tracing::info!(worker_id = worker, topic, partition, start, resumed, low, high, "partition assigned");
        let fresh_start = match options.start_from {
            StartFrom::Earliest => low,
            StartFrom::Latest => high,
        };
        out.push(Found {
            topic_index,
            partition,
            start,
            end: options.stop_at_end.then_some(high),
            resumed,
            fresh_start,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_spreads_partitions_and_is_stable() {
        for peers in 1..6 {
            let owners: Vec<usize> = (0..peers as i32).map(|p| owner("readings", p, peers)).collect();
            let distinct: BTreeSet<_> = owners.iter().collect();
            assert_eq!(distinct.len(), peers, "{peers} partitions over {peers} workers, one each");
        }
        // Adding partitions does not move the existing ones.
        assert_eq!(owner("t", 3, 4), owner("t", 3, 4));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(retry_delay(1) <= Duration::from_millis(625));
        assert!(retry_delay(3) > retry_delay(1));
        assert!(retry_delay(40) <= Duration::from_millis(37_500));
    }
}
