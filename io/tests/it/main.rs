//! The io crate's integration tests, one binary: the Kafka adapter (`kafka`) and the Redis store
//! (`redis_store`), each against the real thing.

mod kafka;
mod redis_store;
