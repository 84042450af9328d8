//! Rendering of sink events as the JSON lines of the `jsonl:` and `stdout` sinks. Runs on the
//! worker that produced the event, so rendering is parallel; only text crosses to the writer.

use millstream_events::{OutputKind, OutputLine, ScoredReading, SinkEvent};

/// The line for `event`, or `None` when the file sinks do not show it (scores without
/// `--emit-scores`).
pub fn render(event: &SinkEvent, emit_scores: bool) -> Option<OutputLine> {
    match event {
        SinkEvent::Reading(r) => emit_scores.then(|| {
            let scored = ScoredReading {
                sensor_id: r.sensor_id.clone(),
                ts: r.ts,
                value: r.value,
                score: r.score,
                late: r.late,
                flags: match r.quality {
                    0 => Vec::new(),
                    bits => millstream_operators::validate::QualityFlags::from_bits(bits)
                        .names()
                        .map(str::to_owned)
                        .collect(),
                },
            };
            OutputLine { kind: OutputKind::Score, json: to_json(&scored) }
        }),
        SinkEvent::Anomaly(a) => Some(OutputLine { kind: OutputKind::Anomaly, json: to_json(a) }),
        SinkEvent::DeadLetter(d) => Some(OutputLine { kind: OutputKind::DeadLetter, json: to_json(d) }),
        SinkEvent::MinuteAggregate(_) => None,
        SinkEvent::AssetScore(s) => {
            emit_scores.then(|| OutputLine { kind: OutputKind::AssetScore, json: to_json(s) })
        }
        SinkEvent::Drift(d) => Some(OutputLine { kind: OutputKind::Drift, json: to_json(d) }),
        SinkEvent::ModelVersion(m) => Some(OutputLine { kind: OutputKind::ModelVersion, json: to_json(m) }),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("output records always serialize")
}
