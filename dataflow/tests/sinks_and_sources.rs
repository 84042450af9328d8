//! The `stdout` and `null` sinks, several sinks at once, and the simulator's real-time pace.

mod common;

use std::time::Instant;

use common::*;

#[test]
fn stdout_tags_every_line_and_matches_the_jsonl_sink() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut lines: Vec<String> =
        (0..200).map(|i| reading_line("p/v", START_MS + i * 1000, (i % 5) as f64, false)).collect();
    lines[150] = reading_line("p/v", START_MS + 150_000, 500.0, false); // a spike
    lines.push("garbage".into());
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = dir.path().join("out");
    let run = run_ok(&[
        "run",
        "--source",
        &format!("file:{}", input.display()),
        "--sink",
        "stdout",
        "--sink",
        &format!("jsonl:{}", out.display()),
        "--sink",
        "null",
    ]);
    let printed: Vec<serde_json::Value> =
        String::from_utf8(run.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of_kind = |kind: &str| -> Vec<String> {
        printed.iter().filter(|v| v["kind"] == kind).map(|v| v["record"].to_string()).collect()
    };
    let anomalies = of_kind("anomaly");
    assert!(!anomalies.is_empty(), "the spike is reported");
    let from_file: Vec<String> =
        read_json(&out.join("anomalies.jsonl")).iter().map(|v| v.to_string()).collect();
    assert_eq!(anomalies, from_file);
    assert_eq!(of_kind("dead_letter").len(), 1);
    assert_eq!(printed.len(), anomalies.len() + 1, "no scores without --emit-scores");
}

#[test]
fn realtime_simulation_keeps_the_pace() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // 11 steps of 1 s at 20× real time: at least 0.5 s of wall clock.
    run_ok(&[
        "run",
        "--source",
        "simulate:assets=1,steps=11,realtime=20",
        "--sink",
        &format!("jsonl:{}", dir.path().display()),
    ]);
    assert!(started.elapsed().as_millis() >= 500, "finished in {:?}", started.elapsed());
}
