//! `millstream bench-postgres`: the PostgreSQL sink's write rate against a raw binary COPY of
//! the same rows into an identical table with the same key, in the same run.
//!
//! Both sides get the same rows (simulated readings) in the same batch sizes. The raw side is
//! the ceiling: one `COPY … FROM STDIN (FORMAT binary)` per batch straight into a keyed table,
//! nothing else. The sink side is [`PgWriter::write`]: sort, COPY with the idempotent fallback,
//! one transaction per batch. A third pass replays the same rows through the sink (every row
//! already present) to time the idempotent path.

use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use millstream_connectors::simulate::{SimPayload, Simulator, SimulatorConfig};
use millstream_events::ReadingRow;
use millstream_sinks::postgres::writer::{Backoff, PgBatch, PgWriter};

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
    use futures_util::pin_mut;
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::{ToSql, Type};
    let sink = client
        .copy_in("COPY bench_raw_readings (sensor_id, ts, value, late, quality) FROM STDIN (FORMAT binary)")
        .await?;
    let writer =
        BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TIMESTAMPTZ, Type::FLOAT8, Type::BOOL, Type::INT2]);
    pin_mut!(writer);
    for row in rows {
        let ts = UNIX_EPOCH + Duration::from_millis(row.ts);
        let quality: i16 = i16::from(row.late);
        let values: [&(dyn ToSql + Sync); 5] =
            [&row.sensor_id.as_str(), &ts, &row.value, &row.late, &quality];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Readings as a plant produces them: every sensor once a step, steps in time order.
fn simulated_rows(rows: usize) -> Vec<ReadingRow> {
    let assets = 40u32;
    let steps = (rows as u64).div_ceil(assets as u64 * 5);
    let sim = Simulator::new(SimulatorConfig {
        assets,
        steps,
        inject_faults: false,
        delivery_faults: false,
        ..Default::default()
    });
    let mut streams: Vec<_> = (0..assets).map(|a| sim.asset_stream(a)).collect();
    let mut out = Vec::with_capacity(rows);
    'steps: loop {
        for stream in streams.iter_mut() {
            for record in stream.by_ref().take(5) {
                if let SimPayload::Reading(r) = record.payload {
                    out.push(ReadingRow {
                        sensor_id: r.sensor_id,
                        asset_id: r.asset_id,
                        unit: r.unit,
                        ts: r.ts,
                        value: r.value,
                        score: 0.0,
                        late: false,
                    });
                    if out.len() == rows {
                        break 'steps;
                    }
                }
            }
        }
        if streams.iter().all(|s| s.len() == 0) {
            break;
        }
    }
    out
}
