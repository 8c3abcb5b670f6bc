//! The fencing rule of the real-time store, in one place.
//!
//! Every stored series carries the (generation, epoch) that wrote it. A write applies only if its
//! fence is at least the stored one, and only if its generation is the partition's current
//! generation. Replaying an epoch is therefore harmless (same values, same or newer fence), and a
//! zombie worker whose partition was claimed by a newer generation is rejected everywhere.
//! The embedded store, the sim store node and the Redis Lua script all implement exactly this.

use adclick_core::ids::{Epoch, Generation};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fence {
    pub generation: Generation,
    pub epoch: Epoch,
}

/// Whether a write fenced by `incoming` may replace a value fenced by `stored`.
pub fn may_overwrite(stored: Option<Fence>, incoming: Fence) -> bool {
    stored.is_none_or(|stored| incoming >= stored)
}

/// Whether a writer of `generation` still owns a partition whose current generation is `current`.
pub fn owns_partition(current: Generation, generation: Generation) -> bool {
    generation == current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(generation: u64, epoch: u64) -> Fence {
        Fence {
            generation: Generation(generation),
            epoch: Epoch(epoch),
        }
    }

    #[test]
    fn newer_or_equal_fences_win_and_older_ones_lose() {
        assert!(may_overwrite(None, fence(1, 1)));
        assert!(
            may_overwrite(Some(fence(1, 4)), fence(1, 4)),
            "replaying an epoch is harmless"
        );
        assert!(
            may_overwrite(Some(fence(1, 4)), fence(2, 4)),
            "a new owner re-commits"
        );
        assert!(
            !may_overwrite(Some(fence(2, 4)), fence(1, 9)),
            "a zombie is rejected"
        );
        assert!(!may_overwrite(Some(fence(1, 5)), fence(1, 4)));
    }
}
