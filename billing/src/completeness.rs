//! Whether the archive holds every click a period may bill: each partition's manifest says up
//! to which processing time it has the whole log (`Manifest::caught_up_to_ms`), and a period
//! `[from, to)` is billed only once every partition's mark is at or past `to + grace` (the
//! billing grace, `--grace-ms`; ingest's 24 h bound on late clicks is what corrections are
//! for). Pure: it judges manifests already read.
//!
//! The partitions judged are `0..N`, N being the larger of the caller's count (`--partitions`)
//! and the largest count a manifest records (`Manifest::log_partitions`); when neither is known
//! the judgement is refused, since a partition with no manifest would otherwise pass unseen.
//!
//! **Invariant:** a missing manifest is a partition behind by everything, never a pass.

use adclick_archive::Manifest;
use adclick_core::ids::PartitionId;
use serde::Serialize;

/// A partition whose archive is not caught up far enough.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionBehind {
    pub partition: PartitionId,
    /// `None`: the partition has no manifest.
    pub caught_up_to_ms: Option<u64>,
    /// How far its mark is short of the needed time (the needed time itself when it has none).
    pub lag_ms: u64,
}

/// The judgement of the archive for one period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArchiveCompleteness {
    /// The partitions judged: `0..partitions`, and any other a manifest names.
    pub partitions: u32,
    /// Every partition's mark must be at or past this processing time.
    pub needed_ms: u64,
    pub behind: Vec<PartitionBehind>,
    /// How the partition count was found, when the manifests alone did not say it.
    pub notes: Vec<String>,
}

impl ArchiveCompleteness {
    pub fn is_complete(&self) -> bool {
        self.behind.is_empty()
    }

    /// One line per partition behind: its number, its mark and its lag.
    pub fn describe_behind(&self) -> String {
        let mut lines = Vec::with_capacity(self.behind.len());
        for behind in &self.behind {
            lines.push(match behind.caught_up_to_ms {
                None => format!("partition {}: no manifest", behind.partition),
                Some(0) => format!(
                    "partition {}: never caught up with its log",
                    behind.partition
                ),
                Some(mark) => format!(
                    "partition {}: caught up to {mark}, {} ms ({:.1} min) behind",
                    behind.partition,
                    behind.lag_ms,
                    behind.lag_ms as f64 / 60_000.0
                ),
            });
        }
        lines.join("; ")
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the archive's manifests ({manifests} of them) do not say how many partitions the log has (written by an archiver older than that field, or no archiver has run): pass the log's partition count (--partitions)"
)]
pub struct PartitionsUnknown {
    pub manifests: usize,
}

/// Judges `manifests` (one per partition, as `adclick_archive::manifest::load_all` reads them)
/// against `needed_ms`.
pub fn judge(
    manifests: &[Manifest],
    partitions: Option<u32>,
    needed_ms: u64,
) -> Result<ArchiveCompleteness, PartitionsUnknown> {
    let recorded = manifests
        .iter()
        .filter_map(|manifest| manifest.log_partitions)
        .max();
    let mut notes = Vec::new();
    let count = match (partitions, recorded) {
        (Some(given), Some(recorded)) if given != recorded => {
            notes.push(format!(
                "--partitions {given} but the manifests record {recorded} partitions: judging {}",
                given.max(recorded)
            ));
            given.max(recorded)
        }
        (Some(given), _) => given,
        (None, Some(recorded)) => recorded,
        (None, None) => {
            return Err(PartitionsUnknown {
                manifests: manifests.len(),
            });
        }
    };
    let mut behind = Vec::new();
    for partition in (0..count).map(PartitionId) {
        if !manifests
            .iter()
            .any(|manifest| manifest.partition == partition)
        {
            behind.push(PartitionBehind {
                partition,
                caught_up_to_ms: None,
                lag_ms: needed_ms,
            });
        }
    }
    for manifest in manifests {
        if manifest.caught_up_to_ms < needed_ms {
            behind.push(PartitionBehind {
                partition: manifest.partition,
                caught_up_to_ms: Some(manifest.caught_up_to_ms),
                lag_ms: needed_ms - manifest.caught_up_to_ms,
            });
        }
    }
    behind.sort_by_key(|behind| behind.partition);
    Ok(ArchiveCompleteness {
        partitions: count,
        needed_ms,
        behind,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(partition: u32, caught_up_to_ms: u64, log_partitions: Option<u32>) -> Manifest {
        let mut manifest = Manifest::empty(PartitionId(partition));
        manifest.caught_up_to_ms = caught_up_to_ms;
        manifest.log_partitions = log_partitions;
        manifest
    }

    #[test]
    fn a_missing_or_lagging_partition_is_named_with_its_lag() {
        let manifests = [manifest(0, 5_000, Some(3)), manifest(2, 4_000, Some(3))];
        let judged = judge(&manifests, None, 4_500).unwrap();
        assert_eq!(judged.partitions, 3);
        assert_eq!(
            judged.behind,
            vec![
                PartitionBehind {
                    partition: PartitionId(1),
                    caught_up_to_ms: None,
                    lag_ms: 4_500
                },
                PartitionBehind {
                    partition: PartitionId(2),
                    caught_up_to_ms: Some(4_000),
                    lag_ms: 500
                },
            ]
        );
        let text = judged.describe_behind();
        assert!(text.contains("partition 1: no manifest"), "{text}");
        assert!(
            text.contains("partition 2: caught up to 4000, 500 ms"),
            "{text}"
        );
        assert!(judge(&manifests, None, 4_000).unwrap().behind.len() == 1);
    }

    #[test]
    fn an_unknown_partition_count_is_refused_not_guessed() {
        assert!(judge(&[], None, 1).is_err());
        assert!(judge(&[manifest(0, 9, None)], None, 1).is_err());
        let judged = judge(&[], Some(2), 1).unwrap();
        assert_eq!(judged.behind.len(), 2, "no manifest at all: both behind");
        let judged = judge(&[manifest(0, 9, Some(4))], Some(2), 1).unwrap();
        assert_eq!(judged.partitions, 4);
        assert_eq!(judged.notes.len(), 1);
    }
}
