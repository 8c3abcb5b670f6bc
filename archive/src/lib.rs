//! The cold path: every log record, archived once to Parquet files by event hour, named by
//! partition and offset range, committed through per-partition manifests.
//!
//! - `schema`: the columns, the writer settings, the row types.
//! - `parquet_io`: rows ↔ Parquet bytes, with column pruning on read.
//! - `layout`: file and manifest keys.
//! - `manifest`: what is committed and how far it has caught up with the log;
//!   `list_committed` for the billing job; `clean`.
//! - `archiver`: the per-partition loop over the `Log`, `BlobStore` and `Clock` seams.
//!
//! **Invariant:** a normal (non-madsim) crate: nothing under `sim/` depends on it, and it touches
//! resources only through the engine's seams.

pub mod archiver;
pub mod layout;
pub mod manifest;
pub mod parquet_io;
pub mod schema;

pub use archiver::{ArchiveError, Archiver, ArchiverConfig};
pub use manifest::{
    ArchiveException, CleanReport, CommittedFile, ExceptionKind, ExceptionReport, Manifest, clean,
    list_committed, list_exceptions,
};
pub use parquet_io::{ReadError, read_billing_rows, read_columns, read_rows, write_parquet};
pub use schema::{ArchiveRow, BillingRow, Column};
