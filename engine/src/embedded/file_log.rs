//! The in-process log, made durable with segment files, so that a single-node deployment
//! survives restarts.
//!
//! Every appended batch is written as one frame to its partition's current segment before it
//! becomes visible to readers (and fsynced when `sync_every_append`, the default, since a durable
//! ack promises it). Segments are named by their first offset and roll at a size. On open, every
//! frame is read back into memory, producers' sequence numbers included, so a producer retrying a
//! batch across a restart still appends it only once.
//!
//! Frame: `b"ADLS"`, payload length (u32 LE), CRC-32 of the payload (u32 LE), payload:
//! producer id (u64), first sequence (u64), first offset (u64), record count (u32), record end
//! positions (u32 each), record bytes.
//!
//! A failed append leaves no frame behind. The in-memory log takes a batch (gives it offsets,
//! shows it to readers, records its sequence) only after its frame is written and synced; when the
//! write or the sync fails (a full disk, an I/O error), the segment is cut back to its last good
//! length and synced before the error returns, so the retry is written where the failed frame
//! began, never on top of it. If the cut fails too, the segment is sealed: nothing more is
//! appended to it, and the next append starts a new segment at the next offset. Every such error
//! is `LogError::Unavailable` (a retry helps), naming the segment file and the OS error.
//!
//! On open, the last segment's tail that is not a whole frame (a crash mid write) is cut off. Any
//! other segment is sealed: its frames must end exactly where the next segment begins. A sealed
//! segment may end in the leftover of a failed append whose cut failed (a torn frame, or a whole
//! frame whose offsets the next segment took), and that tail is skipped: the next segment starts
//! where the good frames end, so nothing acked was ever written past them. A bad frame anywhere
//! else is an error that names the file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use adclick_core::ids::{Offset, PartitionId};
use async_trait::async_trait;

use super::log::MemoryLog;
use crate::seams::{AppendBatch, Log, LogError, ReadBatch, RecordBlock};

const FRAME_MAGIC: [u8; 4] = *b"ADLS";
const FRAME_HEADER_BYTES: usize = 12;
const PAYLOAD_FIXED_BYTES: usize = 28;

#[derive(Clone, Copy, Debug)]
pub struct FileLogConfig {
    pub segment_bytes_max: u64,
    pub sync_every_append: bool,
}

impl Default for FileLogConfig {
    fn default() -> Self {
        FileLogConfig {
            segment_bytes_max: 64 << 20,
            sync_every_append: true,
        }
    }
}

/// What an append does to a segment file: the seam where tests and the simulator inject write
/// and sync errors.
/// Production appends to a `std::fs::File` opened in append mode, so every write lands at the
/// file's current end: after `set_len` cuts a failed frame off, the next write starts where it
/// began, with no seek.
#[expect(
    clippy::len_without_is_empty,
    reason = "a file's length in bytes, not a collection's"
)]
pub trait SegmentFile: Send {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    fn sync_data(&mut self) -> std::io::Result<()>;
    fn set_len(&mut self, length: u64) -> std::io::Result<()>;
    fn len(&mut self) -> std::io::Result<u64>;
}

impl SegmentFile for File {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        Write::write_all(self, bytes)
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&mut self, length: u64) -> std::io::Result<()> {
        File::set_len(self, length)
    }

    fn len(&mut self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// Opens a segment file for appending, creating it if absent.
pub type OpenSegmentFile = dyn Fn(&Path) -> std::io::Result<Box<dyn SegmentFile>> + Send + Sync;

/// How production opens a segment file: a `std::fs::File` in append mode.
pub fn open_segment_file(path: &Path) -> std::io::Result<Box<dyn SegmentFile>> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(Box::new(file))
}

struct Segment {
    file: Box<dyn SegmentFile>,
    path: PathBuf,
    /// The length of the frames written whole (and synced, when `sync_every_append`).
    bytes: u64,
}

/// A partition's segment for appends.
enum SegmentSlot {
    /// None open yet: the first append continues the newest segment on disk.
    Unopened,
    Open(Segment),
    /// A failed append's frame could not be cut off this segment: the next append starts a new
    /// one, and nothing is appended here again.
    Sealed {
        path: PathBuf,
    },
}

pub struct FileLog {
    memory: MemoryLog,
    root: PathBuf,
    config: FileLogConfig,
    segments: Vec<Mutex<SegmentSlot>>,
    open_segment_file: Box<OpenSegmentFile>,
}

fn io_error(path: &Path, error: std::io::Error) -> LogError {
    LogError::Unavailable {
        message: format!("{}: {error}", path.display()),
    }
}

fn partition_dir(root: &Path, partition: PartitionId) -> PathBuf {
    root.join(format!("p{:05}", partition.0))
}

fn segment_path(dir: &Path, first_offset: Offset) -> PathBuf {
    dir.join(format!("{:020}.seg", first_offset.0))
}

/// A partition's segment files, oldest first (names are zero-padded first offsets).
fn segment_paths(dir: &Path) -> Result<Vec<PathBuf>, LogError> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|error| io_error(dir, error))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    segments.sort();
    Ok(segments)
}

fn segment_first_offset(path: &Path) -> Result<Offset, LogError> {
    path.file_stem()
        .and_then(|stem| stem.to_str())
        .and_then(|stem| stem.parse().ok())
        .map(Offset)
        .ok_or_else(|| LogError::Unavailable {
            message: format!("{}: a segment is named by its first offset", path.display()),
        })
}

/// Makes a new segment's name durable: syncing the file does not cover its directory entry.
fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| io_error(dir, error))
}

fn encode_frame(first_offset: Offset, batch: &AppendBatch) -> Vec<u8> {
    let records = &batch.records;
    let payload_len = PAYLOAD_FIXED_BYTES + 4 * records.ends.len() + records.data.len();
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload_len);
    frame.extend_from_slice(&FRAME_MAGIC);
    frame.extend_from_slice(&(payload_len as u32).to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&batch.producer_id.to_le_bytes());
    frame.extend_from_slice(&batch.first_sequence.to_le_bytes());
    frame.extend_from_slice(&first_offset.0.to_le_bytes());
    frame.extend_from_slice(&(records.ends.len() as u32).to_le_bytes());
    for end in &records.ends {
        frame.extend_from_slice(&end.to_le_bytes());
    }
    frame.extend_from_slice(&records.data);
    let crc = crc32fast::hash(&frame[FRAME_HEADER_BYTES..]);
    frame[8..12].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// Decodes the frame at the start of `bytes`: the batch, its first offset and the frame length.
/// `None` for anything torn or corrupt.
fn decode_frame(bytes: &[u8]) -> Option<(AppendBatch, Offset, usize)> {
    let header = bytes.get(..FRAME_HEADER_BYTES)?;
    if header[..4] != FRAME_MAGIC {
        return None;
    }
    let payload_len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[8..12].try_into().ok()?);
    let payload = bytes.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES.checked_add(payload_len)?)?;
    if payload.len() < PAYLOAD_FIXED_BYTES || crc32fast::hash(payload) != crc {
        return None;
    }
    let u64_at = |at: usize| u64::from_le_bytes(payload[at..at + 8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(payload[24..28].try_into().ok()?) as usize;
    let ends_bytes = payload
        .get(PAYLOAD_FIXED_BYTES..PAYLOAD_FIXED_BYTES.checked_add(count.checked_mul(4)?)?)?;
    let ends: Vec<u32> = ends_bytes
        .chunks_exact(4)
        .map(|end| u32::from_le_bytes(end.try_into().expect("4 bytes")))
        .collect();
    let data = payload[PAYLOAD_FIXED_BYTES + 4 * count..].to_vec();
    let monotonic = ends.windows(2).all(|pair| pair[0] <= pair[1]);
    if !monotonic
        || ends.last().is_some_and(|last| *last as usize != data.len())
        || (ends.is_empty() && !data.is_empty())
    {
        return None;
    }
    let batch = AppendBatch {
        producer_id: u64_at(0),
        first_sequence: u64_at(8),
        records: RecordBlock { data, ends },
    };
    Some((batch, Offset(u64_at(16)), FRAME_HEADER_BYTES + payload_len))
}

impl FileLog {
    /// Opens (or creates) a log of `partitions` partitions under `root` and reloads it.
    pub fn open(
        root: impl Into<PathBuf>,
        partitions: u32,
        config: FileLogConfig,
    ) -> Result<FileLog, LogError> {
        FileLog::open_with(root.into(), partitions, config, Box::new(open_segment_file))
    }

    /// Appends a batch, its frame written (and synced) first: `Log::append` without the
    /// future, for callers that hold a lock (the simulator's duplicating producer).
    pub fn append_now(
        &self,
        partition: PartitionId,
        batch: AppendBatch,
    ) -> Result<Offset, LogError> {
        let slot = self
            .segments
            .get(partition.0 as usize)
            .ok_or(LogError::NoSuchPartition {
                partition,
                partitions: self.partitions(),
            })?;
        let mut slot = slot.lock().expect("segment lock");
        // The in-memory log takes the batch only once `persist` succeeds: a failed append
        // consumes no offset and shows readers nothing.
        self.memory
            .append_persisted(partition, batch, |first_offset, batch| {
                self.persist(&mut slot, partition, first_offset, batch)
            })
    }

    pub fn new_producer_id_now(&self) -> Result<u64, LogError> {
        self.memory.new_producer_id_now()
    }

    /// `open`, with appends going through the files `open_segment_file` opens.
    pub fn open_with(
        root: PathBuf,
        partitions: u32,
        config: FileLogConfig,
        open_segment_file: Box<OpenSegmentFile>,
    ) -> Result<FileLog, LogError> {
        let memory = MemoryLog::new(partitions);
        for partition in (0..partitions).map(PartitionId) {
            let dir = partition_dir(&root, partition);
            std::fs::create_dir_all(&dir).map_err(|error| io_error(&dir, error))?;
            let segments = segment_paths(&dir)?;
            for (index, path) in segments.iter().enumerate() {
                let next_first_offset = segments
                    .get(index + 1)
                    .map(|next| segment_first_offset(next))
                    .transpose()?;
                reload_segment(&memory, partition, path, next_first_offset)?;
            }
        }
        if config.sync_every_append {
            sync_dir(&root)?;
        }
        let segments = (0..partitions)
            .map(|_| Mutex::new(SegmentSlot::Unopened))
            .collect();
        Ok(FileLog {
            memory,
            root,
            config,
            segments,
            open_segment_file,
        })
    }

    /// The segment to append the frame at `first_offset` to, opening, rolling or replacing a
    /// sealed one as needed.
    fn segment<'a>(
        &self,
        slot: &'a mut SegmentSlot,
        partition: PartitionId,
        first_offset: Offset,
    ) -> Result<&'a mut Segment, LogError> {
        let dir = partition_dir(&self.root, partition);
        let fresh = segment_path(&dir, first_offset);
        let path = match &*slot {
            SegmentSlot::Open(segment) if segment.bytes < self.config.segment_bytes_max => None,
            SegmentSlot::Open(_) => Some(fresh),
            // Continue the newest segment after a restart.
            SegmentSlot::Unopened => Some(segment_paths(&dir)?.pop().unwrap_or(fresh)),
            SegmentSlot::Sealed { path } => {
                if *path == fresh {
                    // The sealed segment starts at this offset, so it holds no record: only the
                    // failed frame, and perhaps frames of empty batches, which carry nothing.
                    std::fs::remove_file(path).map_err(|error| io_error(path, error))?;
                }
                Some(fresh)
            }
        };
        if let Some(path) = path {
            let mut file =
                (self.open_segment_file)(&path).map_err(|error| io_error(&path, error))?;
            let bytes = file.len().map_err(|error| io_error(&path, error))?;
            if bytes == 0 && self.config.sync_every_append {
                sync_dir(&dir)?;
            }
            *slot = SegmentSlot::Open(Segment { file, path, bytes });
        }
        match slot {
            SegmentSlot::Open(segment) => Ok(segment),
            SegmentSlot::Unopened | SegmentSlot::Sealed { .. } => unreachable!("opened above"),
        }
    }

    /// Writes (and syncs) the batch's frame at the end of the partition's segment. When that
    /// fails, no part of the frame stays where the next append would write: it is cut off, or
    /// the segment is sealed.
    fn persist(
        &self,
        slot: &mut SegmentSlot,
        partition: PartitionId,
        first_offset: Offset,
        batch: &AppendBatch,
    ) -> Result<(), LogError> {
        let segment = self.segment(slot, partition, first_offset)?;
        let frame = encode_frame(first_offset, batch);
        let written = segment.file.write_all(&frame).and_then(|()| {
            if self.config.sync_every_append {
                segment.file.sync_data()
            } else {
                Ok(())
            }
        });
        let error = match written {
            Ok(()) => {
                segment.bytes += frame.len() as u64;
                return Ok(());
            }
            Err(error) => error,
        };
        let failed = format!(
            "appending {} bytes at byte {} of {}: {error}",
            frame.len(),
            segment.bytes,
            segment.path.display()
        );
        match cut_off_failed_frame(segment) {
            Ok(()) => Err(LogError::Unavailable {
                message: format!("{failed}; the frame was cut off"),
            }),
            Err(cut_error) => {
                tracing::error!(file = %segment.path.display(), %cut_error, "a failed append could not be cut off; sealing the segment");
                let path = segment.path.clone();
                *slot = SegmentSlot::Sealed { path };
                Err(LogError::Unavailable {
                    message: format!(
                        "{failed}; cutting the frame off failed too ({cut_error}), so the segment is sealed"
                    ),
                })
            }
        }
    }
}

/// Cuts what a failed append wrote off the segment, and makes the cut durable.
fn cut_off_failed_frame(segment: &mut Segment) -> std::io::Result<()> {
    segment.file.set_len(segment.bytes)?;
    segment.file.sync_data()
}

/// Reads a segment's frames back into `memory`. `next_first_offset` is where the next segment
/// begins, `None` for the last segment.
fn reload_segment(
    memory: &MemoryLog,
    partition: PartitionId,
    path: &Path,
    next_first_offset: Option<Offset>,
) -> Result<(), LogError> {
    let bytes = std::fs::read(path).map_err(|error| io_error(path, error))?;
    let mut at = 0;
    while at < bytes.len() {
        let Some((batch, first_offset, length)) = decode_frame(&bytes[at..]) else {
            break;
        };
        let end_offset = first_offset.0.saturating_add(batch.records.len() as u64);
        if next_first_offset.is_some_and(|next| end_offset > next.0) {
            // A whole frame of a failed append that the next segment took the offsets of.
            break;
        }
        memory.restore_batch(partition, first_offset, batch)?;
        at += length;
    }
    if at == bytes.len() {
        return Ok(());
    }
    let dropped_bytes = bytes.len() - at;
    match next_first_offset {
        None => {
            tracing::warn!(file = %path.display(), at, dropped_bytes, "cutting off a torn frame at the end of the log");
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|error| io_error(path, error))?;
            file.set_len(at as u64)
                .map_err(|error| io_error(path, error))?;
            file.sync_all().map_err(|error| io_error(path, error))
        }
        Some(next) if memory.end_offset_now(partition)? == next => {
            tracing::warn!(file = %path.display(), at, dropped_bytes, "skipping the leftover of a failed append at the end of a sealed segment");
            Ok(())
        }
        Some(_) => Err(LogError::Unavailable {
            message: format!(
                "{}: corrupt frame at byte {at} in a sealed segment",
                path.display()
            ),
        }),
    }
}

#[async_trait]
impl Log for FileLog {
    fn partitions(&self) -> u32 {
        self.memory.partitions()
    }

    async fn append(&self, partition: PartitionId, batch: AppendBatch) -> Result<Offset, LogError> {
        self.append_now(partition, batch)
    }

    /// Past every id in the segments read back on open. An id handed out but never used is
    /// not remembered across a restart, which is harmless: nothing was appended under it.
    async fn new_producer_id(&self) -> Result<u64, LogError> {
        self.memory.new_producer_id_now()
    }

    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        records_max: usize,
    ) -> Result<Vec<ReadBatch>, LogError> {
        self.memory.read(partition, from, records_max).await
    }

    async fn end_offset(&self, partition: PartitionId) -> Result<Offset, LogError> {
        self.memory.end_offset(partition).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::seams::Retry;

    /// Faults for the segment files of a log opened with `faulty_log`, set by the test.
    #[derive(Default)]
    struct Faults {
        /// The next write writes this many bytes of its frame, then fails (a torn write).
        torn_write_bytes: Option<usize>,
        /// This many next syncs fail.
        failing_syncs: u32,
        /// Every `set_len` fails while set.
        failing_set_len: bool,
        /// Bytes the disk has left (`None`: plenty). A write past them writes what fits, then
        /// fails with ENOSPC; cutting a file shorter frees its bytes.
        space_bytes: Option<u64>,
        /// Told of every injected failure.
        failed: Arc<tokio::sync::Notify>,
    }

    impl Faults {
        fn fail(&self, error: std::io::Error) -> std::io::Result<()> {
            self.failed.notify_one();
            Err(error)
        }
    }

    struct FaultyFile {
        file: File,
        faults: Arc<Mutex<Faults>>,
    }

    impl SegmentFile for FaultyFile {
        fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            let mut faults = self.faults.lock().unwrap();
            if let Some(torn_bytes) = faults.torn_write_bytes.take() {
                Write::write_all(&mut self.file, &bytes[..torn_bytes.min(bytes.len())])?;
                return faults.fail(std::io::Error::other("injected torn write"));
            }
            if let Some(space_bytes) = faults.space_bytes {
                let fits = space_bytes.min(bytes.len() as u64);
                Write::write_all(&mut self.file, &bytes[..fits as usize])?;
                faults.space_bytes = Some(space_bytes - fits);
                if fits < bytes.len() as u64 {
                    return faults.fail(std::io::Error::from_raw_os_error(28));
                }
                return Ok(());
            }
            Write::write_all(&mut self.file, bytes)
        }

        fn sync_data(&mut self) -> std::io::Result<()> {
            let mut faults = self.faults.lock().unwrap();
            if faults.failing_syncs > 0 {
                faults.failing_syncs -= 1;
                return faults.fail(std::io::Error::other("injected sync failure"));
            }
            self.file.sync_data()
        }

        fn set_len(&mut self, length: u64) -> std::io::Result<()> {
            let mut faults = self.faults.lock().unwrap();
            if faults.failing_set_len {
                return faults.fail(std::io::Error::other("injected set_len failure"));
            }
            let old_length = self.file.metadata()?.len();
            self.file.set_len(length)?;
            if let Some(space_bytes) = &mut faults.space_bytes {
                *space_bytes += old_length.saturating_sub(length);
            }
            Ok(())
        }

        fn len(&mut self) -> std::io::Result<u64> {
            Ok(self.file.metadata()?.len())
        }
    }

    /// A log whose segment files fail as `faults` says.
    fn faulty_log(
        root: &Path,
        partitions: u32,
        config: FileLogConfig,
        faults: &Arc<Mutex<Faults>>,
    ) -> FileLog {
        let faults = faults.clone();
        let open = move |path: &Path| -> std::io::Result<Box<dyn SegmentFile>> {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            Ok(Box::new(FaultyFile {
                file,
                faults: faults.clone(),
            }))
        };
        FileLog::open_with(root.to_path_buf(), partitions, config, Box::new(open)).unwrap()
    }

    fn segment_names(root: &Path, partition: PartitionId) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(partition_dir(root, partition))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn records(list: &[(u64, &[u8])]) -> Vec<(u64, Vec<u8>)> {
        list.iter()
            .map(|(offset, record)| (*offset, record.to_vec()))
            .collect()
    }

    fn batch(producer_id: u64, first_sequence: u64, records: &[&[u8]]) -> AppendBatch {
        AppendBatch::from_records(producer_id, first_sequence, records)
    }

    async fn all_records(log: &dyn Log, partition: PartitionId) -> Vec<(u64, Vec<u8>)> {
        let end = log.end_offset(partition).await.unwrap();
        let batches = log
            .read(partition, Offset(0), end.0 as usize + 1)
            .await
            .unwrap();
        batches
            .iter()
            .flat_map(|batch| {
                batch
                    .iter()
                    .map(|(offset, record)| (offset.0, record.to_vec()))
            })
            .collect()
    }

    #[tokio::test]
    async fn survives_a_restart_with_producer_sequences_intact() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileLogConfig {
            segment_bytes_max: 64,
            sync_every_append: true,
        };
        {
            let log = FileLog::open(dir.path(), 2, config).unwrap();
            for sequence in 0..6u64 {
                let record = format!("record-{sequence}");
                log.append(PartitionId(1), batch(9, sequence, &[record.as_bytes()]))
                    .await
                    .unwrap();
            }
            log.append(PartitionId(0), batch(9, 0, &[b"x", b"y"]))
                .await
                .unwrap();
        }
        let segments = std::fs::read_dir(dir.path().join("p00001"))
            .unwrap()
            .count();
        assert!(segments > 1, "64-byte segments roll: {segments}");
        let log = FileLog::open(dir.path(), 2, config).unwrap();
        let records = all_records(&log, PartitionId(1)).await;
        assert_eq!(records.len(), 6);
        assert_eq!(records[5], (5, b"record-5".to_vec()));
        assert_eq!(
            all_records(&log, PartitionId(0)).await,
            vec![(0, b"x".to_vec()), (1, b"y".to_vec())]
        );
        // A producer retrying its last batch after the restart appends nothing.
        log.append(PartitionId(1), batch(9, 5, &[b"record-5"]))
            .await
            .unwrap();
        assert_eq!(log.end_offset(PartitionId(1)).await.unwrap(), Offset(6));
        log.append(PartitionId(1), batch(9, 6, &[b"record-6"]))
            .await
            .unwrap();
        drop(log);
        let log = FileLog::open(dir.path(), 2, config).unwrap();
        assert_eq!(all_records(&log, PartitionId(1)).await.len(), 7);
    }

    #[tokio::test]
    async fn a_torn_last_frame_is_cut_off_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileLogConfig::default();
        {
            let log = FileLog::open(dir.path(), 1, config).unwrap();
            log.append(PartitionId(0), batch(1, 0, &[b"kept"]))
                .await
                .unwrap();
            log.append(PartitionId(0), batch(1, 1, &[b"torn"]))
                .await
                .unwrap();
        }
        let segment = std::fs::read_dir(dir.path().join("p00000"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let length = std::fs::metadata(&segment).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(length - 3)
            .unwrap();
        let log = FileLog::open(dir.path(), 1, config).unwrap();
        assert_eq!(
            all_records(&log, PartitionId(0)).await,
            vec![(0, b"kept".to_vec())]
        );
        log.append(PartitionId(0), batch(1, 1, &[b"again"]))
            .await
            .unwrap();
        drop(log);
        let log = FileLog::open(dir.path(), 1, config).unwrap();
        assert_eq!(
            all_records(&log, PartitionId(0)).await,
            vec![(0, b"kept".to_vec()), (1, b"again".to_vec())]
        );
    }

    #[tokio::test]
    async fn a_corrupt_sealed_segment_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileLogConfig {
            segment_bytes_max: 16,
            sync_every_append: false,
        };
        {
            let log = FileLog::open(dir.path(), 1, config).unwrap();
            for sequence in 0..3 {
                log.append(PartitionId(0), batch(1, sequence, &[b"0123456789"]))
                    .await
                    .unwrap();
            }
        }
        let mut segments: Vec<_> = std::fs::read_dir(dir.path().join("p00000"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        segments.sort();
        let mut bytes = std::fs::read(&segments[0]).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&segments[0], bytes).unwrap();
        let error = FileLog::open(dir.path(), 1, config)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("00000000000000000000.seg") && error.contains("corrupt frame at byte 0"),
            "{error}"
        );
    }

    /// Regression: a write that failed mid-frame left the torn bytes in the segment, and the
    /// retry of the same batch was appended behind them. On reopen the torn frame failed its CRC
    /// and everything after it was cut off, the retried batch and later acked ones with it, so
    /// new appends reused offsets the workers had already checkpointed past.
    #[tokio::test]
    async fn a_retry_after_a_torn_write_is_not_appended_behind_the_torn_frame() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let config = FileLogConfig::default();
        let partition = PartitionId(0);
        {
            let log = faulty_log(dir.path(), 1, config, &faults);
            log.append(partition, batch(7, 0, &[b"first"]))
                .await
                .unwrap();
            faults.lock().unwrap().torn_write_bytes = Some(10);
            let error = log
                .append(partition, batch(7, 1, &[b"second", b"third"]))
                .await
                .unwrap_err();
            assert_eq!(error.retry(), Retry::Helps);
            let message = error.to_string();
            assert!(
                message.contains("p00000/00000000000000000000.seg")
                    && message.contains("injected torn write"),
                "{message}"
            );
            assert_eq!(
                log.end_offset(partition).await.unwrap(),
                Offset(1),
                "a failed append consumes no offset"
            );
            assert_eq!(
                all_records(&log, partition).await,
                records(&[(0, b"first")]),
                "and shows readers nothing"
            );
            let retried = log.append(partition, batch(7, 1, &[b"second", b"third"]));
            assert_eq!(retried.await, Ok(Offset(1)));
            let later = log.append(partition, batch(7, 3, &[b"fourth"]));
            assert_eq!(later.await, Ok(Offset(3)));
        }
        let log = FileLog::open(dir.path(), 1, config).unwrap();
        assert_eq!(
            all_records(&log, partition).await,
            records(&[(0, b"first"), (1, b"second"), (2, b"third"), (3, b"fourth")])
        );
        // The producer's sequences came back too: retrying the last batch appends nothing.
        let retried = log.append(partition, batch(7, 3, &[b"fourth"]));
        assert_eq!(retried.await, Ok(Offset(3)));
        assert_eq!(log.end_offset(partition).await.unwrap(), Offset(4));
    }

    /// Regression: when the fsync after a whole frame failed, the frame stayed in the segment
    /// and the retry wrote it again. On reopen the second copy did not continue the partition,
    /// so `FileLog::open` failed for good.
    #[tokio::test]
    async fn a_retry_after_a_failed_sync_is_not_written_a_second_time() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let config = FileLogConfig::default();
        let partition = PartitionId(0);
        {
            let log = faulty_log(dir.path(), 1, config, &faults);
            log.append(partition, batch(7, 0, &[b"first"]))
                .await
                .unwrap();
            faults.lock().unwrap().failing_syncs = 1;
            let error = log
                .append(partition, batch(7, 1, &[b"second"]))
                .await
                .unwrap_err();
            assert_eq!(error.retry(), Retry::Helps);
            assert!(
                error.to_string().contains("injected sync failure"),
                "{error}"
            );
            assert_eq!(log.end_offset(partition).await.unwrap(), Offset(1));
            let retried = log.append(partition, batch(7, 1, &[b"second"]));
            assert_eq!(retried.await, Ok(Offset(1)));
        }
        let log = FileLog::open(dir.path(), 1, config).unwrap();
        assert_eq!(
            all_records(&log, partition).await,
            records(&[(0, b"first"), (1, b"second")])
        );
    }

    /// Regression: a full disk made each retry of a batch write what still fitted of its frame
    /// behind the last attempt's, and when space freed the whole frame landed behind those torn
    /// pieces, to be cut off with everything after it on reopen.
    #[tokio::test]
    async fn a_full_disk_fails_appends_retryably_and_they_resume_when_space_frees() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let config = FileLogConfig::default();
        let partition = PartitionId(0);
        let frame_bytes = encode_frame(Offset(0), &batch(7, 0, &[b"click-0"])).len() as u64;
        {
            let log = faulty_log(dir.path(), 1, config, &faults);
            faults.lock().unwrap().space_bytes = Some(2 * frame_bytes + 20);
            for sequence in 0..2 {
                let record = format!("click-{sequence}");
                log.append(partition, batch(7, sequence, &[record.as_bytes()]))
                    .await
                    .unwrap();
            }
            for _attempt in 0..3 {
                let error = log
                    .append(partition, batch(7, 2, &[b"click-2"]))
                    .await
                    .unwrap_err();
                assert_eq!(error.retry(), Retry::Helps, "a full disk is worth a retry");
                assert!(error.to_string().contains("(os error 28)"), "{error}");
                assert_eq!(log.end_offset(partition).await.unwrap(), Offset(2));
            }
            faults.lock().unwrap().space_bytes = None;
            let retried = log.append(partition, batch(7, 2, &[b"click-2"]));
            assert_eq!(retried.await, Ok(Offset(2)));
            let later = log.append(partition, batch(7, 3, &[b"click-3"]));
            assert_eq!(later.await, Ok(Offset(3)));
        }
        let log = FileLog::open(dir.path(), 1, config).unwrap();
        assert_eq!(
            all_records(&log, partition).await,
            records(&[
                (0, b"click-0"),
                (1, b"click-1"),
                (2, b"click-2"),
                (3, b"click-3")
            ])
        );
    }

    /// When a failed frame cannot be cut off, its segment is sealed and the next append starts
    /// a new one at the same offset. On reopen the sealed segment's leftover (here a whole
    /// frame whose sync failed, and torn frames) is skipped, since the next segment begins
    /// where its good frames end.
    #[tokio::test]
    async fn a_segment_whose_failed_frame_cannot_be_cut_off_is_sealed_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let config = FileLogConfig::default();
        let (whole, torn) = (PartitionId(0), PartitionId(1));
        let fail_uncuttably = |torn_write_bytes: Option<usize>| {
            let mut faults = faults.lock().unwrap();
            faults.failing_set_len = true;
            faults.torn_write_bytes = torn_write_bytes;
            faults.failing_syncs = u32::from(torn_write_bytes.is_none());
        };
        let heal = || faults.lock().unwrap().failing_set_len = false;
        {
            let log = faulty_log(dir.path(), 2, config, &faults);
            log.append(whole, batch(7, 0, &[b"a"])).await.unwrap();
            fail_uncuttably(None);
            let error = log.append(whole, batch(7, 1, &[b"b"])).await.unwrap_err();
            assert_eq!(error.retry(), Retry::Helps);
            assert!(error.to_string().contains("segment is sealed"), "{error}");
            heal();
            assert_eq!(log.append(whole, batch(7, 1, &[b"b"])).await, Ok(Offset(1)));
            assert_eq!(log.append(whole, batch(7, 2, &[b"c"])).await, Ok(Offset(2)));
            assert_eq!(
                segment_names(dir.path(), whole),
                ["00000000000000000000.seg", "00000000000000000001.seg"]
            );

            // The first frame of a segment: the sealed segment holds no record, and is replaced.
            fail_uncuttably(Some(5));
            assert!(log.append(torn, batch(7, 0, &[b"x"])).await.is_err());
            heal();
            assert_eq!(log.append(torn, batch(7, 0, &[b"x"])).await, Ok(Offset(0)));
            fail_uncuttably(Some(5));
            assert!(log.append(torn, batch(7, 1, &[b"y"])).await.is_err());
            heal();
            assert_eq!(log.append(torn, batch(7, 1, &[b"y"])).await, Ok(Offset(1)));
        }
        let log = FileLog::open(dir.path(), 2, config).unwrap();
        assert_eq!(
            all_records(&log, whole).await,
            records(&[(0, b"a"), (1, b"b"), (2, b"c")])
        );
        assert_eq!(
            all_records(&log, torn).await,
            records(&[(0, b"x"), (1, b"y")])
        );
        assert_eq!(log.append(whole, batch(7, 3, &[b"d"])).await, Ok(Offset(3)));
        drop(log);
        let log = FileLog::open(dir.path(), 2, config).unwrap();
        assert_eq!(log.end_offset(whole).await.unwrap(), Offset(4));
    }

    /// Skipping a sealed segment's tail is only for the leftover of a failed append: a bad last
    /// frame, where the next segment does not begin, is still corruption.
    #[tokio::test]
    async fn a_bad_last_frame_of_a_sealed_segment_is_still_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileLogConfig {
            segment_bytes_max: 100,
            sync_every_append: false,
        };
        {
            let log = FileLog::open(dir.path(), 1, config).unwrap();
            for sequence in 0..3 {
                log.append(PartitionId(0), batch(1, sequence, &[b"0123456789"]))
                    .await
                    .unwrap();
            }
        }
        let names = segment_names(dir.path(), PartitionId(0));
        assert_eq!(
            names,
            ["00000000000000000000.seg", "00000000000000000002.seg"]
        );
        let first = partition_dir(dir.path(), PartitionId(0)).join(&names[0]);
        let mut bytes = std::fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&first, bytes).unwrap();
        let error = FileLog::open(dir.path(), 1, config).err().unwrap();
        assert!(
            error.to_string().contains("corrupt frame at byte 54"),
            "{error}"
        );
    }

    /// A full disk reaches a client as busy (503 with `Retry-After` over HTTP) once the
    /// buffer is full, while ingest retries the batch; when space frees, every click it acked is
    /// in the log once.
    #[tokio::test]
    async fn ingest_answers_busy_while_the_disk_is_full_and_keeps_every_acked_click() {
        use std::net::{IpAddr, Ipv4Addr};

        use adclick_core::event::ClickEvent;
        use adclick_core::ids::{AdId, CampaignId, ClickId, Country, EventTimeMs, UserId};

        use crate::clock::ManualClock;
        use crate::ingest::{Ack, IngestConfig, IngestCore, IngestError};

        const NOW_MS: u64 = 1_700_000_000_000;
        let click = |id: u128| ClickEvent {
            click_id: ClickId(id),
            campaign_id: CampaignId(1),
            ad_id: AdId(1),
            user_id: UserId(1),
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            user_agent: "test".into(),
            country: Country::parse("DE").unwrap(),
            event_time_ms: EventTimeMs(NOW_MS),
            publisher_id: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Mutex::new(Faults {
            space_bytes: Some(30),
            ..Faults::default()
        }));
        let failed = faults.lock().unwrap().failed.clone();
        let log = Arc::new(faulty_log(dir.path(), 1, FileLogConfig::default(), &faults));
        let config = IngestConfig {
            producer_buffer_events_max: 4,
            ..IngestConfig::default()
        };
        let (ingest, flusher) =
            IngestCore::start(log.clone(), Arc::new(ManualClock::new(NOW_MS)), config);
        let durable = tokio::spawn({
            let ingest = ingest.clone();
            let clicks: Vec<ClickEvent> = (1..=4).map(click).collect();
            async move { ingest.submit(&clicks, Ack::Durable).await }
        });
        failed.notified().await;
        let busy = ingest.submit(&[click(5)], Ack::Buffered).await.unwrap_err();
        assert!(matches!(busy, IngestError::Busy { .. }), "{busy}");
        assert_eq!(
            busy.retry_after_ms(),
            Some(crate::limits::BUSY_RETRY_AFTER_MS)
        );
        faults.lock().unwrap().space_bytes = None;
        assert_eq!(durable.await.unwrap().unwrap().accepted, 4);
        let outcome = ingest.submit(&[click(5)], Ack::Durable).await.unwrap();
        assert_eq!(outcome.accepted, 1);
        assert!(ingest.stats().append_retries >= 1);
        ingest.close(flusher).await;
        drop((ingest, log));
        let log = FileLog::open(dir.path(), 1, FileLogConfig::default()).unwrap();
        let stored = all_records(&log, PartitionId(0)).await;
        let offsets: Vec<u64> = stored.iter().map(|(offset, _)| *offset).collect();
        let click_ids: Vec<u128> = stored
            .iter()
            .map(|(_, record)| adclick_core::codec::decode(record).unwrap().click_id.0)
            .collect();
        assert_eq!(offsets, [0, 1, 2, 3, 4]);
        assert_eq!(click_ids, [1, 2, 3, 4, 5]);
    }
}
