//! The billing job: bill a closed period from its clicks, price it, write it in one transaction.
//!
//! `bill_from_archive` is the whole job over the Parquet archive: it judges the archive first
//! (`crate::completeness`: every partition caught up past the period's end plus the grace), and
//! refuses an incomplete one unless told to bill provisionally.

use std::collections::BTreeMap;
use std::sync::Arc;

use adclick_core::billing::{BillKey, BillableClick, FraudSchedule, HourBill, PeriodBiller};
use adclick_core::codec;
use adclick_core::ids::{CampaignId, PartitionId};
use adclick_core::limits::HOUR_MS;
use adclick_engine::seams::{BlobStore, Log, read_partition};

use crate::completeness::{self, ArchiveCompleteness, PartitionsUnknown};
use crate::store::{
    Adjustment, BilledRow, BillingStore, BillingStoreError, Finality, RunInput, RunRecord,
};

#[derive(Clone, Debug)]
pub struct BillingJob {
    pub from_ms: u64,
    pub to_ms: u64,
    /// The period closes this long after its end, so late clicks land first.
    pub grace_ms: u64,
    pub clicks_per_ip_per_minute_max: u32,
    /// The list each click is judged with: the workers' own, per partition and offset.
    pub fraud: FraudSchedule,
    /// Where `fraud` came from (list and history keys), for the audit record.
    pub fraud_inputs: Vec<String>,
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
    #[error(
        "the archive is behind for the period ending at {to_ms}: every partition must be caught up to {} (the period's end plus the {grace_ms} ms billing grace), and {} of {} are not: {}",
        completeness.needed_ms,
        completeness.behind.len(),
        completeness.partitions,
        completeness.describe_behind()
    )]
    ArchiveIncomplete {
        to_ms: u64,
        grace_ms: u64,
        completeness: Box<ArchiveCompleteness>,
    },
    #[error(transparent)]
    PartitionsUnknown(#[from] PartitionsUnknown),
    #[error(
        "the workers have not checkpointed past every click of the period, so the fraud list that judges them is not settled: {}; bill once they have caught up, or pass --allow-incomplete to bill provisionally",
        describe_unconfirmed(unconfirmed)
    )]
    JudgementUnsettled {
        unconfirmed: BTreeMap<PartitionId, u64>,
    },
    #[error(transparent)]
    Store(#[from] BillingStoreError),
    #[error("reading the clicks: {0}")]
    Input(String),
}

fn describe_unconfirmed(unconfirmed: &BTreeMap<PartitionId, u64>) -> String {
    let parts: Vec<String> = unconfirmed
        .iter()
        .map(|(partition, clicks)| format!("partition {partition}: {clicks} clicks ahead"))
        .collect();
    parts.join(", ")
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
            self.fraud.clone(),
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
        read_partition(log, partition, end, |offset, bytes| {
            if let Ok(click) = codec::decode(bytes) {
                biller.on_click(partition, offset, (&click).into());
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
                row.offset,
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
    /// The period's bill as it stands once the run is in.
    pub rows: Vec<BilledRow>,
    /// A correction's differences (none for a bill).
    pub adjustments: Vec<Adjustment>,
}

/// Prices the period's bill and writes it in one transaction: a bill if the period is not
/// billed yet, else a correction holding the differences (`crate::store`).
pub async fn write_bill(
    store: &dyn BillingStore,
    job: &BillingJob,
    hours: &BTreeMap<BillKey, HourBill>,
    input_files: Vec<String>,
    now_ms: u64,
    finality: Finality,
) -> Result<BillingOutcome, BillingError> {
    let prices = store.prices().await?;
    let rows = price(hours, &prices)?;
    let input = RunInput {
        period_from_ms: job.from_ms,
        period_to_ms: job.to_ms,
        // The newest version any click was judged with; `input_files` names them all.
        fraud_list_version: job.fraud.versions().last().map_or(0, |version| version.0),
        input_files: input_files
            .into_iter()
            .chain(job.fraud_inputs.iter().cloned())
            .collect(),
        created_at_ms: now_ms,
        finality,
    };
    let written = store.write_run(&input, &rows, false).await?;
    Ok(BillingOutcome {
        run_id: written.run_id,
        record: written.record,
        rows: written.rows,
        adjustments: written.adjustments,
    })
}

/// How `bill_from_archive` judges the archive.
#[derive(Clone, Default)]
pub struct ArchiveGate {
    /// The log's partition count (`--partitions`), for archives whose manifests do not record
    /// it; the larger of this and what they record is judged.
    pub partitions: Option<u32>,
    /// Bill even when a partition is behind; the run is then marked provisional.
    pub allow_incomplete: bool,
    /// The log takes no appends after this processing time (the finished run of `adclick
    /// run`): an archive caught up past it holds every click the period will ever have.
    pub log_sealed_at_ms: Option<u64>,
    /// The workers' checkpoint store: judge each click with the fraud list they used for it
    /// (`crate::workers_lists`) rather than the job's one list.
    pub checkpoints: Option<Arc<dyn BlobStore>>,
}

impl std::fmt::Debug for ArchiveGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveGate")
            .field("partitions", &self.partitions)
            .field("allow_incomplete", &self.allow_incomplete)
            .field("log_sealed_at_ms", &self.log_sealed_at_ms)
            .field("checkpoints", &self.checkpoints.is_some())
            .finish()
    }
}

/// What `bill_from_archive` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ArchiveBill {
    #[serde(flatten)]
    pub outcome: BillingOutcome,
    pub completeness: ArchiveCompleteness,
    pub exceptions: adclick_archive::ExceptionReport,
    /// Clicks read from the archive for the period.
    pub clicks_read: u64,
    /// Per partition, clicks past the workers' last checkpoint (billed with `--allow-incomplete`
    /// only): their fraud list is not settled yet.
    pub unsettled_judgement: BTreeMap<PartitionId, u64>,
}

impl BillingJob {
    /// The processing time every partition's archive must have caught up to: the period's end
    /// plus the grace, or the log's seal if that comes first.
    pub fn archive_needed_ms(&self, log_sealed_at_ms: Option<u64>) -> u64 {
        let closes_at_ms = self.to_ms.saturating_add(self.grace_ms);
        log_sealed_at_ms.map_or(closes_at_ms, |sealed| sealed.min(closes_at_ms))
    }
}

/// The whole job over the archive: judge it, bill the period from its files, write the run
/// (provisional when billed incomplete), and list the period's exceptions.
pub async fn bill_from_archive(
    store: &dyn BillingStore,
    blobs: &dyn BlobStore,
    job: &BillingJob,
    gate: ArchiveGate,
    now_ms: u64,
) -> Result<ArchiveBill, BillingError> {
    let manifests = adclick_archive::manifest::load_all(blobs)
        .await
        .map_err(|error| BillingError::Input(error.to_string()))?;
    let needed_ms = job.archive_needed_ms(gate.log_sealed_at_ms);
    let completeness = completeness::judge(&manifests, gate.partitions, needed_ms)?;
    if !completeness.is_complete() && !gate.allow_incomplete {
        return Err(BillingError::ArchiveIncomplete {
            to_ms: job.to_ms,
            grace_ms: job.grace_ms,
            completeness: Box::new(completeness),
        });
    }
    let mut job = job.clone();
    if let Some(checkpoints) = &gate.checkpoints {
        let (schedule, inputs) = crate::workers_lists::workers_schedule(
            checkpoints.clone(),
            completeness.partitions,
            job.fraud.fallback().clone(),
        )
        .await?;
        job.fraud = schedule;
        job.fraud_inputs.extend(inputs);
    }
    // Read after the judgement: the files are at least what the judged manifests listed.
    let mut biller = job.biller();
    let inputs = feed_from_archive(blobs, &mut biller, job.from_ms, job.to_ms).await?;
    let unsettled_judgement = biller.unconfirmed().clone();
    let unsettled = !unsettled_judgement.is_empty();
    if unsettled && !gate.allow_incomplete {
        return Err(BillingError::JudgementUnsettled {
            unconfirmed: unsettled_judgement,
        });
    }
    let exceptions = adclick_archive::list_exceptions(blobs, job.from_ms, job.to_ms)
        .await
        .map_err(|error| BillingError::Input(error.to_string()))?;
    let hours = biller.finish();
    let clicks_read = hours.values().map(|bill| bill.clicks).sum();
    let finality = if completeness.is_complete() && !unsettled {
        Finality::Final
    } else {
        Finality::Provisional
    };
    let outcome = write_bill(store, &job, &hours, inputs, now_ms, finality).await?;
    Ok(ArchiveBill {
        outcome,
        completeness,
        exceptions,
        clicks_read,
        unsettled_judgement,
    })
}
