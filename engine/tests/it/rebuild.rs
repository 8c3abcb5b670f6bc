//! `engine::rebuild` on the embedded seams: workers count clicks into closed windows, the store
//! forgets or is to take a logic fix, a rebuild replays the log, and the closed windows are
//! checked against what the workers wrote.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use adclick_core::billing::FraudSchedule;
use adclick_core::event::ClickEvent;
use adclick_core::fraud::{FraudList, FraudRegistry};
use adclick_core::ids::{CampaignId, PartitionId};
use adclick_core::operator::{AggregatorConfig, Series};
use adclick_core::window::{Counts, Lane};
use adclick_engine::checkpoint::CheckpointStore;
use adclick_engine::clock::ManualClock;
use adclick_engine::embedded::{MemoryBlobStore, MemoryLog, MemoryRealtimeStore};
use adclick_engine::fraud_lists::FraudListStore;
use adclick_engine::judged_lists::workers_schedule;
use adclick_engine::rebuild::{RebuildEnv, RebuildRange, rebuild};
use adclick_engine::seams::{AppendBatch, BlobStore, Log, RealtimeStore, RecordBlock, StoreError};
use adclick_engine::worker::{PartitionWorker, WorkerConfig, WorkerEnv, WorkerError};

use crate::support::click;

const START_MS: u64 = 1_800_000_000_000;
const PARTITIONS: u32 = 2;
const MINUTE_MS: u64 = 60_000;

struct Deployment {
    log: Arc<MemoryLog>,
    store: Arc<MemoryRealtimeStore>,
    blobs: Arc<dyn BlobStore>,
    checkpoints: CheckpointStore,
    clock: Arc<ManualClock>,
    /// Every worker's fraud lists, as one `adclick serve` node holds them.
    registry: Arc<RwLock<FraudRegistry>>,
}

impl Deployment {
    fn new() -> Deployment {
        let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
        Deployment {
            log: Arc::new(MemoryLog::new(PARTITIONS)),
            store: Arc::new(MemoryRealtimeStore::new()),
            checkpoints: CheckpointStore::new(blobs.clone()),
            blobs,
            clock: Arc::new(ManualClock::new(START_MS)),
            registry: Arc::new(RwLock::new(FraudRegistry::new())),
        }
    }

    fn worker(&self, partition: PartitionId) -> PartitionWorker {
        let env = WorkerEnv::new(
            self.log.clone(),
            self.store.clone(),
            self.checkpoints.clone(),
            self.clock.clone(),
            self.registry.clone(),
        )
        .with_fraud_lists(FraudListStore::new(self.blobs.clone()));
        let config = WorkerConfig::default();
        PartitionWorker::new(partition, config, AggregatorConfig::default(), env)
    }

    fn rebuild_env(&self, fraud_list: FraudList) -> RebuildEnv {
        self.rebuild_env_judging(FraudSchedule::single(Arc::new(fraud_list)))
    }

    fn rebuild_env_judging(&self, fraud: FraudSchedule) -> RebuildEnv {
        RebuildEnv {
            log: self.log.clone(),
            store: self.store.clone(),
            checkpoints: self.checkpoints.clone(),
            clock: self.clock.clone(),
            fraud,
        }
    }

    async fn publish(&self, list: &str) {
        let lists = FraudListStore::new(self.blobs.clone());
        lists.publish(list, &self.registry).await.unwrap();
    }

    async fn append(&self, clicks: &[ClickEvent]) {
        self.append_as(clicks, 1).await;
    }

    /// Appends under producer ids from `producer_base` on (one per partition).
    async fn append_as(&self, clicks: &[ClickEvent], producer_base: u64) {
        for (partition, records) in RecordBlock::route(clicks, PARTITIONS)
            .into_iter()
            .enumerate()
        {
            if records.is_empty() {
                continue;
            }
            let batch = AppendBatch {
                producer_id: producer_base + partition as u64,
                first_sequence: 0,
                records,
            };
            let partition = PartitionId(partition as u32);
            self.log.append(partition, batch).await.unwrap();
        }
    }

    /// Runs a worker per partition over the whole log, then lets the clock run until every
    /// window is closed, and returns the workers (still owning their partitions).
    async fn count_into_closed_windows(&self) -> Vec<PartitionWorker> {
        let mut workers = Vec::new();
        for partition in (0..PARTITIONS).map(PartitionId) {
            let mut worker = self.worker(partition);
            worker.recover().await.unwrap();
            while worker.poll().await.unwrap() > 0 {}
            worker.barrier().await.unwrap();
            workers.push(worker);
        }
        self.clock.advance(10 * MINUTE_MS);
        for worker in &mut workers {
            worker.poll().await.unwrap();
            worker.barrier().await.unwrap();
        }
        workers
    }
}

/// Five minutes of clicks over four campaigns, with resends, in event-time order.
fn traffic() -> Vec<ClickEvent> {
    let mut clicks = Vec::new();
    for n in 0..300u128 {
        let event_time_ms = START_MS + n as u64 * 1_000;
        let mut event = click(n + 1, CampaignId(1 + n as u64 % 4), event_time_ms);
        if n % 3 == 0 {
            event.ip = "10.6.6.6".parse().unwrap();
        }
        clicks.push(event.clone());
        if n % 7 == 0 {
            clicks.push(event);
        }
    }
    clicks
}

type Values = BTreeMap<(Series, Lane), (Counts, bool)>;

async fn closed_values(store: &dyn RealtimeStore) -> Values {
    let values: Values = store
        .scan()
        .await
        .unwrap()
        .into_iter()
        .map(|(series, lane, stored)| ((series, lane), (stored.counts, stored.is_final)))
        .collect();
    assert!(
        values.iter().any(|(_, (_, is_final))| *is_final),
        "the test needs closed windows: {values:?}"
    );
    values
}

#[tokio::test]
async fn a_rebuild_after_a_store_loss_writes_every_closed_window_back_exactly() {
    let deployment = Deployment::new();
    deployment.append(&traffic()).await;
    deployment.clock.set(START_MS + 5 * MINUTE_MS);
    let mut workers = deployment.count_into_closed_windows().await;
    let before = closed_values(deployment.store.as_ref()).await;

    deployment.store.forget_everything();
    // Only windows from minute 2 on are replayed into the store; the earlier ones come back
    // from what the checkpoints say the workers wrote, since the store forgot the partitions.
    let range = RebuildRange {
        from_ms: START_MS + 2 * MINUTE_MS,
        to_ms: u64::MAX,
    };
    let env = deployment.rebuild_env(FraudList::empty());
    let rebuilt = rebuild(&env, AggregatorConfig::default(), range)
        .await
        .unwrap();
    assert_eq!(rebuilt.len(), PARTITIONS as usize);
    for partition in &rebuilt {
        assert!(partition.dedup_warm, "{partition:?}");
        assert!(partition.series_written > 0, "{partition:?}");
        assert!(partition.series_restored > 0, "{partition:?}");
    }
    assert_eq!(closed_values(deployment.store.as_ref()).await, before);
    assert_eq!(deployment.store.rebuilding_partitions().await.unwrap(), []);
    assert_eq!(
        deployment.store.partition_status().await.unwrap().len(),
        PARTITIONS as usize,
        "a worker relies on the status being there"
    );

    // The live owners were fenced by the rebuild's claims; restarted, they go on from their
    // checkpoints above the rebuild's generation, and the closed windows keep their values.
    for (worker, rebuilt) in workers.iter_mut().zip(&rebuilt) {
        match worker.barrier().await {
            Err(WorkerError::Store {
                source: StoreError::Fenced { current, .. },
                ..
            }) => assert_eq!(current, rebuilt.generation),
            other => panic!("the old owner must be fenced, got {other:?}"),
        }
        let mut restarted = deployment.worker(worker.partition());
        restarted.recover().await.unwrap();
        assert!(restarted.generation() > rebuilt.generation);
        restarted.poll().await.unwrap();
        restarted.barrier().await.unwrap();
    }
    assert_eq!(closed_values(deployment.store.as_ref()).await, before);
}

/// A logic fix (here, a fraud list that now names an IP) reaches the windows of the range and
/// no other: the store did not forget anything, so nothing outside the range is written.
#[tokio::test]
async fn a_rebuild_applies_a_fix_to_the_range_only() {
    let deployment = Deployment::new();
    deployment.append(&traffic()).await;
    deployment.clock.set(START_MS + 5 * MINUTE_MS);
    deployment.count_into_closed_windows().await;
    let before = closed_values(deployment.store.as_ref()).await;

    let range = RebuildRange {
        from_ms: START_MS + 2 * MINUTE_MS,
        to_ms: START_MS + 4 * MINUTE_MS,
    };
    let list = FraudList::parse("version 2\nip 10.6.6.6\n").unwrap();
    let rebuilt = rebuild(
        &deployment.rebuild_env(list),
        AggregatorConfig::default(),
        range,
    )
    .await
    .unwrap();
    assert!(
        rebuilt
            .iter()
            .all(|partition| partition.series_restored == 0)
    );
    let after = closed_values(deployment.store.as_ref()).await;
    assert!(after.keys().eq(before.keys()), "no series appears or goes");
    let mut windows_fixed = 0;
    for (key, (counts, is_final)) in &after {
        let (old_counts, old_final) = before[key];
        let Series::Window(_) = key.0 else {
            continue;
        };
        if range.contains(&key.0) {
            assert!(counts.fraud > old_counts.fraud, "{key:?}: {counts:?}");
            assert_eq!(counts.clicks, old_counts.clicks, "{key:?}");
            assert_eq!(*is_final, old_final);
            windows_fixed += 1;
        } else {
            assert_eq!((*counts, *is_final), (old_counts, old_final), "{key:?}");
        }
    }
    assert!(windows_fixed > 0);
}

/// A rotation mid-log: the workers judged the first half with version 1 (nothing listed) and the
/// rest with version 2 (10.6.6.6 listed). A rebuild after the store forgot everything, judging
/// as the workers did (their list history), gives back every closed window exactly; one judging
/// all of history with today's list would flag the first half's clicks from that IP too.
#[tokio::test]
async fn a_rebuild_judges_each_click_with_the_list_the_workers_used() {
    let deployment = Deployment::new();
    deployment.publish("version 1\n").await;
    let clicks = traffic();
    let (first, second) = clicks.split_at(clicks.len() / 2);
    deployment.append_as(first, 1).await;
    deployment.clock.set(START_MS + 5 * MINUTE_MS);
    let mut workers = Vec::new();
    for partition in (0..PARTITIONS).map(PartitionId) {
        let mut worker = deployment.worker(partition);
        worker.recover().await.unwrap();
        while worker.poll().await.unwrap() > 0 {}
        worker.barrier().await.unwrap();
        workers.push(worker);
    }
    deployment.publish("version 2\nip 10.6.6.6\n").await;
    deployment.append_as(second, 100).await;
    for worker in &mut workers {
        worker.barrier().await.unwrap();
        while worker.poll().await.unwrap() > 0 {}
        worker.barrier().await.unwrap();
    }
    // Caught up and idle: the watermark follows the clock and closes every window.
    deployment.clock.advance(10 * MINUTE_MS);
    for worker in &mut workers {
        worker.poll().await.unwrap();
        worker.barrier().await.unwrap();
    }
    drop(workers);
    let before = closed_values(deployment.store.as_ref()).await;

    deployment.store.forget_everything();
    let fallback = deployment.registry.read().unwrap().current();
    let (as_judged, _) = workers_schedule(deployment.blobs.clone(), PARTITIONS, fallback)
        .await
        .unwrap();
    let everything = RebuildRange {
        from_ms: 0,
        to_ms: u64::MAX,
    };
    let env = deployment.rebuild_env_judging(as_judged);
    rebuild(&env, AggregatorConfig::default(), everything)
        .await
        .unwrap();
    let rebuilt = closed_values(deployment.store.as_ref()).await;
    let differing: Vec<_> = before
        .iter()
        .filter(|(key, value)| rebuilt.get(key) != Some(value))
        .map(|(key, value)| (key, value, rebuilt.get(key)))
        .collect();
    assert!(differing.is_empty(), "before, rebuilt: {differing:?}");
    assert_eq!(rebuilt.len(), before.len());

    let today = FraudList::parse("version 2\nip 10.6.6.6\n").unwrap();
    rebuild(
        &deployment.rebuild_env(today),
        AggregatorConfig::default(),
        everything,
    )
    .await
    .unwrap();
    let fraud = |values: &Values| -> u64 {
        values
            .iter()
            .filter(|((series, _), _)| matches!(series, Series::Window(_)))
            .map(|(_, (counts, _))| counts.fraud)
            .sum()
    };
    let recounted = closed_values(deployment.store.as_ref()).await;
    assert!(
        fraud(&recounted) > fraud(&before),
        "today's list flags the first half's clicks from the IP too"
    );
}
