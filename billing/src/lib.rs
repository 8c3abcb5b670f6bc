//! The slow path: exact billing per (campaign, hour) and its reconciliation with the fast path.
//!
//! The counting itself is pure (`adclick_core::billing`, the same fraud decision as the
//! aggregator); this crate feeds it, prices the result and writes it to PostgreSQL (production)
//! or SQLite (embedded), one transaction per run.

pub mod job;
pub mod postgres;
pub mod reconcile;
pub mod sqlite;
pub mod store;
