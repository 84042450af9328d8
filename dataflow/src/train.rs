//! `millstream train`: a per-asset k-means model from readings, into a model store.
//!
//! Training aligns the readings exactly as the dataflow's asset stage does (the same
//! [`BucketAccumulator`] and [`FeatureState`]), so the features a model was fitted on are the
//! features it is served.

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use millstream_connectors::model_store::ModelStoreConfig;
use millstream_events::{EventTime, Reading};
use millstream_operators::features::{sensor_name, BucketAccumulator, FeaturePlan, FeatureState};
use millstream_operators::kmeans::{self, KMeansConfig};
use millstream_operators::model::{signal_references, ModelArtifact};

/// Which features a model computes, when `--features` does not list them: every sensor of
/// the asset, smoothed over `smoothing` buckets; the `rate_of` sensors enter as their change
/// over `rate_lag` buckets instead of their level (slow thermal states are not stationary).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureChoice {
    pub smoothing: u32,
    pub rate_of: Vec<String>,
    pub rate_lag: u32,
}

impl Default for FeatureChoice {
    fn default() -> Self {
        FeatureChoice { smoothing: 15, rate_of: Vec::new(), rate_lag: 30 }
    }
}

impl FeatureChoice {
    /// Feature names for these sensors (sorted, so the order never depends on the input's).
    pub fn names(&self, sensors: &[String]) -> Vec<String> {
        let mut sensors = sensors.to_vec();
        sensors.sort();
        sensors.dedup();
        let (rates, levels): (Vec<_>, Vec<_>) = sensors.iter().partition(|s| self.rate_of.contains(s));
        let mut names: Vec<String> = levels.iter().map(|s| format!("{s}:ma{}", self.smoothing)).collect();
        names.extend(rates.iter().map(|s| format!("{s}:ma{}:diff{}", self.smoothing, self.rate_lag)));
        names
    }
}

/// One time bucket of one asset, as the asset stage sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlignedRow {
    /// Start of the bucket.
    pub ts: EventTime,
    /// The model's features, in the plan's order (NaN: not computable yet).
    pub features: Vec<f64>,
    /// Each plan sensor's mean in this bucket (`None`: no reading).
    pub sensors: Vec<Option<f64>>,
}

/// Feature rows of one asset's readings, bucket by bucket, as the asset stage computes them.
/// `readings` must be of one asset; they are ordered here by (ts, sensor).
pub fn feature_rows(
    readings: &mut [Reading],
    plan: &FeaturePlan,
    bucket_ms: u64,
) -> Vec<(EventTime, Vec<f64>)> {
    aligned_rows(readings, plan, bucket_ms).into_iter().map(|row| (row.ts, row.features)).collect()
}

/// [`feature_rows`] with each bucket's sensor means as well (the drift references).
pub fn aligned_rows(readings: &mut [Reading], plan: &FeaturePlan, bucket_ms: u64) -> Vec<AlignedRow> {
    readings.sort_by(|a, b| {
        (a.ts, &a.sensor_id, a.value.to_bits()).cmp(&(b.ts, &b.sensor_id, b.value.to_bits()))
    });
    let mut state = FeatureState::new(plan);
    let mut accumulator = BucketAccumulator::new(plan.sensors.len());
    let mut rows = Vec::new();
    let mut bucket: Option<EventTime> = None;
    let mut close = |ts: EventTime, accumulator: &mut BucketAccumulator, rows: &mut Vec<AlignedRow>| {
        let sensors = accumulator.take().to_vec();
        let mut features = Vec::new();
        state.push(plan, &sensors, &mut features);
        rows.push(AlignedRow { ts, features, sensors });
    };
    for reading in readings.iter() {
        let b = reading.ts - reading.ts % bucket_ms;
        if let Some(open) = bucket.filter(|open| *open != b) {
            close(open, &mut accumulator, &mut rows);
        }
        bucket = Some(b);
        if let Some(i) = plan.sensor_index(sensor_name(&reading.sensor_id)) {
            accumulator.add(i, reading.value);
        }
    }
    if let Some(open) = bucket {
        close(open, &mut accumulator, &mut rows);
    }
    rows
}

/// Trains a model on the buckets of `rows` whose start lies in `window` (all rows when `None`).
pub fn train_model(
    rows: &[(EventTime, Vec<f64>)],
    names: &[String],
    config: &KMeansConfig,
    bucket_ms: u64,
    window: Option<(EventTime, EventTime)>,
) -> anyhow::Result<ModelArtifact> {
    let selected: Vec<&(EventTime, Vec<f64>)> =
        rows.iter().filter(|(t, _)| window.is_none_or(|(from, until)| *t >= from && *t < until)).collect();
    let (Some(first), Some(last)) = (selected.first(), selected.last()) else {
        bail!("no time bucket to train on (is the training window right?)")
    };
    let data: Vec<Vec<f64>> = selected.iter().map(|(_, r)| r.clone()).collect();
    let mut model = kmeans::train(&data, names, config)?.with_window(first.0, last.0);
    model.bucket_ms = bucket_ms;
    Ok(model)
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Training readings: `file:PATH` (JSON lines or CSV, as `run` reads them).
    #[arg(long)]
    pub input: String,
    /// The asset to train for; needed when the input holds several.
    #[arg(long)]
    pub asset: Option<String>,
    /// The model store: `s3://BUCKET/PREFIX` or `file://DIR`. Default: `[models] store`.
    #[arg(long)]
    pub store: Option<String>,
    /// The model's name in the store (what `[models]` rules refer to).
    #[arg(long)]
    pub name: String,
    /// The asset class recorded in the model (default: the name).
    #[arg(long)]
    pub class: Option<String>,
    /// Explicit features, comma-separated (`Pressure:ma15,Temperature:ma15:diff30`). Default:
    /// every sensor of the asset, per `--smoothing`, `--rate-of` and `--rate-lag`.
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    /// Trailing mean over this many buckets.
    #[arg(long, default_value_t = 15)]
    pub smoothing: u32,
    /// Sensors that enter as a rate (their change over `--rate-lag` buckets), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub rate_of: Vec<String>,
    #[arg(long, default_value_t = 30)]
    pub rate_lag: u32,
    /// Bucket width, in ms.
    #[arg(long, default_value_t = kmeans::DEFAULT_BUCKET_MS)]
    pub bucket_ms: u64,
    /// Clusters.
    #[arg(long, default_value_t = 4)]
    pub k: u32,
    /// Train on buckets from this event time (RFC 3339 or epoch ms) ...
    #[arg(long)]
    pub from: Option<String>,
    /// ... until this one (exclusive).
    #[arg(long)]
    pub until: Option<String>,
    /// The event time from which a running pipeline serves this version (all workers switch
    /// there). Default: as soon as it sees it.
    #[arg(long)]
    pub effective_from: Option<String>,
    /// S3 endpoint (S3-compatible servers). Default: `[models.store] endpoint`.
    #[arg(long)]
    pub endpoint: Option<String>,
}

fn parse_time(text: &str) -> anyhow::Result<EventTime> {
    match text.parse::<u64>() {
        Ok(ms) => Ok(ms),
        Err(_) => millstream_events::time::parse_rfc3339(text).map_err(|e| anyhow::anyhow!("`{text}`: {e}")),
    }
}

/// Reads `file:PATH` into readings; rejected lines are counted, not fatal.
fn read_input(input: &str) -> anyhow::Result<(Vec<Reading>, u64)> {
    let Some(path) = input.strip_prefix("file:") else { bail!("--input must be file:PATH, got `{input}`") };
    let text = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    let mut readings = Vec::new();
    let mut rejected = 0u64;
    let mut lines = text.split(|b| *b == b'\n');
    let mut csv: Option<millstream_events::decode::CsvHeader> = None;
    if path.ends_with(".csv") {
        let header = lines.next().context("empty CSV file")?;
        csv = Some(
            millstream_events::decode::CsvHeader::parse(header)
                .map_err(|e| anyhow::anyhow!("{path}: {e}"))?,
        );
    }
    for line in lines {
        let line = millstream_events::decode::trim_line_end(line);
        if line.is_empty() {
            continue;
        }
        let decoded = match &mut csv {
            Some(decoder) => decoder.decode(line),
            None => millstream_events::decode::decode_json(line),
        };
        match decoded {
            Ok(r) => readings.push(r),
            Err(_) => rejected += 1,
        }
    }
    Ok((readings, rejected))
}

pub fn train(args: TrainArgs, store: Option<ModelStoreConfig>) -> anyhow::Result<()> {
    let TrainArgs {
        input,
        asset,
        store: store_url,
        name,
        class,
        features,
        smoothing,
        rate_of,
        rate_lag,
        bucket_ms,
        k,
        from,
        until,
        effective_from,
        endpoint,
    } = args;
    if bucket_ms == 0 {
        bail!("--bucket-ms must be positive");
    }
    let mut store_config = match (store_url, store) {
        (Some(url), Some(config)) => ModelStoreConfig { url, ..config },
        (Some(url), None) => ModelStoreConfig::new(url),
        (None, Some(config)) => config,
        (None, None) => bail!("no model store: give --store or set [models] store in --config"),
    };
    if endpoint.is_some() {
        store_config.endpoint = endpoint;
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar.set_message(format!("reading {input}"));
    let (mut readings, rejected) = read_input(&input)?;
    let mut assets: Vec<&str> = readings.iter().map(|r| r.asset_id.as_str()).collect();
    assets.sort();
    assets.dedup();
    let asset = match (asset, assets.as_slice()) {
        (Some(a), _) => a,
        (None, [only]) => (*only).to_owned(),
        (None, []) => bail!("{input} holds no valid reading ({rejected} rejected)"),
        (None, many) => {
            let shown: Vec<&str> = many.iter().take(8).copied().collect();
            let more = if many.len() > shown.len() { ", …" } else { "" };
            bail!("{input} holds {} assets; choose one with --asset ({}{more})", many.len(), shown.join(", "))
        }
    };
    readings.retain(|r| r.asset_id == asset.as_str());
    if readings.is_empty() {
        bail!("no reading of asset `{asset}` in {input}");
    }
    let names = if features.is_empty() {
        let sensors: Vec<String> = readings.iter().map(|r| sensor_name(&r.sensor_id).to_owned()).collect();
        FeatureChoice { smoothing, rate_of, rate_lag }.names(&sensors)
    } else {
        features
    };
    let plan = FeaturePlan::from_names(&names)?;
    bar.set_message(format!("aligning {} readings of {asset} into {bucket_ms} ms buckets", readings.len()));
    let aligned = aligned_rows(&mut readings, &plan, bucket_ms);
    let rows: Vec<(EventTime, Vec<f64>)> = aligned.iter().map(|r| (r.ts, r.features.clone())).collect();
    let window = match (from, until) {
        (None, None) => None,
        (f, u) => Some((
            f.as_deref().map(parse_time).transpose()?.unwrap_or(0),
            u.as_deref().map(parse_time).transpose()?.unwrap_or(u64::MAX),
        )),
    };
    bar.set_message(format!("fitting k-means (k = {k}) on {} buckets", rows.len()));
    let config = KMeansConfig { k, ..KMeansConfig::default() };
    let mut model = train_model(&rows, &names, &config, bucket_ms, window)?;
    model.name = name.clone();
    model.class = class.unwrap_or_else(|| name.clone());
    model.effective_from = effective_from.as_deref().map(parse_time).transpose()?;
    let (first, last) = (model.training.first_ts.unwrap_or(0), model.training.last_ts.unwrap_or(u64::MAX));
    model.signals = signal_references(
        &plan.sensors,
        aligned.iter().filter(|r| r.ts >= first && r.ts <= last).map(|r| r.sensors.as_slice()),
        config.sketch_points as usize,
    );
    bar.set_message(format!("uploading to {}", store_config.url));
    let store = store_config.open().map_err(|e| anyhow::anyhow!("model store: {e}"))?;
    let version = store.put(&name, &model.encode()?).map_err(|e| anyhow::anyhow!("model store: {e}"))?;
    bar.finish_and_clear();
    println!("model {name} version {version} in {}", store.location());
    println!(
        "  asset {asset}: {} readings ({rejected} input lines rejected), {} buckets of {bucket_ms} ms",
        readings.len(),
        rows.len()
    );
    println!(
        "  trained on {} buckets ({} used, {} with a missing feature left out), {} .. {}",
        model.training.rows,
        model.training.rows_used,
        model.training.rows - model.training.rows_used,
        model.training.first_ts.map(millstream_events::time::format_rfc3339_millis).unwrap_or_default(),
        model.training.last_ts.map(millstream_events::time::format_rfc3339_millis).unwrap_or_default(),
    );
    println!("  features: {}", model.features.join(", "));
    println!(
        "  k {} of {}, inertia {:.1}, silhouette {}, score 0.8 at normalised distance {:.2}",
        model.metrics.k,
        model.metrics.k_requested,
        model.metrics.inertia,
        model.metrics.silhouette.map_or("n/a".to_owned(), |s| format!("{s:.3}")),
        model.calibration.distance_for(0.8)
    );
    if let Some(t) = model.effective_from {
        println!("  served from {}", millstream_events::time::format_rfc3339_millis(t));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_features_are_sorted_levels_then_rates() {
        let choice = FeatureChoice { smoothing: 15, rate_of: vec!["Temp".into()], rate_lag: 30 };
        let names = choice.names(&["Temp".into(), "B".into(), "A".into(), "B".into()]);
        assert_eq!(names, vec!["A:ma15", "B:ma15", "Temp:ma15:diff30"]);
    }

    #[test]
    fn rows_align_buckets_like_the_asset_stage() {
        let plan = FeaturePlan::from_names(&["a", "b"]).unwrap();
        let r = |s: &str, ts: u64, v: f64| Reading {
            sensor_id: format!("x/{s}").into(),
            asset_id: "x".into(),
            ts,
            value: v,
            unit: None,
        };
        let mut readings = vec![r("b", 1500, 4.0), r("a", 100, 1.0), r("a", 900, 3.0), r("a", 1200, 5.0)];
        let rows = feature_rows(&mut readings, &plan, 1000);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, 0);
        assert_eq!(rows[0].1[0], 2.0);
        assert!(rows[0].1[1].is_nan());
        assert_eq!(rows[1], (1000, vec![5.0, 4.0]));
    }
}
