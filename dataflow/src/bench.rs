//! `millstream bench`: end-to-end throughput of file → null at 1 and 2 workers, against a
//! hand-written single loop doing the same decode + validate + score work with no timely.
//!
//! Every measurement is a fresh child process (so peak RSS is per configuration), and the
//! configurations are interleaved over the repetitions so that machine noise hits them alike.
//! Figures are ratios within one run: absolute rates on a shared machine mean little.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use millstream_connectors::simulate::SimPayload;
use millstream_connectors::simulate::{Simulator, SimulatorConfig};
use millstream_events::decode::{decode_json, trim_line_end};
use millstream_events::{DeadLetter, Reading, SourceLocation, Watermark};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::config::PipelineConfig;
use crate::monitor::{Observed, SensorMonitor};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Readings in the generated input file.
    #[arg(long, default_value_t = 2_000_000)]
    pub readings: u64,
    /// Repetitions of each configuration (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Where to write the input file (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// What the hand-written loop computed, so the bench can check it did the same work.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoopReport {
    pub lines: u64,
    pub scored: u64,
    pub anomalies: u64,
    pub dead_letters: u64,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let BenchArgs { readings, repeat, dir } = args;
    let temp;
    let dir = match dir {
        Some(d) => d,
        None => {
            temp = tempfile::tempdir().context("cannot create a temporary directory")?;
            temp.path().to_owned()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("bench-readings.jsonl");
    let (lines, bytes) = write_input(&path, readings)?;
    println!(
        "input: {lines} readings, {:.1} MB ({:.0} bytes/reading), {}",
        bytes as f64 / 1e6,
        bytes as f64 / lines as f64,
        path.display()
    );

    let full_config = prepare_full_pipeline(&dir)?;
    let exe = std::env::current_exe().context("cannot find the millstream executable")?;
    let file_arg = format!("file:{}", path.display());
    // (name, arguments, copies run side by side)
    let loop_args: Vec<String> = vec!["bench-loop".into(), path.display().to_string()];
    let dataflow = |workers: &str| -> Vec<String> {
        ["run", "--source", &file_arg, "--sink", "null", "--workers", workers].map(str::to_owned).to_vec()
    };
    let mut full = dataflow("1");
    full.extend(["--config".to_owned(), full_config.display().to_string()]);
    let configs: Vec<(&str, Vec<String>, usize)> = vec![
        ("hand-written loop", loop_args.clone(), 1),
        ("dataflow, 1 worker", dataflow("1"), 1),
        ("dataflow, 2 workers", dataflow("2"), 1),
        // The machine's own two-core scaling: two independent loops at once. On shared virtual
        // machines two busy cores are often slower each than one; this is the ceiling.
        ("2 loops side by side", loop_args, 2),
        // Every validator (a registry for all five kinds) and both detectors (per-sensor, and
        // k-means per asset from a model store), 1 worker.
        ("full pipeline, 1 worker", full, 1),
    ];
    let mut samples: Vec<Vec<(f64, u64)>> = vec![Vec::new(); configs.len()];
    for round in 0..repeat.max(1) {
        // Alternate the order (A B C, C B A, …) so a drift in machine speed hits all alike.
        let mut order: Vec<usize> = (0..configs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (name, argv, copies) = &configs[i];
            let (secs, rss_kb) =
                time_children(&exe, argv, *copies).with_context(|| format!("{name} failed"))?;
            let secs = secs / *copies as f64; // per copy's worth of work
            eprintln!(
                "round {}: {name}: {:.3} s, {:.0} k readings/s, peak RSS {} MB",
                round + 1,
                secs,
                lines as f64 / secs / 1e3,
                rss_kb / 1024
            );
            samples[i].push((secs, rss_kb));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("\n{:<22} {:>14} {:>12} {:>14}", "configuration", "readings/s", "vs loop", "peak RSS MB");
    let times: Vec<f64> = samples.iter().map(|s| median(s.iter().map(|x| x.0).collect())).collect();
    for ((name, _, _), (secs, s)) in configs.iter().zip(times.iter().zip(&samples)) {
        let rss = s.iter().map(|x| x.1).max().unwrap_or(0);
        println!("{:<22} {:>14.0} {:>11.2}x {:>14}", name, lines as f64 / secs, times[0] / secs, rss / 1024);
    }
    // Ratios within each round (the runs of a round share the machine's state), then the
    // median over rounds: steadier than a ratio of medians on a noisy machine. The range of
    // the rounds is printed too, so a reader sees how much the machine moved.
    let per_round = |num: usize, den: usize| -> RoundRatios {
        RoundRatios::of(samples[num].iter().zip(&samples[den]).map(|(n, d)| n.0 / d.0).collect())
    };
    println!(
        "\nper-round ratios over {repeat} rounds, median (and range):\n  \
         1 worker / loop = {}, target ≥ 0.80\n  \
         2 workers / 1 worker = {}, target ≥ 1.80\n  \
         machine ceiling (2 loops / 1 loop) = {}",
        per_round(0, 1),
        per_round(1, 2),
        per_round(0, 3)
    );
    println!(
        "  full pipeline (validators + robust_z/cusum + k-means per asset) / skeleton pipeline, 1 worker = {}, \
         target ≥ 0.80",
        per_round(1, 4)
    );
    Ok(())
}

/// Per-round ratios of two configurations: their median, and their range.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RoundRatios {
    median: f64,
    min: f64,
    max: f64,
}

impl RoundRatios {
    fn of(mut ratios: Vec<f64>) -> RoundRatios {
        ratios.sort_by(f64::total_cmp);
        match (ratios.first(), ratios.last()) {
            (Some(&min), Some(&max)) => RoundRatios { median: ratios[ratios.len() / 2], min, max },
            _ => RoundRatios { median: f64::NAN, min: f64::NAN, max: f64::NAN },
        }
    }
}

impl std::fmt::Display for RoundRatios {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} (rounds {:.2}–{:.2})", self.median, self.min, self.max)
    }
}

/// A configuration with every validator and the per-asset model on, for the simulated plant:
/// a registry of its five sensor kinds, and a k-means model of its pumps (trained on the
/// first simulated hour of one pump) in a file store under `dir`. Returns the config's path.
fn prepare_full_pipeline(dir: &Path) -> anyhow::Result<PathBuf> {
    use millstream_connectors::model_store::ModelStoreConfig;
    use millstream_operators::features::FeaturePlan;
    use millstream_operators::kmeans::{KMeansConfig, DEFAULT_BUCKET_MS};

    let asset = "line1-pump-00";
    let mut training: Vec<Reading> = plant_readings(40 * 5 * 3600).filter(|r| r.asset_id == asset).collect();
    let names = crate::train::FeatureChoice { rate_of: vec!["temperature".into()], ..Default::default() }
        .names(
            &training
                .iter()
                .map(|r| millstream_operators::features::sensor_name(&r.sensor_id).to_owned())
                .collect::<Vec<_>>(),
        );
    let plan = FeaturePlan::from_names(&names)?;
    let rows = crate::train::feature_rows(&mut training, &plan, DEFAULT_BUCKET_MS);
    let mut model =
        crate::train::train_model(&rows, &names, &KMeansConfig::default(), DEFAULT_BUCKET_MS, None)?;
    model.name = "pump".into();
    model.class = "pump".into();
    let store_dir = dir.join("models");
    let _ = std::fs::remove_dir_all(&store_dir);
    let store = ModelStoreConfig::new(format!("file://{}", store_dir.display()));
    store
        .open()
        .and_then(|s| s.put("pump", &model.encode().expect("a trained model encodes")))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut text = format!(
        "[models]\nstore = {{ url = \"file://{}\" }}\ndefault = \"pump\"\n\n[validation]\nmax_future_ms = 300000\n",
        store_dir.display()
    );
    for (kind, unit, min, max, rate) in [
        ("vibration", "mm/s", 0.0, 50.0, 20.0),
        ("temperature", "degC", -40.0, 150.0, 5.0),
        ("pressure", "bar", 0.0, 25.0, 5.0),
        ("current", "A", 0.0, 500.0, 50.0),
        ("flow", "m3/h", 0.0, 1000.0, 100.0),
    ] {
        text.push_str(&format!(
            "[[validation.kinds]]\nname = \"{kind}\"\nunit = \"{unit}\"\nmin = {min:?}\nmax = {max:?}\nmax_rate_per_s = {rate:?}\n"
        ));
    }
    let path = dir.join("bench-full.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `count` simulated readings (no faults), as a plant sends them: 40 pumps × 5 sensors, every
/// sensor once a step, steps in time order. Shared by the benchmarks so they measure the same
/// data.
pub fn plant_readings(count: u64) -> impl Iterator<Item = Reading> {
    let assets = 40u32;
    let steps = count.div_ceil(assets as u64 * 5);
    let sim = Simulator::new(SimulatorConfig {
        assets,
        steps,
        inject_faults: false,
        delivery_faults: false,
        ..Default::default()
    });
    let mut streams: Vec<_> = (0..assets).map(|a| sim.asset_stream(a)).collect();
    // One step of every asset at a time (each step yields an asset's 5 sensors).
    std::iter::from_fn(move || {
        let step: Vec<Reading> = streams
            .iter_mut()
            .flat_map(|s| s.by_ref().take(5))
            .filter_map(|record| match record.payload {
                SimPayload::Reading(r) => Some(r),
                SimPayload::Malformed(_) => None,
            })
            .collect();
        (!step.is_empty()).then_some(step)
    })
    .flatten()
    .take(count as usize)
}

/// Writes `readings` simulated readings as contract JSON lines; returns lines and bytes.
fn write_input(path: &Path, readings: u64) -> anyhow::Result<(u64, u64)> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let (mut lines, mut bytes) = (0u64, 0u64);
    for reading in plant_readings(readings) {
        let line = reading.to_contract_json();
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        lines += 1;
        bytes += line.len() as u64 + 1;
    }
    out.flush()?;
    Ok((lines, bytes))
}

/// Runs `copies` children side by side to completion; returns the wall seconds until the
/// last one ends and the largest peak RSS (KiB) among them.
fn time_children(exe: &Path, argv: &[String], copies: usize) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    let children = (0..copies)
        .map(|_| Command::new(exe).args(argv).stdout(std::process::Stdio::null()).spawn())
        .collect::<Result<Vec<_>, _>>()?;
    let mut peak = 0;
    for child in children {
        let pid = child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: plain libc call on our own child; rusage is fully written on success.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc != pid {
            bail!("wait4 failed: {}", std::io::Error::last_os_error());
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            bail!("child exited with status {status}");
        }
        // Reaped by wait4 already: dropping the handle must not wait again.
        std::mem::forget(child);
        peak = peak.max(usage.ru_maxrss as u64);
    }
    Ok((started.elapsed().as_secs_f64(), peak))
}

/// The same work as the dataflow's sensor stage, in one loop: decode, file-order lateness,
/// validation, duplicates, robust scoring and episodes, and rendering of anomalies and dead
/// letters (then discarded, like `null`).
pub fn hand_written_loop(path: &Path) -> anyhow::Result<LoopReport> {
    let config = PipelineConfig::default();
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: read-only map of a file this process does not modify.
    let map = unsafe { memmap2::Mmap::map(&file) }?;
    let mut watermark = Watermark::new(config.allowed_lateness_ms);
    let mut index: FxHashMap<millstream_events::CompactString, u32> = FxHashMap::default();
    let mut sensors: Vec<SensorMonitor> = Vec::new();
    let mut anomalies = Vec::new();
    let now = millstream_events::time::now_ms();
    let mut report = LoopReport { lines: 0, scored: 0, anomalies: 0, dead_letters: 0 };
    let mut rendered = 0usize;
    let bytes: &[u8] = &map;
    let mut pos = 0usize;
    while pos < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |i| pos + i + 1);
        let line = trim_line_end(&bytes[pos..end]);
        pos = end;
        report.lines += 1;
        let reading = match decode_json(line) {
            Ok(r) => r,
            Err(rejection) => {
                report.dead_letters += 1;
                let dead = DeadLetter {
                    reason: rejection.reason,
                    detail: rejection.detail,
                    raw: String::from_utf8_lossy(line).into_owned(),
                    source: SourceLocation::File { file: path.display().to_string(), line: report.lines },
                };
                rendered += serde_json::to_string(&dead)?.len();
                continue;
            }
        };
        let late = watermark.observe(reading.ts);
        let slot = match index.get(reading.sensor_id.as_str()) {
            Some(&s) => s,
            None => {
                index.insert(reading.sensor_id.clone(), sensors.len() as u32);
                sensors.push(SensorMonitor::new(&reading.sensor_id, &config));
                sensors.len() as u32 - 1
            }
        };
        let observed = sensors[slot as usize].observe(&reading, late, now, &config, &mut anomalies);
        for anomaly in anomalies.drain(..) {
            report.anomalies += 1;
            rendered += serde_json::to_string(&anomaly)?.len();
        }
        match observed {
            Observed::Scored { .. } => report.scored += 1,
            Observed::LateKept | Observed::Flagged(_) => {}
            Observed::Rejected { reason, detail } => {
                // As the dataflow does: the raw line and its location, rendered.
                report.dead_letters += 1;
                let dead = DeadLetter {
                    reason,
                    detail: detail.unwrap_or_else(|| reason.as_str().to_owned()),
                    raw: String::from_utf8_lossy(line).into_owned(),
                    source: SourceLocation::File { file: path.display().to_string(), line: report.lines },
                };
                rendered += serde_json::to_string(&dead)?.len();
            }
        }
    }
    std::hint::black_box(rendered);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::RoundRatios;

    #[test]
    fn round_ratios_give_the_median_and_the_range() {
        let r = RoundRatios::of(vec![1.9, 1.7, 1.8, 2.0, 1.6]);
        assert_eq!(r, RoundRatios { median: 1.8, min: 1.6, max: 2.0 });
        assert_eq!(r.to_string(), "1.80 (rounds 1.60–2.00)");
        // An even count takes the upper middle, as the rates' median does.
        assert_eq!(RoundRatios::of(vec![1.0, 3.0]).median, 3.0);
        assert!(RoundRatios::of(Vec::new()).median.is_nan(), "no rounds, no figure");
    }
}
