//! Every kind of invalid record goes to the dead letters with its reason and line; no valid
//! reading is refused; accepted readings plus dead letters account for every input line.

mod common;

use std::collections::BTreeMap;

use common::*;

/// (line text, expected reason or None for a valid reading)
fn cases() -> Vec<(String, Option<&'static str>)> {
    let t = START_MS;
    let ok = |sensor: &str, ts: u64, value: f64| reading_line(sensor, ts, value, false);
    vec![
        (ok("p1/vib", t, 1.0), None),
        (r#"{"sensor_id":"p1/temp","asset_id":"p1","ts":"2026-03-01T00:00:00.500Z","value":40.5,"unit":"degC","extra":[1,{"a":2}]}"#.into(), None),
        ("this is not json".into(), Some("malformed_json")),
        (r#"{"sensor_id":"p1/vib","ts":1772323200000,"value":1.0"#.into(), Some("malformed_json")),
        ("".into(), Some("malformed_json")),
        ("   ".into(), Some("malformed_json")),
        (r#"{"ts":1772323201000,"value":1.0}"#.into(), Some("missing_field")),
        (r#"{"sensor_id":"p1/vib","value":1.0}"#.into(), Some("missing_field")),
        (r#"{"sensor_id":"p1/vib","ts":1772323201000}"#.into(), Some("missing_field")),
        (r#"{"sensor_id":42,"ts":1772323201000,"value":1.0}"#.into(), Some("wrong_type")),
        (r#"{"sensor_id":"p1/vib","ts":1772323201000,"value":"1.0"}"#.into(), Some("wrong_type")),
        (r#"{"sensor_id":"p1/vib","ts":[1],"value":1.0}"#.into(), Some("wrong_type")),
        (r#"[1,2,3]"#.into(), Some("wrong_type")),
        (r#"{"sensor_id":"p1/vib","ts":1772323201000,"value":NaN}"#.into(), Some("non_finite")),
        (r#"{"sensor_id":"p1/vib","ts":1772323201000,"value":Infinity}"#.into(), Some("non_finite")),
        (r#"{"sensor_id":"p1/vib","ts":1772323201000,"value":1e400}"#.into(), Some("non_finite")),
        (r#"{"sensor_id":"p1/vib","ts":"2026-02-30T00:00:00Z","value":1.0}"#.into(), Some("bad_timestamp")),
        (r#"{"sensor_id":"p1/vib","ts":"tomorrow","value":1.0}"#.into(), Some("bad_timestamp")),
        (r#"{"sensor_id":"p1/vib","ts":-5,"value":1.0}"#.into(), Some("bad_timestamp")),
        (r#"{"sensor_id":"","ts":1772323201000,"value":1.0}"#.into(), Some("empty_sensor_id")),
        // Jitter: 2 s older than the newest reading, within the default 5 s lateness.
        (ok("p1/vib", t + 3000, 1.1), None),
        (ok("p1/vib", t + 1000, 1.2), None),
        (ok("p1/vib", t + 1000, 1.2), Some("duplicate")),
        (ok("p1/vib", t + 1000, 1.3), None),
        (ok("p2/vib", t + 2000, 7.0), None),
        (ok("p2/vib", t + 2000, 7.0), Some("duplicate")),
    ]
}

#[test]
fn every_invalid_line_is_a_dead_letter_and_every_valid_one_is_scored() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases();
    let text: String = cases.iter().map(|(l, _)| format!("{l}\n")).collect();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let out = dir.path().join("out");
    run_file_to_jsonl(&input, &out, &["--emit-scores"]);

    let dead = read_json(&out.join("dead_letters.jsonl"));
    let by_line: BTreeMap<u64, &serde_json::Value> =
        dead.iter().map(|d| (d["source"]["line"].as_u64().expect("file location has a line"), d)).collect();
    assert_eq!(by_line.len(), dead.len(), "one dead letter per line");
    for (i, (text, expected)) in cases.iter().enumerate() {
        let line = i as u64 + 1;
        match expected {
            Some(reason) => {
                let d =
                    by_line.get(&line).unwrap_or_else(|| panic!("line {line} ({text}) is not a dead letter"));
                assert_eq!(d["reason"], *reason, "line {line}: {text}");
                assert_eq!(d["raw"], text.as_str(), "line {line} keeps its raw text");
                assert!(!d["detail"].as_str().unwrap().is_empty());
                assert_eq!(d["source"]["file"], input.display().to_string());
            }
            None => {
                assert!(!by_line.contains_key(&line), "valid line {line} was refused: {:?}", by_line[&line])
            }
        }
    }
    let scores = read_json(&out.join("scores.jsonl"));
    let valid = cases.iter().filter(|(_, e)| e.is_none()).count();
    assert_eq!(scores.len(), valid, "every valid reading is scored once");
    assert!(scores.iter().all(|s| s.get("late").is_none()), "jitter within the lateness is not late");
    assert_eq!(scores.len() + dead.len(), cases.len(), "accepted + dead letters = input lines");
    for s in &scores {
        let score = s["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score));
        assert!(s["ts"].as_str().unwrap().ends_with('Z'));
    }
}

#[test]
fn csv_rows_are_decoded_and_bad_rows_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(
        &input,
        "sensor_id,ts,value,asset_id,unit\n\
         p1/vib,2026-03-01T00:00:00Z,1.5,p1,mm/s\n\
         p1/vib,1772323201000,1.6,,\n\
         p1/vib,1772323202000,abc,,\n\
         p1/vib,1772323203000\n\
         ,1772323204000,1.0,,\n\
         p1/vib,later,1.0,,\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    run_file_to_jsonl(&input, &out, &["--emit-scores"]);
    let dead = read_json(&out.join("dead_letters.jsonl"));
    let mut reasons: Vec<(u64, String)> = dead
        .iter()
        .map(|d| (d["source"]["line"].as_u64().unwrap(), d["reason"].as_str().unwrap().to_owned()))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            (4, "wrong_type".to_owned()),
            (5, "malformed_csv".to_owned()),
            (6, "empty_sensor_id".to_owned()),
            (7, "bad_timestamp".to_owned())
        ]
    );
    assert_eq!(read_lines(&out.join("scores.jsonl")).len(), 2);
}

#[test]
fn late_readings_are_kept_flagged_or_dead_lettered_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let t = START_MS;
    let lines = [
        reading_line("p/v", t + 60_000, 1.0, false),
        reading_line("p/v", t, 2.0, false), // a minute old: late
        reading_line("p/v", t + 61_000, 1.0, false),
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    for (policy, late_scores, late_dead) in [("keep", 1, 0), ("dead_letter", 0, 1)] {
        let out = dir.path().join(policy);
        run_ok(&[
            "run",
            "--source",
            &format!("file:{}", input.display()),
            "--sink",
            &format!("jsonl:{}", out.display()),
            "--emit-scores",
            "--late-policy",
            policy,
        ]);
        let scores = read_json(&out.join("scores.jsonl"));
        let late: Vec<_> = scores.iter().filter(|s| s["late"] == true).collect();
        assert_eq!(late.len(), late_scores, "{policy}");
        let dead = read_json(&out.join("dead_letters.jsonl"));
        assert_eq!(dead.len(), late_dead, "{policy}");
        if late_dead == 1 {
            assert_eq!(dead[0]["reason"], "late");
            assert_eq!(dead[0]["source"]["line"], 2);
        }
        assert_eq!(scores.len() + dead.len(), 3);
    }
}

#[test]
fn bad_usage_exits_non_zero_with_one_line() {
    for args in [
        vec!["run", "--source", "nope:x", "--sink", "null"],
        vec!["run", "--source", "file:/definitely/not/here.jsonl", "--sink", "null"],
        vec!["run", "--source", "simulate:assets=x", "--sink", "null"],
    ] {
        let out = millstream().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.trim().is_empty(), "{args:?} says why");
        assert!(!stderr.contains("panicked"), "{args:?} must not panic: {stderr}");
    }
}
