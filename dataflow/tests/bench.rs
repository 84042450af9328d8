//! `millstream bench`, small: it generates its input, times every configuration and prints
//! each ratio as a median with the range of the rounds.

mod common;

use common::run_ok;

/// The figure after `label = `: `median (rounds min–max)`.
fn ratio(stdout: &str, label: &str) -> (f64, f64, f64) {
    let line =
        stdout.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no {label:?} in {stdout}"));
    let figure = line.split(" = ").nth(1).unwrap_or_else(|| panic!("no figure in {line:?}"));
    let (median, range) = figure.split_once(" (rounds ").unwrap_or_else(|| panic!("no range in {line:?}"));
    let range = range.split(')').next().unwrap();
    let (min, max) = range.split_once('–').unwrap_or_else(|| panic!("bad range in {line:?}"));
    let parse = |s: &str| s.trim().parse::<f64>().unwrap_or_else(|e| panic!("{s:?} in {line:?}: {e}"));
    (parse(median), parse(min), parse(max))
}

#[test]
fn bench_reports_every_ratio_with_its_range() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().expect("a UTF-8 temporary path");
    let out = run_ok(&["bench", "--readings", "20000", "--repeat", "3", "--dir", dir]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("input: 20000 readings"), "{stdout}");
    assert!(stdout.contains("per-round ratios over 3 rounds"), "{stdout}");
    for label in ["1 worker / loop", "2 workers / 1 worker", "machine ceiling", "skeleton pipeline, 1 worker"]
    {
        let (median, min, max) = ratio(&stdout, label);
        assert!(median.is_finite() && 0.0 < min && min <= median && median <= max, "{label}: {stdout}");
    }
}
