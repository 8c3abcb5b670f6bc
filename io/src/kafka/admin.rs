//! Topic creation and the connect-time check that the topic has the partitions we route to.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
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
    create_topic_retaining(config, replication_factor, None).await
}

/// `create_topic`, and a topic it creates keeps records for `retention_ms` (an existing topic
/// is left as it is).
pub async fn create_topic_retaining(
    config: &KafkaConfig,
    replication_factor: i32,
    retention_ms: Option<u64>,
) -> Result<(), KafkaSetupError> {
    config.validate()?;
    let admin: AdminClient<TracingContext> = config
        .client_config("admin")
        .create_with_context(TracingContext)
        .map_err(KafkaSetupError::client("create an admin client"))?;
    let retention_text = retention_ms.map(|ms| ms.to_string());
    let mut topic = NewTopic::new(
        &config.topic,
        config.partitions as i32,
        TopicReplication::Fixed(replication_factor),
    );
    if let Some(retention) = &retention_text {
        topic = topic.set("retention.ms", retention);
    }
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

/// The topic's `retention.ms` as the broker reports it (DescribeConfigs): -1 keeps records
/// forever; `None` when the broker names no value (then nothing can be checked).
pub async fn topic_retention_ms(config: &KafkaConfig) -> Result<Option<i64>, KafkaSetupError> {
    let admin: AdminClient<TracingContext> = config
        .client_config("admin")
        .create_with_context(TracingContext)
        .map_err(KafkaSetupError::client("create an admin client"))?;
    let options = AdminOptions::new().request_timeout(Some(SETUP_TIMEOUT));
    let action = || format!("describe the configs of topic {:?}", config.topic);
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(&config.topic)], &options)
        .await
        .map_err(KafkaSetupError::client(action()))?;
    let resource = match results.into_iter().next() {
        Some(Ok(resource)) => resource,
        Some(Err(code)) => {
            return Err(KafkaSetupError::Client {
                action: action(),
                source: rdkafka::error::KafkaError::AdminOp(code),
            });
        }
        None => return Ok(None),
    };
    Ok(resource
        .get("retention.ms")
        .and_then(|entry| entry.value.as_deref())
        .and_then(|value| value.trim().parse().ok()))
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
