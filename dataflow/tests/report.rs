//! `millstream report` on the real binary: a simulated run's output plotted as PNG and SVG,
//! the console table, drift events marked (from a hand-written run directory and from
//! PostgreSQL), the same report from PostgreSQL, and clear errors.

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
        [
            "sensor",
            "readings",
            "first",
            "last",
            "min",
            "mean",
            "max",
            "anomalies",
            "episodes",
            "late",
            "drift"
        ]
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
        assert_eq!(row[10], "0", "a run without drift detection has no drift events: {table}");
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

const DRIFT_ASSET: &str = "pump-7";

/// `2026-03-01T00:MM:SSZ` for `s` seconds after midnight (s < 3600).
fn at(s: u64) -> String {
    format!("2026-03-01T00:{:02}:{:02}Z", s / 60, s % 60)
}

fn drift_line(
    sensor: Option<&str>,
    feature: Option<&str>,
    statistic: &str,
    value: f64,
    end_s: u64,
) -> String {
    let mut event = serde_json::json!({
        "event_id": format!("{statistic}-{end_s}-{}", sensor.or(feature).unwrap_or_default()),
        "asset_id": sensor.map_or(DRIFT_ASSET, |s| s.rsplit_once('/').unwrap().0),
        "statistic": statistic,
        "value": value,
        "threshold": 0.25,
        "window_start": at(end_s - 120),
        "window_end": at(end_s),
        "count": 120,
        "model_version": "pump@v1",
    });
    if let Some(sensor) = sensor {
        event["sensor_id"] = sensor.into();
    }
    if let Some(feature) = feature {
        event["feature"] = feature.into();
    }
    event.to_string()
}

/// A run directory written by hand: `pump-7`'s flow and temp for 10 minutes, one anomaly, and
/// drift events: on flow at 00:05 a PSI and a KS event of one slide (one marker), on temp a
/// mean shift down at 00:03 and, at 00:08, a feature window (`temp:ma15`) of the asset; and
/// one event of another pump.
fn drift_run(dir: &Path) -> String {
    let out = dir.join("drift-run");
    std::fs::create_dir_all(&out).unwrap();
    let mut scores = String::new();
    for s in 0..600u64 {
        for (sensor, value) in [("flow", 40.0 + (s % 7) as f64), ("temp", 60.0 + (s / 60) as f64)] {
            scores.push_str(
                &serde_json::json!({
                    "sensor_id": format!("{DRIFT_ASSET}/{sensor}"),
                    "asset_id": DRIFT_ASSET,
                    "ts": at(s),
                    "value": value,
                    "score": 0.1,
                    "late": false,
                })
                .to_string(),
            );
            scores.push('\n');
        }
    }
    std::fs::write(out.join("scores.jsonl"), scores).unwrap();
    let anomaly = serde_json::json!({
        "sensor_id": format!("{DRIFT_ASSET}/flow"), "asset_id": DRIFT_ASSET, "ts": at(200),
        "value": 46.0, "score": 0.97,
    });
    std::fs::write(out.join("anomalies.jsonl"), format!("{anomaly}\n")).unwrap();
    let flow = format!("{DRIFT_ASSET}/flow");
    let temp = format!("{DRIFT_ASSET}/temp");
    let lines = [
        drift_line(Some(&flow), None, "psi", 0.42, 300),
        drift_line(Some(&flow), None, "ks", 0.31, 300),
        drift_line(Some(&temp), None, "mean_shift", -14.5, 180),
        drift_line(None, Some("temp:ma15"), "wasserstein", 0.73, 480),
        drift_line(Some("pump-8/flow"), None, "psi", 0.9, 300),
    ];
    std::fs::write(out.join("drift.jsonl"), lines.join("\n") + "\n").unwrap();
    format!("jsonl:{}", out.display())
}

/// The drift column of each row: sensor → count.
fn drift_counts(table: &str) -> Vec<(String, String)> {
    table_rows(table).into_iter().map(|row| (row[0].clone(), row[10].clone())).collect()
}

fn counts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(s, n)| (format!("{DRIFT_ASSET}/{s}"), n.to_string())).collect()
}

#[test]
fn drift_events_are_marked_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let from = drift_run(dir.path());
    let svg_path = dir.path().join("drift.svg");
    let svg_out = svg_path.to_str().unwrap();

    let table = report_ok(&["--from", &from, "--asset", DRIFT_ASSET, "--out", svg_out]);
    assert_eq!(drift_counts(&table), counts(&[("flow", "2"), ("temp", "2")]), "{table}");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    // The two flow events of one slide share a marker, named by the stronger.
    assert!(svg.contains("psi 0.42 and 1 more"), "merged flow marker");
    assert!(!svg.contains("ks 0.31"), "the weaker event is counted, not printed over the stronger");
    assert!(svg.contains("mean_shift down"), "sequential detection on temp");
    assert!(svg.contains("wasserstein 0.73 (temp:ma15)"), "feature event on its sensor's panel");
    assert!(!svg.contains("0.90"), "another pump's drift stays out");
    assert!(svg.contains("drift event (at its window end)"), "the legend has the drift entry");
    assert!(svg.contains("4 drift events"), "the subtitle counts them");
    assert!(svg.contains("2 drift events"), "each caption counts its panel's");

    // A PNG shows the purple (drift) lines.
    let png_path = dir.path().join("drift.png");
    let again = report_ok(&["--from", &from, "--asset", DRIFT_ASSET, "--out", png_path.to_str().unwrap()]);
    assert_eq!(again, table);
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png_path).unwrap()));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a sane size")];
    let frame = reader.next_frame(&mut pixels).expect("PNG data decodes");
    let step = frame.color_type.samples();
    // Purple: blue well above green, red above green (not the blue readings, the red anomalies
    // or the pink episode shading).
    let purple = pixels[..frame.buffer_size()]
        .chunks(step)
        .filter(|p| p[2] as i32 > p[1] as i32 + 40 && p[0] as i32 > p[1] as i32 + 20)
        .count();
    assert!(purple > 300, "drift lines and labels are drawn: {purple} purple pixels");

    // The time range applies to the window ends; one sensor gets its own and its features'.
    let table =
        report_ok(&["--from", &from, "--asset", DRIFT_ASSET, "--from-ts", &at(240), "--out", svg_out]);
    assert_eq!(drift_counts(&table), counts(&[("flow", "2"), ("temp", "1")]), "{table}");
    let table = report_ok(&["--from", &from, "--sensor", &format!("{DRIFT_ASSET}/temp"), "--out", svg_out]);
    assert_eq!(drift_counts(&table), counts(&[("temp", "2")]), "{table}");
    let table = report_ok(&["--from", &from, "--sensor", &format!("{DRIFT_ASSET}/flow"), "--out", svg_out]);
    assert_eq!(drift_counts(&table), counts(&[("flow", "2")]), "{table}");

    // No drift.jsonl (a run without drift detection, or an older one): no drift, no legend entry.
    let run_dir = Path::new(from.strip_prefix("jsonl:").unwrap());
    let drift_file = run_dir.join("drift.jsonl");
    let good = std::fs::read_to_string(&drift_file).unwrap();
    std::fs::remove_file(&drift_file).unwrap();
    let table = report_ok(&["--from", &from, "--asset", DRIFT_ASSET, "--out", svg_out]);
    assert_eq!(drift_counts(&table), counts(&[("flow", "0"), ("temp", "0")]), "{table}");
    assert!(!std::fs::read_to_string(&svg_path).unwrap().contains("drift event"));

    // A malformed line is an error naming the file and the line, and no image is written.
    let png = dir.path().join("bad.png");
    let png = png.to_str().unwrap();
    for (bad, why) in [
        ("{\"asset_id\": \"pump-7\", \"sensor_id\": \"pump-7/flow\"}", "missing field"),
        ("not json", "not a drift.jsonl line"),
        (
            r#"{"asset_id":"pump-7","statistic":"psi","value":1,"threshold":0.25,"window_end":"2026-03-01T00:05:00Z"}"#,
            "needs a sensor_id or a feature",
        ),
        (
            r#"{"asset_id":"pump-7","sensor_id":"pump-7/flow","statistic":"psi","value":1,"threshold":0.25,"window_end":"yesterday"}"#,
            "window_end",
        ),
    ] {
        let lines: Vec<&str> = good.lines().collect();
        std::fs::write(&drift_file, format!("{}\n{bad}\n{}\n", lines[0], lines[1])).unwrap();
        let e = report_err(&["--from", &from, "--asset", DRIFT_ASSET, "--out", png]);
        assert!(e.contains(&format!("{}:2", drift_file.display())), "names the file and line: {e}");
        assert!(e.contains(why), "says what is wrong ({why}): {e}");
        assert!(!Path::new(png).exists(), "no image on error");
    }
}

/// A real drift run, by `tests/drift.rs`'s recipe with one pump and a `file://` model store:
/// `pump-0` moves from operating mode A to mode B at +1800 s, its model was trained on mode A.
/// The report draws every drift event the run wrote on one of the pump's panels.
///
/// With `MILLSTREAM_REPORT_EXAMPLE=FILE.png` it also writes the report there: the README's
/// drift picture is `MILLSTREAM_REPORT_EXAMPLE=$PWD/docs/report-drift-example.png cargo test
/// -p millstream --test report -- a_real_drift_run`.
#[test]
fn a_real_drift_run_is_marked() {
    use common::models::{samples, write_samples, Pump};
    let dir = tempfile::tempdir().unwrap();
    let mut pump = Pump::new("pump-0", 0.0, 100);
    pump.mode_b_from = Some(1800);
    let input = dir.path().join("pump.jsonl");
    write_samples(&input, &samples(std::slice::from_ref(&pump), START_MS, 0, 4800));
    let training = dir.path().join("training.jsonl");
    write_samples(&training, &samples(&[pump], START_MS, 0, 1200));
    let store = format!("file://{}", dir.path().join("store").display());
    let training = format!("file:{}", training.display());
    run_ok(&["train", "--input", &training, "--store", &store, "--name", "pump"]);
    let config = dir.path().join("drift.toml");
    std::fs::write(
        &config,
        format!(
            "[models]\nstore = {{ url = \"{store}\" }}\ndefault = \"pump\"\n\
             [models.drift]\nenabled = true\nwindow_ms = 600000\nslide_ms = 60000\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    run_ok(&[
        "run",
        "--source",
        &format!("file:{}", input.display()),
        "--sink",
        &format!("jsonl:{}", out.display()),
        "--emit-scores",
        "--allowed-lateness-ms",
        "1000",
        "--config",
        config.to_str().unwrap(),
    ]);
    let drift = read_json(&out.join("drift.jsonl"));
    assert!(!drift.is_empty(), "the mode change raises drift events");
    for event in &drift {
        let subject = event["sensor_id"].as_str().or(event["feature"].as_str()).unwrap_or("?");
        eprintln!("{} {subject} {} {}", event["window_end"], event["statistic"], event["value"]);
    }

    // Relative to the run's directory, so that the picture's subtitle reads `jsonl:out`.
    let png = match std::env::var_os("MILLSTREAM_REPORT_EXAMPLE") {
        Some(path) => std::path::PathBuf::from(path),
        None => dir.path().join("drift.png"),
    };
    let output = millstream()
        .current_dir(dir.path())
        .args(["report", "--from", "jsonl:out", "--asset", "pump-0", "--out", png.to_str().unwrap()])
        .output()
        .expect("millstream starts");
    assert!(output.status.success(), "report failed: {}", String::from_utf8_lossy(&output.stderr));
    let table = String::from_utf8(output.stdout).unwrap();
    let drawn: usize = table_rows(&table).iter().map(|row| row[10].parse::<usize>().unwrap()).sum();
    assert_eq!(drawn, drift.len(), "every drift event is on a panel: {table}");
    let from = format!("jsonl:{}", out.display());
    let svg = dir.path().join("drift.svg");
    report_ok(&["--from", &from, "--asset", "pump-0", "--out", svg.to_str().unwrap()]);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("drift event (at its window end)") && svg.contains("psi "), "markers are drawn");
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

    // Drift events from the drift_events table, placed as from drift.jsonl.
    let insert = |sensor: &str, feature: &str, statistic: &str, value: f64, end: &str| {
        let sql = format!(
            "INSERT INTO drift_events (event_id, asset_id, sensor_id, feature, statistic, value, threshold, \
             window_start, window_end, count, model_version) VALUES (md5(random()::text), '{ASSET}', \
             NULLIF('{sensor}', ''), NULLIF('{feature}', ''), '{statistic}', {value}, 0.25, \
             '{end}'::timestamptz - interval '10 minutes', '{end}', 600, 'pump@v1')"
        );
        psql(&url, &sql);
    };
    insert(&format!("{ASSET}/vibration"), "", "psi", 0.57, "2026-03-01T00:06:00Z");
    insert("", "flow:ma15", "ks", 0.4, "2026-03-01T00:07:00Z");
    insert("other-pump/flow", "", "psi", 0.9, "2026-03-01T00:07:00Z");
    let svg = dir.path().join("pg-drift.svg");
    let table = report_ok(&["--from", &url, "--asset", ASSET, "--out", svg.to_str().unwrap()]);
    let drift: Vec<(String, String)> =
        table_rows(&table).into_iter().map(|row| (row[0].clone(), row[10].clone())).collect();
    let expected: Vec<(String, String)> = SENSORS
        .iter()
        .map(|s| (format!("{ASSET}/{s}"), if ["flow", "vibration"].contains(s) { "1" } else { "0" }.into()))
        .collect();
    assert_eq!(drift, expected, "{table}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("psi 0.57") && svg.contains("ks 0.40 (flow:ma15)"), "markers from PostgreSQL");

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
    // A database without the drift_events table (migrated before 0002) says so.
    psql(&url, "DROP TABLE drift_events");
    let e = report_err(&["--from", &url, "--asset", ASSET, "--out", png.to_str().unwrap()]);
    assert!(e.contains("no drift_events table") && e.contains("millstream migrate"), "{e}");
}
