//! Production implementations of the engine's seams. None of this is compiled into the
//! simulator: the simulator drives the same engine code through the embedded seams wrapped in
//! fault injectors.
//!
//! - `redis_store`: the real-time store on Redis, fenced by a Lua script.
//! - `blobs`: checkpoints and cold storage through `object_store` (local dir, S3).
//! - `kafka`: the log on a Kafka-protocol broker through `rdkafka`.

pub mod blobs;
pub mod kafka;
pub mod redis_store;
