//! Fault drills (issue 8), each a real run of the `millstream` binary on loopback, bounded in
//! time (well under a minute each), with a reference run without faults on the same input:
//!
//! 1. `postgres_restarted_mid_run`: PostgreSQL crashes (`pg_ctl stop -m immediate`) and is
//!    started again at once, then later is down for 6 s;
//! 2. `broker_restarted_mid_run`: the tansu broker (sqlite:// storage, which keeps its data) is
//!    killed and started again 4 s later, while the producer keeps producing;
//! 3. `s3_down_mid_run`: the model store (s3s-fs) is down for 8 s; the run keeps serving the
//!    model it has; once the store is back, a version uploaded then is picked up and switches at
//!    its effective time. (`model_reload.rs` already checks, with a JSONL sink, that scores
//!    during an outage are the current version's and that `/health/ready` reports the store;
//!    this drill adds the PostgreSQL tables and the version uploaded after the outage.)
//! 4. `slow_sink_memory_is_bounded`: a session holds `LOCK TABLE readings IN ACCESS EXCLUSIVE
//!    MODE` for 12 s while input keeps arriving; the RSS of the process (VmRSS) is sampled
//!    throughout and must stay bounded (no growth with the input held back), and everything
//!    lands once the lock is released.
//!
//! Every drill reads a Kafka topic on tansu and writes PostgreSQL and the Kafka sink (its own
//! notification and dead-letter topics). The input is produced during the run by
//! `millstream produce --rate`, and ends with one "closing" reading per sensor an hour of event
//! time after the rest, so that every partition's watermark passes all of the real input and
//! every result is flushed without relying on idleness (`idle_timeout_ms` is 10 minutes, so
//! no partition turns idle during an outage). The reference run reads the same topic with a
//! group of its own into a database of its own. At the end the tables (`readings`,
//! `readings_1m`, `anomalies`, `dead_letters`, `sensors`, without their wall-clock columns) must
//! be identical row by row, and the Kafka sink's topics must hold the same event ids (copies are
//! allowed: that sink is at-least-once).
//!
//! Each drill prints one line starting `DRILL` with its recovery times and peak RSS:
//!
//! ```sh
//! cargo test -p millstream --test drills -- --nocapture --test-threads 1
//! ```
//!
//! Recovery times, as measured (from the samples taken every 100 ms):
//! - **ready**: from the service being back (the restart command returned) to `/health/ready`
//!   answering 200 (the sink's circuit closed, the source connected, the store polled);
//! - **caught up**: from the service being back to every record that the topic held then being
//!   durable in every sink with its offset committed (`millstream_kafka_committed_offset` ≥ the
//!   high watermark seen then).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::drill::{compare_databases, mib, secs, DrillRun, Producer, Sample, Sampler};
use common::{psql, reading_line, run_ok, write_mixed_input, START_MS};
use millstream_testkit::{TestKafka, TestPostgres};
use serde_json::Value;

/// Partitions of the input topic.
const PARTITIONS: i32 = 4;
/// The input topic.
const TOPIC: &str = "readings";
/// How long any one wait may take before the drill fails.
const WAIT: Duration = Duration::from_secs(40);
/// The closing readings are this far (event time) after the last real reading.
const CLOSING_AFTER_S: u64 = 3600;

/// The services of one drill and its scratch directory.
struct Stack {
    pg: TestPostgres,
    kafka: TestKafka,
    dir: tempfile::TempDir,
}

impl Stack {
    /// PostgreSQL, and a broker with the input topic of `partitions` partitions.
    fn start(partitions: i32) -> Stack {
        let pg = TestPostgres::start().expect("a throwaway PostgreSQL");
        assert!(!pg.is_external(), "the drills stop and restart PostgreSQL: unset DATABASE_URL");
        let kafka = TestKafka::start().expect("a tansu broker starts");
        kafka.create_topic(TOPIC, partitions).unwrap();
        Stack { pg, kafka, dir: tempfile::tempdir().unwrap() }
    }

    /// A migrated database `name`.
    fn database(&self, name: &str) -> String {
        let url = self.pg.create_database(name).unwrap();
        run_ok(&["migrate", "--database-url", &url]);
        url
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `input` produced into the input topic at `rate` records/s, in the background.
    fn produce(&self, input: &Path, rate: u64) -> Producer {
        Producer::start(&self.kafka.bootstrap(), TOPIC, input, rate, PARTITIONS, self.path("produce.log"))
    }
}

/// The config of run `name`: its consumer group and sink topics, no idleness within a drill,
/// commits every 250 ms (so recovery is measured finely), and `extra`.
/// The drills run one at a time, also under a plain `cargo test` (which runs a binary's tests
/// on parallel threads): each starts a broker, a database and 2-worker runs, and measures how
/// long recovery takes, which two drills at once on two cores would distort.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn config(stack: &Stack, name: &str, extra: &str) -> PathBuf {
    let path = stack.path(&format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[kafka]\ngroup_id = \"{name}\"\nidle_timeout_ms = 600000\ncommit_interval_ms = 250\n\
             notification_topic = \"{name}.notifications\"\ndead_letter_topic = \"{name}.dead-letters\"\n\
             control_topic = \"{name}.control\"\n\
             [log]\nlevel = \"info\"\n{extra}"
        ),
    )
    .unwrap();
    path
}

/// `millstream run` of `name`: the input topic → `database` + the Kafka sink, 2 workers.
fn start_run(
    stack: &Stack,
    name: &str,
    database: &str,
    extra: &str,
    env: &[(&'static str, String)],
) -> DrillRun {
    let config = config(stack, name, extra);
    let mut command = common::millstream();
    for var in ["AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"] {
        command.env_remove(var);
    }
    command
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["run", "--source", &format!("{}/{TOPIC}", stack.kafka.url())])
        .args(["--sink", database, "--sink", &stack.kafka.url(), "--workers", "2"])
        .args(["--config", config.to_str().unwrap()]);
    DrillRun::start(command, stack.path(&format!("{name}.log")))
}

/// The mixed input of `common` (spikes, duplicates, late readings, invalid lines) for
/// `sensors` sensors over `steps` seconds, then a closing reading per sensor. Returns the file
/// and the event time by which every real result must be durable.
fn mixed_input(stack: &Stack, sensors: usize, steps: u64, seed: u64) -> (PathBuf, u64, usize) {
    let input = write_mixed_input(stack.dir.path(), sensors, steps, seed);
    let mut text = std::fs::read_to_string(&input.path).unwrap();
    let closing = START_MS + (steps + CLOSING_AFTER_S) * 1000;
    for s in 0..sensors {
        // The sensor names of `write_mixed_input`.
        let sensor = format!("line{}-pump-{:02}/{}", s / 10, s % 10, ["vib", "temp", "flow"][s % 3]);
        text.push_str(&reading_line(&sensor, closing, 10.0, false));
        text.push('\n');
    }
    std::fs::write(&input.path, &text).unwrap();
    let records = text.lines().filter(|l| !l.is_empty()).count();
    // Past the last reading, its minute and the detectors' silence (60 s).
    (input.path, START_MS + (steps + 300) * 1000, records)
}

/// Event ids in a Kafka sink topic: (distinct ids, copies beyond the first).
fn sink_topic_ids(kafka: &TestKafka, topic: &str) -> (BTreeSet<String>, usize) {
    let records = kafka.consume_all(topic).unwrap_or_default();
    let mut ids = BTreeSet::new();
    let mut copies = 0;
    for r in &records {
        let header = r
            .headers
            .iter()
            .find(|(k, _)| k == "event_id")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        let id = header.or_else(|| {
            serde_json::from_slice::<Value>(&r.value)
                .ok()
                .and_then(|v| v["event_id"].as_str().map(str::to_owned))
        });
        let id = id.unwrap_or_else(|| format!("{}:{}", r.partition, String::from_utf8_lossy(&r.value)));
        if !ids.insert(id) {
            copies += 1;
        }
    }
    (ids, copies)
}

/// What a drill found: lines for the report, and whether everything matched.
struct Verdict {
    lines: Vec<String>,
    identical: bool,
    sink_copies: usize,
}

/// Compares the drill's database and Kafka sink topics with the reference's.
fn verdict(stack: &Stack, drill: (&str, &str), reference: (&str, &str)) -> Verdict {
    let (mut lines, mut identical) = compare_databases(drill.1, reference.1);
    let mut sink_copies = 0;
    for kind in ["notifications", "dead-letters"] {
        let (got, copies) = sink_topic_ids(&stack.kafka, &format!("{}.{kind}", drill.0));
        let (want, _) = sink_topic_ids(&stack.kafka, &format!("{}.{kind}", reference.0));
        sink_copies += copies;
        if got == want {
            lines.push(format!(
                "kafka {kind}: {} event ids, identical ({copies} copies, at-least-once)",
                got.len()
            ));
        } else {
            identical = false;
            lines.push(format!(
                "kafka {kind}: DIFFERS: {} ids against {}; missing {:?}; extra {:?}",
                got.len(),
                want.len(),
                want.difference(&got).take(5).collect::<Vec<_>>(),
                got.difference(&want).take(5).collect::<Vec<_>>()
            ));
        }
    }
    Verdict { lines, identical, sink_copies }
}

/// The reference: the same topic, read by a group of its own into `database`, no faults.
fn reference_run(stack: &Stack, database: &str, durable_by: u64, extra: &str) -> Duration {
    let mut run = start_run(stack, "reference", database, extra, &[]);
    let took = run.wait_durable(durable_by, WAIT, "the reference run");
    assert!(!run.panicked(), "the reference run panicked:\n{}", run.log_tail(40));
    run.kill();
    took
}

/// Asserts the drill's outputs equal the reference's; prints what was compared.
fn assert_identical(name: &str, verdict: &Verdict) {
    for line in &verdict.lines {
        println!("{name}: {line}");
    }
    assert!(
        verdict.identical,
        "{name}: the outputs differ from the reference run:\n{}",
        verdict.lines.join("\n")
    );
}

/// Waits until PostgreSQL answers a query on `url` (after a restart).
fn postgres_answers(url: &str) -> bool {
    Command::new("psql")
        .args(["-X", "-At", url, "-c", "SELECT 1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The reasons of a 503 from `/health/ready` seen in `samples` from `from` on.
fn not_ready_reasons(samples: &[Sample], from: Duration) -> BTreeSet<String> {
    samples
        .iter()
        .filter(|s| s.at >= from)
        .filter_map(|s| s.ready.as_ref().filter(|(status, _)| *status == 503))
        .filter_map(|(_, body)| serde_json::from_str::<Value>(body).ok())
        .filter_map(|v| v["reasons"].as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()))
        .flatten()
        .collect()
}

/// A drill under way: the stack, a paced producer of the mixed input, and the drilled run
/// (with `extra` config and `env`), sampled, once it is ready and has written rows.
struct Drilling {
    stack: Stack,
    durable_by: u64,
    records: usize,
    rate: u64,
    drill_db: String,
    reference_db: String,
    producer: Producer,
    run: DrillRun,
    sampler: Sampler,
}

impl Drilling {
    fn start(steps: u64, seed: u64, rate: u64, extra: &str, env: &[(&'static str, String)]) -> Drilling {
        let stack = Stack::start(PARTITIONS);
        let (input, durable_by, records) = mixed_input(&stack, 24, steps, seed);
        let (drill_db, reference_db) = (stack.database("drill"), stack.database("reference"));
        let producer = stack.produce(&input, rate);
        let run = start_run(&stack, "drill", &drill_db, extra, env);
        let sampler = Sampler::start(&run, TOPIC, None);
        assert!(sampler.wait_for(WAIT, |s| s.ready() && s.postgres_records.unwrap_or(0.0) > 0.0).is_some());
        Drilling { stack, durable_by, records, rate, drill_db, reference_db, producer, run, sampler }
    }

    /// Waits for the producer and for the drilled run to make everything durable, stops it
    /// (asserting it did not panic), then runs the reference and compares the two.
    fn finish(mut self) -> Finished {
        let produced_in = self.producer.finish(WAIT);
        let drained = self.run.wait_durable(self.durable_by, WAIT, "the drill run");
        self.sampler.stop();
        assert!(!self.run.panicked(), "the drill run panicked:\n{}", self.run.log_tail(40));
        self.run.kill();
        let reference_took = reference_run(&self.stack, &self.reference_db, self.durable_by, "");
        let verdict = verdict(&self.stack, ("drill", &self.drill_db), ("reference", &self.reference_db));
        let Drilling { stack, records, rate, sampler, .. } = self;
        Finished { stack, sampler, records, rate, produced_in, drained, reference_took, verdict }
    }
}

/// A drill's outcome: how long each part took and what the comparison found.
struct Finished {
    stack: Stack,
    sampler: Sampler,
    records: usize,
    rate: u64,
    produced_in: Duration,
    drained: Duration,
    reference_took: Duration,
    verdict: Verdict,
}

/// Drill 1: PostgreSQL crashes and is back at once; later it is down for 6 s.
#[test]
fn postgres_restarted_mid_run() {
    let _serial = one_at_a_time();
    let d = Drilling::start(1000, 81, 1500, "", &[]);
    std::thread::sleep(Duration::from_secs(2));

    // A crash, and PostgreSQL started again at once (crash recovery).
    d.sampler.mark("crash");
    d.stack.pg.stop_immediate().unwrap();
    d.stack.pg.restart().unwrap();
    let back1 = d.sampler.mark("back after the crash");
    let crash_seen = d.sampler.wait_for(Duration::from_secs(3), |s| !s.ready()).is_some();
    let ready1 = d.sampler.wait_for(WAIT, Sample::ready).map(|_| ());
    assert!(ready1.is_some(), "not ready after the crash restart:\n{}", d.run.log_tail(30));
    std::thread::sleep(Duration::from_secs(2));

    // Down for 6 s, then started.
    let down = d.sampler.mark("stopped");
    d.stack.pg.stop_immediate().unwrap();
    let open =
        d.sampler.wait_for(Duration::from_secs(6), |s| s.ready.as_ref().is_some_and(|(st, _)| *st == 503));
    std::thread::sleep(Duration::from_secs(6).saturating_sub(d.sampler.mark("") - down));
    d.stack.pg.restart().unwrap();
    let back2 = d.sampler.mark("back after 6 s down");
    assert!(postgres_answers(&d.drill_db));
    assert!(
        d.sampler.wait_for(WAIT, Sample::ready).is_some(),
        "not ready after the outage:\n{}",
        d.run.log_tail(30)
    );

    let Finished { sampler, records, rate, produced_in, drained, reference_took, verdict, .. } = d.finish();
    let reasons = not_ready_reasons(&sampler.samples(), down);

    let peak = sampler.peak_rss_kib(Duration::ZERO, Duration::MAX);
    println!(
        "DRILL postgres-restart: crash+restart: not-ready {}, ready {} caught-up {}; down 6 s: 503 {} ({}), ready {} caught-up {}; \
         peak RSS {:.0} MiB; {records} records at {rate}/s in {:.1} s; drained {:.1} s after; reference {:.1} s; \
         kafka sink copies {}; identical {}",
        if crash_seen { "seen" } else { "not seen" },
        secs(sampler.ready_after(back1)),
        secs(sampler.caught_up_after(back1, PARTITIONS)),
        if open.is_some() { "seen" } else { "NOT seen" },
        reasons.into_iter().collect::<Vec<_>>().join(", "),
        secs(sampler.ready_after(back2)),
        secs(sampler.caught_up_after(back2, PARTITIONS)),
        mib(peak),
        produced_in.as_secs_f64(),
        drained.as_secs_f64(),
        reference_took.as_secs_f64(),
        verdict.sink_copies,
        verdict.identical,
    );
    assert!(open.is_some(), "/health/ready did not report the outage");
    assert_identical("postgres-restart", &verdict);
}

/// Drill 2: the broker is killed mid-run and started again 4 s later (its sqlite:// storage
/// keeps the topics, the records and the committed offsets); the producer keeps producing.
#[test]
fn broker_restarted_mid_run() {
    let _serial = one_at_a_time();
    let d = Drilling::start(1000, 82, 1500, "", &[]);
    std::thread::sleep(Duration::from_secs(4));

    let down = d.sampler.mark("broker killed");
    d.stack.kafka.stop();
    let noticed = d.sampler.wait_for(Duration::from_secs(8), |s| !s.ready());
    std::thread::sleep(Duration::from_secs(4).saturating_sub(d.sampler.mark("") - down));
    d.stack.kafka.restart().expect("the broker starts again");
    let back = d.sampler.mark("broker back");
    assert!(
        d.sampler.wait_for(WAIT, Sample::ready).is_some(),
        "not ready after the broker restart:\n{}",
        d.run.log_tail(30)
    );

    let Finished { stack, sampler, records, rate, produced_in, drained, reference_took, verdict } =
        d.finish();
    let reasons = not_ready_reasons(&sampler.samples(), down);
    // Every record produced is in the topic once (the producer is idempotent).
    let in_topic = stack.kafka.consume_all(TOPIC).unwrap().len();

    println!(
        "DRILL broker-restart: down 4 s: not-ready {} ({}), ready {} caught-up {}; peak RSS {:.0} MiB; \
         {records} records at {rate}/s in {:.1} s ({in_topic} in the topic); drained {:.1} s after; \
         reference {:.1} s; kafka sink copies {}; identical {}",
        if noticed.is_some() { "seen" } else { "NOT seen" },
        reasons.into_iter().collect::<Vec<_>>().join(", "),
        secs(sampler.ready_after(back)),
        secs(sampler.caught_up_after(back, PARTITIONS)),
        mib(sampler.peak_rss_kib(Duration::ZERO, Duration::MAX)),
        produced_in.as_secs_f64(),
        drained.as_secs_f64(),
        reference_took.as_secs_f64(),
        verdict.sink_copies,
        verdict.identical,
    );
    assert_eq!(in_topic, records, "the topic holds every record produced, once");
    assert_identical("broker-restart", &verdict);
}

/// The slow-sink drill's `max_in_flight_records` (per worker): small beside the input held back
/// during the lock (2000 records/s for 12 s), so that the drill shows where reading stops. The
/// default (500 000 per worker) is far more than a drill of a minute can hold back; the
/// report gives the memory cost per record held, to scale it.
const IN_FLIGHT_BUDGET: usize = 4000;

/// Drill 4: a session holds an ACCESS EXCLUSIVE lock on `readings` for 12 s while the input
/// keeps arriving; memory stays bounded and everything lands after.
///
/// How the bound comes about (as measured): the PostgreSQL writer blocks on the lock, its two
/// batches in flight fill, and the worker waits; its Kafka source then reads nothing more (the
/// records it read during the lock stay under `max_in_flight_records`). librdkafka still
/// prefetches into its queue, up to `queued.max.messages.kbytes` per partition; the drill sets
/// that to 256 KiB (the default is 4 MiB, per partition and consumer), so that its cap is
/// reached within the lock and the RSS levels off. While a worker waits, its source's metrics
/// (records read, consumer lag) are not updated: the lag it reports is that of the moment it
/// stopped.
#[test]
fn slow_sink_memory_is_bounded() {
    let _serial = one_at_a_time();
    const LOCK_S: u64 = 12;
    let budget = ("MILLSTREAM_KAFKA__MAX_IN_FLIGHT_RECORDS", IN_FLIGHT_BUDGET.to_string());
    let prefetch = "[kafka.options]\n\"queued.max.messages.kbytes\" = \"256\"\n";
    let d = Drilling::start(1500, 84, 2000, prefetch, &[budget]);
    std::thread::sleep(Duration::from_secs(3));

    let locker = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &d.drill_db, "-c"])
        .arg(format!(
            "BEGIN; LOCK TABLE readings IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({LOCK_S}); COMMIT;"
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let held = Instant::now();
    let granted = "SELECT count(*) FROM pg_locks WHERE relation = 'readings'::regclass \
                   AND mode = 'AccessExclusiveLock' AND granted";
    while psql(&d.drill_db, granted) != "1" {
        assert!(held.elapsed() < Duration::from_secs(5), "the lock was not granted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let locked = d.sampler.mark("lock granted");
    let out = locker.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let released = d.sampler.mark("lock released");

    let Finished { sampler, records, rate, produced_in, drained, reference_took, verdict, .. } = d.finish();

    let samples = sampler.samples();
    let during: Vec<&Sample> = samples.iter().filter(|s| (locked..released).contains(&s.at)).collect();
    let before = sampler.peak_rss_kib(Duration::ZERO, locked);
    let peak_during = sampler.peak_rss_kib(locked, released);
    let after = sampler.peak_rss_kib(released, Duration::MAX);
    // The second half of the lock: the input keeps arriving; memory must not follow it.
    let half = locked + (released - locked) / 2;
    let second_half: Vec<u64> = during.iter().filter(|s| s.at >= half).filter_map(|s| s.rss_kib).collect();
    let growth_second_half =
        second_half.last().zip(second_half.first()).map_or(0, |(l, f)| l.saturating_sub(*f));
    // Least-squares slope of RSS over the lock, MiB per second.
    let points: Vec<(f64, f64)> =
        during.iter().filter_map(|s| Some((s.at.as_secs_f64(), mib(s.rss_kib?)))).collect();
    let n = points.len().max(1) as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    // Only the samples whose `/metrics` answered (with every partition's lag).
    let answered: Vec<&&Sample> = during.iter().filter(|s| s.lag.len() == PARTITIONS as usize).collect();
    let (first, last) = (answered.first(), answered.last());
    let rows_at = |s: Option<&&&Sample>| s.and_then(|s| s.postgres_records).unwrap_or(0.0);
    let stalled_rows = rows_at(last) - rows_at(first);
    let lag_at_release: f64 = last.map_or(0.0, |s| s.lag.values().sum());
    let held_back = rate as f64 * (released - locked).as_secs_f64();
    let read_in = |s: Option<&&&Sample>| s.map_or(0.0, |s| s.read.values().sum::<f64>());
    let read_during = read_in(last) - read_in(first);
    let metrics_answered = format!("{} of {} samples", answered.len(), during.len());
    println!(
        "DRILL slow-sink: lock {:.1} s: RSS before {:.0} MiB, peak during {:.0} MiB (+{:.1}), second-half growth \
         {:.1} MiB, slope {slope:.2} MiB/s, peak after {:.0} MiB; input held back {held_back:.0} records, consumer lag at release \
         {lag_at_release:.0}, records read during the lock {read_during:.0} (budget {IN_FLIGHT_BUDGET}/worker), \
         postgres rows written during the lock {stalled_rows:.0} (/metrics answered in {metrics_answered}); caught up {} after release; \
         {records} records at {rate}/s in {:.1} s; drained {:.1} s after; reference {:.1} s; kafka sink copies {}; \
         identical {}",
        (released - locked).as_secs_f64(),
        mib(before),
        mib(peak_during),
        mib(peak_during.saturating_sub(before)),
        mib(growth_second_half),
        mib(after),
        secs(sampler.caught_up_after(released, PARTITIONS)),
        produced_in.as_secs_f64(),
        drained.as_secs_f64(),
        reference_took.as_secs_f64(),
        verdict.sink_copies,
        verdict.identical,
    );
    assert_identical("slow-sink", &verdict);
    assert!(
        stalled_rows < 1.0,
        "the lock did not hold the postgres sink back ({stalled_rows} rows written): the drill measured nothing"
    );
    assert!(
        read_during <= (2 * IN_FLIGHT_BUDGET) as f64,
        "the source read {read_during} records during the lock, over its budget of {IN_FLIGHT_BUDGET} per worker"
    );
    assert!(
        peak_during.saturating_sub(before) < 32 * 1024,
        "RSS grew {:.1} MiB during the lock",
        mib(peak_during.saturating_sub(before))
    );
    assert!(
        peak_during < 512 * 1024,
        "RSS during the lock: {:.0} MiB, over the 512 MiB bound",
        mib(peak_during)
    );
    assert!(
        growth_second_half < 8 * 1024,
        "RSS grew {:.1} MiB in the second half of the lock while {held_back:.0} records were held back",
        mib(growth_second_half)
    );
}

// ---------------------------------------------------------------------------------------------
// Drill 3: the model store.

mod s3_drill {
    use super::*;
    use common::models::{
        models_section, rfc3339, s3_env, samples, train, trained_version, write_samples, Pump,
    };
    use millstream_testkit::TestS3;

    const BUCKET: &str = "models";
    const MODEL: &str = "pump";
    /// Event seconds of the scenario, paced at `PACE` event seconds per second.
    const END_S: u64 = 900;
    const PACE: u64 = 30;
    /// v2's effective time: far enough ahead of the data when it is uploaded.
    const T2_S: u64 = 720;

    fn at(s: u64) -> u64 {
        START_MS + s * 1000
    }

    /// Trains on `history` into the drill's S3 prefix and copies the artifact into the
    /// reference's directory store (the same bytes); returns the version.
    fn train_version(
        env: &[(&'static str, String)],
        s3: &TestS3,
        history: &Path,
        k: u32,
        extra: &[&str],
        file_store: &Path,
    ) -> u64 {
        let input = format!("file:{}", history.display());
        let (k, endpoint) = (k.to_string(), s3.endpoint());
        let mut args = vec!["--input", &input, "--store", "s3://models/drill", "--name", MODEL, "--k", &k];
        args.extend(["--endpoint", &endpoint]);
        args.extend(extra);
        let version = trained_version(&train(env, &args)).expect("train says the version");
        let key = format!("drill/{MODEL}/v{version:010}.model");
        let target = file_store.join(MODEL).join(format!("v{version:010}.model"));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(s3.object_path(BUCKET, &key), &target).unwrap_or_else(|e| {
            panic!("{key} in the S3 server's root: {e}; keys: {:?}", s3.list_keys(BUCKET, ""))
        });
        version
    }

    /// Drill 3: the S3 model store is down for 8 s mid-run.
    #[test]
    fn s3_down_mid_run() {
        let _serial = one_at_a_time();
        let stack = Stack::start(1);
        let s3 = TestS3::start().expect("an s3s-fs server starts");
        s3.create_bucket(BUCKET).unwrap();
        let env = s3_env(&s3);
        let file_store = stack.path("file-store");

        // Two pumps; pump-1 has a fault before and after T2, so both versions flag something.
        let mut one = Pump::new("pump-1", 0.0, 61);
        one.fault = Some((400, 440));
        let mut one_late = one.clone();
        one_late.fault = Some((800, 840));
        let two = Pump::new("pump-2", 53.0, 62);
        let mut readings = samples(&[one, two.clone()], START_MS, 0, 600);
        readings.extend(samples(&[one_late, two], START_MS, 600, END_S));
        let input = stack.path("pumps.jsonl");
        write_samples(&input, &readings);
        let mut text = std::fs::read_to_string(&input).unwrap();
        let mut sensors: Vec<&str> = readings.iter().map(|r| r.sensor_id.as_str()).collect();
        sensors.sort();
        sensors.dedup();
        for sensor in &sensors {
            text.push_str(&reading_line(sensor, at(END_S + CLOSING_AFTER_S), 0.0, false));
            text.push('\n');
        }
        std::fs::write(&input, text).unwrap();
        let durable_by = at(END_S + 300);

        // History a day before: mode A. v1 with 3 clusters, v2 (after the outage) with 4.
        let history = stack.path("history.jsonl");
        write_samples(&history, &samples(&[Pump::new("pump-1", 11.0, 31)], START_MS - 86_400_000, 0, 300));
        assert_eq!(train_version(&env, &s3, &history, 3, &[], &file_store), 1);

        let (drill_db, reference_db) = (stack.database("drill"), stack.database("reference"));
        let rate = PACE * readings.len() as u64 / END_S;
        let mut producer = stack.produce(&input, rate);
        let s3_models = models_section("s3://models/drill", Some(&s3), MODEL);
        let file_models = models_section(&format!("file://{}", file_store.display()), None, MODEL);
        let mut run = start_run(&stack, "drill", &drill_db, &s3_models, &env);
        // The reference runs beside it, on the same paced input, with a directory store that
        // never fails and receives the same versions at the same moments.
        let mut reference = start_run(&stack, "reference", &reference_db, &file_models, &env);
        let mut sampler = Sampler::start(&run, TOPIC, Some(MODEL));
        let mut reference_sampler = Sampler::start(&reference, TOPIC, Some(MODEL));
        assert!(sampler.wait_for(WAIT, |s| s.ready() && s.model_version == Some(1.0)).is_some());
        std::thread::sleep(Duration::from_secs(4));

        let down = sampler.mark("s3 down");
        s3.stop();
        let reported = sampler.wait_for(Duration::from_secs(6), |s| !s.ready());
        std::thread::sleep(Duration::from_secs(8).saturating_sub(sampler.mark("") - down));
        s3.restart().unwrap();
        let back = sampler.mark("s3 back");
        assert!(
            sampler.wait_for(WAIT, Sample::ready).is_some(),
            "not ready after S3 is back:\n{}",
            run.log_tail(30)
        );
        let version_during: BTreeSet<String> = sampler
            .samples()
            .iter()
            .filter(|s| (down..back).contains(&s.at))
            .filter_map(|s| s.model_version.map(|v| v.to_string()))
            .collect();

        // A version uploaded after the store is back, effective from T2 (ahead of the data).
        let uploaded = sampler.mark("v2 uploaded");
        let effective = rfc3339(at(T2_S));
        assert_eq!(train_version(&env, &s3, &history, 4, &["--effective-from", &effective], &file_store), 2);
        let switched = sampler.wait_for(WAIT, |s| s.model_version == Some(2.0));
        assert!(switched.is_some(), "v2 was not picked up:\n{}", run.log_tail(30));
        assert!(reference_sampler.wait_for(WAIT, |s| s.model_version == Some(2.0)).is_some());
        let durable_at_switch = sampler.samples().last().and_then(|s| s.durable_event_time_s).unwrap_or(0.0);

        let produced_in = producer.finish(WAIT);
        let drained = run.wait_durable(durable_by, WAIT, "the drill run");
        reference.wait_durable(durable_by, WAIT, "the reference run");
        sampler.stop();
        reference_sampler.stop();
        let reasons = not_ready_reasons(&sampler.samples(), down);
        assert!(!run.panicked() && !reference.panicked(), "a run panicked:\n{}", run.log_tail(40));
        run.kill();
        reference.kill();
        let verdict = verdict(&stack, ("drill", &drill_db), ("reference", &reference_db));
        let by_version: BTreeMap<String, String> = psql(
            &drill_db,
            "SELECT coalesce(model_version, '-') || ' ' || count(*) || ' ' || min(ts) || ' ' || max(ts) \
             FROM anomalies WHERE detector <> 'robust_z' GROUP BY model_version",
        )
        .lines()
        .map(|l| (l.split(' ').next().unwrap().to_owned(), l.to_owned()))
        .collect();

        println!(
            "DRILL s3-outage: down 8 s: not-ready {} ({}), version in service while down {:?}, ready {} after it \
             is back; v2 uploaded after: picked up {} after the upload (durable event time then {:.0} s before \
             T2); peak RSS {:.0} MiB; {} records at {rate}/s in {:.1} s; drained {:.1} s after; kafka sink \
             copies {}; identical {}; model anomalies {:?}",
            if reported.is_some() { "seen" } else { "NOT seen" },
            reasons.into_iter().collect::<Vec<_>>().join(", "),
            version_during,
            secs(sampler.ready_after(back)),
            secs(sampler.first_after(uploaded, |s| s.model_version == Some(2.0))),
            at(T2_S) as f64 / 1000.0 - durable_at_switch,
            mib(sampler.peak_rss_kib(Duration::ZERO, Duration::MAX)),
            readings.len() + sensors.len(),
            produced_in.as_secs_f64(),
            drained.as_secs_f64(),
            verdict.sink_copies,
            verdict.identical,
            by_version.values().collect::<Vec<_>>(),
        );
        assert!(reported.is_some(), "/health/ready did not report the store's outage");
        assert!(version_during.iter().all(|v| v == "1"), "v1 stays in service while the store is down");
        assert!(
            durable_at_switch * 1000.0 < at(T2_S) as f64,
            "v2 was found only after the data passed T2: the drill cannot check the switch time"
        );
        assert_identical("s3-outage", &verdict);
        let v2 = psql(&drill_db, "SELECT count(*) FROM anomalies WHERE model_version = 'pump@v2'");
        let v2_before_t2 = psql(
            &drill_db,
            &format!("SELECT count(*) FROM anomalies WHERE model_version = 'pump@v2' AND ts < '{effective}'"),
        );
        assert!(v2 != "0", "v2 scores (and flags pump-1's late fault) after T2");
        assert_eq!(v2_before_t2, "0", "nothing before T2 is v2's");
    }
}
