//! Outputs of millstream: where rendered anomalies, dead letters and scores are written.
//!
//! A sink here is plain I/O with no timely: the dataflow gathers lines, orders them by event
//! time, and hands each frontier-complete batch to a [`LineSink`], flushing after each batch.
//! Later sinks (PostgreSQL, Kafka) implement the same contract with their own durability.

mod jsonl;
pub mod kafka;
pub mod postgres;
mod spec;
mod stdout;

pub use jsonl::JsonlSink;
pub use spec::{SinkSpec, SinkSpecError};
pub use stdout::StdoutSink;

use millstream_events::OutputKind;

/// A destination for rendered lines.
pub trait LineSink {
    /// Buffers one line.
    fn write_line(&mut self, kind: OutputKind, json: &str) -> std::io::Result<()>;
    /// Makes everything written so far visible (called when the frontier passes a batch).
    fn flush(&mut self) -> std::io::Result<()>;
    /// Flushes and makes the output durable (called once the input is complete).
    fn finish(&mut self) -> std::io::Result<()>;
}
