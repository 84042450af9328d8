//! `millstream bench-kafka`, small: it starts its own tansu broker, compares the Kafka source
//! with a raw consumer and times notifications, and reports figures that make sense.

mod common;

use std::time::Instant;

use common::millstream;
use serde_json::Value;

#[test]
fn bench_kafka_reports_a_throughput_ratio_and_notification_latencies() {
    let started = Instant::now();
    let out = millstream()
        .args(["bench-kafka", "--readings", "5000", "--rounds", "1"])
        .args(["--latency-seconds", "4", "--latency-rate", "200", "--json"])
        .output()
        .expect("millstream starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench-kafka failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("bench-kafka took {:.1} s", started.elapsed().as_secs_f64());

    // The markdown tables, then one JSON line with every figure.
    assert!(stdout.contains("| round | raw consumer |"), "{stdout}");
    assert!(stdout.contains("| settings | epoch ms | lateness ms |"), "{stdout}");
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).expect("a JSON line");
    let report: Value = serde_json::from_str(line).expect("the JSON line parses");

    let throughput = &report["throughput"];
    assert_eq!(throughput["readings"], 5000);
    assert_eq!(throughput["rounds"].as_array().map(Vec::len), Some(1));
    for key in ["ratio_median", "corrected_ratio_median", "raw_records_per_s", "dataflow_records_per_s"] {
        let value = throughput[key].as_f64().unwrap_or(f64::NAN);
        assert!(value > 0.0 && value.is_finite(), "{key} = {value}");
    }

    let latency = report["latency"].as_array().expect("latency rows");
    assert!(latency.len() >= 2, "{latency:?}");
    for row in latency {
        let count = row["count"].as_u64().unwrap_or(0);
        assert!(count > 0, "no latency samples: {row}");
        assert_eq!(row["missed"], 0, "{row}");
        let (p50, p99, max) = (
            row["p50_ms"].as_f64().unwrap(),
            row["p99_ms"].as_f64().unwrap(),
            row["max_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{row}");
    }
    // The pipeline waits for the watermark: at least the allowed lateness with the defaults.
    let defaults = &latency[0];
    assert_eq!(defaults["pipeline"], true);
    assert!(
        defaults["p50_ms"].as_f64().unwrap() >= defaults["allowed_lateness_ms"].as_f64().unwrap(),
        "{defaults}"
    );
}
