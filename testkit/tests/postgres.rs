//! The throwaway PostgreSQL harness itself: start, isolate, crash, restart, clean up.

use std::time::Instant;

use millstream_testkit::TestPostgres;

fn query_one_i64(url: &str, sql: &str) -> Result<i64, tokio_postgres::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let connection = tokio::spawn(connection);
        let value = client.query_one(sql, &[]).await?.get(0);
        drop(client);
        let _ = connection.await;
        Ok(value)
    })
}

fn execute(url: &str, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(sql).await.unwrap();
    })
}

#[test]
fn starts_isolates_and_cleans_up() {
    let started = Instant::now();
    let pg = TestPostgres::start().unwrap();
    eprintln!("throwaway PostgreSQL ready in {:?}: {pg:?}", started.elapsed());
    assert_eq!(query_one_i64(&pg.url(), "SELECT 1::int8").unwrap(), 1);

    let url = pg.create_database("harness_a").unwrap();
    assert!(url.contains("/harness_a"), "{url}");
    execute(&url, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)");
    assert_eq!(query_one_i64(&url, "SELECT count(*) FROM t").unwrap(), 2);
    // Creating it again gives a fresh, empty database.
    let url = pg.create_database("harness_a").unwrap();
    assert!(query_one_i64(&url, "SELECT count(*) FROM t").is_err());
    assert!(pg.create_database("bad name; DROP").is_err());

    if pg.is_external() {
        return;
    }
    let admin = pg.url();
    assert!(admin.starts_with("postgres://postgres@127.0.0.1:") && admin.ends_with("/postgres"), "{admin}");
    let debug = format!("{pg:?}");
    let dir = debug.rsplit(", ").next().unwrap().trim_end_matches(')').to_owned();
    assert!(std::path::Path::new(&dir).join("data").is_dir(), "{dir}");
    drop(pg);
    assert!(query_one_i64(&admin, "SELECT 1::int8").is_err(), "still running after drop");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
}

#[test]
fn survives_an_immediate_stop_and_restart_with_committed_data() {
    let pg = TestPostgres::start().unwrap();
    if pg.is_external() {
        return;
    }
    let url = pg.create_database("harness_crash").unwrap();
    execute(&url, "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)");

    pg.stop_immediate().unwrap();
    assert!(query_one_i64(&url, "SELECT 1::int8").is_err(), "still running after stop");
    let started = Instant::now();
    pg.restart().unwrap();
    eprintln!("restarted (crash recovery) in {:?}", started.elapsed());
    assert_eq!(query_one_i64(&url, "SELECT count(*) FROM t").unwrap(), 1000, "committed rows lost");
}

#[test]
fn shared_server_is_reused_while_held() {
    let a = TestPostgres::shared().unwrap();
    let b = TestPostgres::shared().unwrap();
    assert_eq!(a.url(), b.url());
}
