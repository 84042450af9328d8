//! `millstream bench-postgres`: the PostgreSQL sink's write rate against a raw binary COPY of
//! the same rows into an identical table with the same key, in the same run.
//!
//! Both sides get the same rows (simulated readings) in the same batch sizes. The raw side is
//! the ceiling: one `COPY … FROM STDIN (FORMAT binary)` per batch straight into a keyed table,
//! nothing else. The sink side is [`PgWriter::write`]: sort, COPY with the idempotent fallback,
//! one transaction per batch. A third pass replays the same rows through the sink (every row
//! already present) to time the idempotent path.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use millstream_events::ReadingRow;
use millstream_sinks::postgres::writer::{copy_statement, write_copy_rows, Backoff, PgBatch, PgWriter};

#[derive(Args, Debug, Clone)]
pub struct BenchPostgresArgs {
    /// A database with millstream's migrations applied; its `readings` table is emptied.
    #[arg(long)]
    pub database_url: String,
    /// Rows to write.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Rows per batch (one transaction each).
    #[arg(long, default_value_t = 50_000)]
    pub batch_rows: usize,
    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

pub fn bench_postgres(args: BenchPostgresArgs) -> anyhow::Result<()> {
    let BenchPostgresArgs { database_url, rows, batch_rows, repeat } = args;
    let readings = simulated_rows(rows);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (client, connection) = runtime
        .block_on(tokio_postgres::connect(&database_url, tokio_postgres::NoTls))
        .context("cannot connect")?;
    runtime.spawn(connection);
    let sql =
        |statement: &str| runtime.block_on(client.batch_execute(statement)).context(statement.to_owned());
    sql("DROP TABLE IF EXISTS bench_raw_readings; \
         CREATE TABLE bench_raw_readings (LIKE readings INCLUDING ALL)")?;
    let mut writer = PgWriter::new(&database_url, None, Backoff::default())?;
    let (mut raw, mut sink, mut replay) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..repeat.max(1) {
        sql("TRUNCATE bench_raw_readings; TRUNCATE readings")?;
        let started = Instant::now();
        for chunk in readings.chunks(batch_rows) {
            runtime.block_on(raw_copy(&client, chunk))?;
        }
        raw.push(started.elapsed());
        let mut sink_pass = || -> anyhow::Result<Duration> {
            let started = Instant::now();
            let mut batch = PgBatch::default();
            for chunk in readings.chunks(batch_rows) {
                batch.readings.clear();
                batch.readings.extend_from_slice(chunk);
                writer.write(&mut batch)?;
            }
            Ok(started.elapsed())
        };
        sink.push(sink_pass()?);
        replay.push(sink_pass()?);
        eprintln!(
            "round {}: raw COPY {:.2} s, sink {:.2} s, sink replay {:.2} s",
            round + 1,
            raw[round].as_secs_f64(),
            sink[round].as_secs_f64(),
            replay[round].as_secs_f64()
        );
    }
    sql("DROP TABLE bench_raw_readings")?;
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (raw, sink, replay) = (median(&mut raw), median(&mut sink), median(&mut replay));
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!("{rows} rows in batches of {batch_rows}, medians of {repeat}:");
    println!("  raw binary COPY (keyed table)   {:>10.0} rows/s", rate(raw));
    println!(
        "  sink (fresh rows)               {:>10.0} rows/s   {:.2} × raw (target ≥ 0.80)",
        rate(sink),
        raw.as_secs_f64() / sink.as_secs_f64()
    );
    println!(
        "  sink replay (all rows present)  {:>10.0} rows/s   {:.2} × raw",
        rate(replay),
        raw.as_secs_f64() / replay.as_secs_f64()
    );
    Ok(())
}

/// The ceiling: rows as they come, one binary COPY per batch, no transaction work beyond it.
async fn raw_copy(client: &tokio_postgres::Client, rows: &[ReadingRow]) -> anyhow::Result<()> {
    let sink = client.copy_in(&copy_statement("bench_raw_readings")).await?;
    write_copy_rows(sink, rows).await?;
    Ok(())
}

/// The benchmark's rows: the same simulated plant as `millstream bench`.
fn simulated_rows(rows: usize) -> Vec<ReadingRow> {
    crate::bench::plant_readings(rows as u64)
        .map(|r| ReadingRow {
            sensor_id: r.sensor_id,
            asset_id: r.asset_id,
            unit: r.unit,
            ts: r.ts,
            value: r.value,
            score: 0.0,
            late: false,
            quality: 0,
        })
        .collect()
}
