//! Synthetic streams for the sequential change detectors, and millstream's detector run on them
//! (the comparison with River is `bench/drift/river_compare.py`).
//!
//! ```sh
//! cargo run --release -p millstream-operators --example drift_streams -- --out DIR [--seeds N]
//! cargo run --release -p millstream-operators --example drift_streams -- --detect DIR [--config JSON]
//! cargo run --release -p millstream-operators --example drift_streams -- \
//!     --false-alarms RUNS [--ar1 RHO] [--config JSON]
//! ```
//!
//! `--out` writes, for each stream and seed 1..=N (default 20), `DIR/<stream>_<seed>.csv` (one
//! value a line, exactly as printed by Rust, so that every reader sees the same f64) and
//! `DIR/manifest.json` (the parameters and each stream's change point). Every stream has
//! 10 000 values of N(10, 1) noise (μ = 10, σ = 1; a sensor level, River's absolute thresholds
//! read in units of σ); the change starts at value 5 000:
//!
//! | stream     | change from value 5 000                              |
//! |------------|------------------------------------------------------|
//! | `abrupt`   | mean + 2 σ                                           |
//! | `small`    | mean + 0.5 σ                                         |
//! | `ramp`     | mean rises linearly by 2 σ over 2 000 values, then stays |
//! | `variance` | σ → 2 σ, the mean unchanged                          |
//! | `none`     | nothing (no change point)                            |
//!
//! The noise is Xoshiro256++ seeded with `stream index << 32 | seed` (Box–Muller), so each
//! stream and seed is reproducible and independent of the others.
//!
//! `--detect` runs a fresh [`ChangeDetector`] (the default [`SequentialConfig`], or the fields
//! given in `--config` as JSON, e.g. `'{"arl0": 3e6}'`) over every file of the manifest and
//! prints one JSON document: the configuration and, per stream and seed, the indices (0-based)
//! and kinds of the detections.
//!
//! `--false-alarms` measures the in-control run length: RUNS stationary streams of 10 000
//! values (seeds apart from the benchmark's), optionally AR(1) with coefficient RHO and unit
//! variance, and prints the alarms per value tested (after warm-ups).

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use millstream_operators::drift::sequential::{ChangeDetector, SequentialConfig};
use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

/// Values per stream.
const SAMPLES: usize = 10_000;
/// First value of the change (the ramp's start).
const CHANGE_POINT: usize = 5_000;
/// Length of the ramp, in values.
const RAMP: usize = 2_000;
/// Level and noise σ before the change.
const MEAN: f64 = 10.0;
const SIGMA: f64 = 1.0;
/// Seeds per stream unless `--seeds` says otherwise.
const DEFAULT_SEEDS: u64 = 20;
/// Stream index of the `--false-alarms` noise, apart from the benchmark's streams.
const FALSE_ALARM_STREAM: u64 = 1_000;

/// How a stream's value at `index` is made from unit normal noise.
#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    description: &'static str,
    change_point: Option<usize>,
    value: fn(usize, f64) -> f64,
}

/// 0 before the change point, 1 from it on.
fn after(index: usize) -> f64 {
    if index >= CHANGE_POINT {
        1.0
    } else {
        0.0
    }
}

const SHAPES: [Shape; 5] = [
    Shape {
        name: "abrupt",
        description: "mean + 2 sigma from the change point",
        change_point: Some(CHANGE_POINT),
        value: |i, e| MEAN + SIGMA * (e + 2.0 * after(i)),
    },
    Shape {
        name: "small",
        description: "mean + 0.5 sigma from the change point",
        change_point: Some(CHANGE_POINT),
        value: |i, e| MEAN + SIGMA * (e + 0.5 * after(i)),
    },
    Shape {
        name: "ramp",
        description: "mean rises linearly by 2 sigma over 2000 values from the change point, then stays",
        change_point: Some(CHANGE_POINT),
        value: |i, e| {
            let progress = ((i as f64 - CHANGE_POINT as f64) / RAMP as f64).clamp(0.0, 1.0);
            MEAN + SIGMA * (e + 2.0 * progress)
        },
    },
    Shape {
        name: "variance",
        description: "sigma doubles from the change point, the mean unchanged",
        change_point: Some(CHANGE_POINT),
        value: |i, e| MEAN + SIGMA * e * (1.0 + after(i)),
    },
    Shape {
        name: "none",
        description: "stationary, no change",
        change_point: None,
        value: |_, e| MEAN + SIGMA * e,
    },
];

/// Unit normal noise: Xoshiro256++ and Box–Muller (both values of each pair are used).
struct Normal {
    rng: Xoshiro256PlusPlus,
    spare: Option<f64>,
}

impl Normal {
    fn new(stream: u64, seed: u64) -> Self {
        Normal { rng: Xoshiro256PlusPlus::seed_from_u64(stream << 32 | seed), spare: None }
    }

    /// Uniform in (0, 1): never 0, so the logarithm is finite.
    fn uniform(&mut self) -> f64 {
        ((self.rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn sample(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let radius = (-2.0 * self.uniform().ln()).sqrt();
        let angle = std::f64::consts::TAU * self.uniform();
        self.spare = Some(radius * angle.sin());
        radius * angle.cos()
    }
}

fn generate(shape_index: usize, seed: u64) -> Vec<f64> {
    let shape = SHAPES[shape_index];
    let mut noise = Normal::new(shape_index as u64, seed);
    (0..SAMPLES).map(|i| (shape.value)(i, noise.sample())).collect()
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    samples: usize,
    mean: f64,
    sigma: f64,
    seeds: u64,
    streams: Vec<ManifestStream>,
}

#[derive(Serialize, Deserialize)]
struct ManifestStream {
    name: String,
    description: String,
    /// First value of the change; `None` for the stream without change.
    change_point: Option<usize>,
    /// One file per seed, relative to the manifest: (seed, file).
    files: Vec<(u64, String)>,
}

#[derive(Serialize)]
struct Detections {
    stream: String,
    seed: u64,
    detections: Vec<usize>,
    kinds: Vec<String>,
}

fn write_streams(dir: &Path, seeds: u64) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut streams = Vec::new();
    for (index, shape) in SHAPES.iter().enumerate() {
        let mut files = Vec::new();
        for seed in 1..=seeds {
            let file = format!("{}_{seed}.csv", shape.name);
            let path = dir.join(&file);
            let mut out =
                BufWriter::new(fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?);
            for value in generate(index, seed) {
                writeln!(out, "{value}").map_err(|e| format!("{}: {e}", path.display()))?;
            }
            out.flush().map_err(|e| format!("{}: {e}", path.display()))?;
            files.push((seed, file));
        }
        streams.push(ManifestStream {
            name: shape.name.to_string(),
            description: shape.description.to_string(),
            change_point: shape.change_point,
            files,
        });
    }
    let manifest = Manifest { samples: SAMPLES, mean: MEAN, sigma: SIGMA, seeds, streams };
    let path = dir.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())?;
    fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("wrote {} streams x {seeds} seeds to {}", SHAPES.len(), dir.display());
    Ok(())
}

fn read_values(path: &Path) -> Result<Vec<f64>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(n, line)| line.trim().parse().map_err(|e| format!("{}:{}: {e}", path.display(), n + 1)))
        .collect()
}

fn detect(dir: &Path, config: &SequentialConfig) -> Result<(), String> {
    let path = dir.join("manifest.json");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut runs = Vec::new();
    for stream in &manifest.streams {
        for (seed, file) in &stream.files {
            let mut detector = ChangeDetector::new(config);
            let mut run = Detections {
                stream: stream.name.clone(),
                seed: *seed,
                detections: Vec::new(),
                kinds: Vec::new(),
            };
            for (index, value) in read_values(&dir.join(file))?.into_iter().enumerate() {
                if let Some(change) = detector.update(value) {
                    run.detections.push(index);
                    run.kinds.push(format!("{:?}", change.kind));
                }
            }
            runs.push(run);
        }
    }
    let out = serde_json::json!({ "detector": "millstream", "config": config, "runs": runs });
    println!("{out}");
    Ok(())
}

fn false_alarms(runs: u64, rho: f64, config: &SequentialConfig) {
    let innovation = (1.0 - rho * rho).sqrt();
    let (mut alarms, mut tested) = (0u64, 0u64);
    for run in 0..runs {
        let mut noise = Normal::new(FALSE_ALARM_STREAM, run);
        let mut detector = ChangeDetector::new(config);
        let mut e = noise.sample();
        for _ in 0..SAMPLES {
            e = rho * e + innovation * noise.sample();
            tested += u64::from(detector.is_warm());
            alarms += u64::from(detector.update(MEAN + SIGMA * e).is_some());
        }
    }
    let per_value = alarms as f64 / tested as f64;
    println!(
        "{runs} stationary streams of {SAMPLES} values (AR(1) rho = {rho}): {alarms} false alarms \
         in {tested} values tested = {per_value:.3e} per value (run length ~ {:.3e})",
        1.0 / per_value
    );
}

fn main() {
    if let Err(e) = run() {
        eprintln!("drift_streams: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let option = |name: &str| args.iter().position(|a| a == name).map(|i| args.get(i + 1).cloned());
    let parse = |name: &str| -> Result<Option<String>, String> {
        option(name).map(|value| value.ok_or_else(|| format!("{name} needs a value"))).transpose()
    };
    let config: SequentialConfig = match parse("--config")? {
        Some(json) => serde_json::from_str(&json).map_err(|e| format!("--config: {e}"))?,
        None => SequentialConfig::default(),
    };
    config.validate()?;
    if let Some(dir) = parse("--out")? {
        let seeds = match parse("--seeds")? {
            Some(n) => n.parse().map_err(|e| format!("--seeds: {e}"))?,
            None => DEFAULT_SEEDS,
        };
        write_streams(&PathBuf::from(dir), seeds)
    } else if let Some(dir) = parse("--detect")? {
        detect(&PathBuf::from(dir), &config)
    } else if let Some(runs) = parse("--false-alarms")? {
        let runs = runs.parse().map_err(|e| format!("--false-alarms: {e}"))?;
        let rho = match parse("--ar1")? {
            Some(r) => r.parse().map_err(|e| format!("--ar1: {e}"))?,
            None => 0.0,
        };
        if !(-1.0 < rho && rho < 1.0) {
            return Err(format!("--ar1 must be in (-1, 1), got {rho}"));
        }
        false_alarms(runs, rho, &config);
        Ok(())
    } else {
        Err("usage: drift_streams --out DIR [--seeds N] | --detect DIR [--config JSON] | \
             --false-alarms RUNS [--ar1 RHO] [--config JSON]"
            .to_string())
    }
}
