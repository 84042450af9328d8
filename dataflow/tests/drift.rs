//! Drift end to end, through the real `millstream` binary and a real S3-compatible server
//! (s3s-fs) as the model store:
//!
//! - pumps that move from operating mode A to mode B (every level shifts; see
//!   `common::models`) raise drift events from the differential windows and the sequential
//!   detectors, only after the shift, and the same events at 1 and 2 workers;
//! - with retraining on, the sustained drift fits a new version on mode-B data, which lands in
//!   the store; every asset switches to it at one event time, and the k-means anomaly rate
//!   after the switch falls back to its level before the drift; `model_versions.jsonl` holds
//!   the lineage.

mod common;

use std::path::{Path, PathBuf};

use common::models::{millstream_with, s3_env, samples, train, write_samples, Pump};
use common::{read_json, START_MS};
use millstream_testkit::TestS3;
use serde_json::Value;

const MODEL: &str = "pump";
const BUCKET: &str = "models";
/// Mode B from this second on; the scenario ends at `END_S`.
const SHIFT_S: u64 = 1800;
const END_S: u64 = 4800;

fn at(s: u64) -> u64 {
    START_MS + s * 1000
}

fn ts_field(v: &Value, field: &str) -> u64 {
    common::parse_ts(v[field].as_str().expect("a timestamp")).expect("it parses")
}

fn pumps() -> Vec<Pump> {
    pumps_back_at(None)
}

/// The pumps, back in mode A from `back` (seconds) when given.
fn pumps_back_at(back: Option<u64>) -> Vec<Pump> {
    (0..4)
        .map(|i| {
            let mut pump = Pump::new(&format!("pump-{i}"), 17.0 * i as f64, 100 + i);
            pump.mode_b_from = Some(SHIFT_S);
            pump.mode_b_until = back;
            pump
        })
        .collect()
}

struct Scenario {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    s3: TestS3,
    env: Vec<(&'static str, String)>,
    input: PathBuf,
}

/// The pumps' readings in a file, and version 1 of the model trained on mode A (the first
/// 1200 s) under each of `prefixes` of a fresh bucket (one store per run: the version numbers
/// of retrained models come from the store).
fn scenario(prefixes: &[&str]) -> Scenario {
    scenario_with(prefixes, &pumps())
}

fn scenario_with(prefixes: &[&str], pumps: &[Pump]) -> Scenario {
    let s3 = TestS3::start().expect("an s3s-fs server starts");
    s3.create_bucket(BUCKET).unwrap();
    let env = s3_env(&s3);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pumps.jsonl");
    // Half a second into each 1 s bucket: a bucket's first reading comes after its start.
    write_samples(&input, &samples(pumps, START_MS + 500, 0, END_S));
    let training = dir.path().join("training.jsonl");
    write_samples(&training, &samples(&pumps[..1], START_MS + 500, 0, 1200));
    for prefix in prefixes {
        train(
            &env,
            &[
                "--input",
                &format!("file:{}", training.display()),
                "--store",
                &format!("s3://{BUCKET}/{prefix}"),
                "--endpoint",
                &s3.endpoint(),
                "--name",
                MODEL,
            ],
        );
    }
    let path = dir.path().to_owned();
    Scenario { _dir: dir, dir: path, s3, env, input }
}

fn config(scenario: &Scenario, prefix: &str, retrain: bool) -> PathBuf {
    config_with(scenario, prefix, retrain, 200)
}

/// [`config`] with `min_rows` for the retrainer.
fn config_with(scenario: &Scenario, prefix: &str, retrain: bool, min_rows: usize) -> PathBuf {
    let text = format!(
        "[models]\nstore = {{ url = \"s3://{BUCKET}/{prefix}\", endpoint = \"{}\", path_style = true, timeout_ms = 2000 }}\n\
         poll_interval_ms = 200\ndefault = \"{MODEL}\"\n\
         [models.drift]\nenabled = true\nwindow_ms = 600000\nslide_ms = 60000\n\
         [models.retrain]\nenabled = {retrain}\nsustain_ms = 180000\nmin_rows = {min_rows}\nswitch_delay_ms = 60000\n",
        scenario.s3.endpoint()
    );
    let path = scenario.dir.join(format!("{prefix}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn run_command(scenario: &Scenario, config: &Path, out: &Path, workers: usize) -> std::process::Command {
    let mut command = millstream_with(&scenario.env);
    command
        .args(["run", "--source", &format!("file:{}", scenario.input.display())])
        .args(["--sink", &format!("jsonl:{}", out.display()), "--emit-scores"])
        .args(["--allowed-lateness-ms", "1000", "-w", &workers.to_string()])
        .args(["--config", config.to_str().unwrap()]);
    command
}

fn run(scenario: &Scenario, config: &Path, out: &Path, workers: usize) {
    let output = run_command(scenario, config, out, workers).output().expect("millstream starts");
    assert!(
        output.status.success(),
        "millstream run failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The same run as 2 processes × 1 worker on loopback.
fn run_cluster(scenario: &Scenario, config: &Path, out: &Path) {
    let hostfile = scenario.dir.join(format!("hosts-{}.txt", out.file_name().unwrap().to_string_lossy()));
    let ports = (common::free_port(), common::free_port());
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports.0, ports.1)).unwrap();
    let children: Vec<_> = (0..2)
        .map(|process| {
            run_command(scenario, config, out, 1)
                .args(["--processes", "2", "--process", &process.to_string()])
                .args(["--hostfile", hostfile.to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("millstream starts")
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "cluster process failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines = common::read_lines(path);
    lines.sort();
    lines
}

#[test]
fn a_level_shift_raises_drift_only_after_it_and_the_same_at_any_worker_count() {
    let scenario = scenario(&["plant"]);
    let config = config(&scenario, "plant", false);
    let (one, two, cluster) = (scenario.dir.join("w1"), scenario.dir.join("w2"), scenario.dir.join("p2"));
    run(&scenario, &config, &one, 1);
    run(&scenario, &config, &two, 2);
    run_cluster(&scenario, &config, &cluster);

    let drift = read_json(&one.join("drift.jsonl"));
    assert!(!drift.is_empty(), "the shift raises drift events");
    for event in &drift {
        eprintln!(
            "{} {} {} {:.3} (threshold {:.3})",
            event["window_end"],
            event["sensor_id"].as_str().or(event["feature"].as_str()).unwrap_or("?"),
            event["statistic"],
            event["value"].as_f64().unwrap_or(f64::NAN),
            event["threshold"].as_f64().unwrap_or(f64::NAN)
        );
    }
    for event in &drift {
        assert!(ts_field(event, "window_end") > at(SHIFT_S), "no drift before the shift, got {event}");
        assert_eq!(event["model_version"], "pump@v1", "{event}");
    }
    let statistic = |s: &str| drift.iter().filter(|e| e["statistic"] == s).count();
    for s in ["psi", "ks", "wasserstein"] {
        assert!(statistic(s) > 0, "a window statistic ({s}) flags the shift: {drift:?}");
    }
    assert!(statistic("mean_shift") > 0, "the sequential detectors flag the shift: {drift:?}");
    let subjects: std::collections::BTreeSet<String> = drift
        .iter()
        .map(|e| e["sensor_id"].as_str().or(e["feature"].as_str()).unwrap_or("").to_owned())
        .collect();
    assert!(subjects.iter().any(|s| s.contains(":ma")), "per-feature windows drift too: {subjects:?}");
    assert!(subjects.iter().any(|s| s.ends_with("/flow")), "per-sensor windows drift: {subjects:?}");
    // The first window event comes within one window length of the shift.
    let first =
        drift.iter().filter(|e| e["statistic"] == "psi").map(|e| ts_field(e, "window_end")).min().unwrap();
    assert!(first <= at(SHIFT_S + 600), "PSI reacts within one window: {first}");

    assert_eq!(
        sorted_lines(&one.join("drift.jsonl")),
        sorted_lines(&two.join("drift.jsonl")),
        "1 vs 2 workers"
    );
    assert!(common::read_lines(&one.join("model_versions.jsonl")).is_empty(), "retraining is off");
}

/// Share of `asset_scores` lines in `[from, until)` with a score at or above 0.8.
fn anomaly_rate(scores: &[Value], from: u64, until: u64) -> (f64, usize) {
    let window: Vec<&Value> = scores.iter().filter(|s| (from..until).contains(&ts_field(s, "ts"))).collect();
    let anomalous = window.iter().filter(|s| s["score"].as_f64().unwrap() >= 0.8).count();
    (anomalous as f64 / window.len().max(1) as f64, window.len())
}

#[test]
fn sustained_drift_retrains_publishes_and_switches_every_worker_at_one_time() {
    let scenario = scenario(&["single", "cluster"]);
    let out = scenario.dir.join("retrain");
    // With a Kafka sink as well: drift events on the notification topic, the lineage on the
    // control topic.
    let kafka = millstream_testkit::TestKafka::start().expect("a tansu broker starts");
    let output = run_command(&scenario, &config(&scenario, "single", true), &out, 2)
        .args(["--sink", &kafka.url()])
        .output()
        .expect("millstream starts");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let kind = |r: &millstream_testkit::ConsumedRecord| {
        r.headers.iter().find(|(k, _)| k == "kind").map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let notifications = kafka.consume_all("millstream.notifications").unwrap();
    let drift_records = notifications.iter().filter(|r| kind(r).as_deref() == Some("drift")).count();
    assert_eq!(
        drift_records,
        common::read_lines(&out.join("drift.jsonl")).len(),
        "every drift event is notified"
    );
    let control = kafka.consume_all("millstream.control").unwrap();
    let lineage_records: Vec<Value> = control
        .iter()
        .inspect(|r| assert_eq!(kind(r).as_deref(), Some("model_version")))
        .map(|r| serde_json::from_slice(&r.value).unwrap())
        .collect();
    assert_eq!(
        lineage_records,
        read_json(&out.join("model_versions.jsonl")),
        "the control topic has the lineage"
    );
    // The same, as 2 processes (with a store of its own): the same lineage and scores.
    let cluster = scenario.dir.join("retrain-p2");
    run_cluster(&scenario, &config(&scenario, "cluster", true), &cluster);
    for file in ["model_versions.jsonl", "asset_scores.jsonl", "drift.jsonl", "anomalies.jsonl"] {
        assert_eq!(
            sorted_lines(&out.join(file)),
            sorted_lines(&cluster.join(file)),
            "{file}: 2 workers vs 2 processes"
        );
    }

    let lineage = read_json(&out.join("model_versions.jsonl"));
    let serving: Vec<&Value> = lineage.iter().filter(|l| l["status"] == "serving").collect();
    assert_eq!(serving.len(), 1, "one retrained version: {lineage:?}");
    let v2 = serving[0];
    assert_eq!((v2["version"].as_u64(), v2["parent_version"].as_u64()), (Some(2), Some(1)), "{v2}");
    assert_eq!(v2["published"], true, "{v2}");
    assert!(v2["reason"].as_str().unwrap().starts_with("drift: "), "{v2}");
    assert!(v2["training_rows"].as_u64().unwrap() >= 200, "{v2}");
    let switch = ts_field(v2, "effective_from");
    assert!(switch > at(SHIFT_S) && switch < at(END_S - 1200), "switch at {switch}");
    for prefix in ["single", "cluster"] {
        let keys = scenario.s3.list_keys(BUCKET, &format!("{prefix}/")).unwrap();
        assert!(
            keys.contains(&format!("{prefix}/{MODEL}/v0000000002.model")),
            "the new version is in S3: {keys:?}"
        );
    }

    // Every asset's buckets before the switch are scored by v1, from it on by v2.
    let scores = read_json(&out.join("asset_scores.jsonl"));
    for score in &scores {
        let ts = ts_field(score, "ts");
        let expected = if ts < switch { "pump@v1" } else { "pump@v2" };
        assert_eq!(score["model_version"], expected, "{score} (switch at {switch})");
    }
    for pump in pumps() {
        assert!(
            scores.iter().any(|s| s["asset_id"] == pump.asset.as_str() && s["model_version"] == "pump@v2"),
            "{} switched",
            pump.asset
        );
    }
    // The anomaly rate: low before the drift, high in it, back to its old level after.
    let (before, n_before) = anomaly_rate(&scores, at(600), at(SHIFT_S));
    let (during, _) = anomaly_rate(&scores, at(SHIFT_S + 60), switch);
    let (after, n_after) = anomaly_rate(&scores, switch + 120_000, at(END_S));
    eprintln!(
        "anomaly rate: before the drift {before:.4} ({n_before} buckets), in it {during:.4}, after the switch \
         {after:.4} ({n_after} buckets); switch at +{} s; lineage {v2}",
        (switch - START_MS) / 1000
    );
    assert!(n_before > 1000 && n_after > 1000, "{n_before} {n_after}");
    assert!(during > 0.5, "mode B is anomalous for the mode-A model: {during}");
    assert!(after <= before + 0.02, "after the switch the rate returns: before {before}, after {after}");
}

/// The pumps go back to mode A just after the switch to the version trained on mode B: that
/// version's anomaly rate explodes, and it is rolled back to its parent (as version 3).
#[test]
fn a_new_version_whose_anomaly_rate_explodes_is_rolled_back() {
    // The switch comes at +2160 s (see the test above); back to mode A right then.
    let back = 2160;
    let scenario = scenario_with(&["plant"], &pumps_back_at(Some(back)));
    let out = scenario.dir.join("rollback");
    // Into PostgreSQL as well: the lineage and the drift events in their tables.
    let pg = millstream_testkit::TestPostgres::start().expect("a throwaway PostgreSQL");
    let url = pg.create_database("drift_rollback").unwrap();
    common::run_ok(&["migrate", "--database-url", &url]);
    let output = run_command(&scenario, &config(&scenario, "plant", true), &out, 2)
        .args(["--sink", &url])
        .output()
        .expect("millstream starts");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lineage_rows = common::psql(
        &url,
        "SELECT version || ' ' || coalesce(parent_version::text, '-') || ' ' || status || ' ' || published \
         FROM model_versions ORDER BY version, status DESC",
    );
    assert_eq!(lineage_rows, "2 1 serving true\n2 1 rolled_back false\n3 2 serving true", "model_versions");
    let drift_rows: usize = common::psql(&url, "SELECT count(*) FROM drift_events").parse().unwrap();
    assert_eq!(
        drift_rows,
        common::read_lines(&out.join("drift.jsonl")).len(),
        "drift_events holds every event"
    );

    let lineage = read_json(&out.join("model_versions.jsonl"));
    let step = |version: u64, status: &str| {
        lineage
            .iter()
            .find(|l| l["version"] == version && l["status"] == status)
            .unwrap_or_else(|| panic!("no version {version} {status} in the lineage: {lineage:?}"))
    };
    let v2 = step(2, "serving");
    let switch = ts_field(v2, "effective_from");
    assert!(switch <= at(back), "the retrained version serves before the pumps go back: {v2}");
    let rolled_back = step(2, "rolled_back");
    let v3 = step(3, "serving");
    assert_eq!(v3["parent_version"], 2, "{v3}");
    assert!(v3["reason"].as_str().unwrap().starts_with("rollback of v2"), "{v3}");
    assert_eq!(v3["published"], true, "{v3}");
    eprintln!("lineage: {v2}\n{rolled_back}\n{v3}");
    let restored = ts_field(v3, "effective_from");
    assert!(restored > switch && restored < at(back + 600), "rolled back promptly: {v3}");
    let keys = scenario.s3.list_keys(BUCKET, "plant/").unwrap();
    assert!(keys.contains(&format!("plant/{MODEL}/v0000000003.model")), "{keys:?}");

    // v3 is v1's model: the anomaly rate after it is back to the level before the drift.
    let scores = read_json(&out.join("asset_scores.jsonl"));
    let (before, _) = anomaly_rate(&scores, at(600), at(SHIFT_S));
    let (after, n_after) = anomaly_rate(&scores, restored + 120_000, at(END_S));
    assert!(n_after > 1000, "{n_after}");
    assert!(after <= before + 0.02, "before {before}, after the rollback {after}");
    assert!(scores.iter().filter(|s| ts_field(s, "ts") >= restored).all(|s| s["model_version"] == "pump@v3"));
}

/// A retraining that its guard rails refuse (here: too little clean data) leaves the parent in
/// service, publishes nothing, says why in the lineage, and is tried again while the drift lasts.
#[test]
fn a_refused_retraining_keeps_the_parent_and_says_why() {
    let scenario = scenario(&["plant"]);
    let out = scenario.dir.join("refused");
    run(&scenario, &config_with(&scenario, "plant", true, 100_000), &out, 1);
    let lineage = read_json(&out.join("model_versions.jsonl"));
    assert!(lineage.len() >= 2, "refused, then tried again while the drift lasts: {lineage:?}");
    for step in &lineage {
        assert_eq!((step["status"].as_str(), step["version"].as_u64()), (Some("refused"), Some(2)), "{step}");
        assert!(step["reason"].as_str().unwrap().contains("fewer than 100000"), "{step}");
        assert_eq!(step["published"], false);
    }
    let attempts: Vec<u64> = lineage.iter().map(|s| ts_field(s, "effective_from")).collect();
    assert!(attempts.windows(2).all(|w| w[1] >= w[0] + 180_000), "one attempt per sustain_ms: {attempts:?}");
    let keys = scenario.s3.list_keys(BUCKET, "plant/").unwrap();
    assert_eq!(keys, vec![format!("plant/{MODEL}/v0000000001.model")], "nothing published");
    let scores = read_json(&out.join("asset_scores.jsonl"));
    assert!(scores.iter().all(|s| s["model_version"] == "pump@v1"), "the parent keeps serving");
}

/// A switch delay shorter than a slide: the retrainer's versions come back into the observer
/// through the loop as late as its output frontier plus the delay. The observer once held its
/// output a whole slide behind the readings (at the slide's first bucket), so with a delay under
/// a slide the readings waited for the loop and the loop for the readings: the run never ended.
/// It must end, retrain, and give the same lineage on 1 and 2 workers.
#[test]
fn a_switch_delay_shorter_than_a_slide_does_not_stall_the_run() {
    // A store of each run's own: a version the first run publishes must not serve in the second.
    let scenario = scenario(&["short1", "short2"]);
    let mut lineages = Vec::new();
    for workers in [1, 2] {
        let config = config(&scenario, &format!("short{workers}"), true);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("switch_delay_ms = 60000", "switch_delay_ms = 15000");
        assert!(text.contains("switch_delay_ms = 15000") && text.contains("slide_ms = 60000"));
        std::fs::write(&config, text).unwrap();
        let out = scenario.dir.join(format!("short-{workers}"));
        let status = run_within(run_command(&scenario, &config, &out, workers), 120, workers);
        assert!(status.success(), "{workers} workers: {status}");
        lineages.push(sorted_lines(&out.join("model_versions.jsonl")));
    }
    assert!(
        lineages[0].iter().any(|l| l.contains("\"serving\"")),
        "a version was retrained and served: {:?}",
        lineages[0]
    );
    assert_eq!(lineages[0], lineages[1], "the same lineage on 1 and 2 workers");
}

/// Runs `command` (its output discarded); fails the test if it has not ended within `secs`.
fn run_within(mut command: std::process::Command, secs: u64, workers: usize) -> std::process::ExitStatus {
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("millstream starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run on {workers} workers did not end within {secs} s: the retraining loop stalled");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A model whose buckets (20 s) are longer than the switch delay (15 s). The drift stage held
/// its output at a bucket's first reading, and closed the bucket only once the model updates
/// fed back had passed the bucket's end; they come `switch_delay_ms` after that hold, so each
/// waited for the other and the run never ended (found by a hunt for hostile inputs). It must
/// end, with the same outputs on 1 and 2 workers.
#[test]
fn a_bucket_longer_than_the_switch_delay_does_not_stall_the_run() {
    let scenario = scenario(&[]);
    let training = scenario.dir.join("training.jsonl");
    let mut outputs = Vec::new();
    for workers in [1, 2] {
        // A store of each run's own, as above.
        let prefix = format!("long{workers}");
        train(
            &scenario.env,
            &[
                "--input",
                &format!("file:{}", training.display()),
                "--store",
                &format!("s3://{BUCKET}/{prefix}"),
                "--endpoint",
                &scenario.s3.endpoint(),
                "--name",
                MODEL,
                "--bucket-ms",
                "20000",
                "--smoothing",
                "2",
            ],
        );
        let config = config(&scenario, &prefix, true);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("switch_delay_ms = 60000", "switch_delay_ms = 15000");
        assert!(text.contains("switch_delay_ms = 15000"));
        std::fs::write(&config, text).unwrap();
        let out = scenario.dir.join(format!("long-{workers}"));
        let status = run_within(run_command(&scenario, &config, &out, workers), 120, workers);
        assert!(status.success(), "{workers} workers: {status}");
        let files = ["anomalies.jsonl", "drift.jsonl", "model_versions.jsonl", "scores.jsonl"];
        outputs.push(files.map(|f| sorted_lines(&out.join(f))));
    }
    assert!(!outputs[0][3].is_empty(), "the readings were scored");
    assert_eq!(outputs[0], outputs[1], "the same outputs on 1 and 2 workers");
}
