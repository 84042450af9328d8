//! The `millstream` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use millstream::config::{ConfigFile, PipelineConfig};
use millstream::run::{run, ClusterOptions, RunPlan};
use millstream::source::SourceSpec;
use millstream::stats::RunStats;
use millstream_operators::sensor::LatePolicy;
use millstream_sinks::SinkSpec;

/// mimalloc: readings allocate small strings at line rate and free them on another stage (or
/// another thread); glibc malloc spent about a fifth of the run in malloc/free there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "millstream",
    version,
    about = "Incremental predictive-maintenance stream processor on timely dataflow"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline from a source to sinks.
    Run(RunArgs),
    /// Run a simulated plant through the whole pipeline and report detections against the
    /// injected faults. Needs no services.
    Demo(millstream::demo::DemoArgs),
    /// Measure end-to-end throughput (file → null at 1 and 2 workers) against a hand-written loop.
    Bench(millstream::bench::BenchArgs),
    /// Apply pending database migrations (idempotent; refuses a tampered or newer schema).
    Migrate {
        /// postgres://USER[:PASSWORD]@HOST[:PORT]/DB (a password may also come from PGPASSWORD).
        #[arg(long)]
        database_url: String,
    },
    /// Measure the PostgreSQL sink against a raw binary COPY of the same rows.
    BenchPostgres(millstream::bench_pg::BenchPostgresArgs),
    /// Internal: the benchmark's hand-written single loop over a file.
    #[command(hide = true)]
    BenchLoop { path: PathBuf },
}

#[derive(Args)]
struct RunArgs {
    /// file:PATH | simulate[:key=value,…] | kafka://HOST:PORT/TOPIC
    #[arg(long)]
    source: SourceSpec,
    /// jsonl:DIR | stdout | null (repeatable)
    #[arg(long = "sink", required = true)]
    sinks: Vec<SinkSpec>,
    /// Write scores.jsonl (one line per accepted reading) in jsonl sinks.
    #[arg(long)]
    emit_scores: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// TOML configuration file (see README); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Allowed lateness in milliseconds (default 5000).
    #[arg(long)]
    allowed_lateness_ms: Option<u64>,
    /// What to do with late readings: keep (flagged, not scored) or dead_letter.
    #[arg(long)]
    late_policy: Option<LatePolicy>,
    /// Kafka only: stop, flushed and committed, at the end offsets of the start.
    #[arg(long)]
    stop_at_end: bool,
    /// Serve /metrics, /health/live and /health/ready on this address (e.g. 127.0.0.1:9898).
    #[arg(long)]
    http: Option<String>,
    /// Apply pending migrations to every postgres:// sink before running.
    #[arg(long)]
    migrate: bool,
}

#[derive(Args, Clone)]
pub struct ClusterArgs {
    /// Worker threads in this process.
    #[arg(long, short = 'w', default_value_t = 1)]
    workers: usize,
    /// Processes in the timely cluster.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// This process's index in the cluster.
    #[arg(long, default_value_t = 0)]
    process: usize,
    /// One host:port a line, for each process in index order.
    #[arg(long)]
    hostfile: Option<PathBuf>,
}

impl From<ClusterArgs> for ClusterOptions {
    fn from(a: ClusterArgs) -> Self {
        let ClusterArgs { workers, processes, process, hostfile } = a;
        ClusterOptions { workers, processes, process, hostfile }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MILLSTREAM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_command(args),
        Command::Demo(args) => millstream::demo::demo(args),
        Command::Bench(args) => millstream::bench::bench(args),
        Command::Migrate { database_url } => migrate(&database_url),
        Command::BenchPostgres(args) => millstream::bench_pg::bench_postgres(args),
        Command::BenchLoop { path } => millstream::bench::hand_written_loop(&path).map(|report| {
            println!("{}", serde_json::to_string(&report).expect("report serializes"));
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let chain: Vec<String> = error.chain().map(|e| e.to_string()).collect();
            eprintln!("millstream: error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn migrate(url: &str) -> anyhow::Result<()> {
    let report = millstream_sinks::postgres::migrate::migrate_blocking(url)?;
    if report.applied.is_empty() {
        eprintln!("millstream: database is up to date ({} migrations)", report.already);
    } else {
        eprintln!("millstream: applied {}", report.applied.join(", "));
    }
    Ok(())
}

fn run_command(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        source,
        sinks,
        emit_scores,
        cluster,
        config,
        allowed_lateness_ms,
        late_policy,
        stop_at_end,
        http,
        migrate: apply_migrations,
    } = args;
    if apply_migrations {
        for sink in &sinks {
            if let SinkSpec::Postgres(url) = sink {
                migrate(url)?;
            }
        }
    }
    // Files and the simulator are finite: they always stop at their end.
    let _ = stop_at_end;
    let mut pipeline = match config {
        Some(path) => ConfigFile::load(&path)?.pipeline,
        None => PipelineConfig::default(),
    };
    if let Some(ms) = allowed_lateness_ms {
        pipeline.allowed_lateness_ms = ms;
    }
    if let Some(policy) = late_policy {
        pipeline.late_policy = policy;
    }
    pipeline.emit_scores |= emit_scores;
    let stats = Arc::new(RunStats::default());
    let report = run(RunPlan { source, sinks, pipeline, cluster: cluster.into(), http }, stats)?;
    let s = &report.stats;
    tracing::info!(
        readings = s.readings.get(),
        anomalies = s.anomalies_total(),
        dead_letters = s.dead_letters_total(),
        late_kept = s.late_kept.get(),
        elapsed_ms = report.elapsed.as_millis() as u64,
        "run complete"
    );
    Ok(())
}
