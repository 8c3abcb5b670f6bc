//! Two `adclick serve` worker processes in one consumer group on a real Kafka-protocol broker
//! (Tansu, started by `ci/kafka-broker`), sharing a real Redis and a checkpoint directory. One
//! is killed (SIGKILL) mid-run; the other takes its partitions over, and every count in Redis
//! must equal the oracle's, computed from a copy of what was produced.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adclick_core::fraud::FraudList;
use adclick_core::ids::*;
use adclick_engine::clock::SystemClock;
use adclick_engine::embedded::MemoryLog;
use adclick_engine::scenario::Scenario;
use adclick_engine::seams::{AppendBatch, Clock, Log, RealtimeStore, RecordBlock};
use adclick_harness::oracle;
use adclick_io::kafka::{KafkaConfig, KafkaLog, create_topic};
use adclick_io::redis_store::{KeySpace, RedisConfig, RedisStore};
use adclick_traffic::{GeneratedBatch, Generator};

const PARTITIONS: u32 = 4;

fn brokers() -> String {
    if let Ok(brokers) = std::env::var("ADCLICK_KAFKA_BROKERS") {
        return brokers;
    }
    let port = std::env::var("ADCLICK_KAFKA_PORT").unwrap_or_else(|_| "19092".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/ci/kafka-broker");
    let output = Command::new("bash")
        .args([script, "start", &port])
        .output()
        .expect("run ci/kafka-broker");
    assert!(
        output.status.success(),
        "ci/kafka-broker start {port} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .expect("ci/kafka-broker prints the bootstrap address")
        .trim()
        .to_owned()
}

fn scenario() -> Scenario {
    let text = r#"
version = 1
name = "kafka-two-workers"
seed = 77
[traffic]
rate_per_s = 2000
duration_s = 10.0
campaigns = 40
ads_per_campaign = 3
[anomalies]
duplicate_fraction = 0.1
duplicate_delay_ms = 500
bot_fraction = 0.02
[engine]
partitions = 4
epoch_ms = 200
window_ms = 1000
allowed_lateness_ms = 1000
max_out_of_orderness_ms = 300
idle_timeout_ms = 500
dedup_horizon_ms = 20000
dedup_bucket_ms = 1000
"#;
    Scenario::parse(text, "kafka-two-workers").unwrap()
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_worker(config: &std::path::Path, log: &std::path::Path) -> Worker {
    let log = std::fs::File::create(log).unwrap();
    Worker(
        Command::new(env!("CARGO_BIN_EXE_adclick"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start adclick serve"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_one_killed_counts_stay_exact() {
    let scenario = scenario();
    let name = format!(
        "adclick-two-workers-{}-{}",
        std::process::id(),
        SystemClock.now_ms()
    );
    let kafka = KafkaConfig::new(&brokers(), &name, PARTITIONS, &name);
    create_topic(&kafka, 1).await.unwrap();
    let producer = KafkaLog::connect(kafka.clone()).await.unwrap();
    let redis_url =
        std::env::var("ADCLICK_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let prefix = name.replace('-', "_");
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("adclick.toml");
    // The workers judge fraud with the generator's list, as the oracle does.
    let mut generator = Generator::new(&scenario);
    let fraud_list_path = dir.path().join("fraud-list.txt");
    std::fs::write(&fraud_list_path, generator.fraud_list_text()).unwrap();
    std::fs::write(
        &config_path,
        format!(
            r#"roles = ["worker"]
[http]
listen = "127.0.0.1:0"
[engine]
partitions = {PARTITIONS}
epoch_ms = 200
window_ms = 1000
allowed_lateness_ms = 1000
max_out_of_orderness_ms = 300
idle_timeout_ms = 500
dedup_horizon_ms = 20000
dedup_bucket_ms = 1000
[log]
kind = "kafka"
brokers = "{brokers}"
topic = "{name}"
partitions = {PARTITIONS}
group_id = "{name}"
[store]
kind = "redis"
url = "{redis_url}"
prefix = "{prefix}"
[checkpoints]
url = "file://{checkpoints}"
[fraud]
list = "{fraud_list}"
"#,
            brokers = kafka.brokers,
            checkpoints = dir.path().join("checkpoints").display(),
            fraud_list = fraud_list_path.display(),
        ),
    )
    .unwrap();
    let mut first = Some(start_worker(&config_path, &dir.path().join("first.log")));
    let _second = start_worker(&config_path, &dir.path().join("second.log"));

    // Produce 10 s of traffic into Kafka, and the same records into an in-memory mirror that
    // the oracle reads (this broker's high watermark cannot be trusted for exact checks).
    let mirror = MemoryLog::new(PARTITIONS);
    let fraud_list = Arc::new(FraudList::parse(&generator.fraud_list_text()).unwrap());
    let started = Instant::now();
    let start_ms = SystemClock.now_ms();
    let mut sequences = [0u64; PARTITIONS as usize];
    for step in 0..50u64 {
        if step == 25 {
            // Kill one worker process outright, mid-run.
            drop(first.take());
        }
        let now_ms = SystemClock.now_ms();
        let mut batch = GeneratedBatch::default();
        generator.next_batch(now_ms, now_ms - start_ms, 400, &mut batch);
        let blocks = RecordBlock::route(&batch.events, PARTITIONS);
        for (index, block) in blocks.into_iter().enumerate() {
            let partition = PartitionId(index as u32);
            let count = block.len() as u64;
            let batch = AppendBatch {
                producer_id: 1,
                first_sequence: sequences[index],
                records: block,
            };
            producer.append(partition, batch.clone()).await.unwrap();
            mirror.append_now(partition, batch).unwrap();
            sequences[index] += count;
        }
        tokio::time::sleep_until((started + Duration::from_millis(200 * (step + 1))).into()).await;
    }

    // The survivor must end with every count exact and every due window final.
    let keys = KeySpace {
        partitions: PARTITIONS,
        window_ms: 1000,
        salts_max: 1,
    };
    let mut redis = RedisConfig::new(redis_url);
    redis.prefix = prefix;
    let store = RedisStore::connect(redis, keys).await.unwrap();
    let config = scenario.aggregator_config();
    let expected = oracle::expected_from_log(
        &mirror,
        &adclick_core::billing::FraudSchedule::single(fraud_list.clone()),
        &config,
        false,
    )
    .await
    .unwrap();
    assert!(expected.log.count >= 15_000, "the test produced traffic");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (exactly_once, liveness) = loop {
        let scan = store.scan().await.unwrap();
        let statuses = store.partition_status().await.unwrap();
        let exactly_once = oracle::check_exactly_once(&expected, &scan);
        let liveness = oracle::check_liveness(
            &expected,
            &statuses,
            &scan,
            &config,
            Some(oracle::WorkerClock::system(scenario.engine.epoch_ms)),
            0,
        );
        if (exactly_once.holds && liveness.holds) || Instant::now() > deadline {
            break (exactly_once, liveness);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let logs = || {
        ["first.log", "second.log"]
            .iter()
            .map(|log| {
                let text = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {log} (last lines)\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    store.delete_all().await.unwrap();
    assert!(exactly_once.holds, "{}\n{}", exactly_once.detail, logs());
    assert!(liveness.holds, "{}\n{}", liveness.detail, logs());
}
