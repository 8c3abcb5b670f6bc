//! Generated clicks through MemoryLog → archiver → reader: every record exactly once, every
//! field equal; undecodable records counted, not archived.

use std::sync::Arc;

use adclick_archive::manifest;
use adclick_archive::{BillingRow, read_billing_rows};
use adclick_core::ids::*;
use adclick_engine::embedded::MemoryBlobStore;
use adclick_engine::seams::BlobStore;

use crate::*;

#[tokio::test]
async fn every_generated_click_comes_back_exactly_once_with_every_field() {
    let mut filled = Filled::new();
    filled.generate(6, 400);
    let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    archive_all(filled.log.clone(), blobs.clone(), small_segments()).await;

    let rows = read_archive(blobs.as_ref()).await;
    assert_eq!(rows.len(), filled.expected.len());
    assert_eq!(rows, filled.expected);

    // The billing projection reads the same clicks.
    let mut billing = Vec::new();
    for file in adclick_archive::list_committed(blobs.as_ref(), 0, u64::MAX)
        .await
        .unwrap()
    {
        let bytes = blobs.get(&file.key).await.unwrap().unwrap();
        billing.extend(read_billing_rows(&file.key, bytes).unwrap());
    }
    billing.sort_by_key(|row| (row.partition, row.offset));
    let expected: Vec<BillingRow> = filled.expected.iter().map(BillingRow::from).collect();
    assert_eq!(billing, expected);

    for partition in 0..PARTITIONS {
        let manifest = manifest::load(blobs.as_ref(), PartitionId(partition))
            .await
            .unwrap();
        assert!(
            manifest.segments.len() > 1,
            "small segments roll several times"
        );
        assert_eq!(manifest.pending, None);
        let undecodable: u64 = manifest
            .segments
            .iter()
            .map(|segment| segment.undecodable)
            .sum();
        assert_eq!(undecodable, filled.garbage[partition as usize].len() as u64);
        // Segments tile the offsets with no gap and no overlap.
        let mut next = 0;
        for segment in &manifest.segments {
            assert_eq!(segment.range.first_offset, Offset(next));
            next = segment.range.last_offset.0 + 1;
        }
        assert_eq!(manifest.next_offset, Offset(next));
    }
    assert!(filled.garbage[0].len() == 6, "one garbage record per round");
}

#[tokio::test]
async fn archiving_again_from_the_manifest_adds_only_new_records() {
    let mut filled = Filled::new();
    filled.generate(2, 300);
    let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    archive_all(filled.log.clone(), blobs.clone(), small_segments()).await;
    // A second run over the same log finds nothing new; then more traffic arrives.
    archive_all(filled.log.clone(), blobs.clone(), small_segments()).await;
    let partition = PartitionId(1);
    let records: Vec<Vec<u8>> = filled
        .expected_in(PartitionId(0))
        .iter()
        .take(5)
        .map(|row| adclick_core::codec::encode(&row.click, row.salt))
        .collect();
    filled.append(partition, records);
    filled
        .expected
        .sort_by_key(|row| (row.partition, row.offset));
    archive_all(filled.log.clone(), blobs.clone(), small_segments()).await;
    assert_eq!(read_archive(blobs.as_ref()).await, filled.expected);
}

#[tokio::test]
async fn run_drains_the_log_when_stopped() {
    let mut filled = Filled::new();
    filled.generate(3, 200);
    let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for partition in 0..PARTITIONS {
        let archiver = adclick_archive::Archiver::open(
            PartitionId(partition),
            filled.log.clone(),
            blobs.clone(),
            Arc::new(adclick_engine::clock::ManualClock::new(START_MS)),
            adclick_archive::ArchiverConfig::default(),
        )
        .await
        .unwrap();
        tasks.push(tokio::spawn(archiver.run(stop.clone())));
    }
    // The clock never moves and the buffer never fills: files come from catching up with the
    // log's end (the first candidate) or from the stop's drain.
    stop_sender.send(true).unwrap();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(read_archive(blobs.as_ref()).await, filled.expected);
}
