//! A partition's checkpoint records as a new owner reads them back from a blob store.
//!
//! The record decoder of `adclick_engine::checkpoint` is private, so this goes through the public
//! `CheckpointStore::load` over a `MemoryBlobStore`. The input is the `complete` marker (its first
//! line), then one byte of flags (bit 0: the record is full rather than a delta; bit 1: store a
//! second, pending copy at the next epoch), then the record's bytes. The record is stored under
//! the epoch and generation the marker names, so recovery walks to it.
#![no_main]

use std::sync::Arc;

use adclick_core::ids::PartitionId;
use adclick_engine::checkpoint::CheckpointStore;
use adclick_engine::embedded::MemoryBlobStore;
use adclick_engine::seams::BlobStore;
use libfuzzer_sys::fuzz_target;

fn record_key(epoch: u64, generation: u64, full: bool) -> String {
    let kind = if full { "full" } else { "delta" };
    format!("checkpoints/p00000/{epoch:020}-g{generation:010}.{kind}")
}

fuzz_target!(|input: &[u8]| {
    let newline = input.iter().position(|byte| *byte == b'\n');
    let (marker, rest) = match newline {
        Some(at) => (&input[..=at], &input[at + 1..]),
        None => (input, &[][..]),
    };
    let Some((&flags, record)) = rest.split_first() else {
        return;
    };
    let full = flags & 1 == 1;
    let text = String::from_utf8_lossy(marker);
    let mut numbers = text.split_whitespace().map(str::parse::<u64>);
    let (epoch, generation) = match (numbers.next(), numbers.next()) {
        (Some(Ok(epoch)), Some(Ok(generation))) => (epoch, generation),
        _ => (1, 1),
    };
    let blobs = Arc::new(MemoryBlobStore::new());
    futures::executor::block_on(async {
        let put = |key: String, bytes: Vec<u8>| {
            let blobs = Arc::clone(&blobs);
            async move { blobs.put(&key, bytes).await.expect("memory puts succeed") }
        };
        put("checkpoints/p00000/complete".into(), marker.to_vec()).await;
        put(record_key(epoch, generation, full), record.to_vec()).await;
        if flags & 2 == 2 {
            let next = epoch.wrapping_add(1);
            put(record_key(next, generation, full), record.to_vec()).await;
        }
        let store = CheckpointStore::new(blobs.clone());
        // Any error is fine; a panic or a hang is not.
        let _ = store.load(PartitionId(0)).await;
    });
});
