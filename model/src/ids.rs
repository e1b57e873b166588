//! Time-ordered ids made without coordination.
//!
//! Layout of the 63 bits (the top bit stays 0 so ids fit `i64`/`BIGINT`):
//! 41 bits of milliseconds since [`EPOCH_MS`] (about 69 years), 10 bits of
//! node (instance and core: 1024 generators), 12 bits of sequence (4096 ids per
//! millisecond per node). When a millisecond's sequence runs out the generator
//! borrows the next millisecond rather than waiting, so ids stay unique and
//! ordered; they only run ahead of the wall clock under a sustained burst.

/// 2025-01-01T00:00:00Z in milliseconds since the Unix epoch.
pub const EPOCH_MS: u64 = 1_735_689_600_000;
pub const NODE_BITS: u32 = 10;
pub const SEQ_BITS: u32 = 12;
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;

/// One generator per core (it is `!Sync` by intent: no atomics on the path).
#[derive(Debug)]
pub struct IdGenerator {
    node: u64,
    last_ms: u64,
    seq: u64,
}

impl IdGenerator {
    /// `node` must be unique among all live generators (instance * cores + core).
    pub fn new(node: u16) -> Self {
        assert!(node <= MAX_NODE, "node {node} exceeds {MAX_NODE}");
        IdGenerator {
            node: u64::from(node),
            last_ms: 0,
            seq: 0,
        }
    }

    /// The next id for a wall-clock time of `now_ms` (Unix milliseconds).
    pub fn next_id(&mut self, now_ms: u64) -> u64 {
        let ms = now_ms.saturating_sub(EPOCH_MS);
        if ms > self.last_ms {
            self.last_ms = ms;
            self.seq = 0;
        } else {
            self.seq += 1;
            if self.seq >> SEQ_BITS != 0 {
                self.last_ms += 1;
                self.seq = 0;
            }
        }
        (self.last_ms << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | self.seq
    }
}

/// The Unix milliseconds an id was made at.
pub fn id_time_ms(id: u64) -> u64 {
    (id >> (NODE_BITS + SEQ_BITS)) + EPOCH_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_increasing_within_a_node() {
        let mut g = IdGenerator::new(3);
        let now = EPOCH_MS + 5_000;
        let mut last = 0;
        for _ in 0..10_000 {
            let id = g.next_id(now);
            assert!(id > last);
            last = id;
        }
        assert!(id_time_ms(last) >= now);
    }

    #[test]
    fn nodes_never_collide() {
        let now = EPOCH_MS + 1;
        let a = IdGenerator::new(1).next_id(now);
        let b = IdGenerator::new(2).next_id(now);
        assert_ne!(a, b);
        assert!(a < 1 << 63 && b < 1 << 63);
    }
}
