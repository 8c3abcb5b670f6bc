//! Billing as the workers judged: `adclick_engine::judged_lists` reads their fraud lists back;
//! this names a run that used them.

use std::sync::Arc;

use adclick_core::billing::FraudSchedule;
use adclick_core::fraud::FraudList;
use adclick_engine::seams::BlobStore;

use crate::job::BillingError;

/// The workers' schedule of `partitions` partitions and the keys it was read from.
pub async fn workers_schedule(
    checkpoints: Arc<dyn BlobStore>,
    partitions: u32,
    fallback: Arc<FraudList>,
) -> Result<(FraudSchedule, Vec<String>), BillingError> {
    adclick_engine::judged_lists::workers_schedule(checkpoints, partitions, fallback)
        .await
        .map_err(|error| BillingError::Input(error.to_string()))
}

/// Whether a billing run judged its clicks with the workers' lists (its `input_files` name
/// their history), so a fraud difference left in reconciliation is not a list change.
pub fn judged_as_workers(input_files: &[String]) -> bool {
    input_files
        .iter()
        .any(|file| file.starts_with("checkpoints/lists/"))
}
