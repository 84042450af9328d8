//! Inputs of millstream: the sources that turn files, a simulated plant and (later) Kafka into
//! timely streams of [`millstream_events::Ingested`] records stamped with event time.
//!
//! Every source follows the time model of ARCHITECTURE.md §2: it holds its capability at its
//! watermark (largest event time seen less the allowed lateness), emits on-time readings at
//! their own event time, and stamps late readings and dead letters with the watermark, so the
//! timestamps, and everything downstream, are a function of the input alone.

pub mod file;
pub mod kafka;
pub mod model_store;
pub mod plant_source;
pub mod route;
pub mod simulate;

use millstream_events::{Accepted, SourceLocation};

/// Recovers, for an accepted reading, what a dead letter needs: its original text and where it
/// was read. Stages after the exchange (duplicates, late policy) use it, so readings do not
/// carry their raw bytes through the dataflow.
pub trait RecordResolver: Send + Sync {
    fn raw_text(&self, accepted: &Accepted) -> String;
    fn location(&self, accepted: &Accepted) -> SourceLocation;
}

impl RecordResolver for file::FileInput {
    fn raw_text(&self, accepted: &Accepted) -> String {
        file::FileInput::raw_text(self, accepted.raw)
    }

    fn location(&self, accepted: &Accepted) -> SourceLocation {
        file::FileInput::location(self, accepted.origin)
    }
}
