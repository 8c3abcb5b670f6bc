//! Crash the worker at each step of the epoch protocol, in several epochs, restart it, and demand
//! counts that equal the oracle's exactly. Driven step by step (no sleeps, a manual clock), so
//! every case is deterministic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use adclick_core::fraud::{FraudList, FraudRegistry};
use adclick_core::ids::*;
use adclick_core::operator::AggregatorConfig;
use adclick_engine::checkpoint::CheckpointStore;
use adclick_engine::clock::ManualClock;
use adclick_engine::embedded::{MemoryBlobStore, MemoryLog, MemoryRealtimeStore};
use adclick_engine::scenario::Scenario;
use adclick_engine::seams::{AppendBatch, Clock, RealtimeStore, RecordBlock};
use adclick_engine::worker::{EpochStep, PartitionWorker, WorkerConfig, WorkerEnv, WorkerError};
use adclick_harness::oracle;
use adclick_traffic::Generator;

const PARTITIONS: u32 = 2;
const START_MS: u64 = 1_800_000_000_000;

fn scenario() -> Scenario {
    let text = r#"
version = 1
name = "epoch-protocol"
seed = 11
[traffic]
rate_per_s = 1000
duration_s = 1.0
campaigns = 20
ads_per_campaign = 3
[anomalies]
duplicate_fraction = 0.2
duplicate_delay_ms = 300
late_fraction = 0.05
late_lag_ms = 9000
bot_fraction = 0.05
high_rate_ip_fraction = 0.05
high_rate_ips = 1
[engine]
partitions = 2
window_ms = 1000
allowed_lateness_ms = 2000
max_out_of_orderness_ms = 500
idle_timeout_ms = 1000
dedup_horizon_ms = 20000
dedup_bucket_ms = 1000
clicks_per_ip_per_minute_max = 30
full_checkpoint_every_epochs = 3
"#;
    Scenario::parse(text, "epoch-protocol").unwrap()
}

struct Harness {
    log: Arc<MemoryLog>,
    store: Arc<dyn RealtimeStore>,
    env: WorkerEnv,
    clock: Arc<ManualClock>,
    config: AggregatorConfig,
    fraud_list: Arc<FraudList>,
    generator: Generator,
    sequences: Vec<u64>,
}

impl Harness {
    fn new(crash_at: Vec<(EpochStep, Epoch)>, store: Arc<dyn RealtimeStore>) -> Harness {
        let scenario = scenario();
        let generator = Generator::new(&scenario);
        let mut registry = FraudRegistry::new();
        let fraud_list = registry
            .register(FraudList::parse(&generator.fraud_list_text()).unwrap())
            .unwrap();
        let log = Arc::new(MemoryLog::new(PARTITIONS));
        let clock = Arc::new(ManualClock::new(START_MS));
        let mut env = WorkerEnv::new(
            log.clone(),
            store.clone(),
            CheckpointStore::new(Arc::new(MemoryBlobStore::new())),
            clock.clone(),
            Arc::new(RwLock::new(registry)),
        );
        if !crash_at.is_empty() {
            // Each planned crash fires once, on partition 0.
            let planned: Vec<((EpochStep, Epoch), AtomicBool)> = crash_at
                .into_iter()
                .map(|point| (point, AtomicBool::new(false)))
                .collect();
            env.crash_hook = Some(Arc::new(move |partition, at_step, at_epoch| {
                partition == PartitionId(0)
                    && planned.iter().any(|((step, epoch), fired)| {
                        *step == at_step
                            && *epoch == at_epoch
                            && !fired.swap(true, Ordering::SeqCst)
                    })
            }));
        }
        Harness {
            log,
            store,
            env,
            clock,
            config: scenario.aggregator_config(),
            fraud_list,
            generator,
            sequences: vec![0; PARTITIONS as usize],
        }
    }

    /// Appends 200 generated clicks at the current time.
    fn append_traffic(&mut self) {
        let now_ms = self.clock.now_ms();
        let mut clicks = adclick_traffic::GeneratedBatch::default();
        self.generator
            .next_batch(now_ms, now_ms - START_MS, 200, &mut clicks);
        let blocks = RecordBlock::route(&clicks.events, PARTITIONS);
        for (index, block) in blocks.into_iter().enumerate() {
            let count = block.len() as u64;
            let batch = AppendBatch {
                producer_id: 1,
                first_sequence: self.sequences[index],
                records: block,
            };
            self.log
                .append_now(PartitionId(index as u32), batch)
                .unwrap();
            self.sequences[index] += count;
        }
    }

    fn worker(&self, partition: u32) -> PartitionWorker {
        PartitionWorker::new(
            PartitionId(partition),
            WorkerConfig::default(),
            self.config,
            self.env.clone(),
        )
    }
}

/// Runs 8 epochs of traffic and 6 idle epochs; a crashed worker is replaced by a new one that
/// recovers. Returns the exactly-once verdict and how many crashes happened.
async fn run(crash_at: Vec<(EpochStep, Epoch)>) -> (oracle::Verdict, oracle::Verdict, u32) {
    run_variant(crash_at, None, Arc::new(MemoryRealtimeStore::new())).await
}

/// A new worker for `partition`, recovered; each crash injected while it recovers counts, and
/// another one takes over.
async fn recovered(harness: &Harness, partition: u32, crashes: &mut u32) -> PartitionWorker {
    loop {
        let mut worker = harness.worker(partition);
        match worker.recover().await {
            Ok(()) => return worker,
            Err(WorkerError::InjectedCrash { .. }) => *crashes += 1,
            Err(error) => panic!("unexpected recovery error: {error}"),
        }
    }
}

async fn run_variant(
    crash_at: Vec<(EpochStep, Epoch)>,
    canary: Option<adclick_engine::worker::Canary>,
    store: Arc<dyn RealtimeStore>,
) -> (oracle::Verdict, oracle::Verdict, u32) {
    let mut harness = Harness::new(crash_at, store);
    harness.env.canary = canary;
    let mut workers = Vec::new();
    let mut crashes = 0;
    // A fresh partition checkpoints before its first read, so a crash planned for epoch 1 can
    // strike during the first recovery too.
    for partition in 0..PARTITIONS {
        workers.push(recovered(&harness, partition, &mut crashes).await);
    }
    for round in 0..14 {
        if round < 8 {
            harness.append_traffic();
        }
        harness.clock.advance(if round < 8 { 500 } else { 3_000 });
        for (partition, worker) in workers.iter_mut().enumerate() {
            loop {
                let result = async {
                    while worker.poll().await? > 0 {}
                    worker.barrier().await
                }
                .await;
                match result {
                    Ok(_) => break,
                    Err(WorkerError::InjectedCrash { .. }) => {
                        crashes += 1;
                        *worker = recovered(&harness, partition as u32, &mut crashes).await;
                    }
                    Err(error) => panic!("unexpected worker error: {error}"),
                }
            }
        }
    }
    let scan = harness.store.scan().await.unwrap();
    let statuses = harness.store.partition_status().await.unwrap();
    let expected = oracle::expected_from_log(
        harness.log.as_ref(),
        &adclick_core::billing::FraudSchedule::single(harness.fraud_list.clone()),
        &harness.config,
        false,
    )
    .await
    .unwrap();
    assert!(expected.log.count >= 1_600, "the test generated traffic");
    let exactly_once = oracle::check_exactly_once(&expected, &scan);
    // The harness clock; a barrier per round, 3 s apart at the end.
    let clock = oracle::WorkerClock {
        now_ms: harness.clock.now_ms(),
        epoch_ms: 3_000,
    };
    let liveness =
        oracle::check_liveness(&expected, &statuses, &scan, &harness.config, Some(clock), 0);
    (exactly_once, liveness, crashes)
}

/// Every step of the epoch protocol, in early and late epochs.
const CRASH_STEPS: [EpochStep; 4] = [
    EpochStep::BeforePreCommit,
    EpochStep::AfterPreCommit,
    EpochStep::AfterSinkWrite,
    EpochStep::AfterComplete,
];

#[tokio::test]
async fn against_real_redis_a_crash_at_any_step_never_loses_or_doubles_a_count() {
    use adclick_io::redis_store::{KeySpace, RedisConfig, RedisStore};
    let url =
        std::env::var("ADCLICK_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    for step in CRASH_STEPS {
        for epoch in [1, 3, 9] {
            let mut config = RedisConfig::new(url.clone());
            config.prefix = format!("adclick-test-epoch-{}", std::process::id());
            let keys = KeySpace {
                partitions: PARTITIONS,
                window_ms: 1000,
                salts_max: 1,
            };
            let store = RedisStore::connect(config, keys)
                .await
                .unwrap_or_else(|error| panic!("this test needs Redis at {url}: {error:#}"));
            store.delete_all().await.unwrap();
            let store = Arc::new(store);
            let (verdict, liveness, crashes) =
                run_variant(vec![(step, Epoch(epoch))], None, store.clone()).await;
            store.delete_all().await.unwrap();
            assert_eq!(crashes, 1, "{step:?} in epoch {epoch} fired once");
            assert!(
                verdict.holds,
                "redis, {step:?} in epoch {epoch}: {}",
                verdict.detail
            );
            assert!(
                liveness.holds,
                "redis, {step:?} in epoch {epoch}: {}",
                liveness.detail
            );
        }
    }
}

#[tokio::test]
async fn a_crash_at_any_step_of_any_epoch_never_loses_or_doubles_a_count() {
    let (baseline, liveness, crashes) = run(Vec::new()).await;
    assert!(baseline.holds, "{}", baseline.detail);
    assert!(liveness.holds, "{}", liveness.detail);
    assert_eq!(crashes, 0);
    for step in CRASH_STEPS {
        for epoch in [1, 2, 3, 4, 5, 9] {
            let (verdict, liveness, crashes) = run(vec![(step, Epoch(epoch))]).await;
            assert_eq!(crashes, 1, "{step:?} in epoch {epoch} fired once");
            assert!(
                verdict.holds,
                "{step:?} in epoch {epoch}: {}",
                verdict.detail
            );
            assert!(
                liveness.holds,
                "{step:?} in epoch {epoch}: {}",
                liveness.detail
            );
        }
    }
}

#[tokio::test]
async fn a_crash_while_recommitting_a_pending_epoch_is_recovered_too() {
    // A crash after pre-commit leaves epoch 3 pending; the replacement crashes again while
    // re-committing it, and the next replacement finishes the job.
    let crashes_planned = vec![
        (EpochStep::AfterPreCommit, Epoch(3)),
        (EpochStep::BeforeRecommit, Epoch(3)),
    ];
    let (verdict, liveness, crashes) = run(crashes_planned).await;
    assert_eq!(crashes, 2, "both planned crashes fired");
    assert!(verdict.holds, "{}", verdict.detail);
    assert!(liveness.holds, "{}", liveness.detail);
}

#[tokio::test]
async fn the_checks_catch_a_worker_that_writes_increments() {
    // Canary: HINCRBY-style increments instead of fenced absolute values. A crash after the sink
    // write re-commits the epoch and the increments land twice.
    let canary = Some(adclick_engine::worker::Canary::UnfencedIncrements);
    let (verdict, _, crashes) = run_variant(
        vec![(EpochStep::AfterSinkWrite, Epoch(3))],
        canary,
        Arc::new(MemoryRealtimeStore::new()),
    )
    .await;
    assert_eq!(crashes, 1);
    assert!(
        !verdict.holds,
        "the increments canary must be caught, got: {}",
        verdict.detail
    );
}
