//! Keeps each partition's worker running: restarts it after every failure, with exponential
//! back-off and jitter, and says how each partition is doing.
//!
//! A failure that retrying cannot heal (a checkpoint that names a fraud list nobody has, a store
//! that refuses every claim) must be loud, not a hot loop: each attempt is a generation claim and
//! a full checkpoint-chain load. So restarts wait `WORKER_RESTART_BACKOFF_MIN_MS`, doubling up
//! to `WORKER_RESTART_BACKOFF_MAX_MS`, each with a random jitter of up to the delay itself (so
//! partitions that failed together do not retry together), and each wait is one log line that
//! names the error, the attempt and the delay. A worker that ran for longer than the longest
//! delay starts again from the shortest one.
//!
//! `Supervision` is what the node reports: per partition, whether its worker has recovered, how
//! often it restarted, the last error and when the next attempt is due. `/readyz`, `/v1/freshness`
//! and the metrics read it.
//!
//! A stop request is seen at every step: while a worker runs (it takes a final checkpoint),
//! while it recovers (the recovery is abandoned; the next owner recovers from the last
//! checkpoint, which a half-done recovery never changes) and while it waits to restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use adclick_core::ids::PartitionId;
use adclick_core::operator::AggregatorConfig;
use backon::BackoffBuilder;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::limits::{WORKER_RESTART_BACKOFF_MAX_MS, WORKER_RESTART_BACKOFF_MIN_MS};
use crate::seams::StoreError;
use crate::worker::{PartitionWorker, WorkerConfig, WorkerEnv, WorkerError};

/// Whether a partition is (still) assigned to this worker process: the consumer group's
/// assignment in production, always true on a single node, the owners table in the simulator.
pub type Assignment = Arc<dyn Fn(PartitionId) -> bool + Send + Sync>;

/// An assignment that never changes: every partition stays with this process.
pub fn assigned_forever() -> Assignment {
    Arc::new(|_| true)
}

/// Why a supervisor returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SupervisorExit {
    Stopped,
    LostOwnership,
}

/// How one supervised partition is doing, as this node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSupervision {
    /// The current worker has claimed the partition and restored its state.
    pub recovered: bool,
    /// Failed attempts since this node started supervising the partition.
    pub restarts: u64,
    /// Failed attempts since the last one that ran long enough to reset the back-off.
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    /// When the next attempt starts, while the supervisor waits.
    pub retry_at_ms: Option<u64>,
}

/// Every partition this node supervises, and its restarts in total.
#[derive(Debug, Default)]
pub struct Supervision {
    partitions: Mutex<BTreeMap<PartitionId, PartitionSupervision>>,
    restarts: AtomicU64,
}

impl Supervision {
    pub fn new() -> Arc<Supervision> {
        Arc::new(Supervision::default())
    }

    /// Failed attempts over every partition since the node started.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub fn get(&self, partition: PartitionId) -> Option<PartitionSupervision> {
        self.lock().get(&partition).cloned()
    }

    pub fn snapshot(&self) -> BTreeMap<PartitionId, PartitionSupervision> {
        self.lock().clone()
    }

    /// The partitions supervised here whose worker has not recovered: a worker node is not
    /// ready while this is not empty.
    pub fn not_recovered(&self) -> Vec<PartitionId> {
        self.lock()
            .iter()
            .filter(|(_, state)| !state.recovered)
            .map(|(partition, _)| *partition)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PartitionId, PartitionSupervision>> {
        self.partitions.lock().expect("supervision lock")
    }

    fn starting(&self, partition: PartitionId) {
        let mut partitions = self.lock();
        let state = partitions.entry(partition).or_default();
        state.recovered = false;
        state.retry_at_ms = None;
    }

    fn recovered(&self, partition: PartitionId) {
        if let Some(state) = self.lock().get_mut(&partition) {
            state.recovered = true;
        }
    }

    fn failed(&self, partition: PartitionId, error: &WorkerError, now_ms: u64, retry_at_ms: u64) {
        let mut partitions = self.lock();
        let state = partitions.entry(partition).or_default();
        state.recovered = false;
        state.restarts += 1;
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        state.last_error = Some(error.to_string());
        state.last_error_ms = Some(now_ms);
        state.retry_at_ms = Some(retry_at_ms);
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    fn reset_failures(&self, partition: PartitionId) {
        if let Some(state) = self.lock().get_mut(&partition) {
            state.consecutive_failures = 0;
        }
    }

    /// The partition is no longer supervised here (stopped, or assigned elsewhere).
    fn left(&self, partition: PartitionId) {
        self.lock().remove(&partition);
    }
}

/// The restart delays of one partition. The jitter's seed is the partition's, so runs replay
/// (the simulator) while partitions still spread out.
fn restart_delays(partition: PartitionId) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(WORKER_RESTART_BACKOFF_MIN_MS))
        .with_max_delay(Duration::from_millis(WORKER_RESTART_BACKOFF_MAX_MS))
        .with_factor(2.0)
        .with_jitter()
        .with_jitter_seed(0xad_c11c_0000_0000 ^ u64::from(partition.0))
        .without_max_times()
        .build()
}

/// Resolves once `stop` says stop. A dropped sender never stops anything.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs a partition's worker until stopped, restarting it after every failure (a crash, a store
/// outage, a restore that cannot succeed yet) with the back-off above. Each restart is a
/// recovery: new generation, restore, replay.
///
/// Claims follow the assignment: a worker (re)claims a partition only while it is assigned to
/// it. A worker fenced off by a newer generation stops if the partition went to someone else,
/// and reclaims it, after a back-off step, if it is still the assignee (the fencer was a zombie
/// that woke up mid-claim).
pub async fn supervise(
    partition: PartitionId,
    config: WorkerConfig,
    aggregator_config: AggregatorConfig,
    env: WorkerEnv,
    mut stop: watch::Receiver<bool>,
    supervision: Arc<Supervision>,
    assigned: Assignment,
) -> SupervisorExit {
    let mut delays = restart_delays(partition);
    let exit = loop {
        if *stop.borrow() {
            break SupervisorExit::Stopped;
        }
        if !assigned(partition) {
            tracing::info!(
                partition = partition.0,
                "partition no longer assigned here, stopping"
            );
            break SupervisorExit::LostOwnership;
        }
        supervision.starting(partition);
        let started_ms = env.clock.now_ms();
        let mut worker = PartitionWorker::new(partition, config, aggregator_config, env.clone());
        let recovered = tokio::select! {
            recovered = worker.recover() => recovered,
            _ = stop_requested(&mut stop) => break SupervisorExit::Stopped,
        };
        let result = match recovered {
            Ok(()) => {
                supervision.recovered(partition);
                // The worker sees the stop request itself, between epochs: never cut mid-epoch.
                worker.run_recovered(stop.clone()).await
            }
            Err(error) => Err(error),
        };
        let error = match result {
            Ok(()) => break SupervisorExit::Stopped,
            Err(error) => error,
        };
        let now_ms = env.clock.now_ms();
        if now_ms.saturating_sub(started_ms) > WORKER_RESTART_BACKOFF_MAX_MS {
            delays = restart_delays(partition);
            supervision.reset_failures(partition);
        }
        let delay = delays.next().expect("the back-off has no last step");
        let delay_ms = delay.as_millis() as u64;
        supervision.failed(partition, &error, now_ms, now_ms + delay_ms);
        log_failure(partition, &error, &supervision, delay_ms);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_requested(&mut stop) => break SupervisorExit::Stopped,
        }
    };
    supervision.left(partition);
    exit
}

/// One line per back-off step, naming the error, the attempt and the wait.
fn log_failure(
    partition: PartitionId,
    error: &WorkerError,
    supervision: &Supervision,
    retry_in_ms: u64,
) {
    let attempt = supervision
        .get(partition)
        .map_or(0, |state| state.consecutive_failures);
    if let WorkerError::Store {
        source: StoreError::Fenced { current, .. },
        ..
    } = error
    {
        tracing::info!(
            partition = partition.0,
            owner = current.0,
            retry_in_ms,
            "fenced off by a newer generation; claiming again if still assigned here"
        );
        return;
    }
    tracing::warn!(
        partition = partition.0,
        attempt,
        retry_in_ms,
        %error,
        "worker failed; restarting after a back-off"
    );
}
