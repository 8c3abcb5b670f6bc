//! The billing store: PostgreSQL in production, SQLite embedded. Same schema, same semantics:
//! a run replaces the period's rows in one transaction, so a re-run never adds to them and a
//! crash mid-run leaves the previous rows untouched.
//!
//! ```sql
//! adclick_campaigns      (campaign_id BIGINT PRIMARY KEY, cpc_micros BIGINT NOT NULL)
//! adclick_billing_hourly (campaign_id, hour_start_ms  -- PRIMARY KEY
//!                         clicks, billable, fraud, duplicates, reused_ids,
//!                         cpc_micros, spend_micros, run_id)
//! adclick_billing_runs   (run_id PRIMARY KEY, period_from_ms, period_to_ms, fraud_list_version,
//!                         input_files (JSON), rows, billable, spend_micros, created_at_ms)
//! ```
//!
//! Ids and counts are u64 in Rust and BIGINT (i64) in SQL; a value over i64::MAX is refused
//! with an error naming it, never wrapped.

use std::collections::BTreeMap;

use adclick_core::billing::{BillKey, HourBill};
use adclick_core::ids::CampaignId;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// One billed (campaign, hour).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BilledRow {
    pub key: BillKey,
    pub bill: HourBill,
    pub cpc_micros: u64,
    pub spend_micros: u64,
}

/// The audit record of one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub period_from_ms: u64,
    pub period_to_ms: u64,
    pub fraud_list_version: u64,
    pub input_files: Vec<String>,
    pub rows: u64,
    pub billable: u64,
    pub spend_micros: u64,
    pub created_at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BillingStoreError {
    #[error("billing store unavailable: {message}")]
    Unavailable { message: String },
    #[error("{what} {value} is over the database's limit of {limit} (BIGINT)", limit = i64::MAX)]
    OutOfRange { what: &'static str, value: u64 },
    #[error("injected failure before commit (test hook): nothing was written")]
    InjectedBeforeCommit,
    #[error("{message}")]
    Invalid { message: String },
}

pub fn to_sql(what: &'static str, value: u64) -> Result<i64, BillingStoreError> {
    i64::try_from(value).map_err(|_| BillingStoreError::OutOfRange { what, value })
}

pub fn from_sql(what: &'static str, value: i64) -> Result<u64, BillingStoreError> {
    u64::try_from(value).map_err(|_| BillingStoreError::Invalid {
        message: format!("{what} {value} in the database is negative"),
    })
}

#[async_trait]
pub trait BillingStore: Send + Sync {
    /// Creates the tables if absent.
    async fn migrate(&self) -> Result<(), BillingStoreError>;
    /// Cost per click, in micros, per campaign.
    async fn prices(&self) -> Result<BTreeMap<CampaignId, u64>, BillingStoreError>;
    async fn set_price(
        &self,
        campaign: CampaignId,
        cpc_micros: u64,
    ) -> Result<(), BillingStoreError>;
    /// In one transaction: deletes the period's rows, inserts `rows`, records the run. Returns
    /// the run id. `fail_before_commit` is a test hook: everything is done, then rolled back.
    async fn write_run(
        &self,
        run: &RunRecord,
        rows: &[BilledRow],
        fail_before_commit: bool,
    ) -> Result<u64, BillingStoreError>;
    /// The billed rows whose hour starts in `[from_ms, to_ms)`, sorted.
    async fn hourly(&self, from_ms: u64, to_ms: u64) -> Result<Vec<BilledRow>, BillingStoreError>;
    async fn runs(&self) -> Result<Vec<(u64, RunRecord)>, BillingStoreError>;
}

/// The DDL both databases take (BIGINT is SQLite's INTEGER affinity).
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS adclick_campaigns (
        campaign_id BIGINT PRIMARY KEY,
        cpc_micros BIGINT NOT NULL CHECK (cpc_micros >= 0))",
    "CREATE TABLE IF NOT EXISTS adclick_billing_hourly (
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
        PRIMARY KEY (campaign_id, hour_start_ms))",
    "CREATE TABLE IF NOT EXISTS adclick_billing_runs (
        run_id BIGINT PRIMARY KEY,
        period_from_ms BIGINT NOT NULL,
        period_to_ms BIGINT NOT NULL,
        fraud_list_version BIGINT NOT NULL,
        input_files TEXT NOT NULL,
        rows BIGINT NOT NULL,
        billable BIGINT NOT NULL,
        spend_micros BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL)",
];

/// A row's columns as SQL integers, in the order of the INSERT statements.
pub fn row_values(row: &BilledRow, run_id: u64) -> Result<[i64; 10], BillingStoreError> {
    Ok([
        to_sql("campaign_id", row.key.campaign_id.0)?,
        to_sql("hour_start_ms", row.key.hour_start_ms)?,
        to_sql("clicks", row.bill.clicks)?,
        to_sql("billable", row.bill.billable)?,
        to_sql("fraud", row.bill.fraud)?,
        to_sql("duplicates", row.bill.duplicates)?,
        to_sql("reused_ids", row.bill.reused_ids)?,
        to_sql("cpc_micros", row.cpc_micros)?,
        to_sql("spend_micros", row.spend_micros)?,
        to_sql("run_id", run_id)?,
    ])
}

pub fn row_from_values(values: [i64; 9]) -> Result<BilledRow, BillingStoreError> {
    Ok(BilledRow {
        key: BillKey {
            campaign_id: CampaignId(from_sql("campaign_id", values[0])?),
            hour_start_ms: from_sql("hour_start_ms", values[1])?,
        },
        bill: HourBill {
            clicks: from_sql("clicks", values[2])?,
            billable: from_sql("billable", values[3])?,
            fraud: from_sql("fraud", values[4])?,
            duplicates: from_sql("duplicates", values[5])?,
            reused_ids: from_sql("reused_ids", values[6])?,
        },
        cpc_micros: from_sql("cpc_micros", values[7])?,
        spend_micros: from_sql("spend_micros", values[8])?,
    })
}

pub const INSERT_ROW: &str = "INSERT INTO adclick_billing_hourly (campaign_id, hour_start_ms, clicks, billable, fraud, duplicates, reused_ids, cpc_micros, spend_micros, run_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
pub const SELECT_ROWS: &str = "SELECT campaign_id, hour_start_ms, clicks, billable, fraud, duplicates, reused_ids, cpc_micros, spend_micros FROM adclick_billing_hourly WHERE hour_start_ms >= $1 AND hour_start_ms < $2 ORDER BY campaign_id, hour_start_ms";
pub const DELETE_PERIOD: &str =
    "DELETE FROM adclick_billing_hourly WHERE hour_start_ms >= $1 AND hour_start_ms < $2";
pub const INSERT_RUN: &str = "INSERT INTO adclick_billing_runs (run_id, period_from_ms, period_to_ms, fraud_list_version, input_files, rows, billable, spend_micros, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
pub const SELECT_RUNS: &str = "SELECT run_id, period_from_ms, period_to_ms, fraud_list_version, input_files, rows, billable, spend_micros, created_at_ms FROM adclick_billing_runs ORDER BY run_id";
pub const NEXT_RUN_ID: &str = "SELECT COALESCE(MAX(run_id), 0) + 1 FROM adclick_billing_runs";

pub fn run_values(run: &RunRecord) -> Result<([i64; 3], String, [i64; 4]), BillingStoreError> {
    Ok((
        [
            to_sql("period_from_ms", run.period_from_ms)?,
            to_sql("period_to_ms", run.period_to_ms)?,
            to_sql("fraud_list_version", run.fraud_list_version)?,
        ],
        serde_json::to_string(&run.input_files).expect("strings serialize"),
        [
            to_sql("rows", run.rows)?,
            to_sql("billable", run.billable)?,
            to_sql("spend_micros", run.spend_micros)?,
            to_sql("created_at_ms", run.created_at_ms)?,
        ],
    ))
}

pub fn run_from_values(
    numbers: [i64; 8],
    input_files: &str,
) -> Result<(u64, RunRecord), BillingStoreError> {
    let input_files =
        serde_json::from_str(input_files).map_err(|error| BillingStoreError::Invalid {
            message: format!("adclick_billing_runs.input_files is not a JSON list: {error}"),
        })?;
    Ok((
        from_sql("run_id", numbers[0])?,
        RunRecord {
            period_from_ms: from_sql("period_from_ms", numbers[1])?,
            period_to_ms: from_sql("period_to_ms", numbers[2])?,
            fraud_list_version: from_sql("fraud_list_version", numbers[3])?,
            input_files,
            rows: from_sql("rows", numbers[4])?,
            billable: from_sql("billable", numbers[5])?,
            spend_micros: from_sql("spend_micros", numbers[6])?,
            created_at_ms: from_sql("created_at_ms", numbers[7])?,
        },
    ))
}

pub fn rows_to_map(rows: &[BilledRow]) -> BTreeMap<BillKey, HourBill> {
    rows.iter().map(|row| (row.key, row.bill)).collect()
}
