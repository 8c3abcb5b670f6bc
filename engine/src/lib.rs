//! The adclick runtime: the seams every resource goes through, their embedded implementations,
//! the ingest core, the partition worker, and the scenario format.
//!
//! The worker and ingest code here is the production code. It runs on the embedded defaults
//! (`adclick run`), against Kafka and Redis (`adclick serve`, through other implementations of
//! the same seams) and under madsim (the simulator). Only the seam implementations differ.
//!
//! **Invariant:** the logic lives in `adclick-core`. This crate moves bytes, keeps time and
//! handles failures; it never decides what a click counts as.

pub mod checkpoint;
pub mod clock;
pub mod embedded;
pub mod fencing;
pub mod fraud_lists;
pub mod ingest;
pub mod judged_lists;
pub mod limits;
pub mod rebuild;
pub mod salt_plans;
pub mod scenario;
pub mod seams;
pub mod supervisor;
pub mod worker;
