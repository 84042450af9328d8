//! Per-asset models at run time: which model serves which asset (`[models]`), the store they
//! come from, and the watcher that polls it for new versions.
//!
//! Model updates are a stream of their own (see [`crate::model_stream`]): the watcher thread
//! finds a new version, checks that it decodes, and hands it to the dataflow, which applies it
//! at one event time on every worker. A store that cannot be reached leaves the current models
//! in service; the watcher retries on its next poll and says so in `/health/ready` and the
//! `millstream_model_store_errors_total` counter.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use millstream_connectors::model_store::{ModelStore, ModelStoreConfig};
use millstream_operators::episode::EpisodeConfig;
use millstream_operators::model::ModelArtifact;
use serde::{Deserialize, Serialize};

use crate::health::{ComponentHealth, Health};
use crate::stats::RunStats;

/// The `[models]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsSettings {
    /// Where models are. Without a store, no per-asset model runs.
    pub store: Option<ModelStoreConfig>,
    /// How often the store is polled for new versions, in ms.
    pub poll_interval_ms: u64,
    /// The model for an asset that no override and no class rule names; none: such assets
    /// get no multivariate scoring.
    pub default: Option<String>,
    /// Per-asset overrides: asset_id → model name. They win over class rules.
    pub assets: BTreeMap<String, String>,
    /// Asset classes, tried in order: the first rule whose prefix starts the asset_id names
    /// its model (the seed's "smart categorisation", made explicit).
    pub classes: Vec<ClassRule>,
    /// Hysteresis of the per-asset episodes. An episode opens at the model's own threshold
    /// (`calibration.threshold`, 0.8 by default).
    pub episodes: EpisodeConfig,
    /// `[models.drift]`: drift windows and sequential detectors against each model's reference.
    pub drift: crate::drift::settings::DriftSettings,
    /// `[models.retrain]`: new versions on sustained drift.
    pub retrain: crate::drift::settings::RetrainSettings,
}

/// Assets whose id starts with `prefix` are of one class, served by `model`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassRule {
    /// The start of the asset ids of this class, e.g. `line1-pump-`.
    pub prefix: String,
    /// The model name in the store.
    pub model: String,
}

impl Default for ModelsSettings {
    fn default() -> Self {
        ModelsSettings {
            store: None,
            poll_interval_ms: 30_000,
            default: None,
            assets: BTreeMap::new(),
            classes: Vec::new(),
            episodes: EpisodeConfig { close_score: 0.8, close_after_ms: 0 },
            drift: Default::default(),
            retrain: Default::default(),
        }
    }
}

impl ModelsSettings {
    /// The model that serves `asset_id`, if any.
    pub fn model_for(&self, asset_id: &str) -> Option<&str> {
        if let Some(model) = self.assets.get(asset_id) {
            return Some(model);
        }
        self.classes
            .iter()
            .find(|rule| asset_id.starts_with(&rule.prefix))
            .map(|rule| rule.model.as_str())
            .or(self.default.as_deref())
    }

    /// Every model name some asset may need, sorted.
    pub fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .assets
            .values()
            .chain(self.classes.iter().map(|r| &r.model))
            .chain(self.default.iter())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn check(&self) -> anyhow::Result<()> {
        let ModelsSettings {
            store,
            poll_interval_ms,
            default: _,
            assets: _,
            classes,
            episodes,
            drift,
            retrain,
        } = self;
        drift.check()?;
        retrain.check(drift)?;
        if store.is_none() && !self.model_names().is_empty() {
            anyhow::bail!("[models] names models but has no `store`");
        }
        if store.is_some() && self.model_names().is_empty() {
            anyhow::bail!(
                "[models] has a store but no model for any asset: set `default`, `assets` or `classes`"
            );
        }
        if *poll_interval_ms == 0 {
            anyhow::bail!("[models] poll_interval_ms must be positive");
        }
        if let Some(rule) = classes.iter().find(|r| r.prefix.is_empty()) {
            anyhow::bail!(
                "[models] class rule for model `{}` has an empty prefix (use `default`)",
                rule.model
            );
        }
        if !(0.0..=1.0).contains(&episodes.close_score) {
            anyhow::bail!("[models.episodes] close_score must be in [0, 1]");
        }
        if let Some(store) = store {
            store.spec().map_err(|e| anyhow::anyhow!("[models] store: {e}"))?;
        }
        Ok(())
    }
}

/// One version of one model, as the dataflow receives it. The bytes travel (they are small),
/// and every worker decodes its own copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelUpdate {
    pub name: String,
    pub version: u64,
    /// The artifact's `effective_from`, read once by the watcher.
    pub effective_from: Option<u64>,
    pub bytes: Vec<u8>,
}

impl ModelUpdate {
    pub fn artifact(&self) -> Result<ModelArtifact, millstream_operators::model::ModelError> {
        ModelArtifact::decode(&self.bytes)
    }
}

/// The models at start-up and the channel through which the watcher sends newer ones.
pub struct ModelFeed {
    pub initial: Vec<ModelUpdate>,
    pub updates: mpsc::Receiver<ModelUpdate>,
    /// Wakes the dataflow operator that drains `updates`; set by it when it is built.
    pub waker: Arc<std::sync::Mutex<Option<timely::scheduling::SyncActivator>>>,
}

const HEALTH_COMPONENT: &str = "model store";

/// Loads the latest version of every model `settings` names, then starts the watcher thread.
/// A store that cannot be reached at start-up is not fatal: the run starts without those
/// models (no multivariate scoring for their assets) and picks them up once the store answers.
///
/// `restored`: the versions a restored checkpoint had in service. They serve from the start
/// instead; newer versions in the store serve from their `effective_from` (or from the start
/// when it has passed), as versions found later do. `decided`: the versions the retrainer had
/// decided before the checkpoint's boundary that switch at or after it; they switch at their
/// `effective_from`, before any newer version of the store.
pub fn start(
    settings: &ModelsSettings,
    stats: Arc<RunStats>,
    health: Arc<Health>,
    restored: Vec<ModelUpdate>,
    decided: Vec<ModelUpdate>,
) -> anyhow::Result<Option<ModelFeed>> {
    let Some(store_config) = &settings.store else { return Ok(None) };
    let store: Arc<dyn ModelStore> =
        Arc::from(store_config.open().map_err(|e| anyhow::anyhow!("[models] store: {e}"))?);
    let names = settings.model_names();
    let mut known: BTreeMap<String, u64> = BTreeMap::new();
    let mut initial: Vec<ModelUpdate> = restored.into_iter().filter(|u| names.contains(&u.name)).collect();
    for update in &initial {
        tracing::info!(model = %update.name, version = update.version, "serving the model version the checkpoint had in service");
        known.insert(update.name.clone(), update.version);
    }
    let decided: Vec<ModelUpdate> = decided.into_iter().filter(|u| names.contains(&u.name)).collect();
    for update in &decided {
        tracing::info!(model = %update.name, version = update.version, effective_from = ?update.effective_from, "a version the checkpoint had decided switches at its time");
        let version = known.entry(update.name.clone()).or_default();
        *version = (*version).max(update.version);
    }
    let mut newer = Vec::new();
    poll(&*store, &names, &mut known, &stats, &health, |u| newer.push(u));
    for name in &names {
        if !known.contains_key(name) {
            tracing::warn!(model = %name, store = %store.location(), "no version of this model yet: its assets get no multivariate scoring until one appears");
        }
    }
    let (send, updates) = mpsc::channel();
    if initial.is_empty() && decided.is_empty() {
        initial = newer;
    } else {
        for update in decided.into_iter().chain(newer) {
            send.send(update).expect("the receiver is held here");
        }
    }
    let waker: Arc<std::sync::Mutex<Option<timely::scheduling::SyncActivator>>> = Default::default();
    let interval = Duration::from_millis(settings.poll_interval_ms);
    let thread_waker = Arc::clone(&waker);
    std::thread::Builder::new().name("model-watcher".into()).spawn(move || loop {
        std::thread::sleep(interval);
        let mut sent = false;
        let mut closed = false;
        poll(&*store, &names, &mut known, &stats, &health, |u| {
            closed |= send.send(u).is_err();
            sent = true;
        });
        if closed {
            return; // the run is over
        }
        if sent {
            if let Some(waker) = thread_waker.lock().expect("never poisoned").as_ref() {
                let _ = waker.activate();
            }
        }
    })?;
    Ok(Some(ModelFeed { initial, updates, waker }))
}

/// One pass over the store: every model whose latest version is newer than `known` and decodes
/// is handed to `found`. Failures are logged, counted and shown in health; the current
/// versions stay in service.
fn poll(
    store: &dyn ModelStore,
    names: &[String],
    known: &mut BTreeMap<String, u64>,
    stats: &RunStats,
    health: &Health,
    mut found: impl FnMut(ModelUpdate),
) {
    let mut failure: Option<String> = None;
    for name in names {
        let latest = match store.latest(name) {
            Ok(Some(latest)) => latest,
            Ok(None) => continue,
            Err(e) => {
                stats.model_store_errors.inc();
                tracing::warn!(model = %name, store = %store.location(), error = %e, "cannot poll the model store; serving the current version");
                failure = Some(e.to_string());
                continue;
            }
        };
        if known.get(name).is_some_and(|v| *v >= latest.version) {
            continue;
        }
        let bytes = match store.get(name, latest.version) {
            Ok(bytes) => bytes,
            Err(e) => {
                stats.model_store_errors.inc();
                tracing::warn!(model = %name, version = latest.version, error = %e, "cannot fetch a new model version; serving the current one");
                failure = Some(e.to_string());
                continue;
            }
        };
        match ModelArtifact::decode(&bytes) {
            Ok(artifact) => {
                tracing::info!(model = %name, version = latest.version, effective_from = ?artifact.effective_from, "new model version");
                known.insert(name.clone(), latest.version);
                found(ModelUpdate {
                    name: name.clone(),
                    version: latest.version,
                    effective_from: artifact.effective_from,
                    bytes,
                });
            }
            Err(e) => {
                // Remembered, so a bad version is reported once, not at every poll.
                known.insert(name.clone(), latest.version);
                stats.model_store_errors.inc();
                tracing::error!(model = %name, version = latest.version, error = %e, "refusing a model version that does not decode; serving the current one");
            }
        }
    }
    health.set(
        HEALTH_COMPONENT,
        match failure {
            None => ComponentHealth::Ready,
            Some(why) => ComponentHealth::NotReady(format!("{}: {why}", store.location())),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_then_classes_in_order_then_the_default() {
        let settings: ModelsSettings = toml::from_str(
            r#"
            store = { url = "file:///tmp/models" }
            default = "generic"
            assets = { "line1-pump-07" = "pump-07" }
            classes = [ { prefix = "line1-pump-", model = "pump" }, { prefix = "line1-", model = "line1" } ]
            "#,
        )
        .unwrap();
        settings.check().unwrap();
        assert_eq!(settings.model_for("line1-pump-07"), Some("pump-07"));
        assert_eq!(settings.model_for("line1-pump-01"), Some("pump"));
        assert_eq!(settings.model_for("line1-fan-01"), Some("line1"));
        assert_eq!(settings.model_for("line2-fan-01"), Some("generic"));
        assert_eq!(settings.model_names(), vec!["generic", "line1", "pump", "pump-07"]);
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        let no_store = ModelsSettings { default: Some("m".into()), ..Default::default() };
        assert!(no_store.check().unwrap_err().to_string().contains("no `store`"));
        let no_model =
            ModelsSettings { store: Some(ModelStoreConfig::new("file:///x")), ..Default::default() };
        assert!(no_model.check().unwrap_err().to_string().contains("no model"));
        let err = toml::from_str::<ModelsSettings>("defaults = 'x'").unwrap_err().to_string();
        assert!(err.contains("defaults"), "{err}");
    }
}
