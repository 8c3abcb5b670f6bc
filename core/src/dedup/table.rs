//! The dedup set's storage: an open-addressing table of 128-bit ids with linear probing, a
//! fingerprint byte per slot, lazy expiry and no tombstones.
//!
//! Why not hashbrown: expiry removes a whole time bucket at a time. hashbrown leaves a tombstone
//! per removed id, tombstones use up the free slots, and the table then doubles although the
//! number of live ids never grew (measured 35–102 bytes per id in steady state, and a 1.45 s
//! stall at the doubling; reports/2026-11-28-rust-svc/criterion-hot-path.md).
//!
//! Layout: two arrays indexed by slot, 18 bytes a slot in all.
//! - `control`: two bytes a slot. The fingerprint: 0 for an empty slot, else one byte of the
//!   id's hash (never 0). A lookup scans fingerprints from the home slot to the first empty one;
//!   they are 1/9 of the table, so they mostly stay in the CPU's caches, and a fresh id (the
//!   common case) is usually decided there without touching `ids` at all, as a swiss table's
//!   control bytes do. And the tag: the id's expiry bucket minus the caller's base bucket. It
//!   shares the fingerprint's cache line, so an insert writes two lines, not three.
//! - `ids`: the full 128-bit click id, so there are no false duplicates.
//!
//! Expiry is lazy: `expire_tags_below` only moves a threshold (and a per-tag count), in constant
//! time. A slot whose tag is below it is dead: lookups pass over it and the next insert whose
//! probe run crosses it takes it over, so the table stays at its steady size without sweeping
//! it at every bucket. A dead slot is never emptied outside a `compact` (when the table fills
//! or the caller rebases its tags), so no probe run is ever cut short.
//!
//! **Invariant (linear probing):** for every stored id, live or dead, every slot from its home
//! slot up to its own slot (cyclically) is occupied.

use std::hash::BuildHasher;

use crate::probing::{self, ProbeSlots, advise_huge_pages, fingerprint, prefetch_line};

/// Bytes per slot: fingerprint, tag and id.
const SLOT_BYTES: usize = 1 + 1 + 16;

/// The highest occupancy (live and dead slots) before the table compacts, and grows if
/// compacting does not free enough. The fingerprint run an unsuccessful lookup scans is
/// 1/2 (1 + 1/(1 - load)^2) slots on average: 23 at 0.85, 50 at 0.9.
const LOAD_MAX: f64 = 0.9;
/// After compacting, the table grows if its live ids are still above this load (above the
/// pre-size target, so a set at its expected size never grows), so that it does not compact
/// again after a handful of inserts.
const LIVE_AFTER_COMPACT_MAX: f64 = 0.87;
/// The load a table is pre-sized for: `with_capacity(n)` holds n ids at this load, 21.2 bytes
/// each.
pub(crate) const LOAD_TARGET: f64 = 0.85;

pub(crate) struct IdTable {
    /// Per slot: [fingerprint, tag].
    control: Vec<[u8; 2]>,
    ids: Vec<u128>,
    /// Slots holding an id, live or dead.
    occupied: usize,
    /// Live ids per tag; tags below `live_tag_min` count 0.
    live_per_tag: [usize; 256],
    live: usize,
    /// Slots whose tag is below this are dead. Negative: none is; above 255: every slot is.
    live_tag_min: i64,
    /// The most occupied slots before the table compacts or grows: `LOAD_MAX` of its slots.
    occupied_max: usize,
    /// Compactions so far, grows and rebases included: each is a pass over the whole table.
    compactions: u64,
    hasher: foldhash::fast::FixedState,
}

/// What `lookup` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Found,
    /// Absent or dead; it would go to this slot (empty, or dead and free to take over).
    Vacant(usize),
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
            occupied: 0,
            live_per_tag: [0; 256],
            live: 0,
            live_tag_min: 0,
            occupied_max: (slots as f64 * LOAD_MAX) as usize,
            compactions: 0,
            hasher: foldhash::fast::FixedState::with_seed(0x5eed_dedd),
        }
    }

    /// Live ids.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    pub(crate) fn compactions(&self) -> u64 {
        self.compactions
    }

    pub(crate) fn allocation_size(&self) -> usize {
        self.slots() * SLOT_BYTES
    }

    pub(crate) fn hash(&self, id: u128) -> u64 {
        self.hasher.hash_one(id)
    }

    fn home(&self, hash: u64) -> usize {
        probing::home(hash, self.slots())
    }

    #[cfg(test)]
    fn next(&self, index: usize) -> usize {
        probing::next(index, self.slots())
    }

    fn is_live(&self, tag: u8) -> bool {
        i64::from(tag) >= self.live_tag_min
    }

    /// The oldest and newest live tag, if any id is live.
    pub(crate) fn live_tag_range(&self) -> Option<(u8, u8)> {
        let mut live = (0u8..=255).filter(|&tag| self.live_per_tag[usize::from(tag)] > 0);
        let oldest = live.next()?;
        Some((oldest, live.next_back().unwrap_or(oldest)))
    }

    /// Kills every id whose tag is below `tag`: constant time, nothing moves.
    pub(crate) fn expire_tags_below(&mut self, tag: i64) {
        let old = self.live_tag_min.clamp(0, 256) as usize;
        let new = tag.clamp(0, 256) as usize;
        for count in self.live_per_tag.get_mut(old..new).into_iter().flatten() {
            self.live -= *count;
            *count = 0;
        }
        self.live_tag_min = self.live_tag_min.max(tag);
    }

    /// Asks the CPU to start loading what a lookup and insert of `hash` will touch: the
    /// fingerprints from the home slot, and the ids where a fresh id will land (a few slots on).
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        let home = self.home(hash);
        prefetch_line(&self.control[home]);
        prefetch_line(&self.ids[(home + 2).min(self.slots() - 1)]);
    }

    /// Makes room for one more id: compacts the table when live and dead slots reach the
    /// highest load, and grows it if the live ids alone stay close to it. Call before a `lookup`
    /// whose vacancy may be filled.
    pub(crate) fn reserve_one(&mut self) {
        if self.occupied < self.occupied_max {
            return;
        }
        self.compact();
        if self.live as f64 >= self.slots() as f64 * LIVE_AFTER_COMPACT_MAX {
            self.grow();
        }
    }

    /// Finds `id` (not 0) among the live ids, or the slot it would go to: its own dead slot, the
    /// first dead slot of its probe run, or the empty slot that ends the run.
    ///
    /// Scans the control bytes a group of slots at a time (`ControlGroup`): at the loads this
    /// table runs at, a probe run is 20 to 50 slots long, and one slot at a time the scan was the
    /// largest cost of a dedup insert.
    #[inline]
    pub(crate) fn lookup(&self, hash: u64, id: u128) -> Lookup {
        let wanted = fingerprint(hash);
        let live_tag_min = self.live_tag_min.clamp(0, 256) as u64;
        let mut index = self.home(hash);
        let mut first_dead = None;
        loop {
            let group = ControlGroup::load(&self.control, index);
            let scan = group.scan(wanted, live_tag_min);
            for lane in lanes_of(scan.matching) {
                let slot = index + lane;
                if self.ids[slot] == id {
                    return if scan.is_live(lane) {
                        Lookup::Found
                    } else {
                        Lookup::Vacant(slot)
                    };
                }
            }
            if first_dead.is_none() {
                first_dead = lanes_of(scan.dead).next().map(|lane| index + lane);
            }
            if let Some(lane) = scan.first_empty {
                return Lookup::Vacant(first_dead.unwrap_or(index + lane));
            }
            index += group.slots;
            if index == self.slots() {
                index = 0;
            }
        }
    }

    /// Stores `id` in the slot a `lookup` of the same `hash` returned, with nothing changed in
    /// between. `tag` must be live.
    #[inline]
    pub(crate) fn insert_at(&mut self, vacant: usize, hash: u64, id: u128, tag: u8) {
        debug_assert!(self.is_live(tag) && id != 0);
        let [stored, old_tag] = self.control[vacant];
        debug_assert!(
            stored == 0 || !self.is_live(old_tag),
            "only a vacancy is taken"
        );
        if stored == 0 {
            self.occupied += 1;
        }
        self.control[vacant] = [fingerprint(hash), tag];
        self.ids[vacant] = id;
        self.live_per_tag[usize::from(tag)] += 1;
        self.live += 1;
    }

    /// Looks `id` (not 0) up and, when absent, stores it with `tag`; says whether it was absent.
    pub(crate) fn find_or_insert(&mut self, hash: u64, id: u128, tag: u8) -> bool {
        self.reserve_one();
        match self.lookup(hash, id) {
            Lookup::Found => false,
            Lookup::Vacant(index) => {
                self.insert_at(index, hash, id, tag);
                true
            }
        }
    }

    /// Moves the live ids to a table 1.5 times as large. Only when the set outgrows its pre-size.
    fn grow(&mut self) {
        let mut larger = IdTable::with_capacity(self.slots() * 3 / 2);
        larger.hasher = self.hasher.clone();
        larger.live_tag_min = self.live_tag_min;
        larger.compactions = self.compactions;
        for (id, tag) in self.iter() {
            larger.find_or_insert(larger.hash(id), id, tag);
        }
        *self = larger;
    }

    /// Every live (id, tag).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u128, u8)> + '_ {
        (0..self.slots())
            .filter(|&index| self.control[index][0] != 0 && self.is_live(self.control[index][1]))
            .map(|index| (self.ids[index], self.control[index][1]))
    }

    fn clear_slot(&mut self, index: usize) {
        self.control[index] = [0; 2];
        self.ids[index] = 0;
    }

    /// Empties every dead slot, in one sweep that leaves no tombstone (`probing::sweep`).
    fn compact(&mut self) {
        self.compactions += 1;
        probing::sweep(self, |table, index| {
            if table.is_live(table.control[index][1]) {
                return false;
            }
            table.clear_slot(index);
            table.occupied -= 1;
            true
        });
    }

    /// Compacts, then moves every tag down by `shift` (a bucket `shift` newer becomes the base),
    /// or up when `shift` is negative. The caller makes sure every live tag still fits.
    pub(crate) fn rebase(&mut self, shift: i64) {
        self.compact();
        let retag = |tag: u8| u8::try_from(i64::from(tag) - shift).expect("the caller checked");
        for index in 0..self.slots() {
            if self.control[index][0] != 0 {
                self.control[index][1] = retag(self.control[index][1]);
            }
        }
        let mut live_per_tag = [0; 256];
        for (tag, &count) in self.live_per_tag.iter().enumerate() {
            if count > 0 {
                live_per_tag[usize::from(retag(tag as u8))] = count;
            }
        }
        self.live_per_tag = live_per_tag;
        self.live_tag_min -= shift;
    }
}

/// The control bytes of up to `GROUP_SLOTS` consecutive slots read as one little-endian word,
/// so that one lookup step looks at four slots with a handful of integer operations (SWAR).
/// Lane `i` (bits `16 i .. 16 i + 16`) holds slot `i`'s fingerprint in its low byte and its tag
/// in its high byte.
struct ControlGroup {
    word: u64,
    /// Slots in the group: `GROUP_SLOTS`, fewer at the end of the table.
    slots: usize,
}

const GROUP_SLOTS: usize = 4;
/// 1 in each lane's lowest bit: multiplying a byte by it repeats the byte in every lane.
const LANE_ONES: u64 = 0x0001_0001_0001_0001;
/// Each lane's top bit: where the per-lane answers below are kept.
const LANE_TOPS: u64 = 0x8000_8000_8000_8000;
const LOW_BYTES: u64 = 0x00ff_00ff_00ff_00ff;

/// What one group holds, as masks of lane top bits, already cut off at the first empty slot.
struct GroupScan {
    /// Occupied slots whose fingerprint is the wanted one.
    matching: u64,
    /// Occupied slots whose tag is below the live threshold.
    dead: u64,
    /// Occupied slots whose tag is live.
    live: u64,
    /// The lane of the first empty slot: the probe run ends there.
    first_empty: Option<usize>,
}

impl GroupScan {
    fn is_live(&self, lane: usize) -> bool {
        self.live & (0x8000 << (16 * lane)) != 0
    }
}

/// The lanes set in a mask of lane top bits, first lane first.
fn lanes_of(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let lane = mask.trailing_zeros() as usize / 16;
        mask &= mask - 1;
        Some(lane)
    })
}

/// Sets each lane's top bit where the lane (at most 0xff) is not zero. Adding 0x7fff to a lane
/// of at most 0xff never carries into the next lane.
fn nonzero_lanes(lanes: u64) -> u64 {
    (lanes + 0x7fff * LANE_ONES) & LANE_TOPS
}

impl ControlGroup {
    #[inline]
    fn load(control: &[[u8; 2]], index: usize) -> ControlGroup {
        if let Some(group) = control.get(index..index + GROUP_SLOTS) {
            let bytes: [u8; 2 * GROUP_SLOTS] = group.as_flattened().try_into().expect("4 slots");
            return ControlGroup {
                word: u64::from_le_bytes(bytes),
                slots: GROUP_SLOTS,
            };
        }
        // The table's last few slots; the missing lanes are masked off in `scan`.
        let tail = &control[index..];
        let word = tail.iter().rev().fold(0u64, |word, &[fingerprint, tag]| {
            word << 16 | u64::from(u16::from_le_bytes([fingerprint, tag]))
        });
        ControlGroup {
            word,
            slots: tail.len(),
        }
    }

    #[inline]
    fn scan(&self, wanted: u8, live_tag_min: u64) -> GroupScan {
        debug_assert!(wanted != 0 && live_tag_min <= 256);
        let present = LANE_TOPS >> (16 * (GROUP_SLOTS - self.slots));
        let fingerprints = self.word & LOW_BYTES;
        let tags = (self.word >> 8) & LOW_BYTES;
        let occupied = nonzero_lanes(fingerprints);
        let empty = !occupied & present;
        // Every lane below the first empty one: the rest of the group is past the run's end.
        let in_run = match empty {
            0 => present,
            _ => ((empty & empty.wrapping_neg()) - 1) & present,
        };
        let matching = !nonzero_lanes(fingerprints ^ (u64::from(wanted) * LANE_ONES)) & in_run;
        // tag >= live_tag_min exactly when tag + 0x8000 - live_tag_min reaches the lane's top
        // bit; with live_tag_min <= 256 the sum stays below 0x8100, so no lane carries.
        let live = (tags + (0x8000 - live_tag_min) * LANE_ONES) & LANE_TOPS & occupied;
        GroupScan {
            matching,
            dead: occupied & !live & in_run,
            live,
            first_empty: (empty != 0).then(|| empty.trailing_zeros() as usize / 16),
        }
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

    /// Checks the linear-probing invariant and the counters over the whole table.
    fn assert_consistent(table: &IdTable) {
        let mut occupied = 0;
        let mut live_per_tag = [0usize; 256];
        for index in 0..table.slots() {
            if table.is_vacant(index) {
                continue;
            }
            occupied += 1;
            let stored = table.ids[index];
            let [fp, tag] = table.control[index];
            assert_eq!(fp, fingerprint(table.hash(stored)));
            if table.is_live(tag) {
                live_per_tag[usize::from(tag)] += 1;
            }
            let mut at = table.home_of(index);
            while at != index {
                assert!(
                    !table.is_vacant(at),
                    "a hole between an id's home and its slot"
                );
                at = table.next(at);
            }
        }
        assert_eq!(table.occupied, occupied);
        assert_eq!(table.live_per_tag, live_per_tag);
        assert_eq!(table.live, live_per_tag.iter().sum::<usize>());
    }

    #[test]
    fn a_pre_sized_table_holds_its_ids_in_18_bytes_a_slot() {
        let mut table = IdTable::with_capacity(1000);
        for n in 1..=1000u128 {
            assert!(table.find_or_insert(table.hash(n), n, 0));
        }
        assert_eq!(table.allocation_size(), 1177 * 18);
        assert!(table.allocation_size() as f64 / table.len() as f64 <= 21.2);
    }

    #[test]
    fn dead_slots_are_taken_over_so_a_steady_set_keeps_its_size() {
        let mut table = IdTable::with_capacity(1000);
        let size = table.allocation_size();
        for round in 0..50u32 {
            for n in 1..=1000u128 {
                let id = u128::from(round) << 64 | n;
                assert!(table.find_or_insert(table.hash(id), id, (round % 200) as u8));
            }
            // Rebase before the tags run out, as the dedup set does.
            if round % 200 == 199 {
                table.rebase(199);
            }
            table.expire_tags_below(i64::from(round % 200 + 1));
            assert_eq!(table.len(), 0);
        }
        assert_eq!(table.allocation_size(), size, "never grew");
        assert_consistent(&table);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert { id: u128, tag: u8 },
        Expire { below: u8 },
        Rebase { shift: i8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            12 => (1u128..300, 0u8..40).prop_map(|(id, tag)| Op::Insert { id, tag }),
            2 => (0u8..40).prop_map(|below| Op::Expire { below }),
            1 => (-10i8..10).prop_map(|shift| Op::Rebase { shift }),
        ]
    }

    /// `lookup` one slot at a time: the definition the grouped scan must agree with.
    fn lookup_slot_by_slot(table: &IdTable, hash: u64, id: u128) -> Lookup {
        let wanted = fingerprint(hash);
        let mut index = table.home(hash);
        let mut first_dead = None;
        loop {
            let [stored, tag] = table.control[index];
            if stored == 0 {
                return Lookup::Vacant(first_dead.unwrap_or(index));
            }
            let live = table.is_live(tag);
            if stored == wanted && table.ids[index] == id {
                return if live {
                    Lookup::Found
                } else {
                    Lookup::Vacant(index)
                };
            }
            if !live && first_dead.is_none() {
                first_dead = Some(index);
            }
            index = table.next(index);
        }
    }

    proptest! {
        /// The grouped scan against the slot-by-slot one, on arbitrary control bytes (any
        /// fingerprint, tag and threshold, runs that wrap around a table of any length) and ids
        /// drawn from a few values, so that matching fingerprints with other ids are common.
        #[test]
        fn grouped_lookup_matches_slot_by_slot(
            slots in proptest::collection::vec((0u8..6, 0u8..=255, 1u128..5), 1..40),
            empty_at in 0usize..40,
            live_tag_min in -3i64..260,
            hash in any::<u64>(),
            id in 1u128..5,
        ) {
            let mut table = IdTable::with_capacity(1);
            let count = slots.len();
            table.control = slots.iter().map(|&(fp, tag, _)| [fp, tag]).collect();
            table.ids = slots.iter().map(|&(_, _, id)| id).collect();
            // Fingerprints 0..6 against a wanted one of 1..=255: make the wanted one likely.
            let wanted = fingerprint(hash);
            for pair in &mut table.control {
                if pair[0] == 5 {
                    pair[0] = wanted;
                }
            }
            table.control[empty_at % count][0] = 0;
            table.live_tag_min = live_tag_min;
            prop_assert_eq!(table.lookup(hash, id), lookup_slot_by_slot(&table, hash, id));
        }

        /// Against a map of live ids, through inserts, lazy expiry, take-overs, compaction,
        /// growth and rebases, on a small table so probe runs are long and wrap around its end.
        #[test]
        fn matches_a_map_of_live_ids(ops in proptest::collection::vec(op(), 1..800)) {
            let mut table = IdTable::with_capacity(8);
            let mut model: BTreeMap<u128, u8> = BTreeMap::new();
            // Tags are offsets from a base; the model keeps absolute buckets.
            let (mut base, mut live_min) = (100i64, 100i64);
            for op in ops {
                match op {
                    Op::Insert { id, tag } => {
                        let bucket = live_min + i64::from(tag);
                        let Ok(tag) = u8::try_from(bucket - base) else { continue };
                        let absent = !model.contains_key(&id);
                        if absent {
                            model.insert(id, tag);
                        }
                        prop_assert_eq!(table.find_or_insert(table.hash(id), id, tag), absent);
                    }
                    Op::Expire { below } => {
                        live_min += i64::from(below / 8);
                        table.expire_tags_below(live_min - base);
                        model.retain(|_, tag| base + i64::from(*tag) >= live_min);
                    }
                    Op::Rebase { shift } => {
                        let shift = i64::from(shift);
                        let fits = model.values().all(|&tag| u8::try_from(i64::from(tag) - shift).is_ok());
                        if !fits {
                            continue;
                        }
                        table.rebase(shift);
                        base += shift;
                        model.values_mut().for_each(|tag| *tag = (i64::from(*tag) - shift) as u8);
                        assert_consistent(&table);
                    }
                }
                prop_assert_eq!(table.len(), model.len());
            }
            assert_consistent(&table);
            let stored: BTreeMap<u128, u8> = table.iter().collect();
            prop_assert_eq!(stored, model);
        }
    }
}
