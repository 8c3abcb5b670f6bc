//! The billing store: PostgreSQL in production, SQLite embedded. Same schema, same semantics,
//! one transaction per run, serialized across processes:
//!
//! - The first run over a period (no earlier `bill` run covers any of its hours) is a **bill**:
//!   it inserts the period's rows into `adclick_billing_hourly`.
//! - A later run over a billed period is a **correction**: it compares what it computed with
//!   the period as it stands (the billed rows plus every earlier adjustment) and inserts the
//!   differences per (campaign, hour) into `adclick_bill_adjustments` under its own run id. The
//!   billed rows are never rewritten, and a rerun finds nothing left to add, so no click is
//!   billed twice. A correction with no difference writes its audit row and no adjustment, so
//!   the record shows the period was checked again.
//! - A period billed only in part is refused: bill and correct its parts separately.
//!
//! Every run writes an audit row to `adclick_billing_runs`; a crash mid-run writes nothing.
//!
//! ```sql
//! adclick_campaigns        (campaign_id BIGINT PRIMARY KEY, cpc_micros BIGINT NOT NULL)
//! adclick_billing_hourly   (campaign_id, hour_start_ms  -- PRIMARY KEY
//!                           clicks, billable, fraud, duplicates, reused_ids,
//!                           cpc_micros, spend_micros, run_id)
//! adclick_bill_adjustments (run_id, campaign_id, hour_start_ms  -- PRIMARY KEY
//!                           clicks_delta, billable_delta, fraud_delta, duplicates_delta,
//!                           reused_ids_delta, cpc_micros, spend_micros_delta)
//! adclick_billing_runs     (run_id PRIMARY KEY, period_from_ms, period_to_ms, fraud_list_version,
//!                           input_files (JSON), rows, billable, spend_micros, created_at_ms,
//!                           kind ('bill' | 'correction'), provisional)
//! ```
//!
//! A correction charges an hour's billable difference at the hour's standing price while it has
//! billable clicks (the price it was billed at), else at the campaign's price now, so an hour's
//! spend is always its billable clicks times one price. A run's `billable` and `spend_micros`
//! are the period's totals once the run is in; `rows` counts what it inserted (billed rows or
//! adjustments). `provisional` marks a run made while the archive was known to be behind
//! (`adclick bill --allow-incomplete`); the correction that follows once it has caught up is not.
//!
//! `migrate` creates missing tables and adds the columns later versions added (`kind`,
//! `provisional`) to tables an older version created; older runs read as final bills.
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

/// What a run did (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// The period's first bill: its rows are in `adclick_billing_hourly`.
    #[default]
    Bill,
    /// A run over a billed period: its differences are in `adclick_bill_adjustments`.
    Correction,
}

impl RunKind {
    pub fn as_sql(self) -> &'static str {
        match self {
            RunKind::Bill => "bill",
            RunKind::Correction => "correction",
        }
    }

    pub fn from_sql(text: &str) -> Result<RunKind, BillingStoreError> {
        match text {
            "bill" => Ok(RunKind::Bill),
            "correction" => Ok(RunKind::Correction),
            other => Err(BillingStoreError::Invalid {
                message: format!(
                    "adclick_billing_runs.kind {other:?} is neither 'bill' nor 'correction'"
                ),
            }),
        }
    }
}

/// Whether a run was made with the archive caught up (see `crate::completeness`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finality {
    Final,
    /// The archive was known to be behind: the numbers may grow in a later correction.
    Provisional,
}

/// What a run is asked to write. The store decides in its transaction whether it is a bill or
/// a correction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunInput {
    pub period_from_ms: u64,
    pub period_to_ms: u64,
    pub fraud_list_version: u64,
    pub input_files: Vec<String>,
    pub created_at_ms: u64,
    pub finality: Finality,
}

/// The audit record of one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    #[serde(default)]
    pub kind: RunKind,
    pub period_from_ms: u64,
    pub period_to_ms: u64,
    pub fraud_list_version: u64,
    pub input_files: Vec<String>,
    /// Rows the run inserted: billed rows (a bill) or adjustments (a correction).
    pub rows: u64,
    /// The period's billable clicks once the run is in (billed plus every adjustment).
    pub billable: u64,
    /// The period's spend once the run is in.
    pub spend_micros: u64,
    pub created_at_ms: u64,
    /// Made while the archive was known to be behind.
    #[serde(default)]
    pub provisional: bool,
}

/// One (campaign, hour)'s difference in a correction: what the run computed minus the standing
/// bill (billed plus earlier adjustments).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    pub key: BillKey,
    pub clicks_delta: i64,
    pub billable_delta: i64,
    pub fraud_delta: i64,
    pub duplicates_delta: i64,
    pub reused_ids_delta: i64,
    /// The price `billable_delta` is charged at.
    pub cpc_micros: u64,
    pub spend_micros_delta: i64,
}

/// What `write_run` wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WrittenRun {
    pub run_id: u64,
    pub record: RunRecord,
    /// A correction's differences (empty for a bill, and for a correction that found none).
    pub adjustments: Vec<Adjustment>,
    /// The period's bill as it stands once the run is in.
    pub rows: Vec<BilledRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum BillingStoreError {
    #[error("billing store unavailable: {message}")]
    Unavailable { message: String },
    #[error("{what} {value} is over the database's limit of {limit} (BIGINT)", limit = i64::MAX)]
    OutOfRange { what: &'static str, value: u64 },
    #[error("injected failure before commit (test hook): nothing was written")]
    InjectedBeforeCommit,
    #[error(
        "the period [{from_ms}, {to_ms}) is billed only in part ({billed_ms} of its {period_ms} ms, by runs over {billed_periods:?}): bill its unbilled hours and correct its billed hours as separate periods"
    )]
    PartlyBilled {
        from_ms: u64,
        to_ms: u64,
        billed_ms: u64,
        period_ms: u64,
        billed_periods: Vec<(u64, u64)>,
    },
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
    /// In one transaction: bills the period with `rows`, or, if it is billed already, writes
    /// the differences between `rows` and the period as it stands as a correction (module
    /// doc); records the run. `fail_before_commit` is a test hook: everything is done, then
    /// rolled back.
    async fn write_run(
        &self,
        run: &RunInput,
        rows: &[BilledRow],
        fail_before_commit: bool,
    ) -> Result<WrittenRun, BillingStoreError>;
    /// The bill as it stands for the hours in `[from_ms, to_ms)`: billed rows plus every
    /// adjustment, per (campaign, hour), sorted. What invoices and reconciliation read.
    async fn hourly(&self, from_ms: u64, to_ms: u64) -> Result<Vec<BilledRow>, BillingStoreError>;
    /// The rows as their period was first billed (never rewritten), sorted.
    async fn billed(&self, from_ms: u64, to_ms: u64) -> Result<Vec<BilledRow>, BillingStoreError>;
    /// The adjustments of the hours in `[from_ms, to_ms)`, with their run ids, by run.
    async fn adjustments(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<(u64, Adjustment)>, BillingStoreError>;
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
        created_at_ms BIGINT NOT NULL,
        kind TEXT NOT NULL DEFAULT 'bill',
        provisional BOOLEAN NOT NULL DEFAULT FALSE)",
    "CREATE TABLE IF NOT EXISTS adclick_bill_adjustments (
        run_id BIGINT NOT NULL,
        campaign_id BIGINT NOT NULL,
        hour_start_ms BIGINT NOT NULL,
        clicks_delta BIGINT NOT NULL,
        billable_delta BIGINT NOT NULL,
        fraud_delta BIGINT NOT NULL,
        duplicates_delta BIGINT NOT NULL,
        reused_ids_delta BIGINT NOT NULL,
        cpc_micros BIGINT NOT NULL,
        spend_micros_delta BIGINT NOT NULL,
        PRIMARY KEY (run_id, campaign_id, hour_start_ms))",
];

/// Columns added to tables after their first version, as (table, column, definition): `migrate`
/// adds each one a table lacks. SQLite's ADD COLUMN takes no IF NOT EXISTS, so each store checks.
pub const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    (
        "adclick_billing_runs",
        "kind",
        "TEXT NOT NULL DEFAULT 'bill'",
    ),
    (
        "adclick_billing_runs",
        "provisional",
        "BOOLEAN NOT NULL DEFAULT FALSE",
    ),
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
pub const INSERT_ADJUSTMENT: &str = "INSERT INTO adclick_bill_adjustments (run_id, campaign_id, hour_start_ms, clicks_delta, billable_delta, fraud_delta, duplicates_delta, reused_ids_delta, cpc_micros, spend_micros_delta) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
pub const SELECT_ADJUSTMENTS: &str = "SELECT run_id, campaign_id, hour_start_ms, clicks_delta, billable_delta, fraud_delta, duplicates_delta, reused_ids_delta, cpc_micros, spend_micros_delta FROM adclick_bill_adjustments WHERE hour_start_ms >= $1 AND hour_start_ms < $2 ORDER BY run_id, campaign_id, hour_start_ms";
/// The periods of the bill runs that share an hour with `[$1, $2)`. (SQLite numbers `$N`
/// parameters in order of appearance, so every statement names `$1` first.)
pub const SELECT_BILL_PERIODS: &str = "SELECT period_from_ms, period_to_ms FROM adclick_billing_runs WHERE kind = 'bill' AND period_to_ms > $1 AND period_from_ms < $2 ORDER BY period_from_ms";
pub const INSERT_RUN: &str = "INSERT INTO adclick_billing_runs (run_id, period_from_ms, period_to_ms, fraud_list_version, input_files, rows, billable, spend_micros, created_at_ms, kind, provisional) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
pub const SELECT_RUNS: &str = "SELECT run_id, period_from_ms, period_to_ms, fraud_list_version, input_files, rows, billable, spend_micros, created_at_ms, kind, provisional FROM adclick_billing_runs ORDER BY run_id";
pub const NEXT_RUN_ID: &str = "SELECT COALESCE(MAX(run_id), 0) + 1 FROM adclick_billing_runs";

/// An adjustment's columns as SQL integers, in the order of `INSERT_ADJUSTMENT`.
pub fn adjustment_values(
    adjustment: &Adjustment,
    run_id: u64,
) -> Result<[i64; 10], BillingStoreError> {
    Ok([
        to_sql("run_id", run_id)?,
        to_sql("campaign_id", adjustment.key.campaign_id.0)?,
        to_sql("hour_start_ms", adjustment.key.hour_start_ms)?,
        adjustment.clicks_delta,
        adjustment.billable_delta,
        adjustment.fraud_delta,
        adjustment.duplicates_delta,
        adjustment.reused_ids_delta,
        to_sql("cpc_micros", adjustment.cpc_micros)?,
        adjustment.spend_micros_delta,
    ])
}

/// The columns of `SELECT_ADJUSTMENTS`.
pub fn adjustment_from_values(values: [i64; 10]) -> Result<(u64, Adjustment), BillingStoreError> {
    Ok((
        from_sql("run_id", values[0])?,
        Adjustment {
            key: BillKey {
                campaign_id: CampaignId(from_sql("campaign_id", values[1])?),
                hour_start_ms: from_sql("hour_start_ms", values[2])?,
            },
            clicks_delta: values[3],
            billable_delta: values[4],
            fraud_delta: values[5],
            duplicates_delta: values[6],
            reused_ids_delta: values[7],
            cpc_micros: from_sql("cpc_micros", values[8])?,
            spend_micros_delta: values[9],
        },
    ))
}

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

/// The columns of `SELECT_RUNS`: the integers (run_id, period_from_ms, period_to_ms,
/// fraud_list_version, rows, billable, spend_micros, created_at_ms), then the text and flag
/// columns.
pub fn run_from_values(
    numbers: [i64; 8],
    input_files: &str,
    kind: &str,
    provisional: bool,
) -> Result<(u64, RunRecord), BillingStoreError> {
    let input_files =
        serde_json::from_str(input_files).map_err(|error| BillingStoreError::Invalid {
            message: format!("adclick_billing_runs.input_files is not a JSON list: {error}"),
        })?;
    Ok((
        from_sql("run_id", numbers[0])?,
        RunRecord {
            kind: RunKind::from_sql(kind)?,
            period_from_ms: from_sql("period_from_ms", numbers[1])?,
            period_to_ms: from_sql("period_to_ms", numbers[2])?,
            fraud_list_version: from_sql("fraud_list_version", numbers[3])?,
            input_files,
            rows: from_sql("rows", numbers[4])?,
            billable: from_sql("billable", numbers[5])?,
            spend_micros: from_sql("spend_micros", numbers[6])?,
            created_at_ms: from_sql("created_at_ms", numbers[7])?,
            provisional,
        },
    ))
}

/// What a store reads of a period: the bill runs sharing an hour with it, its billed rows and
/// its adjustments (by run). Read inside a run's transaction, it is what the run is planned on.
#[derive(Clone, Debug, Default)]
pub struct PeriodState {
    pub bill_periods: Vec<(u64, u64)>,
    pub billed: Vec<BilledRow>,
    pub adjustments: Vec<(u64, Adjustment)>,
}

impl PeriodState {
    pub fn plan(
        &self,
        run: &RunInput,
        rows: &[BilledRow],
    ) -> Result<crate::correction::RunPlan, BillingStoreError> {
        crate::correction::plan_run(
            run,
            rows,
            &self.bill_periods,
            &self.billed,
            &self.adjustments,
        )
    }
}

pub fn rows_to_map(rows: &[BilledRow]) -> BTreeMap<BillKey, HourBill> {
    rows.iter().map(|row| (row.key, row.bill)).collect()
}
