//! The checkpoint store: per-partition epoch records over a blob store.
//!
//! The protocol of one epoch (DESIGN.md):
//! 1. `put_pending`: the epoch's checkpoint and its sink updates become durable (pre-commit);
//! 2. the worker applies the updates to the real-time store, fenced;
//! 3. `mark_complete`: the epoch is done.
//!
//! Layout under `checkpoints/p{partition:05}/`:
//! - `{epoch:020}-g{generation:010}.full` or `.delta`: one epoch record;
//! - `{epoch:020}-g{generation:010}.complete`: that record's epoch is complete. Markers are never
//!   rewritten: the last complete epoch is the greatest marker, so a slow writer (an owner that
//!   lost the partition and has not noticed) adding an old marker late cannot move it back, where
//!   one marker rewritten in place needed a compare-and-swap the blob store does not offer;
//! - `complete`: the single marker of older versions, still read (as one more marker), never
//!   written;
//! - `g{generation:010}.claim`: a claim of the partition by that generation, create-only. The
//!   greatest generation in the directory (records, markers, claims) is the floor every new
//!   claim must rise above, so generations keep rising when the real-time store forgets its
//!   counter, and no two owners ever write records under one generation.
//!
//! Under `checkpoints/series/p{partition:05}/`, `{first:020}-{last:020}-{newest:020}.updates`:
//! the last value every series took in the complete epochs `first..=last`, written when those
//! epochs' records are deleted (after a full record completes), so that the real-time store can
//! be rewritten exactly if it forgets the partition. `newest` is the latest series start in the
//! file; a file goes once it is `WRITTEN_SERIES_RETENTION_MS` older than the newest file's.
//!
//! Under `checkpoints/lists/p{partition:05}/`: which fraud list judged which offsets, kept past
//! the records that said so (`list_history`).
//!
//! Recovery loads the chain up to the last complete epoch (the latest full record and the deltas
//! after it), plus a pending record for the next epoch if one was pre-committed: the new owner
//! must apply its updates again before going on.

use std::sync::Arc;

use adclick_core::ids::{Epoch, Generation, PartitionId};
use adclick_core::operator::{Series, SeriesUpdate};
use adclick_core::snapshot::{
    CheckpointKind, PartitionCheckpoint, SnapshotError, decode_checkpoint,
};
use adclick_core::window::Lane;

use crate::seams::{BlobError, BlobStore};

mod list_history;
pub use list_history::{ListChange, ListHistory};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("checkpoint record {key} is corrupt: {message}")]
    Corrupt { key: String, message: String },
    #[error("checkpoint {key} does not decode: {source}")]
    Snapshot { key: String, source: SnapshotError },
    #[error(
        "partition {partition}: the chain to complete epoch {epoch} is missing epoch {missing}"
    )]
    BrokenChain {
        partition: PartitionId,
        epoch: Epoch,
        missing: Epoch,
    },
}

/// One epoch's durable record.
#[derive(Clone, Debug)]
pub struct EpochRecord {
    pub generation: Generation,
    pub checkpoint: PartitionCheckpoint,
    pub updates: Vec<SeriesUpdate>,
}

/// What a new owner needs to take over a partition.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// The latest full checkpoint and every delta after it, up to the last complete epoch.
    pub chain: Vec<PartitionCheckpoint>,
    /// A pre-committed epoch that never completed: re-apply its updates, then mark it complete.
    pub pending: Option<EpochRecord>,
}

#[derive(Clone)]
pub struct CheckpointStore {
    blobs: Arc<dyn BlobStore>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RecordName {
    epoch: Epoch,
    generation: Generation,
    full: bool,
}

/// `{epoch:020}-g{generation:010}.complete`: the epoch is complete, as that generation wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct MarkerName {
    epoch: Epoch,
    generation: Generation,
}

fn marker_key(partition: PartitionId, marker: MarkerName) -> String {
    format!(
        "{}{:020}-g{:010}.complete",
        dir(partition),
        marker.epoch.0,
        marker.generation.0
    )
}

fn parse_marker_name(key: &str) -> Option<MarkerName> {
    let stem = key.rsplit('/').next()?.strip_suffix(".complete")?;
    let (epoch, generation) = stem.split_once("-g")?;
    Some(MarkerName {
        epoch: Epoch(epoch.parse().ok()?),
        generation: Generation(generation.parse().ok()?),
    })
}

fn series_dir(partition: PartitionId) -> String {
    format!("checkpoints/series/p{:05}/", partition.0)
}

fn series_file_key(partition: PartitionId, first: Epoch, last: Epoch, newest_ms: u64) -> String {
    format!(
        "{}{:020}-{:020}-{:020}.updates",
        series_dir(partition),
        first.0,
        last.0,
        newest_ms
    )
}

/// The newest series start a series file names.
fn parse_series_file_newest_ms(key: &str) -> Option<u64> {
    let stem = key.rsplit('/').next()?.strip_suffix(".updates")?;
    stem.rsplit('-').next()?.parse().ok()
}

/// The last epoch a series file covers.
fn parse_series_file_last_epoch(key: &str) -> Option<Epoch> {
    let stem = key.rsplit('/').next()?.strip_suffix(".updates")?;
    let mut parts = stem.split('-');
    parts.next()?;
    Some(Epoch(parts.next()?.parse().ok()?))
}

fn series_start_ms(update: &SeriesUpdate) -> u64 {
    match update.series {
        Series::Window(key) => key.window_start_ms,
        Series::Hour(key) => key.hour_start_ms,
    }
}

fn claim_key(partition: PartitionId, generation: Generation) -> String {
    format!("{}g{:010}.claim", dir(partition), generation.0)
}

fn parse_claim_name(key: &str) -> Option<Generation> {
    let stem = key.rsplit('/').next()?.strip_suffix(".claim")?;
    Some(Generation(stem.strip_prefix('g')?.parse().ok()?))
}

/// One listing of a partition's checkpoint directory.
struct Listing {
    /// Sorted by (epoch, generation).
    records: Vec<RecordName>,
    markers: Vec<MarkerName>,
    claims: Vec<Generation>,
    /// The last complete epoch and the generation that completed it.
    complete: Option<(Epoch, Generation)>,
}

impl Listing {
    /// Records whose epoch completed as their generation wrote it (a marker, or the old single
    /// marker), in (epoch, generation) order.
    fn complete_records(&self) -> impl Iterator<Item = RecordName> + '_ {
        self.records.iter().copied().filter(|name| {
            self.markers
                .iter()
                .any(|marker| marker.epoch == name.epoch && marker.generation == name.generation)
                || self.complete == Some((name.epoch, name.generation))
        })
    }

    /// The record a new owner must re-apply: pre-committed for the epoch after the last complete
    /// one, a full record or a delta by the chain's writer.
    fn pending(&self) -> Option<RecordName> {
        let (next_epoch, chain_generation) = match self.complete {
            Some((epoch, generation)) => (Epoch(epoch.0.checked_add(1)?), Some(generation)),
            None => (Epoch(1), None),
        };
        self.records.iter().rev().copied().find(|name| {
            name.epoch == next_epoch && (name.full || Some(name.generation) == chain_generation)
        })
    }
}

/// The marker file of older versions, rewritten in place.
fn legacy_marker_key(partition: PartitionId) -> String {
    format!("{}complete", dir(partition))
}

fn dir(partition: PartitionId) -> String {
    format!("checkpoints/p{:05}/", partition.0)
}

fn record_key(partition: PartitionId, name: RecordName) -> String {
    let kind = if name.full { "full" } else { "delta" };
    format!(
        "{}{:020}-g{:010}.{kind}",
        dir(partition),
        name.epoch.0,
        name.generation.0
    )
}

fn parse_record_name(key: &str) -> Option<RecordName> {
    let file = key.rsplit('/').next()?;
    let (stem, kind) = file.split_once('.')?;
    let (epoch, generation) = stem.split_once("-g")?;
    Some(RecordName {
        epoch: Epoch(epoch.parse().ok()?),
        generation: Generation(generation.parse().ok()?),
        full: match kind {
            "full" => true,
            "delta" => false,
            _ => return None,
        },
    })
}

fn encode_record(checkpoint_bytes: &[u8], updates: &[SeriesUpdate]) -> Vec<u8> {
    let updates_bytes = postcard::to_allocvec(updates).expect("updates always serialize");
    let mut out = Vec::with_capacity(16 + checkpoint_bytes.len() + updates_bytes.len());
    out.extend_from_slice(&(checkpoint_bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(checkpoint_bytes);
    out.extend_from_slice(&crc32fast::hash(&updates_bytes).to_le_bytes());
    out.extend_from_slice(&updates_bytes);
    out
}

fn decode_record(
    key: &str,
    bytes: &[u8],
) -> Result<(PartitionCheckpoint, Vec<SeriesUpdate>), CheckpointError> {
    let corrupt = |message: &str| CheckpointError::Corrupt {
        key: key.to_owned(),
        message: message.to_owned(),
    };
    let length = bytes
        .get(..8)
        .ok_or_else(|| corrupt("shorter than its length prefix"))?;
    let length = u64::from_le_bytes(length.try_into().expect("8 bytes")) as usize;
    // Checked twice over: the length prefix comes from storage, so it may be anything up to
    // u64::MAX, and the 4 checksum bytes after the checkpoint must fit too.
    let checkpoint_end = 8usize.checked_add(length).filter(|end| {
        end.checked_add(4)
            .is_some_and(|crc_end| crc_end <= bytes.len())
    });
    let checkpoint_end =
        checkpoint_end.ok_or_else(|| corrupt("checkpoint length runs past the record"))?;
    let checkpoint = decode_checkpoint(&bytes[8..checkpoint_end]).map_err(|source| {
        CheckpointError::Snapshot {
            key: key.to_owned(),
            source,
        }
    })?;
    let crc = u32::from_le_bytes(
        bytes[checkpoint_end..checkpoint_end + 4]
            .try_into()
            .expect("4 bytes"),
    );
    let updates_bytes = &bytes[checkpoint_end + 4..];
    if crc32fast::hash(updates_bytes) != crc {
        return Err(corrupt("updates checksum mismatch"));
    }
    let updates =
        postcard::from_bytes(updates_bytes).map_err(|error| corrupt(&error.to_string()))?;
    Ok((checkpoint, updates))
}

impl CheckpointStore {
    pub fn new(blobs: Arc<dyn BlobStore>) -> CheckpointStore {
        CheckpointStore { blobs }
    }

    /// Step 1 of an epoch: make its checkpoint and updates durable.
    pub async fn put_pending(
        &self,
        generation: Generation,
        checkpoint: &PartitionCheckpoint,
        checkpoint_bytes: &[u8],
        updates: &[SeriesUpdate],
    ) -> Result<(), CheckpointError> {
        let name = RecordName {
            epoch: checkpoint.epoch,
            generation,
            full: checkpoint.kind == CheckpointKind::Full,
        };
        let key = record_key(checkpoint.partition, name);
        self.blobs
            .put(&key, encode_record(checkpoint_bytes, updates))
            .await?;
        Ok(())
    }

    /// Step 3: the epoch is complete. Once a full record is complete, the records and markers
    /// before it go: the chain starts there.
    pub async fn mark_complete(
        &self,
        partition: PartitionId,
        epoch: Epoch,
        generation: Generation,
    ) -> Result<(), CheckpointError> {
        let marker = MarkerName { epoch, generation };
        // A new name every time, so a put never replaces anything: no compare-and-swap needed.
        self.blobs
            .put(
                &marker_key(partition, marker),
                format!("{} {}\n", epoch.0, generation.0).into_bytes(),
            )
            .await?;
        let listing = self.list(partition).await?;
        let is_full = listing
            .records
            .iter()
            .any(|name| name.epoch == epoch && name.generation == generation && name.full);
        if is_full && listing.complete == Some((epoch, generation)) {
            self.keep_history(partition, &listing, epoch).await?;
            for name in listing.records.iter().filter(|name| name.epoch < epoch) {
                self.blobs.delete(&record_key(partition, *name)).await?;
            }
            for old in listing.markers.iter().filter(|old| old.epoch < epoch) {
                self.blobs.delete(&marker_key(partition, *old)).await?;
            }
            self.blobs.delete(&legacy_marker_key(partition)).await?;
            // The newest claim stays: it is the floor of the next one.
            for old in listing.claims.iter().filter(|old| **old < generation) {
                self.blobs.delete(&claim_key(partition, *old)).await?;
            }
        }
        Ok(())
    }

    /// Before the records below `epoch` go: what they alone still say. The last value of every
    /// series their complete epochs wrote goes into one series file (files past the retention
    /// go), and the fraud-list versions they name into the list history.
    async fn keep_history(
        &self,
        partition: PartitionId,
        listing: &Listing,
        epoch: Epoch,
    ) -> Result<(), CheckpointError> {
        let complete: Vec<RecordName> = listing
            .complete_records()
            .filter(|name| name.epoch < epoch)
            .collect();
        let (Some(first), Some(last)) = (complete.first(), complete.last()) else {
            return Ok(());
        };
        let mut latest: std::collections::BTreeMap<(Series, Lane), SeriesUpdate> =
            Default::default();
        let mut lists = Vec::with_capacity(complete.len());
        for name in &complete {
            let record = self.load_record(partition, *name).await?;
            lists.push(ListChange::named_by(&record.checkpoint));
            for update in record.updates {
                latest.insert((update.series, update.lane), update);
            }
        }
        self.keep_list_changes(partition, &lists).await?;
        let updates: Vec<SeriesUpdate> = latest.into_values().collect();
        let newest_ms = updates.iter().map(series_start_ms).max().unwrap_or(0);
        let key = series_file_key(partition, first.epoch, last.epoch, newest_ms);
        let bytes = postcard::to_allocvec(&updates).expect("updates always serialize");
        self.blobs.put(&key, bytes).await?;
        for old in self.blobs.list(&series_dir(partition)).await? {
            let expired = parse_series_file_newest_ms(&old).is_some_and(|old_newest_ms| {
                old_newest_ms.saturating_add(crate::limits::WRITTEN_SERIES_RETENTION_MS) < newest_ms
            });
            if expired {
                self.blobs.delete(&old).await?;
            }
        }
        Ok(())
    }

    /// Every value the partition's complete epochs wrote to the real-time store, oldest first,
    /// within the retention: the series files, then the current chain's records. Applied in
    /// this order, the last value of each series wins.
    pub async fn written_series(
        &self,
        partition: PartitionId,
    ) -> Result<Vec<SeriesUpdate>, CheckpointError> {
        let mut written = Vec::new();
        // Records a series file already covers (left by a cleanup cut short) are skipped: applied
        // after the file, they would move its series back to older values.
        let mut covered: Option<Epoch> = None;
        for key in self.blobs.list(&series_dir(partition)).await? {
            let Some(bytes) = self.blobs.get(&key).await? else {
                continue;
            };
            covered = covered.max(parse_series_file_last_epoch(&key));
            let updates: Vec<SeriesUpdate> =
                postcard::from_bytes(&bytes).map_err(|error| CheckpointError::Corrupt {
                    key: key.clone(),
                    message: error.to_string(),
                })?;
            written.extend(updates);
        }
        let listing = self.list(partition).await?;
        if let Some((complete_epoch, _)) = listing.complete {
            for name in listing.complete_records() {
                let uncovered = covered.is_none_or(|covered| name.epoch > covered);
                if name.epoch <= complete_epoch && uncovered {
                    written.extend(self.load_record(partition, name).await?.updates);
                }
            }
        }
        Ok(written)
    }

    /// The greatest generation that ever claimed or wrote the partition, as far as this store
    /// knows: a new claim must be above it.
    pub async fn generation_floor(
        &self,
        partition: PartitionId,
    ) -> Result<Generation, CheckpointError> {
        let listing = self.list(partition).await?;
        let records = listing.records.iter().map(|name| name.generation);
        let markers = listing.markers.iter().map(|marker| marker.generation);
        let legacy = listing.complete.map(|(_, generation)| generation);
        Ok(records
            .chain(markers)
            .chain(listing.claims.iter().copied())
            .chain(legacy)
            .max()
            .unwrap_or(Generation(0)))
    }

    /// Records the claim of `generation`, create-only. `false`: another owner holds a claim of
    /// the same generation (the real-time store handed it out twice, having forgotten the
    /// first), so this one must claim again.
    pub async fn record_claim(
        &self,
        partition: PartitionId,
        generation: Generation,
    ) -> Result<bool, CheckpointError> {
        Ok(self
            .blobs
            .put_if_absent(
                &claim_key(partition, generation),
                format!("{}\n", generation.0).into_bytes(),
            )
            .await?)
    }

    async fn read_legacy_marker(
        &self,
        partition: PartitionId,
    ) -> Result<Option<(Epoch, Generation)>, CheckpointError> {
        let key = legacy_marker_key(partition);
        let Some(bytes) = self.blobs.get(&key).await? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        let mut parts = text.split_whitespace().map(str::parse::<u64>);
        match (parts.next(), parts.next()) {
            (Some(Ok(epoch)), Some(Ok(generation))) => {
                Ok(Some((Epoch(epoch), Generation(generation))))
            }
            _ => Err(CheckpointError::Corrupt {
                key,
                message: format!("expected `EPOCH GENERATION`, got {text:?}"),
            }),
        }
    }

    /// A partition's records and markers from one listing, and the last complete epoch: the
    /// greatest marker (by epoch, then generation), the old single marker counted as one more.
    async fn list(&self, partition: PartitionId) -> Result<Listing, CheckpointError> {
        let keys = self.blobs.list(&dir(partition)).await?;
        let mut records: Vec<RecordName> = keys
            .iter()
            .filter_map(|key| parse_record_name(key))
            .collect();
        records.sort_by_key(|name| (name.epoch, name.generation));
        let markers: Vec<MarkerName> = keys
            .iter()
            .filter_map(|key| parse_marker_name(key))
            .collect();
        let newest = markers
            .iter()
            .max()
            .map(|marker| (marker.epoch, marker.generation));
        let claims: Vec<Generation> = keys
            .iter()
            .filter_map(|key| parse_claim_name(key))
            .collect();
        let legacy = self.read_legacy_marker(partition).await?;
        Ok(Listing {
            records,
            markers,
            claims,
            complete: newest.max(legacy),
        })
    }

    async fn load_record(
        &self,
        partition: PartitionId,
        name: RecordName,
    ) -> Result<EpochRecord, CheckpointError> {
        let key = record_key(partition, name);
        let bytes = self
            .blobs
            .get(&key)
            .await?
            .ok_or_else(|| CheckpointError::Corrupt {
                key: key.clone(),
                message: "listed but gone".into(),
            })?;
        let (checkpoint, updates) = decode_record(&key, &bytes)?;
        Ok(EpochRecord {
            generation: name.generation,
            checkpoint,
            updates,
        })
    }

    /// Everything a new owner needs; empty for a partition that never checkpointed.
    pub async fn load(&self, partition: PartitionId) -> Result<Recovery, CheckpointError> {
        let Listing {
            records: names,
            complete: marker,
            ..
        } = self.list(partition).await?;
        let mut recovery = Recovery::default();
        if let Some((complete_epoch, complete_generation)) = marker {
            // Walk back from the complete record to the full one it builds on.
            let mut chain_names = Vec::new();
            let mut epoch = complete_epoch;
            loop {
                let name = names
                    .iter()
                    .find(|name| name.epoch == epoch && name.generation == complete_generation)
                    .copied()
                    .ok_or(CheckpointError::BrokenChain {
                        partition,
                        epoch: complete_epoch,
                        missing: epoch,
                    })?;
                chain_names.push(name);
                if name.full {
                    break;
                }
                // A delta builds on the epoch before it. Epoch 0 has none (the first checkpoint
                // is always full), so a delta there can only come from a corrupt store.
                let Some(previous) = epoch.0.checked_sub(1) else {
                    return Err(CheckpointError::Corrupt {
                        key: record_key(partition, name),
                        message: "a delta at epoch 0 has no previous epoch to build on".into(),
                    });
                };
                epoch = Epoch(previous);
            }
            chain_names.reverse();
            for name in chain_names {
                recovery
                    .chain
                    .push(self.load_record(partition, name).await?.checkpoint);
            }
        }
        let (next_epoch, chain_generation) = match marker {
            Some((epoch, generation)) => {
                // Epochs count up from 1 by one per checkpoint, so the last u64 is out of reach
                // of a real run: a marker there is corrupt, not a chain with no next epoch.
                let Some(next) = epoch.0.checked_add(1) else {
                    return Err(CheckpointError::Corrupt {
                        key: marker_key(partition, MarkerName { epoch, generation }),
                        message: format!("complete epoch {} leaves no next epoch", epoch.0),
                    });
                };
                (Epoch(next), Some(generation))
            }
            None => (Epoch(1), None),
        };
        // A pending record continues the chain: a full record, or a delta by the chain's writer.
        let pending = names.iter().rev().find(|name| {
            name.epoch == next_epoch && (name.full || Some(name.generation) == chain_generation)
        });
        if let Some(name) = pending {
            recovery.pending = Some(self.load_record(partition, *name).await?);
        }
        Ok(recovery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::MemoryBlobStore;

    /// A store holding the given marker text and one record at `name`, whose bytes hold a valid
    /// checkpoint and no updates.
    fn store_with(marker: &str, name: RecordName) -> CheckpointStore {
        let checkpoint = checkpoint_at(name);
        let checkpoint_bytes = adclick_core::snapshot::encode_checkpoint(&checkpoint);
        let blobs = Arc::new(MemoryBlobStore::new());
        futures::executor::block_on(async {
            let marker_key = format!("{}complete", dir(PartitionId(0)));
            blobs.put(&marker_key, marker.into()).await.unwrap();
            let record = encode_record(&checkpoint_bytes, &[]);
            blobs
                .put(&record_key(PartitionId(0), name), record)
                .await
                .unwrap();
        });
        CheckpointStore::new(blobs)
    }

    /// A valid, empty checkpoint of partition 0 for a record name.
    fn checkpoint_at(name: RecordName) -> PartitionCheckpoint {
        PartitionCheckpoint {
            partition: PartitionId(0),
            epoch: name.epoch,
            kind: if name.full {
                CheckpointKind::Full
            } else {
                CheckpointKind::Delta {
                    previous_epoch: Epoch(name.epoch.0.wrapping_sub(1)),
                }
            },
            next_offset: adclick_core::ids::Offset(0),
            watermark: adclick_core::window::Watermark::default(),
            fraud_list_version: adclick_core::ids::FraudListVersion(0),
            stats: adclick_core::snapshot::PartitionStats::default(),
            windows: vec![],
            hours: vec![],
            rate: vec![],
            dedup_ids: vec![],
            dedup_cutoff_bucket: 0,
            dedup_stats: adclick_core::dedup::DedupStats::default(),
            window_ms: 60_000,
            dedup_bucket_ms: 10_000,
        }
    }

    fn name(epoch: u64, generation: u64, full: bool) -> RecordName {
        RecordName {
            epoch: Epoch(epoch),
            generation: Generation(generation),
            full,
        }
    }

    async fn complete_epoch(store: &CheckpointStore, name: RecordName) {
        let checkpoint = checkpoint_at(name);
        let bytes = adclick_core::snapshot::encode_checkpoint(&checkpoint);
        store
            .put_pending(name.generation, &checkpoint, &bytes, &[])
            .await
            .unwrap();
        store
            .mark_complete(PartitionId(0), name.epoch, name.generation)
            .await
            .unwrap();
    }

    /// One window series update of partition 0: ad `ad`, `unique` clicks.
    fn written(ad: u64, unique: u64) -> SeriesUpdate {
        SeriesUpdate {
            series: Series::Window(adclick_core::window::WindowKey {
                campaign_id: adclick_core::ids::CampaignId(1),
                ad_id: adclick_core::ids::AdId(ad),
                salt: adclick_core::ids::Salt(0),
                window_start_ms: 60_000 * ad,
            }),
            lane: Lane::OnTime,
            counts: adclick_core::window::Counts {
                clicks: unique,
                unique,
                fraud: 0,
            },
            is_final: false,
        }
    }

    /// A store that forgot the partition is rewritten from these: the last value of every
    /// series any complete epoch wrote, also of epochs whose records a full checkpoint deleted,
    /// and never an older value after a newer one.
    #[tokio::test]
    async fn every_value_complete_epochs_wrote_outlives_their_records() {
        let store = CheckpointStore::new(Arc::new(MemoryBlobStore::new()));
        for epoch in 1..=20u64 {
            let full = epoch % 8 == 1;
            let name = name(epoch, 1, full);
            let checkpoint = checkpoint_at(name);
            let bytes = adclick_core::snapshot::encode_checkpoint(&checkpoint);
            // Ad `epoch` is written once; ad 0 every epoch, with the epoch as its count.
            let updates = [written(epoch, 1), written(0, epoch)];
            store
                .put_pending(Generation(1), &checkpoint, &bytes, &updates)
                .await
                .unwrap();
            store
                .mark_complete(PartitionId(0), Epoch(epoch), Generation(1))
                .await
                .unwrap();
        }
        let mut last: std::collections::BTreeMap<(Series, Lane), u64> = Default::default();
        for update in store.written_series(PartitionId(0)).await.unwrap() {
            last.insert((update.series, update.lane), update.counts.unique);
        }
        assert_eq!(last.len(), 21, "ads 0..=20");
        assert_eq!(last[&(written(0, 0).series, Lane::OnTime)], 20);
        assert!(store.load(PartitionId(0)).await.unwrap().chain.len() < 8);
    }

    fn chain_epochs(recovery: &Recovery) -> Vec<u64> {
        recovery.chain.iter().map(|c| c.epoch.0).collect()
    }

    /// An owner that lost the partition without noticing may mark an old epoch complete after
    /// the new owner marked later ones and dropped the records before its full checkpoint. With
    /// one marker rewritten in place (read, then write), that write could land between the new
    /// owner's read and write and move the marker back to a record that was gone, and recovery
    /// failed for good. Markers are now never rewritten, and the greatest one counts.
    #[tokio::test]
    async fn a_late_marker_from_a_lost_owner_cannot_move_the_chain_back() {
        let blobs = Arc::new(MemoryBlobStore::new());
        let store = CheckpointStore::new(blobs.clone());
        complete_epoch(&store, name(1, 1, true)).await;
        complete_epoch(&store, name(2, 1, false)).await;
        // Generation 1 pre-commits epoch 3 and is about to mark it complete when it loses the
        // partition. Generation 2 takes over from epoch 2 with epoch 3 pending, and starts its
        // own chain with a full record.
        let late = checkpoint_at(name(3, 1, false));
        let late_bytes = adclick_core::snapshot::encode_checkpoint(&late);
        store
            .put_pending(Generation(1), &late, &late_bytes, &[])
            .await
            .unwrap();
        assert_eq!(
            chain_epochs(&store.load(PartitionId(0)).await.unwrap()),
            vec![1, 2]
        );
        // The new owner re-applies the pending epoch 3 and marks it, then goes on.
        store
            .mark_complete(PartitionId(0), Epoch(3), Generation(1))
            .await
            .unwrap();
        complete_epoch(&store, name(4, 2, true)).await;
        complete_epoch(&store, name(5, 2, false)).await;
        assert_eq!(
            chain_epochs(&store.load(PartitionId(0)).await.unwrap()),
            vec![4, 5]
        );
        // The old owner's mark of epoch 3 lands now, after the records before 4 are gone.
        store
            .mark_complete(PartitionId(0), Epoch(3), Generation(1))
            .await
            .unwrap();
        let recovery = store.load(PartitionId(0)).await.unwrap();
        assert_eq!(chain_epochs(&recovery), vec![4, 5], "the chain stays at 5");
        complete_epoch(&store, name(6, 2, false)).await;
        assert_eq!(
            chain_epochs(&store.load(PartitionId(0)).await.unwrap()),
            vec![4, 5, 6]
        );
    }

    /// A store written by a version with the single `complete` marker still recovers, and the
    /// old marker goes with the first full checkpoint after it.
    #[tokio::test]
    async fn the_single_marker_of_older_versions_is_still_read() {
        let store = store_with("7 3\n", name(7, 3, true));
        assert_eq!(
            chain_epochs(&store.load(PartitionId(0)).await.unwrap()),
            vec![7]
        );
        complete_epoch(&store, name(8, 4, true)).await;
        complete_epoch(&store, name(9, 4, false)).await;
        assert_eq!(
            chain_epochs(&store.load(PartitionId(0)).await.unwrap()),
            vec![8, 9]
        );
        let keys = store.blobs.list(&dir(PartitionId(0))).await.unwrap();
        assert_eq!(
            keys,
            vec![
                "checkpoints/p00000/00000000000000000008-g0000000004.complete",
                "checkpoints/p00000/00000000000000000008-g0000000004.full",
                "checkpoints/p00000/00000000000000000009-g0000000004.complete",
                "checkpoints/p00000/00000000000000000009-g0000000004.delta",
            ]
        );
    }

    fn load(store: &CheckpointStore) -> Result<Recovery, CheckpointError> {
        futures::executor::block_on(store.load(PartitionId(0)))
    }

    /// Regression (found by the `checkpoint_record` fuzz target): a complete marker naming a
    /// *delta* record at epoch 0 made recovery walk back to epoch `0 - 1`: a panic with overflow
    /// checks on, and without them a wrap to `u64::MAX` reported as a missing epoch. Epoch 0 has
    /// no epoch before it, so such a delta can only come from a corrupt store; recovery now says
    /// so.
    #[test]
    fn regression_a_delta_at_epoch_zero_has_no_previous_epoch() {
        let name = RecordName {
            epoch: Epoch(0),
            generation: Generation(1),
            full: false,
        };
        let store = store_with("0 1\n", name);
        let error = load(&store).unwrap_err();
        assert!(
            matches!(&error, CheckpointError::Corrupt { message, .. } if message.contains("epoch 0")),
            "{error}"
        );
    }

    /// Regression (found by reading the code the `checkpoint_record` fuzz target reaches): a
    /// complete marker at epoch `u64::MAX` over a valid record made recovery compute the pending
    /// epoch `u64::MAX + 1`: a panic with overflow checks on, and without them a search for a
    /// pending record at epoch 0. No next epoch exists, so the marker is corrupt.
    #[test]
    fn regression_a_complete_marker_at_the_last_epoch_has_no_next_epoch() {
        let name = RecordName {
            epoch: Epoch(u64::MAX),
            generation: Generation(1),
            full: true,
        };
        let store = store_with(&format!("{} 1\n", u64::MAX), name);
        let error = load(&store).unwrap_err();
        assert!(
            matches!(&error, CheckpointError::Corrupt { key, .. } if key.ends_with("complete")),
            "{error}"
        );
    }

    /// Regression (found by the `checkpoint_record` fuzz target): a record whose length prefix
    /// is near u64::MAX (here `u64::MAX - 8`) passed the `8 + length` overflow check, then
    /// `end + 4` overflowed. With overflow checks that panicked; without them it wrapped to a
    /// small number that passed the bounds check, and slicing the checkpoint panicked anyway, so
    /// one corrupt record in the blob store crashed recovery in release builds too.
    #[test]
    fn regression_a_length_prefix_near_u64_max_overflows_the_checksum_bound() {
        let mut record = (u64::MAX - 8).to_le_bytes().to_vec();
        record.extend_from_slice(&[0; 8]);
        let error = decode_record("checkpoints/p00000/x.full", &record).unwrap_err();
        assert_eq!(
            error,
            CheckpointError::Corrupt {
                key: "checkpoints/p00000/x.full".into(),
                message: "checkpoint length runs past the record".into(),
            }
        );
    }
}
