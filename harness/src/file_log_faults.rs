//! The file log under I/O errors: segment writes that tear, syncs and cuts that fail, at
//! `faults.log_io_error_rate`, through the file log's own seam (`SegmentFile`). The file log
//! must never append on top of a torn frame, so that reopened from disk after the run it holds
//! every acked batch exactly once, at the offsets the workers read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use adclick_core::ids::{Offset, PartitionId};
use adclick_engine::embedded::file_log::{FileLogConfig, SegmentFile, open_segment_file};
use adclick_engine::embedded::{FileLog, MemoryLog};
use adclick_engine::seams::{AppendBatch, Log, LogError};
use rand::Rng;

use crate::faults::Faults;

/// The logs the simulator runs on: appends without a future, so the duplicating producer can
/// append while it holds its lock.
pub trait BaseLog: Log {
    fn append_now(&self, partition: PartitionId, batch: AppendBatch) -> Result<Offset, LogError>;
    fn new_producer_id_now(&self) -> Result<u64, LogError>;
}

impl BaseLog for MemoryLog {
    fn append_now(&self, partition: PartitionId, batch: AppendBatch) -> Result<Offset, LogError> {
        MemoryLog::append_now(self, partition, batch)
    }
    fn new_producer_id_now(&self) -> Result<u64, LogError> {
        MemoryLog::new_producer_id_now(self)
    }
}

impl BaseLog for FileLog {
    fn append_now(&self, partition: PartitionId, batch: AppendBatch) -> Result<Offset, LogError> {
        FileLog::append_now(self, partition, batch)
    }
    fn new_producer_id_now(&self) -> Result<u64, LogError> {
        FileLog::new_producer_id_now(self)
    }
}

/// Small segments, so that a run rolls several and sealed segments are read back too.
pub const SIM_SEGMENT_BYTES_MAX: u64 = 256 * 1024;

fn config() -> FileLogConfig {
    FileLogConfig {
        segment_bytes_max: SIM_SEGMENT_BYTES_MAX,
        sync_every_append: true,
    }
}

/// A scratch directory for one run's segments, emptied first. Named by scenario and seed
/// (never random), so that error messages, and with them the trace, replay exactly.
pub fn scratch_dir(scenario: &str, seed: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adclick-sim-file-log/{scenario}-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The file log in `dir`, its segment writes going through the faults.
pub fn open_faulty(dir: &Path, partitions: u32, faults: Arc<Faults>) -> Result<FileLog, LogError> {
    let opener = move |path: &Path| -> std::io::Result<Box<dyn SegmentFile>> {
        let file = open_segment_file(path)?;
        Ok(Box::new(FaultySegment {
            file,
            faults: faults.clone(),
        }))
    };
    FileLog::open_with(dir.to_path_buf(), partitions, config(), Box::new(opener))
}

/// The same directory read back from disk with no faults: what survived the run.
pub fn reopen(dir: &Path, partitions: u32) -> Result<FileLog, LogError> {
    FileLog::open(dir, partitions, config())
}

struct FaultySegment {
    file: Box<dyn SegmentFile>,
    faults: Arc<Faults>,
}

impl FaultySegment {
    fn strikes(&self) -> bool {
        let strikes = self.faults.roll(|rates| rates.log_io_error_rate);
        if strikes {
            self.faults.count(|counts| counts.log_io_errors += 1);
        }
        strikes
    }
}

fn injected(what: &str) -> std::io::Error {
    std::io::Error::other(format!("injected {what} error"))
}

impl SegmentFile for FaultySegment {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if !self.strikes() {
            return self.file.write_all(bytes);
        }
        // A torn write: part of the frame reaches the file, then the write fails.
        let torn = self
            .faults
            .rng
            .lock()
            .expect("rng lock")
            .random_range(0..bytes.len().max(1));
        self.file.write_all(&bytes[..torn])?;
        Err(injected("write"))
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        if self.strikes() {
            return Err(injected("sync"));
        }
        self.file.sync_data()
    }

    fn set_len(&mut self, length: u64) -> std::io::Result<()> {
        if self.strikes() {
            return Err(injected("truncate"));
        }
        self.file.set_len(length)
    }

    fn len(&mut self) -> std::io::Result<u64> {
        self.file.len()
    }
}
