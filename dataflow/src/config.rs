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
    /// The per-sensor sustained-shift detector (CUSUM on robust_z's residuals).
    pub cusum: millstream_operators::cusum::CusumConfig,
    /// A sensor that sends nothing for this long (event time, as the frontier sees it) opens
    /// a `silence` health episode, closed by its next reading; 0 turns the rule off.
    pub silence_ms: u64,
    /// Hysteresis of the per-sensor episodes (robust_z): an episode opens at the detector's
    /// low-severity threshold and closes after the score stayed below `close_score` this long.
    pub episodes: millstream_operators::episode::EpisodeConfig,
    /// The sensor registry (the `[validation]` section, copied here by `run`).
    #[serde(skip)]
    pub validation: std::sync::Arc<millstream_operators::validate::Registry>,
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
            cusum: Default::default(),
            silence_ms: 60_000,
            episodes: millstream_operators::episode::EpisodeConfig::default(),
            validation: Default::default(),
        }
    }
}

/// A secret (a password): never shown by `Debug`, and rendered as `"***"` by `config check`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// What `run` does when flags do not say; flags override each field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    /// The source: file:PATH | simulate[:k=v,…] | kafka://…
    pub source: Option<String>,
    /// Sinks: jsonl:DIR | stdout | null | postgres://…
    pub sinks: Vec<String>,
    /// Worker threads in this process.
    pub workers: usize,
    /// Serve /metrics and /health/* on this address.
    pub http: Option<String>,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings { source: None, sinks: Vec::new(), workers: 1, http: None }
    }
}

/// The PostgreSQL sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    /// The password, when the URL has none: best given as the environment variable
    /// `MILLSTREAM_POSTGRES__PASSWORD`. (`PGPASSWORD` works too.)
    pub password: Option<Secret>,
    /// A file holding the password (e.g. a container secret); its trailing newline is ignored.
    pub password_file: Option<std::path::PathBuf>,
    /// Commit once this many rows are ready.
    pub batch_rows: usize,
    /// Commit ready rows that have waited this long, in ms.
    pub max_delay_ms: u64,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings { password: None, password_file: None, batch_rows: 50_000, max_delay_ms: 500 }
    }
}

impl PostgresSettings {
    /// The password from `password` or `password_file`, if any.
    pub fn resolve_password(&self) -> Result<Option<Secret>, ConfigError> {
        read_secret(&self.password, &self.password_file)
    }
}

/// The `/admin/…` endpoints. Without a token there are none.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// The bearer token (best given as `MILLSTREAM_ADMIN__TOKEN`).
    pub token: Option<Secret>,
    /// A file holding the token; its trailing newline is ignored.
    pub token_file: Option<std::path::PathBuf>,
}

impl AdminSettings {
    pub fn resolve_token(&self) -> Result<Option<Secret>, ConfigError> {
        read_secret(&self.token, &self.token_file)
    }
}

pub(crate) fn read_secret(
    value: &Option<Secret>,
    file: &Option<std::path::PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    if let Some(v) = value {
        return Ok(Some(v.clone()));
    }
    match file {
        None => Ok(None),
        Some(path) => std::fs::read_to_string(path)
            .map(|text| Some(Secret(text.trim_end_matches(['\n', '\r']).to_owned())))
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source }),
    }
}

/// How the process logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per event, with its structured fields.
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter: `warn`, `info`, `millstream=debug,info`, …
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { format: LogFormat::Human, level: "warn".to_owned() }
    }
}

/// Every setting: defaults, then the `--config` TOML file, then `MILLSTREAM_*` environment
/// variables (`MILLSTREAM_PIPELINE__ALLOWED_LATENESS_MS=100`: sections joined by `__`), then
/// command-line flags. Unknown keys are errors that name the key.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub run: RunSettings,
    pub pipeline: PipelineConfig,
    pub postgres: PostgresSettings,
    pub admin: AdminSettings,
    pub kafka: crate::kafka_settings::KafkaSettings,
    pub models: crate::models::ModelsSettings,
    /// The sensor registry: plausibility checks per sensor kind and per sensor.
    pub validation: millstream_operators::validate::Registry,
    /// Checkpoints of operator state and source positions (off unless `interval_ms` is set).
    pub checkpoint: crate::checkpoint::CheckpointSettings,
    pub log: LogSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Defaults, `file` (when given), then the `MILLSTREAM_*` environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given (tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        use figment::providers::{Format, Serialized, Toml};
        let mut figment = figment::Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only MILLSTREAM_SECTION__KEY variables are settings; a variable such as
        // MILLSTREAM_LOG (no section separator) is not mistaken for one.
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("MILLSTREAM_")
                    .filter(|rest| rest.contains("__"))
                    .map(|rest| (rest.to_owned(), v))
            })
            .collect();
        for (key, value) in env {
            let path = key.to_ascii_lowercase().replace("__", ".");
            let value: toml::Value = value
                .parse::<toml::Value>()
                .ok()
                .filter(|v| !v.is_table())
                .unwrap_or(toml::Value::String(value));
            figment = figment.merge(Serialized::default(&path, value));
        }
        let settings: Settings = figment.extract().map_err(|e| ConfigError::Invalid(describe(&e)))?;
        settings.validation.validate().map_err(|e| ConfigError::Invalid(format!("[validation] {e}")))?;
        Ok(settings)
    }

    /// The effective configuration as TOML, secrets shown as `***`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).expect("settings always serialize")
    }
}

/// One line per problem, each naming the key path and where the value came from.
fn describe(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() { "(top level)".to_owned() } else { e.path.join(".") };
            // Values from the environment are merged in code, so their source is a line of
            // this file: name the variable instead.
            let origin = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                Some(figment::Source::Code(_)) => {
                    format!(
                        " (from the environment variable MILLSTREAM_{})",
                        e.path.join("__").to_ascii_uppercase()
                    )
                }
                Some(source) => format!(" in {source}"),
                None => String::new(),
            };
            format!("{key}{origin}: {}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load_with_env(Some(&path), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn files_override_defaults_and_env_overrides_files() {
        let s = load("[pipeline]\nallowed_lateness_ms = 100\nlate_policy = \"dead_letter\"\n", &[]).unwrap();
        assert_eq!(s.pipeline.allowed_lateness_ms, 100);
        assert_eq!(s.pipeline.late_policy, LatePolicy::DeadLetter);
        assert_eq!(s.pipeline.detector, RobustZConfig::default());
        let s = load(
            "[pipeline]\nallowed_lateness_ms = 100\n",
            &[
                ("MILLSTREAM_PIPELINE__ALLOWED_LATENESS_MS", "250"),
                ("MILLSTREAM_LOG__FORMAT", "json"),
                ("MILLSTREAM_LOG", "x"),
            ],
        )
        .unwrap();
        assert_eq!(s.pipeline.allowed_lateness_ms, 250);
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let err = load("[pipeline]\nalowed_lateness_ms = 1\n", &[]).unwrap_err().to_string();
        assert!(err.contains("pipeline.alowed_lateness_ms") || err.contains("alowed_lateness_ms"), "{err}");
        assert!(err.contains("pipeline"), "{err}");
        let err = load("[pipeline.detector]\nalpah = 0.1\n", &[]).unwrap_err().to_string();
        assert!(err.contains("alpah"), "{err}");
        assert!(load("[pipelin]\n", &[]).is_err());
        let err = load("", &[("MILLSTREAM_PIPELINE__NOPE", "1")]).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        assert!(err.contains("from the environment variable MILLSTREAM_PIPELINE__NOPE"), "{err}");
        assert!(!err.contains(".rs:"), "names the variable, not a source file: {err}");
    }

    #[test]
    fn secrets_are_redacted() {
        let s = load("", &[("MILLSTREAM_POSTGRES__PASSWORD", "hunter2-secret")]).unwrap();
        assert_eq!(s.postgres.resolve_password().unwrap().unwrap().expose(), "hunter2-secret");
        assert!(!s.to_redacted_toml().contains("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(s.to_redacted_toml().contains("***"));
    }

    #[test]
    fn every_example_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Settings::load_with_env(Some(&path), [])
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 2, "examples in {}", dir.display());
    }
}
