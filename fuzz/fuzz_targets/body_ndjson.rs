//! The ingest body as `application/x-ndjson`: one click per line.
#![no_main]

use adclick_core::body::{BodyError, BodyFormat};
use adclick_fuzz::{RECORDS_MAX, check_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // One record per line that is not all whitespace, counted independently of the parser.
    let lines = bytes
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .count();
    match check_body(bytes, BodyFormat::NdJson) {
        Ok(parsed) => assert_eq!(parsed.records(), lines),
        Err(BodyError::TooManyRecords { records, limit }) => {
            assert_eq!((records, limit), (lines, RECORDS_MAX));
            assert!(lines > RECORDS_MAX);
        }
        Err(error) => panic!("an ndjson body fails only on its record count, got {error:?}"),
    }
});
