//! Measures `KafkaLog` append and read throughput. Not a test: it asserts only that every record
//! comes back. Run in release:
//!
//! ```text
//! cargo run --release -p adclick-io --example kafka_throughput -- mock 1000000 1000 4 8
//! cargo run --release -p adclick-io --example kafka_throughput -- 127.0.0.1:19092 1000000 1000 4 8
//! ```
//! Arguments: brokers (`mock` for librdkafka's in-process mock cluster), records, records per
//! append, partitions, appends in flight at once.

use std::sync::Arc;
use std::time::Instant;

use adclick_core::codec;
use adclick_core::event::ClickEvent;
use adclick_core::ids::*;
use adclick_engine::seams::{AppendBatch, Log, RecordBlock};
use adclick_io::kafka::{KafkaConfig, KafkaLog, create_topic};

fn click(index: u64) -> ClickEvent {
    ClickEvent {
        click_id: ClickId(u128::from(index) + 1),
        campaign_id: CampaignId(index % 1000),
        ad_id: AdId(index % 7),
        user_id: UserId(index),
        ip: std::net::IpAddr::V4(std::net::Ipv4Addr::from(index as u32)),
        user_agent: String::new(),
        country: Country(*b"US"),
        event_time_ms: EventTimeMs(1_800_000_000_000 + index),
        publisher_id: None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |index: usize, default: &str| args.get(index).cloned().unwrap_or(default.into());
    let brokers = arg(0, "mock");
    let records: u64 = arg(1, "1000000").parse()?;
    let batch_records: u64 = arg(2, "1000").parse()?;
    let partitions: u32 = arg(3, "4").parse()?;
    let in_flight: u64 = arg(4, "8").parse()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let topic = format!("throughput-{nanos}");

    let _mock;
    let config = if brokers == "mock" {
        let cluster = rdkafka::mocking::MockCluster::new(1)?;
        cluster.create_topic(&topic, partitions as i32, 1)?;
        let config = KafkaConfig::new(&cluster.bootstrap_servers(), &topic, partitions, &topic);
        _mock = cluster;
        config
    } else {
        let config = KafkaConfig::new(&brokers, &topic, partitions, &topic);
        create_topic(&config, 1).await?;
        config
    };
    let log = Arc::new(KafkaLog::connect(config).await?);

    // Pre-encoded batches, so that the clock measures the log and not the encoder.
    let batches: Vec<(PartitionId, RecordBlock)> = (0..records / batch_records)
        .map(|batch| {
            let mut block = RecordBlock::default();
            for index in batch * batch_records..(batch + 1) * batch_records {
                block.push(&codec::encode(&click(index), Salt(0)));
            }
            (PartitionId((batch % u64::from(partitions)) as u32), block)
        })
        .collect();
    let record_bytes = batches[0].1.get(0).len();
    let batches = Arc::new(std::sync::Mutex::new(batches));

    let started = Instant::now();
    let appenders: Vec<_> = (0..in_flight)
        .map(|_| {
            let (log, batches) = (log.clone(), batches.clone());
            tokio::spawn(async move {
                loop {
                    let next = batches.lock().unwrap().pop();
                    let Some((partition, block)) = next else {
                        return;
                    };
                    let batch = AppendBatch {
                        producer_id: 1,
                        first_sequence: 0,
                        records: block,
                    };
                    log.append(partition, batch).await.unwrap();
                }
            })
        })
        .collect();
    for appender in appenders {
        appender.await?;
    }
    let append_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut read = 0u64;
    for partition in (0..partitions).map(PartitionId) {
        let expected = records / batch_records / u64::from(partitions) * batch_records
            + if u64::from(partition.0) < records / batch_records % u64::from(partitions) {
                batch_records
            } else {
                0
            };
        let mut next = Offset(0);
        while next.0 < expected {
            for batch in log.read(partition, next, 16_384).await? {
                read += batch.len() as u64;
                next = Offset(batch.first_offset.0 + batch.block.len() as u64);
            }
        }
    }
    let read_s = started.elapsed().as_secs_f64();
    assert_eq!(read, records / batch_records * batch_records);
    println!(
        "{brokers}: {read} records of {record_bytes} bytes, {batch_records} per append, {partitions} partitions, {in_flight} appends in flight"
    );
    println!(
        "append: {:.0} records/s ({append_s:.2} s)",
        read as f64 / append_s
    );
    println!(
        "read:   {:.0} records/s ({read_s:.2} s)",
        read as f64 / read_s
    );
    Ok(())
}
