//! Every metric of a run, defined in one place, exported at `/metrics` in Prometheus' text
//! format, and read back by the demo report and the run summary.
//!
//! Names are `millstream_*`, in base units, counters end in `_total`. Hot paths add per batch,
//! not per record: a counter shared by all workers is one cache line they would fight over.

use std::sync::Arc;

use millstream_events::{Anomaly, DeadLetter, Reason, Severity};
use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct RunStats {
    registry: Registry,
    /// Accepted readings that reached the per-sensor stage (scored, late, or refused there).
    pub readings: IntCounter,
    /// Readings scored by the detector.
    pub scored: IntCounter,
    /// Late readings kept with the `late` flag.
    pub late_kept: IntCounter,
    /// Readings kept with validation quality flags (out of range, rate of change), not scored.
    pub flagged: IntCounter,
    /// Readings that came too long after their minute to correct its `readings_1m` row.
    pub aggregate_too_late: IntCounter,
    anomalies: IntCounterVec,
    dead_letters: Vec<IntCounter>,
    /// Records made durable by a sink (lines written, rows committed), by sink.
    pub sink_records: IntCounterVec,
    /// The event time (epoch seconds) up to which every sink of this process is complete.
    pub durable_event_time_seconds: prometheus::Gauge,
    /// Wall-clock time less that event time: how far results lag behind now.
    pub watermark_delay_seconds: prometheus::Gauge,
    /// Rows per committed sink batch, by sink.
    pub sink_batch_rows: HistogramVec,
    /// Seconds to commit a sink batch (retries included), by sink.
    pub sink_batch_seconds: HistogramVec,
    /// Event time → durable: wall-clock time of a commit less the newest event time in the
    /// batch, by sink. Meaningful for live sources; a replayed file shows its age.
    pub event_to_durable_seconds: HistogramVec,
    /// 1 while a sink's circuit breaker is open, by sink.
    pub sink_circuit_open: IntGaugeVec,
    /// Kafka consumer lag: high watermark less the next offset to process, by topic and
    /// partition (absent while either is unknown).
    pub kafka_consumer_lag: IntGaugeVec,
    /// Records read from Kafka, by topic and partition.
    pub kafka_records: IntCounterVec,
    /// The offset last committed (acknowledged by the broker), by topic and partition.
    pub kafka_committed_offset: IntGaugeVec,
    /// Offset commits that failed (they are retried).
    pub kafka_commit_failures: IntCounter,
    /// Ingest → durable: from the Kafka source reading a batch of a partition to every sink
    /// having its results (one observation per batch, not per record: a hot path).
    pub ingest_to_durable_seconds: prometheus::Histogram,
    /// 1 while the Kafka source cannot reach its brokers.
    pub kafka_source_disconnected: IntGauge,
    /// The model version in service, by model name.
    pub model_version: IntGaugeVec,
    /// Model versions switched to while running.
    pub model_switches: IntCounter,
    /// Failed polls or fetches of the model store (the current models stay in service).
    pub model_store_errors: IntCounter,
    /// Asset time buckets scored by a multivariate model.
    pub asset_buckets: IntCounter,
    /// Drift events, by statistic (`psi`, `ks`, `wasserstein`, `mean_shift`, `variance_shift`).
    pub drift_events: IntCounterVec,
    /// Drift windows open (keys with a histogram), summed over this process's workers.
    pub drift_windows: IntGauge,
    /// Retraining outcomes, by outcome (`serving`, `refused`, `rolled_back`).
    pub model_retrains: IntCounterVec,
    /// Worker threads in this process, and processes in the cluster.
    pub workers: IntGauge,
    pub processes: IntGauge,
    /// The newest checkpoint boundary a worker has committed (event time, epoch seconds), by
    /// worker.
    pub checkpoint_boundary_seconds: IntGaugeVec,
    /// Checkpoints committed (each with its worker's rows).
    pub checkpoint_commits: IntCounter,
    /// Bytes of operator state committed in checkpoints.
    pub checkpoint_state_bytes: IntCounter,
    /// The boundary this run restored (event time, epoch seconds); 0 when it started afresh.
    pub checkpoint_restored_seconds: IntGauge,
}

impl Default for RunStats {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RunStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunStats").field("readings", &self.readings.get()).finish_non_exhaustive()
    }
}

/// Registers `metric` (built from a definition that is known to be valid) and returns it.
fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: Result<M, prometheus::Error>) -> M {
    let metric = metric.expect("metric definitions are valid");
    registry.register(Box::new(metric.clone())).expect("metric names are unique");
    metric
}

/// A histogram by sink, with exponential buckets from `start` by `factor`, `count` of them.
fn sink_histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    start: f64,
    factor: f64,
    count: usize,
) -> HistogramVec {
    let buckets = prometheus::exponential_buckets(start, factor, count).expect("valid buckets");
    register(registry, HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["sink"]))
}

impl RunStats {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let dead_letter_vec = register(
            r,
            IntCounterVec::new(
                Opts::new("millstream_dead_letters_total", "Records refused, by reason."),
                &["reason"],
            ),
        );
        let stats = RunStats {
            model_version: register(
                r,
                IntGaugeVec::new(
                    Opts::new("millstream_model_version", "The model version in service, by model."),
                    &["model"],
                ),
            ),
            model_switches: register(
                r,
                IntCounter::new(
                    "millstream_model_switches_total",
                    "Model versions switched to while running.",
                ),
            ),
            model_store_errors: register(
                r,
                IntCounter::new(
                    "millstream_model_store_errors_total",
                    "Failed polls or fetches of the model store; the current models stay in service.",
                ),
            ),
            asset_buckets: register(
                r,
                IntCounter::new(
                    "millstream_asset_buckets_scored_total",
                    "Asset time buckets scored by a multivariate model.",
                ),
            ),
            drift_events: register(
                r,
                IntCounterVec::new(
                    Opts::new("millstream_drift_events_total", "Drift events emitted, by statistic."),
                    &["statistic"],
                ),
            ),
            drift_windows: register(
                r,
                IntGauge::new(
                    "millstream_drift_windows",
                    "Drift windows open (sensors and asset features with a histogram) in this process.",
                ),
            ),
            model_retrains: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "millstream_model_retrains_total",
                        "Retrained model versions, by outcome (serving, refused, rolled_back).",
                    ),
                    &["outcome"],
                ),
            ),
            readings: register(
                r,
                IntCounter::new("millstream_readings_total", "Accepted readings that reached validation."),
            ),
            scored: register(
                r,
                IntCounter::new("millstream_readings_scored_total", "Readings scored by the detector."),
            ),
            flagged: register(
                r,
                IntCounter::new(
                    "millstream_readings_flagged_total",
                    "Readings kept with validation quality flags, not scored.",
                ),
            ),
            late_kept: register(
                r,
                IntCounter::new("millstream_late_readings_total", "Late readings kept, flagged, not scored."),
            ),
            aggregate_too_late: register(
                r,
                IntCounter::new(
                    "millstream_aggregate_too_late_total",
                    "Readings that came more than an hour after their minute ended: stored, not folded into readings_1m.",
                ),
            ),
            anomalies: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "millstream_anomalies_total",
                        "Anomaly events emitted, by detector and severity.",
                    ),
                    &["detector", "severity"],
                ),
            ),
            // Every reason exists from the start (at 0), so dashboards and alerts see the series.
            dead_letters: Reason::ALL
                .iter()
                .map(|r| dead_letter_vec.with_label_values(&[r.as_str()]))
                .collect(),
            sink_records: register(
                r,
                IntCounterVec::new(
                    Opts::new("millstream_sink_records_total", "Records made durable by a sink, by sink."),
                    &["sink"],
                ),
            ),
            durable_event_time_seconds: register(
                r,
                prometheus::Gauge::new(
                    "millstream_durable_event_time_seconds",
                    "Event time (Unix seconds) up to which every sink of this process is complete.",
                ),
            ),
            watermark_delay_seconds: register(
                r,
                prometheus::Gauge::new(
                    "millstream_watermark_delay_seconds",
                    "Wall-clock time less the event time up to which every sink is complete.",
                ),
            ),
            sink_batch_rows: sink_histogram(
                r,
                "millstream_sink_batch_rows",
                "Rows per committed sink batch.",
                10.0,
                4.0,
                9,
            ),
            sink_batch_seconds: sink_histogram(
                r,
                "millstream_sink_batch_seconds",
                "Time to commit a sink batch, retries included.",
                0.001,
                4.0,
                10,
            ),
            event_to_durable_seconds: sink_histogram(
                r,
                "millstream_event_to_durable_seconds",
                "Commit time less the newest event time of the batch.",
                0.01,
                3.0,
                12,
            ),
            sink_circuit_open: register(
                r,
                IntGaugeVec::new(
                    Opts::new("millstream_sink_circuit_open", "1 while the sink's circuit breaker is open."),
                    &["sink"],
                ),
            ),
            kafka_consumer_lag: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "millstream_kafka_consumer_lag",
                        "High watermark less the next offset to process, by topic and partition.",
                    ),
                    &["topic", "partition"],
                ),
            ),
            kafka_records: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "millstream_kafka_records_total",
                        "Records read from Kafka, by topic and partition.",
                    ),
                    &["topic", "partition"],
                ),
            ),
            kafka_committed_offset: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "millstream_kafka_committed_offset",
                        "Offset last committed for the consumer group, by topic and partition.",
                    ),
                    &["topic", "partition"],
                ),
            ),
            ingest_to_durable_seconds: register(
                r,
                prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "millstream_ingest_to_durable_seconds",
                        "From the Kafka source reading a batch to every sink having its results.",
                    )
                    .buckets(prometheus::exponential_buckets(0.01, 2.0, 12).expect("valid buckets")),
                ),
            ),
            kafka_commit_failures: register(
                r,
                IntCounter::new(
                    "millstream_kafka_commit_failures_total",
                    "Offset commits that failed (retried).",
                ),
            ),
            kafka_source_disconnected: register(
                r,
                IntGauge::new(
                    "millstream_kafka_source_disconnected",
                    "1 while the Kafka source cannot reach its brokers.",
                ),
            ),
            workers: register(r, IntGauge::new("millstream_workers", "Worker threads in this process.")),
            processes: register(r, IntGauge::new("millstream_processes", "Processes in the timely cluster.")),
            checkpoint_boundary_seconds: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "millstream_checkpoint_boundary_seconds",
                        "Newest checkpoint boundary committed by a worker (event time, epoch seconds).",
                    ),
                    &["worker"],
                ),
            ),
            checkpoint_commits: register(
                r,
                IntCounter::new("millstream_checkpoint_commits_total", "Checkpoints committed with a worker's rows."),
            ),
            checkpoint_state_bytes: register(
                r,
                IntCounter::new("millstream_checkpoint_state_bytes_total", "Bytes of operator state committed in checkpoints."),
            ),
            checkpoint_restored_seconds: register(
                r,
                IntGauge::new(
                    "millstream_checkpoint_restored_seconds",
                    "The checkpoint boundary this run restored (event time, epoch seconds); 0 when it started afresh.",
                ),
            ),
            registry,
        };
        // Every statistic and outcome exists from the start (at 0), so `increase()` counts the
        // first event of each too.
        for statistic in millstream_events::DriftStatistic::ALL {
            stats.drift_events.with_label_values(&[statistic.as_str()]);
        }
        for outcome in millstream_events::ModelVersionStatus::ALL {
            stats.model_retrains.with_label_values(&[outcome.as_str()]);
        }
        stats
    }

    pub fn anomaly(&self, detector: &str, severity: Severity) {
        self.anomalies.with_label_values(&[detector, severity.as_str()]).inc();
    }

    /// An anomaly event: its counter and its log line (info level), together.
    pub fn record_anomaly(&self, anomaly: &Anomaly) {
        self.anomaly(&anomaly.detector, anomaly.severity);
        tracing::info!(
            event_id = %anomaly.event_id,
            sensor_id = %anomaly.sensor_id,
            asset_id = %anomaly.asset_id,
            detector = %anomaly.detector,
            severity = anomaly.severity.as_str(),
            score = anomaly.score,
            "anomaly"
        );
    }

    /// A refused record: its counter and its log line (debug level: they can be many), together.
    pub fn record_dead_letter(&self, dead: &DeadLetter) {
        self.dead_letter(dead.reason);
        tracing::debug!(reason = dead.reason.as_str(), source = ?dead.source, detail = %dead.detail, "dead letter");
    }

    /// A drift event: its counter and its log line, together.
    pub fn record_drift(&self, event: &millstream_events::DriftEvent) {
        self.drift_events.with_label_values(&[event.statistic.as_str()]).inc();
        tracing::info!(asset_id = %event.asset_id, subject = %event.subject(), statistic = event.statistic.as_str(),
            value = event.value, threshold = event.threshold, model_version = %event.model_version, "drift");
    }

    /// A retraining outcome: its counter and its log line, together.
    pub fn record_model_version(&self, event: &millstream_events::ModelVersionEvent) {
        let outcome = event.status.as_str();
        self.model_retrains.with_label_values(&[outcome]).inc();
        tracing::info!(model = %event.model, version = event.version, parent = ?event.parent_version, outcome,
            reason = %event.reason, "model lineage");
    }

    pub fn anomalies_total(&self) -> u64 {
        self.anomalies
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    pub fn dead_letter(&self, reason: Reason) {
        self.dead_letters[reason as usize].inc();
    }

    /// Dead letters by reason, omitting zeros, in the order of [`Reason::ALL`].
    pub fn dead_letters_by_reason(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .map(|&r| (r, self.dead_letters[r as usize].get()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters.iter().map(IntCounter::get).sum()
    }

    /// Records that every sink is complete up to event time `frontier` (epoch ms).
    pub fn durable_frontier(&self, frontier: Option<u64>) {
        if let Some(ms) = frontier {
            self.durable_event_time_seconds.set(ms as f64 / 1000.0);
            let now = millstream_events::time::now_ms() as f64 / 1000.0;
            self.watermark_delay_seconds.set(now - ms as f64 / 1000.0);
        }
    }

    /// Everything, in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

/// The Kafka source's reports, as metrics, logs and health.
pub struct KafkaSourceStats {
    pub stats: Arc<RunStats>,
    pub health: Arc<crate::health::Health>,
}

impl millstream_connectors::kafka::KafkaSourceObserver for KafkaSourceStats {
    fn consumed(&self, topic: &str, partition: i32, records: u64) {
        self.stats.kafka_records.with_label_values(&[topic, &partition.to_string()]).inc_by(records);
    }

    fn lag(&self, topic: &str, partition: i32, lag: Option<i64>) {
        let partition = partition.to_string();
        match lag {
            Some(lag) => self.stats.kafka_consumer_lag.with_label_values(&[topic, &partition]).set(lag),
            None => {
                let _ = self.stats.kafka_consumer_lag.remove_label_values(&[topic, &partition]);
            }
        }
    }

    fn committed(&self, topic: &str, partition: i32, offset: i64) {
        tracing::debug!(topic, partition, offset, "offsets committed");
        self.stats.kafka_committed_offset.with_label_values(&[topic, &partition.to_string()]).set(offset);
    }

    fn durable(&self, latency: std::time::Duration, _records: usize) {
        self.stats.ingest_to_durable_seconds.observe(latency.as_secs_f64());
    }

    fn commit_failed(&self, error: &str) {
        tracing::warn!(error, "kafka offset commit failed; retrying at the next interval");
        self.stats.kafka_commit_failures.inc();
    }

    fn connection(&self, up: bool, detail: &str) {
        use crate::health::ComponentHealth;
        if up {
            tracing::info!("kafka source: brokers reachable");
            self.stats.kafka_source_disconnected.set(0);
            self.health.set("kafka source", ComponentHealth::Ready);
        } else {
            tracing::warn!(detail, "kafka source: brokers unreachable; retrying");
            self.stats.kafka_source_disconnected.set(1);
            self.health
                .set("kafka source", ComponentHealth::NotReady(format!("brokers unreachable: {detail}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_source_reports_become_metrics_and_health() {
        use millstream_connectors::kafka::KafkaSourceObserver;
        let stats = Arc::new(RunStats::new());
        let health = Arc::new(crate::health::Health::default());
        let observer = KafkaSourceStats { stats: Arc::clone(&stats), health: Arc::clone(&health) };
        observer.lag("readings", 2, Some(40));
        observer.lag("readings", 3, None);
        observer.committed("readings", 2, 1200);
        observer.commit_failed("coordinator load in progress");
        observer.durable(std::time::Duration::from_millis(300), 500);
        observer.connection(false, "1/1 brokers are down");
        let text = stats.render();
        assert!(
            text.contains("millstream_kafka_consumer_lag{partition=\"2\",topic=\"readings\"} 40"),
            "{text}"
        );
        assert!(!text.contains("partition=\"3\""), "unknown lag is absent, not 0: {text}");
        assert!(text.contains("millstream_kafka_committed_offset{partition=\"2\",topic=\"readings\"} 1200"));
        assert!(text.contains("millstream_kafka_commit_failures_total 1"));
        assert!(text.contains("millstream_ingest_to_durable_seconds_count 1"));
        assert!(text.contains("millstream_kafka_source_disconnected 1"));
        assert!(health.readiness().is_err());
        observer.connection(true, "");
        assert!(health.readiness().is_ok());
        assert!(stats.render().contains("millstream_kafka_source_disconnected 0"));
    }

    #[test]
    fn metrics_render_with_their_labels() {
        let stats = RunStats::new();
        stats.readings.inc_by(3);
        stats.dead_letter(Reason::Duplicate);
        stats.anomaly("robust_z", Severity::High);
        stats.sink_batch_rows.with_label_values(&["postgres"]).observe(100.0);
        let text = stats.render();
        assert!(text.contains("millstream_readings_total 3"), "{text}");
        assert!(text.contains("millstream_dead_letters_total{reason=\"duplicate\"} 1"), "{text}");
        assert!(text.contains("millstream_dead_letters_total{reason=\"malformed_json\"} 0"), "{text}");
        assert!(
            text.contains("millstream_anomalies_total{detector=\"robust_z\",severity=\"high\"} 1"),
            "{text}"
        );
        assert!(text.contains("millstream_sink_batch_rows_count{sink=\"postgres\"} 1"), "{text}");
        assert_eq!(stats.anomalies_total(), 1);
        assert_eq!(stats.dead_letters_total(), 1);
    }
}
