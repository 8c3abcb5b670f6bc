//! `KafkaLog` against librdkafka's in-process mock cluster.

use std::time::Duration;

use adclick_core::codec;
use adclick_core::ids::*;
use adclick_core::partition::{campaign_key, partition_for_campaign};
use adclick_engine::seams::{AppendBatch, Log, LogError};
use adclick_io::kafka::{KafkaLog, KafkaSetupError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset as KafkaOffset, TopicPartitionList};

use super::support::{click, mock_cluster, read_range};

const PARTITIONS: u32 = 3;

fn encoded_batch(first_index: u64, count: u64, campaign: u64, salt: Salt) -> Vec<Vec<u8>> {
    (first_index..first_index + count)
        .map(|index| codec::encode(&click(index, campaign), salt))
        .collect()
}

fn append_batch(records: &[Vec<u8>]) -> AppendBatch {
    let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    AppendBatch::from_records(1, 0, &slices)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_batches_read_back_in_order_on_every_partition() {
    let mock = mock_cluster("round-trip", PARTITIONS);
    let log = KafkaLog::connect(mock.config.clone()).await.unwrap();
    let mut written: Vec<Vec<Vec<u8>>> = vec![Vec::new(); PARTITIONS as usize];
    for round in 0..3u64 {
        for partition in 0..PARTITIONS {
            // Each partition gets its own campaign and a batch size of its own.
            let count = 50 + 17 * u64::from(partition);
            let records = encoded_batch(round * 1000, count, u64::from(partition) + 1, Salt(0));
            let first = log
                .append(PartitionId(partition), append_batch(&records))
                .await
                .unwrap();
            let already = written[partition as usize].len() as u64;
            assert_eq!(
                first,
                Offset(already),
                "partition {partition} round {round}"
            );
            written[partition as usize].extend(records);
        }
    }
    for partition in 0..PARTITIONS {
        let expected = &written[partition as usize];
        let p = PartitionId(partition);
        let end = log.end_offset(p).await.unwrap();
        assert_eq!(end, Offset(expected.len() as u64));
        let records = read_range(&log, p, Offset(0), end, 64).await;
        let offsets: Vec<u64> = records.iter().map(|(offset, _)| offset.0).collect();
        assert_eq!(offsets, (0..expected.len() as u64).collect::<Vec<_>>());
        let bytes: Vec<&Vec<u8>> = records.iter().map(|(_, bytes)| bytes).collect();
        assert_eq!(bytes, expected.iter().collect::<Vec<_>>());
        // Reading from the middle repositions the reader, backwards and then forwards again.
        let middle = expected.len() as u64 / 2 + 3;
        let tail = read_range(&log, p, Offset(middle), end, 10_000).await;
        assert_eq!(
            tail.first().map(|(offset, _)| *offset),
            Some(Offset(middle))
        );
        assert_eq!(tail.len() as u64, end.0 - middle);
        assert_eq!(tail[0].1, expected[middle as usize]);
        let again = read_range(&log, p, Offset(1), Offset(2), 1).await;
        assert_eq!(again, vec![(Offset(1), expected[1].clone())]);
        // At the end a read answers empty instead of waiting for records that are not coming.
        assert!(log.read(p, end, 100).await.unwrap().is_empty());
    }
    assert!(matches!(
        log.read(PartitionId(PARTITIONS), Offset(0), 1).await,
        Err(LogError::NoSuchPartition { .. })
    ));
    assert!(matches!(
        log.append(PartitionId(7), append_batch(&written[0][..1]))
            .await,
        Err(LogError::NoSuchPartition { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_keyed_by_campaign_and_salt() {
    let mock = mock_cluster("keys", PARTITIONS);
    let log = KafkaLog::connect(mock.config.clone()).await.unwrap();
    let mut records = encoded_batch(0, 3, 42, Salt(0));
    records.extend(encoded_batch(3, 2, 42, Salt(7)));
    records.push(b"not a click".to_vec());
    log.append(PartitionId(1), append_batch(&records))
        .await
        .unwrap();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &mock.config.brokers)
        .set("group.id", "key-check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset("keys", 1, KafkaOffset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut keys: Vec<Option<Vec<u8>>> = Vec::new();
    while keys.len() < records.len() {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(message)) => keys.push(message.key().map(<[u8]>::to_vec)),
            Some(Err(error)) => panic!("consume: {error}"),
            None => panic!("no message within 10 s; got {} keys", keys.len()),
        }
    }
    let expected: Vec<Option<Vec<u8>>> = [
        vec![Some(b"42".to_vec()); 3],
        vec![Some(b"42#7".to_vec()); 2],
        vec![None],
    ]
    .concat();
    assert_eq!(keys, expected);
}

/// An outside producer keyed by campaign, using Kafka's default partitioner, must put every click
/// on the partition our ingest would pick, or per-partition dedup and ownership break.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_producer_keyed_by_campaign_lands_on_our_partition() {
    const CAMPAIGNS: u64 = 120;
    let partitions = 7;
    let mock = mock_cluster("outside", partitions);
    let log = KafkaLog::connect(mock.config.clone()).await.unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &mock.config.brokers)
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let mut sent = 0u64;
    for campaign in 1..=CAMPAIGNS {
        for salt in [Salt(0), Salt(3)] {
            let record = codec::encode(&click(sent, campaign), salt);
            let mut key_buffer = [0u8; 32];
            let key = campaign_key(CampaignId(campaign), salt, &mut key_buffer);
            producer
                .send(
                    BaseRecord::<[u8], [u8]>::to("outside")
                        .key(key)
                        .payload(&record),
                )
                .map_err(|(error, _)| error)
                .unwrap();
            sent += 1;
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let mut seen = 0u64;
    for partition in (0..partitions).map(PartitionId) {
        let end = log.end_offset(partition).await.unwrap();
        assert!(end.0 > 0, "partition {partition} got no campaign at all");
        for (offset, bytes) in read_range(&log, partition, Offset(0), end, 1_000).await {
            let click = codec::decode(&bytes).unwrap();
            assert_eq!(
                partition_for_campaign(click.campaign_id, click.salt, partitions),
                partition,
                "campaign {} salt {} at offset {offset:?}",
                click.campaign_id,
                click.salt.0
            );
            seen += 1;
        }
    }
    assert_eq!(seen, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rejects_a_partition_count_the_topic_does_not_have() {
    let mock = mock_cluster("mismatch", 4);
    let mut config = mock.config.clone();
    config.partitions = 5;
    match KafkaLog::connect(config).await {
        Err(KafkaSetupError::PartitionMismatch {
            configured: 5,
            actual: 4,
            ..
        }) => {}
        other => panic!("expected a partition mismatch, got {other:?}"),
    }
}
