//! The whole engine on Kafka: `IngestCore` → `KafkaLog` (mock cluster) → supervised
//! `PartitionWorker`s → in-memory store with in-memory checkpoints. The counts must be exact, and
//! equal to what the same clicks give through the embedded `MemoryLog`.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use adclick_core::fraud::{FraudList, FraudRegistry};
use adclick_core::ids::PartitionId;
use adclick_engine::checkpoint::CheckpointStore;
use adclick_engine::clock::SystemClock;
use adclick_engine::embedded::{MemoryBlobStore, MemoryLog, MemoryRealtimeStore};
use adclick_engine::ingest::{Ack, IngestConfig, IngestCore, IngestError};
use adclick_engine::scenario::Scenario;
use adclick_engine::seams::{Clock, Log, RealtimeStore};
use adclick_engine::worker::{WorkerEnv, assigned_forever, supervise};
use adclick_harness::oracle;
use adclick_io::kafka::KafkaLog;
use adclick_traffic::{GeneratedBatch, Generator};

use super::support::mock_cluster;

const PARTITIONS: u32 = 4;

fn scenario() -> Scenario {
    let text = r#"
version = 1
name = "kafka-engine-path"
seed = 29
[traffic]
rate_per_s = 5000
duration_s = 1.0
campaigns = 40
ads_per_campaign = 3
[anomalies]
duplicate_fraction = 0.2
duplicate_delay_ms = 100
late_fraction = 0.05
late_lag_ms = 1500
bot_fraction = 0.05
high_rate_ip_fraction = 0.05
high_rate_ips = 1
[engine]
partitions = 4
window_ms = 1000
allowed_lateness_ms = 1000
max_out_of_orderness_ms = 200
idle_timeout_ms = 500
dedup_horizon_ms = 20000
dedup_bucket_ms = 1000
clicks_per_ip_per_minute_max = 30
epoch_ms = 200
"#;
    Scenario::parse(text, "kafka-engine-path").unwrap()
}

async fn submit_all(ingest: &IngestCore, batch: &GeneratedBatch) {
    loop {
        match ingest.submit(&batch.events, Ack::Buffered).await {
            Ok(outcome) => {
                assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
                return;
            }
            Err(IngestError::Busy { .. }) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(error) => panic!("ingest failed: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_through_kafka_are_exact_and_equal_the_memory_log() {
    let scenario = scenario();
    let mock = mock_cluster("engine-path", PARTITIONS);
    let kafka_log: Arc<dyn Log> = Arc::new(KafkaLog::connect(mock.config.clone()).await.unwrap());
    let memory_log: Arc<dyn Log> = Arc::new(MemoryLog::new(PARTITIONS));
    let store = Arc::new(MemoryRealtimeStore::new());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut generator = Generator::new(&scenario);
    let mut registry = FraudRegistry::new();
    let fraud_list = registry
        .register(FraudList::parse(&generator.fraud_list_text()).unwrap())
        .unwrap();
    let env = WorkerEnv::new(
        kafka_log.clone(),
        store.clone(),
        CheckpointStore::new(Arc::new(MemoryBlobStore::new())),
        clock.clone(),
        Arc::new(RwLock::new(registry)),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let restarts = adclick_engine::supervisor::Supervision::new();
    let workers: Vec<_> = (0..PARTITIONS)
        .map(|partition| {
            tokio::spawn(supervise(
                PartitionId(partition),
                scenario.worker_config(),
                scenario.aggregator_config(),
                env.clone(),
                stopped.clone(),
                restarts.clone(),
                assigned_forever(),
            ))
        })
        .collect();

    // Both logs get the same requests in the same order, so each partition sees the same
    // sequence; event times are not checked against the clock, so neither rejects anything.
    let ingest_config = IngestConfig {
        check_event_time: false,
        ..scenario.ingest_config()
    };
    let (kafka_ingest, kafka_flusher) =
        IngestCore::start(kafka_log.clone(), clock.clone(), ingest_config);
    let (memory_ingest, memory_flusher) =
        IngestCore::start(memory_log.clone(), clock.clone(), ingest_config);
    let started = Instant::now();
    let mut batch = GeneratedBatch::default();
    for _ in 0..25 {
        batch.clear();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        generator.next_batch(clock.now_ms(), elapsed_ms, 200, &mut batch);
        submit_all(&kafka_ingest, &batch).await;
        submit_all(&memory_ingest, &batch).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kafka_ingest.close(kafka_flusher).await;
    memory_ingest.close(memory_flusher).await;

    let config = scenario.aggregator_config();
    oracle::wait_until_drained(
        kafka_log.as_ref(),
        store.as_ref(),
        &config,
        scenario.engine.epoch_ms,
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    stop.send(true).unwrap();
    for worker in workers {
        worker.await.unwrap();
    }

    let scan = store.scan().await.unwrap();
    let schedule = adclick_core::billing::FraudSchedule::single(fraud_list.clone());
    let from_kafka = oracle::expected_from_log(kafka_log.as_ref(), &schedule, &config, false)
        .await
        .unwrap();
    let from_memory = oracle::expected_from_log(memory_log.as_ref(), &schedule, &config, false)
        .await
        .unwrap();
    assert_eq!(from_kafka.log.count, 5_000);
    assert_eq!(
        from_kafka.log, from_memory.log,
        "the two logs hold different clicks"
    );
    assert_eq!(from_kafka.end_offsets, from_memory.end_offsets);
    assert_eq!(from_kafka.series, from_memory.series);
    assert!(!scan.is_empty());
    let verdict = oracle::check_exactly_once(&from_kafka, &scan);
    assert!(verdict.holds, "{}", verdict.detail);
}
