//! The pure aggregation core of adclick.
//!
//! Everything here is deterministic logic: event model and validation, the log codec, the
//! Kafka-compatible partitioner, event-time windows with watermarks, exact dedup, fraud checks
//! and the per-partition aggregator with its checkpoint format. The streaming workers, the batch
//! billing job and the simulator all drive this same code, so the fast and slow paths cannot
//! drift apart.
//!
//! **Invariant:** nothing in this crate does I/O, reads a clock, spawns, or awaits. Time comes in
//! as an argument (`EventTimeMs`, processing time in ms). The crate does not depend on tokio, so
//! the compiler enforces this.

pub mod billing;
pub mod body;
pub mod codec;
pub mod dedup;
pub mod event;
pub mod fraud;
pub mod ids;
pub mod limits;
mod open_table;
pub mod operator;
pub mod partition;
mod probing;
mod rate_rule;
pub mod salt;
pub mod signing;
pub mod snapshot;
pub mod window;

pub use event::{ClickEvent, ClickView};
pub use ids::*;
