//! Integration tests of the pure core: the aggregator against a naive model, and restart
//! equivalence through real checkpoints.

mod batching;
mod envelope;
mod inputs;
mod model;
mod restart;
