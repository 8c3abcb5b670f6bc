//! Fault injection around the seams, shared by the simulator and `adclick run`.
//!
//! One switchboard (`Faults`) holds the rates, a seeded random stream and counters; the wrappers
//! (`FaultyLog`, `FaultyStore`, `FaultyBlobs`) consult it on every call. Errors strike before or after the
//! wrapped effect (an outage, or a timeout whose write went through), so every retry and recovery
//! path of the engine runs. Healing zeroes the rates.
//!
//! Reads can also come back empty while the log holds records past the read offset (a consume
//! that timed out, a broker whose high watermark lags): `FaultyLog` does it in the simulator, and
//! `EmptyReadLog` wraps the workers' log of `adclick run`, whichever log that is.
//!
//! In swarm mode a seed also draws its traffic (`draw_swarm_anomalies`): client clock skew up to
//! the whole future allowance of ingest, and late clicks older than the dedup horizon.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adclick_core::codec;
use adclick_core::ids::*;
use adclick_core::operator::{Series, SeriesUpdate};
use adclick_core::window::Lane;
use adclick_engine::clock::SystemClock;
use adclick_engine::embedded::MemoryBlobStore;
use adclick_engine::fencing::Fence;
use adclick_engine::scenario::{Anomalies, Scenario};
use adclick_engine::seams::*;
use async_trait::async_trait;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::Serialize;

use crate::oracle::{ClickMultiset, Ledger};

/// What the duplicating producer appended.
#[derive(Debug, Default)]
pub struct DuplicateAppends {
    pub ledger: Ledger,
    pub clicks: ClickMultiset,
    sequences: Vec<u64>,
    /// The id the duplicates are appended under: one of the log's, so no ingest incarnation
    /// (which asks the log for its own) shares it.
    producer_id: Option<u64>,
}

/// The fault rates of one run: the scenario's, or in swarm mode a per-seed draw below them.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct FaultRates {
    pub store_error_rate: f64,
    pub store_latency_ms_max: u64,
    pub log_error_rate: f64,
    pub log_io_error_rate: f64,
    pub duplicate_append_rate: f64,
    pub checkpoint_error_rate: f64,
    pub ingest_crashes_per_min: f64,
    pub worker_kills_per_min: f64,
    pub node_pauses_per_min: f64,
    pub takeovers_per_min: f64,
    pub log_empty_read_rate: f64,
    pub store_losses_per_min: f64,
    pub fraud_rotations_per_min: f64,
}

impl FaultRates {
    pub fn draw(scenario: &Scenario, rng: &mut Pcg64Mcg) -> FaultRates {
        let faults = &scenario.faults;
        let mut rates = FaultRates {
            store_error_rate: faults.store_error_rate,
            store_latency_ms_max: faults.store_latency_ms_max,
            log_error_rate: faults.log_error_rate,
            log_io_error_rate: faults.log_io_error_rate,
            duplicate_append_rate: faults.duplicate_append_rate,
            checkpoint_error_rate: faults.checkpoint_error_rate,
            ingest_crashes_per_min: faults.ingest_crashes_per_min,
            worker_kills_per_min: faults.worker_crashes_per_min,
            node_pauses_per_min: faults.node_pauses_per_min,
            takeovers_per_min: faults.takeovers_per_min,
            log_empty_read_rate: faults.log_empty_read_rate,
            store_losses_per_min: faults.store_losses_per_min,
            fraud_rotations_per_min: faults.fraud_rotations_per_min,
        };
        if faults.swarm {
            // Swarm testing: each fault is on for about half the seeds, at a random intensity,
            // so that some seeds hammer one fault and others combine several.
            let mut scale = |value: f64| {
                if rng.random_bool(0.5) {
                    value * rng.random::<f64>()
                } else {
                    0.0
                }
            };
            rates.store_error_rate = scale(rates.store_error_rate);
            rates.log_error_rate = scale(rates.log_error_rate);
            rates.duplicate_append_rate = scale(rates.duplicate_append_rate);
            rates.checkpoint_error_rate = scale(rates.checkpoint_error_rate);
            rates.ingest_crashes_per_min = scale(rates.ingest_crashes_per_min);
            rates.worker_kills_per_min = scale(rates.worker_kills_per_min);
            rates.node_pauses_per_min = scale(rates.node_pauses_per_min);
            rates.takeovers_per_min = scale(rates.takeovers_per_min);
            rates.store_latency_ms_max = scale(rates.store_latency_ms_max as f64) as u64;
            rates.log_empty_read_rate = scale(rates.log_empty_read_rate);
            rates.store_losses_per_min = scale(rates.store_losses_per_min);
            rates.fraud_rotations_per_min = scale(rates.fraud_rotations_per_min);
        }
        rates
    }
}

/// Swarm testing for traffic: each seed turns on, or leaves at the scenario's values, the traffic
/// dimensions that put the fast path's exactness at its edges, and draws how far. Draws come from
/// the run's `rng`, so a seed replays exactly; without `swarm` nothing is drawn (other scenarios
/// keep their seeds' streams) and the scenario's anomalies come back unchanged. What was drawn
/// goes into the fault trace.
///
/// - Client clock skew up to `EVENT_TIME_FUTURE_MS_MAX`, the most ingest accepts.
/// - A late lag past `dedup_horizon_ms` (plus the out-of-orderness and one dedup bucket, so the
///   clicks are older than the horizon even against a watermark that follows the clock): late
///   clicks and their resends arrive after their ids could have been forgotten. Late clicks
///   come from every kind of client (bots and high-rate IPs too), at the scenario's
///   `late_fraction`.
pub fn draw_swarm_anomalies(scenario: &Scenario, rng: &mut Pcg64Mcg, faults: &Faults) -> Anomalies {
    use adclick_core::limits::{EVENT_AGE_MS_MAX, EVENT_TIME_FUTURE_MS_MAX};
    let mut anomalies = scenario.anomalies.clone();
    if !scenario.faults.swarm {
        return anomalies;
    }
    if rng.random_bool(0.5) {
        let skew_ms_min = anomalies.clock_skew_ms.min(EVENT_TIME_FUTURE_MS_MAX);
        anomalies.clock_skew_ms = rng.random_range(skew_ms_min..=EVENT_TIME_FUTURE_MS_MAX);
    }
    let engine = &scenario.engine;
    let lag_ms_min =
        engine.dedup_horizon_ms + engine.max_out_of_orderness_ms + engine.dedup_bucket_ms;
    // Half the age ingest accepts leaves room for the resend delay and outages before a resend.
    let lag_ms_max = (4 * engine.dedup_horizon_ms).min(EVENT_AGE_MS_MAX / 2);
    if rng.random_bool(0.5) && lag_ms_min <= lag_ms_max {
        anomalies.late_lag_ms = rng.random_range(lag_ms_min..=lag_ms_max);
    }
    faults.note(format!(
        "swarm traffic: clock_skew_ms={} late_lag_ms={} (dedup_horizon_ms={}) late_fraction={} bot_fraction={} high_rate_ip_fraction={}",
        anomalies.clock_skew_ms,
        anomalies.late_lag_ms,
        engine.dedup_horizon_ms,
        anomalies.late_fraction,
        anomalies.bot_fraction,
        anomalies.high_rate_ip_fraction,
    ));
    anomalies
}

/// What the faults did, for the report and the trace hash.
#[derive(Clone, Copy, Debug, Default, Serialize, Hash)]
pub struct FaultCounts {
    pub store_errors: u64,
    pub log_errors: u64,
    pub duplicate_appended_records: u64,
    pub checkpoint_errors: u64,
    pub ingest_crashes: u64,
    pub worker_kills: u64,
    pub node_pauses: u64,
    pub takeovers: u64,
    /// Log reads that returned nothing although records were past the read offset.
    pub empty_reads: u64,
    /// Times the real-time store forgot everything.
    pub store_losses: u64,
    /// New fraud-list versions published.
    pub fraud_rotations: u64,
    /// Failed segment writes, syncs and cuts of the file log.
    pub log_io_errors: u64,
}

/// The switchboard every faulty seam consults. Healing zeroes the rates.
pub struct Faults {
    pub rates: Mutex<FaultRates>,
    pub rng: Mutex<Pcg64Mcg>,
    pub counts: Mutex<FaultCounts>,
    pub trace: Mutex<Vec<String>>,
}

impl Faults {
    pub fn new(rates: FaultRates, seed: u64) -> Faults {
        Faults {
            rates: Mutex::new(rates),
            rng: Mutex::new(Pcg64Mcg::seed_from_u64(seed)),
            counts: Mutex::new(FaultCounts::default()),
            trace: Mutex::new(Vec::new()),
        }
    }

    pub fn roll(&self, rate: impl Fn(&FaultRates) -> f64) -> bool {
        let rate = rate(&self.rates.lock().expect("rates lock"));
        rate > 0.0
            && self
                .rng
                .lock()
                .expect("rng lock")
                .random_bool(rate.min(1.0))
    }

    pub fn coin(&self) -> bool {
        self.rng.lock().expect("rng lock").random_bool(0.5)
    }

    pub fn latency(&self) -> Duration {
        let max = self.rates.lock().expect("rates lock").store_latency_ms_max;
        if max == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.rng.lock().expect("rng lock").random_range(0..=max))
    }

    pub fn count(&self, update: impl FnOnce(&mut FaultCounts)) {
        update(&mut self.counts.lock().expect("counts lock"));
    }

    pub fn note(&self, event: String) {
        let now_ms = SystemClock.now_ms();
        self.trace
            .lock()
            .expect("trace lock")
            .push(format!("{now_ms} {event}"));
    }

    pub fn heal(&self) {
        *self.rates.lock().expect("rates lock") = FaultRates::default();
    }

    /// A read's batches, or none at `log_empty_read_rate` when there was something to read: a
    /// consume that timed out, or a broker whose high watermark lags, finds nothing although
    /// the log holds records past the read offset. Nothing is rolled for a read that found
    /// nothing anyway, so the fault counts only reads that missed records.
    fn maybe_empty(&self, batches: Vec<ReadBatch>) -> Vec<ReadBatch> {
        if batches.iter().all(ReadBatch::is_empty) {
            return batches;
        }
        if self.roll(|rates| rates.log_empty_read_rate) {
            self.count(|counts| counts.empty_reads += 1);
            return Vec::new();
        }
        batches
    }
}

/// The sim log node: keyed partitions and offsets (the in-process log), outages, lost acks and
/// duplicate appends from a non-idempotent producer.
pub struct FaultyLog {
    pub inner: Arc<dyn crate::file_log_faults::BaseLog>,
    pub faults: Arc<Faults>,
    /// Records the duplicating producer appended: the no-loss check adds them to the accepted.
    pub duplicates: Mutex<DuplicateAppends>,
    /// Batches whose append started and has not succeeded yet, by (producer, partition, first
    /// sequence): what a crashed ingest node may or may not have got into the log.
    pub in_flight: Mutex<BTreeMap<(u64, u32, u64), RecordBlock>>,
}

impl FaultyLog {
    /// The batches of `producer_id` still in flight, taken out: its node died, so whatever of
    /// them landed has landed.
    pub fn take_in_flight(&self, producer_id: u64) -> Vec<RecordBlock> {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        let keys: Vec<_> = in_flight
            .range((producer_id, 0, 0)..=(producer_id, u32::MAX, u64::MAX))
            .map(|(key, _)| *key)
            .collect();
        keys.iter()
            .filter_map(|key| in_flight.remove(key))
            .collect()
    }
}

impl FaultyLog {
    /// The append under the faults: an outage before or after the effect, and a
    /// non-idempotent retry that appends the batch twice.
    async fn append_faulty(
        &self,
        partition: PartitionId,
        batch: AppendBatch,
    ) -> Result<Offset, LogError> {
        let outage = || LogError::Unavailable {
            message: "injected log outage".into(),
        };

        let fail = self.faults.roll(|rates| rates.log_error_rate);
        let fail_after_append = fail && self.faults.coin();
        if fail && !fail_after_append {
            self.faults.count(|counts| counts.log_errors += 1);
            return Err(outage());
        }
        let duplicate = self.faults.roll(|rates| rates.duplicate_append_rate);
        let records = duplicate.then(|| batch.records.clone());
        let first = self.inner.append(partition, batch).await?;
        if let Some(records) = records {
            // A producer without idempotence retried a batch whose ack it lost.
            let mut duplicates = self.duplicates.lock().expect("duplicates lock");
            let DuplicateAppends {
                ledger,
                clicks,
                sequences,
                producer_id,
            } = &mut *duplicates;
            let producer_id = match producer_id {
                Some(id) => *id,
                None => *producer_id.insert(self.inner.new_producer_id_now()?),
            };
            sequences.resize(self.inner.partitions() as usize, 0);
            let sequence = &mut sequences[partition.0 as usize];
            for record in records.iter() {
                let click = codec::decode(record).expect("ingest encodes valid records");
                ledger.add(&click);
                clicks.add(&click);
            }
            let count = records.len() as u64;
            let retry = AppendBatch {
                producer_id,
                first_sequence: *sequence,
                records,
            };
            self.inner.append_now(partition, retry)?;
            *sequence += count;
            self.faults
                .count(|counts| counts.duplicate_appended_records += count);
        }
        if fail_after_append {
            self.faults.count(|counts| counts.log_errors += 1);
            return Err(outage());
        }
        Ok(first)
    }
}

#[async_trait]
impl Log for FaultyLog {
    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }

    async fn append(&self, partition: PartitionId, batch: AppendBatch) -> Result<Offset, LogError> {
        let key = (batch.producer_id, partition.0, batch.first_sequence);
        let records = batch.records.clone();
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .insert(key, records);
        let appended = self.append_faulty(partition, batch).await;
        if appended.is_ok() {
            self.in_flight.lock().expect("in-flight lock").remove(&key);
        }
        appended
    }

    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        records_max: usize,
    ) -> Result<Vec<ReadBatch>, LogError> {
        if self.faults.roll(|rates| rates.log_error_rate) {
            self.faults.count(|counts| counts.log_errors += 1);
            return Err(LogError::Unavailable {
                message: "injected log outage".into(),
            });
        }
        let batches = self.inner.read(partition, from, records_max).await?;
        Ok(self.faults.maybe_empty(batches))
    }

    async fn end_offset(&self, partition: PartitionId) -> Result<Offset, LogError> {
        self.inner.end_offset(partition).await
    }

    async fn new_producer_id(&self) -> Result<u64, LogError> {
        self.inner.new_producer_id().await
    }
}

/// The log fault of real-time runs: reads that come back empty although records are there
/// (`log_empty_read_rate`), around whatever log the run has (in memory or on files). The end
/// offset stays true, as a Kafka consumer's timed-out poll leaves the high watermark.
pub struct EmptyReadLog {
    pub inner: Arc<dyn Log>,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl Log for EmptyReadLog {
    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }

    async fn append(&self, partition: PartitionId, batch: AppendBatch) -> Result<Offset, LogError> {
        self.inner.append(partition, batch).await
    }

    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        records_max: usize,
    ) -> Result<Vec<ReadBatch>, LogError> {
        let batches = self.inner.read(partition, from, records_max).await?;
        Ok(self.faults.maybe_empty(batches))
    }

    async fn end_offset(&self, partition: PartitionId) -> Result<Offset, LogError> {
        self.inner.end_offset(partition).await
    }

    async fn new_producer_id(&self) -> Result<u64, LogError> {
        self.inner.new_producer_id().await
    }
}

/// The real-time store node: the embedded store's fencing, with latency and errors that strike
/// before or after a write is applied (a timeout whose write went through).
pub struct FaultyStore {
    pub inner: Arc<dyn RealtimeStore>,
    pub faults: Arc<Faults>,
}

impl FaultyStore {
    fn unavailable() -> StoreError {
        StoreError::Unavailable {
            message: "injected store error".into(),
        }
    }
}

#[async_trait]
impl RealtimeStore for FaultyStore {
    async fn claim_partition(
        &self,
        partition: PartitionId,
        above: Generation,
    ) -> Result<Claim, StoreError> {
        tokio::time::sleep(self.faults.latency()).await;
        // A claim fails before the store counts it, or after (the generation was taken, the
        // answer lost): either way the claimer must claim again.
        let fail = self.faults.roll(|rates| rates.store_error_rate);
        if fail {
            self.faults.count(|counts| counts.store_errors += 1);
            if self.faults.coin() {
                return Err(FaultyStore::unavailable());
            }
        }
        let claim = self.inner.claim_partition(partition, above).await?;
        if fail {
            return Err(FaultyStore::unavailable());
        }
        Ok(claim)
    }

    async fn apply(
        &self,
        partition: PartitionId,
        fence: Fence,
        updates: &[SeriesUpdate],
        status: PartitionStatus,
    ) -> Result<ApplyOutcome, StoreError> {
        tokio::time::sleep(self.faults.latency()).await;
        let fail = self.faults.roll(|rates| rates.store_error_rate);
        if fail {
            self.faults.count(|counts| counts.store_errors += 1);
            if self.faults.coin() {
                return Err(FaultyStore::unavailable());
            }
        }
        let outcome = self.inner.apply(partition, fence, updates, status).await?;
        if fail {
            return Err(FaultyStore::unavailable());
        }
        Ok(outcome)
    }

    async fn get(&self, series: Series, lane: Lane) -> Result<Option<StoredCounts>, StoreError> {
        self.inner.get(series, lane).await
    }

    async fn scan(&self) -> Result<Vec<(Series, Lane, StoredCounts)>, StoreError> {
        self.inner.scan().await
    }

    async fn partition_status(&self) -> Result<Vec<PartitionStatus>, StoreError> {
        self.inner.partition_status().await
    }

    async fn set_rebuilding(
        &self,
        partition: PartitionId,
        rebuilder: adclick_engine::seams::Rebuilder,
        rebuilding: bool,
    ) -> Result<(), StoreError> {
        self.inner
            .set_rebuilding(partition, rebuilder, rebuilding)
            .await
    }

    async fn rebuilding_partitions(&self) -> Result<Vec<PartitionId>, StoreError> {
        self.inner.rebuilding_partitions().await
    }
}

/// The checkpoint store with errors.
pub struct FaultyBlobs {
    pub inner: MemoryBlobStore,
    pub faults: Arc<Faults>,
}

/// Where an injected write error strikes: before the write (nothing happened) or after it
/// (the write landed, the answer was lost).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strike {
    None,
    Before,
    After,
}

impl FaultyBlobs {
    fn error(key: &str) -> BlobError {
        BlobError::Unavailable {
            key: key.to_owned(),
            message: "injected checkpoint store error".into(),
        }
    }

    /// A write's fault: half strike before the effect, half after it.
    fn strike(&self) -> Strike {
        if !self.faults.roll(|rates| rates.checkpoint_error_rate) {
            return Strike::None;
        }
        self.faults.count(|counts| counts.checkpoint_errors += 1);
        if self.faults.coin() {
            Strike::After
        } else {
            Strike::Before
        }
    }

    async fn write<T>(
        &self,
        key: &str,
        effect: impl std::future::Future<Output = Result<T, BlobError>>,
    ) -> Result<T, BlobError> {
        let strike = self.strike();
        if strike == Strike::Before {
            return Err(FaultyBlobs::error(key));
        }
        let result = effect.await?;
        if strike == Strike::After {
            return Err(FaultyBlobs::error(key));
        }
        Ok(result)
    }

    fn check(&self, key: &str) -> Result<(), BlobError> {
        if self.faults.roll(|rates| rates.checkpoint_error_rate) {
            self.faults.count(|counts| counts.checkpoint_errors += 1);
            return Err(BlobError::Unavailable {
                key: key.to_owned(),
                message: "injected checkpoint store error".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for FaultyBlobs {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        self.write(key, self.inner.put(key, bytes)).await
    }

    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<bool, BlobError> {
        self.write(key, self.inner.put_if_absent(key, bytes)).await
    }

    async fn modified_ms(&self, key: &str) -> Result<Option<u64>, BlobError> {
        self.check(key)?;
        self.inner.modified_ms(key).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        self.check(key)?;
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        self.check(prefix)?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.write(key, self.inner.delete(key)).await
    }
}
