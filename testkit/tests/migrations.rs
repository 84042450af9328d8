//! Schema migrations against a live throwaway PostgreSQL (the plain-PostgreSQL path: TimescaleDB
//! cannot be installed on these machines). Each test works in a database of its own on one shared
//! server.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use millstream_sinks::postgres::migrate::{migrate, migrate_blocking, MigrateError, MIGRATIONS};
use millstream_testkit::TestPostgres;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Runs `f` with a client connected to `url`.
fn with_client<T>(url: &str, f: impl AsyncFnOnce(&mut tokio_postgres::Client) -> T) -> T {
    runtime().block_on(async {
        let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        let connection = tokio::spawn(connection);
        let result = f(&mut client).await;
        drop(client);
        let _ = connection.await;
        result
    })
}

fn database(name: &str) -> (Arc<TestPostgres>, String) {
    let pg = TestPostgres::shared().expect("a PostgreSQL server for tests");
    let url = pg.create_database(name).unwrap();
    (pg, url)
}

fn all_ids() -> Vec<String> {
    MIGRATIONS.iter().map(|m| m.id()).collect()
}

#[test]
fn applies_on_an_empty_database_then_again_as_a_no_op() {
    let (_pg, url) = database("mig_apply");
    let first = migrate_blocking(&url).unwrap();
    assert_eq!(first.applied, all_ids());
    assert_eq!(first.applied[0], "0001_initial");
    assert_eq!(first.already, 0);

    let second = migrate_blocking(&url).unwrap();
    assert!(second.applied.is_empty(), "{second:?}");
    assert_eq!(second.already, MIGRATIONS.len());

    let recorded = with_client(&url, async |c| {
        c.query("SELECT version, name, checksum FROM schema_migrations ORDER BY version", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1), r.get::<_, String>(2)))
            .collect::<Vec<_>>()
    });
    let expected: Vec<_> = MIGRATIONS.iter().map(|m| (m.version, m.name.to_owned(), m.checksum())).collect();
    assert_eq!(recorded, expected);
}

#[test]
fn every_table_exists_with_its_primary_key_and_time_indexes() {
    let (_pg, url) = database("mig_tables");
    migrate_blocking(&url).unwrap();
    let (keys, indexes) = with_client(&url, async |c| {
        let keys = c
            .query(
                "SELECT t.relname::text, array_agg(a.attname::text ORDER BY k.ord)
                 FROM pg_constraint p
                 JOIN pg_class t ON t.oid = p.conrelid
                 CROSS JOIN LATERAL unnest(p.conkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
                 WHERE p.contype = 'p' AND t.relnamespace = 'public'::regnamespace
                 GROUP BY t.relname",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<String>>(1)))
            .collect::<BTreeMap<_, _>>();
        let indexes = c
            .query("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>();
        (keys, indexes)
    });
    let expected: BTreeMap<String, Vec<String>> = [
        ("anomalies", &["event_id"][..]),
        ("checkpoint_parts", &["generation", "worker", "component", "from_boundary"]),
        ("checkpoint_workers", &["generation", "worker"]),
        ("dead_letters", &["dead_letter_id"]),
        ("drift_events", &["event_id"]),
        ("model_versions", &["model", "version", "status"]),
        ("readings", &["sensor_id", "ts", "value"]),
        ("readings_1m", &["sensor_id", "minute"]),
        ("schema_migrations", &["version"]),
        ("sensors", &["sensor_id"]),
    ]
    .into_iter()
    .map(|(table, columns)| (table.to_owned(), columns.iter().map(|c| c.to_string()).collect()))
    .collect();
    assert_eq!(keys, expected);

    let has = |needle: &str| indexes.iter().any(|def| def.contains(needle));
    for needle in [
        "ON public.readings USING brin (ts)",
        "ON public.readings_1m USING brin (minute)",
        "ON public.anomalies USING btree (asset_id, ts)",
        "ON public.dead_letters USING btree (reason)",
    ] {
        assert!(has(needle), "no index {needle} in {indexes:#?}");
    }
}

#[test]
fn readings_keep_two_values_at_one_instant_and_refuse_exact_repeats() {
    let (_pg, url) = database("mig_readings_key");
    migrate_blocking(&url).unwrap();
    let inserted = with_client(&url, async |c| {
        let mut inserted = 0;
        for value in [1.0f64, 2.0, 1.0] {
            inserted += c
                .execute(
                    "INSERT INTO readings (sensor_id, ts, value) VALUES ('s', '2026-03-01T00:00:00Z', $1)
                     ON CONFLICT DO NOTHING",
                    &[&value],
                )
                .await
                .unwrap();
        }
        inserted
    });
    assert_eq!(inserted, 2);
}

#[test]
fn a_tampered_checksum_is_refused() {
    let (_pg, url) = database("mig_tampered");
    migrate_blocking(&url).unwrap();
    with_client(&url, async |c| c.execute("UPDATE schema_migrations SET checksum = 'x'", &[]).await.unwrap());
    let error = migrate_blocking(&url).unwrap_err();
    assert!(matches!(error, MigrateError::Changed { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "migration 0001_initial was changed after it was applied: checksum x in the database, {} in this \
             binary",
            MIGRATIONS[0].checksum()
        )
    );
}

#[test]
fn an_unknown_newer_version_is_refused() {
    let (_pg, url) = database("mig_newer");
    migrate_blocking(&url).unwrap();
    with_client(&url, async |c| {
        c.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'f')", &[])
            .await
            .unwrap()
    });
    let error = migrate_blocking(&url).unwrap_err();
    assert!(matches!(error, MigrateError::Unknown { version: 9999, .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "database has migration 9999 which this millstream does not know; upgrade millstream"
    );
}

#[test]
fn a_failed_migration_leaves_nothing_behind_and_releases_the_lock() {
    let (_pg, url) = database("mig_failed");
    // A table of the same name makes 0001 fail half-way; its transaction must roll back whole.
    with_client(&url, async |c| c.batch_execute("CREATE TABLE anomalies (x int)").await.unwrap());
    let error = migrate_blocking(&url).unwrap_err();
    assert!(matches!(error, MigrateError::Apply { .. }), "{error:?}");
    assert!(error.to_string().starts_with("migration 0001_initial failed: db error"), "{error}");
    let (sensors, recorded) = with_client(&url, async |c| {
        let sensors: bool =
            c.query_one("SELECT to_regclass('sensors') IS NOT NULL", &[]).await.unwrap().get(0);
        let recorded: i64 = c.query_one("SELECT count(*) FROM schema_migrations", &[]).await.unwrap().get(0);
        (sensors, recorded)
    });
    assert!(!sensors, "the failed migration's first tables were kept");
    assert_eq!(recorded, 0);
    // The lock was released: after fixing the cause, migrating works on another connection.
    with_client(&url, async |c| c.batch_execute("DROP TABLE anomalies").await.unwrap());
    assert_eq!(migrate_blocking(&url).unwrap().applied, all_ids());
}

#[test]
fn concurrent_migrations_both_succeed_and_apply_once() {
    let pg = TestPostgres::shared().unwrap();
    for round in 0..3 {
        let url = pg.create_database(&format!("mig_concurrent_{round}")).unwrap();
        let barrier = Barrier::new(2);
        let reports: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        runtime().block_on(async {
                            let (mut client, connection) =
                                tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
                            tokio::spawn(connection);
                            barrier.wait();
                            migrate(&mut client).await
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        let applied: Vec<&String> = reports.iter().flat_map(|r| &r.applied).collect();
        assert_eq!(applied, all_ids().iter().collect::<Vec<_>>(), "{reports:?}");
        assert_eq!(reports.iter().map(|r| r.already).sum::<usize>(), MIGRATIONS.len(), "{reports:?}");
        let recorded: i64 = with_client(&url, async |c| {
            c.query_one("SELECT count(*) FROM schema_migrations", &[]).await.unwrap().get(0)
        });
        assert_eq!(recorded, MIGRATIONS.len() as i64);
    }
}

#[test]
fn bad_urls_give_errors_without_the_password() {
    let pg = TestPostgres::shared().unwrap();
    // Refused connection: nothing listens on port 1.
    let error = migrate_blocking("postgres://millstream:s3cret@127.0.0.1:1/postgres").unwrap_err();
    assert!(matches!(error, MigrateError::Connect { .. }), "{error:?}");
    let shown = format!("{error} / {error:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("postgres://millstream:***@127.0.0.1:1/postgres"), "{shown}");

    // Not a url at all.
    let error = migrate_blocking("postgres://millstream:s3cret@127.0.0.1:port/postgres").unwrap_err();
    assert!(matches!(error, MigrateError::InvalidUrl { .. }), "{error:?}");
    assert!(!format!("{error} / {error:?}").contains("s3cret"), "{error}");

    // A live server that refuses the database.
    if !pg.is_external() {
        let admin = pg.url();
        let url = format!("{}/no_such_db", admin.rsplit_once('/').unwrap().0)
            .replace("postgres@", "postgres:s3cret@");
        let error = migrate_blocking(&url).unwrap_err();
        let shown = format!("{error} / {error:?}");
        assert!(shown.contains("no_such_db") && !shown.contains("s3cret"), "{shown}");
    }
}
