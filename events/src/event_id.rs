//! Deterministic event ids.
//!
//! An id is a hash of what makes an event itself (kind, detector, subject, event time), so a
//! replay after a crash produces the same id and idempotent sinks can drop the repeat.

use crate::EventTime;

/// 128-bit XXH3 of the length-prefixed parts, as 32 lowercase hex digits.
///
/// Length prefixes keep `("ab", "c")` and `("a", "bc")` apart.
pub fn event_id(kind: &str, detector: &str, subject: &str, ts: EventTime) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    for part in [kind.as_bytes(), detector.as_bytes(), subject.as_bytes()] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.update(&ts.to_le_bytes());
    format!("{:032x}", hasher.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = event_id("anomaly", "robust_z", "pump/vib", 1);
        assert_eq!(a, event_id("anomaly", "robust_z", "pump/vib", 1));
        assert_eq!(a.len(), 32);
        assert_ne!(a, event_id("anomaly", "robust_z", "pump/vib", 2));
        assert_ne!(event_id("k", "ab", "c", 0), event_id("k", "a", "bc", 0));
    }
}
