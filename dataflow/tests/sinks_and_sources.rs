//! The `stdout` and `null` sinks, several sinks at once, a file source on a pipe, and the
//! simulator's real-time pace.

mod common;

use std::io::Write;
use std::process::Stdio;
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

/// `file:/dev/stdin` (a pipe: it cannot be memory-mapped) is read whole, and gives the same
/// outputs as the same lines in a regular file; a cluster of processes refuses it.
#[test]
fn a_pipe_as_the_file_source_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> =
        (0..300).map(|i| reading_line("p/v", START_MS + i * 1000, (i % 7) as f64, i % 2 == 0)).collect();
    lines[200] = reading_line("p/v", START_MS + 200_000, 900.0, false); // a spike
    lines.push("{not json".into());
    let text = lines.join("\n") + "\n";
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, &text).unwrap();
    let from_file = dir.path().join("file");
    run_file_to_jsonl(&input, &from_file, &["--emit-scores", "--workers", "2"]);

    let from_pipe = dir.path().join("pipe");
    let mut child = millstream()
        .args(["run", "--source", "file:/dev/stdin", "--sink"])
        .arg(format!("jsonl:{}", from_pipe.display()))
        .args(["--emit-scores", "--workers", "2"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("millstream starts");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in ["anomalies.jsonl", "dead_letters.jsonl", "scores.jsonl"] {
        let (a, b) = (read_lines(&from_file.join(file)), read_lines(&from_pipe.join(file)));
        assert!(!a.is_empty(), "{file} has records");
        if file == "dead_letters.jsonl" {
            // Same reason and line; the file's name differs.
            let strip = |l: &Vec<String>| -> Vec<(String, String)> {
                l.iter()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                    .map(|v| (v["reason"].to_string(), v["source"]["line"].to_string()))
                    .collect()
            };
            assert_eq!(strip(&a), strip(&b), "{file}");
        } else {
            assert_eq!(a, b, "{file}: pipe vs regular file");
        }
    }
    assert_eq!(read_lines(&from_pipe.join("scores.jsonl")).len(), lines.len() - 1);

    let hostfile = dir.path().join("hosts");
    std::fs::write(&hostfile, "127.0.0.1:1\n127.0.0.1:2\n").unwrap();
    let out = millstream()
        .args(["run", "--source", "file:/dev/stdin", "--sink", "null", "--processes", "2", "--hostfile"])
        .arg(&hostfile)
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("millstream: error: ") && stderr.contains("regular file"), "{stderr}");
}
