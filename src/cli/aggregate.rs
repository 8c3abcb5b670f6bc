//! `adclick aggregate --input FILE`: batch mode over a file of JSON clicks through the same
//! operator chain as the streaming workers. Prints one CSV row per (window, campaign, ad):
//! `window_start_ms,campaign_id,ad_id,clicks,unique,fraud,late,unverified`, where `unique` counts
//! on-time billable clicks, `late` the billable clicks that arrived after their window closed,
//! and `unverified` the clicks dedup could no longer decide (README.md, "Lanes and bounds").
//! Quarantined records (event times ingest could not have accepted at `--now-ms`, or without it
//! far older than the newest click so far) are named on stderr with their line numbers, never
//! silently skipped.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use adclick_core::event::{TimeBound, parse_json_click};
use adclick_core::fraud::FraudList;
use adclick_core::ids::{Epoch, Offset, PartitionId, Salt};
use adclick_core::operator::{AggregatorConfig, PartitionAggregator, Series, SeriesUpdate};
use adclick_core::window::{Counts, Lane, WindowKey};
use anyhow::Context;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum InputFormat {
    /// One JSON click per line.
    Ndjson,
}

/// A CSV row's key, (window start, campaign, ad), and its counts: `Counts` for clicks, on-time
/// unique and fraud, then late unique, then unverified clicks.
type Rows = BTreeMap<(u64, u64, u64), (Counts, u64, u64)>;

pub fn main(
    input: &Path,
    _format: InputFormat,
    fraud_list: Option<&Path>,
    now_ms: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let list = match fraud_list {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            FraudList::parse(&text).with_context(|| format!("{}", path.display()))?
        }
        None => FraudList::empty(),
    };
    let mut aggregator =
        PartitionAggregator::new(AggregatorConfig::default(), PartitionId(0), Arc::new(list));
    feed(&mut aggregator, input, now_ms)?;
    aggregator.on_watermark(u64::MAX);
    let output = aggregator.on_barrier(Epoch(1));
    write_csv(&rows(&output.updates))?;
    Ok(ExitCode::SUCCESS)
}

/// Every click of the file, in order, one offset each; a quarantined one is named on stderr.
fn feed(
    aggregator: &mut PartitionAggregator,
    input: &Path,
    now_ms: Option<u64>,
) -> anyhow::Result<()> {
    // Without `--now-ms`, the clock follows the data (the largest event time so far), as for a
    // replay of history: nothing is ahead of it, and only what is absurdly older is quarantined.
    let mut data_clock_ms = 0u64;
    let file =
        std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let mut offset = 0u64;
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", input.display(), index + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = parse_json_click(line.as_bytes(), TimeBound::None).map_err(|rejection| {
            anyhow::anyhow!("{}: line {}: {rejection}", input.display(), index + 1)
        })?;
        data_clock_ms = data_clock_ms.max(event.event_time_ms.0);
        let processing_ms = now_ms.unwrap_or(data_clock_ms);
        if let Err(problem) =
            aggregator.on_click(Offset(offset), &event.view(Salt(0)), processing_ms)
        {
            eprintln!("{}: line {}: {problem}", input.display(), index + 1);
        }
        offset += 1;
    }
    Ok(())
}

/// The window updates summed per (window, campaign, ad) over salts and lanes.
fn rows(updates: &[SeriesUpdate]) -> Rows {
    let mut rows = Rows::new();
    for update in updates {
        let Series::Window(WindowKey {
            campaign_id,
            ad_id,
            window_start_ms,
            ..
        }) = update.series
        else {
            continue;
        };
        let row = rows
            .entry((window_start_ms, campaign_id.0, ad_id.0))
            .or_default();
        row.0.clicks += update.counts.clicks;
        match update.lane {
            Lane::OnTime => row.0.unique += update.counts.unique,
            Lane::Late => row.1 += update.counts.unique,
            Lane::Unverified => row.2 += update.counts.clicks,
        }
        if update.lane.is_verified() {
            row.0.fraud += update.counts.fraud;
        }
    }
    rows
}

fn write_csv(rows: &Rows) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    writeln!(
        out,
        "window_start_ms,campaign_id,ad_id,clicks,unique,fraud,late,unverified"
    )?;
    for ((window_start_ms, campaign_id, ad_id), (counts, late, unverified)) in rows {
        writeln!(
            out,
            "{window_start_ms},{campaign_id},{ad_id},{},{},{},{late},{unverified}",
            counts.clicks, counts.unique, counts.fraud
        )?;
    }
    out.flush()?;
    Ok(())
}
