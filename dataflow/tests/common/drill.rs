//! Helpers of the fault drills (`dataflow/tests/drills.rs`): a live `millstream run` with its
//! process id, a sampler that watches it (RSS from /proc, `/health/ready`, `/metrics`) while a
//! fault is injected, recovery times read from those samples, a paced `millstream produce`, and
//! a row-by-row comparison of two databases.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http_get;
use super::models::LiveRun;

/// The resident set of process `pid` in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Every sample of the metric `name` in a Prometheus text exposition: labels (the text between
/// the braces, or empty) → value.
pub fn series(text: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
            match rest.split_once("} ") {
                Some((labels, value)) => (labels.to_owned(), value),
                None => continue,
            }
        } else if let Some(value) = rest.strip_prefix(' ') {
            (String::new(), value)
        } else {
            continue;
        };
        if let Ok(v) = value.trim().parse() {
            out.insert(labels, v);
        }
    }
    out
}

/// The `partition` label of a Kafka series' labels, when its topic is `topic`.
fn partition_of(labels: &str, topic: &str) -> Option<i32> {
    let mut partition = None;
    let mut topic_ok = false;
    for pair in labels.split(',') {
        let (k, v) = pair.split_once('=')?;
        let v = v.trim_matches('"');
        match k {
            "partition" => partition = v.parse().ok(),
            "topic" => topic_ok = v == topic,
            _ => {}
        }
    }
    partition.filter(|_| topic_ok)
}

/// A `millstream run` in the background with `--http` (a [`LiveRun`]: output to a log file,
/// SIGKILLed on drop), with what the drills read from it.
pub struct DrillRun {
    run: LiveRun,
    pub pid: u32,
    /// `127.0.0.1:PORT` of its HTTP endpoint.
    pub http: String,
}

impl DrillRun {
    /// Starts `command` (a `millstream run …` without `--http`) and waits (up to 30 s) until its
    /// HTTP endpoint answers.
    pub fn start(command: Command, log: PathBuf) -> DrillRun {
        let run = LiveRun::start(command, log);
        DrillRun { pid: run.pid(), http: run.http.clone(), run }
    }

    pub fn alive(&mut self) -> bool {
        self.run.alive()
    }

    pub fn metrics(&self) -> Option<String> {
        self.run.get("/metrics").filter(|(s, _)| *s == 200).map(|(_, b)| b)
    }

    /// The last `n` lines of the run's log.
    pub fn log_tail(&self, n: usize) -> String {
        self.run.log_tail(n)
    }

    /// Whether the log holds a panic.
    pub fn panicked(&self) -> bool {
        std::fs::read(&self.run.log)
            .map(|b| String::from_utf8_lossy(&b).contains("panicked"))
            .unwrap_or(false)
    }

    /// Waits until `millstream_durable_event_time_seconds` reaches `event_ms` (every result up
    /// to that event time is durable in every sink); panics after `timeout` or if the run ends.
    /// Returns how long it took.
    pub fn wait_durable(&mut self, event_ms: u64, timeout: Duration, what: &str) -> Duration {
        let started = Instant::now();
        loop {
            let durable = self
                .metrics()
                .and_then(|m| series(&m, "millstream_durable_event_time_seconds").get("").copied());
            if durable.is_some_and(|d| d * 1000.0 >= event_ms as f64) {
                return started.elapsed();
            }
            assert!(self.alive(), "{what}: the run exited:\n{}", self.log_tail(40));
            assert!(
                started.elapsed() < timeout,
                "{what}: results up to event time {event_ms} not durable within {timeout:?} (durable: \
                 {durable:?} s):\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, and wait for the process to end.
    pub fn kill(&mut self) {
        self.run.kill();
    }
}

/// One look at a run.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Since the sampler started.
    pub at: Duration,
    pub rss_kib: Option<u64>,
    /// `/health/ready`: status and body (none when it did not answer).
    pub ready: Option<(u16, String)>,
    /// By partition of the input topic: offset committed, records read, consumer lag.
    pub committed: BTreeMap<i32, f64>,
    pub read: BTreeMap<i32, f64>,
    pub lag: BTreeMap<i32, f64>,
    pub durable_event_time_s: Option<f64>,
    /// Sink → circuit open.
    pub circuit_open: BTreeMap<String, f64>,
    pub source_disconnected: Option<f64>,
    pub model_version: Option<f64>,
    /// `millstream_sink_records_total{sink="postgres"}`.
    pub postgres_records: Option<f64>,
}

impl Sample {
    pub fn ready(&self) -> bool {
        self.ready.as_ref().is_some_and(|(s, _)| *s == 200)
    }

    /// The input topic's high watermarks (records read + lag), when every one of `partitions`
    /// partitions reports both.
    pub fn high_watermarks(&self, partitions: i32) -> Option<BTreeMap<i32, f64>> {
        (0..partitions).map(|p| Some((p, self.read.get(&p)? + self.lag.get(&p)?))).collect()
    }

    /// Whether every partition of `target` has its offset committed.
    pub fn committed_up_to(&self, target: &BTreeMap<i32, f64>) -> bool {
        target.iter().all(|(p, end)| self.committed.get(p).is_some_and(|c| c >= end))
    }
}

/// Samples a run every 100 ms in a thread of its own until stopped.
pub struct Sampler {
    started: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    marks: Mutex<Vec<(String, Duration)>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start(run: &DrillRun, topic: &str, model: Option<&str>) -> Sampler {
        let started = Instant::now();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (pid, http, topic) = (run.pid, run.http.clone(), topic.to_owned());
        let version_series = model.map(|m| format!("model=\"{m}\""));
        let thread = {
            let (samples, stop) = (Arc::clone(&samples), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut s = Sample { at: started.elapsed(), rss_kib: rss_kib(pid), ..Sample::default() };
                    s.ready = http_get(&http, "/health/ready");
                    if let Some((200, text)) = http_get(&http, "/metrics") {
                        let by_partition = |name: &str| -> BTreeMap<i32, f64> {
                            series(&text, name)
                                .into_iter()
                                .filter_map(|(labels, v)| Some((partition_of(&labels, &topic)?, v)))
                                .collect()
                        };
                        s.committed = by_partition("millstream_kafka_committed_offset");
                        s.read = by_partition("millstream_kafka_records_total");
                        s.lag = by_partition("millstream_kafka_consumer_lag");
                        s.durable_event_time_s =
                            series(&text, "millstream_durable_event_time_seconds").get("").copied();
                        s.circuit_open = series(&text, "millstream_sink_circuit_open")
                            .into_iter()
                            .map(|(labels, v)| (labels.replace("sink=", "").replace('"', ""), v))
                            .collect();
                        s.source_disconnected =
                            series(&text, "millstream_kafka_source_disconnected").get("").copied();
                        s.model_version = version_series
                            .as_ref()
                            .and_then(|l| series(&text, "millstream_model_version").get(l).copied());
                        s.postgres_records =
                            series(&text, "millstream_sink_records_total").get("sink=\"postgres\"").copied();
                    }
                    samples.lock().unwrap().push(s);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Sampler { started, samples, marks: Mutex::new(Vec::new()), stop, thread: Some(thread) }
    }

    /// Notes that `what` happens now; returns the time since the sampler started.
    pub fn mark(&self, what: &str) -> Duration {
        let at = self.started.elapsed();
        self.marks.lock().unwrap().push((what.to_owned(), at));
        at
    }

    pub fn marks(&self) -> Vec<(String, Duration)> {
        self.marks.lock().unwrap().clone()
    }

    /// Every sample so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Waits until a new sample satisfies `ok`, for up to `timeout`; returns it.
    pub fn wait_for(&self, timeout: Duration, ok: impl Fn(&Sample) -> bool) -> Option<Sample> {
        let from = self.started.elapsed();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.samples.lock().unwrap().iter().rev().find(|s| s.at >= from && ok(s)) {
                return Some(s.clone());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The first sample at or after `from` that satisfies `ok`: its time less `from`.
    pub fn first_after(&self, from: Duration, ok: impl Fn(&Sample) -> bool) -> Option<Duration> {
        self.samples().iter().find(|s| s.at >= from && ok(s)).map(|s| s.at - from)
    }

    /// How long after `from` the run was ready again (`/health/ready` 200).
    pub fn ready_after(&self, from: Duration) -> Option<Duration> {
        self.first_after(from, Sample::ready)
    }

    /// How long after `from` every record the topic (of `partitions` partitions) held at `from`
    /// was durable in every sink and its offset committed: the high watermarks are those of the
    /// first sample at or after `from` that reports them all, capped by the last offsets
    /// committed (records the run never makes durable, such as the drills' closing readings,
    /// ahead of every watermark, are not waited for).
    pub fn caught_up_after(&self, from: Duration, partitions: i32) -> Option<Duration> {
        let samples = self.samples();
        let last = &samples.last()?.committed;
        let mut target =
            samples.iter().filter(|s| s.at >= from).find_map(|s| s.high_watermarks(partitions))?;
        for (p, end) in target.iter_mut() {
            *end = end.min(last.get(p).copied().unwrap_or(0.0));
        }
        samples.iter().find(|s| s.at >= from && s.committed_up_to(&target)).map(|s| s.at - from)
    }

    /// The largest RSS (KiB) in `from..until`.
    pub fn peak_rss_kib(&self, from: Duration, until: Duration) -> u64 {
        self.samples()
            .iter()
            .filter(|s| (from..until).contains(&s.at))
            .filter_map(|s| s.rss_kib)
            .max()
            .unwrap_or(0)
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `millstream produce --file PATH --rate RATE` into `topic` (created with `partitions`
/// partitions when missing), in the background.
pub struct Producer {
    child: Child,
    pub log: PathBuf,
    started: Instant,
}

impl Producer {
    pub fn start(
        brokers: &str,
        topic: &str,
        file: &Path,
        rate: u64,
        partitions: i32,
        log: PathBuf,
    ) -> Producer {
        let out = std::fs::File::create(&log).unwrap();
        let child = super::millstream()
            .args(["produce", "--brokers", brokers, "--topic", topic, "--file", file.to_str().unwrap()])
            .args(["--rate", &rate.to_string(), "--partitions", &partitions.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("millstream produce starts");
        Producer { child, log, started: Instant::now() }
    }

    /// Waits (up to `timeout`) for the producer to finish; asserts it succeeded. Returns how
    /// long it ran.
    pub fn finish(&mut self, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                assert!(status.success(), "millstream produce failed ({status}):\n{log}");
                return self.started.elapsed();
            }
            assert!(Instant::now() < deadline, "millstream produce did not finish within {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the drills compare, table by table: the columns that are a function of the input (not
/// the wall-clock `created_at`, `received_at`, `updated_at`), in key order; and the columns
/// (by index) that are sums of floating-point numbers, which are equal only up to rounding when
/// the same readings are added up in another grouping (batches follow the arrival timing).
pub const TABLES: [(&str, &str, &[usize]); 7] = [
    ("readings", "SELECT sensor_id, ts, value, late, quality FROM readings ORDER BY sensor_id, ts, value", &[]),
    (
        "readings_1m",
        "SELECT sensor_id, minute, count, mean, min, max, stddev FROM readings_1m ORDER BY sensor_id, minute",
        &[3, 6],
    ),
    (
        "anomalies",
        "SELECT event_id, sensor_id, asset_id, ts, value, score, severity, detector, model_version, explanation \
         FROM anomalies ORDER BY event_id",
        &[],
    ),
    (
        "dead_letters",
        "SELECT dead_letter_id, reason, detail, encode(raw, 'hex'), source FROM dead_letters ORDER BY dead_letter_id",
        &[],
    ),
    (
        "sensors",
        "SELECT sensor_id, asset_id, kind, unit, min_value, max_value FROM sensors ORDER BY sensor_id",
        &[],
    ),
    (
        "drift_events",
        "SELECT event_id, asset_id, sensor_id, feature, statistic, value, threshold, window_start, window_end, \
         count, model_version FROM drift_events ORDER BY event_id",
        &[],
    ),
    (
        "model_versions",
        "SELECT model, version, parent_version, status, reason, effective_from, training_rows, holdback_rows, \
         holdback_anomaly_rate, parent_holdback_anomaly_rate, silhouette, published FROM model_versions \
         ORDER BY model, version, status",
        &[],
    ),
];

/// Relative difference allowed in the rounded columns of [`TABLES`] (the bound of the
/// `readings_1m` check in `postgres.rs`).
pub const ROUNDING: f64 = 1e-9;

/// The rows of `query` on `url`, as text (`COPY … TO STDOUT`, UTC, floats exact).
pub fn dump(url: &str, query: &str) -> Vec<String> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url])
        .args(["-c", "SET TIME ZONE 'UTC'; SET extra_float_digits = 3;"])
        .args(["-c", &format!("COPY ({query}) TO STDOUT")])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "psql {query}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

/// Whether rows `a` and `b` are equal but for the `rounded` columns, and those within
/// [`ROUNDING`].
fn equal_but_rounding(a: &str, b: &str, rounded: &[usize]) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('\t').collect(), b.split('\t').collect());
    a.len() == b.len()
        && a.iter().zip(&b).enumerate().all(|(i, (x, y))| {
            x == y
                || rounded.contains(&i)
                    && match (x.parse::<f64>(), y.parse::<f64>()) {
                        (Ok(x), Ok(y)) => (x - y).abs() <= ROUNDING * x.abs().max(y.abs()).max(1.0),
                        _ => false,
                    }
        })
}

/// Compares every table of [`TABLES`] in `got` with `want`, row by row. Returns one line per
/// table (rows, and what differs), and whether all are identical (the rounded columns within
/// [`ROUNDING`]).
pub fn compare_databases(got: &str, want: &str) -> (Vec<String>, bool) {
    let tables: Vec<&str> = TABLES.iter().map(|(table, _, _)| *table).collect();
    compare_tables(got, want, &tables)
}

/// `value` KiB as MiB, for reports.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A duration for reports: seconds with one decimal, or `never`.
pub fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
}

/// Compares the rows of `query` on `got` and `want`, as [`compare_databases`] does for each table
/// (`rounded`: the columns equal up to [`ROUNDING`]). Returns one line for the report (labelled
/// `label`) and whether they are identical.
pub fn compare_query(got: &str, want: &str, label: &str, query: &str, rounded: &[usize]) -> (String, bool) {
    let (g, w) = (dump(got, query), dump(want, query));
    if g == w {
        return (format!("{label}: {} rows, identical", g.len()), true);
    }
    if g.len() == w.len() && g.iter().zip(&w).all(|(a, b)| equal_but_rounding(a, b, rounded)) {
        let rows = g.iter().zip(&w).filter(|(a, b)| a != b).count();
        return (
            format!(
                "{label}: {} rows, identical but for floating-point rounding in {rows} rows (columns {rounded:?}, \
                 relative difference ≤ {ROUNDING:e})",
                g.len()
            ),
            true,
        );
    }
    let gs: std::collections::BTreeSet<&String> = g.iter().collect();
    let ws: std::collections::BTreeSet<&String> = w.iter().collect();
    let missing: Vec<&&String> = ws.difference(&gs).take(5).collect();
    let extra: Vec<&&String> = gs.difference(&ws).take(5).collect();
    (
        format!(
            "{label}: DIFFERS: {} rows against {} in the reference; {} missing, {} extra; first missing: \
             {missing:?}; first extra: {extra:?}",
            g.len(),
            w.len(),
            ws.difference(&gs).count(),
            gs.difference(&ws).count(),
        ),
        false,
    )
}

/// [`compare_databases`] for the tables of [`TABLES`] named in `tables` only, in that order.
pub fn compare_tables(got: &str, want: &str, tables: &[&str]) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    let mut identical = true;
    for name in tables {
        let (table, query, rounded) = TABLES
            .iter()
            .find(|(t, _, _)| t == name)
            .unwrap_or_else(|| panic!("no table {name} in drill::TABLES"));
        let (line, same) = compare_query(got, want, table, query, rounded);
        lines.push(line);
        identical &= same;
    }
    (lines, identical)
}
