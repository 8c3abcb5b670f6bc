//! Scenario files: what parses re-validates after a round trip through TOML, and yields the
//! configurations the runner builds from it.
#![no_main]

use adclick_engine::scenario::Scenario;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(scenario) = Scenario::parse(text, "fuzz.toml") else {
        return;
    };
    let written = toml::to_string(&scenario).expect("a parsed scenario serializes");
    let again = Scenario::parse(&written, "fuzz-again.toml")
        .unwrap_or_else(|error| panic!("a parsed scenario re-validates: {error}\n{written}"));
    assert_eq!(again, scenario);
    // The runner's configurations assert their own invariants; validation must have ruled out
    // every value that would trip them.
    let _ = scenario.aggregator_config();
    let _ = scenario.worker_config();
    let _ = scenario.ingest_config();
});
