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

#[async_trait]
impl BillingStore for PostgresBillingStore {
    async fn migrate(&self) -> Result<(), BillingStoreError> {
        let client = self.client.lock().await;
        for statement in SCHEMA {
            client.batch_execute(statement).await.map_err(unavailable)?;
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
        run: &RunRecord,
        rows: &[BilledRow],
        fail_before_commit: bool,
    ) -> Result<u64, BillingStoreError> {
        let mut client = self.client.lock().await;
        let transaction = client.transaction().await.map_err(unavailable)?;
        // One billing run at a time, across processes: the second waits for the first.
        transaction
            .batch_execute("LOCK TABLE adclick_billing_runs IN EXCLUSIVE MODE")
            .await
            .map_err(unavailable)?;
        let run_id: i64 = transaction
            .query_one(NEXT_RUN_ID, &[])
            .await
            .map_err(unavailable)?
            .get(0);
        let period = (
            to_sql("period_from_ms", run.period_from_ms)?,
            to_sql("period_to_ms", run.period_to_ms)?,
        );
        transaction
            .execute(DELETE_PERIOD, &[&period.0, &period.1])
            .await
            .map_err(unavailable)?;
        let insert = transaction.prepare(INSERT_ROW).await.map_err(unavailable)?;
        for row in rows {
            let values = row_values(row, run_id as u64)?;
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
                .iter()
                .map(|value| value as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            transaction
                .execute(&insert, &params)
                .await
                .map_err(unavailable)?;
        }
        let (head, files, tail) = run_values(run)?;
        transaction
            .execute(
                INSERT_RUN,
                &[
                    &run_id, &head[0], &head[1], &head[2], &files, &tail[0], &tail[1], &tail[2],
                    &tail[3],
                ],
            )
            .await
            .map_err(unavailable)?;
        if fail_before_commit {
            // Dropping the transaction rolls it back, as a crash would.
            return Err(BillingStoreError::InjectedBeforeCommit);
        }
        transaction.commit().await.map_err(unavailable)?;
        Ok(run_id as u64)
    }

    async fn hourly(&self, from_ms: u64, to_ms: u64) -> Result<Vec<BilledRow>, BillingStoreError> {
        let range = (to_sql("from_ms", from_ms)?, to_sql("to_ms", to_ms)?);
        let client = self.client.lock().await;
        let rows = client
            .query(SELECT_ROWS, &[&range.0, &range.1])
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let mut values = [0i64; 9];
                for (index, value) in values.iter_mut().enumerate() {
                    *value = row.get(index);
                }
                row_from_values(values)
            })
            .collect()
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
                run_from_values(numbers, row.get(4))
            })
            .collect()
    }
}
