//! Integration tests of the whole engine on embedded seams: the epoch protocol under crashes at
//! every step, a deliberately broken variant that the checks must catch, and the CLI.

mod aggregate_cli;
mod bill_cli;
mod epoch_protocol;
mod kafka_two_workers;
mod load_coordinated_omission;
mod rebuild_cli;
