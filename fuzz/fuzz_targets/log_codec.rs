//! The binary log record: whatever decodes is canonical and round-trips.
#![no_main]

use adclick_core::codec::{decode, encode, encode_into, encoded_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(view) = decode(bytes) else {
        return;
    };
    // One click has one encoding: re-encoding gives back exactly the input bytes.
    assert_eq!(encoded_len(&view), bytes.len());
    let mut again = Vec::new();
    encode_into(&view, &mut again);
    assert_eq!(again, bytes);
    let event = view.to_owned_event();
    assert_eq!(encode(&event, view.salt), bytes);
    assert_eq!(decode(&again), Ok(view));
});
