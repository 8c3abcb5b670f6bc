//! The load generator: drives a scenario's traffic (from `adclick-traffic`) against a running
//! engine, open loop, and measures what the engine did with it.
//!
//! - `http`: `adclick load --target http://HOST:PORT`, batches of NDJSON to `POST /v1/clicks`.
//! - `kafka`: `--target kafka://BROKERS/TOPIC`, records produced straight to the topic.
//! - `monitor`: the server-side view during a run (freshness, lag, drained partitions).
//! - `search`: the max-rate search, a bisection over trials that must keep every invariant.
//! - `report`: the JSON, Markdown and HTML (with plots) report of a run.
//!
//! **Invariant:** open loop. A send is due at its intended time whether or not earlier sends
//! were answered, and latency is measured from that time (no coordinated omission).

use hdrhistogram::Histogram;
use serde::Serialize;

pub mod http;
pub mod kafka;
pub mod monitor;
pub mod report;
pub mod search;

#[derive(Serialize)]
pub struct LoadReport {
    pub scenario: String,
    pub target: String,
    pub connections: usize,
    pub batch_events: usize,
    pub target_rate_per_s: u64,
    pub achieved_rate_per_s: f64,
    pub duration_s: f64,
    pub events_accepted: u64,
    pub events_rejected: u64,
    pub requests_ok: u64,
    pub requests_busy: u64,
    pub requests_failed: u64,
    pub ack_latency_ms: Percentiles,
    pub ack_latency_raw_ms: Percentiles,
}

#[derive(Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

pub fn percentiles(histogram: &Histogram<u64>) -> Percentiles {
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        p50: ms(histogram.value_at_quantile(0.50)),
        p90: ms(histogram.value_at_quantile(0.90)),
        p99: ms(histogram.value_at_quantile(0.99)),
        p99_9: ms(histogram.value_at_quantile(0.999)),
        max: ms(histogram.max()),
    }
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

impl LoadReport {
    /// The report as the CLI prints it.
    pub fn print(&self) {
        let row = |name: &str, p: &Percentiles| {
            println!(
                "  {name:<22} p50 {:.2} ms  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                p.p50, p.p90, p.p99, p.p99_9, p.max
            )
        };
        println!();
        println!("  target rate            {}/s", self.target_rate_per_s);
        println!(
            "  achieved rate          {:.0}/s over {:.1} s",
            self.achieved_rate_per_s, self.duration_s
        );
        println!(
            "  events accepted        {} (rejected {})",
            self.events_accepted, self.events_rejected
        );
        println!(
            "  requests               {} ok, {} busy (503), {} failed",
            self.requests_ok, self.requests_busy, self.requests_failed
        );
        row("ack latency (intended)", &self.ack_latency_ms);
        row("ack latency (raw)", &self.ack_latency_raw_ms);
    }
}
