//! Invariants shared by the fuzz targets: what every accepted reading and every refusal of a
//! decoder must satisfy (the input contract, ARCHITECTURE.md §6).
#![allow(dead_code)]

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Mutex, OnceLock};

use millstream_events::decode::decode_json;
use millstream_events::time::MAX_EVENT_TIME;
use millstream_events::{Accepted, DeadLetter, Origin, RawRef, Reading, Reason, Rejection};

/// The reasons a decoder (not a later stage) may give: duplicates, lateness and the registry's
/// checks come after decoding, so a decoder giving one of those is a bug.
pub const DECODE_REASONS: [Reason; 9] = [
    Reason::MalformedJson,
    Reason::MalformedCsv,
    Reason::MissingField,
    Reason::WrongType,
    Reason::NonFinite,
    Reason::BadTimestamp,
    Reason::EmptySensorId,
    Reason::TooLarge,
    Reason::FieldTooLong,
];

/// The contract of an accepted reading: a non-blank sensor id, an asset (given or derived), a
/// representable event time and a finite value. It also survives the two places it is written
/// again: its contract JSON (dead-lettered duplicates and late readings carry it as their raw
/// text, and it must decode to the same reading) and bincode (timely's exchange format).
pub fn check_reading(reading: &Reading) {
    assert!(!reading.sensor_id.trim().is_empty(), "accepted a blank sensor_id: {reading:?}");
    assert!(!reading.asset_id.is_empty(), "accepted reading without an asset: {reading:?}");
    assert!(reading.value.is_finite(), "accepted a non-finite value: {reading:?}");
    assert!(reading.ts <= MAX_EVENT_TIME, "accepted a ts after year 9999: {reading:?}");

    let json = reading.to_contract_json();
    let again = decode_json(json.as_bytes())
        .unwrap_or_else(|r| panic!("contract JSON of {reading:?} does not decode: {r:?}\n{json}"));
    assert_eq!(&again, reading, "contract JSON round trip: {json}");

    let accepted =
        Accepted::new(reading.clone(), Origin::default(), RawRef::default(), false);
    let bytes = bincode::serialize(&accepted).expect("an accepted reading serializes");
    let back: Accepted = bincode::deserialize(&bytes).expect("an accepted reading deserializes");
    assert_eq!(back, accepted, "bincode round trip");
}

/// A decoder's refusal: a decode reason, and a detail that says something.
pub fn check_rejection(rejection: &Rejection) {
    assert!(DECODE_REASONS.contains(&rejection.reason), "not a decode reason: {rejection:?}");
    assert!(!rejection.detail.trim().is_empty(), "refusal without a detail: {rejection:?}");
}

/// A dead letter survives bincode (timely exchanges it between processes) and its JSON form
/// (the jsonl sink), both of which go through `events/src/wire.rs`.
pub fn check_dead_letter(dead: &DeadLetter) {
    let bytes = bincode::serialize(dead).expect("a dead letter serializes");
    let back: DeadLetter = bincode::deserialize(&bytes).expect("a dead letter deserializes");
    assert_eq!(&back, dead, "bincode round trip");
    let json = serde_json::to_string(dead).expect("a dead letter serializes as JSON");
    let back: DeadLetter = serde_json::from_str(&json).expect("a dead letter's JSON deserializes");
    assert_eq!(&back, dead, "JSON round trip: {json}");
}

/// The stack the checks run on: 256 KiB, an eighth of the 2 MiB that timely's worker threads
/// (plain `std::thread`s) get. A decoder whose stack grows with the input's nesting overflows
/// a worker at some depth (a deeply nested record aborts the whole process); on this stack the
/// same recursion overflows at an eighth of that depth, within reach of libFuzzer's inputs,
/// while the bounded recursion of a correct decoder (serde_json stops at 128 levels) fits
/// easily. An overflow aborts, which libFuzzer reports as a crash with its input.
pub const STACK_BYTES: usize = 256 * 1024;

type Job = (Vec<u8>, fn(&[u8]));

/// Runs `check(data)` on a long-lived thread with a [`STACK_BYTES`] stack, and waits for it.
/// A panic there aborts the process (libfuzzer-sys's panic hook), as it would on the fuzzer's
/// own thread.
pub fn on_small_stack(data: &[u8], check: fn(&[u8])) {
    static WORKER: OnceLock<Mutex<(SyncSender<Job>, Receiver<()>)>> = OnceLock::new();
    let worker = WORKER.get_or_init(|| {
        let (jobs, inbox) = sync_channel::<Job>(0);
        let (done, finished) = sync_channel::<()>(0);
        std::thread::Builder::new()
            .name("small-stack".into())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                for (data, check) in inbox {
                    check(&data);
                    let _ = done.send(());
                }
            })
            .expect("the checking thread starts");
        Mutex::new((jobs, finished))
    });
    let worker = worker.lock().expect("one input at a time");
    worker.0.send((data.to_vec(), check)).expect("the checking thread is alive");
    worker.1.recv().expect("the checking thread finishes the input");
}

/// The contract reads "one JSON object per Kafka message, or per line": an accepted record
/// starts, after whitespace, with `{`.
pub fn check_is_object(data: &[u8]) {
    let first = data.iter().find(|b| !b.is_ascii_whitespace());
    assert_eq!(
        first,
        Some(&b'{'),
        "accepted a record that is not a JSON object: {:?}",
        String::from_utf8_lossy(data)
    );
}
