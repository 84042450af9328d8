//! The millstream event model: what flows through the dataflow and what leaves it.
//!
//! Every crate speaks these types: [`Reading`] (one sensor sample, the input contract of
//! ARCHITECTURE.md §6), [`DeadLetter`] (a rejected record with a closed-set [`Reason`], a
//! detail and its [`SourceLocation`]), [`Anomaly`] and [`ScoredReading`] (detector output).
//! The input decoders live here too ([`decode`]), because the contract and its decoder
//! must change together.
//!
//! Time is `u64` milliseconds since the Unix epoch everywhere ([`EventTime`]); outputs
//! render it as RFC 3339 UTC with milliseconds ([`time::format_rfc3339_millis`]).

pub mod anomaly;
pub mod checkpoint;
pub mod dead_letter;
pub mod decode;
pub mod drift;
pub mod event_id;
pub mod fault;
pub mod ingest;
pub mod output;
pub mod reading;
pub mod routing;
pub mod time;
mod wire;

pub use compact_str::CompactString;

pub use anomaly::{Anomaly, AssetScore, Episode, EpisodeState, ScoredReading, Severity};
pub use dead_letter::{DeadLetter, Reason, Rejection, SourceLocation};
pub use drift::{DriftEvent, DriftStatistic, ModelVersionEvent, ModelVersionStatus};
pub use ingest::{Accepted, Arrival, Ingested, RawRef, TimeModel, Watermark};
pub use output::{MinuteRow, OutputKind, OutputLine, ReadingRow, SinkEvent};
pub use reading::{Origin, Reading};

/// Event time: milliseconds since the Unix epoch. This is also the timely timestamp.
pub type EventTime = u64;
