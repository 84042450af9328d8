//! The `postgres://` sink against a real, throwaway PostgreSQL: exactly the accepted readings,
//! the same anomalies and dead letters as the JSONL sink, nothing twice on a replay, and a
//! database outage in the middle of a run survived with nothing lost or duplicated.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use millstream_testkit::TestPostgres;

fn count(url: &str, table: &str) -> usize {
    psql(url, &format!("SELECT count(*) FROM {table}")).parse().unwrap()
}

/// The JSONL run of the same source: what the database must hold.
struct Expected {
    scores: usize,
    anomaly_ids: BTreeSet<String>,
    dead_letters: Vec<serde_json::Value>,
}

fn expected(source: &str, dir: &std::path::Path) -> Expected {
    let out = dir.join("jsonl");
    run_ok(&["run", "--source", source, "--sink", &format!("jsonl:{}", out.display()), "--emit-scores"]);
    Expected {
        scores: read_lines(&out.join("scores.jsonl")).len(),
        anomaly_ids: read_json(&out.join("anomalies.jsonl"))
            .iter()
            .map(|a| a["event_id"].as_str().unwrap().to_owned())
            .collect(),
        dead_letters: read_json(&out.join("dead_letters.jsonl")),
    }
}

fn assert_database_matches(url: &str, want: &Expected) {
    assert_eq!(count(url, "readings"), want.scores, "readings = accepted readings");
    let ids: BTreeSet<String> =
        psql(url, "SELECT event_id FROM anomalies ORDER BY 1").lines().map(str::to_owned).collect();
    assert_eq!(ids, want.anomaly_ids, "anomalies = the JSONL run's anomalies");
    assert_eq!(count(url, "dead_letters"), want.dead_letters.len());
    for d in &want.dead_letters {
        let raw = d["raw"].as_str().unwrap();
        let reason = d["reason"].as_str().unwrap();
        let source = d["source"].to_string().replace('\'', "''");
        let stored = psql(
            url,
            &format!(
                "SELECT encode(raw, 'hex') FROM dead_letters WHERE reason = '{reason}' AND source = '{source}'::jsonb"
            ),
        );
        let hex: String = raw.bytes().map(|b| format!("{b:02x}")).collect();
        assert_eq!(stored, hex, "dead letter {d} keeps its raw bytes");
    }
}

/// `readings_1m`, maintained incrementally, equals a `GROUP BY` over `readings`.
fn assert_minutes_match_group_by(url: &str) {
    let mismatches = psql(
        url,
        "SET TIME ZONE 'UTC'; \
         WITH g AS (SELECT sensor_id, date_trunc('minute', ts) AS minute, count(*) AS count, avg(value) AS mean, \
                    min(value) AS min, max(value) AS max, stddev_pop(value) AS stddev \
                    FROM readings GROUP BY 1, 2) \
         SELECT count(*) FROM g FULL JOIN readings_1m r USING (sensor_id, minute) \
         WHERE g.count IS NULL OR r.count IS NULL OR g.count <> r.count OR g.min <> r.min OR g.max <> r.max \
            OR abs(g.mean - r.mean) > 1e-9 * greatest(1, abs(g.mean)) \
            OR abs(g.stddev - r.stddev) > 1e-6 * greatest(1, g.stddev)",
    );
    assert_eq!(mismatches.lines().last(), Some("0"), "readings_1m differs from GROUP BY over readings");
    assert!(count(url, "readings_1m") > 100);
}

#[test]
fn file_to_postgres_twice_writes_everything_once() {
    let pg = TestPostgres::start().expect("a throwaway PostgreSQL");
    let url = pg.create_database("twice").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = write_mixed_input(dir.path(), 12, 1500, 11);
    let source = format!("file:{}", input.path.display());
    let want = expected(&source, dir.path());
    assert!(want.scores > 10_000 && !want.anomaly_ids.is_empty() && !want.dead_letters.is_empty());

    run_ok(&["migrate", "--database-url", &url]);
    run_ok(&["run", "--source", &source, "--sink", &url, "--workers", "2"]);
    assert_database_matches(&url, &want);
    let late = count(&url, "readings WHERE late");
    assert!(input.late > 0, "the input has late readings");
    assert_eq!(late, input.late, "late readings are stored, flagged");
    assert_minutes_match_group_by(&url);
    assert_eq!(count(&url, "sensors"), 12, "every sensor is registered once");
    assert_eq!(
        psql(&url, "SELECT asset_id || ' ' || kind FROM sensors WHERE sensor_id = 'line0-pump-01/temp'"),
        "line0-pump-01 temp"
    );

    // A replay (as after a crash before offsets were committed) writes nothing twice.
    run_ok(&["run", "--source", &source, "--sink", &url]);
    assert_database_matches(&url, &want);
}

#[test]
fn run_without_migrations_says_what_to_do() {
    let pg = TestPostgres::start().expect("a throwaway PostgreSQL");
    let url = pg.create_database("bare").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, reading_line("a/b", START_MS, 1.0, false)).unwrap();
    let out = millstream()
        .args(["run", "--source", &format!("file:{}", input.display()), "--sink", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("migrate"), "{stderr}");
    // `run --migrate` applies them first.
    run_ok(&["run", "--source", &format!("file:{}", input.display()), "--sink", &url, "--migrate"]);
    assert_eq!(count(&url, "readings"), 1);
}

/// Polls `/health/ready` until it answers `status`, for up to `within`.
fn wait_for_ready_status(addr: &str, status: u16, within: Duration) -> Option<String> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Some((code, body)) = http_get(addr, "/health/ready") {
            if code == status {
                return Some(body);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

#[test]
fn a_database_outage_mid_run_loses_and_duplicates_nothing() {
    let pg = TestPostgres::start().expect("a throwaway PostgreSQL");
    let url = pg.create_database("outage").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // About 26 s of wall clock: 260 simulated seconds at 10× real time, so the run outlasts the
    // outage and the recovery.
    let source = "simulate:assets=3,steps=260,seed=5";
    let want = expected(source, dir.path());
    run_ok(&["migrate", "--database-url", &url]);
    let paced = format!("{source},realtime=10");
    let http = format!("127.0.0.1:{}", free_port());
    let child = millstream()
        .args(["run", "--source", &paced, "--sink", &url, "--workers", "2", "--http", &http])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for_ready_status(&http, 200, Duration::from_secs(5)).is_some(),
        "ready while the database is up"
    );
    assert_eq!(http_get(&http, "/health/live").map(|r| r.0), Some(200));
    std::thread::sleep(Duration::from_secs(2));
    pg.stop_immediate().unwrap();
    let stopped = std::time::Instant::now();
    let body = wait_for_ready_status(&http, 503, Duration::from_secs(8))
        .expect("not ready while the database is down");
    assert!(body.contains("postgres sink") && body.contains("circuit open"), "{body}");
    // Down for 10 s, as the issue asks, however long the 503 took to appear.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed()));
    pg.restart().unwrap();
    assert!(
        wait_for_ready_status(&http, 200, Duration::from_secs(9)).is_some(),
        "ready again once it is back"
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the run completes on its own: {stderr}");
    assert!(stderr.contains("circuit open"), "the outage was logged: {stderr}");
    assert_database_matches(&url, &want);
}

#[test]
fn tls_require_and_verify_full_and_a_wrong_root_is_refused() {
    let pg = TestPostgres::start().expect("a throwaway PostgreSQL");
    if pg.is_external() {
        eprintln!("DATABASE_URL is set: the TLS test needs a server it can reconfigure; skipped");
        return;
    }
    let root = pg.enable_tls().unwrap();
    let url = pg.create_database("tls").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines: Vec<String> =
        (0..50).map(|i| reading_line("p/v", START_MS + i * 1000, i as f64, false)).collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let source = format!("file:{}", input.display());

    run_ok(&["run", "--source", &source, "--sink", &format!("{url}?sslmode=require"), "--migrate"]);
    assert_eq!(count(&url, "readings"), 50);
    let verified = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        url.replace("127.0.0.1", "localhost"),
        root.display()
    );
    run_ok(&["run", "--source", &source, "--sink", &verified]);
    assert_eq!(count(&url, "readings"), 50, "idempotent over TLS too");
    let log = pg.log().unwrap();
    assert!(
        log.lines().any(|l| l.contains("application_name=millstream") && l.contains("SSL enabled")),
        "millstream's connections used TLS"
    );

    // A root that did not sign the server's certificate: refused at once, not retried forever.
    let (other_key, other_cert) = (dir.path().join("other.key"), dir.path().join("other.crt"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&other_key)
        .arg("-out")
        .arg(&other_cert)
        .output()
        .unwrap();
    assert!(made.status.success());
    let wrong = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        url.replace("127.0.0.1", "localhost"),
        other_cert.display()
    );
    let started = std::time::Instant::now();
    let out = millstream().args(["run", "--source", &source, "--sink", &wrong]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "a bad certificate is not retried");
}
