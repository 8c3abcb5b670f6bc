//! The checkpoint format of one partition: versioned, checksummed, full or delta.
//!
//! A *full* checkpoint holds the whole partition state. A *delta* holds only what changed since
//! the previous checkpoint: the series whose counts changed (absolute values), the click ids
//! added to dedup, and the scalars (offset, watermark, fraud-list version, stats). Removals are
//! never written: they follow from the watermark, so a restore re-derives them. This keeps the
//! per-epoch checkpoint proportional to the epoch's traffic, not to the dedup horizon.
//!
//! Envelope: `b"ADCK"`, format version (u16 LE), CRC-32 of the body (u32 LE), body length
//! (u64 LE), then the body in postcard. Every field is checked before and after reading.

use serde::{Deserialize, Serialize};

use crate::dedup::DedupStats;
use crate::fraud::RateKey;
use crate::ids::*;
use crate::limits;
use crate::window::{Counts, HourKey, Lane, Watermark, WindowKey};

const MAGIC: [u8; 4] = *b"ADCK";
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;
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
        "checkpoint format version {version} is unknown, this build reads {SNAPSHOT_FORMAT_VERSION}"
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
}

pub fn encode_checkpoint(checkpoint: &PartitionCheckpoint) -> Vec<u8> {
    let body = postcard::to_allocvec(checkpoint).expect("checkpoint state always serializes");
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
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
    if version != SNAPSHOT_FORMAT_VERSION {
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
    postcard::from_bytes(body).map_err(|error| SnapshotError::Body {
        message: error.to_string(),
    })
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
