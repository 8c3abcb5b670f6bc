//! The embedded billing store: one SQLite file (or memory), the same schema as PostgreSQL.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use adclick_core::ids::CampaignId;
use async_trait::async_trait;
use rusqlite::{Connection, params};

use crate::store::*;

pub struct SqliteBillingStore {
    connection: Arc<Mutex<Connection>>,
}

fn unavailable(error: rusqlite::Error) -> BillingStoreError {
    BillingStoreError::Unavailable {
        message: format!("sqlite: {error}"),
    }
}

impl SqliteBillingStore {
    pub fn open(path: &Path) -> Result<SqliteBillingStore, BillingStoreError> {
        let connection =
            Connection::open(path).map_err(|error| BillingStoreError::Unavailable {
                message: format!("sqlite {}: {error}", path.display()),
            })?;
        Ok(SqliteBillingStore {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    pub fn in_memory() -> Result<SqliteBillingStore, BillingStoreError> {
        let connection = Connection::open_in_memory().map_err(unavailable)?;
        Ok(SqliteBillingStore {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// The period's state in one read transaction (one snapshot).
    async fn period(&self, from_ms: u64, to_ms: u64) -> Result<PeriodState, BillingStoreError> {
        self.with(move |connection| {
            let transaction = connection.transaction().map_err(unavailable)?;
            let state = load_period(&transaction, from_ms, to_ms)?;
            transaction.commit().map_err(unavailable)?;
            Ok(state)
        })
        .await
    }

    /// Runs `work` on the connection off the async threads (SQLite calls block).
    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, BillingStoreError> + Send + 'static,
    ) -> Result<T, BillingStoreError> {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().expect("sqlite lock");
            work(&mut connection)
        })
        .await
        .map_err(|error| BillingStoreError::Unavailable {
            message: format!("sqlite task: {error}"),
        })?
    }
}

/// The period's bill runs, billed rows and adjustments, read on `connection` (inside the
/// caller's transaction).
fn load_period(
    connection: &Connection,
    from_ms: u64,
    to_ms: u64,
) -> Result<PeriodState, BillingStoreError> {
    let range = (to_sql("from_ms", from_ms)?, to_sql("to_ms", to_ms)?);
    let mut state = PeriodState::default();
    let mut statement = connection
        .prepare(SELECT_BILL_PERIODS)
        .map_err(unavailable)?;
    let periods = statement
        .query_map(params![range.0, range.1], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .map_err(unavailable)?;
    for period in periods {
        let (from, to) = period.map_err(unavailable)?;
        state.bill_periods.push((
            from_sql("period_from_ms", from)?,
            from_sql("period_to_ms", to)?,
        ));
    }
    let mut statement = connection.prepare(SELECT_ROWS).map_err(unavailable)?;
    let rows = statement
        .query_map(params![range.0, range.1], |row| {
            let mut values = [0i64; 9];
            for (index, value) in values.iter_mut().enumerate() {
                *value = row.get(index)?;
            }
            Ok(values)
        })
        .map_err(unavailable)?;
    for values in rows {
        state
            .billed
            .push(row_from_values(values.map_err(unavailable)?)?);
    }
    let mut statement = connection
        .prepare(SELECT_ADJUSTMENTS)
        .map_err(unavailable)?;
    let adjustments = statement
        .query_map(params![range.0, range.1], |row| {
            let mut values = [0i64; 10];
            for (index, value) in values.iter_mut().enumerate() {
                *value = row.get(index)?;
            }
            Ok(values)
        })
        .map_err(unavailable)?;
    for values in adjustments {
        state
            .adjustments
            .push(adjustment_from_values(values.map_err(unavailable)?)?);
    }
    Ok(state)
}

fn has_column(
    connection: &Connection,
    table: &str,
    column: &str,
) -> Result<bool, BillingStoreError> {
    let count: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
            params![table, column],
            |row| row.get(0),
        )
        .map_err(unavailable)?;
    Ok(count > 0)
}

#[async_trait]
impl BillingStore for SqliteBillingStore {
    async fn migrate(&self) -> Result<(), BillingStoreError> {
        self.with(|connection| {
            for statement in SCHEMA {
                connection.execute(statement, []).map_err(unavailable)?;
            }
            for (table, column, definition) in ADDED_COLUMNS {
                if !has_column(connection, table, column)? {
                    connection
                        .execute(
                            &format!("ALTER TABLE {table} ADD COLUMN {column} {definition}"),
                            [],
                        )
                        .map_err(unavailable)?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn prices(&self) -> Result<BTreeMap<CampaignId, u64>, BillingStoreError> {
        self.with(|connection| {
            let mut statement = connection
                .prepare("SELECT campaign_id, cpc_micros FROM adclick_campaigns")
                .map_err(unavailable)?;
            let rows = statement
                .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)))
                .map_err(unavailable)?;
            let mut prices = BTreeMap::new();
            for row in rows {
                let (campaign, cpc) = row.map_err(unavailable)?;
                prices.insert(
                    CampaignId(from_sql("campaign_id", campaign)?),
                    from_sql("cpc_micros", cpc)?,
                );
            }
            Ok(prices)
        })
        .await
    }

    async fn set_price(
        &self,
        campaign: CampaignId,
        cpc_micros: u64,
    ) -> Result<(), BillingStoreError> {
        let values = (
            to_sql("campaign_id", campaign.0)?,
            to_sql("cpc_micros", cpc_micros)?,
        );
        self.with(move |connection| {
            connection
                .execute(
                    "INSERT INTO adclick_campaigns (campaign_id, cpc_micros) VALUES ($1, $2) \
                     ON CONFLICT (campaign_id) DO UPDATE SET cpc_micros = excluded.cpc_micros",
                    params![values.0, values.1],
                )
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn write_run(
        &self,
        run: &RunInput,
        rows: &[BilledRow],
        fail_before_commit: bool,
    ) -> Result<WrittenRun, BillingStoreError> {
        let (run, rows) = (run.clone(), rows.to_vec());
        self.with(move |connection| {
            // IMMEDIATE: take the write lock now, so two runs never interleave and a
            // correction is never computed against a stale bill.
            let transaction = connection
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let run_id: i64 = transaction
                .query_row(NEXT_RUN_ID, [], |row| row.get(0))
                .map_err(unavailable)?;
            let run_id = from_sql("run_id", run_id)?;
            let plan = load_period(&transaction, run.period_from_ms, run.period_to_ms)?
                .plan(&run, &rows)?;
            {
                let mut insert = transaction.prepare(INSERT_ROW).map_err(unavailable)?;
                for row in &plan.rows {
                    insert
                        .execute(rusqlite::params_from_iter(row_values(row, run_id)?))
                        .map_err(unavailable)?;
                }
                let mut insert = transaction
                    .prepare(INSERT_ADJUSTMENT)
                    .map_err(unavailable)?;
                for adjustment in &plan.adjustments {
                    insert
                        .execute(rusqlite::params_from_iter(adjustment_values(
                            adjustment, run_id,
                        )?))
                        .map_err(unavailable)?;
                }
            }
            let (head, files, tail) = run_values(&plan.record)?;
            transaction
                .execute(
                    INSERT_RUN,
                    params![
                        to_sql("run_id", run_id)?,
                        head[0],
                        head[1],
                        head[2],
                        files,
                        tail[0],
                        tail[1],
                        tail[2],
                        tail[3],
                        plan.record.kind.as_sql(),
                        plan.record.provisional
                    ],
                )
                .map_err(unavailable)?;
            if fail_before_commit {
                // Dropping the transaction rolls it back, as a crash would.
                return Err(BillingStoreError::InjectedBeforeCommit);
            }
            transaction.commit().map_err(unavailable)?;
            Ok(plan.written(run_id))
        })
        .await
    }

    async fn hourly(&self, from_ms: u64, to_ms: u64) -> Result<Vec<BilledRow>, BillingStoreError> {
        let state = self.period(from_ms, to_ms).await?;
        crate::correction::standing(&state.billed, &state.adjustments)
    }

    async fn billed(&self, from_ms: u64, to_ms: u64) -> Result<Vec<BilledRow>, BillingStoreError> {
        Ok(self.period(from_ms, to_ms).await?.billed)
    }

    async fn adjustments(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<(u64, Adjustment)>, BillingStoreError> {
        Ok(self.period(from_ms, to_ms).await?.adjustments)
    }

    async fn runs(&self) -> Result<Vec<(u64, RunRecord)>, BillingStoreError> {
        self.with(|connection| {
            let mut statement = connection.prepare(SELECT_RUNS).map_err(unavailable)?;
            let rows = statement
                .query_map([], |row| {
                    let numbers = [
                        row.get::<_, i64>(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(5)?,
                        row.get(6)?,
                        row.get(7)?,
                        row.get(8)?,
                    ];
                    Ok((
                        numbers,
                        row.get::<_, String>(4)?,
                        row.get::<_, String>(9)?,
                        row.get::<_, bool>(10)?,
                    ))
                })
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for row in rows {
                let (numbers, files, kind, provisional) = row.map_err(unavailable)?;
                out.push(run_from_values(numbers, &files, &kind, provisional)?);
            }
            Ok(out)
        })
        .await
    }
}
