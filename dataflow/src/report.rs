//! `millstream report`: the readings of one sensor or of an asset's sensors over time, as an
//! SVG or PNG image, with anomaly episodes shaded and drift events marked, and a summary table
//! on the console.
//!
//! - **Data** comes from a `jsonl:DIR` run output (`scores.jsonl`, which a run writes only with
//!   `--emit-scores`, `anomalies.jsonl`, and `drift.jsonl` when the run had `[models.drift]`)
//!   or from PostgreSQL (`readings`, `anomalies` and `drift_events`). A directory without
//!   `drift.jsonl` (a run without drift detection, or from before it existed) has no drift
//!   events; a database without the `drift_events` table is an error that says to migrate,
//!   because every sink that writes the other tables applies that migration too.
//! - **The image** has one panel per sensor, stacked, on one shared UTC time axis: the on-time
//!   readings as a line (broken where the sensor was silent), late readings as hollow markers,
//!   anomalies as filled markers, and anomaly episodes shaded. An episode is a run of a
//!   sensor's anomalies less than [`EPISODE_GAP_MS`] apart; it is shaded from its first to its
//!   last anomaly, at least [`MIN_EPISODE_PX`] pixels wide.
//! - **Drift events** are vertical lines at their window's end, labelled with the statistic
//!   (`psi 0.42`, `mean_shift up`). A per-sensor event goes on its sensor's panel; a per-asset
//!   feature event (`flow:ma15`) on the panel of the asset's sensor the feature is computed
//!   from (`…/flow`), its label naming the feature. One drift episode can emit several
//!   statistics for several windows at one slide, so events less than [`DRIFT_MERGE_PX`] apart
//!   on a panel share one line, labelled with the strongest (furthest past its threshold) and
//!   how many more there are; labels that would overlap are stacked in up to
//!   [`DRIFT_LABEL_ROWS`] rows, and left out beyond that (the line stays, and the table counts
//!   every event).
//! - **Text** is drawn with a bundled font (Roboto Regular, SIL Open Font License 1.1, see
//!   `dataflow/assets/fonts/Roboto-OFL.txt`), so the PNG renders the same on a machine without
//!   any system fonts.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use millstream_events::time::{format_rfc3339_millis, parse_rfc3339, MAX_EVENT_TIME};
use millstream_events::EventTime;
use millstream_operators::features::sensor_name;
use plotters::coord::combinators::{BindKeyPoints, WithKeyPoints};
use plotters::coord::types::{RangedCoordf64, RangedCoordi64};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;

/// Roboto Regular 3.015 (Copyright 2011 The Roboto Project Authors), under the SIL Open Font
/// License 1.1: `dataflow/assets/fonts/Roboto-OFL.txt`. Taken from plotters' own example fonts
/// (`plotters/examples/fonts/` in plotters-rs/plotters).
static FONT: &[u8] = include_bytes!("../assets/fonts/Roboto-Regular.ttf");

/// The font family every text of the report uses (registered with the bundled font).
const FAMILY: &str = "sans-serif";

/// Anomalies of one sensor closer than this (in event time) belong to one episode.
pub const EPISODE_GAP_MS: EventTime = 30_000;
/// The narrowest an episode is shaded, so that a single anomaly stays visible.
pub const MIN_EPISODE_PX: f64 = 6.0;
/// Drift events of one panel closer than this share one marker line (and one label).
pub const DRIFT_MERGE_PX: i32 = 6;
/// Rows of drift labels at the top of a panel; a label that fits in none is left out.
pub const DRIFT_LABEL_ROWS: usize = 3;
/// Height of the title and legend above the panels.
pub const HEADER_PX: u32 = 80;
/// Height of the time axis labels below the last panel.
pub const AXIS_PX: u32 = 40;

const LINE_COLOR: RGBColor = RGBColor(31, 119, 180);
const LATE_COLOR: RGBColor = RGBColor(255, 127, 14);
const ANOMALY_COLOR: RGBColor = RGBColor(214, 39, 40);
const DRIFT_COLOR: RGBColor = RGBColor(148, 103, 189);
const TEXT_COLOR: RGBColor = RGBColor(30, 30, 30);
const MUTED_COLOR: RGBColor = RGBColor(90, 90, 90);

/// `millstream report`: plot readings with their anomalies.
#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("selection").required(true).args(["sensor", "asset"])))]
pub struct ReportArgs {
    /// Where the data is: jsonl:DIR (the output of `run --sink jsonl:DIR --emit-scores`) or
    /// postgres://USER@HOST:PORT/DB (password: in the URL or PGPASSWORD).
    #[arg(long, value_name = "jsonl:DIR|postgres://…")]
    pub from: String,
    /// One sensor, e.g. line1-pump-00/vibration.
    #[arg(long, value_name = "ID")]
    pub sensor: Option<String>,
    /// Every sensor of an asset (the sensor ids that start with `ID/`), e.g. line1-pump-00.
    #[arg(long, value_name = "ID")]
    pub asset: Option<String>,
    /// The image to write: FILE.svg or FILE.png.
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    pub out: PathBuf,
    /// Only data at or after this instant (RFC 3339, or epoch milliseconds).
    #[arg(long, value_name = "RFC3339", value_parser = parse_instant)]
    pub from_ts: Option<EventTime>,
    /// Only data at or before this instant (RFC 3339, or epoch milliseconds).
    #[arg(long, value_name = "RFC3339", value_parser = parse_instant)]
    pub to_ts: Option<EventTime>,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1200, value_parser = clap::value_parser!(u32).range(400..=8000))]
    pub width: u32,
    /// Height of each sensor's panel in pixels. The image adds 80 above (title, legend) and 40
    /// below (time axis).
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u32).range(80..=2000))]
    pub panel_height: u32,
}

fn parse_instant(text: &str) -> Result<EventTime, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u64>() {
            Ok(ms) if ms <= MAX_EVENT_TIME => Ok(ms),
            _ => Err(format!("{text} ms is after year 9999")),
        };
    }
    parse_rfc3339(text).map_err(|e| format!("{e} (example: 2026-03-01T00:05:00Z)"))
}

/// Writes the report image and prints the summary table.
pub fn report(args: ReportArgs) -> Result<()> {
    let format = ImageFormat::of(&args.out)?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!("cannot write {}: the directory {} does not exist", args.out.display(), parent.display());
        }
    }
    let source = Source::parse(&args.from)?;
    let selection = match (args.sensor, args.asset) {
        (Some(sensor), None) => Selection::Sensor(sensor),
        (None, Some(asset)) => Selection::Asset(asset.trim_end_matches('/').to_owned()),
        _ => bail!("give exactly one of --sensor ID and --asset ID"),
    };
    let range = TimeRange { from: args.from_ts, to: args.to_ts };
    if let (Some(from), Some(to)) = (range.from, range.to) {
        if from > to {
            bail!(
                "--from-ts {} is after --to-ts {}: the range is empty",
                format_ts(from, 1000),
                format_ts(to, 1000)
            );
        }
    }
    let loaded = match &source {
        Source::Jsonl(dir) => load_jsonl(dir, &selection, &range)?,
        Source::Postgres(url) => load_postgres(url, &selection, &range)?,
    };
    let mut panels: Vec<Panel> =
        loaded.series.into_iter().map(|(id, series)| Panel::new(id, series)).collect();
    let readings: usize = panels.iter().map(|p| p.stats.readings).sum();
    if readings == 0 {
        let span = match loaded.span {
            Some((first, last)) => {
                format!("; its data spans {} to {}", format_ts(first, 1000), format_ts(last, 1000))
            }
            None => String::new(),
        };
        bail!("no readings of {} in {}{}{span}", selection.describe(), source.describe(), range.describe());
    }
    let drift = place_drift(&loaded.drift, &mut panels);
    let plot = Plot::new(&source, &selection, &range, panels, &drift);
    let (width, height) = image_size(plot.panels.len(), args.width, args.panel_height);
    match format {
        ImageFormat::Svg => write_svg(&args.out, (width, height), args.panel_height, &plot, &drift)?,
        ImageFormat::Png => write_png(&args.out, (width, height), args.panel_height, &plot, &drift)?,
    }
    print!("{}", summary_table(&plot.panels));
    eprintln!(
        "millstream: wrote {} ({width}×{height} px, {} sensor{})",
        args.out.display(),
        plot.panels.len(),
        if plot.panels.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

/// The image size for `panels` panels: the header, the panels and the time axis.
pub fn image_size(panels: usize, width: u32, panel_height: u32) -> (u32, u32) {
    (width, HEADER_PX + panels as u32 * panel_height + AXIS_PX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageFormat {
    Svg,
    Png,
}

impl ImageFormat {
    fn of(path: &Path) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("svg") => Ok(ImageFormat::Svg),
            Some("png") => Ok(ImageFormat::Png),
            Some(other) => {
                bail!(
                    "unsupported --out extension `.{other}` in {}: use FILE.svg or FILE.png",
                    path.display()
                )
            }
            None => bail!("--out {} has no extension: use FILE.svg or FILE.png", path.display()),
        }
    }
}

enum Source {
    Jsonl(PathBuf),
    Postgres(String),
}

impl Source {
    fn parse(text: &str) -> Result<Self> {
        if let Some(dir) = text.strip_prefix("jsonl:") {
            if dir.is_empty() {
                bail!("--from jsonl: needs a directory: jsonl:DIR");
            }
            Ok(Source::Jsonl(PathBuf::from(dir)))
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Ok(Source::Postgres(text.to_owned()))
        } else {
            let shown = if text.contains("://") {
                millstream_sinks::postgres::migrate::redact_url(text)
            } else {
                text.to_owned()
            };
            bail!("unsupported --from `{shown}`: expected jsonl:DIR or postgres://USER@HOST:PORT/DB")
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Jsonl(dir) => format!("jsonl:{}", dir.display()),
            Source::Postgres(url) => millstream_sinks::postgres::migrate::redact_url(url),
        }
    }
}

enum Selection {
    Sensor(String),
    Asset(String),
}

impl Selection {
    fn matches_reading(&self, sensor_id: &str) -> bool {
        match self {
            Selection::Sensor(id) => sensor_id == id,
            Selection::Asset(asset) => {
                sensor_id.len() > asset.len()
                    && sensor_id.starts_with(asset.as_str())
                    && sensor_id.as_bytes()[asset.len()] == b'/'
            }
        }
    }

    fn matches_anomaly(&self, sensor_id: &str, asset_id: Option<&str>) -> bool {
        self.matches_reading(sensor_id)
            || matches!((self, asset_id), (Selection::Asset(asset), Some(a)) if a == asset)
    }

    /// Whether a drift event belongs to the selection: a sensor's event as that sensor's
    /// anomalies do; an asset feature's event when it is of the selected asset or, for one
    /// sensor, of that sensor's asset and computed from that sensor.
    fn matches_drift(&self, asset_id: &str, sensor_id: Option<&str>, feature: Option<&str>) -> bool {
        match (sensor_id, feature) {
            (Some(sensor), _) => self.matches_anomaly(sensor, Some(asset_id)),
            (None, Some(feature)) => match self {
                Selection::Asset(asset) => asset_id == asset,
                Selection::Sensor(id) => {
                    asset_id == asset_of(id) && feature_sensor(feature) == sensor_name(id)
                }
            },
            (None, None) => false,
        }
    }

    /// The asset whose feature events the selection shows.
    fn drift_asset(&self) -> &str {
        match self {
            Selection::Sensor(id) => asset_of(id),
            Selection::Asset(asset) => asset,
        }
    }

    fn describe(&self) -> String {
        match self {
            Selection::Sensor(id) => format!("sensor `{id}`"),
            Selection::Asset(id) => format!("asset `{id}`"),
        }
    }

    /// The error for a selection that matches nothing, with some of what is there.
    fn unknown(&self, source: &str, sensors: &BTreeSet<String>) -> anyhow::Error {
        const SHOWN: usize = 8;
        let list = |items: Vec<&str>| {
            let mut text = items.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
            if items.len() > SHOWN {
                text.push_str(&format!(", … ({} more)", items.len() - SHOWN));
            }
            text
        };
        let assets: BTreeSet<&str> = sensors.iter().map(|s| asset_of(s)).collect();
        if sensors.is_empty() {
            return anyhow!("no {} in {source}: it holds no readings at all", self.describe());
        }
        match self {
            Selection::Sensor(id) => {
                let hint = if assets.contains(id.as_str()) {
                    format!(" (`{id}` is an asset: use --asset {id})")
                } else {
                    String::new()
                };
                anyhow!(
                    "no sensor `{id}` in {source}{hint}; available sensors ({}): {}",
                    sensors.len(),
                    list(sensors.iter().map(String::as_str).collect())
                )
            }
            Selection::Asset(id) => {
                let hint = if sensors.contains(id) {
                    format!(" (`{id}` is a sensor: use --sensor {id})")
                } else {
                    String::new()
                };
                anyhow!(
                    "no asset `{id}` in {source} (no sensor id starts with `{id}/`){hint}; available assets ({}): {}",
                    assets.len(),
                    list(assets.into_iter().collect())
                )
            }
        }
    }
}

/// The asset of a sensor id: everything before its last `/` (the contract's default).
fn asset_of(sensor_id: &str) -> &str {
    sensor_id.rsplit_once('/').map_or(sensor_id, |(asset, _)| asset)
}

/// The sensor a model feature is computed from: the part before its first `:`
/// (`flow:ma15:diff30` → `flow`), matched against the last segment of a sensor id as the
/// feature plan does (`millstream_operators::features`).
fn feature_sensor(feature: &str) -> &str {
    feature.split(':').next().unwrap_or(feature)
}

/// Inclusive event-time bounds.
#[derive(Debug, Clone, Copy, Default)]
struct TimeRange {
    from: Option<EventTime>,
    to: Option<EventTime>,
}

impl TimeRange {
    fn contains(&self, ts: EventTime) -> bool {
        self.from.is_none_or(|from| ts >= from) && self.to.is_none_or(|to| ts <= to)
    }

    fn describe(&self) -> String {
        match (self.from, self.to) {
            (None, None) => String::new(),
            (Some(from), None) => format!(" from {}", format_ts(from, 1000)),
            (None, Some(to)) => format!(" up to {}", format_ts(to, 1000)),
            (Some(from), Some(to)) => format!(" from {} to {}", format_ts(from, 1000), format_ts(to, 1000)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    ts: EventTime,
    value: f64,
    late: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Anomaly {
    ts: EventTime,
    value: f64,
    score: f64,
}

#[derive(Debug, Default)]
struct Series {
    readings: Vec<Reading>,
    anomalies: Vec<Anomaly>,
}

/// A drift event as a run stored it, reduced to what the report shows.
#[derive(Debug, Clone, PartialEq)]
struct StoredDrift {
    asset_id: String,
    /// Set for a per-sensor window or sequential detector.
    sensor_id: Option<String>,
    /// Set for a per-asset feature window (`flow:ma15`).
    feature: Option<String>,
    /// `psi`, `ks`, `wasserstein`, `mean_shift`, `variance_shift`: kept as text, so that a
    /// statistic added later is still drawn.
    statistic: String,
    value: f64,
    threshold: f64,
    window_end: EventTime,
}

/// What a source gave for a selection.
struct Loaded {
    /// Every selected sensor, with its readings and anomalies inside the time range (a sensor
    /// whose data all lies outside the range is present, empty).
    series: BTreeMap<String, Series>,
    /// The selection's drift events whose window ends inside the time range.
    drift: Vec<StoredDrift>,
    /// First and last event time of the selection's data, ignoring the time range.
    span: Option<(EventTime, EventTime)>,
}

fn widen(span: &mut Option<(EventTime, EventTime)>, ts: EventTime) {
    *span = Some(match *span {
        None => (ts, ts),
        Some((first, last)) => (first.min(ts), last.max(ts)),
    });
}

#[derive(Deserialize)]
struct ScoreLine<'a> {
    #[serde(borrow)]
    sensor_id: Cow<'a, str>,
    #[serde(borrow)]
    ts: Cow<'a, str>,
    value: f64,
    #[serde(default)]
    late: bool,
}

#[derive(Deserialize)]
struct AnomalyLine<'a> {
    #[serde(borrow)]
    sensor_id: Cow<'a, str>,
    #[serde(borrow, default)]
    asset_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ts: Cow<'a, str>,
    value: f64,
    score: f64,
}

#[derive(Deserialize)]
struct DriftLine<'a> {
    #[serde(borrow)]
    asset_id: Cow<'a, str>,
    #[serde(borrow, default)]
    sensor_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    feature: Option<Cow<'a, str>>,
    #[serde(borrow)]
    statistic: Cow<'a, str>,
    value: f64,
    threshold: f64,
    #[serde(borrow)]
    window_end: Cow<'a, str>,
}

/// Calls `each(line_number, line)` for every non-empty line of a JSONL file.
fn for_each_line(path: &Path, mut each: impl FnMut(&str) -> Result<()>) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = String::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).with_context(|| format!("cannot read {}", path.display()))?;
        if read == 0 {
            return Ok(());
        }
        number += 1;
        let text = line.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        each(text).with_context(|| format!("{}:{number}", path.display()))?;
    }
}

fn load_jsonl(dir: &Path, selection: &Selection, range: &TimeRange) -> Result<Loaded> {
    let shown = format!("jsonl:{}", dir.display());
    if !dir.is_dir() {
        bail!(
            "{}: no such directory (expected the output directory of `millstream run --sink jsonl:DIR --emit-scores`)",
            dir.display()
        );
    }
    let scores = dir.join("scores.jsonl");
    if !scores.is_file() {
        bail!(
            "{} not found: the report needs the readings, which a run writes only with --emit-scores \
             (millstream run --source … --sink jsonl:{} --emit-scores)",
            scores.display(),
            dir.display()
        );
    }
    let anomalies_path = dir.join("anomalies.jsonl");
    if !anomalies_path.is_file() {
        bail!(
            "{} not found (is {} the output directory of a jsonl sink?)",
            anomalies_path.display(),
            dir.display()
        );
    }
    let mut sensors = BTreeSet::new();
    let mut series: BTreeMap<String, Series> = BTreeMap::new();
    let mut span = None;
    for_each_line(&scores, |text| {
        let line: ScoreLine = serde_json::from_str(text).context("not a scores.jsonl line")?;
        if !sensors.contains(line.sensor_id.as_ref()) {
            sensors.insert(line.sensor_id.to_string());
        }
        if !selection.matches_reading(&line.sensor_id) {
            return Ok(());
        }
        let ts = parse_rfc3339(&line.ts)?;
        widen(&mut span, ts);
        let entry = series.entry(line.sensor_id.into_owned()).or_default();
        if range.contains(ts) {
            entry.readings.push(Reading { ts, value: line.value, late: line.late });
        }
        Ok(())
    })?;
    for_each_line(&anomalies_path, |text| {
        let line: AnomalyLine = serde_json::from_str(text).context("not an anomalies.jsonl line")?;
        if !selection.matches_anomaly(&line.sensor_id, line.asset_id.as_deref()) {
            return Ok(());
        }
        let ts = parse_rfc3339(&line.ts)?;
        widen(&mut span, ts);
        let entry = series.entry(line.sensor_id.into_owned()).or_default();
        if range.contains(ts) {
            entry.anomalies.push(Anomaly { ts, value: line.value, score: line.score });
        }
        Ok(())
    })?;
    if series.is_empty() {
        return Err(selection.unknown(&shown, &sensors));
    }
    // A run without `[models.drift]`, or from before drift detection, writes no drift.jsonl.
    // Without a reading in the range there is no report, and that error comes first.
    let drift_path = dir.join("drift.jsonl");
    let mut drift = Vec::new();
    if drift_path.exists() && series.values().any(|s| !s.readings.is_empty()) {
        for_each_line(&drift_path, |text| {
            let line: DriftLine = serde_json::from_str(text).context("not a drift.jsonl line")?;
            if line.sensor_id.is_none() && line.feature.is_none() {
                bail!("a drift event needs a sensor_id or a feature");
            }
            if !selection.matches_drift(&line.asset_id, line.sensor_id.as_deref(), line.feature.as_deref()) {
                return Ok(());
            }
            let window_end = parse_rfc3339(&line.window_end).context("window_end")?;
            if range.contains(window_end) {
                drift.push(StoredDrift {
                    asset_id: line.asset_id.into_owned(),
                    sensor_id: line.sensor_id.map(Cow::into_owned),
                    feature: line.feature.map(Cow::into_owned),
                    statistic: line.statistic.into_owned(),
                    value: line.value,
                    threshold: line.threshold,
                    window_end,
                });
            }
            Ok(())
        })?;
    }
    Ok(Loaded { series, span, drift })
}

fn load_postgres(url: &str, selection: &Selection, range: &TimeRange) -> Result<Loaded> {
    use millstream_sinks::postgres::connect::ConnectOptions;
    let options = ConnectOptions::from_url(url)?;
    let shown = options.shown_url().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = options.connect().await.with_context(|| format!("cannot connect to {shown}"))?;
        let (filter, pattern) = match selection {
            Selection::Sensor(id) => ("sensor_id = $1", id.clone()),
            Selection::Asset(asset) => ("starts_with(sensor_id, $1)", format!("{asset}/")),
        };
        let asset = match selection {
            Selection::Sensor(_) => None,
            Selection::Asset(asset) => Some(asset.clone()),
        };
        let from = range.from.unwrap_or(0) as f64;
        let to = range.to.unwrap_or(MAX_EVENT_TIME) as f64;
        let in_range = "ts >= to_timestamp($2::float8 / 1000) AND ts <= to_timestamp($3::float8 / 1000)";
        let context = |what: &str| format!("cannot read {what} from {shown}");
        let readings = client
            .query(
                &format!(
                    "SELECT sensor_id, (extract(epoch FROM ts) * 1000)::int8, value, late FROM readings \
                     WHERE {filter} AND {in_range} ORDER BY sensor_id, ts"
                ),
                &[&pattern, &from, &to],
            )
            .await
            .with_context(|| context("readings"))?;
        // An asset's anomalies: by sensor id, or by their own asset_id.
        let anomaly_filter = match selection {
            Selection::Sensor(_) => "sensor_id = $1 AND $4::text IS NULL".to_owned(),
            Selection::Asset(_) => format!("({filter} OR asset_id = $4)"),
        };
        let anomalies = client
            .query(
                &format!(
                    "SELECT sensor_id, (extract(epoch FROM ts) * 1000)::int8, value, score FROM anomalies \
                     WHERE {anomaly_filter} AND {in_range} ORDER BY sensor_id, ts"
                ),
                &[&pattern, &from, &to, &asset],
            )
            .await
            .with_context(|| context("anomalies"))?;
        // Per-sensor events as anomalies are selected; feature events by their asset (and,
        // for one sensor, by the feature's sensor, below).
        let drift_filter = match selection {
            Selection::Sensor(_) => "(sensor_id = $1 OR (sensor_id IS NULL AND asset_id = $4))".to_owned(),
            Selection::Asset(_) => format!("({filter} OR asset_id = $4)"),
        };
        let drift_in_range =
            "window_end >= to_timestamp($2::float8 / 1000) AND window_end <= to_timestamp($3::float8 / 1000)";
        // Without a reading in the range there is no report, and that error comes first.
        let drift_rows = if readings.is_empty() {
            Vec::new()
        } else {
            client
                .query(
                    &format!(
                        "SELECT asset_id, sensor_id, feature, statistic, value, threshold, \
                         (extract(epoch FROM window_end) * 1000)::int8 FROM drift_events \
                         WHERE {drift_filter} AND {drift_in_range} ORDER BY window_end, event_id"
                    ),
                    &[&pattern, &from, &to, &selection.drift_asset()],
                )
                .await
                .map_err(|e| drift_query_error(e, &shown))?
        };
        let mut drift = Vec::new();
        for row in &drift_rows {
            let event = StoredDrift {
                asset_id: row.try_get(0)?,
                sensor_id: row.try_get(1)?,
                feature: row.try_get(2)?,
                statistic: row.try_get(3)?,
                value: row.try_get(4)?,
                threshold: row.try_get(5)?,
                window_end: row.try_get::<_, i64>(6)?.max(0) as EventTime,
            };
            if selection.matches_drift(&event.asset_id, event.sensor_id.as_deref(), event.feature.as_deref()) {
                drift.push(event);
            }
        }
        let mut series: BTreeMap<String, Series> = BTreeMap::new();
        let mut span = None;
        for row in &readings {
            let ts = row.try_get::<_, i64>(1)?.max(0) as EventTime;
            widen(&mut span, ts);
            series.entry(row.try_get(0)?).or_default().readings.push(Reading {
                ts,
                value: row.try_get(2)?,
                late: row.try_get(3)?,
            });
        }
        for row in &anomalies {
            let ts = row.try_get::<_, i64>(1)?.max(0) as EventTime;
            widen(&mut span, ts);
            series.entry(row.try_get(0)?).or_default().anomalies.push(Anomaly {
                ts,
                value: row.try_get(2)?,
                score: row.try_get(3)?,
            });
        }
        if series.is_empty() {
            // Nothing in the range: is there anything at all, and where?
            let rows = client
                .query(
                    &format!(
                        "SELECT sensor_id, (extract(epoch FROM min(ts)) * 1000)::int8, \
                         (extract(epoch FROM max(ts)) * 1000)::int8 FROM readings WHERE {filter} GROUP BY sensor_id"
                    ),
                    &[&pattern],
                )
                .await
                .with_context(|| context("readings"))?;
            if rows.is_empty() {
                let sensors: BTreeSet<String> = client
                    .query("SELECT sensor_id FROM sensors ORDER BY sensor_id LIMIT 10000", &[])
                    .await
                    .with_context(|| context("sensors"))?
                    .iter()
                    .map(|row| row.get(0))
                    .collect();
                return Err(selection.unknown(&shown, &sensors));
            }
            for row in rows {
                widen(&mut span, row.try_get::<_, i64>(1)?.max(0) as EventTime);
                widen(&mut span, row.try_get::<_, i64>(2)?.max(0) as EventTime);
                series.entry(row.try_get(0)?).or_default();
            }
        }
        Ok(Loaded { series, span, drift })
    })
}

/// The error of the `drift_events` query: a missing table gets its own message, since the
/// database then predates migration 0002 while every sink that writes readings applies it.
fn drift_query_error(error: tokio_postgres::Error, shown: &str) -> anyhow::Error {
    if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
        anyhow!(
            "cannot read drift events from {shown}: it has no drift_events table (migration 0002_drift); \
             apply the migrations with `millstream migrate --database-url …` and report again"
        )
    } else {
        anyhow::Error::new(error).context(format!("cannot read drift events from {shown}"))
    }
}

/// A run of one sensor's anomalies, each less than [`EPISODE_GAP_MS`] after the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Episode {
    pub start: EventTime,
    pub end: EventTime,
    pub anomalies: usize,
}

/// Merges sorted anomaly times into episodes: a gap of at most `gap_ms` continues an episode.
pub fn episodes(sorted_ts: &[EventTime], gap_ms: EventTime) -> Vec<Episode> {
    let mut out: Vec<Episode> = Vec::new();
    for &ts in sorted_ts {
        match out.last_mut() {
            Some(episode) if ts.saturating_sub(episode.end) <= gap_ms => {
                episode.end = episode.end.max(ts);
                episode.anomalies += 1;
            }
            _ => out.push(Episode { start: ts, end: ts, anomalies: 1 }),
        }
    }
    out
}

/// A drift event to mark on a sensor's panel.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftEvent {
    /// The panel it is drawn on.
    pub sensor_id: String,
    /// Its window's end (for a sequential detection, the detection).
    pub ts: EventTime,
    /// What it measured, e.g. `psi 0.42`, `mean_shift up`, `psi 0.42 (flow:ma15)`.
    pub label: String,
    /// How far past its threshold it is (|value| / threshold): of events that share a marker,
    /// the strongest names it.
    pub strength: f64,
}

impl DriftEvent {
    /// The label of a stored event: window statistics with their value; sequential detections
    /// with their direction, since their value is a CUSUM statistic, not a size; a feature
    /// event names its feature, since it is drawn on its sensor's panel.
    fn label(event: &StoredDrift) -> String {
        let statistic = event.statistic.as_str();
        let base = match statistic {
            "mean_shift" | "variance_shift" => {
                format!("{statistic} {}", if event.value < 0.0 { "down" } else { "up" })
            }
            _ => format!("{statistic} {:.2}", event.value),
        };
        match (&event.sensor_id, &event.feature) {
            (None, Some(feature)) => format!("{base} ({feature})"),
            _ => base,
        }
    }
}

/// Puts each stored drift event on the panels it belongs to: a sensor's event on that sensor's
/// panel, a feature event on the panel of the sensor it is computed from (the events are
/// already those of the selection, so the sensor's name is enough). Counts them in the panels'
/// stats; returns them by panel and time.
fn place_drift(stored: &[StoredDrift], panels: &mut [Panel]) -> Vec<DriftEvent> {
    let mut placed = Vec::new();
    for event in stored {
        let strength =
            if event.threshold > 0.0 { event.value.abs() / event.threshold } else { event.value.abs() };
        for panel in panels.iter_mut() {
            let on_panel = match (&event.sensor_id, &event.feature) {
                (Some(sensor), _) => *sensor == panel.sensor_id,
                (None, Some(feature)) => feature_sensor(feature) == sensor_name(&panel.sensor_id),
                (None, None) => false,
            };
            if on_panel {
                panel.stats.drift += 1;
                placed.push(DriftEvent {
                    sensor_id: panel.sensor_id.clone(),
                    ts: event.window_end,
                    label: DriftEvent::label(event),
                    strength,
                });
            }
        }
    }
    placed.sort_by(|a, b| {
        (a.sensor_id.as_str(), a.ts)
            .cmp(&(b.sensor_id.as_str(), b.ts))
            .then(b.strength.total_cmp(&a.strength))
    });
    placed
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Stats {
    readings: usize,
    first: Option<EventTime>,
    last: Option<EventTime>,
    min: f64,
    mean: f64,
    max: f64,
    anomalies: usize,
    episodes: usize,
    late: usize,
    /// Drift events drawn on the panel.
    drift: usize,
}

/// One sensor's panel: its data sorted by time, its episodes and its numbers.
struct Panel {
    sensor_id: String,
    readings: Vec<Reading>,
    anomalies: Vec<Anomaly>,
    episodes: Vec<Episode>,
    stats: Stats,
}

impl Panel {
    fn new(sensor_id: String, mut series: Series) -> Self {
        series.readings.sort_by(|a, b| a.ts.cmp(&b.ts).then(a.value.total_cmp(&b.value)));
        series.anomalies.sort_by(|a, b| a.ts.cmp(&b.ts).then(b.score.total_cmp(&a.score)));
        let times: Vec<EventTime> = series.anomalies.iter().map(|a| a.ts).collect();
        let episodes = episodes(&times, EPISODE_GAP_MS);
        let mut stats = Stats {
            readings: series.readings.len(),
            first: series.readings.first().map(|r| r.ts),
            last: series.readings.last().map(|r| r.ts),
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            anomalies: series.anomalies.len(),
            episodes: episodes.len(),
            ..Stats::default()
        };
        let mut sum = 0.0;
        for r in &series.readings {
            stats.min = stats.min.min(r.value);
            stats.max = stats.max.max(r.value);
            sum += r.value;
            stats.late += r.late as usize;
        }
        stats.mean = if stats.readings == 0 { f64::NAN } else { sum / stats.readings as f64 };
        Panel { sensor_id, readings: series.readings, anomalies: series.anomalies, episodes, stats }
    }

    /// The value axis: the readings and anomalies with a margin.
    fn y_range(&self) -> (f64, f64) {
        let values = self.readings.iter().map(|r| r.value).chain(self.anomalies.iter().map(|a| a.value));
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if !lo.is_finite() || !hi.is_finite() {
            return (0.0, 1.0);
        }
        let pad = if hi > lo { (hi - lo) * 0.08 } else { (lo.abs() * 0.05).max(1.0) };
        (lo - pad, hi + pad)
    }
}

/// Everything the image shows.
struct Plot {
    title: String,
    subtitle: String,
    x0: i64,
    x1: i64,
    panels: Vec<Panel>,
}

impl Plot {
    fn new(
        source: &Source,
        selection: &Selection,
        range: &TimeRange,
        panels: Vec<Panel>,
        drift: &[DriftEvent],
    ) -> Self {
        // A drift window can end just after the last reading: widen the axis to show it.
        let times = panels
            .iter()
            .flat_map(|p| p.readings.iter().map(|r| r.ts).chain(p.anomalies.iter().map(|a| a.ts)))
            .chain(drift.iter().map(|d| d.ts));
        let (first, last) = times.fold((EventTime::MAX, 0), |(lo, hi), ts| (lo.min(ts), hi.max(ts)));
        let mut x0 = range.from.unwrap_or(first) as i64;
        let mut x1 = range.to.unwrap_or(last) as i64;
        if x1 <= x0 {
            x0 -= 30_000;
            x1 += 30_000;
        }
        let readings: usize = panels.iter().map(|p| p.stats.readings).sum();
        let anomalies: usize = panels.iter().map(|p| p.stats.anomalies).sum();
        let episodes: usize = panels.iter().map(|p| p.stats.episodes).sum();
        let n = panels.len();
        let title = format!("millstream report — {}", selection.describe().replace('`', ""));
        let mut subtitle = format!(
            "{} · {} to {} (UTC) · {n} sensor{} · {readings} readings · {anomalies} anomal{} in {episodes} episode{}",
            source.describe(),
            format_ts(x0.max(0) as EventTime, 1000),
            format_ts(x1.max(0) as EventTime, 1000),
            if n == 1 { "" } else { "s" },
            if anomalies == 1 { "y" } else { "ies" },
            if episodes == 1 { "" } else { "s" },
        );
        if !drift.is_empty() {
            subtitle.push_str(&format!(
                " · {} drift event{}",
                drift.len(),
                if drift.len() == 1 { "" } else { "s" }
            ));
        }
        Plot { title, subtitle, x0, x1, panels }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.mmm]Z`, or only the date when `step_ms` is whole days; milliseconds
/// only when `step_ms` needs them.
fn format_ts(ts: EventTime, step_ms: u64) -> String {
    let full = format_rfc3339_millis(ts);
    if whole(step_ms, 86_400_000) && whole(ts, 86_400_000) {
        full[..10].to_owned()
    } else if whole(step_ms, 1000) && whole(ts, 1000) {
        format!("{}Z", &full[..19])
    } else {
        full
    }
}

/// Whether `value` is a whole number of `unit`s.
fn whole(value: u64, unit: u64) -> bool {
    value / unit * unit == value
}

/// Round tick steps for a time axis, in milliseconds.
const TICK_STEPS_MS: [u64; 27] = [
    1,
    10,
    100,
    1_000,
    2_000,
    5_000,
    10_000,
    15_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    172_800_000,
    604_800_000,
    1_209_600_000,
    2_592_000_000,
    7_776_000_000,
    31_536_000_000,
];

/// Tick positions on `[x0, x1]`: multiples of the smallest round step that gives at most
/// `max_ticks` ticks.
fn time_ticks(x0: i64, x1: i64, max_ticks: usize) -> (Vec<i64>, u64) {
    let span = (x1 - x0).max(1) as u64;
    let max_ticks = max_ticks.max(2) as u64;
    let step = TICK_STEPS_MS.iter().copied().find(|&s| span / s < max_ticks).unwrap_or(31_536_000_000);
    let s = step as i64;
    let mut tick = x0.div_euclid(s) * s;
    if tick < x0 {
        tick += s;
    }
    let mut ticks = Vec::new();
    while tick <= x1 {
        ticks.push(tick);
        tick += s;
    }
    (ticks, step)
}

/// Keeps at most four points (first, minimum, maximum, last) per pixel column, in time order:
/// what the line looks like at that width, without drawing millions of segments.
fn decimate(points: &[(i64, f64)], x0: i64, x1: i64, columns: u32) -> Vec<(i64, f64)> {
    if points.len() <= 4 * columns as usize {
        return points.to_vec();
    }
    let span = (x1 - x0).max(1) as i128;
    let column = |x: i64| ((x - x0) as i128 * columns as i128 / span) as i64;
    let mut out = Vec::with_capacity(4 * columns as usize + 4);
    let mut start = 0;
    while start < points.len() {
        let c = column(points[start].0);
        let mut end = start + 1;
        while end < points.len() && column(points[end].0) == c {
            end += 1;
        }
        let bucket = &points[start..end];
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in bucket.iter().enumerate() {
            if p.1 < bucket[lo].1 {
                lo = i;
            }
            if p.1 > bucket[hi].1 {
                hi = i;
            }
        }
        let mut keep = [0, lo.min(hi), lo.max(hi), bucket.len() - 1];
        keep.sort_unstable();
        let mut previous = None;
        for i in keep {
            if previous != Some(i) {
                out.push(bucket[i]);
                previous = Some(i);
            }
        }
        start = end;
    }
    out
}

/// The on-time readings as line segments, broken where the sensor was silent for more than ten
/// times its usual period.
fn line_segments(readings: &[Reading]) -> Vec<Vec<(i64, f64)>> {
    let on_time: Vec<(i64, f64)> =
        readings.iter().filter(|r| !r.late).map(|r| (r.ts as i64, r.value)).collect();
    let mut gaps: Vec<i64> = on_time.windows(2).map(|w| w[1].0 - w[0].0).filter(|&g| g > 0).collect();
    let threshold = if gaps.is_empty() {
        i64::MAX
    } else {
        let middle = gaps.len() / 2;
        let (_, median, _) = gaps.select_nth_unstable(middle);
        (*median * 10).max(1)
    };
    let mut segments: Vec<Vec<(i64, f64)>> = Vec::new();
    for point in on_time {
        match segments.last_mut() {
            Some(segment) if point.0 - segment.last().expect("segments are never empty").0 <= threshold => {
                segment.push(point)
            }
            _ => segments.push(vec![point]),
        }
    }
    segments
}

fn draw_err(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the report failed: {error}")
}

fn register_font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        bail!("the bundled font (Roboto Regular) could not be loaded")
    }
}

fn write_svg(
    path: &Path,
    size: (u32, u32),
    panel_height: u32,
    plot: &Plot,
    drift: &[DriftEvent],
) -> Result<()> {
    register_font()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        render(&root, panel_height, plot, drift)?;
        root.present().map_err(draw_err)?;
    }
    std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))
}

fn write_png(
    path: &Path,
    size: (u32, u32),
    panel_height: u32,
    plot: &Plot,
    drift: &[DriftEvent],
) -> Result<()> {
    register_font()?;
    let (width, height) = size;
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        render(&root, panel_height, plot, drift)?;
        root.present().map_err(draw_err)?;
    }
    let write = || -> Result<()> {
        let file = std::fs::File::create(path)?;
        let mut encoder = png::Encoder::new(BufWriter::new(file), width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::High);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&pixels)?;
        writer.finish()?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

type TimeChart<'a, DB> = ChartContext<'a, DB, Cartesian2d<WithKeyPoints<RangedCoordi64>, RangedCoordf64>>;

fn render<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panel_height: u32,
    plot: &Plot,
    drift: &[DriftEvent],
) -> Result<()> {
    root.fill(&WHITE).map_err(draw_err)?;
    let (header, body) = root.split_vertically(HEADER_PX);
    draw_header(&header, plot, !drift.is_empty())?;
    let n = plot.panels.len();
    let breaks: Vec<u32> = (1..n as u32).map(|i| i * panel_height).collect();
    let areas = body.split_by_breakpoints::<u32, u32, _, _>([], breaks);
    let width = root.dim_in_pixel().0;
    let (ticks, step) = time_ticks(plot.x0, plot.x1, ((width.saturating_sub(110)) / 180) as usize);
    for (i, (area, panel)) in areas.iter().zip(&plot.panels).enumerate() {
        let last = i + 1 == n;
        let (y0, y1) = panel.y_range();
        let caption = format!(
            "{} — {} readings, {} anomal{}{}{}",
            panel.sensor_id,
            panel.stats.readings,
            panel.stats.anomalies,
            if panel.stats.anomalies == 1 { "y" } else { "ies" },
            if panel.stats.late > 0 { format!(", {} late", panel.stats.late) } else { String::new() },
            match panel.stats.drift {
                0 => String::new(),
                1 => ", 1 drift event".to_owned(),
                n => format!(", {n} drift events"),
            },
        );
        let mut chart = ChartBuilder::on(area)
            .margin_left(10)
            .margin_right(24)
            .margin_top(2)
            .margin_bottom(6)
            .caption(caption, (FAMILY, 15).into_font().color(&TEXT_COLOR))
            .set_label_area_size(LabelAreaPosition::Left, 72)
            .set_label_area_size(LabelAreaPosition::Bottom, if last { AXIS_PX } else { 0 })
            .build_cartesian_2d((plot.x0..plot.x1).with_key_points(ticks.clone()), y0..y1)
            .map_err(draw_err)?;
        let label_style = (FAMILY, 12).into_font().color(&MUTED_COLOR);
        let x_label = |ms: &i64| format_ts((*ms).max(0) as EventTime, step);
        chart
            .configure_mesh()
            .x_label_formatter(&x_label)
            .y_labels(5)
            .label_style(label_style)
            .bold_line_style(BLACK.mix(0.10))
            .light_line_style(TRANSPARENT)
            .axis_style(BLACK.mix(0.45))
            .draw()
            .map_err(draw_err)?;
        draw_panel(&mut chart, plot, panel, (y0, y1))?;
        draw_drift_events(&mut chart, &panel.sensor_id, drift, (y0, y1))?;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    chart: &mut TimeChart<'_, DB>,
    plot: &Plot,
    panel: &Panel,
    y: (f64, f64),
) -> Result<()> {
    let (x0, x1) = (plot.x0, plot.x1);
    let columns = chart.plotting_area().dim_in_pixel().0.max(1);
    let min_width = ((x1 - x0) as f64 * MIN_EPISODE_PX / columns as f64).ceil() as i64;
    // Episodes first, under the line.
    chart
        .draw_series(panel.episodes.iter().map(|e| {
            let (start, end) = (e.start as i64, e.end as i64);
            let extra = (min_width - (end - start)).max(0);
            let (a, b) = ((start - extra / 2).max(x0), (end + extra - extra / 2).min(x1));
            Rectangle::new([(a, y.0), (b, y.1)], ANOMALY_COLOR.mix(0.16).filled())
        }))
        .map_err(draw_err)?;
    for segment in line_segments(&panel.readings) {
        let points = decimate(&segment, x0, x1, columns);
        if points.len() == 1 {
            chart.draw_series([Circle::new(points[0], 1, LINE_COLOR.filled())]).map_err(draw_err)?;
        } else {
            chart.draw_series(LineSeries::new(points, LINE_COLOR.stroke_width(1))).map_err(draw_err)?;
        }
    }
    chart
        .draw_series(
            panel
                .readings
                .iter()
                .filter(|r| r.late)
                .map(|r| Circle::new((r.ts as i64, r.value), 4, LATE_COLOR.stroke_width(2))),
        )
        .map_err(draw_err)?;
    chart
        .draw_series(
            panel.anomalies.iter().map(|a| Circle::new((a.ts as i64, a.value), 4, ANOMALY_COLOR.filled())),
        )
        .map_err(draw_err)?;
    if panel.readings.is_empty() {
        let style = (FAMILY, 14).into_font().color(&MUTED_COLOR).pos(Pos::new(HPos::Center, VPos::Center));
        chart
            .draw_series([Text::new("no readings in this range", ((x0 + x1) / 2, (y.0 + y.1) / 2.0), style)])
            .map_err(draw_err)?;
    }
    Ok(())
}

/// A sensor's drift events: a vertical line at each, labelled at the top of the panel.
///
/// A drift episode emits several statistics, for the sensor's window and for the features of
/// its asset, often at one slide: events less than [`DRIFT_MERGE_PX`] apart share one line,
/// labelled with the strongest and the number of others (`psi 4.31 and 5 more`), so that a
/// burst reads as one event and not as a smear of overprinted text. Labels are stacked in up to
/// [`DRIFT_LABEL_ROWS`] rows, each on a light background to stay legible over the readings; a
/// label that fits in no row is left out (its line stays, and the console table counts it).
pub fn draw_drift_events<DB: DrawingBackend>(
    chart: &mut TimeChart<'_, DB>,
    sensor_id: &str,
    events: &[DriftEvent],
    (y0, y1): (f64, f64),
) -> Result<()> {
    let range = chart.x_range();
    let mut mine: Vec<&DriftEvent> = events
        .iter()
        .filter(|e| e.sensor_id == sensor_id && (range.start..=range.end).contains(&(e.ts as i64)))
        .collect();
    if mine.is_empty() {
        return Ok(());
    }
    mine.sort_by_key(|e| e.ts);
    let columns: Vec<i32> = mine.iter().map(|e| chart.backend_coord(&(e.ts as i64, y1)).0).collect();
    let markers = drift_markers(&mine, &columns, DRIFT_MERGE_PX);
    chart
        .draw_series(markers.iter().map(|m| {
            // Thin and translucent, so that the readings stay visible under a dense episode; a
            // line that stands for several events is drawn heavier.
            let x = m.ts as i64;
            let width = if m.count > 1 { 2 } else { 1 };
            PathElement::new(vec![(x, y0), (x, y1)], DRIFT_COLOR.mix(0.8).stroke_width(width))
        }))
        .map_err(draw_err)?;
    let style = (FAMILY, 12).into_font().color(&DRIFT_COLOR);
    let area = chart.plotting_area();
    let (columns_range, _) = area.get_pixel_range();
    let mut row_ends = [i32::MIN; DRIFT_LABEL_ROWS];
    for marker in &markers {
        let (w, h) = area.estimate_text_size(&marker.label, &style).map_err(draw_err)?;
        let (w, h) = (w as i32, h as i32);
        // Right of the line, or left of it where the panel ends.
        let left = if marker.column + 4 + w <= columns_range.end {
            marker.column + 4
        } else {
            (marker.column - 4 - w).max(columns_range.start)
        };
        let Some(row) = row_ends.iter().position(|&end| left >= end.saturating_add(8)) else {
            continue;
        };
        row_ends[row] = left + w;
        let (dx, dy) = (left - marker.column, 3 + row as i32 * (h + 4));
        let label = EmptyElement::at((marker.ts as i64, y1))
            + Rectangle::new([(dx - 2, dy - 1), (dx + w + 2, dy + h + 1)], WHITE.mix(0.85).filled())
            + Text::new(marker.label.clone(), (dx, dy), style.clone());
        area.draw(&label).map_err(draw_err)?;
    }
    Ok(())
}

/// One drawn drift line: the first of the events it stands for, and its label.
#[derive(Debug, Clone, PartialEq)]
struct DriftMarker {
    ts: EventTime,
    /// Its pixel column.
    column: i32,
    /// How many events it stands for.
    count: usize,
    label: String,
}

/// Groups a panel's events, sorted by time with their pixel columns, into markers: each group
/// starts at an event and takes the following ones less than `merge_px` to its right (so a
/// marker never spans more than `merge_px`, however long the burst).
fn drift_markers(events: &[&DriftEvent], columns: &[i32], merge_px: i32) -> Vec<DriftMarker> {
    let mut markers = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let mut end = start + 1;
        while end < events.len() && columns[end] - columns[start] < merge_px {
            end += 1;
        }
        let group = &events[start..end];
        let strongest = group
            .iter()
            .copied()
            .reduce(|best, e| if e.strength > best.strength { e } else { best })
            .expect("a group holds at least its first event");
        let label = match group.len() {
            1 => strongest.label.clone(),
            n => format!("{} and {} more", strongest.label, n - 1),
        };
        markers.push(DriftMarker { ts: group[0].ts, column: columns[start], count: group.len(), label });
        start = end;
    }
    markers
}

fn draw_header<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    plot: &Plot,
    with_drift: bool,
) -> Result<()> {
    let left = (FAMILY, 20).into_font().color(&TEXT_COLOR).pos(Pos::new(HPos::Left, VPos::Top));
    area.draw(&Text::new(plot.title.as_str(), (12, 8), left)).map_err(draw_err)?;
    let sub = (FAMILY, 13).into_font().color(&MUTED_COLOR).pos(Pos::new(HPos::Left, VPos::Top));
    area.draw(&Text::new(plot.subtitle.as_str(), (12, 34), sub)).map_err(draw_err)?;
    // The legend, one row: sample, then label.
    let label = (FAMILY, 13).into_font().color(&TEXT_COLOR).pos(Pos::new(HPos::Left, VPos::Center));
    let y = 64;
    let mut x = 12;
    let mut items: Vec<(&str, Legend)> = vec![
        ("reading", Legend::Line),
        ("late reading (kept, not scored)", Legend::Late),
        ("anomaly", Legend::Anomaly),
        ("anomaly episode (anomalies ≤ 30 s apart)", Legend::Episode),
    ];
    if with_drift {
        items.push(("drift event (at its window end)", Legend::Drift));
    }
    for (text, kind) in items {
        match kind {
            Legend::Line => {
                area.draw(&PathElement::new(vec![(x, y), (x + 24, y)], LINE_COLOR.stroke_width(2)))
            }
            Legend::Late => area.draw(&Circle::new((x + 12, y), 4, LATE_COLOR.stroke_width(2))),
            Legend::Anomaly => area.draw(&Circle::new((x + 12, y), 4, ANOMALY_COLOR.filled())),
            Legend::Episode => {
                area.draw(&Rectangle::new([(x, y - 8), (x + 24, y + 8)], ANOMALY_COLOR.mix(0.16).filled()))
            }
            Legend::Drift => area
                .draw(&PathElement::new(vec![(x + 12, y - 8), (x + 12, y + 8)], DRIFT_COLOR.stroke_width(2))),
        }
        .map_err(draw_err)?;
        area.draw(&Text::new(text, (x + 32, y), label.clone())).map_err(draw_err)?;
        let (w, _) = area.estimate_text_size(text, &label).map_err(draw_err)?;
        x += 32 + w as i32 + 24;
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Legend {
    Line,
    Late,
    Anomaly,
    Episode,
    Drift,
}

/// The console table: one row per sensor, with the drift events drawn on its panel.
fn summary_table(panels: &[Panel]) -> String {
    let header = [
        "sensor",
        "readings",
        "first",
        "last",
        "min",
        "mean",
        "max",
        "anomalies",
        "episodes",
        "late",
        "drift",
    ];
    let number = |v: f64| if v.is_finite() { format!("{v:.3}") } else { "-".to_owned() };
    let time = |t: Option<EventTime>| t.map_or("-".to_owned(), |t| format_ts(t, 1000));
    let rows: Vec<[String; 11]> = panels
        .iter()
        .map(|p| {
            let s = &p.stats;
            [
                p.sensor_id.clone(),
                s.readings.to_string(),
                time(s.first),
                time(s.last),
                number(s.min),
                number(s.mean),
                number(s.max),
                s.anomalies.to_string(),
                s.episodes.to_string(),
                s.late.to_string(),
                s.drift.to_string(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            // The sensor left-aligned, numbers and times right-aligned.
            if i == 0 {
                text.push_str(&format!("{cell:<w$}", w = widths[i]));
            } else {
                text.push_str(&format!("{cell:>w$}", w = widths[i]));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anomalies_within_30_s_merge_into_one_episode() {
        let s = 1_000;
        let ts = [10 * s, 20 * s, 50 * s, 81 * s, 200 * s, 200 * s];
        assert_eq!(
            episodes(&ts, EPISODE_GAP_MS),
            vec![
                Episode { start: 10 * s, end: 50 * s, anomalies: 3 },
                Episode { start: 81 * s, end: 81 * s, anomalies: 1 },
                Episode { start: 200 * s, end: 200 * s, anomalies: 2 },
            ]
        );
        assert!(episodes(&[], EPISODE_GAP_MS).is_empty());
    }

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        let start = 1_772_323_200_000i64; // 2026-03-01T00:00:00Z
        let (ticks, step) = time_ticks(start + 1, start + 599_000, 6);
        assert_eq!(step, 120_000);
        assert_eq!(ticks.first(), Some(&(start + 120_000)));
        assert!(ticks.iter().all(|t| t % 120_000 == 0 && *t <= start + 599_000));
        assert_eq!(format_ts(start as u64 + 120_000, step), "2026-03-01T00:02:00Z");
        assert_eq!(format_ts(start as u64, 86_400_000), "2026-03-01");
        assert_eq!(format_ts(start as u64 + 5, 10), "2026-03-01T00:00:00.005Z");
    }

    #[test]
    fn decimation_keeps_extremes_and_order() {
        let points: Vec<(i64, f64)> =
            (0..10_000).map(|i| (i, if i == 5_003 { 100.0 } else { (i % 7) as f64 })).collect();
        let kept = decimate(&points, 0, 9_999, 100);
        assert!(kept.len() <= 400);
        assert!(kept.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(kept.contains(&(5_003, 100.0)));
        assert_eq!(kept.first(), Some(&(0, 0.0)));
        assert_eq!(kept.last(), Some(&(9_999, (9_999 % 7) as f64)));
    }

    #[test]
    fn line_breaks_at_silences_and_skips_late_readings() {
        let r = |ts, late| Reading { ts, value: 1.0, late };
        let readings = [
            r(0, false),
            r(1_000, false),
            r(1_500, true),
            r(2_000, false),
            r(60_000, false),
            r(61_000, false),
        ];
        let segments = line_segments(&readings);
        assert_eq!(segments.len(), 2);
        assert_eq!(segments[0].len(), 3);
        assert_eq!(segments[1].len(), 2);
    }

    #[test]
    fn asset_selection_needs_the_slash() {
        let asset = Selection::Asset("line1-pump-0".into());
        assert!(!asset.matches_reading("line1-pump-00/flow"));
        assert!(asset.matches_reading("line1-pump-0/flow"));
        assert!(asset.matches_anomaly("elsewhere/flow", Some("line1-pump-0")));
        assert!(!Selection::Sensor("a/b".into()).matches_anomaly("a/c", Some("a")));
    }

    #[test]
    fn unknown_selection_lists_what_is_there() {
        let sensors: BTreeSet<String> =
            ["p1/flow", "p1/temp", "p2/flow"].iter().map(|s| s.to_string()).collect();
        let e = Selection::Sensor("p1".into()).unknown("jsonl:x", &sensors).to_string();
        assert!(e.contains("use --asset p1") && e.contains("p1/flow, p1/temp, p2/flow"), "{e}");
        let e = Selection::Asset("p3".into()).unknown("jsonl:x", &sensors).to_string();
        assert!(e.contains("available assets (2): p1, p2"), "{e}");
    }

    #[test]
    fn out_extension_is_checked() {
        assert_eq!(ImageFormat::of(Path::new("a/b.PNG")).unwrap(), ImageFormat::Png);
        assert_eq!(ImageFormat::of(Path::new("b.svg")).unwrap(), ImageFormat::Svg);
        assert!(ImageFormat::of(Path::new("b.jpg"))
            .unwrap_err()
            .to_string()
            .contains("unsupported --out extension"));
        assert!(ImageFormat::of(Path::new("b")).is_err());
    }

    #[test]
    fn instants_parse_as_rfc3339_or_epoch_ms() {
        assert_eq!(parse_instant("2026-03-01T00:00:01Z"), Ok(1_772_323_201_000));
        assert_eq!(parse_instant("1772323201000"), Ok(1_772_323_201_000));
        assert!(parse_instant("yesterday").is_err());
    }

    #[test]
    fn table_has_a_row_per_sensor() {
        let series = Series {
            readings: vec![
                Reading { ts: 1_000, value: 1.0, late: false },
                Reading { ts: 2_000, value: 3.0, late: true },
            ],
            anomalies: vec![Anomaly { ts: 2_000, value: 3.0, score: 0.9 }],
        };
        let table = summary_table(&[Panel::new("p1/flow".into(), series)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("sensor"));
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "p1/flow",
                "2",
                "1970-01-01T00:00:01Z",
                "1970-01-01T00:00:02Z",
                "1.000",
                "2.000",
                "3.000",
                "1",
                "1",
                "1",
                "0"
            ]
        );
    }

    fn stored(sensor: Option<&str>, feature: Option<&str>, statistic: &str, value: f64) -> StoredDrift {
        StoredDrift {
            asset_id: "p1".into(),
            sensor_id: sensor.map(str::to_owned),
            feature: feature.map(str::to_owned),
            statistic: statistic.into(),
            value,
            threshold: 0.25,
            window_end: 60_000,
        }
    }

    #[test]
    fn drift_selection_follows_sensors_and_feature_sensors() {
        let asset = Selection::Asset("p1".into());
        let flow = Selection::Sensor("p1/flow".into());
        assert!(asset.matches_drift("p1", Some("p1/flow"), None));
        assert!(asset.matches_drift("p1", None, Some("temp:ma15")));
        assert!(!asset.matches_drift("p2", None, Some("flow:ma15")));
        assert!(!asset.matches_drift("p2", Some("p2/flow"), None));
        assert!(flow.matches_drift("p1", Some("p1/flow"), None));
        assert!(!flow.matches_drift("p1", Some("p1/temp"), None));
        assert!(flow.matches_drift("p1", None, Some("flow:ma15:diff30")));
        assert!(flow.matches_drift("p1", None, Some("flow")));
        assert!(!flow.matches_drift("p1", None, Some("temp:ma15")));
        assert!(!flow.matches_drift("p2", None, Some("flow:ma15")));
        assert!(!asset.matches_drift("p1", None, None));
    }

    #[test]
    fn drift_events_go_on_their_sensor_panels_with_labels() {
        let mut panels = vec![
            Panel::new("p1/flow".into(), Series::default()),
            Panel::new("p1/temp".into(), Series::default()),
        ];
        let events = [
            stored(Some("p1/temp"), None, "psi", 0.4213),
            stored(None, Some("flow:ma15"), "ks", 0.5),
            stored(Some("p1/flow"), None, "mean_shift", -7.0),
            stored(Some("p1/flow"), None, "variance_shift", 3.0),
            stored(None, Some("pressure:ma15"), "psi", 1.0),
        ];
        let placed = place_drift(&events, &mut panels);
        let on = |sensor: &str| -> Vec<&str> {
            placed.iter().filter(|e| e.sensor_id == sensor).map(|e| e.label.as_str()).collect()
        };
        // Same time: the strongest first (28 and 12 times its threshold, then 2).
        assert_eq!(on("p1/flow"), ["mean_shift down", "variance_shift up", "ks 0.50 (flow:ma15)"]);
        assert_eq!(on("p1/temp"), ["psi 0.42"]);
        assert_eq!((panels[0].stats.drift, panels[1].stats.drift), (3, 1));
        assert!(summary_table(&panels).lines().nth(1).unwrap().ends_with(" 3"));
    }

    #[test]
    fn close_drift_events_share_a_marker_named_by_the_strongest() {
        let event = |ts, label: &str, strength| DriftEvent {
            sensor_id: "p1/flow".into(),
            ts,
            label: label.into(),
            strength,
        };
        let events = [
            event(0, "psi 0.30", 1.2),
            event(1, "ks 0.90", 3.6),
            event(2, "mean_shift up", 2.0),
            event(9, "psi 0.50", 2.0),
        ];
        let refs: Vec<&DriftEvent> = events.iter().collect();
        let markers = drift_markers(&refs, &[100, 103, 105, 106], DRIFT_MERGE_PX);
        assert_eq!(
            markers,
            [
                DriftMarker { ts: 0, column: 100, count: 3, label: "ks 0.90 and 2 more".into() },
                DriftMarker { ts: 9, column: 106, count: 1, label: "psi 0.50".into() },
            ]
        );
        // A long burst is cut every few pixels rather than chained into one wide marker.
        let burst: Vec<DriftEvent> = (0..20).map(|i| event(i, "psi 0.30", 1.2)).collect();
        let refs: Vec<&DriftEvent> = burst.iter().collect();
        let columns: Vec<i32> = (0..20).collect();
        let markers = drift_markers(&refs, &columns, DRIFT_MERGE_PX);
        assert!(markers.iter().all(|m| m.count <= DRIFT_MERGE_PX as usize), "{markers:?}");
        assert_eq!(markers.iter().map(|m| m.count).sum::<usize>(), 20);
    }
}
