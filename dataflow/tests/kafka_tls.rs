//! The Kafka source and sink over TLS and SASL, against a real tansu broker (the `millstream`
//! binary, configured through `[kafka.tls]` and `[kafka.sasl]`): records flow end to end, and
//! a wrong CA root, a plaintext client against a TLS listener, a wrong password and a client
//! without SASL each make a run fail within a bounded time, with or without a Kafka sink,
//! saying why and what to check.
//!
//! How a refusal ends a run (connectors/src/kafka/diagnostics.rs, shared by the source and the
//! sink): librdkafka reports each broker failure as a `FAIL` log line (at `Info` for a
//! disconnect), and the worst also as an error event, both on the client's main queue
//! (rdkafka 0.39 sets `log.queue=true`, rdkafka-0.39.0/src/client.rs:257,275). The source's
//! consumer serves that queue; the sink reads topic metadata at start-up through a producer,
//! whose own thread serves it (an `AdminClient`'s main queue is polled by nothing, which is
//! how the reason used to be lost: `… BrokerTransportFailure` after 30 s). Failures that are
//! a configuration problem rather than an outage end the run once they went on, in a row and
//! with nothing working meanwhile, for 5 s when librdkafka says so outright (`certificate
//! verify failed`, `SASL authentication error`), or for 30 s when it is only likely (a
//! disconnect while asking for the API versions, as a plaintext client at a TLS listener gets,
//! or right after connecting, as a client without SASL at a SASL listener gets; a proxy in
//! front of a restarting broker does the same, so only until the client first got through).
//! Outages (connection refused, every broker down) are retried as before
//! (tests/kafka_faults.rs), and identical warnings are logged at most every 10 s.
//!
//! What tansu 0.6.0 (the broker of these tests, see `millstream_testkit::kafka`) can do:
//!
//! - **SASL: SCRAM-SHA-256 and SCRAM-SHA-512, tested here against tansu itself.** `tansu broker
//!   --authentication` checks SCRAM credentials kept in its storage (`tansu-auth-0.6.0/src/lib.rs`,
//!   `Callback::callback` reads `storage.user_scram_credential`), provisioned with `tansu user
//!   create NAME PASSWORD --mechanism scram256|scram512` (`tansu-cli-0.6.0/src/cli/user.rs`).
//!   PLAIN is not offered: tansu-auth 0.6.0's `Cargo.toml` builds rsasl with only the
//!   `scram-sha-2` and `oauthbearer` mechanisms, so a PLAIN client gets `NoSharedMechanism` (and
//!   were it built in, `Callback::check` accepts any PLAIN password: it only checks that one
//!   was given). With a wrong password, librdkafka 2.12 reports `SASL authentication error:
//!   SASL SCRAM authentication failed: broker responded with invalid-proof` (in state
//!   `AUTH_REQ`).
//! - **TLS: not possible with tansu 0.6.0**, although `tansu broker --help` lists `--cert` and
//!   `--key`: `tansu-cli-0.6.0/src/cli/broker.rs:98` and `:102` put both flags in the clap group
//!   `tls`, so passing both is refused ("the argument '--cert <CERT>' cannot be used with
//!   '--key <KEY>'"), while `:265-267` only builds a rustls config when both are given; and
//!   `tansu-broker-0.6.0/src/broker.rs:268` builds the acceptor as `let _acceptor = …` and never
//!   uses it, so every connection is plain TCP whatever the flags (the listener URL's scheme is
//!   ignored too: only host and port are read). The same holds on tansu's main branch (renamed
//!   `nisshi-broker/src/broker.rs:285`). So the TLS tests put a TLS terminator in front of the
//!   real broker (`TestKafka::builder().tls()`: Python's `ssl`, a certificate for `localhost`
//!   and `127.0.0.1` signed by a throwaway CA, the broker advertising the terminator's port):
//!   what is tested is millstream's TLS client (librdkafka's OpenSSL, the CA, the host check),
//!   with the Kafka protocol served by tansu behind it.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{millstream, read_json, reading_line, START_MS};
use millstream_testkit::kafka::{Scram, TestKafka};

const DEAD_LETTERS: &str = "millstream.dead-letters";
const NOTIFICATIONS: &str = "millstream.notifications";
/// A run refused by the broker must end within this (millstream gives the brokers 30 s at
/// most: 5 s for a failed TLS handshake or SASL authentication, 30 s for a likely protocol
/// mismatch).
const REFUSAL_LIMIT: Duration = Duration::from_secs(75);

/// `[kafka]` settings for one run: a group, and TLS and SASL when given.
struct Security<'a> {
    group: &'a str,
    ca: Option<&'a Path>,
    /// (mechanism, username, password)
    sasl: Option<(&'a str, &'a str, &'a str)>,
}

fn write_config(dir: &Path, name: &str, security: &Security<'_>) -> PathBuf {
    let mut toml = format!("[kafka]\ngroup_id = \"{}\"\n", security.group);
    if let Some(ca) = security.ca {
        toml.push_str(&format!("\n[kafka.tls]\nca = \"{}\"\n", ca.display()));
    }
    if let Some((mechanism, username, password)) = security.sasl {
        let file = dir.join(format!("{name}.password"));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        toml.push_str(&format!(
            "\n[kafka.sasl]\nmechanism = \"{mechanism}\"\nusername = \"{username}\"\npassword_file = \"{}\"\n",
            file.display()
        ));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

/// `n` valid readings of 4 sensors, then `invalid` lines that are not JSON, into `topic`.
fn produce_readings(kafka: &TestKafka, topic: &str, n: u64, invalid: usize) {
    let mut records: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..n)
        .map(|i| {
            let sensor = format!("tls/s{}", i % 4);
            let line = reading_line(&sensor, START_MS + i * 1000, (i % 7) as f64, false);
            (Some(sensor.into_bytes()), line.into_bytes())
        })
        .collect();
    records.extend((0..invalid).map(|i| (None, format!("not json {i}").into_bytes())));
    kafka.produce(topic, &records).expect("the test kit produces over TLS/SASL");
}

/// `millstream run --source kafka://…/TOPIC --sink kafka://… --sink jsonl:OUT --emit-scores
/// --stop-at-end` with `config`.
fn run_args(kafka: &TestKafka, topic: &str, out: &Path, config: &Path) -> Vec<String> {
    [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--source",
        &format!("{}/{topic}", kafka.url()),
        "--sink",
        &kafka.url(),
        "--sink",
        &format!("jsonl:{}", out.display()),
        "--emit-scores",
        "--stop-at-end",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs millstream with `args`, killing it after `limit`: (exit status, or `None` when it had
/// to be killed; stderr; how long it ran).
fn run_bounded(args: &[String], limit: Duration) -> (Option<ExitStatus>, String, Duration) {
    let started = Instant::now();
    let mut child = millstream()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("millstream starts");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    (status, reader.join().unwrap(), elapsed)
}

/// A successful run: every valid reading scored, every invalid line a dead letter on the
/// Kafka topic, every offset committed.
fn assert_flows(
    kafka: &TestKafka,
    topic: &str,
    group: &str,
    config: &Path,
    out: &Path,
    n: u64,
    invalid: usize,
) {
    let (status, stderr, elapsed) =
        run_bounded(&run_args(kafka, topic, out, config), Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "the run succeeds ({status:?} after {elapsed:?}):\n{stderr}"
    );
    let scores = read_json(&out.join("scores.jsonl"));
    assert_eq!(scores.len() as u64, n, "every valid reading is scored");
    let dead = kafka.consume_all(DEAD_LETTERS).unwrap();
    let from_topic = dead
        .iter()
        .filter(|r| r.headers.iter().any(|(k, v)| k == "source_topic" && v == topic.as_bytes()))
        .count();
    assert_eq!(from_topic, invalid, "every invalid line is a dead letter on the Kafka sink");
    assert!(kafka.topics().unwrap().contains(&NOTIFICATIONS.to_owned()), "the sink made its topics");
    let committed = kafka.committed_offsets(group, topic).unwrap();
    assert_eq!(committed.values().sum::<i64>(), n as i64 + invalid as i64, "every offset is committed");
}

/// A run the broker refuses: it fails (not killed at the limit), in bounded time, and its
/// stderr contains each of `needles` (any case).
fn assert_refused(what: &str, args: &[String], needles: &[&str]) -> String {
    let (status, stderr, elapsed) = run_bounded(args, REFUSAL_LIMIT);
    assert!(status.is_some(), "{what}: still running after {REFUSAL_LIMIT:?} (a hang):\n{stderr}");
    assert!(!status.unwrap().success(), "{what}: the run succeeded:\n{stderr}");
    let lower = stderr.to_lowercase();
    for needle in needles {
        assert!(lower.contains(&needle.to_lowercase()), "{what}: stderr does not say `{needle}`:\n{stderr}");
    }
    eprintln!("{what}: refused after {elapsed:?}");
    stderr
}

/// A self-signed CA that signed nothing the broker has.
fn other_ca(dir: &Path) -> PathBuf {
    let (key, cert) = (dir.join("other.key"), dir.join("other.crt"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    cert
}

#[test]
fn tls_source_and_sink_flow_and_a_wrong_root_or_plaintext_is_refused() {
    let kafka = TestKafka::start_tls().expect("tansu behind TLS starts");
    let ca = kafka.ca_certificate().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    kafka.create_topic("readings", 2).unwrap();
    produce_readings(&kafka, "readings", 240, 3);

    let security = Security { group: "tls", ca: Some(&ca), sasl: None };
    let config = write_config(dir.path(), "tls", &security);
    assert_flows(&kafka, "readings", "tls", &config, &dir.path().join("out"), 240, 3);

    // A root that did not sign the broker's certificate.
    let wrong = other_ca(dir.path());
    let security = Security { group: "wrong-root", ca: Some(&wrong), sasl: None };
    let config = write_config(dir.path(), "wrong-root", &security);
    let out = dir.path().join("out-wrong-root");
    assert_refused("a wrong root", &run_args(&kafka, "readings", &out, &config), &["kafka sink"]);

    // No [kafka.tls]: plaintext against the TLS listener.
    let security = Security { group: "plaintext", ca: None, sasl: None };
    let config = write_config(dir.path(), "plaintext", &security);
    let out = dir.path().join("out-plaintext");
    assert_refused("plaintext against TLS", &run_args(&kafka, "readings", &out, &config), &["kafka sink"]);
    assert!(kafka.committed_offsets("wrong-root", "readings").unwrap().is_empty());
    assert!(kafka.committed_offsets("plaintext", "readings").unwrap().is_empty());
}

#[test]
fn sasl_scram_flows_and_a_wrong_password_or_no_sasl_is_refused() {
    let kafka = TestKafka::builder()
        .scram_user("alice", "alice-secret", Scram::Sha512)
        .scram_user("bob", "bob-secret", Scram::Sha256)
        .start()
        .expect("tansu with --authentication starts");
    let dir = tempfile::tempdir().unwrap();
    kafka.create_topic("readings", 2).unwrap();
    produce_readings(&kafka, "readings", 200, 2);

    let alice = Security { group: "alice", ca: None, sasl: Some(("SCRAM-SHA-512", "alice", "alice-secret")) };
    let config = write_config(dir.path(), "alice", &alice);
    assert_flows(&kafka, "readings", "alice", &config, &dir.path().join("out-alice"), 200, 2);

    // SCRAM-SHA-256 too: bob's run is a second group over the same topic.
    let bob = Security { group: "bob", ca: None, sasl: Some(("SCRAM-SHA-256", "bob", "bob-secret")) };
    let config = write_config(dir.path(), "bob", &bob);
    let out = dir.path().join("out-bob");
    let (status, stderr, _) =
        run_bounded(&run_args(&kafka, "readings", &out, &config), Duration::from_secs(120));
    assert!(status.is_some_and(|s| s.success()), "bob's run succeeds:\n{stderr}");
    assert_eq!(read_json(&out.join("scores.jsonl")).len(), 200);

    let wrong =
        Security { group: "wrong", ca: None, sasl: Some(("SCRAM-SHA-512", "alice", "not-her-password")) };
    let config = write_config(dir.path(), "wrong", &wrong);
    let out = dir.path().join("out-wrong");
    assert_refused("a wrong password", &run_args(&kafka, "readings", &out, &config), &["kafka sink"]);

    let none = Security { group: "none", ca: None, sasl: None };
    let config = write_config(dir.path(), "none", &none);
    let out = dir.path().join("out-none");
    assert_refused("no SASL", &run_args(&kafka, "readings", &out, &config), &["kafka sink"]);
    assert!(kafka.committed_offsets("wrong", "readings").unwrap().is_empty());
}

#[test]
fn sasl_scram_over_tls_flows() {
    let kafka = TestKafka::builder()
        .tls()
        .scram_user("carol", "carol-secret", Scram::Sha512)
        .start()
        .expect("tansu with --authentication behind TLS starts");
    let ca = kafka.ca_certificate().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    kafka.create_topic("readings", 3).unwrap();
    produce_readings(&kafka, "readings", 150, 1);
    let carol =
        Security { group: "carol", ca: Some(&ca), sasl: Some(("SCRAM-SHA-512", "carol", "carol-secret")) };
    let config = write_config(dir.path(), "carol", &carol);
    assert_flows(&kafka, "readings", "carol", &config, &dir.path().join("out"), 150, 1);
}

/// `run_args` with a null sink instead of the Kafka one: only the source talks to the broker.
fn source_only_args(kafka: &TestKafka, topic: &str, config: &Path) -> Vec<String> {
    let source = format!("{}/{topic}", kafka.url());
    ["run", "--config", config.to_str().unwrap(), "--source", &source, "--sink", "null", "--stop-at-end"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// What a refused run does, sink or no sink: it ends within a bounded time, saying why
/// (librdkafka's reason) and what to check (the `[kafka.*]` section).
#[test]
fn refusals_say_why_and_end_with_or_without_a_kafka_sink() {
    let kafka = TestKafka::builder()
        .tls()
        .scram_user("dave", "dave-secret", Scram::Sha512)
        .start()
        .expect("tansu with --authentication behind TLS starts");
    let ca = kafka.ca_certificate().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    kafka.create_topic("readings", 1).unwrap();
    produce_readings(&kafka, "readings", 10, 0);
    let wrong_root = other_ca(dir.path());
    let sasl = Some(("SCRAM-SHA-512", "dave", "dave-secret"));
    let cases: [(&str, Security<'_>, &[&str]); 4] = [
        (
            "a wrong root",
            Security { group: "a", ca: Some(&wrong_root), sasl },
            &["certificate verify failed", "check [kafka.tls]"],
        ),
        (
            "plaintext against TLS",
            Security { group: "b", ca: None, sasl },
            &["security.protocol", "[kafka.tls]"],
        ),
        (
            "a wrong password",
            Security { group: "c", ca: Some(&ca), sasl: Some(("SCRAM-SHA-512", "dave", "wrong")) },
            &["auth", "check [kafka.sasl]"],
        ),
        (
            "no SASL",
            Security { group: "d", ca: Some(&ca), sasl: None },
            &["security.protocol", "[kafka.sasl]"],
        ),
    ];
    for (i, (what, security, needles)) in cases.iter().enumerate() {
        let config = write_config(dir.path(), &format!("case{i}"), security);
        let stderr = assert_refused(
            &format!("{what} (source only)"),
            &source_only_args(&kafka, "readings", &config),
            needles,
        );
        assert!(stderr.contains("millstream: fatal: kafka source: "), "{what}: one fatal line:\n{stderr}");
        let out = dir.path().join(format!("out{i}"));
        assert_refused(
            &format!("{what} (Kafka sink)"),
            &run_args(&kafka, "readings", &out, &config),
            needles,
        );
    }
    for group in ["a", "b", "c", "d"] {
        assert!(
            kafka.committed_offsets(group, "readings").unwrap().is_empty(),
            "group {group} committed nothing"
        );
    }
}
