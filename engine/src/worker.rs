//! The partition worker: the production loop that reads a partition of the log, runs the core
//! aggregator, and commits every epoch exactly once.
//!
//! Each epoch (default 1 s): (1) the checkpoint and its updates are written to the checkpoint
//! store (pre-commit); (2) the updates go to the real-time store as absolute values fenced by
//! (generation, epoch); (3) the epoch is marked complete. A worker that starts (or restarts)
//! claims the partition (a new generation fences off any older owner), restores the last complete
//! checkpoint, re-commits a pending epoch if there is one, and replays the log from the
//! checkpoint's offset. Killing a worker at any await point loses and doubles nothing.

use std::sync::{Arc, RwLock};

use adclick_core::fraud::FraudRegistry;
use adclick_core::ids::*;
use adclick_core::operator::{AggregatorConfig, BarrierOutput, PartitionAggregator, SeriesUpdate};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointError, CheckpointStore};
use crate::fencing::Fence;
use crate::fraud_lists::{FraudListStore, FraudListStoreError};
use crate::limits;
use crate::seams::{
    Clock, IdleAdvance, Log, LogError, PartitionHealth, PartitionStatus, RealtimeStore, StoreError,
};
pub use crate::supervisor::{Assignment, SupervisorExit, assigned_forever, supervise};

/// A batch with many bad records logs this many of them, and a count of the rest.
const RECORD_PROBLEMS_LOGGED_PER_BATCH_MAX: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub epoch_ms: u64,
    pub read_records_max: usize,
    pub idle_poll_ms: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            epoch_ms: limits::EPOCH_MS_DEFAULT,
            read_records_max: limits::WORKER_READ_RECORDS_MAX,
            idle_poll_ms: limits::WORKER_IDLE_POLL_MS,
        }
    }
}

/// The steps of the epoch protocol, where tests and the simulator inject crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EpochStep {
    BeforePreCommit,
    AfterPreCommit,
    AfterSinkWrite,
    AfterComplete,
    BeforeRecommit,
}

/// Decides whether the worker "crashes" at a step. Production has none.
pub type CrashHook = Arc<dyn Fn(PartitionId, EpochStep, Epoch) -> bool + Send + Sync>;

/// A deliberately broken worker, built only for tests that prove the checks catch it.
#[cfg(feature = "test-canaries")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Canary {
    /// Writes increments (read, add, write) instead of absolute values: HINCRBY's bug.
    UnfencedIncrements,
    /// A new owner skips re-applying the pending epoch its predecessor pre-committed.
    SkipPendingReapply,
    /// A restore judges with the newest fraud list instead of the one its checkpoint names.
    NewestFraudListOnRestore,
    /// A fenced write is retried under the store's current generation: no generation check.
    NoGenerationCheck,
    /// The dedup horizon is one bucket short of the configured one.
    DedupHorizonShortByOneBucket,
}

#[cfg(feature = "test-canaries")]
impl Canary {
    pub const ALL: [Canary; 5] = [
        Canary::UnfencedIncrements,
        Canary::SkipPendingReapply,
        Canary::NewestFraudListOnRestore,
        Canary::NoGenerationCheck,
        Canary::DedupHorizonShortByOneBucket,
    ];

    /// The kebab-case name `ci/sim canaries` prints.
    pub fn name(self) -> &'static str {
        match self {
            Canary::UnfencedIncrements => "delta-writes",
            Canary::SkipPendingReapply => "skip-pending-reapply",
            Canary::NewestFraudListOnRestore => "newest-fraud-list-on-restore",
            Canary::NoGenerationCheck => "no-generation-check",
            Canary::DedupHorizonShortByOneBucket => "dedup-horizon-short-by-one-bucket",
        }
    }
}

/// Everything a worker talks to.
#[derive(Clone)]
pub struct WorkerEnv {
    pub log: Arc<dyn Log>,
    pub store: Arc<dyn RealtimeStore>,
    pub checkpoints: CheckpointStore,
    pub clock: Arc<dyn Clock>,
    pub fraud: Arc<RwLock<FraudRegistry>>,
    /// Where a restore finds a fraud-list version its registry lacks; `None` where every list
    /// is registered up front (the simulator, `adclick run`).
    pub fraud_lists: Option<FraudListStore>,
    pub crash_hook: Option<CrashHook>,
    #[cfg(feature = "test-canaries")]
    pub canary: Option<Canary>,
}

impl WorkerEnv {
    pub fn with_fraud_lists(mut self, fraud_lists: FraudListStore) -> WorkerEnv {
        self.fraud_lists = Some(fraud_lists);
        self
    }

    pub fn new(
        log: Arc<dyn Log>,
        store: Arc<dyn RealtimeStore>,
        checkpoints: CheckpointStore,
        clock: Arc<dyn Clock>,
        fraud: Arc<RwLock<FraudRegistry>>,
    ) -> WorkerEnv {
        WorkerEnv {
            log,
            store,
            checkpoints,
            clock,
            fraud,
            fraud_lists: None,
            crash_hook: None,
            #[cfg(feature = "test-canaries")]
            canary: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
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
    #[error("partition {partition}: cannot restore: {source}")]
    Restore {
        partition: PartitionId,
        source: adclick_core::operator::RestoreError,
    },
    #[error("partition {partition}: cannot restore: {source}")]
    FraudList {
        partition: PartitionId,
        source: FraudListStoreError,
    },
    #[error(
        "partition {partition}: generation {generation} was claimed before: the real-time store handed it out twice, so it forgot a claim; claiming again above it"
    )]
    ClaimTaken {
        partition: PartitionId,
        generation: Generation,
    },
    #[error("partition {partition}: injected crash at {step:?} of epoch {epoch}")]
    InjectedCrash {
        partition: PartitionId,
        step: EpochStep,
        epoch: Epoch,
    },
}

pub struct PartitionWorker {
    partition: PartitionId,
    config: WorkerConfig,
    aggregator_config: AggregatorConfig,
    env: WorkerEnv,
    generation: Generation,
    aggregator: Option<PartitionAggregator>,
    last_barrier_ms: u64,
    /// When an idle poll last asked the log for its end offset.
    end_offset_checked_ms: u64,
    last_idle_advance: Option<IdleAdvance>,
    store_loss_detected_ms: Option<u64>,
    #[cfg(feature = "test-canaries")]
    canary_last_emitted: std::collections::HashMap<
        (adclick_core::operator::Series, adclick_core::window::Lane),
        adclick_core::window::Counts,
    >,
}

impl PartitionWorker {
    pub fn new(
        partition: PartitionId,
        config: WorkerConfig,
        aggregator_config: AggregatorConfig,
        env: WorkerEnv,
    ) -> Self {
        PartitionWorker {
            partition,
            config,
            aggregator_config,
            env,
            generation: Generation(0),
            aggregator: None,
            last_barrier_ms: 0,
            end_offset_checked_ms: 0,
            last_idle_advance: None,
            store_loss_detected_ms: None,
            #[cfg(feature = "test-canaries")]
            canary_last_emitted: Default::default(),
        }
    }

    fn crash_point(&self, step: EpochStep, epoch: Epoch) -> Result<(), WorkerError> {
        match &self.env.crash_hook {
            Some(hook) if hook(self.partition, step, epoch) => Err(WorkerError::InjectedCrash {
                partition: self.partition,
                step,
                epoch,
            }),
            _ => Ok(()),
        }
    }

    fn store_error(&self, source: StoreError) -> WorkerError {
        WorkerError::Store {
            partition: self.partition,
            source,
        }
    }

    fn checkpoint_error(&self, source: CheckpointError) -> WorkerError {
        WorkerError::Checkpoint {
            partition: self.partition,
            source,
        }
    }

    fn aggregator(&mut self) -> &mut PartitionAggregator {
        self.aggregator.as_mut().expect("recovered before use")
    }

    /// Claims the partition, restores its state and re-commits a pending epoch.
    pub async fn recover(&mut self) -> Result<(), WorkerError> {
        let partition = self.partition;
        let (floor, store_forgot) = self.claim().await?;
        let recovery = self
            .env
            .checkpoints
            .load(partition)
            .await
            .map_err(|e| self.checkpoint_error(e))?;
        let mut chain = recovery.chain;
        if let Some(pending) = &recovery.pending {
            chain.push(pending.checkpoint.clone());
        }
        self.restore(&chain).await?;
        if store_forgot || self.store_lacks_status(&chain).await? {
            self.rewrite_forgotten_store(floor).await?;
        }
        let pending = recovery.pending;
        #[cfg(feature = "test-canaries")]
        let pending = pending.filter(|_| self.env.canary != Some(Canary::SkipPendingReapply));
        if let Some(pending) = pending {
            self.recommit(pending).await?;
        }
        // A list rotated while the partition was down applies from the restored offset on: an
        // empty epoch swaps it in and checkpoints it, so every checkpoint still names the list
        // that judged the records after it. A fresh partition checkpoints before its first read
        // too, so the list history (`CheckpointStore::list_history`) starts at offset 0.
        let current = self
            .env
            .fraud
            .read()
            .expect("fraud registry lock")
            .current();
        if chain.is_empty() || self.aggregator().fraud_list_version() != current.version() {
            self.barrier().await?;
        }
        tracing::debug!(
            partition = partition.0,
            generation = self.generation.0,
            "partition recovered"
        );
        Ok(())
    }

    /// Claims the partition above every generation the checkpoint store knows, and records the
    /// claim there. Returns that floor, and whether the real-time store had forgotten it.
    async fn claim(&mut self) -> Result<(Generation, bool), WorkerError> {
        let partition = self.partition;
        let checkpoints = &self.env.checkpoints;
        let floor = checkpoints
            .generation_floor(partition)
            .await
            .map_err(|e| self.checkpoint_error(e))?;
        let claim = self
            .env
            .store
            .claim_partition(partition, floor)
            .await
            .map_err(|e| self.store_error(e))?;
        let claimed = checkpoints
            .record_claim(partition, claim.generation)
            .await
            .map_err(|e| self.checkpoint_error(e))?;
        if !claimed {
            return Err(WorkerError::ClaimTaken {
                partition,
                generation: claim.generation,
            });
        }
        self.generation = claim.generation;
        Ok((floor, claim.store_forgot && floor > Generation(0)))
    }

    /// The aggregator from the chain, with the fraud list its last checkpoint names (loaded from
    /// the list store if this node never had it); a fresh one with the current list.
    async fn restore(
        &mut self,
        chain: &[adclick_core::snapshot::PartitionCheckpoint],
    ) -> Result<(), WorkerError> {
        let partition = self.partition;
        if let (Some(last), Some(fraud_lists)) = (chain.last(), &self.env.fraud_lists) {
            fraud_lists
                .ensure_known(last.fraud_list_version, &self.env.fraud)
                .await
                .map_err(|source| WorkerError::FraudList { partition, source })?;
        }
        let registry = self.env.fraud.read().expect("fraud registry lock").clone();
        let config = self.aggregator_config;
        #[cfg(feature = "test-canaries")]
        let (config, chain) = self.canary_restore(config, chain, &registry);
        #[cfg(feature = "test-canaries")]
        let chain = chain.as_slice();
        let aggregator = if chain.is_empty() {
            PartitionAggregator::new(config, partition, registry.current())
        } else {
            PartitionAggregator::restore(config, partition, chain, &registry)
                .map_err(|source| WorkerError::Restore { partition, source })?
        };
        self.aggregator = Some(aggregator);
        Ok(())
    }

    /// The restore as a canary breaks it: the newest list named in place of the checkpoint's,
    /// or a dedup horizon one bucket short.
    #[cfg(feature = "test-canaries")]
    fn canary_restore(
        &self,
        mut config: AggregatorConfig,
        chain: &[adclick_core::snapshot::PartitionCheckpoint],
        registry: &FraudRegistry,
    ) -> (
        AggregatorConfig,
        Vec<adclick_core::snapshot::PartitionCheckpoint>,
    ) {
        let mut chain = chain.to_vec();
        match self.env.canary {
            Some(Canary::NewestFraudListOnRestore) => {
                if let Some(last) = chain.last_mut() {
                    last.fraud_list_version = registry.current().version();
                }
            }
            Some(Canary::DedupHorizonShortByOneBucket) => {
                config.dedup.horizon_ms -= config.dedup.bucket_ms;
            }
            _ => {}
        }
        (config, chain)
    }

    /// A pre-committed epoch the last owner never completed: its updates again, then complete.
    async fn recommit(
        &mut self,
        pending: crate::checkpoint::EpochRecord,
    ) -> Result<(), WorkerError> {
        let epoch = pending.checkpoint.epoch;
        self.crash_point(EpochStep::BeforeRecommit, epoch)?;
        self.write_sink(epoch, &pending.updates).await?;
        self.env
            .checkpoints
            .mark_complete(self.partition, epoch, pending.generation)
            .await
            .map_err(|e| self.checkpoint_error(e))
    }

    /// A partition with complete epochs always has a status in the store (every apply writes
    /// it, after its updates): none means the store lost it, or a rewrite was cut short.
    async fn store_lacks_status(
        &self,
        chain: &[adclick_core::snapshot::PartitionCheckpoint],
    ) -> Result<bool, WorkerError> {
        if chain.is_empty() {
            return Ok(false);
        }
        let statuses = self
            .env
            .store
            .partition_status()
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(!statuses
            .iter()
            .any(|status| status.partition == self.partition))
    }

    /// The real-time store forgot the partition: every value its complete epochs wrote (kept by
    /// the checkpoint store, within its retention) goes back, oldest first, under this owner's
    /// fence at the restored epoch. That is every series: each value the state holds was written
    /// by the epoch that changed it (a pending epoch is re-applied next). Exact, since these are
    /// the values that were written, not a recount.
    async fn rewrite_forgotten_store(&mut self, floor: Generation) -> Result<(), WorkerError> {
        let partition = self.partition;
        self.store_loss_detected_ms = Some(self.env.clock.now_ms());
        let written = self
            .env
            .checkpoints
            .written_series(partition)
            .await
            .map_err(|e| self.checkpoint_error(e))?;
        tracing::error!(
            partition = partition.0,
            generation = self.generation.0,
            floor = floor.0,
            series_values = written.len(),
            "the real-time store forgot this partition (its generation key was gone: a restart \
             without persistence, an eviction or an asynchronous failover); writing back every \
             value its epochs wrote"
        );
        let epoch = self.aggregator().epoch();
        // Readers say `rebuilding` until the rewrite is in; one cut short leaves the mark set,
        // and the next owner, rewriting again, clears it.
        self.set_rebuilding(true).await?;
        // One apply, the partition's status last: a rewrite cut short leaves no status, and the
        // next owner rewrites again.
        self.write_sink(epoch, &written).await?;
        self.set_rebuilding(false).await
    }

    async fn set_rebuilding(&self, rebuilding: bool) -> Result<(), WorkerError> {
        self.env
            .store
            .set_rebuilding(self.partition, crate::seams::Rebuilder::Worker, rebuilding)
            .await
            .map_err(|e| self.store_error(e))
    }

    fn status(&mut self) -> PartitionStatus {
        let generation = self.generation;
        let last_barrier_ms = self.last_barrier_ms;
        let last_idle_advance = self.last_idle_advance;
        let aggregator = self.aggregator();
        PartitionStatus {
            partition: aggregator.partition(),
            generation,
            epoch: aggregator.epoch(),
            next_offset: aggregator.next_offset(),
            watermark: aggregator.watermark(),
            stats: aggregator.stats(),
            dedup_cutoff_ms: aggregator.dedup().cutoff_ms(),
            dedup_early_evictions: aggregator.dedup().stats().early_evictions,
            last_idle_advance,
            health: PartitionHealth {
                dedup_ids: aggregator.dedup().len() as u64,
                dedup_bytes: aggregator.dedup().allocated_bytes() as u64,
                last_barrier_ms,
                store_loss_detected_ms: self.store_loss_detected_ms,
            },
        }
    }

    async fn write_sink(
        &mut self,
        epoch: Epoch,
        updates: &[SeriesUpdate],
    ) -> Result<(), WorkerError> {
        let fence = Fence {
            generation: self.generation,
            epoch,
        };
        let status = self.status();
        #[cfg(feature = "test-canaries")]
        if self.env.canary == Some(Canary::UnfencedIncrements) {
            return self.write_sink_as_increments(fence, updates, status).await;
        }
        let applied = self
            .env
            .store
            .apply(self.partition, fence, updates, status)
            .await;
        #[cfg(feature = "test-canaries")]
        if let (Some(Canary::NoGenerationCheck), Err(StoreError::Fenced { current, .. })) =
            (self.env.canary, &applied)
        {
            let unchecked = Fence {
                generation: *current,
                ..fence
            };
            let store = &self.env.store;
            let applied = store
                .apply(self.partition, unchecked, updates, status)
                .await;
            return applied.map(|_| ()).map_err(|e| self.store_error(e));
        }
        applied.map_err(|e| self.store_error(e))?;
        Ok(())
    }

    #[cfg(feature = "test-canaries")]
    async fn write_sink_as_increments(
        &mut self,
        fence: Fence,
        updates: &[SeriesUpdate],
        status: PartitionStatus,
    ) -> Result<(), WorkerError> {
        let mut incremented = Vec::with_capacity(updates.len());
        for update in updates {
            let key = (update.series, update.lane);
            let previous = self
                .canary_last_emitted
                .insert(key, update.counts)
                .unwrap_or_default();
            let stored = self
                .env
                .store
                .get(update.series, update.lane)
                .await
                .map_err(|e| self.store_error(e))?;
            let mut counts = stored.map(|stored| stored.counts).unwrap_or_default();
            counts.clicks += update.counts.clicks - previous.clicks;
            counts.unique += update.counts.unique - previous.unique;
            counts.fraud += update.counts.fraud - previous.fraud;
            incremented.push(SeriesUpdate { counts, ..*update });
        }
        self.env
            .store
            .apply(self.partition, fence, &incremented, status)
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(())
    }

    /// One epoch of the protocol: pre-commit, sink write, complete.
    pub async fn barrier(&mut self) -> Result<Epoch, WorkerError> {
        let started_ms = self.env.clock.now_ms();
        let current = self
            .env
            .fraud
            .read()
            .expect("fraud registry lock")
            .current();
        let aggregator = self.aggregator();
        aggregator.stage_fraud_list(current);
        let epoch = Epoch(aggregator.epoch().0 + 1);
        let BarrierOutput {
            updates,
            checkpoint,
            checkpoint_bytes,
            ..
        } = aggregator.on_barrier(epoch);
        self.crash_point(EpochStep::BeforePreCommit, epoch)?;
        self.env
            .checkpoints
            .put_pending(self.generation, &checkpoint, &checkpoint_bytes, &updates)
            .await
            .map_err(|e| self.checkpoint_error(e))?;
        self.crash_point(EpochStep::AfterPreCommit, epoch)?;
        self.write_sink(epoch, &updates).await?;
        self.crash_point(EpochStep::AfterSinkWrite, epoch)?;
        self.env
            .checkpoints
            .mark_complete(self.partition, epoch, self.generation)
            .await
            .map_err(|e| self.checkpoint_error(e))?;
        self.crash_point(EpochStep::AfterComplete, epoch)?;
        self.aggregator().on_commit(epoch);
        self.aggregator().recycle(checkpoint, checkpoint_bytes);
        self.last_barrier_ms = self.env.clock.now_ms().saturating_sub(started_ms);
        let aggregator = self.aggregator.as_ref().expect("recovered before use");
        tracing::trace!(
            partition = self.partition.0,
            generation = self.generation.0,
            epoch = epoch.0,
            watermark_ms = aggregator.watermark().watermark_ms,
            next_offset = aggregator.next_offset().0,
            updates = updates.len(),
            "epoch committed"
        );
        Ok(epoch)
    }

    /// Reads and aggregates what the log has. Returns how many records were read.
    pub async fn poll(&mut self) -> Result<usize, WorkerError> {
        let partition = self.partition;
        let from = self.aggregator().next_offset();
        let batches = self
            .env
            .log
            .read(partition, from, self.config.read_records_max)
            .await
            .map_err(|source| WorkerError::Log { partition, source })?;
        let now_ms = self.env.clock.now_ms();
        let mut read = 0;
        for batch in &batches {
            read += batch.len();
            let problems = self.aggregator().on_batch(batch.iter(), now_ms);
            for (offset, problem) in problems.iter().take(RECORD_PROBLEMS_LOGGED_PER_BATCH_MAX) {
                tracing::warn!(
                    partition = partition.0,
                    offset = offset.0,
                    %problem,
                    "log record counted in no lane"
                );
            }
            if problems.len() > RECORD_PROBLEMS_LOGGED_PER_BATCH_MAX {
                tracing::warn!(
                    partition = partition.0,
                    more = problems.len() - RECORD_PROBLEMS_LOGGED_PER_BATCH_MAX,
                    "more log records counted in no lane in this batch (see the partition's stats)"
                );
            }
        }
        if read == 0 {
            self.advance_idle_if_caught_up(from, now_ms).await?;
        }
        tracing::trace!(
            partition = partition.0,
            generation = self.generation.0,
            from = from.0,
            read,
            "polled"
        );
        Ok(read)
    }

    /// An empty read alone says nothing about a backlog (a Kafka consume can time out with
    /// records waiting): the idle watermark follows the clock only once the log's end offset
    /// says this partition has read everything, including right after a restore.
    async fn advance_idle_if_caught_up(
        &mut self,
        next_offset: Offset,
        now_ms: u64,
    ) -> Result<(), WorkerError> {
        let checked_recently =
            now_ms.saturating_sub(self.end_offset_checked_ms) < limits::WORKER_END_OFFSET_CHECK_MS;
        if checked_recently || !self.aggregator().idle_advance_due(now_ms) {
            return Ok(());
        }
        self.end_offset_checked_ms = now_ms;
        let partition = self.partition;
        let end = self
            .env
            .log
            .end_offset(partition)
            .await
            .map_err(|source| WorkerError::Log { partition, source })?;
        if end <= next_offset && self.aggregator().on_idle(now_ms) {
            self.last_idle_advance = Some(IdleAdvance {
                processing_ms: now_ms,
                next_offset,
            });
        }
        Ok(())
    }

    /// Recovers, then runs until `stop` turns true, then takes a final checkpoint.
    pub async fn run(
        mut self,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), WorkerError> {
        self.recover().await?;
        self.run_recovered(stop).await
    }

    /// Runs a recovered worker until `stop` turns true, then takes a final checkpoint.
    pub async fn run_recovered(
        mut self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), WorkerError> {
        let mut next_barrier_ms = self.env.clock.now_ms() + self.config.epoch_ms;
        loop {
            if *stop.borrow() {
                self.barrier().await?;
                return Ok(());
            }
            let read = self.poll().await?;
            if self.env.clock.now_ms() >= next_barrier_ms {
                self.barrier().await?;
                next_barrier_ms = self.env.clock.now_ms() + self.config.epoch_ms;
            }
            if read == 0 {
                let sleep =
                    tokio::time::sleep(std::time::Duration::from_millis(self.config.idle_poll_ms));
                tokio::select! {
                    _ = sleep => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }

    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    pub fn aggregator_ref(&self) -> Option<&PartitionAggregator> {
        self.aggregator.as_ref()
    }
}
