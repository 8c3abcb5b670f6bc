//! The fraud lists the workers judged with, read back from their checkpoint store: for billing
//! (each click judged with the very version the fast path used for it) and for a rebuild that
//! recounts history as it was judged.
//!
//! Each partition's `ListHistory` (`crate::checkpoint`) says which version judged which offsets;
//! each version's text is in the same store (`crate::fraud_lists`), kept forever. A partition
//! that never checkpointed has no history and gets the fallback list.

use std::collections::BTreeMap;
use std::sync::Arc;

use adclick_core::billing::FraudSchedule;
use adclick_core::fraud::FraudList;
use adclick_core::ids::{FraudListVersion, Offset, PartitionId};

use crate::checkpoint::{CheckpointError, CheckpointStore};
use crate::fraud_lists::{FraudListStore, FraudListStoreError, fraud_list_key};
use crate::seams::BlobStore;

#[derive(Debug, thiserror::Error)]
pub enum JudgedListsError {
    #[error(
        "reading partition {partition}'s fraud-list history from the checkpoint store: {source}"
    )]
    History {
        partition: PartitionId,
        source: CheckpointError,
    },
    #[error(
        "fraud list version {} judged partition {partition} from offset {}, and it cannot be read back: {source}",
        version.0,
        from_offset.0
    )]
    List {
        partition: PartitionId,
        version: FraudListVersion,
        from_offset: Offset,
        source: FraudListStoreError,
    },
}

/// The schedule of `partitions` partitions, and the keys it was read from (for an audit
/// record: a `checkpoints/lists/` entry marks a run judged as the workers judged).
pub async fn workers_schedule(
    checkpoints: Arc<dyn BlobStore>,
    partitions: u32,
    fallback: Arc<FraudList>,
) -> Result<(FraudSchedule, Vec<String>), JudgedListsError> {
    let histories = CheckpointStore::new(checkpoints.clone());
    let lists = FraudListStore::new(checkpoints);
    let mut loaded: BTreeMap<FraudListVersion, Arc<FraudList>> = BTreeMap::new();
    let mut schedule = FraudSchedule::single(fallback);
    let mut inputs = Vec::new();
    for partition in (0..partitions).map(PartitionId) {
        let history = histories
            .list_history(partition)
            .await
            .map_err(|source| JudgedListsError::History { partition, source })?;
        let mut changes = Vec::with_capacity(history.changes.len());
        for change in &history.changes {
            let list = match loaded.get(&change.version) {
                Some(list) => list.clone(),
                None => {
                    let list = lists.load(change.version).await.map_err(|source| {
                        JudgedListsError::List {
                            partition,
                            version: change.version,
                            from_offset: change.from_offset,
                            source,
                        }
                    })?;
                    let list = Arc::new(list);
                    loaded.insert(change.version, list.clone());
                    list
                }
            };
            changes.push((change.from_offset, list));
        }
        if !changes.is_empty() {
            inputs.push(format!("checkpoints/lists/p{:05}", partition.0));
        }
        schedule.set_partition(partition, changes, history.checkpointed_to);
    }
    inputs.extend(loaded.keys().map(|version| fraud_list_key(*version)));
    Ok((schedule, inputs))
}
