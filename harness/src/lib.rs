//! The oracle, the invariant checks, the fault wrappers and the real-time scenario runner.
//!
//! `adclick run` drives the real engine on embedded defaults in real time through `run`; the
//! deterministic simulator (the `adclick-sim` crate) drives the same engine code in virtual
//! time, through the same fault wrappers (`faults`, `file_log_faults`) and recorders
//! (`history`). Both judge the result with the same checks in `oracle`.
//!
//! **Invariant:** the oracle never shares counting code with the engine. It recomputes the
//! expected counts from the log with plain maps (exact dedup over the whole log, the rate rule
//! with no expiry), so a bug in the engine's windows, dedup or checkpoints cannot hide in it.
//! It does use the engine's Bloom filter, whose decisions are deterministic by design.

pub mod faults;
pub mod file_log_faults;
pub mod history;
pub mod measure;
pub mod oracle;
pub mod run;
