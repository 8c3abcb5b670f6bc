//! `adclick run`: a real-time run of the whole engine on embedded defaults. An in-process
//! generator drives the ingest core, the in-process log, one supervised worker per partition and
//! the in-memory store; faults are real task kills, store errors and empty log reads (the
//! workers' reads only). At the end the oracle recomputes every count from the log and the
//! invariants are checked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use adclick_core::fraud::{FraudList, FraudRegistry};
use adclick_core::ids::PartitionId;
use adclick_engine::checkpoint::CheckpointStore;
use adclick_engine::clock::SystemClock;
use adclick_engine::embedded::{
    FileLog, FileLogConfig, MemoryBlobStore, MemoryLog, MemoryRealtimeStore,
};
use adclick_engine::fraud_lists::FraudListStore;
use adclick_engine::ingest::{Ack, IngestCore};
use adclick_engine::scenario::{Invariant, Scenario};
use adclick_engine::seams::{BlobStore, Clock, Log, RealtimeStore};
use adclick_engine::worker::{WorkerEnv, supervise};
use adclick_loadgen::Generator;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::faults::{EmptyReadLog, FaultRates, Faults, SimStore};
use crate::history::{RecordingLog, RecordingStore, StatusHistory};
use crate::measure::{Measurements, Recorder};
use crate::oracle::{self, Ledger, Verdict};

/// How often a tagged sample click measures freshness.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Polls the store for sample visibility every 50 ms, and records a timeline point every 500 ms,
/// until stopped (after the drain).
async fn run_sampler(
    recorder: Arc<Recorder>,
    log: Arc<dyn Log>,
    store: Arc<dyn RealtimeStore>,
    accepted: Arc<AtomicU64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = 0u64;
    while !*stop.borrow() {
        let with_timeline = tick.is_multiple_of(10);
        recorder
            .poll(
                log.as_ref(),
                store.as_ref(),
                accepted.load(Ordering::Relaxed),
                SystemClock.now_ms(),
                with_timeline,
            )
            .await;
        tick += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Sends one sample click with a durable ack and registers it for freshness. Returns the click
/// when the ingest took it (the ledger needs it).
async fn send_sample(
    ingest: IngestCore,
    log: Arc<dyn Log>,
    recorder: Arc<Recorder>,
    event: adclick_core::event::ClickEvent,
    partitions: Option<u32>,
) -> Option<adclick_core::event::ClickEvent> {
    let intended = Instant::now();
    let outcome = ingest
        .submit(std::slice::from_ref(&event), Ack::Durable)
        .await
        .ok()?;
    if outcome.accepted != 1 {
        return None;
    }
    // With salting on, the click's partition is not known here: no freshness sample then.
    if let Some(partitions) = partitions {
        let partition = adclick_core::partition::partition_for_campaign(
            event.campaign_id,
            adclick_core::ids::Salt(0),
            partitions,
        );
        if let Ok(end) = log.end_offset(partition).await {
            recorder.sample(partition, end.0, intended);
        }
    }
    Some(event)
}

#[derive(Clone, Default)]
pub struct RunOptions {
    pub progress: bool,
    /// Run on the file-backed log in this directory instead of the in-memory one.
    pub log_dir: Option<std::path::PathBuf>,
    /// A deliberately broken engine, for tests that prove the checks catch it.
    #[cfg(feature = "canaries")]
    pub canary: Option<adclick_engine::worker::Canary>,
}

#[derive(Debug, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub seed: u64,
    pub partitions: u32,
    pub target_rate_per_s: u64,
    pub traffic_s: f64,
    pub generated: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub busy_answers: u64,
    pub achieved_rate_per_s: f64,
    pub duplicates_dropped: u64,
    pub late_clicks: u64,
    pub fraud_clicks: u64,
    pub unique_billable_clicks: u64,
    pub worker_crashes_injected: u64,
    pub worker_restarts: u64,
    pub store_errors_injected: u64,
    pub drain_ms: u64,
    pub verdicts: Vec<Verdict>,
    pub passed: bool,
    pub measurements: Measurements,
    /// For checks that live outside this crate (billing and reconciliation, in `adclick run`).
    #[serde(skip)]
    pub artifacts: Option<RunArtifacts>,
}

/// What a finished run leaves behind: the log, the store's content, the fraud list, and the
/// oracle's unique non-fraud clicks per (campaign, hour start), both lanes, all salts.
pub struct RunArtifacts {
    pub log: Arc<dyn Log>,
    pub scan: Vec<(
        adclick_core::operator::Series,
        adclick_core::window::Lane,
        adclick_engine::seams::StoredCounts,
    )>,
    pub fraud_list: Arc<FraudList>,
    /// The workers' checkpoint store, which holds the fraud lists they judged with and their
    /// history per offset.
    pub checkpoints: Arc<dyn BlobStore>,
    pub expected_hours: std::collections::BTreeMap<(adclick_core::ids::CampaignId, u64), u64>,
    /// The clock reading once ingest had closed: nothing is appended to `log` after it, so an
    /// archive caught up past it holds every click the run will ever have.
    pub log_sealed_at_ms: u64,
}

impl std::fmt::Debug for RunArtifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunArtifacts")
            .field("series", &self.scan.len())
            .field("expected_hours", &self.expected_hours.len())
            .finish()
    }
}

/// Worker kills planned for the run: (ms from start, partition), sorted.
fn crash_schedule(scenario: &Scenario) -> Vec<(u64, PartitionId)> {
    let mut crashes: Vec<(u64, PartitionId)> = scenario
        .faults
        .worker_crashes
        .iter()
        .map(|crash| ((crash.at_s * 1000.0) as u64, PartitionId(crash.partition)))
        .collect();
    let per_min = scenario.faults.worker_crashes_per_min;
    if per_min > 0.0 {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(scenario.seed ^ 0xc4a5);
        let count = (per_min * scenario.traffic.duration_s / 60.0).ceil() as u64;
        let duration_ms = (scenario.traffic.duration_s * 1000.0) as u64;
        for _ in 0..count {
            let at = rng.random_range(0..duration_ms.max(1));
            crashes.push((
                at,
                PartitionId(rng.random_range(0..scenario.engine.partitions)),
            ));
        }
    }
    crashes.sort();
    crashes
}

pub async fn run_scenario(scenario: &Scenario, options: RunOptions) -> anyhow::Result<RunReport> {
    let partitions = scenario.engine.partitions;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let log: Arc<dyn Log> = match &options.log_dir {
        Some(dir) => Arc::new(FileLog::open(dir, partitions, FileLogConfig::default())?),
        None => Arc::new(MemoryLog::new(partitions)),
    };
    let memory_store: Arc<dyn RealtimeStore> = Arc::new(MemoryRealtimeStore::new());
    // Every status the store takes goes into the history, which the exactly-once check reads.
    let history = Arc::new(StatusHistory::default());
    let recording_store: Arc<dyn RealtimeStore> = Arc::new(RecordingStore {
        inner: memory_store.clone(),
        history: history.clone(),
        config: scenario.aggregator_config(),
    });
    // Real-time runs inject store errors and empty log reads only; the other faults are the
    // simulator's.
    let rates = FaultRates {
        store_error_rate: scenario.faults.store_error_rate,
        log_empty_read_rate: scenario.faults.log_empty_read_rate,
        ..FaultRates::default()
    };
    let faults = (rates.store_error_rate > 0.0 || rates.log_empty_read_rate > 0.0)
        .then(|| Arc::new(Faults::new(rates, scenario.seed)));
    let store: Arc<dyn RealtimeStore> = match &faults {
        Some(faults) if rates.store_error_rate > 0.0 => Arc::new(SimStore {
            inner: recording_store.clone(),
            faults: faults.clone(),
        }),
        _ => recording_store.clone(),
    };
    // Only the workers' reads come back empty: ingest, the sampler and the checks see the log.
    let worker_log: Arc<dyn Log> = match &faults {
        Some(faults) if rates.log_empty_read_rate > 0.0 => Arc::new(EmptyReadLog {
            inner: log.clone(),
            faults: faults.clone(),
        }),
        _ => log.clone(),
    };
    let mut generator = Generator::new(scenario);
    // The list is stored where the workers checkpoint, as `adclick serve` stores it, so the
    // billing check reads back every version the workers judged with.
    let checkpoint_blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    let registry = Arc::new(RwLock::new(FraudRegistry::new()));
    FraudListStore::new(checkpoint_blobs.clone())
        .publish(&generator.fraud_list_text(), &registry)
        .await?;
    let env = WorkerEnv::new(
        worker_log,
        store.clone(),
        CheckpointStore::new(checkpoint_blobs.clone()),
        clock.clone(),
        registry.clone(),
    )
    .with_fraud_lists(FraudListStore::new(checkpoint_blobs.clone()));
    #[allow(unused_mut)]
    let mut env = env;
    #[cfg(feature = "canaries")]
    {
        env.canary = options.canary;
    }
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let restarts = adclick_engine::supervisor::Supervision::new();
    let spawn_worker = |partition: PartitionId| {
        tokio::spawn(supervise(
            partition,
            scenario.worker_config(),
            scenario.aggregator_config(),
            env.clone(),
            stop.clone(),
            restarts.clone(),
            adclick_engine::worker::assigned_forever(),
        ))
    };
    let mut workers: Vec<_> = (0..partitions)
        .map(|p| spawn_worker(PartitionId(p)))
        .collect();
    // Ingest appends through the history, which times each append for the idle-advance check.
    let ingest_log: Arc<dyn Log> = Arc::new(RecordingLog {
        inner: log.clone(),
        history: history.clone(),
    });
    let (ingest, flusher) =
        IngestCore::start(ingest_log.clone(), clock.clone(), scenario.ingest_config());

    let progress = progress_bar(scenario, options.progress);
    let started = Instant::now();
    let recorder = Arc::new(Recorder::new(started));
    let accepted = Arc::new(AtomicU64::new(0));
    let (sampler_stop, sampler_stopped) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(run_sampler(
        recorder.clone(),
        log.clone(),
        memory_store.clone(),
        accepted.clone(),
        sampler_stopped,
    ));
    let salting = scenario.engine.hot_campaigns().is_some();
    let mut samples = Vec::new();
    let mut next_sample = started;
    let mut next_progress_note = started;
    let mut crashes = crash_schedule(scenario).into_iter().peekable();
    let mut crashes_injected = 0;
    let mut ledger = Ledger::default();
    let mut rejected = 0u64;
    let mut busy_answers = 0u64;
    let mut batch = adclick_loadgen::GeneratedBatch::default();
    let duration = Duration::from_secs_f64(scenario.traffic.duration_s);
    let total_events = (scenario.traffic.rate_per_s as f64 * scenario.traffic.duration_s) as u64;
    let mut sent = 0u64;
    while sent < total_events {
        let elapsed = started.elapsed();
        while let Some((at_ms, partition)) =
            crashes.next_if(|(at_ms, _)| *at_ms <= elapsed.as_millis() as u64)
        {
            tracing::info!(partition = partition.0, at_ms, "killing worker");
            let worker = &mut workers[partition.0 as usize];
            worker.abort();
            let _ = (&mut *worker).await;
            *worker = spawn_worker(partition);
            crashes_injected += 1;
            recorder.fault(format!("worker {} killed", partition.0));
        }
        let due =
            ((scenario.traffic.rate_per_s as f64 * elapsed.as_secs_f64()) as u64).min(total_events);
        if sent >= due {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let count = ((due - sent) as usize).min(scenario.traffic.batch_events);
        batch.clear();
        let now_ms = clock.now_ms();
        generator.next_batch(now_ms, elapsed.as_millis() as u64, count, &mut batch);
        // The ack latency of this request runs from when its first click was due.
        let intended =
            started + Duration::from_secs_f64(sent as f64 / scenario.traffic.rate_per_s as f64);
        if Instant::now() >= next_sample && batch.events.len() > 1 {
            // A tagged sample for freshness: sent alone with a durable ack, off this loop.
            next_sample += SAMPLE_EVERY;
            let event = batch.events.pop().expect("more than one event");
            batch.kinds.pop();
            samples.push(tokio::spawn(send_sample(
                ingest.clone(),
                log.clone(),
                recorder.clone(),
                event,
                (!salting).then_some(partitions),
            )));
        }
        let submitted = Instant::now();
        let outcome = loop {
            match ingest.submit(&batch.events, Ack::Buffered).await {
                Ok(outcome) => break outcome,
                Err(error) if error.retry_after_ms().is_some() => {
                    let retry_after_ms = error.retry_after_ms().expect("checked");
                    busy_answers += 1;
                    tokio::time::sleep(Duration::from_millis(retry_after_ms.min(10))).await;
                }
                Err(error) => anyhow::bail!("ingest failed: {error}"),
            }
        };
        recorder.ack(intended, submitted);
        accepted.fetch_add(
            (batch.events.len() - outcome.rejected.len()) as u64,
            Ordering::Relaxed,
        );
        rejected += outcome.rejected.len() as u64;
        let mut rejected_indexes = outcome.rejected.iter().map(|(index, _)| *index).peekable();
        for (index, event) in batch.events.iter().enumerate() {
            if rejected_indexes.next_if_eq(&index).is_none() {
                ledger.add(&event.view(adclick_core::ids::Salt(0)));
            }
        }
        sent += count as u64;
        progress.set_position(sent);
        if Instant::now() >= next_progress_note {
            next_progress_note += Duration::from_millis(500);
            progress.set_message(format!("ack p99 {:.1} ms", recorder.ack_p99_ms()));
        }
    }
    let traffic_elapsed = started.elapsed().max(duration.min(started.elapsed()));
    progress.finish_and_clear();
    for sample in samples {
        if let Ok(Some(event)) = sample.await {
            ledger.add(&event.view(adclick_core::ids::Salt(0)));
        }
    }
    ingest.close(flusher).await;
    let log_sealed_at_ms = clock.now_ms();

    let drain_started = Instant::now();
    let liveness_timeout = Duration::from_secs_f64(scenario.expect.liveness_timeout_s);
    let drained = oracle::wait_until_drained(
        log.as_ref(),
        memory_store.as_ref(),
        &scenario.aggregator_config(),
        scenario.engine.epoch_ms,
        liveness_timeout,
    )
    .await?;
    // The statuses are as of now: liveness judges their watermarks against this clock reading.
    let drained_clock = oracle::WorkerClock::system(scenario.engine.epoch_ms);
    let drain_ms = drain_started.elapsed().as_millis() as u64;
    let _ = stop_sender.send(true);
    for worker in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
    }

    let _ = sampler_stop.send(true);
    let _ = sampler.await;
    let scan = memory_store.scan().await?;
    let statuses = memory_store.partition_status().await?;
    let mut partition_records = vec![0u64; partitions as usize];
    for status in &statuses {
        partition_records[status.partition.0 as usize] = status.stats.records;
    }
    if let Some(faults) = faults.as_ref().filter(|_| rates.log_empty_read_rate > 0.0) {
        let empty_reads = faults.counts.lock().expect("counts lock").empty_reads;
        recorder.fault(format!("{empty_reads} empty log reads injected"));
    }
    let measurements = recorder.finish(partition_records);
    let published = registry.read().expect("fraud registry lock").clone();
    let fraud = oracle::workers_schedule(
        &CheckpointStore::new(checkpoint_blobs.clone()),
        partitions,
        &published,
    )
    .await?;
    let expected = oracle::expected_from_log_with(
        log.as_ref(),
        &fraud,
        &scenario.aggregator_config(),
        false,
        Some(&history),
    )
    .await?;
    let mut verdicts = Vec::new();
    for invariant in &scenario.expect.invariants {
        verdicts.push(match invariant {
            Invariant::ExactlyOnce => oracle::check_exactly_once(&expected, &scan),
            Invariant::NoLoss => oracle::check_no_loss(ledger, &expected),
            Invariant::Liveness => {
                let mut verdict = oracle::check_liveness(
                    &expected,
                    &drained,
                    &scan,
                    &scenario.aggregator_config(),
                    Some(drained_clock),
                    drain_ms,
                );
                verdict.holds &= !drained.is_empty() || expected.log.count == 0;
                verdict
            }
            Invariant::Determinism => Verdict::skipped(
                "determinism",
                "checked by the simulator, not by real-time runs",
            ),
            Invariant::BillingEquality => Verdict::skipped(
                "billing_equality",
                "checked by `adclick run` after the run (archive, billing, reconciliation)",
            ),
        });
    }
    let achieved_rate_per_s = sent as f64 / traffic_elapsed.as_secs_f64().max(1e-9);
    if scenario.expect.min_rate_fraction > 0.0 {
        let needed = scenario.expect.min_rate_fraction * scenario.traffic.rate_per_s as f64;
        verdicts.push(Verdict {
            invariant: "rate",
            holds: achieved_rate_per_s >= needed,
            checked: true,
            detail: format!("sustained {achieved_rate_per_s:.0}/s, needed {needed:.0}/s"),
        });
    }
    let stats = statuses.iter().fold(
        adclick_core::snapshot::PartitionStats::default(),
        |mut sum, status| {
            sum.duplicates += status.stats.duplicates;
            sum.late += status.stats.late;
            sum.fraud_known_ip += status.stats.fraud_known_ip
                + status.stats.fraud_known_user_agent
                + status.stats.fraud_rate;
            sum
        },
    );
    let totals = oracle::store_totals(&scan);
    let unique_billable_clicks = totals
        .iter()
        .filter(|(series, _)| matches!(series, adclick_core::operator::Series::Window(_)))
        .map(|(_, counts)| counts.unique)
        .sum();
    let passed = verdicts.iter().all(|verdict| verdict.holds);
    let artifacts = Some(RunArtifacts {
        log: log.clone(),
        scan: scan.clone(),
        fraud_list: registry.read().expect("fraud registry lock").current(),
        checkpoints: checkpoint_blobs.clone(),
        expected_hours: expected.unique_by_campaign_hour(),
        log_sealed_at_ms,
    });
    Ok(RunReport {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        partitions,
        target_rate_per_s: scenario.traffic.rate_per_s,
        traffic_s: traffic_elapsed.as_secs_f64(),
        generated: generator.generated(),
        accepted: ledger.count,
        rejected,
        busy_answers,
        achieved_rate_per_s,
        duplicates_dropped: stats.duplicates,
        late_clicks: stats.late,
        fraud_clicks: stats.fraud_known_ip,
        unique_billable_clicks,
        worker_crashes_injected: crashes_injected,
        worker_restarts: restarts.restarts(),
        store_errors_injected: faults.map_or(0, |faults| {
            faults.counts.lock().expect("counts lock").store_errors
        }),
        drain_ms,
        verdicts,
        passed,
        measurements,
        artifacts,
    })
}

fn progress_bar(scenario: &Scenario, enabled: bool) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let total = (scenario.traffic.rate_per_s as f64 * scenario.traffic.duration_s) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40}] {human_pos}/{human_len} clicks ({per_sec}) {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar
}
