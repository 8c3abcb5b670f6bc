//! The seams: one trait per resource. Production, embedded and simulated implementations sit
//! behind these, and nothing else in the runtime touches a resource directly.

use std::sync::Arc;

use adclick_core::ids::*;
use adclick_core::operator::{Series, SeriesUpdate};
use adclick_core::window::{Counts, Lane, Watermark};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::fencing::Fence;

/// Whether retrying an operation can help (Arroyo's `ConnectorError{retry}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    Helps,
    Futile,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("partition {partition} does not exist, the log has {partitions}")]
    NoSuchPartition {
        partition: PartitionId,
        partitions: u32,
    },
    #[error("log unavailable: {message}")]
    Unavailable { message: String },
    #[error(
        "producer {producer_id} sequence {sequence} on partition {partition} skips ahead of {expected}"
    )]
    OutOfSequence {
        partition: PartitionId,
        producer_id: u64,
        sequence: u64,
        expected: u64,
    },
}

impl LogError {
    pub fn retry(&self) -> Retry {
        match self {
            LogError::Unavailable { .. } => Retry::Helps,
            _ => Retry::Futile,
        }
    }
}

/// A batch of records bound for one partition, from one idempotent producer. The log appends
/// a batch at most once per (producer, sequence): a retried append of the same batch is a no-op.
#[derive(Clone, Debug)]
pub struct AppendBatch {
    pub producer_id: u64,
    pub first_sequence: u64,
    pub records: RecordBlock,
}

impl AppendBatch {
    /// A batch of the given records, copied into one block.
    pub fn from_records(producer_id: u64, first_sequence: u64, records: &[&[u8]]) -> AppendBatch {
        let mut block = RecordBlock::default();
        for record in records {
            block.push(record);
        }
        AppendBatch {
            producer_id,
            first_sequence,
            records: block,
        }
    }
}

/// Records packed in one buffer: record `i` is `data[ends[i-1]..ends[i]]`.
#[derive(Clone, Debug, Default)]
pub struct RecordBlock {
    pub data: Vec<u8>,
    pub ends: Vec<u32>,
}

impl RecordBlock {
    pub fn with_capacity(records: usize, bytes: usize) -> RecordBlock {
        RecordBlock {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(records),
        }
    }

    /// Appends one record written in place by `write`, with no intermediate copy.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.data);
        self.ends
            .push(u32::try_from(self.data.len()).expect("a block stays under 4 GiB"));
    }

    pub fn push(&mut self, record: &[u8]) {
        self.data.extend_from_slice(record);
        self.ends
            .push(u32::try_from(self.data.len()).expect("a block stays under 4 GiB"));
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, index: usize) -> &[u8] {
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] as usize
        };
        &self.data[start..self.ends[index] as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|index| self.get(index))
    }

    /// Encodes clicks into one block per partition, each routed by its campaign's own key (salt
    /// 0), as ingest routes unsalted campaigns. For tests and tools that write a log directly.
    pub fn route(events: &[adclick_core::event::ClickEvent], partitions: u32) -> Vec<RecordBlock> {
        let mut blocks: Vec<RecordBlock> =
            (0..partitions).map(|_| RecordBlock::default()).collect();
        for event in events {
            let partition = adclick_core::partition::partition_for_campaign(
                event.campaign_id,
                Salt(0),
                partitions,
            );
            blocks[partition.0 as usize]
                .push_with(|out| adclick_core::codec::encode_into(&event.view(Salt(0)), out));
        }
        blocks
    }
}

/// Records read from one partition: consecutive offsets from `first_offset`, sharing storage
/// with the log where the implementation can.
#[derive(Clone, Debug)]
pub struct ReadBatch {
    pub first_offset: Offset,
    pub block: Arc<RecordBlock>,
    /// Records of `block` before this index are below the requested offset.
    pub skip: usize,
}

impl ReadBatch {
    pub fn iter(&self) -> impl Iterator<Item = (Offset, &[u8])> {
        (self.skip..self.block.len()).map(|index| {
            (
                Offset(self.first_offset.0 + index as u64),
                self.block.get(index),
            )
        })
    }

    pub fn len(&self) -> usize {
        self.block.len() - self.skip
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The partitioned log: the source of truth.
#[async_trait]
pub trait Log: Send + Sync {
    fn partitions(&self) -> u32;
    /// Appends a batch; returns the offset of its first record (the original offset when the
    /// batch was appended before).
    async fn append(&self, partition: PartitionId, batch: AppendBatch) -> Result<Offset, LogError>;
    /// Reads up to `records_max` records from `from`.
    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        records_max: usize,
    ) -> Result<Vec<ReadBatch>, LogError>;
    /// The offset the next appended record will get.
    async fn end_offset(&self, partition: PartitionId) -> Result<Offset, LogError>;
    /// The first offset the log still holds. The embedded logs keep everything (0); Kafka
    /// deletes by retention, and a replay of history starts here.
    async fn start_offset(&self, partition: PartitionId) -> Result<Offset, LogError> {
        let _ = partition;
        Ok(Offset(0))
    }
    /// A producer id that no batch in this log has used (Kafka's InitProducerId), for a new
    /// ingest incarnation. A restarted node that reused its old id would start its sequence
    /// numbers again at 0, and an idempotent log would take its first batches for retries of
    /// the old node's and append nothing.
    async fn new_producer_id(&self) -> Result<u64, LogError>;
}

/// Reads a partition from offset 0 until `end`, in offset order, handing each record to
/// `visit`. For whole-log readers (the oracle, billing from a log). A log that stops returning
/// records before `end` is an error, never a silently short read.
pub async fn read_partition(
    log: &dyn Log,
    partition: PartitionId,
    end: Offset,
    mut visit: impl FnMut(Offset, &[u8]),
) -> Result<(), LogError> {
    let mut offset = Offset(0);
    while offset < end {
        let batches = log.read(partition, offset, 65_536).await?;
        if batches.is_empty() {
            return Err(LogError::Unavailable {
                message: format!(
                    "partition {partition}: the log ends at {} but reads stop at {}",
                    end.0, offset.0
                ),
            });
        }
        for batch in &batches {
            for (record_offset, bytes) in batch.iter() {
                offset = Offset(record_offset.0 + 1);
                visit(record_offset, bytes);
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(
        "partition {partition} is owned by generation {current}, not {writer}: this writer is fenced off"
    )]
    Fenced {
        partition: PartitionId,
        current: Generation,
        writer: Generation,
    },
    #[error("real-time store unavailable: {message}")]
    Unavailable { message: String },
}

impl StoreError {
    pub fn retry(&self) -> Retry {
        match self {
            StoreError::Fenced { .. } => Retry::Futile,
            StoreError::Unavailable { .. } => Retry::Helps,
        }
    }
}

/// A partition claim's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub generation: Generation,
    /// The store remembered no generation above `above`: it lost the partition's generation
    /// key, and with it, likely, the partition's data (a restart without persistence, an
    /// eviction, an asynchronous failover).
    pub store_forgot: bool,
}

/// A series value as stored: absolute counts, whether the window closed, and who wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCounts {
    pub counts: Counts,
    pub is_final: bool,
    pub fence: Fence,
}

/// What a partition last reported about itself, for freshness and lag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub partition: PartitionId,
    pub generation: Generation,
    pub epoch: Epoch,
    pub next_offset: Offset,
    pub watermark: Watermark,
    pub stats: adclick_core::snapshot::PartitionStats,
    /// Event times below this are unverifiable for the partition's dedup (the watermark minus
    /// the horizon, or higher after early evictions): what the next epoch's clicks are judged
    /// against. Checkers rebuild every click's lane from these.
    #[serde(default)]
    pub dedup_cutoff_ms: u64,
    /// Buckets the dedup bound evicted before their time, so far: each raised the cutoff
    /// mid-epoch.
    #[serde(default)]
    pub dedup_early_evictions: u64,
    /// When this owner last let the watermark follow its clock, and how far it had read the
    /// log then (it had read to the log's end offset): checkers verify that nothing appended
    /// before that time was still unread.
    #[serde(default)]
    pub last_idle_advance: Option<IdleAdvance>,
    /// Resource figures for operators (metrics); not part of any invariant.
    #[serde(default)]
    pub health: PartitionHealth,
}

/// An idle partition's watermark followed the clock at `processing_ms`, with the log read up to
/// `next_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleAdvance {
    pub processing_ms: u64,
    pub next_offset: Offset,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionHealth {
    pub dedup_ids: u64,
    pub dedup_bytes: u64,
    /// How long the previous epoch's barrier (pre-commit, sink write, complete) took.
    pub last_barrier_ms: u64,
    /// When this owner found, on claiming, that the real-time store had forgotten the
    /// partition (its generation key was gone), and wrote every series it holds again.
    #[serde(default)]
    pub store_loss_detected_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub applied: usize,
    /// Writes older than what the store holds: harmless replays.
    pub stale: usize,
}

/// Who is rewriting a partition's stored values. Each sets and clears only its own mark, so one
/// finishing never hides that the other is still at work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rebuilder {
    /// `adclick rebuild`: a replay of the log into the store.
    Replay,
    /// A worker writing back what its epochs wrote, after the store forgot the partition.
    Worker,
}

impl Rebuilder {
    pub fn as_str(self) -> &'static str {
        match self {
            Rebuilder::Replay => "replay",
            Rebuilder::Worker => "worker",
        }
    }
}

/// The real-time store: absolute series values fenced per key and per partition.
#[async_trait]
pub trait RealtimeStore: Send + Sync {
    /// Makes the caller the partition's owner with a new generation, fencing off the old one.
    /// The generation is above `above` (the greatest one the durable checkpoint store has seen)
    /// and above every claim the store remembers, so it keeps rising whatever the store forgets.
    async fn claim_partition(
        &self,
        partition: PartitionId,
        above: Generation,
    ) -> Result<Claim, StoreError>;
    /// Applies absolute values under `fence`, together with the partition's status.
    async fn apply(
        &self,
        partition: PartitionId,
        fence: Fence,
        updates: &[SeriesUpdate],
        status: PartitionStatus,
    ) -> Result<ApplyOutcome, StoreError>;
    async fn get(&self, series: Series, lane: Lane) -> Result<Option<StoredCounts>, StoreError>;
    /// Every stored series, sorted. For checks and small deployments; production scans by key.
    async fn scan(&self) -> Result<Vec<(Series, Lane, StoredCounts)>, StoreError>;
    async fn partition_status(&self) -> Result<Vec<PartitionStatus>, StoreError>;
    /// Sets (or clears) `rebuilder`'s mark on a partition: its stored values may be partial
    /// until every mark is cleared, and readers say so. Not fenced and never expiring: a
    /// rebuild that crashed leaves its mark set, which is the truth (its values are partial)
    /// until a rebuild finishes.
    async fn set_rebuilding(
        &self,
        partition: PartitionId,
        rebuilder: Rebuilder,
        rebuilding: bool,
    ) -> Result<(), StoreError>;
    /// The partitions that carry at least one rebuilding mark, sorted.
    async fn rebuilding_partitions(&self) -> Result<Vec<PartitionId>, StoreError>;

    /// One campaign's series (every ad and salt, both lanes) of one granularity, whose window
    /// or hour starts in `[from_ms, to_ms)`, sorted. The query API reads through this.
    async fn campaign_series(
        &self,
        campaign: CampaignId,
        granularity: Granularity,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<(Series, Lane, StoredCounts)>, StoreError> {
        let mut found = self.scan().await?;
        found.retain(|(series, _, _)| {
            let (series_campaign, start_ms) = match series {
                Series::Window(key) if granularity == Granularity::Window => {
                    (key.campaign_id, key.window_start_ms)
                }
                Series::Hour(key) if granularity == Granularity::Hour => {
                    (key.campaign_id, key.hour_start_ms)
                }
                _ => return false,
            };
            series_campaign == campaign && (from_ms..to_ms).contains(&start_ms)
        });
        Ok(found)
    }

    /// Every window series (all campaigns, ads, salts and lanes) of the window starting at
    /// `window_start_ms`, sorted. The top-N query reads through this.
    async fn window_series(
        &self,
        window_start_ms: u64,
    ) -> Result<Vec<(Series, Lane, StoredCounts)>, StoreError> {
        let mut found = self.scan().await?;
        found.retain(|(series, _, _)| {
            matches!(series, Series::Window(key) if key.window_start_ms == window_start_ms)
        });
        Ok(found)
    }
}

/// The two series granularities: the aggregator's windows (1 minute by default) and the hour
/// rollups kept for billing reconciliation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Window,
    Hour,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("blob store unavailable at {key}: {message}")]
    Unavailable { key: String, message: String },
}

/// Object storage: checkpoints and cold files. Puts are atomic: a reader sees the whole blob or
/// nothing.
#[async_trait]
pub trait BlobStore: Send + Sync {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError>;
    /// Writes the blob only if the key holds none, atomically with respect to every other
    /// writer (S3's `If-None-Match: *`). Returns whether this call created it.
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<bool, BlobError>;
    /// When the blob was last written, by the store's clock (ms since the Unix epoch), or
    /// `None` if the key holds none.
    async fn modified_ms(&self, key: &str) -> Result<Option<u64>, BlobError>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError>;
    /// Keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError>;
    async fn delete(&self, key: &str) -> Result<(), BlobError>;
}

/// Cold storage is a blob store; the archiver names its files by partition and offset range.
pub type ColdStore = dyn BlobStore;

/// Wall-clock time in ms since the Unix epoch. The only way the runtime reads a clock.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}
