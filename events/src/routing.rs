//! Which worker owns a key: the one rule that the exchanges, the sources that pre-route their
//! records, and checkpoint restore all follow, so that they agree at any number of workers.

/// A key's route: a fixed hash (xxh3), so every process of a cluster agrees.
pub fn key_route(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
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
}
