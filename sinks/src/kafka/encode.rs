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

/// librdkafka's default `message.max.bytes`: the largest record a producer sends unless its
/// configuration raises it.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;
/// What librdkafka adds to payload, key and headers when it checks `message.max.bytes`: 36
/// bytes of worst-case record overhead (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`), plus a margin.
const RECORD_OVERHEAD_BYTES: usize = 36 + 64;
/// The varints around each header's name and value, at most.
const HEADER_OVERHEAD_BYTES: usize = 10;
/// The longest `detail` header; a longer detail is cut (the dead letter's other sinks keep it).
const MAX_DETAIL_BYTES: usize = 4096;

/// The record for `event`, or `None` for events the Kafka sink does not carry (readings and
/// aggregates). `max_record_bytes` is the producer's `message.max.bytes`: a dead letter whose
/// raw bytes do not fit is cut to fit (see [`dead_letter`]).
pub fn encode(event: &SinkEvent, time: EventTime, max_record_bytes: usize) -> Option<Outgoing> {
    match event {
        SinkEvent::Anomaly(a) => Some(notification(a, time)),
        SinkEvent::DeadLetter(d) => Some(dead_letter(d, time, max_record_bytes)),
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
///
/// A record refused as `too_large` can be bigger than what the producer may send, and a record
/// just under the limit no longer fits once the headers are added. Such a payload is cut, at a
/// character boundary, to fit `max_record_bytes`, and two headers say so: `raw_truncated`
/// (`true`) and `raw_bytes` (the full length). The dead letter is still delivered, with its
/// reason and source, which locate the original record; the file and PostgreSQL sinks keep the
/// raw text whole.
pub fn dead_letter(dead: &DeadLetter, time: EventTime, max_record_bytes: usize) -> Outgoing {
    let mut headers = vec![
        ("reason", dead.reason.as_str().as_bytes().to_vec()),
        ("detail", prefix_at_char_boundary(&dead.detail, MAX_DETAIL_BYTES).as_bytes().to_vec()),
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
    // Room for the two truncation headers, whether or not they are needed.
    let truncation_headers = 2 * HEADER_OVERHEAD_BYTES + "raw_truncated".len() + 4 + "raw_bytes".len() + 20;
    let header_bytes: usize =
        headers.iter().map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD_BYTES).sum::<usize>()
            + truncation_headers;
    let room = max_record_bytes.saturating_sub(RECORD_OVERHEAD_BYTES + header_bytes);
    let payload = prefix_at_char_boundary(&dead.raw, room);
    if payload.len() < dead.raw.len() {
        headers.push(("raw_truncated", b"true".to_vec()));
        headers.push(("raw_bytes", dead.raw.len().to_string().into_bytes()));
    }
    Outgoing { role: TopicRole::DeadLetters, key: None, payload: payload.as_bytes().to_vec(), headers, time }
}

/// The longest prefix of `text` of at most `max` bytes that ends at a character boundary.
fn prefix_at_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
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
        let out = dead_letter(&dead, 7, DEFAULT_MAX_RECORD_BYTES);
        assert_eq!(out.payload, b"{oops");
        assert!(out.headers.iter().all(|(k, _)| *k != "raw_truncated"));
        let header = |k: &str| out.headers.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(header("reason").unwrap(), b"malformed_json");
        assert_eq!(header("source_topic").unwrap(), b"readings");
        assert_eq!(header("source_partition").unwrap(), b"2");
        assert_eq!(header("source_offset").unwrap(), b"41");
        assert_eq!(out.role, TopicRole::DeadLetters);
    }

    /// Found by the hostile-input flood: a dead letter whose raw bytes and headers passed
    /// `message.max.bytes` stopped the sink. It is now cut to fit, and says so.
    #[test]
    fn oversized_dead_letters_are_cut_to_fit_the_producer_limit() {
        let limit = 10_000;
        for raw in ["x".repeat(20_000), "é".repeat(9_000), "x".repeat(limit - 200)] {
            let dead = DeadLetter {
                reason: Reason::TooLarge,
                detail: "d".repeat(10_000),
                raw: raw.clone(),
                source: SourceLocation::Kafka { topic: "readings".into(), partition: 0, offset: 9 },
            };
            let out = dead_letter(&dead, 1, limit);
            let header_bytes: usize = out.headers.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
            assert!(out.payload.len() + header_bytes + 36 <= limit, "{} + {header_bytes}", out.payload.len());
            let text = std::str::from_utf8(&out.payload).expect("cut at a character boundary");
            assert!(raw.starts_with(text) && text.len() > limit / 2);
            let header = |k: &str| out.headers.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
            assert_eq!(header("raw_bytes"), Some(raw.len().to_string().into_bytes()));
            assert_eq!(header("raw_truncated").as_deref(), Some(&b"true"[..]));
            assert_eq!(header("detail").unwrap().len(), MAX_DETAIL_BYTES);
        }
    }
}
