//! JSON decoding of contract records: sonic-rs (the fast path of `decode_json`) against
//! serde_json alone (`decode_json_with_serde_json`), on a batch of 10 000 realistic lines.
//!
//! `cargo bench -p millstream-events --bench decode -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use millstream_events::decode::{decode_json, decode_json_with_serde_json};
use millstream_events::time::format_rfc3339_millis;

const LINES: usize = 10_000;
/// 2026-03-01T00:00:00.000Z
const START_MS: u64 = 1_772_323_200_000;

const MEASUREMENTS: [(&str, &str, f64, f64); 4] = [
    ("vibration", "mm/s", 2.4, 0.3),
    ("temperature", "degC", 61.0, 1.5),
    ("pressure", "bar", 5.8, 0.2),
    ("current", "A", 12.5, 0.8),
];

/// A plant's worth of readings: 3 lines × 8 pumps × 4 measurements, one line per sensor
/// per 100 ms, values with two or three decimals as a gateway would write them.
fn batch(epoch_ms: bool) -> Vec<Vec<u8>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..LINES)
        .map(|i| {
            let (measurement, unit, level, spread) = MEASUREMENTS[i % 4];
            let asset = format!("line{}-pump-{:02}", 1 + (i / 4) % 3, (i / 12) % 8);
            let ts_ms = START_MS + (i / 96) as u64 * 100 + (i % 96) as u64;
            let ts = if epoch_ms { ts_ms.to_string() } else { format!("\"{}\"", format_rfc3339_millis(ts_ms)) };
            let value = level + spread * (2.0 * uniform() - 1.0);
            let value = if i % 3 == 0 { format!("{value:.3}") } else { format!("{value:.2}") };
            format!(
                r#"{{"sensor_id":"{asset}/{measurement}","asset_id":"{asset}","ts":{ts},"value":{value},"unit":"{unit}"}}"#
            )
            .into_bytes()
        })
        .collect()
}

fn bench_decode(c: &mut Criterion) {
    for (name, epoch_ms) in [("rfc3339", false), ("epoch_ms", true)] {
        let lines = batch(epoch_ms);
        let mean_len = lines.iter().map(Vec::len).sum::<usize>() as f64 / lines.len() as f64;
        eprintln!("decode/{name}: {LINES} lines, {mean_len:.1} bytes on average");
        for line in &lines {
            let fast = decode_json(line).expect("valid line");
            assert_eq!(Ok(&fast), decode_json_with_serde_json(line).as_ref());
        }

        let mut group = c.benchmark_group(format!("decode/{name}"));
        group.throughput(Throughput::Elements(LINES as u64));
        group.bench_function("sonic_rs", |b| {
            b.iter(|| {
                for line in &lines {
                    let _ = black_box(decode_json(black_box(line)));
                }
            })
        });
        group.bench_function("serde_json", |b| {
            b.iter(|| {
                for line in &lines {
                    let _ = black_box(decode_json_with_serde_json(black_box(line)));
                }
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
