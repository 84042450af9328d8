//! Checkpoints: the state a stateful component of one worker hands over at event-time
//! boundaries, to be committed by that worker's PostgreSQL sink in the same transaction as its
//! rows, and restored (re-partitioned by key) when a run starts.
//!
//! Boundaries are the multiples of the checkpoint interval. The state of a component *at*
//! boundary `B` is what it holds once it has applied exactly the inputs of times before `B`:
//! nothing of `B` or later. Several boundaries can pass with nothing applied in between (a
//! quiet stretch, the jump of the first frontier), so a component registers one [`Part`] for a
//! whole range of boundaries it did not change across.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::EventTime;

/// Version of the state formats: a restore refuses parts of another version.
pub const FORMAT: u16 = 1;

/// Encodes a component's state with the format version in front.
pub fn encode<T: serde::Serialize>(state: &T) -> Vec<u8> {
    let mut out = FORMAT.to_le_bytes().to_vec();
    bincode::serialize_into(&mut out, state).expect("checkpoint state serialises");
    out
}

/// Decodes what [`encode`] wrote; a part of another format version is an error that says so.
pub fn decode<T: serde::de::DeserializeOwned>(component: &str, bytes: &[u8]) -> Result<T, String> {
    let Some((version, body)) = bytes.split_at_checked(2) else {
        return Err(format!("checkpoint part {component}: empty"));
    };
    let version = u16::from_le_bytes([version[0], version[1]]);
    if version != FORMAT {
        return Err(format!(
            "checkpoint part {component} has format {version}; this build reads format {FORMAT}"
        ));
    }
    bincode::deserialize(body).map_err(|e| format!("checkpoint part {component}: {e}"))
}

/// The boundary at or before `t`.
pub fn boundary_at_or_before(t: EventTime, interval_ms: u64) -> EventTime {
    t - t % interval_ms
}

/// The first boundary after `t`.
pub fn boundary_after(t: EventTime, interval_ms: u64) -> EventTime {
    boundary_at_or_before(t, interval_ms).saturating_add(interval_ms)
}

/// The last boundary a frontier at `f` has passed: every time before it is complete, so
/// every component has registered its state for it. `None` while no boundary has passed.
pub fn last_passed(f: EventTime, interval_ms: u64) -> Option<EventTime> {
    (f > 0).then(|| boundary_at_or_before(f - 1, interval_ms)).filter(|b| *b > 0)
}

/// One component's serialised state, valid at every boundary in `from..=to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub component: &'static str,
    pub from: EventTime,
    pub to: EventTime,
    pub state: Vec<u8>,
}

/// The parts that the components of one worker registered and that its sink has not committed
/// yet. Worker-local: a worker is one thread, so it is shared by `Rc`.
#[derive(Debug, Default)]
pub struct Registry {
    parts: Vec<Part>,
}

impl Registry {
    pub fn shared() -> SharedRegistry {
        Rc::new(RefCell::new(Registry::default()))
    }

    pub fn register(&mut self, part: Part) {
        self.parts.push(part);
    }

    /// Everything registered so far, for the sink's next transaction.
    pub fn take(&mut self) -> Vec<Part> {
        std::mem::take(&mut self.parts)
    }
}

pub type SharedRegistry = Rc<RefCell<Registry>>;

/// What a component of one worker needs to checkpoint: the run's settings and restored state,
/// and the worker's registry.
pub type WorkerCheckpoints = (std::sync::Arc<Checkpointing>, SharedRegistry);

/// The checkpoint a run starts from: the boundary, and per component the states that every
/// worker of the run that wrote it had there (each restoring worker keeps its own keys).
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub boundary: EventTime,
    pub generation: i64,
    pub parts: HashMap<String, Vec<Vec<u8>>>,
}

impl Restored {
    /// The states of `component` at the boundary, from every old worker that had one.
    pub fn states(&self, component: &str) -> &[Vec<u8>] {
        self.parts.get(component).map_or(&[], Vec::as_slice)
    }
}

/// How a run checkpoints: the interval, the generation its rows are written under (one more
/// than any before it), and what it restored.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    pub interval_ms: u64,
    pub generation: i64,
    pub restored: Option<Restored>,
}

impl Checkpointing {
    /// The boundary restored, if any: a component starts registering there.
    pub fn restored_boundary(&self) -> Option<EventTime> {
        self.restored.as_ref().map(|r| r.boundary)
    }
}

pub use crate::routing::owner;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries() {
        assert_eq!(boundary_at_or_before(12_345, 1_000), 12_000);
        assert_eq!(boundary_after(12_000, 1_000), 13_000);
        assert_eq!(boundary_after(12_999, 1_000), 13_000);
        assert_eq!(last_passed(12_000, 1_000), Some(11_000), "a frontier at B has not passed B");
        assert_eq!(last_passed(12_001, 1_000), Some(12_000));
        assert_eq!(last_passed(0, 1_000), None);
        assert_eq!(last_passed(999, 1_000), None);
    }

    #[test]
    fn owner_is_the_exchange_rule() {
        for hash in [0u64, 1, 7, u64::MAX, 0xdead_beef] {
            for peers in 1..9usize {
                let expected =
                    if peers.is_power_of_two() { hash & (peers as u64 - 1) } else { hash % peers as u64 };
                assert_eq!(owner(hash, peers) as u64, expected);
            }
        }
    }
}
