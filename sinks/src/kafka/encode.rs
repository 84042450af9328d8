//! Kafka records for sink events: anomalies go to the notification topic keyed by asset, with
//! their `event_id` in a header; dead letters go to the dead-letter topic as their raw bytes,
//! with the reason and the source location in headers. Drift events go to the notification
//! topic too (`kind` header `drift`, keyed by asset); model versions (the retrainer's
//! model-updated events) to the control topic (`kind` header `model_version`, keyed by model).

use millstream_events::{Anomaly, DeadLetter, EventTime, SinkEvent, SourceLocation};

/// Which of the sink's topics a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRole {
    Notifications,
    DeadLetters,
    /// Model-updated events.
    Control,
}

/// One record to produce, owned, so that it can be sent again after a failed delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub role: TopicRole,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// The timely time of the event; its capability is held until the delivery is acknowledged.
    pub time: EventTime,
}

/// The record for `event`, or `None` for events the Kafka sink does not carry (readings and
/// aggregates).
pub fn encode(event: &SinkEvent, time: EventTime) -> Option<Outgoing> {
    match event {
        SinkEvent::Anomaly(a) => Some(notification(a, time)),
        SinkEvent::DeadLetter(d) => Some(dead_letter(d, time)),
        SinkEvent::Drift(d) => Some(tagged(
            TopicRole::Notifications,
            d.asset_id.to_string(),
            d.as_ref(),
            &d.event_id,
            "drift",
            time,
        )),
        SinkEvent::ModelVersion(m) => {
            let id = format!("{}@v{}", m.model, m.version);
            Some(tagged(TopicRole::Control, m.model.clone(), m.as_ref(), &id, "model_version", time))
        }
        SinkEvent::Reading(_) | SinkEvent::MinuteAggregate(_) | SinkEvent::AssetScore(_) => None,
    }
}

/// A record of another kind than an anomaly: its JSON, keyed, with its id and kind.
fn tagged<T: serde::Serialize>(
    role: TopicRole,
    key: String,
    value: &T,
    id: &str,
    kind: &'static str,
    time: EventTime,
) -> Outgoing {
    Outgoing {
        role,
        key: Some(key),
        payload: serde_json::to_vec(value).expect("notifications always serialize"),
        headers: vec![("event_id", id.as_bytes().to_vec()), ("kind", kind.as_bytes().to_vec())],
        time,
    }
}

/// An anomaly as the contract's JSON, keyed by `asset_id`.
pub fn notification(anomaly: &Anomaly, time: EventTime) -> Outgoing {
    Outgoing {
        role: TopicRole::Notifications,
        key: Some(anomaly.asset_id.clone()),
        payload: serde_json::to_vec(anomaly).expect("anomalies always serialize"),
        headers: vec![("event_id", anomaly.event_id.as_bytes().to_vec()), ("kind", b"anomaly".to_vec())],
        time,
    }
}

/// A dead letter: the refused record's bytes, and why and where in headers.
pub fn dead_letter(dead: &DeadLetter, time: EventTime) -> Outgoing {
    let mut headers = vec![
        ("reason", dead.reason.as_str().as_bytes().to_vec()),
        ("detail", dead.detail.as_bytes().to_vec()),
        ("event_id", dead.id().into_bytes()),
    ];
    match &dead.source {
        SourceLocation::Kafka { topic, partition, offset } => {
            headers.push(("source_topic", topic.as_bytes().to_vec()));
            headers.push(("source_partition", partition.to_string().into_bytes()));
            headers.push(("source_offset", offset.to_string().into_bytes()));
        }
        SourceLocation::File { file, line } => {
            headers.push(("source_file", file.as_bytes().to_vec()));
            headers.push(("source_line", line.to_string().into_bytes()));
        }
        SourceLocation::Simulator { simulator, seq } => {
            headers.push(("source_simulator", simulator.as_bytes().to_vec()));
            headers.push(("source_seq", seq.to_string().into_bytes()));
        }
    }
    Outgoing { role: TopicRole::DeadLetters, key: None, payload: dead.raw.as_bytes().to_vec(), headers, time }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millstream_events::Reason;

    #[test]
    fn dead_letters_carry_their_source_offset() {
        let dead = DeadLetter {
            reason: Reason::MalformedJson,
            detail: "expected value".into(),
            raw: "{oops".into(),
            source: SourceLocation::Kafka { topic: "readings".into(), partition: 2, offset: 41 },
        };
        let out = dead_letter(&dead, 7);
        assert_eq!(out.payload, b"{oops");
        let header = |k: &str| out.headers.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(header("reason").unwrap(), b"malformed_json");
        assert_eq!(header("source_topic").unwrap(), b"readings");
        assert_eq!(header("source_partition").unwrap(), b"2");
        assert_eq!(header("source_offset").unwrap(), b"41");
        assert_eq!(out.role, TopicRole::DeadLetters);
    }
}
