//! One module per subcommand. Each is a thin shell over the library crates (engine, harness,
//! loadgen, billing, server).

pub mod aggregate;
pub mod billing;
pub mod billing_check;
pub mod load;
pub mod rebuild;
pub mod run;
pub mod serve;
