//! `millstream bench-kafka`: the Kafka source's read rate against a raw rdkafka consumer of
//! the same topic on the same broker, and the end-to-end latency of anomaly notifications at a
//! fixed input rate.
//!
//! **Throughput.** N simulated readings (the plant of `millstream bench`) are produced once to
//! a 4-partition topic. Each round then times, in alternating order:
//! - the raw ceiling: one rdkafka `BaseConsumer` (a throwaway group id, no commits, librdkafka's
//!   default fetch and queue settings) that assigns every partition at its first offset and
//!   polls until each reaches its high watermark, summing key and payload lengths; timed from
//!   the consumer's creation (connection included);
//! - the dataflow: `millstream run --source kafka://… --sink null --stop-at-end` as a child
//!   process with a fresh consumer group, timed from spawn to exit (start-up, connection,
//!   final commit and shut-down included);
//! - the same command on an empty topic: the fixed cost of a run, to give a corrected figure.
//!
//! Ratios (raw time / dataflow time, i.e. dataflow rate / raw rate) are taken within each
//! round and the median over rounds is reported, as in the other benchmarks.
//!
//! **Latency.** `millstream run --source kafka://… --sink kafka://…` runs in the background
//! while readings are produced at a fixed rate, their event time the wall clock at production.
//! Every sensor has steady noise (uniform, ±1) and, after its warm-up, one reading in 50 is a
//! spike about 160 σ away, which the detector always flags and nothing else is. The clock
//! starts when a spike is handed to this process's producer and stops when this process has
//! read its notification from the notification topic: an upper bound of the time to an
//! acknowledged notification. The measured window opens once the first notification has come
//! back (the run is up and warm), and after it readings without spikes keep coming so that
//! event time keeps moving until every spike of the window is notified. The run's topics (input,
//! notifications, dead letters) and group are the benchmark's own, named after this process.
//! A last row times one plain produce → consume hop through the broker (every record, no
//! millstream): a notification makes two such hops, plus the sink's acknowledged produce.
//!
//! When no `--brokers` is given, a throwaway tansu broker is started for the run (as the
//! testkit starts one: `sqlite://` storage in a temporary directory, killed at the end).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use millstream_events::{CompactString, Reading};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::produce::Deliveries;

/// Partitions of every topic the benchmark creates.
const PARTITIONS: i32 = 4;
/// How long a metadata, admin or flush call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one consume of the throughput topic (raw or dataflow) may take.
const READ_TIMEOUT: Duration = Duration::from_secs(600);
/// The target for dataflow rate / raw rate.
const TARGET_RATIO: f64 = 0.8;

/// Latency input: readings a second per sensor (so a sensor warms up in ~2 s).
const READINGS_PER_SENSOR_PER_S: u64 = 20;
/// Latency input: a sensor's readings before it may spike (the detector's warm-up is 30).
const WARMUP_READINGS: u64 = 40;
/// Latency input: one reading in this many is a spike, per sensor, staggered across sensors.
const SPIKE_EVERY: u64 = 50;
/// Latency input: the spike's size; the noise is uniform in ±1 (σ ≈ 0.58, scale ≈ 0.63).
const SPIKE: f64 = 100.0;
/// The notification listener's fetch wait: a bound on what it adds to a latency.
const LISTENER_FETCH_WAIT_MS: &str = "10";

#[derive(Args, Debug, Clone)]
pub struct BenchKafkaArgs {
    /// Bootstrap brokers HOST:PORT[,…] (default: start a throwaway tansu broker for the run).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Readings produced for the throughput comparison.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub readings: u64,
    /// Throughput rounds (per-round ratios; the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: u64,
    /// Worker threads of the dataflow runs.
    #[arg(long, short = 'w', default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub workers: u64,
    /// Latency: readings produced per second.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub latency_rate: u64,
    /// Latency: seconds of the measured window (each settings row).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub latency_seconds: u64,
    /// Also print every figure as one JSON line at the end.
    #[arg(long)]
    pub json: bool,
}

/// Every figure of a run (the `--json` line).
#[derive(Debug, Serialize)]
pub struct BenchKafkaReport {
    pub brokers: String,
    /// `tansu (started by the benchmark)` or `given`.
    pub broker: String,
    pub workers: u64,
    pub throughput: ThroughputReport,
    pub latency: Vec<LatencyReport>,
}

#[derive(Debug, Serialize)]
pub struct ThroughputReport {
    pub readings: u64,
    pub bytes: u64,
    pub produce_seconds: f64,
    pub rounds: Vec<ThroughputRound>,
    /// Medians over the rounds.
    pub raw_records_per_s: f64,
    pub dataflow_records_per_s: f64,
    pub startup_seconds: f64,
    /// Median of the per-round dataflow rate / raw rate (wall time, start-up included).
    pub ratio_median: f64,
    /// The same with the empty-topic run's time taken off the dataflow's.
    pub corrected_ratio_median: f64,
    pub target: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRound {
    pub raw_seconds: f64,
    pub dataflow_seconds: f64,
    /// `millstream run … --stop-at-end` on an empty topic: spawn to exit.
    pub startup_seconds: f64,
    /// raw_seconds / dataflow_seconds.
    pub ratio: f64,
    /// raw_seconds / (dataflow_seconds − startup_seconds).
    pub corrected_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct LatencyReport {
    pub settings: String,
    /// `false` for the broker-only row: every record produced → read back, no millstream.
    pub pipeline: bool,
    pub epoch_ms: u64,
    pub allowed_lateness_ms: u64,
    /// The environment given to the run on top of this process's.
    pub env: Vec<(String, String)>,
    pub rate: u64,
    /// Records produced in the measured window / its length.
    pub achieved_rate: f64,
    pub seconds: u64,
    pub sensors: usize,
    /// From spawning the run to the first notification back.
    pub warmup_seconds: f64,
    /// Spikes produced in the measured window (broker row: every record of the window).
    pub spikes: u64,
    /// Spikes whose notification came back (the histogram's count).
    pub count: u64,
    /// Spikes of the window with no notification by the end of the drain.
    pub missed: u64,
    /// Notifications that match no spike (false positives; none expected).
    pub unexpected: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

pub fn bench_kafka(args: BenchKafkaArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the millstream executable")?;
    let started_broker;
    let (brokers, broker_kind) = match &args.brokers {
        Some(given) => (bootstrap_servers(given)?, "given".to_owned()),
        None => {
            started_broker = Broker::start()?;
            eprintln!(
                "started tansu on {} ({})",
                started_broker.bootstrap(),
                started_broker.dir.path().display()
            );
            (started_broker.bootstrap(), "tansu (started by the benchmark)".to_owned())
        }
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let run_id = format!("bench-kafka-{}-{}", std::process::id(), now.as_secs());

    let throughput = throughput(&exe, &brokers, &run_id, &args)?;

    // The run's effective settings (this process's MILLSTREAM_* environment, which the run
    // inherits), then short epochs and lateness.
    let settings = Settings::load(None)?;
    let lateness = settings.kafka.allowed_lateness_ms.unwrap_or(settings.pipeline.allowed_lateness_ms);
    let setups = [
        LatencySetup {
            name: "effective (defaults)".to_owned(),
            pipeline: true,
            epoch_ms: settings.pipeline.epoch_ms,
            lateness_ms: lateness,
            env: Vec::new(),
        },
        LatencySetup {
            name: "short epoch and lateness".to_owned(),
            pipeline: true,
            epoch_ms: 100,
            lateness_ms: 200,
            env: vec![
                ("MILLSTREAM_PIPELINE__EPOCH_MS".to_owned(), "100".to_owned()),
                ("MILLSTREAM_KAFKA__ALLOWED_LATENESS_MS".to_owned(), "200".to_owned()),
            ],
        },
        // What one hop through the broker costs (a notification takes two, plus the sink's
        // acknowledged produce).
        LatencySetup {
            name: "broker round trip only".to_owned(),
            pipeline: false,
            epoch_ms: 0,
            lateness_ms: 0,
            env: Vec::new(),
        },
    ];
    let mut latency = Vec::new();
    for (index, setup) in setups.iter().enumerate() {
        latency.push(
            measure_latency(&exe, &brokers, &run_id, index, setup, &args)
                .with_context(|| format!("latency with {}", setup.name))?,
        );
    }

    let report =
        BenchKafkaReport { brokers, broker: broker_kind, workers: args.workers, throughput, latency };
    print_markdown(&report);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

fn print_markdown(report: &BenchKafkaReport) {
    let t = &report.throughput;
    println!(
        "\n## Kafka source throughput: {} readings ({:.1} MB), {} partitions, {} worker(s), broker {}\n",
        t.readings,
        t.bytes as f64 / 1e6,
        PARTITIONS,
        report.workers,
        report.broker
    );
    println!("| round | raw consumer | dataflow (spawn to exit) | start-up (empty topic) | dataflow / raw | corrected |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let rate = |secs: f64| t.readings as f64 / secs / 1e3;
    for (i, r) in t.rounds.iter().enumerate() {
        println!(
            "| {} | {:.2} s ({:.1} k/s) | {:.2} s ({:.1} k/s) | {:.2} s | {:.2} | {:.2} |",
            i + 1,
            r.raw_seconds,
            rate(r.raw_seconds),
            r.dataflow_seconds,
            rate(r.dataflow_seconds),
            r.startup_seconds,
            r.ratio,
            r.corrected_ratio
        );
    }
    println!(
        "| **median** | {:.1} k/s | {:.1} k/s | {:.2} s | **{:.2}** | **{:.2}** |",
        t.raw_records_per_s / 1e3,
        t.dataflow_records_per_s / 1e3,
        t.startup_seconds,
        t.ratio_median,
        t.corrected_ratio_median
    );
    println!(
        "\ndataflow / raw, median of per-round ratios: {:.2} (target ≥ {:.2}); with the start-up \
         taken off: {:.2}. Produced at {:.1} k/s.",
        t.ratio_median,
        t.target,
        t.corrected_ratio_median,
        t.readings as f64 / t.produce_seconds / 1e3
    );
    println!(
        "\n## Notification latency (spike produced → its notification read back), {} worker(s)\n",
        report.workers
    );
    println!(
        "| settings | epoch ms | lateness ms | rate/s (achieved) | s | sensors | samples | read back | missed \
         | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for l in &report.latency {
        let (epoch, lateness) = if l.pipeline {
            (l.epoch_ms.to_string(), l.allowed_lateness_ms.to_string())
        } else {
            ("–".to_owned(), "–".to_owned())
        };
        println!(
            "| {} | {epoch} | {lateness} | {} ({:.0}) | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} |",
            l.settings,
            l.rate,
            l.achieved_rate,
            l.seconds,
            l.sensors,
            l.spikes,
            l.count,
            l.missed,
            l.p50_ms,
            l.p99_ms,
            l.max_ms
        );
    }
    println!(
        "\nPipeline rows: samples are the spikes of the window, each timed from its produce call to \
         its notification read back (this process's producer → broker → millstream → broker → \
         this process). Event time is the wall clock at production, so a reading's results wait \
         for the watermark: about allowed lateness + one epoch. The broker row times every record \
         of one produce → consume hop, no millstream."
    );
}

// ---------------------------------------------------------------------------------------------
// Throughput

fn throughput(
    exe: &Path,
    brokers: &str,
    run_id: &str,
    args: &BenchKafkaArgs,
) -> anyhow::Result<ThroughputReport> {
    let topic = format!("{run_id}.throughput");
    let empty = format!("{run_id}.empty");
    create_topic(brokers, &topic, PARTITIONS)?;
    create_topic(brokers, &empty, PARTITIONS)?;

    let mut sender = Sender::new(brokers, 5)?;
    let started = Instant::now();
    let mut bytes = 0u64;
    for reading in crate::bench::plant_readings(args.readings) {
        let value = reading.to_contract_json();
        bytes += value.len() as u64;
        sender.send(&topic, &reading.sensor_id, value.as_bytes())?;
    }
    sender.flush()?;
    let produce_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "produced {} readings ({:.1} MB) to {topic} in {produce_seconds:.2} s ({:.1} k/s)",
        args.readings,
        bytes as f64 / 1e6,
        args.readings as f64 / produce_seconds / 1e3
    );
    drop(sender);

    let mut rounds = Vec::new();
    let mut groups = 0u32;
    let mut group = || {
        groups += 1;
        format!("{run_id}-group-{groups}")
    };
    for round in 0..args.rounds {
        #[derive(Clone, Copy)]
        enum Step {
            Raw,
            Dataflow,
            Startup,
        }
        let mut order = [Step::Raw, Step::Dataflow, Step::Startup];
        // Alternate the order (A B C, C B A, …) so a drift in machine speed hits all alike.
        if round % 2 == 1 {
            order.reverse();
        }
        let (mut raw, mut dataflow, mut startup) = (0.0, 0.0, 0.0);
        for step in order {
            match step {
                Step::Raw => {
                    let (secs, records, sum) = raw_consume(brokers, &topic, &group())?;
                    std::hint::black_box(sum);
                    if records != args.readings {
                        bail!("the raw consumer read {records} records, {} were produced", args.readings);
                    }
                    raw = secs;
                }
                Step::Dataflow => {
                    let (secs, readings) = run_to_end(exe, brokers, &topic, args.workers, &group())?;
                    if readings.is_some_and(|r| r != args.readings) {
                        bail!(
                            "the dataflow read {} readings, {} were produced",
                            readings.unwrap_or(0),
                            args.readings
                        );
                    }
                    dataflow = secs;
                }
                Step::Startup => startup = run_to_end(exe, brokers, &empty, args.workers, &group())?.0,
            }
        }
        let corrected = (dataflow - startup).max(1e-3);
        let r = ThroughputRound {
            raw_seconds: raw,
            dataflow_seconds: dataflow,
            startup_seconds: startup,
            ratio: raw / dataflow,
            corrected_ratio: raw / corrected,
        };
        eprintln!(
            "round {}: raw {:.2} s ({:.1} k/s), dataflow {:.2} s ({:.1} k/s), start-up {:.2} s, \
             dataflow/raw {:.2} (corrected {:.2})",
            round + 1,
            raw,
            args.readings as f64 / raw / 1e3,
            dataflow,
            args.readings as f64 / dataflow / 1e3,
            startup,
            r.ratio,
            r.corrected_ratio
        );
        rounds.push(r);
    }
    let med = |f: fn(&ThroughputRound) -> f64| median(rounds.iter().map(f).collect());
    Ok(ThroughputReport {
        readings: args.readings,
        bytes,
        produce_seconds,
        raw_records_per_s: args.readings as f64 / med(|r| r.raw_seconds),
        dataflow_records_per_s: args.readings as f64 / med(|r| r.dataflow_seconds),
        startup_seconds: med(|r| r.startup_seconds),
        ratio_median: med(|r| r.ratio),
        corrected_ratio_median: med(|r| r.corrected_ratio),
        target: TARGET_RATIO,
        rounds,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The raw ceiling: assign every partition from the beginning and poll until each reaches the
/// high watermark it had before; returns (seconds from the consumer's creation, records, sum of
/// key and payload lengths).
fn raw_consume(brokers: &str, topic: &str, group: &str) -> anyhow::Result<(f64, u64, u64)> {
    // The first and end offsets, with a separate client, before the clock starts. (Assigning
    // at `Offset::Beginning` instead costs an offset lookup of ~0.8 s on tansu.)
    let ranges: HashMap<i32, (i64, i64)> = {
        let meta: BaseConsumer = client(brokers).set("group.id", group).create()?;
        let mut ranges = HashMap::new();
        for partition in partition_ids(meta.client(), topic)? {
            let (low, high) = meta
                .fetch_watermarks(topic, partition, CALL_TIMEOUT)
                .with_context(|| format!("cannot fetch the watermarks of {topic}/{partition}"))?;
            if high > low {
                ranges.insert(partition, (low, high));
            }
        }
        ranges
    };
    let started = Instant::now();
    let consumer: BaseConsumer = client(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("cannot create a Kafka consumer")?;
    let mut assignment = TopicPartitionList::new();
    for (&partition, &(low, _)) in &ranges {
        assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
    }
    consumer.assign(&assignment)?;
    let mut pending: HashMap<i32, i64> = ranges.into_iter().map(|(p, (_, high))| (p, high)).collect();
    let (mut records, mut sum) = (0u64, 0u64);
    while !pending.is_empty() {
        if started.elapsed() > READ_TIMEOUT {
            bail!("the raw consumer is still waiting for {pending:?} after {READ_TIMEOUT:?}");
        }
        let message = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Ok(message)) => message,
            Some(Err(e)) if is_transient(&e) => continue,
            Some(Err(e)) => return Err(e).with_context(|| format!("cannot read {topic}")),
        };
        let partition = message.partition();
        let Some(&end) = pending.get(&partition) else { continue };
        if message.offset() < end {
            records += 1;
            sum +=
                message.payload().map_or(0, <[u8]>::len) as u64 + message.key().map_or(0, <[u8]>::len) as u64;
        }
        if message.offset() + 1 >= end {
            pending.remove(&partition);
        }
    }
    Ok((started.elapsed().as_secs_f64(), records, sum))
}

/// `millstream run --source kafka://BROKERS/TOPIC --sink null --stop-at-end` with a fresh
/// group, spawn to exit; returns the seconds and the readings the run reported.
fn run_to_end(
    exe: &Path,
    brokers: &str,
    topic: &str,
    workers: u64,
    group: &str,
) -> anyhow::Result<(f64, Option<u64>)> {
    let started = Instant::now();
    let mut child = Command::new(exe)
        .args(["run", "--source", &format!("kafka://{brokers}/{topic}"), "--sink", "null", "--stop-at-end"])
        .args(["-w", &workers.to_string()])
        .env("MILLSTREAM_KAFKA__GROUP_ID", group)
        // The run's summary line, as JSON, to check it read everything.
        .env("MILLSTREAM_LOG__FORMAT", "json")
        .env("MILLSTREAM_LOG__LEVEL", "warn,millstream=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    // Read stderr on a thread: a full pipe must not stall the run.
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = started + READ_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("millstream run on {topic} did not finish within {READ_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let secs = started.elapsed().as_secs_f64();
    let log = reader.join().unwrap_or_default();
    if !status.success() {
        bail!("millstream run on {topic} failed ({status}):\n{}", tail(&log, 15));
    }
    let readings = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|v| v["message"] == "run complete")
        .and_then(|v| v["readings"].as_u64());
    Ok((secs, readings))
}

// ---------------------------------------------------------------------------------------------
// Latency

struct LatencySetup {
    name: String,
    /// `false`: no millstream, the broker's own produce → consume round trip of every record.
    pipeline: bool,
    epoch_ms: u64,
    lateness_ms: u64,
    env: Vec<(String, String)>,
}

#[derive(PartialEq)]
enum Phase {
    /// Until the first notification is back.
    Warmup,
    /// The measured window.
    Measure,
    /// No more spikes; readings keep event time moving until every spike is notified.
    Drain,
}

fn measure_latency(
    exe: &Path,
    brokers: &str,
    run_id: &str,
    index: usize,
    setup: &LatencySetup,
    args: &BenchKafkaArgs,
) -> anyhow::Result<LatencyReport> {
    let input = format!("{run_id}.latency-{index}");
    let notifications = format!("{run_id}.notifications-{index}");
    let dead_letters = format!("{run_id}.dead-letters-{index}");
    create_topic(brokers, &input, PARTITIONS)?;
    let listened = if setup.pipeline {
        create_topic(brokers, &notifications, PARTITIONS)?;
        &notifications
    } else {
        &input
    };
    let listener = Listener::start(brokers, listened)?;

    let log_dir = tempfile::tempdir()?;
    let log_path = log_dir.path().join("run.log");
    let log = File::create(&log_path)?;
    let spawned = Instant::now();
    let mut run = setup
        .pipeline
        .then(|| -> anyhow::Result<RunGuard> {
            Ok(RunGuard {
                child: Command::new(exe)
                    .args([
                        "run",
                        "--source",
                        &format!("kafka://{brokers}/{input}"),
                        "--sink",
                        &format!("kafka://{brokers}"),
                    ])
                    .args(["-w", &args.workers.to_string()])
                    .envs(setup.env.iter().map(|(k, v)| (k, v)))
                    // Spikes come every few seconds per sensor: without this they would all
                    // fall into one open episode (closed only after 60 s of quiet), and only
                    // the first would be notified. Each spike its own episode: what is timed
                    // is an alarm's latency, not the hysteresis.
                    .env("MILLSTREAM_PIPELINE__EPISODES__CLOSE_AFTER_MS", "0")
                    .env("MILLSTREAM_KAFKA__GROUP_ID", format!("{run_id}-latency-{index}"))
                    .env("MILLSTREAM_KAFKA__NOTIFICATION_TOPIC", &notifications)
                    .env("MILLSTREAM_KAFKA__DEAD_LETTER_TOPIC", &dead_letters)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .with_context(|| format!("cannot run {}", exe.display()))?,
                log: log_path.clone(),
            })
        })
        .transpose()?;
    let log_tail = |run: &Option<RunGuard>| run.as_ref().map_or_else(String::new, RunGuard::log_tail);

    let rate = args.latency_rate;
    // The broker row needs no long window: every record is a sample.
    let seconds = if setup.pipeline { args.latency_seconds } else { args.latency_seconds.min(5) };
    let window = Duration::from_secs(seconds);
    let hold = Duration::from_millis(setup.lateness_ms + setup.epoch_ms);
    let warmup_timeout = Duration::from_secs(60) + hold;
    let drain_timeout = hold * 2 + Duration::from_secs(10);
    eprintln!(
        "latency ({}): epoch {} ms, lateness {} ms, {rate} readings/s for {seconds} s",
        setup.name, setup.epoch_ms, setup.lateness_ms
    );

    let mut plant = LatencyPlant::new(rate, index as u64 + 1);
    let mut sender = Sender::new(brokers, 1)?;
    let mut pacer = Pacer::new(rate);
    // Spikes of the window by (sensor, ts), with when they were handed to the producer.
    let mut measured: HashMap<(CompactString, u64), Instant> = HashMap::new();
    let mut other_spikes: HashSet<(CompactString, u64)> = HashSet::new();
    // Notifications by (sensor, ts): the first arrival.
    let mut received: HashMap<(CompactString, u64), Instant> = HashMap::new();
    let mut phase = Phase::Warmup;
    let mut phase_started = Instant::now();
    let mut warmup_seconds = 0.0;
    let mut window_records = 0u64;
    let mut window_seconds = 0.0;
    let mut last_check = Instant::now();
    loop {
        pacer.wait(&sender);
        let (sensor, ts, value, spike) = plant.next(setup.pipeline && phase != Phase::Drain);
        let sent = Instant::now();
        let reading = Reading {
            asset_id: CompactString::from(Reading::default_asset_id(&sensor)),
            sensor_id: sensor,
            ts,
            value,
            unit: None,
        };
        sender.send(&input, &reading.sensor_id, reading.to_contract_json().as_bytes())?;
        if phase == Phase::Measure {
            window_records += 1;
        }
        if spike || !setup.pipeline {
            let key = (reading.sensor_id, ts);
            if phase == Phase::Measure {
                measured.insert(key, sent);
            } else {
                other_spikes.insert(key);
            }
        }
        if last_check.elapsed() < Duration::from_millis(50) {
            continue;
        }
        last_check = Instant::now();
        if let Some(run) = run.as_mut() {
            run.check()?;
        }
        listener.check()?;
        for notice in listener.take() {
            received.entry(notice.key).or_insert(notice.received);
        }
        match phase {
            Phase::Warmup if !received.is_empty() => {
                warmup_seconds = spawned.elapsed().as_secs_f64();
                eprintln!("  first result back {warmup_seconds:.1} s after the start; measuring");
                phase = Phase::Measure;
                phase_started = Instant::now();
            }
            Phase::Warmup if phase_started.elapsed() > warmup_timeout => {
                bail!(
                    "no notification within {warmup_timeout:?} of the start; the run's log:\n{}",
                    log_tail(&run)
                );
            }
            Phase::Measure if phase_started.elapsed() >= window => {
                window_seconds = phase_started.elapsed().as_secs_f64();
                phase = Phase::Drain;
                phase_started = Instant::now();
            }
            Phase::Drain => {
                let done = measured.keys().all(|k| received.contains_key(k));
                if done || phase_started.elapsed() > drain_timeout {
                    break;
                }
            }
            _ => {}
        }
    }
    drop(run); // killed
    sender.flush()?;
    let leftovers = listener.stop()?;
    for notice in leftovers {
        received.entry(notice.key).or_insert(notice.received);
    }

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut missed = 0u64;
    for (key, sent) in &measured {
        match received.get(key) {
            Some(at) => {
                let micros = at.saturating_duration_since(*sent).as_micros().max(1) as u64;
                histogram.saturating_record(micros);
            }
            None => missed += 1,
        }
    }
    let unexpected =
        received.keys().filter(|k| !measured.contains_key(*k) && !other_spikes.contains(*k)).count() as u64;
    let ms = |micros: u64| micros as f64 / 1e3;
    let report = LatencyReport {
        settings: setup.name.clone(),
        pipeline: setup.pipeline,
        epoch_ms: setup.epoch_ms,
        allowed_lateness_ms: setup.lateness_ms,
        env: setup.env.clone(),
        rate,
        achieved_rate: window_records as f64 / window_seconds.max(1e-9),
        seconds,
        sensors: plant.sensors.len(),
        warmup_seconds,
        spikes: measured.len() as u64,
        count: histogram.len(),
        missed,
        unexpected,
        p50_ms: ms(histogram.value_at_quantile(0.5)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
        mean_ms: histogram.mean() / 1e3,
    };
    eprintln!(
        "  {} spikes, {} notified, {} missed, {} unexpected; p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        report.spikes,
        report.count,
        report.missed,
        report.unexpected,
        report.p50_ms,
        report.p99_ms,
        report.max_ms
    );
    Ok(report)
}

/// The latency input: sensors with steady uniform noise, visited round-robin, and a spike in
/// every [`SPIKE_EVERY`] readings of a sensor once it is warm.
struct LatencyPlant {
    sensors: Vec<SensorGen>,
    next: usize,
    rng: u64,
}

struct SensorGen {
    id: CompactString,
    base: f64,
    count: u64,
    last_ts: u64,
}

impl LatencyPlant {
    fn new(rate: u64, seed: u64) -> Self {
        let count = (rate / READINGS_PER_SENSOR_PER_S).clamp(1, 500) as usize;
        let sensors = (0..count)
            .map(|i| SensorGen {
                id: CompactString::from(format!("bench-p{:03}/s{}", i / 5, i % 5)),
                base: 20.0 + i as f64,
                count: 0,
                last_ts: 0,
            })
            .collect();
        LatencyPlant { sensors, next: 0, rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 }
    }

    /// The next reading: (sensor, ts = the wall clock, value, whether it is a spike).
    fn next(&mut self, spikes: bool) -> (CompactString, u64, f64, bool) {
        let index = self.next;
        self.next = (self.next + 1) % self.sensors.len();
        // xorshift64*: uniform noise in [-1, 1).
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let unit = (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
        let sensor = &mut self.sensors[index];
        let spike = spikes
            && sensor.count >= WARMUP_READINGS
            && (sensor.count + index as u64).is_multiple_of(SPIKE_EVERY);
        sensor.count += 1;
        // Strictly increasing per sensor, whatever the clock's resolution.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let ts = now.max(sensor.last_ts + 1);
        sensor.last_ts = ts;
        let value = sensor.base + (2.0 * unit - 1.0) + if spike { SPIKE } else { 0.0 };
        (sensor.id.clone(), ts, value, spike)
    }
}

/// A fixed rate: a token bucket of one second's records (a stall is not made up in a burst
/// longer than that).
struct Pacer {
    interval: Duration,
    next: Instant,
}

impl Pacer {
    fn new(rate: u64) -> Self {
        Pacer { interval: Duration::from_secs(1) / rate.min(u32::MAX as u64) as u32, next: Instant::now() }
    }

    fn wait(&mut self, sender: &Sender) {
        let now = Instant::now();
        if self.next > now + Duration::from_millis(1) {
            sender.serve_until(self.next);
        } else if now.saturating_duration_since(self.next) > Duration::from_secs(1) {
            self.next = now - Duration::from_secs(1);
        }
        self.next += self.interval;
    }
}

/// A notification read back: its (sensor, ts) and when it arrived.
struct Notice {
    key: (CompactString, u64),
    received: Instant,
}

/// What identifies a notification (an anomaly) or a reading: its sensor and event time.
#[derive(Deserialize)]
struct Keyed {
    sensor_id: CompactString,
    #[serde(deserialize_with = "millstream_events::time::deserialize_event_time")]
    ts: u64,
}

/// Reads the notification topic on a thread, from the beginning, stamping each arrival.
struct Listener {
    stop: Arc<AtomicBool>,
    notices: Arc<Mutex<Vec<Notice>>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Listener {
    fn start(brokers: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = client(brokers)
            .set("group.id", format!("{topic}-listener"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", LISTENER_FETCH_WAIT_MS)
            .create()
            .context("cannot create a Kafka consumer")?;
        let mut assignment = TopicPartitionList::new();
        for partition in partition_ids(consumer.client(), topic)? {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let stop = Arc::new(AtomicBool::new(false));
        let notices = Arc::new(Mutex::new(Vec::new()));
        let (stop_flag, out, topic) = (Arc::clone(&stop), Arc::clone(&notices), topic.to_owned());
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            while !stop_flag.load(Ordering::Relaxed) {
                let message = match consumer.poll(Duration::from_millis(20)) {
                    None => continue,
                    Some(Ok(message)) => message,
                    Some(Err(e)) if is_transient(&e) => continue,
                    Some(Err(e)) => return Err(e).with_context(|| format!("cannot read {topic}")),
                };
                let received = Instant::now();
                let record: Keyed = serde_json::from_slice(message.payload().unwrap_or_default())
                    .with_context(|| format!("a record on {topic} has no sensor_id and ts"))?;
                let key = (record.sensor_id, record.ts);
                out.lock().unwrap_or_else(|p| p.into_inner()).push(Notice { key, received });
            }
            Ok(())
        });
        Ok(Listener { stop, notices, thread: Some(thread) })
    }

    fn take(&self) -> Vec<Notice> {
        std::mem::take(&mut *self.notices.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Fails when the thread has stopped on an error.
    fn check(&self) -> anyhow::Result<()> {
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            bail!("the notification listener stopped");
        }
        Ok(())
    }

    fn stop(mut self) -> anyhow::Result<Vec<Notice>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().map_err(|_| anyhow!("the notification listener panicked"))??;
        }
        Ok(self.take())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The background run: killed when dropped.
struct RunGuard {
    child: Child,
    log: PathBuf,
}

impl RunGuard {
    fn check(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("millstream run exited early ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 15)
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Kafka helpers

/// `HOST:PORT[,HOST:PORT…]`, with an optional `kafka://` prefix and trailing `/`.
fn bootstrap_servers(brokers: &str) -> anyhow::Result<String> {
    let list = brokers.trim();
    let list = list.strip_prefix("kafka://").unwrap_or(list).trim_end_matches('/');
    let hosts: Vec<&str> = list.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() || hosts.iter().any(|h| h.contains('/') || !h.contains(':')) {
        bail!("--brokers `{brokers}`: expected HOST:PORT[,HOST:PORT…]");
    }
    Ok(hosts.join(","))
}

fn client(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config
}

fn is_transient(error: &KafkaError) -> bool {
    matches!(error, KafkaError::PartitionEOF(_))
        || matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::BrokerTransportFailure
                    | RDKafkaErrorCode::AllBrokersDown
                    | RDKafkaErrorCode::OperationTimedOut
                    | RDKafkaErrorCode::RequestTimedOut
                    | RDKafkaErrorCode::NotLeaderForPartition
                    | RDKafkaErrorCode::LeaderNotAvailable
            )
        )
}

/// The partition ids of `topic`; fails when the brokers do not know it.
fn partition_ids<C: ClientContext>(client: &Client<C>, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = client.fetch_metadata(Some(topic), CALL_TIMEOUT).context("cannot fetch metadata")?;
    let entry = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow!("topic {topic} is not in the metadata"))?;
    if let Some(error) = entry.error() {
        bail!("topic {topic}: {}", RDKafkaErrorCode::from(error));
    }
    if entry.partitions().is_empty() {
        bail!("topic {topic} has no partitions");
    }
    Ok(entry.partitions().iter().map(|p| p.id()).collect())
}

/// Creates `topic` with `partitions` partitions (an existing one is used as it is) and waits
/// until the metadata shows it.
fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client(brokers).create().context("cannot create a Kafka admin client")?;
    let options =
        AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT)).request_timeout(Some(CALL_TIMEOUT));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for result in runtime
        .block_on(admin.create_topics([&new_topic], &options))
        .with_context(|| format!("cannot create topic {topic} on {brokers}"))?
    {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name}: {code}"),
        }
    }
    let deadline = Instant::now() + CALL_TIMEOUT;
    loop {
        match partition_ids(admin.inner(), topic) {
            Ok(ids) if ids.len() == partitions as usize => return Ok(()),
            result if Instant::now() >= deadline => {
                bail!("topic {topic} does not show {partitions} partitions: {result:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A keyed, idempotent producer that waits (never drops) when its queue is full.
struct Sender {
    producer: BaseProducer<Deliveries>,
    sent: u64,
}

impl Sender {
    fn new(brokers: &str, linger_ms: u32) -> anyhow::Result<Self> {
        let producer = client(brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // As `millstream produce`: Java's partitioner.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", linger_ms.to_string())
            .set("allow.auto.create.topics", "false")
            .create_with_context(Deliveries::default())
            .context("cannot create a Kafka producer")?;
        Ok(Sender { producer, sent: 0 })
    }

    fn send(&mut self, topic: &str, key: &str, value: &[u8]) -> anyhow::Result<()> {
        let mut record = BaseRecord::<str, [u8]>::to(topic).key(key).payload(value);
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.producer.poll(Duration::ZERO);
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(5));
                    self.producer.context().check()?;
                }
                Err((e, _)) => return Err(e).with_context(|| format!("cannot produce to {topic}")),
            }
        }
    }

    /// Serves delivery reports until `deadline`.
    fn serve_until(&self, deadline: Instant) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.producer.poll(left.min(Duration::from_millis(100)));
        }
    }

    /// Waits until every record is delivered; fails when any was not.
    fn flush(&mut self) -> anyhow::Result<()> {
        self.producer.flush(CALL_TIMEOUT * 4).context("records were not delivered in time")?;
        self.producer.context().check()?;
        let delivered = self.producer.context().delivered.load(Ordering::Relaxed);
        if delivered != self.sent {
            bail!("only {delivered} of {} records were delivered", self.sent);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// A throwaway broker

/// A tansu broker on a free loopback port, its `sqlite://` storage in a temporary directory
/// (its working directory: tansu 0.6 reads the path relative to it); killed on drop. Started
/// exactly as `millstream_testkit::kafka::TestKafka` starts one.
struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Broker {
    fn start() -> anyhow::Result<Self> {
        let bin = find_tansu()?;
        let dir = tempfile::Builder::new()
            .prefix("millstream-bench-kafka-")
            .tempdir()
            .context("cannot create a temporary directory for the broker")?;
        let log_path = dir.path().join("tansu.log");
        let mut last_error = None;
        // A free port is only free until someone takes it: retry on a clash.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut log = File::options().create(true).append(true).open(&log_path)?;
            let log_start = log.seek(SeekFrom::End(0))?;
            let listener = format!("tcp://127.0.0.1:{port}");
            let child = Command::new(&bin)
                .arg("broker")
                .args(["--listener-url", &listener, "--advertised-listener-url", &listener])
                .args(["--storage-engine", "sqlite://broker.db"])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot run {}", bin.display()))?;
            let mut child = child;
            match wait_ready(&mut child, port) {
                Ok(()) => return Ok(Broker { dir, port, child }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                    let text = text.get(log_start as usize..).unwrap_or_default().to_owned();
                    let error =
                        e.context(format!("tansu did not start on port {port}; log:\n{}", tail(&text, 15)));
                    if !text.contains("in use") {
                        return Err(error);
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no free port")))
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Waits until the broker on `port` answers a metadata request (up to 30 s).
fn wait_ready(child: &mut Child, port: u16) -> anyhow::Result<()> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("no answer yet");
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the broker exited ({status})");
        }
        if TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok() {
            let answer = client(&address.to_string())
                .create::<BaseConsumer>()
                .map_err(anyhow::Error::from)
                .and_then(|c| Ok(c.fetch_metadata(None, Duration::from_secs(2))?));
            match answer {
                Ok(metadata) if !metadata.brokers().is_empty() => return Ok(()),
                Ok(_) => last = "metadata lists no broker".to_owned(),
                Err(e) => last = format!("{e:#}"),
            }
        }
        if Instant::now() >= deadline {
            bail!("no metadata from {address} within 30 s ({last})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `TANSU` (a path), else `$CARGO_HOME/bin`, `~/.cargo/bin`, or `PATH`.
fn find_tansu() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TANSU").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("TANSU={} is not a file (it should name the tansu program)", path.display());
    }
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(home).join("bin").join("tansu"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(home).join(".cargo").join("bin").join("tansu"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("tansu")));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow!(
            "no --brokers given and the Kafka-protocol broker `tansu` was not found (TANSU, \
             $CARGO_HOME/bin, ~/.cargo/bin, PATH); install it with \
             `cargo install tansu --locked --features dynostore,libsql`"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_plant_spikes_only_warm_sensors_and_only_when_asked() {
        let mut plant = LatencyPlant::new(200, 1);
        assert_eq!(plant.sensors.len(), 10);
        let mut spikes = 0;
        let mut last: HashMap<CompactString, u64> = HashMap::new();
        for i in 0..10 * 200 {
            let (sensor, ts, value, spike) = plant.next(i < 10 * 150);
            if let Some(&previous) = last.get(&sensor) {
                assert!(ts > previous, "ts strictly increases per sensor");
            }
            last.insert(sensor.clone(), ts);
            let base = plant.sensors.iter().find(|s| s.id == sensor).unwrap().base;
            if spike {
                spikes += 1;
                assert!(i >= 10 * WARMUP_READINGS as usize);
                assert!((value - base - SPIKE).abs() <= 1.0);
            } else {
                assert!((value - base).abs() <= 1.0);
            }
        }
        // 110 warm readings a sensor in the spiking part: two or three spikes each.
        assert!((20..=30).contains(&spikes), "{spikes} spikes");
    }

    #[test]
    fn medians_and_brokers() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert_eq!(bootstrap_servers("kafka://h:1/").unwrap(), "h:1");
        assert!(bootstrap_servers("h").is_err());
    }
}
