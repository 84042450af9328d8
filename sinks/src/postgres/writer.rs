//! The PostgreSQL writer: one transaction per batch, idempotent, at COPY speed when it can.
//!
//! Readings go in with a binary `COPY` straight into `readings`, sorted by key (sorted input
//! measured twice as fast as unsorted with the key in place). If any row already exists, which
//! happens only when a batch is replayed after a crash, the COPY fails on the key; the batch
//! then rolls back to a savepoint and takes the idempotent path: COPY into a temporary staging
//! table, then `INSERT … SELECT … ON CONFLICT DO NOTHING`. Anomalies and dead letters are few;
//! they go in with `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING`, keyed by their
//! deterministic ids.
//!
//! Connection failures are retried forever with exponential backoff and jitter (a batch is
//! never dropped); a run of failures opens the circuit, which is logged and visible through
//! [`PgWriter::circuit`]. SQL errors that a retry cannot fix (a missing table: migrations not
//! applied) are returned.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::pin_mut;
use millstream_events::{Anomaly, DeadLetter, DriftEvent, MinuteRow, ModelVersionEvent, ReadingRow};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::connect::ConnectOptions;
use super::migrate::redact_url;

/// Rows waiting for one transaction.
#[derive(Debug, Default)]
pub struct PgBatch {
    pub readings: Vec<ReadingRow>,
    pub anomalies: Vec<Anomaly>,
    pub dead_letters: Vec<DeadLetter>,
    /// New values of `readings_1m` rows, oldest first (later ones win).
    pub minutes: Vec<MinuteRow>,
    pub drift: Vec<DriftEvent>,
    pub model_versions: Vec<ModelVersionEvent>,
    /// The worker's checkpoint, committed with these rows (see [`CheckpointCommit`]).
    pub checkpoint: Option<CheckpointCommit>,
}

/// A worker's checkpoint: the state parts its components registered since its last one, and
/// the boundary up to which every boundary is now complete for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointCommit {
    pub generation: i64,
    pub worker: usize,
    /// Workers in the cluster: a generation is restorable once this many have a row.
    pub workers: usize,
    pub covered_to: u64,
    pub parts: Vec<millstream_events::checkpoint::Part>,
}

impl CheckpointCommit {
    /// Folds a later checkpoint of the same worker into this one (both go in one transaction).
    pub fn absorb(&mut self, later: CheckpointCommit) {
        self.covered_to = self.covered_to.max(later.covered_to);
        self.parts.extend(later.parts);
    }
}

impl PgBatch {
    pub fn rows(&self) -> usize {
        self.readings.len()
            + self.anomalies.len()
            + self.dead_letters.len()
            + self.minutes.len()
            + self.drift.len()
            + self.model_versions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows() == 0 && self.checkpoint.is_none()
    }

    pub fn clear(&mut self) {
        self.readings.clear();
        self.anomalies.clear();
        self.dead_letters.clear();
        self.minutes.clear();
        self.drift.clear();
        self.model_versions.clear();
        self.checkpoint = None;
    }
}

/// What a committed batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteReport {
    pub rows: usize,
    /// The batch met existing rows and took the idempotent staging path.
    pub replayed: bool,
    /// Attempts before it committed (1 when nothing failed).
    pub attempts: u32,
}

/// The circuit breaker's state, for logs and health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    /// This many consecutive failures; writes keep retrying with backoff.
    Open {
        failures: u32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PgSinkError {
    #[error("postgres sink {url}: {message}")]
    Fatal { url: String, message: String },
}

/// Retry pacing.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Consecutive failures that open the circuit.
    pub open_after: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(5), open_after: 3 }
    }
}

/// Told when the circuit opens (with the last error) and when it closes again.
pub type CircuitObserver = Box<dyn FnMut(Circuit, &str) + Send>;

pub struct PgWriter {
    observer: Option<CircuitObserver>,
    runtime: tokio::runtime::Runtime,
    options: ConnectOptions,
    shown_url: String,
    client: Option<Client>,
    backoff: Backoff,
    failures: u32,
    jitter_state: u64,
}

impl PgWriter {
    /// Prepares a writer for `url`; connects lazily. A password missing from the URL is taken
    /// from `PGPASSWORD`; the URL shown in logs and errors never carries one.
    /// `password` is used when the URL has none (before `PGPASSWORD`).
    pub fn new(url: &str, password: Option<&str>, backoff: Backoff) -> Result<Self, PgSinkError> {
        let options = ConnectOptions::from_url_with_password(url, password)
            .map_err(|e| PgSinkError::Fatal { url: redact_url(url), message: e.to_string() })?;
        let shown_url = options.shown_url().to_owned();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PgSinkError::Fatal { url: shown_url.clone(), message: e.to_string() })?;
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
        Ok(PgWriter {
            observer: None,
            runtime,
            options,
            shown_url,
            client: None,
            backoff,
            failures: 0,
            jitter_state: seed,
        })
    }

    /// Calls `observer` whenever the circuit opens or closes (for health reporting).
    pub fn observe_circuit(&mut self, observer: CircuitObserver) {
        self.observer = Some(observer);
    }

    pub fn circuit(&self) -> Circuit {
        if self.failures >= self.backoff.open_after {
            Circuit::Open { failures: self.failures }
        } else {
            Circuit::Closed
        }
    }

    /// Commits `batch` in one transaction, retrying connection failures until it succeeds.
    pub fn write(&mut self, batch: &mut PgBatch) -> Result<WriteReport, PgSinkError> {
        if batch.is_empty() {
            return Ok(WriteReport::default());
        }
        batch.readings.sort_unstable_by(|a, b| {
            (a.sensor_id.as_str(), a.ts, a.value.to_bits()).cmp(&(
                b.sensor_id.as_str(),
                b.ts,
                b.value.to_bits(),
            ))
        });
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = self.runtime.block_on(attempt(&self.options, &mut self.client, batch));
            match outcome {
                Ok(replayed) => {
                    if self.failures >= self.backoff.open_after {
                        tracing::warn!(url = %self.shown_url, "postgres sink circuit closed: writes succeed again");
                        if let Some(observer) = self.observer.as_mut() {
                            observer(Circuit::Closed, "");
                        }
                    }
                    self.failures = 0;
                    return Ok(WriteReport { rows: batch.rows(), replayed, attempts });
                }
                Err(error) if retryable(&error) => {
                    self.client = None;
                    self.failures += 1;
                    let delay = self.next_delay();
                    if self.failures == self.backoff.open_after {
                        tracing::error!(url = %self.shown_url, failures = self.failures, %error,
                            "postgres sink circuit open: retrying with backoff, nothing is dropped");
                        let why =
                            format!("circuit open after {} failures: {}", self.failures, describe(&error));
                        let circuit = self.circuit();
                        if let Some(observer) = self.observer.as_mut() {
                            observer(circuit, &why);
                        }
                    } else {
                        tracing::warn!(url = %self.shown_url, failures = self.failures, %error,
                            delay_ms = delay.as_millis() as u64, "postgres write failed; retrying");
                    }
                    std::thread::sleep(delay);
                }
                Err(error) => {
                    return Err(PgSinkError::Fatal { url: self.shown_url.clone(), message: describe(&error) })
                }
            }
        }
    }

    /// Exponential backoff with full jitter.
    fn next_delay(&mut self) -> Duration {
        let exp = self.backoff.initial.saturating_mul(1 << self.failures.min(16)).min(self.backoff.max);
        self.jitter_state ^= self.jitter_state << 13;
        self.jitter_state ^= self.jitter_state >> 7;
        self.jitter_state ^= self.jitter_state << 17;
        let fraction = (self.jitter_state >> 11) as f64 / (1u64 << 53) as f64;
        exp.mul_f64(0.5 + 0.5 * fraction)
    }
}

/// One try: connect if needed, then the whole batch in one transaction. Returns whether the
/// idempotent (replay) path was taken.
async fn attempt(
    options: &ConnectOptions,
    client: &mut Option<Client>,
    batch: &PgBatch,
) -> Result<bool, tokio_postgres::Error> {
    if client.as_ref().is_none_or(Client::is_closed) {
        *client = Some(options.connect().await?);
    }
    let client = client.as_mut().expect("connected above");
    let transaction = client.transaction().await?;
    let mut replayed = false;
    if !batch.readings.is_empty() {
        transaction.batch_execute("SAVEPOINT fast_copy").await?;
        match copy_readings(&transaction, "readings", &batch.readings).await {
            Ok(()) => transaction.batch_execute("RELEASE SAVEPOINT fast_copy").await?,
            Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                replayed = true;
                transaction.batch_execute("ROLLBACK TO SAVEPOINT fast_copy").await?;
                transaction
                    .batch_execute(
                        "CREATE TEMP TABLE IF NOT EXISTS millstream_stage_readings \
                         (sensor_id text, ts timestamptz, value double precision, late boolean, quality smallint) \
                         ON COMMIT DELETE ROWS",
                    )
                    .await?;
                copy_readings(&transaction, "millstream_stage_readings", &batch.readings).await?;
                transaction
                    .batch_execute(
                        "INSERT INTO readings (sensor_id, ts, value, late, quality) \
                         SELECT sensor_id, ts, value, late, quality FROM millstream_stage_readings \
                         ON CONFLICT DO NOTHING",
                    )
                    .await?;
            }
            Err(error) => return Err(error),
        }
    }
    if !batch.readings.is_empty() {
        register_sensors(&transaction, &batch.readings).await?;
    }
    if !batch.anomalies.is_empty() {
        let a = &batch.anomalies;
        let ids: Vec<&str> = a.iter().map(|x| x.event_id.as_str()).collect();
        let sensors: Vec<&str> = a.iter().map(|x| x.sensor_id.as_str()).collect();
        let assets: Vec<&str> = a.iter().map(|x| x.asset_id.as_str()).collect();
        let ts: Vec<SystemTime> = a.iter().map(|x| system_time(x.ts)).collect();
        let values: Vec<f64> = a.iter().map(|x| x.value).collect();
        let scores: Vec<f64> = a.iter().map(|x| x.score).collect();
        let severities: Vec<&str> = a.iter().map(|x| x.severity.as_str()).collect();
        let detectors: Vec<&str> = a.iter().map(|x| x.detector.as_str()).collect();
        let versions: Vec<Option<&str>> = a.iter().map(|x| x.model_version.as_deref()).collect();
        let explanations: Vec<Option<&str>> = a.iter().map(|x| x.explanation.as_deref()).collect();
        transaction
            .execute(
                "INSERT INTO anomalies (event_id, sensor_id, asset_id, ts, value, score, severity, detector, \
                 model_version, explanation) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::float8[], \
                 $6::float8[], $7::text[], $8::text[], $9::text[], $10::text[]) \
                 ON CONFLICT (event_id) DO NOTHING",
                &[
                    &ids,
                    &sensors,
                    &assets,
                    &ts,
                    &values,
                    &scores,
                    &severities,
                    &detectors,
                    &versions,
                    &explanations,
                ],
            )
            .await?;
    }
    if !batch.dead_letters.is_empty() {
        let d = &batch.dead_letters;
        let ids: Vec<String> = d.iter().map(DeadLetter::id).collect();
        let reasons: Vec<&str> = d.iter().map(|x| x.reason.as_str()).collect();
        let details: Vec<&str> = d.iter().map(|x| x.detail.as_str()).collect();
        let raws: Vec<&[u8]> = d.iter().map(|x| x.raw.as_bytes()).collect();
        let sources: Vec<String> =
            d.iter().map(|x| serde_json::to_string(&x.source).expect("a location serializes")).collect();
        transaction
            .execute(
                "INSERT INTO dead_letters (dead_letter_id, reason, detail, raw, source) \
                 SELECT id, reason, detail, raw, source::jsonb \
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[]) \
                 AS t(id, reason, detail, raw, source) \
                 ON CONFLICT (dead_letter_id) DO NOTHING",
                &[&ids, &reasons, &details, &raws, &sources],
            )
            .await?;
    }
    // Drift events and model versions are rare: one statement each.
    for d in &batch.drift {
        transaction
            .execute(
                "INSERT INTO drift_events (event_id, asset_id, sensor_id, feature, statistic, value, threshold, \
                 window_start, window_end, count, model_version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (event_id) DO NOTHING",
                &[
                    &d.event_id,
                    &d.asset_id.as_str(),
                    &d.sensor_id.as_deref(),
                    &d.feature,
                    &d.statistic.as_str(),
                    &d.value,
                    &d.threshold,
                    &system_time(d.window_start),
                    &system_time(d.window_end),
                    &(d.count as i64),
                    &d.model_version,
                ],
            )
            .await?;
    }
    for m in &batch.model_versions {
        let status = m.status.as_str();
        transaction
            .execute(
                "INSERT INTO model_versions (model, version, parent_version, status, reason, effective_from, \
                 training_rows, holdback_rows, holdback_anomaly_rate, parent_holdback_anomaly_rate, silhouette, \
                 published) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
                &[
                    &m.model,
                    &(m.version as i64),
                    &m.parent_version.map(|v| v as i64),
                    &status,
                    &m.reason,
                    &system_time(m.effective_from),
                    &(m.training_rows as i64),
                    &(m.holdback_rows as i64),
                    &m.holdback_anomaly_rate,
                    &m.parent_holdback_anomaly_rate,
                    &m.silhouette,
                    &m.published,
                ],
            )
            .await?;
    }
    if !batch.minutes.is_empty() {
        // One row per key, the newest value: the batch holds changes in time order.
        let mut latest: std::collections::BTreeMap<(&str, u64), &MinuteRow> =
            std::collections::BTreeMap::new();
        for m in &batch.minutes {
            latest.insert((m.sensor_id.as_str(), m.minute), m);
        }
        let rows: Vec<&MinuteRow> = latest.into_values().collect();
        let sensors: Vec<&str> = rows.iter().map(|m| m.sensor_id.as_str()).collect();
        let minutes: Vec<SystemTime> = rows.iter().map(|m| system_time(m.minute)).collect();
        let counts: Vec<i64> = rows.iter().map(|m| m.count).collect();
        let means: Vec<f64> = rows.iter().map(|m| m.mean).collect();
        let mins: Vec<f64> = rows.iter().map(|m| m.min).collect();
        let maxs: Vec<f64> = rows.iter().map(|m| m.max).collect();
        let stddevs: Vec<f64> = rows.iter().map(|m| m.stddev).collect();
        transaction
            .execute(
                "INSERT INTO readings_1m (sensor_id, minute, count, mean, min, max, stddev) \
                 SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::int8[], $4::float8[], $5::float8[], \
                 $6::float8[], $7::float8[]) \
                 ON CONFLICT (sensor_id, minute) DO UPDATE SET count = EXCLUDED.count, mean = EXCLUDED.mean, \
                 min = EXCLUDED.min, max = EXCLUDED.max, stddev = EXCLUDED.stddev",
                &[&sensors, &minutes, &counts, &means, &mins, &maxs, &stddevs],
            )
            .await?;
    }
    if let Some(checkpoint) = &batch.checkpoint {
        super::checkpoint::commit(&transaction, checkpoint).await?;
    }
    transaction.commit().await?;
    Ok(replayed)
}

/// Keeps the `sensors` registry current: every sensor seen, its asset, unit and kind (the last
/// segment of its id). Rows are rewritten only when something changed. Physical ranges are
/// configuration, not data, and stay as they are.
async fn register_sensors(
    transaction: &tokio_postgres::Transaction<'_>,
    readings: &[ReadingRow],
) -> Result<(), tokio_postgres::Error> {
    // `readings` is sorted by sensor: the first row of each run describes the sensor.
    let mut ids: Vec<&str> = Vec::new();
    let mut assets: Vec<&str> = Vec::new();
    let mut kinds: Vec<&str> = Vec::new();
    let mut units: Vec<Option<&str>> = Vec::new();
    for r in readings {
        if ids.last() != Some(&r.sensor_id.as_str()) {
            ids.push(r.sensor_id.as_str());
            assets.push(r.asset_id.as_str());
            kinds.push(r.sensor_id.rsplit('/').next().unwrap_or(""));
            units.push(r.unit.as_deref());
        }
    }
    transaction
        .execute(
            "INSERT INTO sensors (sensor_id, asset_id, kind, unit) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
             ON CONFLICT (sensor_id) DO UPDATE SET asset_id = EXCLUDED.asset_id, kind = EXCLUDED.kind, \
             unit = COALESCE(EXCLUDED.unit, sensors.unit), updated_at = now() \
             WHERE sensors.asset_id IS DISTINCT FROM EXCLUDED.asset_id \
                OR sensors.kind IS DISTINCT FROM EXCLUDED.kind \
                OR (EXCLUDED.unit IS NOT NULL AND sensors.unit IS DISTINCT FROM EXCLUDED.unit)",
            &[&ids, &assets, &kinds, &units],
        )
        .await?;
    Ok(())
}

async fn copy_readings(
    transaction: &tokio_postgres::Transaction<'_>,
    table: &str,
    rows: &[ReadingRow],
) -> Result<(), tokio_postgres::Error> {
    let sink = transaction.copy_in(&copy_statement(table)).await?;
    write_copy_rows(sink, rows).await
}

/// The binary `COPY` statement for reading rows into `table` (which has `readings`' columns).
pub fn copy_statement(table: &str) -> String {
    format!("COPY {table} (sensor_id, ts, value, late, quality) FROM STDIN (FORMAT binary)")
}

/// Streams `rows` into an open binary COPY of [`copy_statement`] and finishes it.
pub async fn write_copy_rows(
    sink: tokio_postgres::CopyInSink<bytes::Bytes>,
    rows: &[ReadingRow],
) -> Result<(), tokio_postgres::Error> {
    let writer =
        BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TIMESTAMPTZ, Type::FLOAT8, Type::BOOL, Type::INT2]);
    pin_mut!(writer);
    for row in rows {
        let ts = system_time(row.ts);
        let quality: i16 = i16::from(row.late);
        let values: [&(dyn ToSql + Sync); 5] =
            [&row.sensor_id.as_str(), &ts, &row.value, &row.late, &quality];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    Ok(())
}

fn system_time(ts: millstream_events::EventTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ts)
}

/// Connection-level failures (the server went away, is starting or shutting down, the
/// network broke) and transaction conflicts are worth retrying; other SQL errors are not.
fn retryable(error: &tokio_postgres::Error) -> bool {
    if is_tls_configuration_error(error) {
        return false;
    }
    match error.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("57P") // admin/crash shutdown, cannot connect now
                || c == "40001" // serialization failure
                || c == "40P01" // deadlock
                || c == "53300" // too many connections
        }
    }
}

/// A certificate that does not verify, or a server without TLS when TLS is required: waiting
/// will not fix either.
fn is_tls_configuration_error(error: &tokio_postgres::Error) -> bool {
    let mut chain = Vec::new();
    let mut current: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = current {
        chain.push(e.to_string().to_ascii_lowercase());
        current = e.source();
    }
    let text = chain.join(": ");
    text.contains("certificate") || text.contains("server does not support tls")
}

fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) if db.code() == &SqlState::UNDEFINED_TABLE => {
            format!("{} (run `millstream migrate --database-url …` or `run --migrate` first)", db.message())
        }
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(e) = source {
                text.push_str(": ");
                text.push_str(&e.to_string());
                source = e.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let err = match PgWriter::new("postgres://u:secret@h:notaport/db", None, Backoff::default()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a bad port is refused"),
        };
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut w = PgWriter::new("postgres://u@localhost/db", None, Backoff::default()).unwrap();
        let mut last = Duration::ZERO;
        for failures in 1..=10 {
            w.failures = failures;
            let d = w.next_delay();
            assert!(d <= Backoff::default().max, "{d:?}");
            assert!(d >= Backoff::default().initial.mul_f64(0.5));
            if failures <= 4 {
                assert!(d * 3 >= last, "roughly growing: {d:?} after {last:?}");
            }
            last = d;
        }
        w.failures = 3;
        assert_eq!(w.circuit(), Circuit::Open { failures: 3 });
    }
}
