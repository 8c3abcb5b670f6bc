//! An in-memory real-time store with the same fencing rules as the Redis Lua script.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use adclick_core::ids::{Generation, PartitionId};
use adclick_core::operator::{Series, SeriesUpdate};
use adclick_core::window::Lane;
use async_trait::async_trait;

use crate::fencing::{self, Fence};
use crate::seams::{
    ApplyOutcome, Claim, PartitionStatus, RealtimeStore, Rebuilder, StoreError, StoredCounts,
};

#[derive(Default)]
struct State {
    series: BTreeMap<(Series, Lane), StoredCounts>,
    generations: BTreeMap<PartitionId, Generation>,
    status: BTreeMap<PartitionId, PartitionStatus>,
    rebuilding: BTreeMap<PartitionId, BTreeSet<Rebuilder>>,
}

#[derive(Default)]
pub struct MemoryRealtimeStore {
    state: Mutex<State>,
}

impl MemoryRealtimeStore {
    pub fn new() -> MemoryRealtimeStore {
        MemoryRealtimeStore::default()
    }

    /// Forgets every series, generation, status and mark: a Redis restart without persistence, for
    /// the simulator and tests.
    pub fn forget_everything(&self) {
        *self.state.lock().expect("store lock") = State::default();
    }
}

#[async_trait]
impl RealtimeStore for MemoryRealtimeStore {
    async fn claim_partition(
        &self,
        partition: PartitionId,
        above: Generation,
    ) -> Result<Claim, StoreError> {
        let mut state = self.state.lock().expect("store lock");
        let generation = state.generations.entry(partition).or_insert(Generation(0));
        generation.0 += 1;
        let store_forgot = *generation <= above;
        if store_forgot {
            *generation = Generation(above.0 + 1);
        }
        Ok(Claim {
            generation: *generation,
            store_forgot,
        })
    }

    async fn apply(
        &self,
        partition: PartitionId,
        fence: Fence,
        updates: &[SeriesUpdate],
        status: PartitionStatus,
    ) -> Result<ApplyOutcome, StoreError> {
        let mut state = self.state.lock().expect("store lock");
        let current = state
            .generations
            .get(&partition)
            .copied()
            .unwrap_or(Generation(0));
        if !fencing::owns_partition(current, fence.generation) {
            return Err(StoreError::Fenced {
                partition,
                current,
                writer: fence.generation,
            });
        }
        let mut outcome = ApplyOutcome::default();
        for update in updates {
            let key = (update.series, update.lane);
            let stored = state.series.get(&key).map(|stored| stored.fence);
            if fencing::may_overwrite(stored, fence) {
                let value = StoredCounts {
                    counts: update.counts,
                    is_final: update.is_final,
                    fence,
                };
                state.series.insert(key, value);
                outcome.applied += 1;
            } else {
                outcome.stale += 1;
            }
        }
        state.status.insert(partition, status);
        Ok(outcome)
    }

    async fn get(&self, series: Series, lane: Lane) -> Result<Option<StoredCounts>, StoreError> {
        Ok(self
            .state
            .lock()
            .expect("store lock")
            .series
            .get(&(series, lane))
            .copied())
    }

    async fn scan(&self) -> Result<Vec<(Series, Lane, StoredCounts)>, StoreError> {
        let state = self.state.lock().expect("store lock");
        Ok(state
            .series
            .iter()
            .map(|((series, lane), stored)| (*series, *lane, *stored))
            .collect())
    }

    async fn partition_status(&self) -> Result<Vec<PartitionStatus>, StoreError> {
        Ok(self
            .state
            .lock()
            .expect("store lock")
            .status
            .values()
            .copied()
            .collect())
    }

    async fn set_rebuilding(
        &self,
        partition: PartitionId,
        rebuilder: Rebuilder,
        rebuilding: bool,
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock().expect("store lock");
        let marks = state.rebuilding.entry(partition).or_default();
        if rebuilding {
            marks.insert(rebuilder);
        } else {
            marks.remove(&rebuilder);
        }
        if marks.is_empty() {
            state.rebuilding.remove(&partition);
        }
        Ok(())
    }

    async fn rebuilding_partitions(&self) -> Result<Vec<PartitionId>, StoreError> {
        let state = self.state.lock().expect("store lock");
        Ok(state.rebuilding.keys().copied().collect())
    }
}
