//! The `[kafka]` section: the consumer group, where to start, idleness, the sink's topics,
//! TLS and SASL, and librdkafka options passed through; and how it becomes librdkafka config.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use millstream_connectors::kafka::{KafkaSourceOptions, StartFrom};
use millstream_sinks::kafka::KafkaSinkTopics;
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::config::{read_secret, ConfigError, Secret};

/// Kafka source and sink settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// The consumer group whose committed offsets a run resumes from and commits to.
    pub group_id: String,
    /// Where a partition with no committed offset starts: `earliest` or `latest`.
    pub start_from: StartFrom,
    /// Allowed lateness of the Kafka source, in ms; `pipeline.allowed_lateness_ms` when unset.
    pub allowed_lateness_ms: Option<u64>,
    /// A partition that has reached its end and received nothing for this long, in ms, stops
    /// holding event time back (its watermark follows the wall clock).
    pub idle_timeout_ms: u64,
    /// Records read but not yet durable in every sink, per worker, before reading pauses:
    /// the bound on memory under lag.
    pub max_in_flight_records: usize,
    /// The same bound in message bytes (payloads), per worker: large records (dead letters
    /// carry theirs whole to the sink) must not multiply the record bound's memory.
    pub max_in_flight_bytes: usize,
    /// How often durable offsets are committed, in ms.
    pub commit_interval_ms: u64,
    /// How often topic metadata is read again to pick up new partitions, in ms.
    pub metadata_refresh_ms: u64,
    /// The sink's topic for anomaly notifications.
    pub notification_topic: String,
    /// The sink's topic for dead letters.
    pub dead_letter_topic: String,
    /// The sink's topic for model-updated events (each retrained, refused or rolled-back version).
    pub control_topic: String,
    /// Partitions of the sink's topics when the sink has to create them.
    pub topic_partitions: i32,
    /// TLS to the brokers.
    pub tls: Option<KafkaTls>,
    /// SASL authentication.
    pub sasl: Option<KafkaSasl>,
    /// librdkafka options passed through as they are (`"fetch.wait.max.ms" = "50"`). Options
    /// millstream manages itself (offsets, idempotence, security) are refused here.
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        let topics = KafkaSinkTopics::default();
        KafkaSettings {
            group_id: "millstream".to_owned(),
            start_from: StartFrom::Earliest,
            allowed_lateness_ms: None,
            idle_timeout_ms: 30_000,
            max_in_flight_records: 500_000,
            max_in_flight_bytes: 64 << 20,
            commit_interval_ms: 1_000,
            metadata_refresh_ms: 30_000,
            notification_topic: topics.notifications,
            dead_letter_topic: topics.dead_letters,
            control_topic: topics.control,
            topic_partitions: 4,
            tls: None,
            sasl: None,
            options: BTreeMap::new(),
        }
    }
}

/// TLS to the brokers (`security.protocol` `ssl`, or `sasl_ssl` with SASL).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaTls {
    /// CA certificate(s) to verify the brokers with (PEM); the system's when unset.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), for brokers that authenticate clients by certificate.
    pub certificate: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// The private key's password (best given as `MILLSTREAM_KAFKA__TLS__KEY_PASSWORD`).
    pub key_password: Option<Secret>,
}

/// SASL mechanisms librdkafka supports without Kerberos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL authentication (`security.protocol` `sasl_plaintext`, or `sasl_ssl` with TLS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: SaslMechanism,
    pub username: String,
    /// The password (best given as `MILLSTREAM_KAFKA__SASL__PASSWORD`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password; its trailing newline is ignored.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// librdkafka options that millstream sets itself; a passthrough may not change them.
const MANAGED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "auto.offset.reset",
    "enable.idempotence",
    "acks",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
];

impl KafkaSettings {
    /// The librdkafka configuration shared by the source and the sink: brokers, security and
    /// passthrough options.
    pub fn client_config(&self, brokers: &str) -> Result<ClientConfig, ConfigError> {
        let KafkaSettings {
            group_id: _,
            start_from: _,
            allowed_lateness_ms: _,
            idle_timeout_ms: _,
            max_in_flight_records: _,
            max_in_flight_bytes: _,
            commit_interval_ms: _,
            metadata_refresh_ms: _,
            notification_topic: _,
            dead_letter_topic: _,
            control_topic: _,
            topic_partitions: _,
            tls,
            sasl,
            options,
        } = self;
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        // librdkafka logs through the `log` facade at this level and above.
        config.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
        for (key, value) in options {
            if MANAGED.contains(&key.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "kafka.options.\"{key}\": millstream sets this option itself (see the [kafka] section)"
                )));
            }
            config.set(key, value);
        }
        let protocol = match (tls.is_some(), sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        config.set("security.protocol", protocol);
        if let Some(KafkaTls { ca, certificate, key, key_password }) = tls {
            for (name, path) in [("ca", ca), ("certificate", certificate), ("key", key)] {
                if let Some(path) = path {
                    if !path.is_file() {
                        return Err(ConfigError::Invalid(format!(
                            "kafka.tls.{name}: {} is not a readable file",
                            path.display()
                        )));
                    }
                }
            }
            if let Some(ca) = ca {
                config.set("ssl.ca.location", ca.display().to_string());
            }
            if let Some(certificate) = certificate {
                config.set("ssl.certificate.location", certificate.display().to_string());
            }
            if let Some(key) = key {
                config.set("ssl.key.location", key.display().to_string());
            }
            if let Some(password) = key_password {
                config.set("ssl.key.password", password.expose());
            }
        }
        if let Some(KafkaSasl { mechanism, username, password, password_file }) = sasl {
            let password = read_secret(password, password_file)?.ok_or_else(|| {
                ConfigError::Invalid(
                    "kafka.sasl: a password is needed (kafka.sasl.password_file or MILLSTREAM_KAFKA__SASL__PASSWORD)"
                        .to_owned(),
                )
            })?;
            config.set("sasl.mechanism", mechanism.as_str());
            config.set("sasl.username", username);
            config.set("sasl.password", password.expose());
        }
        Ok(config)
    }

    /// The source options for `topics` on `brokers`.
    pub fn source_options(
        &self,
        brokers: &str,
        topics: Vec<String>,
        stop_at_end: bool,
    ) -> Result<KafkaSourceOptions, ConfigError> {
        if self.group_id.is_empty() {
            return Err(ConfigError::Invalid("kafka.group_id: must not be empty".to_owned()));
        }
        if self.max_in_flight_records == 0 {
            return Err(ConfigError::Invalid("kafka.max_in_flight_records: must be at least 1".to_owned()));
        }
        if self.max_in_flight_bytes == 0 {
            return Err(ConfigError::Invalid("kafka.max_in_flight_bytes: must be at least 1".to_owned()));
        }
        Ok(KafkaSourceOptions {
            topics,
            group_id: self.group_id.clone(),
            start_from: self.start_from,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_in_flight_records: self.max_in_flight_records,
            max_in_flight_bytes: self.max_in_flight_bytes,
            commit_interval: Duration::from_millis(self.commit_interval_ms.max(1)),
            metadata_refresh: Duration::from_millis(self.metadata_refresh_ms.max(100)),
            stop_at_end,
            client: self.client_config(brokers)?,
        })
    }

    /// The sink's topics.
    pub fn sink_topics(&self) -> Result<KafkaSinkTopics, ConfigError> {
        use millstream_connectors::kafka::options::valid_topic;
        for (key, topic) in [
            ("notification_topic", &self.notification_topic),
            ("dead_letter_topic", &self.dead_letter_topic),
            ("control_topic", &self.control_topic),
        ] {
            if !valid_topic(topic) {
                return Err(ConfigError::Invalid(format!(
                    "kafka.{key}: `{topic}` is not a valid topic name"
                )));
            }
        }
        Ok(KafkaSinkTopics {
            notifications: self.notification_topic.clone(),
            dead_letters: self.dead_letter_topic.clone(),
            control: self.control_topic.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_options_are_refused_and_passthrough_kept() {
        let mut s = KafkaSettings::default();
        s.options.insert("fetch.wait.max.ms".into(), "50".into());
        let c = s.client_config("h:1").unwrap();
        assert_eq!(c.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
        s.options.insert("enable.auto.commit".into(), "true".into());
        let err = s.client_config("h:1").unwrap_err().to_string();
        assert!(err.contains("enable.auto.commit"), "{err}");
    }

    #[test]
    fn sasl_needs_a_password_and_sets_the_protocol() {
        let mut s = KafkaSettings {
            sasl: Some(KafkaSasl {
                mechanism: SaslMechanism::ScramSha512,
                username: "u".into(),
                password: None,
                password_file: None,
            }),
            ..KafkaSettings::default()
        };
        assert!(s.client_config("h:1").unwrap_err().to_string().contains("kafka.sasl"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        s.sasl.as_mut().unwrap().password_file = Some(file);
        let c = s.client_config("h:1").unwrap();
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("security.protocol"), Some("sasl_plaintext"));
    }
}
