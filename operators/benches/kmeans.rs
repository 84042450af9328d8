//! `kmeans::score` over 100 000 rows of an 8-feature model with k = 4 (four operating modes,
//! noise, occasional faults); the same with the features computed first (the asset stage's
//! per-bucket work); and `kmeans::train` on 2 000 rows.
//!
//! `cargo bench -p millstream-operators --bench kmeans -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use millstream_operators::features::{FeaturePlan, FeatureState};
use millstream_operators::kmeans::{self, KMeansConfig};

const ROWS: usize = 100_000;
const FEATURES: usize = 8;

fn rows(n: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut state = seed.max(1);
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut gaussian = move || {
        let (u1, u2) = (uniform(), uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    };
    (0..n)
        .map(|i| {
            let mode = (i / 250) % 4;
            let fault = if i % 997 == 0 { 8.0 } else { 0.0 };
            (0..FEATURES)
                .map(|f| 10.0 * f as f64 + 3.0 * (mode * (f % 3)) as f64 + gaussian() + fault)
                .collect()
        })
        .collect()
}

fn names() -> Vec<String> {
    (0..FEATURES).map(|i| format!("sensor{i}")).collect()
}

fn bench_score(c: &mut Criterion) {
    let config = KMeansConfig { k: 4, ..KMeansConfig::default() };
    let model = kmeans::train(&rows(2_000, 7), &names(), &config).expect("trains");
    assert_eq!(model.metrics.k, 4);
    let data = rows(ROWS, 11);
    let mut group = c.benchmark_group("kmeans");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("score_8_features_k4", |b| {
        b.iter(|| {
            let mut anomalies = 0u32;
            for row in &data {
                let scored = kmeans::score(&model, black_box(row)).expect("scores");
                anomalies += (scored.score >= model.calibration.threshold) as u32;
            }
            black_box(anomalies)
        })
    });
    // The asset stage's whole per-bucket work: align 8 sensors' bucket values into smoothed
    // features (15-bucket means, two of them 30-bucket rates), then score.
    let feature_names: Vec<String> = (0..FEATURES)
        .map(|i| if i < 6 { format!("sensor{i}:ma15") } else { format!("sensor{i}:ma15:diff30") })
        .collect();
    let plan = FeaturePlan::from_names(&feature_names).expect("valid names");
    let mut aligned = Vec::with_capacity(2_000);
    let mut state = FeatureState::new(&plan);
    for row in rows(2_000, 7) {
        let values: Vec<Option<f64>> = row.into_iter().map(Some).collect();
        let mut out = Vec::new();
        state.push(&plan, &values, &mut out);
        aligned.push(out);
    }
    let feature_model = kmeans::train(&aligned, &feature_names, &config).expect("trains");
    let buckets: Vec<Vec<Option<f64>>> = data.iter().map(|r| r.iter().copied().map(Some).collect()).collect();
    group.bench_function("features_then_score_8_sensors_k4", |b| {
        b.iter(|| {
            let mut state = FeatureState::new(&plan);
            let mut row = Vec::with_capacity(FEATURES);
            let mut anomalies = 0u32;
            for values in &buckets {
                state.push(&plan, black_box(values), &mut row);
                let scored = kmeans::score(&feature_model, &row).expect("scores");
                anomalies += (scored.score >= feature_model.calibration.threshold) as u32;
            }
            black_box(anomalies)
        })
    });
    group.finish();

    let training = rows(2_000, 5);
    let mut group = c.benchmark_group("kmeans_train");
    group.sample_size(10);
    group.throughput(Throughput::Elements(training.len() as u64));
    group.bench_function("train_2000_rows_8_features_k4", |b| {
        b.iter(|| black_box(kmeans::train(black_box(&training), &names(), &config).expect("trains")))
    });
    group.finish();
}

criterion_group!(benches, bench_score);
criterion_main!(benches);
