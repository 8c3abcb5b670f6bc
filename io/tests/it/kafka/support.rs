//! Shared helpers: clicks, a mock cluster with a topic, reading a whole partition.

use std::net::{IpAddr, Ipv4Addr};

use adclick_core::event::ClickEvent;
use adclick_core::ids::*;
use adclick_engine::seams::{Log, ReadBatch};
use adclick_io::kafka::{KafkaConfig, KafkaLog};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub const START_MS: u64 = 1_800_000_000_000;

/// A distinct, valid click of `campaign`.
pub fn click(index: u64, campaign: u64) -> ClickEvent {
    ClickEvent {
        click_id: ClickId(u128::from(index) + 1),
        campaign_id: CampaignId(campaign),
        ad_id: AdId(index % 3),
        user_id: UserId(index),
        ip: IpAddr::V4(Ipv4Addr::new(
            10,
            (index >> 16) as u8,
            (index >> 8) as u8,
            index as u8,
        )),
        user_agent: "Mozilla/5.0 (adclick test)".to_string(),
        country: Country(*b"US"),
        event_time_ms: EventTimeMs(START_MS + index),
        publisher_id: None,
    }
}

pub struct Mock {
    // Kept alive for the test: dropping it shuts the brokers down.
    pub _cluster: MockCluster<'static, DefaultProducerContext>,
    pub config: KafkaConfig,
}

pub fn mock_cluster(topic: &str, partitions: u32) -> Mock {
    let cluster = MockCluster::new(1).expect("start the mock cluster");
    // The mock cluster does not implement CreateTopics; it creates topics itself.
    cluster
        .create_topic(topic, partitions as i32, 1)
        .expect("create the topic on the mock cluster");
    let config = KafkaConfig::new(
        &cluster.bootstrap_servers(),
        topic,
        partitions,
        "adclick-test",
    );
    Mock {
        _cluster: cluster,
        config,
    }
}

/// Reads `[from, end)` of a partition, in as many reads as it takes, checking that each read
/// returns consecutive offsets inside the range.
pub async fn read_range(
    log: &KafkaLog,
    partition: PartitionId,
    from: Offset,
    end: Offset,
    records_max: usize,
) -> Vec<(Offset, Vec<u8>)> {
    let mut records = Vec::new();
    let mut next = from;
    let mut empty_reads = 0;
    while next < end {
        let batches: Vec<ReadBatch> = log.read(partition, next, records_max).await.unwrap();
        let read: usize = batches.iter().map(ReadBatch::len).sum();
        assert!(
            read <= records_max,
            "read {read} records, asked for at most {records_max}"
        );
        if read == 0 {
            // Each empty read waits up to `read_wait_ms`; a record appended and acknowledged
            // must show up long before this many of them.
            empty_reads += 1;
            assert!(
                empty_reads < 5_000,
                "partition {partition}: no records at {next:?}"
            );
            continue;
        }
        for batch in &batches {
            for (offset, bytes) in batch.iter() {
                assert!(offset >= next, "offset {offset:?} went back below {next:?}");
                next = Offset(offset.0 + 1);
                records.push((offset, bytes.to_vec()));
            }
        }
    }
    records
}

/// The bootstrap address of a real Kafka-protocol broker: `ADCLICK_KAFKA_BROKERS` if set, else a
/// Tansu broker that `ci/kafka-broker` starts (once per test process) on `ADCLICK_KAFKA_PORT`,
/// default 19092 so as not to meet a developer's own Kafka on 9092.
pub fn real_brokers() -> String {
    static BROKERS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BROKERS
        .get_or_init(|| {
            if let Ok(brokers) = std::env::var("ADCLICK_KAFKA_BROKERS") {
                return brokers;
            }
            let port = std::env::var("ADCLICK_KAFKA_PORT").unwrap_or_else(|_| "19092".into());
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../ci/kafka-broker");
            let output = std::process::Command::new(script)
                .args(["start", &port])
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run ci/kafka-broker");
            assert!(
                output.status.success(),
                "ci/kafka-broker start {port} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let stdout = String::from_utf8_lossy(&output.stdout);
            stdout
                .lines()
                .last()
                .expect("ci/kafka-broker prints the bootstrap address")
                .trim()
                .to_string()
        })
        .clone()
}

/// A topic name no earlier run used: the broker may outlive test runs, with their topics.
pub fn fresh_topic(purpose: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{purpose}-{}-{nanos}", std::process::id())
}
