//! The sensor registry (`operators/src/validate/`), from TOML: the `[validation]` section of
//! the configuration, read the way `dataflow/src/config.rs` reads it (figment over the
//! defaults, then `Registry::validate`), and the same text through `toml` directly (the
//! standalone registry file of the same shape).
//!
//! Invariants: parsing and validating never panic, nor overflow a small stack (see
//! `common::on_small_stack`: TOML nests too); a registry that validates serializes to
//! TOML and parses back to the same registry; resolving the rules of any sensor id never
//! panics; and validating readings against those rules never panics and, when it refuses,
//! gives one of the registry's reasons (`future_timestamp`, `unit_mismatch`, `out_of_range`,
//! `rate_of_change`) or `non_finite`.
#![no_main]

mod common;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use libfuzzer_sys::fuzz_target;
use millstream_events::{Reading, Reason};
use millstream_operators::validate::{validate, validate_late, Check, Registry, ValidationState};

/// The wall clock the checks are run at (2026-03-01T00:00:00Z): fixed, so runs reproduce.
const NOW_MS: u64 = 1_772_323_200_000;

fuzz_target!(|data: &[u8]| common::on_small_stack(data, check));

fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let via_figment = Figment::from(Serialized::defaults(Registry::default()))
        .merge(Toml::string(text))
        .extract::<Registry>();
    let direct = toml::from_str::<Registry>(text);
    for registry in [via_figment.ok(), direct.ok()].into_iter().flatten() {
        if registry.validate().is_err() {
            // The loader refuses it; `rules_for` on it must still not panic.
            let _ = registry.rules_for("a/b");
            continue;
        }
        let shown = toml::to_string(&registry).expect("a valid registry serializes");
        let back: Registry =
            toml::from_str(&shown).unwrap_or_else(|e| panic!("{shown}\ndoes not parse: {e}"));
        assert_eq!(back, registry, "TOML round trip through\n{shown}");
        exercise(&registry, data);
    }
}

/// Resolves the rules of sensor ids made from the registry's own names, and validates a few
/// readings (values and times taken from the input) against each.
fn exercise(registry: &Registry, data: &[u8]) {
    let mut ids: Vec<String> = vec!["line1-pump-00/vibration".into(), String::new(), "/".into()];
    ids.extend(registry.sensors.iter().map(|s| s.sensor_id.clone()));
    for kind in &registry.kinds {
        ids.push(format!("asset/{}", kind.name));
        ids.extend(kind.aliases.iter().map(|a| format!("x/y/{a}")));
    }
    let mut floats = data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")));
    let values: Vec<f64> = [0.0, -1e300, 1e300, 50.0, f64::NAN]
        .into_iter()
        .chain((0..4).filter_map(|_| floats.next()))
        .collect();
    for id in ids.iter().take(64) {
        let Some(rules) = registry.rules_for(id) else { continue };
        let mut state = ValidationState::new();
        for (i, &value) in values.iter().enumerate() {
            let reading = Reading {
                sensor_id: id.as_str().into(),
                asset_id: Reading::default_asset_id(id).into(),
                ts: NOW_MS - 10_000 + i as u64 * 997,
                value,
                unit: rules.unit.as_deref().filter(|_| i % 2 == 0).map(Into::into).or(Some("x".into())),
            };
            for check in [
                validate(&rules, &mut state, &reading, NOW_MS, registry.max_future_ms),
                validate_late(&rules, &reading, NOW_MS, registry.max_future_ms),
            ] {
                if let Check::Reject { reason, detail } = check {
                    assert!(
                        matches!(
                            reason,
                            Reason::FutureTimestamp
                                | Reason::UnitMismatch
                                | Reason::OutOfRange
                                | Reason::RateOfChange
                                | Reason::NonFinite
                        ),
                        "{reason}: {detail}"
                    );
                    assert!(!detail.is_empty());
                }
            }
        }
    }
}
