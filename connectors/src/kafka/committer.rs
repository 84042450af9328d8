//! Offset commits, one at a time, on a thread of their own.
//!
//! librdkafka reports the outcome of a manual asynchronous commit to nobody through rdkafka's
//! `BaseConsumer`, and it retries failed ones behind newer ones, so a stream of async commits
//! can land out of order and move a committed offset backwards (seen under injected commit
//! errors). Here a worker's committer thread makes synchronous commits of the newest durable
//! offsets, one at a time: the committed offset only moves forward, every outcome is observed
//! (counted, logged), and a failure is retried with backoff.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::source::KafkaSourceObserver;

type PartitionKey = (Arc<str>, i32);

#[derive(Default)]
struct State {
    /// The newest durable offset of each partition.
    wanted: BTreeMap<PartitionKey, i64>,
    /// What the broker acknowledged.
    acknowledged: BTreeMap<PartitionKey, i64>,
    /// Consecutive failed commits.
    failures: u32,
    stop: bool,
}

impl State {
    fn pending(&self) -> Vec<(PartitionKey, i64)> {
        self.wanted
            .iter()
            .filter(|(k, &o)| self.acknowledged.get(*k).is_none_or(|&a| o > a))
            .map(|(k, &o)| (k.clone(), o))
            .collect()
    }
}

/// A worker's committer: [`Committer::want`] hands it durable offsets; its thread commits.
pub struct Committer {
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl Committer {
    /// Starts the thread. `acknowledged` holds the offsets already committed (resumed from).
    pub fn spawn<C: ConsumerContext + 'static>(
        consumer: Arc<BaseConsumer<C>>,
        observer: Arc<dyn KafkaSourceObserver>,
        worker: usize,
        reachable: impl Fn() + Send + 'static,
    ) -> Self {
        let shared: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("kafka-commit-{worker}"))
            .spawn(move || {
                let (lock, changed) = &*thread_shared;
                loop {
                    let pending = {
                        let mut state = lock.lock().expect("committer lock");
                        loop {
                            let pending = state.pending();
                            if !pending.is_empty() {
                                break pending;
                            }
                            if state.stop {
                                return;
                            }
                            state = changed.wait(state).expect("committer lock");
                        }
                    };
                    let mut list = TopicPartitionList::new();
                    for ((topic, partition), offset) in &pending {
                        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                            .expect("a valid offset");
                    }
                    let result = consumer.commit(&list, CommitMode::Sync);
                    let retry_in = {
                        let mut state = lock.lock().expect("committer lock");
                        match &result {
                            Ok(()) => {
                                state.failures = 0;
                                for ((topic, partition), offset) in pending {
                                    observer.committed(&topic, partition, offset);
                                    let acked =
                                        state.acknowledged.entry((topic, partition)).or_insert(offset);
                                    *acked = (*acked).max(offset);
                                }
                                reachable();
                                None
                            }
                            Err(error) => {
                                state.failures += 1;
                                tracing::warn!(worker_id = worker, %error, "offset commit failed; retrying");
                                observer.commit_failed(&error.to_string());
                                Some(backoff(state.failures))
                            }
                        }
                    };
                    changed.notify_all();
                    if let Some(delay) = retry_in {
                        std::thread::sleep(delay);
                    }
                }
            })
            .expect("cannot start a Kafka commit thread");
        Committer { shared }
    }

    /// Records that `partition` is durable up to `offset` (exclusive); it is committed soon.
    pub fn want(&self, topic: &Arc<str>, partition: i32, offset: i64) {
        let (lock, changed) = &*self.shared;
        let mut state = lock.lock().expect("committer lock");
        let entry = state.wanted.entry((Arc::clone(topic), partition)).or_insert(offset);
        if offset > *entry {
            *entry = offset;
        }
        changed.notify_all();
    }

    /// Marks `offset` as already committed (where a partition resumed).
    pub fn already_committed(&self, topic: &Arc<str>, partition: i32, offset: i64) {
        let (lock, _) = &*self.shared;
        lock.lock().expect("committer lock").acknowledged.insert((Arc::clone(topic), partition), offset);
    }

    /// Waits until everything wanted so far is acknowledged, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), String> {
        let (lock, changed) = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut state = lock.lock().expect("committer lock");
        loop {
            let pending = state.pending();
            if pending.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                let what: Vec<String> = pending.iter().map(|((t, p), o)| format!("{t}/{p}@{o}")).collect();
                return Err(format!("offsets not committed within {timeout:?}: {}", what.join(", ")));
            }
            state = changed.wait_timeout(state, deadline - now).expect("committer lock").0;
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        let (lock, changed) = &*self.shared;
        if let Ok(mut state) = lock.lock() {
            state.stop = true;
            // What is still pending at drop is left for the next run (at least once).
            state.wanted.clear();
        }
        changed.notify_all();
    }
}

/// 100 ms doubling to 5 s, ±25 %.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << failures.saturating_sub(1).min(6));
    let base = base.min(Duration::from_secs(5));
    let hash = xxhash_rust::xxh3::xxh3_64(&failures.to_le_bytes());
    base.mul_f64(0.75 + 0.5 * (hash as f64 / u64::MAX as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_is_what_is_wanted_beyond_the_acknowledged() {
        let topic: Arc<str> = Arc::from("t");
        let mut state = State::default();
        state.wanted.insert((topic.clone(), 0), 10);
        state.wanted.insert((topic.clone(), 1), 5);
        state.acknowledged.insert((topic.clone(), 1), 5);
        assert_eq!(state.pending(), vec![((topic.clone(), 0), 10)]);
        state.acknowledged.insert((topic.clone(), 0), 10);
        assert!(state.pending().is_empty());
    }

    #[test]
    fn backoff_is_bounded() {
        assert!(backoff(1) <= Duration::from_millis(125));
        assert!(backoff(30) <= Duration::from_millis(6_250));
    }
}
