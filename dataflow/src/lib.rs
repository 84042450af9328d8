//! The millstream processor: the dataflow built from the command line and config, the timely
//! cluster it runs on, and the commands (`run`, `demo`, `bench`).
//!
//! This is the only crate that knows every other: sources from `millstream-connectors`,
//! per-sensor logic from `millstream-operators`, writers from `millstream-sinks`, all speaking
//! `millstream-events`.

pub mod aggregate;
pub mod asset;
pub mod bench;
pub mod bench_kafka;
pub mod bench_pg;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod drift;
pub mod eval;
pub mod graph;
pub mod health;
pub mod http;
pub mod kafka_settings;
pub mod kafka_sink;
pub mod model_stream;
pub mod models;
pub mod monitor;
pub mod pg_sink;
pub mod produce;
pub mod render;
pub mod report;
pub mod run;
pub mod score;
pub mod sink;
pub mod source;
pub mod stash;
pub mod stats;
pub mod train;

/// `text` on one line: every run of whitespace, newlines included, made one space. Failures are
/// reported in one line on stderr (ARCHITECTURE.md §6).
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Stops the process with a one-line reason: for failures inside a worker that leave the run
/// without a way to continue (a sink or a source that cannot be created).
pub fn fatal(message: &str) -> ! {
    eprintln!("millstream: fatal: {message}");
    std::process::exit(1);
}
