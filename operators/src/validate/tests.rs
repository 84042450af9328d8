use std::sync::Arc;

use millstream_events::{Reading, Reason};
use proptest::prelude::*;

use super::*;

const T0: u64 = 1_772_323_200_000; // 2026-03-01T00:00:00Z
const MIN: u64 = 60_000;

fn reading(sensor_id: &str, ts: u64, value: f64) -> Reading {
    Reading {
        sensor_id: sensor_id.into(),
        asset_id: Reading::default_asset_id(sensor_id).into(),
        ts,
        value,
        unit: None,
    }
}

fn with_unit(mut r: Reading, unit: &str) -> Reading {
    r.unit = Some(unit.into());
    r
}

fn vibration() -> SensorRules {
    SensorRules {
        kind: Some("vibration".into()),
        unit: Some("mm/s".into()),
        min: Some(0.0),
        max: Some(50.0),
        max_rate_per_s: Some(20.0),
        ..SensorRules::default()
    }
}

const VIB: &str = "line1-pump-00/vibration";

fn rejected(check: Check) -> (Reason, String) {
    match check {
        Check::Reject { reason, detail } => (reason, detail),
        Check::Pass(flags) => panic!("expected a rejection, got a pass {flags:?}"),
    }
}

fn passed(check: Check) -> QualityFlags {
    match check {
        Check::Pass(flags) => flags,
        Check::Reject { reason, detail } => panic!("expected a pass, got {reason}: {detail}"),
    }
}

// ---------------------------------------------------------------- quality flags

#[test]
fn quality_flags_set_operations_and_names() {
    let mut flags = QualityFlags::EMPTY;
    assert!(flags.is_empty());
    assert_eq!(flags.names().count(), 0);
    flags.insert(QualityFlags::RATE_OF_CHANGE);
    assert!(!flags.is_empty());
    assert!(flags.contains(QualityFlags::RATE_OF_CHANGE));
    assert!(!flags.contains(QualityFlags::OUT_OF_RANGE));
    flags |= QualityFlags::OUT_OF_RANGE;
    assert!(flags.contains(QualityFlags::OUT_OF_RANGE | QualityFlags::RATE_OF_CHANGE));
    assert_eq!(flags.names().collect::<Vec<_>>(), ["out_of_range", "rate_of_change"]);
    assert_eq!(flags.to_string(), "out_of_range,rate_of_change");
    assert_eq!(format!("{flags:?}"), r#"["out_of_range", "rate_of_change"]"#);
    assert_eq!(std::mem::size_of::<QualityFlags>(), 1);
}

#[test]
fn quality_flags_serialise_as_a_list_of_names() {
    let flags = QualityFlags::OUT_OF_RANGE | QualityFlags::RATE_OF_CHANGE;
    assert_eq!(serde_json::to_string(&flags).unwrap(), r#"["out_of_range","rate_of_change"]"#);
    assert_eq!(serde_json::to_string(&QualityFlags::EMPTY).unwrap(), "[]");
    let back: QualityFlags = serde_json::from_str(r#"["rate_of_change"]"#).unwrap();
    assert_eq!(back, QualityFlags::RATE_OF_CHANGE);
    let err = serde_json::from_str::<QualityFlags>(r#"["stale"]"#).unwrap_err().to_string();
    assert!(err.contains("stale"), "{err}");
}

// ---------------------------------------------------------------- future timestamp

#[test]
fn future_timestamp_is_refused_with_how_far_ahead() {
    let rules = SensorRules::default();
    let mut state = ValidationState::new();
    let check = validate(&rules, &mut state, &reading(VIB, T0 + 10 * MIN, 1.0), T0, Some(5 * MIN));
    let (reason, detail) = rejected(check);
    assert_eq!(reason, Reason::FutureTimestamp);
    assert_eq!(
        detail,
        "ts 2026-03-01T00:10:00.000Z is 600000 ms ahead of the clock (2026-03-01T00:00:00.000Z); \
         at most 300000 ms is allowed"
    );
    assert_eq!(state, ValidationState::new());
}

#[test]
fn future_limit_is_inclusive_and_can_be_off() {
    assert_eq!(check_future(T0 + 5 * MIN, T0, Some(5 * MIN)), None);
    assert!(check_future(T0 + 5 * MIN + 1, T0, Some(5 * MIN)).is_some());
    assert_eq!(check_future(u64::MAX, T0, None), None);
    assert_eq!(check_future(u64::MAX, u64::MAX, Some(u64::MAX)), None, "no overflow");
    assert_eq!(check_future(T0 + 1, T0, Some(0)).unwrap().reason, Reason::FutureTimestamp);
    // Timestamps beyond year 9999 are still described.
    let r = check_future(u64::MAX, 0, Some(0)).unwrap();
    assert!(r.detail.contains(&u64::MAX.to_string()), "{}", r.detail);
}

// ---------------------------------------------------------------- unit

#[test]
fn unit_mismatch_names_expected_and_got() {
    let mut state = ValidationState::new();
    let check = validate(&vibration(), &mut state, &with_unit(reading(VIB, T0, 1.0), "in/s"), T0, None);
    let (reason, detail) = rejected(check);
    assert_eq!(reason, Reason::UnitMismatch);
    assert_eq!(detail, "unit `in/s` where kind vibration expects `mm/s`");
}

#[test]
fn matching_or_missing_unit_passes_and_unitless_rules_accept_any() {
    let mut state = ValidationState::new();
    let rules = vibration();
    assert!(
        passed(validate(&rules, &mut state, &with_unit(reading(VIB, T0, 1.0), "mm/s"), T0, None)).is_empty()
    );
    assert!(passed(validate(&rules, &mut state, &reading(VIB, T0 + 1000, 1.0), T0, None)).is_empty());
    let any = SensorRules { unit: None, ..vibration() };
    assert!(passed(validate(&any, &mut state, &with_unit(reading(VIB, T0 + 2000, 1.0), "g"), T0, None))
        .is_empty());
}

// ---------------------------------------------------------------- range

#[test]
fn range_reject_names_value_limit_and_kind() {
    let rules = vibration();
    let mut state = ValidationState::new();
    let (reason, detail) = rejected(validate(&rules, &mut state, &reading(VIB, T0, 93.2), T0, None));
    assert_eq!(reason, Reason::OutOfRange);
    assert_eq!(detail, "value 93.2 above the maximum 50 for kind vibration");
    let (reason, detail) = rejected(validate(&rules, &mut state, &reading(VIB, T0, -0.5), T0, None));
    assert_eq!(reason, Reason::OutOfRange);
    assert_eq!(detail, "value -0.5 below the minimum 0 for kind vibration");
    assert_eq!(state.last_accepted(), None, "rejects do not update the state");
}

#[test]
fn range_bounds_are_inclusive() {
    let rules = vibration();
    let mut state = ValidationState::new();
    assert!(passed(validate(&rules, &mut state, &reading(VIB, T0, 0.0), T0, None)).is_empty());
    // 50 in 10 s is 5/s, within the rate limit.
    assert!(passed(validate(&rules, &mut state, &reading(VIB, T0 + 10_000, 50.0), T0, None)).is_empty());
}

#[test]
fn range_flag_keeps_the_reading_flagged_and_updates_the_state() {
    let rules = SensorRules { range_action: Action::Flag, ..vibration() };
    let mut state = ValidationState::new();
    let flags = passed(validate(&rules, &mut state, &reading(VIB, T0, 60.0), T0, None));
    assert_eq!(flags, QualityFlags::OUT_OF_RANGE);
    assert_eq!(state.last_accepted(), Some((T0, 60.0)));
}

#[test]
fn one_sided_ranges() {
    let floor = SensorRules { min: Some(0.0), ..SensorRules::default() };
    let mut state = ValidationState::new();
    assert!(validate(&floor, &mut state, &reading(VIB, T0, 1e300), T0, None).is_pass());
    assert!(!validate(&floor, &mut state, &reading(VIB, T0, -1e-300), T0, None).is_pass());
    let ceiling = SensorRules { max: Some(0.0), ..SensorRules::default() };
    assert!(validate(&ceiling, &mut state, &reading(VIB, T0, -1e300), T0, None).is_pass());
    let (_, detail) = rejected(validate(&ceiling, &mut state, &reading(VIB, T0, 1e300), T0, None));
    assert_eq!(detail, "value 1e300 above the maximum 0 for this sensor");
}

#[test]
fn non_finite_values_are_refused() {
    let mut state = ValidationState::new();
    for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let check = validate(&SensorRules::default(), &mut state, &reading(VIB, T0, value), T0, None);
        assert_eq!(rejected(check).0, Reason::NonFinite);
    }
    assert_eq!(state.last_accepted(), None);
}

// ---------------------------------------------------------------- rate of change

#[test]
fn rate_flag_is_against_the_last_accepted_reading() {
    let rules = vibration(); // 20/s, flag
    let mut state = ValidationState::new();
    assert!(passed(validate(&rules, &mut state, &reading(VIB, T0, 10.0), T0, None)).is_empty());
    // +10 in 0.5 s = 20/s: at the limit, passes.
    assert!(passed(validate(&rules, &mut state, &reading(VIB, T0 + 500, 20.0), T0, None)).is_empty());
    // -15 in 0.5 s = 30/s: flagged, and becomes the base.
    let flags = passed(validate(&rules, &mut state, &reading(VIB, T0 + 1000, 5.0), T0, None));
    assert_eq!(flags, QualityFlags::RATE_OF_CHANGE);
    assert_eq!(state.last_accepted(), Some((T0 + 1000, 5.0)));
    assert!(passed(validate(&rules, &mut state, &reading(VIB, T0 + 2000, 6.0), T0, None)).is_empty());
}

#[test]
fn rate_reject_names_rate_limit_and_step_and_keeps_the_state() {
    let rules = SensorRules { rate_action: Action::Reject, ..vibration() };
    let mut state = ValidationState::new();
    assert!(validate(&rules, &mut state, &reading(VIB, T0, 10.0), T0, None).is_pass());
    let (reason, detail) = rejected(validate(&rules, &mut state, &reading(VIB, T0 + 300, 20.0), T0, None));
    assert_eq!(reason, Reason::RateOfChange);
    assert_eq!(
        detail,
        "rate of change 33.333/s above the maximum 20/s for kind vibration (from 10 to 20 in 0.3 s)"
    );
    assert_eq!(state.last_accepted(), Some((T0, 10.0)));
    // The next reading is compared with the last accepted one (10 at T0), not the refused 20.
    assert!(validate(&rules, &mut state, &reading(VIB, T0 + 1000, 20.0), T0, None).is_pass());
}

#[test]
fn first_reading_and_same_timestamp_pass_the_rate_check() {
    let rules =
        SensorRules { max_rate_per_s: Some(0.0), rate_action: Action::Reject, ..SensorRules::default() };
    let mut state = ValidationState::new();
    assert!(validate(&rules, &mut state, &reading(VIB, T0, 1e9), T0, None).is_pass());
    assert!(validate(&rules, &mut state, &reading(VIB, T0, -1e9), T0, None).is_pass());
    assert_eq!(state.last_accepted(), Some((T0, -1e9)));
    assert!(!validate(&rules, &mut state, &reading(VIB, T0 + 1, 0.0), T0, None).is_pass());
    // A zero limit accepts an unchanged value.
    assert!(validate(&rules, &mut state, &reading(VIB, T0 + 1, -1e9), T0, None).is_pass());
}

#[test]
fn out_of_order_reading_does_not_move_the_state_back() {
    let rules = vibration();
    let mut state = ValidationState::new();
    assert!(validate(&rules, &mut state, &reading(VIB, T0 + 1000, 1.0), T0, None).is_pass());
    assert!(validate(&rules, &mut state, &reading(VIB, T0, 2.0), T0, None).is_pass());
    assert_eq!(state.last_accepted(), Some((T0 + 1000, 1.0)));
}

#[test]
fn both_flags_at_once() {
    let rules = SensorRules { range_action: Action::Flag, ..vibration() };
    let mut state = ValidationState::new();
    assert!(validate(&rules, &mut state, &reading(VIB, T0, 10.0), T0, None).is_pass());
    let flags = passed(validate(&rules, &mut state, &reading(VIB, T0 + 100, 70.0), T0, None));
    assert_eq!(flags, QualityFlags::OUT_OF_RANGE | QualityFlags::RATE_OF_CHANGE);
}

// ---------------------------------------------------------------- order and late readings

#[test]
fn checks_run_in_order_future_unit_range_rate() {
    let rules = SensorRules { rate_action: Action::Reject, ..vibration() };
    let mut state = ValidationState::new();
    assert!(validate(&rules, &mut state, &reading(VIB, T0, 0.0), T0, None).is_pass());
    let all_wrong = with_unit(reading(VIB, T0 + 10 * MIN, 1e6), "g");
    let check = |r: &Reading, state: &mut ValidationState| validate(&rules, state, r, T0, Some(MIN));
    assert_eq!(rejected(check(&all_wrong, &mut state)).0, Reason::FutureTimestamp);
    let r = Reading { ts: T0 + 1, ..all_wrong.clone() };
    assert_eq!(rejected(check(&r, &mut state)).0, Reason::UnitMismatch);
    let r = Reading { unit: None, ..r };
    assert_eq!(rejected(check(&r, &mut state)).0, Reason::OutOfRange);
    let r = Reading { value: 49.0, ..r };
    assert_eq!(rejected(check(&r, &mut state)).0, Reason::RateOfChange);
}

#[test]
fn late_readings_get_stateless_checks_only() {
    let rules = SensorRules { rate_action: Action::Reject, range_action: Action::Flag, ..vibration() };
    let mut state = ValidationState::new();
    assert!(validate(&rules, &mut state, &reading(VIB, T0, 0.0), T0, None).is_pass());
    let before = state;
    // A jump no rate limit allows, but late readings are not rate-checked.
    assert!(passed(validate_late(&rules, &reading(VIB, T0 - 1, 49.0), T0, None)).is_empty());
    assert_eq!(
        validate_late(&rules, &reading(VIB, T0 - 1, 51.0), T0, None),
        Check::Pass(QualityFlags::OUT_OF_RANGE)
    );
    let late_unit = with_unit(reading(VIB, T0 - 1, 1.0), "g");
    assert_eq!(rejected(validate_late(&rules, &late_unit, T0, None)).0, Reason::UnitMismatch);
    assert_eq!(
        rejected(validate_late(&rules, &reading(VIB, T0 + MIN, 1.0), T0, Some(0))).0,
        Reason::FutureTimestamp
    );
    assert_eq!(state, before);
}

#[test]
fn check_converts_to_result() {
    assert_eq!(Check::Pass(QualityFlags::OUT_OF_RANGE).into_result(), Ok(QualityFlags::OUT_OF_RANGE));
    let rejection = millstream_events::Rejection::new(Reason::OutOfRange, "x");
    assert_eq!(Check::from(rejection.clone()).into_result(), Err(rejection));
}

// ---------------------------------------------------------------- registry parsing

fn parse(text: &str) -> Registry {
    toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
}

/// The `[validation]` section of the example configuration.
fn example_registry() -> Registry {
    #[derive(serde::Deserialize)]
    struct File {
        validation: Registry,
    }
    let file: File = toml::from_str(include_str!("../../../config/examples/sensors.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    file.validation
}

fn parse_err(text: &str) -> String {
    toml::from_str::<Registry>(text).unwrap_err().to_string()
}

#[test]
fn example_file_parses_validates_and_resolves() {
    let registry = example_registry();
    registry.validate().unwrap();
    assert_eq!(registry.max_future_ms, Some(300_000));
    assert_eq!(registry.kinds.len(), 3);

    let pump0 = registry.rules_for("line1-pump-00/vibration").unwrap();
    assert_eq!(pump0.max, Some(80.0), "the override replaces max");
    assert_eq!(pump0.min, Some(0.0), "the rest is the kind's");
    assert_eq!(pump0.unit.as_deref(), Some("mm/s"));
    assert_eq!(pump0.origin(), "kind vibration (overridden for this sensor)");

    let pump1 = registry.rules_for("line1-pump-01/vibration").unwrap();
    assert_eq!(pump1.max, Some(50.0));
    assert_eq!(pump1.max_rate_per_s, Some(20.0));
    assert_eq!((pump1.range_action, pump1.rate_action), (Action::Reject, Action::Flag));
    assert_eq!(pump1.origin(), "kind vibration");
    assert_eq!(registry.rules_for("line1-pump-01/vib_y").unwrap().kind.as_deref(), Some("vibration"));

    let oven = registry.rules_for("line2-oven-03/zone2").unwrap();
    assert_eq!(oven.kind.as_deref(), Some("temperature"));
    assert_eq!((oven.min, oven.max), (Some(-40.0), Some(400.0)));
    assert_eq!((oven.range_action, oven.rate_action), (Action::Flag, Action::Reject));

    assert_eq!(registry.rules_for("line2-oven-03/zone1"), None);
    assert_eq!(registry.rules_for("line1-pump-00/Vibration"), None, "names are case-sensitive");
    assert_eq!(registry.rules_for("vibration/line1"), None, "only the last segment counts");
    assert!(registry.rules_for("temp").is_some(), "an id without `/` is its own kind name");
}

#[test]
fn registry_is_a_section_of_a_larger_config() {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        #[serde(default)]
        validation: Registry,
    }
    let config: Config = toml::from_str(
        r#"
        [validation]
        max_future_ms = 1000
        [[validation.kinds]]
        name = "pressure"
        max = 16.0
        [[validation.sensors]]
        sensor_id = "a/pressure"
        range_action = "flag"
        "#,
    )
    .unwrap();
    let rules = config.validation.rules_for("a/pressure").unwrap();
    assert_eq!((rules.max, rules.range_action), (Some(16.0), Action::Flag));
    assert_eq!(config.validation.max_future_ms, Some(1000));
    let empty: Config = toml::from_str("").unwrap();
    assert_eq!(empty.validation, Registry::default());
}

#[test]
fn defaults() {
    let registry = parse("");
    assert_eq!(registry, Registry::default());
    assert_eq!(registry.max_future_ms, Some(DEFAULT_MAX_FUTURE_MS));
    assert!(registry.is_empty());
    assert_eq!(registry.rules_for("a/b"), None);
    let one = parse("[[kinds]]\nname = \"x\"");
    let kind = &one.kinds[0];
    assert_eq!(kind, &KindRules::new("x"));
    assert_eq!((kind.range_action, kind.rate_action), (Action::Reject, Action::Flag));
}

#[test]
fn max_future_ms_accepts_off_and_refuses_negatives() {
    assert_eq!(parse(r#"max_future_ms = "off""#).max_future_ms, None);
    assert_eq!(parse(r#"max_future_ms = "2500""#).max_future_ms, Some(2500));
    assert_eq!(parse("max_future_ms = 0").max_future_ms, Some(0));
    let err = parse_err("max_future_ms = -1");
    assert!(err.contains("milliseconds, or \"off\""), "{err}");
    let err = parse_err(r#"max_future_ms = "never""#);
    assert!(err.contains("never"), "{err}");
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let err = parse_err("max_future = 5");
    assert!(err.contains("unknown field `max_future`"), "{err}");
    let err = parse_err("[[kinds]]\nname = \"v\"\nmaximum = 5.0");
    assert!(err.contains("unknown field `maximum`"), "{err}");
    let err = parse_err("[[sensors]]\nsensor_id = \"a/v\"\nlimit = 5.0");
    assert!(err.contains("unknown field `limit`"), "{err}");
    let err = parse_err("[[kinds]]\nname = \"v\"\nrange_action = \"drop\"");
    assert!(err.contains("unknown variant `drop`"), "{err}");
    let err = parse_err("[[kinds]]\nmax = 5.0");
    assert!(err.contains("missing field `name`"), "{err}");
}

#[test]
fn registry_round_trips_through_toml() {
    let registry = example_registry();
    let text = toml::to_string(&registry).unwrap();
    assert_eq!(parse(&text), registry);
    let off = Registry { max_future_ms: None, ..Registry::default() };
    assert_eq!(parse(&toml::to_string(&off).unwrap()), off);
}

// ---------------------------------------------------------------- registry validation

fn invalid(text: &str) -> String {
    parse(text).validate().unwrap_err().to_string()
}

#[test]
fn validation_errors_name_the_entry() {
    let cases = [
        ("[[kinds]]\nname = \"\"", "validation: kinds[0] has an empty name"),
        (
            "[[kinds]]\nname = \"v\"\n[[kinds]]\nname = \"v\"",
            "validation: kind `v` is defined twice (kinds[0] and kinds[1])",
        ),
        (
            "[[kinds]]\nname = \"v\"\naliases = [\"a/b\"]",
            "validation: kind `v`: `a/b` cannot be a sensor kind name",
        ),
        (
            "[[kinds]]\nname = \"v\"\n[[kinds]]\nname = \"w\"\naliases = [\"v\"]",
            "validation: sensor kind name `v` is claimed by both kind `v` and kind `w`",
        ),
        ("[[kinds]]\nname = \"v\"\nmin = 5.0\nmax = 5.0", "validation: kind `v`: min 5 is not below max 5"),
        ("[[kinds]]\nname = \"v\"\nmin = 6.0\nmax = 5.0", "validation: kind `v`: min 6 is not below max 5"),
        (
            "[[kinds]]\nname = \"v\"\nmax = nan",
            "validation: kind `v`: max is NaN; it must be a finite number",
        ),
        (
            "[[kinds]]\nname = \"v\"\nmin = -inf",
            "validation: kind `v`: min is -inf; it must be a finite number",
        ),
        (
            "[[kinds]]\nname = \"v\"\nmax_rate_per_s = -1.0",
            "validation: kind `v`: max_rate_per_s is -1; it must be zero or more",
        ),
        (
            "[[kinds]]\nname = \"v\"\nmax_rate_per_s = inf",
            "validation: kind `v`: max_rate_per_s is inf; it must be a finite number",
        ),
        ("[[kinds]]\nname = \"v\"\nunit = \" \"", "validation: kind `v`: unit is empty"),
        ("[[sensors]]\nsensor_id = \"\"", "validation: sensors[0] has an empty sensor_id"),
        (
            "[[sensors]]\nsensor_id = \"a/v\"\n[[sensors]]\nsensor_id = \"a/v\"",
            "validation: sensor `a/v` is overridden twice (sensors[0] and sensors[1])",
        ),
        (
            "[[sensors]]\nsensor_id = \"a/v\"\nkind = \"vib\"",
            "validation: sensor `a/v` refers to kind `vib`, which is not defined",
        ),
        (
            "[[kinds]]\nname = \"v\"\nmin = 0.0\nmax = 10.0\n[[sensors]]\nsensor_id = \"a/v\"\nmax = -1.0",
            "validation: sensor `a/v` (override of kind `v`): min 0 is not below max -1",
        ),
        (
            "[[sensors]]\nsensor_id = \"a/x\"\nmin = nan",
            "validation: sensor `a/x`: min is NaN; it must be a finite number",
        ),
    ];
    for (text, expected) in cases {
        let err = invalid(text);
        assert!(err.starts_with(expected), "for\n{text}\ngot:      {err}\nexpected: {expected}");
    }
}

#[test]
fn valid_registries_pass() {
    parse("").validate().unwrap();
    parse("[[kinds]]\nname = \"v\"\naliases = [\"v\", \"w\"]\nmax_rate_per_s = 0.0").validate().unwrap();
    parse("[[sensors]]\nsensor_id = \"lonely\"\nmax = 3.0").validate().unwrap();
}

// ---------------------------------------------------------------- overrides

#[test]
fn overrides_replace_each_given_field() {
    let mut registry = Registry::default();
    let mut kind = KindRules::new("vibration");
    kind.unit = Some("mm/s".into());
    kind.min = Some(0.0);
    kind.max = Some(50.0);
    kind.max_rate_per_s = Some(20.0);
    registry.kinds.push(kind);
    let mut over = SensorOverride::new(VIB);
    over.unit = Some("in/s".into());
    over.min = Some(-1.0);
    over.range_action = Some(Action::Flag);
    over.max_rate_per_s = Some(5.0);
    over.rate_action = Some(Action::Reject);
    registry.sensors.push(over);
    registry.validate().unwrap();
    let rules = registry.rules_for(VIB).unwrap();
    let expected = SensorRules {
        kind: Some("vibration".into()),
        overridden: true,
        unit: Some("in/s".into()),
        min: Some(-1.0),
        max: Some(50.0),
        range_action: Action::Flag,
        max_rate_per_s: Some(5.0),
        rate_action: Action::Reject,
    };
    assert_eq!(*rules, expected);
    // Other sensors of the kind are unaffected.
    assert_eq!(registry.rules_for("p/vibration").unwrap().max_rate_per_s, Some(20.0));
}

#[test]
fn an_override_without_a_kind_has_only_its_own_checks() {
    let registry = parse("[[sensors]]\nsensor_id = \"x/odd\"\nmax = 3.0");
    let rules = registry.rules_for("x/odd").unwrap();
    assert_eq!(*rules, SensorRules { overridden: true, max: Some(3.0), ..SensorRules::default() });
    assert_eq!(rules.origin(), "this sensor");
}

#[test]
fn override_kind_beats_the_id_match() {
    let registry = parse(
        "[[kinds]]\nname = \"temp\"\nmax = 10.0\n[[kinds]]\nname = \"hot\"\nmax = 500.0\n\
         [[sensors]]\nsensor_id = \"oven/temp\"\nkind = \"hot\"",
    );
    registry.validate().unwrap();
    assert_eq!(registry.rules_for("oven/temp").unwrap().max, Some(500.0));
    assert_eq!(registry.rules_for("room/temp").unwrap().max, Some(10.0));
}

#[test]
fn kind_segment_is_the_last_path_segment() {
    assert_eq!(kind_segment("line1-pump-00/vibration"), "vibration");
    assert_eq!(kind_segment("plant/line1/pump/temp"), "temp");
    assert_eq!(kind_segment("lonely"), "lonely");
    assert_eq!(kind_segment("trailing/"), "");
}

// ---------------------------------------------------------------- properties

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => any::<f64>(),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(-0.0),
        2 => -100.0..100.0f64,
    ]
}

fn any_rules() -> impl Strategy<Value = SensorRules> {
    (
        proptest::option::of(-1e6..1e6f64),
        proptest::option::of(0.0..1e6f64),
        proptest::option::of(0.0..1e3f64),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(Just("u".to_owned())),
    )
        .prop_map(|(min, width, rate, range_flag, rate_flag, unit)| SensorRules {
            kind: Some("k".into()),
            overridden: false,
            unit,
            min,
            max: width.map(|w| min.unwrap_or(0.0) + w + 1.0),
            range_action: if range_flag { Action::Flag } else { Action::Reject },
            max_rate_per_s: rate,
            rate_action: if rate_flag { Action::Flag } else { Action::Reject },
        })
}

fn any_reading() -> impl Strategy<Value = Reading> {
    (
        prop_oneof![any::<u64>(), T0 - 10 * MIN..T0 + 10 * MIN],
        any_f64(),
        proptest::option::of(prop_oneof![Just("u"), Just("v")]),
    )
        .prop_map(|(ts, value, unit)| Reading { unit: unit.map(Into::into), ..reading(VIB, ts, value) })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Never panics, whatever the value, timestamp, clock and limit; rejects never touch the
    /// state; passes (on or after the last ts) become the last reading.
    #[test]
    fn validate_is_total_and_rejects_keep_the_state(
        rules in any_rules(),
        readings in proptest::collection::vec(any_reading(), 1..20),
        now in prop_oneof![any::<u64>(), Just(T0)],
        limit in proptest::option::of(prop_oneof![any::<u64>(), Just(5 * MIN)]),
    ) {
        let mut state = ValidationState::new();
        for r in &readings {
            let before = state;
            let late = validate_late(&rules, r, now, limit);
            match validate(&rules, &mut state, r, now, limit) {
                Check::Reject { detail, .. } => {
                    prop_assert_eq!(state, before);
                    prop_assert!(!detail.is_empty());
                }
                Check::Pass(flags) => {
                    let newer = before.last_accepted().is_none_or(|(ts, _)| r.ts >= ts);
                    let expected = if newer { Some((r.ts, r.value)) } else { before.last_accepted() };
                    prop_assert_eq!(state.last_accepted(), expected);
                    // The late check is the on-time one without the rate check.
                    let mut expected = passed(late);
                    if flags.contains(QualityFlags::RATE_OF_CHANGE) {
                        expected.insert(QualityFlags::RATE_OF_CHANGE);
                    }
                    prop_assert_eq!(flags, expected);
                }
            }
        }
    }

    /// Readings inside [min, max] that change no faster than the limit always pass unflagged.
    #[test]
    fn plausible_readings_pass_unflagged(
        min in -1e6..1e6f64,
        width in 1e-3..1e6f64,
        fractions in proptest::collection::vec(0.0..=1.0f64, 1..30),
        gaps in proptest::collection::vec(0u64..60_000, 30),
        headroom in 0.0..10.0f64,
        actions in (any::<bool>(), any::<bool>()),
    ) {
        let max = min + width;
        let mut ts = T0;
        let series: Vec<(u64, f64)> = fractions
            .iter()
            .zip(&gaps)
            .map(|(f, gap)| {
                ts += gap;
                (ts, (min + f * width).clamp(min, max))
            })
            .collect();
        // The fastest change of the series, computed as the check computes it.
        let fastest = series
            .windows(2)
            .filter(|w| w[1].0 > w[0].0)
            .map(|w| (w[1].1 - w[0].1).abs() / ((w[1].0 - w[0].0) as f64 / 1000.0))
            .fold(0.0, f64::max);
        let action = |flag| if flag { Action::Flag } else { Action::Reject };
        let rules = SensorRules {
            unit: Some("bar".into()),
            min: Some(min),
            max: Some(max),
            range_action: action(actions.0),
            max_rate_per_s: Some(fastest + headroom),
            rate_action: action(actions.1),
            ..SensorRules::default()
        };
        let mut state = ValidationState::new();
        for &(ts, value) in &series {
            let r = with_unit(reading(VIB, ts, value), "bar");
            let check = validate(&rules, &mut state, &r, ts, Some(0));
            prop_assert_eq!(check, Check::Pass(QualityFlags::EMPTY));
        }
    }

    /// A rise and a fall of the same size in the same time get the same verdict.
    #[test]
    fn rate_check_is_symmetric_in_sign(
        a in -1e6..1e6f64,
        step in -1e4..1e4f64,
        dt in 0u64..10_000,
        limit in 0.0..1e4f64,
        reject in any::<bool>(),
    ) {
        let rules = SensorRules {
            max_rate_per_s: Some(limit),
            rate_action: if reject { Action::Reject } else { Action::Flag },
            ..SensorRules::default()
        };
        let outcome = |from: f64, to: f64| {
            let mut state = ValidationState::new();
            let first = validate(&rules, &mut state, &reading(VIB, T0, from), T0, None);
            assert!(first.is_pass());
            match validate(&rules, &mut state, &reading(VIB, T0 + dt, to), T0, None) {
                Check::Pass(flags) => Ok(flags),
                Check::Reject { reason, .. } => Err(reason),
            }
        };
        let b = a + step;
        let up = outcome(a, b);
        prop_assert_eq!(&up, &outcome(b, a));
        prop_assert_eq!(&up, &outcome(-a, -b));
        prop_assert_eq!(&up, &outcome(-b, -a));
    }
}

#[test]
fn rules_are_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Arc<SensorRules>>();
    assert_send_sync::<ValidationState>();
}
