//! Checkpoints in PostgreSQL: a worker's state parts and its coverage, written in the
//! transaction of its rows ([`commit`]); and, when a run starts, the newest checkpoint that every
//! worker of its generation completed ([`load_blocking`]).

use std::collections::HashMap;

use millstream_events::checkpoint::Restored;
use tokio_postgres::Transaction;

use super::connect::ConnectOptions;
use super::writer::CheckpointCommit;

/// Writes `checkpoint` in `transaction`, then drops what no restore can need any more: this
/// worker's parts that end before its generation's restorable boundary, and, once its
/// generation is restorable, every older generation.
pub async fn commit(
    transaction: &Transaction<'_>,
    checkpoint: &CheckpointCommit,
) -> Result<(), tokio_postgres::Error> {
    let CheckpointCommit { generation, worker, workers, covered_to, parts } = checkpoint;
    let (worker, workers, covered_to) = (*worker as i32, *workers as i32, *covered_to as i64);
    if !parts.is_empty() {
        let components: Vec<&str> = parts.iter().map(|p| p.component).collect();
        let froms: Vec<i64> = parts.iter().map(|p| p.from as i64).collect();
        let tos: Vec<i64> = parts.iter().map(|p| p.to as i64).collect();
        let states: Vec<&[u8]> = parts.iter().map(|p| p.state.as_slice()).collect();
        transaction
            .execute(
                "INSERT INTO checkpoint_parts (generation, worker, component, from_boundary, to_boundary, state) \
                 SELECT $1, $2, * FROM UNNEST($3::text[], $4::int8[], $5::int8[], $6::bytea[]) \
                 ON CONFLICT (generation, worker, component, from_boundary) \
                 DO UPDATE SET to_boundary = EXCLUDED.to_boundary, state = EXCLUDED.state",
                &[generation, &worker, &components, &froms, &tos, &states],
            )
            .await?;
    }
    transaction
        .execute(
            "INSERT INTO checkpoint_workers (generation, worker, workers, covered_to) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (generation, worker) DO UPDATE \
             SET covered_to = GREATEST(checkpoint_workers.covered_to, EXCLUDED.covered_to), updated_at = now()",
            &[generation, &worker, &workers, &covered_to],
        )
        .await?;
    // The generation's restorable boundary, once every worker has a row.
    let row = transaction
        .query_one(
            "SELECT count(*), min(covered_to) FROM checkpoint_workers WHERE generation = $1",
            &[generation],
        )
        .await?;
    let (count, restorable): (i64, Option<i64>) = (row.get(0), row.get(1));
    if count == workers as i64 {
        let restorable = restorable.expect("rows exist");
        transaction
            .execute(
                "DELETE FROM checkpoint_parts WHERE generation = $1 AND worker = $2 AND to_boundary < $3",
                &[generation, &worker, &restorable],
            )
            .await?;
        transaction.execute("DELETE FROM checkpoint_parts WHERE generation < $1", &[generation]).await?;
        transaction.execute("DELETE FROM checkpoint_workers WHERE generation < $1", &[generation]).await?;
    }
    Ok(())
}

/// What a starting run finds: the generation to write under, and the checkpoint to restore.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub generation: i64,
    pub restored: Option<Restored>,
}

/// Reads the newest restorable checkpoint: the newest generation whose every worker has a
/// row, at the smallest boundary they all covered. Runs before the cluster starts, so every
/// process of it reads the same thing.
pub fn load_blocking(url: &str, password: Option<&str>) -> Result<Found, String> {
    let options = ConnectOptions::from_url_with_password(url, password).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async {
        let shown = options.shown_url().to_owned();
        let client =
            options.connect().await.map_err(|e| format!("postgres {shown}: cannot read checkpoints: {e}"))?;
        let rows = client
            .query(
                "SELECT generation, max(workers), count(*), min(covered_to) FROM checkpoint_workers \
                 GROUP BY generation ORDER BY generation DESC",
                &[],
            )
            .await
            .map_err(|e| {
                format!(
                    "postgres {shown}: cannot read checkpoints ({e}); apply the migrations with \
                     `millstream migrate --database-url …` or `run --migrate`"
                )
            })?;
        let generation = rows.first().map_or(1, |r| r.get::<_, i64>(0) + 1);
        let complete = rows.iter().find(|r| r.get::<_, i64>(2) == r.get::<_, i32>(1) as i64);
        let Some(row) = complete else { return Ok(Found { generation, restored: None }) };
        let (old, boundary): (i64, i64) = (row.get(0), row.get(3));
        let parts = client
            .query(
                "SELECT component, state FROM checkpoint_parts \
                 WHERE generation = $1 AND from_boundary <= $2 AND to_boundary >= $2 ORDER BY worker, component",
                &[&old, &boundary],
            )
            .await
            .map_err(|e| format!("postgres {shown}: cannot read checkpoint parts: {e}"))?;
        let mut by_component: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for part in parts {
            by_component.entry(part.get(0)).or_default().push(part.get(1));
        }
        Ok(Found {
            generation,
            restored: Some(Restored { boundary: boundary as u64, generation: old, parts: by_component }),
        })
    })
}
