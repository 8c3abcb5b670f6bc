//! A set of 128-bit click ids with an expiry bucket each, built for dedup's churn.
//!
//! Why not hashbrown: expiry removes ids in bulk all the time, hashbrown leaves tombstones that
//! eat its growth room, and its power-of-two sizing with a 7/8 maximum load puts steady state at
//! 34–93 bytes per id (measured, reports/2026-11-28-rust-svc/criterion-hot-path.md). No
//! well-kept crate offers an exact set with bulk expiry and a chosen load.
//!
//! Layout: cache-line-sized *lines* of three 20-byte slots (16-byte id, 4-byte bucket). Every id
//! has two candidate lines (two halves of one 64-bit hash, mapped with a multiply-shift, so the
//! line count need not be a power of two and is sized to the expected ids). A lookup reads at
//! most two cache lines. An insert into two full lines moves residents to their other line
//! (cuckoo), a bounded number of times, then grows the table by half. Removal zeroes a slot:
//! there are no tombstones. The all-zero id marks an empty slot, so id 0 is kept on the side.
//!
//! **Invariant:** every operation depends only on the ids and the operations before it (fixed
//! hash seed, deterministic kick order), so a replay builds the same table.

use std::hash::BuildHasher;

const SLOTS: usize = 3;
/// Lines are sized so that `ids_expected` fills them to this load.
const TARGET_LOAD: f64 = 0.9;
const KICKS_MAX: usize = 256;

#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Line {
    ids: [[u8; 16]; SLOTS],
    buckets: [u32; SLOTS],
}

const _: () = assert!(std::mem::size_of::<Line>() == 64);
const EMPTY: [u8; 16] = [0; 16];

pub struct IdTable {
    lines: Vec<Line>,
    len: usize,
    /// The bucket of id 0, which cannot live in a slot.
    zero: Option<u32>,
    hasher: foldhash::fast::FixedState,
}

impl IdTable {
    pub fn with_capacity(ids: usize) -> IdTable {
        IdTable {
            lines: vec![Line::default(); lines_for(ids)],
            len: 0,
            zero: None,
            hasher: foldhash::fast::FixedState::with_seed(0x1d7a_b1e5),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn allocated_bytes(&self) -> usize {
        self.lines.len() * std::mem::size_of::<Line>()
    }

    fn candidates(&self, id: u128) -> (usize, usize) {
        candidate_lines(&self.hasher, id, self.lines.len())
    }

    pub fn contains(&self, id: u128) -> bool {
        if id == 0 {
            return self.zero.is_some();
        }
        let bytes = id.to_le_bytes();
        let (first, second) = self.candidates(id);
        self.lines[first].ids.contains(&bytes) || self.lines[second].ids.contains(&bytes)
    }

    /// Inserts an id that is not in the table.
    pub fn insert_new(&mut self, id: u128, bucket: u32) {
        debug_assert!(!self.contains(id), "insert_new of a present id");
        self.len += 1;
        if id == 0 {
            self.zero = Some(bucket);
            return;
        }
        let mut homeless = (id.to_le_bytes(), bucket);
        loop {
            match self.place(homeless) {
                None => return,
                Some(left_over) => {
                    homeless = left_over;
                    self.grow();
                }
            }
        }
    }

    /// Places an entry, moving residents between their two lines. Returns the entry left
    /// without a slot when the kicks run out.
    fn place(&mut self, entry: ([u8; 16], u32)) -> Option<([u8; 16], u32)> {
        let (mut id, mut bucket) = entry;
        let (first, second) = self.candidates(u128::from_le_bytes(id));
        if self.put_in_empty(first, id, bucket) || self.put_in_empty(second, id, bucket) {
            return None;
        }
        let mut line = first;
        for kick in 0..KICKS_MAX {
            let slot = kick % SLOTS;
            std::mem::swap(&mut self.lines[line].ids[slot], &mut id);
            std::mem::swap(&mut self.lines[line].buckets[slot], &mut bucket);
            let (a, b) = self.candidates(u128::from_le_bytes(id));
            line = if a == line { b } else { a };
            if self.put_in_empty(line, id, bucket) {
                return None;
            }
        }
        Some((id, bucket))
    }

    fn put_in_empty(&mut self, line: usize, id: [u8; 16], bucket: u32) -> bool {
        let line = &mut self.lines[line];
        match line.ids.iter().position(|slot| *slot == EMPTY) {
            Some(slot) => {
                line.ids[slot] = id;
                line.buckets[slot] = bucket;
                true
            }
            None => false,
        }
    }

    /// Grows by half and re-places everything.
    fn grow(&mut self) {
        let old = std::mem::take(&mut self.lines);
        let mut count = old.len() + old.len() / 2 + 1;
        'retry: loop {
            self.lines = vec![Line::default(); count];
            for line in &old {
                for slot in 0..SLOTS {
                    if line.ids[slot] != EMPTY
                        && self.place((line.ids[slot], line.buckets[slot])).is_some()
                    {
                        count += count / 2 + 1;
                        continue 'retry;
                    }
                }
            }
            return;
        }
    }

    /// Removes every id whose bucket is below `cutoff`. Returns the smallest bucket left.
    pub fn remove_below(&mut self, cutoff: u32) -> u32 {
        let mut min_bucket = u32::MAX;
        let mut removed = 0;
        for line in &mut self.lines {
            for slot in 0..SLOTS {
                if line.ids[slot] == EMPTY {
                    continue;
                }
                if line.buckets[slot] < cutoff {
                    line.ids[slot] = EMPTY;
                    removed += 1;
                } else {
                    min_bucket = min_bucket.min(line.buckets[slot]);
                }
            }
        }
        if let Some(bucket) = self.zero {
            if bucket < cutoff {
                self.zero = None;
                removed += 1;
            } else {
                min_bucket = min_bucket.min(bucket);
            }
        }
        self.len -= removed;
        min_bucket
    }

    /// The newest bucket held, for eviction at the bound.
    pub fn max_bucket(&self) -> Option<u32> {
        let slots = self.lines.iter().flat_map(|line| {
            (0..SLOTS)
                .filter(|slot| line.ids[*slot] != EMPTY)
                .map(|slot| line.buckets[slot])
        });
        slots.chain(self.zero).max()
    }

    /// Every (id, bucket), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u128, u32)> + '_ {
        let slots = self.lines.iter().flat_map(|line| {
            (0..SLOTS)
                .filter(|slot| line.ids[*slot] != EMPTY)
                .map(|slot| (u128::from_le_bytes(line.ids[slot]), line.buckets[slot]))
        });
        slots.chain(self.zero.map(|bucket| (0, bucket)))
    }
}

fn lines_for(ids: usize) -> usize {
    ((ids.max(SLOTS) as f64 / (SLOTS as f64 * TARGET_LOAD)).ceil() as usize).max(2)
}

/// Two lines from the two halves of one hash, each mapped onto `lines` by multiply-shift.
fn candidate_lines(hasher: &foldhash::fast::FixedState, id: u128, lines: usize) -> (usize, usize) {
    let hash = hasher.hash_one(id);
    let scale = |half: u64| ((u128::from(half) * lines as u128) >> 32) as usize;
    (scale(hash & 0xffff_ffff), scale(hash >> 32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_full_table_costs_under_24_bytes_per_id() {
        let ids = 1_000_000;
        let mut table = IdTable::with_capacity(ids);
        for id in 1..=ids as u128 {
            table.insert_new(
                id.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
                1,
            );
        }
        assert_eq!(table.len(), ids);
        let bytes_per_id = table.allocated_bytes() as f64 / ids as f64;
        assert!(bytes_per_id <= 24.0, "{bytes_per_id} bytes per id");
    }

    proptest! {
        /// Against a BTreeMap: inserts, contains, bulk removal, growth from a tiny start.
        #[test]
        fn matches_a_map(ops in proptest::collection::vec((0u128..300, 0u32..50, any::<bool>()), 1..2000)) {
            let mut table = IdTable::with_capacity(4);
            let mut model: BTreeMap<u128, u32> = BTreeMap::new();
            for (id, bucket, expire) in ops {
                if expire {
                    let min = table.remove_below(bucket);
                    model.retain(|_, b| *b >= bucket);
                    prop_assert_eq!(min, model.values().copied().min().unwrap_or(u32::MAX));
                } else if let std::collections::btree_map::Entry::Vacant(slot) = model.entry(id) {
                    prop_assert!(!table.contains(id));
                    table.insert_new(id, bucket);
                    slot.insert(bucket);
                } else {
                    prop_assert!(table.contains(id));
                }
                prop_assert_eq!(table.len(), model.len());
            }
            let mut all: Vec<(u128, u32)> = table.iter().collect();
            all.sort_unstable();
            prop_assert_eq!(all, model.into_iter().collect::<Vec<_>>());
        }
    }
}
