//! Per-partition manifests: which archived files are committed, and where archiving resumes.
//!
//! A file is part of the archive only once its partition's manifest lists it. The archiver puts
//! a segment's files first and the manifest after, so a crash in between leaves unlisted files
//! that readers ignore and that the restarted archiver rewrites byte-identically (the manifest's
//! `pending` range pins the segment's boundaries across the crash).
//!
//! The manifest also says how far the archive has caught up with the log, in the archiver's
//! processing time: `caught_up_to_ms`. Billing closes a period only once every partition's mark
//! is past the period's end plus the billing grace.
//!
//! **Invariant:** readers (`list_committed`) never look at file listings, only at manifests.
//! **Invariant:** `caught_up_to_ms = T` only if every record appended to the partition's log
//! before `T` (by the archiver's clock) is below `next_offset`: the archiver read its clock,
//! then the log's end offset, then committed at least up to that offset, and only then stored
//! `T`. The mark never goes back.

use std::collections::BTreeMap;

use adclick_core::ids::{Offset, PartitionId};
use adclick_engine::seams::{BlobError, BlobStore};
use serde::{Deserialize, Serialize};

use crate::layout;

pub const MANIFEST_VERSION: u32 = 1;

/// An inclusive range of log offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRange {
    pub first_offset: Offset,
    pub last_offset: Offset,
}

impl OffsetRange {
    pub fn contains(&self, offset: Offset) -> bool {
        (self.first_offset.0..=self.last_offset.0).contains(&offset.0)
    }
}

/// One file of a segment: the segment's rows of one event hour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub key: String,
    pub hour_start_ms: u64,
    pub rows: u64,
}

/// One rolled segment: a contiguous offset range of the partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    pub range: OffsetRange,
    /// Decodable records archived (the sum of the files' rows).
    pub rows: u64,
    /// Records in the range that are not click records; each was logged with its offset.
    pub undecodable: u64,
    /// Records in the range whose event time ingest could never have accepted, judged against
    /// the archiver's clock (`adclick_core::window::event_time_in_bounds`): kept out of the
    /// hour files, whose hours they would falsify, and listed here for billing to report.
    #[serde(default)]
    pub quarantined: u64,
    /// The first `EXCEPTIONS_LISTED_PER_SEGMENT_MAX` records of the range in no hour file
    /// (undecodable or quarantined), by offset.
    #[serde(default)]
    pub exceptions: Vec<ArchiveException>,
    /// The file holding every one of them with its bytes (`layout::exceptions_key`), when the
    /// segment has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exceptions_key: Option<String>,
    pub files: Vec<FileEntry>,
}

/// A segment lists at most this many of its unarchived records; the counts hold them all.
pub const EXCEPTIONS_LISTED_PER_SEGMENT_MAX: usize = 1_000;

/// Why a record is in no archive file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExceptionKind {
    Undecodable,
    Quarantined,
}

/// One line of an exceptions file: the exception and the record's bytes, in hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionLine {
    #[serde(flatten)]
    pub exception: ArchiveException,
    pub record_hex: String,
}

impl ExceptionLine {
    pub fn new(exception: ArchiveException, record: &[u8]) -> ExceptionLine {
        use std::fmt::Write;
        let mut record_hex = String::with_capacity(record.len() * 2);
        for byte in record {
            let _ = write!(record_hex, "{byte:02x}");
        }
        ExceptionLine {
            exception,
            record_hex,
        }
    }
}

/// A record in no hour file, and when the archiver read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveException {
    pub offset: Offset,
    pub kind: ExceptionKind,
    /// The archiver's clock when it read the record: the billing period that reports it.
    pub read_at_ms: u64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub partition: PartitionId,
    /// Every offset below this is archived (or counted undecodable) in `segments`.
    pub next_offset: Offset,
    /// A segment being written: its files may exist unlisted, and the next roll is exactly this
    /// range.
    #[serde(default)]
    pub pending: Option<OffsetRange>,
    pub segments: Vec<SegmentEntry>,
    /// The archiver's processing time up to which the archive has everything: every record
    /// appended to the log before it is below `next_offset` (see the module's invariant). 0:
    /// never caught up, or a manifest older than the field. An idle archiver refreshes it once
    /// per roll interval, so an idle partition holds no period open.
    #[serde(default)]
    pub caught_up_to_ms: u64,
    /// How many partitions the log had when this manifest was written: the manifests billing
    /// must find. `None` in manifests older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_partitions: Option<u32>,
}

impl Manifest {
    pub fn empty(partition: PartitionId) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            partition,
            next_offset: Offset(0),
            pending: None,
            segments: Vec::new(),
            caught_up_to_ms: 0,
            log_partitions: None,
        }
    }

    pub fn files(&self) -> impl Iterator<Item = (&SegmentEntry, &FileEntry)> {
        self.segments
            .iter()
            .flat_map(|segment| segment.files.iter().map(move |file| (segment, file)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("manifest {key}: {message}")]
    Invalid { key: String, message: String },
}

/// Loads a partition's manifest; an absent one is empty.
pub async fn load(
    blobs: &dyn BlobStore,
    partition: PartitionId,
) -> Result<Manifest, ManifestError> {
    let key = layout::manifest_key(partition);
    let Some(bytes) = blobs.get(&key).await? else {
        return Ok(Manifest::empty(partition));
    };
    let manifest = parse(&key, &bytes)?;
    if manifest.partition != partition {
        return Err(ManifestError::Invalid {
            key,
            message: format!("names partition {}", manifest.partition),
        });
    }
    Ok(manifest)
}

fn parse(key: &str, bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|error| ManifestError::Invalid {
            key: key.to_owned(),
            message: error.to_string(),
        })?;
    if manifest.version != MANIFEST_VERSION {
        return Err(ManifestError::Invalid {
            key: key.to_owned(),
            message: format!(
                "version {} but this build reads version {MANIFEST_VERSION}",
                manifest.version
            ),
        });
    }
    Ok(manifest)
}

pub async fn store(blobs: &dyn BlobStore, manifest: &Manifest) -> Result<(), ManifestError> {
    let bytes = serde_json::to_vec_pretty(manifest).expect("a manifest always serializes");
    blobs
        .put(&layout::manifest_key(manifest.partition), bytes)
        .await?;
    Ok(())
}

/// Every partition's manifest, by partition.
pub async fn load_all(blobs: &dyn BlobStore) -> Result<Vec<Manifest>, ManifestError> {
    let mut manifests = Vec::new();
    for key in blobs.list(layout::MANIFEST_PREFIX).await? {
        if !key.ends_with(".json") {
            continue;
        }
        let Some(bytes) = blobs.get(&key).await? else {
            continue;
        };
        manifests.push(parse(&key, &bytes)?);
    }
    manifests.sort_by_key(|manifest| manifest.partition);
    Ok(manifests)
}

/// A committed archive file, as the billing job sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedFile {
    pub key: String,
    pub partition: PartitionId,
    /// The offset range of the segment the file belongs to (inclusive). Only the rows of
    /// `hour_start_ms` are in this file.
    pub range: OffsetRange,
    pub hour_start_ms: u64,
    pub rows: u64,
}

/// Every committed file whose event hour starts in `[from_hour_ms, to_hour_ms)`, sorted by
/// (hour, partition, offset). Reads manifests only: unlisted files are not part of the archive.
pub async fn list_committed(
    blobs: &dyn BlobStore,
    from_hour_ms: u64,
    to_hour_ms: u64,
) -> Result<Vec<CommittedFile>, ManifestError> {
    let mut files = Vec::new();
    for manifest in load_all(blobs).await? {
        for (segment, file) in manifest.files() {
            if (from_hour_ms..to_hour_ms).contains(&file.hour_start_ms) {
                files.push(CommittedFile {
                    key: file.key.clone(),
                    partition: manifest.partition,
                    range: segment.range,
                    hour_start_ms: file.hour_start_ms,
                    rows: file.rows,
                });
            }
        }
    }
    files.sort_by_key(|file| (file.hour_start_ms, file.partition, file.range.first_offset));
    Ok(files)
}

/// The unarchived records a billing period reports: those of every segment whose first listed
/// exception was read in `[from_ms, to_ms)` (so each segment is reported by one period), with
/// the segments' full counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExceptionReport {
    pub undecodable: u64,
    pub quarantined: u64,
    /// (partition, exception), the listed ones.
    pub listed: Vec<(PartitionId, ArchiveException)>,
}

impl ExceptionReport {
    pub fn is_empty(&self) -> bool {
        self.undecodable == 0 && self.quarantined == 0
    }
}

pub async fn list_exceptions(
    blobs: &dyn BlobStore,
    from_ms: u64,
    to_ms: u64,
) -> Result<ExceptionReport, ManifestError> {
    let mut report = ExceptionReport::default();
    for manifest in load_all(blobs).await? {
        for segment in &manifest.segments {
            let Some(first) = segment.exceptions.first() else {
                continue;
            };
            if !(from_ms..to_ms).contains(&first.read_at_ms) {
                continue;
            }
            report.undecodable += segment.undecodable;
            report.quarantined += segment.quarantined;
            report.listed.extend(
                segment
                    .exceptions
                    .iter()
                    .map(|exception| (manifest.partition, exception.clone())),
            );
        }
    }
    Ok(report)
}

/// What `clean` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub deleted: Vec<String>,
    /// Unlisted files below their partition's `next_offset`: not expected to exist, kept for a
    /// human to look at.
    pub unlisted_kept: Vec<String>,
}

/// Deletes archive files that no manifest lists and that start at or past their partition's
/// `next_offset`: leftovers of a crash between file puts and the manifest update. Files of a
/// `pending` segment are left alone, since an archiver may be writing them right now.
pub async fn clean(blobs: &dyn BlobStore) -> Result<CleanReport, ManifestError> {
    let manifests: BTreeMap<PartitionId, Manifest> = load_all(blobs)
        .await?
        .into_iter()
        .map(|manifest| (manifest.partition, manifest))
        .collect();
    let mut report = CleanReport::default();
    for key in blobs.list(layout::CLICKS_PREFIX).await? {
        let Some(name) = layout::parse_file_key(&key) else {
            continue;
        };
        let manifest = manifests.get(&name.partition);
        let listed =
            manifest.is_some_and(|manifest| manifest.files().any(|(_, file)| file.key == key));
        if listed {
            continue;
        }
        let next_offset = manifest.map_or(Offset(0), |manifest| manifest.next_offset);
        let pending = manifest
            .and_then(|manifest| manifest.pending)
            .is_some_and(|range| range.contains(name.first_offset));
        if name.first_offset >= next_offset && !pending {
            blobs.delete(&key).await?;
            report.deleted.push(key);
        } else if name.first_offset < next_offset {
            report.unlisted_kept.push(key);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_older_than_the_caught_up_mark_reads_as_never_caught_up() {
        let old = br#"{"version": 1, "partition": 4, "next_offset": 12, "segments": []}"#;
        let manifest = parse("archive/manifest/p00004.json", old).unwrap();
        assert_eq!(manifest.caught_up_to_ms, 0);
        assert_eq!(manifest.log_partitions, None);
        assert_eq!(manifest.next_offset, Offset(12));
    }
}
