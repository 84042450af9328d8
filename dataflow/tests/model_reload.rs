//! Per-asset models end to end, through the real `millstream` binary, a real S3-compatible
//! server (s3s-fs) as the model store and a real Kafka broker (tansu):
//!
//! - `millstream train` puts a model into `s3://models/…`, and `run` loads it and flags a
//!   multivariate fault with it, and only the fault;
//! - a new version trained while a run is going, with `--effective-from T2`, takes over at
//!   exactly T2 of event time: every score before T2 is the old model's, every score from T2
//!   on the new one's, and the outputs are the same at 1 and 2 workers;
//! - when the store goes down, the run keeps scoring with the model it has, and says so in
//!   `/health/ready` and `millstream_model_store_errors_total`.
//!
//! The plant: pumps with three correlated sensors (flow, pressure, temp) sampled every second,
//! in operating mode A (normal load) or B (high load, every level moved), and faults that
//! break the correlation of flow and pressure (see `common::models`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::models::{
    complete_lines, line_ts, metric, millstream_with, models_section, rfc3339, s3_env, samples, train,
    trained_version, write_samples, LiveRun, Pump, Sample,
};
use common::{read_json, read_lines, START_MS};
use millstream_testkit::kafka::{TestKafka, TestRecord};
use millstream_testkit::TestS3;
use serde_json::Value;

/// The model name every test serves its pumps with (`[models] default`).
const MODEL: &str = "pump";
/// The bucket of the model store.
const BUCKET: &str = "models";
/// Event time `s` seconds into a scenario.
fn at(s: u64) -> u64 {
    START_MS + s * 1000
}

/// Runs `millstream run` on a file with `config`, scores emitted, to `out`; asserts exit 0.
fn file_run(env: &[(&'static str, String)], input: &Path, config: &Path, out: &Path, workers: usize) {
    let output = millstream_with(env)
        .args(["run", "--source", &format!("file:{}", input.display())])
        .args(["--sink", &format!("jsonl:{}", out.display()), "--emit-scores"])
        .args(["--allowed-lateness-ms", "1000", "-w", &workers.to_string()])
        .args(["--config", config.to_str().unwrap()])
        .output()
        .expect("millstream starts");
    assert!(
        output.status.success(),
        "millstream run on {} failed: {}\n{}",
        input.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn write(path: PathBuf, text: &str) -> PathBuf {
    std::fs::write(&path, text).unwrap();
    path
}

fn kmeans(anomalies: &[Value]) -> Vec<&Value> {
    anomalies.iter().filter(|a| a["detector"] == "kmeans").collect()
}

fn ts_of(v: &Value) -> u64 {
    common::parse_ts(v["ts"].as_str().expect("ts is RFC 3339")).expect("ts parses")
}

fn describe(events: &[&Value]) -> String {
    events
        .iter()
        .map(|a| {
            format!(
                "{} {} {} {} score {:.3}",
                a["ts"].as_str().unwrap_or("?"),
                a["asset_id"].as_str().unwrap_or("?"),
                a["state"].as_str().unwrap_or("?"),
                a["model_version"].as_str().unwrap_or("-"),
                a["score"].as_f64().unwrap_or(f64::NAN)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// 1. Train on the normal part of a pump's history, upload to S3, and serve it: the model flags
///    the fault and nothing else, and its asset score is in `scores.jsonl`.
#[test]
fn a_model_trained_into_s3_is_served_and_flags_the_fault() {
    let s3 = TestS3::start().expect("an s3s-fs server starts");
    s3.create_bucket(BUCKET).unwrap();
    let env = s3_env(&s3);
    let dir = tempfile::tempdir().unwrap();
    let (fault_from, fault_until, end) = (400, 460, 600);
    let mut pump = Pump::new("pump-1", 0.0, 11);
    pump.fault = Some((fault_from, fault_until));
    let input = dir.path().join("pump-1.jsonl");
    write_samples(&input, &samples(&[pump], START_MS, 0, end));

    let url = format!("s3://{BUCKET}/plant");
    let stdout = train(
        &env,
        &[
            "--input",
            &format!("file:{}", input.display()),
            "--store",
            &url,
            "--endpoint",
            &s3.endpoint(),
            "--name",
            MODEL,
            "--until",
            &rfc3339(at(fault_from)),
        ],
    );
    assert_eq!(trained_version(&stdout), Some(1), "the first version of a model is 1:\n{stdout}");
    assert!(stdout.contains(&format!("in {url}")), "{stdout}");
    assert!(stdout.contains("trained on 400 buckets"), "the training window is the normal part:\n{stdout}");
    assert_eq!(s3.list_keys(BUCKET, "plant/").unwrap(), vec![format!("plant/{MODEL}/v0000000001.model")]);

    let config = write(dir.path().join("run.toml"), &models_section(&url, Some(&s3), MODEL));
    let out = dir.path().join("out");
    file_run(&env, &input, &config, &out, 1);
    let anomalies = read_json(&out.join("anomalies.jsonl"));
    let found = kmeans(&anomalies);
    let listing = describe(&found);
    assert!(
        found.iter().all(|a| a["model_version"] == "pump@v1" && a["asset_id"] == "pump-1"),
        "every kmeans event names the model version it was scored with:\n{listing}"
    );
    let opened: Vec<u64> = found.iter().filter(|a| a["state"] == "opened").map(|a| ts_of(a)).collect();
    assert_eq!(opened.len(), 1, "one episode, for the fault:\n{listing}");
    assert!(
        (at(fault_from)..at(fault_from + 15)).contains(&opened[0]),
        "the episode opens within the smoothing window (15 s) of the fault's start:\n{listing}"
    );
    // Nothing in the normal part: no event before the fault, and the episode is closed within
    // the smoothing window (plus a little) after the fault ends.
    for a in &found {
        assert!(
            (at(fault_from)..at(fault_until + 20)).contains(&ts_of(a)),
            "a kmeans event outside the fault:\n{listing}"
        );
    }
    assert!(found.iter().any(|a| a["state"] == "closed"), "the episode closes after the fault:\n{listing}");

    // scores.jsonl carries the asset score: `temp` is untouched by the fault, yet its readings
    // score high through it, which they do not without the model.
    let plain = dir.path().join("plain");
    file_run(&env, &input, &write(dir.path().join("plain.toml"), ""), &plain, 1);
    let temp_scores = |out: &Path, from: u64, until: u64| -> Vec<f64> {
        read_json(&out.join("scores.jsonl"))
            .iter()
            .filter(|s| s["sensor_id"] == "pump-1/temp" && (at(from)..at(until)).contains(&ts_of(s)))
            .map(|s| s["score"].as_f64().unwrap())
            .collect()
    };
    let with_model = temp_scores(&out, fault_from + 15, fault_until);
    let without = temp_scores(&plain, fault_from + 15, fault_until);
    assert_eq!(with_model.len(), 45);
    assert!(with_model.iter().all(|s| *s >= 0.8), "temp during the fault, with the model: {with_model:?}");
    assert!(without.iter().all(|s| *s < 0.8), "temp during the fault, without a model: {without:?}");
    assert!(kmeans(&read_json(&plain.join("anomalies.jsonl"))).is_empty());
    // And the normal part scores low.
    let normal = temp_scores(&out, 20, fault_from);
    assert!(normal.iter().all(|s| *s < 0.8), "temp in the normal part: {normal:?}");
}

// ---------------------------------------------------------------------------------------------
// Hot reload on a Kafka source.

/// The reload scenario, in seconds from `START_MS`: phase 1 (mode A) is produced before the
/// run starts; v2 (a model of mode B, effective from `T2`) is trained once phase 1 is scored;
/// then phase 2: mode B from `MODE_B_FROM` (v1 flags it, v2 does not), a fault of pump-1 (v2
/// flags it), up to `END`.
const PHASE1_END: u64 = 240;
const MODE_B_FROM: u64 = 300;
const T2: u64 = 360;
const FAULT: (u64, u64) = (450, 490);
const END: u64 = 600;
/// The outputs compared: those before this time, which the run has flushed before it is killed.
const TQ: u64 = 590;
const LATENESS_MS: u64 = 1000;
const WAIT: Duration = Duration::from_secs(40);

fn reload_pumps() -> Vec<Pump> {
    let mut one = Pump::new("pump-1", 0.0, 21);
    one.mode_b_from = Some(MODE_B_FROM);
    one.fault = Some(FAULT);
    let mut two = Pump::new("pump-2", 37.0, 22);
    two.mode_b_from = Some(MODE_B_FROM);
    vec![one, two]
}

/// Histories to train on, a day before the scenario: pump-1 in mode A (for v1) or mode B
/// (for v2) for five minutes.
fn write_history(dir: &Path, mode_b: bool) -> PathBuf {
    let mut pump = Pump::new("pump-1", 11.0, if mode_b { 32 } else { 31 });
    pump.mode_b_from = mode_b.then_some(0);
    let path = dir.join(if mode_b { "history-b.jsonl" } else { "history-a.jsonl" });
    write_samples(&path, &samples(&[pump], START_MS - 86_400_000, 0, 300));
    path
}

/// Trains `history` with `k` clusters into `url` (an S3 url on `s3`, or `file://`), with
/// `extra` arguments; returns the version stored.
fn train_into(
    env: &[(&'static str, String)],
    s3: Option<&TestS3>,
    url: &str,
    history: &Path,
    k: u32,
    extra: &[&str],
) -> u64 {
    let input = format!("file:{}", history.display());
    let k = k.to_string();
    let mut args = vec!["--input", &input, "--store", url, "--name", MODEL, "--k", &k];
    let endpoint = s3.map(|s3| s3.endpoint());
    if let Some(endpoint) = &endpoint {
        args.extend(["--endpoint", endpoint]);
    }
    args.extend(extra);
    let stdout = train(env, &args);
    trained_version(&stdout).unwrap_or_else(|| panic!("no version in:\n{stdout}"))
}

/// Produces `samples` to `topic`, each sensor to a partition of its own choosing (sensor
/// `i` of the list to partition `i % partitions`), keyed by sensor.
fn produce(kafka: &TestKafka, topic: &str, partitions: i32, samples: &[Sample]) {
    let mut sensors: Vec<&str> = samples.iter().map(|s| s.sensor_id.as_str()).collect();
    sensors.sort();
    sensors.dedup();
    let records: Vec<TestRecord> = samples
        .iter()
        .map(|s| TestRecord {
            partition: Some(sensors.binary_search(&s.sensor_id.as_str()).unwrap() as i32 % partitions),
            key: Some(s.sensor_id.clone().into_bytes()),
            value: s.line().into_bytes(),
            headers: Vec::new(),
        })
        .collect();
    kafka.produce_records(topic, &records).expect("the readings are produced");
}

/// A live `run` on `topic` with `[models]` on `url`.
fn start_live_run(
    env: &[(&'static str, String)],
    s3: &TestS3,
    kafka: &TestKafka,
    dir: &Path,
    name: &str,
    url: &str,
    workers: usize,
) -> (LiveRun, PathBuf) {
    let config = write(
        dir.join(format!("{name}.toml")),
        &format!(
            "[kafka]\ngroup_id = \"{name}\"\nidle_timeout_ms = 600000\nallowed_lateness_ms = {LATENESS_MS}\n\
             [log]\nlevel = \"info\"\nformat = \"json\"\n{}",
            models_section(url, Some(s3), MODEL)
        ),
    );
    let out = dir.join(name);
    let mut command = millstream_with(env);
    command
        .args(["run", "--source", &format!("{}/{name}", kafka.url())])
        .args(["--sink", &format!("jsonl:{}", out.display()), "--emit-scores"])
        .args(["-w", &workers.to_string(), "--config", config.to_str().unwrap()]);
    (LiveRun::start(command, dir.join(format!("{name}.log"))), out)
}

/// Waits until `scores.jsonl` in `out` has a line at `ts` or later: every score before it is
/// written (the file is in event-time order).
fn wait_scored(run: &mut LiveRun, out: &Path, ts: u64, what: &str) {
    let scores = out.join("scores.jsonl");
    run.wait_for(&format!("{what} ({} scored)", rfc3339(ts)), WAIT, |_| {
        complete_lines(&scores).last().is_some_and(|l| line_ts(l) >= ts).then_some(())
    });
}

fn wait_metric(run: &mut LiveRun, series: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
    run.wait_for(&format!("{what} ({series})"), WAIT, |run| {
        run.get("/metrics").and_then(|(_, body)| metric(&body, series)).filter(|v| ok(*v))
    })
}

/// Lines of `path` (complete ones) whose event time lies in `from..until`, sorted.
fn lines_between(path: &Path, from: u64, until: u64) -> Vec<String> {
    let mut lines: Vec<String> =
        complete_lines(path).into_iter().filter(|l| (from..until).contains(&line_ts(l))).collect();
    lines.sort();
    lines
}

/// What a reload run wrote before `TQ`, sorted.
struct ReloadOutput {
    scores: Vec<String>,
    anomalies: Vec<String>,
}

/// How phase 2 reaches the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase2 {
    /// All at once: the run reads it in a few batches, and its frontier passes T2 in one go.
    AtOnce,
    /// Up to T2 + 1 s first, and the rest once everything before T2 is scored: the run's
    /// frontier stops between T2 - 1 s and T2 for a while. The outputs must not change.
    PausedBeforeT2,
}

/// Runs the reload scenario at `workers` workers, with its own topic, group and model prefix;
/// checks what is particular to the run; returns its outputs before `TQ`.
fn reload_run(
    env: &[(&'static str, String)],
    s3: &TestS3,
    kafka: &TestKafka,
    dir: &Path,
    workers: usize,
    phase2: Phase2,
    expected_scores: &[String],
) -> ReloadOutput {
    let name = match phase2 {
        Phase2::AtOnce => format!("reload-w{workers}"),
        Phase2::PausedBeforeT2 => format!("reload-w{workers}-paused"),
    };
    let url = format!("s3://{BUCKET}/{name}");
    let (history_a, history_b) = (dir.join("history-a.jsonl"), dir.join("history-b.jsonl"));
    assert_eq!(train_into(env, Some(s3), &url, &history_a, 3, &[]), 1);
    kafka.create_topic(&name, 2).unwrap();
    let pumps = reload_pumps();
    produce(kafka, &name, 2, &samples(&pumps, START_MS, 0, PHASE1_END));

    let (mut run, out) = start_live_run(env, s3, kafka, dir, &name, &url, workers);
    let version = format!("millstream_model_version{{model=\"{MODEL}\"}}");
    wait_metric(&mut run, &version, "v1 in service", |v| v == 1.0);
    // Phase 1 is scored up to its watermark (the last second less the allowed lateness).
    wait_scored(&mut run, &out, at(PHASE1_END - 3), "phase 1 scored");

    let effective = rfc3339(at(T2));
    assert_eq!(train_into(env, Some(s3), &url, &history_b, 2, &["--effective-from", &effective]), 2);
    // The run has the new version in its update stream (at T2) before phase 2 is produced.
    wait_metric(&mut run, "millstream_model_switches_total", "the switch to v2", |v| v >= 1.0);
    wait_metric(&mut run, &version, "v2 in service", |v| v == 2.0);

    match phase2 {
        Phase2::AtOnce => produce(kafka, &name, 2, &samples(&pumps, START_MS, PHASE1_END, END)),
        Phase2::PausedBeforeT2 => {
            // The watermark after T2 + 1 s is T2 (1 s of allowed lateness): every time before
            // T2 completes, T2 does not.
            produce(kafka, &name, 2, &samples(&pumps, START_MS, PHASE1_END, T2 + 2));
            wait_scored(&mut run, &out, at(T2 - 1), "phase 2 scored up to T2 - 1 s");
            std::thread::sleep(Duration::from_millis(300));
            produce(kafka, &name, 2, &samples(&pumps, START_MS, T2 + 2, END));
        }
    }
    wait_scored(&mut run, &out, at(TQ), "phase 2 scored");
    let metrics = run.metrics();
    assert_eq!(metric(&metrics, "millstream_model_switches_total"), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, &version), Some(2.0), "{metrics}");
    assert_eq!(metric(&metrics, "millstream_model_store_errors_total"), Some(0.0), "{metrics}");
    assert!(run.alive());
    run.kill();

    // The log (JSON lines) tells where the switch is.
    let switches: Vec<Value> = read_lines(&run.log)
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "switching model version")
        .collect();
    assert_eq!(switches.len(), 1, "one switch in the log:\n{}", run.log_tail(40));
    assert_eq!(switches[0]["version"], 2, "{}", switches[0]);
    assert_eq!(switches[0]["event_time"], at(T2), "the switch is at T2 ({effective}): {}", switches[0]);

    let scores = lines_between(&out.join("scores.jsonl"), 0, at(TQ));
    let anomalies = lines_between(&out.join("anomalies.jsonl"), 0, at(TQ));
    assert_eq!(scores.len(), expected_scores.len(), "{name}: every reading before TQ is scored once");
    let differences: Vec<(&String, &String)> =
        scores.iter().zip(expected_scores).filter(|(got, want)| got != want).collect();
    assert!(
        differences.is_empty(),
        "{name}: scores before T2 ({effective}) must be v1's and scores from T2 on v2's; {} of {} \
         differ, the first (got, want): {:#?}",
        differences.len(),
        scores.len(),
        &differences[..differences.len().min(12)]
    );

    let values: Vec<Value> = anomalies.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut found = kmeans(&values);
    found.sort_by_key(|a| (ts_of(a), a["asset_id"].as_str().unwrap_or_default().to_owned()));
    let listing = describe(&found);
    println!("{name}: kmeans events before TQ:\n{listing}");
    for a in &found {
        let want = if ts_of(a) < at(T2) { "pump@v1" } else { "pump@v2" };
        assert_eq!(a["model_version"], want, "{name}: the version that scored each event:\n{listing}");
    }
    let events = |asset: &str, state: &str, from: u64, until: u64| -> Vec<u64> {
        found
            .iter()
            .filter(|a| {
                a["asset_id"] == asset && a["state"] == state && (at(from)..at(until)).contains(&ts_of(a))
            })
            .map(|a| ts_of(a))
            .collect()
    };
    assert!(found.iter().all(|a| ts_of(a) >= at(MODE_B_FROM)), "{name}: v1 finds mode A normal:\n{listing}");
    for asset in ["pump-1", "pump-2"] {
        // v1 does not know mode B: an episode opens soon after the change ...
        assert_eq!(events(asset, "opened", MODE_B_FROM, T2).len(), 1, "{name}: {asset}:\n{listing}");
        // ... and v2, which does, closes it at its very first bucket, T2.
        assert_eq!(
            events(asset, "closed", MODE_B_FROM, FAULT.0),
            vec![at(T2)],
            "{name}: {asset}:\n{listing}"
        );
    }
    // v2 flags pump-1's fault.
    assert_eq!(events("pump-1", "opened", FAULT.0, FAULT.0 + 15).len(), 1, "{name}:\n{listing}");
    assert!(events("pump-2", "opened", T2, TQ).is_empty(), "{name}:\n{listing}");
    ReloadOutput { scores, anomalies }
}

/// 2. A version trained while the run is going, effective from T2, serves from exactly T2 of
///    event time, identically at 1 and 2 workers.
#[test]
fn a_new_version_takes_over_at_its_effective_time_at_any_number_of_workers() {
    let s3 = TestS3::start().expect("an s3s-fs server starts");
    s3.create_bucket(BUCKET).unwrap();
    let kafka = TestKafka::start().expect("a tansu broker starts");
    let env = s3_env(&s3);
    let dir = tempfile::tempdir().unwrap();
    let (history_a, history_b) = (write_history(dir.path(), false), write_history(dir.path(), true));

    // What each version alone gives for the whole scenario (file source, file:// stores, the
    // same training, so the same models).
    let input = dir.path().join("scenario.jsonl");
    write_samples(&input, &samples(&reload_pumps(), START_MS, 0, END));
    let reference = |version: &str, history: &Path, k: u32| -> Vec<String> {
        let url = format!("file://{}", dir.path().join(format!("store-{version}")).display());
        assert_eq!(train_into(&env, None, &url, history, k, &[]), 1);
        let config =
            write(dir.path().join(format!("ref-{version}.toml")), &models_section(&url, None, MODEL));
        let out = dir.path().join(format!("ref-{version}"));
        file_run(&env, &input, &config, &out, 1);
        read_lines(&out.join("scores.jsonl"))
    };
    let (only_v1, only_v2) = (reference("v1", &history_a, 3), reference("v2", &history_b, 2));
    assert_eq!(only_v1.len(), (END * 6) as usize);
    let split = |lines: &[String], from: u64, until: u64| -> Vec<String> {
        lines.iter().filter(|l| (at(from)..at(until)).contains(&line_ts(l))).cloned().collect()
    };
    // The two versions score the readings around T2 differently, so a switch a bucket early or
    // late shows.
    for second in [T2 - 1, T2] {
        assert_ne!(
            split(&only_v1, second, second + 1),
            split(&only_v2, second, second + 1),
            "at T2{}",
            second as i64 - T2 as i64
        );
    }
    let mut expected: Vec<String> = split(&only_v1, 0, T2);
    expected.extend(split(&only_v2, T2, TQ));
    expected.sort();

    let one = reload_run(&env, &s3, &kafka, dir.path(), 1, Phase2::AtOnce, &expected);
    let two = reload_run(&env, &s3, &kafka, dir.path(), 2, Phase2::AtOnce, &expected);
    assert!(one.scores == two.scores, "scores.jsonl before TQ differs between 1 and 2 workers");
    assert_eq!(one.anomalies, two.anomalies, "anomalies.jsonl before TQ differs between 1 and 2 workers");
    // The same again with phase 2 arriving in two parts: the outputs do not depend on when the
    // readings arrive either.
    let paused = reload_run(&env, &s3, &kafka, dir.path(), 2, Phase2::PausedBeforeT2, &expected);
    assert!(one.scores == paused.scores, "scores.jsonl before TQ depends on when phase 2 arrives");
    assert_eq!(one.anomalies, paused.anomalies, "anomalies.jsonl before TQ depends on when phase 2 arrives");
    assert!(!one.anomalies.is_empty());
}

/// 3. The store goes down mid-run: the run keeps scoring with the version it has (v2, loaded
///    while running), says the store is not ready, counts the errors, and recovers when the
///    store is back.
#[test]
fn a_store_that_goes_down_leaves_the_current_model_in_service() {
    const SWITCHED_BY: u64 = 100;
    const DOWN_END: u64 = 300;
    const DOWN_TQ: u64 = 290;
    const DOWN_FAULT: (u64, u64) = (200, 230);
    let s3 = TestS3::start().expect("an s3s-fs server starts");
    s3.create_bucket(BUCKET).unwrap();
    let kafka = TestKafka::start().expect("a tansu broker starts");
    let env = s3_env(&s3);
    let dir = tempfile::tempdir().unwrap();
    let history = write_history(dir.path(), false);
    let mut pump = Pump::new("pump-1", 0.0, 41);
    pump.fault = Some(DOWN_FAULT);
    let pumps = vec![pump, Pump::new("pump-2", 53.0, 42)];

    // v1 and v2 are both models of mode A, with 3 and 4 clusters: they score differently.
    let input = dir.path().join("scenario.jsonl");
    write_samples(&input, &samples(&pumps, START_MS, 0, DOWN_END));
    let reference = |version: &str, k: u32| -> Vec<String> {
        let url = format!("file://{}", dir.path().join(format!("store-{version}")).display());
        assert_eq!(train_into(&env, None, &url, &history, k, &[]), 1);
        let config =
            write(dir.path().join(format!("ref-{version}.toml")), &models_section(&url, None, MODEL));
        let out = dir.path().join(format!("ref-{version}"));
        file_run(&env, &input, &config, &out, 1);
        let mut lines: Vec<String> = read_lines(&out.join("scores.jsonl"))
            .into_iter()
            .filter(|l| (at(SWITCHED_BY)..at(DOWN_TQ)).contains(&line_ts(l)))
            .collect();
        lines.sort();
        lines
    };
    let (only_v1, only_v2) = (reference("v1", 3), reference("v2", 4));
    assert_ne!(only_v1, only_v2, "the two versions score the readings differently");

    let name = "down";
    let url = format!("s3://{BUCKET}/{name}");
    assert_eq!(train_into(&env, Some(&s3), &url, &history, 3, &[]), 1);
    kafka.create_topic(name, 2).unwrap();
    produce(&kafka, name, 2, &samples(&pumps, START_MS, 0, SWITCHED_BY));
    let (mut run, out) = start_live_run(&env, &s3, &kafka, dir.path(), name, &url, 2);
    wait_scored(&mut run, &out, at(SWITCHED_BY - 3), "the first readings scored");
    // v2, with no effective time: served from the readings' frontier when the run finds it,
    // which is before SWITCHED_BY (no reading at or after it is produced yet).
    assert_eq!(train_into(&env, Some(&s3), &url, &history, 4, &[]), 2);
    let version = format!("millstream_model_version{{model=\"{MODEL}\"}}");
    wait_metric(&mut run, &version, "v2 in service", |v| v == 2.0);
    assert_eq!(run.get("/health/ready").map(|r| r.0), Some(200), "ready while the store answers");

    s3.stop();
    wait_metric(&mut run, "millstream_model_store_errors_total", "store errors counted", |v| v > 0.0);
    let (status, body) = run.wait_for("/health/ready to report the store", WAIT, |run| {
        run.get("/health/ready").filter(|(status, _)| *status != 200)
    });
    assert_eq!(status, 503, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["status"], "not_ready", "{body}");
    let reason = ready["reasons"]["model store"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert!(reason.contains(&url), "{body}");

    produce(&kafka, name, 2, &samples(&pumps, START_MS, SWITCHED_BY, DOWN_END));
    wait_scored(&mut run, &out, at(DOWN_TQ), "the readings produced while the store is down scored");
    assert!(run.alive(), "the run survives the store's outage");
    let metrics = run.metrics();
    assert_eq!(metric(&metrics, &version), Some(2.0), "{metrics}");
    assert!(metric(&metrics, "millstream_model_store_errors_total").is_some_and(|v| v > 0.0), "{metrics}");
    assert_eq!(run.get("/health/ready").map(|r| r.0), Some(503));

    // Everything from SWITCHED_BY on is scored by v2, exactly as v2 alone scores it.
    let scores = lines_between(&out.join("scores.jsonl"), at(SWITCHED_BY), at(DOWN_TQ));
    assert_eq!(scores.len(), only_v2.len());
    let first_difference = scores.iter().zip(&only_v2).find(|(got, want)| got != want);
    assert!(
        first_difference.is_none(),
        "scores while the store is down are v2's; first difference (got, want): {first_difference:#?}"
    );
    let anomalies: Vec<Value> = complete_lines(&out.join("anomalies.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let found = kmeans(&anomalies);
    let listing = describe(&found);
    let fault_opened: Vec<&&Value> = found
        .iter()
        .filter(|a| a["asset_id"] == "pump-1" && a["state"] == "opened" && ts_of(a) >= at(DOWN_FAULT.0))
        .collect();
    assert_eq!(fault_opened.len(), 1, "the fault is flagged while the store is down:\n{listing}");
    assert_eq!(fault_opened[0]["model_version"], "pump@v2", "{listing}");
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert!(log.contains("cannot poll the model store"), "{}", run.log_tail(40));

    // The store comes back: ready again, same version.
    s3.restart().unwrap();
    run.wait_for("/health/ready once the store is back", WAIT, |run| {
        run.get("/health/ready").filter(|(status, _)| *status == 200)
    });
    assert_eq!(metric(&run.metrics(), &version), Some(2.0));
    assert!(run.alive());
}
