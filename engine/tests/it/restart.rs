//! An ingest node restarted on a durable log: the log hands every incarnation a producer id of
//! its own, so the new node's first batches are not taken for retries of the old node's and
//! dropped.

use std::sync::Arc;

use adclick_core::event::ClickEvent;
use adclick_core::ids::{CampaignId, PartitionId};
use adclick_engine::clock::ManualClock;
use adclick_engine::embedded::FileLog;
use adclick_engine::ingest::{Ack, IngestConfig, IngestCore};
use adclick_engine::seams::Log;

use crate::support::click;

const START_MS: u64 = 1_700_000_000_000;

async fn run_incarnation(dir: &std::path::Path, ids: std::ops::Range<u128>) -> u64 {
    let log = Arc::new(FileLog::open(dir, 1, Default::default()).unwrap());
    let producer_id = log.new_producer_id().await.unwrap();
    let config = IngestConfig {
        producer_id,
        ..IngestConfig::default()
    };
    let (ingest, flusher) =
        IngestCore::start(log.clone(), Arc::new(ManualClock::new(START_MS)), config);
    let clicks: Vec<ClickEvent> = ids.map(|id| click(id, CampaignId(1), START_MS)).collect();
    let outcome = ingest.submit(&clicks, Ack::Durable).await.unwrap();
    assert_eq!(outcome.accepted, clicks.len());
    ingest.close(flusher).await;
    producer_id
}

#[tokio::test]
async fn a_restarted_ingest_node_appends_under_a_new_producer_id() {
    let dir = tempfile::tempdir().unwrap();
    let first = run_incarnation(dir.path(), 1..11).await;
    let second = run_incarnation(dir.path(), 11..21).await;
    assert_ne!(first, second);
    let log = FileLog::open(dir.path(), 1, Default::default()).unwrap();
    assert_eq!(
        log.end_offset(PartitionId(0)).await.unwrap().0,
        20,
        "every durably acknowledged click is in the log"
    );
    assert!(log.new_producer_id().await.unwrap() > second);
}
