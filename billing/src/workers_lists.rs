//! The fraud lists the workers judged with, read back from their checkpoint store, so billing
//! judges each click with the very version the fast path used for it.
//!
//! Each partition's `ListHistory` (`adclick_engine::checkpoint`) says which version judged which
//! offsets; each version's text is in the same store (`adclick_engine::fraud_lists`), kept
//! forever. A partition that never checkpointed has no history and gets the job's fallback list.

use std::collections::BTreeMap;
use std::sync::Arc;

use adclick_core::billing::FraudSchedule;
use adclick_core::fraud::FraudList;
use adclick_core::ids::{FraudListVersion, PartitionId};
use adclick_engine::checkpoint::CheckpointStore;
use adclick_engine::fraud_lists::{FraudListStore, fraud_list_key};
use adclick_engine::seams::BlobStore;

use crate::job::BillingError;

/// The schedule of `partitions` partitions, and the keys it was read from (for the audit
/// record; a `checkpoints/lists/` entry marks a run judged as the workers judged).
pub async fn workers_schedule(
    checkpoints: Arc<dyn BlobStore>,
    partitions: u32,
    fallback: Arc<FraudList>,
) -> Result<(FraudSchedule, Vec<String>), BillingError> {
    let histories = CheckpointStore::new(checkpoints.clone());
    let lists = FraudListStore::new(checkpoints);
    let mut loaded: BTreeMap<FraudListVersion, Arc<FraudList>> = BTreeMap::new();
    let mut schedule = FraudSchedule::single(fallback);
    let mut inputs = Vec::new();
    for partition in (0..partitions).map(PartitionId) {
        let history = histories
            .list_history(partition)
            .await
            .map_err(|error| input_error(partition, error))?;
        let mut changes = Vec::with_capacity(history.changes.len());
        for change in &history.changes {
            let list = match loaded.get(&change.version) {
                Some(list) => list.clone(),
                None => {
                    let list = Arc::new(lists.load(change.version).await.map_err(|error| {
                        BillingError::Input(format!(
                            "fraud list version {} judged partition {partition} from offset {}, \
                             and it cannot be read back: {error}",
                            change.version.0, change.from_offset.0
                        ))
                    })?);
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

fn input_error(partition: PartitionId, error: impl std::fmt::Display) -> BillingError {
    BillingError::Input(format!(
        "reading partition {partition}'s fraud-list history from the checkpoint store: {error}"
    ))
}

/// Whether a billing run judged its clicks with the workers' lists (its `input_files` name
/// their history), so a fraud difference left in reconciliation is not a list change.
pub fn judged_as_workers(input_files: &[String]) -> bool {
    input_files
        .iter()
        .any(|file| file.starts_with("checkpoints/lists/"))
}
