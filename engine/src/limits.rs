//! Runtime bounds, each with its unit in its name. Configurable ones are defaults.

/// Events the ingest producer buffer holds before answering "busy".
pub const PRODUCER_BUFFER_EVENTS_MAX_DEFAULT: usize = 262_144;
/// How long the producer waits to fill a batch before appending it.
pub const PRODUCER_LINGER_MS_DEFAULT: u64 = 10;
/// Records per appended batch at most.
pub const PRODUCER_BATCH_RECORDS_MAX: usize = 8_192;
/// Suggested client back-off when the buffer is full.
pub const BUSY_RETRY_AFTER_MS: u64 = 100;
/// Records a worker reads per poll at most.
pub const WORKER_READ_RECORDS_MAX: usize = 16_384;
/// A worker with nothing to read sleeps this long before polling again.
pub const WORKER_IDLE_POLL_MS: u64 = 5;
/// An idle worker asks the log for its end offset (a broker round trip on Kafka) at most this
/// often, before it lets the watermark follow the clock.
pub const WORKER_END_OFFSET_CHECK_MS: u64 = 100;
/// A failed worker restarts after this long, doubling per failure up to the max, each with a
/// random jitter of up to the delay itself (`supervisor`).
pub const WORKER_RESTART_BACKOFF_MIN_MS: u64 = 50;
pub const WORKER_RESTART_BACKOFF_MAX_MS: u64 = 5_000;
/// How long the checkpoint store keeps the values a partition wrote to the real-time store, to
/// rewrite a store that forgot the partition: past the Redis store's longest default TTL (hour
/// rollups, 7 days), measured between series starts.
pub const WRITTEN_SERIES_RETENTION_MS: u64 = 8 * 24 * 3_600_000;
/// The checkpoint epoch.
pub const EPOCH_MS_DEFAULT: u64 = 1_000;
/// Records per clicks request at most (ingest API).
pub const INGEST_RECORDS_PER_REQUEST_MAX: usize = 10_000;

const _: () = assert!(PRODUCER_BATCH_RECORDS_MAX <= PRODUCER_BUFFER_EVENTS_MAX_DEFAULT);
const _: () = assert!(WORKER_IDLE_POLL_MS < EPOCH_MS_DEFAULT);

/// How far past every accepted event time a new salt plan starts when it must be stored before
/// use (`adclick serve`): the time the blob store has to take it before a click of the campaign
/// can fall in its range and be answered busy. A put takes milliseconds on a local disk and
/// rarely a second on an object store.
pub const SALT_PLAN_DURABILITY_MARGIN_MS: u64 = 2_000;

/// Shared salt plans (several ingest nodes): how often each node reads every plan.
pub const SALT_PLAN_POLL_MS: u64 = 1_000;
/// Shared salt plans: how far past `now + EVENT_TIME_FUTURE_MS_MAX` a new plan starts. Every
/// node reads the plans well within this, so a plan is known everywhere before any node can
/// accept a click in its range.
pub const SALT_PLAN_SHARED_DELAY_MS: u64 = 30_000;
/// The most two ingest nodes' clocks may differ (NTP keeps them within milliseconds).
pub const NODE_CLOCK_SKEW_MS_MAX: u64 = 10_000;

const _: () = assert!(SALT_PLAN_POLL_MS * 10 < SALT_PLAN_SHARED_DELAY_MS - NODE_CLOCK_SKEW_MS_MAX);
/// The longest a blob store may take between stamping a blob's modification time and showing
/// the blob to readers (S3 stamps while it handles the request; a file's mtime is set before
/// the link that makes it visible).
pub const BLOB_VISIBLE_AFTER_STAMP_MS_MAX: u64 = 30_000;
/// A rebuild hands the aggregator this many records per call: each call is judged at one
/// processing time, derived from the largest event time among them (`rebuild`), so the call
/// stays small enough that this time is close to each record's own.
pub const REBUILD_RECORDS_PER_CALL: usize = 1_024;
/// A rebuild takes a barrier every this many records, as a worker takes one every epoch: dedup
/// expiry and window retirement happen at barriers, so without them memory would grow with
/// the log.
pub const REBUILD_RECORDS_PER_BARRIER: usize = 65_536;
/// Series values per store write of a rebuild (the Redis store splits each into script calls).
pub const REBUILD_UPDATES_PER_APPLY: usize = 65_536;
/// A rebuild whose writes a live worker fenced off (it reclaimed the partition) claims and
/// writes again, this many times at most.
pub const REBUILD_WRITE_ATTEMPTS_MAX: u32 = 5;
/// A rebuild gives up on a log that answers this many reads in a row with nothing while
/// records remain below the end offset it read at start.
pub const REBUILD_EMPTY_READS_MAX: u32 = 1_000;
