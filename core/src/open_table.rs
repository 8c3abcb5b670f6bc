//! A small hash map for the counts tables (windows, hour rollups, the rate rule), on
//! `probing`: linear probing over a control byte per slot, bulk removal without tombstones, and
//! `prefetch` for callers that know their next keys.
//!
//! Why not hashbrown: the counts tables retire whole windows at barriers, and hashbrown's
//! tombstones then make them double in steady state, as they did the dedup table; and hashbrown
//! cannot start loading a key's slot ahead of time, which the per-event chain needs to overlap its
//! cache misses (reports/2026-11-28-rust-svc/dedup-table.md).
//!
//! Deterministic: the hasher has a fixed seed, and nothing outside the crate sees slot order.

use std::hash::{BuildHasher, Hash};

use crate::probing::{self, ProbeSlots, filled_on_huge_pages, fingerprint, prefetch_line};

/// The load the table grows at (doubling). Probe runs stay short below it.
const LOAD_MAX: f64 = 0.8;
const SLOTS_MIN: usize = 16;
/// How many entries from a key's home `prefetch` requests.
const PREFETCH_ENTRIES: usize = 3;
/// Every table hashes with this one fixed hasher, so a key's hash (`key_hash`) is the same in
/// every table and a caller can compute it once for a prefetch and the lookup after it.
const HASHER: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0);

/// The hash of `key` in any `OpenTable`.
#[inline]
pub(crate) fn key_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    HASHER.hash_one(key)
}

#[derive(Clone, Debug)]
pub(crate) struct OpenTable<K, V> {
    control: Vec<u8>,
    entries: Vec<(K, V)>,
    len: usize,
    /// The most keys the table holds before it grows.
    len_max: usize,
}

impl<K: Copy + Default + Eq + Hash, V: Copy + Default> Default for OpenTable<K, V> {
    fn default() -> Self {
        OpenTable::with_slots(SLOTS_MIN)
    }
}

impl<K: Copy + Default + Eq + Hash, V: Copy + Default> OpenTable<K, V> {
    fn with_slots(slots: usize) -> OpenTable<K, V> {
        OpenTable {
            // A table of MiB (the windows', a minute of the rate rule's) on 4 KiB pages makes
            // nearly every access a TLB miss too, and a prefetch waits for its page walk
            // (reports/2026-11-28-rust-svc/hot-path-session-3.md). Only whole huge pages inside
            // the array can be advised.
            control: filled_on_huge_pages(slots, 0),
            entries: filled_on_huge_pages(slots, (K::default(), V::default())),
            len: 0,
            len_max: (slots as f64 * LOAD_MAX) as usize,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Empties the table and keeps its memory. Only the control bytes are written: a slot whose
    /// control byte is empty is never read.
    pub(crate) fn clear(&mut self) {
        self.control.fill(0);
        self.len = 0;
    }

    fn hash(&self, key: &K) -> u64 {
        key_hash(key)
    }

    /// The caller's precomputed hash of `key`, checked in debug builds.
    #[inline]
    fn checked(&self, hash: u64, key: &K) -> u64 {
        debug_assert_eq!(hash, self.hash(key), "a hash from key_hash");
        hash
    }

    /// Finds `key`: `Ok(slot)` where it is, or `Err(slot)` where it would go.
    #[inline]
    fn find(&self, hash: u64, key: &K) -> Result<usize, usize> {
        let wanted = fingerprint(hash);
        let slots = self.control.len();
        let mut index = probing::home(hash, slots);
        loop {
            let stored = self.control[index];
            if stored == 0 {
                return Err(index);
            }
            if stored == wanted && self.entries[index].0 == *key {
                return Ok(index);
            }
            index = probing::next(index, slots);
        }
    }

    /// Asks the CPU to start loading what a lookup of the key whose `key_hash` is `hash` will
    /// touch: its control bytes, and the first `PREFETCH_ENTRIES` entries of its probe run (a key
    /// sits on average about one slot past its home at these loads, and a counts entry fills a
    /// cache line). A hint only.
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        let slots = self.control.len();
        let home = probing::home(hash, slots);
        prefetch_line(&self.control[home]);
        let mut index = home;
        for _ in 0..PREFETCH_ENTRIES {
            prefetch_line(&self.entries[index]);
            index = probing::next(index, slots);
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        let index = self.find(self.hash(key), key).ok()?;
        Some(&self.entries[index].1)
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let index = self.find(self.hash(key), key).ok()?;
        Some(&mut self.entries[index].1)
    }

    /// The value of `key`, inserting `default` first if it is absent.
    #[inline]
    pub(crate) fn get_or_insert(&mut self, key: K, default: V) -> &mut V {
        self.get_or_insert_hashed(key, self.hash(&key), default)
    }

    /// `get_or_insert` for a key whose `key_hash` the caller computed ahead.
    #[inline]
    pub(crate) fn get_or_insert_hashed(&mut self, key: K, hash: u64, default: V) -> &mut V {
        if self.len + 1 > self.len_max {
            self.grow();
        }
        let hash = self.checked(hash, &key);
        let index = match self.find(hash, &key) {
            Ok(index) => index,
            Err(vacant) => {
                self.control[vacant] = fingerprint(hash);
                self.entries[vacant] = (key, default);
                self.len += 1;
                vacant
            }
        };
        &mut self.entries[index].1
    }

    pub(crate) fn insert(&mut self, key: K, value: V) {
        *self.get_or_insert(key, value) = value;
    }

    fn grow(&mut self) {
        let mut larger = OpenTable::with_slots(self.control.len() * 2);
        for (key, value) in self.iter() {
            larger.insert(*key, *value);
        }
        *self = larger;
    }

    /// Every (key, value), in slot order (callers sort before anything leaves the crate).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.control
            .iter()
            .zip(&self.entries)
            .filter(|(control, _)| **control != 0)
            .map(|(_, (key, value))| (key, value))
    }

    /// Every (key, value) with the value mutable, in slot order: one sequential pass.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> + '_ {
        self.control
            .iter()
            .zip(&mut self.entries)
            .filter(|(control, _)| **control != 0)
            .map(|(_, (key, value))| (&*key, value))
    }

    /// Keeps the entries `keep` says yes to, in one sweep that leaves no tombstone.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        probing::sweep(self, |table, index| {
            let (key, value) = &table.entries[index];
            if keep(key, value) {
                return false;
            }
            table.control[index] = 0;
            table.entries[index] = (K::default(), V::default());
            table.len -= 1;
            true
        });
    }
}

impl<K: Copy + Default + Eq + Hash, V: Copy + Default> ProbeSlots for OpenTable<K, V> {
    fn slots(&self) -> usize {
        self.control.len()
    }

    fn is_vacant(&self, index: usize) -> bool {
        self.control[index] == 0
    }

    fn home_of(&self, index: usize) -> usize {
        probing::home(self.hash(&self.entries[index].0), self.control.len())
    }

    fn move_slot(&mut self, from: usize, to: usize) {
        self.control[to] = self.control[from];
        self.entries[to] = self.entries[from];
        self.control[from] = 0;
        self.entries[from] = (K::default(), V::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Checks the linear-probing invariant over the whole table.
    fn assert_probe_runs_intact(table: &OpenTable<u32, u32>) {
        for index in 0..table.slots() {
            if table.is_vacant(index) {
                continue;
            }
            let (key, _) = table.entries[index];
            assert_eq!(table.control[index], fingerprint(table.hash(&key)));
            let mut at = table.home_of(index);
            while at != index {
                assert!(
                    !table.is_vacant(at),
                    "a hole between a key's home and its slot"
                );
                at = probing::next(at, table.slots());
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Add { key: u32, delta: u32 },
        RetainBelow { key: u32 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u32..200, 1u32..5).prop_map(|(key, delta)| Op::Add { key, delta }),
            1 => (0u32..200).prop_map(|key| Op::RetainBelow { key }),
        ]
    }

    proptest! {
        /// Against a BTreeMap, through growth and removal sweeps (keys from 0, so the default
        /// key is a real key too); the probing invariant is checked after every sweep.
        #[test]
        fn matches_a_map(ops in proptest::collection::vec(op(), 1..800)) {
            let mut table: OpenTable<u32, u32> = OpenTable::default();
            let mut model: BTreeMap<u32, u32> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Add { key, delta } => {
                        *table.get_or_insert(key, 0) += delta;
                        *model.entry(key).or_insert(0) += delta;
                    }
                    Op::RetainBelow { key } => {
                        table.retain(|&stored, _| stored < key);
                        model.retain(|&stored, _| stored < key);
                        assert_probe_runs_intact(&table);
                    }
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for (key, value) in &model {
                prop_assert_eq!(table.get(key), Some(value));
            }
            let stored: BTreeMap<u32, u32> = table.iter().map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(stored, model);
        }
    }
}
