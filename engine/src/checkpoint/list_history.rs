//! Which fraud list judged which records of a partition, for as long as billing may ask.
//!
//! Every checkpoint names the list that judges the records after it, from its `next_offset` on
//! (a list swaps in at a barrier, before that barrier's checkpoint is taken). So the committed
//! records say, epoch by epoch, which version judged which offsets. Records before a complete
//! full one are deleted, so first their changes go into one history file:
//! `checkpoints/lists/p{partition:05}/{first:020}-{last:020}-v{version:020}.changes`, a postcard
//! `Vec<ListChange>` of every change since the partition's first checkpoint, `first` and `last`
//! its epochs and `version` the last change's. A cleanup whose records change nothing writes
//! nothing: the listing alone says what the history ends with. A new file holds the old ones'
//! changes too; the old ones go after it is written, and a reader merges whatever is there.
//!
//! Kept forever: one entry per rotation, a few dozen bytes.

use adclick_core::ids::{Epoch, FraudListVersion, Offset, PartitionId};
use adclick_core::snapshot::PartitionCheckpoint;
use serde::{Deserialize, Serialize};

use super::{CheckpointError, CheckpointStore, Listing};

/// From `from_offset` on, `version` judged the partition's records (until the next change).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListChange {
    /// The epoch whose checkpoint first named `version` here.
    pub epoch: Epoch,
    pub from_offset: Offset,
    pub version: FraudListVersion,
}

impl ListChange {
    /// What one checkpoint says: its list judges from its offset on.
    pub fn named_by(checkpoint: &PartitionCheckpoint) -> ListChange {
        ListChange {
            epoch: checkpoint.epoch,
            from_offset: checkpoint.next_offset,
            version: checkpoint.fraud_list_version,
        }
    }
}

/// A partition's fraud-list changes, oldest first, as far as its committed checkpoints go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListHistory {
    pub changes: Vec<ListChange>,
    /// The newest committed checkpoint's offset: records from here on have no committed
    /// judgement yet, so their list is the last change's only if no rotation comes first.
    pub checkpointed_to: Offset,
}

impl ListHistory {
    /// Sorts by epoch and keeps only the entries that change the version.
    fn from_entries(mut entries: Vec<ListChange>) -> ListHistory {
        entries.sort_by_key(|change| change.epoch);
        entries.dedup_by_key(|change| change.epoch);
        let checkpointed_to = entries.last().map_or(Offset(0), |last| last.from_offset);
        let mut changes: Vec<ListChange> = Vec::new();
        for entry in entries {
            if changes
                .last()
                .is_none_or(|last| last.version != entry.version)
            {
                changes.push(entry);
            }
        }
        ListHistory {
            changes,
            checkpointed_to,
        }
    }

    /// The version that judged the record at `offset`: the last change at or before it. A
    /// record before the first change (read before the partition's first checkpoint, by an
    /// engine that did not checkpoint at start) gets the first change's. `None`: the partition
    /// never checkpointed.
    pub fn version_at(&self, offset: Offset) -> Option<FraudListVersion> {
        let after = self
            .changes
            .partition_point(|change| change.from_offset <= offset);
        let change = self.changes.get(after.saturating_sub(1))?;
        Some(change.version)
    }

    pub fn versions(&self) -> impl Iterator<Item = FraudListVersion> + '_ {
        self.changes.iter().map(|change| change.version)
    }
}

fn lists_dir(partition: PartitionId) -> String {
    format!("checkpoints/lists/p{:05}/", partition.0)
}

fn history_key(partition: PartitionId, changes: &[ListChange]) -> Option<String> {
    let (first, last) = (changes.first()?, changes.last()?);
    Some(format!(
        "{}{:020}-{:020}-v{:020}.changes",
        lists_dir(partition),
        first.epoch.0,
        last.epoch.0,
        last.version.0
    ))
}

/// The version a history file ends with, from its name.
fn parse_last_version(key: &str) -> Option<FraudListVersion> {
    let stem = key.rsplit('/').next()?.strip_suffix(".changes")?;
    let (_, version) = stem.rsplit_once("-v")?;
    Some(FraudListVersion(version.parse().ok()?))
}

/// The newest epoch a history file covers, from its name.
fn parse_last_epoch(key: &str) -> Option<Epoch> {
    let stem = key.rsplit('/').next()?.strip_suffix(".changes")?;
    Some(Epoch(stem.split('-').nth(1)?.parse().ok()?))
}

impl CheckpointStore {
    /// Before records go: keeps the changes among `named` (what each deleted record names).
    pub(super) async fn keep_list_changes(
        &self,
        partition: PartitionId,
        named: &[ListChange],
    ) -> Result<(), CheckpointError> {
        let files = self.blobs.list(&lists_dir(partition)).await?;
        let newest = files.iter().max_by_key(|key| parse_last_epoch(key));
        let last_version = newest.and_then(|key| parse_last_version(key));
        let adds_a_change = match last_version {
            None => !named.is_empty(),
            Some(last) => named.iter().any(|change| change.version != last),
        };
        if !adds_a_change {
            return Ok(());
        }
        let mut entries = self.read_history_files(&files).await?;
        entries.extend_from_slice(named);
        let merged = ListHistory::from_entries(entries).changes;
        let Some(key) = history_key(partition, &merged) else {
            return Ok(());
        };
        let bytes = postcard::to_allocvec(&merged).expect("list changes always serialize");
        self.blobs.put(&key, bytes).await?;
        for old in files.iter().filter(|old| **old != key) {
            self.blobs.delete(old).await?;
        }
        Ok(())
    }

    async fn read_history_files(
        &self,
        keys: &[String],
    ) -> Result<Vec<ListChange>, CheckpointError> {
        let mut entries = Vec::new();
        for key in keys {
            let Some(bytes) = self.blobs.get(key).await? else {
                continue;
            };
            let changes: Vec<ListChange> =
                postcard::from_bytes(&bytes).map_err(|error| CheckpointError::Corrupt {
                    key: key.clone(),
                    message: error.to_string(),
                })?;
            entries.extend(changes);
        }
        Ok(entries)
    }

    /// Which fraud list judged which of the partition's records: the history files, then every
    /// committed record still listed (complete, or pending and so re-applied by the next owner).
    pub async fn list_history(
        &self,
        partition: PartitionId,
    ) -> Result<ListHistory, CheckpointError> {
        let files = self.blobs.list(&lists_dir(partition)).await?;
        let mut entries = self.read_history_files(&files).await?;
        let listing: Listing = self.list(partition).await?;
        let committed = listing.complete_records().chain(listing.pending());
        for name in committed.collect::<Vec<_>>() {
            let record = self.load_record(partition, name).await?;
            entries.push(ListChange::named_by(&record.checkpoint));
        }
        Ok(ListHistory::from_entries(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(epoch: u64, offset: u64, version: u64) -> ListChange {
        ListChange {
            epoch: Epoch(epoch),
            from_offset: Offset(offset),
            version: FraudListVersion(version),
        }
    }

    #[test]
    fn a_history_keeps_changes_and_answers_by_offset() {
        // Epochs 3 and 4 share offset 50: a list swapped in by an empty epoch judges from there.
        let history = ListHistory::from_entries(vec![
            change(3, 50, 1),
            change(1, 0, 1),
            change(2, 20, 1),
            change(4, 50, 2),
            change(5, 90, 2),
            change(6, 120, 3),
            change(2, 20, 1),
        ]);
        assert_eq!(
            history.changes,
            [change(1, 0, 1), change(4, 50, 2), change(6, 120, 3)]
        );
        assert_eq!(history.checkpointed_to, Offset(120));
        let at = |offset| history.version_at(Offset(offset)).unwrap().0;
        assert_eq!(
            [at(0), at(49), at(50), at(119), at(120), at(10_000)],
            [1, 1, 2, 2, 3, 3]
        );
        assert_eq!(ListHistory::default().version_at(Offset(0)), None);
    }

    #[test]
    fn a_history_file_name_says_what_it_ends_with() {
        let key = history_key(PartitionId(3), &[change(1, 0, 1), change(9, 70, 12)]).unwrap();
        assert_eq!(
            key,
            "checkpoints/lists/p00003/00000000000000000001-00000000000000000009-v00000000000000000012.changes"
        );
        assert_eq!(parse_last_version(&key), Some(FraudListVersion(12)));
        assert_eq!(parse_last_epoch(&key), Some(Epoch(9)));
    }
}
