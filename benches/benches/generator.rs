//! The load generator's own speed: it must never be the bottleneck at 500k events/s, so the
//! goal is at least 5M events/s on one core (issue: load generator).
//!
//! `cargo bench -p adclick-benches --bench generator`

use adclick_engine::scenario::Scenario;
use adclick_traffic::{GeneratedBatch, Generator};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn scenario(extra: &str) -> Scenario {
    let text = format!(
        r#"
version = 1
name = "generator-bench"
seed = 1
[traffic]
rate_per_s = 500000
duration_s = 1000.0
campaigns = 10000
ads_per_campaign = 10
{extra}
"#
    );
    Scenario::parse(&text, "generator-bench").unwrap()
}

fn generate(c: &mut Criterion) {
    let mut group = c.benchmark_group("generator");
    const BATCH: usize = 2_000;
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, extra) in [
        ("plain", ""),
        (
            "anomalies",
            "[anomalies]\nduplicate_fraction = 0.05\nduplicate_delay_ms = 1000\nlate_fraction = 0.02\nlate_lag_ms = 10000\nbot_fraction = 0.02\nviral_campaign_share = 0.5\nviral_ramp_s = 3.0",
        ),
    ] {
        let mut generator = Generator::new(&scenario(extra));
        let mut batch = GeneratedBatch::default();
        let mut now_ms = 1_800_000_000_000u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                now_ms += 4;
                batch.clear();
                generator.next_batch(now_ms, now_ms - 1_800_000_000_000, BATCH, &mut batch);
                std::hint::black_box(batch.events.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, generate);
criterion_main!(benches);
