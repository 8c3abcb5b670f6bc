//! `adclick run SCENARIO`: exit code 0 only if every expected invariant holds.

use std::path::Path;
use std::process::ExitCode;

use adclick_engine::scenario::{Invariant, Scenario};

use super::billing_check::billing_verdict;
use adclick_harness::run::{RunOptions, RunReport, run_scenario};
use anyhow::Context;

pub fn main(
    path: &Path,
    json: Option<&Path>,
    progress: bool,
    log_dir: Option<std::path::PathBuf>,
    report_dir: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let scenario = Scenario::load(path)?;
    if let Some(dir) = &log_dir
        && std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
    {
        // The oracle checks the run's clicks against the whole log, so the log must start empty.
        anyhow::bail!("--log-dir {}: must be empty or absent", dir.display());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    eprintln!(
        "running {} ({}): {} clicks/s for {} s on {} partitions, seed {}",
        scenario.name,
        path.display(),
        scenario.traffic.rate_per_s,
        scenario.traffic.duration_s,
        scenario.engine.partitions,
        scenario.seed
    );
    let options = RunOptions {
        progress,
        log_dir,
        ..RunOptions::default()
    };
    let mut report = runtime.block_on(run_scenario(&scenario, options))?;
    if scenario.expects(Invariant::BillingEquality)
        && let Some(artifacts) = report.artifacts.take()
    {
        let verdict = runtime.block_on(billing_verdict(&scenario, &artifacts));
        report
            .verdicts
            .retain(|verdict| verdict.invariant != "billing_equality");
        report.verdicts.push(verdict);
        report.passed = report.verdicts.iter().all(|verdict| verdict.holds);
    }
    print_summary(&report);
    if let Some(dir) = report_dir {
        let command: Vec<String> = std::env::args().collect();
        let html =
            adclick_loadgen::report::write(dir, &scenario.name, &report, &command.join(" "))?;
        println!("\nreport: {html} (and .json, .md)");
    }
    if let Some(json) = json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(json, text).with_context(|| format!("writing {}", json.display()))?;
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_summary(report: &RunReport) {
    let rows: [(&str, String); 14] = [
        ("target rate", format!("{}/s", report.target_rate_per_s)),
        (
            "achieved rate",
            format!(
                "{:.0}/s over {:.1} s",
                report.achieved_rate_per_s, report.traffic_s
            ),
        ),
        ("clicks accepted", report.accepted.to_string()),
        ("clicks rejected", report.rejected.to_string()),
        ("busy answers (retried)", report.busy_answers.to_string()),
        ("duplicates dropped", report.duplicates_dropped.to_string()),
        ("late clicks", report.late_clicks.to_string()),
        ("fraud clicks", report.fraud_clicks.to_string()),
        (
            "unique billable clicks",
            report.unique_billable_clicks.to_string(),
        ),
        (
            "worker kills injected",
            report.worker_crashes_injected.to_string(),
        ),
        ("worker restarts", report.worker_restarts.to_string()),
        (
            "store errors injected",
            report.store_errors_injected.to_string(),
        ),
        ("drain after traffic", format!("{} ms", report.drain_ms)),
        ("partitions", report.partitions.to_string()),
    ];
    println!();
    for (name, value) in rows {
        println!("  {name:<24} {value}");
    }
    println!();
    for verdict in &report.verdicts {
        let status = match (verdict.checked, verdict.holds) {
            (false, _) => "SKIP",
            (true, true) => "PASS",
            (true, false) => "FAIL",
        };
        println!("  {status}  {:<14} {}", verdict.invariant, verdict.detail);
    }
    println!();
    println!("verdict: {}", if report.passed { "PASS" } else { "FAIL" });
}
