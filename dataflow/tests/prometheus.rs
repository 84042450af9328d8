//! A real Prometheus server (Debian's package, on loopback) scrapes a running millstream: the
//! counters rise between scrapes and carry the expected labels.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of an instant query's first sample, and the labels of every sample.
fn query(prometheus: &str, promql: &str) -> Option<(f64, Vec<serde_json::Value>)> {
    let encoded: String = promql
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (status, body) = http_get(prometheus, &format!("/api/v1/query?query={encoded}"))?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let results = json["data"]["result"].as_array()?.clone();
    let first = results.first()?;
    let value: f64 = first["value"][1].as_str()?.parse().ok()?;
    Some((value, results.iter().map(|r| r["metric"].clone()).collect()))
}

#[test]
fn prometheus_scrapes_rising_counters_with_their_labels() {
    assert!(
        Command::new("prometheus").arg("--version").output().is_ok_and(|o| o.status.success()),
        "Debian's prometheus package is needed (scripts/test installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let app = format!("127.0.0.1:{}", free_port());
    let prom = format!("127.0.0.1:{}", free_port());
    // About 12 s: 240 simulated seconds at 20× real time.
    let _run = KillOnDrop(
        millstream()
            .args(["run", "--source", "simulate:assets=2,steps=240,seed=9,realtime=20", "--sink", "null"])
            .args(["--http", &app])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 500ms\nscrape_configs:\n  - job_name: millstream\n    static_configs:\n      - targets: ['{app}']\n"),
    )
    .unwrap();
    let _prometheus = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen: Vec<f64> = Vec::new();
    while Instant::now() < deadline && !(seen.len() >= 2 && seen.last() > seen.first()) {
        if let Some((value, _)) = query(&prom, "millstream_readings_total") {
            if seen.last() != Some(&value) {
                seen.push(value);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        seen.len() >= 2 && seen.last() > seen.first(),
        "millstream_readings_total rises through Prometheus: {seen:?}"
    );

    let (_, dead) = query(&prom, "millstream_dead_letters_total").expect("dead letters are scraped");
    let reasons: Vec<&str> = dead.iter().filter_map(|m| m["reason"].as_str()).collect();
    for reason in ["malformed_json", "duplicate", "late", "bad_timestamp"] {
        assert!(reasons.contains(&reason), "reason {reason} among {reasons:?}");
    }
    assert!(dead.iter().all(|m| m["job"] == "millstream"));
    let (workers, _) = query(&prom, "millstream_workers").expect("workers gauge");
    assert_eq!(workers, 1.0);
    let (delay, _) = query(&prom, "millstream_watermark_delay_seconds").expect("watermark delay is scraped");
    assert!(delay.is_finite(), "{delay}");
    let (up, _) = query(&prom, "up{job=\"millstream\"}").expect("the target is up");
    assert_eq!(up, 1.0);
}
