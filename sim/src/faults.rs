//! Fault injection wrappers around the seams.

use std::sync::Mutex;

use adclick_core::ids::{Generation, PartitionId};
use adclick_core::operator::{Series, SeriesUpdate};
use adclick_core::window::Lane;
use adclick_engine::fencing::Fence;
use adclick_engine::seams::{
    ApplyOutcome, PartitionStatus, RealtimeStore, StoreError, StoredCounts,
};
use async_trait::async_trait;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use std::sync::Arc;

/// A real-time store whose writes fail at a seeded rate, before anything is applied.
pub struct FlakyStore {
    inner: Arc<dyn RealtimeStore>,
    error_rate: f64,
    rng: Mutex<Pcg64Mcg>,
    pub injected: std::sync::atomic::AtomicU64,
}

impl FlakyStore {
    pub fn new(inner: Arc<dyn RealtimeStore>, error_rate: f64, seed: u64) -> FlakyStore {
        FlakyStore {
            inner,
            error_rate,
            rng: Mutex::new(Pcg64Mcg::seed_from_u64(seed)),
            injected: Default::default(),
        }
    }

    fn fail(&self) -> bool {
        let fail = self
            .rng
            .lock()
            .expect("rng lock")
            .random_bool(self.error_rate);
        if fail {
            self.injected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fail
    }
}

#[async_trait]
impl RealtimeStore for FlakyStore {
    async fn claim_partition(&self, partition: PartitionId) -> Result<Generation, StoreError> {
        self.inner.claim_partition(partition).await
    }

    async fn apply(
        &self,
        partition: PartitionId,
        fence: Fence,
        updates: &[SeriesUpdate],
        status: PartitionStatus,
    ) -> Result<ApplyOutcome, StoreError> {
        if self.fail() {
            return Err(StoreError::Unavailable {
                message: "injected store error".into(),
            });
        }
        self.inner.apply(partition, fence, updates, status).await
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
}
