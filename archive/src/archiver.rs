//! The archiver of one partition: log records → hourly Parquet files → the manifest.
//!
//! It reads from the manifest's `next_offset`, buffers decoded rows by event hour, and rolls a
//! segment (one contiguous offset range) when the buffer reaches `roll_bytes` or has been open
//! for `roll_interval_ms` of processing time. A roll puts the manifest with the segment as
//! `pending`, puts every file of the segment, then puts the manifest with the segment committed.
//! A restart finds the pending range and rolls exactly that range again, so the files it writes
//! have the same names and the same bytes as those a crash left behind.
//!
//! The caught-up mark (`Manifest::caught_up_to_ms`): once per roll interval the archiver reads
//! its clock, then the log's end offset (a candidate). When everything below that offset is
//! committed, the next committed manifest carries the clock reading; an archiver with nothing
//! buffered puts its manifest for the mark alone, so an idle partition's mark keeps up with the
//! clock, one manifest put per roll interval. A busy partition reaches its candidate's offset
//! as it reads on, and rolls then.
//!
//! **Invariant:** processing time comes only from the `Clock` seam; the archiver never decides
//! what a click counts as (it archives every decodable record, duplicates and fraud included).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use adclick_core::codec;
use adclick_core::ids::{Offset, PartitionId};
use adclick_engine::seams::{BlobError, BlobStore, Clock, Log, LogError, ReadBatch, Retry};
use tokio::sync::watch;

use crate::layout;
use crate::manifest::{
    self, ArchiveException, EXCEPTIONS_LISTED_PER_SEGMENT_MAX, ExceptionKind, ExceptionLine,
    FileEntry, Manifest, ManifestError, OffsetRange, SegmentEntry,
};
use crate::parquet_io::{self, WriteError};
use crate::schema::ArchiveRow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiverConfig {
    /// Roll when the buffered rows reach this many bytes (estimated in memory: the row struct
    /// plus its user agent). Parquet output is about a sixth of it.
    pub roll_bytes: u64,
    /// Roll a non-empty buffer this long (processing time) after its first record. Also how
    /// often the archiver takes a caught-up candidate (and so, at most, how often an idle
    /// partition puts its manifest).
    pub roll_interval_ms: u64,
    /// Records per log read.
    pub read_records_max: usize,
    /// How long `run` waits when the log has nothing new, or after a retryable error.
    pub idle_poll_ms: u64,
}

impl Default for ArchiverConfig {
    fn default() -> ArchiverConfig {
        ArchiverConfig {
            roll_bytes: 128 * 1024 * 1024,
            roll_interval_ms: 10 * 60 * 1000,
            read_records_max: 8192,
            idle_poll_ms: 200,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archiver of partition {partition}: {source}")]
    Log {
        partition: PartitionId,
        source: LogError,
    },
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{key}: {source}")]
    Write { key: String, source: WriteError },
    #[error(
        "partition {partition}: pending segment {first}..={last} is not in the log, which ends at {end}"
    )]
    PendingBeyondLog {
        partition: PartitionId,
        first: u64,
        last: u64,
        end: u64,
    },
}

impl ArchiveError {
    pub fn retry(&self) -> Retry {
        match self {
            ArchiveError::Log { source, .. } => source.retry(),
            ArchiveError::Blob(_) | ArchiveError::Manifest(ManifestError::Blob(_)) => Retry::Helps,
            _ => Retry::Futile,
        }
    }
}

/// The buffered, not yet rolled, part of the partition.
#[derive(Default)]
struct Segment {
    first_offset: Option<Offset>,
    last_offset: Offset,
    /// Rows by event hour start, each in offset order.
    hours: BTreeMap<u64, Vec<ArchiveRow>>,
    rows: u64,
    undecodable: u64,
    quarantined: u64,
    /// Every unarchivable record with its bytes, for the segment's exceptions file.
    exceptions: Vec<ExceptionLine>,
    buffered_bytes: u64,
    opened_ms: u64,
}

/// A clock reading and the log's end offset read after it: once `next_offset` reaches
/// `end_offset`, every record appended before `at_ms` is committed.
#[derive(Clone, Copy, Debug)]
struct CaughtUpCandidate {
    at_ms: u64,
    end_offset: Offset,
}

pub struct Archiver {
    partition: PartitionId,
    log: Arc<dyn Log>,
    blobs: Arc<dyn BlobStore>,
    clock: Arc<dyn Clock>,
    config: ArchiverConfig,
    /// The manifest as committed.
    manifest: Manifest,
    segment: Segment,
    /// The next offset to read from the log.
    read_offset: Offset,
    /// The caught-up mark the next commit can store, once it reaches the candidate's offset.
    candidate: Option<CaughtUpCandidate>,
    /// When `poll` takes the next candidate (processing time).
    next_candidate_ms: u64,
}

impl Archiver {
    /// Loads the partition's manifest and finishes a segment a crash left pending.
    pub async fn open(
        partition: PartitionId,
        log: Arc<dyn Log>,
        blobs: Arc<dyn BlobStore>,
        clock: Arc<dyn Clock>,
        config: ArchiverConfig,
    ) -> Result<Archiver, ArchiveError> {
        let manifest = manifest::load(blobs.as_ref(), partition).await?;
        let mut archiver = Archiver {
            partition,
            log,
            blobs,
            clock,
            config,
            read_offset: manifest.next_offset,
            manifest,
            segment: Segment::default(),
            candidate: None,
            next_candidate_ms: 0,
        };
        if let Some(pending) = archiver.manifest.pending {
            tracing::info!(
                partition = partition.0,
                first = pending.first_offset.0,
                last = pending.last_offset.0,
                "archiver: rewriting the segment a crash left pending"
            );
            let end = Offset(pending.last_offset.0 + 1);
            archiver.read_until(end).await?;
            if archiver.read_offset != end {
                return Err(ArchiveError::PendingBeyondLog {
                    partition,
                    first: pending.first_offset.0,
                    last: pending.last_offset.0,
                    end: archiver.read_offset.0,
                });
            }
            archiver.roll().await?;
        }
        Ok(archiver)
    }

    /// Every offset below this is committed to the archive.
    pub fn next_offset(&self) -> Offset {
        self.manifest.next_offset
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Every record appended to the log before this processing time is committed.
    pub fn caught_up_to_ms(&self) -> u64 {
        self.manifest.caught_up_to_ms
    }

    /// Reads one batch of records from the log and rolls if the buffer is full or old enough,
    /// or if the read reached the caught-up candidate's offset (taken first, when one is due).
    /// Returns how many records it read.
    pub async fn poll(&mut self) -> Result<usize, ArchiveError> {
        if self.candidate.is_none() && self.clock.now_ms() >= self.next_candidate_ms {
            self.take_candidate().await?;
        }
        let batches = self.read(self.config.read_records_max).await?;
        let mut count = 0;
        for batch in &batches {
            count += batch.len();
            self.buffer(batch, None);
        }
        if self.roll_due() || self.candidate_reached() {
            self.roll().await?;
        }
        Ok(count)
    }

    /// Reads the clock, then the log's end offset: the order that makes the mark true. A record
    /// appended before `at_ms` was appended before the end offset was read, so it is below it.
    async fn take_candidate(&mut self) -> Result<Offset, ArchiveError> {
        let at_ms = self.clock.now_ms();
        let end_offset = self
            .log
            .end_offset(self.partition)
            .await
            .map_err(|source| self.log_error(source))?;
        self.candidate = Some(CaughtUpCandidate { at_ms, end_offset });
        self.next_candidate_ms = at_ms.saturating_add(self.config.roll_interval_ms);
        Ok(end_offset)
    }

    fn candidate_reached(&self) -> bool {
        self.candidate
            .is_some_and(|candidate| self.read_offset >= candidate.end_offset)
    }

    /// Archives every record below `end_offset` (or the log's end, if sooner), rolling at the
    /// size target on the way, then rolls what is left. When that is the log's end, the
    /// manifest's caught-up mark is the clock reading taken just before the end was read.
    pub async fn archive_until(&mut self, end_offset: Offset) -> Result<(), ArchiveError> {
        // A fresh candidate replaces an older one only when this call goes to the log's end;
        // otherwise the older one may still be reached.
        let older = self.candidate.take();
        let log_end = self.take_candidate().await?;
        if end_offset < log_end {
            self.candidate = older;
        }
        let end = Offset(end_offset.0.min(log_end.0));
        while self.read_offset < end {
            let before = self.read_offset;
            self.read_until_step(end).await?;
            if self.segment_full() {
                self.roll().await?;
            }
            if self.read_offset == before {
                break;
            }
        }
        self.flush().await
    }

    /// Rolls the buffer now, if it holds any record (or puts the manifest for a caught-up mark
    /// alone, if it has one to store).
    pub async fn flush(&mut self) -> Result<(), ArchiveError> {
        self.roll().await
    }

    /// Archives until `stop` turns true (or its sender goes away), then drains: archives every
    /// record the log holds at that moment and rolls. Retryable errors are logged and retried
    /// after `idle_poll_ms`; others end the loop. A shutdown cut short is harmless: the restart
    /// resumes from the manifest.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), ArchiveError> {
        loop {
            if *stop.borrow() {
                break;
            }
            match self.poll().await {
                Ok(read) if read > 0 => continue,
                Ok(_) => {}
                Err(error) if error.retry() == Retry::Helps => {
                    tracing::warn!(partition = self.partition.0, %error, "archiver: retrying");
                }
                Err(error) => return Err(error),
            }
            let idle = Duration::from_millis(self.config.idle_poll_ms);
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = tokio::time::sleep(idle) => {}
            }
        }
        let end = self
            .log
            .end_offset(self.partition)
            .await
            .map_err(|source| self.log_error(source))?;
        self.archive_until(end).await
    }

    fn log_error(&self, source: LogError) -> ArchiveError {
        ArchiveError::Log {
            partition: self.partition,
            source,
        }
    }

    async fn read(&mut self, records_max: usize) -> Result<Vec<ReadBatch>, ArchiveError> {
        let batches = self
            .log
            .read(self.partition, self.read_offset, records_max)
            .await
            .map_err(|source| self.log_error(source))?;
        Ok(batches)
    }

    /// One read of at most `read_records_max` records, none at or past `end`.
    async fn read_until_step(&mut self, end: Offset) -> Result<(), ArchiveError> {
        let wanted = (end.0 - self.read_offset.0).min(self.config.read_records_max as u64);
        let batches = self.read(wanted as usize).await?;
        for batch in &batches {
            self.buffer(batch, Some(end));
        }
        Ok(())
    }

    /// Reads and buffers every record below `end` that the log has, without rolling.
    async fn read_until(&mut self, end: Offset) -> Result<(), ArchiveError> {
        while self.read_offset < end {
            let before = self.read_offset;
            self.read_until_step(end).await?;
            if self.read_offset == before {
                break;
            }
        }
        Ok(())
    }

    /// Buffers the records of `batch` from `read_offset` on and below `end`.
    fn buffer(&mut self, batch: &ReadBatch, end: Option<Offset>) {
        for (offset, bytes) in batch.iter() {
            if offset < self.read_offset || end.is_some_and(|end| offset >= end) {
                continue;
            }
            if self.segment.first_offset.is_none() {
                self.segment.first_offset = Some(offset);
                self.segment.opened_ms = self.clock.now_ms();
            }
            self.segment.last_offset = offset;
            self.read_offset = Offset(offset.0 + 1);
            match admit(self.partition, offset, bytes, self.clock.now_ms()) {
                Ok(row) => {
                    let hour = layout::hour_start_ms(row.click.event_time_ms.0);
                    self.segment.buffered_bytes +=
                        (size_of::<ArchiveRow>() + row.click.user_agent.len()) as u64;
                    self.segment.rows += 1;
                    self.segment.hours.entry(hour).or_default().push(row);
                }
                Err((kind, reason)) => {
                    tracing::warn!(
                        partition = self.partition.0,
                        offset = offset.0,
                        %reason,
                        "archiver: record not archivable, listed in the manifest"
                    );
                    match kind {
                        ExceptionKind::Undecodable => self.segment.undecodable += 1,
                        ExceptionKind::Quarantined => self.segment.quarantined += 1,
                    }
                    let exception = ArchiveException {
                        offset,
                        kind,
                        read_at_ms: self.clock.now_ms(),
                        reason,
                    };
                    self.segment.buffered_bytes +=
                        (size_of::<ExceptionLine>() + exception.reason.len() + 2 * bytes.len())
                            as u64;
                    self.segment
                        .exceptions
                        .push(ExceptionLine::new(exception, bytes));
                }
            }
        }
    }

    fn segment_full(&self) -> bool {
        self.segment.buffered_bytes >= self.config.roll_bytes
    }

    fn roll_due(&self) -> bool {
        self.segment.first_offset.is_some()
            && (self.segment_full()
                || self.clock.now_ms().saturating_sub(self.segment.opened_ms)
                    >= self.config.roll_interval_ms)
    }

    /// Writes the buffered segment: pending manifest, files, committed manifest. On error the
    /// buffer is kept, so a retry writes the same files again.
    async fn roll(&mut self) -> Result<(), ArchiveError> {
        let Some(first_offset) = self.segment.first_offset else {
            return self.store_mark().await;
        };
        let range = OffsetRange {
            first_offset,
            last_offset: self.segment.last_offset,
        };
        if self.manifest.pending != Some(range) {
            let mut pending = self.manifest.clone();
            pending.pending = Some(range);
            manifest::store(self.blobs.as_ref(), &pending).await?;
        }
        let mut files = Vec::with_capacity(self.segment.hours.len());
        for (&hour_start_ms, rows) in &self.segment.hours {
            let key = layout::file_key(
                self.partition,
                first_offset,
                range.last_offset,
                hour_start_ms,
            );
            let bytes = parquet_io::write_parquet(rows).map_err(|source| ArchiveError::Write {
                key: key.clone(),
                source,
            })?;
            self.blobs.put(&key, bytes).await?;
            files.push(FileEntry {
                key,
                hour_start_ms,
                rows: rows.len() as u64,
            });
        }
        let exceptions_key = self.put_exceptions(range).await?;
        let mut committed = self.manifest.clone();
        committed.pending = None;
        committed.next_offset = Offset(range.last_offset.0 + 1);
        committed.segments.push(SegmentEntry {
            range,
            rows: self.segment.rows,
            undecodable: self.segment.undecodable,
            quarantined: self.segment.quarantined,
            exceptions: self
                .segment
                .exceptions
                .iter()
                .take(EXCEPTIONS_LISTED_PER_SEGMENT_MAX)
                .map(|line| line.exception.clone())
                .collect(),
            exceptions_key,
            files,
        });
        let reached = self.apply_candidate(&mut committed);
        manifest::store(self.blobs.as_ref(), &committed).await?;
        self.manifest = committed;
        self.segment = Segment::default();
        if reached {
            self.candidate = None;
        }
        Ok(())
    }

    /// Puts the manifest with nothing new but the caught-up mark, when the candidate is reached
    /// with nothing buffered (an idle partition). At most once per candidate.
    async fn store_mark(&mut self) -> Result<(), ArchiveError> {
        let mut committed = self.manifest.clone();
        if !self.apply_candidate(&mut committed) {
            return Ok(());
        }
        if committed != self.manifest {
            manifest::store(self.blobs.as_ref(), &committed).await?;
            self.manifest = committed;
        }
        self.candidate = None;
        Ok(())
    }

    /// Stores the candidate's clock reading in `committed` if `committed` holds everything
    /// below the candidate's offset. Returns whether it did.
    fn apply_candidate(&self, committed: &mut Manifest) -> bool {
        committed.log_partitions = Some(self.log.partitions());
        let Some(candidate) = self.candidate else {
            return false;
        };
        if committed.next_offset < candidate.end_offset {
            return false;
        }
        // Candidates are taken in clock order, and the clock of a restarted archiver may be
        // behind the mark its predecessor stored: the mark never goes back.
        committed.caught_up_to_ms = committed.caught_up_to_ms.max(candidate.at_ms);
        true
    }

    /// Writes the segment's exceptions file, if it has exceptions; before the manifest names
    /// it, under a name fixed by the range, so a retried roll writes the same file.
    async fn put_exceptions(&self, range: OffsetRange) -> Result<Option<String>, ArchiveError> {
        if self.segment.exceptions.is_empty() {
            return Ok(None);
        }
        let key = layout::exceptions_key(self.partition, range.first_offset, range.last_offset);
        let mut body = String::new();
        for line in &self.segment.exceptions {
            body.push_str(&serde_json::to_string(line).expect("an exception line serializes"));
            body.push('\n');
        }
        self.blobs.put(&key, body.into_bytes()).await?;
        Ok(Some(key))
    }
}

/// Decodes one record into a row, or says why it cannot be archived.
fn admit(
    partition: PartitionId,
    offset: Offset,
    bytes: &[u8],
    now_ms: u64,
) -> Result<ArchiveRow, (ExceptionKind, String)> {
    let view = codec::decode(bytes)
        .map_err(|error| (ExceptionKind::Undecodable, format!("undecodable: {error}")))?;
    let event_time_ms = view.event_time_ms.0;
    if !adclick_core::window::event_time_in_bounds(event_time_ms, now_ms) {
        return Err((
            ExceptionKind::Quarantined,
            format!(
                "quarantined: event_time_ms {event_time_ms} is outside what ingest accepts against the archiver's clock {now_ms}, with slack"
            ),
        ));
    }
    if i64::try_from(event_time_ms).is_err() {
        return Err((
            ExceptionKind::Quarantined,
            format!("event_time_ms {event_time_ms} does not fit a parquet timestamp"),
        ));
    }
    Ok(ArchiveRow {
        partition,
        offset,
        salt: view.salt,
        click: view.to_owned_event(),
    })
}
