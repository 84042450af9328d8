//! The command line's failure contract: bad usage and failures exit non-zero with one line on
//! stderr that starts `millstream: error:` (ARCHITECTURE.md §6, README "Command line").

mod common;

use common::millstream;

fn stderr_of(args: &[&str]) -> (Option<i32>, String) {
    let out = millstream().args(args).output().expect("millstream starts");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_usage_is_one_line_and_exit_code_2() {
    let bad: &[&[&str]] = &[
        &[],
        &["bogus"],
        &["--frobnicate"],
        &["run", "--source", "nope:x", "--sink", "null"],
        &["run", "--source", "file:x", "--sink", "null", "--workers", "abc"],
        &["run", "--source", "file:x", "--sink", "null", "--late-policy", "bogus"],
        &["run", "--source", "file:x", "--sink", "null", "--allowed-lateness-ms", "-5"],
        &["run", "--source", "file:", "--sink", "null"],
    ];
    for args in bad {
        let (code, stderr) = stderr_of(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.starts_with("millstream: error: "), "{args:?}: {stderr}");
    }
    // A missing argument is named on the same line.
    let (code, stderr) = stderr_of(&["produce", "--brokers", "127.0.0.1:1", "--topic", "x"]);
    assert_eq!((code, stderr.lines().count()), (Some(2), 1), "{stderr}");
    assert!(stderr.contains("--file") && stderr.contains("--simulate"), "{stderr}");
}

#[test]
fn help_and_version_go_to_stdout_and_succeed() {
    for flag in ["--help", "--version"] {
        let out = millstream().arg(flag).output().expect("millstream starts");
        assert!(out.status.success(), "{flag}");
        assert!(!out.stdout.is_empty(), "{flag}");
    }
}

#[test]
fn a_failure_is_one_line_naming_its_cause_once() {
    let (code, stderr) =
        stderr_of(&["run", "--source", "file:/nonexistent/readings.jsonl", "--sink", "null"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("millstream: error: "), "{stderr}");
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "the cause once: {stderr}");
}

#[test]
fn an_impossible_cluster_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"sensor_id\":\"p/v\",\"ts\":0,\"value\":1}\n").unwrap();
    let source = format!("file:{}", input.display());
    let cases: &[(&[&str], &str)] = &[
        (&["--processes", "0"], "--processes must be at least 1"),
        (&["--process", "1"], "--process 1 is out of range for --processes 1"),
        (&["--workers", "0"], "--workers must be at least 1"),
    ];
    for (extra, reason) in cases {
        let mut args = vec!["run", "--source", &source, "--sink", "null"];
        args.extend_from_slice(extra);
        let (code, stderr) = stderr_of(&args);
        assert_eq!(code, Some(1), "{extra:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{extra:?}: {stderr}");
        assert!(stderr.starts_with("millstream: error: ") && stderr.contains(reason), "{extra:?}: {stderr}");
    }
}
