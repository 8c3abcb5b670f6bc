//! The engine's integration tests, one binary: each module drives the engine on its embedded
//! seams (or a file log) through one mechanism.

mod idle;
mod list_history;
mod rebuild;
mod restart;
mod salting;
mod supervisor;
mod support;
