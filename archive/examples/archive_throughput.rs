//! Measures the Parquet writer and the billing reader on generated clicks (not a test: no
//! asserts on time). `cargo run --release -p adclick-archive --example archive_throughput [ROWS]`

use std::time::Instant;

use adclick_archive::parquet_io::write_parquet_with;
use adclick_archive::schema::{ArchiveRow, writer_properties_tuned};
use adclick_archive::{read_billing_rows, write_parquet};
use adclick_core::ids::{Offset, PartitionId, Salt};
use adclick_engine::scenario::Scenario;
use adclick_traffic::{GeneratedBatch, Generator};

const START_MS: u64 = 1_800_000_000_000;

fn rows(count: usize) -> Vec<ArchiveRow> {
    let text = "version = 1\nname = \"m\"\nseed = 5\n[traffic]\nrate_per_s = 100000\nduration_s = 10.0\ncampaigns = 1000\nads_per_campaign = 5\n[anomalies]\nduplicate_fraction = 0.05\nduplicate_delay_ms = 300\nlate_fraction = 0.02\nlate_lag_ms = 9000\nbot_fraction = 0.02\n";
    let scenario = Scenario::parse(text, "measure").expect("valid scenario");
    let mut generator = Generator::new(&scenario);
    let mut batch = GeneratedBatch::default();
    let mut out = Vec::with_capacity(count);
    let mut now_ms = START_MS;
    while out.len() < count {
        batch.clear();
        generator.next_batch(
            now_ms,
            now_ms - START_MS,
            1000.min(count - out.len()),
            &mut batch,
        );
        for event in &batch.events {
            out.push(ArchiveRow {
                partition: PartitionId(0),
                offset: Offset(out.len() as u64),
                salt: Salt(0),
                click: event.clone(),
            });
        }
        now_ms += 10;
    }
    out
}

fn best_of<T>(runs: usize, mut work: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::MAX;
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        let value = work();
        best = best.min(started.elapsed().as_secs_f64());
        last = Some(value);
    }
    (best, last.expect("at least one run"))
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .map_or(1_000_000, |text| text.parse().expect("ROWS is a number"));
    let rows = rows(count);
    let (write_s, bytes) = best_of(3, || write_parquet(&rows).expect("write"));
    let (plain_s, plain) = best_of(3, || {
        write_parquet_with(&rows, writer_properties_tuned(false)).expect("write")
    });
    let (read_s, billing) = best_of(3, || {
        read_billing_rows("measure", bytes.clone()).expect("read")
    });
    assert_eq!(billing.len(), count);
    let per_row = |bytes: usize| bytes as f64 / count as f64;
    println!("rows: {count}");
    println!(
        "write, text dictionaries on:  {:.2}M rows/s, {:.1} B/row ({} bytes)",
        count as f64 / write_s / 1e6,
        per_row(bytes.len()),
        bytes.len()
    );
    println!(
        "write, text dictionaries off: {:.2}M rows/s, {:.1} B/row ({} bytes)",
        count as f64 / plain_s / 1e6,
        per_row(plain.len()),
        plain.len()
    );
    println!(
        "read, billing projection:     {:.2}M rows/s",
        count as f64 / read_s / 1e6
    );
}
