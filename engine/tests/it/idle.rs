//! Regression (the watermark jumped ahead on an empty read): a fresh partition, or one just
//! restored, whose first reads come back empty although the log holds a backlog (a Kafka consume
//! that times out, a broker whose high watermark lags) let the watermark follow the clock, and
//! the backlog then went to the late lane or past the dedup horizon. The idle advance now waits
//! until the worker has read up to the log's end offset.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use adclick_core::fraud::FraudRegistry;
use adclick_core::ids::{CampaignId, Offset, PartitionId};
use adclick_core::operator::AggregatorConfig;
use adclick_engine::checkpoint::CheckpointStore;
use adclick_engine::clock::ManualClock;
use adclick_engine::embedded::{MemoryBlobStore, MemoryLog, MemoryRealtimeStore};
use adclick_engine::seams::{AppendBatch, Log, LogError, ReadBatch, RecordBlock};
use adclick_engine::worker::{PartitionWorker, WorkerConfig, WorkerEnv};
use async_trait::async_trait;

use crate::support::click;

const START_MS: u64 = 1_800_000_000_000;
const PARTITION: PartitionId = PartitionId(0);

/// A log whose reads come back empty while `hide` is set, whatever it holds.
struct EmptyReads {
    inner: MemoryLog,
    hide: AtomicBool,
}

#[async_trait]
impl Log for EmptyReads {
    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }
    async fn append(&self, partition: PartitionId, batch: AppendBatch) -> Result<Offset, LogError> {
        self.inner.append(partition, batch).await
    }
    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        records_max: usize,
    ) -> Result<Vec<ReadBatch>, LogError> {
        if self.hide.load(Ordering::SeqCst) {
            return Ok(Vec::new());
        }
        self.inner.read(partition, from, records_max).await
    }
    async fn end_offset(&self, partition: PartitionId) -> Result<Offset, LogError> {
        self.inner.end_offset(partition).await
    }
    async fn new_producer_id(&self) -> Result<u64, LogError> {
        self.inner.new_producer_id().await
    }
}

#[tokio::test]
async fn an_empty_read_with_a_backlog_never_moves_the_watermark() {
    let log = Arc::new(EmptyReads {
        inner: MemoryLog::new(1),
        hide: AtomicBool::new(true),
    });
    let mut block = RecordBlock::default();
    for id in 1..=3u128 {
        block.push(&adclick_core::codec::encode(
            &click(id, CampaignId(5), START_MS),
            Default::default(),
        ));
    }
    let batch = AppendBatch {
        producer_id: 1,
        first_sequence: 0,
        records: block,
    };
    log.append(PARTITION, batch).await.unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let env = WorkerEnv::new(
        log.clone(),
        Arc::new(MemoryRealtimeStore::new()),
        CheckpointStore::new(Arc::new(MemoryBlobStore::new())),
        clock.clone(),
        Arc::new(RwLock::new(FraudRegistry::new())),
    );
    let config = AggregatorConfig::default();
    let idle_ms = config.window.idle_timeout_ms;
    let mut worker = PartitionWorker::new(PARTITION, WorkerConfig::default(), config, env);
    worker.recover().await.unwrap();
    let watermark =
        |worker: &PartitionWorker| worker.aggregator_ref().unwrap().watermark().watermark_ms;

    // Empty reads, well past the idle timeout: the backlog is still unread.
    for _ in 0..5 {
        clock.advance(idle_ms + 1_000);
        assert_eq!(worker.poll().await.unwrap(), 0);
    }
    assert_eq!(
        watermark(&worker),
        0,
        "the watermark followed the clock over a backlog"
    );

    // The backlog is read, on time; once caught up, the idle watermark follows the clock.
    log.hide.store(false, Ordering::SeqCst);
    assert_eq!(worker.poll().await.unwrap(), 3);
    let stats = worker.aggregator_ref().unwrap().stats();
    assert_eq!((stats.late, stats.unverified), (0, 0), "{stats:?}");
    clock.advance(idle_ms + 1_000);
    assert_eq!(worker.poll().await.unwrap(), 0);
    assert!(
        watermark(&worker) > START_MS,
        "caught up, the watermark follows the clock"
    );
}
