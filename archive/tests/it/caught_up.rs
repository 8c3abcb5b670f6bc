//! The caught-up mark (issue 19, item 4): billing used to bill whatever was archived, so a
//! lagging or stopped archiver meant silent under-billing. The manifest now says up to which
//! processing time the archive holds every record of the log, and billing waits for it. These
//! tests hold the mark to its meaning: an idle partition's mark keeps up with the clock (so it
//! never blocks billing), at most one manifest put per roll interval, and the mark never covers a
//! record appended after the archiver read the log's end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use adclick_archive::{Archiver, ArchiverConfig, manifest};
use adclick_core::ids::*;
use adclick_engine::clock::ManualClock;
use adclick_engine::embedded::MemoryBlobStore;
use adclick_engine::seams::{AppendBatch, BlobError, BlobStore, Clock, Log, LogError, ReadBatch};
use async_trait::async_trait;

use crate::*;

/// A blob store that counts manifest puts.
#[derive(Default)]
struct CountingBlobs {
    inner: MemoryBlobStore,
    manifest_puts: AtomicU64,
}

#[async_trait]
impl BlobStore for CountingBlobs {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        if key.starts_with(adclick_archive::layout::MANIFEST_PREFIX) {
            self.manifest_puts.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.put(key, bytes).await
    }

    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<bool, BlobError> {
        self.inner.put_if_absent(key, bytes).await
    }

    async fn modified_ms(&self, key: &str) -> Result<Option<u64>, BlobError> {
        self.inner.modified_ms(key).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.inner.delete(key).await
    }
}

const ROLL_INTERVAL_MS: u64 = 10 * 60 * 1000;

fn config() -> ArchiverConfig {
    ArchiverConfig {
        roll_interval_ms: ROLL_INTERVAL_MS,
        read_records_max: 500,
        ..ArchiverConfig::default()
    }
}

/// Polls until a poll reads nothing.
async fn poll_dry(archiver: &mut Archiver) {
    while archiver.poll().await.unwrap() > 0 {}
}

#[tokio::test]
async fn an_idle_partition_s_caught_up_mark_advances_with_no_new_clicks() {
    let mut filled = Filled::new();
    filled.generate(2, 300);
    let partition = PartitionId(1);
    let end = filled.log.end_offset(partition).await.unwrap();
    let blobs = Arc::new(CountingBlobs::default());
    let clock = Arc::new(ManualClock::new(START_MS));
    let mut archiver = Archiver::open(
        partition,
        filled.log.clone(),
        blobs.clone(),
        clock.clone(),
        config(),
    )
    .await
    .unwrap();

    // The first poll takes a candidate at START_MS; reading to the log's end commits it.
    poll_dry(&mut archiver).await;
    let stored = manifest::load(blobs.as_ref(), partition).await.unwrap();
    assert_eq!(stored.next_offset, end);
    assert_eq!(stored.caught_up_to_ms, START_MS);
    assert_eq!(stored.log_partitions, Some(PARTITIONS));
    let segments = stored.segments.len();
    let puts = blobs.manifest_puts.load(Ordering::SeqCst);

    // Idle, within the roll interval: no candidate, no put.
    for _ in 0..20 {
        clock.advance(ROLL_INTERVAL_MS / 40);
        assert_eq!(archiver.poll().await.unwrap(), 0);
    }
    assert_eq!(blobs.manifest_puts.load(Ordering::SeqCst), puts);

    // Idle for a whole interval: the mark follows the clock with no new segment, one put.
    clock.set(START_MS + ROLL_INTERVAL_MS);
    assert_eq!(archiver.poll().await.unwrap(), 0);
    let stored = manifest::load(blobs.as_ref(), partition).await.unwrap();
    assert_eq!(stored.caught_up_to_ms, START_MS + ROLL_INTERVAL_MS);
    assert_eq!(
        stored.segments.len(),
        segments,
        "the mark alone, no segment"
    );
    assert_eq!(stored.next_offset, end);
    assert_eq!(blobs.manifest_puts.load(Ordering::SeqCst), puts + 1);

    // Hours of idleness: one put per interval, the mark within an interval of the clock.
    for _ in 0..(6 * 6 * 4) {
        clock.advance(ROLL_INTERVAL_MS / 4);
        assert_eq!(archiver.poll().await.unwrap(), 0);
    }
    let stored = manifest::load(blobs.as_ref(), partition).await.unwrap();
    assert!(clock.now_ms() - stored.caught_up_to_ms < ROLL_INTERVAL_MS);
    assert_eq!(blobs.manifest_puts.load(Ordering::SeqCst), puts + 1 + 36);
    assert_eq!(archiver.caught_up_to_ms(), stored.caught_up_to_ms);
}

#[tokio::test]
async fn an_archiver_that_never_runs_leaves_its_mark_where_it_stopped() {
    // The defect's other half: a stopped archiver's mark stays behind the clock, which is what
    // lets billing see it.
    let mut filled = Filled::new();
    filled.generate(1, 200);
    let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    archive_all(filled.log.clone(), blobs.clone(), config()).await;
    filled.generate(1, 200);
    for partition in (0..PARTITIONS).map(PartitionId) {
        let stored = manifest::load(blobs.as_ref(), partition).await.unwrap();
        assert_eq!(stored.caught_up_to_ms, START_MS);
        assert!(stored.next_offset < filled.log.end_offset(partition).await.unwrap());
    }
}

/// A log that, each time its end offset is read, appends one more click right after reading
/// the end and then moves the clock on by 1 ms: the race the mark's order of reads is for. It
/// records when each record was appended, by the clock.
struct RacingLog {
    inner: Arc<adclick_engine::embedded::MemoryLog>,
    clock: Arc<ManualClock>,
    click: Vec<u8>,
    sequence: AtomicU64,
    /// (partition, offset, clock reading at the append).
    appended: Mutex<Vec<(PartitionId, Offset, u64)>>,
}

#[async_trait]
impl Log for RacingLog {
    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }

    async fn append(&self, partition: PartitionId, batch: AppendBatch) -> Result<Offset, LogError> {
        self.inner.append(partition, batch).await
    }

    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        records_max: usize,
    ) -> Result<Vec<ReadBatch>, LogError> {
        self.inner.read(partition, from, records_max).await
    }

    async fn end_offset(&self, partition: PartitionId) -> Result<Offset, LogError> {
        let end = self.inner.end_offset(partition).await?;
        let sequence = self.sequence.fetch_add(1, Ordering::SeqCst);
        let batch = AppendBatch::from_records(99, sequence, &[&self.click]);
        let offset = self.inner.append_now(partition, batch)?;
        self.appended
            .lock()
            .unwrap()
            .push((partition, offset, self.clock.now_ms()));
        self.clock.advance(1);
        Ok(end)
    }

    async fn new_producer_id(&self) -> Result<u64, LogError> {
        self.inner.new_producer_id().await
    }
}

/// Every record appended before the mark (by the clock) is below `next_offset`.
fn check_mark(log: &RacingLog, filled_end: Offset, manifest: &manifest::Manifest) {
    for &(partition, offset, appended_at_ms) in log.appended.lock().unwrap().iter() {
        if partition == manifest.partition && appended_at_ms < manifest.caught_up_to_ms {
            assert!(
                offset < manifest.next_offset,
                "the mark {} covers offset {} appended at {appended_at_ms}, but only offsets below {} are committed",
                manifest.caught_up_to_ms,
                offset.0,
                manifest.next_offset.0
            );
        }
    }
    // The generated records were all appended before the clock started.
    if manifest.caught_up_to_ms > START_MS {
        assert!(manifest.next_offset >= filled_end);
    }
}

#[tokio::test]
async fn the_caught_up_mark_never_covers_a_record_appended_after_the_end_was_read() {
    let mut filled = Filled::new();
    filled.generate(2, 300);
    let partition = PartitionId(0);
    let filled_end = filled.log.end_offset(partition).await.unwrap();
    let clock = Arc::new(ManualClock::new(START_MS + 1));
    let click = adclick_core::codec::encode(&filled.expected_in(partition)[0].click, Salt(0));
    let log = Arc::new(RacingLog {
        inner: filled.log.clone(),
        clock: clock.clone(),
        click,
        sequence: AtomicU64::new(0),
        appended: Mutex::new(Vec::new()),
    });
    let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    let mut archiver = Archiver::open(
        partition,
        log.clone(),
        blobs.clone(),
        clock.clone(),
        config(),
    )
    .await
    .unwrap();
    let mut marks = Vec::new();
    for round in 0..6 {
        // Polls, idle intervals and archive_until, each followed by the check.
        poll_dry(&mut archiver).await;
        check_mark(&log, filled_end, archiver.manifest());
        clock.advance(ROLL_INTERVAL_MS);
        if round % 2 == 1 {
            let end = log.inner.end_offset(partition).await.unwrap();
            archiver.archive_until(end).await.unwrap();
        } else {
            archiver.poll().await.unwrap();
        }
        let stored = manifest::load(blobs.as_ref(), partition).await.unwrap();
        assert_eq!(&stored, archiver.manifest());
        check_mark(&log, filled_end, &stored);
        marks.push(stored.caught_up_to_ms);
    }
    assert!(
        marks.windows(2).all(|pair| pair[0] < pair[1]),
        "the mark moves forward each interval: {marks:?}"
    );
    assert!(
        log.appended.lock().unwrap().len() >= 6,
        "the race ran at each candidate"
    );
}
