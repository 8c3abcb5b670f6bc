//! `adclick.toml`: which roles this process runs and which seams they use. Validated at start,
//! each error naming the key, its value and the rule it broke. With no file, every role runs in
//! one process on embedded seams, so a new user can POST clicks and query counts with no
//! services.

use adclick_engine::scenario::{EngineInvalid, refuse};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use adclick_core::operator::AggregatorConfig;
use adclick_engine::ingest::IngestConfig;
use adclick_engine::scenario::Engine;
use adclick_engine::worker::WorkerConfig;
use adclick_io::blobs::BlobConfig;
use adclick_io::kafka::KafkaConfig;
use adclick_io::redis_store::RedisConfig;
use serde::Deserialize;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Ingest,
    Worker,
    Query,
    /// Raw events to Parquet (needs `[archive] url`); one process per deployment.
    Archiver,
    All,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    pub roles: Vec<Role>,
    pub http: HttpConfig,
    /// The aggregation settings: the same `[engine]` table as a scenario file.
    pub engine: Engine,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub checkpoints: CheckpointsConfig,
    pub fraud: FraudConfig,
    pub archive: ArchiveConfig,
    /// Field-level default: a config file without `[security]` requires signed clicks (only
    /// the no-file demo takes unsigned ones).
    #[serde(default)]
    pub security: crate::security::SecurityConfig,
}

/// The cold path: raw events to Parquet for the billing job.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// `file:///dir` or `s3://bucket/prefix`; absent: no archiver runs.
    pub url: Option<String>,
    pub options: std::collections::BTreeMap<String, String>,
    /// Roll a file at this many bytes of buffered rows (about 6x the Parquet size).
    pub roll_bytes: u64,
    /// Or this long after its first row.
    pub roll_interval_ms: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        let defaults = adclick_archive::ArchiverConfig::default();
        ArchiveConfig {
            url: None,
            options: Default::default(),
            roll_bytes: defaults.roll_bytes,
            roll_interval_ms: defaults.roll_interval_ms,
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            roles: vec![Role::All],
            http: HttpConfig::default(),
            engine: Engine {
                // Production-sized windows; scenario files use small ones to finish fast.
                window_ms: 60_000,
                ..Engine::default()
            },
            log: LogConfig::default(),
            store: StoreConfig::default(),
            checkpoints: CheckpointsConfig::default(),
            fraud: FraudConfig::default(),
            archive: ArchiveConfig::default(),
            // No config file is the embedded demo: unsigned clicks are taken (and warned about).
            security: crate::security::SecurityConfig {
                allow_unsigned: true,
                ..Default::default()
            },
        }
    }
}

/// HTTP limits, each named with its unit.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub body_bytes_max: usize,
    pub records_per_request_max: usize,
    /// The longest time range one query may span.
    pub query_span_ms_max: u64,
    /// The most windows or ads one top-N query returns.
    pub top_n_max: usize,
    /// The `Retry-After` a busy (503) answer carries.
    pub busy_retry_after_s: u64,
    /// Requests per second per client IP on the /v1 API, with a burst; 0: unlimited.
    pub requests_per_s_per_client: u32,
    pub request_burst_per_client: u32,
    /// A connection must send its request headers within this (slow clients are cut off).
    pub header_read_timeout_ms: u64,
    /// A request (body included) must be answered within this.
    pub request_timeout_ms: u64,
    /// A `?ack=durable` request waits at most this for the log to confirm its append, then
    /// answers busy (503 with `Retry-After`): the clicks stay buffered, and a resend with the
    /// same click ids counts once. Below `request_timeout_ms`, so a failing log (a full disk)
    /// answers busy rather than 408.
    pub durable_ack_timeout_ms: u64,
    /// Open connections at most; more are closed at once.
    pub connections_max: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_bytes_max: 4 * 1024 * 1024,
            records_per_request_max: adclick_engine::limits::INGEST_RECORDS_PER_REQUEST_MAX,
            query_span_ms_max: 7 * 24 * 3_600_000,
            top_n_max: 1_000,
            busy_retry_after_s: 1,
            requests_per_s_per_client: 0,
            request_burst_per_client: 100,
            header_read_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            durable_ack_timeout_ms: 10_000,
            connections_max: 4_096,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum LogConfig {
    /// In process, gone at exit. The embedded default.
    #[default]
    Memory,
    /// Segment files under `dir`: survives restarts of a single-node deployment.
    File { dir: PathBuf },
    /// A Kafka-protocol broker (Apache Kafka, Redpanda, MSK, Tansu); workers share partitions
    /// through its consumer group.
    Kafka(KafkaConfig),
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum StoreConfig {
    /// In process, with the same fencing as Redis. The embedded default.
    #[default]
    Memory,
    Redis(RedisConfig),
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointsConfig {
    /// `file:///dir` or `s3://bucket/prefix` (with `options`); absent: in memory.
    pub url: Option<String>,
    pub options: std::collections::BTreeMap<String, String>,
}

impl CheckpointsConfig {
    pub fn blob_config(&self) -> Option<BlobConfig> {
        self.url.as_ref().map(|url| BlobConfig {
            url: url.clone(),
            options: self.options.clone(),
        })
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FraudConfig {
    /// A fraud list file (`version N`, then `ip ...` / `ua ...` lines). Absent: the empty list.
    /// Re-read on SIGHUP and every `reload_interval_ms`; a new version is stored in the
    /// checkpoint blob store, then swapped in at the workers' next epoch.
    pub list: Option<PathBuf>,
    pub reload_interval_ms: u64,
}

impl Default for FraudConfig {
    fn default() -> FraudConfig {
        FraudConfig {
            list: None,
            reload_interval_ms: 10_000,
        }
    }
}

/// A config file's errors are a scenario file's: the same read, parse and invalid-key cases,
/// each naming the file, the key, the value and the rule.
pub use adclick_engine::scenario::ScenarioError as ConfigError;

impl ServeConfig {
    pub fn load(path: &Path) -> Result<ServeConfig, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: origin.clone(),
            source,
        })?;
        ServeConfig::parse(&text, &origin)
    }

    pub fn parse(text: &str, origin: &str) -> Result<ServeConfig, ConfigError> {
        let config: ServeConfig = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: origin.to_owned(),
            message: error.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Every rule, each failure naming the key, its value and the rule it broke: the engine's
    /// are the ones a scenario's `[engine]` obeys (`Engine::validate`).
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        self.validate_values()
            .map_err(|error| ConfigError::Invalid {
                path: origin.to_owned(),
                key: error.key,
                value: error.value,
                rule: error.rule,
            })
    }

    fn validate_values(&self) -> Result<(), EngineInvalid> {
        if self.roles.is_empty() {
            return refuse(
                "roles",
                "[]",
                "name at least one of \"ingest\", \"worker\", \"query\", \"all\"",
            );
        }
        self.validate_nonzero()?;
        self.http.validate()?;
        self.engine.validate()?;
        self.aggregator_config()
            .validate()
            .or_else(|error| refuse("engine", "(window and dedup settings)", error.to_string()))?;
        self.validate_roles()?;
        self.validate_seams()
    }

    fn validate_nonzero(&self) -> Result<(), EngineInvalid> {
        let http = &self.http;
        for (key, value) in [
            ("http.body_bytes_max", http.body_bytes_max as u64),
            (
                "http.records_per_request_max",
                http.records_per_request_max as u64,
            ),
            ("http.query_span_ms_max", http.query_span_ms_max),
            ("http.top_n_max", http.top_n_max as u64),
            ("http.header_read_timeout_ms", http.header_read_timeout_ms),
            ("http.request_timeout_ms", http.request_timeout_ms),
            ("http.durable_ack_timeout_ms", http.durable_ack_timeout_ms),
            ("http.connections_max", http.connections_max as u64),
            ("engine.partitions", u64::from(self.engine.partitions)),
            ("engine.epoch_ms", self.engine.epoch_ms),
            ("fraud.reload_interval_ms", self.fraud.reload_interval_ms),
            (
                "engine.producer_buffer_events_max",
                self.engine.producer_buffer_events_max as u64,
            ),
        ] {
            if value == 0 {
                return refuse(key, 0, "must be at least 1");
            }
        }
        Ok(())
    }

    /// What each role needs: keys to verify clicks with, a place to archive to.
    fn validate_roles(&self) -> Result<(), EngineInvalid> {
        let security = &self.security;
        if self.runs(Role::Ingest)
            && !security.allow_unsigned
            && security.signing_keys_file.is_none()
            && std::env::var_os(crate::security::SIGNING_KEYS_ENV).is_none()
        {
            return refuse(
                "security.signing_keys_file",
                "(absent)",
                "the ingest role verifies signed clicks: give the keys (a file, or ADCLICK_SIGNING_KEYS), \
                 or set security.allow_unsigned = true for a demo",
            );
        }
        if self.roles.contains(&Role::Archiver) && self.archive.url.is_none() {
            return refuse(
                "archive.url",
                "(absent)",
                "the archiver role needs a place to write: file:///dir or s3://bucket/prefix",
            );
        }
        Ok(())
    }

    fn validate_seams(&self) -> Result<(), EngineInvalid> {
        if let LogConfig::Kafka(kafka) = &self.log {
            if let Err(error) = kafka.validate() {
                return refuse("log", &kafka.brokers, error.to_string());
            }
            if kafka.partitions != self.engine.partitions {
                return refuse(
                    "log.partitions",
                    kafka.partitions,
                    format!(
                        "must equal engine.partitions ({}): the partitioner and the query layer use it",
                        self.engine.partitions
                    ),
                );
            }
        }
        if let StoreConfig::Redis(redis) = &self.store
            && let Err(error) = redis.validate()
        {
            return refuse("store", &redis.url, error);
        }
        Ok(())
    }

    pub fn runs(&self, role: Role) -> bool {
        if role == Role::Archiver && self.archive.url.is_none() {
            return false;
        }
        self.roles.contains(&role) || self.roles.contains(&Role::All)
    }

    pub fn aggregator_config(&self) -> AggregatorConfig {
        // Grow on demand: a server does not know its rate in advance.
        self.engine
            .aggregator_config(1024.min(self.engine.dedup_ids_per_partition_max))
    }

    pub fn worker_config(&self) -> WorkerConfig {
        self.engine.worker_config()
    }

    pub fn ingest_config(&self) -> IngestConfig {
        self.engine.ingest_config()
    }
}

impl HttpConfig {
    fn validate(&self) -> Result<(), EngineInvalid> {
        if self.durable_ack_timeout_ms >= self.request_timeout_ms {
            return refuse(
                "http.durable_ack_timeout_ms",
                self.durable_ack_timeout_ms,
                format!(
                    "must be below http.request_timeout_ms = {}, so a durable append that cannot \
                     finish answers busy (503) before the request times out (408)",
                    self.request_timeout_ms
                ),
            );
        }
        let records_max = adclick_engine::limits::INGEST_RECORDS_PER_REQUEST_MAX;
        if self.records_per_request_max > records_max {
            return refuse(
                "http.records_per_request_max",
                self.records_per_request_max,
                format!("must be at most {records_max} (the ingest core's limit)"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_means_every_role_on_embedded_seams() {
        let config = ServeConfig::default();
        config.validate("no file").unwrap();
        assert!(
            config.security.allow_unsigned,
            "the demo takes unsigned clicks"
        );
        assert!(config.runs(Role::Ingest) && config.runs(Role::Worker) && config.runs(Role::Query));
        assert_eq!(config.log, LogConfig::Memory);
        assert_eq!(config.store, StoreConfig::Memory);
    }

    #[test]
    fn errors_name_the_key_the_value_and_the_rule() {
        let demo = "[security]\nallow_unsigned = true\n";
        let error = ServeConfig::parse(&format!("{demo}[http]\nbody_bytes_max = 0\n"), "a.toml")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "a.toml: `http.body_bytes_max` = 0: must be at least 1"
        );
        let error = ServeConfig::parse(&format!("{demo}[http]\nbody_byte_max = 10\n"), "a.toml")
            .unwrap_err();
        assert!(error.to_string().contains("body_byte_max"), "{error}");
        let error = ServeConfig::parse(
            &format!("{demo}[store]\nkind = \"redis\"\nurl = \"redis://x/\"\nprefix = \"a:b\"\n"),
            "a.toml",
        )
        .unwrap_err();
        assert!(error.to_string().contains("redis.prefix"), "{error}");
    }

    /// Regression: `serve` ran the aggregator's checks but not the engine's own, so it took
    /// `epoch_ms = 1`, and `hot_campaign_salts = 1` with splitting on passed validation and then
    /// panicked at start. Scenarios and `serve` now share `Engine::validate`.
    #[test]
    fn serve_applies_the_same_engine_rules_as_a_scenario() {
        let demo = "[security]\nallow_unsigned = true\n[engine]\n";
        for (engine, key) in [
            (
                "epoch_ms = 1\n",
                "`engine.epoch_ms` = 1: must be at least 10",
            ),
            ("partitions = 2000\n", "`engine.partitions` = 2000"),
            (
                "hot_campaign_share = 0.1\nhot_campaign_salts = 1\n",
                "`engine.hot_campaign_salts` = 1: must be between 2 and",
            ),
            (
                "hot_campaign_share = 1.5\n",
                "`engine.hot_campaign_share` = 1.5",
            ),
        ] {
            let error = ServeConfig::parse(&format!("{demo}{engine}"), "a.toml").unwrap_err();
            assert!(error.to_string().contains(key), "{engine}: {error}");
        }
    }

    #[test]
    fn a_kafka_log_must_agree_on_partitions() {
        let text = "[security]\nallow_unsigned = true\n[engine]\npartitions = 8\n[log]\nkind = \"kafka\"\nbrokers = \"k:9092\"\ntopic = \"clicks\"\npartitions = 16\ngroup_id = \"workers\"\n";
        let error = ServeConfig::parse(text, "a.toml").unwrap_err();
        assert!(
            error.to_string().contains("`log.partitions` = 16"),
            "{error}"
        );
        let fixed = text.replace("partitions = 16", "partitions = 8");
        assert!(matches!(
            ServeConfig::parse(&fixed, "a.toml").unwrap().log,
            LogConfig::Kafka(_)
        ));
    }

    #[test]
    fn the_readme_production_config_parses() {
        let readme = include_str!("../../README.md");
        let after = readme
            .split("A production config (`adclick serve --config adclick.toml`)")
            .nth(1)
            .expect("README.md shows a production config");
        let block = after
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("in a toml block");
        let config = ServeConfig::parse(block, "README.md").unwrap();
        assert_eq!(
            config.engine.ingest_nodes,
            adclick_engine::ingest::PlanSharing::Shared
        );
        assert!(config.engine.hot_campaigns().is_some());
    }

    #[test]
    fn a_production_config_parses() {
        let text = r#"
roles = ["worker", "query"]
[http]
listen = "0.0.0.0:8080"
[engine]
partitions = 32
[log]
kind = "file"
dir = "/var/lib/adclick/log"
[store]
kind = "redis"
url = "redis://10.0.0.5:6379/"
[checkpoints]
url = "s3://adclick-checkpoints/prod"
options = { aws_region = "eu-west-1" }
"#;
        let config = ServeConfig::parse(text, "prod.toml").unwrap();
        assert!(!config.runs(Role::Ingest));
        assert!(matches!(config.store, StoreConfig::Redis(ref redis) if redis.prefix == "adclick"));
    }
}
