//! Configuration: a misspelt key is refused by name, secrets never show, logs can be JSON.

mod common;

use common::*;

#[test]
fn config_check_names_a_misspelt_key_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[pipeline]\nalowed_lateness_ms = 1000\n").unwrap();
    let out = millstream().args(["config", "check", &file.display().to_string()]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pipeline.alowed_lateness_ms"), "{stderr}");
    assert!(stderr.contains("allowed_lateness_ms"), "suggests the right key: {stderr}");

    // The same mistake through the environment is named too.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[run]\nsource = \"simulate\"\n").unwrap();
    let out = millstream()
        .args(["config", "check", &good.display().to_string()])
        .env("MILLSTREAM_POSTGRES__BATCH_ROWZ", "10")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch_rowz"));

    // A value `run` would refuse is refused here too, in one line.
    let drift = dir.path().join("drift.toml");
    std::fs::write(
        &drift,
        "[models.drift]
enabled = true
window_ms = 0
slide_ms = 0
",
    )
    .unwrap();
    let out = millstream().args(["config", "check", &drift.display().to_string()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("millstream: error: [models.drift]") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn a_secret_from_the_environment_never_appears() {
    const SECRET: &str = "do-not-print-4f8a1c";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[run]\nsource = \"simulate:assets=1,steps=50\"\n").unwrap();
    let check = millstream()
        .args(["config", "check", &file.display().to_string()])
        .env("MILLSTREAM_POSTGRES__PASSWORD", SECRET)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(printed.contains("password = \"***\""), "{printed}");
    assert!(!printed.contains(SECRET) && !String::from_utf8_lossy(&check.stderr).contains(SECRET));

    // A run with every log line on (debug, JSON) prints its configuration but not the secret.
    let out = dir.path().join("out");
    let run = millstream()
        .args(["run", "--config", &file.display().to_string(), "--sink", &format!("jsonl:{}", out.display())])
        .env("MILLSTREAM_POSTGRES__PASSWORD", SECRET)
        .env("MILLSTREAM_LOG__LEVEL", "debug")
        .env("MILLSTREAM_LOG__FORMAT", "json")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let logs = String::from_utf8_lossy(&run.stderr);
    assert!(logs.contains("effective configuration"), "the run logs its configuration: {logs}");
    assert!(!logs.contains(SECRET) && !String::from_utf8_lossy(&run.stdout).contains(SECRET));
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(event.get("level").is_some() && event.get("timestamp").is_some(), "{line}");
    }
}

#[test]
fn run_takes_source_and_sinks_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        format!(
            "[run]\nsource = \"simulate:assets=1,steps=200\"\nsinks = [\"jsonl:{}\"]\nworkers = 2\n",
            out.display()
        ),
    )
    .unwrap();
    run_ok(&["run", "--config", &file.display().to_string()]);
    assert!(out.join("anomalies.jsonl").exists());
    let none = millstream().args(["run"]).output().unwrap();
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no source"));
}
