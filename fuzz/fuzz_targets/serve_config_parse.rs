//! `adclick.toml`: what parses validates again and yields the configurations `serve` builds.
#![no_main]

use adclick_server::config::ServeConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(config) = ServeConfig::parse(text, "fuzz.toml") else {
        return;
    };
    config
        .validate("fuzz.toml")
        .expect("a parsed config validates again");
    let _ = config.aggregator_config();
    let _ = config.worker_config();
    let _ = config.ingest_config();
});
