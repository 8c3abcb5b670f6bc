//! The producer side of `KafkaLog`: one idempotent librdkafka producer, and a delivery context
//! that turns per-message delivery reports into one answer per appended batch.
//!
//! Each message carries an `Arc` of its batch's acknowledgement as delivery opaque: one atomic
//! increment per message instead of a channel and a future per message.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};

use super::context::log_to_tracing;
use super::{KafkaConfig, KafkaSetupError};

/// What the delivery reports of one batch have said so far.
pub(crate) struct BatchAck {
    remaining: AtomicUsize,
    first_offset: AtomicI64,
    first_error: Mutex<Option<String>>,
    done: tokio::sync::Notify,
}

impl BatchAck {
    pub(crate) fn new(records: usize) -> Arc<BatchAck> {
        Arc::new(BatchAck {
            remaining: AtomicUsize::new(records),
            first_offset: AtomicI64::new(i64::MAX),
            first_error: Mutex::new(None),
            done: tokio::sync::Notify::new(),
        })
    }

    fn report(&self, result: Result<i64, String>) {
        match result {
            // Records of one batch go to one partition in order, so the smallest offset is the
            // first record's, whatever order the reports arrive in.
            Ok(offset) => {
                self.first_offset.fetch_min(offset, Ordering::Relaxed);
            }
            Err(message) => {
                let mut first_error = self.first_error.lock().expect("batch error lock");
                first_error.get_or_insert(message);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // `notify_one` keeps a permit if the appender is not waiting yet: no lost wake-up.
            self.done.notify_one();
        }
    }

    /// Waits for every report; the first record's offset, or the first error.
    pub(crate) async fn wait(&self) -> Result<i64, String> {
        while self.remaining.load(Ordering::Acquire) > 0 {
            self.done.notified().await;
        }
        if let Some(message) = self.first_error.lock().expect("batch error lock").take() {
            return Err(message);
        }
        Ok(self.first_offset.load(Ordering::Relaxed))
    }
}

pub(crate) struct DeliveryContext;

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_to_tracing(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "librdkafka producer error");
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<BatchAck>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Arc<BatchAck>) {
        ack.report(match result {
            Ok(message) => Ok(message.offset()),
            Err((error, message)) => Err(format!(
                "delivery to partition {} failed: {error}",
                message.partition()
            )),
        });
    }
}

pub(crate) type Producer = ThreadedProducer<DeliveryContext>;

pub(crate) fn create_producer(config: &KafkaConfig) -> Result<Producer, KafkaSetupError> {
    config
        .client_config("producer")
        // Kafka's idempotent producer: librdkafka's own retries of a message never duplicate
        // it, and messages of a partition stay in order.
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "10")
        .set(
            "queue.buffering.max.messages",
            config.producer_buffer_messages_max.to_string(),
        )
        // Java's default partitioner (murmur2 of the key, random for keyless records), so that
        // outside producers keyed by campaign agree with `adclick_core::partition`. librdkafka's
        // default is CRC32-based. Our own appends name their partition explicitly.
        .set("partitioner", "murmur2_random")
        .create_with_context(DeliveryContext)
        .map_err(KafkaSetupError::client("create the producer"))
}
