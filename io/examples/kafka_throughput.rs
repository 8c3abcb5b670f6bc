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

type MockCluster =
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// The run's shape, from the command line.
struct Args {
    brokers: String,
    records: u64,
    batch_records: u64,
    partitions: u32,
    in_flight: u64,
}

impl Args {
    fn parse() -> anyhow::Result<Args> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let arg = |index: usize, default: &str| args.get(index).cloned().unwrap_or(default.into());
        Ok(Args {
            brokers: arg(0, "mock"),
            records: arg(1, "1000000").parse()?,
            batch_records: arg(2, "1000").parse()?,
            partitions: arg(3, "4").parse()?,
            in_flight: arg(4, "8").parse()?,
        })
    }

    fn batches(&self) -> u64 {
        self.records / self.batch_records
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let (log, _mock) = connect(&args).await?;
    let batches = encode_batches(&args);
    let record_bytes = batches[0].1.get(0).len();

    let started = Instant::now();
    append_all(&log, batches, args.in_flight).await?;
    let append_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let read = read_all(&log, &args).await?;
    let read_s = started.elapsed().as_secs_f64();
    assert_eq!(read, args.batches() * args.batch_records);
    let Args {
        brokers,
        batch_records,
        partitions,
        in_flight,
        ..
    } = &args;
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

/// A fresh topic on the brokers, or on librdkafka's mock cluster (kept alive by the caller).
async fn connect(args: &Args) -> anyhow::Result<(Arc<KafkaLog>, Option<MockCluster>)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let topic = format!("throughput-{nanos}");
    let (config, mock) = if args.brokers == "mock" {
        let cluster = rdkafka::mocking::MockCluster::new(1)?;
        cluster.create_topic(&topic, args.partitions as i32, 1)?;
        let servers = cluster.bootstrap_servers();
        (
            KafkaConfig::new(&servers, &topic, args.partitions, &topic),
            Some(cluster),
        )
    } else {
        let config = KafkaConfig::new(&args.brokers, &topic, args.partitions, &topic);
        create_topic(&config, 1).await?;
        (config, None)
    };
    Ok((Arc::new(KafkaLog::connect(config).await?), mock))
}

/// Pre-encoded batches, so that the clock measures the log and not the encoder.
fn encode_batches(args: &Args) -> Vec<(PartitionId, RecordBlock)> {
    (0..args.batches())
        .map(|batch| {
            let mut block = RecordBlock::default();
            for index in batch * args.batch_records..(batch + 1) * args.batch_records {
                block.push(&codec::encode(&click(index), Salt(0)));
            }
            (
                PartitionId((batch % u64::from(args.partitions)) as u32),
                block,
            )
        })
        .collect()
}

/// Appends every batch with `in_flight` appenders taking the next one as they finish.
async fn append_all(
    log: &Arc<KafkaLog>,
    batches: Vec<(PartitionId, RecordBlock)>,
    in_flight: u64,
) -> anyhow::Result<()> {
    let batches = Arc::new(std::sync::Mutex::new(batches));
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
    Ok(())
}

/// Reads every partition back to the records appended to it; returns how many came back.
async fn read_all(log: &KafkaLog, args: &Args) -> anyhow::Result<u64> {
    let partitions = u64::from(args.partitions);
    let mut read = 0u64;
    for partition in (0..args.partitions).map(PartitionId) {
        let extra_batch = u64::from(partition.0) < args.batches() % partitions;
        let expected = (args.batches() / partitions + u64::from(extra_batch)) * args.batch_records;
        let mut next = Offset(0);
        while next.0 < expected {
            for batch in log.read(partition, next, 16_384).await? {
                read += batch.len() as u64;
                next = Offset(batch.first_offset.0 + batch.block.len() as u64);
            }
        }
    }
    Ok(read)
}
