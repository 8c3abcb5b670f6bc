//! Billing against a real PostgreSQL (127.0.0.1:5432, or `ADCLICK_POSTGRES`) and the embedded
//! SQLite: exact numbers against the oracle, idempotent re-runs, a crash mid-transaction, and
//! errors that name what was wrong.

mod billing_store;
