//! The sensor registry's plausibility checks, the silence and stuck health rules and the
//! per-sensor anomaly episodes, end to end through the `millstream` binary: exact dead letters,
//! exact quality flags, exact episode events, and clear refusals of bad registries.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

const SEC: u64 = 1000;

/// One reading as a JSON line, with an explicit asset and, when given, a unit.
fn line(sensor: &str, ts: u64, value: f64, unit: Option<&str>) -> String {
    let asset = sensor.split_once('/').map_or(sensor, |(a, _)| a);
    match unit {
        Some(unit) => format!(
            "{{\"sensor_id\":\"{sensor}\",\"asset_id\":\"{asset}\",\"ts\":{ts},\"value\":{value},\"unit\":\"{unit}\"}}"
        ),
        None => format!("{{\"sensor_id\":\"{sensor}\",\"asset_id\":\"{asset}\",\"ts\":{ts},\"value\":{value}}}"),
    }
}

/// Pseudo-normal noise with σ ≈ 1, bounded by ±6 (the sum of 12 uniforms), from the shared
/// deterministic generator.
fn gauss(rng: &mut Rng) -> f64 {
    (0..12).map(|_| rng.unit()).sum::<f64>() - 6.0
}

/// Rounded to 3 decimals, as a sensor would report it.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Writes `lines` (and `config`, when given) under `dir/name`, runs `millstream run` on them
/// into `jsonl:dir/name/out` with scores and `extra` flags, and returns the output directory.
fn run_lines(dir: &Path, name: &str, lines: &[String], config: Option<&str>, extra: &[&str]) -> PathBuf {
    let base = dir.join(name);
    std::fs::create_dir_all(&base).unwrap();
    let input = base.join("in.jsonl");
    std::fs::write(&input, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let out = base.join("out");
    let source = format!("file:{}", input.display());
    let sink = format!("jsonl:{}", out.display());
    let mut args = vec!["run", "--source", &source, "--sink", &sink, "--emit-scores"];
    let config_path = base.join("config.toml");
    let config_arg = config_path.display().to_string();
    if let Some(text) = config {
        std::fs::write(&config_path, text).unwrap();
        args.extend(["--config", &config_arg]);
    }
    args.extend_from_slice(extra);
    run_ok(&args);
    out
}

fn ts_of(v: &Value, field: &str) -> u64 {
    v[field].as_str().and_then(parse_ts).unwrap_or_else(|| panic!("{field} of {v} is an RFC 3339 time"))
}

/// The anomaly events of one sensor and detector, in output order.
fn events<'a>(anomalies: &'a [Value], sensor: &str, detector: &str) -> Vec<&'a Value> {
    anomalies.iter().filter(|a| a["sensor_id"] == sensor && a["detector"] == detector).collect()
}

/// Every episode event is well formed: `closed` has `ended_at` ≥ `started_at` and follows an
/// `opened` event with the same episode id; `opened` carries the episode id as its event id.
fn assert_episodes_well_formed(anomalies: &[Value]) {
    let mut open: BTreeMap<(String, String), String> = BTreeMap::new();
    for a in anomalies {
        let key = (a["sensor_id"].as_str().unwrap().to_owned(), a["detector"].as_str().unwrap().to_owned());
        let id = a["episode_id"].as_str().unwrap_or_else(|| panic!("{a} has an episode id")).to_owned();
        match a["state"].as_str().unwrap() {
            "opened" => {
                assert_eq!(a["event_id"], a["episode_id"], "{a}");
                assert_eq!(ts_of(a, "started_at"), ts_of(a, "ts"), "{a}");
                assert!(open.insert(key, id).is_none(), "opened twice without closing: {a}");
            }
            "escalated" => assert_eq!(open.get(&key), Some(&id), "{a}"),
            "closed" => {
                assert_eq!(open.remove(&key), Some(id), "closed without an open episode: {a}");
                assert!(ts_of(a, "ended_at") >= ts_of(a, "started_at"), "{a}");
                assert!(ts_of(a, "ended_at") <= ts_of(a, "ts"), "{a}");
            }
            other => panic!("unknown state {other}: {a}"),
        }
    }
}

fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines = read_lines(path);
    lines.sort();
    lines
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

// ---------------------------------------------------------------------------------------------
// 1. Every check of the registry.
// ---------------------------------------------------------------------------------------------

const REGISTRY: &str = r#"
[validation]
# max_future_ms: the default, 300000.

[[validation.kinds]]
name = "vibration"
unit = "mm/s"
min = 0.0
max = 50.0
max_rate_per_s = 20.0          # rate_action: the default, flag

[[validation.kinds]]
name = "temperature"
aliases = ["temp"]
unit = "degC"
max_rate_per_s = 2.0
rate_action = "reject"

[[validation.kinds]]
name = "pressure"
min = 0.0
max = 16.0
range_action = "flag"
max_rate_per_s = 5.0

[[validation.sensors]]
sensor_id = "p2/vibration"
max = 80.0

[[validation.sensors]]
sensor_id = "p3/vibration"
range_action = "flag"
"#;

/// What must become of one input line.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// In scores.jsonl, with exactly these flags (none: no `flags` key), not late.
    Kept(&'static [&'static str]),
    /// In scores.jsonl, `late: true`, no flags, score 0.
    Late,
    /// A dead letter with this reason and exactly this detail.
    Dead(&'static str, &'static str),
    /// A `future_timestamp` dead letter (its detail depends on the clock).
    Future,
}

#[test]
fn every_registry_check_refuses_or_flags_exactly_the_implausible_readings() {
    use Expect::*;
    let t = START_MS;
    let future = now_ms() + 86_400 * SEC;
    let cases: Vec<(String, Expect)> = vec![
        // t+0: every sensor's first reading passes (no rate base yet).
        (line("p1/vibration", t, 1.0, Some("mm/s")), Kept(&[])),
        (line("p1/temp", t, 20.0, Some("degC")), Kept(&[])),
        (line("p1/pressure", t, 5.0, None), Kept(&[])),
        (line("p2/vibration", t, 45.0, None), Kept(&[])),
        (line("p3/vibration", t, 45.0, None), Kept(&[])),
        // A sensor matching no kind and no override: unchecked.
        (line("p9/other", t, -1000.0, Some("furlongs")), Kept(&[])),
        // t+1
        (
            line("p1/vibration", t + SEC, 60.0, None),
            Dead("out_of_range", "value 60 above the maximum 50 for kind vibration"),
        ),
        (line("p1/temp", t + SEC, 21.0, None), Kept(&[])),
        // Out of range (flag) and 15/s > 5/s (flag): both flags, in output order.
        (line("p1/pressure", t + SEC, 20.0, None), Kept(&["out_of_range", "rate_of_change"])),
        // 55 > the kind's 50, but the override's max is 80.
        (line("p2/vibration", t + SEC, 55.0, None), Kept(&[])),
        // The override's range_action `flag` wins over the kind's `reject`.
        (line("p3/vibration", t + SEC, 60.0, None), Kept(&["out_of_range"])),
        // t+2
        (
            line("p1/vibration", t + 2 * SEC, -0.5, None),
            Dead("out_of_range", "value -0.5 below the minimum 0 for kind vibration"),
        ),
        (
            line("p1/temp", t + 2 * SEC, 30.0, None),
            Dead(
                "rate_of_change",
                "rate of change 9/s above the maximum 2/s for kind temperature (from 21 to 30 in 1 s)",
            ),
        ),
        // The flagged 20.0 is the rate base: 0.5/s.
        (line("p1/pressure", t + 2 * SEC, 20.5, None), Kept(&["out_of_range"])),
        (
            line("p2/vibration", t + 2 * SEC, 90.0, None),
            Dead(
                "out_of_range",
                "value 90 above the maximum 80 for kind vibration (overridden for this sensor)",
            ),
        ),
        // t+3: refused readings are no rate base: 1.0 → 1.5 over 3 s, 21 → 22 over 2 s.
        (line("p1/vibration", t + 3 * SEC, 1.5, None), Kept(&[])),
        (line("p1/temp", t + 3 * SEC, 22.0, None), Kept(&[])),
        // t+4: 28.5/s > 20/s, flagged (the kind's default rate action).
        (line("p1/vibration", t + 4 * SEC, 30.0, Some("mm/s")), Kept(&["rate_of_change"])),
        // t+5
        (
            line("p1/vibration", t + 5 * SEC, 2.0, Some("in/s")),
            Dead("unit_mismatch", "unit `in/s` where kind vibration expects `mm/s`"),
        ),
        (
            line("p1/temp", t + 5 * SEC, 23.0, Some("degF")),
            Dead("unit_mismatch", "unit `degF` where kind temperature expects `degC`"),
        ),
        // t+6: the flagged 30.0 is the rate base: 0.5/s.
        (line("p1/vibration", t + 6 * SEC, 31.0, None), Kept(&[])),
        // t+12 moves the watermark to t+7 (lateness 5 s): what follows is late.
        (line("p9/other", t + 12 * SEC, 0.0, None), Kept(&[])),
        // Late: 31 → 49 in 0.5 s would be 36/s, but late readings are not rate-checked.
        (line("p1/vibration", t + 6 * SEC + 500, 49.0, None), Late),
        // Late readings are still range-checked (and unit-checked).
        (
            line("p1/vibration", t + 5 * SEC + 500, 70.0, None),
            Dead("out_of_range", "value 70 above the maximum 50 for kind vibration"),
        ),
        (
            line("p1/vibration", t + 5 * SEC + 700, 7.0, Some("in/s")),
            Dead("unit_mismatch", "unit `in/s` where kind vibration expects `mm/s`"),
        ),
        // A day ahead of the wall clock: refused, with rules and without.
        (line("p1/vibration", future, 2.0, None), Future),
        (line("p9/other", future, 2.0, None), Future),
    ];
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = cases.iter().map(|(l, _)| l.clone()).collect();
    let started = now_ms();
    let out = run_lines(dir.path(), "registry", &lines, Some(REGISTRY), &[]);
    let finished = now_ms();
    let input = dir.path().join("registry/in.jsonl").display().to_string();

    let dead = read_json(&out.join("dead_letters.jsonl"));
    let scores = read_json(&out.join("scores.jsonl"));
    let dead_by_line: BTreeMap<u64, &Value> =
        dead.iter().map(|d| (d["source"]["line"].as_u64().expect("a file location has a line"), d)).collect();
    assert_eq!(dead_by_line.len(), dead.len(), "one dead letter per line");
    let scores_by_id: BTreeMap<(String, u64, u64), &Value> =
        scores.iter().map(|s| (reading_identity(s).expect("a score line is a reading"), s)).collect();
    assert_eq!(scores_by_id.len(), scores.len(), "each reading is scored once");

    for (i, (text, expect)) in cases.iter().enumerate() {
        let number = i as u64 + 1;
        let identity = reading_identity(&serde_json::from_str(text).unwrap()).unwrap();
        let what = format!("line {number} ({text})");
        match expect {
            Kept(_) | Late => {
                assert!(
                    !dead_by_line.contains_key(&number),
                    "{what} refused: {:?}",
                    dead_by_line.get(&number)
                );
                let s =
                    scores_by_id.get(&identity).unwrap_or_else(|| panic!("{what} is not in scores.jsonl"));
                let late = *expect == Late;
                assert_eq!(s.get("late").is_some(), late, "{what}: {s}");
                if late {
                    assert_eq!(s["late"], true, "{what}: {s}");
                }
                let want: Vec<&str> = match expect {
                    Kept(flags) => flags.to_vec(),
                    _ => Vec::new(),
                };
                match s.get("flags") {
                    None => assert!(want.is_empty(), "{what}: no flags in {s}, expected {want:?}"),
                    Some(got) => assert_eq!(got, &serde_json::json!(want), "{what}: {s}"),
                }
                if !want.is_empty() || late {
                    assert_eq!(s["score"], 0.0, "{what}: flagged and late readings are not scored");
                }
            }
            Dead(reason, detail) => {
                let d = dead_by_line.get(&number).unwrap_or_else(|| panic!("{what} is not a dead letter"));
                assert_eq!(d["reason"], *reason, "{what}: {d}");
                assert_eq!(d["detail"], *detail, "{what}: {d}");
                assert_eq!(d["raw"], text.as_str(), "{what} keeps its raw text");
                assert_eq!(d["source"]["file"], input.as_str());
                assert!(!scores_by_id.contains_key(&identity), "{what} is also in scores.jsonl");
            }
            Future => {
                let d = dead_by_line.get(&number).unwrap_or_else(|| panic!("{what} is not a dead letter"));
                assert_eq!(d["reason"], "future_timestamp", "{what}: {d}");
                assert_eq!(d["raw"], text.as_str(), "{what} keeps its raw text");
                // "ts <ts> is <N> ms ahead of the clock (<now>); at most 300000 ms is allowed"
                let detail = d["detail"].as_str().unwrap();
                let rest = detail.strip_prefix("ts ").unwrap_or_else(|| panic!("{detail}"));
                let (ts, rest) = rest.split_once(" is ").unwrap_or_else(|| panic!("{detail}"));
                assert_eq!(parse_ts(ts), Some(future), "{detail}");
                let (ahead, rest) =
                    rest.split_once(" ms ahead of the clock (").unwrap_or_else(|| panic!("{detail}"));
                let ahead: u64 = ahead.parse().unwrap_or_else(|_| panic!("{detail}"));
                assert!(future - finished <= ahead && ahead <= future - started, "{detail}");
                let (clock, rest) = rest.split_once(')').unwrap_or_else(|| panic!("{detail}"));
                assert_eq!(parse_ts(clock), Some(future - ahead), "{detail}");
                assert_eq!(rest, "; at most 300000 ms is allowed", "{detail}");
                assert!(!scores_by_id.contains_key(&identity), "{what} is also in scores.jsonl");
            }
        }
    }
    let kept = cases.iter().filter(|(_, e)| matches!(e, Kept(_) | Late)).count();
    assert_eq!(scores.len(), kept, "exactly the kept readings are in scores.jsonl");
    assert_eq!(dead.len(), cases.len() - kept, "exactly the refused readings are dead letters");
    assert_eq!(scores.len() + dead.len(), cases.len(), "scores + dead letters = input lines");
}

// ---------------------------------------------------------------------------------------------
// 2. Silence.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_sensor_that_stops_mid_stream_is_silent_once_and_no_sensor_is_silent_at_the_end() {
    let t = START_MS;
    let (last_before_gap, resume) = (200, 380); // seconds: 3 minutes without p1/temperature
    let mut rng = Rng::new(21);
    let mut lines = Vec::new();
    let mut temp_value = BTreeMap::new();
    for i in 0..600u64 {
        let ts = t + i * SEC;
        lines.push(reading_line("p1/vibration", ts, round3(5.0 + 0.5 * (rng.unit() - 0.5)), i % 2 == 0));
        if i <= last_before_gap || i >= resume {
            let value = round3(40.0 + 0.5 * (rng.unit() - 0.5));
            temp_value.insert(i, value);
            lines.push(reading_line("p1/temperature", ts, value, i % 3 == 0));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let one = run_lines(dir.path(), "w1", &lines, None, &["--workers", "1"]);
    let two = run_lines(dir.path(), "w2", &lines, None, &["--workers", "2"]);

    let anomalies = read_json(&one.join("anomalies.jsonl"));
    // Only the silence of p1/temperature: nothing for p1/vibration, no robust_z/cusum on this
    // low, bounded noise, and no silence at the end although both sensors stop there (the
    // input ends, the frontier empties, nobody is silent).
    assert_eq!(anomalies.len(), 2, "{anomalies:#?}");
    let (opened, closed) = (&anomalies[0], &anomalies[1]);
    for a in [opened, closed] {
        assert_eq!(a["sensor_id"], "p1/temperature", "{a}");
        assert_eq!(a["asset_id"], "p1", "{a}");
        assert_eq!(a["detector"], "silence", "{a}");
        assert_eq!(a["severity"], "medium", "{a}");
        assert_eq!(a["score"], 0.8, "{a}");
    }
    let deadline = t + (last_before_gap + 60) * SEC;
    assert_eq!(opened["state"], "opened");
    assert_eq!(ts_of(opened, "ts"), deadline, "opened at the last reading + 60 s: {opened}");
    assert_eq!(ts_of(opened, "started_at"), deadline);
    assert_eq!(opened["value"], temp_value[&last_before_gap], "the last value heard");
    assert_eq!(
        opened["explanation"],
        format!("no reading for 60000 ms (the last at {})", {
            // The same instant as the input line's RFC 3339 form, without a date library.
            let l: Value =
                serde_json::from_str(&reading_line("x", t + last_before_gap * SEC, 0.0, true)).unwrap();
            l["ts"].as_str().unwrap().to_owned()
        })
    );
    assert_eq!(closed["state"], "closed");
    assert_eq!(closed["episode_id"], opened["episode_id"]);
    assert_eq!(ts_of(closed, "ts"), t + resume * SEC, "closed by the resuming reading: {closed}");
    assert_eq!(ts_of(closed, "started_at"), deadline);
    // A health episode lasts until just before the reading that ends it.
    assert_eq!(ts_of(closed, "ended_at"), t + resume * SEC - 1);
    assert_eq!(closed["value"], temp_value[&resume]);
    assert_eq!(closed["explanation"], "sends again");
    assert_episodes_well_formed(&anomalies);

    for file in ["anomalies.jsonl", "dead_letters.jsonl", "scores.jsonl"] {
        assert_eq!(sorted_lines(&one.join(file)), sorted_lines(&two.join(file)), "{file}: 1 vs 2 workers");
    }
    assert_eq!(read_lines(&one.join("scores.jsonl")).len(), lines.len());
    assert!(read_lines(&one.join("dead_letters.jsonl")).is_empty());
}

/// A sensor already announced silent whose next reading comes late: the reading is kept (late)
/// or dead-lettered, the sensor stays silent, and the run ends normally at any worker count.
/// (This used to panic, rescheduling the silence deadline behind the current time.)
#[test]
fn a_late_reading_from_a_silent_sensor_is_kept_and_leaves_it_silent() {
    let t = START_MS;
    let lines = vec![
        line("p/v", t, 1.0, None),
        line("q/v", t + 200 * SEC, 1.0, None),
        line("p/v", t + 150 * SEC, 1.0, None), // older than the watermark (200 s − 5 s): late
    ];
    let dir = tempfile::tempdir().unwrap();
    let one = run_lines(dir.path(), "w1", &lines, None, &["--workers", "1"]);
    let two = run_lines(dir.path(), "w2", &lines, None, &["--workers", "2"]);
    let anomalies = read_json(&one.join("anomalies.jsonl"));
    assert_eq!(anomalies.len(), 1, "{anomalies:#?}");
    assert_eq!(anomalies[0]["sensor_id"], "p/v");
    assert_eq!(anomalies[0]["detector"], "silence");
    assert_eq!(anomalies[0]["state"], "opened");
    assert_eq!(ts_of(&anomalies[0], "ts"), t + 60 * SEC);
    let scores = read_json(&one.join("scores.jsonl"));
    assert_eq!(scores.len(), 3, "{scores:#?}");
    let late: Vec<&Value> = scores.iter().filter(|s| s["late"] == true).collect();
    assert_eq!(late.len(), 1, "{scores:#?}");
    assert_eq!(ts_of(late[0], "ts"), t + 150 * SEC);
    for file in ["anomalies.jsonl", "dead_letters.jsonl", "scores.jsonl"] {
        assert_eq!(sorted_lines(&one.join(file)), sorted_lines(&two.join(file)), "{file}: 1 vs 2 workers");
    }

    let refused =
        run_lines(dir.path(), "dl", &lines, None, &["--workers", "2", "--late-policy", "dead_letter"]);
    let dead = read_json(&refused.join("dead_letters.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["reason"], "late");
    assert_eq!(dead[0]["source"]["line"], 3);
    assert_eq!(read_lines(&refused.join("scores.jsonl")).len(), 2);
}

// ---------------------------------------------------------------------------------------------
// 3. Stuck.
// ---------------------------------------------------------------------------------------------

/// A noisy sensor (10 ± 1) that reads exactly 10.0 for readings 100..160, at 1 Hz.
fn stuck_input() -> Vec<String> {
    let mut rng = Rng::new(5);
    (0..250u64)
        .map(|i| {
            let value = if (100..160).contains(&i) { 10.0 } else { round3(10.0 + 2.0 * (rng.unit() - 0.5)) };
            reading_line("p1/pressure", START_MS + i * SEC, value, false)
        })
        .collect()
}

fn assert_one_stuck_episode(anomalies: &[Value], opened_at: u64, why: &str) {
    assert_eq!(anomalies.len(), 2, "one stuck episode, nothing else: {anomalies:#?}");
    assert_episodes_well_formed(anomalies);
    let (opened, closed) = (&anomalies[0], &anomalies[1]);
    for a in [opened, closed] {
        assert_eq!(a["sensor_id"], "p1/pressure", "{a}");
        assert_eq!(a["detector"], "stuck", "{a}");
    }
    assert_eq!(opened["state"], "opened");
    assert_eq!(ts_of(opened, "ts"), opened_at, "{opened}");
    assert_eq!(opened["value"], 10.0);
    assert_eq!(opened["explanation"], why);
    assert_eq!(closed["state"], "closed");
    assert_eq!(closed["episode_id"], opened["episode_id"]);
    // Closed by the first different value, reading 160.
    assert_eq!(ts_of(closed, "ts"), START_MS + 160 * SEC, "{closed}");
    assert_eq!(ts_of(closed, "started_at"), opened_at);
    assert_eq!(ts_of(closed, "ended_at"), START_MS + 160 * SEC - 1);
    assert_eq!(closed["explanation"], "value changes again");
}

#[test]
fn a_flat_line_in_a_noisy_sensor_is_one_stuck_episode_by_count_or_by_duration() {
    let lines = stuck_input();
    // The value before the flat line differs from it, so the run starts at reading 100.
    assert!(!lines[99].ends_with("\"value\":10}") && lines[100].ends_with("\"value\":10}"), "{}", lines[99]);
    let dir = tempfile::tempdir().unwrap();

    // Default: 30 identical readings in a row; the run's first is reading 100, so the 30th is 129.
    let out = run_lines(dir.path(), "repeats", &lines, None, &[]);
    assert_one_stuck_episode(
        &read_json(&out.join("anomalies.jsonl")),
        START_MS + 129 * SEC,
        "value 10 repeated exactly 30 times in a row",
    );

    // By duration: the flat line began at reading 100 and has lasted 20 s at reading 120.
    let config = "[pipeline.stuck]\nrepeats = 0\nduration_ms = 20000\n";
    let out = run_lines(dir.path(), "duration", &lines, Some(config), &[]);
    assert_one_stuck_episode(
        &read_json(&out.join("anomalies.jsonl")),
        START_MS + 120 * SEC,
        "value 10 unchanged for 20000 ms",
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Episodes, not storms.
// ---------------------------------------------------------------------------------------------

/// 1 Hz, σ = 0.5 around 20; readings in `shift` are 8σ (4.0) higher.
fn shifted_input(sensor: &str, seed: u64, count: u64, shift: std::ops::Range<u64>) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|i| {
            let level = if shift.contains(&i) { 24.0 } else { 20.0 };
            reading_line(sensor, START_MS + i * SEC, round3(level + 0.5 * gauss(&mut rng)), i % 2 == 1)
        })
        .collect()
}

/// One episode event: (detector, state, ts, ended_at), times in seconds from START_MS.
type Event<D> = (D, D, u64, Option<u64>);

/// One sensor's episode events, in output order.
fn transcript(anomalies: &[Value], sensor: &str) -> Vec<Event<String>> {
    let secs = |ms: u64| (ms - START_MS) / SEC;
    anomalies
        .iter()
        .filter(|a| a["sensor_id"] == sensor)
        .map(|a| {
            (
                a["detector"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
                secs(ts_of(a, "ts")),
                a.get("ended_at").map(|_| secs(ts_of(a, "ended_at"))),
            )
        })
        .collect()
}

#[test]
fn a_level_shift_is_one_episode_not_a_storm_and_clean_noise_is_none() {
    // Four noisy sensors (σ = 0.5, 1 Hz, 800 s) whose level is 8σ higher for 3 minutes,
    // readings 300..480; the seeds are chosen so that between them every way an episode opens
    // is covered. What the detectors do, and why these are the numbers:
    //
    // - Onset (reading 300): |z| ≈ 8 > 5.5, so robust_z opens an episode on the first shifted
    //   reading; or, when the noise makes that reading less extreme, the CUSUM (on robust_z's
    //   residuals) reaches its threshold a few readings later and opens it, as `cusum`. It may
    //   escalate once when a later reading is more extreme.
    // - The CUSUM alarms on the shift, so the episode is held open ([pipeline.cusum] hold_ms,
    //   5 min) although robust_z's baseline adapts to the new level within ~20 readings: a
    //   sustained shift is one alarm, not one at its start and another at its end.
    // - Return (reading 480): the CUSUM alarms the other way, which releases the hold; the
    //   return's outliers keep the episode warm while the baseline re-adapts, and it closes
    //   once the score has stayed below 0.5 for close_after_ms = 60 s: at the 61st second after
    //   its last warm reading (1 Hz: the first cold reading is 1 s later, then 60 s).
    // So: exactly 1 `opened` at the onset, 1 `closed` after the return, at most one escalation.
    let shift = 300..480;
    let expected: [(&str, u64, &[Event<&str>]); 4] = [
        ("p1/vibration", 11, &[("robust_z", "opened", 300, None), ("robust_z", "closed", 556, Some(495))]),
        (
            // An onset extreme enough to escalate (low → medium) before the baseline adapts.
            "p2/vibration",
            1,
            &[
                ("robust_z", "opened", 300, None),
                ("robust_z", "escalated", 308, None),
                ("robust_z", "closed", 562, Some(501)),
            ],
        ),
        ("p3/vibration", 6, &[("robust_z", "opened", 300, None), ("robust_z", "closed", 553, Some(492))]),
        (
            // The onset is seen by the CUSUM first.
            "p4/vibration",
            10,
            &[("cusum", "opened", 304, None), ("cusum", "closed", 559, Some(498))],
        ),
    ];
    let inputs: Vec<Vec<String>> =
        expected.iter().map(|(sensor, seed, _)| shifted_input(sensor, *seed, 800, shift.clone())).collect();
    // Interleaved by time, as a plant would send them.
    let lines: Vec<String> =
        (0..800).flat_map(|i| inputs.iter().map(move |input| input[i].clone())).collect();
    let dir = tempfile::tempdir().unwrap();
    let out = run_lines(dir.path(), "shift", &lines, None, &[]);
    let anomalies = read_json(&out.join("anomalies.jsonl"));
    assert_episodes_well_formed(&anomalies);
    for (sensor, _, want) in &expected {
        let got = transcript(&anomalies, sensor);
        let want: Vec<Event<String>> =
            want.iter().map(|(d, s, ts, end)| (d.to_string(), s.to_string(), *ts, *end)).collect();
        assert_eq!(got, want, "{sensor}");
        // The same, as properties of any such run.
        let opened: Vec<u64> = got.iter().filter(|e| e.1 == "opened").map(|e| e.2).collect();
        assert_eq!(opened.len(), 1, "{sensor}: one episode for the shift and its return");
        assert!((300..=305).contains(&opened[0]), "{sensor}: {got:?}");
        assert!(got.iter().filter(|e| e.1 == "escalated").count() <= 1, "{sensor}: {got:?}");
        for (i, closed) in got.iter().enumerate().filter(|(_, e)| e.1 == "closed") {
            let ended_at = closed.3.unwrap();
            let started_at = got[..i].iter().rev().find(|e| e.1 == "opened").unwrap().2;
            assert!((480..=510).contains(&ended_at) && ended_at >= started_at, "{sensor}: {got:?}");
            assert_eq!(
                closed.2,
                ended_at + 61,
                "{sensor}: closes 1 s + close_after_ms after its last warm reading"
            );
        }
    }
    assert_eq!(anomalies.len(), expected.iter().map(|e| e.2.len()).sum::<usize>(), "nothing else");

    // Clean noise, alone: no anomaly at all (three sensors, 15 minutes each).
    let clean: Vec<Vec<String>> = [("q1/vibration", 11), ("q2/vibration", 6), ("q3/vibration", 10)]
        .iter()
        .map(|(sensor, seed)| shifted_input(sensor, *seed, 900, 0..0))
        .collect();
    let lines: Vec<String> = (0..900).flat_map(|i| clean.iter().map(move |input| input[i].clone())).collect();
    let out = run_lines(dir.path(), "clean", &lines, None, &[]);
    assert_eq!(read_lines(&out.join("anomalies.jsonl")), Vec::<String>::new());
    assert_eq!(read_lines(&out.join("scores.jsonl")).len(), lines.len());
}

// ---------------------------------------------------------------------------------------------
// 5. Bad registries.
// ---------------------------------------------------------------------------------------------

#[test]
fn an_invalid_registry_stops_run_with_one_line_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, format!("{}\n", line("p1/vibration", START_MS, 1.0, None))).unwrap();
    let cases: [(&str, &str, &[&str]); 5] = [
        (
            "min_above_max",
            "[[validation.kinds]]\nname = \"vibration\"\nmin = 10.0\nmax = 5.0\n",
            &["kind `vibration`", "min 10 is not below max 5"],
        ),
        (
            "override_min_above_kind_max",
            "[[validation.kinds]]\nname = \"vibration\"\nmax = 50.0\n\n\
             [[validation.sensors]]\nsensor_id = \"p1/vibration\"\nmin = 60.0\n",
            &["sensor `p1/vibration`", "min 60 is not below max 50"],
        ),
        (
            "unknown_kind",
            "[[validation.kinds]]\nname = \"vibration\"\n\n\
             [[validation.sensors]]\nsensor_id = \"p1/x\"\nkind = \"vibrations\"\n",
            &["sensor `p1/x`", "kind `vibrations`", "not defined"],
        ),
        (
            "unknown_key",
            "[[validation.kinds]]\nname = \"vibration\"\nmaximum = 5.0\n",
            &["validation.kinds", "maximum", "unknown field", "unknown_key.toml"],
        ),
        (
            "bad_action",
            "[[validation.kinds]]\nname = \"vibration\"\nrange_action = \"drop\"\n",
            &["validation.kinds", "range_action", "drop"],
        ),
    ];
    for (name, text, needles) in cases {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, text).unwrap();
        let out_dir = dir.path().join(format!("out-{name}"));
        let out = millstream()
            .args(["run", "--source", &format!("file:{}", input.display())])
            .args(["--sink", &format!("jsonl:{}", out_dir.display()), "--emit-scores"])
            .args(["--config", &config.display().to_string()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: exits with 1: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: no panic: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}: one line: {stderr}");
        assert!(lines[0].starts_with("millstream: error: invalid configuration: "), "{name}: {stderr}");
        for needle in needles {
            assert!(lines[0].contains(needle), "{name}: `{needle}` not in: {stderr}");
        }
        assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
        assert!(!out_dir.exists(), "{name}: nothing was run, no output directory");
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: two bugs these tests found (a refused future reading moved event time; flagged
// readings did not count as the sensor sending).
// ---------------------------------------------------------------------------------------------

/// A reading refused as `future_timestamp` must not move event time: the readings after it
/// are on time and nobody falls silent.
#[test]
fn a_refused_future_reading_does_not_make_the_readings_after_it_late() {
    let t = START_MS;
    let mut lines = Vec::new();
    for i in 0..120u64 {
        lines.push(reading_line("a/x", t + i * SEC, (i % 7) as f64, false));
        lines.push(reading_line("b/y", t + i * SEC, (i % 5) as f64, false));
        if i == 59 {
            lines.push(line("a/x", now_ms() + 86_400 * SEC, 3.0, None));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run_lines(dir.path(), "future", &lines, None, &[]);
    let dead = read_json(&out.join("dead_letters.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["reason"], "future_timestamp");
    assert_eq!(dead[0]["source"]["line"], 121);
    let scores = read_json(&out.join("scores.jsonl"));
    let late: Vec<&Value> = scores.iter().filter(|s| s.get("late").is_some()).collect();
    assert_eq!(
        late.len(),
        0,
        "{} readings after the refused one are late, e.g. {:?}",
        late.len(),
        late.first()
    );
    assert_eq!(read_lines(&out.join("anomalies.jsonl")), Vec::<String>::new());
}

/// A sensor whose readings are kept but flagged is sending: it is not silent.
#[test]
fn a_sensor_sending_flagged_readings_is_not_silent() {
    let config =
        "[[validation.kinds]]\nname = \"pressure\"\nmin = 0.0\nmax = 16.0\nrange_action = \"flag\"\n";
    let lines: Vec<String> = (0..300u64)
        .map(|i| {
            // 100 s above the range (flagged, kept), one reading a second throughout.
            let level = if (100..200).contains(&i) { 20.0 } else { 5.0 };
            reading_line("p1/pressure", START_MS + i * SEC, level + (i % 5) as f64 * 0.1, false)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let out = run_lines(dir.path(), "flagged", &lines, Some(config), &[]);
    let scores = read_json(&out.join("scores.jsonl"));
    assert_eq!(scores.len(), 300);
    assert_eq!(scores.iter().filter(|s| s["flags"] == serde_json::json!(["out_of_range"])).count(), 100);
    let anomalies = read_json(&out.join("anomalies.jsonl"));
    assert!(events(&anomalies, "p1/pressure", "silence").is_empty(), "silent while sending: {anomalies:#?}");
}
