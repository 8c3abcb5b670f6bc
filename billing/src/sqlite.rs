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

#[async_trait]
impl BillingStore for SqliteBillingStore {
    async fn migrate(&self) -> Result<(), BillingStoreError> {
        self.with(|connection| {
            for statement in SCHEMA {
                connection.execute(statement, []).map_err(unavailable)?;
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
        run: &RunRecord,
        rows: &[BilledRow],
        fail_before_commit: bool,
    ) -> Result<u64, BillingStoreError> {
        let (run, rows) = (run.clone(), rows.to_vec());
        self.with(move |connection| {
            // IMMEDIATE: take the write lock now, so two runs never interleave.
            let transaction = connection
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let run_id: i64 = transaction
                .query_row(NEXT_RUN_ID, [], |row| row.get(0))
                .map_err(unavailable)?;
            transaction
                .execute(
                    DELETE_PERIOD,
                    params![
                        to_sql("period_from_ms", run.period_from_ms)?,
                        to_sql("period_to_ms", run.period_to_ms)?
                    ],
                )
                .map_err(unavailable)?;
            {
                let mut insert = transaction.prepare(INSERT_ROW).map_err(unavailable)?;
                for row in &rows {
                    let values = row_values(row, run_id as u64)?;
                    insert
                        .execute(rusqlite::params_from_iter(values))
                        .map_err(unavailable)?;
                }
            }
            let (head, files, tail) = run_values(&run)?;
            transaction
                .execute(
                    INSERT_RUN,
                    params![
                        run_id, head[0], head[1], head[2], files, tail[0], tail[1], tail[2],
                        tail[3]
                    ],
                )
                .map_err(unavailable)?;
            if fail_before_commit {
                // Dropping the transaction rolls it back, as a crash would.
                return Err(BillingStoreError::InjectedBeforeCommit);
            }
            transaction.commit().map_err(unavailable)?;
            Ok(run_id as u64)
        })
        .await
    }

    async fn hourly(&self, from_ms: u64, to_ms: u64) -> Result<Vec<BilledRow>, BillingStoreError> {
        let range = (to_sql("from_ms", from_ms)?, to_sql("to_ms", to_ms)?);
        self.with(move |connection| {
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
            let mut out = Vec::new();
            for values in rows {
                out.push(row_from_values(values.map_err(unavailable)?)?);
            }
            Ok(out)
        })
        .await
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
                    Ok((numbers, row.get::<_, String>(4)?))
                })
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for row in rows {
                let (numbers, files) = row.map_err(unavailable)?;
                out.push(run_from_values(numbers, &files)?);
            }
            Ok(out)
        })
        .await
    }
}
