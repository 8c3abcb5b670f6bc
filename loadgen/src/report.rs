//! Run reports: JSON for machines, a Markdown summary, and one self-contained HTML page with SVG
//! plots (plotters): throughput with the fault timeline, latency percentiles, freshness, lag,
//! per-partition load, and the invariant verdicts.

use std::fmt::Write as _;
use std::path::Path;

use adclick_harness::measure::{Distribution, Measurements};
use adclick_harness::run::RunReport;
use anyhow::Context;
use plotters::prelude::*;

const WIDTH: u32 = 760;
const HEIGHT: u32 = 300;

/// Writes `NAME.json`, `NAME.md` and `NAME.html` into `dir`. Returns the HTML path.
pub fn write(dir: &Path, name: &str, report: &RunReport, command: &str) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(dir.join(format!("{name}.json")), json)?;
    std::fs::write(dir.join(format!("{name}.md")), markdown(report, command))?;
    let html_path = dir.join(format!("{name}.html"));
    std::fs::write(&html_path, html(report, command)?)?;
    Ok(html_path.display().to_string())
}

fn markdown(report: &RunReport, command: &str) -> String {
    let m = &report.measurements;
    let mut out = String::new();
    let _ = writeln!(out, "# {} (seed {})\n", report.scenario, report.seed);
    let _ = writeln!(out, "Command: `{command}`\n");
    let _ = writeln!(
        out,
        "- target {} clicks/s, achieved {:.0}/s over {:.1} s on {} partitions",
        report.target_rate_per_s, report.achieved_rate_per_s, report.traffic_s, report.partitions
    );
    let row = |name: &str, d: &Distribution| {
        format!(
            "- {name}: p50 {:.2} ms, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2} ({} samples)\n",
            d.summary.p50,
            d.summary.p90,
            d.summary.p99,
            d.summary.p99_9,
            d.summary.max,
            d.summary.count
        )
    };
    out.push_str(&row("ack latency (from intended send)", &m.ack_latency_ms));
    out.push_str(&row("ack latency (raw)", &m.ack_latency_raw_ms));
    out.push_str(&row("click-to-count freshness", &m.freshness_ms));
    let _ = writeln!(out, "\n| invariant | verdict | detail |\n|---|---|---|");
    for verdict in &report.verdicts {
        let status = match (verdict.checked, verdict.holds) {
            (false, _) => "skip",
            (true, true) => "PASS",
            (true, false) => "FAIL",
        };
        let _ = writeln!(
            out,
            "| {} | {status} | {} |",
            verdict.invariant,
            verdict.detail.replace('|', "/").replace('\n', " ")
        );
    }
    out
}

fn html(report: &RunReport, command: &str) -> anyhow::Result<String> {
    let m = &report.measurements;
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>adclick: {name}</title>\
         <style>body{{font-family:sans-serif;max-width:800px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}\
         .PASS{{color:#070}}.FAIL{{color:#b00;font-weight:bold}}.skip{{color:#777}}\
         code{{background:#f4f4f4;padding:2px 4px}}</style></head><body>\
         <h1>{name} <small>seed {seed}</small></h1><p><code>{command}</code></p>\
         <p>Target {target} clicks/s, achieved <b>{achieved:.0}/s</b> over {secs:.1} s on {partitions} partitions; \
         {accepted} clicks accepted, {dups} duplicates dropped, {late} late, {fraud} fraud.</p>",
        name = escape(&report.scenario),
        seed = report.seed,
        command = escape(command),
        target = report.target_rate_per_s,
        achieved = report.achieved_rate_per_s,
        secs = report.traffic_s,
        partitions = report.partitions,
        accepted = report.accepted,
        dups = report.duplicates_dropped,
        late = report.late_clicks,
        fraud = report.fraud_clicks,
    );
    page.push_str(
        "<h2>Invariants</h2><table><tr><th>invariant</th><th>verdict</th><th>detail</th></tr>",
    );
    for verdict in &report.verdicts {
        let status = match (verdict.checked, verdict.holds) {
            (false, _) => "skip",
            (true, true) => "PASS",
            (true, false) => "FAIL",
        };
        let _ = write!(
            page,
            "<tr><td>{}</td><td class=\"{status}\">{status}</td><td>{}</td></tr>",
            verdict.invariant,
            escape(&verdict.detail)
        );
    }
    page.push_str("</table>");
    page.push_str("<h2>Throughput, with the fault timeline</h2>");
    page.push_str(&throughput_svg(m, report.target_rate_per_s)?);
    page.push_str("<h2>Ack latency by percentile</h2><p>Corrected: from the time each request was due (coordinated-omission-safe). Raw: from the actual send.</p>");
    page.push_str(&percentile_svg(&[
        ("corrected", &m.ack_latency_ms, BLUE),
        ("raw", &m.ack_latency_raw_ms, RED),
    ])?);
    page.push_str("<h2>Click-to-count freshness by percentile</h2><p>Tagged sample clicks (durable ack), until their partition's committed offset passes them in the store.</p>");
    page.push_str(&percentile_svg(&[("freshness", &m.freshness_ms, GREEN)])?);
    page.push_str("<h2>Consumer lag and watermark delay</h2>");
    page.push_str(&lag_svg(m)?);
    page.push_str("<h2>Per-partition load</h2>");
    page.push_str(&partition_svg(&m.partition_records)?);
    page.push_str("</body></html>\n");
    Ok(page)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn plot_error<E: std::fmt::Display>(error: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {error}")
}

fn throughput_svg(m: &Measurements, target: u64) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let t_max = m
            .timeline
            .last()
            .map_or(1.0, |p| p.t_ms as f64 / 1000.0)
            .max(1.0);
        let y_max = m
            .timeline
            .iter()
            .map(|p| p.rate_per_s)
            .fold(target as f64, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max.max(1.0))
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc("accepted clicks/s")
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(LineSeries::new(
                m.timeline
                    .iter()
                    .skip(1)
                    .map(|p| (p.t_ms as f64 / 1000.0, p.rate_per_s)),
                BLUE.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label("achieved")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(
                [(0.0, target as f64), (t_max, target as f64)],
                BLACK.mix(0.4),
            ))
            .map_err(plot_error)?
            .label("target")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
        for fault in &m.faults {
            let t = fault.t_ms as f64 / 1000.0;
            chart
                .draw_series(LineSeries::new([(t, 0.0), (t, y_max)], RED.stroke_width(1)))
                .map_err(plot_error)?;
        }
        if !m.faults.is_empty() {
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(0.0, 0.0)], RED)))
                .map_err(plot_error)?
                .label("fault (worker killed, ...)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn percentile_svg(series: &[(&str, &Distribution, RGBColor)]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let labels: Vec<f64> = series
            .iter()
            .find(|(_, d, _)| !d.curve.is_empty())
            .map(|(_, d, _)| d.curve.iter().map(|(p, _)| *p).collect())
            .unwrap_or_default();
        let y_max = series
            .iter()
            .flat_map(|(_, d, _)| d.curve.iter().map(|(_, ms)| *ms))
            .fold(1.0, f64::max)
            * 1.1;
        let points = labels.len().max(2);
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..(points - 1) as f64, 0.0..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("ms")
            .x_labels(points)
            .x_label_formatter(&|x| {
                labels
                    .get(x.round() as usize)
                    .map(|p| format!("p{p}"))
                    .unwrap_or_default()
            })
            .draw()
            .map_err(plot_error)?;
        for (name, distribution, color) in series {
            let color = *color;
            chart
                .draw_series(LineSeries::new(
                    distribution
                        .curve
                        .iter()
                        .enumerate()
                        .map(|(index, (_, ms))| (index as f64, *ms)),
                    color.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(format!(
                    "{name}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    distribution.summary.p50, distribution.summary.p99, distribution.summary.max
                ))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn lag_svg(m: &Measurements) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let t_max = m
            .timeline
            .last()
            .map_or(1.0, |p| p.t_ms as f64 / 1000.0)
            .max(1.0);
        let lag =
            |p: &adclick_harness::measure::TimelinePoint| p.lag_records.iter().sum::<u64>() as f64;
        let lag_max = m.timeline.iter().map(lag).fold(1.0, f64::max) * 1.1;
        let delay_max = m
            .timeline
            .iter()
            .map(|p| p.watermark_delay_ms as f64 / 1000.0)
            .fold(1.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .right_y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..lag_max)
            .map_err(plot_error)?
            .set_secondary_coord(0.0..t_max, 0.0..delay_max);
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc("records not yet committed (all partitions)")
            .draw()
            .map_err(plot_error)?;
        chart
            .configure_secondary_axes()
            .y_desc("watermark delay, s")
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(LineSeries::new(
                m.timeline.iter().map(|p| (p.t_ms as f64 / 1000.0, lag(p))),
                BLUE.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label("consumer lag (records)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_secondary_series(LineSeries::new(
                m.timeline
                    .iter()
                    .map(|p| (p.t_ms as f64 / 1000.0, p.watermark_delay_ms as f64 / 1000.0)),
                MAGENTA.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label("slowest watermark delay (s)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], MAGENTA));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn partition_svg(records: &[u64]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let y_max = records.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
        let count = records.len().max(1) as u32;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d((0u32..count).into_segmented(), 0.0..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("partition")
            .y_desc("records")
            .draw()
            .map_err(plot_error)?;
        let hottest = records
            .iter()
            .enumerate()
            .max_by_key(|(_, records)| **records)
            .map(|(index, _)| index);
        chart
            .draw_series(records.iter().enumerate().map(|(index, value)| {
                let color = if Some(index) == hottest { RED } else { BLUE };
                let x0 = SegmentValue::Exact(index as u32);
                let x1 = SegmentValue::Exact(index as u32 + 1);
                Rectangle::new([(x0, 0.0), (x1, *value as f64)], color.mix(0.7).filled())
            }))
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}
