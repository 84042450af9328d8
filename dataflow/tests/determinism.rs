//! The same input gives byte-identical outputs at 1, 2 and 3 workers, and 2 processes × 1 or 2
//! workers (a timely cluster over loopback TCP).

mod common;

use std::path::Path;
use std::process::Stdio;

use common::*;

const FILES: [&str; 3] = ["anomalies.jsonl", "dead_letters.jsonl", "scores.jsonl"];

/// `run` of `source` into `jsonl:out` with scores, on `workers` threads, plus `extra`.
fn run_args(source: &str, out: &Path, workers: usize, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--source", source, "--sink", &format!("jsonl:{}", out.display())]
        .map(str::to_owned)
        .to_vec();
    args.extend(["--emit-scores".to_owned(), "--workers".to_owned(), workers.to_string()]);
    args.extend_from_slice(extra);
    args
}

fn run_single(source: &str, out: &Path, workers: usize) {
    let args = run_args(source, out, workers, &[]);
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

fn run_cluster(source: &str, out: &Path, dir: &Path, workers: usize) {
    let hostfile = dir.join(format!("hosts-{workers}.txt"));
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();
    let children: Vec<_> = (0..2)
        .map(|process| {
            let cluster = [
                "--processes",
                "2",
                "--process",
                &process.to_string(),
                "--hostfile",
                &hostfile.display().to_string(),
            ]
            .map(str::to_owned);
            millstream()
                .args(run_args(source, out, workers, &cluster))
                .stderr(Stdio::piped())
                .spawn()
                .expect("millstream starts")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "cluster process failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn assert_same_outputs(a: &Path, b: &Path, what: &str) {
    for file in FILES {
        let (x, y) = (read_lines(&a.join(file)), read_lines(&b.join(file)));
        assert_eq!(x.len(), y.len(), "{what}: {file} line counts differ");
        if let Some(i) = (0..x.len()).find(|&i| x[i] != y[i]) {
            panic!("{what}: {file} differs at line {}:\n{}\n{}", i + 1, x[i], y[i]);
        }
    }
}

#[test]
fn file_source_outputs_are_identical_for_any_cluster_shape() {
    let dir = tempfile::tempdir().unwrap();
    // About 2 MB: several 256 KiB chunks, so every worker reads a share.
    let input = write_mixed_input(dir.path(), 12, 1500, 7);
    let source = format!("file:{}", input.path.display());
    let one = dir.path().join("w1");
    let two = dir.path().join("w2");
    let three = dir.path().join("w3");
    let cluster = dir.path().join("p2");
    let cluster_of_two = dir.path().join("p2w2");
    run_single(&source, &one, 1);
    run_single(&source, &two, 2);
    run_single(&source, &three, 3);
    run_cluster(&source, &cluster, dir.path(), 1);
    run_cluster(&source, &cluster_of_two, dir.path(), 2);

    // The runs did real work: anomalies, each kind of dead letter, late readings.
    let anomalies = read_json(&one.join("anomalies.jsonl"));
    let dead = read_json(&one.join("dead_letters.jsonl"));
    let scores = read_json(&one.join("scores.jsonl"));
    assert!(!anomalies.is_empty(), "the input has spikes");
    assert_eq!(dead.iter().filter(|d| d["reason"] == "duplicate").count(), input.duplicates);
    assert_eq!(scores.iter().filter(|s| s["late"] == true).count(), input.late);
    assert_eq!(scores.len() + dead.len(), input.lines, "every line accounted for");
    assert_eq!(dead.len(), input.duplicates + input.invalid);

    assert_same_outputs(&one, &two, "1 worker vs 2 workers");
    assert_same_outputs(&one, &three, "1 worker vs 3 workers");
    assert_same_outputs(&one, &cluster, "1 worker vs 2 processes");
    assert_same_outputs(&one, &cluster_of_two, "1 worker vs 2 processes × 2 workers");
}

#[test]
fn simulator_outputs_are_identical_for_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let source = "simulate:assets=5,steps=900,seed=3";
    let one = dir.path().join("w1");
    let three = dir.path().join("w3");
    run_single(source, &one, 1);
    run_single(source, &three, 3);
    assert!(!read_lines(&one.join("anomalies.jsonl")).is_empty());
    assert_same_outputs(&one, &three, "simulate: 1 worker vs 3 workers");
}
