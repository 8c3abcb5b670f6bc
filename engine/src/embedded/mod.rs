//! Embedded implementations of the seams: everything in one process, no services. They exist
//! so that a new user can run the engine with one command; they follow the same rules
//! (idempotent appends, fencing, atomic puts) as the production implementations.

pub mod blob;
pub mod file_log;
pub mod log;
pub mod realtime;

pub use blob::{LocalDirBlobStore, MemoryBlobStore};
pub use file_log::{FileLog, FileLogConfig};
pub use log::MemoryLog;
pub use realtime::MemoryRealtimeStore;
