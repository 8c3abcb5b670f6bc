//! `adclick serve`: the HTTP ingest and query API, the workers, and the wiring that picks
//! production seams (Redis, object storage, file or Kafka log) or embedded ones from the config.

pub mod api;
pub use adclick_core::body;
pub mod config;
pub mod fraud_watch;
pub mod listener;
pub mod rebuild;
pub mod security;
pub mod serve;
