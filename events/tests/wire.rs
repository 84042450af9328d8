//! Every sink event survives bincode, the format timely exchanges data in between processes,
//! and keeps its JSON contract shape.

use millstream_events::{
    Anomaly, DeadLetter, DriftEvent, DriftStatistic, Episode, EpisodeState, Reason, Severity, SinkEvent,
    SourceLocation,
};

fn anomaly(episode: Option<Episode>) -> Anomaly {
    Anomaly {
        event_id: "e1".into(),
        sensor_id: "pump-1/flow".into(),
        asset_id: "pump-1".into(),
        ts: 1_700_000_000_123,
        value: 4.5,
        score: 0.91,
        severity: Severity::High,
        detector: "robust_z".into(),
        model_version: None,
        explanation: Some("why".into()),
        episode,
    }
}

fn events() -> Vec<SinkEvent> {
    let episode = Episode {
        episode_id: "e0".into(),
        state: EpisodeState::Closed,
        started_at: 1_700_000_000_000,
        ended_at: Some(1_700_000_000_500),
        peak_score: 0.97,
    };
    vec![
        SinkEvent::Anomaly(Box::new(anomaly(None))),
        SinkEvent::Anomaly(Box::new(anomaly(Some(episode)))),
        SinkEvent::DeadLetter(DeadLetter {
            reason: Reason::MalformedJson,
            detail: "expected value".into(),
            raw: "{oops".into(),
            source: SourceLocation::File { file: "in.jsonl".into(), line: 7 },
        }),
        SinkEvent::DeadLetter(DeadLetter {
            reason: Reason::Duplicate,
            detail: "seen".into(),
            raw: "{}".into(),
            source: SourceLocation::Kafka { topic: "t".into(), partition: 2, offset: 99 },
        }),
        SinkEvent::Drift(Box::new(
            DriftEvent {
                event_id: String::new(),
                asset_id: "pump-1".into(),
                sensor_id: None,
                feature: Some("flow:ma15".into()),
                statistic: DriftStatistic::Psi,
                value: 0.4,
                threshold: 0.25,
                window_start: 1,
                window_end: 600_001,
                count: 600,
                model_version: "pump@v1".into(),
            }
            .with_id(),
        )),
    ]
}

#[test]
fn sink_events_round_trip_through_bincode() {
    for event in events() {
        let bytes = bincode::serialize(&event).expect("serializes");
        let back: SinkEvent = bincode::deserialize(&bytes).expect("deserializes");
        assert_eq!(back, event);
    }
}

#[test]
fn json_keeps_the_contract_shape() {
    let json = serde_json::to_value(anomaly(None)).unwrap();
    assert!(json.get("episode").is_none() && json.get("model_version").is_none(), "{json}");
    assert_eq!(json["ts"], "2023-11-14T22:13:20.123Z");
    let source = serde_json::to_value(SourceLocation::File { file: "a".into(), line: 1 }).unwrap();
    assert_eq!(source, serde_json::json!({"file": "a", "line": 1}));
}
