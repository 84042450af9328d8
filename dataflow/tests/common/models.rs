//! Helpers of the per-asset model tests: a synthetic plant whose pumps run in operating modes
//! (with faults), the S3 credentials for the `millstream` binary, and a `millstream run` that
//! keeps going while the test feeds it and watches its outputs and `/metrics`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{http_get, parse_ts, reading_line, Rng};

/// The sensors of every pump, in the order their readings are written at one instant.
pub const SENSORS: [&str; 3] = ["flow", "pressure", "temp"];

/// An operating mode: every sensor is `base + slope * s(t)` for a slow shared cycle `s(t)`, so
/// the sensors are correlated; modes differ in their levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Normal load.
    A,
    /// High load: every level moved, the same correlations.
    B,
}

impl Mode {
    fn levels(self) -> [(f64, f64); 3] {
        match self {
            Mode::A => [(10.0, 2.0), (20.0, 4.0), (40.0, -3.0)],
            Mode::B => [(16.0, 2.0), (30.0, 4.0), (34.0, -3.0)],
        }
    }
}

/// One pump's behaviour over event time (seconds from the scenario's start).
#[derive(Debug, Clone)]
pub struct Pump {
    /// The asset id; its sensors are `ASSET/flow`, `ASSET/pressure`, `ASSET/temp`.
    pub asset: String,
    /// Shifts the pump's cycle, so that pumps are not copies of one another.
    pub phase_s: f64,
    /// Seeds the pump's noise.
    pub seed: u64,
    /// From this second on the pump runs in mode B (before it, mode A).
    pub mode_b_from: Option<u64>,
    /// From this second on the pump is back in mode A.
    pub mode_b_until: Option<u64>,
    /// In these seconds (from, until) the pump is faulty: flow up, pressure down (the
    /// correlation between them breaks), temp untouched.
    pub fault: Option<(u64, u64)>,
}

/// One reading of the scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub sensor_id: String,
    pub ts: u64,
    pub value: f64,
}

impl Sample {
    /// The input contract's JSON line (RFC 3339 timestamp).
    pub fn line(&self) -> String {
        reading_line(&self.sensor_id, self.ts, self.value, true)
    }
}

impl Pump {
    pub fn new(asset: &str, phase_s: f64, seed: u64) -> Pump {
        Pump { asset: asset.to_owned(), phase_s, seed, mode_b_from: None, mode_b_until: None, fault: None }
    }

    pub fn mode_at(&self, second: u64) -> Mode {
        match self.mode_b_from {
            Some(from) if second >= from && self.mode_b_until.is_none_or(|until| second < until) => Mode::B,
            _ => Mode::A,
        }
    }

    /// The value of sensor `index` at `second`: a pure function of the pump and the second,
    /// so any split of the timeline into phases gives the same readings.
    pub fn value(&self, index: usize, second: u64) -> f64 {
        let cycle = ((second as f64 + self.phase_s) * std::f64::consts::TAU / 120.0).sin();
        let (base, slope) = self.mode_at(second).levels()[index];
        let mut rng = Rng::new(self.seed.wrapping_mul(1_000_003).wrapping_add(second * 8 + index as u64));
        let noise = 0.3 * (rng.unit() - 0.5);
        let mut value = base + slope * cycle + noise;
        if self.fault.is_some_and(|(from, until)| (from..until).contains(&second)) {
            value += [8.0, -12.0, 0.0][index];
        }
        (value * 1000.0).round() / 1000.0
    }
}

/// Readings of `pumps`, one per sensor per second, for the seconds `from_s..until_s` after
/// `start_ms`, in time order (then pump, then sensor).
pub fn samples(pumps: &[Pump], start_ms: u64, from_s: u64, until_s: u64) -> Vec<Sample> {
    let mut out = Vec::new();
    for second in from_s..until_s {
        for pump in pumps {
            for (index, sensor) in SENSORS.iter().enumerate() {
                out.push(Sample {
                    sensor_id: format!("{}/{sensor}", pump.asset),
                    ts: start_ms + second * 1000,
                    value: pump.value(index, second),
                });
            }
        }
    }
    out
}

/// Writes `samples` as a JSON-lines file.
pub fn write_samples(path: &Path, samples: &[Sample]) {
    let text: String = samples.iter().map(|s| s.line() + "\n").collect();
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// `ts` as RFC 3339, rendered the way `reading_line` renders it (no second formatter).
pub fn rfc3339(ts: u64) -> String {
    let line = reading_line("x/y", ts, 0.0, true);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["ts"].as_str().unwrap().to_owned()
}

/// The `[models]` section serving `model` from `url` (`s3://…` on `s3`, or `file://…`), polled
/// every 200 ms.
pub fn models_section(url: &str, s3: Option<&millstream_testkit::TestS3>, model: &str) -> String {
    let endpoint =
        s3.map(|s3| format!(", endpoint = \"{}\", path_style = true, timeout_ms = 2000", s3.endpoint()));
    format!(
        "[models]\nstore = {{ url = \"{url}\"{} }}\npoll_interval_ms = 200\ndefault = \"{model}\"\n",
        endpoint.unwrap_or_default()
    )
}

/// The environment the `millstream` binary needs to sign requests to `s3`, and nothing from
/// the machine's own AWS setup (profiles, instance metadata).
pub fn s3_env(s3: &millstream_testkit::TestS3) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", s3.access_key().to_owned()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key().to_owned()),
        ("AWS_REGION", millstream_testkit::s3::REGION.to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ("AWS_CONFIG_FILE", "/nonexistent/aws-config".to_owned()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials".to_owned()),
    ]
}

/// `millstream` with `env`, without the AWS variables of the environment the tests run in.
pub fn millstream_with(env: &[(&'static str, String)]) -> Command {
    let mut command = super::millstream();
    for var in ["AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"] {
        command.env_remove(var);
    }
    command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    command
}

/// Runs `millstream train` with `args`, asserting exit 0; returns its standard output.
pub fn train(env: &[(&'static str, String)], args: &[&str]) -> String {
    let out = millstream_with(env).arg("train").args(args).output().expect("millstream starts");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "millstream train {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The version `millstream train` says it stored (`model NAME version N in …`).
pub fn trained_version(stdout: &str) -> Option<u64> {
    let line = stdout.lines().find(|l| l.starts_with("model "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "version")?;
    words.get(at + 1)?.parse().ok()
}

/// The value of the sample `series` (`name` or `name{labels}`, exactly as rendered) in a
/// Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// The complete lines of a file that is being written (a last line without its newline is
/// left out); none when the file does not exist yet.
pub fn complete_lines(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let end = text.rfind('\n').map_or(0, |i| i + 1);
    text[..end].lines().map(str::to_owned).collect()
}

/// The event time of an output line (`ts`, RFC 3339 or epoch ms).
pub fn line_ts(line: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    v["ts"]
        .as_u64()
        .or_else(|| v["ts"].as_str().and_then(parse_ts))
        .unwrap_or_else(|| panic!("no ts in {line}"))
}

/// A `millstream run` in the background: stderr to a log file, killed (SIGKILL) on drop.
pub struct LiveRun {
    child: Child,
    pub log: PathBuf,
    /// `127.0.0.1:PORT` of its `--http` endpoint.
    pub http: String,
}

impl LiveRun {
    /// Starts `command` (a `millstream run …` without `--http`, which is added here) and waits
    /// until its HTTP endpoint answers.
    pub fn start(mut command: Command, log: PathBuf) -> LiveRun {
        let http = format!("127.0.0.1:{}", super::free_port());
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .args(["--http", &http])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("millstream starts");
        let mut run = LiveRun { child, log, http };
        run.wait_for("the HTTP endpoint to answer", Duration::from_secs(20), |run| {
            http_get(&run.http, "/health/live").map(|_| ())
        });
        run
    }

    /// The last `n` lines of the run's log.
    pub fn log_tail(&self, n: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Calls `check` every 50 ms until it gives a value, and returns that; panics after
    /// `timeout`, or when the process ends, with `what` and the end of the log.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&mut LiveRun) -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || started.elapsed() > timeout {
                let why = match exited {
                    Some(status) => format!("the run exited ({status})"),
                    None => format!("not within {timeout:?}"),
                };
                panic!("waiting for {what}: {why}; the run's log ends with:\n{}", self.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` on the run's HTTP endpoint: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.http, path)
    }

    /// The run's `/metrics` (panics with the log when it does not answer).
    pub fn metrics(&self) -> String {
        match self.get("/metrics") {
            Some((200, body)) => body,
            other => panic!("/metrics answered {other:?}; the run's log ends with:\n{}", self.log_tail(40)),
        }
    }

    /// SIGKILL, and wait for the process to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        self.kill();
    }
}
