//! Event-time windows: the watermark, and tables of counts per tumbling window.
//!
//! Each click is counted in a window of `window_ms` keyed by (campaign, ad, salt), and in an hour
//! rollup keyed by (campaign, salt) that billing reconciles against. Which *lane* a click goes to
//! is decided once, at the window level: on time while the window is open, late once the
//! watermark has passed the window's end plus the allowed lateness. The hour rollup follows the
//! window's decision, so an hour's on-time total is always the sum of its windows' on-time totals.
//!
//! **Invariant:** this module never reads a clock. The watermark moves with event times and, for an
//! idle partition, with a processing time the caller passes in.

use std::hash::Hash;

use serde::{Deserialize, Serialize};

use crate::ids::{AdId, CampaignId, Salt};
use crate::limits;
use crate::open_table::OpenTable;
use crate::probing::ProbeSlots;

/// The hash of a series key in every `CountsTable`: a caller that knows its next keys computes
/// it once, to `prefetch` and then to `add_hashed`.
#[inline]
pub fn key_hash<K: Hash>(key: &K) -> u64 {
    crate::open_table::key_hash(key)
}

/// The event-time rules of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowConfig {
    pub window_ms: u64,
    pub allowed_lateness_ms: u64,
    pub max_out_of_orderness_ms: u64,
    pub idle_timeout_ms: u64,
    pub late_retention_ms: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            window_ms: limits::WINDOW_MS_DEFAULT,
            allowed_lateness_ms: limits::ALLOWED_LATENESS_MS_DEFAULT,
            max_out_of_orderness_ms: limits::MAX_OUT_OF_ORDERNESS_MS_DEFAULT,
            idle_timeout_ms: limits::IDLE_TIMEOUT_MS_DEFAULT,
            late_retention_ms: limits::LATE_RETENTION_MS_DEFAULT,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowConfigError {
    #[error(
        "window_ms {window_ms} must be at least 1000 and divide an hour ({})",
        limits::HOUR_MS
    )]
    WindowSize { window_ms: u64 },
    #[error(
        "late_retention_ms {late_retention_ms} must be at least an hour plus allowed_lateness_ms ({needed_ms})"
    )]
    LateRetention {
        late_retention_ms: u64,
        needed_ms: u64,
    },
}

impl WindowConfig {
    pub fn validate(&self) -> Result<(), WindowConfigError> {
        if self.window_ms < 1000 || !limits::HOUR_MS.is_multiple_of(self.window_ms) {
            return Err(WindowConfigError::WindowSize {
                window_ms: self.window_ms,
            });
        }
        let needed_ms = limits::HOUR_MS + self.allowed_lateness_ms;
        if self.late_retention_ms < needed_ms {
            return Err(WindowConfigError::LateRetention {
                late_retention_ms: self.late_retention_ms,
                needed_ms,
            });
        }
        Ok(())
    }

    pub fn window_start(&self, event_time_ms: u64) -> u64 {
        event_time_ms - event_time_ms % self.window_ms
    }

    /// An on-time window closes for good once the watermark reaches this.
    pub fn close_at(&self, window_start_ms: u64, window_ms: u64) -> u64 {
        window_start_ms + window_ms + self.allowed_lateness_ms
    }

    /// A late-lane series is retired once the watermark reaches this.
    pub fn retire_at(&self, window_start_ms: u64, window_ms: u64) -> u64 {
        window_start_ms + window_ms + self.late_retention_ms
    }
}

/// Where a click is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Lane {
    /// The window is open: the click updates the window in place.
    OnTime,
    /// The window closed: the click goes to the late side output of that window.
    Late,
}

/// The per-partition watermark: the max event time seen minus the out-of-orderness bound, moved
/// by processing time while the partition is idle. It never goes backwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub watermark_ms: u64,
    pub max_event_time_ms: u64,
    /// Processing time of the last batch that held events; `None` before the first.
    pub last_activity_processing_ms: Option<u64>,
}

impl Watermark {
    pub fn observe_event(&mut self, event_time_ms: u64, config: &WindowConfig) {
        if event_time_ms > self.max_event_time_ms {
            self.max_event_time_ms = event_time_ms;
            let candidate = event_time_ms.saturating_sub(config.max_out_of_orderness_ms);
            self.watermark_ms = self.watermark_ms.max(candidate);
        }
    }

    pub fn observe_activity(&mut self, processing_ms: u64) {
        self.last_activity_processing_ms = Some(processing_ms);
    }

    /// Advances an idle partition's watermark with processing time, so that an idle partition
    /// never stalls output. Returns whether the watermark moved.
    pub fn advance_idle(&mut self, processing_ms: u64, config: &WindowConfig) -> bool {
        let idle = match self.last_activity_processing_ms {
            None => true,
            Some(last) => processing_ms.saturating_sub(last) >= config.idle_timeout_ms,
        };
        let candidate = processing_ms.saturating_sub(config.max_out_of_orderness_ms);
        if idle && candidate > self.watermark_ms {
            self.watermark_ms = candidate;
            return true;
        }
        false
    }

    /// End of input (batch mode): every window closes.
    pub fn close_all(&mut self) {
        self.watermark_ms = u64::MAX;
    }
}

/// Counts of one series in one lane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Every valid click, duplicates and fraud included.
    pub clicks: u64,
    /// Unique clicks that are not fraud: the billable ones.
    pub unique: u64,
    /// Unique clicks that the fraud checks flagged.
    pub fraud: u64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.clicks += other.clicks;
        self.unique += other.unique;
        self.fraud += other.fraud;
    }
}

/// The key of a window series: one (campaign, ad, salt) in one window.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct WindowKey {
    pub campaign_id: CampaignId,
    pub ad_id: AdId,
    pub salt: Salt,
    pub window_start_ms: u64,
}

/// The key of an hour rollup: one (campaign, salt) in one hour.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct HourKey {
    pub campaign_id: CampaignId,
    pub salt: Salt,
    pub hour_start_ms: u64,
}

/// Keys that know which window they belong to.
pub trait SeriesStart: Copy + Default + Eq + Hash + Ord {
    fn start_ms(&self) -> u64;
}

impl SeriesStart for WindowKey {
    fn start_ms(&self) -> u64 {
        self.window_start_ms
    }
}

impl SeriesStart for HourKey {
    fn start_ms(&self) -> u64 {
        self.hour_start_ms
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    counts: Counts,
    dirty: bool,
}

/// `take_dirty` scans the whole table instead of looking dirty keys up once there is one dirty
/// key per this many slots: a sequential slot costs a small fraction of a random lookup.
const DIRTY_LOOKUPS_PER_SCAN: usize = 16;

/// A table of counts per series, with a journal of the series changed since the last barrier.
///
/// The journal is what the sink writes (absolute values) and what a delta checkpoint holds.
/// Removal is never journaled: it follows deterministically from the watermark, so a restore
/// replays it by calling `retire_before` with the restored watermark.
#[derive(Clone, Debug)]
pub struct CountsTable<K: SeriesStart> {
    entries: OpenTable<K, Entry>,
    dirty: Vec<K>,
    /// The smallest series start present, so that a barrier with nothing to retire costs O(1).
    min_start_ms: u64,
}

impl<K: SeriesStart> Default for CountsTable<K> {
    fn default() -> Self {
        CountsTable {
            entries: OpenTable::default(),
            dirty: Vec::new(),
            min_start_ms: u64::MAX,
        }
    }
}

impl<K: SeriesStart> CountsTable<K> {
    /// Adds `delta` to a series and returns its new counts.
    pub fn add(&mut self, key: K, delta: Counts) -> Counts {
        self.add_hashed(key, key_hash(&key), delta)
    }

    /// `add` for a key whose hash (`key_hash`) the caller computed ahead, to prefetch.
    #[inline]
    pub fn add_hashed(&mut self, key: K, hash: u64, delta: Counts) -> Counts {
        let entry = self
            .entries
            .get_or_insert_hashed(key, hash, Entry::default());
        entry.counts.add(delta);
        let counts = entry.counts;
        if !entry.dirty {
            entry.dirty = true;
            self.dirty.push(key);
        }
        self.min_start_ms = self.min_start_ms.min(key.start_ms());
        counts
    }

    pub fn get(&self, key: &K) -> Option<Counts> {
        self.entries.get(key).map(|entry| entry.counts)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }

    /// Asks the CPU to start loading the slot of the key whose `key_hash` is `hash`: callers
    /// that know the next keys of a batch overlap the cache misses instead of paying them one by
    /// one. A hint only.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        self.entries.prefetch(hash);
    }

    /// The series changed since the last call, with their absolute counts, sorted by key so that
    /// output order never depends on hashing.
    pub fn take_dirty(&mut self) -> Vec<(K, Counts)> {
        // Looking each dirty key up again is a random access per key, a cache miss in a large
        // table; past a share of the slots, one sequential pass over the table is cheaper. Same
        // set either way.
        let mut changed: Vec<(K, Counts)> =
            if self.dirty.len() * DIRTY_LOOKUPS_PER_SCAN >= self.entries.slots() {
                self.dirty.clear();
                self.entries
                    .iter_mut()
                    .filter(|(_, entry)| entry.dirty)
                    .map(|(key, entry)| {
                        entry.dirty = false;
                        (*key, entry.counts)
                    })
                    .collect()
            } else {
                self.dirty
                    .drain(..)
                    .map(|key| {
                        let entry = self.entries.get_mut(&key).expect("dirty keys are present");
                        entry.dirty = false;
                        (key, entry.counts)
                    })
                    .collect()
            };
        changed.sort_unstable_by_key(|(key, _)| *key);
        changed
    }

    /// Removes every series whose `close_at(start)` is at or below the watermark, and returns them
    /// sorted. Dirty series must have been taken first.
    pub fn retire_before(
        &mut self,
        watermark_ms: u64,
        close_at: impl Fn(u64) -> u64,
    ) -> Vec<(K, Counts)> {
        if self.min_start_ms == u64::MAX || close_at(self.min_start_ms) > watermark_ms {
            return Vec::new();
        }
        assert!(self.dirty.is_empty(), "take dirty series before retiring");
        let mut retired = Vec::new();
        let mut min_start_ms = u64::MAX;
        self.entries.retain(|key, entry| {
            if close_at(key.start_ms()) <= watermark_ms {
                retired.push((*key, entry.counts));
                false
            } else {
                min_start_ms = min_start_ms.min(key.start_ms());
                true
            }
        });
        self.min_start_ms = min_start_ms;
        retired.sort_unstable_by_key(|(key, _)| *key);
        retired
    }

    /// Every series, sorted: the full-checkpoint form.
    pub fn entries_sorted(&self) -> Vec<(K, Counts)> {
        assert!(self.dirty.is_empty(), "snapshot only at a barrier");
        let mut all: Vec<(K, Counts)> = self
            .entries
            .iter()
            .map(|(key, entry)| (*key, entry.counts))
            .collect();
        all.sort_unstable_by_key(|(key, _)| *key);
        all
    }

    /// Restore: sets a series to an absolute value, not dirty.
    pub fn upsert_clean(&mut self, key: K, counts: Counts) {
        self.entries.insert(
            key,
            Entry {
                counts,
                dirty: false,
            },
        );
        self.min_start_ms = self.min_start_ms.min(key.start_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_trails_max_event_time_and_never_goes_back() {
        let config = WindowConfig::default();
        let mut watermark = Watermark::default();
        watermark.observe_event(100_000, &config);
        assert_eq!(watermark.watermark_ms, 95_000);
        watermark.observe_event(50_000, &config);
        assert_eq!(watermark.watermark_ms, 95_000);
        watermark.observe_activity(1_000);
        assert!(!watermark.advance_idle(5_999, &config), "not idle yet");
        assert!(watermark.advance_idle(200_000, &config));
        assert_eq!(watermark.watermark_ms, 195_000);
        assert!(
            !watermark.advance_idle(1, &config),
            "processing time going back is ignored"
        );
    }

    /// Both ways of taking the dirty series, the lookup of each (few dirty) and the pass over
    /// the table (many), give every changed series once with its counts, and leave none dirty.
    #[test]
    fn dirty_series_are_taken_alike_by_lookup_and_by_scan() {
        let one = Counts {
            clicks: 1,
            unique: 1,
            fraud: 0,
        };
        let mut table: CountsTable<HourKey> = CountsTable::default();
        let key = |n: u64| HourKey {
            campaign_id: CampaignId(n),
            salt: Salt(0),
            hour_start_ms: 0,
        };
        for n in 0..1000 {
            table.add(key(n), one);
        }
        let first = table.take_dirty();
        assert_eq!(first.len(), 1000, "all dirty: the scan");
        assert!(first.iter().all(|(_, counts)| *counts == one));
        assert!(table.take_dirty().is_empty());
        table.add(key(7), one);
        table.add(key(7), one);
        table.add(key(900), one);
        let few = table.take_dirty();
        assert!(
            few.len() * DIRTY_LOOKUPS_PER_SCAN < table.entries.slots(),
            "the lookup"
        );
        let twice = Counts {
            clicks: 3,
            unique: 3,
            fraud: 0,
        };
        assert_eq!(
            few,
            vec![
                (key(7), twice),
                (
                    key(900),
                    Counts {
                        clicks: 2,
                        unique: 2,
                        fraud: 0
                    }
                )
            ]
        );
        assert!(table.take_dirty().is_empty());
    }

    #[test]
    fn config_rejects_windows_that_do_not_divide_an_hour() {
        let config = WindowConfig {
            window_ms: 7_000,
            ..WindowConfig::default()
        };
        assert_eq!(
            config.validate(),
            Err(WindowConfigError::WindowSize { window_ms: 7_000 })
        );
        assert!(WindowConfig::default().validate().is_ok());
    }
}
