//! `adclick rebuild --config adclick.toml --from MS [--to MS]`: replays the log into the
//! real-time store (README.md, "Rebuilding the store"; the rules are in `engine::rebuild`).

use std::path::Path;
use std::process::ExitCode;

use adclick_engine::rebuild::RebuildRange;
use adclick_server::config::ServeConfig;
use adclick_server::rebuild::Judging;

pub fn main(
    config_path: &Path,
    from_ms: u64,
    to_ms: Option<u64>,
    current_fraud_list: bool,
) -> anyhow::Result<ExitCode> {
    let config = ServeConfig::load(config_path)?;
    let range = RebuildRange {
        from_ms,
        to_ms: to_ms.unwrap_or(u64::MAX),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rebuilt = runtime.block_on(adclick_server::rebuild::run(
        &config,
        range,
        judging(current_fraud_list),
    ))?;
    for partition in &rebuilt {
        println!(
            "partition {}: offsets {}..{}, {} records, {} series written, {} restored from \
             checkpoints, generation {}{}",
            partition.partition,
            partition.first_offset.0,
            partition.end_offset.0,
            partition.stats.records,
            partition.series_written,
            partition.series_restored,
            partition.generation.0,
            if partition.dedup_warm {
                ""
            } else {
                " (the log starts less than one dedup horizon before --from: duplicates of \
                 clicks older than the log are not caught)"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn judging(current_fraud_list: bool) -> Judging {
    if current_fraud_list {
        Judging::CurrentList
    } else {
        Judging::AsTheWorkersDid
    }
}
