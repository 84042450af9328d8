//! `--source` arguments, and opening them once per process.

use std::path::PathBuf;
use std::sync::Arc;

use millstream_connectors::file::{FileInput, FileSourceError};
use millstream_connectors::kafka::{KafkaAddress, KafkaAddressError, KafkaInput};
use millstream_connectors::RecordResolver;

/// A source named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// `file:PATH`: JSON lines, or CSV with a header.
    File(PathBuf),
    /// `simulate` or `simulate:key=value,…`: the plant simulator.
    Simulate(Vec<(String, String)>),
    /// `kafka://HOST:PORT[,HOST:PORT]/TOPIC[,TOPIC]`.
    Kafka(KafkaAddress),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source `file:` needs a path, as in file:readings.jsonl")]
    MissingPath,
    #[error("source {0}")]
    KafkaAddress(#[from] KafkaAddressError),
    #[error("{0}")]
    Kafka(String),
    #[error("unknown source `{0}` (expected file:PATH, simulate[:key=value,…], kafka://HOST:PORT/TOPIC)")]
    Unknown(String),
    #[error("simulate option `{0}` is not key=value")]
    BadOption(String),
    #[error(transparent)]
    File(#[from] FileSourceError),
    #[error("simulate: {0}")]
    Simulate(String),
}

impl std::str::FromStr for SourceSpec {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(SourceError::MissingPath);
            }
            return Ok(SourceSpec::File(PathBuf::from(path)));
        }
        if s == "simulate" {
            return Ok(SourceSpec::Simulate(Vec::new()));
        }
        if let Some(options) = s.strip_prefix("simulate:") {
            let pairs = options
                .split(',')
                .filter(|o| !o.is_empty())
                .map(|o| match o.split_once('=') {
                    Some((k, v)) => Ok((k.trim().to_owned(), v.trim().to_owned())),
                    None => Err(SourceError::BadOption(o.to_owned())),
                })
                .collect::<Result<_, _>>()?;
            return Ok(SourceSpec::Simulate(pairs));
        }
        if s.starts_with("kafka://") {
            return Ok(SourceSpec::Kafka(KafkaAddress::parse(s, true)?));
        }
        Err(SourceError::Unknown(s.to_owned()))
    }
}

/// A source opened in this process, shared by its workers.
#[derive(Clone)]
pub enum OpenedSource {
    File(Arc<FileInput>),
    Simulate(Arc<millstream_connectors::plant_source::SimulatedPlant>),
    Kafka(Arc<KafkaInput>),
}

/// What opening a Kafka source needs besides its address.
pub struct KafkaOpen<'a> {
    pub settings: &'a crate::kafka_settings::KafkaSettings,
    pub stop_at_end: bool,
    pub observer: Arc<dyn millstream_connectors::kafka::KafkaSourceObserver>,
}

impl OpenedSource {
    pub fn open(spec: &SourceSpec, kafka: KafkaOpen<'_>) -> Result<Self, SourceError> {
        Ok(match spec {
            SourceSpec::Kafka(address) => {
                let options = kafka
                    .settings
                    .source_options(&address.brokers, address.topics.clone(), kafka.stop_at_end)
                    .map_err(|e| SourceError::Kafka(e.to_string()))?;
                OpenedSource::Kafka(Arc::new(KafkaInput { options, observer: kafka.observer }))
            }
            SourceSpec::File(path) => OpenedSource::File(FileInput::open(path)?),
            SourceSpec::Simulate(options) => OpenedSource::Simulate(Arc::new(
                millstream_connectors::plant_source::SimulatedPlant::from_options(options)
                    .map_err(SourceError::Simulate)?,
            )),
        })
    }

    pub fn resolver(&self) -> Arc<dyn RecordResolver> {
        match self {
            OpenedSource::File(f) => Arc::clone(f) as Arc<dyn RecordResolver>,
            OpenedSource::Simulate(s) => Arc::clone(s) as Arc<dyn RecordResolver>,
            OpenedSource::Kafka(k) => Arc::clone(k) as Arc<dyn RecordResolver>,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!("file:a.jsonl".parse::<SourceSpec>().unwrap(), SourceSpec::File("a.jsonl".into()));
        assert_eq!("simulate".parse::<SourceSpec>().unwrap(), SourceSpec::Simulate(vec![]));
        assert_eq!(
            "simulate:assets=2,seed=9".parse::<SourceSpec>().unwrap(),
            SourceSpec::Simulate(vec![("assets".into(), "2".into()), ("seed".into(), "9".into())])
        );
        assert!(matches!("file:".parse::<SourceSpec>(), Err(SourceError::MissingPath)));
        assert_eq!(
            "kafka://h:1/t".parse::<SourceSpec>().unwrap(),
            SourceSpec::Kafka(KafkaAddress { brokers: "h:1".into(), topics: vec!["t".into()] })
        );
        assert!(matches!("kafka://h:1".parse::<SourceSpec>(), Err(SourceError::KafkaAddress(_))));
        assert!(matches!("simulate:x".parse::<SourceSpec>(), Err(SourceError::BadOption(_))));
        assert!(matches!("nope".parse::<SourceSpec>(), Err(SourceError::Unknown(_))));
    }
}
