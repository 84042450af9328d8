//! The `[checkpoint]` section.

use serde::{Deserialize, Serialize};

/// Checkpoints of operator state and source positions, in the PostgreSQL sink's database.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSettings {
    /// Event-time milliseconds between checkpoints; 0 (the default) turns them off. Each
    /// checkpoint writes every worker's whole state, so the cost grows with the number of
    /// sensors over this interval. Needs a `kafka://` source and a `postgres://` sink.
    pub interval_ms: u64,
}

impl CheckpointSettings {
    pub fn enabled(&self) -> bool {
        self.interval_ms > 0
    }
}
