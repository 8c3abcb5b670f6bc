//! Topic creation and the connect-time check that the topic has the partitions we route to.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::Client;
use rdkafka::error::RDKafkaErrorCode;

use super::context::TracingContext;
use super::{KafkaConfig, KafkaSetupError};

/// How long a metadata or admin request may take before setup gives up.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates the configured topic with `config.partitions` partitions, and succeeds if it already
/// exists (the partition count is checked when a `KafkaLog` connects, not here).
///
/// Not for librdkafka's mock cluster: it does not implement CreateTopics, so tests create topics
/// there with `MockCluster::create_topic`.
pub async fn create_topic(
    config: &KafkaConfig,
    replication_factor: i32,
) -> Result<(), KafkaSetupError> {
    config.validate()?;
    let admin: AdminClient<TracingContext> = config
        .client_config("admin")
        .create_with_context(TracingContext)
        .map_err(KafkaSetupError::client("create an admin client"))?;
    let topic = NewTopic::new(
        &config.topic,
        config.partitions as i32,
        TopicReplication::Fixed(replication_factor),
    );
    let options = AdminOptions::new().operation_timeout(Some(SETUP_TIMEOUT));
    let results =
        admin
            .create_topics([&topic], &options)
            .await
            .map_err(KafkaSetupError::client(format!(
                "create topic {:?}",
                config.topic
            )))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaSetupError::Client {
                    action: format!("create topic {topic:?}"),
                    source: rdkafka::error::KafkaError::AdminOp(code),
                });
            }
        }
    }
    Ok(())
}

/// Checks that the topic exists with exactly the configured partitions: routing by
/// `murmur2 % partitions` with a different count than the topic's would put campaigns on the
/// wrong partitions, and outside producers would disagree with our ingest.
pub(crate) fn verify_partitions<C: rdkafka::ClientContext>(
    client: &Client<C>,
    config: &KafkaConfig,
) -> Result<(), KafkaSetupError> {
    let metadata = client
        .fetch_metadata(Some(&config.topic), SETUP_TIMEOUT)
        .map_err(KafkaSetupError::client(format!(
            "fetch metadata of topic {:?}",
            config.topic
        )))?;
    let topic = metadata
        .topics()
        .iter()
        .find(|topic| topic.name() == config.topic);
    let Some(topic) = topic.filter(|topic| topic.error().is_none()) else {
        return Err(KafkaSetupError::TopicMissing {
            topic: config.topic.clone(),
            brokers: config.brokers.clone(),
        });
    };
    let actual = topic.partitions().len() as u32;
    if actual != config.partitions {
        return Err(KafkaSetupError::PartitionMismatch {
            topic: config.topic.clone(),
            configured: config.partitions,
            actual,
        });
    }
    Ok(())
}
