//! The JSON decoder (`events/src/decode/json.rs`), on any bytes: one Kafka message or one line
//! of a file.
//!
//! Invariants: it never panics, nor overflows a small stack (see `common::on_small_stack`:
//! recursion that grows with the input's nesting would abort a timely worker); only a JSON
//! object is accepted, and an accepted reading satisfies the contract and round-trips (see
//! `common::check_reading`); a refusal has a decode reason and a detail; and the fast path
//! (sonic-rs, falling back to serde_json) and the serde_json-only path agree on the verdict
//! and on the reading, because the dead-letter reasons and the benchmarks assume the two
//! parsers accept the same records.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use millstream_events::decode::{decode_json, decode_json_with_serde_json};

fuzz_target!(|data: &[u8]| common::on_small_stack(data, check));

fn check(data: &[u8]) {
    let fast = decode_json(data);
    let slow = decode_json_with_serde_json(data);
    match (&fast, &slow) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "the two parsers read different readings");
            common::check_is_object(data);
            common::check_reading(a);
        }
        (Err(a), Err(b)) => {
            common::check_rejection(a);
            common::check_rejection(b);
        }
        _ => panic!(
            "the parsers disagree on {:?}: sonic-rs path {fast:?}, serde_json path {slow:?}",
            String::from_utf8_lossy(data)
        ),
    }
}
