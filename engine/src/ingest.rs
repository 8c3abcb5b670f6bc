//! The ingest core, without HTTP: validate → partition by campaign → buffer → append.
//!
//! The producer buffer is bounded in events. A request that does not fit is answered `Busy`
//! with a retry hint, whole, before anything of it is buffered: nothing is dropped in silence.
//! A flusher appends each partition's buffer as one idempotent batch every linger interval (or
//! sooner when a batch fills). An append that fails is retried with the same sequence numbers,
//! so a retry can never duplicate records; the buffer holds the events until the log has them.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use adclick_core::codec;
use adclick_core::event::{ClickEvent, InvalidReason, Rejection, TimeBound, check_event_time};
use adclick_core::ids::{CampaignId, PartitionId, Salt};
use adclick_core::limits as core_limits;
use adclick_core::partition::partition_for_campaign;
use adclick_core::salt::{HotCampaignConfig, HotCampaignDetector, SaltPlan};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, oneshot};

use crate::limits;
use crate::seams::{AppendBatch, Clock, Log, LogError, RecordBlock, Retry};

mod salting;

use salting::Salting;
pub use salting::{DurablePlans, PlanSharing, SaltingStart, SharedSaltTable};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestConfig {
    pub producer_buffer_events_max: usize,
    pub producer_linger_ms: u64,
    pub producer_batch_records_max: usize,
    /// Identifies this ingest node's idempotent producer in the log.
    pub producer_id: u64,
    /// Whether event times are checked against this node's clock (live) or not (replays).
    pub check_event_time: bool,
    /// Split campaigns above a traffic share into salted keys (`None`: never).
    pub hot_campaigns: Option<HotCampaignConfig>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            producer_buffer_events_max: limits::PRODUCER_BUFFER_EVENTS_MAX_DEFAULT,
            producer_linger_ms: limits::PRODUCER_LINGER_MS_DEFAULT,
            producer_batch_records_max: limits::PRODUCER_BATCH_RECORDS_MAX,
            producer_id: 1,
            check_event_time: true,
            hot_campaigns: None,
        }
    }
}

/// How long `submit` waits before answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ack {
    /// Once the events are in the producer buffer.
    Buffered,
    /// Once the log has acknowledged them.
    Durable,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error(
        "producer buffer is full: {requested} events requested, {available} of {limit} free; retry after {retry_after_ms} ms"
    )]
    Busy {
        requested: usize,
        available: usize,
        limit: usize,
        retry_after_ms: u64,
    },
    #[error(
        "campaign {campaign} is being split into {salts} salted keys for event times from {from_event_time_ms} ms, and its plan is not durable yet; {events} events of this request fall in that range; retry after {retry_after_ms} ms"
    )]
    SaltPlanPending {
        campaign: u64,
        salts: u16,
        from_event_time_ms: u64,
        events: usize,
        retry_after_ms: u64,
    },
    #[error(
        "the salt plans were last read at {read_at_ms} ms: another ingest node may have split a campaign since, for event times past {event_time_ms_max} ms, and {events} events of this request are past it; retry after {retry_after_ms} ms"
    )]
    SaltPlansUnread {
        read_at_ms: u64,
        event_time_ms_max: u64,
        events: usize,
        retry_after_ms: u64,
    },
    #[error("request has {records} records, over the limit of {limit}")]
    TooManyRecords { records: usize, limit: usize },
    #[error("the log failed: {0}")]
    Log(LogError),
    #[error("ingest is shutting down")]
    ShuttingDown,
}

impl IngestError {
    /// For the errors a client should retry (the request was refused whole, nothing of it was
    /// buffered): how long to wait first.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            IngestError::Busy { retry_after_ms, .. }
            | IngestError::SaltPlanPending { retry_after_ms, .. }
            | IngestError::SaltPlansUnread { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        }
    }
}

/// The answer to one request: how many were accepted, and why each rejected record was.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SubmitOutcome {
    pub accepted: usize,
    /// (index in the request, reasons)
    pub rejected: Vec<(usize, Rejection)>,
}

#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct IngestStats {
    pub accepted: u64,
    pub rejected: u64,
    pub busy: u64,
    pub appended: u64,
    pub append_retries: u64,
}

#[derive(Default)]
struct PartitionBuffer {
    block: RecordBlock,
    waiters: Vec<oneshot::Sender<Result<(), IngestError>>>,
    next_sequence: u64,
}

struct Inner {
    log: Arc<dyn Log>,
    clock: Arc<dyn Clock>,
    config: IngestConfig,
    partitions: u32,
    permits: Semaphore,
    buffers: Vec<Mutex<PartitionBuffer>>,
    /// Routing reads the salt table and the detector updates it under this one lock, so a plan
    /// never lands between routing a click and counting it.
    salting: Option<Arc<Mutex<Salting>>>,
    flush_now: Notify,
    closed: AtomicBool,
    accepted: AtomicU64,
    rejected: AtomicU64,
    busy: AtomicU64,
    appended: AtomicU64,
    append_retries: AtomicU64,
}

#[derive(Clone)]
pub struct IngestCore {
    inner: Arc<Inner>,
}

impl IngestCore {
    /// Creates the core for a fresh log and spawns its flusher on the current runtime.
    pub fn start(
        log: Arc<dyn Log>,
        clock: Arc<dyn Clock>,
        config: IngestConfig,
    ) -> (IngestCore, tokio::task::JoinHandle<()>) {
        IngestCore::start_with(log, clock, config, SaltingStart::default())
    }

    /// Creates the core with a salt table that survives restarts.
    pub fn start_with(
        log: Arc<dyn Log>,
        clock: Arc<dyn Clock>,
        config: IngestConfig,
        salting: SaltingStart,
    ) -> (IngestCore, tokio::task::JoinHandle<()>) {
        let partitions = log.partitions();
        let detector = config
            .hot_campaigns
            .map(|hot| HotCampaignDetector::new(hot, salting.accepted_event_time_floor_ms));
        let (salting, salting_tasks) = match Salting::new(salting, detector) {
            Some((salting, tasks)) => (Some(salting), Some(tasks)),
            None => (None, None),
        };
        let inner = Arc::new(Inner {
            log,
            clock,
            config,
            partitions,
            permits: Semaphore::new(config.producer_buffer_events_max),
            buffers: (0..partitions).map(|_| Mutex::default()).collect(),
            salting,
            flush_now: Notify::new(),
            closed: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            append_retries: AtomicU64::new(0),
        });
        let flusher = tokio::spawn(run_flusher(inner.clone()));
        if let (Some(salting), Some(tasks)) = (&inner.salting, salting_tasks) {
            tasks.spawn(salting, inner.clock.clone());
        }
        (IngestCore { inner }, flusher)
    }

    pub fn stats(&self) -> IngestStats {
        let inner = &self.inner;
        IngestStats {
            accepted: inner.accepted.load(Ordering::Relaxed),
            rejected: inner.rejected.load(Ordering::Relaxed),
            busy: inner.busy.load(Ordering::Relaxed),
            appended: inner.appended.load(Ordering::Relaxed),
            append_retries: inner.append_retries.load(Ordering::Relaxed),
        }
    }

    /// Events in the buffer, not yet acknowledged by the log.
    pub fn buffered(&self) -> usize {
        self.inner.config.producer_buffer_events_max - self.inner.permits.available_permits()
    }

    /// Copies of the records waiting in the buffer, not yet handed to the log: what a crash
    /// of this node loses for certain. For the simulator's exact no-loss check.
    pub fn buffered_records(&self) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        for buffer in &self.inner.buffers {
            let buffer = buffer.lock().expect("buffer lock");
            records.extend(buffer.block.iter().map(<[u8]>::to_vec));
        }
        records
    }

    /// The idempotent producer id this core appends under.
    pub fn producer_id(&self) -> u64 {
        self.inner.config.producer_id
    }

    /// The buffer's bound in events (`engine.producer_buffer_events_max`).
    pub fn buffer_limit(&self) -> usize {
        self.inner.config.producer_buffer_events_max
    }

    fn validate(&self, event: &ClickEvent, bound: TimeBound) -> Result<(), Rejection> {
        let mut reasons = Vec::new();
        if event.user_agent.len() > core_limits::USER_AGENT_BYTES_MAX {
            reasons.push(InvalidReason::FieldTooLong {
                field: "user_agent",
                length_bytes: event.user_agent.len(),
                limit_bytes: core_limits::USER_AGENT_BYTES_MAX,
            });
        }
        if let Err(reason) = check_event_time(event.event_time_ms.0, bound) {
            reasons.push(reason);
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Rejection { reasons })
        }
    }

    /// Validates and buffers a request's events. All valid events are buffered, or none (busy).
    pub async fn submit(
        &self,
        events: &[ClickEvent],
        ack: Ack,
    ) -> Result<SubmitOutcome, IngestError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(IngestError::ShuttingDown);
        }
        if events.len() > limits::INGEST_RECORDS_PER_REQUEST_MAX {
            return Err(IngestError::TooManyRecords {
                records: events.len(),
                limit: limits::INGEST_RECORDS_PER_REQUEST_MAX,
            });
        }
        let bound = if inner.config.check_event_time {
            TimeBound::live(inner.clock.now_ms())
        } else {
            TimeBound::None
        };
        let mut outcome = SubmitOutcome::default();
        let mut valid = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            match self.validate(event, bound) {
                Ok(()) => valid.push(event),
                Err(rejection) => outcome.rejected.push((index, rejection)),
            }
        }
        inner
            .rejected
            .fetch_add(outcome.rejected.len() as u64, Ordering::Relaxed);
        if valid.is_empty() {
            return Ok(outcome);
        }
        let permits = inner
            .permits
            .try_acquire_many(valid.len() as u32)
            .map_err(|_| {
                inner.busy.fetch_add(1, Ordering::Relaxed);
                IngestError::Busy {
                    requested: valid.len(),
                    available: inner.permits.available_permits(),
                    limit: inner.config.producer_buffer_events_max,
                    retry_after_ms: limits::BUSY_RETRY_AFTER_MS,
                }
            })?;
        // The flusher returns the permits once the log has the events.
        permits.forget();
        let waiters = self.buffer(&valid, ack).inspect_err(|_| {
            inner.permits.add_permits(valid.len());
            inner.busy.fetch_add(1, Ordering::Relaxed);
        })?;
        outcome.accepted = valid.len();
        inner
            .accepted
            .fetch_add(valid.len() as u64, Ordering::Relaxed);
        for waiter in waiters {
            match waiter.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(_) => return Err(IngestError::ShuttingDown),
            }
        }
        Ok(outcome)
    }

    /// Routes and buffers every event, or none (`SaltPlanPending`).
    fn buffer<'a>(
        &self,
        events: &[&'a ClickEvent],
        ack: Ack,
    ) -> Result<Vec<oneshot::Receiver<Result<(), IngestError>>>, IngestError> {
        let inner = &self.inner;
        let mut by_partition: Vec<Vec<(&ClickEvent, Salt)>> =
            vec![Vec::new(); inner.partitions as usize];
        let mut route = |event: &'a ClickEvent, salt: Salt| {
            let partition = partition_for_campaign(event.campaign_id, salt, inner.partitions);
            by_partition[partition.0 as usize].push((event, salt));
        };
        match &inner.salting {
            None => events.iter().for_each(|event| route(event, Salt(0))),
            Some(salting) => {
                let now_ms = inner.clock.now_ms();
                salting
                    .lock()
                    .expect("salting lock")
                    .route(events, now_ms, route)?;
            }
        }
        let mut waiters = Vec::new();
        let mut full = false;
        for (partition, events) in by_partition
            .iter()
            .enumerate()
            .filter(|(_, events)| !events.is_empty())
        {
            let mut buffer = inner.buffers[partition].lock().expect("buffer lock");
            for (event, salt) in events {
                buffer
                    .block
                    .push_with(|out| codec::encode_into(&event.view(*salt), out));
            }
            if ack == Ack::Durable {
                let (sender, receiver) = oneshot::channel();
                buffer.waiters.push(sender);
                waiters.push(receiver);
            }
            full |= buffer.block.len() >= inner.config.producer_batch_records_max;
        }
        if full || ack == Ack::Durable {
            inner.flush_now.notify_one();
        }
        Ok(waiters)
    }

    /// Plans waiting to be stored (for tests).
    pub fn pending_salt_plans(&self) -> Vec<(CampaignId, SaltPlan)> {
        match &self.inner.salting {
            None => Vec::new(),
            Some(salting) => salting.lock().expect("salting lock").pending(),
        }
    }

    /// Stops taking requests and waits until every buffered event is in the log.
    pub async fn close(&self, flusher: tokio::task::JoinHandle<()>) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.flush_now.notify_one();
        let _ = flusher.await;
    }
}

async fn run_flusher(inner: Arc<Inner>) {
    let linger = std::time::Duration::from_millis(inner.config.producer_linger_ms);
    loop {
        let closing = inner.closed.load(Ordering::Acquire);
        // Closing: drain at once instead of waiting out the linger.
        let wait = if closing {
            std::time::Duration::from_millis(1)
        } else {
            linger
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = inner.flush_now.notified() => {}
        }
        // Partitions append concurrently: against Kafka each append waits out the producer's
        // linger, so appending one after another would cap ingest at one batch per linger.
        futures::future::join_all(
            (0..inner.partitions).map(|partition| flush_partition(&inner, PartitionId(partition))),
        )
        .await;
        if closing && inner.permits.available_permits() == inner.config.producer_buffer_events_max {
            return;
        }
    }
}

/// Appends one partition's buffer as one idempotent batch, retrying until the log has it.
async fn flush_partition(inner: &Inner, partition: PartitionId) {
    let (block, waiters, first_sequence) = {
        let mut buffer = inner.buffers[partition.0 as usize]
            .lock()
            .expect("buffer lock");
        if buffer.block.is_empty() {
            return;
        }
        // The next batch will likely be as large: reserve that, so that encoding never regrows.
        let (records, bytes) = (buffer.block.len(), buffer.block.data.len());
        let block = std::mem::replace(
            &mut buffer.block,
            RecordBlock::with_capacity(records, bytes),
        );
        let first_sequence = buffer.next_sequence;
        buffer.next_sequence += block.len() as u64;
        (block, std::mem::take(&mut buffer.waiters), first_sequence)
    };
    let count = block.len();
    let batch = AppendBatch {
        producer_id: inner.config.producer_id,
        first_sequence,
        records: block,
    };
    let mut backoff_ms = 5;
    let result = loop {
        match inner.log.append(partition, batch.clone()).await {
            Ok(_) => break Ok(()),
            Err(error) if error.retry() == Retry::Helps => {
                inner.append_retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(partition = partition.0, %error, "append failed, retrying the same batch");
                tokio::time::sleep(std::time::Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(1_000);
            }
            Err(error) => break Err(IngestError::Log(error)),
        }
    };
    if result.is_ok() {
        inner.appended.fetch_add(count as u64, Ordering::Relaxed);
    } else {
        tracing::error!(
            partition = partition.0,
            count,
            "append failed for good; durable callers are told"
        );
    }
    inner.permits.add_permits(count);
    for waiter in waiters {
        let _ = waiter.send(result.clone());
    }
}
