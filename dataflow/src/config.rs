//! Pipeline settings: defaults, overridden by a TOML file (`--config`), overridden by flags.

use std::path::Path;

use millstream_operators::detector::RobustZConfig;
use millstream_operators::sensor::{LatePolicy, StuckConfig};
use serde::{Deserialize, Serialize};

/// Default allowed lateness: readings up to this much older than the newest seen are on time.
pub const DEFAULT_ALLOWED_LATENESS_MS: u64 = 5_000;

/// Default epoch: one second of event time per timely timestamp.
pub const DEFAULT_EPOCH_MS: u64 = 1_000;

/// Everything that shapes what the pipeline computes. The same settings give the same outputs
/// for any number of workers and processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// How far behind the newest event time a reading may arrive and still be on time, in ms.
    pub allowed_lateness_ms: u64,
    /// Granularity of timely timestamps, in ms: event times are rounded down to it. Coarser
    /// epochs cut coordination between workers; results do not depend on it, outputs are
    /// flushed once per epoch.
    pub epoch_ms: u64,
    /// What to do with late readings: `keep` (flagged, not scored) or `dead_letter`.
    pub late_policy: LatePolicy,
    /// Write `scores.jsonl`: one line per accepted reading.
    pub emit_scores: bool,
    /// The per-sensor robust detector.
    pub detector: RobustZConfig,
    /// The stuck-sensor rule.
    pub stuck: StuckConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            allowed_lateness_ms: DEFAULT_ALLOWED_LATENESS_MS,
            epoch_ms: DEFAULT_EPOCH_MS,
            late_policy: LatePolicy::Keep,
            emit_scores: false,
            detector: RobustZConfig::default(),
            stuck: StuckConfig::default(),
        }
    }
}

/// The `--config` file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Pipeline settings.
    #[serde(default)]
    pub pipeline: PipelineConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config {path}: {message}")]
    Parse { path: String, message: String },
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string().lines().collect::<Vec<_>>().join(" "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_files_keep_defaults_and_unknown_keys_are_refused() {
        let file: ConfigFile =
            toml::from_str("[pipeline]\nallowed_lateness_ms = 100\nlate_policy = \"dead_letter\"\n").unwrap();
        assert_eq!(file.pipeline.allowed_lateness_ms, 100);
        assert_eq!(file.pipeline.late_policy, LatePolicy::DeadLetter);
        assert_eq!(file.pipeline.detector, RobustZConfig::default());
        assert!(toml::from_str::<ConfigFile>("[pipeline]\nalowed_lateness_ms = 1\n").is_err());
        assert!(toml::from_str::<ConfigFile>("[pipelin]\n").is_err());
    }
}
