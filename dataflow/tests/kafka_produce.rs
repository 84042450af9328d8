//! `millstream produce` against a real Kafka-protocol broker (tansu, see millstream-testkit).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{millstream, reading_line, START_MS};
use millstream_connectors::plant_source::SimulatedPlant;
use millstream_testkit::kafka::{ConsumedRecord, TestKafka};

/// Runs `millstream produce ARGS`, asserting success; returns its stdout.
fn produce_ok(args: &[&str]) -> String {
    let out = millstream().arg("produce").args(args).output().expect("millstream starts");
    assert!(
        out.status.success(),
        "millstream produce {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Runs `millstream produce ARGS`, asserting failure; returns its stderr.
fn produce_err(args: &[&str]) -> String {
    let out = millstream().arg("produce").args(args).output().expect("millstream starts");
    assert!(!out.status.success(), "millstream produce {args:?} succeeded");
    String::from_utf8(out.stderr).expect("stderr is UTF-8")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8")
}

/// The one summary line: `produced N records to TOPIC (P partitions) in S s (R records/s)`.
fn assert_summary(stdout: &str, records: usize, topic: &str, partitions: i32) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one summary line: {stdout:?}");
    let prefix = format!("produced {records} records to {topic} ({partitions} partitions) in ");
    assert!(lines[0].starts_with(&prefix), "{:?} does not start with {prefix:?}", lines[0]);
    assert!(lines[0].ends_with(" records/s)"), "{:?}", lines[0]);
}

/// Per sensor key: the partition its records are on (asserting there is exactly one) and its
/// values in offset order.
fn by_key(records: &[ConsumedRecord]) -> BTreeMap<String, (i32, Vec<String>)> {
    let mut keys: BTreeMap<String, (i32, Vec<String>)> = BTreeMap::new();
    // consume_all sorts by (partition, offset): offset order within each key.
    for r in records {
        let Some(key) = &r.key else { continue };
        let entry = keys.entry(text(key)).or_insert((r.partition, Vec::new()));
        assert_eq!(entry.0, r.partition, "sensor {} is on more than one partition", text(key));
        entry.1.push(text(&r.value));
    }
    keys
}

#[test]
fn a_file_is_produced_keyed_by_sensor_in_file_order() {
    let kafka = TestKafka::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sensors: Vec<String> =
        (0..8).map(|s| format!("line1-pump-{:02}/{}", s / 2, ["vib", "temp"][s % 2])).collect();
    let mut lines = Vec::new();
    for step in 0..40u64 {
        for (s, sensor) in sensors.iter().enumerate() {
            lines.push(reading_line(
                sensor,
                START_MS + step * 1000,
                s as f64 + step as f64 / 100.0,
                step % 2 == 0,
            ));
        }
        if step == 17 {
            lines.push("{\"sensor_id\":\"line1-pump-00/vib\",\"ts\":".to_owned());
            // truncated: malformed
        }
    }
    let malformed = "{\"sensor_id\":\"line1-pump-00/vib\",\"ts\":";
    let file = dir.path().join("readings.jsonl");
    // An empty line in the middle is skipped.
    let mut content: String = lines[..100].iter().map(|l| format!("{l}\n")).collect();
    content.push('\n');
    content.extend(lines[100..].iter().map(|l| format!("{l}\n")));
    std::fs::write(&file, content).unwrap();
    let file = file.to_str().unwrap();
    let bootstrap = kafka.bootstrap();

    let stdout = produce_ok(&["--brokers", &bootstrap, "--topic", "t", "--file", file, "--partitions", "4"]);
    assert_summary(&stdout, lines.len(), "t", 4);
    assert_eq!(kafka.partitions("t").unwrap(), 4);

    let records = kafka.consume_all("t").unwrap();
    assert_eq!(records.len(), lines.len());
    // Every line exactly once, as it was.
    let mut got: Vec<String> = records.iter().map(|r| text(&r.value)).collect();
    let mut want = lines.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // The malformed line arrived without a key; every other one keyed by its sensor.
    let unkeyed: Vec<&ConsumedRecord> = records.iter().filter(|r| r.key.is_none()).collect();
    assert_eq!(unkeyed.len(), 1);
    assert_eq!(text(&unkeyed[0].value), malformed);
    // Each sensor on one partition, in file order; the sensors spread over the partitions.
    let keys = by_key(&records);
    assert_eq!(
        keys.keys().cloned().collect::<BTreeSet<_>>(),
        sensors.iter().cloned().collect::<BTreeSet<_>>()
    );
    for (sensor, (_, values)) in &keys {
        let in_file: Vec<String> = lines
            .iter()
            .filter(|l| l.contains(&format!("\"sensor_id\":\"{sensor}\"")) && l.as_str() != malformed)
            .cloned()
            .collect();
        assert_eq!(values, &in_file, "sensor {sensor}");
    }
    let used: BTreeSet<i32> = keys.values().map(|(p, _)| *p).collect();
    assert!(used.len() >= 2, "8 sensors all on partitions {used:?}");

    // A second run into the now existing topic appends; --partitions does not change it.
    let stdout = produce_ok(&["--brokers", &bootstrap, "--topic", "t", "--file", file, "--partitions", "2"]);
    assert_summary(&stdout, lines.len(), "t", 4);
    assert_eq!(kafka.partitions("t").unwrap(), 4);
    let records = kafka.consume_all("t").unwrap();
    assert_eq!(records.len(), 2 * lines.len());
    // The same sensor lands on the same partition again, after its first run's records.
    for (sensor, (partition, values)) in by_key(&records) {
        assert_eq!(partition, keys[&sensor].0, "sensor {sensor} moved");
        let once = &keys[&sensor].1;
        assert_eq!(values, [once.clone(), once.clone()].concat(), "sensor {sensor}");
    }
}

#[test]
fn a_csv_file_is_converted_to_contract_json() {
    let kafka = TestKafka::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("readings.csv");
    std::fs::write(
        &file,
        "sensor_id,ts,value,unit\np1/t,1772323200000,1.5,degC\np2/t,1772323201000,2.5,degC\n",
    )
    .unwrap();
    let stdout = produce_ok(&["--brokers", &kafka.url(), "--topic", "csv", "--file", file.to_str().unwrap()]);
    assert_summary(&stdout, 2, "csv", 4);
    let records = kafka.consume_all("csv").unwrap();
    let values: BTreeSet<String> = records.iter().map(|r| text(&r.value)).collect();
    assert_eq!(
        values,
        BTreeSet::from([
            r#"{"sensor_id":"p1/t","asset_id":"p1","ts":"2026-03-01T00:00:00.000Z","value":1.5,"unit":"degC"}"#
                .to_owned(),
            r#"{"sensor_id":"p2/t","asset_id":"p2","ts":"2026-03-01T00:00:01.000Z","value":2.5,"unit":"degC"}"#
                .to_owned(),
        ])
    );
}

#[test]
fn the_simulator_is_produced_whole() {
    let kafka = TestKafka::start().unwrap();
    let options = "assets=2,steps=60,seed=7";
    let pairs: Vec<(String, String)> = options
        .split(',')
        .map(|o| {
            let (k, v) = o.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let expected = SimulatedPlant::from_options(&pairs).unwrap().simulator.total_records() as usize;
    let stdout = produce_ok(&[
        "--brokers",
        &kafka.bootstrap(),
        "--topic",
        "sim",
        "--simulate",
        options,
        "--partitions",
        "3",
    ]);
    assert_summary(&stdout, expected, "sim", 3);
    assert_eq!(kafka.partitions("sim").unwrap(), 3);
    let records = kafka.consume_all("sim").unwrap();
    assert_eq!(records.len(), expected);
    // Readings are contract JSON keyed by their sensor; 2 pumps × 5 sensors.
    let keys = by_key(&records);
    assert_eq!(keys.len(), 10, "{:?}", keys.keys().collect::<Vec<_>>());
    for (sensor, (_, values)) in &keys {
        for value in values {
            let Ok(json) = serde_json::from_str::<serde_json::Value>(value) else { continue };
            assert_eq!(json["sensor_id"].as_str(), Some(sensor.as_str()), "{value}");
        }
    }
    let readings = records
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.value).ok())
        .filter(|j| j["ts"].is_string() && j["value"].is_number())
        .count();
    assert!(readings >= 2 * 5 * 55, "{readings} readings");

    // With --rate: paced.
    let started = Instant::now();
    let stdout = produce_ok(&[
        "--brokers",
        &kafka.bootstrap(),
        "--topic",
        "paced",
        "--simulate",
        "assets=1,steps=30,faults=false,delivery_faults=false",
        "--rate",
        "200",
    ]);
    let elapsed = started.elapsed();
    assert_summary(&stdout, 150, "paced", 4);
    assert!(elapsed >= Duration::from_millis(600), "150 records at 200/s took {elapsed:?}");
    assert_eq!(kafka.consume_all("paced").unwrap().len(), 150);
}

#[test]
fn bad_inputs_and_unknown_brokers_fail_with_a_reason() {
    let kafka = TestKafka::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let stderr =
        produce_err(&["--brokers", &kafka.bootstrap(), "--topic", "x", "--file", missing.to_str().unwrap()]);
    assert!(stderr.starts_with("millstream: error: cannot read"), "{stderr}");
    let stderr = produce_err(&["--brokers", &kafka.bootstrap(), "--topic", "x"]);
    assert!(stderr.contains("--file") && stderr.contains("--simulate"), "{stderr}");
    let stderr = produce_err(&["--brokers", &kafka.bootstrap(), "--topic", "x", "--simulate", "bogus=1"]);
    assert!(stderr.contains("unknown option `bogus`"), "{stderr}");
    assert!(!kafka.topics().unwrap().contains(&"x".to_owned()));

    // Nobody listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let file = dir.path().join("one.jsonl");
    std::fs::write(&file, reading_line("a/b", START_MS, 1.0, true) + "\n").unwrap();
    let started = Instant::now();
    let stderr = produce_err(&[
        "--brokers",
        &format!("127.0.0.1:{port}"),
        "--topic",
        "x",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(stderr.contains("cannot reach the Kafka brokers"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
}
