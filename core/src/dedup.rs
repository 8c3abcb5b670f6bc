//! Exact dedup by click id within a bounded event-time horizon.
//!
//! One swiss table (hashbrown) holds a compact 20-byte entry per retained id: the full 128-bit
//! click id (no fingerprints, so no false duplicates) and the event-time bucket it expires with.
//! With hashbrown's one control byte that is 21 bytes a slot, or 24 bytes per id at the table's
//! 7/8 maximum load. Expiry is driven by the watermark: a bucket goes once the watermark is past
//! its end plus the horizon. Ids expire a bucket at a time, in one sequential scan, at barriers.
//!
//! Memory is bounded by `ids_max`. At the bound the oldest buckets are evicted early (the
//! effective horizon shrinks and `early_evictions` counts it); if even that frees nothing, a new
//! id is counted but not remembered (`unremembered`). Either way nothing is dropped, and billing,
//! which dedupes over its whole period, explains the difference as a duplicate beyond the horizon.
//!
//! **Invariant:** the set's behaviour depends only on the sequence of inserts and watermarks, so a
//! replay makes identical decisions. The hasher has a fixed seed and no iteration order leaks.

use std::hash::BuildHasher;

use serde::{Deserialize, Serialize};

use crate::ids::ClickId;
use crate::limits;

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
    New,
    Duplicate,
}

/// The 20-byte table entry. Byte arrays keep the alignment at 4, so no padding is added.
#[derive(Clone, Copy, Debug)]
struct Entry {
    click_id: [u8; 16],
    bucket: u32,
}

/// Counters that explain what the bound did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupStats {
    pub early_evictions: u64,
    pub unremembered: u64,
}

pub struct DedupSet {
    config: DedupConfig,
    table: hashbrown::HashTable<Entry>,
    hasher: foldhash::fast::FixedState,
    /// Buckets below this are gone (expired or evicted).
    cutoff_bucket: u32,
    min_bucket: u32,
    /// Ids inserted since the last `take_journal`: the dedup part of a delta checkpoint.
    journal: Vec<(ClickId, u32)>,
    stats: DedupStats,
}

impl DedupSet {
    pub fn new(config: DedupConfig) -> DedupSet {
        config
            .validate()
            .expect("dedup config is validated before use");
        DedupSet {
            config,
            table: hashbrown::HashTable::with_capacity(config.ids_expected),
            hasher: foldhash::fast::FixedState::with_seed(0x5eed_dedd),
            cutoff_bucket: 0,
            min_bucket: u32::MAX,
            journal: Vec::new(),
            stats: DedupStats::default(),
        }
    }

    fn bucket_of(&self, event_time_ms: u64) -> u32 {
        u32::try_from(event_time_ms / self.config.bucket_ms).unwrap_or(u32::MAX)
    }

    fn hash(&self, click_id: ClickId) -> u64 {
        self.hasher.hash_one(click_id.0)
    }

    /// Remembers the click and says whether it was seen before.
    pub fn insert(&mut self, click_id: ClickId, event_time_ms: u64) -> DedupOutcome {
        let bytes = click_id.0.to_le_bytes();
        let hash = self.hash(click_id);
        if self
            .table
            .find(hash, |entry| entry.click_id == bytes)
            .is_some()
        {
            return DedupOutcome::Duplicate;
        }
        // An id whose bucket is already below the cutoff would be expired at once: it is counted
        // as new, and not kept.
        let bucket = self.bucket_of(event_time_ms);
        if bucket < self.cutoff_bucket {
            return DedupOutcome::New;
        }
        if self.table.len() >= self.config.ids_max && !self.evict_oldest_bucket() {
            self.stats.unremembered += 1;
            return DedupOutcome::New;
        }
        self.insert_unchecked(
            hash,
            Entry {
                click_id: bytes,
                bucket,
            },
        );
        self.journal.push((click_id, bucket));
        DedupOutcome::New
    }

    fn insert_unchecked(&mut self, hash: u64, entry: Entry) {
        let hasher = self.hasher.clone();
        self.table.insert_unique(hash, entry, move |entry: &Entry| {
            hasher.hash_one(u128::from_le_bytes(entry.click_id))
        });
        self.min_bucket = self.min_bucket.min(entry.bucket);
    }

    /// At the bound: drops the oldest bucket, unless it is the newest one too.
    fn evict_oldest_bucket(&mut self) -> bool {
        let newest = self
            .table
            .iter()
            .map(|entry| entry.bucket)
            .max()
            .unwrap_or(0);
        if self.min_bucket >= newest {
            return false;
        }
        self.stats.early_evictions += 1;
        self.remove_below(self.min_bucket + 1);
        true
    }

    fn remove_below(&mut self, cutoff_bucket: u32) {
        self.cutoff_bucket = self.cutoff_bucket.max(cutoff_bucket);
        if self.min_bucket >= self.cutoff_bucket {
            return;
        }
        let cutoff = self.cutoff_bucket;
        let mut min_bucket = u32::MAX;
        self.table.retain(|entry| {
            let keep = entry.bucket >= cutoff;
            if keep {
                min_bucket = min_bucket.min(entry.bucket);
            }
            keep
        });
        self.min_bucket = min_bucket;
    }

    /// Forgets every id whose bucket ended more than the horizon before the watermark.
    pub fn expire(&mut self, watermark_ms: u64) {
        let forget_before_ms = watermark_ms.saturating_sub(self.config.horizon_ms);
        let cutoff = self.bucket_of(forget_before_ms);
        self.remove_below(cutoff);
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn stats(&self) -> DedupStats {
        self.stats
    }

    /// Bytes the table allocated. Divide by `len` for bytes per retained id.
    pub fn allocated_bytes(&self) -> usize {
        self.table.allocation_size()
    }

    pub fn cutoff_bucket(&self) -> u32 {
        self.cutoff_bucket
    }

    pub fn take_journal(&mut self) -> Vec<(ClickId, u32)> {
        std::mem::take(&mut self.journal)
    }

    /// Every retained id, sorted: the full-checkpoint form.
    pub fn entries_sorted(&self) -> Vec<(ClickId, u32)> {
        let mut all: Vec<(ClickId, u32)> = self
            .table
            .iter()
            .map(|entry| (ClickId(u128::from_le_bytes(entry.click_id)), entry.bucket))
            .collect();
        all.sort_unstable();
        all
    }

    /// Restore: applies ids from a checkpoint (full or delta), then the checkpoint's cutoff.
    pub fn restore(&mut self, entries: &[(ClickId, u32)], cutoff_bucket: u32, stats: DedupStats) {
        for &(click_id, bucket) in entries {
            let hash = self.hash(click_id);
            let bytes = click_id.0.to_le_bytes();
            if self
                .table
                .find(hash, |entry| entry.click_id == bytes)
                .is_none()
            {
                self.insert_unchecked(
                    hash,
                    Entry {
                        click_id: bytes,
                        bucket,
                    },
                );
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
    fn entries_are_twenty_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 20);
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
            DedupOutcome::New,
            "evicted, below the cutoff"
        );
        assert_eq!(set.len(), 3);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert { id: u8, time: u16 },
        Expire { watermark: u16 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<u8>(), 0u16..2000).prop_map(|(id, time)| Op::Insert { id, time }),
            1 => (0u16..2500).prop_map(|watermark| Op::Expire { watermark }),
        ]
    }

    proptest! {
        /// The set against a BTreeMap model of "id -> bucket, forgotten below the cutoff", with
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
                        let expected = if known { DedupOutcome::Duplicate } else { DedupOutcome::New };
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
