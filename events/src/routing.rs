//! Which worker owns a key: the one rule that the exchanges, the sources that pre-route their
//! records, and checkpoint restore all follow, so that they agree at any number of workers.

/// A key's route: a fixed hash (xxh3, its low 32 bits), so every process of a cluster agrees.
/// 32 bits so that a record can carry its route in padding ([`crate::Accepted::route`]).
pub fn key_route(key: &str) -> u64 {
    u64::from(xxhash_rust::xxh3::xxh3_64(key.as_bytes()) as u32)
}

/// The worker of `peers` that owns a key hashing to `hash`: timely's exchange rule (a mask
/// for a power of two, otherwise the remainder; both are the remainder).
pub fn owner(hash: u64, peers: usize) -> usize {
    (hash % peers.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_timely_s_mask_for_powers_of_two() {
        for hash in [0u64, 1, 7, 0xdead_beef, u64::MAX] {
            for peers in [1usize, 2, 4, 8] {
                assert_eq!(owner(hash, peers), (hash & (peers as u64 - 1)) as usize);
            }
            assert!(owner(hash, 3) < 3);
        }
        assert_eq!(owner(5, 0), 0, "no peers counts as one");
    }

    #[test]
    fn a_record_carries_its_sensor_s_route() {
        let reading = crate::Reading {
            sensor_id: "line1-pump-00/temperature".into(),
            asset_id: "line1-pump-00".into(),
            ts: 0,
            value: 1.0,
            unit: None,
        };
        let accepted = crate::Accepted::new(reading, Default::default(), Default::default(), false);
        assert_eq!(accepted.route(), key_route("line1-pump-00/temperature"));
        assert_ne!(key_route("a"), key_route("b"));
        assert!(key_route("line1-pump-00/temperature") <= u64::from(u32::MAX));
        assert_eq!(std::mem::size_of::<crate::Accepted>(), 128, "the route fits in padding");
    }
}
