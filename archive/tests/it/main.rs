//! The archive's integration tests: one binary, one module per concern.

mod caught_up;
mod crash;
mod hours;
mod python_reader;
mod reader_errors;
mod round_trip;

use std::net::IpAddr;
use std::sync::Arc;

use adclick_archive::{ArchiveRow, Archiver, ArchiverConfig};
use adclick_core::codec;
use adclick_core::ids::*;
use adclick_core::partition::partition_for_campaign;
use adclick_engine::clock::ManualClock;
use adclick_engine::embedded::MemoryLog;
use adclick_engine::scenario::Scenario;
use adclick_engine::seams::{AppendBatch, BlobStore, Log, RecordBlock};
use adclick_traffic::{GeneratedBatch, Generator};

pub const PARTITIONS: u32 = 2;
/// 2027-01-15T08:00:00Z: an hour boundary, so late clicks of the first seconds land in hour 07.
pub const START_MS: u64 = 1_800_000_000_000;

pub fn scenario() -> Scenario {
    let text = r#"
version = 1
name = "archive"
seed = 23
[traffic]
rate_per_s = 1000
duration_s = 1.0
campaigns = 20
ads_per_campaign = 3
[anomalies]
duplicate_fraction = 0.1
duplicate_delay_ms = 300
late_fraction = 0.05
late_lag_ms = 9000
bot_fraction = 0.05
high_rate_ip_fraction = 0.05
high_rate_ips = 1
[engine]
partitions = 2
"#;
    Scenario::parse(text, "archive").unwrap()
}

/// A log filled with generated clicks, and what the archive must hold afterwards.
pub struct Filled {
    pub log: Arc<MemoryLog>,
    /// Every decodable record, by (partition, offset).
    pub expected: Vec<ArchiveRow>,
    /// Offsets of records that are not clicks, by partition.
    pub garbage: Vec<Vec<Offset>>,
    sequences: Vec<u64>,
}

impl Default for Filled {
    fn default() -> Filled {
        Filled::new()
    }
}

impl Filled {
    pub fn new() -> Filled {
        Filled {
            log: Arc::new(MemoryLog::new(PARTITIONS)),
            expected: Vec::new(),
            garbage: vec![Vec::new(); PARTITIONS as usize],
            sequences: vec![0; PARTITIONS as usize],
        }
    }

    /// Appends `rounds` batches of `per_round` generated clicks, 500 ms apart, with some
    /// variety the generator lacks (IPv6, no publisher, salts) and one garbage record per
    /// round on partition 0.
    pub fn generate(&mut self, rounds: u64, per_round: usize) {
        let mut generator = Generator::new(&scenario());
        let mut clicks = GeneratedBatch::default();
        for round in 0..rounds {
            let now_ms = START_MS + round * 500;
            clicks.clear();
            generator.next_batch(now_ms, now_ms - START_MS, per_round, &mut clicks);
            let mut blocks: Vec<Vec<Vec<u8>>> = vec![Vec::new(); PARTITIONS as usize];
            for (index, event) in clicks.events.iter().enumerate() {
                let mut event = event.clone();
                if index % 7 == 0 {
                    event.publisher_id = None;
                }
                if index % 11 == 0 {
                    event.ip = IpAddr::V6(std::net::Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        0,
                        0,
                        0,
                        0,
                        0,
                        index as u16,
                    ));
                }
                let salt = Salt((event.click_id.0 % 3) as u16);
                let partition = partition_for_campaign(event.campaign_id, Salt(0), PARTITIONS);
                blocks[partition.0 as usize].push(codec::encode(&event, salt));
            }
            blocks[0].push(b"not a click".to_vec());
            for (index, records) in blocks.into_iter().enumerate() {
                self.append(PartitionId(index as u32), records);
            }
        }
        self.expected.sort_by_key(|row| (row.partition, row.offset));
    }

    /// Appends raw records to one partition, remembering what each should archive as.
    pub fn append(&mut self, partition: PartitionId, records: Vec<Vec<u8>>) {
        let mut block = RecordBlock::default();
        for record in &records {
            block.push(record);
        }
        let count = records.len() as u64;
        let batch = AppendBatch {
            producer_id: 1,
            first_sequence: self.sequences[partition.0 as usize],
            records: block,
        };
        let first = self.log.append_now(partition, batch).unwrap();
        self.sequences[partition.0 as usize] += count;
        for (index, record) in records.iter().enumerate() {
            let offset = Offset(first.0 + index as u64);
            match codec::decode(record) {
                Ok(view) => self.expected.push(ArchiveRow {
                    partition,
                    offset,
                    salt: view.salt,
                    click: view.to_owned_event(),
                }),
                Err(_) => self.garbage[partition.0 as usize].push(offset),
            }
        }
    }

    pub fn expected_in(&self, partition: PartitionId) -> Vec<ArchiveRow> {
        self.expected
            .iter()
            .filter(|row| row.partition == partition)
            .cloned()
            .collect()
    }
}

/// Archives every partition of `log` to its end.
pub async fn archive_all(log: Arc<MemoryLog>, blobs: Arc<dyn BlobStore>, config: ArchiverConfig) {
    for partition in 0..PARTITIONS {
        let partition = PartitionId(partition);
        let end = log.end_offset(partition).await.unwrap();
        let mut archiver = Archiver::open(
            partition,
            log.clone(),
            blobs.clone(),
            Arc::new(ManualClock::new(START_MS)),
            config,
        )
        .await
        .unwrap();
        archiver.archive_until(end).await.unwrap();
        assert_eq!(archiver.next_offset(), end);
    }
}

/// Every row of every committed file, sorted by (partition, offset).
pub async fn read_archive(blobs: &dyn BlobStore) -> Vec<ArchiveRow> {
    let mut rows = Vec::new();
    for file in adclick_archive::list_committed(blobs, 0, u64::MAX)
        .await
        .unwrap()
    {
        let bytes = blobs.get(&file.key).await.unwrap().unwrap();
        let file_rows = adclick_archive::read_rows(&file.key, bytes).unwrap();
        assert_eq!(file_rows.len() as u64, file.rows, "{}", file.key);
        rows.extend(file_rows);
    }
    rows.sort_by_key(|row| (row.partition, row.offset));
    rows
}

/// A small roll target, so that a test's few thousand rows make several segments.
pub fn small_segments() -> ArchiverConfig {
    ArchiverConfig {
        roll_bytes: 64 * 1024,
        read_records_max: 100,
        ..ArchiverConfig::default()
    }
}
