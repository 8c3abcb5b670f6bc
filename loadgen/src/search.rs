//! `adclick load SCENARIO --target inproc --max-rate-search`: the highest rate at which the
//! whole engine keeps the rate (95%), keeps the ack p99 under the scenario's bound, and keeps
//! every invariant. That is the "correct at X events/s" figure.
//!
//! A bisection over the rate with short trials of the scenario (same seed, same mix); each
//! trial is a full run with the oracle's checks.

use std::process::ExitCode;

use adclick_engine::scenario::Scenario;
use adclick_harness::run::{RunOptions, run_scenario};
use serde::Serialize;

#[derive(Serialize)]
struct Trial {
    rate_per_s: u64,
    achieved_per_s: f64,
    ack_p99_ms: f64,
    freshness_p99_ms: f64,
    invariants_hold: bool,
    holds: bool,
}

#[derive(Serialize)]
struct Search {
    scenario: String,
    trial_s: f64,
    ack_p99_ms_max: f64,
    max_rate_per_s: u64,
    trials: Vec<Trial>,
}

/// Where a trial runs: the whole engine in process (every invariant checked by the oracle), or a
/// running `adclick serve` over HTTP (the rate, and every partition drained afterwards).
pub enum SearchTarget {
    Inproc,
    Http { base: String, connections: usize },
}

pub fn main(
    scenario: &Scenario,
    target: SearchTarget,
    trial_s: f64,
    trials_max: usize,
    json: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let bound = scenario.expect.ack_p99_ms_max;
    let mut low = 0u64;
    let mut high = scenario.traffic.rate_per_s.max(1000) * 2;
    let mut trials = Vec::new();
    let bound_text = if bound > 0.0 {
        format!("{bound} ms")
    } else {
        "none".into()
    };
    eprintln!(
        "max-rate search on {}: {trial_s} s trials, between 0 and {high} clicks/s, ack p99 bound {bound_text}",
        scenario.name,
    );
    for _ in 0..trials_max {
        let rate = if low == 0 && trials.is_empty() {
            scenario.traffic.rate_per_s
        } else {
            (low + high) / 2
        };
        if high - low <= high / 50 {
            break;
        }
        let trial = run_trial(&runtime, scenario, &target, rate, trial_s, trials.len())?;
        if trial.holds {
            low = rate;
        } else {
            high = rate;
        }
        trials.push(trial);
    }
    println!(
        "correct at {low} clicks/s ({} trials of {trial_s} s)",
        trials.len()
    );
    let search = Search {
        scenario: scenario.name.clone(),
        trial_s,
        ack_p99_ms_max: bound,
        max_rate_per_s: low,
        trials,
    };
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&search)?)?;
    }
    Ok(if low > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One trial of the scenario at `rate` for `trial_s`: it holds if every invariant holds and the
/// ack p99 is within the scenario's bound (if it sets one).
fn run_trial(
    runtime: &tokio::runtime::Runtime,
    scenario: &Scenario,
    target: &SearchTarget,
    rate: u64,
    trial_s: f64,
    index: usize,
) -> anyhow::Result<Trial> {
    let mut trial = scenario.clone();
    trial.traffic.rate_per_s = rate;
    trial.traffic.duration_s = trial_s;
    trial.expect.min_rate_fraction = 0.95;
    let report = match target {
        SearchTarget::Inproc => runtime.block_on(run_scenario(&trial, RunOptions::default()))?,
        SearchTarget::Http { base, connections } => {
            // A fresh seed per trial, so no trial's clicks are resends of another's.
            trial.seed = scenario.seed.wrapping_add(index as u64 + 1);
            runtime
                .block_on(crate::http::drive(&trial, base, *connections))?
                .1
        }
    };
    let bound = scenario.expect.ack_p99_ms_max;
    let ack_p99_ms = report.measurements.ack_latency_ms.summary.p99;
    let invariants_hold = report.passed;
    let holds = invariants_hold && (bound <= 0.0 || ack_p99_ms <= bound);
    eprintln!(
        "  {rate:>9}/s: achieved {:>9.0}/s, ack p99 {ack_p99_ms:>8.1} ms, invariants {}: {}",
        report.achieved_rate_per_s,
        if invariants_hold { "hold" } else { "FAIL" },
        if holds { "holds" } else { "does not hold" }
    );
    Ok(Trial {
        rate_per_s: rate,
        achieved_per_s: report.achieved_rate_per_s,
        ack_p99_ms,
        freshness_p99_ms: report.measurements.freshness_ms.summary.p99,
        invariants_hold,
        holds,
    })
}
