//! The fraud-list history outlives the checkpoint records it comes from: after a rotation, full
//! checkpoints, their cleanups and a restart, the checkpoint store still says which version
//! judged which offsets, so billing can judge each click as the workers did.

use std::sync::{Arc, RwLock};

use adclick_core::fraud::{FraudList, FraudRegistry};
use adclick_core::ids::{CampaignId, FraudListVersion, Offset, PartitionId};
use adclick_core::operator::AggregatorConfig;
use adclick_engine::checkpoint::CheckpointStore;
use adclick_engine::clock::ManualClock;
use adclick_engine::embedded::{MemoryBlobStore, MemoryLog, MemoryRealtimeStore};
use adclick_engine::seams::{AppendBatch, Log, RecordBlock};
use adclick_engine::worker::{PartitionWorker, WorkerConfig, WorkerEnv};

use crate::support::click;

const START_MS: u64 = 1_800_000_000_000;
const PARTITION: PartitionId = PartitionId(0);

async fn append(log: &MemoryLog, ids: std::ops::Range<u128>, sequence: u64) {
    let mut block = RecordBlock::default();
    for id in ids {
        block.push(&adclick_core::codec::encode(
            &click(id, CampaignId(5), START_MS),
            Default::default(),
        ));
    }
    let batch = AppendBatch {
        producer_id: 1,
        first_sequence: sequence,
        records: block,
    };
    log.append(PARTITION, batch).await.unwrap();
}

fn list(version: u64) -> FraudList {
    FraudList::parse(&format!("version {version}\nip 10.9.9.{version}\n")).unwrap()
}

#[tokio::test]
async fn the_list_history_says_which_version_judged_each_offset_after_cleanups_and_a_restart() {
    let log = Arc::new(MemoryLog::new(1));
    let blobs = Arc::new(MemoryBlobStore::new());
    let registry = Arc::new(RwLock::new(FraudRegistry::new()));
    registry.write().unwrap().register(list(1)).unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let env = WorkerEnv::new(
        log.clone(),
        Arc::new(MemoryRealtimeStore::new()),
        CheckpointStore::new(blobs.clone()),
        clock.clone(),
        registry.clone(),
    );
    let config = AggregatorConfig {
        full_checkpoint_every_epochs: 2,
        ..AggregatorConfig::default()
    };
    let mut worker = PartitionWorker::new(PARTITION, WorkerConfig::default(), config, env.clone());
    worker.recover().await.unwrap();

    // Offsets 0..4 are read under version 1; the rotation swaps in at the next barrier, so
    // version 2 judges from offset 4 on, and version 3 from offset 7 on.
    append(&log, 0..4, 0).await;
    assert_eq!(worker.poll().await.unwrap(), 4);
    registry.write().unwrap().register(list(2)).unwrap();
    worker.barrier().await.unwrap();
    append(&log, 4..7, 4).await;
    assert_eq!(worker.poll().await.unwrap(), 3);
    registry.write().unwrap().register(list(3)).unwrap();
    // Enough epochs for several full checkpoints, each deleting the records before it.
    for _ in 0..6 {
        worker.barrier().await.unwrap();
    }
    let checkpoints = CheckpointStore::new(blobs.clone());
    let history = checkpoints.list_history(PARTITION).await.unwrap();
    let version_at = |offset: u64| history.version_at(Offset(offset)).unwrap();
    assert_eq!(
        [0, 3, 4, 6, 7, 1_000].map(version_at),
        [1, 1, 2, 2, 3, 3].map(FraudListVersion),
        "{history:?}"
    );
    assert_eq!(history.checkpointed_to, Offset(7));

    // A new owner restores from the last checkpoint; the history stays as it was.
    drop(worker);
    let mut next = PartitionWorker::new(PARTITION, WorkerConfig::default(), config, env);
    next.recover().await.unwrap();
    append(&log, 7..9, 7).await;
    assert_eq!(next.poll().await.unwrap(), 2);
    next.barrier().await.unwrap();
    let after = checkpoints.list_history(PARTITION).await.unwrap();
    assert_eq!(after.changes, history.changes);
    assert_eq!(after.checkpointed_to, Offset(9));
}
