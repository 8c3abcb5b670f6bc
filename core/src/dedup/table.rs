//! The dedup set's storage: an open-addressing table of 128-bit ids with linear probing, a
//! fingerprint byte per slot, and no tombstones.
//!
//! Why not hashbrown: expiry removes a whole time bucket at a time. hashbrown leaves a tombstone
//! per removed id, tombstones use up the free slots, and the table then doubles although the
//! number of live ids never grew (measured 35–102 bytes per id in steady state, and a 1.45 s
//! stall at the doubling; reports/2026-11-28-rust-svc/criterion-hot-path.md). Here a removal pass
//! compacts every probe run in the same sequential sweep, so a steady set stays at its pre-sized
//! capacity forever.
//!
//! Layout: two arrays indexed by slot, 18 bytes a slot in all.
//! - `control`: two bytes a slot. The fingerprint: 0 for an empty slot, else one byte of the
//!   id's hash (never 0). A lookup scans fingerprints from the home slot to the first empty one;
//!   they are 1/9 of the table, so they mostly stay in the CPU's caches, and a fresh id (the
//!   common case) is usually decided there without touching `ids` at all, as a swiss table's
//!   control bytes do. And the tag: the id's expiry bucket minus the caller's base bucket. It
//!   shares the fingerprint's cache line, so an insert writes two lines, not three, and the
//!   expiry sweep reads only `control`, plus the ids it moves.
//! - `ids`: the full 128-bit click id, so there are no false duplicates.
//!
//! **Invariant (linear probing):** for every stored id, every slot from its home slot up to its
//! own slot (cyclically) is occupied. `remove_where` keeps it by moving each survivor to the
//! first free slot of its probe path.

use std::hash::BuildHasher;

use crate::probing::{self, ProbeSlots, advise_huge_pages, fingerprint, prefetch_line};

/// Bytes per slot: fingerprint, tag and id.
const SLOT_BYTES: usize = 1 + 1 + 16;

/// The highest load the table runs at before it grows. The fingerprint run an unsuccessful
/// lookup scans is 1/2 (1 + 1/(1 - load)^2) slots on average: 23 at 0.85, 72 at 0.92.
const LOAD_MAX: f64 = 0.92;
/// The load a table is pre-sized for: `with_capacity(n)` holds n ids at this load, 21.2 bytes
/// each.
pub(crate) const LOAD_TARGET: f64 = 0.85;

pub(crate) struct IdTable {
    /// Per slot: [fingerprint, tag].
    control: Vec<[u8; 2]>,
    ids: Vec<u128>,
    len: usize,
    /// The most ids the table holds before it grows: `LOAD_MAX` of its slots.
    len_max: usize,
    hasher: foldhash::fast::FixedState,
}

/// What `lookup` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Found,
    /// Absent; it would go to this slot.
    Vacant(usize),
}

/// What `find_or_insert` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    Found,
    Inserted,
}

impl IdTable {
    /// A table that holds `ids` at the target load without growing.
    pub(crate) fn with_capacity(ids: usize) -> IdTable {
        let slots = ((ids.max(1) as f64 / LOAD_TARGET).ceil() as usize).max(16);
        // `vec!` of zeroes is a zeroed allocation: untouched pages cost nothing until used.
        let mut ids = vec![0u128; slots];
        advise_huge_pages(&mut ids);
        let mut control = vec![[0u8; 2]; slots];
        advise_huge_pages(&mut control);
        IdTable {
            control,
            ids,
            len: 0,
            len_max: (slots as f64 * LOAD_MAX) as usize,
            hasher: foldhash::fast::FixedState::with_seed(0x5eed_dedd),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn allocation_size(&self) -> usize {
        self.slots() * SLOT_BYTES
    }

    pub(crate) fn hash(&self, id: u128) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The home slot: the hash scaled onto the slot count (no power-of-two rounding, so the
    /// table is exactly as large as it was sized).
    fn home(&self, hash: u64) -> usize {
        probing::home(hash, self.slots())
    }

    fn next(&self, index: usize) -> usize {
        probing::next(index, self.slots())
    }

    /// Asks the CPU to start loading what a lookup and insert of `hash` will touch: the
    /// fingerprints from the home slot, and the ids where a fresh id will land (a few slots on).
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        let home = self.home(hash);
        prefetch_line(&self.control[home]);
        prefetch_line(&self.ids[(home + 2).min(self.slots() - 1)]);
    }

    /// Grows the table if one more id would take it past its highest load. Call before a
    /// `lookup` whose vacancy may be filled.
    pub(crate) fn reserve_one(&mut self) {
        if self.len + 1 > self.len_max {
            self.grow();
        }
    }

    /// Finds `id` (not 0), or the slot it would go to.
    #[inline]
    pub(crate) fn lookup(&self, hash: u64, id: u128) -> Lookup {
        let wanted = fingerprint(hash);
        let mut index = self.home(hash);
        loop {
            let stored = self.control[index][0];
            if stored == 0 {
                return Lookup::Vacant(index);
            }
            if stored == wanted && self.ids[index] == id {
                return Lookup::Found;
            }
            index = self.next(index);
        }
    }

    /// Stores `id` in the slot a `lookup` of the same `hash` returned, with nothing changed in
    /// between.
    #[inline]
    pub(crate) fn insert_at(&mut self, vacant: usize, hash: u64, id: u128, tag: u8) {
        debug_assert!(self.control[vacant][0] == 0 && id != 0 && self.len < self.len_max);
        self.control[vacant] = [fingerprint(hash), tag];
        self.ids[vacant] = id;
        self.len += 1;
    }

    /// Looks `id` (not 0) up and, when absent, stores it with `tag`.
    pub(crate) fn find_or_insert(&mut self, hash: u64, id: u128, tag: u8) -> Probe {
        self.reserve_one();
        match self.lookup(hash, id) {
            Lookup::Found => Probe::Found,
            Lookup::Vacant(index) => {
                self.insert_at(index, hash, id, tag);
                Probe::Inserted
            }
        }
    }

    /// Moves to a table 1.5 times as large. Only when the set outgrows its pre-size.
    fn grow(&mut self) {
        let mut larger = IdTable::with_capacity(self.slots() * 3 / 2);
        larger.hasher = self.hasher.clone();
        for (id, tag) in self.iter() {
            larger.find_or_insert(larger.hash(id), id, tag);
        }
        *self = larger;
    }

    /// Every stored (id, tag).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u128, u8)> + '_ {
        (0..self.slots())
            .filter(|&index| self.control[index][0] != 0)
            .map(|index| (self.ids[index], self.control[index][1]))
    }

    fn clear_slot(&mut self, index: usize) {
        self.control[index] = [0; 2];
        self.ids[index] = 0;
    }

    /// One sequential sweep (`probing::sweep`): removes every id whose tag `remove` selects,
    /// rewrites the tags of the others with `retag`, and leaves no tombstone.
    pub(crate) fn remove_where(
        &mut self,
        remove: impl Fn(u8) -> bool,
        mut retag: impl FnMut(u8) -> u8,
    ) {
        probing::sweep(self, |table, index| {
            let tag = table.control[index][1];
            if remove(tag) {
                table.clear_slot(index);
                table.len -= 1;
                return true;
            }
            let new_tag = retag(tag);
            if new_tag != tag {
                table.control[index][1] = new_tag;
            }
            false
        });
    }
}

impl ProbeSlots for IdTable {
    fn slots(&self) -> usize {
        self.ids.len()
    }

    fn is_vacant(&self, index: usize) -> bool {
        self.control[index][0] == 0
    }

    fn home_of(&self, index: usize) -> usize {
        self.home(self.hash(self.ids[index]))
    }

    fn move_slot(&mut self, from: usize, to: usize) {
        self.control[to] = self.control[from];
        self.ids[to] = self.ids[from];
        self.clear_slot(from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn id(n: u64) -> u128 {
        u128::from(n)
    }

    /// Checks the linear-probing invariant over the whole table.
    fn assert_probe_runs_intact(table: &IdTable) {
        for index in 0..table.slots() {
            if table.control[index][0] == 0 {
                continue;
            }
            let stored = table.ids[index];
            assert_eq!(table.control[index][0], fingerprint(table.hash(stored)));
            let mut at = table.home(table.hash(stored));
            while at != index {
                assert_ne!(
                    table.control[at][0], 0,
                    "a hole between an id's home and its slot"
                );
                at = table.next(at);
            }
        }
    }

    #[test]
    fn a_pre_sized_table_holds_its_ids_in_18_bytes_a_slot() {
        let mut table = IdTable::with_capacity(1000);
        for n in 1..=1000 {
            let hash = table.hash(id(n));
            assert_eq!(table.find_or_insert(hash, id(n), 0), Probe::Inserted);
        }
        assert_eq!(table.allocation_size(), 1177 * 18);
        assert!(table.allocation_size() as f64 / table.len() as f64 <= 21.2);
    }

    #[test]
    fn grows_past_its_pre_size_and_keeps_every_id() {
        let mut table = IdTable::with_capacity(10);
        for n in 1..=500 {
            let hash = table.hash(id(n));
            table.find_or_insert(hash, id(n), (n % 7) as u8);
        }
        assert_eq!(table.len(), 500);
        for n in 1..=500 {
            assert_eq!(table.lookup(table.hash(id(n)), id(n)), Lookup::Found);
        }
        assert_probe_runs_intact(&table);
    }

    proptest! {
        /// Against a map model, through inserts and removal sweeps, on a small table so probe
        /// runs are long and wrap around its end; the probing invariant is checked after every
        /// sweep.
        #[test]
        fn matches_a_map_model_through_sweeps(
            ops in proptest::collection::vec((1u64..300, 0u8..6, proptest::bool::weighted(0.05)), 1..600),
        ) {
            let mut table = IdTable::with_capacity(8);
            let mut model: BTreeMap<u128, u8> = BTreeMap::new();
            for (n, tag, sweep) in ops {
                if sweep {
                    table.remove_where(|t| t < tag, |t| t + 1);
                    model.retain(|_, t| *t >= tag);
                    model.values_mut().for_each(|t| *t += 1);
                    assert_probe_runs_intact(&table);
                } else {
                    let hash = table.hash(id(n));
                    let expected = if model.contains_key(&id(n)) { Probe::Found } else { Probe::Inserted };
                    model.entry(id(n)).or_insert(tag);
                    prop_assert_eq!(table.find_or_insert(hash, id(n), tag), expected);
                }
                prop_assert_eq!(table.len(), model.len());
            }
            let stored: BTreeMap<u128, u8> = table.iter().collect();
            prop_assert_eq!(stored, model);
        }
    }
}
