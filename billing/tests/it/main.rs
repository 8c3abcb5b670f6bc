//! Billing against a real PostgreSQL (127.0.0.1:5432, or `ADCLICK_POSTGRES`) and the embedded
//! SQLite: exact numbers against the oracle, idempotent re-runs, a crash mid-transaction,
//! errors that name what was wrong, migrations of older databases, and (`archive_lag`) the
//! archive's caught-up gate and correction runs, and (`fraud_rotation`) each click judged with
//! the fraud list the workers used for it.

mod archive_lag;
mod billing_store;
mod fraud_rotation;
