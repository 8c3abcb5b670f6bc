//! The log on a Kafka-protocol broker, through `rdkafka` (librdkafka).
//!
//! Owns: producing batches to explicit partitions (`KafkaLog::append`), batched reads from one
//! partition at a time (`KafkaLog::read`), watermarks, topic creation, and consumer-group
//! membership turned into the engine's `Assignment` (`KafkaGroup`, `run_group_worker`).
//!
//! Does not own offsets: where a partition's reading resumes is in the engine's checkpoints, never
//! in Kafka's committed offsets. Nothing here decides what a click counts as.

mod admin;
mod config;
mod context;
mod group;
mod log;
mod producer;
mod reader;

pub use admin::{create_topic, create_topic_retaining, topic_retention_ms};
pub use config::{KafkaConfig, PARTITIONS_MAX, READ_WAIT_MS_DEFAULT};
pub use group::{GroupWorkerConfig, KafkaGroup, run_group_worker};
pub use log::KafkaLog;

/// Errors while configuring or connecting: no retry is attempted for these, the caller fixes its
/// configuration or its broker. Errors of a running log are `LogError`s.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("kafka config: {field} {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("kafka: cannot {action}: {source}")]
    Client {
        action: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("kafka: topic {topic:?} does not exist on {brokers}")]
    TopicMissing { topic: String, brokers: String },
    #[error(
        "kafka: topic {topic:?} has {actual} partitions but the config says {configured}; fix `partitions` or the topic"
    )]
    PartitionMismatch {
        topic: String,
        configured: u32,
        actual: u32,
    },
}

impl KafkaSetupError {
    fn client(action: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let action = action.into();
        move |source| KafkaSetupError::Client { action, source }
    }
}
