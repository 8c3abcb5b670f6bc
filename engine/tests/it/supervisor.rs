//! A failure that retrying cannot heal is loud, not a hot loop, and never outlives a stop: the
//! case seen was a checkpoint naming a fraud-list version the restarted node did not hold, which
//! restarted every 50 ms forever and ignored SIGTERM. With the version stored, the restore
//! finds it and the partition recovers.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use adclick_core::fraud::FraudRegistry;
use adclick_core::ids::{CampaignId, PartitionId};
use adclick_core::operator::AggregatorConfig;
use adclick_engine::checkpoint::CheckpointStore;
use adclick_engine::clock::SystemClock;
use adclick_engine::embedded::{MemoryBlobStore, MemoryLog, MemoryRealtimeStore};
use adclick_engine::fraud_lists::FraudListStore;
use adclick_engine::seams::{AppendBatch, BlobStore, Clock, Log, RealtimeStore, RecordBlock};
use adclick_engine::supervisor::{Supervision, SupervisorExit, assigned_forever, supervise};
use adclick_engine::worker::{PartitionWorker, WorkerConfig, WorkerEnv};

use crate::support::click;

const PARTITION: PartitionId = PartitionId(0);
const V1: &str = "version 1\nip 203.0.113.9\n";

struct Deployment {
    log: Arc<MemoryLog>,
    store: Arc<dyn RealtimeStore>,
    blobs: Arc<dyn BlobStore>,
}

impl Deployment {
    fn env(&self, registry: FraudRegistry) -> WorkerEnv {
        WorkerEnv::new(
            self.log.clone(),
            self.store.clone(),
            CheckpointStore::new(self.blobs.clone()),
            Arc::new(SystemClock),
            Arc::new(RwLock::new(registry)),
        )
    }
}

/// A partition whose checkpoint names fraud list version 1, stored in the blob store.
async fn checkpointed_under_version_1() -> Deployment {
    let deployment = Deployment {
        log: Arc::new(MemoryLog::new(1)),
        store: Arc::new(MemoryRealtimeStore::new()),
        blobs: Arc::new(MemoryBlobStore::new()),
    };
    let mut block = RecordBlock::default();
    let record = adclick_core::codec::encode(
        &click(1, CampaignId(3), SystemClock.now_ms()),
        Default::default(),
    );
    block.push(&record);
    let batch = AppendBatch {
        producer_id: 1,
        first_sequence: 0,
        records: block,
    };
    deployment.log.append(PARTITION, batch).await.unwrap();
    let env = deployment.env(FraudRegistry::new());
    FraudListStore::new(deployment.blobs.clone())
        .publish(V1, &env.fraud)
        .await
        .unwrap();
    let mut worker = PartitionWorker::new(
        PARTITION,
        WorkerConfig::default(),
        AggregatorConfig::default(),
        env,
    );
    worker.recover().await.unwrap();
    worker.poll().await.unwrap();
    worker.barrier().await.unwrap();
    deployment
}

fn start(
    env: WorkerEnv,
) -> (
    Arc<Supervision>,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<SupervisorExit>,
) {
    let supervision = Supervision::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(supervise(
        PARTITION,
        WorkerConfig::default(),
        AggregatorConfig::default(),
        env,
        stopped,
        supervision.clone(),
        assigned_forever(),
    ));
    (supervision, stop, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_cannot_succeed_backs_off_reports_itself_and_stops_on_request() {
    let deployment = checkpointed_under_version_1().await;
    // The restarted node holds only its file's list, and no store to look version 1 up in.
    let (supervision, stop, handle) = start(deployment.env(FraudRegistry::new()));
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let state = supervision.get(PARTITION).expect("supervised");
    // A fixed 50 ms pause restarted 32 times in 1.6 s; doubling from 50 ms (jitter adds up to
    // as much again) allows at most 6.
    assert!(
        (2..=6).contains(&state.restarts),
        "restarts in 1.6 s: {}",
        state.restarts
    );
    assert!(!state.recovered);
    assert!(state.retry_at_ms.is_some());
    let error = state.last_error.unwrap_or_default();
    assert!(error.contains("fraud list version 1"), "{error}");
    assert_eq!(supervision.not_recovered(), vec![PARTITION]);

    stop.send(true).unwrap();
    let stopped_at = Instant::now();
    let exit = tokio::time::timeout(Duration::from_secs(2), handle)
        .await
        .expect("a stop ends the back-off wait")
        .unwrap();
    assert_eq!(exit, SupervisorExit::Stopped);
    assert!(stopped_at.elapsed() < Duration::from_secs(2));
    assert!(supervision.get(PARTITION).is_none(), "no longer supervised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_loads_the_fraud_list_version_its_checkpoint_names_from_the_store() {
    let deployment = checkpointed_under_version_1().await;
    let env = deployment
        .env(FraudRegistry::new())
        .with_fraud_lists(FraudListStore::new(deployment.blobs.clone()));
    let registry = env.fraud.clone();
    let (supervision, stop, handle) = start(env);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !supervision
        .get(PARTITION)
        .is_some_and(|state| state.recovered)
    {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            supervision.get(PARTITION)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(supervision.get(PARTITION).unwrap().restarts, 0);
    assert!(
        registry
            .read()
            .unwrap()
            .get(adclick_core::ids::FraudListVersion(1))
            .is_some()
    );
    stop.send(true).unwrap();
    assert_eq!(handle.await.unwrap(), SupervisorExit::Stopped);
}
