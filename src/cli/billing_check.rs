//! The billing-equality check of `adclick run`: after the run drains, the log is archived to
//! Parquet, billed from the Parquet files into the embedded billing store (SQLite), compared
//! with the oracle per (campaign, hour), and reconciled with the fast path.
//!
//! Billing goes through the same archive gate as `adclick bill`, with no override: the run's
//! log is sealed (ingest closed before the archivers ran), so archivers caught up past the seal
//! hold every click the period will ever have, even though the period's end plus the grace is
//! still in the future.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use adclick_archive::{Archiver, ArchiverConfig};
use adclick_billing::job::{ArchiveGate, BillingJob, bill_from_archive};
use adclick_billing::reconcile::BillingLists;
use adclick_billing::reconcile::{reconcile, render_table};
use adclick_billing::sqlite::SqliteBillingStore;
use adclick_billing::store::{BilledRow, BillingStore};
use adclick_core::billing::FraudSchedule;
use adclick_core::ids::{CampaignId, PartitionId};
use adclick_core::limits::HOUR_MS;
use adclick_engine::clock::SystemClock;
use adclick_engine::embedded::MemoryBlobStore;
use adclick_engine::scenario::Scenario;
use adclick_engine::seams::{BlobStore, Clock};
use adclick_harness::oracle::Verdict;
use adclick_harness::run::RunArtifacts;

/// A flat price, so that every campaign is billable in the check.
const CHECK_CPC_MICROS: u64 = 250_000;

pub async fn billing_verdict(scenario: &Scenario, artifacts: &RunArtifacts) -> Verdict {
    match check(scenario, artifacts).await {
        Ok(verdict) => verdict,
        Err(error) => Verdict {
            invariant: "billing_equality",
            holds: false,
            checked: true,
            detail: format!("the billing pipeline failed: {error:#}"),
        },
    }
}

async fn check(scenario: &Scenario, artifacts: &RunArtifacts) -> anyhow::Result<Verdict> {
    let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    let files = archive_everything(artifacts, &blobs).await?;
    let Some(job) = billing_job(scenario, artifacts) else {
        return Ok(Verdict::skipped(
            "billing_equality",
            "the run logged no clicks",
        ));
    };
    let store = priced_store(artifacts).await?;
    let gate = archive_gate(artifacts);
    let billed =
        bill_from_archive(&store, blobs.as_ref(), &job, gate, SystemClock.now_ms()).await?;
    let stored = store.hourly(job.from_ms, job.to_ms).await?;
    let billable = billable_by_hour(&stored);
    let mismatches =
        adclick_harness::oracle::billing_mismatches(&artifacts.expected_hours, &billable);
    let reconciliation = reconcile(
        &artifacts.scan,
        &adclick_billing::store::rows_to_map(&stored),
        job.from_ms,
        job.to_ms,
        &BillingLists::AsWorkers,
    );
    let holds = mismatches.is_empty() && reconciliation.holds();
    let detail = if holds {
        let totals = reconciliation.totals;
        format!(
            "{} (campaign, hour) rows billed from {files} Parquet files = the oracle ({} billable); \
             reconciled: {} on time + {} late + {} unverified - {} duplicates and fraud among \
             the unverified, 0 unexplained",
            billable.len(),
            billed.outcome.record.billable,
            totals.on_time,
            totals.late,
            totals.unverified,
            totals.unverified_rejected
        )
    } else if !mismatches.is_empty() {
        format!(
            "billing differs from the oracle: {}",
            mismatches.join(" | ")
        )
    } else {
        format!(
            "{} (campaign, hour) rows unexplained:\n{}",
            reconciliation.unexplained_hours(),
            render_table(&reconciliation)
        )
    };
    Ok(Verdict {
        invariant: "billing_equality",
        holds,
        checked: true,
        detail,
    })
}

/// Every hour the run logged a click in, as one billing job; `None` if it logged none.
fn billing_job(scenario: &Scenario, artifacts: &RunArtifacts) -> Option<BillingJob> {
    let hours: BTreeSet<u64> = artifacts
        .expected_hours
        .keys()
        .map(|(_, hour)| *hour)
        .collect();
    let (first, last) = (hours.first()?, hours.last()?);
    Some(BillingJob {
        from_ms: *first,
        to_ms: last + HOUR_MS,
        grace_ms: 0,
        clicks_per_ip_per_minute_max: scenario.engine.clicks_per_ip_per_minute_max,
        fraud: FraudSchedule::single(artifacts.fraud_list.clone()),
        fraud_inputs: Vec::new(),
    })
}

/// The gate `adclick bill` applies, with no override: the sealed log stands in for the grace.
fn archive_gate(artifacts: &RunArtifacts) -> ArchiveGate {
    ArchiveGate {
        partitions: Some(artifacts.log.partitions()),
        allow_incomplete: false,
        log_sealed_at_ms: Some(artifacts.log_sealed_at_ms),
        // Judged as the workers judged, from their own checkpoint store, as `adclick bill
        // --checkpoints` does.
        checkpoints: Some(artifacts.checkpoints.clone()),
    }
}

/// Billing equality compares billed with the oracle's unique non-fraud clicks, per (campaign,
/// hour); rows billing stored with nothing billable are not billed rows.
fn billable_by_hour(stored: &[BilledRow]) -> BTreeMap<(CampaignId, u64), u64> {
    stored
        .iter()
        .filter(|row| row.bill.billable > 0)
        .map(|row| {
            (
                (row.key.campaign_id, row.key.hour_start_ms),
                row.bill.billable,
            )
        })
        .collect()
}

/// Archives every partition of the run's log to its end; returns the files written.
async fn archive_everything(
    artifacts: &RunArtifacts,
    blobs: &Arc<dyn BlobStore>,
) -> anyhow::Result<usize> {
    let mut files = 0;
    for partition in (0..artifacts.log.partitions()).map(PartitionId) {
        let end = artifacts.log.end_offset(partition).await?;
        let mut archiver = Archiver::open(
            partition,
            artifacts.log.clone(),
            blobs.clone(),
            Arc::new(SystemClock),
            ArchiverConfig::default(),
        )
        .await?;
        archiver.archive_until(end).await?;
        archiver.flush().await?;
        files += archiver.manifest().files().count();
    }
    Ok(files)
}

/// The embedded billing store, every campaign the oracle bills at the flat price; a campaign
/// billing bills and the oracle does not fails the run for its missing price, which names it.
async fn priced_store(artifacts: &RunArtifacts) -> anyhow::Result<SqliteBillingStore> {
    let campaigns: BTreeSet<CampaignId> = artifacts
        .expected_hours
        .keys()
        .map(|(campaign, _)| *campaign)
        .collect();
    let store = SqliteBillingStore::in_memory()?;
    store.migrate().await?;
    for campaign in &campaigns {
        store.set_price(*campaign, CHECK_CPC_MICROS).await?;
    }
    Ok(store)
}
