//! The deterministic simulator: the engine's own code, run by madsim in virtual time.
//!
//! `simulation` builds ingest nodes, workers and the fault wrappers from `adclick-harness` on
//! one seeded runtime, drives a scenario's traffic with crashes, pauses, partitions and store,
//! log and blob faults drawn from the seed, then judges the run with the harness's oracle. The
//! same seed replays the same run, bit for bit (`--check-determinism` proves it per seed).
//!
//! Everything here needs `--cfg madsim`; `ci/sim` builds it that way into its own target dir.

#[cfg(madsim)]
pub mod simulation;
