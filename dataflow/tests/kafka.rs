//! The Kafka source and sink against a real broker (tansu, started per test): every record
//! accounted for, the same anomalies as the file source, resumption after SIGKILL from the
//! committed offsets, and the same outputs from a 2-process cluster as from one process.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{millstream, read_json, reading_identity, run_ok, write_mixed_input};
use millstream_testkit::kafka::{ConsumedRecord, TestKafka};
use serde_json::Value;

const NOTIFICATIONS: &str = "millstream.notifications";
const DEAD_LETTERS: &str = "millstream.dead-letters";

fn produce_file(kafka: &TestKafka, topic: &str, path: &Path) {
    run_ok(&[
        "produce",
        "--brokers",
        &kafka.bootstrap(),
        "--topic",
        topic,
        "--file",
        path.to_str().unwrap(),
        "--partitions",
        "4",
    ]);
}

fn header<'a>(record: &'a ConsumedRecord, name: &str) -> Option<&'a str> {
    record.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// Anomalies as comparable JSON values, keyed by event id.
fn anomalies_by_id(values: impl IntoIterator<Item = Value>) -> BTreeMap<String, Value> {
    values.into_iter().map(|v| (v["event_id"].as_str().unwrap().to_owned(), v)).collect()
}

/// Runs `--source file:` on `input`: the output directory and the anomalies, by event id.
fn file_source_run(input: &Path, dir: &Path) -> (std::path::PathBuf, BTreeMap<String, Value>) {
    let out = dir.join("file-out");
    run_ok(&[
        "run",
        "--source",
        &format!("file:{}", input.display()),
        "--sink",
        &format!("jsonl:{}", out.display()),
    ]);
    let anomalies = anomalies_by_id(read_json(&out.join("anomalies.jsonl")));
    (out, anomalies)
}

fn notifications(kafka: &TestKafka) -> Vec<ConsumedRecord> {
    kafka.consume_all(NOTIFICATIONS).expect("the notification topic can be read")
}

fn high_watermarks(kafka: &TestKafka, topic: &str) -> BTreeMap<i32, i64> {
    let mut ends: BTreeMap<i32, i64> = (0..kafka.partitions(topic).unwrap()).map(|p| (p, 0)).collect();
    for r in kafka.consume_all(topic).unwrap() {
        let end = ends.entry(r.partition).or_default();
        *end = (*end).max(r.offset + 1);
    }
    ends
}

#[test]
fn every_record_is_accounted_for_and_anomalies_match_the_file_source() {
    let kafka = TestKafka::start().expect("a tansu broker starts");
    let dir = tempfile::tempdir().unwrap();
    let input = write_mixed_input(dir.path(), 12, 1_200, 31);
    kafka.create_topic("readings", 4).unwrap();
    produce_file(&kafka, "readings", &input.path);
    let produced = kafka.consume_all("readings").unwrap();
    let by_offset: BTreeMap<(i32, i64), &ConsumedRecord> =
        produced.iter().map(|r| ((r.partition, r.offset), r)).collect();

    let out = dir.path().join("kafka-out");
    let source = format!("{}/readings", kafka.url());
    run_ok(&[
        "run",
        "--source",
        &source,
        "--sink",
        &kafka.url(),
        "--sink",
        &format!("jsonl:{}", out.display()),
        "--emit-scores",
        "--stop-at-end",
        "-w",
        "2",
    ]);

    // Every record is processed (a score line) or a dead letter carrying its source offset.
    let scores = read_json(&out.join("scores.jsonl"));
    let dead_topic = kafka.consume_all(DEAD_LETTERS).unwrap();
    assert_eq!(scores.len() + dead_topic.len(), produced.len(), "processed + dead letters = produced");
    assert!(!dead_topic.is_empty() && input.invalid > 0);
    let mut refused_offsets = BTreeSet::new();
    for dead in &dead_topic {
        assert_eq!(header(dead, "source_topic"), Some("readings"));
        let partition: i32 = header(dead, "source_partition").unwrap().parse().unwrap();
        let offset: i64 = header(dead, "source_offset").unwrap().parse().unwrap();
        let original =
            by_offset.get(&(partition, offset)).expect("the dead letter points at a produced record");
        assert!(header(dead, "reason").is_some());
        if header(dead, "reason") != Some("duplicate") {
            assert_eq!(dead.value, original.value, "a decode dead letter carries the raw bytes");
        }
        assert!(refused_offsets.insert((partition, offset)), "one dead letter per refused record");
    }
    let reasons = |values: &[Value]| -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for v in values {
            *m.entry(v["reason"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        m
    };
    let jsonl_dead = read_json(&out.join("dead_letters.jsonl"));
    assert_eq!(jsonl_dead.len(), dead_topic.len(), "the topic and the jsonl sink agree");
    assert_eq!(reasons(&jsonl_dead).get("duplicate").copied(), Some(input.duplicates));

    // The notification topic holds exactly the anomalies the file source finds in the same data.
    let (_, expected) = file_source_run(&input.path, dir.path());
    assert!(expected.len() >= 5, "the input has anomalies ({})", expected.len());
    let notified = notifications(&kafka);
    for n in &notified {
        let value: Value = serde_json::from_slice(&n.value).unwrap();
        assert_eq!(header(n, "event_id"), value["event_id"].as_str(), "event_id travels in a header");
        assert_eq!(n.key.as_deref(), value["asset_id"].as_str().map(str::as_bytes), "keyed by asset");
    }
    let got = anomalies_by_id(notified.iter().map(|n| serde_json::from_slice(&n.value).unwrap()));
    assert_eq!(got.len(), notified.len(), "a clean run notifies each anomaly once");
    assert_eq!(got, expected);

    // Every offset is committed: a second run has nothing to do.
    let committed = kafka.committed_offsets("millstream", "readings").unwrap();
    assert_eq!(committed, high_watermarks(&kafka, "readings"));
    let again = dir.path().join("again");
    run_ok(&["run", "--source", &source, "--sink", &format!("jsonl:{}", again.display()), "--stop-at-end"]);
    assert!(read_json(&again.join("dead_letters.jsonl")).is_empty());
    assert!(read_json(&again.join("anomalies.jsonl")).is_empty());
}

#[test]
fn sigkill_mid_stream_then_restart_loses_nothing() {
    let kafka = TestKafka::start().expect("a tansu broker starts");
    let dir = tempfile::tempdir().unwrap();
    let input = write_mixed_input(dir.path(), 20, 3_000, 5);
    kafka.create_topic("readings", 4).unwrap();
    produce_file(&kafka, "readings", &input.path);
    let ends = high_watermarks(&kafka, "readings");
    let total: i64 = ends.values().sum();
    let source = format!("{}/readings", kafka.url());

    // A small in-flight budget and frequent commits: the run advances in many small commits.
    let env = [
        ("MILLSTREAM_KAFKA__MAX_IN_FLIGHT_RECORDS", "500"),
        ("MILLSTREAM_KAFKA__COMMIT_INTERVAL_MS", "50"),
        ("MILLSTREAM_PIPELINE__EPOCH_MS", "100"),
    ];
    let mut first = millstream()
        .args(["run", "--source", &source, "--sink", &kafka.url(), "-w", "2"])
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let committed_at_kill = loop {
        let committed: i64 = kafka.committed_offsets("millstream", "readings").unwrap().values().sum();
        if committed > 0 {
            break committed;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no commit within 2 minutes");
        assert!(first.try_wait().unwrap().is_none(), "the first run ended by itself");
        std::thread::sleep(Duration::from_millis(20));
    };
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    // Where the second run resumes: what was committed when the process died.
    let resume = kafka.committed_offsets("millstream", "readings").unwrap();
    let resumed_at: i64 = resume.values().sum();
    assert!(
        committed_at_kill <= resumed_at && resumed_at < total,
        "killed mid-stream: {resumed_at} of {total}"
    );
    let before_restart = notifications(&kafka).len();

    let second = dir.path().join("second");
    run_ok(&[
        "run",
        "--source",
        &source,
        "--sink",
        &kafka.url(),
        "--sink",
        &format!("jsonl:{}", second.display()),
        "--emit-scores",
        "--stop-at-end",
        "-w",
        "2",
    ]);
    assert_eq!(kafka.committed_offsets("millstream", "readings").unwrap(), ends);
    // The restart read exactly the records from the committed offsets on: nothing skipped.
    let processed =
        read_json(&second.join("scores.jsonl")).len() + read_json(&second.join("dead_letters.jsonl")).len();
    assert_eq!(processed as i64, total - resumed_at, "the second run resumes at the committed offsets");

    // Every anomaly of an uninterrupted run whose reading was committed before the kill was
    // delivered, exactly as the uninterrupted run gives it (at least once).
    let (file_out, expected) = file_source_run(&input.path, dir.path());
    let offsets: BTreeMap<(String, u64, u64), (i32, i64)> = kafka
        .consume_all("readings")
        .unwrap()
        .iter()
        .filter_map(|r| {
            let v: Value = serde_json::from_slice(&r.value).ok()?;
            Some((reading_identity(&v)?, (r.partition, r.offset)))
        })
        .collect();
    let notified = notifications(&kafka);
    assert!(notified.len() > before_restart, "the restart notified more");
    let mut delivered: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for n in &notified {
        let value: Value = serde_json::from_slice(&n.value).unwrap();
        delivered.entry(value["event_id"].as_str().unwrap().to_owned()).or_default().push(value);
    }
    let mut committed_before_kill = 0;
    for (id, anomaly) in &expected {
        let (partition, offset) = offsets[&reading_identity(anomaly).unwrap()];
        if offset < resume[&partition] {
            committed_before_kill += 1;
            assert!(
                delivered.get(id).is_some_and(|copies| copies.contains(anomaly)),
                "anomaly {id} was committed before the kill but never delivered"
            );
        }
    }
    assert!(committed_before_kill > 0, "some anomalies lie before the kill point");
    // Copies of one anomaly share their identity. (Their scores may differ: detector state is
    // not checkpointed yet, so the restarted detector warms up again.)
    for copies in delivered.values() {
        for c in copies {
            for field in ["sensor_id", "asset_id", "ts", "value", "detector"] {
                assert_eq!(c[field], copies[0][field], "copies of one event_id differ in {field}");
            }
        }
    }
    // Every refused record has a dead letter (at least once), for the same reasons as a file run.
    // (Blank lines are not produced: `produce` skips them.)
    let mut by_source: BTreeMap<(String, String), String> = BTreeMap::new();
    for d in kafka.consume_all(DEAD_LETTERS).unwrap() {
        let place = (
            header(&d, "source_partition").unwrap().to_owned(),
            header(&d, "source_offset").unwrap().to_owned(),
        );
        by_source.insert(place, header(&d, "reason").unwrap().to_owned());
    }
    let mut topic_reasons: BTreeMap<String, usize> = BTreeMap::new();
    for reason in by_source.values() {
        *topic_reasons.entry(reason.clone()).or_default() += 1;
    }
    let mut file_reasons: BTreeMap<String, usize> = BTreeMap::new();
    for d in read_json(&file_out.join("dead_letters.jsonl")).iter().filter(|d| d["raw"] != "") {
        *file_reasons.entry(d["reason"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(topic_reasons, file_reasons);
    // And most anomalies are found again after the restart.
    let found = expected.keys().filter(|id| delivered.contains_key(*id)).count();
    assert!(found * 10 >= expected.len() * 9, "{found} of {} anomalies delivered", expected.len());
}

#[test]
fn two_processes_give_the_same_outputs_as_one() {
    let kafka = TestKafka::start().expect("a tansu broker starts");
    let dir = tempfile::tempdir().unwrap();
    let input = write_mixed_input(dir.path(), 10, 900, 77);
    kafka.create_topic("readings", 4).unwrap();
    produce_file(&kafka, "readings", &input.path);
    let source = format!("{}/readings", kafka.url());

    let one = dir.path().join("one");
    let status = millstream()
        .args([
            "run",
            "--source",
            &source,
            "--sink",
            &format!("jsonl:{}", one.display()),
            "--emit-scores",
            "--stop-at-end",
        ])
        .env("MILLSTREAM_KAFKA__GROUP_ID", "single")
        .status()
        .unwrap();
    assert!(status.success());

    let two = dir.path().join("two");
    let hostfile = dir.path().join("hosts");
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", common::free_port(), common::free_port()),
    )
    .unwrap();
    let processes: Vec<_> = (0..2)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_millstream"))
                .args([
                    "run",
                    "--source",
                    &source,
                    "--sink",
                    &format!("jsonl:{}", two.display()),
                    "--emit-scores",
                    "--stop-at-end",
                    "--processes",
                    "2",
                    "--process",
                    &i.to_string(),
                    "--hostfile",
                    hostfile.to_str().unwrap(),
                ])
                .env("MILLSTREAM_KAFKA__GROUP_ID", "pair")
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in processes {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for file in ["anomalies.jsonl", "dead_letters.jsonl", "scores.jsonl"] {
        let a = std::fs::read(one.join(file)).unwrap();
        let b = std::fs::read(two.join(file)).unwrap();
        assert!(!a.is_empty() || file == "anomalies.jsonl");
        assert!(a == b, "{file} differs between 1 and 2 processes");
    }
    assert_eq!(
        kafka.committed_offsets("pair", "readings").unwrap(),
        kafka.committed_offsets("single", "readings").unwrap(),
        "both groups committed every offset"
    );
}

/// Without `--stop-at-end`: three of four partitions stay empty, yet the one with data is
/// committed (empty partitions go idle and stop holding time back); a topic that appears while
/// the run is going is picked up, and its records are committed too.
#[test]
fn idle_partitions_do_not_stall_and_new_partitions_are_picked_up() {
    use millstream_testkit::kafka::TestRecord;
    let kafka = TestKafka::start().expect("a tansu broker starts");
    kafka.create_topic("a", 4).unwrap();
    let record = |partition: i32, sensor: &str, i: u64| TestRecord {
        partition: Some(partition),
        key: Some(sensor.as_bytes().to_vec()),
        value: common::reading_line(sensor, common::START_MS + i * 1000, 5.0 + (i % 3) as f64, false)
            .into_bytes(),
        headers: Vec::new(),
    };
    let first: Vec<TestRecord> = (0..300).map(|i| record(0, "p1/vib", i)).collect();
    kafka.produce_records("a", &first).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[kafka]\nidle_timeout_ms = 500\nmetadata_refresh_ms = 300\ncommit_interval_ms = 100\n",
    )
    .unwrap();
    let source = format!("{}/a,b", kafka.url());
    let mut run = millstream()
        .args(["run", "--config", config.to_str().unwrap(), "--source", &source, "--sink", "null", "-w", "2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let wait_for = |topic: &str, want: BTreeMap<i32, i64>, run: &mut std::process::Child| {
        let started = Instant::now();
        loop {
            let committed = kafka.committed_offsets("millstream", topic).unwrap();
            let done = want.iter().all(|(p, end)| committed.get(p) == Some(end));
            if done {
                return;
            }
            if started.elapsed() > Duration::from_secs(60) || run.try_wait().unwrap().is_some() {
                let _ = run.kill();
                let mut stderr = String::new();
                if let Some(mut pipe) = run.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                panic!("{topic}: committed {committed:?}, want {want:?}\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("a", BTreeMap::from([(0, 300)]), &mut run);

    // Topic `b` did not exist when the run started.
    kafka.create_topic("b", 2).unwrap();
    let later: Vec<TestRecord> = (0..50)
        .map(|i| record(0, "p2/temp", 400 + i))
        .chain((0..30).map(|i| record(1, "p3/flow", 400 + i)))
        .collect();
    kafka.produce_records("b", &later).unwrap();
    wait_for("b", BTreeMap::from([(0, 50), (1, 30)]), &mut run);
    run.kill().unwrap();
    run.wait().unwrap();
}

/// A SASL password given in the environment shows in neither `config check` nor the logs of
/// a run that tries (and fails) to authenticate with it.
#[test]
fn the_sasl_password_never_reaches_output_or_logs() {
    const SECRET: &str = "kafka-secret-7d1e9b";
    let kafka = TestKafka::start().expect("a tansu broker starts");
    kafka.create_topic("readings", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"plant\"\n").unwrap();
    let check = millstream()
        .args(["config", "check", config.to_str().unwrap()])
        .env("MILLSTREAM_KAFKA__SASL__PASSWORD", SECRET)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(printed.contains("[kafka.sasl]") && printed.contains("password = \"***\""), "{printed}");
    assert!(!printed.contains(SECRET));

    let mut run = millstream()
        .args(["run", "--config", config.to_str().unwrap(), "--source", &format!("{}/readings", kafka.url())])
        .args(["--sink", "null", "--stop-at-end"])
        .env("MILLSTREAM_KAFKA__SASL__PASSWORD", SECRET)
        .env("MILLSTREAM_LOG__LEVEL", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let _ = run.kill();
    let out = run.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("effective configuration"), "{logs}");
    assert!(!logs.contains(SECRET) && !String::from_utf8_lossy(&out.stdout).contains(SECRET), "{logs}");
}
