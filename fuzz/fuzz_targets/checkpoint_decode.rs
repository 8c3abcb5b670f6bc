//! The checkpoint envelope and its postcard body.
//!
//! The first input byte picks a mode. Odd: the rest is a body, wrapped here in a valid header (the
//! right magic, version, length and checksum), so the fuzzer spends its time in the body decoder
//! rather than guessing CRC-32s. Even: the rest is the whole checkpoint, header included.
#![no_main]

use adclick_core::snapshot::{SNAPSHOT_FORMAT_VERSION, decode_checkpoint, encode_checkpoint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 1 {
        let mut bytes = Vec::with_capacity(18 + rest.len());
        bytes.extend_from_slice(b"ADCK");
        bytes.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(rest).to_le_bytes());
        bytes.extend_from_slice(&(rest.len() as u64).to_le_bytes());
        bytes.extend_from_slice(rest);
        bytes
    } else {
        rest.to_vec()
    };
    let Ok(checkpoint) = decode_checkpoint(&bytes) else {
        return;
    };
    // What decodes re-encodes to bytes that decode to the same checkpoint. (Not to the same
    // bytes: postcard accepts over-long varints, so one checkpoint has several encodings.)
    let again = encode_checkpoint(&checkpoint);
    assert_eq!(decode_checkpoint(&again), Ok(checkpoint));
});
