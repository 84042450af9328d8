//! Parsing and rendering of event timestamps.
//!
//! Inputs carry RFC 3339 strings or integer epoch milliseconds; outputs always render RFC 3339
//! UTC with exactly three fractional digits, so that files compare byte for byte.

use crate::EventTime;

/// The last millisecond of year 9999: later instants cannot be written as RFC 3339.
pub const MAX_EVENT_TIME: EventTime = 253_402_300_799_999;

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimestampError {
    #[error("`{0}` is not an RFC 3339 timestamp")]
    NotRfc3339(String),
    #[error("timestamp {0} ms is before the Unix epoch")]
    BeforeEpoch(i128),
    #[error("timestamp {0} ms is after year 9999")]
    AfterYear9999(i128),
    #[error("epoch milliseconds must be an integer, got {0}")]
    FractionalMillis(f64),
}

/// The wall clock as event time (epoch ms); 0 on a clock set before 1970.
pub fn now_ms() -> EventTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as EventTime)
}

/// Seconds from event time `ts` to now; 0 when `ts` is in the future.
pub fn seconds_since(ts: EventTime) -> f64 {
    now_ms().saturating_sub(ts) as f64 / 1000.0
}

/// Parses an RFC 3339 timestamp to epoch milliseconds, truncating sub-millisecond digits.
pub fn parse_rfc3339(text: &str) -> Result<EventTime, TimestampError> {
    let parsed = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|_| TimestampError::NotRfc3339(truncate_for_detail(text)))?;
    check_epoch_millis(parsed.timestamp_millis() as i128)
}

/// Checks that integer epoch milliseconds are representable as an [`EventTime`].
pub fn check_epoch_millis(millis: i128) -> Result<EventTime, TimestampError> {
    if millis < 0 {
        Err(TimestampError::BeforeEpoch(millis))
    } else if millis > MAX_EVENT_TIME as i128 {
        Err(TimestampError::AfterYear9999(millis))
    } else {
        Ok(millis as EventTime)
    }
}

/// Accepts a JSON float as epoch milliseconds only when it is integral (`1.7e12` is fine).
pub fn epoch_millis_from_f64(value: f64) -> Result<EventTime, TimestampError> {
    if !value.is_finite() || value.fract() != 0.0 {
        return Err(TimestampError::FractionalMillis(value));
    }
    check_epoch_millis(value as i128)
}

/// Renders epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_rfc3339_millis(ts: EventTime) -> String {
    let mut out = String::with_capacity(24);
    write_rfc3339_millis(ts, &mut out);
    out
}

/// Appends epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` to `out`.
///
/// Hand-rolled (Howard Hinnant's civil-from-days) because it runs once per output line and
/// chrono's formatter is several times slower; a property test checks it against chrono.
pub fn write_rfc3339_millis(ts: EventTime, out: &mut String) {
    let ts = ts.min(MAX_EVENT_TIME);
    let millis = ts % 1000;
    let secs = ts / 1000;
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (sod / 3600, (sod / 60) % 60, sod % 60);
    let digits =
        [(year / 1000) as u8, ((year / 100) % 10) as u8, ((year / 10) % 10) as u8, (year % 10) as u8];
    for d in digits {
        out.push((b'0' + d) as char);
    }
    push2(out, b'-', month as u64);
    push2(out, b'-', day as u64);
    push2(out, b'T', h);
    push2(out, b':', m);
    push2(out, b':', s);
    out.push('.');
    out.push((b'0' + (millis / 100) as u8) as char);
    out.push((b'0' + ((millis / 10) % 10) as u8) as char);
    out.push((b'0' + (millis % 10) as u8) as char);
    out.push('Z');
}

fn push2(out: &mut String, sep: u8, v: u64) {
    out.push(sep as char);
    out.push((b'0' + (v / 10) as u8) as char);
    out.push((b'0' + (v % 10) as u8) as char);
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Serde helper: serialize an [`EventTime`] as RFC 3339 with milliseconds.
pub fn serialize_rfc3339<S: serde::Serializer>(ts: &EventTime, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = String::with_capacity(24);
    write_rfc3339_millis(*ts, &mut buf);
    s.serialize_str(&buf)
}

/// Serde helper: accept RFC 3339 or epoch milliseconds.
pub fn deserialize_event_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<EventTime, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Either<'a> {
        Millis(u64),
        Text(std::borrow::Cow<'a, str>),
    }
    match Either::deserialize(d)? {
        Either::Millis(ms) => check_epoch_millis(ms as i128).map_err(serde::de::Error::custom),
        Either::Text(t) => parse_rfc3339(&t).map_err(serde::de::Error::custom),
    }
}

use serde::Deserialize;

pub(crate) fn truncate_for_detail(text: &str) -> String {
    const LIMIT: usize = 64;
    if text.len() <= LIMIT {
        return text.to_owned();
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_formats_the_contract_example() {
        let ts = parse_rfc3339("2026-03-01T00:00:00.000Z").unwrap();
        assert_eq!(ts, 1_772_323_200_000);
        assert_eq!(format_rfc3339_millis(ts), "2026-03-01T00:00:00.000Z");
    }

    #[test]
    fn offsets_are_normalised_to_utc_and_submillis_truncated() {
        let ts = parse_rfc3339("2026-03-01T01:30:00.1239+01:30").unwrap();
        assert_eq!(format_rfc3339_millis(ts), "2026-03-01T00:00:00.123Z");
    }

    #[test]
    fn refuses_pre_epoch_and_garbage() {
        assert!(matches!(parse_rfc3339("1969-12-31T23:59:59Z"), Err(TimestampError::BeforeEpoch(_))));
        assert!(parse_rfc3339("yesterday").is_err());
        assert!(parse_rfc3339("2026-13-01T00:00:00Z").is_err());
        assert!(epoch_millis_from_f64(1.5).is_err());
        assert_eq!(epoch_millis_from_f64(1.7e12).unwrap(), 1_700_000_000_000);
    }

    proptest! {
        #[test]
        fn formatting_matches_chrono_and_round_trips(ts in 0u64..=MAX_EVENT_TIME) {
            let ours = format_rfc3339_millis(ts);
            let chrono = chrono::DateTime::from_timestamp_millis(ts as i64).unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            prop_assert_eq!(&ours, &chrono);
            prop_assert_eq!(parse_rfc3339(&ours).unwrap(), ts);
        }
    }
}
