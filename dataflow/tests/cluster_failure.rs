//! A cluster that loses a process stops: the survivors exit promptly, with exit code 75 and one
//! line naming the lost peer, so that a supervisor restarts the whole cluster. A peer that never
//! comes up is named after the start-up timeout instead of being awaited forever.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The exit code of a process whose cluster cannot run (`millstream::cluster::EXIT_CLUSTER`).
const EXIT_CLUSTER: i32 = 75;

fn write_hostfile(dir: &Path) -> (std::path::PathBuf, Vec<String>) {
    let addresses: Vec<String> = (0..2).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let hostfile = dir.join("hosts.txt");
    std::fs::write(&hostfile, addresses.join("\n") + "\n").unwrap();
    (hostfile, addresses)
}

/// A long simulation, in real time (20 times faster than the wall clock).
const LONG: &str = "simulate:assets=2,steps=100000,realtime=20";

/// Process `process` of a 2-process cluster over `source`.
fn cluster_process(hostfile: &Path, process: usize, source: &str, out: &Path, extra: &[&str]) -> Command {
    let mut command = millstream();
    command
        .args(["run", "--source", source, "--emit-scores"])
        .arg("--sink")
        .arg(format!("jsonl:{}", out.display()))
        .args(["--processes", "2", "--process", &process.to_string(), "--hostfile"])
        .arg(hostfile)
        .args(extra)
        // A panic that slipped through would print its backtrace: the test looks for it.
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits at most `limit` for `child`; kills it (and fails) when it is still running.
fn wait_within(child: &mut Child, limit: Duration, what: &str) -> (ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn output(child: Child) -> (String, String) {
    let out = child.wait_with_output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_one_clean_line(stderr: &str) {
    assert!(!stderr.contains("panicked"), "a panic message:\n{stderr}");
    assert!(!stderr.contains("stack backtrace"), "a backtrace:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("millstream:")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{stderr}");
}

fn kill_one_and_watch_the_other(victim: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (hostfile, addresses) = write_hostfile(dir.path());
    let outs = [dir.path().join("p0"), dir.path().join("p1")];
    let mut children: Vec<Child> =
        (0..2).map(|p| cluster_process(&hostfile, p, LONG, &outs[p], &[]).spawn().unwrap()).collect();

    // Running as a cluster: process 0's scores advance only with the frontier of both.
    let scores = outs[0].join("scores.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&scores).map_or(0, |s| s.lines().count()) < 50 {
        for child in &mut children {
            assert!(child.try_wait().unwrap().is_none(), "a cluster process stopped before the kill");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the cluster made no progress");
        std::thread::sleep(Duration::from_millis(50));
    }

    let survivor = 1 - victim;
    let killed = Instant::now();
    children[victim].kill().unwrap(); // SIGKILL
    children[victim].wait().unwrap();
    let mut rest = children.remove(survivor);
    let (status, _) = wait_within(&mut rest, Duration::from_secs(15), "the survivor");
    let took = killed.elapsed();
    let (stdout, stderr) = output(rest);
    eprintln!("process {survivor} exited {status} {took:?} after process {victim} was killed");
    assert_eq!(status.code(), Some(EXIT_CLUSTER), "exit code; stderr:\n{stderr}");
    let expected = format!("cluster peer process {victim} ({}) is gone", addresses[victim]);
    assert!(stderr.contains(&expected), "no `{expected}` in:\n{stderr}");
    assert!(stderr.contains("restarts the cluster"), "{stderr}");
    assert_one_clean_line(&stderr);
    assert!(stdout.is_empty(), "stdout: {stdout}");
}

#[test]
fn the_survivor_exits_promptly_when_process_1_is_killed() {
    kill_one_and_watch_the_other(1);
}

#[test]
fn the_survivor_exits_promptly_when_process_0_is_killed() {
    kill_one_and_watch_the_other(0);
}

#[test]
fn a_peer_that_never_starts_is_named_after_the_startup_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (hostfile, addresses) = write_hostfile(dir.path());
    // Process 0 waits for process 1 to connect; process 1 connects to process 0.
    for (process, missing, how) in [(0, 1, "never connected"), (1, 0, "refused")] {
        let out = dir.path().join(format!("p{process}"));
        let mut child =
            cluster_process(&hostfile, process, LONG, &out, &["--startup-timeout", "2"]).spawn().unwrap();
        let (status, took) = wait_within(&mut child, Duration::from_secs(15), "the lone process");
        let (stdout, stderr) = output(child);
        assert_eq!(status.code(), Some(EXIT_CLUSTER), "exit code; stderr:\n{stderr}");
        assert!(took >= Duration::from_secs(2), "gave up after {took:?}, before the timeout");
        let expected = format!("process {missing} ({})", addresses[missing]);
        assert!(stderr.contains("did not come up within 2s"), "{stderr}");
        assert!(stderr.contains(&expected) && stderr.contains(how), "no `{expected}…{how}` in:\n{stderr}");
        assert_one_clean_line(&stderr);
        // timely's own start-up printed "awaiting connections" to stdout every second.
        assert!(stdout.is_empty(), "stdout: {stdout}");
    }
}

#[test]
fn a_cluster_that_finishes_exits_zero() {
    // The hook that reports a lost peer leaves a clean end alone: each process sends timely's
    // end-of-stream and reads the other's.
    let dir = tempfile::tempdir().unwrap();
    let (hostfile, _) = write_hostfile(dir.path());
    let children: Vec<Child> = (0..2)
        .map(|p| {
            let out = dir.path().join(format!("p{p}"));
            cluster_process(&hostfile, p, "simulate:assets=2,steps=300", &out, &[]).spawn().unwrap()
        })
        .collect();
    for (p, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "process {p}: {}\n{stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
