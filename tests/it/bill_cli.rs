//! `adclick bill` through the real binary, for issue 19, item 4. It used to bill whatever was
//! archived once the wall-clock grace had passed, so a lagging archiver meant a silent
//! under-bill. Now it refuses (non-zero, naming the partition and its lag) until every
//! partition's manifest is caught up past the period's end plus the grace, bills
//! provisionally with `--allow-incomplete`, and bills a billed period again as a correction.

use std::process::{Command, Output};
use std::sync::Arc;

use adclick_archive::{Archiver, ArchiverConfig};
use adclick_billing::sqlite::SqliteBillingStore;
use adclick_billing::store::{BillingStore, RunKind};
use adclick_core::ids::PartitionId;
use adclick_engine::clock::ManualClock;
use adclick_engine::embedded::MemoryLog;
use adclick_engine::scenario::Scenario;
use adclick_engine::seams::{AppendBatch, BlobStore, Log, RecordBlock};
use adclick_io::blobs::{BlobConfig, ObjectBlobStore};
use adclick_traffic::{GeneratedBatch, Generator};

const HOUR_MS: u64 = 3_600_000;
/// A period long past, so the wall-clock grace is over; the archive's marks decide.
const FROM_MS: u64 = 450_000 * HOUR_MS;
const TO_MS: u64 = FROM_MS + 2 * HOUR_MS;
const GRACE_MS: u64 = HOUR_MS;
const PARTITIONS: u32 = 2;

struct Traffic {
    log: Arc<MemoryLog>,
    generator: Generator,
    sequences: [u64; PARTITIONS as usize],
    step: u64,
}

impl Traffic {
    fn new() -> Traffic {
        let text = "version = 1\nname = \"bill-cli\"\nseed = 3\n[traffic]\nrate_per_s = 1000\nduration_s = 1.0\ncampaigns = 20\nads_per_campaign = 2\n[anomalies]\nduplicate_fraction = 0.1\nduplicate_delay_ms = 500\n[engine]\npartitions = 2\n";
        let scenario = Scenario::parse(text, "bill-cli").unwrap();
        Traffic {
            log: Arc::new(MemoryLog::new(PARTITIONS)),
            generator: Generator::new(&scenario),
            sequences: [0; PARTITIONS as usize],
            step: 0,
        }
    }

    /// Clicks of the period's first hour, 100 ms apart per round.
    fn append(&mut self, rounds: u64) {
        for _ in 0..rounds {
            let now_ms = FROM_MS + 30 * 60 * 1000 + self.step * 100;
            self.step += 1;
            let mut batch = GeneratedBatch::default();
            self.generator
                .next_batch(now_ms, self.step * 100, 100, &mut batch);
            for (index, block) in RecordBlock::route(&batch.events, PARTITIONS)
                .into_iter()
                .enumerate()
            {
                let count = block.len() as u64;
                let batch = AppendBatch {
                    producer_id: 1,
                    first_sequence: self.sequences[index],
                    records: block,
                };
                self.log
                    .append_now(PartitionId(index as u32), batch)
                    .unwrap();
                self.sequences[index] += count;
            }
        }
    }
}

async fn archive(traffic: &Traffic, blobs: &Arc<dyn BlobStore>, partition: u32, clock_ms: u64) {
    let partition = PartitionId(partition);
    let mut archiver = Archiver::open(
        partition,
        traffic.log.clone(),
        blobs.clone(),
        Arc::new(ManualClock::new(clock_ms)),
        ArchiverConfig::default(),
    )
    .await
    .unwrap();
    let end = traffic.log.end_offset(partition).await.unwrap();
    archiver.archive_until(end).await.unwrap();
}

fn bill(dir: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adclick"))
        .args([
            "bill",
            "--from",
            &FROM_MS.to_string(),
            "--to",
            &TO_MS.to_string(),
        ])
        .args(["--grace-ms", &GRACE_MS.to_string()])
        .arg("--archive")
        .arg(format!("file://{}", dir.join("archive").display()))
        .arg("--db")
        .arg(format!("sqlite:{}", dir.join("billing.db").display()))
        .arg("--prices")
        .arg(dir.join("prices.csv"))
        .args(extra)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn bill_refuses_a_lagging_archive_bills_it_provisionally_on_request_then_corrects() {
    let dir = tempfile::tempdir().unwrap();
    let prices: String = (0..=20)
        .map(|campaign| format!("{campaign},1000\n"))
        .collect();
    std::fs::write(dir.path().join("prices.csv"), prices).unwrap();
    let blobs: Arc<dyn BlobStore> = Arc::new(
        ObjectBlobStore::open(&BlobConfig {
            url: format!("file://{}", dir.path().join("archive").display()),
            options: Default::default(),
        })
        .unwrap(),
    );
    let mut traffic = Traffic::new();
    traffic.append(10);
    // Partition 1's archiver stopped 40 minutes short of the period's close, and clicks came
    // after it; partition 0's is caught up.
    archive(&traffic, &blobs, 1, TO_MS + GRACE_MS - 40 * 60 * 1000).await;
    traffic.append(10);
    archive(&traffic, &blobs, 0, TO_MS + GRACE_MS).await;

    let refused = bill(dir.path(), &[]);
    let report = text(&refused);
    assert!(!refused.status.success(), "{report}");
    assert!(
        report.contains("partition 1: caught up to") && report.contains("2400000 ms (40.0 min)"),
        "{report}"
    );
    assert!(report.contains("--allow-incomplete"), "{report}");
    assert!(!report.contains("partition 0:"), "{report}");

    let provisional = bill(dir.path(), &["--allow-incomplete"]);
    let report = text(&provisional);
    assert!(provisional.status.success(), "{report}");
    assert!(report.contains("provisional"), "{report}");
    let store = SqliteBillingStore::open(&dir.path().join("billing.db")).unwrap();
    let runs = store.runs().await.unwrap();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].1.provisional && runs[0].1.kind == RunKind::Bill);

    // Caught up: the clicks partition 1 was missing come in as a correction, then nothing.
    archive(&traffic, &blobs, 1, TO_MS + GRACE_MS + 1).await;
    let corrected = bill(dir.path(), &[]);
    let report = text(&corrected);
    assert!(corrected.status.success(), "{report}");
    assert!(
        report.contains("was billed already: correction run 2"),
        "{report}"
    );
    let again = bill(dir.path(), &[]);
    let report = text(&again);
    assert!(again.status.success(), "{report}");
    assert!(
        report.contains("nothing changed: correction run 3 is on record with 0 adjustments"),
        "{report}"
    );
    let runs = store.runs().await.unwrap();
    let kinds: Vec<(RunKind, bool)> = runs
        .iter()
        .map(|(_, run)| (run.kind, run.provisional))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (RunKind::Bill, true),
            (RunKind::Correction, false),
            (RunKind::Correction, false)
        ]
    );
}
