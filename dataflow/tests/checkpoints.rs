//! Checkpoints (issue 8): operator state written to PostgreSQL with the sink's rows, restored on
//! start. The promise: after any number of `kill -9`s and a final run to the end, the tables
//! `readings`, `readings_1m`, `anomalies`, `drift_events`, `model_versions` (and `sensors`) are identical, row by row, to those of
//! one uninterrupted run on the same input, for any number of workers and processes in between.
//!
//! The input is fixed (a pure function of a seed): 24 sensors on 6 pumps at 1 Hz for 40 minutes
//! of event time (57 k readings), with spikes, level shifts, a stuck stretch, a dropout, exact
//! duplicates, out-of-order and late readings, readings the sensor registry flags or refuses,
//! and malformed lines. `millstream produce` loads it into a topic of 4 partitions (keyed by
//! sensor) on tansu, paced (`--rate`), while the drilled runs read it: so runs are killed while
//! the stream is live and checkpoints are being written, not only while a backlog is read (a
//! run reads a 57 k backlog before its first commit, so a kill in the first seconds would always
//! land before any checkpoint). Killed runs run without `--stop-at-end` (stopping at a partial
//! end would flush state an uninterrupted run never flushes there); the final run, once the
//! topic is complete, with it. Then the reference, one uninterrupted run on 2 workers, reads
//! the complete topic into a database of its own. Both use `[checkpoint] interval_ms = 5000`.
//!
//! 1. `kill_nine_drill`: K runs (`MILLSTREAM_KILLS`, default 5) on 1 or 2 workers at random
//!    are each SIGKILLed at a random point (seeded: `MILLSTREAM_DRILL_SEED`): one in five
//!    10–150 ms after the start (while the checkpoint is read and restored), one in five 0.3 s
//!    to 2.5 s after it (mostly before the run's first checkpoint), the others 0–1.5 s after
//!    the run's first checkpoint is in the database (mid-stream; fixed times alone would rarely
//!    get there: a run takes 2–5 s to its first commit on a small debug-build machine). Then a
//!    final run to the end, which must exit 0.
//! 2. `rescale_across_processes`: 1 process × 2 workers killed mid-stream once the database holds
//!    a checkpoint, then 2 processes × 1 worker restore it and run to the end.
//! 3. `kill_nine_drill_with_models`: the drill of 1 (3 kills by default) with the per-asset
//!    k-means stage: one model per pump, trained on the input's first 10 minutes into a
//!    `file://` store before the runs, served by every run (`[models]`, drift off); the
//!    reference must hold k-means anomalies.
//! 4. `kill_nine_drill_with_drift`: the drill of 3 with the drift stage and retraining on, and
//!    a model store per database; `drift_events` and `model_versions` must be identical too, and
//!    the reference must hold window drift events and retrained versions in service.
//!
//! Asserted: the tables identical, no log with `panicked`, the final runs exit 0, a run restores
//! when the database holds a checkpoint, restored boundaries never go back. `dead_letters` is
//! compared for information only (the `detail` of a late reading may differ). The drill prints
//! a table (run, workers, kill point, the boundary restored, rows in `readings` after the run,
//! the boundary the database then holds for a restore, recovery time: from the start to the
//! `restored checkpoint` line) and the comparison:
//!
//! ```sh
//! cargo test -p millstream --test checkpoints -- --nocapture
//! scripts/drill-kill        # 20 kills, on the release build
//! ```
//!
//! Environment: `MILLSTREAM_KILLS`, `MILLSTREAM_DRILL_SEED`, `MILLSTREAM_DRILL_RATE` (records/s
//! produced; default: the input spread over about 60 % of the drill's expected length),
//! `MILLSTREAM_DRILL_KEEP=1` (keep the scratch directory: input, configs, every run's log),
//! `MILLSTREAM_DRILL_TRACE=1` (print each drilled run's rows and restorable boundary every 200 ms).

mod common;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::drill::{compare_query, compare_tables};
use common::{free_port, reading_line, run_ok, Rng, START_MS};
use millstream_testkit::{TestKafka, TestPostgres};

/// The input topic and its partitions.
const TOPIC: &str = "readings";
const PARTITIONS: i32 = 4;
/// Event-time milliseconds between checkpoints.
const INTERVAL_MS: u64 = 5_000;
/// Pumps, and the sensors of each (kind, level, amplitude of the slow cycle, noise, unit).
const ASSETS: usize = 6;
const KINDS: [(&str, f64, f64, f64, Option<&str>); 4] = [
    ("vibration", 4.0, 0.8, 0.15, Some("mm/s")),
    ("temperature", 60.0, 3.0, 0.3, None),
    ("pressure", 6.0, 0.5, 0.05, Some("bar")),
    ("flow", 120.0, 10.0, 1.0, None),
];
/// Seconds of event time (one reading per sensor per second).
const STEPS: u64 = 2_400;
/// The seed of the input (fixed: the input is the same on every machine and every run).
const INPUT_SEED: u64 = 8;
/// Tables that must be identical to the reference's.
const COMPARED: [&str; 6] =
    ["readings", "readings_1m", "anomalies", "sensors", "drift_events", "model_versions"];
/// When a run to be killed after its first checkpoint is killed if it has committed none.
const NO_COMMIT_KILL: Duration = Duration::from_secs(8);
/// The longest any one run may take (a run of the whole input takes seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// One drill at a time, also under a plain `cargo test`: each starts a broker, a database and
/// several runs, and times their recovery.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the input holds, by kind of line.
#[derive(Debug, Default)]
struct Input {
    path: PathBuf,
    lines: usize,
    spikes: usize,
    shifts: usize,
    duplicates: usize,
    late: usize,
    registry: usize,
    malformed: usize,
}

/// The input: `ASSETS` pumps × `KINDS` sensors, one reading a second for `STEPS` seconds from
/// `START_MS`, a pure function of `seed` (no wall clock). Lines arrive up to 3 s out of order
/// (within the default allowed lateness of 5 s); the faults are listed in [`Input`].
fn write_input(dir: &Path, seed: u64) -> Input {
    let mut rng = Rng::new(seed);
    let sensors: Vec<(String, usize)> = (0..ASSETS)
        .flat_map(|a| {
            KINDS.iter().enumerate().map(move |(k, kind)| (format!("plant1-pump-{a:02}/{}", kind.0), k))
        })
        .collect();
    let phases: Vec<f64> = sensors.iter().map(|_| rng.unit() * 600.0).collect();
    // Level shifts (sensor, from, until), a stuck stretch and a dropout (sensor, from, until).
    let shifts: Vec<(usize, u64, u64)> = [2usize, 9, 19]
        .iter()
        .map(|&s| {
            let from = 600 + rng.below(900);
            (s, from, from + 240 + rng.below(240))
        })
        .collect();
    let stuck = (5usize, 1_500u64, 1_620u64);
    let dropout = (13usize, 1_800u64, 1_890u64);
    let mut stuck_value = None;
    let mut input = Input { shifts: shifts.len(), ..Input::default() };
    // (arrival ms, line)
    let mut rows: Vec<(u64, String)> = Vec::new();
    for step in 0..STEPS {
        let ts = START_MS + step * 1000;
        for (s, (sensor, k)) in sensors.iter().enumerate() {
            if s == dropout.0 && (dropout.1..dropout.2).contains(&step) {
                continue;
            }
            let (_, level, amplitude, noise, unit) = KINDS[*k];
            let cycle = ((step as f64 + phases[s]) * std::f64::consts::TAU / 600.0).sin();
            let gauss = rng.unit() + rng.unit() + rng.unit() - 1.5;
            let mut value = level + amplitude * cycle + 2.0 * noise * gauss;
            if shifts.iter().any(|&(x, from, until)| x == s && (from..until).contains(&step)) {
                value += 10.0 * noise;
            }
            if step > 120 && rng.below(900) == 0 {
                let sign = if rng.unit() < 0.5 { 1.0 } else { -1.0 };
                value += sign * 15.0 * noise;
                input.spikes += 1;
            }
            if s == stuck.0 && (stuck.1..stuck.2).contains(&step) {
                value = *stuck_value.get_or_insert(value);
            }
            let mut value = (value * 1000.0).round() / 1000.0;
            let mut unit = unit;
            // The registry: an impossible pressure (refused), a wrong unit (refused).
            if *k == 2 && step > 300 && rng.below(3000) == 0 {
                value = 99.0;
                input.registry += 1;
            } else if *k == 0 && step > 300 && rng.below(3000) == 0 {
                unit = Some("in/s");
                input.registry += 1;
            }
            let mut line = reading_line(sensor, ts, value, rng.unit() < 0.5);
            if let Some(unit) = unit {
                line.pop();
                line.push_str(&format!(",\"unit\":\"{unit}\"}}"));
            }
            let arrival = ts + rng.below(3000);
            rows.push((arrival, line.clone()));
            if rng.below(1500) == 0 {
                rows.push((arrival + 1, line));
                input.duplicates += 1;
            }
            if step > 900 && rng.below(4000) == 0 {
                // Ten minutes behind: late.
                let old = reading_line(sensor, ts - 600_000, value + 0.25, false);
                rows.push((arrival, old));
                input.late += 1;
            }
        }
        if rng.below(60) == 0 {
            let bad = [
                "not json at all".to_owned(),
                "{\"sensor_id\":\"plant1-pump-00/flow\",\"ts\":1,".to_owned(),
                format!("{{\"ts\":{ts},\"value\":1}}"),
                format!("{{\"sensor_id\":\"plant1-pump-01/flow\",\"ts\":{ts},\"value\":\"high\"}}"),
                "{\"sensor_id\":\"plant1-pump-02/flow\",\"ts\":\"yesterday\",\"value\":1}".to_owned(),
                format!("{{\"sensor_id\":\"\",\"ts\":{ts},\"value\":1}}"),
            ];
            rows.push((ts + 1500, bad[rng.below(bad.len() as u64) as usize].clone()));
            input.malformed += 1;
        }
    }
    rows.sort_by_key(|(arrival, _)| *arrival);
    let text: String = rows.iter().map(|(_, l)| format!("{l}\n")).collect();
    input.path = dir.join("input.jsonl");
    input.lines = rows.len();
    std::fs::write(&input.path, text).unwrap();
    input
}

/// The services of a drill, its scratch directory and the input (not yet produced).
struct Stack {
    pg: TestPostgres,
    kafka: TestKafka,
    dir: tempfile::TempDir,
    input: Input,
}

impl Stack {
    /// PostgreSQL, a broker with the (empty) input topic, and the input file.
    fn start() -> Stack {
        let pg = TestPostgres::start().expect("a throwaway PostgreSQL (initdb/pg_ctl, or DATABASE_URL)");
        let kafka =
            TestKafka::start().expect("a tansu broker starts (see README, \"Real services in tests\")");
        kafka.create_topic(TOPIC, PARTITIONS).unwrap();
        let keep = std::env::var_os("MILLSTREAM_DRILL_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("millstream-checkpoints-")
            .disable_cleanup(keep)
            .tempdir()
            .unwrap();
        if keep {
            eprintln!("keeping {}", dir.path().display());
        }
        let input = write_input(dir.path(), INPUT_SEED);
        Stack { pg, kafka, dir, input }
    }

    /// Starts `millstream produce` of the input into the topic at `rate` records/s.
    fn produce(&self, rate: u64) -> LiveProducer {
        let log = self.path("produce.log");
        let child = common::millstream()
            .args(["produce", "--brokers", &self.kafka.bootstrap(), "--topic", TOPIC])
            .args(["--file", self.input.path.to_str().unwrap(), "--rate", &rate.to_string()])
            .args(["--partitions", &PARTITIONS.to_string()])
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(self.path("produce.err")).unwrap())
            .spawn()
            .expect("millstream produce starts");
        LiveProducer { child, started: Instant::now(), took: None, errors: self.path("produce.err") }
    }

    /// A migrated database `name`, and the configuration of its runs (`name.toml`).
    fn database(&self, name: &str) -> String {
        self.database_with(name, "")
    }

    /// [`Stack::database`], with `extra` at the end of the configuration.
    /// `@NAME@` in `extra` stands for `name` (a model store of the database's own).
    fn database_with(&self, name: &str, extra: &str) -> String {
        let extra = extra.replace("@NAME@", name);
        let url = self.pg.create_database(name).unwrap();
        run_ok(&["migrate", "--database-url", &url]);
        std::fs::write(
            self.path(&format!("{name}.toml")),
            format!(
                "[checkpoint]\ninterval_ms = {INTERVAL_MS}\n\
                 [kafka]\ngroup_id = \"{name}\"\nidle_timeout_ms = 600000\n\
                 [log]\nlevel = \"info\"\n\
                 [validation]\n\
                 [[validation.kinds]]\nname = \"vibration\"\nunit = \"mm/s\"\nmin = 0.0\nmax = 50.0\n\
                 max_rate_per_s = 5.0\nrate_action = \"flag\"\n\
                 [[validation.kinds]]\nname = \"pressure\"\nunit = \"bar\"\nmin = 0.0\nmax = 16.0\n\
                 max_rate_per_s = 0.5\nrate_action = \"flag\"\n{extra}"
            ),
        )
        .unwrap();
        url
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `millstream run` of the topic into `database` (whose config is `name.toml`) on `workers`
    /// workers; `cluster`: (processes, this process, hostfile).
    fn command(
        &self,
        name: &str,
        database: &str,
        workers: usize,
        cluster: Option<(usize, usize, &Path)>,
        stop_at_end: bool,
    ) -> Command {
        let mut command = common::millstream();
        command
            .args(["run", "--source", &format!("{}/{TOPIC}", self.kafka.url()), "--sink", database])
            .args(["--config", self.path(&format!("{name}.toml")).to_str().unwrap()])
            .args(["--workers", &workers.to_string()])
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1");
        if stop_at_end {
            command.arg("--stop-at-end");
        }
        if let Some((processes, process, hostfile)) = cluster {
            command
                .args(["--processes", &processes.to_string(), "--process", &process.to_string()])
                .args(["--hostfile", hostfile.to_str().unwrap()]);
        }
        command
    }

    /// The reference: one uninterrupted run on 2 workers, to the end of the complete topic, into
    /// `url` (an empty database). Returns how long it took.
    fn reference(&self, url: &str) -> Duration {
        let mut run =
            Run::start(vec![(self.command("reference", url, 2, None, true), self.path("reference.log"))]);
        let ending = run.drive(RUN_TIMEOUT, |_| false);
        run.assert_clean("the reference run");
        let took = match ending {
            Ending::Exited(ref statuses) if statuses.iter().all(ExitStatus::success) => run.started.elapsed(),
            other => panic!("the reference run did not succeed ({other:?}):\n{}", run.log_tail(0, 40)),
        };
        assert!(
            matches!(run.restore, Some((Restore::Nothing, _))),
            "the reference run (an empty database) should log `no checkpoint to restore`:\n{}",
            run.log_tail(0, 40)
        );
        took
    }
}

/// A paced `millstream produce` in the background.
struct LiveProducer {
    child: Child,
    started: Instant,
    /// How long it ran, once it has ended.
    took: Option<Duration>,
    errors: PathBuf,
}

impl LiveProducer {
    /// Whether it has produced everything (asserts it succeeded).
    fn done(&mut self) -> bool {
        if self.took.is_some() {
            return true;
        }
        match self.child.try_wait().unwrap() {
            None => false,
            Some(status) => {
                let errors = std::fs::read_to_string(&self.errors).unwrap_or_default();
                assert!(status.success(), "millstream produce failed ({status}):\n{errors}");
                self.took = Some(self.started.elapsed());
                true
            }
        }
    }

    /// Waits until it has produced everything; returns how long it ran.
    fn finish(&mut self) -> Duration {
        let deadline = Instant::now() + RUN_TIMEOUT;
        while !self.done() {
            assert!(Instant::now() < deadline, "millstream produce did not finish within {RUN_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.took.unwrap()
    }
}

impl Drop for LiveProducer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a run logged about restoring.
#[derive(Debug, Clone, PartialEq)]
enum Restore {
    /// `restored checkpoint … boundary=MS`.
    Restored(Option<u64>),
    /// `no checkpoint to restore`.
    Nothing,
}

/// How a run ended.
#[derive(Debug)]
enum Ending {
    /// Every process exited by itself.
    Exited(Vec<ExitStatus>),
    /// SIGKILLed this long after the start.
    Killed(Duration),
}

/// A `millstream run` (one process, or the processes of a cluster), each logging to a file.
struct Run {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
    /// What each log held at the last poll, and the open file it is read from.
    seen: Vec<String>,
    files: Vec<Option<File>>,
    started: Instant,
    /// What the first process to say so logged about restoring, and when (since the start).
    restore: Option<(Restore, Duration)>,
    /// With `MILLSTREAM_DRILL_TRACE`: the database whose rows and restorable boundary are
    /// printed every 200 ms while the run runs, and when they were last.
    trace: Option<(String, Duration)>,
}

/// `text` without ANSI escape sequences (in case the log is coloured after all).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What `log` says about restoring, if anything yet.
fn restore_line(log: &str) -> Option<Restore> {
    let line =
        log.lines().find(|l| l.contains("restored checkpoint") || l.contains("no checkpoint to restore"))?;
    let line = strip_ansi(line);
    if line.contains("no checkpoint to restore") {
        return Some(Restore::Nothing);
    }
    let boundary = line.split_once("boundary=").and_then(|(_, rest)| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    });
    Some(Restore::Restored(boundary))
}

impl Run {
    /// Starts each command with its output to its log file.
    fn start(commands: Vec<(Command, PathBuf)>) -> Run {
        let started = Instant::now();
        let mut children = Vec::new();
        let mut logs = Vec::new();
        for (mut command, log) in commands {
            let file = File::create(&log).unwrap();
            let child = command
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .expect("millstream starts");
            children.push(child);
            logs.push(log);
        }
        let n = children.len();
        Run {
            children,
            logs,
            seen: vec![String::new(); n],
            files: (0..n).map(|_| None).collect(),
            started,
            restore: None,
            trace: None,
        }
    }

    /// With `MILLSTREAM_DRILL_TRACE` set: prints the rows in `readings` of `url`, and the
    /// boundary it holds for a restore, every 200 ms while the run runs.
    fn traced(mut self, url: &str) -> Run {
        if std::env::var_os("MILLSTREAM_DRILL_TRACE").is_some() {
            self.trace = Some((url.to_owned(), Duration::ZERO));
        }
        self
    }

    /// Reads what the logs gained since the last poll; notes the first restore line.
    fn poll_logs(&mut self) {
        for i in 0..self.logs.len() {
            if self.files[i].is_none() {
                self.files[i] = File::open(&self.logs[i]).ok();
            }
            if let Some(file) = self.files[i].as_mut() {
                let mut bytes = Vec::new();
                let _ = file.read_to_end(&mut bytes);
                self.seen[i].push_str(&String::from_utf8_lossy(&bytes));
            }
            if self.restore.is_none() {
                if let Some(restore) = restore_line(&self.seen[i]) {
                    self.restore = Some((restore, self.started.elapsed()));
                }
            }
        }
    }

    /// Polls every 10 ms until every process has exited, or `kill_now(time since the start)`
    /// says to SIGKILL them all. Panics (with the logs) after `timeout`.
    fn drive(&mut self, timeout: Duration, mut kill_now: impl FnMut(Duration) -> bool) -> Ending {
        loop {
            self.poll_logs();
            let statuses: Vec<Option<ExitStatus>> =
                self.children.iter_mut().map(|c| c.try_wait().unwrap()).collect();
            if statuses.iter().all(Option::is_some) {
                self.poll_logs();
                return Ending::Exited(statuses.into_iter().flatten().collect());
            }
            let elapsed = self.started.elapsed();
            if let Some((url, last)) = self.trace.as_mut() {
                if elapsed >= *last + Duration::from_millis(200) {
                    *last = elapsed;
                    eprintln!(
                        "TRACE {:>6} ms: {:?} readings, restorable {:?}",
                        elapsed.as_millis(),
                        count(url, "readings"),
                        restorable(url)
                    );
                }
            }
            if kill_now(elapsed) {
                self.kill();
                self.poll_logs();
                return Ending::Killed(elapsed);
            }
            if elapsed > timeout {
                self.kill();
                let tails: Vec<String> = (0..self.logs.len()).map(|i| self.log_tail(i, 30)).collect();
                panic!("a run did not end within {timeout:?}; its logs end with:\n{}", tails.join("\n---\n"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL every process, and wait for each to end.
    fn kill(&mut self) {
        for child in &mut self.children {
            let _ = child.kill(); // SIGKILL
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.logs[i]).unwrap_or_default()
    }

    /// The last `n` lines of process `i`'s log.
    fn log_tail(&self, i: usize, n: usize) -> String {
        let text = self.log(i);
        let lines: Vec<&str> = text.lines().collect();
        strip_ansi(&lines[lines.len().saturating_sub(n)..].join("\n"))
    }

    /// Asserts no log holds a panic.
    fn assert_clean(&self, what: &str) {
        for i in 0..self.logs.len() {
            let log = self.log(i);
            assert!(!log.contains("panicked"), "{what} (process {i}) panicked:\n{}", strip_ansi(&log));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The result of `sql` on `url`, or `None` when it fails (a table that does not exist yet).
fn try_psql(url: &str, sql: &str) -> Option<String> {
    let out =
        Command::new("psql").args(["-X", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn count(url: &str, table: &str) -> Option<u64> {
    try_psql(url, &format!("SELECT count(*) FROM {table}"))?.parse().ok()
}

/// The boundary a run would restore from `url` now: the smallest `covered_to` of the newest
/// generation (run) that every one of its workers has checkpointed (`None`: no checkpoint, or
/// no checkpoint tables).
fn restorable(url: &str) -> Option<u64> {
    try_psql(
        url,
        "SELECT min(covered_to) FROM checkpoint_workers WHERE generation = (SELECT max(generation) FROM \
         (SELECT generation FROM checkpoint_workers GROUP BY generation HAVING count(*) = max(workers)) AS complete)",
    )?
    .parse()
    .ok()
}

/// An event time for the report: epoch ms and seconds into the input.
fn event_time(ms: u64) -> String {
    format!("{ms} (+{:.0} s)", (ms as f64 - START_MS as f64) / 1000.0)
}

/// Compares `drilled` with `reference`: the tables of [`COMPARED`] (asserted by the caller),
/// and `dead_letters` for information (in full, and without `detail`). Prints every line.
fn compare(name: &str, drilled: &str, reference: &str) -> (Vec<String>, bool) {
    let (mut lines, identical) = compare_tables(drilled, reference, &COMPARED);
    let (full, _) = compare_tables(drilled, reference, &["dead_letters"]);
    let (no_detail, _) = compare_query(
        drilled,
        reference,
        "dead_letters without detail",
        "SELECT dead_letter_id, reason, encode(raw, 'hex'), source FROM dead_letters ORDER BY dead_letter_id",
        &[],
    );
    lines.extend(full.into_iter().map(|l| format!("(information) {l}")));
    lines.push(format!("(information) {no_detail}"));
    for line in &lines {
        eprintln!("{name}: {line}");
    }
    (lines, identical)
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The input's summary line.
fn describe(input: &Input) -> String {
    format!(
        "input: {} lines ({} spikes, {} level shifts, a stuck stretch, a dropout, {} duplicates, {} late, {} for the \
         registry, {} malformed)",
        input.lines,
        input.spikes,
        input.shifts,
        input.duplicates,
        input.late,
        input.registry,
        input.malformed
    )
}

/// One row of the drill's report.
struct Row {
    run: usize,
    workers: usize,
    /// Whether the input was still being produced when the run ended.
    live: bool,
    /// When it was to be killed.
    plan: KillPlan,
    /// "killed at N ms", "exited 0 at N ms".
    ending: String,
    /// When its first checkpoint was committed (since its start), if it committed one.
    first_commit: Option<Duration>,
    restore: Option<(Restore, Duration)>,
    /// Rows in `readings` after the run.
    readings: Option<u64>,
    /// The boundary the database held for a restore after the run.
    restorable: Option<u64>,
}

fn print_report(seed: u64, rate: u64, rows: &[Row]) {
    eprintln!("kill -9 drill, seed {seed}, input produced at {rate} records/s: {} runs", rows.len());
    let header = [
        "run",
        "workers",
        "live",
        "kill plan",
        "ending",
        "restored boundary",
        "recovery",
        "1st commit",
        "readings after",
        "restorable after",
    ];
    let mut table = vec![header.map(str::to_owned).to_vec()];
    for r in rows {
        let (restored, recovery) = match &r.restore {
            Some((Restore::Restored(Some(b)), at)) => (event_time(*b), format!("{} ms", at.as_millis())),
            Some((Restore::Restored(None), at)) => {
                ("(no boundary=)".to_owned(), format!("{} ms", at.as_millis()))
            }
            Some((Restore::Nothing, at)) => ("none".to_owned(), format!("({} ms)", at.as_millis())),
            None => ("(not logged)".to_owned(), "-".to_owned()),
        };
        table.push(vec![
            r.run.to_string(),
            r.workers.to_string(),
            (if r.live { "yes" } else { "no" }).to_owned(),
            r.plan.to_string(),
            r.ending.clone(),
            restored,
            recovery,
            r.first_commit.map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis())),
            r.readings.map_or_else(|| "?".to_owned(), |v| v.to_string()),
            r.restorable.map_or_else(|| "none".to_owned(), event_time),
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| table.iter().map(|row| row[c].chars().count()).max().unwrap()).collect();
    for row in &table {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        eprintln!("| {} |", cells.join(" | "));
    }
    eprintln!(
        "(live: the input was still being produced when the run ended; recovery: from the start to the `restored \
         checkpoint` line, in parentheses to `no checkpoint to restore`; 1st commit: from the start to the run's \
         first complete checkpoint in the database (every worker); restorable after: the boundary the database then holds for a restore)"
    );
}

/// When a drilled run is SIGKILLed.
#[derive(Debug, Clone, Copy)]
enum KillPlan {
    /// This long after its start.
    At(Duration),
    /// This long after its first checkpoint is in the database (its generation in
    /// `checkpoint_workers` has a row for every worker: restorable); at [`NO_COMMIT_KILL`] if
    /// it has committed none by then (a run restored near the end of the input cannot pass
    /// another boundary before the final run's `--stop-at-end`).
    AfterCommit(Duration),
    /// Never: the final run, to the end.
    Never,
}

impl std::fmt::Display for KillPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KillPlan::At(d) => write!(f, "at {} ms", d.as_millis()),
            KillPlan::AfterCommit(d) => write!(f, "1st commit + {} ms", d.as_millis()),
            KillPlan::Never => write!(f, "none (to the end)"),
        }
    }
}

impl KillPlan {
    /// One kill in five 10–150 ms after the start (while the checkpoint is read and restored);
    /// one in five 0.3–2.5 s after it (mostly before the run's first checkpoint); the others
    /// 0–1.5 s after the run's first checkpoint is committed (mid-stream, or on the backlog
    /// once the input is complete). Fixed times alone would rarely reach a checkpoint: a run
    /// takes 2–5 s to its first commit on a small debug-build machine.
    fn draw(rng: &mut Rng) -> KillPlan {
        let kind = rng.unit();
        let fraction = rng.unit();
        if kind < 0.2 {
            KillPlan::At(Duration::from_millis(10 + (fraction * 140.0) as u64))
        } else if kind < 0.4 {
            KillPlan::At(Duration::from_millis(300 + (fraction * 2_200.0) as u64))
        } else {
            KillPlan::AfterCommit(Duration::from_millis((fraction * 1_500.0) as u64))
        }
    }

    /// With few kills, every one counts: run 2, 5, … is killed 10–150 ms after its start
    /// (while the checkpoint is read and restored), the others 0–1.5 s after their first
    /// checkpoint is committed (mid-stream), so that the runs after them restore the asset
    /// stage's state from the middle of the input.
    fn draw_for_models(rng: &mut Rng, run: usize) -> KillPlan {
        let fraction = rng.unit();
        if run % 3 == 2 {
            KillPlan::At(Duration::from_millis(10 + (fraction * 140.0) as u64))
        } else {
            KillPlan::AfterCommit(Duration::from_millis((fraction * 1_500.0) as u64))
        }
    }
}

/// The newest checkpoint generation of `url` that every one of its workers has checkpointed
/// (`None`: none yet, or no checkpoint tables).
fn newest_generation(url: &str) -> Option<i64> {
    try_psql(
        url,
        "SELECT max(generation) FROM (SELECT generation FROM checkpoint_workers GROUP BY generation \
         HAVING count(*) = max(workers)) AS complete",
    )?
    .parse()
    .ok()
}

/// K runs SIGKILLed at random times on 1 or 2 workers while the input is produced, then a final
/// run to the end: the same tables as the uninterrupted reference.
#[test]
fn kill_nine_drill() {
    let _serial = one_at_a_time();
    let drill = kill_nine("kill-9 drill", 5, |_| String::new(), |rng, _| KillPlan::draw(rng));
    drill.assert_identical();
}

/// [`kill_nine_drill`] with the per-asset k-means stage: before the runs, one model per pump is
/// trained on the first [`TRAIN_S`] seconds of the input (before any level shift) into a
/// `file://` model store, and every run (drilled and reference) serves them (`[models]`, drift
/// off, as by default) besides `[checkpoint]`. The reference must hold k-means anomalies (the
/// comparison of `anomalies` is not vacuous for the asset stage). `MILLSTREAM_KILLS` defaults to 3.
#[test]
fn kill_nine_drill_with_models() {
    let _serial = one_at_a_time();
    let drill = kill_nine("kill-9 drill with models", 3, train_models, KillPlan::draw_for_models);
    let kmeans = |url: &str| try_psql(url, "SELECT count(*) FROM anomalies WHERE detector = 'kmeans'");
    let (reference_kmeans, drilled_kmeans) = (kmeans(&drill.reference), kmeans(&drill.drilled));
    eprintln!(
        "k-means anomalies: reference {reference_kmeans:?}, drilled {drilled_kmeans:?}; by detector and model: \
         reference {:?}, drilled {:?}",
        by_detector(&drill.reference),
        by_detector(&drill.drilled)
    );
    let (line, _) = compare_query(
        &drill.drilled,
        &drill.reference,
        "anomalies of the k-means stage",
        "SELECT event_id, sensor_id, asset_id, ts, value, score, severity, detector, model_version, explanation \
         FROM anomalies WHERE detector = 'kmeans' ORDER BY event_id",
        &[],
    );
    eprintln!("kill-9 drill with models: (information) {line}");
    let reference_kmeans: u64 = reference_kmeans.and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(
        reference_kmeans >= 1,
        "the reference has no k-means anomaly: the drill would not test the asset stage's checkpoints"
    );
    drill.assert_identical();
}

/// Seconds of event time, from the input's start, that the models are trained on.
const TRAIN_S: u64 = 600;
/// Clusters of each model: with the default 4, the models flag only one level shift (2
/// anomalies); with 8, the three level shifts give episodes of 3–90 s, across checkpoint
/// boundaries (10 anomalies, opened and closed, from minute 13 to 28 of the input).
const K: u32 = 8;

/// Trains one k-means model per pump (`pump-NN`) on the first [`TRAIN_S`] seconds of the input
/// into a `file://` store in the scratch directory; returns the `[models]` section serving them.
fn train_models(stack: &Stack) -> String {
    let store = format!("file://{}", stack.path("models").display());
    let input = format!("file:{}", stack.input.path.display());
    let until = (START_MS + TRAIN_S * 1000).to_string();
    let k = K.to_string();
    let mut assets = Vec::new();
    for a in 0..ASSETS {
        let (asset, model) = (format!("plant1-pump-{a:02}"), format!("pump-{a:02}"));
        let training: [&str; 8] = ["--input", &input, "--asset", &asset, "--store", &store, "--name", &model];
        let stdout = common::models::train(&[], &[&training[..], &["--until", &until, "--k", &k]].concat());
        assert_eq!(
            common::models::trained_version(&stdout),
            Some(1),
            "the first version of {model} is 1:\n{stdout}"
        );
        if a == 0 {
            eprintln!("trained {model} for {asset}: {}", stdout.trim());
        }
        assets.push(format!("\"{asset}\" = \"{model}\""));
    }
    format!(
        "[models]\nstore = {{ url = \"{store}\" }}\npoll_interval_ms = 1000\nassets = {{ {} }}\n\
         [models.drift]\nenabled = false\n",
        assets.join(", ")
    )
}

/// [`kill_nine_drill_with_models`] with the drift stage and retraining on (`[models.drift]`,
/// `[models.retrain]`, windows of 10 minutes): its windows, judge, sequential detectors and
/// retrainer, and the model versions in service, are checkpointed too. Each database has a
/// model store of its own, with the same first versions: a retrained version published by the
/// drilled runs must not serve in the reference. `drift_events` and `model_versions` are compared
/// with the rest; the reference must hold window drift events and a retrained version in service
/// (every retraining passes its check here: `max_holdback_anomaly_rate = 1`).
#[test]
fn kill_nine_drill_with_drift() {
    let _serial = one_at_a_time();
    let drill = kill_nine("kill-9 drill with drift", 3, drift_models, KillPlan::draw_for_models);
    let kinds = |url: &str| {
        try_psql(
            url,
            "SELECT string_agg(d, ', ' ORDER BY d) FROM (SELECT statistic || ': ' || count(*) AS d \
             FROM drift_events GROUP BY statistic) AS counts",
        )
    };
    let versions = |url: &str| {
        try_psql(
            url,
            "SELECT string_agg(model || ' v' || version || ' ' || status || ' from ' || effective_from, '; ' \
             ORDER BY model, version) FROM model_versions",
        )
    };
    eprintln!(
        "drift events by statistic: reference {:?}, drilled {:?}\nmodel versions: reference {:?}, drilled {:?}",
        kinds(&drill.reference),
        kinds(&drill.drilled),
        versions(&drill.reference),
        versions(&drill.drilled)
    );
    let number = |url: &str, sql: &str| try_psql(url, sql).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    let windows = number(
        &drill.reference,
        "SELECT count(*) FROM drift_events WHERE statistic IN ('psi', 'ks', 'wasserstein')",
    );
    let sequential = number(
        &drill.reference,
        "SELECT count(*) FROM drift_events WHERE statistic IN ('mean_shift', 'variance_shift')",
    );
    let serving = number(&drill.reference, "SELECT count(*) FROM model_versions WHERE status = 'serving'");
    eprintln!("reference: {windows} window drift events, {sequential} sequential ones, {serving} retrained versions");
    // (The sequential detectors are checkpointed and compared all the same; on this input, with
    // its 10-minute cycles, they do not fire within the 40 minutes.)
    assert!(
        windows >= 1 && serving >= 1,
        "the reference has {windows} window drift events and {serving} retrained versions: the drill would \
         not test the drift stage's checkpoints"
    );
    drill.assert_identical();
}

/// [`train_models`] into a store of each database's own (copies of one training), with the drift
/// stage and retraining on.
fn drift_models(stack: &Stack) -> String {
    let models = train_models(stack);
    let trained = stack.path("models");
    for name in ["drilled", "reference"] {
        let copy = stack.path(&format!("models-{name}"));
        let status = Command::new("cp").arg("-r").arg(&trained).arg(&copy).status().expect("cp runs");
        assert!(status.success(), "cp -r {} {}", trained.display(), copy.display());
    }
    let store = format!("file://{}", trained.display());
    let own = format!("file://{}-@NAME@", trained.display());
    let models = models.replace(&store, &own).replace("[models.drift]\nenabled = false\n", "");
    format!(
        "{models}[models.drift]\nenabled = true\nwindow_ms = 600000\nslide_ms = 60000\nblock_buckets = 30\n\
         [models.retrain]\nenabled = true\nsustain_ms = 120000\nwindow_ms = 600000\nmin_rows = 100\n\
         max_holdback_anomaly_rate = 1.0\nmin_interval_ms = 600000\nswitch_delay_ms = 30000\n"
    )
}

/// Anomalies by detector and model version (for the report).
fn by_detector(url: &str) -> Option<String> {
    try_psql(
        url,
        "SELECT string_agg(d, ', ' ORDER BY d) FROM (SELECT detector || ' ' || coalesce(model_version, '-') || ': ' \
         || count(*) AS d FROM anomalies GROUP BY detector, model_version) AS counts",
    )
}

/// The databases of a finished kill -9 drill and their comparison.
struct Drill {
    /// Holds the services (the databases live as long as it).
    _stack: Stack,
    drilled: String,
    reference: String,
    lines: Vec<String>,
    identical: bool,
}

impl Drill {
    fn assert_identical(&self) {
        assert!(
            self.identical,
            "the drilled database differs from the reference:\n{}",
            self.lines.join("\n")
        );
    }
}

/// The kill -9 drill (see [`kill_nine_drill`]): `MILLSTREAM_KILLS` (default `default_kills`)
/// runs killed, then a final run, then the reference; every run's configuration has what
/// `configure` returns besides `[checkpoint]` (called once, before the databases are made);
/// `draw(generator, run)` plans the kill of run `run` (from 1).
/// Asserts all but the tables' identity, which it returns.
fn kill_nine(
    name: &str,
    default_kills: u64,
    configure: impl FnOnce(&Stack) -> String,
    draw: fn(&mut Rng, usize) -> KillPlan,
) -> Drill {
    let kills = env_u64("MILLSTREAM_KILLS", default_kills) as usize;
    let seed = env_u64("MILLSTREAM_DRILL_SEED", 2026);
    let stack = Stack::start();
    eprintln!("{}", describe(&stack.input));
    let extra = configure(&stack);
    let drilled = stack.database_with("drilled", &extra);
    let reference = stack.database_with("reference", &extra);

    // A killed run lasts about 3 s on a small machine: the input is spread over about 60 % of
    // the kills, so that the later runs restore and catch up on a backlog.
    let default_rate = (stack.input.lines as f64 / (0.6 * 3.0 * kills.max(1) as f64)) as u64;
    let rate = env_u64("MILLSTREAM_DRILL_RATE", default_rate.clamp(2_000, 30_000));
    let mut producer = stack.produce(rate);
    let mut rng = Rng::new(seed);
    let mut rows: Vec<Row> = Vec::new();
    let mut runs: Vec<Run> = Vec::new();
    for run_index in 1..=kills + 1 {
        let last = run_index == kills + 1;
        if last {
            // The final run reads the complete topic to its end.
            producer.finish();
        }
        // (The high bits of the generator: its lowest bits are weak.)
        let workers = if rng.unit() < 0.5 { 1 } else { 2 };
        let plan = if last { KillPlan::Never } else { draw(&mut rng, run_index) };
        let generation_before = newest_generation(&drilled);
        let log = stack.path(&format!("drilled-{run_index}.log"));
        let mut run =
            Run::start(vec![(stack.command("drilled", &drilled, workers, None, last), log)]).traced(&drilled);
        // Every 100 ms: whether the run has committed its first checkpoint.
        let mut first_commit: Option<Duration> = None;
        let mut last_look = Duration::ZERO;
        let ending = run.drive(RUN_TIMEOUT, |elapsed| {
            // (Not just before a timed kill: a look takes a few tens of ms.)
            let kill_near = matches!(plan, KillPlan::At(at) if elapsed + Duration::from_millis(150) >= at);
            if first_commit.is_none() && !kill_near && elapsed >= last_look + Duration::from_millis(100) {
                last_look = elapsed;
                if newest_generation(&drilled) > generation_before {
                    first_commit = Some(elapsed);
                }
            }
            match plan {
                KillPlan::At(at) => elapsed >= at,
                KillPlan::AfterCommit(delay) => match first_commit {
                    Some(c) => elapsed >= c + delay,
                    None => elapsed >= NO_COMMIT_KILL,
                },
                KillPlan::Never => false,
            }
        });
        if first_commit.is_none() && newest_generation(&drilled) > generation_before {
            first_commit = Some(run.started.elapsed()); // At the end: committed in its last 100 ms.
        }
        let live = !producer.done();
        let ending = match ending {
            Ending::Killed(at) => format!("killed at {} ms", at.as_millis()),
            Ending::Exited(statuses) => {
                let status = &statuses[0];
                assert!(
                    last && status.success(),
                    "run {run_index} ({workers} workers) ended by itself ({status}):\n{}",
                    run.log_tail(0, 40)
                );
                format!("exited 0 at {} ms", run.started.elapsed().as_millis())
            }
        };
        run.assert_clean(&format!("run {run_index}"));
        rows.push(Row {
            run: run_index,
            workers,
            live,
            plan,
            ending,
            first_commit,
            restore: run.restore.clone(),
            readings: count(&drilled, "readings"),
            restorable: restorable(&drilled),
        });
        runs.push(run);
    }
    let produced_in = producer.finish();
    let reference_took = stack.reference(&reference);
    eprintln!(
        "produced in {:.1} s; reference (2 workers, uninterrupted): {:.1} s, {:?} readings, {:?} anomalies",
        produced_in.as_secs_f64(),
        reference_took.as_secs_f64(),
        count(&reference, "readings"),
        count(&reference, "anomalies")
    );
    print_report(seed, rate, &rows);
    let (lines, identical) = compare(name, &drilled, &reference);

    assert!(count(&reference, "anomalies").unwrap() >= 10, "the input has anomalies");
    // A run restores when the database holds a checkpoint, and checkpoints only move forward.
    let mut last_boundary = 0;
    for (i, row) in rows.iter().enumerate() {
        if let Some((Restore::Restored(Some(b)), _)) = row.restore {
            assert!(
                b >= last_boundary,
                "run {}: restored boundary {b}, behind one restored earlier ({last_boundary})",
                row.run
            );
            last_boundary = b;
        }
        let before = if i == 0 { None } else { rows[i - 1].restorable };
        if let (Some(before), Some(_)) = (before, &row.restore) {
            assert!(
                matches!(row.restore, Some((Restore::Restored(_), _))),
                "run {}: the database held a checkpoint, yet the run did not restore it:\n{}",
                row.run,
                runs[i].log_tail(0, 40)
            );
            if let Some((Restore::Restored(Some(b)), _)) = row.restore {
                assert_eq!(
                    b,
                    before,
                    "run {} restored boundary {}, while the database held {} for a restore before it",
                    row.run,
                    event_time(b),
                    event_time(before)
                );
            }
        }
    }
    let final_run = rows.last().unwrap();
    assert!(
        final_run.restore.is_some(),
        "the final run logged neither `restored checkpoint` nor `no checkpoint to restore`"
    );
    Drill { _stack: stack, drilled, reference, lines, identical }
}

/// 1 process × 2 workers killed mid-stream once the database holds a checkpoint; then 2
/// processes × 1 worker restore it (re-partitioned) and run to the end: the same tables as the
/// reference.
#[test]
fn rescale_across_processes() {
    let _serial = one_at_a_time();
    let stack = Stack::start();
    let drilled = stack.database("drilled");
    let reference = stack.database("reference");
    // The input over about 8 s.
    let rate = env_u64("MILLSTREAM_DRILL_RATE", (stack.input.lines / 8) as u64);
    let mut producer = stack.produce(rate);

    // The first run: killed once the database holds a checkpoint and a quarter of the input.
    let mut first =
        Run::start(vec![(stack.command("drilled", &drilled, 2, None, false), stack.path("first.log"))]);
    let mut last_look = Duration::ZERO;
    let ending = first.drive(RUN_TIMEOUT, |elapsed| {
        if elapsed < last_look + Duration::from_millis(50) {
            return false;
        }
        last_look = elapsed;
        restorable(&drilled).is_some()
            && count(&drilled, "readings").is_some_and(|r| r * 4 >= stack.input.lines as u64)
    });
    first.assert_clean("the first run");
    let killed_at = match ending {
        Ending::Killed(at) => at,
        Ending::Exited(statuses) => {
            panic!("the first run ended by itself ({statuses:?}):\n{}", first.log_tail(0, 40))
        }
    };
    let live = !producer.done();
    let readings_at_kill = count(&drilled, "readings").unwrap();
    let boundary_at_kill = restorable(&drilled);

    // The second: 2 processes × 1 worker, to the end of the complete topic.
    producer.finish();
    let hostfile = stack.path("hosts.txt");
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();
    let commands = (0..2)
        .map(|p| {
            let command = stack.command("drilled", &drilled, 1, Some((2, p, &hostfile)), true);
            (command, stack.path(&format!("second-{p}.log")))
        })
        .collect();
    let mut second = Run::start(commands);
    let ending = second.drive(RUN_TIMEOUT, |_| false);
    let second_took = second.started.elapsed();
    second.assert_clean("the second run");
    let Ending::Exited(statuses) = ending else { unreachable!("the second run is never killed") };
    for (p, status) in statuses.iter().enumerate() {
        assert!(
            status.success(),
            "process {p} of the second run failed ({status}):\n{}",
            second.log_tail(p, 40)
        );
    }
    let restored: Vec<Option<Restore>> = (0..2).map(|p| restore_line(&second.log(p))).collect();

    stack.reference(&reference);
    let reference_readings = count(&reference, "readings").unwrap();
    eprintln!("{}; produced at {rate} records/s", describe(&stack.input));
    eprintln!(
        "rescale: 1 process × 2 workers killed at {} ms ({}), with {readings_at_kill} of {reference_readings} \
         readings and the boundary {} restorable; then 2 processes × 1 worker: process 0 {:?}, process 1 {:?}, \
         restore logged {} ms after the start, exited 0 after {} ms",
        killed_at.as_millis(),
        if live { "input still being produced" } else { "input complete" },
        boundary_at_kill.map_or_else(|| "none".to_owned(), event_time),
        restored[0],
        restored[1],
        second.restore.as_ref().map_or(0, |(_, at)| at.as_millis()),
        second_took.as_millis(),
    );
    assert!(
        readings_at_kill < reference_readings,
        "killed mid-stream: {readings_at_kill} of {reference_readings} readings"
    );
    assert!(
        restored.iter().all(|r| matches!(r, Some(Restore::Restored(_)))),
        "a process of the second run did not log `restored checkpoint`:\n{}\n---\n{}",
        second.log_tail(0, 30),
        second.log_tail(1, 30)
    );
    let (lines, identical) = compare("rescale", &drilled, &reference);
    assert!(identical, "the rescaled run's database differs from the reference:\n{}", lines.join("\n"));
}
