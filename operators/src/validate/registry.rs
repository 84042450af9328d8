//! The sensor registry: which checks apply to which sensor, as configured.
//!
//! A registry has *kinds* (rules shared by every sensor whose id ends in the kind's name,
//! e.g. all `…/vibration` sensors) and per-sensor *overrides* (by full `sensor_id`). It is
//! plain data, deserialised from TOML (the `[validation]` section of the main configuration,
//! or a standalone file of the same shape); call [`Registry::validate`] once after loading,
//! then [`Registry::rules_for`] once per new sensor and keep the returned `Arc`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The default of [`Registry::max_future_ms`]: five minutes of clock skew.
pub const DEFAULT_MAX_FUTURE_MS: u64 = 300_000;

/// The validation registry: the future-timestamp limit, the sensor kinds and the per-sensor
/// overrides. The default registry has no kinds and no overrides (every sensor is accepted
/// unchecked) and refuses readings more than five minutes in the future.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registry {
    /// How far a reading's `ts` may be ahead of the wall clock (clock skew), in ms, before it
    /// is refused as `future_timestamp`: an integer, or the string `"off"` to turn the check
    /// off (`None` here). Applies to every sensor, with or without rules. Default 300000.
    #[serde(with = "future_limit")]
    pub max_future_ms: Option<u64>,
    /// Sensor kinds: rules shared by all sensors whose id ends in one of the kind's names. A
    /// sensor that matches no kind and has no override is accepted unchecked.
    pub kinds: Vec<KindRules>,
    /// Per-sensor overrides, by full `sensor_id`: each field given replaces the kind's.
    pub sensors: Vec<SensorOverride>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { max_future_ms: Some(DEFAULT_MAX_FUTURE_MS), kinds: Vec::new(), sensors: Vec::new() }
    }
}

/// What to do with a reading that breaks a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Refuse it: it goes to the dead letters with the rule's reason.
    Reject,
    /// Keep it, with the rule's quality flag set.
    Flag,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Reject => "reject",
            Action::Flag => "flag",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rules of one sensor kind (`[[kinds]]`). Every check is off unless its limit is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindRules {
    /// The kind's name. A sensor is of this kind when the last `/`-separated segment of its id
    /// (the whole id when it has no `/`) is this name or one of the `aliases`, exactly
    /// (case-sensitive): `line1-pump-00/vibration` is of kind `vibration`. Required, unique.
    pub name: String,
    /// Further last segments that also mean this kind, e.g. `["vib_x", "vib_y"]`. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The expected engineering unit, compared exactly (`"mm/s"` ≠ `"mm s-1"`). A reading with
    /// another unit is refused as `unit_mismatch`; a reading without a unit passes. Default:
    /// any unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The smallest plausible value (inclusive, finite). Default: no lower bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The largest plausible value (inclusive, finite, above `min`). Default: no upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// What to do with a value outside `[min, max]`: `reject` (dead letter `out_of_range`, the
    /// default) or `flag` (kept with the `out_of_range` quality flag).
    #[serde(default = "default_range_action")]
    pub range_action: Action,
    /// The largest plausible rate of change, in value units per second: `|Δvalue| / Δt`
    /// between a reading and the sensor's previous accepted on-time reading (finite, ≥ 0).
    /// Default: no rate check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate_per_s: Option<f64>,
    /// What to do with a reading changing faster than `max_rate_per_s`: `flag` (kept with the
    /// `rate_of_change` quality flag, the default) or `reject` (dead letter `rate_of_change`).
    #[serde(default = "default_rate_action")]
    pub rate_action: Action,
}

fn default_range_action() -> Action {
    Action::Reject
}

fn default_rate_action() -> Action {
    Action::Flag
}

impl KindRules {
    /// A kind with this name and no checks, for building registries in code.
    pub fn new(name: impl Into<String>) -> Self {
        KindRules {
            name: name.into(),
            aliases: Vec::new(),
            unit: None,
            min: None,
            max: None,
            range_action: default_range_action(),
            max_rate_per_s: None,
            rate_action: default_rate_action(),
        }
    }

    fn matches(&self, segment: &str) -> bool {
        self.name == segment || self.aliases.iter().any(|a| a == segment)
    }
}

/// An override for one sensor (`[[sensors]]`): every field given replaces the kind's value.
/// A limit cannot be removed, only changed (widen it instead).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorOverride {
    /// The full sensor id this override applies to, e.g. `line1-pump-00/vibration`. Required,
    /// unique.
    pub sensor_id: String,
    /// The kind whose rules this sensor starts from. Default: the kind its id matches. When no
    /// kind applies, the sensor has only the checks this override gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Replaces the kind's `unit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Replaces the kind's `min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Replaces the kind's `max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Replaces the kind's `range_action`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_action: Option<Action>,
    /// Replaces the kind's `max_rate_per_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate_per_s: Option<f64>,
    /// Replaces the kind's `rate_action`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_action: Option<Action>,
}

impl SensorOverride {
    /// An override for this sensor that changes nothing yet, for building registries in code.
    pub fn new(sensor_id: impl Into<String>) -> Self {
        SensorOverride { sensor_id: sensor_id.into(), ..SensorOverride::default() }
    }
}

/// The resolved checks of one sensor: its kind's rules with its override applied.
///
/// `None` limits are off. Built by [`Registry::rules_for`]; can also be built directly (the
/// default has no checks).
#[derive(Debug, Clone, PartialEq)]
pub struct SensorRules {
    /// The kind the rules come from, if any (for messages).
    pub kind: Option<String>,
    /// Whether a per-sensor override changed the kind's rules (for messages).
    pub overridden: bool,
    /// The expected unit; `None` accepts any.
    pub unit: Option<String>,
    /// Inclusive lower bound.
    pub min: Option<f64>,
    /// Inclusive upper bound.
    pub max: Option<f64>,
    /// What a value outside `[min, max]` gets.
    pub range_action: Action,
    /// Largest `|Δvalue| / Δt` per second.
    pub max_rate_per_s: Option<f64>,
    /// What a reading above `max_rate_per_s` gets.
    pub rate_action: Action,
}

impl Default for SensorRules {
    fn default() -> Self {
        SensorRules {
            kind: None,
            overridden: false,
            unit: None,
            min: None,
            max: None,
            range_action: default_range_action(),
            max_rate_per_s: None,
            rate_action: default_rate_action(),
        }
    }
}

impl SensorRules {
    fn from_kind(kind: &KindRules) -> Self {
        SensorRules {
            kind: Some(kind.name.clone()),
            overridden: false,
            unit: kind.unit.clone(),
            min: kind.min,
            max: kind.max,
            range_action: kind.range_action,
            max_rate_per_s: kind.max_rate_per_s,
            rate_action: kind.rate_action,
        }
    }

    fn apply(&mut self, o: &SensorOverride) {
        self.overridden = true;
        if let Some(unit) = &o.unit {
            self.unit = Some(unit.clone());
        }
        self.min = o.min.or(self.min);
        self.max = o.max.or(self.max);
        self.range_action = o.range_action.unwrap_or(self.range_action);
        self.max_rate_per_s = o.max_rate_per_s.or(self.max_rate_per_s);
        self.rate_action = o.rate_action.unwrap_or(self.rate_action);
    }

    /// Where the rules come from, as messages say it: `kind vibration`,
    /// `kind vibration (overridden for this sensor)`, or `this sensor`.
    pub fn origin(&self) -> String {
        match (&self.kind, self.overridden) {
            (Some(kind), false) => format!("kind {kind}"),
            (Some(kind), true) => format!("kind {kind} (overridden for this sensor)"),
            (None, _) => "this sensor".to_owned(),
        }
    }
}

/// The sensor's kind name: the last `/`-separated segment of its id, or the whole id.
pub fn kind_segment(sensor_id: &str) -> &str {
    sensor_id.rsplit_once('/').map_or(sensor_id, |(_, last)| last)
}

impl Registry {
    /// Whether the registry has no kinds and no overrides (only the future check applies).
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty() && self.sensors.is_empty()
    }

    /// The rules of a sensor: its override (by exact id) applied to its kind (the override's
    /// `kind`, else the kind matching the id's last segment). `None` when neither exists: no
    /// checks beyond the future timestamp.
    ///
    /// Costs a scan of the kinds and overrides and one allocation: call it once per new sensor
    /// and keep the `Arc`. On a registry that fails [`Registry::validate`], the first matching
    /// kind and override win.
    pub fn rules_for(&self, sensor_id: &str) -> Option<Arc<SensorRules>> {
        let over = self.sensors.iter().find(|o| o.sensor_id == sensor_id);
        let kind = match over.and_then(|o| o.kind.as_deref()) {
            Some(name) => self.kinds.iter().find(|k| k.name == name),
            None => {
                let segment = kind_segment(sensor_id);
                self.kinds.iter().find(|k| k.matches(segment))
            }
        };
        let mut rules = match (kind, over) {
            (None, None) => return None,
            (Some(kind), _) => SensorRules::from_kind(kind),
            (None, Some(_)) => SensorRules::default(),
        };
        if let Some(over) = over {
            rules.apply(over);
        }
        Some(Arc::new(rules))
    }

    /// Checks the registry for mistakes; the error names the offending entry. Run it once
    /// after loading: [`Registry::rules_for`] assumes a valid registry.
    pub fn validate(&self) -> Result<(), RegistryError> {
        let mut kinds: HashMap<&str, usize> = HashMap::new();
        let mut segments: HashMap<&str, &str> = HashMap::new();
        for (index, kind) in self.kinds.iter().enumerate() {
            if kind.name.trim().is_empty() {
                return Err(RegistryError::EmptyKindName { index });
            }
            if let Some(&first) = kinds.get(kind.name.as_str()) {
                return Err(RegistryError::DuplicateKind { name: kind.name.clone(), first, second: index });
            }
            kinds.insert(&kind.name, index);
            for segment in std::iter::once(&kind.name).chain(&kind.aliases) {
                if segment.is_empty() || segment.contains('/') {
                    return Err(RegistryError::BadKindName {
                        kind: kind.name.clone(),
                        name: segment.clone(),
                    });
                }
                if let Some(&other) = segments.get(segment.as_str()) {
                    if other != kind.name {
                        return Err(RegistryError::AmbiguousName {
                            name: segment.clone(),
                            first: other.to_owned(),
                            second: kind.name.clone(),
                        });
                    }
                }
                segments.insert(segment, &kind.name);
            }
            check_rules(&SensorRules::from_kind(kind), || format!("kind `{}`", kind.name))?;
        }
        let mut overrides: HashMap<&str, usize> = HashMap::new();
        for (index, over) in self.sensors.iter().enumerate() {
            if over.sensor_id.trim().is_empty() {
                return Err(RegistryError::EmptySensorId { index });
            }
            if let Some(&first) = overrides.get(over.sensor_id.as_str()) {
                return Err(RegistryError::DuplicateSensor {
                    sensor_id: over.sensor_id.clone(),
                    first,
                    second: index,
                });
            }
            overrides.insert(&over.sensor_id, index);
            if let Some(kind) = &over.kind {
                if !kinds.contains_key(kind.as_str()) {
                    return Err(RegistryError::UnknownKind {
                        sensor_id: over.sensor_id.clone(),
                        kind: kind.clone(),
                    });
                }
            }
            let rules = self.rules_for(&over.sensor_id).unwrap_or_default();
            check_rules(&rules, || match &rules.kind {
                Some(kind) => format!("sensor `{}` (override of kind `{kind}`)", over.sensor_id),
                None => format!("sensor `{}`", over.sensor_id),
            })?;
        }
        Ok(())
    }
}

/// Checks one set of resolved rules; `entry` names it in the error.
fn check_rules(rules: &SensorRules, entry: impl Fn() -> String) -> Result<(), RegistryError> {
    if rules.unit.as_deref().is_some_and(|u| u.trim().is_empty()) {
        return Err(RegistryError::EmptyUnit { entry: entry() });
    }
    for (field, value) in [("min", rules.min), ("max", rules.max), ("max_rate_per_s", rules.max_rate_per_s)] {
        if let Some(value) = value.filter(|v| !v.is_finite()) {
            return Err(RegistryError::NotFinite { entry: entry(), field, value });
        }
    }
    if let (Some(min), Some(max)) = (rules.min, rules.max) {
        if min >= max {
            return Err(RegistryError::EmptyRange { entry: entry(), min, max });
        }
    }
    if let Some(rate) = rules.max_rate_per_s.filter(|r| *r < 0.0) {
        return Err(RegistryError::NegativeRate { entry: entry(), rate });
    }
    Ok(())
}

/// A mistake in the registry, found by [`Registry::validate`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    #[error("validation: kinds[{index}] has an empty name")]
    EmptyKindName { index: usize },
    #[error("validation: kind `{name}` is defined twice (kinds[{first}] and kinds[{second}])")]
    DuplicateKind { name: String, first: usize, second: usize },
    #[error(
        "validation: kind `{kind}`: `{name}` cannot be a sensor kind name (it must be non-empty \
         and contain no `/`: it is matched against the last segment of sensor ids)"
    )]
    BadKindName { kind: String, name: String },
    #[error("validation: sensor kind name `{name}` is claimed by both kind `{first}` and kind `{second}`")]
    AmbiguousName { name: String, first: String, second: String },
    #[error("validation: {entry}: unit is empty (leave it out to accept any unit)")]
    EmptyUnit { entry: String },
    #[error("validation: {entry}: {field} is {value}; it must be a finite number")]
    NotFinite { entry: String, field: &'static str, value: f64 },
    #[error("validation: {entry}: min {min} is not below max {max}")]
    EmptyRange { entry: String, min: f64, max: f64 },
    #[error("validation: {entry}: max_rate_per_s is {rate}; it must be zero or more")]
    NegativeRate { entry: String, rate: f64 },
    #[error("validation: sensors[{index}] has an empty sensor_id")]
    EmptySensorId { index: usize },
    #[error("validation: sensor `{sensor_id}` is overridden twice (sensors[{first}] and sensors[{second}])")]
    DuplicateSensor { sensor_id: String, first: usize, second: usize },
    #[error("validation: sensor `{sensor_id}` refers to kind `{kind}`, which is not defined in [[kinds]]")]
    UnknownKind { sensor_id: String, kind: String },
}

/// `max_future_ms` in TOML: milliseconds, or `"off"`.
mod future_limit {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(ms) => s.serialize_u64(*ms),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        struct Limit;

        impl Visitor<'_> for Limit {
            type Value = Option<u64>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative number of milliseconds, or \"off\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Some(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v).map(Some).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                // Numbers in strings too: environment overrides may arrive as text.
                match v.trim() {
                    "off" => Ok(None),
                    other => other
                        .parse::<u64>()
                        .map(Some)
                        .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }

        d.deserialize_any(Limit)
    }
}
