//! `adclick bill` and `adclick reconcile`: the slow path's commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use adclick_billing::job::{ArchiveBill, ArchiveGate, BillingJob, bill_from_archive};
use adclick_billing::postgres::PostgresBillingStore;
use adclick_billing::reconcile::{BillingLists, reconcile, render_table};
use adclick_billing::sqlite::SqliteBillingStore;
use adclick_billing::store::{BillingStore, RunKind, rows_to_map};
use adclick_billing::workers_lists::judged_as_workers;
use adclick_core::billing::FraudSchedule;
use adclick_core::fraud::FraudList;
use adclick_core::ids::CampaignId;
use adclick_engine::clock::SystemClock;
use adclick_engine::seams::{Clock, RealtimeStore};
use adclick_io::blobs::{BlobConfig, ObjectBlobStore};
use adclick_io::redis_store::{KeySpace, RedisConfig, RedisStore};
use anyhow::Context;

#[derive(clap::Args)]
pub struct BillArgs {
    /// Period start, ms since the epoch, on a whole hour.
    #[arg(long)]
    pub from: u64,
    /// Period end (exclusive), ms since the epoch, on a whole hour.
    #[arg(long)]
    pub to: u64,
    /// Where the archiver wrote: file:///dir or s3://bucket/prefix.
    #[arg(long)]
    pub archive: String,
    /// `sqlite:PATH` (embedded, the default) or a PostgreSQL URL or key=value string.
    #[arg(long, default_value = "sqlite:adclick-billing.db")]
    pub db: String,
    /// The workers' checkpoint store (`[checkpoints] url` of `adclick serve`): each click is
    /// judged with the fraud-list version the workers used for it, read back from there.
    #[arg(long)]
    pub checkpoints: Option<String>,
    /// The fraud list for clicks of partitions with no checkpoint history, and for every click
    /// without --checkpoints (`version N`, then `ip`/`ua` lines).
    #[arg(long)]
    pub fraud_list: Option<PathBuf>,
    /// `campaign_id,cpc_micros` lines, loaded into adclick_campaigns before billing.
    #[arg(long)]
    pub prices: Option<PathBuf>,
    /// The billing grace: the period closes this long after its end, and only once every
    /// partition's archive has caught up to that time (its manifest's `caught_up_to_ms`).
    #[arg(long, default_value_t = 3_600_000)]
    pub grace_ms: u64,
    /// The log's partition count (engine.partitions). Needed only when the manifests do not
    /// record it (written by an older archiver); a partition with no manifest is behind.
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Bill even if some partition's archive is behind; the run is marked provisional, and a
    /// later `adclick bill` of the period corrects it.
    #[arg(long)]
    pub allow_incomplete: bool,
    /// The rate rule, as the workers ran it (engine.clicks_per_ip_per_minute_max).
    #[arg(long, default_value_t = adclick_core::operator::AggregatorConfig::default().clicks_per_ip_per_minute_max)]
    pub clicks_per_ip_per_minute_max: u32,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ReconcileArgs {
    #[arg(long)]
    pub from: u64,
    #[arg(long)]
    pub to: u64,
    #[arg(long, default_value = "sqlite:adclick-billing.db")]
    pub db: String,
    /// The fast path's Redis, e.g. redis://127.0.0.1:6379/
    #[arg(long)]
    pub redis: String,
    #[arg(long, default_value = "adclick")]
    pub redis_prefix: String,
    /// engine.partitions of the deployment.
    #[arg(long)]
    pub partitions: u32,
    /// The fraud-list versions the workers ran in the period, comma-separated; unused when the
    /// billing run judged as the workers did (`adclick bill --checkpoints`).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub fast_fraud_list_versions: Vec<u64>,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

async fn open_store(db: &str) -> anyhow::Result<Box<dyn BillingStore>> {
    let store: Box<dyn BillingStore> = match db.strip_prefix("sqlite:") {
        Some(path) => Box::new(SqliteBillingStore::open(Path::new(path))?),
        None => Box::new(PostgresBillingStore::connect(db).await?),
    };
    store.migrate().await?;
    Ok(store)
}

fn load_prices(path: &Path) -> anyhow::Result<Vec<(CampaignId, u64)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--prices {}", path.display()))?;
    let mut prices = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("campaign_id") {
            continue;
        }
        let parsed = line.split_once(',').and_then(|(campaign, cpc)| {
            Some((
                CampaignId(campaign.trim().parse().ok()?),
                cpc.trim().parse().ok()?,
            ))
        });
        let Some(price) = parsed else {
            anyhow::bail!(
                "{}:{}: {line:?} is not `campaign_id,cpc_micros` (two unsigned integers)",
                path.display(),
                index + 1
            );
        };
        prices.push(price);
    }
    Ok(prices)
}

pub fn bill(args: BillArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let fraud_list = match &args.fraud_list {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--fraud-list {}", path.display()))?;
                FraudList::parse(&text)
                    .map_err(|error| anyhow::anyhow!("--fraud-list {}: {error}", path.display()))?
            }
            None => FraudList::empty(),
        };
        let job = BillingJob {
            from_ms: args.from,
            to_ms: args.to,
            grace_ms: args.grace_ms,
            clicks_per_ip_per_minute_max: args.clicks_per_ip_per_minute_max,
            fraud: FraudSchedule::single(Arc::new(fraud_list)),
            fraud_inputs: Vec::new(),
        };
        let now_ms = SystemClock.now_ms();
        job.check(now_ms)?;
        let store = open_store(&args.db).await?;
        if let Some(path) = &args.prices {
            for (campaign, cpc) in load_prices(path)? {
                store.set_price(campaign, cpc).await?;
            }
        }
        let blobs = ObjectBlobStore::open(&BlobConfig {
            url: args.archive.clone(),
            options: Default::default(),
        })?;
        let checkpoints = match &args.checkpoints {
            Some(url) => {
                let config = BlobConfig {
                    url: url.clone(),
                    options: Default::default(),
                };
                let blobs = ObjectBlobStore::open(&config).with_context(|| format!("--checkpoints {url}"))?;
                Some(Arc::new(blobs) as Arc<dyn adclick_engine::seams::BlobStore>)
            }
            None => None,
        };
        let gate = ArchiveGate {
            partitions: args.partitions,
            allow_incomplete: args.allow_incomplete,
            log_sealed_at_ms: None,
            checkpoints,
        };
        let started = std::time::Instant::now();
        let billed = bill_from_archive(store.as_ref(), &blobs, &job, gate, now_ms)
            .await
            .map_err(|error| match error {
                adclick_billing::job::BillingError::ArchiveIncomplete { .. } => anyhow::anyhow!(
                    "{error}\nnothing was billed: wait for the archivers, or pass --allow-incomplete to bill provisionally"
                ),
                error => error.into(),
            })?;
        print_outcome(&job, &billed, started.elapsed().as_secs_f64());
        print_exceptions(&billed.exceptions);
        if let Some(path) = &args.json {
            // The outcome's fields stay at the top level, as before; the archive's judgement
            // and the exceptions join them.
            std::fs::write(path, serde_json::to_string_pretty(&billed)?)
                .with_context(|| format!("--json {}", path.display()))?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn print_outcome(job: &BillingJob, billed: &ArchiveBill, elapsed_s: f64) {
    let outcome = &billed.outcome;
    let record = &outcome.record;
    let rate = billed.clicks_read as f64 / elapsed_s.max(1e-9);
    for note in &billed.completeness.notes {
        println!("note: {note}");
    }
    if record.provisional && !billed.completeness.is_complete() {
        println!(
            "provisional (--allow-incomplete): the archive is behind, {}; the audit row says so, and billing the period again once it has caught up writes the difference as a correction",
            billed.completeness.describe_behind()
        );
    }
    if !billed.unsettled_judgement.is_empty() {
        println!(
            "provisional (--allow-incomplete): {} clicks lie past the workers' last checkpoint, so the fraud list that judges them is not settled; billing the period again later corrects it",
            billed.unsettled_judgement.values().sum::<u64>()
        );
    }
    match record.kind {
        RunKind::Bill => println!(
            "billed [{}, {}): run {}, {} files, {} clicks read, {} (campaign, hour) rows, {} billable, spend {} micros; {rate:.0} clicks/s",
            job.from_ms,
            job.to_ms,
            outcome.run_id,
            record.input_files.len(),
            billed.clicks_read,
            record.rows,
            record.billable,
            record.spend_micros,
        ),
        RunKind::Correction if outcome.adjustments.is_empty() => println!(
            "[{}, {}) was billed already and nothing changed: correction run {} is on record with 0 adjustments ({} files, {} clicks read, {} billable, spend {} micros)",
            job.from_ms,
            job.to_ms,
            outcome.run_id,
            record.input_files.len(),
            billed.clicks_read,
            record.billable,
            record.spend_micros,
        ),
        RunKind::Correction => {
            let billable_delta: i64 = outcome.adjustments.iter().map(|a| a.billable_delta).sum();
            let spend_delta: i64 = outcome
                .adjustments
                .iter()
                .map(|a| a.spend_micros_delta)
                .sum();
            println!(
                "[{}, {}) was billed already: correction run {}, {} (campaign, hour) adjustments in adclick_bill_adjustments, {billable_delta:+} billable, spend {spend_delta:+} micros; the period now stands at {} billable, spend {} micros (the billed rows are unchanged)",
                job.from_ms,
                job.to_ms,
                outcome.run_id,
                outcome.adjustments.len(),
                record.billable,
                record.spend_micros,
            );
        }
    }
}

/// Records the archiver kept out of every file, read in this period: never billed, never
/// dropped in silence by the period's hour filter.
fn print_exceptions(exceptions: &adclick_archive::ExceptionReport) {
    if exceptions.is_empty() {
        return;
    }
    println!(
        "exceptions (not billed; the log holds them at these offsets): {} quarantined, {} undecodable",
        exceptions.quarantined, exceptions.undecodable
    );
    for (partition, exception) in exceptions.listed.iter().take(20) {
        println!(
            "  partition {partition} offset {}: {}",
            exception.offset.0, exception.reason
        );
    }
    if exceptions.listed.len() > 20 {
        println!(
            "  ... and {} more listed in the manifests",
            exceptions.listed.len() - 20
        );
    }
}

pub fn reconcile_command(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = open_store(&args.db).await?;
        let billed = rows_to_map(&store.hourly(args.from, args.to).await?);
        let runs = store.runs().await?;
        let run = runs
            .iter()
            .rev()
            .find(|(_, run)| run.period_from_ms <= args.from && run.period_to_ms >= args.to)
            .map(|(_, run)| run)
            .with_context(|| {
                format!(
                    "no billing run covers [{}, {}): run `adclick bill` first",
                    args.from, args.to
                )
            })?;
        let lists = if judged_as_workers(&run.input_files) {
            BillingLists::AsWorkers
        } else {
            BillingLists::One {
                billing: run.fraud_list_version,
                fast: args.fast_fraud_list_versions.iter().copied().collect(),
            }
        };
        let mut redis = RedisConfig::new(args.redis.clone());
        redis.prefix = args.redis_prefix.clone();
        let keys = KeySpace {
            partitions: args.partitions,
            window_ms: 60_000,
            salts_max: adclick_core::limits::SALTS_MAX,
        };
        let fast = RedisStore::connect(redis, keys).await?.scan().await?;
        let result = reconcile(&fast, &billed, args.from, args.to, &lists);
        print!("{}", render_table(&result));
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&result)?)
                .with_context(|| format!("--json {}", path.display()))?;
        }
        if result.holds() {
            println!("reconciled: 0 unexplained");
            Ok(ExitCode::SUCCESS)
        } else {
            println!(
                "{} (campaign, hour) rows unexplained",
                result.unexplained_hours()
            );
            Ok(ExitCode::FAILURE)
        }
    })
}
