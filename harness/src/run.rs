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
use adclick_traffic::Generator;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::faults::{EmptyReadLog, FaultRates, Faults, FaultyStore};
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
    let mut generator = Generator::new(scenario);
    let seams = RunSeams::build(scenario, &options, &generator.fraud_list_text()).await?;
    let mut workers = RunWorkers::start(scenario, &seams);
    let monitor = Monitor::start(&seams);
    let traffic = drive(
        scenario,
        &seams,
        &mut workers,
        &monitor,
        &mut generator,
        options.progress,
    )
    .await?;
    let log_sealed_at_ms = seams.clock.now_ms();
    let drained = drain(scenario, &seams, workers).await?;
    let measurements = monitor.finish(&seams, &drained.statuses).await?;
    judge(
        scenario,
        &seams,
        traffic,
        drained,
        generator.generated(),
        log_sealed_at_ms,
        measurements,
    )
    .await
}

/// Everything a run counts on, wired as `adclick serve` wires it, with the real-time faults
/// (store errors, empty reads) around the seams they strike.
struct RunSeams {
    clock: Arc<dyn Clock>,
    log: Arc<dyn Log>,
    memory_store: Arc<dyn RealtimeStore>,
    /// Every status the store takes, which the exactly-once check reads.
    history: Arc<StatusHistory>,
    faults: Option<Arc<Faults>>,
    rates: FaultRates,
    checkpoint_blobs: Arc<dyn BlobStore>,
    registry: Arc<RwLock<FraudRegistry>>,
    env: WorkerEnv,
}

impl RunSeams {
    async fn build(
        scenario: &Scenario,
        options: &RunOptions,
        fraud_list_text: &str,
    ) -> anyhow::Result<RunSeams> {
        let partitions = scenario.engine.partitions;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let log: Arc<dyn Log> = match &options.log_dir {
            Some(dir) => Arc::new(FileLog::open(dir, partitions, FileLogConfig::default())?),
            None => Arc::new(MemoryLog::new(partitions)),
        };
        let memory_store: Arc<dyn RealtimeStore> = Arc::new(MemoryRealtimeStore::new());
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
            Some(faults) if rates.store_error_rate > 0.0 => Arc::new(FaultyStore {
                inner: recording_store.clone(),
                faults: faults.clone(),
            }),
            _ => recording_store,
        };
        // Only the workers' reads come back empty: ingest, the sampler and the checks see the log.
        let worker_log: Arc<dyn Log> = match &faults {
            Some(faults) if rates.log_empty_read_rate > 0.0 => Arc::new(EmptyReadLog {
                inner: log.clone(),
                faults: faults.clone(),
            }),
            _ => log.clone(),
        };
        // The list is stored where the workers checkpoint, as `adclick serve` stores it, so the
        // billing check reads back every version the workers judged with.
        let checkpoint_blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
        let registry = Arc::new(RwLock::new(FraudRegistry::new()));
        let lists = FraudListStore::new(checkpoint_blobs.clone());
        lists.publish(fraud_list_text, &registry).await?;
        #[allow(unused_mut)]
        let mut env = WorkerEnv::new(
            worker_log,
            store,
            CheckpointStore::new(checkpoint_blobs.clone()),
            clock.clone(),
            registry.clone(),
        )
        .with_fraud_lists(lists);
        #[cfg(feature = "canaries")]
        {
            env.canary = options.canary;
        }
        Ok(RunSeams {
            clock,
            log,
            memory_store,
            history,
            faults,
            rates,
            checkpoint_blobs,
            registry,
            env,
        })
    }

    /// Ingest appends through the history, which times each append for the idle-advance check.
    fn ingest_log(&self) -> Arc<dyn Log> {
        Arc::new(RecordingLog {
            inner: self.log.clone(),
            history: self.history.clone(),
        })
    }

    fn injected(&self, count: impl Fn(&crate::faults::FaultCounts) -> u64) -> u64 {
        self.faults.as_ref().map_or(0, |faults| {
            count(&faults.counts.lock().expect("counts lock"))
        })
    }
}

/// One supervised worker per partition, each killed and restarted on the crash schedule.
struct RunWorkers {
    handles: Vec<tokio::task::JoinHandle<adclick_engine::supervisor::SupervisorExit>>,
    worker_config: adclick_engine::worker::WorkerConfig,
    aggregator_config: adclick_core::operator::AggregatorConfig,
    env: WorkerEnv,
    stop: tokio::sync::watch::Receiver<bool>,
    stop_sender: tokio::sync::watch::Sender<bool>,
    supervision: Arc<adclick_engine::supervisor::Supervision>,
}

impl RunWorkers {
    fn start(scenario: &Scenario, seams: &RunSeams) -> RunWorkers {
        let (stop_sender, stop) = tokio::sync::watch::channel(false);
        let mut workers = RunWorkers {
            handles: Vec::new(),
            worker_config: scenario.worker_config(),
            aggregator_config: scenario.aggregator_config(),
            env: seams.env.clone(),
            stop,
            stop_sender,
            supervision: adclick_engine::supervisor::Supervision::new(),
        };
        workers.handles = (0..scenario.engine.partitions)
            .map(|partition| workers.spawn(PartitionId(partition)))
            .collect();
        workers
    }

    fn spawn(
        &self,
        partition: PartitionId,
    ) -> tokio::task::JoinHandle<adclick_engine::supervisor::SupervisorExit> {
        tokio::spawn(supervise(
            partition,
            self.worker_config,
            self.aggregator_config,
            self.env.clone(),
            self.stop.clone(),
            self.supervision.clone(),
            adclick_engine::worker::assigned_forever(),
        ))
    }

    async fn kill_and_restart(&mut self, partition: PartitionId) {
        let index = partition.0 as usize;
        self.handles[index].abort();
        let _ = (&mut self.handles[index]).await;
        self.handles[index] = self.spawn(partition);
    }

    /// Asks every worker to stop, and waits up to 10 s for each.
    async fn stop(self) -> u64 {
        let _ = self.stop_sender.send(true);
        for worker in self.handles {
            let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
        }
        self.supervision.restarts()
    }
}

/// The ack latencies, freshness samples and timeline of a run.
struct Monitor {
    recorder: Arc<Recorder>,
    accepted: Arc<AtomicU64>,
    started: Instant,
    sampler: tokio::task::JoinHandle<()>,
    sampler_stop: tokio::sync::watch::Sender<bool>,
}

impl Monitor {
    fn start(seams: &RunSeams) -> Monitor {
        let started = Instant::now();
        let recorder = Arc::new(Recorder::new(started));
        let accepted = Arc::new(AtomicU64::new(0));
        let (sampler_stop, sampler_stopped) = tokio::sync::watch::channel(false);
        let sampler = tokio::spawn(run_sampler(
            recorder.clone(),
            seams.log.clone(),
            seams.memory_store.clone(),
            accepted.clone(),
            sampler_stopped,
        ));
        Monitor {
            recorder,
            accepted,
            started,
            sampler,
            sampler_stop,
        }
    }

    async fn finish(
        self,
        seams: &RunSeams,
        statuses: &[adclick_engine::seams::PartitionStatus],
    ) -> anyhow::Result<Measurements> {
        let _ = self.sampler_stop.send(true);
        let _ = self.sampler.await;
        let mut partition_records = vec![0u64; seams.log.partitions() as usize];
        for status in statuses {
            partition_records[status.partition.0 as usize] = status.stats.records;
        }
        if seams.rates.log_empty_read_rate > 0.0 {
            let empty_reads = seams.injected(|counts| counts.empty_reads);
            self.recorder
                .fault(format!("{empty_reads} empty log reads injected"));
        }
        Ok(self.recorder.finish(partition_records))
    }
}

/// What the traffic phase sent and got back.
#[derive(Default)]
struct Traffic {
    ledger: Ledger,
    sent: u64,
    rejected: u64,
    busy_answers: u64,
    crashes_injected: u64,
    elapsed: Duration,
}

/// Sends the scenario's traffic open-loop through ingest, killing workers on schedule, then
/// closes ingest (its buffer drained into the log).
async fn drive(
    scenario: &Scenario,
    seams: &RunSeams,
    workers: &mut RunWorkers,
    monitor: &Monitor,
    generator: &mut Generator,
    progress: bool,
) -> anyhow::Result<Traffic> {
    let partitions = scenario.engine.partitions;
    let config = scenario.ingest_config();
    let (ingest, flusher) = IngestCore::start(seams.ingest_log(), seams.clock.clone(), config);
    let progress = progress_bar(scenario, progress);
    let started = monitor.started;
    let salting = scenario.engine.hot_campaigns().is_some();
    let mut samples = Vec::new();
    let mut next_sample = started;
    let mut next_progress_note = started;
    let mut crashes = crash_schedule(scenario).into_iter().peekable();
    let mut traffic = Traffic::default();
    let mut batch = adclick_traffic::GeneratedBatch::default();
    let rate_per_s = scenario.traffic.rate_per_s;
    let total_events = (rate_per_s as f64 * scenario.traffic.duration_s) as u64;
    while traffic.sent < total_events {
        let elapsed = started.elapsed();
        let due_ms = elapsed.as_millis() as u64;
        while let Some((at_ms, partition)) = crashes.next_if(|(at_ms, _)| *at_ms <= due_ms) {
            tracing::info!(partition = partition.0, at_ms, "killing worker");
            workers.kill_and_restart(partition).await;
            traffic.crashes_injected += 1;
            let killed = format!("worker {} killed", partition.0);
            monitor.recorder.fault(killed);
        }
        let due = ((rate_per_s as f64 * elapsed.as_secs_f64()) as u64).min(total_events);
        if traffic.sent >= due {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let count = ((due - traffic.sent) as usize).min(scenario.traffic.batch_events);
        batch.clear();
        let now_ms = seams.clock.now_ms();
        generator.next_batch(now_ms, elapsed.as_millis() as u64, count, &mut batch);
        // The ack latency of this request runs from when its first click was due.
        let intended = started + Duration::from_secs_f64(traffic.sent as f64 / rate_per_s as f64);
        if Instant::now() >= next_sample && batch.events.len() > 1 {
            next_sample += SAMPLE_EVERY;
            let sampled = (!salting).then_some(partitions);
            samples.push(spawn_sample(&ingest, seams, monitor, &mut batch, sampled));
        }
        send_batch(&ingest, &batch.events, intended, monitor, &mut traffic).await?;
        traffic.sent += count as u64;
        progress.set_position(traffic.sent);
        if Instant::now() >= next_progress_note {
            next_progress_note += Duration::from_millis(500);
            let ack_p99_ms = monitor.recorder.ack_p99_ms();
            progress.set_message(format!("ack p99 {ack_p99_ms:.1} ms"));
        }
    }
    let duration = Duration::from_secs_f64(scenario.traffic.duration_s);
    traffic.elapsed = started.elapsed().max(duration.min(started.elapsed()));
    progress.finish_and_clear();
    for sample in samples {
        if let Ok(Some(event)) = sample.await {
            traffic.ledger.add(&event.view(adclick_core::ids::Salt(0)));
        }
    }
    ingest.close(flusher).await;
    Ok(traffic)
}

/// Takes the batch's last click out and sends it alone with a durable ack, off the traffic
/// loop: a tagged sample for freshness (for a known partition only, so not with salting on).
fn spawn_sample(
    ingest: &IngestCore,
    seams: &RunSeams,
    monitor: &Monitor,
    batch: &mut adclick_traffic::GeneratedBatch,
    partitions: Option<u32>,
) -> tokio::task::JoinHandle<Option<adclick_core::event::ClickEvent>> {
    let event = batch.events.pop().expect("more than one event");
    batch.kinds.pop();
    tokio::spawn(send_sample(
        ingest.clone(),
        seams.log.clone(),
        monitor.recorder.clone(),
        event,
        partitions,
    ))
}

/// One batch with a buffered ack, retried while ingest answers busy; the accepted clicks go
/// into the ledger.
async fn send_batch(
    ingest: &IngestCore,
    events: &[adclick_core::event::ClickEvent],
    intended: Instant,
    monitor: &Monitor,
    traffic: &mut Traffic,
) -> anyhow::Result<()> {
    let submitted = Instant::now();
    let outcome = loop {
        match ingest.submit(events, Ack::Buffered).await {
            Ok(outcome) => break outcome,
            Err(error) if error.retry_after_ms().is_some() => {
                let retry_after_ms = error.retry_after_ms().expect("checked");
                traffic.busy_answers += 1;
                tokio::time::sleep(Duration::from_millis(retry_after_ms.min(10))).await;
            }
            Err(error) => anyhow::bail!("ingest failed: {error}"),
        }
    };
    monitor.recorder.ack(intended, submitted);
    let accepted = (events.len() - outcome.rejected.len()) as u64;
    monitor.accepted.fetch_add(accepted, Ordering::Relaxed);
    traffic.rejected += outcome.rejected.len() as u64;
    let mut rejected_indexes = outcome.rejected.iter().map(|(index, _)| *index).peekable();
    for (index, event) in events.iter().enumerate() {
        if rejected_indexes.next_if_eq(&index).is_none() {
            traffic.ledger.add(&event.view(adclick_core::ids::Salt(0)));
        }
    }
    Ok(())
}

/// The drain: every partition caught up and every window closed (or the liveness timeout),
/// then the workers stop.
struct Drained {
    statuses: Vec<adclick_engine::seams::PartitionStatus>,
    /// The clock reading the statuses are as of: liveness judges their watermarks against it.
    clock: oracle::WorkerClock,
    drain_ms: u64,
    worker_restarts: u64,
}

async fn drain(
    scenario: &Scenario,
    seams: &RunSeams,
    workers: RunWorkers,
) -> anyhow::Result<Drained> {
    let drain_started = Instant::now();
    let liveness_timeout = Duration::from_secs_f64(scenario.expect.liveness_timeout_s);
    let statuses = oracle::wait_until_drained(
        seams.log.as_ref(),
        seams.memory_store.as_ref(),
        &scenario.aggregator_config(),
        scenario.engine.epoch_ms,
        liveness_timeout,
    )
    .await?;
    let clock = oracle::WorkerClock::system(scenario.engine.epoch_ms);
    let drain_ms = drain_started.elapsed().as_millis() as u64;
    let worker_restarts = workers.stop().await;
    Ok(Drained {
        statuses,
        clock,
        drain_ms,
        worker_restarts,
    })
}

/// Judges the drained run against the oracle and writes the report.
async fn judge(
    scenario: &Scenario,
    seams: &RunSeams,
    traffic: Traffic,
    drained: Drained,
    generated: u64,
    log_sealed_at_ms: u64,
    measurements: Measurements,
) -> anyhow::Result<RunReport> {
    let scan = seams.memory_store.scan().await?;
    let statuses = seams.memory_store.partition_status().await?;
    let checkpoints = CheckpointStore::new(seams.checkpoint_blobs.clone());
    let config = scenario.aggregator_config();
    let history = Some(seams.history.as_ref());
    let log = seams.log.as_ref();
    let (_, expected) =
        oracle::expected_as_judged(log, &checkpoints, &seams.registry, &config, false, history)
            .await?;
    let evidence = oracle::Evidence {
        expected: &expected,
        scan: &scan,
        drained: &drained.statuses,
        config: &config,
        drained_clock: drained.clock,
        drain_ms: drained.drain_ms,
    };
    let accepted = traffic.ledger.count;
    let invariants = &scenario.expect.invariants;
    let mut verdicts = oracle::verdicts(invariants, &evidence, |invariant| {
        runner_verdict(invariant, traffic.ledger, &expected)
    });
    let achieved_rate_per_s = traffic.sent as f64 / traffic.elapsed.as_secs_f64().max(1e-9);
    verdicts.extend(rate_verdict(scenario, achieved_rate_per_s));
    let artifacts = RunArtifacts {
        log: seams.log.clone(),
        scan,
        fraud_list: seams
            .registry
            .read()
            .expect("fraud registry lock")
            .current(),
        checkpoints: seams.checkpoint_blobs.clone(),
        expected_hours: expected.unique_by_campaign_hour(),
        log_sealed_at_ms,
    };
    let counted = Counted {
        generated,
        accepted,
        achieved_rate_per_s,
        stats: summed_stats(&statuses),
        store_errors_injected: seams.injected(|counts| counts.store_errors),
    };
    Ok(run_report(
        scenario,
        traffic,
        drained,
        counted,
        verdicts,
        measurements,
        artifacts,
    ))
}

/// What the run counted, for its report.
struct Counted {
    generated: u64,
    accepted: u64,
    achieved_rate_per_s: f64,
    stats: adclick_core::snapshot::PartitionStats,
    store_errors_injected: u64,
}

fn run_report(
    scenario: &Scenario,
    traffic: Traffic,
    drained: Drained,
    counted: Counted,
    verdicts: Vec<Verdict>,
    measurements: Measurements,
    artifacts: RunArtifacts,
) -> RunReport {
    let unique_billable_clicks = oracle::store_totals(&artifacts.scan)
        .iter()
        .filter(|(series, _)| matches!(series, adclick_core::operator::Series::Window(_)))
        .map(|(_, counts)| counts.unique)
        .sum();
    RunReport {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        partitions: scenario.engine.partitions,
        target_rate_per_s: scenario.traffic.rate_per_s,
        traffic_s: traffic.elapsed.as_secs_f64(),
        generated: counted.generated,
        accepted: counted.accepted,
        rejected: traffic.rejected,
        busy_answers: traffic.busy_answers,
        achieved_rate_per_s: counted.achieved_rate_per_s,
        duplicates_dropped: counted.stats.duplicates,
        late_clicks: counted.stats.late,
        fraud_clicks: counted.stats.fraud_known_ip,
        unique_billable_clicks,
        worker_crashes_injected: traffic.crashes_injected,
        worker_restarts: drained.worker_restarts,
        store_errors_injected: counted.store_errors_injected,
        drain_ms: drained.drain_ms,
        passed: verdicts.iter().all(|verdict| verdict.holds),
        verdicts,
        measurements,
        artifacts: Some(artifacts),
    }
}

/// The invariants a real-time run judges its own way: no loss by the ledger of what ingest
/// took; determinism and billing equality elsewhere.
fn runner_verdict(invariant: Invariant, ledger: Ledger, expected: &oracle::Expected) -> Verdict {
    match invariant {
        Invariant::NoLoss => oracle::check_no_loss(ledger, expected),
        Invariant::Determinism => Verdict::skipped(
            "determinism",
            "checked by the simulator, not by real-time runs",
        ),
        _ => Verdict::skipped(
            "billing_equality",
            "checked by `adclick run` after the run (archive, billing, reconciliation)",
        ),
    }
}

/// With `expect.min_rate_fraction` set: the run sustained that share of its target rate.
fn rate_verdict(scenario: &Scenario, achieved_rate_per_s: f64) -> Option<Verdict> {
    let fraction = scenario.expect.min_rate_fraction;
    (fraction > 0.0).then(|| {
        let needed = fraction * scenario.traffic.rate_per_s as f64;
        Verdict {
            invariant: "rate",
            holds: achieved_rate_per_s >= needed,
            checked: true,
            detail: format!("sustained {achieved_rate_per_s:.0}/s, needed {needed:.0}/s"),
        }
    })
}

/// Duplicates, late and fraud clicks over every partition (fraud of every kind in one field).
fn summed_stats(
    statuses: &[adclick_engine::seams::PartitionStatus],
) -> adclick_core::snapshot::PartitionStats {
    let mut sum = adclick_core::snapshot::PartitionStats::default();
    for status in statuses {
        sum.duplicates += status.stats.duplicates;
        sum.late += status.stats.late;
        sum.fraud_known_ip += status.stats.fraud_known_ip
            + status.stats.fraud_known_user_agent
            + status.stats.fraud_rate;
    }
    sum
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
