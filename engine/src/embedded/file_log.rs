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
//! positions (u32 each), record bytes. A torn frame at the end of the last segment (a crash mid
//! write) is cut off on open; a bad frame anywhere else is an error that names the file.

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

struct Segment {
    file: File,
    bytes: u64,
}

pub struct FileLog {
    memory: MemoryLog,
    root: PathBuf,
    config: FileLogConfig,
    segments: Vec<Mutex<Option<Segment>>>,
}

fn io_error(path: &Path, error: std::io::Error) -> LogError {
    LogError::Unavailable {
        message: format!("{}: {error}", path.display()),
    }
}

fn partition_dir(root: &Path, partition: PartitionId) -> PathBuf {
    root.join(format!("p{:05}", partition.0))
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
        let root = root.into();
        let memory = MemoryLog::new(partitions);
        for partition in (0..partitions).map(PartitionId) {
            let dir = partition_dir(&root, partition);
            std::fs::create_dir_all(&dir).map_err(|error| io_error(&dir, error))?;
            let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|error| io_error(&dir, error))?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
                .collect();
            segments.sort();
            let last = segments.len().saturating_sub(1);
            for (index, path) in segments.iter().enumerate() {
                reload_segment(&memory, partition, path, index == last)?;
            }
        }
        let segments = (0..partitions).map(|_| Mutex::new(None)).collect();
        Ok(FileLog {
            memory,
            root,
            config,
            segments,
        })
    }

    /// The segment to append to, opening or rolling one as needed.
    fn segment<'a>(
        &self,
        slot: &'a mut Option<Segment>,
        partition: PartitionId,
        first_offset: Offset,
    ) -> Result<&'a mut Segment, LogError> {
        let roll = slot
            .as_ref()
            .is_some_and(|segment| segment.bytes >= self.config.segment_bytes_max);
        if roll {
            *slot = None;
        }
        if slot.is_none() {
            let dir = partition_dir(&self.root, partition);
            // Continue the newest segment after a restart; otherwise start one at this offset.
            let newest = std::fs::read_dir(&dir)
                .map_err(|error| io_error(&dir, error))?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
                .max();
            let path = match newest {
                Some(path) if !roll => path,
                _ => dir.join(format!("{:020}.seg", first_offset.0)),
            };
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|error| io_error(&path, error))?;
            let bytes = file
                .metadata()
                .map_err(|error| io_error(&path, error))?
                .len();
            *slot = Some(Segment { file, bytes });
        }
        Ok(slot.as_mut().expect("opened above"))
    }
}

fn reload_segment(
    memory: &MemoryLog,
    partition: PartitionId,
    path: &Path,
    is_last: bool,
) -> Result<(), LogError> {
    let bytes = std::fs::read(path).map_err(|error| io_error(path, error))?;
    let mut at = 0;
    while at < bytes.len() {
        match decode_frame(&bytes[at..]) {
            Some((batch, first_offset, length)) => {
                memory.restore_batch(partition, first_offset, batch)?;
                at += length;
            }
            None if is_last => {
                tracing::warn!(file = %path.display(), at, dropped_bytes = bytes.len() - at, "cutting off a torn frame at the end of the log");
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|error| io_error(path, error))?;
                file.set_len(at as u64)
                    .map_err(|error| io_error(path, error))?;
                file.sync_all().map_err(|error| io_error(path, error))?;
                return Ok(());
            }
            None => {
                return Err(LogError::Unavailable {
                    message: format!(
                        "{}: corrupt frame at byte {at} in a sealed segment",
                        path.display()
                    ),
                });
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Log for FileLog {
    fn partitions(&self) -> u32 {
        self.memory.partitions()
    }

    async fn append(&self, partition: PartitionId, batch: AppendBatch) -> Result<Offset, LogError> {
        let slot = self
            .segments
            .get(partition.0 as usize)
            .ok_or(LogError::NoSuchPartition {
                partition,
                partitions: self.partitions(),
            })?;
        let mut slot = slot.lock().expect("segment lock");
        self.memory
            .append_persisted(partition, batch, |first_offset, batch| {
                let segment = self.segment(&mut slot, partition, first_offset)?;
                let frame = encode_frame(first_offset, batch);
                let path = partition_dir(&self.root, partition);
                segment
                    .file
                    .write_all(&frame)
                    .map_err(|error| io_error(&path, error))?;
                if self.config.sync_every_append {
                    segment
                        .file
                        .sync_data()
                        .map_err(|error| io_error(&path, error))?;
                }
                segment.bytes += frame.len() as u64;
                Ok(())
            })
    }

    /// Past every id in the segments read back on open. An id handed out but never used is
    /// not remembered across a restart, which is harmless: nothing was appended under it.
    async fn new_producer_id(&self) -> Result<u64, LogError> {
        self.memory.new_producer_id().await
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
    use super::*;

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
}
