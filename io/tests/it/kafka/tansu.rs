//! Against a real Kafka-protocol broker (Tansu by default, see `support::real_brokers`).

use std::collections::BTreeSet;
use std::time::Duration;

use adclick_core::codec;
use adclick_core::ids::*;
use adclick_engine::seams::{AppendBatch, Log};
use adclick_io::kafka::{KafkaConfig, KafkaGroup, KafkaLog, create_topic};
use tokio::sync::watch;

use super::support::{click, fresh_topic, read_range, real_brokers};

/// Generous: a rebalance on a slow CI machine can take many seconds.
const GROUP_TIMEOUT: Duration = Duration::from_secs(90);

async fn topic(purpose: &str, partitions: u32) -> KafkaConfig {
    // Fresh names for the group too: the broker keeps a group's state between runs.
    let name = fresh_topic(purpose);
    let config = KafkaConfig::new(&real_brokers(), &name, partitions, &name);
    create_topic(&config, 1).await.unwrap();
    // Creating it again is not an error: `serve` calls this at every start.
    create_topic(&config, 1).await.unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_on_a_real_broker() {
    let partitions = 3;
    let config = topic("round-trip", partitions).await;
    let log = KafkaLog::connect(config).await.unwrap();
    let mut written: Vec<Vec<Vec<u8>>> = vec![Vec::new(); partitions as usize];
    for round in 0..3u64 {
        for partition in 0..partitions {
            let records: Vec<Vec<u8>> = (0..40 + u64::from(partition) * 11)
                .map(|index| codec::encode(&click(round * 1000 + index, 5), Salt(0)))
                .collect();
            let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            let first = log
                .append(
                    PartitionId(partition),
                    AppendBatch::from_records(1, 0, &slices),
                )
                .await
                .unwrap();
            assert_eq!(first, Offset(written[partition as usize].len() as u64));
            written[partition as usize].extend(records);
        }
    }
    for partition in 0..partitions {
        let expected = &written[partition as usize];
        let p = PartitionId(partition);
        let end = Offset(expected.len() as u64);
        // Tansu's high watermark is the last batch's start offset plus one: at most the end.
        let reported = log.end_offset(p).await.unwrap();
        assert!(reported.0 > 0 && reported <= end, "{reported:?} vs {end:?}");
        let records = read_range(&log, p, Offset(0), end, 50).await;
        let bytes: Vec<&Vec<u8>> = records.iter().map(|(_, bytes)| bytes).collect();
        assert_eq!(bytes, expected.iter().collect::<Vec<_>>());
        let offsets: Vec<u64> = records.iter().map(|(offset, _)| offset.0).collect();
        assert_eq!(offsets, (0..end.0).collect::<Vec<_>>());
        let tail = read_range(&log, p, Offset(end.0 - 7), end, 1_000).await;
        assert_eq!(tail.len(), 7);
        assert_eq!(tail[0].1, expected[end.0 as usize - 7]);
    }
}

/// Waits until `condition` holds over both members' assignments, or fails after the timeout.
async fn until_both(
    a: &mut watch::Receiver<BTreeSet<PartitionId>>,
    b: &mut watch::Receiver<BTreeSet<PartitionId>>,
    what: &str,
    condition: impl Fn(&BTreeSet<PartitionId>, &BTreeSet<PartitionId>) -> bool,
) {
    let waited = tokio::time::timeout(GROUP_TIMEOUT, async {
        loop {
            if condition(&a.borrow_and_update(), &b.borrow_and_update()) {
                return;
            }
            tokio::select! {
                _ = a.changed() => {}
                _ = b.changed() => {}
            }
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{what}: not reached within {GROUP_TIMEOUT:?}; a = {:?}, b = {:?}",
        *a.borrow(),
        *b.borrow()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_two_splits_the_partitions_and_one_takes_all_when_the_other_leaves() {
    let partitions = 4;
    let config = topic("group", partitions).await;
    let all: BTreeSet<PartitionId> = (0..partitions).map(PartitionId).collect();

    let first = KafkaGroup::join(&config).unwrap();
    let mut first_assigned = first.assigned();
    let (_never, mut nobody) = watch::channel(BTreeSet::new());
    until_both(
        &mut first_assigned,
        &mut nobody,
        "the only member has all",
        |a, _| *a == all,
    )
    .await;

    let second = KafkaGroup::join(&config).unwrap();
    let mut second_assigned = second.assigned();
    until_both(
        &mut first_assigned,
        &mut second_assigned,
        "two members split the partitions",
        |a, b| !a.is_empty() && !b.is_empty() && a.is_disjoint(b) && a.union(b).eq(all.iter()),
    )
    .await;
    let first_assignment = first.assignment();
    let second_assignment = second.assignment();
    for partition in all.iter().copied() {
        assert_ne!(
            first_assignment(partition),
            second_assignment(partition),
            "partition {partition} must have exactly one owner"
        );
    }

    tokio::task::spawn_blocking(move || first.leave())
        .await
        .unwrap();
    until_both(
        &mut second_assigned,
        &mut nobody,
        "the remaining member has all",
        |b, _| *b == all,
    )
    .await;
    assert!(all.iter().all(|partition| second_assignment(*partition)));
    assert!(!all.iter().any(|partition| first_assignment(*partition)));
}

/// The retention `serve` checks at start is the one the broker reports for the topic, and a
/// topic it creates keeps what it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_with_a_retention_reports_it() {
    let name = fresh_topic("retention");
    let config = KafkaConfig::new(&real_brokers(), &name, 1, &name);
    let retention_ms = 8 * 24 * 3_600_000;
    adclick_io::kafka::create_topic_retaining(&config, 1, Some(retention_ms))
        .await
        .unwrap();
    let reported = adclick_io::kafka::topic_retention_ms(&config)
        .await
        .unwrap();
    assert_eq!(reported, Some(retention_ms as i64));
}
