//! The slow path: exact billing per (campaign, hour) and its reconciliation with the fast path.
//!
//! The counting itself is pure (`adclick_core::billing`, the same fraud decision as the
//! aggregator); this crate feeds it, prices the result and writes it to PostgreSQL (production)
//! or SQLite (embedded), one transaction per run.
//!
//! - `completeness`: whether the archive has caught up far enough to bill a period.
//! - `job`: feeding, pricing, the whole run over the archive.
//! - `correction`: bill or correction, and the differences a correction writes.
//! - `store`, `postgres`, `sqlite`: the schema and its two databases.
//! - `reconcile`: billing against the fast path.

pub mod completeness;
pub mod correction;
pub mod job;
pub mod postgres;
pub mod reconcile;
pub mod sqlite;
pub mod store;
pub mod workers_lists;
