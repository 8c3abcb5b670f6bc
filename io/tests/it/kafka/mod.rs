//! The Kafka adapter against librdkafka's in-process mock cluster (always) and against a real
//! Kafka-protocol broker, Tansu, started by `ci/kafka-broker` (see `tansu.rs`).

mod engine_path;
mod mock;
mod support;
mod tansu;
