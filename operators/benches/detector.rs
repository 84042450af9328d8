//! `RobustZ::observe` over 100 000 readings of one sensor (noise with occasional spikes).
//!
//! `cargo bench -p millstream-operators --bench detector -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use millstream_operators::detector::{RobustZ, RobustZConfig};

const READINGS: usize = 100_000;

fn values() -> Vec<f64> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..READINGS)
        .map(|i| {
            let (u1, u2) = (uniform(), uniform());
            let noise = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let spike = if i % 997 == 0 { 12.0 } else { 0.0 };
            2.4 + 0.3 * (noise + spike)
        })
        .collect()
}

fn bench_observe(c: &mut Criterion) {
    let values = values();
    let config = RobustZConfig::default();
    let mut group = c.benchmark_group("detector");
    group.throughput(Throughput::Elements(READINGS as u64));
    group.bench_function("robust_z_observe", |b| {
        b.iter(|| {
            let mut state = RobustZ::new();
            let mut anomalies = 0u32;
            for &v in &values {
                let verdict = state.observe(black_box(v), &config);
                anomalies += verdict.severity.is_some() as u32;
            }
            black_box((state, anomalies))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_observe);
criterion_main!(benches);
