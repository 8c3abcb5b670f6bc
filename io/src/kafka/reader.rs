//! Batched reads of one partition: one manually assigned consumer per partition, drained with
//! librdkafka's `rd_kafka_consume_batch_queue`.
//!
//! Why not `BaseConsumer::poll`: it hands out one message per call, each through a queue lock
//! and an op dispatch, which caps a reader at a few hundred thousand records per second on a
//! small machine. The batch call takes up to `records_max` messages under one lock.
//!
//! Owns the consumer's position: it re-assigns the partition at the requested offset whenever a
//! read asks for an offset other than the one after the last record it returned.

use std::ffi::{CStr, CString};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adclick_core::ids::{Offset, PartitionId};
use adclick_engine::seams::{LogError, ReadBatch, RecordBlock};
use rdkafka::bindings as native;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};

use super::context::TracingContext;
use super::{KafkaConfig, KafkaSetupError};

/// How long a read waits for records the log is known to hold but the consumer has not fetched.
const BACKLOG_WAIT_MS_MAX: u64 = 2_000;
const BACKLOG_WAIT_STEP_MS: u64 = 5;
/// How long the watermark query behind that decision may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

/// The consumer queue of a reader's consumer: a counted reference librdkafka lets any thread use.
struct ConsumerQueue(*mut native::rd_kafka_queue_t);

// SAFETY: librdkafka queues are internally locked and documented as thread-safe; the pointer is
// only destroyed once, in `Drop`, while the reader (and its consumer) is still alive.
unsafe impl Send for ConsumerQueue {}

pub(crate) struct PartitionReader {
    // Declared before `consumer` so that the queue reference is released before the consumer
    // closes.
    queue: ConsumerQueue,
    consumer: BaseConsumer<TracingContext>,
    topic: String,
    partition: PartitionId,
    /// The offset the consumer is positioned to return next, if it is positioned.
    next_offset: Option<u64>,
}

impl Drop for ConsumerQueue {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `rd_kafka_queue_get_consumer` and is released once.
        unsafe { native::rd_kafka_queue_destroy(self.0) }
    }
}

fn unavailable(partition: PartitionId, what: impl std::fmt::Display) -> LogError {
    LogError::Unavailable {
        message: format!("kafka partition {partition}: {what}"),
    }
}

impl PartitionReader {
    pub(crate) fn open(
        config: &KafkaConfig,
        partition: PartitionId,
    ) -> Result<PartitionReader, KafkaSetupError> {
        let consumer: BaseConsumer<TracingContext> = config
            .client_config(&format!("reader-{partition}"))
            // A group id only so that librdkafka gives the consumer its own message queue. The
            // reader never subscribes, so it never joins the group, and it commits nothing:
            // positions live in the engine's checkpoints.
            .set("group.id", format!("{}-readers", config.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // A position outside the log (say, retention deleted what a checkpoint points at) is
            // an error to report, never a silent jump to the earliest or latest record.
            .set("auto.offset.reset", "error")
            .create_with_context(TracingContext)
            .map_err(KafkaSetupError::client(format!(
                "create the reader of partition {partition}"
            )))?;
        // SAFETY: the consumer handle is valid; a consumer with a group id has a consumer queue.
        let queue = unsafe { native::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        assert!(
            !queue.is_null(),
            "a consumer with a group.id has a consumer queue"
        );
        Ok(PartitionReader {
            queue: ConsumerQueue(queue),
            consumer,
            topic: config.topic.clone(),
            partition,
            next_offset: None,
        })
    }

    fn position_at(&mut self, from: Offset) -> Result<(), LogError> {
        let offset = i64::try_from(from.0).map_err(|_| {
            unavailable(
                self.partition,
                format!("offset {} is beyond kafka's range", from.0),
            )
        })?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(
                &self.topic,
                self.partition.0 as i32,
                KafkaOffset::Offset(offset),
            )
            .map_err(|error| unavailable(self.partition, error))?;
        // Assigning bumps librdkafka's fetch version: records fetched for the old position are
        // discarded, never returned after the new assignment.
        self.consumer
            .assign(&assignment)
            .map_err(|error| unavailable(self.partition, format!("cannot assign: {error}")))?;
        self.next_offset = Some(from.0);
        Ok(())
    }

    /// Up to `records_max` records from `from`, waiting at most `wait_ms` when none are ready.
    /// Blocking: call it off the async runtime's worker threads.
    pub(crate) fn read(
        &mut self,
        from: Offset,
        records_max: usize,
        wait_ms: u64,
    ) -> Result<Vec<ReadBatch>, LogError> {
        if self.next_offset != Some(from.0) {
            self.position_at(from)?;
        }
        let mut messages: Vec<*mut native::rd_kafka_message_t> = Vec::with_capacity(records_max);
        // Take what is already fetched without waiting; only an idle partition waits, briefly,
        // because librdkafka's batch call waits for a *full* batch until its timeout.
        let mut count = self.consume(&mut messages, 0);
        if count == 0 && wait_ms > 0 {
            count = self.consume(&mut messages, wait_ms);
        }
        if count == 0 && self.records_exist_at(from) {
            // The records are in the log but not fetched yet (the first fetch after a
            // reposition, or a fetch in flight). Callers take an empty read to mean "nothing
            // there yet", so wait for them, in short steps because the batch call would
            // otherwise hold out for a full batch.
            let deadline = Instant::now() + Duration::from_millis(BACKLOG_WAIT_MS_MAX);
            while count == 0 && Instant::now() < deadline {
                count = self.consume(&mut messages, BACKLOG_WAIT_STEP_MS);
            }
        }
        // SAFETY: `rd_kafka_consume_batch_queue` wrote `count` valid message pointers.
        unsafe { messages.set_len(count) };
        let result = self.collect(&messages, from);
        for message in messages {
            // SAFETY: each message came from the batch call and is destroyed exactly once.
            unsafe { native::rd_kafka_message_destroy(message) };
        }
        if result.is_err() {
            // After an error the consumer's position is unknown: re-assign on the next read.
            self.next_offset = None;
        }
        result
    }

    /// Whether the partition holds records at or after `from`, by the high watermark of the last
    /// fetch (no request), or by asking the broker when nothing was fetched yet. Tansu reports a
    /// high watermark below the true end, which only makes this answer "no" more often.
    fn records_exist_at(&self, from: Offset) -> bool {
        let (mut low, mut high) = (-1i64, -1i64);
        let topic = CString::new(self.topic.as_str()).expect("topic names have no NUL");
        // SAFETY: the consumer handle and the C string are valid for the call.
        let error = unsafe {
            native::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                self.partition.0 as i32,
                &mut low,
                &mut high,
            )
        };
        if error != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || high < 0 {
            high = self
                .consumer
                .fetch_watermarks(&self.topic, self.partition.0 as i32, WATERMARK_TIMEOUT)
                .map_or(-1, |(_, high)| high);
        }
        u64::try_from(high).is_ok_and(|high| from.0 < high)
    }

    fn consume(&self, messages: &mut Vec<*mut native::rd_kafka_message_t>, wait_ms: u64) -> usize {
        // SAFETY: the queue is alive and `messages` has room for `capacity` pointers.
        let count = unsafe {
            native::rd_kafka_consume_batch_queue(
                self.queue.0,
                wait_ms as i32,
                messages.as_mut_ptr(),
                messages.capacity(),
            )
        };
        // -1 only for an invalid queue, which a live consumer's own queue never is.
        usize::try_from(count).expect("the consumer queue is valid")
    }

    /// Copies the messages into blocks of consecutive offsets. Kafka offsets can skip (control
    /// records of transactions, compaction), so a gap starts a new block.
    fn collect(
        &mut self,
        messages: &[*mut native::rd_kafka_message_t],
        from: Offset,
    ) -> Result<Vec<ReadBatch>, LogError> {
        let mut batches = Vec::new();
        let mut block = RecordBlock::default();
        let mut block_first = from.0;
        let mut next = from.0;
        for &message in messages {
            // SAFETY: a message from the batch call stays valid until destroyed by `read`.
            let message = unsafe { &*message };
            if message.err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
                return Err(unavailable(self.partition, message_error(message)));
            }
            assert_eq!(
                message.partition, self.partition.0 as i32,
                "a reader's consumer is assigned one partition"
            );
            let offset = message.offset as u64;
            if offset < next {
                // Fetched for a position we left; librdkafka should have dropped it.
                continue;
            }
            if offset != next && !block.is_empty() {
                batches.push(read_batch(block_first, std::mem::take(&mut block)));
            }
            if block.is_empty() {
                block_first = offset;
            }
            // SAFETY: payload points to `len` bytes owned by the message (or is null when empty).
            let payload = if message.payload.is_null() {
                &[][..]
            } else {
                unsafe { std::slice::from_raw_parts(message.payload as *const u8, message.len) }
            };
            block.push(payload);
            next = offset + 1;
        }
        if !block.is_empty() {
            batches.push(read_batch(block_first, block));
        }
        self.next_offset = Some(next);
        Ok(batches)
    }
}

fn read_batch(first_offset: u64, block: RecordBlock) -> ReadBatch {
    ReadBatch {
        first_offset: Offset(first_offset),
        block: Arc::new(block),
        skip: 0,
    }
}

fn message_error(message: &native::rd_kafka_message_t) -> String {
    // SAFETY: librdkafka returns a static or message-owned NUL-terminated string.
    let text = unsafe { CStr::from_ptr(native::rd_kafka_message_errstr(message)) };
    let code = rdkafka::error::RDKafkaErrorCode::from(message.err);
    format!(
        "{code} at offset {}: {}",
        message.offset,
        text.to_string_lossy()
    )
}
