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
use crate::limits;
use crate::seams::{
    Clock, IdleAdvance, Log, LogError, PartitionHealth, PartitionStatus, RealtimeStore, StoreError,
};

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
}

/// Everything a worker talks to.
#[derive(Clone)]
pub struct WorkerEnv {
    pub log: Arc<dyn Log>,
    pub store: Arc<dyn RealtimeStore>,
    pub checkpoints: CheckpointStore,
    pub clock: Arc<dyn Clock>,
    pub fraud: Arc<RwLock<FraudRegistry>>,
    pub crash_hook: Option<CrashHook>,
    #[cfg(feature = "test-canaries")]
    pub canary: Option<Canary>,
}

impl WorkerEnv {
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
        self.generation = self
            .env
            .store
            .claim_partition(partition)
            .await
            .map_err(|e| self.store_error(e))?;
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
        let registry = self.env.fraud.read().expect("fraud registry lock").clone();
        let aggregator = if chain.is_empty() {
            PartitionAggregator::new(self.aggregator_config, partition, registry.latest())
        } else {
            PartitionAggregator::restore(self.aggregator_config, partition, &chain, &registry)
                .map_err(|source| WorkerError::Restore { partition, source })?
        };
        self.aggregator = Some(aggregator);
        if let Some(pending) = recovery.pending {
            let epoch = pending.checkpoint.epoch;
            self.crash_point(EpochStep::BeforeRecommit, epoch)?;
            self.write_sink(epoch, &pending.updates).await?;
            self.env
                .checkpoints
                .mark_complete(partition, epoch, pending.generation)
                .await
                .map_err(|e| self.checkpoint_error(e))?;
        }
        tracing::debug!(
            partition = partition.0,
            generation = self.generation.0,
            "partition recovered"
        );
        Ok(())
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
        self.env
            .store
            .apply(self.partition, fence, updates, status)
            .await
            .map_err(|e| self.store_error(e))?;
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
        let registry_latest = self.env.fraud.read().expect("fraud registry lock").latest();
        let aggregator = self.aggregator();
        aggregator.stage_fraud_list(registry_latest);
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

    /// Runs until `stop` turns true, then takes a final checkpoint.
    pub async fn run(
        mut self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), WorkerError> {
        self.recover().await?;
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

    pub fn generation(&self) -> Generation {
        self.generation
    }

    pub fn aggregator_ref(&self) -> Option<&PartitionAggregator> {
        self.aggregator.as_ref()
    }
}

/// Whether a partition is (still) assigned to this worker process: the consumer group's
/// assignment in production, always true on a single node, the owners table in the simulator.
pub type Assignment = Arc<dyn Fn(PartitionId) -> bool + Send + Sync>;

/// An assignment that never changes: every partition stays with this process.
pub fn assigned_forever() -> Assignment {
    Arc::new(|_| true)
}

/// Runs a partition's worker until stopped, restarting it after every failure (a crash, a store
/// outage) with a short back-off. Each restart is a recovery: new generation, restore, replay.
///
/// Claims follow the assignment: a worker (re)claims a partition only while it is assigned to
/// it. A worker fenced off by a newer generation stops if the partition went to someone else,
/// and reclaims it if it is still the assignee (the fencer was a zombie that woke up mid-claim).
pub async fn supervise(
    partition: PartitionId,
    config: WorkerConfig,
    aggregator_config: AggregatorConfig,
    env: WorkerEnv,
    stop: tokio::sync::watch::Receiver<bool>,
    restarts: Arc<std::sync::atomic::AtomicU64>,
    assigned: Assignment,
) -> SupervisorExit {
    const BACKOFF_MS: u64 = 50;
    loop {
        if !assigned(partition) {
            tracing::info!(
                partition = partition.0,
                "partition no longer assigned here, stopping"
            );
            return SupervisorExit::LostOwnership;
        }
        let worker = PartitionWorker::new(partition, config, aggregator_config, env.clone());
        match worker.run(stop.clone()).await {
            Ok(()) => return SupervisorExit::Stopped,
            Err(WorkerError::Store {
                source: StoreError::Fenced { current, .. },
                ..
            }) => {
                tracing::info!(
                    partition = partition.0,
                    owner = current.0,
                    "fenced off by a newer generation"
                );
            }
            Err(error) => {
                restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(partition = partition.0, %error, "worker failed, restarting");
                tokio::time::sleep(std::time::Duration::from_millis(BACKOFF_MS)).await;
            }
        }
    }
}

/// Why a supervisor returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SupervisorExit {
    Stopped,
    LostOwnership,
}
