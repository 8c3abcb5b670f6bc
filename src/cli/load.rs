//! `adclick load SCENARIO --target http://HOST:PORT | kafka://BROKERS/TOPIC`: a thin shell over
//! `adclick-loadgen`, which drives the traffic and measures it.

use std::path::Path;
use std::process::ExitCode;

use adclick_engine::scenario::Scenario;
use adclick_loadgen::LoadReport;
use anyhow::Context;

pub fn main(
    scenario_path: &Path,
    target: &str,
    connections: usize,
    json: Option<&Path>,
    report_dir: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let scenario = Scenario::load(scenario_path)?;
    if target.starts_with("kafka://") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let report = runtime.block_on(adclick_loadgen::kafka::drive(
            &scenario,
            target,
            connections,
        ))?;
        report.print();
        write_json(json, &report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let base = target.trim_end_matches('/').to_owned();
    if !base.starts_with("http://") {
        anyhow::bail!(
            "--target {target:?}: use inproc, http://HOST:PORT or kafka://BROKERS/TOPIC?partitions=N"
        );
    }
    anyhow::ensure!(connections > 0, "--connections must be at least 1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (report, run_report) =
        runtime.block_on(adclick_loadgen::http::drive(&scenario, &base, connections))?;
    report.print();
    println!(
        "  click-to-count freshness p50 {:.0} ms, p99 {:.0} ms ({} samples)",
        run_report.measurements.freshness_ms.summary.p50,
        run_report.measurements.freshness_ms.summary.p99,
        run_report.measurements.freshness_ms.summary.count
    );
    if let Some(dir) = report_dir {
        let command: Vec<String> = std::env::args().collect();
        let name = format!("{}-http", scenario.name);
        let html = adclick_loadgen::report::write(dir, &name, &run_report, &command.join(" "))?;
        println!("\nreport: {html} (and .json, .md)");
    }
    write_json(json, &report)?;
    Ok(ExitCode::SUCCESS)
}

fn write_json(json: Option<&Path>, report: &LoadReport) -> anyhow::Result<()> {
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("--json {}", path.display()))?;
    }
    Ok(())
}
