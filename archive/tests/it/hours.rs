//! A segment whose rows span two event hours (a late click) becomes one file per hour, both
//! named by the segment's offset range.

use std::sync::Arc;

use adclick_archive::{ArchiverConfig, list_committed, manifest};
use adclick_core::codec;
use adclick_core::event::ClickEvent;
use adclick_core::ids::*;
use adclick_engine::embedded::MemoryBlobStore;
use adclick_engine::seams::BlobStore;

use crate::*;

fn click(id: u128, event_time_ms: u64) -> ClickEvent {
    ClickEvent {
        click_id: ClickId(id),
        campaign_id: CampaignId(5),
        ad_id: AdId(1),
        user_id: UserId(9),
        ip: "198.51.100.4".parse().unwrap(),
        user_agent: "Mozilla/5.0".into(),
        country: Country(*b"FR"),
        event_time_ms: EventTimeMs(event_time_ms),
        publisher_id: None,
    }
}

#[tokio::test]
async fn a_segment_spanning_two_hours_lands_in_two_hour_directories() {
    let mut filled = Filled::new();
    let partition = PartitionId(1);
    // On time at 08:00:00.100, then a click from 07:59:59.900, then on time again.
    let records = vec![
        codec::encode(&click(1, START_MS + 100), Salt(0)),
        codec::encode(&click(2, START_MS - 100), Salt(0)),
        codec::encode(&click(3, START_MS + 200), Salt(2)),
    ];
    filled.append(partition, records);
    let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    archive_all(filled.log.clone(), blobs.clone(), ArchiverConfig::default()).await;

    let name = "p00001-00000000000000000000-00000000000000000002.parquet";
    let keys: Vec<String> = list_committed(blobs.as_ref(), 0, u64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|file| file.key)
        .collect();
    assert_eq!(
        keys,
        vec![
            format!("archive/clicks/dt=2027-01-15/hour=07/{name}"),
            format!("archive/clicks/dt=2027-01-15/hour=08/{name}"),
        ]
    );
    let stored = manifest::load(blobs.as_ref(), partition).await.unwrap();
    assert_eq!(stored.segments.len(), 1);
    let rows: Vec<u64> = stored.segments[0]
        .files
        .iter()
        .map(|file| file.rows)
        .collect();
    assert_eq!(rows, vec![1, 2]);
    // The hour filter of list_committed picks by event hour.
    let eight = list_committed(blobs.as_ref(), START_MS, START_MS + 3_600_000)
        .await
        .unwrap();
    assert_eq!(eight.len(), 1);
    assert_eq!(eight[0].hour_start_ms, START_MS);
    assert_eq!(read_archive(blobs.as_ref()).await, filled.expected);
}

#[tokio::test]
async fn a_click_ingest_could_never_accept_is_quarantined_and_listed_not_filed() {
    let mut filled = Filled::new();
    let partition = PartitionId(0);
    // An outside producer wrote microseconds: the event time is ~50,000 years ahead.
    let records = vec![
        codec::encode(&click(1, START_MS + 100), Salt(0)),
        codec::encode(&click(2, START_MS * 1000), Salt(0)),
        b"not a click".to_vec(),
        codec::encode(&click(3, START_MS + 200), Salt(0)),
    ];
    filled.append(partition, records);
    let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    archive_all(filled.log.clone(), blobs.clone(), ArchiverConfig::default()).await;

    let stored = manifest::load(blobs.as_ref(), partition).await.unwrap();
    assert_eq!(stored.segments.len(), 1);
    let segment = &stored.segments[0];
    assert_eq!(
        (segment.rows, segment.quarantined, segment.undecodable),
        (2, 1, 1)
    );
    let kinds: Vec<(u64, manifest::ExceptionKind)> = segment
        .exceptions
        .iter()
        .map(|exception| (exception.offset.0, exception.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (1, manifest::ExceptionKind::Quarantined),
            (2, manifest::ExceptionKind::Undecodable)
        ]
    );
    let ids: Vec<u128> = read_archive(blobs.as_ref())
        .await
        .iter()
        .map(|row| row.click.click_id.0)
        .collect();
    assert_eq!(ids, vec![1, 3], "the quarantined click is in no hour file");
    // The archive keeps both records' bytes, so they outlive the log's retention.
    let key = segment.exceptions_key.clone().expect("an exceptions file");
    let body = blobs.get(&key).await.unwrap().unwrap();
    let lines: Vec<manifest::ExceptionLine> = std::str::from_utf8(&body)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1].record_hex, "6e6f74206120636c69636b");
    let quarantined = &lines[0].record_hex;
    let bytes: Vec<u8> = (0..quarantined.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&quarantined[at..at + 2], 16).unwrap())
        .collect();
    let view = codec::decode(&bytes).unwrap();
    assert_eq!(view.event_time_ms.0, START_MS * 1000);

    // The period in which the archiver read them reports them, once; the next one does not.
    let report = manifest::list_exceptions(blobs.as_ref(), START_MS, START_MS + 3_600_000)
        .await
        .unwrap();
    assert_eq!((report.quarantined, report.undecodable), (1, 1));
    assert_eq!(report.listed.len(), 2);
    let next =
        manifest::list_exceptions(blobs.as_ref(), START_MS + 3_600_000, START_MS + 7_200_000)
            .await
            .unwrap();
    assert!(next.is_empty());
}
