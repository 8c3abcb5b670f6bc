//! `KafkaLog`: the engine's `Log` on one Kafka topic.
//!
//! Exactness with Kafka's idempotent producer: librdkafka retries a message internally after a
//! timeout or a lost connection, and the broker dedupes those retries by (producer id, sequence),
//! so they never duplicate. The engine's own `AppendBatch` sequence numbers are not sent to Kafka
//! (Kafka's producer numbers its messages itself). So when a whole `append` fails, say the
//! delivery timed out during a broker outage, and the ingest core retries the batch, records that
//! did reach the log before the failure are appended a second time. That is harmless for the
//! counts: the workers dedupe by `click_id` over the dedup horizon, which is far longer than an
//! append retry, and billing dedupes over the whole period.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adclick_core::codec;
use adclick_core::ids::{Offset, PartitionId};
use adclick_core::partition::campaign_key;
use adclick_engine::seams::{AppendBatch, Log, LogError, ReadBatch};
use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer as _};

use super::admin::verify_partitions;
use super::context::TracingContext;
use super::producer::{BatchAck, Producer, create_producer};
use super::reader::PartitionReader;
use super::{KafkaConfig, KafkaSetupError};

/// How long an append waits for room in a full producer queue before it reports the log busy.
const QUEUE_FULL_WAIT_MS_MAX: u64 = 5_000;
/// How long a watermark query may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct KafkaLog {
    config: Arc<KafkaConfig>,
    producer: Producer,
    /// Answers metadata and watermark queries; a consumer, because librdkafka producers may
    /// auto-create a topic they ask about, and a check must not create what it checks.
    metadata: Arc<BaseConsumer<TracingContext>>,
    /// Opened on a partition's first read: a worker process reads only its assigned partitions.
    readers: Vec<Arc<Mutex<Option<PartitionReader>>>>,
}

fn unavailable(message: String) -> LogError {
    LogError::Unavailable { message }
}

impl KafkaLog {
    /// Connects to the brokers and checks that the topic has the configured partitions.
    /// Blocks for up to a few seconds on metadata: call it before serving, or use `connect`.
    pub fn connect_blocking(config: KafkaConfig) -> Result<KafkaLog, KafkaSetupError> {
        config.validate()?;
        let metadata: BaseConsumer<TracingContext> = config
            .client_config("metadata")
            .create_with_context(TracingContext)
            .map_err(KafkaSetupError::client("create the metadata client"))?;
        verify_partitions(metadata.client(), &config)?;
        let producer = create_producer(&config)?;
        Ok(KafkaLog {
            readers: (0..config.partitions)
                .map(|_| Arc::new(Mutex::new(None)))
                .collect(),
            config: Arc::new(config),
            producer,
            metadata: Arc::new(metadata),
        })
    }

    pub async fn connect(config: KafkaConfig) -> Result<KafkaLog, KafkaSetupError> {
        tokio::task::spawn_blocking(move || KafkaLog::connect_blocking(config))
            .await
            .expect("connecting does not panic")
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    fn check_partition(&self, partition: PartitionId) -> Result<(), LogError> {
        if partition.0 >= self.config.partitions {
            return Err(LogError::NoSuchPartition {
                partition,
                partitions: self.config.partitions,
            });
        }
        Ok(())
    }

    /// The producer's fatal error, if it has one: an idempotent producer that lost track of its
    /// sequence numbers refuses every later message, and only a new producer recovers.
    fn fatal_error_note(&self) -> String {
        match self.producer.client().fatal_error() {
            Some((code, reason)) => {
                format!("; the producer hit a fatal error ({code}: {reason}), restart this node")
            }
            None => String::new(),
        }
    }

    /// Hands one record to librdkafka, waiting while its queue is full.
    async fn enqueue(
        &self,
        partition: PartitionId,
        record: &[u8],
        ack: &Arc<BatchAck>,
    ) -> Result<(), LogError> {
        let mut key_buffer = [0u8; 32];
        // The key an outside producer would use: the campaign (and salt) in decimal. A record
        // that does not decode goes keyless; the worker counts it as undecodable.
        let key = codec::decode(record)
            .ok()
            .map(|click| campaign_key(click.campaign_id, click.salt, &mut key_buffer));
        let queue_full_since = Instant::now();
        loop {
            let mut message = BaseRecord::<[u8], [u8], Arc<BatchAck>>::with_opaque_to(
                &self.config.topic,
                ack.clone(),
            )
            .partition(partition.0 as i32)
            .payload(record);
            if let Some(key) = key {
                message = message.key(key);
            }
            match self.producer.send(message) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if queue_full_since.elapsed().as_millis() < QUEUE_FULL_WAIT_MS_MAX as u128 =>
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => {
                    return Err(unavailable(format!(
                        "kafka partition {partition}: cannot produce: {error}{}",
                        self.fatal_error_note()
                    )));
                }
            }
        }
    }
}

#[async_trait]
impl Log for KafkaLog {
    fn partitions(&self) -> u32 {
        self.config.partitions
    }

    async fn append(&self, partition: PartitionId, batch: AppendBatch) -> Result<Offset, LogError> {
        self.check_partition(partition)?;
        if batch.records.is_empty() {
            return self.end_offset(partition).await;
        }
        let ack = BatchAck::new(batch.records.len());
        for record in batch.records.iter() {
            self.enqueue(partition, record, &ack).await?;
        }
        let first_offset = ack.wait().await.map_err(|message| {
            unavailable(format!(
                "kafka partition {partition}: {message}{}",
                self.fatal_error_note()
            ))
        })?;
        Ok(Offset(first_offset as u64))
    }

    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        records_max: usize,
    ) -> Result<Vec<ReadBatch>, LogError> {
        self.check_partition(partition)?;
        if records_max == 0 {
            return Ok(Vec::new());
        }
        let reader = self.readers[partition.0 as usize].clone();
        let config = self.config.clone();
        // Reading copies up to `records_max` records and may wait `read_wait_ms`: both belong
        // on a blocking thread, not on the runtime's workers.
        tokio::task::spawn_blocking(move || {
            let mut slot = reader.lock().expect("reader lock");
            if slot.is_none() {
                let opened = PartitionReader::open(&config, partition)
                    .map_err(|error| unavailable(error.to_string()))?;
                *slot = Some(opened);
            }
            let reader = slot.as_mut().expect("opened above");
            reader.read(from, records_max, config.read_wait_ms)
        })
        .await
        .map_err(|error| unavailable(format!("kafka partition {partition}: read task: {error}")))?
    }

    /// The partition's high watermark. On real Kafka (and librdkafka's mock cluster) that is the
    /// offset the next record gets, as the trait asks. The Tansu broker reports the start offset
    /// of the last record batch plus one instead, which is below the true end when that batch
    /// holds several records: against Tansu, use this as a lower bound, never for exact lag.
    /// rdkafka's idempotent producer gets its producer id from the broker and numbers its own
    /// sequences; `AppendBatch::producer_id` is not sent, so any id will do.
    async fn new_producer_id(&self) -> Result<u64, LogError> {
        Ok(0)
    }

    async fn end_offset(&self, partition: PartitionId) -> Result<Offset, LogError> {
        Ok(self.watermarks(partition).await?.1)
    }

    /// The low watermark: what retention has not deleted yet.
    async fn start_offset(&self, partition: PartitionId) -> Result<Offset, LogError> {
        Ok(self.watermarks(partition).await?.0)
    }
}

impl KafkaLog {
    /// The partition's (low, high) watermarks.
    async fn watermarks(&self, partition: PartitionId) -> Result<(Offset, Offset), LogError> {
        self.check_partition(partition)?;
        let metadata = self.metadata.clone();
        let topic = self.config.topic.clone();
        let (low, high) = tokio::task::spawn_blocking(move || {
            metadata.fetch_watermarks(&topic, partition.0 as i32, WATERMARK_TIMEOUT)
        })
        .await
        .map_err(|error| {
            unavailable(format!(
                "kafka partition {partition}: watermark task: {error}"
            ))
        })?
        .map_err(|error| {
            unavailable(format!(
                "kafka partition {partition}: cannot fetch watermarks: {error}"
            ))
        })?;
        let offset = |watermark: i64| Offset(u64::try_from(watermark).unwrap_or(0));
        Ok((offset(low), offset(high)))
    }
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KafkaLog")
            .field("brokers", &self.config.brokers)
            .field("topic", &self.config.topic)
            .field("partitions", &self.config.partitions)
            .finish()
    }
}
