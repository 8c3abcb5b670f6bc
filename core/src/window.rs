//! Event-time windows: the watermark, and tables of counts per tumbling window.
//!
//! Each click is counted in a window of `window_ms` keyed by (campaign, ad, salt), and in an hour
//! rollup keyed by (campaign, salt) that billing reconciles against. Which *lane* a click goes to
//! is decided once per click (`operator` applies the rules); the hour rollup follows the window's
//! decision, so an hour's total in a lane is always the sum of its windows' totals in that lane:
//!
//! - **on time**: the window is open (the watermark is below its end plus `allowed_lateness_ms`);
//!   the click updates the window in place.
//! - **late**: the window closed, but the click is still within the dedup horizon, so dedup and
//!   the rate rule decide it exactly, as on time. Kept for `late_retention_ms`.
//! - **unverified**: the fast path cannot decide the click exactly: its event time is below the
//!   dedup cutoff (watermark minus `dedup_horizon_ms`, or higher where the dedup bound evicted
//!   ids early), or an earlier click of its IP and minute was. Counted (`clicks`, and `unique`
//!   or `fraud` by the fraud list alone, with no dedup and no rate rule), never as verified
//!   unique; billing, which dedupes over its whole period, decides it.
//!
//! The watermark is the max event time seen minus `max_out_of_orderness_ms`, where an event time
//! counts for at most the worker's processing time plus `WATERMARK_AHEAD_OF_PROCESSING_MS_MAX`:
//! a client clock that runs ahead never moves it past the worker's own clock. An idle partition
//! follows processing time (the caller says when it is caught up with the log). A record whose
//! event time is outside ingest's bounds, measured against the worker's clock and widened by the
//! `QUARANTINE_*_SLACK_MS` bounds, is quarantined (`event_time_in_bounds`): counted apart,
//! never in a lane, and never moving the watermark.
//!
//! **Invariant:** this module never reads a clock. The watermark moves with event times and
//! processing times the caller passes in.

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
    /// Past what the fast path can deduplicate or rate-check: counted apart, billing decides.
    Unverified,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::OnTime, Lane::Late, Lane::Unverified];

    /// Dense index, for per-lane arrays.
    pub fn index(self) -> usize {
        match self {
            Lane::OnTime => 0,
            Lane::Late => 1,
            Lane::Unverified => 2,
        }
    }

    /// Verified lanes count every click exactly: dedup and the rate rule decided it.
    pub fn is_verified(self) -> bool {
        self != Lane::Unverified
    }
}

/// Whether a record's event time is one ingest could have accepted, judged against the worker's
/// clock (`processing_ms`) with slack for node skew and consumer lag. Outside: quarantined.
pub fn event_time_in_bounds(event_time_ms: u64, processing_ms: u64) -> bool {
    let newest_ms = processing_ms
        .saturating_add(limits::EVENT_TIME_FUTURE_MS_MAX)
        .saturating_add(limits::QUARANTINE_NODE_SKEW_SLACK_MS);
    let oldest_ms = processing_ms
        .saturating_sub(limits::EVENT_AGE_MS_MAX)
        .saturating_sub(limits::QUARANTINE_CONSUMER_LAG_SLACK_MS);
    (oldest_ms..=newest_ms).contains(&event_time_ms)
}

/// The per-partition watermark: the max event time seen (each bounded by the processing time it
/// was seen at) minus the out-of-orderness bound, moved by processing time while the partition is
/// idle and caught up. It never goes backwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub watermark_ms: u64,
    /// The max event time seen, each bounded by `processing_ms +
    /// WATERMARK_AHEAD_OF_PROCESSING_MS_MAX` at the time it was seen.
    pub max_event_time_ms: u64,
    /// Processing time of the last batch that held events; `None` before the first.
    pub last_activity_processing_ms: Option<u64>,
}

impl Watermark {
    /// An event time seen at `processing_ms`. A time ahead of the worker's clock counts only as
    /// far as the clock plus the allowance, so that one fast client clock cannot close current
    /// windows, expire the dedup set or retire the rate rule's current minutes.
    pub fn observe_event(&mut self, event_time_ms: u64, processing_ms: u64, config: &WindowConfig) {
        let bounded_ms = event_time_ms
            .min(processing_ms.saturating_add(limits::WATERMARK_AHEAD_OF_PROCESSING_MS_MAX));
        if bounded_ms > self.max_event_time_ms {
            self.max_event_time_ms = bounded_ms;
            let candidate = bounded_ms.saturating_sub(config.max_out_of_orderness_ms);
            self.watermark_ms = self.watermark_ms.max(candidate);
        }
    }

    pub fn observe_activity(&mut self, processing_ms: u64) {
        self.last_activity_processing_ms = Some(processing_ms);
    }

    /// Advances an idle partition's watermark with processing time, so that an idle partition
    /// never stalls output. The caller calls it only once the partition has read up to a known
    /// end of the log: one empty read says nothing about a backlog. Returns whether it moved.
    pub fn advance_idle(&mut self, processing_ms: u64, config: &WindowConfig) -> bool {
        if !self.idle_advance_due(processing_ms, config) {
            return false;
        }
        self.watermark_ms = processing_ms.saturating_sub(config.max_out_of_orderness_ms);
        true
    }

    /// Whether `advance_idle` at `processing_ms` would move the watermark: the partition has
    /// been idle for the idle timeout and the clock is ahead of the watermark.
    pub fn idle_advance_due(&self, processing_ms: u64, config: &WindowConfig) -> bool {
        let idle = match self.last_activity_processing_ms {
            None => true,
            Some(last) => processing_ms.saturating_sub(last) >= config.idle_timeout_ms,
        };
        idle && processing_ms.saturating_sub(config.max_out_of_orderness_ms) > self.watermark_ms
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
        watermark.observe_event(100_000, 100_000, &config);
        assert_eq!(watermark.watermark_ms, 95_000);
        watermark.observe_event(50_000, 100_000, &config);
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

    /// Regression (a future-dated click moved the watermark): a click stamped 295 s ahead,
    /// which ingest accepts, pushed the watermark 295 s past the worker's clock, so a resend of a
    /// current click counted again in the late lane and current windows read final.
    #[test]
    fn a_future_dated_click_moves_the_watermark_only_as_far_as_the_clock_allows() {
        let config = WindowConfig::default();
        let now_ms = 1_800_000_000_000;
        let mut watermark = Watermark::default();
        watermark.observe_event(now_ms, now_ms, &config);
        watermark.observe_event(now_ms + 295_000, now_ms, &config);
        assert_eq!(
            watermark.watermark_ms,
            now_ms + limits::WATERMARK_AHEAD_OF_PROCESSING_MS_MAX - config.max_out_of_orderness_ms
        );
        // An outside producer's microseconds: the same bound.
        watermark.observe_event(now_ms * 1000, now_ms + 1, &config);
        assert!(
            watermark.watermark_ms <= now_ms + 1 + limits::WATERMARK_AHEAD_OF_PROCESSING_MS_MAX
        );
    }

    #[test]
    fn event_times_outside_ingest_bounds_plus_slack_are_out_of_bounds() {
        let now_ms = 1_800_000_000_000;
        let future_ms = limits::EVENT_TIME_FUTURE_MS_MAX + limits::QUARANTINE_NODE_SKEW_SLACK_MS;
        let past_ms = limits::EVENT_AGE_MS_MAX + limits::QUARANTINE_CONSUMER_LAG_SLACK_MS;
        assert!(event_time_in_bounds(now_ms, now_ms));
        assert!(event_time_in_bounds(now_ms + future_ms, now_ms));
        assert!(!event_time_in_bounds(now_ms + future_ms + 1, now_ms));
        assert!(
            event_time_in_bounds(now_ms - past_ms, now_ms),
            "a backlog a week behind"
        );
        assert!(!event_time_in_bounds(now_ms - past_ms - 1, now_ms));
        assert!(!event_time_in_bounds(now_ms * 1000, now_ms), "microseconds");
        assert!(!event_time_in_bounds(now_ms / 1000, now_ms), "seconds");
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
