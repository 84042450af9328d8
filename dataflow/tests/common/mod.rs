//! Helpers shared by the end-to-end tests: run the real binary, build inputs, read outputs.
#![allow(dead_code)]

pub mod drill;
pub mod models;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn millstream() -> Command {
    Command::new(env!("CARGO_BIN_EXE_millstream"))
}

/// Runs `millstream` with `args`, asserting exit 0; returns its output.
pub fn run_ok(args: &[&str]) -> Output {
    let out = millstream().args(args).output().expect("millstream starts");
    assert!(
        out.status.success(),
        "millstream {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `millstream run` from the file `input` into `jsonl:out`, with `extra` flags; must succeed.
pub fn run_file_to_jsonl(input: &Path, out: &Path, extra: &[&str]) -> Output {
    let (source, sink) = (format!("file:{}", input.display()), format!("jsonl:{}", out.display()));
    let mut args = vec!["run", "--source", &source, "--sink", &sink];
    args.extend_from_slice(extra);
    run_ok(&args)
}

pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn read_json(path: &Path) -> Vec<serde_json::Value> {
    read_lines(path).iter().map(|l| serde_json::from_str(l).expect("output lines are JSON")).collect()
}

/// A small deterministic generator (xorshift64*), so inputs are the same on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub const START_MS: u64 = 1_772_323_200_000;

/// One reading as a contract JSON line, with an RFC 3339 or epoch-ms timestamp.
pub fn reading_line(sensor: &str, ts: u64, value: f64, rfc: bool) -> String {
    let ts_json = if rfc {
        let secs = (ts / 1000) as i64;
        let dt = chrono_like(secs, ts % 1000);
        format!("\"{dt}\"")
    } else {
        ts.to_string()
    };
    format!("{{\"sensor_id\":\"{sensor}\",\"ts\":{ts_json},\"value\":{value}}}")
}

/// RFC 3339 without a date library: the tests must not share the code they check.
fn chrono_like(secs: i64, millis: u64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // civil_from_days, written out independently of the crate under test.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", sod / 3600, (sod / 60) % 60, sod % 60)
}

/// A plant-like input: `sensors` sensors sampled every second for `steps` seconds, lines
/// shuffled within `jitter_ms` (less than the allowed lateness), occasional spikes,
/// exact duplicates, late records and invalid lines. Returns the path and how many lines of
/// each kind it holds.
pub struct Mixed {
    pub path: PathBuf,
    pub lines: usize,
    pub valid: usize,
    pub duplicates: usize,
    pub late: usize,
    pub invalid: usize,
}

pub fn write_mixed_input(dir: &Path, sensors: usize, steps: u64, seed: u64) -> Mixed {
    let mut rng = Rng::new(seed);
    let mut rows: Vec<(u64, String, bool)> = Vec::new();
    let mut duplicates = 0;
    let mut late = 0;
    let mut invalid = 0;
    for step in 0..steps {
        let ts = START_MS + step * 1000;
        for s in 0..sensors {
            let sensor = format!("line{}-pump-{:02}/{}", s / 10, s % 10, ["vib", "temp", "flow"][s % 3]);
            let mut value = 10.0 + s as f64 + ((step as f64) / 60.0).sin() + 0.2 * (rng.unit() - 0.5);
            if step > 100 && rng.below(997) == 0 {
                value += 25.0;
            }
            let value = (value * 1000.0).round() / 1000.0;
            let jitter = rng.below(3000);
            let line = reading_line(&sensor, ts, value, rng.below(2) == 0);
            rows.push((ts + jitter, line.clone(), true));
            if rng.below(1500) == 0 {
                rows.push((ts + jitter + 1, line, false));
                duplicates += 1;
            }
            if step > 200 && rng.below(4000) == 0 {
                // Arrives ten minutes after it happened: late.
                let old = reading_line(&sensor, ts - 600_000, value + 0.5, false);
                rows.push((ts + jitter, old, false));
                late += 1;
            }
        }
        if rng.below(40) == 0 {
            let bad = [
                "not json at all".to_owned(),
                "{\"sensor_id\":\"x/y\",\"ts\":1,".to_owned(),
                format!("{{\"ts\":{ts},\"value\":1}}"),
                format!("{{\"sensor_id\":\"a/b\",\"ts\":{ts},\"value\":\"high\"}}"),
                format!("{{\"sensor_id\":\"a/b\",\"ts\":{ts},\"value\":NaN}}"),
                "{\"sensor_id\":\"a/b\",\"ts\":\"yesterday\",\"value\":1}".to_owned(),
                format!("{{\"sensor_id\":\"\",\"ts\":{ts},\"value\":1}}"),
                String::new(),
            ];
            rows.push((ts + 1500, bad[rng.below(bad.len() as u64) as usize].clone(), false));
            invalid += 1;
        }
    }
    rows.sort_by_key(|(arrival, _, _)| *arrival);
    let text: String = rows.iter().map(|(_, l, _)| format!("{l}\n")).collect();
    let path = dir.join("mixed.jsonl");
    std::fs::write(&path, text).unwrap();
    let valid = rows.iter().filter(|r| r.2).count();
    Mixed { path, lines: rows.len(), valid, duplicates, late, invalid }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A plain HTTP/1.1 GET: (status code, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    // HTTP/1.0: the answer is never chunked (Prometheus chunks larger bodies under 1.1), so
    // the body is the rest of the stream.
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Some((status, body))
}

/// Epoch ms of an RFC 3339 UTC timestamp (`…Z`, optional milliseconds): the inverse of
/// `chrono_like`, written independently of the crate under test.
pub fn parse_ts(text: &str) -> Option<u64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let d: Vec<i64> = date.split('-').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1000 + ms.parse::<i64>().ok()?) as u64)
}

/// What identifies a reading across inputs and outputs: (sensor_id, ts in epoch ms, value
/// bits). `ts` may be epoch ms or RFC 3339, as in the input contract and the outputs.
pub fn reading_identity(v: &serde_json::Value) -> Option<(String, u64, u64)> {
    let ts = v["ts"].as_u64().or_else(|| v["ts"].as_str().and_then(parse_ts))?;
    Some((v["sensor_id"].as_str()?.to_owned(), ts, v["value"].as_f64()?.to_bits()))
}

/// The result of `sql` on `url`, by the real `psql` client (unaligned, tuples only), trimmed.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
