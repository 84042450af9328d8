//! What a Kafka source needs to run, already resolved from the config and the command line.

use std::time::Duration;

use rdkafka::ClientConfig;

/// Where to start a partition that has no committed offset for the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest retained record.
    #[default]
    Earliest,
    /// Only records produced after the run starts.
    Latest,
}

/// A resolved Kafka source.
#[derive(Clone)]
pub struct KafkaSourceOptions {
    /// The topics, in command-line order (a topic's index is part of every record's origin).
    pub topics: Vec<String>,
    /// The consumer group whose committed offsets the run resumes from and commits to.
    pub group_id: String,
    pub start_from: StartFrom,
    /// A partition with no new record for this long stops holding event time back.
    pub idle_timeout: Duration,
    /// Records read but not yet durable in every sink, per worker, before reading pauses.
    pub max_in_flight_records: usize,
    /// Message bytes read but not yet durable in every sink, per worker, before reading pauses.
    pub max_in_flight_bytes: usize,
    /// How often durable offsets are committed.
    pub commit_interval: Duration,
    /// How often topic metadata is read again, to pick up partitions added at runtime.
    pub metadata_refresh: Duration,
    /// Stop once every partition reaches the end offset it had when the run started.
    pub stop_at_end: bool,
    /// Connection settings: brokers, TLS, SASL and librdkafka passthrough options.
    pub client: ClientConfig,
}

impl std::fmt::Debug for KafkaSourceOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client config may hold a SASL password or a key password: never print it.
        f.debug_struct("KafkaSourceOptions")
            .field("topics", &self.topics)
            .field("group_id", &self.group_id)
            .field("start_from", &self.start_from)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_in_flight_records", &self.max_in_flight_records)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("commit_interval", &self.commit_interval)
            .field("metadata_refresh", &self.metadata_refresh)
            .field("stop_at_end", &self.stop_at_end)
            .finish_non_exhaustive()
    }
}

/// `kafka://HOST:PORT[,HOST:PORT]/TOPIC[,TOPIC]`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaAddress {
    /// `HOST:PORT,HOST:PORT`, as librdkafka's `bootstrap.servers` wants it.
    pub brokers: String,
    pub topics: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaAddressError {
    #[error("`{0}` is not kafka://HOST:PORT[,HOST:PORT]/TOPIC[,TOPIC]")]
    Shape(String),
    #[error("broker `{0}` is not HOST:PORT")]
    Broker(String),
    #[error("topic name `{0}` is not valid (1 to 249 of a-z A-Z 0-9 . _ -)")]
    Topic(String),
}

impl KafkaAddress {
    /// Parses a source address (topics required) or, with `topics_allowed == false`, a sink
    /// address (`kafka://HOST:PORT[,…]`, no path).
    pub fn parse(s: &str, topics_required: bool) -> Result<Self, KafkaAddressError> {
        let rest = s.strip_prefix("kafka://").ok_or_else(|| KafkaAddressError::Shape(s.to_owned()))?;
        let (hosts, path) = match rest.split_once('/') {
            Some((h, p)) => (h, p),
            None => (rest, ""),
        };
        if hosts.is_empty() || (topics_required && path.is_empty()) || (!topics_required && !path.is_empty())
        {
            return Err(KafkaAddressError::Shape(s.to_owned()));
        }
        for broker in hosts.split(',') {
            let ok = broker
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(KafkaAddressError::Broker(broker.to_owned()));
            }
        }
        let mut topics = Vec::new();
        if !path.is_empty() {
            for topic in path.split(',') {
                if !valid_topic(topic) {
                    return Err(KafkaAddressError::Topic(topic.to_owned()));
                }
                if !topics.iter().any(|t| t == topic) {
                    topics.push(topic.to_owned());
                }
            }
        }
        Ok(KafkaAddress { brokers: hosts.to_owned(), topics })
    }
}

/// Kafka's own rule for topic names.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let a = KafkaAddress::parse("kafka://a:9092,b:9093/t1,t2,t1", true).unwrap();
        assert_eq!(a.brokers, "a:9092,b:9093");
        assert_eq!(a.topics, vec!["t1", "t2"]);
        let sink = KafkaAddress::parse("kafka://127.0.0.1:9092", false).unwrap();
        assert!(sink.topics.is_empty());
        assert!(matches!(KafkaAddress::parse("kafka://a:9092", true), Err(KafkaAddressError::Shape(_))));
        assert!(matches!(KafkaAddress::parse("kafka://a:9092/t", false), Err(KafkaAddressError::Shape(_))));
        assert!(matches!(KafkaAddress::parse("kafka://a/t", true), Err(KafkaAddressError::Broker(_))));
        assert!(matches!(KafkaAddress::parse("kafka://a:0/t", true), Err(KafkaAddressError::Broker(_))));
        assert!(matches!(
            KafkaAddress::parse("kafka://a:1/bad topic", true),
            Err(KafkaAddressError::Topic(_))
        ));
        assert!(matches!(KafkaAddress::parse("http://a:1/t", true), Err(KafkaAddressError::Shape(_))));
    }
}
