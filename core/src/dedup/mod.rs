//! Exact dedup by click id within a bounded event-time horizon.
//!
//! One bucketized cuckoo table (`table`) holds 18 bytes a slot per retained id: the full 128-bit
//! click id (compared in full, so no false duplicates), a fingerprint byte that lets most lookups
//! skip the ids, and a one-byte tag for the event-time bucket the id expires with, relative to a
//! base bucket. Pre-sized for `ids_expected` at 85% load, that is 21.2 bytes per id, and it stays
//! so in steady state.
//! Expiry is driven by the watermark: a bucket goes once the watermark is past its end plus the
//! horizon. Ids expire a bucket at a time, at barriers, in constant time: the table only moves
//! its liveness threshold, and inserts take the dead slots over (`table` says how).
//!
//! Memory is bounded by `ids_max`. At the bound the oldest bucket is evicted early (the cutoff
//! rises, the effective horizon shrinks and `early_evictions` counts it); when one bucket holds
//! every id, that bucket goes too (`unremembered`).
//!
//! Tags span `TAG_SPAN` (255) buckets. When an id's bucket falls outside the span, the tags are
//! rebased inside the insert that needs it: one pass over the table that empties dead slots and
//! retags live ones. A horizon holds at most `DEDUP_BUCKETS_PER_HORIZON_MAX` buckets, so live
//! ids always fit the span. The nil id (the table's empty marker) and ids too far from the
//! table's live buckets (an event-time jump of hours within one epoch) wait in a small ordered
//! map, `aside`, so the rule stays exactly "remembered until its bucket is below the cutoff".
//! The table must hold the most ids the set holds, just before a bucket expires, so the bucket
//! size (`DEDUP_BUCKET_MS_DEFAULT`) sets the sawtooth of bytes per retained id.
//!
//! The set never answers `New` for an id it could not have seen: an id whose bucket is below the
//! cutoff, expired or evicted, is `Unverifiable`, and the aggregator counts it in the unverified
//! lane for billing (which dedupes over its whole period) to decide. So a resend that comes back
//! after the horizon, or after an early eviction, is never counted as a unique click.
//!
//! **Invariant:** the set's behaviour depends only on the sequence of inserts and watermarks, so a
//! replay makes identical decisions. The hasher has a fixed seed and no iteration order leaks.

mod table;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::ClickId;
use crate::limits;
use table::{IdTable, Lookup};

/// What `make_tag_room` did.
enum TagRoom {
    Fits,
    /// Fits after a rebase, which emptied dead slots: look the vacancy up again.
    Rebased,
    NoRoom,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupConfig {
    pub horizon_ms: u64,
    pub bucket_ms: u64,
    /// The bound on retained ids.
    pub ids_max: usize,
    /// The table is pre-sized for this many ids, so that steady state never rehashes.
    pub ids_expected: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            horizon_ms: limits::DEDUP_HORIZON_MS_DEFAULT,
            bucket_ms: limits::DEDUP_BUCKET_MS_DEFAULT,
            ids_max: limits::DEDUP_IDS_PER_PARTITION_MAX_DEFAULT,
            ids_expected: 1 << 16,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DedupConfigError {
    #[error("dedup bucket_ms {bucket_ms} must be positive and divide horizon_ms {horizon_ms}")]
    Bucket { bucket_ms: u64, horizon_ms: u64 },
    #[error(
        "dedup horizon_ms {horizon_ms} spans {buckets} buckets of bucket_ms {bucket_ms}; the limit is {limit}: make bucket_ms larger"
    )]
    TooManyBuckets {
        horizon_ms: u64,
        bucket_ms: u64,
        buckets: u64,
        limit: u64,
    },
    #[error("dedup ids_max {ids_max} must be at least 1 and at least ids_expected {ids_expected}")]
    Bound { ids_max: usize, ids_expected: usize },
}

impl DedupConfig {
    pub fn validate(&self) -> Result<(), DedupConfigError> {
        if self.bucket_ms == 0 || !self.horizon_ms.is_multiple_of(self.bucket_ms) {
            return Err(DedupConfigError::Bucket {
                bucket_ms: self.bucket_ms,
                horizon_ms: self.horizon_ms,
            });
        }
        let buckets = self.horizon_ms / self.bucket_ms;
        if buckets > limits::DEDUP_BUCKETS_PER_HORIZON_MAX {
            return Err(DedupConfigError::TooManyBuckets {
                horizon_ms: self.horizon_ms,
                bucket_ms: self.bucket_ms,
                buckets,
                limit: limits::DEDUP_BUCKETS_PER_HORIZON_MAX,
            });
        }
        if self.ids_max == 0 || self.ids_max < self.ids_expected {
            return Err(DedupConfigError::Bound {
                ids_max: self.ids_max,
                ids_expected: self.ids_expected,
            });
        }
        Ok(())
    }
}

/// What dedup decided about one click.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DedupOutcome {
    /// Never seen within the horizon, and now remembered.
    New,
    Duplicate,
    /// Its bucket is below the cutoff (expired, or evicted at the bound): a copy of it could
    /// have come and gone, so the set cannot say. Not remembered.
    Unverifiable,
}

/// Counters that explain what the bound did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupStats {
    pub early_evictions: u64,
    pub unremembered: u64,
}

/// The widest span of buckets the table's one-byte tags can tell apart.
const TAG_SPAN: u32 = u8::MAX as u32;

pub struct DedupSet {
    config: DedupConfig,
    table: IdTable,
    /// The bucket a tag of 0 stands for.
    base_bucket: u32,
    /// Buckets below this are gone (expired or evicted).
    cutoff_bucket: u32,
    /// Ids the table cannot hold, by bucket: the nil id (the table's empty marker; validation
    /// rejects nil ids but the codec does not) and ids whose bucket lies more than `TAG_SPAN`
    /// buckets from the table's (an event-time jump of hours at the default 30 s buckets).
    /// Normally empty; ordered, so nothing about it depends on a hasher.
    aside: BTreeMap<u128, u32>,
    /// Ids inserted since the last `take_journal`: the dedup part of a delta checkpoint.
    journal: Vec<(ClickId, u32)>,
    /// An empty journal handed back (`recycle_journal`), whose memory the next epoch's journal
    /// reuses.
    spare_journal: Vec<(ClickId, u32)>,
    stats: DedupStats,
}

impl DedupSet {
    pub fn new(config: DedupConfig) -> DedupSet {
        config
            .validate()
            .expect("dedup config is validated before use");
        DedupSet {
            config,
            table: IdTable::with_capacity(config.ids_expected),
            base_bucket: 0,
            cutoff_bucket: 0,
            aside: BTreeMap::new(),
            journal: Vec::new(),
            spare_journal: Vec::new(),
            stats: DedupStats::default(),
        }
    }

    fn bucket_of(&self, event_time_ms: u64) -> u32 {
        u32::try_from(event_time_ms / self.config.bucket_ms).unwrap_or(u32::MAX)
    }

    /// The hash `prefetch` and `insert_hashed` take. Fixed for the life of the set.
    #[inline]
    pub fn hash(&self, click_id: ClickId) -> u64 {
        self.table.hash(click_id.0)
    }

    /// Starts loading the memory an insert of the id whose `hash` this is will touch. A hint: no
    /// effect on results. Callers that know the next few ids (a batch) hide most of a cache miss
    /// per id with it.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        self.table.prefetch(hash);
    }

    /// Starts loading the id slot an insert of the id whose `hash` this is will most likely
    /// read or write. A hint, like `prefetch`, for later in the pipeline: it reads the control
    /// words that `prefetch` requested, so it pays off once they have arrived.
    #[inline]
    pub fn prefetch_id(&self, hash: u64) {
        self.table.prefetch_id(hash);
    }

    /// Remembers the click and says whether it was seen before.
    pub fn insert(&mut self, click_id: ClickId, event_time_ms: u64) -> DedupOutcome {
        self.insert_hashed(click_id, self.hash(click_id), event_time_ms)
    }

    /// `insert` for an id whose `hash` the caller computed ahead, to prefetch.
    pub fn insert_hashed(
        &mut self,
        click_id: ClickId,
        hash: u64,
        event_time_ms: u64,
    ) -> DedupOutcome {
        debug_assert_eq!(hash, self.hash(click_id), "a hash from DedupSet::hash");
        // One probe both answers "seen?" and finds the slot a new id goes to.
        self.table.reserve_one();
        let vacant = match self.lookup(hash, click_id) {
            Lookup::Found => return DedupOutcome::Duplicate,
            Lookup::Vacant(index) => Some(index),
            // Both its buckets hold live ids: the store displaces one.
            Lookup::Full => None,
        };
        // An id whose bucket is below the cutoff may have been seen and forgotten.
        let bucket = self.bucket_of(event_time_ms);
        if bucket < self.cutoff_bucket {
            return DedupOutcome::Unverifiable;
        }
        // Evicting only kills ids (nothing moves), so the vacancy stays good.
        if self.len() >= self.config.ids_max {
            self.evict_for_room();
            if bucket < self.cutoff_bucket {
                return DedupOutcome::Unverifiable;
            }
        }
        self.store(hash, click_id, bucket, vacant);
        self.journal.push((click_id, bucket));
        DedupOutcome::New
    }

    /// The table's answer, or for the nil id and ids aside, theirs (`Vacant` in a slot that
    /// only a non-nil id may take).
    fn lookup(&self, hash: u64, click_id: ClickId) -> Lookup {
        if !self.aside.is_empty() && self.aside.contains_key(&click_id.0) {
            return Lookup::Found;
        }
        if click_id.0 == 0 {
            return Lookup::Vacant(usize::MAX);
        }
        self.table.lookup(hash, click_id.0)
    }

    fn contains(&self, hash: u64, click_id: ClickId) -> bool {
        self.lookup(hash, click_id) == Lookup::Found
    }

    /// Stores an id known to be absent, in the table when its bucket fits the tags' span
    /// (rebasing the tags if that makes it fit), else aside. `vacant` is the slot a lookup just
    /// found for it, if nothing moved since.
    fn store(&mut self, hash: u64, click_id: ClickId, bucket: u32, vacant: Option<usize>) {
        if click_id.0 == 0 {
            self.aside.insert(click_id.0, bucket);
            return;
        }
        let room = self.make_tag_room(bucket);
        let tag = bucket.wrapping_sub(self.base_bucket) as u8;
        match (room, vacant) {
            (TagRoom::NoRoom, _) => {
                self.aside.insert(click_id.0, bucket);
            }
            (TagRoom::Fits, Some(vacant)) => self.table.insert_at(vacant, hash, click_id.0, tag),
            (TagRoom::Fits | TagRoom::Rebased, _) => {
                self.table.find_or_insert(hash, click_id.0, tag);
            }
        }
    }

    /// The oldest and newest live bucket in the table.
    fn table_bucket_range(&self) -> Option<(u32, u32)> {
        let (oldest, newest) = self.table.live_tag_range()?;
        Some((
            self.base_bucket + u32::from(oldest),
            self.base_bucket + u32::from(newest),
        ))
    }

    /// Makes `bucket` expressible as a tag, rebasing the tags (a pass over the table) if needed.
    fn make_tag_room(&mut self, bucket: u32) -> TagRoom {
        if bucket >= self.base_bucket && bucket - self.base_bucket <= TAG_SPAN {
            return TagRoom::Fits;
        }
        let (oldest, newest) = self.table_bucket_range().unwrap_or((bucket, bucket));
        let new_base = oldest.min(bucket);
        if newest.max(bucket) - new_base > TAG_SPAN {
            return TagRoom::NoRoom;
        }
        self.rebase(new_base);
        TagRoom::Rebased
    }

    /// Moves the tags' base to `new_base`, which must not be above any live bucket, then moves
    /// ids from aside into the table where their buckets now fit.
    fn rebase(&mut self, new_base: u32) {
        self.table
            .rebase(i64::from(new_base) - i64::from(self.base_bucket));
        self.base_bucket = new_base;
        let movable: Vec<(u128, u32)> = self
            .aside
            .iter()
            .filter(|&(&id, &bucket)| {
                id != 0 && bucket >= new_base && bucket - new_base <= TAG_SPAN
            })
            .map(|(&id, &bucket)| (id, bucket))
            .collect();
        for (id, bucket) in movable {
            self.aside.remove(&id);
            self.table
                .find_or_insert(self.table.hash(id), id, (bucket - new_base) as u8);
        }
    }

    /// The oldest and newest bucket held anywhere, if anything is held.
    fn bucket_range(&self) -> Option<(u32, u32)> {
        self.aside
            .values()
            .map(|&bucket| (bucket, bucket))
            .chain(self.table_bucket_range())
            .reduce(|(low, high), (min, max)| (low.min(min), high.max(max)))
    }

    /// At the bound: drops the oldest bucket; when it is the newest one too, every id goes and
    /// the cutoff passes the newest bucket, so that what can no longer be remembered is
    /// unverifiable rather than new.
    fn evict_for_room(&mut self) {
        let Some((oldest, newest)) = self.bucket_range() else {
            return;
        };
        self.stats.early_evictions += 1;
        if oldest >= newest {
            self.stats.unremembered += 1;
        }
        self.remove_below(oldest + 1);
    }

    /// Raises the cutoff. Constant time: the table only moves its liveness threshold.
    fn remove_below(&mut self, cutoff_bucket: u32) {
        self.cutoff_bucket = self.cutoff_bucket.max(cutoff_bucket);
        self.table
            .expire_tags_below(i64::from(self.cutoff_bucket) - i64::from(self.base_bucket));
        if !self.aside.is_empty() {
            let cutoff = self.cutoff_bucket;
            self.aside.retain(|_, bucket| *bucket >= cutoff);
        }
    }

    /// Forgets every id whose bucket ended more than the horizon before the watermark.
    pub fn expire(&mut self, watermark_ms: u64) {
        let forget_before_ms = watermark_ms.saturating_sub(self.config.horizon_ms);
        let cutoff = self.bucket_of(forget_before_ms);
        self.remove_below(cutoff);
    }

    pub fn len(&self) -> usize {
        self.table.len() + self.aside.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> DedupStats {
        self.stats
    }

    /// Passes over the whole table so far (grows and tag rebases): each stalls the insert that
    /// triggers it for a time proportional to the table.
    pub fn table_passes(&self) -> u64 {
        self.table.table_passes()
    }

    /// Ids moved to their other bucket to make room for an insert, so far: each is a cache miss
    /// that no prefetch covers.
    pub fn displacements(&self) -> u64 {
        self.table.displacements()
    }

    /// Bytes the table allocated. Divide by `len` for bytes per retained id.
    pub fn allocated_bytes(&self) -> usize {
        self.table.allocation_size()
    }

    pub fn cutoff_bucket(&self) -> u32 {
        self.cutoff_bucket
    }

    /// The event time below which the set cannot decide a click: the cutoff bucket's start.
    pub fn cutoff_ms(&self) -> u64 {
        u64::from(self.cutoff_bucket) * self.config.bucket_ms
    }

    pub fn take_journal(&mut self) -> Vec<(ClickId, u32)> {
        // The next epoch journals about as many ids as this one: start it at that size, in the
        // spare's memory when it has room. A fresh allocation of tens of MiB page-faults 4 KiB
        // at a time as it fills (reports/2026-11-28-rust-svc/hot-path-session-3.md).
        let capacity = self.journal.len();
        let mut next = std::mem::take(&mut self.spare_journal);
        next.reserve(capacity);
        std::mem::replace(&mut self.journal, next)
    }

    /// Hands back a journal `take_journal` returned, once its checkpoint is written, so that a
    /// later epoch reuses its memory.
    pub fn recycle_journal(&mut self, mut journal: Vec<(ClickId, u32)>) {
        journal.clear();
        if journal.capacity() > self.spare_journal.capacity() {
            self.spare_journal = journal;
        }
    }

    /// Every retained id, sorted: the full-checkpoint form.
    pub fn entries_sorted(&self) -> Vec<(ClickId, u32)> {
        let mut all: Vec<(ClickId, u32)> = self
            .table
            .iter()
            .map(|(id, tag)| (ClickId(id), self.base_bucket + u32::from(tag)))
            .chain(
                self.aside
                    .iter()
                    .map(|(&id, &bucket)| (ClickId(id), bucket)),
            )
            .collect();
        all.sort_unstable();
        all
    }

    /// Restore: applies ids from a checkpoint (full or delta), then the checkpoint's cutoff.
    pub fn restore(&mut self, entries: &[(ClickId, u32)], cutoff_bucket: u32, stats: DedupStats) {
        for &(click_id, bucket) in entries {
            let hash = self.table.hash(click_id.0);
            if !self.contains(hash, click_id) && bucket >= self.cutoff_bucket {
                self.store(hash, click_id, bucket, None);
            }
        }
        self.remove_below(cutoff_bucket);
        self.stats = stats;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn config(ids_max: usize) -> DedupConfig {
        DedupConfig {
            horizon_ms: 100,
            bucket_ms: 10,
            ids_max,
            ids_expected: ids_max.min(64),
        }
    }

    #[test]
    fn detects_duplicates_until_the_horizon_passes() {
        let mut set = DedupSet::new(config(1000));
        assert_eq!(set.insert(ClickId(1), 5), DedupOutcome::New);
        assert_eq!(set.insert(ClickId(1), 5), DedupOutcome::Duplicate);
        set.expire(109);
        assert_eq!(
            set.insert(ClickId(1), 5),
            DedupOutcome::Duplicate,
            "bucket 0 ends at 10"
        );
        set.expire(110);
        assert!(set.is_empty());
    }

    #[test]
    fn at_the_bound_the_oldest_bucket_goes_first() {
        let mut set = DedupSet::new(config(3));
        set.insert(ClickId(1), 0);
        set.insert(ClickId(2), 10);
        set.insert(ClickId(3), 20);
        assert_eq!(set.insert(ClickId(4), 20), DedupOutcome::New);
        assert_eq!(set.stats().early_evictions, 1);
        assert_eq!(set.insert(ClickId(2), 10), DedupOutcome::Duplicate);
        assert_eq!(
            set.insert(ClickId(1), 0),
            DedupOutcome::Unverifiable,
            "evicted, below the cutoff"
        );
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn ids_more_than_the_tag_span_apart_are_all_kept_and_expire_in_order() {
        let mut set = DedupSet::new(config(1000));
        set.insert(ClickId(1), 10 * 300);
        assert_eq!(set.insert(ClickId(2), 10 * 100), DedupOutcome::New);
        assert_eq!(set.insert(ClickId(3), 10 * 40), DedupOutcome::New);
        assert_eq!(set.insert(ClickId(4), 10 * 700), DedupOutcome::New);
        for (id, bucket) in [(1, 300), (2, 100), (3, 40), (4, 700)] {
            assert_eq!(
                set.insert(ClickId(id), 10 * bucket),
                DedupOutcome::Duplicate
            );
        }
        assert_eq!(set.stats(), DedupStats::default(), "nothing evicted early");
        assert_eq!(set.len(), 4);
        set.expire(10 * 250 + 100);
        assert_eq!(
            set.entries_sorted(),
            vec![(ClickId(1), 300), (ClickId(4), 700)]
        );
        set.expire(10 * 650 + 100);
        assert_eq!(set.entries_sorted(), vec![(ClickId(4), 700)]);
        assert_eq!(set.insert(ClickId(4), 10 * 700), DedupOutcome::Duplicate);
        assert_eq!(set.insert(ClickId(1), 10 * 300), DedupOutcome::Unverifiable);
        assert_eq!(set.insert(ClickId(5), 10 * 1000), DedupOutcome::New);
        set.expire(10 * 1000 + 100);
        assert_eq!(
            set.insert(ClickId(5), 10 * 1000),
            DedupOutcome::Duplicate,
            "an id aside lives as long as its bucket is not below the cutoff"
        );
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn the_nil_id_is_deduplicated_kept_and_expired_like_any_other() {
        let mut set = DedupSet::new(config(1000));
        assert_eq!(set.insert(ClickId(0), 5), DedupOutcome::New);
        assert_eq!(set.insert(ClickId(0), 7), DedupOutcome::Duplicate);
        assert_eq!(set.len(), 1);
        assert_eq!(set.entries_sorted(), vec![(ClickId(0), 0)]);
        let mut restored = DedupSet::new(config(1000));
        restored.restore(&set.entries_sorted(), 0, set.stats());
        assert_eq!(restored.insert(ClickId(0), 5), DedupOutcome::Duplicate);
        restored.expire(110);
        assert!(restored.is_empty());
        assert_eq!(
            restored.insert(ClickId(0), 5),
            DedupOutcome::Unverifiable,
            "below the cutoff"
        );
    }

    /// Regression (late clicks older than the dedup horizon were counted as unique): an id
    /// whose bucket was below the cutoff was answered `New` without being remembered, so every
    /// copy of it counted again.
    #[test]
    fn a_late_click_below_the_cutoff_and_its_resends_are_never_new() {
        let mut set = DedupSet::new(config(1000));
        set.insert(ClickId(9), 500);
        set.expire(500);
        assert_eq!(set.cutoff_ms(), 400);
        for _ in 0..3 {
            assert_eq!(set.insert(ClickId(1), 390), DedupOutcome::Unverifiable);
        }
        assert_eq!(set.insert(ClickId(2), 400), DedupOutcome::New);
    }

    /// At the bound with every id in one bucket, the bucket goes and its clicks are
    /// unverifiable: never counted new while forgotten.
    #[test]
    fn at_the_bound_with_one_bucket_new_ids_are_unverifiable() {
        let mut set = DedupSet::new(config(2));
        assert_eq!(set.insert(ClickId(1), 5), DedupOutcome::New);
        assert_eq!(set.insert(ClickId(2), 5), DedupOutcome::New);
        assert_eq!(set.insert(ClickId(3), 5), DedupOutcome::Unverifiable);
        assert_eq!(set.insert(ClickId(3), 5), DedupOutcome::Unverifiable);
        assert_eq!(set.insert(ClickId(1), 5), DedupOutcome::Unverifiable);
        assert_eq!(set.stats().unremembered, 1);
        assert_eq!(
            set.insert(ClickId(4), 15),
            DedupOutcome::New,
            "a newer bucket"
        );
    }

    #[test]
    fn too_many_buckets_per_horizon_is_refused_with_the_limit() {
        let error = DedupConfig {
            horizon_ms: 101_000,
            bucket_ms: 1000,
            ..DedupConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "dedup horizon_ms 101000 spans 101 buckets of bucket_ms 1000; the limit is 100: make bucket_ms larger"
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert { id: u8, time: u16 },
        Expire { watermark: u16 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<u8>(), 0u16..6000).prop_map(|(id, time)| Op::Insert { id, time }),
            1 => (0u16..6500).prop_map(|watermark| Op::Expire { watermark }),
        ]
    }

    proptest! {
        /// The set against a BTreeMap model of "id -> bucket, forgotten below the cutoff", over
        /// times 600 buckets apart (so ids go aside and tags rebase both ways), with
        /// a restart (checkpoint, drop, restore) at a random point.
        #[test]
        fn matches_a_map_model(ops in proptest::collection::vec(op(), 1..400), restart_at in 0usize..400) {
            let mut set = DedupSet::new(config(10_000));
            let mut model: BTreeMap<u128, u32> = BTreeMap::new();
            let mut model_cutoff = 0u32;
            let mut model_watermark = 0u64;
            for (index, op) in ops.iter().enumerate() {
                if index == restart_at {
                    let entries = set.entries_sorted();
                    let mut restored = DedupSet::new(config(10_000));
                    restored.restore(&entries, set.cutoff_bucket(), set.stats());
                    set = restored;
                }
                match *op {
                    Op::Insert { id, time } => {
                        let bucket = u32::from(time) / 10;
                        let known = model.contains_key(&u128::from(id));
                        if !known && bucket >= model_cutoff {
                            model.insert(u128::from(id), bucket);
                        }
                        let expected = if known {
                            DedupOutcome::Duplicate
                        } else if bucket < model_cutoff {
                            DedupOutcome::Unverifiable
                        } else {
                            DedupOutcome::New
                        };
                        prop_assert_eq!(set.insert(ClickId(u128::from(id)), u64::from(time)), expected);
                    }
                    Op::Expire { watermark } => {
                        model_watermark = model_watermark.max(u64::from(watermark));
                        let cutoff = (model_watermark.saturating_sub(100) / 10) as u32;
                        model_cutoff = model_cutoff.max(cutoff);
                        model.retain(|_, bucket| *bucket >= model_cutoff);
                        set.expire(model_watermark);
                    }
                }
                prop_assert_eq!(set.len(), model.len());
            }
        }
    }
}
