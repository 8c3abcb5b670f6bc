//! The ingest body as `application/json`: one click object or an array of them.
#![no_main]

use adclick_core::body::BodyFormat;
use adclick_fuzz::check_body;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(parsed) = check_body(bytes, BodyFormat::Json) {
        // A JSON body is one object (one record), an array, or nothing but whitespace.
        let first = bytes.iter().find(|byte| !byte.is_ascii_whitespace());
        match first {
            Some(b'{') => assert_eq!(parsed.records(), 1),
            Some(b'[') => {}
            _ => assert_eq!(parsed.records(), 0),
        }
    }
});
