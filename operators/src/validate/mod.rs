//! Plausibility checks of decoded readings, driven by a sensor registry.
//!
//! The decoders check that a record *is* a reading (the input contract); this module checks
//! that a reading is *plausible* for its sensor: not too far in the future, in the expected
//! unit, inside the physical range of its kind, not changing faster than the sensor can.
//! What is checked comes from the [`Registry`] (the `[validation]` section of the
//! configuration, or a standalone file of the same shape; see
//! `config/examples/sensors.toml`): sensor *kinds* matched by the last segment of the sensor
//! id (`line1-pump-00/vibration` is of kind `vibration`), and per-sensor overrides.
//!
//! # How the dataflow uses it
//!
//! Validation runs per sensor, after decoding and before scoring, on each sensor's readings
//! in event-time order (the same place, and the same order, as the stateful scoring step):
//!
//! 1. On a sensor's first reading, resolve its rules once with [`Registry::rules_for`] and
//!    keep the `Option<Arc<SensorRules>>` and a [`ValidationState`] with the sensor's state.
//! 2. For each on-time reading call [`validate`]; for a late reading kept by the late policy
//!    call [`validate_late`] (no rate check, no state change). A sensor without rules only
//!    gets [`check_future`].
//! 3. [`Check::Reject`] → a dead letter with that [`Reason`](millstream_events::Reason) and
//!    detail (and the record's raw text and source location), not scored.
//! 4. [`Check::Pass`] with empty flags → scored as usual. With flags → kept and written out
//!    with the [`QualityFlags`] names, but callers should not feed flagged readings into
//!    detector statistics (a flagged value would poison the baseline).
//!
//! `now_ms` is the wall clock (`millstream_events::time::now_ms()`), taken once per batch;
//! `max_future_ms` is [`Registry::max_future_ms`]. No I/O and no timely here: everything is
//! a pure function of the rules, the state and the reading.
//!
//! ```
//! use millstream_events::Reading;
//! use millstream_operators::validate::{validate, Check, KindRules, Registry, ValidationState};
//!
//! let mut registry = Registry::default();
//! let mut vibration = KindRules::new("vibration");
//! vibration.max = Some(50.0);
//! registry.kinds.push(vibration);
//! registry.validate().unwrap();
//!
//! let rules = registry.rules_for("line1-pump-00/vibration").unwrap();
//! let mut state = ValidationState::new();
//! let reading = Reading {
//!     sensor_id: "line1-pump-00/vibration".into(),
//!     asset_id: "line1-pump-00".into(),
//!     ts: 1_772_323_200_000,
//!     value: 93.2,
//!     unit: None,
//! };
//! let check = validate(&rules, &mut state, &reading, reading.ts, registry.max_future_ms);
//! assert_eq!(
//!     check,
//!     Check::Reject {
//!         reason: millstream_events::Reason::OutOfRange,
//!         detail: "value 93.2 above the maximum 50 for kind vibration".into(),
//!     }
//! );
//! ```

mod checks;
mod registry;

#[cfg(test)]
mod tests;

pub use checks::{check_future, validate, validate_late, Check, QualityFlags, ValidationState};
pub use registry::{
    kind_segment, Action, KindRules, Registry, RegistryError, SensorOverride, SensorRules,
    DEFAULT_MAX_FUTURE_MS,
};
