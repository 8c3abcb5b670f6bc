//! The oracle, the invariant checks and the scenario runner.
//!
//! `adclick run` drives the real engine on embedded defaults in real time through `run`; the
//! deterministic simulator drives the same engine code in virtual time. Both judge the result
//! with the same checks in `oracle`.
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
#[cfg(madsim)]
pub mod simulation;
