//! The billing job: bill a closed period from its clicks, price it, write it in one transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use adclick_core::billing::{BillKey, BillableClick, HourBill, PeriodBiller};
use adclick_core::codec;
use adclick_core::fraud::FraudList;
use adclick_core::ids::{CampaignId, PartitionId};
use adclick_core::limits::HOUR_MS;
use adclick_engine::seams::{BlobStore, Log, read_partition};

use crate::store::{BilledRow, BillingStore, BillingStoreError, RunRecord};

#[derive(Clone, Debug)]
pub struct BillingJob {
    pub from_ms: u64,
    pub to_ms: u64,
    /// The period closes this long after its end, so late clicks land first.
    pub grace_ms: u64,
    pub clicks_per_ip_per_minute_max: u32,
    pub fraud_list: Arc<FraudList>,
}

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error(
        "the period [{from_ms}, {to_ms}) must start and end on whole hours (ms since the epoch, multiples of 3600000)"
    )]
    NotWholeHours { from_ms: u64, to_ms: u64 },
    #[error(
        "the period ending at {to_ms} closes at {closes_at_ms} (billing.grace_ms = {grace_ms} after its end); it is now {now_ms}"
    )]
    NotClosed {
        to_ms: u64,
        grace_ms: u64,
        closes_at_ms: u64,
        now_ms: u64,
    },
    #[error(
        "campaign {campaign} has {billable} billable clicks but no price (cpc_micros) in adclick_campaigns or the prices file; nothing was written"
    )]
    MissingPrice { campaign: u64, billable: u64 },
    #[error(
        "spend of campaign {campaign} in hour {hour_start_ms} overflows: {billable} clicks × {cpc_micros} micros"
    )]
    SpendOverflow {
        campaign: u64,
        hour_start_ms: u64,
        billable: u64,
        cpc_micros: u64,
    },
    #[error(transparent)]
    Store(#[from] BillingStoreError),
    #[error("reading the clicks: {0}")]
    Input(String),
}

impl BillingJob {
    pub fn check(&self, now_ms: u64) -> Result<(), BillingError> {
        if !self.from_ms.is_multiple_of(HOUR_MS)
            || !self.to_ms.is_multiple_of(HOUR_MS)
            || self.from_ms >= self.to_ms
        {
            return Err(BillingError::NotWholeHours {
                from_ms: self.from_ms,
                to_ms: self.to_ms,
            });
        }
        let closes_at_ms = self.to_ms + self.grace_ms;
        if now_ms < closes_at_ms {
            return Err(BillingError::NotClosed {
                to_ms: self.to_ms,
                grace_ms: self.grace_ms,
                closes_at_ms,
                now_ms,
            });
        }
        Ok(())
    }

    pub fn biller(&self) -> PeriodBiller {
        PeriodBiller::new(
            self.fraud_list.clone(),
            self.clicks_per_ip_per_minute_max,
            self.from_ms,
            self.to_ms,
        )
    }
}

/// Feeds every record of a log to the biller, partition by partition in offset order. Returns
/// the inputs' names (`log/pN@0..END`) for the audit record.
pub async fn feed_from_log(
    log: &dyn Log,
    biller: &mut PeriodBiller,
) -> Result<Vec<String>, BillingError> {
    let mut inputs = Vec::new();
    for partition in (0..log.partitions()).map(PartitionId) {
        let end = log
            .end_offset(partition)
            .await
            .map_err(|error| BillingError::Input(error.to_string()))?;
        // Undecodable records are counted by the workers; billing skips them too.
        read_partition(log, partition, end, |_, bytes| {
            if let Ok(click) = codec::decode(bytes) {
                biller.on_click(partition, (&click).into());
            }
        })
        .await
        .map_err(|error| BillingError::Input(error.to_string()))?;
        inputs.push(format!("log/p{}@0..{}", partition.0, end.0));
    }
    Ok(inputs)
}

/// Feeds the period's archived Parquet files to the biller: each partition's rows in offset
/// order (the order the workers saw them, which the per-partition rate rule depends on), read
/// with only the billing columns. Returns the files read, for the audit record.
///
/// A partition's rows are sorted in memory; at production sizes this wants a k-way merge of
/// the files, each already in offset order.
pub async fn feed_from_archive(
    blobs: &dyn BlobStore,
    biller: &mut PeriodBiller,
    from_ms: u64,
    to_ms: u64,
) -> Result<Vec<String>, BillingError> {
    let files = adclick_archive::list_committed(blobs, from_ms, to_ms)
        .await
        .map_err(|error| BillingError::Input(error.to_string()))?;
    let mut by_partition: BTreeMap<PartitionId, Vec<&adclick_archive::CommittedFile>> =
        BTreeMap::new();
    for file in &files {
        by_partition.entry(file.partition).or_default().push(file);
    }
    for (partition, files) in by_partition {
        let mut rows = Vec::new();
        for file in files {
            let bytes = blobs
                .get(&file.key)
                .await
                .map_err(|error| BillingError::Input(error.to_string()))?
                .ok_or_else(|| {
                    BillingError::Input(format!(
                        "{}: listed in the manifest of partition {partition} but missing",
                        file.key
                    ))
                })?;
            let read = adclick_archive::read_billing_rows(&file.key, bytes)
                .map_err(|error| BillingError::Input(error.to_string()))?;
            if read.len() as u64 != file.rows {
                return Err(BillingError::Input(format!(
                    "{}: holds {} rows, its manifest says {}",
                    file.key,
                    read.len(),
                    file.rows
                )));
            }
            rows.extend(read);
        }
        rows.sort_by_key(|row| row.offset);
        for row in &rows {
            biller.on_click(
                partition,
                BillableClick {
                    click_id: row.click_id,
                    campaign_id: row.campaign_id,
                    ip: row.ip,
                    user_agent: &row.user_agent,
                    event_time_ms: row.event_time_ms.0,
                },
            );
        }
    }
    Ok(files.into_iter().map(|file| file.key).collect())
}

/// Prices every billed hour. A campaign with billable clicks and no price fails the whole run.
pub fn price(
    hours: &BTreeMap<BillKey, HourBill>,
    prices: &BTreeMap<CampaignId, u64>,
) -> Result<Vec<BilledRow>, BillingError> {
    let mut rows = Vec::with_capacity(hours.len());
    for (key, bill) in hours {
        let cpc_micros = match prices.get(&key.campaign_id) {
            Some(cpc) => *cpc,
            None if bill.billable == 0 => 0,
            None => {
                let billable = hours
                    .iter()
                    .filter(|(other, _)| other.campaign_id == key.campaign_id)
                    .map(|(_, bill)| bill.billable)
                    .sum();
                return Err(BillingError::MissingPrice {
                    campaign: key.campaign_id.0,
                    billable,
                });
            }
        };
        let spend_micros =
            bill.billable
                .checked_mul(cpc_micros)
                .ok_or(BillingError::SpendOverflow {
                    campaign: key.campaign_id.0,
                    hour_start_ms: key.hour_start_ms,
                    billable: bill.billable,
                    cpc_micros,
                })?;
        rows.push(BilledRow {
            key: *key,
            bill: *bill,
            cpc_micros,
            spend_micros,
        });
    }
    Ok(rows)
}

/// What a run wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BillingOutcome {
    pub run_id: u64,
    pub record: RunRecord,
    pub rows: Vec<BilledRow>,
}

/// Prices the period's bill and writes it in one transaction (replacing any earlier run's rows
/// for the period).
pub async fn write_bill(
    store: &dyn BillingStore,
    job: &BillingJob,
    hours: &BTreeMap<BillKey, HourBill>,
    input_files: Vec<String>,
    now_ms: u64,
) -> Result<BillingOutcome, BillingError> {
    let prices = store.prices().await?;
    let rows = price(hours, &prices)?;
    let record = RunRecord {
        period_from_ms: job.from_ms,
        period_to_ms: job.to_ms,
        fraud_list_version: job.fraud_list.version().0,
        input_files,
        rows: rows.len() as u64,
        billable: rows.iter().map(|row| row.bill.billable).sum(),
        spend_micros: rows.iter().map(|row| row.spend_micros).sum(),
        created_at_ms: now_ms,
    };
    let run_id = store.write_run(&record, &rows, false).await?;
    Ok(BillingOutcome {
        run_id,
        record,
        rows,
    })
}
