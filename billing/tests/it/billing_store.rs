use std::collections::BTreeMap;
use std::sync::Arc;

use adclick_billing::job::{BillingError, BillingJob, feed_from_log, price, write_bill};
use adclick_billing::postgres::PostgresBillingStore;
use adclick_billing::sqlite::SqliteBillingStore;
use adclick_billing::store::{BillingStore, BillingStoreError, rows_to_map};
use adclick_billing::store::{Finality, RunInput, RunKind};
use adclick_core::billing::{BillKey, HourBill};
use adclick_core::fraud::FraudList;
use adclick_core::ids::*;
use adclick_core::limits::HOUR_MS;
use adclick_engine::embedded::MemoryLog;
use adclick_engine::scenario::Scenario;
use adclick_engine::seams::{AppendBatch, RecordBlock};
use adclick_harness::oracle;
use adclick_traffic::{GeneratedBatch, Generator};

pub(crate) const PARTITIONS: u32 = 3;
/// Traffic starts 4 s before an hour boundary, so resends and late clicks straddle it.
pub(crate) const START_MS: u64 = 500_000 * HOUR_MS - 4_000;

pub(crate) fn scenario() -> Scenario {
    let text = r#"
version = 1
name = "billing"
seed = 5
[traffic]
rate_per_s = 2000
duration_s = 8.0
campaigns = 30
ads_per_campaign = 2
[anomalies]
duplicate_fraction = 0.2
duplicate_delay_ms = 3000
late_fraction = 0.05
late_lag_ms = 6000
bot_fraction = 0.05
high_rate_ip_fraction = 0.05
high_rate_ips = 2
[engine]
partitions = 3
clicks_per_ip_per_minute_max = 40
"#;
    Scenario::parse(text, "billing").unwrap()
}

/// A log of generated clicks and the list that judged them.
pub(crate) fn data_set() -> (MemoryLog, Arc<FraudList>, Scenario) {
    let scenario = scenario();
    let mut generator = Generator::new(&scenario);
    let list = Arc::new(FraudList::parse(&generator.fraud_list_text()).unwrap());
    let log = MemoryLog::new(PARTITIONS);
    let mut sequences = [0u64; PARTITIONS as usize];
    for step in 0..80u64 {
        let now_ms = START_MS + step * 100;
        let mut batch = GeneratedBatch::default();
        generator.next_batch(now_ms, now_ms - START_MS, 200, &mut batch);
        let blocks = RecordBlock::route(&batch.events, PARTITIONS);
        for (index, block) in blocks.into_iter().enumerate() {
            let count = block.len() as u64;
            let batch = AppendBatch {
                producer_id: 1,
                first_sequence: sequences[index],
                records: block,
            };
            log.append_now(PartitionId(index as u32), batch).unwrap();
            sequences[index] += count;
        }
    }
    (log, list, scenario)
}

pub(crate) fn job(list: Arc<FraudList>, scenario: &Scenario) -> BillingJob {
    BillingJob {
        from_ms: START_MS - START_MS % HOUR_MS,
        to_ms: START_MS - START_MS % HOUR_MS + 2 * HOUR_MS,
        grace_ms: 0,
        clicks_per_ip_per_minute_max: scenario.engine.clicks_per_ip_per_minute_max,
        fraud: adclick_core::billing::FraudSchedule::single(list),
        fraud_inputs: Vec::new(),
    }
}

async fn bill(log: &MemoryLog, job: &BillingJob) -> (BTreeMap<BillKey, HourBill>, Vec<String>) {
    let mut biller = job.biller();
    let inputs = feed_from_log(log, &mut biller).await.unwrap();
    (biller.finish(), inputs)
}

/// The oracle's exact unique non-fraud clicks per (campaign, hour), both lanes, all salts.
pub(crate) async fn oracle_billable(
    log: &MemoryLog,
    list: &Arc<FraudList>,
    scenario: &Scenario,
) -> BTreeMap<BillKey, u64> {
    let schedule = adclick_core::billing::FraudSchedule::single(list.clone());
    let expected = oracle::expected_from_log(log, &schedule, &scenario.aggregator_config(), false)
        .await
        .unwrap();
    expected
        .unique_by_campaign_hour()
        .into_iter()
        .map(|((campaign_id, hour_start_ms), unique)| {
            (
                BillKey {
                    campaign_id,
                    hour_start_ms,
                },
                unique,
            )
        })
        .collect()
}

pub(crate) fn postgres_config(schema: &str) -> String {
    let base = std::env::var("ADCLICK_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_owned());
    format!("{base} options='-c search_path={schema}'")
}

/// A store in a schema of its own (tests run in parallel against one database).
pub(crate) async fn postgres_store(test: &str) -> PostgresBillingStore {
    let schema = format!("adclick_test_{test}_{}", std::process::id());
    let admin = PostgresBillingStore::connect(&postgres_config("public"))
        .await
        .unwrap_or_else(|error| {
            panic!("these tests need PostgreSQL on 127.0.0.1:5432 (user postgres, database test), or ADCLICK_POSTGRES: {error}")
        });
    admin
        .execute_batch(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .await
        .unwrap();
    let store = PostgresBillingStore::connect(&postgres_config(&schema))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

pub(crate) async fn price_everything(store: &dyn BillingStore, campaigns: u64) {
    for campaign in 0..=campaigns {
        store
            .set_price(CampaignId(campaign), 250_000 + campaign)
            .await
            .unwrap();
    }
}

/// Exact numbers, idempotent re-runs, and a crash mid-transaction, on any store.
async fn billing_contract(store: &dyn BillingStore) {
    let (log, list, scenario) = data_set();
    let job = job(list.clone(), &scenario);
    let (hours, inputs) = bill(&log, &job).await;
    let oracle = oracle_billable(&log, &list, &scenario).await;
    let billed: BTreeMap<BillKey, u64> = hours
        .iter()
        .map(|(key, bill)| (*key, bill.billable))
        .collect();
    assert_eq!(
        billed, oracle,
        "billing equals the oracle's unique non-fraud clicks"
    );
    let hours_seen: std::collections::BTreeSet<u64> =
        hours.keys().map(|key| key.hour_start_ms).collect();
    assert_eq!(hours_seen.len(), 2, "the data straddles an hour boundary");
    let totals = hours.values().fold(HourBill::default(), |mut total, bill| {
        total.add(*bill);
        total
    });
    assert!(
        totals.duplicates > 0 && totals.fraud > 0,
        "the data set has resends and fraud: {totals:?}"
    );

    // A missing price fails the run and writes nothing.
    let error = write_bill(store, &job, &hours, inputs.clone(), 1, Finality::Final)
        .await
        .unwrap_err();
    assert!(
        matches!(error, BillingError::MissingPrice { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("no price"), "{error}");
    assert!(
        store
            .hourly(job.from_ms, job.to_ms)
            .await
            .unwrap()
            .is_empty()
    );

    price_everything(store, scenario.traffic.campaigns).await;
    let first = write_bill(store, &job, &hours, inputs.clone(), 1, Finality::Final)
        .await
        .unwrap();
    let stored = store.hourly(job.from_ms, job.to_ms).await.unwrap();
    assert_eq!(
        rows_to_map(&stored),
        hours,
        "what is stored is what was billed"
    );
    assert!(
        stored
            .iter()
            .all(|row| row.spend_micros == row.bill.billable * row.cpc_micros)
    );

    assert_eq!(first.record.kind, RunKind::Bill);

    // A re-run never adds: it is a correction that finds nothing to correct, on record.
    let second = write_bill(store, &job, &hours, inputs.clone(), 2, Finality::Final)
        .await
        .unwrap();
    assert!(second.run_id > first.run_id);
    assert_eq!(second.record.kind, RunKind::Correction);
    assert!(second.adjustments.is_empty());
    assert_eq!(store.hourly(job.from_ms, job.to_ms).await.unwrap(), stored);
    assert_eq!(store.billed(job.from_ms, job.to_ms).await.unwrap(), stored);
    assert!(
        store
            .adjustments(job.from_ms, job.to_ms)
            .await
            .unwrap()
            .is_empty()
    );
    let runs = store.runs().await.unwrap();
    assert_eq!(runs.len(), 2, "each run is on record");
    assert_eq!(runs[0].1, first.record);
    assert_eq!(runs[1].1, second.record);
    assert_eq!(runs[1].1.rows, 0, "no adjustment");
    assert_eq!(runs[1].1.billable, totals.billable);
    assert_eq!(runs[1].1.input_files, inputs);
    assert!(!runs[1].1.provisional);

    // A crash mid-transaction (different numbers, then no commit) leaves the rows as they were.
    let prices = store.prices().await.unwrap();
    let mut doubled = hours.clone();
    doubled.values_mut().for_each(|bill| bill.billable *= 2);
    let rows = price(&doubled, &prices).unwrap();
    let input = RunInput {
        period_from_ms: job.from_ms,
        period_to_ms: job.to_ms,
        fraud_list_version: list.version().0,
        input_files: inputs.clone(),
        created_at_ms: 3,
        finality: Finality::Final,
    };
    let error = store.write_run(&input, &rows, true).await.unwrap_err();
    assert!(matches!(error, BillingStoreError::InjectedBeforeCommit));
    assert_eq!(store.hourly(job.from_ms, job.to_ms).await.unwrap(), stored);
    assert!(
        store
            .adjustments(job.from_ms, job.to_ms)
            .await
            .unwrap()
            .is_empty(),
        "the crashed correction left no adjustment"
    );
    assert_eq!(
        store.runs().await.unwrap().len(),
        2,
        "the crashed run left no record"
    );
}

pub(crate) async fn drop_postgres_schema(store: &PostgresBillingStore, test: &str) {
    let schema = format!("adclick_test_{test}_{}", std::process::id());
    store
        .execute_batch(&format!(
            "SET search_path TO public; DROP SCHEMA {schema} CASCADE"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn postgres_billing_is_exact_idempotent_and_crash_safe() {
    let store = postgres_store("contract").await;
    billing_contract(&store).await;
    drop_postgres_schema(&store, "contract").await;
}

/// The tables as the version before corrections created them, with one run on record.
const OLD_SCHEMA: &str = "
    CREATE TABLE adclick_billing_runs (
        run_id BIGINT PRIMARY KEY,
        period_from_ms BIGINT NOT NULL,
        period_to_ms BIGINT NOT NULL,
        fraud_list_version BIGINT NOT NULL,
        input_files TEXT NOT NULL,
        rows BIGINT NOT NULL,
        billable BIGINT NOT NULL,
        spend_micros BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL);
    INSERT INTO adclick_billing_runs VALUES (1, 0, 7200000, 0, '[]', 1, 4, 400, 5);
    CREATE TABLE adclick_billing_hourly (
        campaign_id BIGINT NOT NULL,
        hour_start_ms BIGINT NOT NULL,
        clicks BIGINT NOT NULL,
        billable BIGINT NOT NULL,
        fraud BIGINT NOT NULL,
        duplicates BIGINT NOT NULL,
        reused_ids BIGINT NOT NULL,
        cpc_micros BIGINT NOT NULL,
        spend_micros BIGINT NOT NULL,
        run_id BIGINT NOT NULL,
        PRIMARY KEY (campaign_id, hour_start_ms));
    INSERT INTO adclick_billing_hourly VALUES (3, 0, 5, 4, 1, 0, 0, 100, 400, 1);
";

/// An older database gains the new columns and table; its runs read as final bills, and a
/// run over its billed period is a correction.
async fn old_database_contract(store: &dyn BillingStore) {
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let runs = store.runs().await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].1.kind, RunKind::Bill);
    assert!(!runs[0].1.provisional);
    let billed = store.billed(0, 2 * HOUR_MS).await.unwrap();
    let mut more = billed.clone();
    more[0].bill.billable += 1;
    more[0].spend_micros += 100;
    let input = RunInput {
        period_from_ms: 0,
        period_to_ms: 2 * HOUR_MS,
        fraud_list_version: 0,
        input_files: Vec::new(),
        created_at_ms: 6,
        finality: Finality::Provisional,
    };
    let written = store.write_run(&input, &more, false).await.unwrap();
    assert_eq!(written.record.kind, RunKind::Correction);
    assert!(written.record.provisional);
    assert_eq!(written.adjustments.len(), 1);
    assert_eq!(store.hourly(0, 2 * HOUR_MS).await.unwrap(), more);
    assert_eq!(store.billed(0, 2 * HOUR_MS).await.unwrap(), billed);
    assert_eq!(store.runs().await.unwrap()[1].1, written.record);
}

#[tokio::test]
async fn postgres_an_older_database_is_migrated_and_its_runs_read_as_final_bills() {
    let schema = format!("adclick_test_old_{}", std::process::id());
    let admin = PostgresBillingStore::connect(&postgres_config("public"))
        .await
        .unwrap();
    admin
        .execute_batch(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .await
        .unwrap();
    let store = PostgresBillingStore::connect(&postgres_config(&schema))
        .await
        .unwrap();
    store.execute_batch(OLD_SCHEMA).await.unwrap();
    old_database_contract(&store).await;
    drop_postgres_schema(&store, "old").await;
}

#[tokio::test]
async fn sqlite_an_older_database_is_migrated_and_its_runs_read_as_final_bills() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("old.db");
    rusqlite_batch(&path, OLD_SCHEMA);
    let store = SqliteBillingStore::open(&path).unwrap();
    old_database_contract(&store).await;
}

#[tokio::test]
async fn sqlite_billing_is_exact_idempotent_and_crash_safe() {
    let store = SqliteBillingStore::in_memory().unwrap();
    store.migrate().await.unwrap();
    billing_contract(&store).await;
}

#[tokio::test]
async fn an_unreachable_database_is_named() {
    let error = PostgresBillingStore::connect(
        "host=127.0.0.1 port=1 user=postgres dbname=test connect_timeout=2",
    )
    .await
    .err()
    .unwrap();
    assert!(error.to_string().contains("port=1"), "{error}");
}

#[tokio::test]
async fn an_open_period_is_refused() {
    let (_, list, scenario) = data_set();
    let job = job(list, &scenario);
    let error = job.check(job.to_ms - 1).unwrap_err();
    assert!(error.to_string().contains("closes at"), "{error}");
    let mut ragged = job.clone();
    ragged.from_ms += 1;
    assert!(matches!(
        ragged.check(u64::MAX),
        Err(BillingError::NotWholeHours { .. })
    ));
}

fn rusqlite_batch(path: &std::path::Path, statements: &str) {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection.execute_batch(statements).unwrap();
}
