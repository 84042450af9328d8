//! `millstream demo` runs with no services, exits 0, and finds the injected spikes.

mod common;

use common::*;

#[test]
fn demo_reports_and_finds_spikes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let table = run_ok(&["demo", "--out", &out.display().to_string()]);
    let text = String::from_utf8_lossy(&table.stdout);
    for expected in ["line1-pump-00", "spike", "Dead letters by reason", "duplicate", "precision", "recall"] {
        assert!(text.contains(expected), "report lacks {expected}:\n{text}");
    }
    let json = run_ok(&["demo", "--json", "--out", &out.display().to_string()]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("--json prints JSON");
    let spikes = &report["by_kind"]["spike"];
    assert!(spikes["faults"].as_u64().unwrap() >= 40, "{report}");
    let recall = spikes["recall"].as_f64().unwrap();
    assert!(recall >= 0.9, "spike recall {recall} < 0.9: {report}");
    assert!(report["overall"]["precision"].as_f64().unwrap() >= 0.8, "{report}");
    assert!(report["dead_letters"]["duplicate"].as_u64().unwrap() > 0);
    assert!(read_lines(&out.join("anomalies.jsonl")).len() as u64 >= spikes["detected"].as_u64().unwrap());
}
