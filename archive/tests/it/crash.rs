//! A crash between a segment's file puts and its manifest update: the restarted archiver writes
//! the same files (names and bytes), completes the manifest, and no row is lost or doubled.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use adclick_archive::{Archiver, ArchiverConfig, clean, list_committed, manifest};
use adclick_core::ids::*;
use adclick_engine::clock::ManualClock;
use adclick_engine::embedded::MemoryBlobStore;
use adclick_engine::seams::{BlobError, BlobStore, Log};
use async_trait::async_trait;

use crate::*;

/// A blob store that fails, once, the first manifest put that follows a Parquet file put (the
/// crash point), and records every put it lets through.
#[derive(Default)]
struct CrashingBlobs {
    inner: MemoryBlobStore,
    armed: AtomicBool,
    saw_file: AtomicBool,
    puts: Mutex<Vec<(String, Vec<u8>)>>,
}

impl CrashingBlobs {
    /// The Parquet puts so far, by key (the last put of each key).
    fn file_puts(&self) -> BTreeMap<String, Vec<u8>> {
        let puts = self.puts.lock().unwrap();
        puts.iter()
            .filter(|(key, _)| key.ends_with(".parquet"))
            .cloned()
            .collect()
    }

    fn clear_puts(&self) {
        self.puts.lock().unwrap().clear();
    }
}

#[async_trait]
impl BlobStore for CrashingBlobs {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        if key.ends_with(".parquet") {
            self.saw_file.store(true, Ordering::SeqCst);
        } else if self.saw_file.load(Ordering::SeqCst) && self.armed.swap(false, Ordering::SeqCst) {
            return Err(BlobError::Unavailable {
                key: key.to_owned(),
                message: "injected crash before the manifest update".into(),
            });
        }
        self.puts
            .lock()
            .unwrap()
            .push((key.to_owned(), bytes.clone()));
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

#[tokio::test]
async fn a_crash_before_the_manifest_update_is_rewritten_identically_on_restart() {
    let mut filled = Filled::new();
    filled.generate(20, 400);
    let partition = PartitionId(0);
    let end = filled.log.end_offset(partition).await.unwrap();
    let crashing = Arc::new(CrashingBlobs::default());
    crashing.armed.store(true, Ordering::SeqCst);
    let blobs: Arc<dyn BlobStore> = crashing.clone();
    let clock = Arc::new(ManualClock::new(START_MS));

    // The first run rolls by processing time, after a few small reads: a segment boundary the
    // restart could not find again from the log alone.
    let timed = ArchiverConfig {
        roll_interval_ms: 1000,
        read_records_max: 100,
        ..ArchiverConfig::default()
    };
    let mut first = Archiver::open(
        partition,
        filled.log.clone(),
        blobs.clone(),
        clock.clone(),
        timed,
    )
    .await
    .unwrap();
    let crash = loop {
        match first.poll().await {
            Ok(read) => assert!(read > 0, "the crash comes before the log runs dry"),
            Err(error) => break error,
        }
        clock.advance(400);
    };
    assert!(crash.to_string().contains("injected crash"), "{crash}");
    drop(first);

    let orphans = crashing.file_puts();
    assert!(!orphans.is_empty());
    assert!(
        list_committed(blobs.as_ref(), 0, u64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    let stored = manifest::load(blobs.as_ref(), partition).await.unwrap();
    let pending = stored.pending.expect("the crash left the segment pending");
    assert!(
        pending.last_offset.0 + 1 < end.0,
        "the segment {pending:?} is a strict prefix of the log, which ends at {end:?}"
    );
    // Files of a pending segment are the archiver's, not garbage: clean leaves them.
    let report = clean(blobs.as_ref()).await.unwrap();
    assert!(report.deleted.is_empty(), "{report:?}");

    // The restart reads in big chunks and never rolls by time, yet rewrites the same segment.
    crashing.clear_puts();
    let batch = ArchiverConfig {
        read_records_max: 5000,
        ..ArchiverConfig::default()
    };
    let mut second = Archiver::open(
        partition,
        filled.log.clone(),
        blobs.clone(),
        clock.clone(),
        batch,
    )
    .await
    .unwrap();
    assert_eq!(crashing.file_puts(), orphans, "same names, same bytes");
    assert_eq!(second.next_offset(), Offset(pending.last_offset.0 + 1));
    second.archive_until(end).await.unwrap();

    let stored = manifest::load(blobs.as_ref(), partition).await.unwrap();
    assert_eq!(stored.pending, None);
    assert_eq!(stored.next_offset, end);
    assert_eq!(stored.segments[0].range, pending);
    assert_eq!(
        read_archive(blobs.as_ref()).await,
        filled.expected_in(partition)
    );
}

#[tokio::test]
async fn clean_deletes_unlisted_files_at_or_past_next_offset_only() {
    let mut filled = Filled::new();
    filled.generate(1, 200);
    let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    archive_all(filled.log.clone(), blobs.clone(), ArchiverConfig::default()).await;
    let next = manifest::load(blobs.as_ref(), PartitionId(0))
        .await
        .unwrap()
        .next_offset;
    let ahead =
        adclick_archive::layout::file_key(PartitionId(0), next, Offset(next.0 + 9), START_MS);
    let behind = adclick_archive::layout::file_key(PartitionId(0), Offset(0), Offset(3), START_MS);
    blobs.put(&ahead, b"leftover".to_vec()).await.unwrap();
    blobs.put(&behind, b"odd".to_vec()).await.unwrap();
    let committed = list_committed(blobs.as_ref(), 0, u64::MAX).await.unwrap();

    let report = clean(blobs.as_ref()).await.unwrap();
    assert_eq!(report.deleted, vec![ahead.clone()]);
    assert_eq!(report.unlisted_kept, vec![behind.clone()]);
    assert_eq!(blobs.get(&ahead).await.unwrap(), None);
    assert_eq!(
        list_committed(blobs.as_ref(), 0, u64::MAX).await.unwrap(),
        committed
    );
    for file in committed {
        assert!(blobs.get(&file.key).await.unwrap().is_some());
    }
}
