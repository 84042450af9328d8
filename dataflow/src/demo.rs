//! `millstream demo`: a simulated plant through the whole pipeline, with a live progress bar
//! and a report of detections against the simulator's injected faults. Needs no services.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use millstream_connectors::plant_source::SimulatedPlant;
use millstream_events::fault::FaultKind;
use millstream_events::Anomaly;
use millstream_operators::evaluate::{evaluate, Evaluation, EvaluationConfig};
use millstream_sinks::SinkSpec;

use crate::config::PipelineConfig;
use crate::run::{run, ClusterOptions, RunPlan};
use crate::source::SourceSpec;
use crate::stats::RunStats;

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Pumps in the simulated plant (5 sensors each).
    #[arg(long, default_value_t = 8)]
    pub assets: u32,
    /// Samples per sensor (one a second: 3600 is an hour of plant time).
    #[arg(long, default_value_t = 3600)]
    pub steps: u64,
    /// Simulator seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Worker threads.
    #[arg(long, short = 'w', default_value_t = 2)]
    pub workers: usize,
    /// Simulated seconds per wall-clock second (default: as fast as possible).
    #[arg(long)]
    pub realtime: Option<f64>,
    /// Directory for anomalies.jsonl, dead_letters.jsonl and scores.jsonl.
    #[arg(long, default_value = "millstream-demo")]
    pub out: PathBuf,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let DemoArgs { assets, steps, seed, workers, realtime, out, json } = args;
    let mut options = vec![
        ("assets".to_owned(), assets.to_string()),
        ("steps".into(), steps.to_string()),
        ("seed".into(), seed.to_string()),
    ];
    if let Some(speed) = realtime {
        options.push(("realtime".into(), speed.to_string()));
    }
    let plant = SimulatedPlant::from_options(&options).map_err(|e| anyhow::anyhow!("simulate: {e}"))?;
    let truth = plant.simulator.ground_truth();
    let total = plant.simulator.total_records();

    let stats = Arc::new(RunStats::default());
    let done = Arc::new(AtomicBool::new(false));
    let progress = spawn_progress(total, Arc::clone(&stats), Arc::clone(&done));
    let pipeline = PipelineConfig { emit_scores: true, ..PipelineConfig::default() };
    let plan = RunPlan {
        source: SourceSpec::Simulate(options),
        sinks: vec![SinkSpec::Jsonl(out.clone())],
        pipeline,
        cluster: ClusterOptions { workers, ..ClusterOptions::default() },
        http: None,
        postgres: Default::default(),
        admin: crate::http::Admin { token: None, config: String::new() },
        kafka: Default::default(),
        stop_at_end: false,
        models: Default::default(),
        checkpoint: Default::default(),
    };
    let result = run(plan, Arc::clone(&stats));
    done.store(true, Ordering::Relaxed);
    let _ = progress.join();
    let report = result?;

    let anomalies = read_anomalies(&out.join("anomalies.jsonl"))?;
    let evaluation = evaluate(&truth, &anomalies, &EvaluationConfig::default());
    let seconds = report.elapsed.as_secs_f64();
    if json {
        println!("{}", serde_json::to_string_pretty(&json_report(&evaluation, &stats, total, seconds))?);
        return Ok(());
    }
    println!(
        "millstream demo: {assets} pumps × 5 sensors, {steps} s of plant time (seed {seed}), {workers} worker(s)"
    );
    println!(
        "processed {total} records in {seconds:.2} s ({:.0} records/s)\n",
        total as f64 / seconds.max(1e-9)
    );
    println!("Detections against injected faults:\n{evaluation}");
    if let Some(spikes) = evaluation.by_kind.iter().find(|k| k.kind == FaultKind::Spike) {
        println!("spike recall: {:.2}", spikes.scores.recall);
    }
    println!("\nDead letters by reason:");
    let by_reason = stats.dead_letters_by_reason();
    if by_reason.is_empty() {
        println!("  (none)");
    }
    for (reason, n) in by_reason {
        println!("  {:<16} {n:>8}", reason.as_str());
    }
    println!("Late readings kept (flagged, not scored): {}", stats.late_kept.get());
    println!("\nOutputs in {}/: anomalies.jsonl, dead_letters.jsonl, scores.jsonl", out.display());
    Ok(())
}

fn spawn_progress(total: u64, stats: Arc<RunStats>, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} readings {per_sec}",
            )
            .expect("template is valid"),
        );
        while !done.load(Ordering::Relaxed) {
            bar.set_position(stats.readings.get() + stats.dead_letters_total());
            std::thread::sleep(Duration::from_millis(100));
        }
        bar.set_position(stats.readings.get() + stats.dead_letters_total());
        bar.finish_and_clear();
    })
}

fn read_anomalies(path: &std::path::Path) -> anyhow::Result<Vec<Anomaly>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad line in {}: {l}", path.display())))
        .collect()
}

fn json_report(evaluation: &Evaluation, stats: &RunStats, total: u64, seconds: f64) -> serde_json::Value {
    let kinds: serde_json::Map<String, serde_json::Value> = evaluation
        .by_kind
        .iter()
        .map(|k| {
            (
                k.kind.as_str().to_owned(),
                serde_json::json!({"faults": k.scores.faults, "detected": k.scores.detected, "recall": k.scores.recall,
                    "median_delay_ms": k.scores.median_delay_ms}),
            )
        })
        .collect();
    let reasons: serde_json::Map<String, serde_json::Value> =
        stats.dead_letters_by_reason().into_iter().map(|(r, n)| (r.as_str().to_owned(), n.into())).collect();
    serde_json::json!({
        "records": total,
        "seconds": seconds,
        "overall": {"faults": evaluation.overall.faults, "detected": evaluation.overall.detected,
            "recall": evaluation.overall.recall, "precision": evaluation.overall.precision,
            "anomalies": evaluation.overall.anomalies},
        "by_kind": kinds,
        "dead_letters": reasons,
        "late_kept": stats.late_kept.get(),
    })
}
