//! `adclick rebuild --config adclick.toml --from MS [--to MS]`: the engine's rebuild
//! (`adclick_engine::rebuild`, which has the rules) on the seams `adclick serve` would use with
//! the same config: its log, store, checkpoints, `[engine]` settings and `[fraud] list`.

use std::sync::Arc;

use adclick_core::billing::FraudSchedule;
use adclick_core::fraud::FraudList;
use adclick_engine::checkpoint::CheckpointStore;
use adclick_engine::judged_lists::workers_schedule;
use adclick_engine::rebuild::{PartitionRebuild, RebuildEnv, RebuildRange, rebuild};
use anyhow::Context;

use crate::config::{LogConfig, ServeConfig, StoreConfig};
use crate::serve::Seams;

/// Which fraud list judges the replayed clicks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judging {
    /// The version the workers' checkpoints name for each click's offset (the config's list
    /// where a partition has none): history recounted as it was judged, so it agrees with
    /// billing.
    AsTheWorkersDid,
    /// The config's `[fraud] list` for all of history.
    CurrentList,
}

/// Rebuilds every partition's series starting in `range` from the configured log.
pub async fn run(
    config: &ServeConfig,
    range: RebuildRange,
    judging: Judging,
) -> anyhow::Result<Vec<PartitionRebuild>> {
    anyhow::ensure!(
        range.from_ms < range.to_ms,
        "--from {} must be before --to {}",
        range.from_ms,
        range.to_ms
    );
    anyhow::ensure!(
        config.log != LogConfig::Memory && config.store != StoreConfig::Memory,
        "rebuild reads a log and writes a store that outlive this process: log.kind must be \
         \"file\" or \"kafka\" and store.kind \"redis\" (the embedded ones are gone at exit)"
    );
    if config.checkpoints.url.is_none() {
        tracing::warn!(
            "checkpoints.url is not set: the rebuild's claims are recorded in memory only, and \
             nothing the workers wrote outside the range can be written back"
        );
    }
    let fraud_list = match &config.fraud.list {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("fraud.list {}", path.display()))?;
            FraudList::parse(&text).with_context(|| format!("fraud.list {}", path.display()))?
        }
        None => FraudList::empty(),
    };
    let seams = Seams::from_config(config).await?;
    let fraud_list = Arc::new(fraud_list);
    let fraud = match judging {
        Judging::CurrentList => FraudSchedule::single(fraud_list),
        Judging::AsTheWorkersDid => {
            let partitions = config.engine.partitions;
            workers_schedule(seams.blobs.clone(), partitions, fraud_list)
                .await?
                .0
        }
    };
    let env = RebuildEnv {
        log: seams.log,
        store: seams.store,
        checkpoints: CheckpointStore::new(seams.blobs),
        clock: seams.clock,
        fraud,
    };
    Ok(rebuild(&env, config.aggregator_config(), range).await?)
}
