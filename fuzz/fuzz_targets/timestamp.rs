//! Timestamp parsing (`events/src/time.rs`): RFC 3339 text, integer and float epoch
//! milliseconds, and the serde helper that accepts either.
//!
//! Invariants: nothing panics; an accepted time is in 1970..=9999; rendering it gives
//! `YYYY-MM-DDTHH:MM:SS.mmmZ` (24 bytes), which parses back to the same time; integer
//! milliseconds are accepted exactly when in range; a float is accepted only when integral and
//! in range, as that integer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use millstream_events::time::{
    check_epoch_millis, epoch_millis_from_f64, format_rfc3339_millis, parse_rfc3339, MAX_EVENT_TIME,
};
use millstream_events::EventTime;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(ts) = parse_rfc3339(text) {
            round_trips(ts);
        }
        // The same text as a JSON value (a string, or a number): the serde helper.
        if let Ok(Wrapped { ts }) = serde_json::from_str::<Wrapped>(&format!("{{\"ts\":{text}}}")) {
            round_trips(ts);
        }
    }
    if let Some(bytes) = data.get(..16) {
        let millis = i128::from_le_bytes(bytes.try_into().expect("16 bytes"));
        match check_epoch_millis(millis) {
            Ok(ts) => assert_eq!(ts as i128, millis),
            Err(_) => assert!(millis < 0 || millis > MAX_EVENT_TIME as i128, "{millis} refused"),
        }
        let float = f64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if let Ok(ts) = epoch_millis_from_f64(float) {
            assert!(float.is_finite() && float.fract() == 0.0, "{float} accepted");
            assert_eq!(ts as f64, float, "{float} read as {ts}");
            round_trips(ts);
        }
        // Any u64 renders (clamped to year 9999) and parses back.
        let any = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
        round_trips(any.min(MAX_EVENT_TIME));
    }
});

fn round_trips(ts: EventTime) {
    assert!(ts <= MAX_EVENT_TIME, "accepted {ts}, after year 9999");
    let text = format_rfc3339_millis(ts);
    assert_eq!(text.len(), 24, "{text}");
    assert!(text.ends_with('Z') && text.as_bytes()[10] == b'T', "{text}");
    assert_eq!(parse_rfc3339(&text), Ok(ts), "{text} does not parse back to {ts}");
}

#[derive(serde::Deserialize)]
struct Wrapped {
    #[serde(deserialize_with = "millstream_events::time::deserialize_event_time")]
    ts: EventTime,
}
