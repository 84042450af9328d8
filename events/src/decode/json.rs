//! The JSON decoder: one object per line or message.
//!
//! The success path uses sonic-rs, which measured faster than serde_json on the contract's
//! records (see `events/benches/decode.rs` and the README). A record that fails is parsed
//! again with serde_json, whose error categories give the precise dead-letter reason; failures
//! are rare, so the second parse costs nothing that matters.

use serde::{Deserialize, Deserializer};

use super::field::Field;
use super::{build_reading, MAX_RECORD_BYTES};
use crate::time::{check_epoch_millis, epoch_millis_from_f64, parse_rfc3339};
use crate::{Reading, Reason, Rejection};

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    sensor_id: Option<Field<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    ts: Option<Field<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    value: Option<Field<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    asset_id: Option<Field<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    unit: Option<Field<'a>>,
}

/// Distinguishes `"value": null` (present, wrong type) from an absent key (missing).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Field<'de>>, D::Error> {
    Field::deserialize(d).map(Some)
}

/// Decodes one JSON record.
pub fn decode_json(line: &[u8]) -> Result<Reading, Rejection> {
    check_size(line)?;
    if needs_strict_parse(line) {
        return decode_json_with_serde_json(line);
    }
    match sonic_rs::from_slice::<Wire<'_>>(line) {
        Ok(wire) => wire.into_reading(),
        Err(_) => decode_json_with_serde_json(line),
    }
}

/// Decodes one JSON record with serde_json alone: the diagnosis path, and the baseline the
/// decoder benchmark compares against.
pub fn decode_json_with_serde_json(line: &[u8]) -> Result<Reading, Rejection> {
    check_size(line)?;
    if trim_start(line).first() == Some(&b'[') {
        return Err(array_rejection(line));
    }
    match serde_json::from_slice::<Wire<'_>>(line) {
        Ok(wire) => wire.into_reading(),
        Err(err) => Err(classify_parse_error(line, &err)),
    }
}

/// Whether a line must skip sonic-rs for serde_json, which checks what sonic-rs lets through:
/// - an array, which serde's derived visitor would read as the fields in order (`["a",0,1]`);
/// - an escape (`\\`) anywhere: sonic-rs skips unknown fields without checking their escapes, so
///   it accepted `"x":"\\u0h00"`, which is not JSON. Escapes are rare in sensor records, and
///   finding none is one vectorised `memchr` over the line (`<[u8]>::contains` cost 200
///   instructions a record, 3 % of the pipeline);
/// - nesting deeper than [`MAX_FAST_DEPTH`].
fn needs_strict_parse(line: &[u8]) -> bool {
    trim_start(line).first() == Some(&b'[')
        || memchr::memchr(b'\\', line).is_some()
        || nests_deeper_than(line, MAX_FAST_DEPTH)
}

/// A record that is a JSON array: `wrong_type` when the array is well-formed JSON, otherwise the
/// parse error's reason.
fn array_rejection(line: &[u8]) -> Rejection {
    match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
        Ok(_) => Rejection::new(Reason::WrongType, "record must be a JSON object, got an array"),
        Err(err) => classify_parse_error(line, &err),
    }
}

/// The deepest nesting handed to sonic-rs. It recurses into nested values without a limit, so a
/// hostile line of many thousand `[` overflowed the worker's stack; serde_json stops at 128
/// levels with an error, which becomes a `malformed_json` dead letter.
const MAX_FAST_DEPTH: usize = 128;

/// Whether `line` nests arrays and objects more than `limit` deep (outside strings). A line no
/// longer than `limit` cannot, so ordinary records are not scanned at all.
fn nests_deeper_than(line: &[u8], limit: usize) -> bool {
    if line.len() <= limit {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in line {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn check_size(line: &[u8]) -> Result<(), Rejection> {
    if line.len() > MAX_RECORD_BYTES {
        return Err(Rejection::new(
            Reason::TooLarge,
            format!("record is {} bytes, the limit is {MAX_RECORD_BYTES}", line.len()),
        ));
    }
    Ok(())
}

fn classify_parse_error(line: &[u8], err: &serde_json::Error) -> Rejection {
    let message = err.to_string();
    if line.iter().all(u8::is_ascii_whitespace) {
        return Rejection::new(Reason::MalformedJson, "empty record");
    }
    if err.is_data() {
        if message.starts_with("invalid type") {
            return Rejection::new(Reason::WrongType, format!("record must be a JSON object: {message}"));
        }
        return Rejection::new(Reason::MalformedJson, message);
    }
    if message.starts_with("number out of range") || has_non_finite_literal(line) {
        return Rejection::new(Reason::NonFinite, format!("value is not a finite number: {message}"));
    }
    Rejection::new(Reason::MalformedJson, message)
}

/// JSON has no NaN or Infinity, but Python's `json.dumps` writes them unquoted. Such a record
/// is a non-finite value, not garbage, and saying so helps whoever fixes the producer.
fn has_non_finite_literal(line: &[u8]) -> bool {
    let Some(at) = find(line, b"\"value\"") else { return false };
    let rest = &line[at + 7..];
    let rest = trim_start(rest);
    let Some(rest) = rest.strip_prefix(b":") else { return false };
    let rest = trim_start(rest);
    let rest = rest.strip_prefix(b"-").or_else(|| rest.strip_prefix(b"+")).unwrap_or(rest);
    ["nan", "inf"].iter().any(|w| rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(w.as_bytes()))
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &bytes[skip..]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Wire<'_> {
    fn into_reading(self) -> Result<Reading, Rejection> {
        let sensor_id = required("sensor_id", self.sensor_id)?;
        let ts = required("ts", self.ts)?;
        let value = required("value", self.value)?;

        let sensor_id = match &sensor_id {
            Field::Str(s) => s.as_ref(),
            other => return Err(wrong_type("sensor_id", "a string", other)),
        };
        let ts = match &ts {
            Field::Str(s) => parse_rfc3339(s),
            Field::UInt(ms) => check_epoch_millis(*ms as i128),
            Field::Int(ms) => check_epoch_millis(*ms as i128),
            Field::Float(ms) => epoch_millis_from_f64(*ms),
            other => return Err(wrong_type("ts", "an RFC 3339 string or epoch milliseconds", other)),
        }
        .map_err(|e| Rejection::new(Reason::BadTimestamp, e.to_string()))?;
        let value = match &value {
            Field::UInt(v) => *v as f64,
            Field::Int(v) => *v as f64,
            Field::Float(v) => *v,
            Field::Str(s) if is_non_finite_word(s) => {
                return Err(Rejection::new(Reason::NonFinite, format!("value \"{s}\" is not finite")))
            }
            other => return Err(wrong_type("value", "a number", other)),
        };
        let asset_id = optional_str("asset_id", &self.asset_id)?;
        let unit = optional_str("unit", &self.unit)?;
        build_reading(sensor_id, asset_id, ts, value, unit)
    }
}

fn required<'a>(name: &str, field: Option<Field<'a>>) -> Result<Field<'a>, Rejection> {
    field.ok_or_else(|| Rejection::new(Reason::MissingField, format!("{name} is missing")))
}

fn optional_str<'f>(name: &str, field: &'f Option<Field<'_>>) -> Result<Option<&'f str>, Rejection> {
    match field {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Str(s)) => Ok(Some(s.as_ref())),
        Some(other) => Err(wrong_type(name, "a string", other)),
    }
}

fn wrong_type(name: &str, expected: &str, got: &Field<'_>) -> Rejection {
    Rejection::new(Reason::WrongType, format!("{name} must be {expected}, got {}", got.type_name()))
}

fn is_non_finite_word(s: &str) -> bool {
    let s = s.trim().trim_start_matches(['+', '-']);
    ["nan", "inf", "infinity"].iter().any(|w| s.eq_ignore_ascii_case(w))
}

#[cfg(test)]
mod tests {

    #[test]
    fn deep_nesting_is_a_dead_letter_not_a_stack_overflow() {
        for open in [b'[', b'{'] {
            let mut line = br#"{"sensor_id":"a","ts":1,"value":1,"x":"#.to_vec();
            line.extend(std::iter::repeat_n(open, 200_000));
            let rejection = decode_json(&line).unwrap_err();
            assert_eq!(rejection.reason, Reason::MalformedJson, "{rejection:?}");
        }
        // Brackets inside strings do not count; a record nested a little is still read.
        let quoted = format!(r#"{{"sensor_id":"{}","ts":1,"value":2.5}}"#, "[".repeat(300));
        assert_eq!(decode_json(quoted.as_bytes()).unwrap().value, 2.5);
        assert!(!nests_deeper_than(br#"{"a":[[[{"b":"[[[[\"[["}]]]]}"#, 5));
        assert!(nests_deeper_than(&[b'['; 10], 5));
    }

    use super::*;
    use proptest::prelude::*;

    fn reason(line: &str) -> Reason {
        decode_json(line.as_bytes()).unwrap_err().reason
    }

    #[test]
    fn decodes_the_contract_example() {
        let r = decode_json(br#"{"sensor_id": "line1-pump-00/vibration", "asset_id": "line1-pump-00", "ts": "2026-03-01T00:00:00.000Z", "value": 2.43, "unit": "mm/s"}"#).unwrap();
        assert_eq!(r.sensor_id, "line1-pump-00/vibration");
        assert_eq!(r.asset_id, "line1-pump-00");
        assert_eq!(r.ts, 1_772_323_200_000);
        assert_eq!(r.value, 2.43);
        assert_eq!(r.unit.as_deref(), Some("mm/s"));
    }

    #[test]
    fn defaults_asset_accepts_epoch_millis_and_ignores_unknown_fields() {
        let r =
            decode_json(br#"{"sensor_id":"a/b","ts":1772323200000,"value":1,"extra":{"x":[1,2]}}"#).unwrap();
        assert_eq!(r.asset_id, "a");
        assert_eq!(r.ts, 1_772_323_200_000);
        assert_eq!(r.value, 1.0);
        assert_eq!(r.unit, None);
    }

    /// Found by the property test: serde_json without `float_roundtrip` read this 1 ulp off,
    /// so the two parsers disagreed. Both must give the correctly rounded value.
    #[test]
    fn floats_are_read_exactly_by_both_parsers() {
        let line = br#"{"sensor_id":"a","ts":0,"value":3.532005302591674e-269}"#;
        assert_eq!(decode_json(line).unwrap().value, 3.532005302591674e-269);
        assert_eq!(decode_json_with_serde_json(line).unwrap().value, 3.532005302591674e-269);
    }

    /// Found by fuzzing: sonic-rs skipped these in fields it ignores, serde_json refuses them.
    #[test]
    fn both_parsers_refuse_what_is_not_json_in_ignored_fields() {
        let lines: [&[u8]; 3] = [
            br#"{"sensor_id":"a","ts":0,"value":1,"x":"\u0#e9\n"}"#,
            br#"{"sensor_id":"a\u0000b","tor_id":"a\u0h000b","ts":0,"valus":0,"value":1}"#,
            b"{\"sensor_id\":\"a\",\"ts\":0,\"value\":1,\"x\":\"\t\"}",
        ];
        for line in lines {
            let (fast, slow) = (decode_json(line), decode_json_with_serde_json(line));
            assert_eq!(fast, slow, "{}", String::from_utf8_lossy(line));
            assert!(fast.is_err(), "{}", String::from_utf8_lossy(line));
        }
        // Invalid UTF-8 inside an ignored field: neither parser looks into it, and they agree.
        let line = b"{\"sensor_id\":\"a\",\"ts\":0,\"value\":1,\"x\":\"\xff\"}";
        assert_eq!(decode_json(line), decode_json_with_serde_json(line));
    }

    #[test]
    fn escaped_strings_decode() {
        let r = decode_json(br#"{"sensor_id":"a\/b\u00e9","ts":0,"value":-0.5}"#).unwrap();
        assert_eq!(r.sensor_id, "a/bé");
    }

    #[test]
    fn every_reason_is_reachable() {
        assert_eq!(reason("not json"), Reason::MalformedJson);
        assert_eq!(reason(r#"{"sensor_id":"a","ts":0,"value":1"#), Reason::MalformedJson);
        assert_eq!(reason(""), Reason::MalformedJson);
        assert_eq!(reason(r#"{"ts":0,"value":1}"#), Reason::MissingField);
        assert_eq!(reason(r#"{"sensor_id":"a","value":1}"#), Reason::MissingField);
        assert_eq!(reason(r#"{"sensor_id":"a","ts":0}"#), Reason::MissingField);
        assert_eq!(reason(r#"{"sensor_id":7,"ts":0,"value":1}"#), Reason::WrongType);
        assert_eq!(reason(r#"{"sensor_id":"a","ts":true,"value":1}"#), Reason::WrongType);
        assert_eq!(reason(r#"{"sensor_id":"a","ts":0,"value":"1.5"}"#), Reason::WrongType);
        assert_eq!(reason(r#"{"sensor_id":"a","ts":0,"value":null}"#), Reason::WrongType);
        assert_eq!(reason(r#"{"sensor_id":"a","ts":0,"value":1,"unit":5}"#), Reason::WrongType);
        assert_eq!(reason(r#"[1,2,3]"#), Reason::WrongType);
        assert_eq!(reason(r#" ["a",0,1]"#), Reason::WrongType);
        assert_eq!(reason(r#"["a",0,1"#), Reason::MalformedJson);
        assert_eq!(reason(r#"{"sensor_id":"a","ts":0,"value":1,"x":"\u0h00"}"#), Reason::MalformedJson);
        assert_eq!(reason(r#"{"sensor_id":"a","ts":0,"value":1,"x":"\q"}"#), Reason::MalformedJson);
        assert_eq!(
            reason("{\"sensor_id\":\"a\",\"ts\":0,\"value\":1,\"x\":\"\u{1}\"}"),
            Reason::MalformedJson
        );
        assert_eq!(reason(r#"{"sensor_id":"a","ts":0,"value":NaN}"#), Reason::NonFinite);
        assert_eq!(reason(r#"{"sensor_id":"a","ts":0,"value":-Infinity}"#), Reason::NonFinite);
        assert_eq!(reason(r#"{"sensor_id":"a","ts":0,"value":1e999}"#), Reason::NonFinite);
        assert_eq!(reason(r#"{"sensor_id":"a","ts":0,"value":"NaN"}"#), Reason::NonFinite);
        assert_eq!(reason(r#"{"sensor_id":"a","ts":"yesterday","value":1}"#), Reason::BadTimestamp);
        assert_eq!(reason(r#"{"sensor_id":"a","ts":-1,"value":1}"#), Reason::BadTimestamp);
        assert_eq!(reason(r#"{"sensor_id":"a","ts":1.5,"value":1}"#), Reason::BadTimestamp);
        assert_eq!(reason(r#"{"sensor_id":"","ts":0,"value":1}"#), Reason::EmptySensorId);
        assert_eq!(reason(r#"{"sensor_id":"  ","ts":0,"value":1}"#), Reason::EmptySensorId);
        let long = "é".repeat(super::super::MAX_FIELD_BYTES / 2 + 1);
        assert_eq!(reason(&format!(r#"{{"sensor_id":"{long}","ts":0,"value":1}}"#)), Reason::FieldTooLong);
        assert_eq!(
            reason(&format!(r#"{{"sensor_id":"a","asset_id":"{long}","ts":0,"value":1}}"#)),
            Reason::FieldTooLong
        );
        assert_eq!(
            reason(&format!(r#"{{"sensor_id":"a","ts":0,"value":1,"unit":"{long}"}}"#)),
            Reason::FieldTooLong
        );
        let at_limit = "x".repeat(super::super::MAX_FIELD_BYTES);
        assert!(decode_json(format!(r#"{{"sensor_id":"{at_limit}","ts":0,"value":1}}"#).as_bytes()).is_ok());
        let huge = format!(r#"{{"sensor_id":"{}","ts":0,"value":1}}"#, "x".repeat(MAX_RECORD_BYTES));
        assert_eq!(reason(&huge), Reason::TooLarge);
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("(sensor_id|ts|value|asset_id|unit|[a-z]{1,4})", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any bytes: a reading or a rejection, never a panic; and the fast and the
        /// diagnosis parsers agree on the verdict.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let fast = decode_json(&bytes);
            let slow = decode_json_with_serde_json(&bytes);
            prop_assert_eq!(fast.is_ok(), slow.is_ok());
        }

        /// Arbitrary JSON documents (biased to the contract's keys) agree between parsers,
        /// and every accepted one satisfies the contract.
        #[test]
        fn arbitrary_json_agrees_and_accepted_is_valid(v in json_value()) {
            let text = serde_json::to_vec(&v).unwrap();
            let fast = decode_json(&text);
            let slow = decode_json_with_serde_json(&text);
            prop_assert_eq!(&fast, &slow);
            if let Ok(r) = fast {
                prop_assert!(!r.sensor_id.trim().is_empty());
                prop_assert!(r.value.is_finite());
                prop_assert!(!r.asset_id.is_empty());
            }
        }

        /// Well-formed readings round-trip through the decoder.
        #[test]
        fn valid_readings_round_trip(
            sensor in "[a-z0-9_-]{1,12}/[a-z]{1,10}",
            ts in 0u64..=crate::time::MAX_EVENT_TIME,
            value in any::<f64>().prop_filter("finite", |f| f.is_finite()),
            rfc in any::<bool>(),
        ) {
            let ts_json = if rfc {
                serde_json::Value::from(crate::time::format_rfc3339_millis(ts))
            } else {
                serde_json::Value::from(ts)
            };
            let line = serde_json::json!({"sensor_id": sensor, "ts": ts_json, "value": value});
            let r = decode_json(line.to_string().as_bytes()).unwrap();
            prop_assert_eq!(r.ts, ts);
            prop_assert_eq!(r.value, value);
            prop_assert_eq!(r.sensor_id, sensor);
        }
    }
}
