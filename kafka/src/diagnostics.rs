//! What librdkafka says about failing broker connections: which failures are configuration
//! problems (a *refusal*: a TLS handshake or certificate failure, a failed SASL authentication,
//! a listener that expects another `security.protocol`) rather than outages, the latest
//! reason, and warnings that do not repeat themselves.
//!
//! Like the Java client, which treats SSL handshake and SASL authentication failures as not
//! retriable, a client that keeps being refused, with nothing working meanwhile, gives up with
//! the reason instead of retrying forever. Outages (connection refused, every broker down, a
//! disconnect) keep being retried.
//!
//! librdkafka reports every broker failure as a log line of facility `FAIL` (at `Info` for a
//! disconnect, `Error` for a TLS or SASL failure), and only the `Error` ones as error events;
//! a client must therefore log at `Info` or more to see why a plaintext connection to a TLS
//! listener failed. This file is also compiled into `millstream-sinks` (see its
//! `kafka/mod.rs`), so both Kafka clients classify failures alike.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::RDKafkaErrorCode;

/// How long refusals must go on, with no other kind of failure and nothing working meanwhile,
/// before a client gives up, when librdkafka said so outright (a failed TLS handshake or SASL
/// authentication): a one-off (a broker restarting mid-handshake) is retried.
pub const REFUSAL_GRACE: Duration = Duration::from_secs(5);
/// The same when the refusal is only likely (a disconnect during the ApiVersion request or
/// SASL authentication, which a proxy in front of a restarting broker causes too). Only
/// before the client ever got through: a setting that worked does not turn wrong.
pub const LIKELY_REFUSAL_GRACE: Duration = Duration::from_secs(30);
/// …and how many refusals that takes at least.
pub const REFUSAL_REPEATS: u32 = 2;
/// A warning identical to one already logged is logged again at most this often, with how
/// many were held back.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(10);

/// A broker failure that says the client's configuration is wrong, not that a broker is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The TLS handshake failed: the broker's certificate is not trusted, say.
    Tls,
    /// SASL authentication failed: a wrong password, user or mechanism.
    Authentication,
    /// The listener speaks another protocol: plaintext against TLS, or TLS against plaintext.
    Protocol,
}

/// How sure a [`Refusal`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// librdkafka said so: `certificate verify failed`, `SASL authentication error`.
    Certain,
    /// A disconnect at a step where a mismatch typically shows so; an outage can too.
    Likely,
}

impl Refusal {
    /// The refusal `reason` (librdkafka's text) describes, if any, and how sure it is; `code`
    /// when it came as an error event.
    pub fn classify(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<(Refusal, Evidence)> {
        use Evidence::{Certain, Likely};
        let lower = reason.to_ascii_lowercase();
        let disconnected = lower.contains("disconnected");
        // librdkafka reports a disconnect during the TLS handshake as "SSL handshake failed:
        // Disconnected: connecting to a PLAINTEXT broker listener?" (OpenSSL's unexpected EOF
        // included), with error code `Transport`.
        if lower.contains("connecting to a plaintext broker listener") {
            return Some((Refusal::Protocol, Likely));
        }
        if code == Some(RDKafkaErrorCode::SSL)
            || lower.contains("ssl handshake failed")
            || lower.contains("certificate verify failed")
        {
            return Some((Refusal::Tls, Certain));
        }
        if code == Some(RDKafkaErrorCode::Authentication)
            || lower.contains("sasl authentication")
            || lower.contains("sasl handshake")
            || lower.contains("authentication failed")
        {
            return Some((Refusal::Authentication, if disconnected { Likely } else { Certain }));
        }
        // librdkafka's own guesses, and the disconnect it would guess from (2.12 leaves out the
        // guess when the disconnect is noticed while reading): a plaintext client at a TLS
        // listener is dropped while asking for the API versions.
        if lower.contains("security.protocol")
            || lower.contains("connecting to a ssl listener")
            || (disconnected && lower.contains("in state apiversion_query") && !lower.contains("ssl://"))
        {
            return Some((Refusal::Protocol, Likely));
        }
        // A broker that closes the connection instead of answering a bad SASL exchange.
        if lower.contains("in state auth_") {
            return Some((Refusal::Authentication, Likely));
        }
        // A client without SASL dropped as soon as it is connected: the listener wants SASL
        // (librdkafka's guess too, when it makes it).
        if disconnected && !lower.contains("sasl_") && up_for_ms(&lower).is_some_and(|ms| ms < 2_000) {
            return Some((Refusal::Protocol, Likely));
        }
        None
    }

    /// What to check, for the final message.
    pub fn hint(self) -> &'static str {
        match self {
            Refusal::Tls => {
                "the TLS handshake failed: check [kafka.tls] (ca must be the root that signed the \
                 broker's certificate, whose name must match the broker's address; certificate and \
                 key when the broker asks for a client certificate)"
            }
            Refusal::Authentication => {
                "SASL authentication failed: check [kafka.sasl] (mechanism, username and \
                 password_file) against the broker's users"
            }
            Refusal::Protocol => {
                "the broker's listener seems to expect another security.protocol: check whether \
                 it needs TLS ([kafka.tls]) and SASL ([kafka.sasl])"
            }
        }
    }
}

/// `N` in librdkafka's `(after Nms in state UP…)` suffix: how long the connection was up.
fn up_for_ms(lower: &str) -> Option<u64> {
    let after = &lower[lower.rfind("(after ")? + "(after ".len()..];
    let (ms, rest) = after.split_once("ms in state ")?;
    (rest.starts_with("up)") || rest.starts_with("up,")).then(|| ms.parse().ok()).flatten()
}

/// Refusals in a row, since the last time something worked or failed otherwise.
#[derive(Debug)]
struct Run {
    kind: Refusal,
    reason: String,
    first: Instant,
    count: u32,
    /// Whether one of them was certain.
    certain: bool,
}

#[derive(Debug, Default)]
struct State {
    /// The latest broker failure, refusal or not, and when it came.
    last: Option<(String, Instant)>,
    refusals: Option<Run>,
    /// Something worked once: the security settings are right.
    ever_worked: bool,
}

/// A client's broker failures: the latest one, and the refusals in a row. Fed by the client
/// context's `log` (facility `FAIL`) and `error` callbacks; cleared by [`Self::worked`].
#[derive(Debug, Default)]
pub struct ConnectionLog {
    state: Mutex<State>,
}

impl ConnectionLog {
    /// Records a broker failure. The same failure often comes twice, as a log line and as an
    /// error event: an identical reason within a second counts once. Returns its refusal
    /// kind, if it counts as one.
    pub fn failure(&self, code: Option<RDKafkaErrorCode>, reason: &str) -> Option<Refusal> {
        let now = Instant::now();
        let mut state = self.state.lock().expect("connection log lock");
        let refusal = Refusal::classify(code, reason)
            .filter(|(_, evidence)| *evidence == Evidence::Certain || !state.ever_worked);
        let repeat = state
            .last
            .as_ref()
            .is_some_and(|(last, at)| last == reason && now.duration_since(*at) < Duration::from_secs(1));
        state.last = Some((reason.to_owned(), now));
        if repeat {
            return refusal.map(|(kind, _)| kind);
        }
        state.refusals = match (refusal, state.refusals.take()) {
            (None, _) => None,
            (Some((kind, evidence)), Some(mut run)) => {
                run.kind = kind;
                run.reason = reason.to_owned();
                run.count += 1;
                run.certain |= evidence == Evidence::Certain;
                Some(run)
            }
            (Some((kind, evidence)), None) => Some(Run {
                kind,
                reason: reason.to_owned(),
                first: now,
                count: 1,
                certain: evidence == Evidence::Certain,
            }),
        };
        refusal.map(|(kind, _)| kind)
    }

    /// Something worked (a broker is up, a request succeeded): refusals so far were one-offs.
    pub fn worked(&self) {
        let mut state = self.state.lock().expect("connection log lock");
        state.refusals = None;
        state.ever_worked = true;
    }

    /// The latest broker failure, if any, with what to check when it looks like a refusal.
    pub fn last_failure(&self) -> Option<String> {
        let state = self.state.lock().expect("connection log lock");
        let (reason, _) = state.last.as_ref()?;
        Some(match Refusal::classify(None, reason) {
            Some((kind, _)) => format!("{reason}; {}", kind.hint()),
            None => reason.clone(),
        })
    }

    /// Once refusals went on for the grace period ([`REFUSAL_GRACE`], or
    /// [`LIKELY_REFUSAL_GRACE`] when none was certain) and [`REFUSAL_REPEATS`] times: why the
    /// client should give up, with the latest reason and what to check.
    pub fn verdict(&self) -> Option<String> {
        self.verdict_after(REFUSAL_GRACE, LIKELY_REFUSAL_GRACE, REFUSAL_REPEATS)
    }

    fn verdict_after(&self, certain: Duration, likely: Duration, repeats: u32) -> Option<String> {
        let state = self.state.lock().expect("connection log lock");
        let run = state.refusals.as_ref()?;
        let grace = if run.certain { certain } else { likely };
        (run.count >= repeats && run.first.elapsed() >= grace).then(|| {
            format!(
                "refused by the broker for {:.0?}, with no connection working meanwhile: {}; {}",
                run.first.elapsed(),
                run.reason,
                run.kind.hint()
            )
        })
    }
}

/// librdkafka's log lines start with the thread: `[thrd:sasl_ssl://host:9093/bootstrap]: `.
pub fn strip_thread(message: &str) -> &str {
    match (message.starts_with("[thrd:"), message.find("]: ")) {
        (true, Some(end)) => &message[end + 3..],
        _ => message,
    }
}

/// The part of a librdkafka reason that stays the same when a failure repeats: without the
/// variable ` (after 12ms in state …, N identical error(s) suppressed)` suffix.
pub fn steady_part(reason: &str) -> &str {
    match reason.rfind(" (after ") {
        Some(at) => &reason[..at],
        None => reason,
    }
}

/// Lets a warning through when it is new, or when [`REPEAT_INTERVAL`] passed since it was last
/// let through; counts the ones held back.
#[derive(Debug, Default)]
pub struct Throttle {
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Throttle {
    /// `Some(held back since the last time)` when the warning keyed `key` should be logged now.
    pub fn admit(&self, key: &str) -> Option<u64> {
        self.admit_every(key, REPEAT_INTERVAL)
    }

    fn admit_every(&self, key: &str, interval: Duration) -> Option<u64> {
        let key = steady_part(key);
        let now = Instant::now();
        let mut seen = self.seen.lock().expect("throttle lock");
        if let Some((last, held)) = seen.get_mut(key) {
            if now.duration_since(*last) < interval {
                *held += 1;
                return None;
            }
            let held_back = *held;
            *last = now;
            *held = 0;
            return Some(held_back);
        }
        if seen.len() >= 256 {
            seen.retain(|_, (last, _)| now.duration_since(*last) < interval);
        }
        seen.insert(key.to_owned(), (now, 0));
        Some(0)
    }
}

/// What a client context's `log` callback does with a librdkafka line: a broker failure
/// (facility `FAIL`, the only report of many of them) is recorded in `connection`, and the line
/// is forwarded to `tracing` from `configured` up, through `throttle`.
pub fn on_log(
    connection: &ConnectionLog,
    throttle: &Throttle,
    configured: RDKafkaLogLevel,
    level: RDKafkaLogLevel,
    facility: &str,
    message: &str,
) {
    if facility == "FAIL" {
        connection.failure(None, strip_thread(message));
    }
    if at_least(level, configured) {
        forward_log(throttle, level, facility, message);
    }
}

/// Forwards a librdkafka log line to `tracing` (target `librdkafka`, as rdkafka's own
/// forwarding does), unless an identical one was logged less than [`REPEAT_INTERVAL`] ago.
pub fn forward_log(throttle: &Throttle, level: RDKafkaLogLevel, facility: &str, message: &str) {
    let Some(held) = throttle.admit(&format!("{facility} {}", strip_thread(message))) else { return };
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", repeats = held, "librdkafka: {facility} {message}")
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", repeats = held, "librdkafka: {facility} {message}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", repeats = held, "librdkafka: {facility} {message}")
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", repeats = held, "librdkafka: {facility} {message}")
        }
    }
}

/// Whether a line at `level` passes a client configured to log at `configured` and above.
pub fn at_least(level: RDKafkaLogLevel, configured: RDKafkaLogLevel) -> bool {
    (level as i32) <= (configured as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Evidence::{Certain, Likely};

    const WRONG_ROOT: &str = "sasl_ssl://127.0.0.1:34883/bootstrap: SSL handshake failed: \
        error:0A000086:SSL routines::certificate verify failed: broker certificate could not be \
        verified, verify that ssl.ca.location is correctly configured (after 1ms in state SSL_HANDSHAKE)";
    const PLAINTEXT: &str = "sasl_plaintext://127.0.0.1:36265/bootstrap: Disconnected: connection \
        closed by peer: receive 0 after POLLIN (after 0ms in state APIVERSION_QUERY)";
    const WRONG_PASSWORD: &str = "sasl_ssl://127.0.0.1:1/bootstrap: SASL authentication error: SASL \
        SCRAM authentication failed: broker responded with invalid-proof (after 39ms in state AUTH_REQ)";
    const REFUSED: &str = "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection \
        refused (after 0ms in state CONNECT)";

    const NEVER: Duration = Duration::from_secs(3600);

    #[test]
    fn refusals_are_told_from_outages() {
        assert_eq!(Refusal::classify(None, WRONG_ROOT), Some((Refusal::Tls, Certain)));
        assert_eq!(Refusal::classify(Some(RDKafkaErrorCode::SSL), "x"), Some((Refusal::Tls, Certain)));
        assert_eq!(Refusal::classify(None, PLAINTEXT), Some((Refusal::Protocol, Likely)));
        assert_eq!(
            Refusal::classify(
                None,
                "h:1/b: requesting ApiVersion: might be caused by incorrect security.protocol configuration"
            ),
            Some((Refusal::Protocol, Likely))
        );
        assert_eq!(
            Refusal::classify(
                None,
                "ssl://h:1/b: SSL handshake failed: Disconnected: connecting to a PLAINTEXT broker listener?"
            ),
            Some((Refusal::Protocol, Likely))
        );
        assert_eq!(Refusal::classify(None, WRONG_PASSWORD), Some((Refusal::Authentication, Certain)));
        assert_eq!(
            Refusal::classify(Some(RDKafkaErrorCode::Authentication), "x"),
            Some((Refusal::Authentication, Certain))
        );
        assert_eq!(
            Refusal::classify(None, "h:1/b: Disconnected (after 2ms in state AUTH_REQ)"),
            Some((Refusal::Authentication, Likely))
        );
        assert_eq!(
            Refusal::classify(
                None,
                "ssl://h:1/b: Disconnected: SSL connection closed by peer (after 0ms in state UP)"
            ),
            Some((Refusal::Protocol, Likely)),
            "a client without SASL at a SASL listener"
        );
        for outage in [
            REFUSED,
            "1/1 brokers are down",
            "ssl://h:1/b: Disconnected: SSL connection closed by peer (after 61234ms in state UP)",
            "sasl_ssl://h:1/b: Disconnected: SSL connection closed by peer (after 3ms in state UP)",
            "h:1/b: Disconnected (after 12ms in state UPDATE)",
            // A TLS client dropped while asking for the API versions: the broker behind a
            // TLS terminator is down.
            "ssl://h:1/b: Disconnected: connection closed by peer: receive 0 after POLLIN (after 0ms in state APIVERSION_QUERY)",
            "ssl://h:1/b: error:0A000126:SSL routines::unexpected eof while reading (after 5ms in state UP)",
        ] {
            assert_eq!(Refusal::classify(None, outage), None, "{outage}");
        }
        assert_eq!(Refusal::classify(Some(RDKafkaErrorCode::AllBrokersDown), "1/1 brokers are down"), None);
    }

    #[test]
    fn a_verdict_needs_repeated_refusals_in_a_row() {
        let log = ConnectionLog::default();
        let soon = |log: &ConnectionLog| log.verdict_after(Duration::ZERO, NEVER, 2);
        assert_eq!(log.failure(None, WRONG_ROOT), Some(Refusal::Tls));
        // The same failure as an error event: counted once.
        log.failure(Some(RDKafkaErrorCode::SSL), WRONG_ROOT);
        assert!(soon(&log).is_none(), "one refusal is not enough");
        log.failure(None, &WRONG_ROOT.replace("1ms", "2ms"));
        let verdict = soon(&log).expect("two refusals in a row");
        assert!(
            verdict.contains("certificate verify failed") && verdict.contains("[kafka.tls]"),
            "{verdict}"
        );
        assert!(
            log.verdict_after(Duration::from_secs(60), Duration::ZERO, 2).is_none(),
            "not before the grace period"
        );

        // An outage in between starts the count again; so does something working.
        log.failure(None, REFUSED);
        log.failure(None, WRONG_PASSWORD);
        assert!(soon(&log).is_none());
        log.failure(None, &WRONG_PASSWORD.replace("39ms", "20ms"));
        assert!(soon(&log).unwrap().contains("[kafka.sasl]"));
        log.worked();
        assert!(log.verdict_after(Duration::ZERO, Duration::ZERO, 1).is_none());
        assert!(log.last_failure().unwrap().contains("check [kafka.sasl]"));
    }

    #[test]
    fn likely_refusals_wait_longer_and_only_until_something_worked() {
        let log = ConnectionLog::default();
        log.failure(None, PLAINTEXT);
        log.failure(None, &PLAINTEXT.replace("0ms", "1ms"));
        assert!(log.verdict_after(Duration::ZERO, NEVER, 2).is_none(), "the longer grace period applies");
        let verdict = log.verdict_after(NEVER, Duration::ZERO, 2).expect("after the longer grace period");
        assert!(verdict.contains("security.protocol"), "{verdict}");

        // Once connected, the same disconnects are an outage; a failed handshake is not.
        log.worked();
        assert_eq!(log.failure(None, PLAINTEXT), None);
        assert_eq!(log.failure(None, &PLAINTEXT.replace("0ms", "1ms")), None);
        assert!(log.verdict_after(Duration::ZERO, Duration::ZERO, 1).is_none());
        assert_eq!(log.failure(None, WRONG_ROOT), Some(Refusal::Tls));
    }

    #[test]
    fn repeated_warnings_are_held_back_and_counted() {
        let throttle = Throttle::default();
        assert_eq!(throttle.admit_every(WRONG_ROOT, Duration::from_secs(60)), Some(0));
        let again = WRONG_ROOT.replace("after 1ms", "after 7ms");
        assert_eq!(throttle.admit_every(&again, Duration::from_secs(60)), None, "only the suffix differs");
        assert_eq!(throttle.admit_every(REFUSED, Duration::from_secs(60)), Some(0), "another warning");
        assert_eq!(throttle.admit_every(&again, Duration::ZERO), Some(1), "due again, with the count");
    }

    #[test]
    fn thread_prefixes_and_suffixes_are_trimmed() {
        assert_eq!(
            strip_thread("[thrd:ssl://h:1/bootstrap]: ssl://h:1/bootstrap: x"),
            "ssl://h:1/bootstrap: x"
        );
        assert_eq!(strip_thread("plain"), "plain");
        assert_eq!(steady_part("a: b (after 3ms in state UP)"), "a: b");
        assert!(at_least(RDKafkaLogLevel::Error, RDKafkaLogLevel::Warning));
        assert!(!at_least(RDKafkaLogLevel::Info, RDKafkaLogLevel::Warning));
    }
}
