//! Parsing of `--sink` arguments.

use std::path::PathBuf;

/// A sink named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    /// `jsonl:DIR`: anomalies.jsonl, dead_letters.jsonl, scores.jsonl in DIR.
    Jsonl(PathBuf),
    /// `stdout`: every line, tagged with its kind.
    Stdout,
    /// `null`: discard (benchmarks).
    Null,
    /// `postgres://…` or `postgresql://…`: readings, anomalies and dead letters in PostgreSQL
    /// (TimescaleDB when available), idempotently.
    Postgres(String),
    /// `kafka://HOST:PORT[,HOST:PORT]`: anomalies to the notification topic and dead letters
    /// to the dead-letter topic (names from the `[kafka]` config). Holds the brokers.
    Kafka(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkSpecError {
    #[error("sink `jsonl:` needs a directory, as in jsonl:out/")]
    MissingDirectory,
    #[error("sink `{0}` is not kafka://HOST:PORT[,HOST:PORT] (topics come from the [kafka] config)")]
    KafkaAddress(String),
    #[error("unknown sink `{0}` (expected jsonl:DIR, stdout, null, postgres://…, kafka://HOST:PORT)")]
    Unknown(String),
}

impl SinkSpec {
    /// Whether the sink stores every accepted reading (not only anomalies and dead letters).
    pub fn stores_readings(&self) -> bool {
        matches!(self, SinkSpec::Postgres(_))
    }
}

impl std::str::FromStr for SinkSpec {
    type Err = SinkSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(dir) = s.strip_prefix("jsonl:") {
            if dir.is_empty() {
                return Err(SinkSpecError::MissingDirectory);
            }
            return Ok(SinkSpec::Jsonl(PathBuf::from(dir)));
        }
        match s {
            "stdout" => Ok(SinkSpec::Stdout),
            "null" => Ok(SinkSpec::Null),
            _ if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
                Ok(SinkSpec::Postgres(s.to_owned()))
            }
            _ if s.starts_with("kafka://") => {
                let brokers = &s["kafka://".len()..];
                let valid = !brokers.is_empty()
                    && brokers.split(',').all(|b| {
                        b.rsplit_once(':')
                            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
                    });
                if valid {
                    Ok(SinkSpec::Kafka(brokers.to_owned()))
                } else {
                    Err(SinkSpecError::KafkaAddress(s.to_owned()))
                }
            }
            _ => Err(SinkSpecError::Unknown(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_forms() {
        assert_eq!("jsonl:out".parse(), Ok(SinkSpec::Jsonl("out".into())));
        assert_eq!("stdout".parse(), Ok(SinkSpec::Stdout));
        assert_eq!("null".parse(), Ok(SinkSpec::Null));
        assert_eq!("jsonl:".parse::<SinkSpec>(), Err(SinkSpecError::MissingDirectory));
        assert_eq!("kafka://h:1,g:2".parse(), Ok(SinkSpec::Kafka("h:1,g:2".into())));
        assert!(matches!("kafka://h:1/topic".parse::<SinkSpec>(), Err(SinkSpecError::KafkaAddress(_))));
        assert!(matches!("kafka://".parse::<SinkSpec>(), Err(SinkSpecError::KafkaAddress(_))));
        assert_eq!("postgres://u@h/db".parse(), Ok(SinkSpec::Postgres("postgres://u@h/db".into())));
        assert!(matches!("ftp".parse::<SinkSpec>(), Err(SinkSpecError::Unknown(_))));
    }
}
