//! The dedup set's storage: a bucketized cuckoo table of 128-bit ids, a fingerprint byte per
//! slot, and lazy expiry.
//!
//! Every id has two candidate buckets of sixteen slots, both named by its hash, and lives in one
//! of them. So a lookup reads exactly two buckets' control (a cache line each), both known (and
//! prefetched) before the lookup starts, and an insert needs no probe run: it takes a vacant slot
//! of the emptier bucket. When all 32 slots hold live ids, the insert moves one of them to its
//! other bucket (a cuckoo displacement), which may move another, and so on.
//!
//! Why not linear probing (this table's previous design, `reports/2026-11-28-rust-svc/
//! hot-path-session-3.md`): at the 80–90% occupancy that keeps the table under 24 bytes per id,
//! an absent id's probe run is 13 to 50 slots, spread over two or three cache lines, and the slot
//! a new id lands in lies at the run's unknown end, so neither could be prefetched; and dead slots
//! outside a probe run's reach stayed until a compaction swept the whole table (~15% of
//! `on_batch`). Here a dead slot is free the moment its bucket expires, so nothing ever sweeps.
//!
//! Why not hashbrown: expiry removes a whole time bucket at a time. hashbrown leaves a tombstone
//! per removed id, tombstones use up the free slots, and the table then doubles although the
//! number of live ids never grew (reports/2026-11-28-rust-svc/criterion-hot-path.md).
//!
//! Layout: two arrays, 18 bytes a slot in all.
//! - `control`: two 16-byte words per bucket, two bytes a slot. The fingerprint: 0 for an empty
//!   slot, else one byte of the id's hash (never 0). And the tag: the id's expiry bucket minus
//!   the caller's base bucket. A bucket's 32 bytes are aligned, so they never straddle a cache
//!   line, and a lookup decides a fresh id (the common case) from two buckets' control without
//!   touching `ids`.
//! - `ids`: the full 128-bit click id, sixteen per bucket, so there are no false duplicates.
//!
//! Expiry is lazy: `expire_tags_below` only moves a threshold (and a per-tag count), in constant
//! time. A slot whose tag is below it is dead: lookups pass over it and any insert into its
//! bucket takes it over.
//!
//! Growth: the table grows to 1.5 times its slots when live ids would pass `LIVE_LOAD_MAX` of
//! them, or when a displacement walk (a fixed-seed sequence, so a replay displaces alike) runs
//! past `DISPLACEMENTS_PER_INSERT_MAX` moves. Pre-sized at `LOAD_TARGET`, it grows only when the
//! set outgrows its pre-size. Both arrays are advised for transparent huge pages: hints only,
//! no result depends on them.
//!
//! **Invariant:** every stored id, live or dead, is in one of its two buckets, and a live id is
//! stored once.

use std::hash::BuildHasher;

use crate::probing::{self, advise_huge_pages, fingerprint, prefetch_line};

/// Control lanes per 16-byte word: [fingerprint, tag], two bytes a slot.
const WORD_SLOTS: usize = 8;
/// Control words per bucket. Sixteen slots a bucket make it rare that both of an id's buckets
/// are full at the loads this table runs at (about 1 insert in 1000 at 87% live, against 1 in 20
/// with eight slots), and a bucket's 32 bytes of control still lie in one cache line.
const BUCKET_WORDS: usize = 2;
const BUCKET_SLOTS: usize = WORD_SLOTS * BUCKET_WORDS;
/// Bytes per slot: fingerprint, tag and id.
const SLOT_BYTES: usize = 1 + 1 + 16;

/// The most live ids per slot before the table grows. A (2, 8) cuckoo table can be filled to
/// about 98%; displacement chains lengthen as it fills, so it grows well before.
const LIVE_LOAD_MAX: f64 = 0.93;
/// The load a table is pre-sized for: `with_capacity(n)` holds n ids at this load, 21.2 bytes
/// each.
pub(crate) const LOAD_TARGET: f64 = 0.85;
/// Displacements one insert may make before the table grows instead. A chain this long means
/// the table is nearly full somewhere; at `LIVE_LOAD_MAX` chains are a few moves.
const DISPLACEMENTS_PER_INSERT_MAX: usize = 500;
/// How many ids ahead `grow` requests the buckets of the ids it moves.
const GROW_PREFETCH_DISTANCE: usize = 16;

pub(crate) struct IdTable {
    /// Per bucket: its slots' [fingerprint, tag] lanes, slot `8 w + i` in bits
    /// `16 i .. 16 i + 16` of word `w`.
    control: Vec<ControlBucket>,
    /// Per slot (`bucket * BUCKET_SLOTS + lane`): the id.
    ids: Vec<u128>,
    /// Live ids per tag; tags below `live_tag_min` count 0.
    live_per_tag: [usize; 256],
    live: usize,
    /// Slots whose tag is below this are dead. Negative: none is; above 255: every slot is.
    live_tag_min: i64,
    /// The most live ids before the table grows: `LIVE_LOAD_MAX` of its slots.
    live_max: usize,
    /// Passes over the whole table so far (grows and tag rebases).
    passes: u64,
    /// Ids moved to their other bucket to make room, so far.
    displacements: u64,
    /// Picks which slot a displacement empties: a fixed-seed sequence, so a replay builds the
    /// same table.
    victim_state: u64,
    hasher: foldhash::fast::FixedState,
}

/// What `lookup` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Found,
    /// Absent or dead; it would go to this slot (empty, or dead and free to take over).
    Vacant(usize),
    /// Absent, and both its buckets hold live ids only: an insert must displace one.
    Full,
}

impl IdTable {
    /// A table that holds `ids` at the target load without growing.
    pub(crate) fn with_capacity(ids: usize) -> IdTable {
        let slots = (ids.max(1) as f64 / LOAD_TARGET).ceil() as usize;
        let buckets = slots.div_ceil(BUCKET_SLOTS).max(2);
        // `vec!` of zeroes is a zeroed allocation: untouched pages cost nothing until used.
        let mut ids = vec![0u128; buckets * BUCKET_SLOTS];
        advise_huge_pages(&mut ids);
        let mut control = vec![ControlBucket([0; BUCKET_WORDS]); buckets];
        advise_huge_pages(&mut control);
        IdTable {
            control,
            ids,
            live_per_tag: [0; 256],
            live: 0,
            live_tag_min: 0,
            live_max: (buckets as f64 * BUCKET_SLOTS as f64 * LIVE_LOAD_MAX) as usize,
            passes: 0,
            displacements: 0,
            victim_state: 0x5eed_cafe,
            hasher: foldhash::fast::FixedState::with_seed(0x5eed_dedd),
        }
    }

    /// Live ids.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    pub(crate) fn table_passes(&self) -> u64 {
        self.passes
    }

    pub(crate) fn displacements(&self) -> u64 {
        self.displacements
    }

    fn slots(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn allocation_size(&self) -> usize {
        self.slots() * SLOT_BYTES
    }

    pub(crate) fn hash(&self, id: u128) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The two buckets an id of this hash may live in. The first comes from the hash's high
    /// bits, the second from all of them remixed, and the fingerprint from its low byte, so the
    /// three are independent. They may coincide.
    #[inline]
    fn buckets_of(&self, hash: u64) -> [usize; 2] {
        let buckets = self.control.len();
        let remixed = (hash ^ (hash >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        [
            probing::home(hash, buckets),
            probing::home(remixed, buckets),
        ]
    }

    fn is_live(&self, tag: u8) -> bool {
        i64::from(tag) >= self.live_tag_min
    }

    fn live_tag_threshold(&self) -> u64 {
        self.live_tag_min.clamp(0, 256) as u64
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

    /// Asks the CPU to start loading the two control words a lookup of `hash` reads.
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        for bucket in self.buckets_of(hash) {
            prefetch_line(&self.control[bucket]);
        }
    }

    /// Asks the CPU to start loading the id a lookup of `hash` will most likely read or write:
    /// the first fingerprint match, else the slot a fresh id would take. Reads the control
    /// words, so call it once `prefetch` had time to bring them in.
    #[inline]
    pub(crate) fn prefetch_id(&self, hash: u64) {
        let [first, second] = self.scan_buckets(hash);
        let matching = [&first, &second]
            .into_iter()
            .find_map(|(bucket, scan)| Some(bucket * BUCKET_SLOTS + scan.matching().next()?));
        if let Some(slot) = matching.or_else(|| Self::emptier_vacancy(&first, &second)) {
            prefetch_line(&self.ids[slot]);
        }
    }

    /// Each of the two buckets of `hash` with its scan.
    #[inline]
    fn scan_buckets(&self, hash: u64) -> [(usize, BucketScan); 2] {
        let wanted = fingerprint(hash);
        let live_tag_min = self.live_tag_threshold();
        let [first, second] = self.buckets_of(hash);
        [
            (
                first,
                BucketScan::new(&self.control[first], wanted, live_tag_min),
            ),
            (
                second,
                BucketScan::new(&self.control[second], wanted, live_tag_min),
            ),
        ]
    }

    /// The first vacant slot of whichever bucket has more vacancies (the first on a tie).
    /// Filling the emptier bucket keeps the buckets even, so that both of an id's buckets are
    /// seldom full and displacements stay rare.
    #[inline]
    fn emptier_vacancy(first: &(usize, BucketScan), second: &(usize, BucketScan)) -> Option<usize> {
        let (bucket, scan) = if second.1.vacancies() > first.1.vacancies() {
            second
        } else {
            first
        };
        Some(bucket * BUCKET_SLOTS + scan.first_vacant()?)
    }

    /// Grows the table if one more live id would take it past its highest load. Call before a
    /// `lookup` whose vacancy may be filled.
    pub(crate) fn reserve_one(&mut self) {
        if self.live >= self.live_max {
            self.grow();
        }
    }

    /// Finds `id` (not 0) among the live ids, or the slot it would go to: its own dead slot, or
    /// a vacant slot of the emptier of its buckets (`emptier_vacancy`).
    #[inline]
    pub(crate) fn lookup(&self, hash: u64, id: u128) -> Lookup {
        let [first, second] = self.scan_buckets(hash);
        for (bucket, scan) in [&first, &second] {
            for offset in scan.matching() {
                let slot = bucket * BUCKET_SLOTS + offset;
                if self.ids[slot] == id {
                    return if scan.is_live(offset) {
                        Lookup::Found
                    } else {
                        Lookup::Vacant(slot)
                    };
                }
            }
        }
        Self::emptier_vacancy(&first, &second).map_or(Lookup::Full, Lookup::Vacant)
    }

    fn lane(&self, slot: usize) -> [u8; 2] {
        let word = self.control[slot / BUCKET_SLOTS].0[slot % BUCKET_SLOTS / WORD_SLOTS];
        let lane = (word >> (16 * (slot % WORD_SLOTS))) as u16;
        lane.to_le_bytes()
    }

    fn set_lane(&mut self, slot: usize, lane: [u8; 2]) {
        let shift = 16 * (slot % WORD_SLOTS);
        let word = &mut self.control[slot / BUCKET_SLOTS].0[slot % BUCKET_SLOTS / WORD_SLOTS];
        *word = (*word & !(0xffff << shift)) | u128::from(u16::from_le_bytes(lane)) << shift;
    }

    /// Stores `id` in the slot a `lookup` of the same `hash` returned as vacant, with nothing
    /// changed in between. `tag` must be live.
    #[inline]
    pub(crate) fn insert_at(&mut self, vacant: usize, hash: u64, id: u128, tag: u8) {
        debug_assert!(self.is_live(tag) && id != 0);
        debug_assert!(
            {
                let [stored, old_tag] = self.lane(vacant);
                stored == 0 || !self.is_live(old_tag)
            },
            "only a vacancy is taken"
        );
        self.set_lane(vacant, [fingerprint(hash), tag]);
        self.ids[vacant] = id;
        self.live_per_tag[usize::from(tag)] += 1;
        self.live += 1;
    }

    /// Looks `id` (not 0) up and, when absent, stores it with `tag`; says whether it was absent.
    pub(crate) fn find_or_insert(&mut self, hash: u64, id: u128, tag: u8) -> bool {
        self.reserve_one();
        match self.lookup(hash, id) {
            Lookup::Found => false,
            Lookup::Vacant(slot) => {
                self.insert_at(slot, hash, id, tag);
                true
            }
            Lookup::Full => {
                self.insert_displacing(hash, id, tag);
                true
            }
        }
    }

    /// Stores an absent `id` whose two buckets hold live ids only: it takes a slot of one of
    /// them, and the id it evicts moves to its own other bucket, and so on until an id finds a
    /// vacancy (a random walk). If none does within `DISPLACEMENTS_PER_INSERT_MAX` moves, the
    /// table grows and the id still carried is stored there: nothing is lost.
    #[cold]
    pub(crate) fn insert_displacing(&mut self, hash: u64, id: u128, tag: u8) {
        let live_tag_min = self.live_tag_threshold();
        let (mut carried_id, mut carried_lane) = (id, [fingerprint(hash), tag]);
        let mut bucket = self.buckets_of(hash)[self.next_victim() % 2];
        for _ in 0..DISPLACEMENTS_PER_INSERT_MAX {
            let slot = bucket * BUCKET_SLOTS + self.next_victim() % BUCKET_SLOTS;
            let evicted = (self.ids[slot], self.lane(slot));
            self.ids[slot] = carried_id;
            self.set_lane(slot, carried_lane);
            (carried_id, carried_lane) = evicted;
            self.displacements += 1;
            let [first, second] = self.buckets_of(self.hash(carried_id));
            bucket = if first == bucket { second } else { first };
            let scan = BucketScan::new(&self.control[bucket], 0xff, live_tag_min);
            if let Some(offset) = scan.first_vacant() {
                let slot = bucket * BUCKET_SLOTS + offset;
                self.ids[slot] = carried_id;
                self.set_lane(slot, carried_lane);
                self.live_per_tag[usize::from(tag)] += 1;
                self.live += 1;
                return;
            }
        }
        // The new id is in the table now and `carried_id` is out of it; count it as in, then
        // re-store the carried one in a larger table (it is live: every displaced id is).
        self.live_per_tag[usize::from(tag)] += 1;
        self.live += 1;
        let [_, carried_tag] = carried_lane;
        self.live_per_tag[usize::from(carried_tag)] -= 1;
        self.live -= 1;
        self.grow();
        self.find_or_insert(self.hash(carried_id), carried_id, carried_tag);
    }

    /// The next value of the victim sequence (splitmix64).
    fn next_victim(&mut self) -> usize {
        self.victim_state = self.victim_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.victim_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as usize
    }

    /// Moves the live ids to a table 1.5 times as large. Only when the set outgrows its pre-size.
    fn grow(&mut self) {
        let mut larger = IdTable::with_capacity(self.slots() * 3 / 2);
        larger.hasher = self.hasher.clone();
        larger.live_tag_min = self.live_tag_min;
        larger.passes = self.passes + 1;
        larger.displacements = self.displacements;
        larger.victim_state = self.victim_state;
        // Each id's buckets are requested `GROW_PREFETCH_DISTANCE` ids before it is inserted:
        // one id after another, every insert waited for two cache misses (2.2 s at 8M ids).
        let mut ahead = [(0u128, 0u8, 0u64); GROW_PREFETCH_DISTANCE];
        for (index, (id, tag)) in self.iter().enumerate() {
            let hash = larger.hash(id);
            larger.prefetch(hash);
            let slot = &mut ahead[index % GROW_PREFETCH_DISTANCE];
            if index >= GROW_PREFETCH_DISTANCE {
                let (id, tag, hash) = *slot;
                larger.find_or_insert(hash, id, tag);
            }
            *slot = (id, tag, hash);
        }
        let live = self.live;
        for index in live.saturating_sub(GROW_PREFETCH_DISTANCE)..live {
            let (id, tag, hash) = ahead[index % GROW_PREFETCH_DISTANCE];
            larger.find_or_insert(hash, id, tag);
        }
        debug_assert_eq!(larger.live, self.live);
        *self = larger;
    }

    /// Every live (id, tag).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u128, u8)> + '_ {
        (0..self.slots()).filter_map(|slot| {
            let [stored, tag] = self.lane(slot);
            (stored != 0 && self.is_live(tag)).then(|| (self.ids[slot], tag))
        })
    }

    /// Moves every tag down by `shift` (a bucket `shift` newer becomes the base), or up when
    /// `shift` is negative, in one pass over the control words. Dead slots are emptied first, so
    /// that no dead tag wraps into the live range. The caller makes sure every live tag still
    /// fits.
    pub(crate) fn rebase(&mut self, shift: i64) {
        self.passes += 1;
        let retag = |tag: u8| u8::try_from(i64::from(tag) - shift).expect("the caller checked");
        for slot in 0..self.slots() {
            let [stored, tag] = self.lane(slot);
            if stored == 0 {
                continue;
            }
            if self.is_live(tag) {
                self.set_lane(slot, [stored, retag(tag)]);
            } else {
                self.set_lane(slot, [0, 0]);
                self.ids[slot] = 0;
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

/// 1 in each lane's lowest bit: multiplying a byte by it repeats the byte in every lane.
const LANE_ONES: u128 = 0x0001_0001_0001_0001_0001_0001_0001_0001;
/// Each lane's top bit: where the per-lane answers below are kept.
const LANE_TOPS: u128 = 0x8000_8000_8000_8000_8000_8000_8000_8000;
const LOW_BYTES: u128 = 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;

/// One bucket's control words, aligned so that they never straddle a cache line.
#[derive(Clone, Copy)]
#[repr(align(32))]
struct ControlBucket([u128; BUCKET_WORDS]);

/// What one bucket's control words hold, one bit per slot (bit `i` for slot offset `i`),
/// found with a handful of integer operations per 16-byte word (SWAR).
#[derive(Clone, Copy)]
struct BucketScan {
    /// Occupied slots whose fingerprint is the wanted one.
    matching: u32,
    /// Occupied slots whose tag is live. The others are vacant: empty or dead, free to take.
    live: u32,
}

/// Every slot of a bucket.
const BUCKET_MASK: u32 = (1 << BUCKET_SLOTS) - 1;

impl BucketScan {
    #[inline]
    fn new(bucket: &ControlBucket, wanted: u8, live_tag_min: u64) -> BucketScan {
        debug_assert!(wanted != 0 && live_tag_min <= 256);
        let mut scan = BucketScan {
            matching: 0,
            live: 0,
        };
        for (index, &word) in bucket.0.iter().enumerate() {
            let fingerprints = word & LOW_BYTES;
            let tags = (word >> 8) & LOW_BYTES;
            let occupied = nonzero_lanes(fingerprints);
            // A lane whose fingerprint equals a non-zero `wanted` is occupied.
            let matching = !nonzero_lanes(fingerprints ^ (u128::from(wanted) * LANE_ONES));
            // tag >= live_tag_min exactly when tag + 0x8000 - live_tag_min reaches the lane's
            // top bit; with live_tag_min <= 256 the sum stays below 0x8100, so no lane carries.
            let live = (tags + u128::from(0x8000 - live_tag_min) * LANE_ONES) & occupied;
            let shift = index * WORD_SLOTS;
            scan.matching |= lane_bits(matching) << shift;
            scan.live |= lane_bits(live) << shift;
        }
        scan
    }

    /// The offsets of the slots whose fingerprint matches, first first.
    #[inline]
    fn matching(&self) -> impl Iterator<Item = usize> {
        bits_of(self.matching)
    }

    #[inline]
    fn vacant(&self) -> u32 {
        !self.live & BUCKET_MASK
    }

    #[inline]
    fn first_vacant(&self) -> Option<usize> {
        bits_of(self.vacant()).next()
    }

    #[inline]
    fn vacancies(&self) -> u32 {
        self.vacant().count_ones()
    }

    #[inline]
    fn is_live(&self, offset: usize) -> bool {
        self.live >> offset & 1 != 0
    }
}

/// The eight lanes' top bits of a word (other bits ignored) as eight bits, lane `i` at bit `i`.
/// Per 64-bit half, the top bits shifted down sit at bits 0, 16, 32 and 48; one multiply by
/// 2^48 + 2^33 + 2^18 + 2^3 moves bit 16 k to bit 48 + k, and every other product lands below
/// bit 48 or past bit 63, never on another (so nothing carries into bits 48 to 51).
#[inline]
fn lane_bits(mask: u128) -> u32 {
    const GATHER: u64 = 1 << 48 | 1 << 33 | 1 << 18 | 1 << 3;
    const TOPS: u64 = 0x0001_0001_0001_0001;
    let half = |half: u64| ((((half >> 15) & TOPS).wrapping_mul(GATHER)) >> 48) as u32 & 0xf;
    half(mask as u64) | half((mask >> 64) as u64) << 4
}

/// The set bits of a mask, lowest first.
#[inline]
fn bits_of(mut mask: u32) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let bit = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(bit)
    })
}

/// Sets each lane's top bit where the lane (at most 0xff) is not zero. Adding 0x7fff to a lane
/// of at most 0xff never carries into the next lane.
fn nonzero_lanes(lanes: u128) -> u128 {
    (lanes + 0x7fff * LANE_ONES) & LANE_TOPS
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Checks the cuckoo invariant and the counters over the whole table.
    fn assert_consistent(table: &IdTable) {
        let mut live_per_tag = [0usize; 256];
        let mut live_ids = BTreeMap::new();
        for slot in 0..table.slots() {
            let [fp, tag] = table.lane(slot);
            if fp == 0 {
                continue;
            }
            let stored = table.ids[slot];
            let hash = table.hash(stored);
            assert_eq!(fp, fingerprint(hash));
            assert!(
                table.buckets_of(hash).contains(&(slot / BUCKET_SLOTS)),
                "an id outside both its buckets"
            );
            if table.is_live(tag) {
                live_per_tag[usize::from(tag)] += 1;
                assert!(live_ids.insert(stored, slot).is_none(), "a live id twice");
            }
        }
        assert_eq!(table.live_per_tag, live_per_tag);
        assert_eq!(table.live, live_per_tag.iter().sum::<usize>());
    }

    #[test]
    fn a_pre_sized_table_holds_its_ids_in_18_bytes_a_slot() {
        let mut table = IdTable::with_capacity(1000);
        for n in 1..=1000u128 {
            assert!(table.find_or_insert(table.hash(n), n, 0));
        }
        assert_eq!(table.allocation_size(), 1184 * 18);
        assert!(table.allocation_size() as f64 / table.len() as f64 <= 21.4);
        assert_eq!(table.table_passes(), 0, "never grew");
        assert_consistent(&table);
    }

    #[test]
    fn a_full_table_displaces_ids_then_grows_and_loses_none() {
        let mut table = IdTable::with_capacity(100);
        let size = table.allocation_size();
        for n in 1..=1000u128 {
            assert!(table.find_or_insert(table.hash(n), n, 0));
        }
        assert!(table.displacements() > 0);
        assert!(table.allocation_size() > size);
        assert_eq!(table.len(), 1000);
        for n in 1..=1000u128 {
            assert!(!table.find_or_insert(table.hash(n), n, 0), "{n} was lost");
        }
        assert_consistent(&table);
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

    proptest! {
        /// The word-at-a-time scan of a bucket against the same questions asked slot by slot,
        /// on arbitrary control bytes and thresholds, with the wanted fingerprint made likely.
        #[test]
        fn bucket_scan_matches_slot_by_slot(
            lanes in proptest::collection::vec((0u8..6, 0u8..=255), BUCKET_SLOTS),
            wanted in 1u8..=255,
            live_tag_min in 0u64..=256,
        ) {
            let lanes: Vec<[u8; 2]> =
                lanes.iter().map(|&(fp, tag)| [if fp == 5 { wanted } else { fp }, tag]).collect();
            let mut bucket = ControlBucket([0; BUCKET_WORDS]);
            for (slot, &pair) in lanes.iter().enumerate() {
                bucket.0[slot / WORD_SLOTS] |=
                    u128::from(u16::from_le_bytes(pair)) << (16 * (slot % WORD_SLOTS));
            }
            let scan = BucketScan::new(&bucket, wanted, live_tag_min);
            let live = |&[fp, tag]: &[u8; 2]| fp != 0 && u64::from(tag) >= live_tag_min;
            for (slot, pair) in lanes.iter().enumerate() {
                prop_assert_eq!(scan.is_live(slot), live(pair), "slot {}", slot);
            }
            let matching: Vec<usize> = (0..BUCKET_SLOTS).filter(|&slot| lanes[slot][0] == wanted).collect();
            prop_assert_eq!(scan.matching().collect::<Vec<_>>(), matching);
            let vacant: Vec<usize> = (0..BUCKET_SLOTS).filter(|&slot| !live(&lanes[slot])).collect();
            prop_assert_eq!(scan.first_vacant(), vacant.first().copied());
            prop_assert_eq!(scan.vacancies() as usize, vacant.len());
        }

        /// Against a map of live ids, through inserts, lazy expiry, take-overs, displacements,
        /// growth and rebases, on a small table so its buckets fill and ids are displaced.
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
