//! The model artifact decoder (`ModelArtifact::decode`, `operators/src/model.rs`): the bytes a
//! model store serves, which the dataflow loads while it runs.
//!
//! The first byte picks the mode. Odd: the rest is taken as an artifact body and given a valid
//! header (magic, version, length, CRC-32), so that mutations reach bincode and `validate`
//! instead of dying at the checksum. Even: the rest is decoded as it is (header checks).
//!
//! Invariants: decoding never panics (the decoder's documented promise); a decoded artifact
//! encodes again, and that encoding decodes and re-encodes to the same bytes; and, because
//! `decode` runs `validate` so that "a decoded artifact never makes scoring panic or produce
//! NaN scores", scoring rows with it, explaining the score and building its drift references
//! (what `dataflow/src/drift/observe.rs` does with a new model) never panic, and scores of rows
//! with enough finite features are in [0, 1].
#![no_main]

use libfuzzer_sys::fuzz_target;
use millstream_operators::drift::window::ReferenceBins;
use millstream_operators::features::FeaturePlan;
use millstream_operators::kmeans;
use millstream_operators::model::{ModelArtifact, FORMAT_VERSION, MAGIC};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode & 1 == 1 { with_header(rest) } else { rest.to_vec() };
    let Ok(artifact) = ModelArtifact::decode(&bytes) else { return };

    let encoded = artifact.encode().expect("a decoded artifact encodes");
    let again = ModelArtifact::decode(&encoded).expect("a re-encoded artifact decodes");
    assert_eq!(again.encode().expect("encodes"), encoded, "encode ∘ decode is not stable");

    FeaturePlan::from_names(&artifact.features).expect("validate checked the feature names");
    let width = artifact.width();
    // Rows: the training medians, then values taken from the input, then one with a NaN.
    let mut floats = rest.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")));
    let medians: Vec<f64> = artifact.standardisation.iter().map(|s| s.location).collect();
    let fuzzed: Vec<f64> = (0..width).map(|_| floats.next().unwrap_or(0.0)).collect();
    let mut holed = medians.clone();
    holed[0] = f64::NAN;
    for row in [medians, fuzzed, holed] {
        let finite = row.iter().filter(|v| v.is_finite()).count();
        match kmeans::score(&artifact, &row) {
            Ok(scored) => {
                assert!((0.0..=1.0).contains(&scored.score), "score {} for {row:?}", scored.score);
                assert!(scored.cluster < artifact.centroids.len());
                let _ = kmeans::explain(&artifact, &scored, 3);
            }
            Err(_) => assert!(finite < artifact.min_present as usize || finite == 0, "refused {row:?}"),
        }
    }
    let sketches = artifact.reference.iter().chain(artifact.signals.iter().map(|s| &s.sketch));
    for sketch in sketches {
        for q in [0.0, 0.1, 0.5, 0.9, 1.0] {
            let _ = sketch.quantile(q);
        }
        for x in [f64::MIN, -1.0, 0.0, 1.0, f64::MAX, f64::NAN] {
            let _ = sketch.cdf(x);
        }
        if let Some(bins) = ReferenceBins::from_sketch(sketch, 10) {
            let counts: Vec<u64> = (0..bins.len() as u64).map(|i| i + 1).collect();
            let stats = bins.compare(&counts).expect("a non-empty window compares");
            assert!(!stats.psi.is_nan() && !stats.ks.is_nan(), "drift statistics {stats:?}");
            let _ = bins.bin_of(sketch.quantile(0.5));
        }
    }
});

/// `body` behind a valid header: what a store serving a well-framed but hostile body gives.
fn with_header(body: &[u8]) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32(body).to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// CRC-32 (IEEE), bitwise: the checksum the header carries, computed independently.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
