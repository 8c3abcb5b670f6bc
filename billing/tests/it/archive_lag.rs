//! Issue 19, item 4: billing billed whatever had been archived, checking only a wall-clock
//! grace, while ingest takes clicks up to 24 h old and the archiver rolls every 10 minutes. A
//! lagging or stopped archiver meant silent under-billing, and a click archived after its
//! period was billed was either lost or (on a re-run) silently rewrote the billed rows. Now a
//! period is billed only once every partition's manifest is caught up past its end plus the
//! grace (or provisionally, on record), and later clicks land in a correction run.

use std::collections::BTreeMap;
use std::sync::Arc;

use adclick_archive::{Archiver, ArchiverConfig};
use adclick_billing::job::{ArchiveGate, BillingError, BillingJob, bill_from_archive};
use adclick_billing::sqlite::SqliteBillingStore;
use adclick_billing::store::{BillingStore, RunKind, rows_to_map};
use adclick_core::billing::BillKey;
use adclick_core::fraud::FraudList;
use adclick_core::ids::*;
use adclick_core::limits::HOUR_MS;
use adclick_engine::clock::ManualClock;
use adclick_engine::embedded::{MemoryBlobStore, MemoryLog};
use adclick_engine::scenario::Scenario;
use adclick_engine::seams::{AppendBatch, BlobStore, Clock, Log, RecordBlock};
use adclick_traffic::{GeneratedBatch, Generator};

use crate::billing_store::{
    START_MS, drop_postgres_schema, job, oracle_billable, postgres_store, price_everything,
    scenario,
};

/// The archivers' roll interval: 10 minutes, the default.
const ROLL_INTERVAL_MS: u64 = 10 * 60 * 1000;

/// The generated traffic of `billing_store`, appended in rounds, so that some of it can arrive
/// after an archiver's mark or after the period was billed.
struct Traffic {
    log: Arc<MemoryLog>,
    generator: Generator,
    /// Clicks are routed over this many partitions; the log's others stay idle.
    route_partitions: u32,
    sequences: Vec<u64>,
    step: u64,
    scenario: Scenario,
    list: Arc<FraudList>,
}

impl Traffic {
    fn new(log_partitions: u32, route_partitions: u32) -> Traffic {
        let scenario = scenario();
        let generator = Generator::new(&scenario);
        let list = Arc::new(FraudList::parse(&generator.fraud_list_text()).unwrap());
        Traffic {
            log: Arc::new(MemoryLog::new(log_partitions)),
            generator,
            route_partitions,
            sequences: vec![0; log_partitions as usize],
            step: 0,
            scenario,
            list,
        }
    }

    /// Appends `steps` rounds of 200 clicks, 100 ms of event time apart.
    fn append(&mut self, steps: u64) {
        for _ in 0..steps {
            let now_ms = START_MS + self.step * 100;
            self.step += 1;
            let mut batch = GeneratedBatch::default();
            self.generator
                .next_batch(now_ms, now_ms - START_MS, 200, &mut batch);
            let blocks = RecordBlock::route(&batch.events, self.route_partitions);
            for (index, block) in blocks.into_iter().enumerate() {
                let count = block.len() as u64;
                let batch = AppendBatch {
                    producer_id: 1,
                    first_sequence: self.sequences[index],
                    records: block,
                };
                self.log
                    .append_now(PartitionId(index as u32), batch)
                    .unwrap();
                self.sequences[index] += count;
            }
        }
    }

    /// The period of `billing_store` with the default billing grace of 1 h.
    fn job(&self) -> BillingJob {
        BillingJob {
            grace_ms: HOUR_MS,
            ..job(self.list.clone(), &self.scenario)
        }
    }

    async fn oracle(&self) -> BTreeMap<BillKey, u64> {
        oracle_billable(&self.log, &self.list, &self.scenario).await
    }
}

/// Archives `partition` to the log's end with the archiver's clock at `clock_ms`: its mark.
async fn archive(traffic: &Traffic, blobs: &Arc<dyn BlobStore>, partition: u32, clock_ms: u64) {
    let partition = PartitionId(partition);
    let mut archiver = Archiver::open(
        partition,
        traffic.log.clone(),
        blobs.clone(),
        Arc::new(ManualClock::new(clock_ms)),
        ArchiverConfig::default(),
    )
    .await
    .unwrap();
    let end = traffic.log.end_offset(partition).await.unwrap();
    archiver.archive_until(end).await.unwrap();
    assert_eq!(archiver.caught_up_to_ms(), clock_ms);
}

fn billable(rows: &[adclick_billing::store::BilledRow]) -> BTreeMap<BillKey, u64> {
    rows.iter()
        .filter(|row| row.bill.billable > 0)
        .map(|row| (row.key, row.bill.billable))
        .collect()
}

fn strict() -> ArchiveGate {
    ArchiveGate::default()
}

fn incomplete_allowed() -> ArchiveGate {
    ArchiveGate {
        allow_incomplete: true,
        ..ArchiveGate::default()
    }
}

async fn lagging_archiver_is_refused_then_billed_provisionally(store: &dyn BillingStore) {
    let mut traffic = Traffic::new(3, 3);
    traffic.append(80);
    let job = traffic.job();
    let needed_ms = job.to_ms + job.grace_ms;
    let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    // Partition 1's archiver stopped 50 minutes short of the period's close; clicks kept
    // coming, and the other partitions archived them.
    let lag_ms = 50 * 60 * 1000;
    archive(&traffic, &blobs, 1, needed_ms - lag_ms).await;
    traffic.append(20);
    archive(&traffic, &blobs, 0, needed_ms).await;
    archive(&traffic, &blobs, 2, needed_ms + 1).await;
    price_everything(store, traffic.scenario.traffic.campaigns).await;

    let error = bill_from_archive(store, blobs.as_ref(), &job, strict(), needed_ms + 2)
        .await
        .unwrap_err();
    let BillingError::ArchiveIncomplete { completeness, .. } = &error else {
        panic!("expected the archive to be refused, got {error}");
    };
    assert_eq!(completeness.behind.len(), 1, "{error}");
    assert_eq!(completeness.behind[0].partition, PartitionId(1));
    assert_eq!(completeness.behind[0].lag_ms, lag_ms);
    let message = error.to_string();
    assert!(
        message.contains("partition 1: caught up to") && message.contains("3000000 ms"),
        "{message}"
    );
    assert!(store.runs().await.unwrap().is_empty(), "nothing written");

    // --allow-incomplete bills, and says so in the audit row.
    let provisional = bill_from_archive(
        store,
        blobs.as_ref(),
        &job,
        incomplete_allowed(),
        needed_ms + 3,
    )
    .await
    .unwrap();
    assert!(provisional.outcome.record.provisional);
    assert_eq!(provisional.outcome.record.kind, RunKind::Bill);
    assert!(!provisional.completeness.is_complete());
    let runs = store.runs().await.unwrap();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].1.provisional, "the provisional mark is stored");
    let oracle = traffic.oracle().await;
    let billed_total: u64 = billable(&provisional.outcome.rows).values().sum();
    let oracle_total: u64 = oracle.values().sum();
    assert!(
        billed_total < oracle_total,
        "partition 1's unarchived clicks are missing: {billed_total} of {oracle_total}"
    );

    // Partition 1 catches up: billing passes the gate, and the missing clicks are a correction.
    archive(&traffic, &blobs, 1, needed_ms + 10).await;
    let corrected = bill_from_archive(store, blobs.as_ref(), &job, strict(), needed_ms + 11)
        .await
        .unwrap();
    assert!(corrected.completeness.is_complete());
    assert_eq!(corrected.outcome.record.kind, RunKind::Correction);
    assert!(!corrected.outcome.record.provisional);
    assert!(!corrected.outcome.adjustments.is_empty());
    let standing = store.hourly(job.from_ms, job.to_ms).await.unwrap();
    assert_eq!(
        billable(&standing),
        oracle,
        "billed + corrections = the oracle"
    );
    assert_eq!(
        store.billed(job.from_ms, job.to_ms).await.unwrap(),
        provisional.outcome.rows,
        "the provisional rows stay as billed"
    );
}

#[tokio::test]
async fn postgres_a_lagging_archiver_is_refused_naming_the_partition_and_its_lag() {
    let store = postgres_store("lagging").await;
    lagging_archiver_is_refused_then_billed_provisionally(&store).await;
    drop_postgres_schema(&store, "lagging").await;
}

#[tokio::test]
async fn sqlite_a_lagging_archiver_is_refused_naming_the_partition_and_its_lag() {
    let store = SqliteBillingStore::in_memory().unwrap();
    store.migrate().await.unwrap();
    lagging_archiver_is_refused_then_billed_provisionally(&store).await;
}

async fn idle_partition_does_not_block_billing(store: &dyn BillingStore) {
    // Four partitions, clicks on three: partition 3 never sees a record.
    let mut traffic = Traffic::new(4, 3);
    traffic.append(80);
    let job = traffic.job();
    let needed_ms = job.to_ms + job.grace_ms;
    let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    let clock = Arc::new(ManualClock::new(START_MS + 9_000));
    let mut archivers = Vec::new();
    for partition in (0..4).map(PartitionId) {
        let mut archiver = Archiver::open(
            partition,
            traffic.log.clone(),
            blobs.clone(),
            clock.clone(),
            ArchiverConfig::default(),
        )
        .await
        .unwrap();
        while archiver.poll().await.unwrap() > 0 {}
        archivers.push(archiver);
    }
    price_everything(store, traffic.scenario.traffic.campaigns).await;

    // Right after the traffic, every partition is behind the period's close.
    let error = bill_from_archive(store, blobs.as_ref(), &job, strict(), needed_ms)
        .await
        .unwrap_err();
    let BillingError::ArchiveIncomplete { completeness, .. } = &error else {
        panic!("expected the archive to be refused, got {error}");
    };
    assert_eq!(completeness.partitions, 4, "the manifests say how many");
    assert_eq!(completeness.behind.len(), 4, "{error}");

    // No click arrives any more; the archivers keep polling as the clock runs.
    let mut rounds = 0;
    assert_eq!(ArchiverConfig::default().roll_interval_ms, ROLL_INTERVAL_MS);
    while archivers
        .iter()
        .any(|archiver| archiver.caught_up_to_ms() < needed_ms)
    {
        rounds += 1;
        assert!(rounds < 100, "the marks stopped following the clock");
        clock.advance(ROLL_INTERVAL_MS / 2);
        for archiver in &mut archivers {
            assert_eq!(archiver.poll().await.unwrap(), 0);
        }
    }
    assert_eq!(archivers[3].next_offset(), Offset(0), "partition 3 is idle");
    let billed = bill_from_archive(store, blobs.as_ref(), &job, strict(), clock.now_ms())
        .await
        .unwrap();
    assert!(billed.completeness.is_complete());
    assert!(!billed.outcome.record.provisional);
    assert_eq!(billable(&billed.outcome.rows), traffic.oracle().await);
}

#[tokio::test]
async fn postgres_an_idle_partition_does_not_block_billing() {
    let store = postgres_store("idle").await;
    idle_partition_does_not_block_billing(&store).await;
    drop_postgres_schema(&store, "idle").await;
}

#[tokio::test]
async fn sqlite_an_idle_partition_does_not_block_billing() {
    let store = SqliteBillingStore::in_memory().unwrap();
    store.migrate().await.unwrap();
    idle_partition_does_not_block_billing(&store).await;
}

async fn late_clicks_land_in_a_correction(store: &dyn BillingStore) {
    let mut traffic = Traffic::new(3, 3);
    traffic.append(80);
    let job = traffic.job();
    let needed_ms = job.to_ms + job.grace_ms;
    let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    for partition in 0..3 {
        archive(&traffic, &blobs, partition, needed_ms).await;
    }
    price_everything(store, traffic.scenario.traffic.campaigns).await;
    let first = bill_from_archive(store, blobs.as_ref(), &job, strict(), needed_ms)
        .await
        .unwrap();
    assert_eq!(first.outcome.record.kind, RunKind::Bill);
    let before = traffic.oracle().await;
    assert_eq!(billable(&first.outcome.rows), before);

    // Clicks of the period that ingest took past the grace (it takes them up to 24 h late),
    // archived after the bill.
    traffic.append(20);
    for partition in 0..3 {
        archive(&traffic, &blobs, partition, needed_ms + 2 * HOUR_MS).await;
    }
    let after = traffic.oracle().await;
    assert!(after.values().sum::<u64>() > before.values().sum::<u64>());
    let correction = bill_from_archive(
        store,
        blobs.as_ref(),
        &job,
        strict(),
        needed_ms + 2 * HOUR_MS,
    )
    .await
    .unwrap();
    let record = &correction.outcome.record;
    assert_eq!(record.kind, RunKind::Correction);
    assert!(correction.outcome.run_id > first.outcome.run_id);
    let adjustments = store.adjustments(job.from_ms, job.to_ms).await.unwrap();
    assert_eq!(adjustments.len() as u64, record.rows);
    assert!(
        adjustments
            .iter()
            .all(|(run_id, _)| *run_id == correction.outcome.run_id),
        "the adjustments carry the correction's run id"
    );
    // Each adjustment is the oracle's difference, charged at the hour's price.
    let keys: std::collections::BTreeSet<BillKey> =
        before.keys().chain(after.keys()).copied().collect();
    let expected: BTreeMap<BillKey, i64> = keys
        .into_iter()
        .map(|key| {
            let delta =
                *after.get(&key).unwrap_or(&0) as i64 - *before.get(&key).unwrap_or(&0) as i64;
            (key, delta)
        })
        .filter(|(_, delta)| *delta != 0)
        .collect();
    let got: BTreeMap<BillKey, i64> = adjustments
        .iter()
        .filter(|(_, adjustment)| adjustment.billable_delta != 0)
        .map(|(_, adjustment)| (adjustment.key, adjustment.billable_delta))
        .collect();
    assert_eq!(got, expected);
    let prices = store.prices().await.unwrap();
    for (_, adjustment) in &adjustments {
        assert_eq!(adjustment.cpc_micros, prices[&adjustment.key.campaign_id]);
        assert_eq!(
            adjustment.spend_micros_delta,
            adjustment.billable_delta * adjustment.cpc_micros as i64
        );
    }
    // Not a rewrite: the billed rows are as first billed; the standing bill is the oracle's.
    assert_eq!(
        store.billed(job.from_ms, job.to_ms).await.unwrap(),
        first.outcome.rows
    );
    let standing = store.hourly(job.from_ms, job.to_ms).await.unwrap();
    assert_eq!(billable(&standing), after);
    assert_eq!(standing, correction.outcome.rows);
    assert_eq!(record.billable, after.values().sum::<u64>());
    assert_eq!(
        record.spend_micros,
        standing.iter().map(|row| row.spend_micros).sum::<u64>()
    );

    // The same correction again adds nothing, and says so on record.
    let again = bill_from_archive(
        store,
        blobs.as_ref(),
        &job,
        strict(),
        needed_ms + 3 * HOUR_MS,
    )
    .await
    .unwrap();
    assert_eq!(again.outcome.record.kind, RunKind::Correction);
    assert!(again.outcome.adjustments.is_empty());
    assert_eq!(again.outcome.record.rows, 0);
    assert_eq!(
        store.adjustments(job.from_ms, job.to_ms).await.unwrap(),
        adjustments
    );
    assert_eq!(
        store.hourly(job.from_ms, job.to_ms).await.unwrap(),
        standing
    );
    let runs = store.runs().await.unwrap();
    let kinds: Vec<RunKind> = runs.iter().map(|(_, run)| run.kind).collect();
    assert_eq!(
        kinds,
        vec![RunKind::Bill, RunKind::Correction, RunKind::Correction]
    );
    assert_eq!(rows_to_map(&standing).len(), standing.len());
}

#[tokio::test]
async fn postgres_clicks_archived_after_the_period_was_billed_land_in_a_correction_not_a_rewrite() {
    let store = postgres_store("correction").await;
    late_clicks_land_in_a_correction(&store).await;
    drop_postgres_schema(&store, "correction").await;
}

#[tokio::test]
async fn sqlite_clicks_archived_after_the_period_was_billed_land_in_a_correction_not_a_rewrite() {
    let store = SqliteBillingStore::in_memory().unwrap();
    store.migrate().await.unwrap();
    late_clicks_land_in_a_correction(&store).await;
}
