//! `millstream report` on the real binary: a simulated run's output plotted as PNG and SVG,
//! the console table, the same report from PostgreSQL, and clear errors.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use millstream_testkit::TestPostgres;

const ASSET: &str = "line1-pump-00";
const SENSORS: [&str; 5] = ["current", "flow", "pressure", "temperature", "vibration"];
const SOURCE: &str = "simulate:assets=1,steps=600,seed=3";
/// Default width, and 80 (header) + 5 × 180 (panels) + 40 (time axis).
const SIZE: (u32, u32) = (1200, 1020);

/// A simulated run with scores, in `dir/out`; returns `jsonl:DIR`.
fn simulated_run(dir: &Path) -> String {
    let out = dir.join("out");
    run_ok(&["run", "--source", SOURCE, "--sink", &format!("jsonl:{}", out.display()), "--emit-scores"]);
    format!("jsonl:{}", out.display())
}

fn report(args: &[&str]) -> Output {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    millstream().args(&all).output().expect("millstream starts")
}

fn report_ok(args: &[&str]) -> String {
    let out = report(args);
    assert!(
        out.status.success(),
        "millstream report {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn report_err(args: &[&str]) -> String {
    let out = report(args);
    assert!(!out.status.success(), "millstream report {args:?} should fail");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("millstream: error: "), "{stderr}");
    stderr
}

/// The table's rows: sensor → its cells.
fn table_rows(table: &str) -> Vec<Vec<String>> {
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(
        header,
        ["sensor", "readings", "first", "last", "min", "mean", "max", "anomalies", "episodes", "late"]
    );
    lines.map(|l| l.split_whitespace().map(str::to_owned).collect()).collect()
}

fn assert_table_lists_the_asset(table: &str, scores: &[serde_json::Value], anomalies: &[serde_json::Value]) {
    let rows = table_rows(table);
    let listed: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let expected: Vec<String> = SENSORS.iter().map(|s| format!("{ASSET}/{s}")).collect();
    assert_eq!(listed, expected, "{table}");
    for row in &rows {
        let readings = scores.iter().filter(|s| s["sensor_id"] == row[0].as_str()).count();
        let flagged = anomalies.iter().filter(|a| a["sensor_id"] == row[0].as_str()).count();
        assert_eq!(row[1], readings.to_string(), "readings of {}", row[0]);
        assert_eq!(row[7], flagged.to_string(), "anomalies of {}", row[0]);
        assert_eq!(row[2], "2026-03-01T00:00:00Z", "{table}");
    }
}

#[test]
fn png_and_svg_of_an_asset_with_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let from = simulated_run(dir.path());
    let out = dir.path().join("out");
    let scores = read_json(&out.join("scores.jsonl"));
    let anomalies = read_json(&out.join("anomalies.jsonl"));
    assert!(!anomalies.is_empty(), "the seed has anomalies to shade");

    let png_path = dir.path().join("report.png");
    let table = report_ok(&["--from", &from, "--asset", ASSET, "--out", png_path.to_str().unwrap()]);
    assert_table_lists_the_asset(&table, &scores, &anomalies);

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png_path).unwrap()));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a sane size")];
    let frame = reader.next_frame(&mut pixels).expect("PNG data decodes");
    assert_eq!((frame.width, frame.height), SIZE);
    let pixels = &pixels[..frame.buffer_size()];
    let step = frame.color_type.samples();
    let colours: std::collections::BTreeSet<&[u8]> = pixels.chunks(step).collect();
    assert!(colours.len() > 10, "the image is drawn, not blank: {} colours", colours.len());
    // Anomaly markers (red) and the readings' line (blue) are there.
    let has = |want: fn(&[u8]) -> bool| pixels.chunks(step).any(want);
    assert!(has(|p| p[0] > 180 && p[1] < 80 && p[2] < 80), "red anomaly markers");
    assert!(has(|p| p[2] > 150 && p[0] < 80), "blue readings");

    let svg_path = dir.path().join("report.svg");
    let again = report_ok(&["--from", &from, "--asset", ASSET, "--out", svg_path.to_str().unwrap()]);
    assert_eq!(again, table, "the table does not depend on the format");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(&format!("width=\"{}\" height=\"{}\"", SIZE.0, SIZE.1)));
    assert!(svg.contains("<polyline") || svg.contains("<path"), "the readings are drawn as lines");
    for sensor in SENSORS {
        assert!(svg.contains(&format!("{ASSET}/{sensor}")), "the panel of {sensor} is named");
    }
    assert!(svg.contains("anomaly episode"), "the legend is there");
}

#[test]
fn one_sensor_and_a_time_range() {
    let dir = tempfile::tempdir().unwrap();
    let from = simulated_run(dir.path());
    let out = dir.path().join("one.svg");
    let table = report_ok(&[
        "--from",
        &from,
        "--sensor",
        &format!("{ASSET}/flow"),
        "--from-ts",
        "2026-03-01T00:02:00Z",
        "--to-ts",
        "2026-03-01T00:03:59Z",
        "--out",
        out.to_str().unwrap(),
    ]);
    let rows = table_rows(&table);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0][..4],
        [format!("{ASSET}/flow"), "120".into(), "2026-03-01T00:02:00Z".into(), "2026-03-01T00:03:59Z".into()]
    );
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(svg.contains("height=\"300\""), "one panel: 80 + 180 + 40");
}

#[test]
fn errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let from = simulated_run(dir.path());
    let png = dir.path().join("x.png");
    let png = png.to_str().unwrap();

    let e = report_err(&["--from", &from, "--sensor", "line9-pump-99/flow", "--out", png]);
    assert!(e.contains("no sensor `line9-pump-99/flow`"), "{e}");
    assert!(e.contains(&format!("{ASSET}/vibration")), "lists the available sensors: {e}");
    let e = report_err(&["--from", &from, "--sensor", ASSET, "--out", png]);
    assert!(e.contains(&format!("use --asset {ASSET}")), "{e}");
    let e = report_err(&["--from", &from, "--asset", "line9-pump-99", "--out", png]);
    assert!(e.contains("no asset `line9-pump-99`") && e.contains(ASSET), "{e}");
    assert!(!Path::new(png).exists(), "no image on error");

    let e =
        report_err(&["--from", &from, "--asset", ASSET, "--from-ts", "2030-01-01T00:00:00Z", "--out", png]);
    assert!(e.contains("no readings of asset") && e.contains("its data spans 2026-03-01T00:00:00Z"), "{e}");
    let e = report_err(&[
        "--from",
        &from,
        "--asset",
        ASSET,
        "--from-ts",
        "2026-03-01T00:05:00Z",
        "--to-ts",
        "2026-03-01T00:04:00Z",
        "--out",
        png,
    ]);
    assert!(e.contains("is after --to-ts"), "{e}");

    let e = report_err(&["--from", &from, "--asset", ASSET, "--out", "x.jpg"]);
    assert!(e.contains("unsupported --out extension `.jpg`"), "{e}");

    let bare = dir.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    std::fs::write(bare.join("anomalies.jsonl"), "").unwrap();
    let e = report_err(&["--from", &format!("jsonl:{}", bare.display()), "--asset", ASSET, "--out", png]);
    assert!(e.contains("scores.jsonl not found") && e.contains("--emit-scores"), "{e}");
    let e = report_err(&["--from", "jsonl:/nonexistent/dir", "--asset", ASSET, "--out", png]);
    assert!(e.contains("no such directory"), "{e}");
    let e = report_err(&["--from", "kafka://localhost:9092/readings", "--asset", ASSET, "--out", png]);
    assert!(e.contains("expected jsonl:DIR or postgres://"), "{e}");
}

#[test]
fn the_same_report_from_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let from = simulated_run(dir.path());
    let jsonl_table =
        report_ok(&["--from", &from, "--asset", ASSET, "--out", dir.path().join("a.svg").to_str().unwrap()]);

    let pg = TestPostgres::start().expect("a throwaway PostgreSQL");
    let url = pg.create_database("report").unwrap();
    run_ok(&["run", "--source", SOURCE, "--sink", &url, "--migrate"]);
    let png = dir.path().join("pg.png");
    let pg_table = report_ok(&["--from", &url, "--asset", ASSET, "--out", png.to_str().unwrap()]);
    assert_eq!(pg_table, jsonl_table, "PostgreSQL holds what the JSONL run wrote");
    assert!(std::fs::metadata(&png).unwrap().len() > 10_000);

    let e = report_err(&["--from", &url, "--sensor", "nope/flow", "--out", png.to_str().unwrap()]);
    assert!(e.contains("no sensor `nope/flow`") && e.contains(&format!("{ASSET}/current")), "{e}");
    let e = report_err(&[
        "--from",
        &url,
        "--asset",
        ASSET,
        "--to-ts",
        "2025-01-01T00:00:00Z",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(e.contains("no readings of asset") && e.contains("its data spans"), "{e}");
}
