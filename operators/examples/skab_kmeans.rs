//! Offline study: the per-asset k-means detector (`millstream_operators::kmeans`) on SKAB.
//!
//! ```sh
//! cargo run --release -p millstream-operators --example skab_kmeans [-- SKAB_DIR [--predictions OUT]]
//! ```
//!
//! SKAB_DIR defaults to `$SKAB_DIR`, else `shared/data/skab` beside the workspace. For each of
//! the 34 labelled files (valve1/, valve2/, other/), the 8 sensors of a row are one feature
//! vector (SKAB's CSVs are already aligned, one row a second). A model is trained on what
//! SKAB allows: each file's first 400 rows (and/or `anomaly-free/anomaly-free.csv`), and the
//! rest is scored. F1, FAR and MAR are pooled over the test rows of all files, exactly as
//! `millstream eval` and `shared/eval/skab_score.py` count them. One configuration per line of
//! the table, the same for every file: nothing is tuned per file.
//!
//! Features are computed causally (a row only sees itself and earlier rows), so every variant
//! could run live. `--predictions OUT` writes the headline variant's predictions in SKAB's
//! layout (`OUT/valve1/0.csv`: `datetime;anomaly;changepoint`, test rows), for
//! `python3 shared/eval/skab_score.py OUT`.

use std::io::Write;
use std::path::{Path, PathBuf};

use millstream_operators::detector::{RobustZ, RobustZConfig};
use millstream_operators::kmeans::{self, KMeansConfig, Scaling};
use millstream_operators::outliers::Counts;

const TRAIN_ROWS: usize = 400;
const GROUPS: [&str; 3] = ["valve1", "valve2", "other"];
const SENSORS: usize = 8;
/// Temperature and Thermocouple: slow thermal states, not stationary over a SKAB run.
const THERMAL: [usize; 2] = [4, 5];

struct SkabFile {
    group: &'static str,
    name: String,
    datetimes: Vec<String>,
    /// rows × 8 sensors
    rows: Vec<Vec<f64>>,
    labels: Vec<bool>,
}

/// How a file's raw rows become feature rows.
#[derive(Clone, Copy, Debug)]
enum Features {
    /// The 8 sensor values as they are.
    Raw,
    /// Trailing moving average of each sensor over `ma` rows.
    Smoothed { ma: usize },
    /// Smoothed, and each sensor's change over `lag` rows of its moving average appended.
    WithDiffs { ma: usize, lag: usize },
    /// Smoothed fast sensors; the two thermal sensors enter as their change over `lag` rows
    /// (rate, not level).
    ThermalAsRate { ma: usize, lag: usize },
    /// Smoothed, without the two thermal sensors.
    NoThermal { ma: usize },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Training {
    /// Each file's first 400 rows (SKAB's split).
    PerFile,
    /// `anomaly-free.csv` only: one model for all files.
    AnomalyFree,
    /// `anomaly-free.csv` and the file's first 400 rows.
    Both,
}

#[derive(Clone, Copy, Debug)]
enum Detector {
    KMeans,
    /// The per-sensor robust_z detector (any sensor flagged ⇒ row flagged), warmed up on the
    /// training rows, as `millstream eval` runs it.
    RobustZ,
    /// Either of the two.
    Either,
}

#[derive(Clone, Copy, Debug)]
struct Variant {
    label: &'static str,
    detector: Detector,
    features: Features,
    training: Training,
    k: u32,
    scaling: Scaling,
    /// Score at which an episode opens.
    open: f64,
    /// Score below which it closes (hysteresis); `open` for none.
    close: f64,
}

impl Variant {
    const HEADLINE: Variant = Variant {
        label: "headline: fast sensors MA15, thermal as 30 s rate, k=4, threshold 0.8",
        detector: Detector::KMeans,
        features: Features::ThermalAsRate { ma: 15, lag: 30 },
        training: Training::PerFile,
        k: 4,
        scaling: Scaling::Robust,
        open: 0.8,
        close: 0.8,
    };
}

fn variants() -> Vec<Variant> {
    let h = Variant::HEADLINE;
    let v = |label, f: &dyn Fn(&mut Variant)| {
        let mut x = Variant { label, ..h };
        f(&mut x);
        x
    };
    vec![
        v("robust_z per sensor alone (existing detector)", &|x| x.detector = Detector::RobustZ),
        v("8 raw levels, k=4", &|x| x.features = Features::Raw),
        v("8 levels MA15, k=4", &|x| x.features = Features::Smoothed { ma: 15 }),
        v("8 levels MA15, k=4, mean/std scaling", &|x| {
            x.features = Features::Smoothed { ma: 15 };
            x.scaling = Scaling::MeanStd
        }),
        v("8 levels MA5, k=4", &|x| x.features = Features::Smoothed { ma: 5 }),
        v("8 levels MA30, k=4", &|x| x.features = Features::Smoothed { ma: 30 }),
        v("8 levels MA15 + 30 s differences of all 8, k=4", &|x| {
            x.features = Features::WithDiffs { ma: 15, lag: 30 }
        }),
        v("6 fast sensors MA15 (thermal left out), k=4", &|x| x.features = Features::NoThermal { ma: 15 }),
        h,
        v("  same, k=1", &|x| x.k = 1),
        v("  same, k=2", &|x| x.k = 2),
        v("  same, k=3", &|x| x.k = 3),
        v("  same, k=6", &|x| x.k = 6),
        v("  same, mean/std scaling", &|x| x.scaling = Scaling::MeanStd),
        v("  same, thermal rate over 60 s", &|x| x.features = Features::ThermalAsRate { ma: 15, lag: 60 }),
        v("  same, MA30", &|x| x.features = Features::ThermalAsRate { ma: 30, lag: 30 }),
        v("  same, threshold 0.7", &|x| {
            x.open = 0.7;
            x.close = 0.7
        }),
        v("  same, threshold 0.9", &|x| {
            x.open = 0.9;
            x.close = 0.9
        }),
        v("  same, hysteresis open 0.8 / close 0.6", &|x| x.close = 0.6),
        v("  same, hysteresis open 0.9 / close 0.7", &|x| {
            x.open = 0.9;
            x.close = 0.7
        }),
        v("  same, trained on anomaly-free.csv only", &|x| x.training = Training::AnomalyFree),
        v("  same, trained on anomaly-free.csv + first 400", &|x| x.training = Training::Both),
        v("  same, OR robust_z per sensor", &|x| x.detector = Detector::Either),
    ]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut predictions: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        if a == "--predictions" {
            predictions = Some(args.next().ok_or("--predictions needs a directory")?.into());
        } else {
            dir = Some(a.into());
        }
    }
    let dir = dir
        .or_else(|| std::env::var_os("SKAB_DIR").map(PathBuf::from))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/skab"));
    let files = load_skab(&dir)?;
    let free = load_csv(&dir.join("anomaly-free/anomaly-free.csv"), "anomaly-free", "anomaly-free", false)?;
    let test_rows: usize = files.iter().map(|f| f.rows.len() - TRAIN_ROWS).sum();
    println!(
        "SKAB at {}: {} files, {test_rows} test rows pooled (first {TRAIN_ROWS} rows of each file are training), \
         anomaly-free.csv {} rows",
        dir.display(),
        files.len(),
        free.rows.len()
    );
    println!("k-means defaults: {:?}", KMeansConfig::default());
    println!();
    println!("| variant | F1 | FAR % | MAR % | TP | FP | FN | TN |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for variant in variants() {
        let mut counts = Counts::default();
        for file in &files {
            let predicted = predict(file, &free, &variant)?;
            counts.add(&predicted, &file.labels, TRAIN_ROWS);
        }
        let (f1, far, mar) = counts.metrics();
        println!(
            "| {} | {f1:.3} | {far:.2} | {mar:.2} | {} | {} | {} | {} |",
            variant.label, counts.tp, counts.fp, counts.fn_, counts.tn
        );
    }
    println!();
    println!("published (SKAB leaderboard): Conv-AE F1 0.78 / FAR 13.55 % / MAR 28.02 %; MSET F1 0.78 / FAR 39.73 %;");
    println!("every row flagged: F1 0.70 / FAR 100 %.");

    // The headline variant per group, and an example explanation.
    println!();
    println!("headline variant by group:");
    for group in GROUPS {
        let mut counts = Counts::default();
        for file in files.iter().filter(|f| f.group == group) {
            counts.add(&predict(file, &free, &Variant::HEADLINE)?, &file.labels, TRAIN_ROWS);
        }
        let (f1, far, mar) = counts.metrics();
        println!("  {group:7} F1 {f1:.3}  FAR {far:5.2} %  MAR {mar:5.2} %");
    }
    if let Some(file) = files.iter().find(|f| f.group == "valve1") {
        let (names, rows) = features(file, Variant::HEADLINE.features);
        let model = kmeans::train(&rows[..TRAIN_ROWS], &names, &config(&Variant::HEADLINE))?;
        let at = file.labels.iter().position(|&l| l).unwrap_or(TRAIN_ROWS) + 150;
        let scored = kmeans::score(&model, &rows[at])?;
        println!();
        println!(
            "{}/{} row {at} ({}), score {:.3}: {}",
            file.group,
            file.name,
            file.datetimes[at],
            scored.score,
            kmeans::explain(&model, &scored, 3)
        );
        println!(
            "  model: k {} of {}, inertia {:.1}, silhouette {:?}, calibration {:?}, {} bytes encoded",
            model.metrics.k,
            model.metrics.k_requested,
            model.metrics.inertia,
            model.metrics.silhouette.map(|s| (s * 1000.0).round() / 1000.0),
            model.calibration,
            model.encode()?.len()
        );
    }
    if let Some(out) = predictions {
        for file in &files {
            write_predictions(&out, file, &predict(file, &free, &Variant::HEADLINE)?)?;
        }
        println!("\nheadline predictions written under {}", out.display());
    }
    Ok(())
}

fn config(v: &Variant) -> KMeansConfig {
    KMeansConfig { k: v.k, scaling: v.scaling, threshold: v.open, ..KMeansConfig::default() }
}

/// Per row of `file`: anomalous or not, under `variant`.
fn predict(file: &SkabFile, free: &SkabFile, v: &Variant) -> Result<Vec<bool>, Box<dyn std::error::Error>> {
    let n = file.rows.len();
    let kmeans_flags = if matches!(v.detector, Detector::KMeans | Detector::Either) {
        let (names, rows) = features(file, v.features);
        let mut training: Vec<Vec<f64>> = Vec::new();
        if matches!(v.training, Training::AnomalyFree | Training::Both) {
            training.extend(features(free, v.features).1);
        }
        if matches!(v.training, Training::PerFile | Training::Both) {
            training.extend(rows[..TRAIN_ROWS].iter().cloned());
        }
        let model = kmeans::train(&training, &names, &config(v))?;
        let mut open = false;
        rows.iter()
            .map(|r| {
                let s = kmeans::score(&model, r).map(|s| s.score).unwrap_or(0.0);
                open = if open { s >= v.close } else { s >= v.open };
                open
            })
            .collect()
    } else {
        vec![false; n]
    };
    let robust_flags = if matches!(v.detector, Detector::RobustZ | Detector::Either) {
        let config = RobustZConfig { warmup: TRAIN_ROWS as u32, ..RobustZConfig::default() };
        let mut flags = vec![false; n];
        for sensor in 0..SENSORS {
            let mut state = RobustZ::new();
            for (row, flag) in file.rows.iter().zip(flags.iter_mut()) {
                *flag |= state.observe(row[sensor], &config).severity.is_some();
            }
        }
        flags
    } else {
        vec![false; n]
    };
    Ok(kmeans_flags.iter().zip(&robust_flags).map(|(a, b)| *a || *b).collect())
}

/// Feature names and rows for `file`, computed causally.
fn features(file: &SkabFile, kind: Features) -> (Vec<String>, Vec<Vec<f64>>) {
    let sensor_names = [
        "Accelerometer1RMS",
        "Accelerometer2RMS",
        "Current",
        "Pressure",
        "Temperature",
        "Thermocouple",
        "Voltage",
        "Volume_Flow_RateRMS",
    ];
    let raw = &file.rows;
    let smoothed = |ma: usize| moving_average(raw, ma);
    let lagged_change =
        |m: &[Vec<f64>], i: usize, s: usize, lag: usize| m[i][s] - m[i.saturating_sub(lag)][s];
    match kind {
        Features::Raw => (sensor_names.iter().map(|s| s.to_string()).collect(), raw.clone()),
        Features::Smoothed { ma } => {
            (sensor_names.iter().map(|s| format!("{s}:ma{ma}")).collect(), smoothed(ma))
        }
        Features::WithDiffs { ma, lag } => {
            let m = smoothed(ma);
            let mut names: Vec<String> = sensor_names.iter().map(|s| format!("{s}:ma{ma}")).collect();
            names.extend(sensor_names.iter().map(|s| format!("{s}:ma{ma}:diff{lag}")));
            let rows = (0..m.len())
                .map(|i| {
                    m[i].iter().copied().chain((0..SENSORS).map(|s| lagged_change(&m, i, s, lag))).collect()
                })
                .collect();
            (names, rows)
        }
        Features::ThermalAsRate { ma, lag } => {
            let m = smoothed(ma);
            let fast: Vec<usize> = (0..SENSORS).filter(|s| !THERMAL.contains(s)).collect();
            let mut names: Vec<String> =
                fast.iter().map(|&s| format!("{}:ma{ma}", sensor_names[s])).collect();
            names.extend(THERMAL.iter().map(|&s| format!("{}:ma{ma}:diff{lag}", sensor_names[s])));
            let rows = (0..m.len())
                .map(|i| {
                    fast.iter()
                        .map(|&s| m[i][s])
                        .chain(THERMAL.iter().map(|&s| lagged_change(&m, i, s, lag)))
                        .collect()
                })
                .collect();
            (names, rows)
        }
        Features::NoThermal { ma } => {
            let m = smoothed(ma);
            let fast: Vec<usize> = (0..SENSORS).filter(|s| !THERMAL.contains(s)).collect();
            let names = fast.iter().map(|&s| format!("{}:ma{ma}", sensor_names[s])).collect();
            let rows = m.iter().map(|r| fast.iter().map(|&s| r[s]).collect()).collect();
            (names, rows)
        }
    }
}

/// Trailing moving average over `w` rows (fewer at the start of the file).
fn moving_average(rows: &[Vec<f64>], w: usize) -> Vec<Vec<f64>> {
    let w = w.max(1);
    let width = rows.first().map_or(0, Vec::len);
    let mut sum = vec![0.0; width];
    let mut out = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        for (s, v) in sum.iter_mut().zip(&rows[i]) {
            *s += v;
        }
        if i >= w {
            for (s, v) in sum.iter_mut().zip(&rows[i - w]) {
                *s -= v;
            }
        }
        let n = (i + 1).min(w) as f64;
        out.push(sum.iter().map(|s| s / n).collect());
    }
    out
}

fn load_skab(dir: &Path) -> Result<Vec<SkabFile>, Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    for group in GROUPS {
        let folder = dir.join(group);
        let mut names: Vec<String> = std::fs::read_dir(&folder)
            .map_err(|e| format!("cannot read {}: {e}", folder.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".csv"))
            .collect();
        names.sort_by_key(|n| n.trim_end_matches(".csv").parse::<u32>().unwrap_or(u32::MAX));
        for name in names {
            files.push(load_csv(&folder.join(&name), group, name.trim_end_matches(".csv"), true)?);
        }
    }
    if files.is_empty() {
        return Err(format!("no SKAB files under {}", dir.display()).into());
    }
    Ok(files)
}

fn load_csv(
    path: &Path,
    group: &'static str,
    name: &str,
    labelled: bool,
) -> Result<SkabFile, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().ok_or("empty file")?.split(';').collect();
    let expected = [
        "datetime",
        "Accelerometer1RMS",
        "Accelerometer2RMS",
        "Current",
        "Pressure",
        "Temperature",
        "Thermocouple",
        "Voltage",
        "Volume Flow RateRMS",
    ];
    if header.len() < expected.len() || header[..expected.len()] != expected {
        return Err(format!("{}: unexpected header {header:?}", path.display()).into());
    }
    let label = header.iter().position(|h| *h == "anomaly");
    if labelled && label.is_none() {
        return Err(format!("{}: no anomaly column", path.display()).into());
    }
    let mut file = SkabFile {
        group,
        name: name.to_owned(),
        datetimes: Vec::new(),
        rows: Vec::new(),
        labels: Vec::new(),
    };
    for (n, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(';').collect();
        let bad = || format!("{}: line {}", path.display(), n + 2);
        file.datetimes.push(fields.first().ok_or_else(bad)?.to_string());
        let row = (1..=SENSORS)
            .map(|i| fields.get(i).and_then(|v| v.parse::<f64>().ok()).ok_or_else(bad))
            .collect::<Result<Vec<f64>, String>>()?;
        file.rows.push(row);
        let truth = match label {
            Some(i) => fields.get(i).and_then(|v| v.parse::<f64>().ok()).ok_or_else(bad)? >= 0.5,
            None => false,
        };
        file.labels.push(truth);
    }
    Ok(file)
}

fn write_predictions(out: &Path, file: &SkabFile, predicted: &[bool]) -> std::io::Result<()> {
    let folder = out.join(file.group);
    std::fs::create_dir_all(&folder)?;
    let mut w = std::io::BufWriter::new(std::fs::File::create(folder.join(format!("{}.csv", file.name)))?);
    writeln!(w, "datetime;anomaly;changepoint")?;
    let mut previous = false;
    for (row, &p) in predicted.iter().enumerate().skip(TRAIN_ROWS) {
        let changepoint = if row == TRAIN_ROWS { p } else { p != previous };
        writeln!(w, "{};{};{}", file.datetimes[row], u8::from(p), u8::from(changepoint))?;
        previous = p;
    }
    w.flush()
}
