//! One module per subcommand. Each is a thin shell over the engine and sim crates.

pub mod aggregate;
pub mod billing;
pub mod billing_check;
pub mod http_monitor;
pub mod load;
pub mod load_kafka;
pub mod rebuild;
pub mod report;
pub mod run;
pub mod search;
pub mod serve;
