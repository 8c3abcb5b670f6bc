//! The history of every partition's committed epochs, as the real-time store accepted them, for
//! the checks that need more than the store's final state.
//!
//! `RecordingStore` wraps the real-time store of a run. Each status a worker applies successfully
//! (under its fence) is an epoch the store now reflects: its next offset, watermark and dedup
//! cutoff. A newer owner that restores an older checkpoint rewrites the epochs after it, so an
//! epoch supersedes every recorded epoch at or after its number. What remains per partition is
//! the committed trajectory: the records between one epoch's next offset and the next's were
//! counted under the first one's dedup cutoff (cutoffs move at barriers; only an early eviction
//! moves one mid-epoch, and the history says which partitions had one).
//!
//! It also checks, at every apply, rules the final state cannot show:
//! - the watermark never runs ahead of the worker's clock by more than
//!   `WATERMARK_AHEAD_OF_PROCESSING_MS_MAX`;
//! - the dedup cutoff is exactly the watermark minus the horizon (in whole buckets) unless the
//!   dedup bound evicted ids early;
//! - a watermark that followed the clock (the status's `last_idle_advance`) did so while the
//!   partition was caught up: every record that `RecordingLog` saw appended before then had
//!   been read. Otherwise a backlog would have gone to the late lane on the strength of an
//!   empty read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use adclick_core::ids::*;
use adclick_core::limits::WATERMARK_AHEAD_OF_PROCESSING_MS_MAX;
use adclick_core::operator::{AggregatorConfig, Series, SeriesUpdate};
use adclick_core::window::Lane;
use adclick_engine::clock::SystemClock;
use adclick_engine::fencing::Fence;
use adclick_engine::seams::*;
use async_trait::async_trait;

/// One committed epoch of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochMark {
    pub epoch: Epoch,
    pub next_offset: Offset,
    pub dedup_cutoff_ms: u64,
}

/// A status whose watermark followed the clock: the partition must have read everything
/// appended before that time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IdleAdvanceSeen {
    partition: PartitionId,
    epoch: Epoch,
    advance: IdleAdvance,
}

#[derive(Debug, Default)]
struct Recorded {
    epochs: BTreeMap<PartitionId, Vec<EpochMark>>,
    early_evictions: BTreeMap<PartitionId, u64>,
    violations: Vec<String>,
    idle_advances: Vec<IdleAdvanceSeen>,
    /// Per partition, ascending: the log's end offset after an append, and when it was seen.
    appends: BTreeMap<PartitionId, Vec<(Offset, u64)>>,
}

/// What `RecordingStore` saw.
#[derive(Debug, Default)]
pub struct StatusHistory {
    recorded: Mutex<Recorded>,
}

/// The first few rule violations are kept; the rest are counted.
const VIOLATIONS_KEPT_MAX: usize = 5;

impl StatusHistory {
    fn record(&self, status: &PartitionStatus, now_ms: u64, config: &AggregatorConfig) {
        let mut recorded = self.recorded.lock().expect("history lock");
        let epochs = recorded.epochs.entry(status.partition).or_default();
        // A newer owner rewrites the epochs after the checkpoint it restored.
        epochs.retain(|mark| mark.epoch < status.epoch);
        epochs.push(EpochMark {
            epoch: status.epoch,
            next_offset: status.next_offset,
            dedup_cutoff_ms: status.dedup_cutoff_ms,
        });
        recorded
            .early_evictions
            .insert(status.partition, status.dedup_early_evictions);
        let mut violation = None;
        let watermark_ms = status.watermark.watermark_ms;
        if let Some(advance) = status.last_idle_advance {
            let seen = IdleAdvanceSeen {
                partition: status.partition,
                epoch: status.epoch,
                advance,
            };
            let known = recorded
                .idle_advances
                .iter()
                .any(|old| old.partition == seen.partition && old.advance == seen.advance);
            if !known {
                recorded.idle_advances.push(seen);
            }
        }
        if watermark_ms > now_ms + WATERMARK_AHEAD_OF_PROCESSING_MS_MAX {
            violation = Some(format!(
                "partition {} epoch {}: watermark {watermark_ms} is {} ms ahead of the clock {now_ms}, past the allowance of {WATERMARK_AHEAD_OF_PROCESSING_MS_MAX} ms",
                status.partition,
                status.epoch.0,
                watermark_ms - now_ms
            ));
        }
        let bucket_ms = config.dedup.bucket_ms;
        let horizon_cutoff_ms =
            watermark_ms.saturating_sub(config.dedup.horizon_ms) / bucket_ms * bucket_ms;
        let cutoff_ms = status.dedup_cutoff_ms;
        let evicted = status.dedup_early_evictions > 0;
        if cutoff_ms < horizon_cutoff_ms || (cutoff_ms > horizon_cutoff_ms && !evicted) {
            violation = Some(format!(
                "partition {} epoch {}: dedup cutoff {cutoff_ms} but the watermark {watermark_ms} minus the horizon {} ms gives {horizon_cutoff_ms}",
                status.partition, status.epoch.0, config.dedup.horizon_ms
            ));
        }
        if let Some(violation) = violation {
            recorded.violations.push(violation);
        }
    }

    /// The dedup cutoff the record at `offset` of `partition` was counted under: that of the
    /// last committed epoch whose next offset is at or below it (0 before the first).
    pub fn cutoff_for(&self, partition: PartitionId, offset: Offset) -> u64 {
        let recorded = self.recorded.lock().expect("history lock");
        let Some(epochs) = recorded.epochs.get(&partition) else {
            return 0;
        };
        let after = epochs.partition_point(|mark| mark.next_offset <= offset);
        after
            .checked_sub(1)
            .map_or(0, |index| epochs[index].dedup_cutoff_ms)
    }

    /// The committed epochs of `partition`, in order.
    pub fn epochs(&self, partition: PartitionId) -> Vec<EpochMark> {
        let recorded = self.recorded.lock().expect("history lock");
        recorded.epochs.get(&partition).cloned().unwrap_or_default()
    }

    /// Whether the dedup bound moved `partition`'s cutoff mid-epoch, so that the history cannot
    /// say exactly which clicks were below it.
    pub fn evicted_early(&self, partition: PartitionId) -> bool {
        let recorded = self.recorded.lock().expect("history lock");
        recorded
            .early_evictions
            .get(&partition)
            .is_some_and(|evictions| *evictions > 0)
    }

    /// An append that `RecordingLog` saw succeed: the partition's log reaches `end` by `now_ms`.
    fn appended(&self, partition: PartitionId, end: Offset, now_ms: u64) {
        let mut recorded = self.recorded.lock().expect("history lock");
        let appends = recorded.appends.entry(partition).or_default();
        // A retried batch answers with offsets the log already had: nothing new by then.
        if appends.last().is_none_or(|(last_end, _)| end > *last_end) {
            appends.push((end, now_ms));
        }
    }

    /// Idle advances made while records appended before them were still unread.
    fn early_idle_advances(recorded: &Recorded) -> Vec<String> {
        recorded
            .idle_advances
            .iter()
            .filter_map(|seen| {
                let IdleAdvance {
                    processing_ms,
                    next_offset,
                } = seen.advance;
                let appends = recorded.appends.get(&seen.partition)?;
                let before = appends.partition_point(|(_, at_ms)| *at_ms < processing_ms);
                let (appended_end, _) = *appends.get(before.checked_sub(1)?)?;
                (appended_end > next_offset).then(|| {
                    format!(
                        "partition {} (status of epoch {}): the watermark followed the clock at {processing_ms} ms while records up to offset {} appended before then were unread (read up to {})",
                        seen.partition, seen.epoch.0, appended_end.0, next_offset.0
                    )
                })
            })
            .collect()
    }

    /// The rule violations seen, first ones first.
    pub fn violations(&self) -> Vec<String> {
        let recorded = self.recorded.lock().expect("history lock");
        let all: Vec<String> = recorded
            .violations
            .iter()
            .cloned()
            .chain(StatusHistory::early_idle_advances(&recorded))
            .collect();
        let mut kept: Vec<String> = all.iter().take(VIOLATIONS_KEPT_MAX).cloned().collect();
        if all.len() > VIOLATIONS_KEPT_MAX {
            kept.push(format!("and {} more", all.len() - VIOLATIONS_KEPT_MAX));
        }
        kept
    }
}

/// A real-time store that records every status it accepts into a `StatusHistory`.
pub struct RecordingStore {
    pub inner: Arc<dyn RealtimeStore>,
    pub history: Arc<StatusHistory>,
    pub config: AggregatorConfig,
}

#[async_trait]
impl RealtimeStore for RecordingStore {
    async fn claim_partition(
        &self,
        partition: PartitionId,
        above: Generation,
    ) -> Result<Claim, StoreError> {
        self.inner.claim_partition(partition, above).await
    }

    async fn apply(
        &self,
        partition: PartitionId,
        fence: Fence,
        updates: &[SeriesUpdate],
        status: PartitionStatus,
    ) -> Result<ApplyOutcome, StoreError> {
        let outcome = self.inner.apply(partition, fence, updates, status).await?;
        use adclick_engine::seams::Clock;
        self.history
            .record(&status, SystemClock.now_ms(), &self.config);
        Ok(outcome)
    }

    async fn get(&self, series: Series, lane: Lane) -> Result<Option<StoredCounts>, StoreError> {
        self.inner.get(series, lane).await
    }

    async fn scan(&self) -> Result<Vec<(Series, Lane, StoredCounts)>, StoreError> {
        self.inner.scan().await
    }

    async fn partition_status(&self) -> Result<Vec<PartitionStatus>, StoreError> {
        self.inner.partition_status().await
    }

    async fn set_rebuilding(
        &self,
        partition: PartitionId,
        rebuilder: adclick_engine::seams::Rebuilder,
        rebuilding: bool,
    ) -> Result<(), StoreError> {
        self.inner
            .set_rebuilding(partition, rebuilder, rebuilding)
            .await
    }

    async fn rebuilding_partitions(&self) -> Result<Vec<PartitionId>, StoreError> {
        self.inner.rebuilding_partitions().await
    }
}

/// A log that tells a `StatusHistory` when each append became visible, for the idle-advance
/// check. Wrap the log the appenders use; an append whose ack was lost is not seen, which only
/// leaves the check less to check.
pub struct RecordingLog {
    pub inner: Arc<dyn Log>,
    pub history: Arc<StatusHistory>,
}

#[async_trait]
impl Log for RecordingLog {
    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }

    async fn append(&self, partition: PartitionId, batch: AppendBatch) -> Result<Offset, LogError> {
        let records = batch.records.len() as u64;
        let first = self.inner.append(partition, batch).await?;
        use adclick_engine::seams::Clock;
        self.history
            .appended(partition, Offset(first.0 + records), SystemClock.now_ms());
        Ok(first)
    }

    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        records_max: usize,
    ) -> Result<Vec<ReadBatch>, LogError> {
        self.inner.read(partition, from, records_max).await
    }

    async fn end_offset(&self, partition: PartitionId) -> Result<Offset, LogError> {
        self.inner.end_offset(partition).await
    }

    async fn new_producer_id(&self) -> Result<u64, LogError> {
        self.inner.new_producer_id().await
    }
}
