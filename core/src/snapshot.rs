//! The checkpoint format of one partition: versioned, checksummed, full or delta.
//!
//! A *full* checkpoint holds the whole partition state. A *delta* holds only what changed since
//! the previous checkpoint: the series whose counts changed (absolute values), the click ids
//! added to dedup, and the scalars (offset, watermark, fraud-list version, stats). Removals are
//! never written: they follow from the watermark, so a restore re-derives them. This keeps the
//! per-epoch checkpoint proportional to the epoch's traffic, not to the dedup horizon. A full
//! checkpoint comes every `full_checkpoint_every_epochs`, and always first after a restore: a
//! new owner's chain never builds on the old owner's records.
//!
//! Envelope: `b"ADCK"`, format version (u16 LE), CRC-32 of the body (u32 LE), body length
//! (u64 LE), then the body. Every field is checked before and after reading.
//!
//! Body, format 2: every field but the dedup ids in postcard, then the dedup ids packed at a
//! fixed width: their count (u64 LE), then per id its 16 bytes (LE) and its bucket (u32 LE). The
//! ids are nearly all of a checkpoint, and random 128-bit ids gain nothing from postcard's
//! varints (19 bytes each, encoded a byte at a time); packed, they cost 20 bytes and a copy.
//! Format 3 added the unverified and quarantined counters to the stats. Formats 1 (every field
//! in postcard) and 2 are still read; their counters read as 0.

use serde::{Deserialize, Serialize};

use crate::dedup::DedupStats;
use crate::fraud::RateKey;
use crate::ids::*;
use crate::limits;
use crate::window::{Counts, HourKey, Lane, Watermark, WindowKey};

const MAGIC: [u8; 4] = *b"ADCK";
pub const SNAPSHOT_FORMAT_VERSION: u16 = 3;
/// The format before the dedup ids were packed; still read.
const FORMAT_POSTCARD_IDS: u16 = 1;
/// The format before the stats counted unverified and quarantined clicks; still read.
const FORMAT_PACKED_IDS: u16 = 2;
/// Bytes of one packed dedup id: the id and its bucket.
const PACKED_ID_BYTES: usize = 16 + 4;
const HEADER_BYTES: usize = 4 + 2 + 4 + 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointKind {
    Full,
    /// Changes on top of the checkpoint of `previous_epoch`.
    Delta {
        previous_epoch: Epoch,
    },
}

/// Counters a partition keeps so that nothing it drops or flags is silent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStats {
    pub records: u64,
    pub undecodable: u64,
    pub clicks: u64,
    pub duplicates: u64,
    pub fraud_known_ip: u64,
    pub fraud_known_user_agent: u64,
    pub fraud_rate: u64,
    /// Clicks counted in a late lane.
    pub late: u64,
    /// Clicks older than the late retention: counted here and nowhere else.
    pub expired: u64,
    /// Clicks counted in the unverified lane: the fast path could not decide them.
    #[serde(default)]
    pub unverified: u64,
    /// Records whose event time is outside ingest's bounds against the worker's clock: counted
    /// here, in no lane.
    #[serde(default)]
    pub quarantined: u64,
}

/// `PartitionStats` as formats 1 and 2 hold them.
#[derive(Clone, Copy, Deserialize)]
struct PartitionStatsV2 {
    records: u64,
    undecodable: u64,
    clicks: u64,
    duplicates: u64,
    fraud_known_ip: u64,
    fraud_known_user_agent: u64,
    fraud_rate: u64,
    late: u64,
    expired: u64,
}

impl From<PartitionStatsV2> for PartitionStats {
    fn from(old: PartitionStatsV2) -> PartitionStats {
        PartitionStats {
            records: old.records,
            undecodable: old.undecodable,
            clicks: old.clicks,
            duplicates: old.duplicates,
            fraud_known_ip: old.fraud_known_ip,
            fraud_known_user_agent: old.fraud_known_user_agent,
            fraud_rate: old.fraud_rate,
            late: old.late,
            expired: old.expired,
            unverified: 0,
            quarantined: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCheckpoint {
    pub partition: PartitionId,
    pub epoch: Epoch,
    pub kind: CheckpointKind,
    pub next_offset: Offset,
    pub watermark: Watermark,
    pub fraud_list_version: FraudListVersion,
    pub stats: PartitionStats,
    pub windows: Vec<(Lane, WindowKey, Counts)>,
    pub hours: Vec<(Lane, HourKey, Counts)>,
    pub rate: Vec<(RateKey, Counts)>,
    /// Written packed after the postcard part of the body, not by serde (see the module docs).
    #[serde(skip)]
    pub dedup_ids: Vec<(ClickId, u32)>,
    pub dedup_cutoff_bucket: u32,
    pub dedup_stats: DedupStats,
    /// The settings that give the stored numbers their meaning: window starts and dedup bucket
    /// numbers. A restore under other settings is refused rather than misread.
    pub window_ms: u64,
    pub dedup_bucket_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("checkpoint is {length_bytes} bytes, shorter than its {HEADER_BYTES}-byte header")]
    Truncated { length_bytes: usize },
    #[error("checkpoint does not start with the adclick magic bytes")]
    BadMagic,
    #[error(
        "checkpoint format version {version} is unknown, this build reads {FORMAT_POSTCARD_IDS} to {SNAPSHOT_FORMAT_VERSION}"
    )]
    UnknownVersion { version: u16 },
    #[error(
        "checkpoint body is {declared_bytes} bytes by its header but {actual_bytes} bytes are present"
    )]
    LengthMismatch {
        declared_bytes: u64,
        actual_bytes: usize,
    },
    #[error("checkpoint body is {declared_bytes} bytes, over the limit of {limit_bytes} bytes")]
    TooLarge {
        declared_bytes: u64,
        limit_bytes: usize,
    },
    #[error(
        "checkpoint checksum mismatch: header says {expected:#010x}, body hashes to {actual:#010x}"
    )]
    Checksum { expected: u32, actual: u32 },
    #[error("checkpoint body does not decode: {message}")]
    Body { message: String },
    #[error(
        "checkpoint's packed dedup ids take {actual_bytes} bytes, but {declared_ids} ids of {PACKED_ID_BYTES} bytes need {}", declared_ids.saturating_mul(PACKED_ID_BYTES as u64)
    )]
    PackedIds {
        declared_ids: u64,
        actual_bytes: usize,
    },
}

/// Format 1's body: every field in postcard, the dedup ids as varints. Only read.
#[derive(Deserialize)]
struct Format1Body {
    partition: PartitionId,
    epoch: Epoch,
    kind: CheckpointKind,
    next_offset: Offset,
    watermark: Watermark,
    fraud_list_version: FraudListVersion,
    stats: PartitionStatsV2,
    windows: Vec<(Lane, WindowKey, Counts)>,
    hours: Vec<(Lane, HourKey, Counts)>,
    rate: Vec<(RateKey, Counts)>,
    dedup_ids: Vec<(ClickId, u32)>,
    dedup_cutoff_bucket: u32,
    dedup_stats: DedupStats,
    window_ms: u64,
    dedup_bucket_ms: u64,
}

/// Format 2's postcard part: format 3's with the old stats. Only read.
#[derive(Deserialize)]
struct Format2Body {
    partition: PartitionId,
    epoch: Epoch,
    kind: CheckpointKind,
    next_offset: Offset,
    watermark: Watermark,
    fraud_list_version: FraudListVersion,
    stats: PartitionStatsV2,
    windows: Vec<(Lane, WindowKey, Counts)>,
    hours: Vec<(Lane, HourKey, Counts)>,
    rate: Vec<(RateKey, Counts)>,
    dedup_cutoff_bucket: u32,
    dedup_stats: DedupStats,
    window_ms: u64,
    dedup_bucket_ms: u64,
}

impl From<Format2Body> for PartitionCheckpoint {
    fn from(body: Format2Body) -> Self {
        PartitionCheckpoint {
            partition: body.partition,
            epoch: body.epoch,
            kind: body.kind,
            next_offset: body.next_offset,
            watermark: body.watermark,
            fraud_list_version: body.fraud_list_version,
            stats: body.stats.into(),
            windows: body.windows,
            hours: body.hours,
            rate: body.rate,
            dedup_ids: Vec::new(),
            dedup_cutoff_bucket: body.dedup_cutoff_bucket,
            dedup_stats: body.dedup_stats,
            window_ms: body.window_ms,
            dedup_bucket_ms: body.dedup_bucket_ms,
        }
    }
}

impl From<Format1Body> for PartitionCheckpoint {
    fn from(body: Format1Body) -> Self {
        PartitionCheckpoint {
            partition: body.partition,
            epoch: body.epoch,
            kind: body.kind,
            next_offset: body.next_offset,
            watermark: body.watermark,
            fraud_list_version: body.fraud_list_version,
            stats: body.stats.into(),
            windows: body.windows,
            hours: body.hours,
            rate: body.rate,
            dedup_ids: body.dedup_ids,
            dedup_cutoff_bucket: body.dedup_cutoff_bucket,
            dedup_stats: body.dedup_stats,
            window_ms: body.window_ms,
            dedup_bucket_ms: body.dedup_bucket_ms,
        }
    }
}

pub fn encode_checkpoint(checkpoint: &PartitionCheckpoint) -> Vec<u8> {
    encode_checkpoint_into(checkpoint, Vec::new())
}

/// `encode_checkpoint` into `out`'s memory (its contents are discarded): a caller that encodes
/// a checkpoint every epoch reuses one buffer instead of page-faulting a fresh one in.
pub fn encode_checkpoint_into(checkpoint: &PartitionCheckpoint, mut out: Vec<u8>) -> Vec<u8> {
    // One buffer: the header is written with placeholders and patched once the body is known.
    let ids_bytes = 8 + checkpoint.dedup_ids.len() * PACKED_ID_BYTES;
    // Room for the postcard body too, so that the buffer is normally not reallocated (and
    // copied) on the way: a series (key and counts as varints) takes well under this many bytes.
    const SERIES_BYTES_MAX: usize = 96;
    let series = checkpoint.windows.len() + checkpoint.hours.len() + checkpoint.rate.len();
    out.clear();
    out.reserve(HEADER_BYTES + 1024 + series * SERIES_BYTES_MAX + ids_bytes);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4 + 8]);
    let mut out = postcard::to_extend(checkpoint, out).expect("checkpoint state always serializes");
    out.extend_from_slice(&(checkpoint.dedup_ids.len() as u64).to_le_bytes());
    for (id, bucket) in &checkpoint.dedup_ids {
        out.extend_from_slice(&id.0.to_le_bytes());
        out.extend_from_slice(&bucket.to_le_bytes());
    }
    let body = &out[HEADER_BYTES..];
    let (checksum, body_bytes) = (crc32fast::hash(body), body.len() as u64);
    out[6..10].copy_from_slice(&checksum.to_le_bytes());
    out[10..18].copy_from_slice(&body_bytes.to_le_bytes());
    // Check the snapshot before it leaves: it must read back to exactly what was written.
    debug_assert_eq!(decode_checkpoint(&out).as_ref(), Ok(checkpoint));
    out
}

pub fn decode_checkpoint(bytes: &[u8]) -> Result<PartitionCheckpoint, SnapshotError> {
    if bytes.len() < HEADER_BYTES {
        return Err(SnapshotError::Truncated {
            length_bytes: bytes.len(),
        });
    }
    if bytes[0..4] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if ![
        SNAPSHOT_FORMAT_VERSION,
        FORMAT_PACKED_IDS,
        FORMAT_POSTCARD_IDS,
    ]
    .contains(&version)
    {
        return Err(SnapshotError::UnknownVersion { version });
    }
    let expected = u32::from_le_bytes(bytes[6..10].try_into().expect("header length checked"));
    let declared_bytes =
        u64::from_le_bytes(bytes[10..18].try_into().expect("header length checked"));
    if declared_bytes > limits::SNAPSHOT_BYTES_MAX as u64 {
        return Err(SnapshotError::TooLarge {
            declared_bytes,
            limit_bytes: limits::SNAPSHOT_BYTES_MAX,
        });
    }
    let body = &bytes[HEADER_BYTES..];
    if body.len() as u64 != declared_bytes {
        return Err(SnapshotError::LengthMismatch {
            declared_bytes,
            actual_bytes: body.len(),
        });
    }
    let actual = crc32fast::hash(body);
    if actual != expected {
        return Err(SnapshotError::Checksum { expected, actual });
    }
    let body_error = |error: postcard::Error| SnapshotError::Body {
        message: error.to_string(),
    };
    if version == FORMAT_POSTCARD_IDS {
        let body: Format1Body = postcard::from_bytes(body).map_err(body_error)?;
        return Ok(body.into());
    }
    let (mut checkpoint, packed): (PartitionCheckpoint, &[u8]) = if version == FORMAT_PACKED_IDS {
        let (body, packed): (Format2Body, &[u8]) =
            postcard::take_from_bytes(body).map_err(body_error)?;
        (body.into(), packed)
    } else {
        postcard::take_from_bytes(body).map_err(body_error)?
    };
    checkpoint.dedup_ids = unpack_ids(packed)?;
    Ok(checkpoint)
}

/// The packed dedup ids: a count, then that many ids and buckets, and nothing after them.
fn unpack_ids(packed: &[u8]) -> Result<Vec<(ClickId, u32)>, SnapshotError> {
    let (count, ids) = packed
        .split_first_chunk::<8>()
        .ok_or(SnapshotError::PackedIds {
            declared_ids: 0,
            actual_bytes: packed.len(),
        })?;
    let declared_ids = u64::from_le_bytes(*count);
    if declared_ids.checked_mul(PACKED_ID_BYTES as u64) != Some(ids.len() as u64) {
        return Err(SnapshotError::PackedIds {
            declared_ids,
            actual_bytes: ids.len(),
        });
    }
    Ok(ids
        .chunks_exact(PACKED_ID_BYTES)
        .map(|packed| {
            let (id, bucket) = packed.split_at(16);
            (
                ClickId(u128::from_le_bytes(id.try_into().expect("16 bytes"))),
                u32::from_le_bytes(bucket.try_into().expect("4 bytes")),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> PartitionCheckpoint {
        PartitionCheckpoint {
            partition: PartitionId(3),
            epoch: Epoch(9),
            kind: CheckpointKind::Delta {
                previous_epoch: Epoch(8),
            },
            next_offset: Offset(1234),
            watermark: Watermark {
                watermark_ms: 5,
                max_event_time_ms: 10,
                last_activity_processing_ms: Some(7),
            },
            fraud_list_version: FraudListVersion(2),
            stats: PartitionStats {
                clicks: 4,
                ..PartitionStats::default()
            },
            windows: vec![(
                Lane::OnTime,
                WindowKey {
                    campaign_id: CampaignId(1),
                    ad_id: AdId(2),
                    salt: Salt(0),
                    window_start_ms: 0,
                },
                Counts {
                    clicks: 3,
                    unique: 2,
                    fraud: 1,
                },
            )],
            hours: vec![],
            rate: vec![],
            dedup_ids: vec![(ClickId(77), 0)],
            dedup_cutoff_bucket: 0,
            dedup_stats: DedupStats::default(),
            window_ms: 60_000,
            dedup_bucket_ms: 10_000,
        }
    }

    #[test]
    fn round_trips_and_detects_corruption() {
        let bytes = encode_checkpoint(&sample());
        assert_eq!(decode_checkpoint(&bytes).unwrap(), sample());
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode_checkpoint(&flipped),
            Err(SnapshotError::Checksum { .. })
        ));
        assert!(matches!(
            decode_checkpoint(&bytes[..bytes.len() - 1]),
            Err(SnapshotError::LengthMismatch { .. })
        ));
        let mut future = bytes.clone();
        future[4] = 9;
        assert_eq!(
            decode_checkpoint(&future),
            Err(SnapshotError::UnknownVersion { version: 9 })
        );
    }

    fn with_ids(mut checkpoint: PartitionCheckpoint) -> PartitionCheckpoint {
        checkpoint.dedup_ids = vec![
            (ClickId(77), 0),
            (ClickId(u128::MAX - 5), 7),
            (ClickId(1 << 100), 300),
        ];
        checkpoint
    }

    /// A checkpoint written by format 1 (`tests/fixtures`, encoded by the code before format 2)
    /// still restores, so an upgrade keeps every partition's state.
    #[test]
    fn format_1_checkpoints_still_decode() {
        let written = include_bytes!("../tests/fixtures/checkpoint-format-1.bin");
        assert_eq!(u16::from_le_bytes([written[4], written[5]]), 1);
        assert_eq!(decode_checkpoint(written).unwrap(), with_ids(sample()));
    }

    #[test]
    fn packed_ids_round_trip_at_20_bytes_each_and_a_wrong_count_is_named() {
        let one = encode_checkpoint(&sample());
        let three = encode_checkpoint(&with_ids(sample()));
        assert_eq!(three.len() - one.len(), 2 * PACKED_ID_BYTES);
        assert_eq!(decode_checkpoint(&three).unwrap(), with_ids(sample()));
        // Claim one id more than the body holds, with a valid checksum: refused, and says so.
        let mut bytes = three.clone();
        let count_at = bytes.len() - 3 * PACKED_ID_BYTES - 8;
        bytes[count_at..count_at + 8].copy_from_slice(&4u64.to_le_bytes());
        let checksum = crc32fast::hash(&bytes[HEADER_BYTES..]);
        bytes[6..10].copy_from_slice(&checksum.to_le_bytes());
        let error = decode_checkpoint(&bytes).unwrap_err();
        assert_eq!(
            error,
            SnapshotError::PackedIds {
                declared_ids: 4,
                actual_bytes: 60
            }
        );
        assert_eq!(
            error.to_string(),
            "checkpoint's packed dedup ids take 60 bytes, but 4 ids of 20 bytes need 80"
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_checkpoint(&bytes);
        }

        #[test]
        fn decoding_a_body_with_a_recomputed_checksum_never_panics(
            index in 0usize..200, value in any::<u8>()
        ) {
            let mut bytes = encode_checkpoint(&sample());
            let at = HEADER_BYTES + index % (bytes.len() - HEADER_BYTES);
            bytes[at] = value;
            let checksum = crc32fast::hash(&bytes[HEADER_BYTES..]);
            bytes[6..10].copy_from_slice(&checksum.to_le_bytes());
            let _ = decode_checkpoint(&bytes);
        }
    }
}
