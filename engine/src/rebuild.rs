//! `adclick rebuild --from TIME [--to TIME]`: a Kappa reprocessing of the log into the real-time
//! store, through the workers' own aggregator, so a logic fix reaches history and a store that
//! lost data gets it back.
//!
//! Per partition: mark it rebuilding, replay it, claim it, write, clear the mark.
//!
//! - **Replay.** Every record from the log's first retained offset to the end offset read at
//!   start goes through `PartitionAggregator` (barriers every `REBUILD_RECORDS_PER_BARRIER`
//!   records, as a worker takes epochs), each click judged by the fraud list `RebuildEnv::fraud`
//!   gives its offset, swapped in at a barrier where the workers swapped theirs. The replay
//!   keeps the last value of every series whose window or hour starts in the range; nothing is
//!   written yet. Starting at the log's start keeps the dedup warm: a full horizon of ids lies
//!   before the range whenever the log reaches one horizon before `from` (`dedup_warm`).
//! - **The replay's clock.** The aggregator takes a processing time with each call; the log
//!   does not record when a record was read. Ingest accepts no event time more than
//!   `EVENT_TIME_FUTURE_MS_MAX` ahead of its clock, so a record was appended (and read) no
//!   earlier than its event time minus that, and records are read in offset order: the running
//!   maximum of that bound, per call of `REBUILD_RECORDS_PER_CALL` records, is a lower bound of
//!   the live worker's clock. So the replay's watermark never passes the live one at the same
//!   offset: a click the live run counted on time is on time here too, and a click it sent to
//!   the late or unverified lane only because its clock had moved on (an idle partition, a
//!   slow read) can land on time or late here. At the end the replay has read to the end
//!   offset, and the watermark follows the real clock, as a caught-up worker's does.
//! - **Writes.** The partition is claimed as a worker claims it (above the checkpoint store's
//!   generation floor, then a create-only claim file), and the kept values are written as
//!   absolute values under that generation, with the partition's status, in chunks. A live
//!   worker is thereby fenced; its supervisor restarts it with a higher generation, it restores
//!   from its checkpoint and goes on. Should it fence the rebuild first, the rebuild claims
//!   again and goes on from the chunk that failed. **Rule:** open windows come from the
//!   worker's state (it writes them as they change and when they close), closed windows from
//!   the rebuild (a worker writes a closed window again only when a late click changes it, or
//!   when it re-commits the epoch it was fenced in).
//! - **A store that forgot the partition** (the claim says so, the partition has no status, or
//!   a rewrite before this one left its mark): the rebuild's claim and status hide the loss
//!   from the next worker, so the rebuild first writes back what that worker would have, every
//!   value outside the range that complete epochs wrote (`CheckpointStore::written_series`).
//!
//! Readers see `rebuilding` from the mark until every partition's writes are in; a rebuild that
//! dies leaves it set, and running it again clears it.
//!
//! **Invariant:** the rebuild decides nothing about a click; `adclick-core` does, as for the
//! workers. It never writes a series outside the range, except what the checkpoint store
//! says a complete epoch wrote.

use std::collections::BTreeMap;
use std::sync::Arc;

use adclick_core::billing::FraudSchedule;
use adclick_core::codec;
use adclick_core::ids::*;
use adclick_core::operator::{AggregatorConfig, PartitionAggregator, Series, SeriesUpdate};
use adclick_core::snapshot::PartitionStats;
use adclick_core::window::Lane;

use crate::checkpoint::{CheckpointError, CheckpointStore};
use crate::fencing::Fence;
use crate::limits;
use crate::seams::{
    Clock, Log, LogError, PartitionHealth, PartitionStatus, RealtimeStore, Rebuilder, StoreError,
};

/// The series a rebuild writes: those whose window or hour starts in `[from_ms, to_ms)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildRange {
    pub from_ms: u64,
    pub to_ms: u64,
}

impl RebuildRange {
    pub fn contains(&self, series: &Series) -> bool {
        let start_ms = match series {
            Series::Window(key) => key.window_start_ms,
            Series::Hour(key) => key.hour_start_ms,
        };
        (self.from_ms..self.to_ms).contains(&start_ms)
    }
}

/// Everything a rebuild talks to.
#[derive(Clone)]
pub struct RebuildEnv {
    pub log: Arc<dyn Log>,
    pub store: Arc<dyn RealtimeStore>,
    pub checkpoints: CheckpointStore,
    pub clock: Arc<dyn Clock>,
    /// The list each replayed click is judged by: by default the version the workers' checkpoints
    /// name for its offset (`judged_lists::workers_schedule`), so the rebuild recounts history
    /// as it was judged and agrees with billing; or one list for all of history
    /// (`FraudSchedule::single`), to apply today's list.
    pub fraud: FraudSchedule,
}

/// What a rebuild did to one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionRebuild {
    pub partition: PartitionId,
    /// The generation of the rebuild's last claim.
    pub generation: Generation,
    /// The replay read `[first_offset, end_offset)`.
    pub first_offset: Offset,
    pub end_offset: Offset,
    /// Series values of the range written.
    pub series_written: usize,
    /// Values outside the range written back, because the store had forgotten the partition.
    pub series_restored: usize,
    /// The replay's dedup had a whole horizon of history before the range.
    pub dedup_warm: bool,
    pub stats: PartitionStats,
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("partition {partition}: {source}")]
    Log {
        partition: PartitionId,
        source: LogError,
    },
    #[error("partition {partition}: {source}")]
    Store {
        partition: PartitionId,
        source: StoreError,
    },
    #[error("partition {partition}: {source}")]
    Checkpoint {
        partition: PartitionId,
        source: CheckpointError,
    },
    #[error(
        "partition {partition}: the log ends at offset {end} but reads stop at {offset} after {reads} empty reads"
    )]
    ShortRead {
        partition: PartitionId,
        offset: u64,
        end: u64,
        reads: u32,
    },
    #[error(
        "partition {partition}: fenced off {attempts} times in a row while writing (a live owner keeps reclaiming it); the partition stays marked rebuilding, run the rebuild again"
    )]
    KeptFenced {
        partition: PartitionId,
        attempts: u32,
    },
}

impl RebuildError {
    /// Another owner took the partition from under the writes: claiming again helps.
    fn is_fenced(&self) -> bool {
        matches!(
            self,
            RebuildError::Store {
                source: StoreError::Fenced { .. },
                ..
            }
        )
    }
}

/// Rebuilds every partition of the log, one after another. Every partition is marked
/// rebuilding before the first is replayed (the store is suspect as a whole after an incident),
/// and each mark is cleared once that partition's writes are in.
pub async fn rebuild(
    env: &RebuildEnv,
    config: AggregatorConfig,
    range: RebuildRange,
) -> Result<Vec<PartitionRebuild>, RebuildError> {
    let partitions: Vec<PartitionId> = (0..env.log.partitions()).map(PartitionId).collect();
    let suspect = suspect_partitions(env.store.as_ref()).await?;
    for &partition in &partitions {
        mark(env, partition, true).await?;
    }
    let mut done = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let suspect = suspect(partition);
        done.push(rebuild_partition(env, config, range, partition, suspect).await?);
        mark(env, partition, false).await?;
    }
    Ok(done)
}

/// Partitions whose stored values may lack more than the range: a rewrite (a replay's or a
/// worker's) left its mark, or the partition has no status, which a worker takes for a store
/// loss (every apply writes it). The rebuild's status would hide both from the next worker.
async fn suspect_partitions(
    store: &dyn RealtimeStore,
) -> Result<impl Fn(PartitionId) -> bool, RebuildError> {
    let store_error = |source| RebuildError::Store {
        partition: PartitionId(0),
        source,
    };
    let marked = store.rebuilding_partitions().await.map_err(store_error)?;
    let statuses = store.partition_status().await.map_err(store_error)?;
    Ok(move |partition| {
        marked.contains(&partition) || !statuses.iter().any(|status| status.partition == partition)
    })
}

async fn mark(env: &RebuildEnv, partition: PartitionId, on: bool) -> Result<(), RebuildError> {
    env.store
        .set_rebuilding(partition, Rebuilder::Replay, on)
        .await
        .map_err(|source| RebuildError::Store { partition, source })
}

/// Replays one partition and writes what the range holds. `suspect`: the store may lack values
/// outside the range too (`suspect_partitions`).
async fn rebuild_partition(
    env: &RebuildEnv,
    config: AggregatorConfig,
    range: RebuildRange,
    partition: PartitionId,
    suspect: bool,
) -> Result<PartitionRebuild, RebuildError> {
    let replayed = replay(env, config, range, partition).await?;
    let written = write_with_reclaims(env, range, &replayed, suspect).await?;
    tracing::info!(
        partition = partition.0,
        generation = written.generation.0,
        records = replayed.status.stats.records,
        series_written = replayed.updates.len(),
        series_restored = written.series_restored,
        dedup_warm = replayed.dedup_warm,
        "partition rebuilt"
    );
    Ok(PartitionRebuild {
        partition,
        generation: written.generation,
        first_offset: replayed.first_offset,
        end_offset: replayed.end_offset,
        series_written: replayed.updates.len(),
        series_restored: written.series_restored,
        dedup_warm: replayed.dedup_warm,
        stats: replayed.status.stats,
    })
}

/// One partition's replay: the last value of every series in the range, and the status to
/// write with them (its generation set by the claim).
struct Replayed {
    updates: Vec<SeriesUpdate>,
    status: PartitionStatus,
    first_offset: Offset,
    end_offset: Offset,
    dedup_warm: bool,
}

/// The replay's processing time: the running maximum, over calls, of the largest event time in
/// the call minus what ingest accepts ahead of its clock (the module docs say why).
#[derive(Default)]
struct ReplayClock {
    now_ms: u64,
    first_event_time_ms: Option<u64>,
}

impl ReplayClock {
    fn observe(&mut self, records: &[(Offset, &[u8])]) -> u64 {
        for (_, bytes) in records {
            if let Ok(click) = codec::decode(bytes) {
                let event_time_ms = click.event_time_ms.0;
                self.first_event_time_ms.get_or_insert(event_time_ms);
                let bound_ms =
                    event_time_ms.saturating_sub(adclick_core::limits::EVENT_TIME_FUTURE_MS_MAX);
                self.now_ms = self.now_ms.max(bound_ms);
            }
        }
        self.now_ms
    }
}

async fn replay(
    env: &RebuildEnv,
    config: AggregatorConfig,
    range: RebuildRange,
    partition: PartitionId,
) -> Result<Replayed, RebuildError> {
    let log_error = |source| RebuildError::Log { partition, source };
    let first_offset = env.log.start_offset(partition).await.map_err(log_error)?;
    let end_offset = env.log.end_offset(partition).await.map_err(log_error)?;
    // Full checkpoints would only be thrown away: deltas are cheaper to encode.
    let config = AggregatorConfig {
        full_checkpoint_every_epochs: u64::MAX,
        ..config
    };
    let first_list = env.fraud.list_for(partition, first_offset).clone();
    let mut replay = Replay {
        fraud: &env.fraud,
        partition,
        range,
        aggregator: PartitionAggregator::new(config, partition, first_list),
        kept: BTreeMap::new(),
        clock: ReplayClock::default(),
        since_barrier: 0,
    };
    let mut offset = first_offset;
    let mut empty_reads = 0;
    while offset < end_offset {
        let wanted = limits::REBUILD_RECORDS_PER_CALL.min((end_offset.0 - offset.0) as usize);
        let batches = env
            .log
            .read(partition, offset, wanted)
            .await
            .map_err(log_error)?;
        if batches.iter().all(|batch| batch.is_empty()) {
            empty_reads += 1;
            if empty_reads >= limits::REBUILD_EMPTY_READS_MAX {
                return Err(RebuildError::ShortRead {
                    partition,
                    offset: offset.0,
                    end: end_offset.0,
                    reads: empty_reads,
                });
            }
            continue;
        }
        empty_reads = 0;
        for batch in &batches {
            let records: Vec<(Offset, &[u8])> = batch
                .iter()
                .take_while(|(record_offset, _)| *record_offset < end_offset)
                .collect();
            if let Some(&(last, _)) = records.last() {
                replay.take(&records);
                offset = Offset(last.0 + 1);
            }
        }
        if replay.since_barrier >= limits::REBUILD_RECORDS_PER_BARRIER {
            replay.barrier();
        }
    }
    // Read to the end offset: caught up, so the watermark follows the clock, as a worker's does.
    replay.aggregator.on_idle(env.clock.now_ms());
    replay.barrier();
    let horizon_ms = config.dedup.horizon_ms;
    let dedup_warm = first_offset == Offset(0)
        || replay
            .clock
            .first_event_time_ms
            .is_none_or(|first_ms| first_ms.saturating_add(horizon_ms) <= range.from_ms);
    Ok(Replayed {
        status: status_of(&replay.aggregator),
        updates: replay.kept.into_values().collect(),
        first_offset,
        end_offset,
        dedup_warm,
    })
}

/// A partition's replay in progress: the aggregator, its clock, and the range's series kept.
struct Replay<'a> {
    fraud: &'a FraudSchedule,
    partition: PartitionId,
    range: RebuildRange,
    aggregator: PartitionAggregator,
    kept: BTreeMap<(Series, Lane), SeriesUpdate>,
    clock: ReplayClock,
    since_barrier: usize,
}

impl Replay<'_> {
    /// Feeds records in offset order; where the workers swapped fraud lists, so does the
    /// replay, at a barrier.
    fn take(&mut self, records: &[(Offset, &[u8])]) {
        let mut start = 0;
        for (index, (offset, _)) in records.iter().enumerate() {
            let list = self.fraud.list_for(self.partition, *offset);
            if list.version() != self.aggregator.fraud_list_version() {
                feed(
                    &mut self.aggregator,
                    &mut self.clock,
                    &records[start..index],
                );
                self.since_barrier += index - start;
                self.aggregator.stage_fraud_list(list.clone());
                self.barrier();
                start = index;
            }
        }
        feed(&mut self.aggregator, &mut self.clock, &records[start..]);
        self.since_barrier += records.len() - start;
    }

    fn barrier(&mut self) {
        barrier(&mut self.aggregator, self.range, &mut self.kept);
        self.since_barrier = 0;
    }
}

/// Records to the aggregator, at the replay clock's reading for them.
fn feed(
    aggregator: &mut PartitionAggregator,
    clock: &mut ReplayClock,
    records: &[(Offset, &[u8])],
) {
    if records.is_empty() {
        return;
    }
    let processing_ms = clock.observe(records);
    // Problems are counted in the stats the status carries; the workers logged them.
    aggregator.on_batch(records.iter().copied(), processing_ms);
}

/// One epoch of the replay: the changed series of the range are kept (the last value wins),
/// the checkpoint is dropped.
fn barrier(
    aggregator: &mut PartitionAggregator,
    range: RebuildRange,
    kept: &mut BTreeMap<(Series, Lane), SeriesUpdate>,
) {
    let epoch = Epoch(aggregator.epoch().0 + 1);
    let output = aggregator.on_barrier(epoch);
    for update in &output.updates {
        if range.contains(&update.series) {
            kept.insert((update.series, update.lane), *update);
        }
    }
    aggregator.on_commit(epoch);
    aggregator.recycle(output.checkpoint, output.checkpoint_bytes);
}

fn status_of(aggregator: &PartitionAggregator) -> PartitionStatus {
    PartitionStatus {
        partition: aggregator.partition(),
        generation: Generation(0),
        epoch: aggregator.epoch(),
        next_offset: aggregator.next_offset(),
        watermark: aggregator.watermark(),
        stats: aggregator.stats(),
        dedup_cutoff_ms: aggregator.dedup().cutoff_ms(),
        dedup_early_evictions: aggregator.dedup().stats().early_evictions,
        last_idle_advance: None,
        health: PartitionHealth {
            dedup_ids: aggregator.dedup().len() as u64,
            dedup_bytes: aggregator.dedup().allocated_bytes() as u64,
            ..PartitionHealth::default()
        },
    }
}

struct Written {
    generation: Generation,
    series_restored: usize,
}

/// The partition's writes, in chunks, each under the rebuild's current claim. A chunk that a
/// new owner fenced off is written again under a new claim; values are absolute, so a chunk
/// written twice is harmless.
async fn write_with_reclaims(
    env: &RebuildEnv,
    range: RebuildRange,
    replayed: &Replayed,
    suspect: bool,
) -> Result<Written, RebuildError> {
    let partition = replayed.status.partition;
    let (mut fence, store_forgot) = claim(env, partition, replayed.status.epoch).await?;
    let mut status = replayed.status;
    status.generation = fence.generation;
    let mut updates = Vec::new();
    if store_forgot || suspect {
        status.health.store_loss_detected_ms = Some(env.clock.now_ms());
        updates = written_outside(env, range, partition).await?;
    }
    let series_restored = updates.len();
    updates.extend_from_slice(&replayed.updates);
    let mut chunks = updates.chunks(limits::REBUILD_UPDATES_PER_APPLY).peekable();
    let mut fenced_in_a_row = 0;
    while let Some(chunk) = chunks.peek() {
        match apply(env, partition, fence, chunk, status).await {
            Ok(()) => {
                chunks.next();
                fenced_in_a_row = 0;
            }
            Err(error) if error.is_fenced() => {
                fenced_in_a_row += 1;
                if fenced_in_a_row >= limits::REBUILD_WRITE_ATTEMPTS_MAX {
                    return Err(RebuildError::KeptFenced {
                        partition,
                        attempts: fenced_in_a_row,
                    });
                }
                tracing::warn!(partition = partition.0, %error, "fenced off; claiming again");
                fence = claim(env, partition, replayed.status.epoch).await?.0;
                status.generation = fence.generation;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(Written {
        generation: fence.generation,
        series_restored,
    })
}

async fn apply(
    env: &RebuildEnv,
    partition: PartitionId,
    fence: Fence,
    chunk: &[SeriesUpdate],
    status: PartitionStatus,
) -> Result<(), RebuildError> {
    env.store
        .apply(partition, fence, chunk, status)
        .await
        .map_err(|source| RebuildError::Store { partition, source })?;
    Ok(())
}

/// Claims the partition as a worker does; returns the fence to write under and whether the
/// store had forgotten the partition.
async fn claim(
    env: &RebuildEnv,
    partition: PartitionId,
    epoch: Epoch,
) -> Result<(Fence, bool), RebuildError> {
    let checkpoint_error = |source| RebuildError::Checkpoint { partition, source };
    loop {
        let floor = env
            .checkpoints
            .generation_floor(partition)
            .await
            .map_err(checkpoint_error)?;
        let claim = env
            .store
            .claim_partition(partition, floor)
            .await
            .map_err(|source| RebuildError::Store { partition, source })?;
        let claimed = env
            .checkpoints
            .record_claim(partition, claim.generation)
            .await
            .map_err(checkpoint_error)?;
        // Not claimed: the store handed this generation out before (it forgot a claim); the
        // floor now includes it, so the next round claims above it.
        if claimed {
            let fence = Fence {
                generation: claim.generation,
                epoch,
            };
            return Ok((fence, claim.store_forgot && floor > Generation(0)));
        }
    }
}

/// What complete epochs wrote outside the range, oldest first (the last value wins).
async fn written_outside(
    env: &RebuildEnv,
    range: RebuildRange,
    partition: PartitionId,
) -> Result<Vec<SeriesUpdate>, RebuildError> {
    let mut written = env
        .checkpoints
        .written_series(partition)
        .await
        .map_err(|source| RebuildError::Checkpoint { partition, source })?;
    written.retain(|update| !range.contains(&update.series));
    Ok(written)
}
