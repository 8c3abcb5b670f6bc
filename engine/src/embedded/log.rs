//! An in-process partitioned log with idempotent producers.
//!
//! Each append is kept as one shared block, so reads hand out the same memory without copying.
//! A producer's batch is appended at most once: a retry with a sequence already seen returns
//! the original offset and appends nothing, as Kafka's idempotent producer does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use adclick_core::ids::{Offset, PartitionId};
use async_trait::async_trait;

use crate::seams::{AppendBatch, Log, LogError, ReadBatch, RecordBlock};

#[derive(Default)]
struct ProducerState {
    next_sequence: u64,
    /// First sequence → first offset of recent batches, to answer retries.
    recent: Vec<(u64, Offset)>,
}

const RECENT_BATCHES_KEPT: usize = 16;

#[derive(Default)]
struct Partition {
    /// (first offset, block), in offset order.
    blocks: Vec<(Offset, Arc<RecordBlock>)>,
    end: u64,
    producers: HashMap<u64, ProducerState>,
}

pub struct MemoryLog {
    partitions: Vec<Mutex<Partition>>,
    /// The highest producer id handed out by `new_producer_id` (0: none).
    last_producer_id: Mutex<u64>,
}

impl MemoryLog {
    pub fn new(partitions: u32) -> MemoryLog {
        assert!(partitions > 0, "a log has at least one partition");
        MemoryLog {
            partitions: (0..partitions).map(|_| Mutex::default()).collect(),
            last_producer_id: Mutex::new(0),
        }
    }

    fn partition(&self, partition: PartitionId) -> Result<&Mutex<Partition>, LogError> {
        self.partitions
            .get(partition.0 as usize)
            .ok_or(LogError::NoSuchPartition {
                partition,
                partitions: self.partitions.len() as u32,
            })
    }

    /// `Log::new_producer_id` without the async wrapper.
    pub fn new_producer_id_now(&self) -> Result<u64, LogError> {
        let mut last = self.last_producer_id.lock().expect("producer id lock");
        // Past every id handed out and every id a batch carries (restored ones included).
        let used = self
            .partitions
            .iter()
            .filter_map(|partition| {
                let partition = partition.lock().expect("log lock");
                partition.producers.keys().max().copied()
            })
            .fold(*last, u64::max);
        *last = used.checked_add(1).ok_or_else(|| LogError::Unavailable {
            message: "every producer id is used".into(),
        })?;
        Ok(*last)
    }

    /// Appends without the async wrapper, for callers that hold no runtime.
    pub fn append_now(
        &self,
        partition: PartitionId,
        batch: AppendBatch,
    ) -> Result<Offset, LogError> {
        self.append_persisted(partition, batch, |_, _| Ok(()))
    }

    /// Appends a batch, calling `persist` with the batch's first offset before the batch becomes
    /// visible to readers. A duplicate batch is not persisted again; a failed `persist` appends
    /// nothing. `persist` runs under the partition's lock, so batches persist in offset order.
    pub fn append_persisted(
        &self,
        partition: PartitionId,
        batch: AppendBatch,
        persist: impl FnOnce(Offset, &AppendBatch) -> Result<(), LogError>,
    ) -> Result<Offset, LogError> {
        let mut state = self.partition(partition)?.lock().expect("log lock");
        let producer = state.producers.entry(batch.producer_id).or_default();
        if batch.first_sequence < producer.next_sequence {
            let original = producer
                .recent
                .iter()
                .find(|(sequence, _)| *sequence == batch.first_sequence)
                .map(|(_, offset)| *offset);
            return Ok(original.unwrap_or(Offset(u64::MAX)));
        }
        if batch.first_sequence > producer.next_sequence {
            return Err(LogError::OutOfSequence {
                partition,
                producer_id: batch.producer_id,
                sequence: batch.first_sequence,
                expected: producer.next_sequence,
            });
        }
        let first = Offset(state.end);
        persist(first, &batch)?;
        state.commit(first, batch);
        Ok(first)
    }

    /// `Log::end_offset` without the async wrapper.
    pub fn end_offset_now(&self, partition: PartitionId) -> Result<Offset, LogError> {
        Ok(Offset(
            self.partition(partition)?.lock().expect("log lock").end,
        ))
    }

    /// Reloads a batch read back from disk at `first_offset`, which must continue the partition.
    pub fn restore_batch(
        &self,
        partition: PartitionId,
        first_offset: Offset,
        batch: AppendBatch,
    ) -> Result<(), LogError> {
        let mut state = self.partition(partition)?.lock().expect("log lock");
        if first_offset.0 != state.end {
            return Err(LogError::Unavailable {
                message: format!(
                    "partition {partition}: stored batch starts at offset {} but the log ends at {}",
                    first_offset.0, state.end
                ),
            });
        }
        state.commit(first_offset, batch);
        Ok(())
    }
}

impl Partition {
    fn commit(&mut self, first: Offset, batch: AppendBatch) {
        let count = batch.records.len() as u64;
        let producer = self.producers.entry(batch.producer_id).or_default();
        producer.next_sequence = producer.next_sequence.max(batch.first_sequence + count);
        producer.recent.push((batch.first_sequence, first));
        if producer.recent.len() > RECENT_BATCHES_KEPT {
            producer.recent.remove(0);
        }
        if count > 0 {
            self.blocks.push((first, Arc::new(batch.records)));
            self.end += count;
        }
    }
}

#[async_trait]
impl Log for MemoryLog {
    fn partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    async fn append(&self, partition: PartitionId, batch: AppendBatch) -> Result<Offset, LogError> {
        self.append_now(partition, batch)
    }

    async fn new_producer_id(&self) -> Result<u64, LogError> {
        self.new_producer_id_now()
    }

    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        records_max: usize,
    ) -> Result<Vec<ReadBatch>, LogError> {
        let state = self.partition(partition)?.lock().expect("log lock");
        // The block holding `from` is the last one starting at or before it.
        let start = state.blocks.partition_point(|(first, _)| *first <= from);
        let mut batches = Vec::new();
        let mut taken = 0;
        for (first, block) in state.blocks[start.saturating_sub(1)..].iter() {
            let block_end = first.0 + block.len() as u64;
            if block_end <= from.0 {
                continue;
            }
            let skip = from.0.saturating_sub(first.0) as usize;
            let batch = ReadBatch {
                first_offset: *first,
                block: block.clone(),
                skip,
            };
            taken += batch.len();
            batches.push(batch);
            if taken >= records_max {
                break;
            }
        }
        Ok(batches)
    }

    async fn end_offset(&self, partition: PartitionId) -> Result<Offset, LogError> {
        self.end_offset_now(partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer_id: u64, first_sequence: u64, records: &[&[u8]]) -> AppendBatch {
        AppendBatch::from_records(producer_id, first_sequence, records)
    }

    #[tokio::test]
    async fn retried_batches_are_appended_once() {
        let log = MemoryLog::new(2);
        let p = PartitionId(1);
        assert_eq!(
            log.append(p, batch(7, 0, &[b"a", b"b"])).await,
            Ok(Offset(0))
        );
        assert_eq!(
            log.append(p, batch(7, 0, &[b"a", b"b"])).await,
            Ok(Offset(0)),
            "retry"
        );
        assert_eq!(log.append(p, batch(7, 2, &[b"c"])).await, Ok(Offset(2)));
        assert!(matches!(
            log.append(p, batch(7, 9, &[b"x"])).await,
            Err(LogError::OutOfSequence { .. })
        ));
        assert_eq!(log.end_offset(p).await, Ok(Offset(3)));
        let read = log.read(p, Offset(1), 10).await.unwrap();
        let records: Vec<(Offset, Vec<u8>)> = read
            .iter()
            .flat_map(|batch| batch.iter().map(|(o, r)| (o, r.to_vec())))
            .collect();
        assert_eq!(
            records,
            vec![(Offset(1), b"b".to_vec()), (Offset(2), b"c".to_vec())]
        );
        assert!(log.read(PartitionId(5), Offset(0), 1).await.is_err());
    }
}
