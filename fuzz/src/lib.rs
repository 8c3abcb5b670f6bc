//! Shared checks of the fuzz targets: what must hold for whatever the body parser accepts.
//!
//! The targets live in `fuzz_targets/`, one per parser of untrusted input; `ci/fuzz` runs them.
//! This crate owns no parsing: it only states properties of the project's parsers.

use adclick_core::codec;
use adclick_core::event::{TimeBound, parse_json_click};
use adclick_core::ids::Salt;
use adclick_core::body::{BodyError, BodyFormat, ParsedBody, parse_body};

/// Records per request in the targets: small, so that the limit path is reached too.
pub const RECORDS_MAX: usize = 64;

/// A fixed "now" for live bounds, so a run is reproducible from its input alone.
pub const NOW_MS: u64 = 1_700_000_000_000;

/// Parses `bytes` in `format` with and without a live time bound and checks that every record is
/// accounted for and every accepted click survives the JSON and log-codec round trips. Returns
/// the batch-mode parse for target-specific checks.
pub fn check_body(bytes: &[u8], format: BodyFormat) -> Result<ParsedBody, BodyError> {
    let batch = parse_body(bytes, format, TimeBound::None, RECORDS_MAX, None);
    let live = parse_body(bytes, format, TimeBound::live(NOW_MS), RECORDS_MAX, None);
    // With signatures required, the same records exist, and none is taken unless signed.
    let mut keys = adclick_core::signing::SigningKeys::default();
    keys.insert("k1", b"fuzzing key, 16+ bytes".to_vec());
    let signed = parse_body(bytes, format, TimeBound::None, RECORDS_MAX, Some(&keys));
    if let (Ok(batch), Ok(signed)) = (&batch, &signed) {
        check_accounting(signed);
        assert_eq!(batch.records(), signed.records());
        assert!(signed.clicks.len() <= batch.clicks.len());
    }
    match (&batch, &live) {
        (Ok(batch), Ok(live)) => {
            check_accounting(batch);
            check_accounting(live);
            // The time bound only rejects more records; it never changes how many there are.
            assert_eq!(batch.records(), live.records());
            assert!(live.clicks.len() <= batch.clicks.len());
            for click in &batch.clicks {
                check_click_round_trips(click);
            }
        }
        (Err(batch_error), Err(live_error)) => assert_eq!(batch_error, live_error),
        _ => panic!("the time bound decided whether the whole body parses: {batch:?} vs {live:?}"),
    }
    batch
}

/// Every record is a click or a rejection, exactly once, and indexes are in request order.
fn check_accounting(parsed: &ParsedBody) {
    assert_eq!(parsed.clicks.len(), parsed.indexes.len());
    assert!(parsed.records() <= RECORDS_MAX);
    let mut seen = vec![false; parsed.records()];
    let rejected = parsed.rejected.iter().map(|record| record.index);
    for index in parsed.indexes.iter().copied().chain(rejected) {
        assert!(
            index < seen.len(),
            "index {index} past {} records",
            seen.len()
        );
        assert!(!seen[index], "record {index} counted twice");
        seen[index] = true;
    }
    assert!(parsed.indexes.is_sorted());
    assert!(
        parsed
            .rejected
            .iter()
            .map(|record| record.index)
            .is_sorted()
    );
    assert!(
        parsed
            .rejected
            .iter()
            .all(|record| !record.reasons.is_empty())
    );
}

/// An accepted click reads back the same from its JSON wire form and from its log record.
fn check_click_round_trips(click: &adclick_core::event::ClickEvent) {
    let again = parse_json_click(click.to_json().as_bytes(), TimeBound::None)
        .expect("an accepted click's own JSON is accepted");
    assert_eq!(&again, click);
    let salt = Salt(7);
    let record = codec::encode(click, salt);
    let view = codec::decode(&record).expect("an accepted click encodes to a valid record");
    assert_eq!(view.salt, salt);
    assert_eq!(&view.to_owned_event(), click);
}
