//! Running the dataflow on a timely cluster: one process or several, each with worker threads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use millstream_sinks::SinkSpec;

use crate::config::PipelineConfig;
use crate::score::RunContext;
use crate::source::{OpenedSource, SourceSpec};
use crate::stats::RunStats;

/// Where this process sits in a timely cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// Worker threads in this process.
    pub workers: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// This process's index, `0..processes`.
    pub process: usize,
    /// One `host:port` a line, for every process, in index order.
    pub hostfile: Option<PathBuf>,
    /// How long to wait for every peer to connect at start-up (`None`: forever).
    pub startup_timeout: Option<Duration>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
            startup_timeout: Some(crate::cluster::DEFAULT_STARTUP_TIMEOUT),
        }
    }
}

impl ClusterOptions {
    pub fn timely_config(&self) -> anyhow::Result<timely::Config> {
        let ClusterOptions { workers, processes, process, hostfile, startup_timeout: _ } = self;
        if *workers == 0 {
            bail!("--workers must be at least 1");
        }
        if *processes == 0 {
            bail!("--processes must be at least 1");
        }
        if process >= processes {
            bail!("--process {process} is out of range for --processes {processes} (0 to {})", processes - 1);
        }
        let communication = if *processes > 1 {
            let Some(hostfile) = hostfile else { bail!("--processes {processes} needs --hostfile") };
            let text = std::fs::read_to_string(hostfile)
                .with_context(|| format!("cannot read hostfile {}", hostfile.display()))?;
            let addresses: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect();
            if addresses.len() < *processes {
                bail!(
                    "hostfile {} lists {} addresses, --processes is {processes}",
                    hostfile.display(),
                    addresses.len()
                );
            }
            timely::CommunicationConfig::Cluster {
                threads: *workers,
                process: *process,
                addresses: addresses[..*processes].to_vec(),
                report: false,
                zerocopy: false,
            }
        } else if *workers > 1 {
            timely::CommunicationConfig::Process(*workers)
        } else {
            timely::CommunicationConfig::Thread
        };
        Ok(timely::Config { communication, worker: timely::WorkerConfig::default() })
    }
}

/// A `run`: what to read, where to write, how to compute, on which cluster.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub source: SourceSpec,
    pub sinks: Vec<SinkSpec>,
    pub pipeline: PipelineConfig,
    pub cluster: ClusterOptions,
    /// Serve `/metrics` and `/health/*` on this address.
    pub http: Option<String>,
    /// The PostgreSQL sinks' settings.
    pub postgres: crate::pg_sink::PgSinkSettings,
    /// The admin endpoints' token and what they show.
    pub admin: crate::http::Admin,
    /// The `[kafka]` settings, for a Kafka source or sink.
    pub kafka: crate::kafka_settings::KafkaSettings,
    /// Kafka source: stop, flushed and committed, once every partition reaches the end offset
    /// it had when the run started.
    pub stop_at_end: bool,
    /// The `[models]` settings: per-asset models and their store.
    pub models: crate::models::ModelsSettings,
    /// The `[checkpoint]` settings.
    pub checkpoint: crate::checkpoint::CheckpointSettings,
}

/// What a finished run did in this process.
#[derive(Debug)]
pub struct RunReport {
    pub stats: Arc<RunStats>,
    pub elapsed: Duration,
}

/// Runs `plan` to completion (a finite source) and returns this process's counters.
/// `stats` is shared so that a caller can watch progress while it runs.
pub fn run(plan: RunPlan, stats: Arc<RunStats>) -> anyhow::Result<RunReport> {
    let RunPlan {
        source,
        sinks,
        mut pipeline,
        cluster,
        http,
        postgres,
        admin,
        kafka,
        stop_at_end,
        models,
        checkpoint,
    } = plan;
    models.check()?;
    if checkpoint.enabled() && checkpoint.interval_ms % pipeline.epoch_ms.max(1) != 0 {
        // A boundary inside an epoch would split readings of one timely time across it.
        bail!(
            "[checkpoint] interval_ms ({}) must be a multiple of [pipeline] epoch_ms ({})",
            checkpoint.interval_ms,
            pipeline.epoch_ms
        );
    }
    let checkpointing = crate::checkpoint::prepare(&checkpoint, &source, &sinks, &postgres, &cluster)?;
    if let Some(boundary) = checkpointing.as_ref().and_then(|c| c.restored_boundary()) {
        stats.checkpoint_restored_seconds.set((boundary / 1000) as i64);
    }
    let health = Arc::new(crate::health::Health::default());
    if let Some(addr) = http {
        let bound = crate::http::serve(&addr, Arc::clone(&health), Arc::clone(&stats), admin)?;
        tracing::info!(%bound, "serving /metrics, /health/live and /health/ready");
    }
    if sinks.is_empty() {
        bail!("at least one --sink is needed (jsonl:DIR, stdout or null)");
    }
    let timely_config = cluster.timely_config()?;
    stats.workers.set(cluster.workers as i64);
    stats.processes.set(cluster.processes as i64);
    if let (SourceSpec::Kafka(_), Some(lateness)) = (&source, kafka.allowed_lateness_ms) {
        pipeline.allowed_lateness_ms = lateness;
    }
    let kafka_sink = match sinks.iter().find_map(|s| match s {
        SinkSpec::Kafka(brokers) => Some(brokers),
        _ => None,
    }) {
        Some(brokers) => {
            let settings = crate::kafka_sink::KafkaSinkSettings {
                client: kafka.client_config(brokers)?,
                topics: kafka.sink_topics()?,
            };
            if cluster.process == 0 {
                let topics = [
                    settings.topics.notifications.as_str(),
                    settings.topics.dead_letters.as_str(),
                    settings.topics.control.as_str(),
                ];
                millstream_sinks::kafka::ensure_topics(&settings.client, &topics, kafka.topic_partitions)
                    .map_err(|e| anyhow::anyhow!("kafka sink: {e}"))?;
            }
            Some(settings)
        }
        None => None,
    };
    if sinks.iter().filter(|s| matches!(s, SinkSpec::Kafka(_))).count() > 1 {
        bail!("at most one kafka:// sink (its topics come from the [kafka] config)");
    }
    let observer =
        Arc::new(crate::stats::KafkaSourceStats { stats: Arc::clone(&stats), health: Arc::clone(&health) });
    let opened =
        OpenedSource::open(&source, crate::source::KafkaOpen { settings: &kafka, stop_at_end, observer })?;
    if let OpenedSource::File(input) = &opened {
        if input.is_stream() && cluster.processes > 1 {
            bail!(
                "{} is a pipe or a device: each process of a cluster reads the file itself, so it \
                 must be a regular file",
                input.path().display()
            );
        }
    }
    let emit_readings = pipeline.emit_scores || sinks.iter().any(SinkSpec::stores_readings);
    // Only the process that hosts worker 0 watches the store; the updates are broadcast.
    let model_feed = if cluster.process == 0 {
        let (serving, decided) = crate::model_stream::restored_models(checkpointing.as_deref());
        crate::models::start(&models, Arc::clone(&stats), Arc::clone(&health), serving, decided)?
    } else {
        None
    };
    let models = models.store.is_some().then(|| Arc::new(models));
    let context = Arc::new(RunContext {
        config: pipeline,
        resolver: opened.resolver(),
        stats: Arc::clone(&stats),
        health,
        postgres,
        kafka_sink,
        emit_readings,
        workers_per_process: cluster.workers.max(1),
        models,
        model_feed: std::sync::Mutex::new(model_feed),
        checkpointing,
    });
    let started = Instant::now();
    let threads = cluster.workers.max(1);
    let stats_for_workers = Arc::clone(&stats);
    let guards = crate::cluster::execute(timely_config, cluster.startup_timeout, move |worker| {
        let crate::graph::Built { probe, kafka } = worker
            .dataflow::<u64, _, _>(|scope| crate::graph::build(scope, &opened, &sinks, Arc::clone(&context)));
        // One worker of each process reports how far its sinks are complete.
        let reports_frontier = worker.index() % threads == 0;
        while !probe.done() {
            worker.step_or_park(None);
            if reports_frontier {
                stats_for_workers.durable_frontier(probe.with_frontier(|f| f.first().copied()));
            }
        }
        // Everything read is durable now: commit it before the process exits.
        if let Some(kafka) = kafka {
            if let Err(e) = kafka.commit_all(Duration::from_secs(30)) {
                crate::fatal(&format!("kafka source: {e}"));
            }
        }
    })?;
    for result in guards.join() {
        result.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
    }
    Ok(RunReport { stats, elapsed: started.elapsed() })
}
