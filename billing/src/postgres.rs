//! The production billing store on PostgreSQL (tokio-postgres).

use std::collections::BTreeMap;

use adclick_core::ids::CampaignId;
use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use crate::store::*;

pub struct PostgresBillingStore {
    client: Mutex<Client>,
}

fn unavailable(error: tokio_postgres::Error) -> BillingStoreError {
    BillingStoreError::Unavailable {
        message: format!("postgres: {error}"),
    }
}

impl PostgresBillingStore {
    /// Connects with a libpq-style string, e.g. `host=127.0.0.1 user=postgres dbname=test`.
    pub async fn connect(config: &str) -> Result<PostgresBillingStore, BillingStoreError> {
        let (client, connection) =
            tokio_postgres::connect(config, NoTls)
                .await
                .map_err(|error| BillingStoreError::Unavailable {
                    message: format!("cannot connect to postgres ({config}): {error}"),
                })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::error!(%error, "postgres connection closed");
            }
        });
        Ok(PostgresBillingStore {
            client: Mutex::new(client),
        })
    }
}

impl PostgresBillingStore {
    /// The period's state in one snapshot (a read-only repeatable-read transaction).
    async fn period(&self, from_ms: u64, to_ms: u64) -> Result<PeriodState, BillingStoreError> {
        let mut client = self.client.lock().await;
        let transaction = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(unavailable)?;
        let state = load_period(&transaction, from_ms, to_ms).await?;
        transaction.commit().await.map_err(unavailable)?;
        Ok(state)
    }

    /// Runs statements outside any run (administration, tests).
    pub async fn execute_batch(&self, statements: &str) -> Result<(), BillingStoreError> {
        self.client
            .lock()
            .await
            .batch_execute(statements)
            .await
            .map_err(unavailable)
    }
}

/// The period's bill runs, billed rows and adjustments, read in `transaction`.
async fn load_period(
    transaction: &tokio_postgres::Transaction<'_>,
    from_ms: u64,
    to_ms: u64,
) -> Result<PeriodState, BillingStoreError> {
    let range = (to_sql("from_ms", from_ms)?, to_sql("to_ms", to_ms)?);
    let mut bill_periods = Vec::new();
    for row in transaction
        .query(SELECT_BILL_PERIODS, &[&range.0, &range.1])
        .await
        .map_err(unavailable)?
    {
        bill_periods.push((
            from_sql("period_from_ms", row.get(0))?,
            from_sql("period_to_ms", row.get(1))?,
        ));
    }
    let mut billed = Vec::new();
    for row in transaction
        .query(SELECT_ROWS, &[&range.0, &range.1])
        .await
        .map_err(unavailable)?
    {
        let mut values = [0i64; 9];
        for (index, value) in values.iter_mut().enumerate() {
            *value = row.get(index);
        }
        billed.push(row_from_values(values)?);
    }
    let mut adjustments = Vec::new();
    for row in transaction
        .query(SELECT_ADJUSTMENTS, &[&range.0, &range.1])
        .await
        .map_err(unavailable)?
    {
        let mut values = [0i64; 10];
        for (index, value) in values.iter_mut().enumerate() {
            *value = row.get(index);
        }
        adjustments.push(adjustment_from_values(values)?);
    }
    Ok(PeriodState {
        bill_periods,
        billed,
        adjustments,
    })
}

async fn execute_all<const N: usize>(
    transaction: &tokio_postgres::Transaction<'_>,
    statement: &str,
    rows: impl IntoIterator<Item = [i64; N]>,
) -> Result<(), BillingStoreError> {
    let prepared = transaction.prepare(statement).await.map_err(unavailable)?;
    for values in rows {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
            .iter()
            .map(|value| value as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        transaction
            .execute(&prepared, &params)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

#[async_trait]
impl BillingStore for PostgresBillingStore {
    async fn migrate(&self) -> Result<(), BillingStoreError> {
        let client = self.client.lock().await;
        for statement in SCHEMA {
            client.batch_execute(statement).await.map_err(unavailable)?;
        }
        for (table, column, definition) in ADDED_COLUMNS {
            client
                .batch_execute(&format!(
                    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {definition}"
                ))
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn prices(&self) -> Result<BTreeMap<CampaignId, u64>, BillingStoreError> {
        let client = self.client.lock().await;
        let rows = client
            .query("SELECT campaign_id, cpc_micros FROM adclick_campaigns", &[])
            .await
            .map_err(unavailable)?;
        let mut prices = BTreeMap::new();
        for row in rows {
            prices.insert(
                CampaignId(from_sql("campaign_id", row.get(0))?),
                from_sql("cpc_micros", row.get(1))?,
            );
        }
        Ok(prices)
    }

    async fn set_price(
        &self,
        campaign: CampaignId,
        cpc_micros: u64,
    ) -> Result<(), BillingStoreError> {
        let (campaign, cpc) = (
            to_sql("campaign_id", campaign.0)?,
            to_sql("cpc_micros", cpc_micros)?,
        );
        let client = self.client.lock().await;
        client
            .execute(
                "INSERT INTO adclick_campaigns (campaign_id, cpc_micros) VALUES ($1, $2) \
                 ON CONFLICT (campaign_id) DO UPDATE SET cpc_micros = excluded.cpc_micros",
                &[&campaign, &cpc],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn write_run(
        &self,
        run: &RunInput,
        rows: &[BilledRow],
        fail_before_commit: bool,
    ) -> Result<WrittenRun, BillingStoreError> {
        let mut client = self.client.lock().await;
        let transaction = client.transaction().await.map_err(unavailable)?;
        // One billing run at a time, across processes: the second waits for the first, then
        // sees what it wrote, so a correction is never computed against a stale bill.
        transaction
            .batch_execute("LOCK TABLE adclick_billing_runs IN EXCLUSIVE MODE")
            .await
            .map_err(unavailable)?;
        let run_id: i64 = transaction
            .query_one(NEXT_RUN_ID, &[])
            .await
            .map_err(unavailable)?
            .get(0);
        let run_id = from_sql("run_id", run_id)?;
        let state = load_period(&transaction, run.period_from_ms, run.period_to_ms).await?;
        let plan = state.plan(run, rows)?;
        let billed = plan
            .rows
            .iter()
            .map(|row| row_values(row, run_id))
            .collect::<Result<Vec<_>, _>>()?;
        execute_all(&transaction, INSERT_ROW, billed).await?;
        let adjustments = plan
            .adjustments
            .iter()
            .map(|adjustment| adjustment_values(adjustment, run_id))
            .collect::<Result<Vec<_>, _>>()?;
        execute_all(&transaction, INSERT_ADJUSTMENT, adjustments).await?;
        let (head, files, tail) = run_values(&plan.record)?;
        let run_id_sql = to_sql("run_id", run_id)?;
        transaction
            .execute(
                INSERT_RUN,
                &[
                    &run_id_sql,
                    &head[0],
                    &head[1],
                    &head[2],
                    &files,
                    &tail[0],
                    &tail[1],
                    &tail[2],
                    &tail[3],
                    &plan.record.kind.as_sql(),
                    &plan.record.provisional,
                ],
            )
            .await
            .map_err(unavailable)?;
        if fail_before_commit {
            // Dropping the transaction rolls it back, as a crash would.
            return Err(BillingStoreError::InjectedBeforeCommit);
        }
        transaction.commit().await.map_err(unavailable)?;
        Ok(plan.written(run_id))
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
        let client = self.client.lock().await;
        let rows = client.query(SELECT_RUNS, &[]).await.map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let numbers = [
                    row.get(0),
                    row.get(1),
                    row.get(2),
                    row.get(3),
                    row.get(5),
                    row.get(6),
                    row.get(7),
                    row.get(8),
                ];
                run_from_values(numbers, row.get(4), row.get(9), row.get(10))
            })
            .collect()
    }
}
