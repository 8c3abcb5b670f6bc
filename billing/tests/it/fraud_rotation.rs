//! Issue 19: billing judged every click with one fraud list, so a rotation mid-period made
//! billing and the fast path disagree, and reconciliation could only guess at the cause. Now
//! billing reads the workers' list history back from their checkpoint store and judges each
//! click with the version that judged it there; a click the workers have not checkpointed past
//! is not settled, and the period waits for it.

use std::sync::{Arc, RwLock};

use adclick_archive::{Archiver, ArchiverConfig};
use adclick_billing::job::{ArchiveGate, BillingError, BillingJob, bill_from_archive};
use adclick_billing::sqlite::SqliteBillingStore;
use adclick_billing::store::{BillingStore, RunKind};
use adclick_core::billing::FraudSchedule;
use adclick_core::event::ClickEvent;
use adclick_core::fraud::{FraudList, FraudRegistry};
use adclick_core::ids::{CampaignId, PartitionId};
use adclick_core::limits::HOUR_MS;
use adclick_core::operator::{AggregatorConfig, Series};
use adclick_engine::checkpoint::CheckpointStore;
use adclick_engine::clock::ManualClock;
use adclick_engine::embedded::{MemoryBlobStore, MemoryLog, MemoryRealtimeStore};
use adclick_engine::fraud_lists::FraudListStore;
use adclick_engine::seams::{AppendBatch, BlobStore, Log, RealtimeStore, RecordBlock};
use adclick_engine::worker::{PartitionWorker, WorkerConfig, WorkerEnv};

use crate::billing_store::{drop_postgres_schema, postgres_store};

const PERIOD_FROM_MS: u64 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR_MS;
const EVENT_MS: u64 = PERIOD_FROM_MS + 10 * 60 * 1000;
const PARTITION: PartitionId = PartitionId(0);
const CAMPAIGN: CampaignId = CampaignId(1);
/// Listed from version 1 on.
const IP_A: &str = "10.1.0.1";
/// Listed from version 2 on.
const IP_B: &str = "10.1.0.2";
const VERSION_1: &str = "version 1\nip 10.1.0.1\n";
const VERSION_2: &str = "version 2\nip 10.1.0.1\nip 10.1.0.2\n";

/// One partition's worker, log, store and checkpoint store, as `adclick serve` wires them.
struct Partition {
    log: Arc<MemoryLog>,
    store: Arc<MemoryRealtimeStore>,
    checkpoints: Arc<dyn BlobStore>,
    lists: FraudListStore,
    registry: Arc<RwLock<FraudRegistry>>,
    worker: PartitionWorker,
    appended: u64,
}

impl Partition {
    async fn start() -> Partition {
        let log = Arc::new(MemoryLog::new(1));
        let store = Arc::new(MemoryRealtimeStore::new());
        let checkpoints: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
        let lists = FraudListStore::new(checkpoints.clone());
        let registry = Arc::new(RwLock::new(FraudRegistry::new()));
        lists.publish(VERSION_1, &registry).await.unwrap();
        let env = WorkerEnv::new(
            log.clone(),
            store.clone(),
            CheckpointStore::new(checkpoints.clone()),
            Arc::new(ManualClock::new(EVENT_MS)),
            registry.clone(),
        )
        .with_fraud_lists(lists.clone());
        let mut worker = PartitionWorker::new(
            PARTITION,
            WorkerConfig::default(),
            AggregatorConfig::default(),
            env,
        );
        worker.recover().await.unwrap();
        Partition {
            log,
            store,
            checkpoints,
            lists,
            registry,
            worker,
            appended: 0,
        }
    }

    /// Appends one click from each IP per pair, unread by the worker.
    async fn append_pairs(&mut self, pairs: u64) {
        let mut block = RecordBlock::default();
        for index in 0..2 * pairs {
            let ip = if index % 2 == 0 { IP_A } else { IP_B };
            let id = u128::from(self.appended + index + 1);
            let click = ClickEvent::example(id, CAMPAIGN, ip.parse().unwrap(), EVENT_MS);
            block.push(&adclick_core::codec::encode(&click, Default::default()));
        }
        let batch = AppendBatch {
            producer_id: 1,
            first_sequence: self.appended,
            records: block,
        };
        self.log.append(PARTITION, batch).await.unwrap();
        self.appended += 2 * pairs;
    }

    /// The worker reads everything appended, then checkpoints.
    async fn catch_up(&mut self) {
        while self.worker.poll().await.unwrap() > 0 {}
        self.worker.barrier().await.unwrap();
    }

    /// The fast path's fraud count of the campaign's hour, every lane.
    async fn fast_fraud(&self) -> u64 {
        let scan = self.store.scan().await.unwrap();
        scan.iter()
            .filter(|(series, _, _)| matches!(series, Series::Hour(hour) if hour.campaign_id == CAMPAIGN))
            .map(|(_, _, stored)| stored.counts.fraud)
            .sum()
    }

    /// Archives to the log's end, with the archiver's clock past the period's close.
    async fn archive(&self, archive: &Arc<dyn BlobStore>, clock_ms: u64) {
        let mut archiver = Archiver::open(
            PARTITION,
            self.log.clone(),
            archive.clone(),
            Arc::new(ManualClock::new(clock_ms)),
            ArchiverConfig::default(),
        )
        .await
        .unwrap();
        let end = self.log.end_offset(PARTITION).await.unwrap();
        archiver.archive_until(end).await.unwrap();
    }

    fn gate(&self) -> ArchiveGate {
        ArchiveGate {
            partitions: Some(1),
            checkpoints: Some(self.checkpoints.clone()),
            ..ArchiveGate::default()
        }
    }
}

fn job(fallback: Arc<FraudList>) -> BillingJob {
    BillingJob {
        from_ms: PERIOD_FROM_MS,
        to_ms: PERIOD_FROM_MS + HOUR_MS,
        grace_ms: 0,
        clicks_per_ip_per_minute_max: AggregatorConfig::default().clicks_per_ip_per_minute_max,
        fraud: FraudSchedule::single(fallback),
        fraud_inputs: Vec::new(),
    }
}

async fn a_rotated_period_bills_as_the_workers_judged(store: &dyn BillingStore) {
    let mut partition = Partition::start().await;
    // Two pairs under version 1 (A is fraud), then the rotation, then two pairs under version
    // 2 (both are): 2 + 4 fraud, where one list for the period says 4 or 8.
    partition.append_pairs(2).await;
    partition.catch_up().await;
    partition
        .lists
        .publish(VERSION_2, &partition.registry)
        .await
        .unwrap();
    partition.worker.barrier().await.unwrap();
    partition.append_pairs(2).await;
    partition.catch_up().await;
    assert_eq!(partition.fast_fraud().await, 6);

    let archive: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    let close_ms = PERIOD_FROM_MS + HOUR_MS;
    partition.archive(&archive, close_ms).await;
    store.set_price(CAMPAIGN, 1_000).await.unwrap();
    let newest = partition.registry.read().unwrap().current();
    let job = job(newest);
    let billed = bill_from_archive(store, archive.as_ref(), &job, partition.gate(), close_ms)
        .await
        .unwrap();
    let row = billed.outcome.rows[0];
    assert_eq!((row.bill.fraud, row.bill.billable), (6, 2), "{row:?}");
    assert!(!billed.outcome.record.provisional);
    let inputs = &billed.outcome.record.input_files;
    for named in [
        "checkpoints/lists/p00000",
        "fraud-lists/v00000000000000000001.list",
        "fraud-lists/v00000000000000000002.list",
    ] {
        assert!(
            inputs.iter().any(|input| input == named),
            "{named} in {inputs:?}"
        );
    }
    assert!(adclick_billing::workers_lists::judged_as_workers(inputs));

    // A late pair the workers have not read: its list is not settled, so the period waits.
    partition.append_pairs(1).await;
    partition.archive(&archive, close_ms + 1).await;
    let error = bill_from_archive(
        store,
        archive.as_ref(),
        &job,
        partition.gate(),
        close_ms + 1,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, BillingError::JudgementUnsettled { unconfirmed } if unconfirmed[&PARTITION] == 2),
        "{error}"
    );
    assert!(
        error.to_string().contains("partition 0: 2 clicks ahead"),
        "{error}"
    );

    // Once they have, the pair (both listed in version 2) goes into a correction.
    partition.catch_up().await;
    let corrected = bill_from_archive(
        store,
        archive.as_ref(),
        &job,
        partition.gate(),
        close_ms + 2,
    )
    .await
    .unwrap();
    assert_eq!(corrected.outcome.record.kind, RunKind::Correction);
    assert_eq!(corrected.outcome.rows[0].bill.fraud, 8);
    assert_eq!(partition.fast_fraud().await, 8);
}

#[tokio::test]
async fn postgres_a_rotated_period_bills_each_click_with_the_workers_list() {
    let store = postgres_store("rotation").await;
    a_rotated_period_bills_as_the_workers_judged(&store).await;
    drop_postgres_schema(&store, "rotation").await;
}

#[tokio::test]
async fn sqlite_a_rotated_period_bills_each_click_with_the_workers_list() {
    let store = SqliteBillingStore::in_memory().unwrap();
    store.migrate().await.unwrap();
    a_rotated_period_bills_as_the_workers_judged(&store).await;
}
