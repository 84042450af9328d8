//! The `millstream` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use millstream::config::{LogFormat, LogSettings, Settings};
use millstream::run::{run, ClusterOptions, RunPlan};
use millstream::source::SourceSpec;
use millstream::stats::RunStats;
use millstream_operators::sensor::LatePolicy;
use millstream_sinks::SinkSpec;

/// jemalloc. Readings and timely's buffers are allocated on one worker and freed on another
/// after the exchange. With glibc malloc a fifth of the run was malloc/free. With mimalloc, at two
/// workers, the cross-thread frees kept the kernel zeroing fresh pages (`clear_page_erms` was
/// the largest cost 2 workers had over 1). jemalloc reuses the freed memory and shows neither.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Measure the Kafka source against a raw rdkafka consumer of the same topic, and
    /// end-to-end notification latency at a fixed rate.
    BenchKafka(millstream::bench_kafka::BenchKafkaArgs),
    /// Plot readings of a sensor or an asset, with anomaly episodes shaded, and print a summary table.
    Report(millstream::report::ReportArgs),
    /// Score the pipeline on SKAB (labelled water-pump data) the SKAB way: F1, FAR, MAR.
    Eval(millstream::eval::EvalArgs),
    /// Train a per-asset k-means model from readings and store it as a new version.
    Train {
        #[command(flatten)]
        args: millstream::train::TrainArgs,
        /// A TOML configuration file (for `[models] store`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Load readings into a Kafka topic, keyed by sensor_id, creating the topic if missing.
    Produce(millstream::produce::ProduceArgs),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Internal: the benchmark's hand-written single loop over a file.
    #[command(hide = true)]
    BenchLoop { path: PathBuf },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check FILE (with the MILLSTREAM_* environment) and print the effective configuration,
    /// secrets shown as ***. Exits non-zero naming the key of any problem.
    Check { file: PathBuf },
}

#[derive(Args)]
struct RunArgs {
    /// file:PATH | simulate[:key=value,…] | kafka://HOST:PORT/TOPIC (or run.source in the config)
    #[arg(long)]
    source: Option<SourceSpec>,
    /// jsonl:DIR | stdout | null | postgres://… (repeatable; or run.sinks in the config)
    #[arg(long = "sink")]
    sinks: Vec<SinkSpec>,
    /// Write scores.jsonl (one line per accepted reading) in jsonl sinks.
    #[arg(long)]
    emit_scores: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// TOML configuration file (see README and config/examples/); MILLSTREAM_* variables
    /// override it, flags override both.
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
    /// Worker threads in this process (default 1, or run.workers in the config).
    #[arg(long, short = 'w')]
    workers: Option<usize>,
    /// Processes in the timely cluster.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// This process's index in the cluster.
    #[arg(long, default_value_t = 0)]
    process: usize,
    /// One host:port a line, for each process in index order.
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// Seconds to wait for every cluster peer at start-up before exiting with code 75 (0: forever).
    #[arg(long, value_name = "SECS", default_value_t = millstream::cluster::DEFAULT_STARTUP_TIMEOUT.as_secs())]
    startup_timeout: u64,
}

impl ClusterArgs {
    fn into_options(self, default_workers: usize) -> ClusterOptions {
        let ClusterArgs { workers, processes, process, hostfile, startup_timeout } = self;
        let startup_timeout = (startup_timeout > 0).then(|| std::time::Duration::from_secs(startup_timeout));
        let workers = workers.unwrap_or(default_workers);
        ClusterOptions { workers, processes, process, hostfile, startup_timeout }
    }
}

/// Logs go to stderr, human-readable or JSON, filtered by `log.level` (a tracing filter).
fn init_logging(settings: &LogSettings) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.level)
        .map_err(|e| anyhow::anyhow!("log.level `{}`: {e}", settings.level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match settings.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    let result = match cli.command {
        Command::Run(args) => run_command(args),
        Command::Config(ConfigCommand::Check { file }) => Settings::load(Some(&file))
            .map_err(anyhow::Error::from)
            // What `run` checks of the models' settings too, so a file that passes here runs.
            .and_then(|settings| settings.models.check().map(|()| settings))
            .map(|settings| print!("{}", settings.to_redacted_toml())),
        Command::Demo(args) => {
            init_logging(&LogSettings::default()).and_then(|()| millstream::demo::demo(args))
        }
        Command::Bench(args) => millstream::bench::bench(args),
        Command::Migrate { database_url } => migrate(&database_url),
        Command::BenchPostgres(args) => millstream::bench_pg::bench_postgres(args),
        Command::BenchKafka(args) => millstream::bench_kafka::bench_kafka(args),
        Command::Report(args) => millstream::report::report(args),
        Command::Eval(args) => millstream::eval::eval(args),
        Command::Train { args, config } => Settings::load(config.as_deref())
            .map_err(anyhow::Error::from)
            .and_then(|settings| millstream::train::train(args, settings.models.store)),
        Command::Produce(args) => millstream::produce::produce(args),
        Command::BenchLoop { path } => millstream::bench::hand_written_loop(&path).map(|report| {
            println!("{}", serde_json::to_string(&report).expect("report serializes"));
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("millstream: error: {}", error_line(&error));
            ExitCode::from(millstream::cluster::exit_code(&error))
        }
    }
}

/// Help and version go to stdout as clap prints them; bad usage is one line on stderr (the
/// contract: "a one-line reason on bad usage"), exit code 2 as clap's own.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => error.exit(),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            eprintln!("millstream: error: a command is required (see millstream --help)");
        }
        _ => {
            // clap's first paragraph is the reason (a list of missing arguments continues it
            // on the next lines); usage and tips follow after a blank line.
            let rendered = error.render().to_string();
            let paragraph: Vec<&str> = rendered.lines().take_while(|l| !l.trim().is_empty()).collect();
            let reason = millstream::one_line(&paragraph.join("\n"));
            eprintln!(
                "millstream: error: {} (see --help)",
                reason.strip_prefix("error: ").unwrap_or(&reason)
            );
        }
    }
    ExitCode::from(2)
}

/// An error and its causes on one line, without repeating a cause that its error's message
/// already ends with (errors that print their source, and also return it as `source()`).
fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain().map(|e| e.to_string()) {
        if line.ends_with(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    millstream::one_line(&line)
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
    let settings = Settings::load(args.config.as_deref())?;
    init_logging(&settings.log)?;
    tracing::info!(config = %settings.to_redacted_toml().replace('\n', "; "), "effective configuration");
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
    let _ = config; // loaded above
    let config_text = settings.to_redacted_toml();
    let Settings {
        run: run_settings,
        mut pipeline,
        postgres,
        admin,
        kafka,
        models,
        validation,
        checkpoint,
        log: _,
    } = settings;
    pipeline.validation = Arc::new(validation);
    let admin = millstream::http::Admin { token: admin.resolve_token()?, config: config_text };
    let source = match (source, run_settings.source) {
        (Some(source), _) => source,
        (None, Some(text)) => text.parse().map_err(|e| anyhow::anyhow!("run.source: {e}"))?,
        (None, None) => anyhow::bail!("no source: give --source or run.source in the config"),
    };
    let sinks = if sinks.is_empty() {
        run_settings
            .sinks
            .iter()
            .map(|text| text.parse::<SinkSpec>().map_err(|e| anyhow::anyhow!("run.sinks: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        sinks
    };
    let http = http.or(run_settings.http);
    let postgres_password = postgres.resolve_password()?;
    if apply_migrations {
        for sink in &sinks {
            if let SinkSpec::Postgres(url) = sink {
                migrate(url)?;
            }
        }
    }
    if let Some(ms) = allowed_lateness_ms {
        pipeline.allowed_lateness_ms = ms;
    }
    if let Some(policy) = late_policy {
        pipeline.late_policy = policy;
    }
    pipeline.emit_scores |= emit_scores;
    let stats = Arc::new(RunStats::default());
    let postgres = millstream::pg_sink::PgSinkSettings {
        password: postgres_password.map(|p| p.expose().to_owned()),
        batching: millstream::pg_sink::PgBatching {
            batch_rows: postgres.batch_rows.max(1),
            max_delay: std::time::Duration::from_millis(postgres.max_delay_ms),
        },
    };
    let cluster = cluster.into_options(run_settings.workers);
    // Files and the simulator are finite and always stop at their end; `stop_at_end` makes a
    // Kafka source finite.
    let plan = RunPlan {
        source,
        sinks,
        pipeline,
        cluster,
        http,
        postgres,
        admin,
        kafka,
        stop_at_end,
        models,
        checkpoint,
    };
    let report = run(plan, stats)?;
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
