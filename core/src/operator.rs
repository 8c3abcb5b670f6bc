//! The per-partition aggregator, exposed as lifecycle hooks (Arroyo-style operators).
//!
//! - `on_batch` / `on_click`: decode → bound the event time → dedup → fraud → count in the
//!   click's window and hour, in the lane `window` describes (on time, late, unverified).
//! - `on_idle` / `on_watermark`: move the watermark without events (`on_idle` only once the
//!   caller has read up to a known end of the log).
//! - `on_barrier(epoch)`: swap in a staged fraud list, emit the absolute counts of every series
//!   that changed (and the windows that closed, marked final), expire dedup ids, and produce the
//!   checkpoint that must be stored *before* the sink applies those counts.
//! - `on_commit(epoch)`: the sink applied the epoch and its checkpoint is complete.
//!
//! The streaming worker, the batch `aggregate` command, the billing job and the simulator all
//! drive this one type.
//!
//! How a click is decided, in order:
//! 1. An event time outside what ingest accepts, against the processing time passed in
//!    (`window::event_time_in_bounds`), quarantines the record: `stats.quarantined`, returned to
//!    the caller with its offset, in no lane.
//! 2. A window past its late retention: `stats.expired`, billing's alone.
//! 3. Dedup: a duplicate is counted as such in its window's lane (on time or late). An id below
//!    the dedup cutoff is unverifiable, and so is a new id whose IP and minute already had an
//!    unverifiable click (`rate_rule`'s taint): both go to the unverified lane, with the fraud
//!    list's verdict but no rate rule.
//! 4. Otherwise the fraud list and the rate rule decide, in the window's lane.
//!
//! So every click in the on-time and late lanes is decided exactly as billing decides it, and the
//! unverified lane holds exactly the clicks the fast path could not decide.
//!
//! **Invariant:** the output depends only on the sequence of hook calls and their arguments. No
//! clock, no I/O, no hash-order leaks: restoring a checkpoint and replaying the same calls gives
//! the output the operator would have given had it never stopped.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::dedup::{DedupConfig, DedupOutcome, DedupSet};
use crate::event::ClickView;
use crate::fraud::{FraudHashes, FraudList, FraudRegistry, FraudVerdict, RateRule};
use crate::ids::*;
use crate::limits;
use crate::snapshot::{
    CheckpointKind, PartitionCheckpoint, PartitionStats, encode_checkpoint_into,
};
use crate::window::{
    Counts, CountsTable, HourKey, Lane, Watermark, WindowConfig, WindowKey, event_time_in_bounds,
    key_hash,
};

/// How many records ahead `on_batch` decodes and prefetches. Far enough to cover a DRAM miss (a
/// few hundred ns) at tens of ns per record, near enough that the lines are still cached.
const PREFETCH_DISTANCE: usize = 16;
/// How many records ahead `on_batch` prefetches the dedup id a record will read or write. Its
/// control words, requested `PREFETCH_DISTANCE` records ahead, have arrived by then, and they
/// name the id's slot.
const ID_PREFETCH_DISTANCE: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregatorConfig {
    pub window: WindowConfig,
    pub dedup: DedupConfig,
    pub clicks_per_ip_per_minute_max: u32,
    /// Every this many epochs the checkpoint is full; deltas in between.
    pub full_checkpoint_every_epochs: u64,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            window: WindowConfig::default(),
            dedup: DedupConfig::default(),
            clicks_per_ip_per_minute_max: limits::RATE_RULE_CLICKS_PER_IP_PER_MINUTE_MAX_DEFAULT,
            full_checkpoint_every_epochs: 60,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AggregatorConfigError {
    #[error(transparent)]
    Window(#[from] crate::window::WindowConfigError),
    #[error(transparent)]
    Dedup(#[from] crate::dedup::DedupConfigError),
    #[error(
        "dedup horizon_ms {horizon_ms} must cover window_ms plus allowed_lateness_ms ({needed_ms}), or on-time duplicates escape dedup"
    )]
    HorizonTooShort { horizon_ms: u64, needed_ms: u64 },
    #[error("full_checkpoint_every_epochs must be at least 1")]
    FullCheckpointInterval,
}

impl AggregatorConfig {
    pub fn validate(&self) -> Result<(), AggregatorConfigError> {
        self.window.validate()?;
        self.dedup.validate()?;
        let needed_ms = self.window.window_ms + self.window.allowed_lateness_ms;
        if self.dedup.horizon_ms < needed_ms {
            return Err(AggregatorConfigError::HorizonTooShort {
                horizon_ms: self.dedup.horizon_ms,
                needed_ms,
            });
        }
        if self.full_checkpoint_every_epochs == 0 {
            return Err(AggregatorConfigError::FullCheckpointInterval);
        }
        Ok(())
    }
}

/// Which series an update is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Series {
    Window(WindowKey),
    Hour(HourKey),
}

/// An absolute value for one series and lane. Applying it twice is harmless.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesUpdate {
    pub series: Series,
    pub lane: Lane,
    pub counts: Counts,
    /// The window closed: this is its last on-time value.
    pub is_final: bool,
}

/// What one barrier collected: the store updates, and a delta checkpoint's contents.
#[derive(Default)]
struct EpochChanges {
    updates: Vec<SeriesUpdate>,
    windows: Vec<(Lane, WindowKey, Counts)>,
    hours: Vec<(Lane, HourKey, Counts)>,
    rate: Vec<(crate::rate_rule::RateKey, Counts)>,
    dedup_ids: Vec<(ClickId, u32)>,
}

/// What a barrier produces. Store `checkpoint` first, then apply `updates`, then commit.
#[derive(Clone, Debug)]
pub struct BarrierOutput {
    pub epoch: Epoch,
    pub updates: Vec<SeriesUpdate>,
    pub checkpoint: PartitionCheckpoint,
    pub checkpoint_bytes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("no checkpoint to restore")]
    Empty,
    #[error("checkpoint chain must start with a full checkpoint, got a delta at epoch {epoch}")]
    StartsWithDelta { epoch: Epoch },
    #[error(
        "delta at epoch {epoch} builds on epoch {previous_epoch}, but the chain has epoch {found} before it"
    )]
    BrokenChain {
        epoch: Epoch,
        previous_epoch: Epoch,
        found: Epoch,
    },
    #[error("checkpoint is for partition {found}, not partition {expected}")]
    WrongPartition {
        expected: PartitionId,
        found: PartitionId,
    },
    #[error("checkpoint names fraud list version {version}, which is not registered")]
    MissingFraudList { version: FraudListVersion },
    #[error(
        "checkpoint at epoch {epoch} was written with {setting} = {checkpoint}, but the config says {config}; restore with the old setting or start the partition afresh"
    )]
    SettingChanged {
        epoch: Epoch,
        setting: &'static str,
        checkpoint: u64,
        config: u64,
    },
}

/// A log record the aggregator could not count in any lane. Never skipped silently: counted in
/// the stats and returned, with its offset, to the caller, which logs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordProblem {
    Undecodable(CodecError),
    /// The event time is outside ingest's bounds against the worker's clock, with slack
    /// (`window::event_time_in_bounds`): an outside producer's record, quarantined.
    Quarantined {
        event_time_ms: u64,
        processing_ms: u64,
    },
}

impl std::fmt::Display for RecordProblem {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordProblem::Undecodable(error) => write!(formatter, "undecodable: {error}"),
            RecordProblem::Quarantined {
                event_time_ms,
                processing_ms,
            } => write!(
                formatter,
                "quarantined: event_time_ms {event_time_ms} is outside ingest's bounds (at most {} ms ahead of, and {} ms behind, the worker's clock {processing_ms}, with slack)",
                limits::EVENT_TIME_FUTURE_MS_MAX + limits::QUARANTINE_NODE_SKEW_SLACK_MS,
                limits::EVENT_AGE_MS_MAX + limits::QUARANTINE_CONSUMER_LAG_SLACK_MS
            ),
        }
    }
}

pub struct PartitionAggregator {
    config: AggregatorConfig,
    partition: PartitionId,
    epoch: Epoch,
    committed_epoch: Epoch,
    last_full_epoch: Option<Epoch>,
    next_offset: Offset,
    watermark: Watermark,
    dedup: DedupSet,
    rate: RateRule,
    fraud_list: Arc<FraudList>,
    staged_fraud_list: Option<Arc<FraudList>>,
    /// Indexed by `Lane::index`: on time, late, unverified.
    windows: [CountsTable<WindowKey>; 3],
    hours: [CountsTable<HourKey>; 3],
    /// The processing time of the batch being counted: the bound on the watermark and the
    /// quarantine's reference.
    processing_ms: u64,
    stats: PartitionStats,
    /// A checkpoint buffer handed back by `recycle`, for the next barrier to encode into.
    spare_checkpoint_bytes: Vec<u8>,
}

/// The window series and the hour rollup a click counts in: one definition for counting and
/// for prefetching, so the prefetch always names the slot the count will touch.
fn series_keys(click: &ClickView<'_>, window_start_ms: u64) -> (WindowKey, HourKey) {
    let event_time_ms = click.event_time_ms.0;
    (
        WindowKey {
            campaign_id: click.campaign_id,
            ad_id: click.ad_id,
            salt: click.salt,
            window_start_ms,
        },
        HourKey {
            campaign_id: click.campaign_id,
            salt: click.salt,
            hour_start_ms: event_time_ms - event_time_ms % limits::HOUR_MS,
        },
    )
}

/// A decoded click with the hash of every key it will touch, computed once: first to prefetch
/// the keys' slots, then to count. The keys themselves are cheap to rebuild and are not kept, so
/// that the pipeline moves fewer bytes per record. Window and hour keys are the same in both
/// lanes.
struct Staged<'a> {
    click: ClickView<'a>,
    window_start_ms: u64,
    window_hash: u64,
    hour_hash: u64,
    rate_hash: u64,
    dedup_hash: u64,
    fraud: FraudHashes,
}

fn lane_index(lane: Lane) -> usize {
    lane.index()
}

const LANES: [Lane; 3] = Lane::ALL;

const DUPLICATE: Counts = Counts {
    clicks: 1,
    unique: 0,
    fraud: 0,
};
const CLEAN: Counts = Counts {
    clicks: 1,
    unique: 1,
    fraud: 0,
};
const FRAUD: Counts = Counts {
    clicks: 1,
    unique: 0,
    fraud: 1,
};

impl PartitionAggregator {
    pub fn new(
        config: AggregatorConfig,
        partition: PartitionId,
        fraud_list: Arc<FraudList>,
    ) -> Self {
        config
            .validate()
            .expect("aggregator config is validated before use");
        PartitionAggregator {
            config,
            partition,
            epoch: Epoch(0),
            committed_epoch: Epoch(0),
            last_full_epoch: None,
            next_offset: Offset(0),
            watermark: Watermark::default(),
            dedup: DedupSet::new(config.dedup),
            rate: RateRule::new(config.clicks_per_ip_per_minute_max),
            fraud_list,
            staged_fraud_list: None,
            windows: Default::default(),
            hours: Default::default(),
            processing_ms: 0,
            stats: PartitionStats::default(),
            spare_checkpoint_bytes: Vec::new(),
        }
    }

    pub fn partition(&self) -> PartitionId {
        self.partition
    }
    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }
    pub fn watermark(&self) -> Watermark {
        self.watermark
    }
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    pub fn stats(&self) -> PartitionStats {
        self.stats
    }
    pub fn fraud_list_version(&self) -> FraudListVersion {
        self.fraud_list.version()
    }
    pub fn dedup(&self) -> &DedupSet {
        &self.dedup
    }
    pub fn open_windows(&self) -> usize {
        self.windows[0].len()
    }

    /// Decodes and counts a batch of log records read at `processing_ms` (the worker's clock).
    /// Undecodable and quarantined records are counted in the stats and returned, never
    /// silently skipped.
    pub fn on_batch<'a>(
        &mut self,
        records: impl IntoIterator<Item = (Offset, &'a [u8])>,
        processing_ms: u64,
    ) -> Vec<(Offset, RecordProblem)> {
        self.processing_ms = processing_ms;
        let mut problems = Vec::new();
        // Software pipelining: each record is decoded `PREFETCH_DISTANCE` records before it is
        // counted, and the table slots it will touch (dedup, its window and hour series, its IP's
        // rate counter) are requested from memory then. Those slots are mostly cache misses into
        // tables far larger than the caches; requested early, they overlap instead of being paid
        // one after another. Counting still happens strictly in offset order.
        let records: Vec<(Offset, &'a [u8])> = records.into_iter().collect();
        // Record `i` is staged into `ahead[i % AHEAD]` `PREFETCH_DISTANCE` records before it is
        // counted in place, by reference: a ring, so nothing is moved twice.
        const AHEAD: usize = PREFETCH_DISTANCE + 1;
        let mut ahead: [Option<Result<Staged<'a>, CodecError>>; AHEAD] =
            std::array::from_fn(|_| None);
        let stage_into = |aggregator: &Self, index: usize, slot: &mut Option<_>| {
            let staged = codec::decode(records[index].1).map(|click| aggregator.stage(click));
            if let Ok(staged) = &staged {
                aggregator.prefetch(staged);
            }
            *slot = Some(staged);
        };
        for index in 0..PREFETCH_DISTANCE.min(records.len()) {
            stage_into(self, index, &mut ahead[index % AHEAD]);
        }
        for (index, &(offset, _)) in records.iter().enumerate() {
            let next = index + PREFETCH_DISTANCE;
            if next < records.len() {
                stage_into(self, next, &mut ahead[next % AHEAD]);
            }
            if index + ID_PREFETCH_DISTANCE < records.len()
                && let Some(Ok(staged)) = &ahead[(index + ID_PREFETCH_DISTANCE) % AHEAD]
            {
                self.dedup.prefetch_id(staged.dedup_hash);
            }
            let slot = &mut ahead[index % AHEAD];
            match slot {
                Some(Ok(staged)) => {
                    if let Err(problem) = self.count(offset, staged) {
                        problems.push((offset, problem));
                    }
                }
                _ => {
                    let Some(Err(error)) = slot.take() else {
                        unreachable!("every record is staged before it is counted");
                    };
                    self.advance_offset(offset);
                    self.stats.undecodable += 1;
                    problems.push((offset, RecordProblem::Undecodable(error)));
                }
            }
        }
        if !records.is_empty() {
            self.watermark.observe_activity(processing_ms);
        }
        problems
    }

    /// Names every key `click` will touch and hashes each once.
    fn stage<'a>(&self, click: ClickView<'a>) -> Staged<'a> {
        let event_time_ms = click.event_time_ms.0;
        let window_start_ms = self.config.window.window_start(event_time_ms);
        let (window_key, hour_key) = series_keys(&click, window_start_ms);
        Staged {
            window_start_ms,
            window_hash: key_hash(&window_key),
            hour_hash: key_hash(&hour_key),
            rate_hash: RateRule::key(click.ip, event_time_ms).hash(),
            dedup_hash: self.dedup.hash(click.click_id),
            fraud: self.fraud_list.hashes(click.ip, click.user_agent),
            click,
        }
    }

    /// Requests the slots `count` will most likely touch for `staged`. A hint: no effect on
    /// results. The window and hour series are those of the on-time lane, the common case.
    fn prefetch(&self, staged: &Staged<'_>) {
        self.dedup.prefetch(staged.dedup_hash);
        self.windows[lane_index(Lane::OnTime)].prefetch(staged.window_hash);
        self.hours[lane_index(Lane::OnTime)].prefetch(staged.hour_hash);
        self.rate.prefetch(
            crate::rate_rule::minute_start(staged.click.event_time_ms.0),
            staged.rate_hash,
        );
        self.fraud_list.prefetch(staged.fraud);
    }

    fn advance_offset(&mut self, offset: Offset) {
        assert!(
            offset >= self.next_offset,
            "partition {} read offset {} again after {}: offsets only move forward",
            self.partition,
            offset.0,
            self.next_offset.0
        );
        self.next_offset = Offset(offset.0 + 1);
        self.stats.records += 1;
    }

    /// Counts one decoded click read at `offset` at `processing_ms` (the worker's clock).
    pub fn on_click(
        &mut self,
        offset: Offset,
        click: &ClickView<'_>,
        processing_ms: u64,
    ) -> Result<(), RecordProblem> {
        self.processing_ms = processing_ms;
        let staged = self.stage(*click);
        self.count(offset, &staged)
    }

    /// Decides and counts one click (the module docs give the order of the rules).
    fn count(&mut self, offset: Offset, staged: &Staged<'_>) -> Result<(), RecordProblem> {
        self.advance_offset(offset);
        let click = &staged.click;
        let event_time_ms = click.event_time_ms.0;
        if !event_time_in_bounds(event_time_ms, self.processing_ms) {
            self.stats.quarantined += 1;
            return Err(RecordProblem::Quarantined {
                event_time_ms,
                processing_ms: self.processing_ms,
            });
        }
        self.stats.clicks += 1;
        let window = &self.config.window;
        let window_start_ms = staged.window_start_ms;
        let watermark_ms = self.watermark.watermark_ms;
        let window_lane = if window.close_at(window_start_ms, window.window_ms) > watermark_ms {
            Lane::OnTime
        } else if window.retire_at(window_start_ms, window.window_ms) > watermark_ms {
            Lane::Late
        } else {
            self.stats.expired += 1;
            return Ok(());
        };
        self.watermark
            .observe_event(event_time_ms, self.processing_ms, window);

        let (lane, delta) =
            match self
                .dedup
                .insert_hashed(click.click_id, staged.dedup_hash, event_time_ms)
            {
                DedupOutcome::Duplicate => {
                    self.stats.duplicates += 1;
                    (window_lane, DUPLICATE)
                }
                DedupOutcome::Unverifiable => {
                    self.taint_rate_minute(staged);
                    (Lane::Unverified, self.unverified_counts(staged))
                }
                DedupOutcome::New => match self.fraud_verdict(staged) {
                    Some(FraudVerdict::Clean) => (window_lane, CLEAN),
                    Some(_) => (window_lane, FRAUD),
                    None => (Lane::Unverified, self.unverified_counts(staged)),
                },
            };
        match lane {
            Lane::OnTime => {}
            Lane::Late => self.stats.late += 1,
            Lane::Unverified => self.stats.unverified += 1,
        }
        let (window_key, hour_key) = series_keys(click, window_start_ms);
        self.windows[lane_index(lane)].add_hashed(window_key, staged.window_hash, delta);
        self.hours[lane_index(lane)].add_hashed(hour_key, staged.hour_hash, delta);
        Ok(())
    }

    /// Every unique click counts toward its IP's rate, whatever the list says: the decision of
    /// `fraud::judge`, on the hashes computed when the click was staged. `None` when the rate
    /// counter is tainted (an unverified click of the IP and minute came first): the click is
    /// unverified, and nothing is counted toward the rate.
    fn fraud_verdict(&mut self, staged: &Staged<'_>) -> Option<FraudVerdict> {
        let click = &staged.click;
        let rate_key = RateRule::key(click.ip, click.event_time_ms.0);
        let within_rate = self
            .rate
            .admit_verified_hashed(rate_key, staged.rate_hash)?;
        let verdict = crate::fraud::decide(self.fraud_list.check_hashed(staged.fraud), within_rate);
        match verdict {
            FraudVerdict::Clean => {}
            FraudVerdict::KnownBadIp => self.stats.fraud_known_ip += 1,
            FraudVerdict::KnownBadUserAgent => self.stats.fraud_known_user_agent += 1,
            FraudVerdict::RateExceeded => self.stats.fraud_rate += 1,
        }
        Some(verdict)
    }

    /// An unverified click's counts: the fraud list's verdict alone (it needs no memory, so it
    /// is billing's too); dedup and the rate rule are billing's to apply.
    fn unverified_counts(&self, staged: &Staged<'_>) -> Counts {
        match self.fraud_list.check_hashed(staged.fraud) {
            FraudVerdict::Clean => CLEAN,
            _ => FRAUD,
        }
    }

    /// An unverified click of a minute whose counters are still kept makes its IP's counter
    /// incomplete (`rate_rule` says why). A minute wholly below the cutoff has no counters.
    fn taint_rate_minute(&mut self, staged: &Staged<'_>) {
        let click = &staged.click;
        let rate_key = RateRule::key(click.ip, click.event_time_ms.0);
        if rate_key.minute_start_ms + limits::RATE_RULE_WINDOW_MS > self.dedup.cutoff_ms() {
            self.rate.taint_hashed(rate_key, staged.rate_hash);
        }
    }

    /// An idle partition's watermark follows processing time. Call it only once the partition
    /// has read up to a known end of the log: an empty read alone may hide a backlog, which a
    /// watermark moved ahead would send to the late lane. Returns whether it moved.
    pub fn on_idle(&mut self, processing_ms: u64) -> bool {
        self.processing_ms = processing_ms;
        self.watermark
            .advance_idle(processing_ms, &self.config.window)
    }

    /// Whether `on_idle(processing_ms)` would move the watermark: callers check this before
    /// asking the log whether they are caught up.
    pub fn idle_advance_due(&self, processing_ms: u64) -> bool {
        self.watermark
            .idle_advance_due(processing_ms, &self.config.window)
    }

    /// Moves the watermark to at least `watermark_ms` (batch mode: `u64::MAX` closes everything).
    pub fn on_watermark(&mut self, watermark_ms: u64) {
        if watermark_ms == u64::MAX {
            self.watermark.close_all();
        } else {
            self.watermark.watermark_ms = self.watermark.watermark_ms.max(watermark_ms);
        }
    }

    /// Stages a new fraud list. It takes effect at the next barrier, never mid-epoch.
    pub fn stage_fraud_list(&mut self, list: Arc<FraudList>) {
        if list.version() != self.fraud_list.version() {
            self.staged_fraud_list = Some(list);
        }
    }

    pub fn on_barrier(&mut self, epoch: Epoch) -> BarrierOutput {
        assert!(
            epoch > self.epoch,
            "barrier epoch {} after epoch {}",
            epoch.0,
            self.epoch.0
        );
        assert_eq!(
            self.committed_epoch, self.epoch,
            "commit epoch {} before the next barrier",
            self.epoch.0
        );
        if let Some(list) = self.staged_fraud_list.take() {
            self.fraud_list = list;
        }
        let mut changes = EpochChanges::default();
        for lane in LANES {
            self.emit_lane(lane, &mut changes);
        }
        changes.rate = self.rate.take_changed();
        self.dedup.expire(self.watermark.watermark_ms);
        self.retire_rate_counters();
        changes.dedup_ids = self.dedup.take_journal();
        self.epoch = epoch;
        let (updates, checkpoint) = self.epoch_checkpoint(epoch, changes);
        let checkpoint_bytes = encode_checkpoint_into(
            &checkpoint,
            std::mem::take(&mut self.spare_checkpoint_bytes),
        );
        BarrierOutput {
            epoch,
            updates,
            checkpoint,
            checkpoint_bytes,
        }
    }

    /// One lane's share of a barrier: the absolute counts of every series that changed, and of
    /// every series the watermark closes (on time: final) or retires (late and unverified).
    fn emit_lane(&mut self, lane: Lane, changes: &mut EpochChanges) {
        let index = lane_index(lane);
        let watermark_ms = self.watermark.watermark_ms;
        let window = self.config.window;
        let dirty_windows = self.windows[index].take_dirty();
        let dirty_hours = self.hours[index].take_dirty();
        let ends_at = |start: u64, length_ms: u64| match lane {
            Lane::OnTime => window.close_at(start, length_ms),
            Lane::Late | Lane::Unverified => window.retire_at(start, length_ms),
        };
        let closed_windows = self.windows[index]
            .retire_before(watermark_ms, |start| ends_at(start, window.window_ms));
        let closed_hours =
            self.hours[index].retire_before(watermark_ms, |start| ends_at(start, limits::HOUR_MS));
        let finals_emitted = lane == Lane::OnTime;
        let updates = &mut changes.updates;
        push_updates(
            updates,
            lane,
            &dirty_windows,
            &closed_windows,
            finals_emitted,
            Series::Window,
        );
        push_updates(
            updates,
            lane,
            &dirty_hours,
            &closed_hours,
            finals_emitted,
            Series::Hour,
        );
        let in_lane = |(key, counts)| (lane, key, counts);
        changes
            .windows
            .extend(dirty_windows.into_iter().map(in_lane));
        changes.hours.extend(
            dirty_hours
                .into_iter()
                .map(|(key, counts)| (lane, key, counts)),
        );
    }

    /// The epoch's checkpoint: full every `full_checkpoint_every_epochs` (and first), else the
    /// delta of what changed.
    fn epoch_checkpoint(
        &mut self,
        epoch: Epoch,
        changes: EpochChanges,
    ) -> (Vec<SeriesUpdate>, PartitionCheckpoint) {
        let full = match self.last_full_epoch {
            None => true,
            Some(last) => epoch.0 - last.0 >= self.config.full_checkpoint_every_epochs,
        };
        let checkpoint = if full {
            self.last_full_epoch = Some(epoch);
            self.full_checkpoint()
        } else {
            PartitionCheckpoint {
                kind: CheckpointKind::Delta {
                    previous_epoch: self.committed_epoch,
                },
                windows: changes.windows,
                hours: changes.hours,
                rate: changes.rate,
                dedup_ids: changes.dedup_ids,
                ..self.checkpoint_scalars(CheckpointKind::Full)
            }
        };
        (changes.updates, checkpoint)
    }

    /// Hands a barrier's checkpoint and its bytes back once they are stored, so that the next
    /// barriers reuse their memory (the dedup journal and the encoded checkpoint, tens of MiB
    /// an epoch at a million clicks) instead of page-faulting fresh memory in. Optional: without
    /// it every barrier allocates anew.
    pub fn recycle(&mut self, checkpoint: PartitionCheckpoint, checkpoint_bytes: Vec<u8>) {
        self.dedup.recycle_journal(checkpoint.dedup_ids);
        if checkpoint_bytes.capacity() > self.spare_checkpoint_bytes.capacity() {
            self.spare_checkpoint_bytes = checkpoint_bytes;
        }
    }

    /// The sink applied the epoch's updates and its checkpoint is marked complete.
    pub fn on_commit(&mut self, epoch: Epoch) {
        assert_eq!(
            epoch, self.epoch,
            "commit of epoch {} but the last barrier was {}",
            epoch.0, self.epoch.0
        );
        self.committed_epoch = epoch;
    }

    /// A minute's rate counters go once the whole minute is below the dedup cutoff: every click
    /// of it is unverifiable from then on, so no decision needs them. Kept until then, they
    /// decide late clicks within the horizon exactly as billing does.
    fn retire_rate_counters(&mut self) {
        self.rate.retire_before(self.dedup.cutoff_ms(), |start| {
            start + limits::RATE_RULE_WINDOW_MS
        });
    }

    fn checkpoint_scalars(&self, kind: CheckpointKind) -> PartitionCheckpoint {
        PartitionCheckpoint {
            partition: self.partition,
            epoch: self.epoch,
            kind,
            next_offset: self.next_offset,
            watermark: self.watermark,
            fraud_list_version: self.fraud_list.version(),
            stats: self.stats,
            windows: Vec::new(),
            hours: Vec::new(),
            rate: Vec::new(),
            dedup_ids: Vec::new(),
            dedup_cutoff_bucket: self.dedup.cutoff_bucket(),
            dedup_stats: self.dedup.stats(),
            window_ms: self.config.window.window_ms,
            dedup_bucket_ms: self.config.dedup.bucket_ms,
        }
    }

    fn full_checkpoint(&self) -> PartitionCheckpoint {
        let mut checkpoint = self.checkpoint_scalars(CheckpointKind::Full);
        for lane in LANES {
            let index = lane_index(lane);
            checkpoint.windows.extend(
                self.windows[index]
                    .entries_sorted()
                    .into_iter()
                    .map(|(k, c)| (lane, k, c)),
            );
            checkpoint.hours.extend(
                self.hours[index]
                    .entries_sorted()
                    .into_iter()
                    .map(|(k, c)| (lane, k, c)),
            );
        }
        checkpoint.rate = self.rate.counters_sorted();
        checkpoint.dedup_ids = self.dedup.entries_sorted();
        checkpoint
    }

    /// Rebuilds a partition from its last full checkpoint and the deltas after it, in order.
    /// The result continues exactly where the last checkpoint in the chain left off.
    pub fn restore(
        config: AggregatorConfig,
        partition: PartitionId,
        chain: &[PartitionCheckpoint],
        registry: &FraudRegistry,
    ) -> Result<PartitionAggregator, RestoreError> {
        let first = chain.first().ok_or(RestoreError::Empty)?;
        if first.kind != CheckpointKind::Full {
            return Err(RestoreError::StartsWithDelta { epoch: first.epoch });
        }
        let last = chain.last().expect("chain is not empty");
        let fraud_list =
            registry
                .get(last.fraud_list_version)
                .ok_or(RestoreError::MissingFraudList {
                    version: last.fraud_list_version,
                })?;
        let mut aggregator = PartitionAggregator::new(config, partition, fraud_list);
        let mut previous: Option<Epoch> = None;
        for checkpoint in chain {
            for (setting, written, configured) in [
                ("window_ms", checkpoint.window_ms, config.window.window_ms),
                (
                    "dedup_bucket_ms",
                    checkpoint.dedup_bucket_ms,
                    config.dedup.bucket_ms,
                ),
            ] {
                if written != configured {
                    return Err(RestoreError::SettingChanged {
                        epoch: checkpoint.epoch,
                        setting,
                        checkpoint: written,
                        config: configured,
                    });
                }
            }
            if checkpoint.partition != partition {
                return Err(RestoreError::WrongPartition {
                    expected: partition,
                    found: checkpoint.partition,
                });
            }
            if let (CheckpointKind::Delta { previous_epoch }, Some(found)) =
                (checkpoint.kind, previous)
                && previous_epoch != found
            {
                return Err(RestoreError::BrokenChain {
                    epoch: checkpoint.epoch,
                    previous_epoch,
                    found,
                });
            }
            aggregator.apply_checkpoint(checkpoint);
            previous = Some(checkpoint.epoch);
        }
        // A restored partition usually has a new owner (a new generation), whose chain must not
        // build on the old owner's records: its first checkpoint is full.
        aggregator.last_full_epoch = None;
        Ok(aggregator)
    }

    fn apply_checkpoint(&mut self, checkpoint: &PartitionCheckpoint) {
        for &(lane, key, counts) in &checkpoint.windows {
            self.windows[lane_index(lane)].upsert_clean(key, counts);
        }
        for &(lane, key, counts) in &checkpoint.hours {
            self.hours[lane_index(lane)].upsert_clean(key, counts);
        }
        self.rate.restore(&checkpoint.rate);
        self.dedup.restore(
            &checkpoint.dedup_ids,
            checkpoint.dedup_cutoff_bucket,
            checkpoint.dedup_stats,
        );
        self.epoch = checkpoint.epoch;
        self.committed_epoch = checkpoint.epoch;
        self.next_offset = checkpoint.next_offset;
        self.watermark = checkpoint.watermark;
        self.stats = checkpoint.stats;
        // Removals follow from the watermark, exactly as the barrier that wrote this did them.
        let watermark_ms = self.watermark.watermark_ms;
        let window = self.config.window;
        self.windows[0].retire_before(watermark_ms, |start| {
            window.close_at(start, window.window_ms)
        });
        self.hours[0].retire_before(watermark_ms, |start| {
            window.close_at(start, limits::HOUR_MS)
        });
        for lane in [Lane::Late, Lane::Unverified] {
            self.windows[lane.index()].retire_before(watermark_ms, |start| {
                window.retire_at(start, window.window_ms)
            });
            self.hours[lane.index()].retire_before(watermark_ms, |start| {
                window.retire_at(start, limits::HOUR_MS)
            });
        }
        self.retire_rate_counters();
    }
}

/// Emits dirty series (not final) and closed series (final, on-time lane only). A series that
/// is both dirty and closed is emitted once, final.
fn push_updates<K: Copy + Ord>(
    updates: &mut Vec<SeriesUpdate>,
    lane: Lane,
    dirty: &[(K, Counts)],
    closed: &[(K, Counts)],
    finals_emitted: bool,
    series: impl Fn(K) -> Series,
) {
    for &(key, counts) in dirty {
        let is_closed = closed
            .binary_search_by_key(&key, |(closed_key, _)| *closed_key)
            .is_ok();
        if is_closed && finals_emitted {
            continue;
        }
        updates.push(SeriesUpdate {
            series: series(key),
            lane,
            counts,
            is_final: false,
        });
    }
    if finals_emitted {
        for &(key, counts) in closed {
            updates.push(SeriesUpdate {
                series: series(key),
                lane,
                counts,
                is_final: true,
            });
        }
    }
}
