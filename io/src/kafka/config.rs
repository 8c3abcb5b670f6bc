//! The Kafka adapter's configuration and its validation. Nothing here talks to a broker.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::Deserialize;

use super::KafkaSetupError;

/// Upper bound on partitions, far above what one topic of this service needs; it catches a typo
/// before it becomes thousands of consumers.
pub const PARTITIONS_MAX: u32 = 4_096;
/// librdkafka's own ceiling for `queue.buffering.max.messages`.
pub const PRODUCER_BUFFER_MESSAGES_MAX: usize = 2_147_483_647;
/// How long an idle `read` waits for the first record before it answers empty.
pub const READ_WAIT_MS_DEFAULT: u64 = 5;
/// A read never blocks its caller longer than this, even if configured to.
pub const READ_WAIT_MS_MAX: u64 = 100;
/// Kafka's own limit on topic names.
const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Properties the adapter sets itself because exactness or routing depends on them; the
/// `properties` map may not override them.
const RESERVED_PROPERTIES: [&str; 7] = [
    "bootstrap.servers",
    "group.id",
    "client.id",
    "enable.idempotence",
    "partitioner",
    "enable.auto.commit",
    "partition.assignment.strategy",
];

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    pub topic: String,
    /// The topic's partition count; checked against the broker's metadata at connect time.
    pub partitions: u32,
    /// The consumer group the workers join to share partitions.
    pub group_id: String,
    /// Bound on messages waiting in librdkafka's producer queue (`queue.buffering.max.messages`).
    #[serde(default = "producer_buffer_messages_max_default")]
    pub producer_buffer_messages_max: usize,
    #[serde(default = "client_id_default")]
    pub client_id: String,
    #[serde(default = "read_wait_ms_default")]
    pub read_wait_ms: u64,
    /// Extra librdkafka properties (security, timeouts, fetch sizes), applied to every client.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Start even if the topic's `retention.ms` is shorter than a rebuild of the store needs
    /// (`adclick serve` checks it at start): the oldest series the store keeps then cannot be
    /// rebuilt from the log.
    #[serde(default)]
    pub allow_short_retention: bool,
}

fn producer_buffer_messages_max_default() -> usize {
    adclick_engine::limits::PRODUCER_BUFFER_EVENTS_MAX_DEFAULT
}

fn client_id_default() -> String {
    "adclick".to_string()
}

fn read_wait_ms_default() -> u64 {
    READ_WAIT_MS_DEFAULT
}

fn invalid(field: &'static str, reason: String) -> KafkaSetupError {
    KafkaSetupError::InvalidConfig { field, reason }
}

impl KafkaConfig {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(brokers: &str, topic: &str, partitions: u32, group_id: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            partitions,
            group_id: group_id.to_string(),
            producer_buffer_messages_max: producer_buffer_messages_max_default(),
            client_id: client_id_default(),
            read_wait_ms: READ_WAIT_MS_DEFAULT,
            properties: BTreeMap::new(),
            allow_short_retention: false,
        }
    }

    pub fn validate(&self) -> Result<(), KafkaSetupError> {
        if self.brokers.trim().is_empty() {
            return Err(invalid("brokers", "is empty".to_string()));
        }
        let topic_ok = !self.topic.is_empty()
            && self.topic.len() <= TOPIC_NAME_BYTES_MAX
            && self.topic != "."
            && self.topic != ".."
            && self
                .topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !topic_ok {
            return Err(invalid(
                "topic",
                format!(
                    "{:?} is not a kafka topic name (1 to {TOPIC_NAME_BYTES_MAX} of [a-zA-Z0-9._-])",
                    self.topic
                ),
            ));
        }
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return Err(invalid(
                "partitions",
                format!("{} is outside 1..={PARTITIONS_MAX}", self.partitions),
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(invalid("group_id", "is empty".to_string()));
        }
        if self.producer_buffer_messages_max == 0
            || self.producer_buffer_messages_max > PRODUCER_BUFFER_MESSAGES_MAX
        {
            return Err(invalid(
                "producer_buffer_messages_max",
                format!(
                    "{} is outside 1..={PRODUCER_BUFFER_MESSAGES_MAX}",
                    self.producer_buffer_messages_max
                ),
            ));
        }
        if self.client_id.trim().is_empty() {
            return Err(invalid("client_id", "is empty".to_string()));
        }
        if self.read_wait_ms > READ_WAIT_MS_MAX {
            return Err(invalid(
                "read_wait_ms",
                format!(
                    "{} is over the limit of {READ_WAIT_MS_MAX}",
                    self.read_wait_ms
                ),
            ));
        }
        if let Some(key) = self
            .properties
            .keys()
            .find(|key| RESERVED_PROPERTIES.contains(&key.as_str()))
        {
            return Err(invalid(
                "properties",
                format!("{key:?} is set by the adapter and may not be overridden"),
            ));
        }
        Ok(())
    }

    /// The settings every client shares: brokers, client id, then the extra properties.
    pub(crate) fn client_config(&self, role: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("{}-{role}", self.client_id));
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_rejects_unknown_fields() {
        let config: KafkaConfig = serde_json::from_str(
            r#"{"brokers": "127.0.0.1:9092", "topic": "clicks", "partitions": 8, "group_id": "workers"}"#,
        )
        .unwrap();
        assert_eq!(
            config,
            KafkaConfig::new("127.0.0.1:9092", "clicks", 8, "workers")
        );
        config.validate().unwrap();
        let unknown = serde_json::from_str::<KafkaConfig>(
            r#"{"brokers": "b", "topic": "t", "partitions": 1, "group_id": "g", "partition": 3}"#,
        );
        assert!(unknown.unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn validation_names_the_bad_field() {
        let good = KafkaConfig::new("b:9092", "clicks", 4, "g");
        let cases: Vec<(&str, KafkaConfig)> = vec![
            (
                "brokers",
                KafkaConfig {
                    brokers: " ".into(),
                    ..good.clone()
                },
            ),
            (
                "topic",
                KafkaConfig {
                    topic: "a/b".into(),
                    ..good.clone()
                },
            ),
            (
                "topic",
                KafkaConfig {
                    topic: "x".repeat(250),
                    ..good.clone()
                },
            ),
            (
                "partitions",
                KafkaConfig {
                    partitions: 0,
                    ..good.clone()
                },
            ),
            (
                "partitions",
                KafkaConfig {
                    partitions: PARTITIONS_MAX + 1,
                    ..good.clone()
                },
            ),
            (
                "group_id",
                KafkaConfig {
                    group_id: String::new(),
                    ..good.clone()
                },
            ),
            (
                "producer_buffer_messages_max",
                KafkaConfig {
                    producer_buffer_messages_max: 0,
                    ..good.clone()
                },
            ),
            (
                "read_wait_ms",
                KafkaConfig {
                    read_wait_ms: 101,
                    ..good.clone()
                },
            ),
            (
                "properties",
                KafkaConfig {
                    properties: [("enable.idempotence".to_string(), "false".to_string())].into(),
                    ..good.clone()
                },
            ),
        ];
        for (field, config) in cases {
            match config.validate() {
                Err(KafkaSetupError::InvalidConfig { field: named, .. }) => {
                    assert_eq!(named, field)
                }
                other => panic!("{field}: expected an invalid-config error, got {other:?}"),
            }
        }
    }
}
