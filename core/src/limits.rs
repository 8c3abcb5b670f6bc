//! Every bound of the core in one place, each with its unit in its name.
//!
//! Relations between bounds are checked at compile time. Runtime-configurable limits take these
//! as defaults; the config structs that carry them check the same relations when built.

/// Tumbling window size.
pub const WINDOW_MS_DEFAULT: u64 = 60_000;
/// The hour rollup that billing and reconciliation read.
pub const HOUR_MS: u64 = 3_600_000;
/// How long a window stays open for late events after its end passes the watermark.
pub const ALLOWED_LATENESS_MS_DEFAULT: u64 = 60_000;
/// The watermark trails the max event time seen by this bound.
pub const MAX_OUT_OF_ORDERNESS_MS_DEFAULT: u64 = 5_000;
/// After this much processing time without events, a partition's watermark follows the clock.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// The watermark never runs further than this ahead of the worker's clock (processing time),
/// whatever event times clients stamp: the allowance for worker clocks that run behind the
/// clocks of honest clients (NTP keeps them within milliseconds). A click stamped further ahead
/// is still counted, in its own window, which stays open until its time comes.
pub const WATERMARK_AHEAD_OF_PROCESSING_MS_MAX: u64 = 2_000;
/// Quarantine: a record whose event time is more than `EVENT_TIME_FUTURE_MS_MAX` plus this ahead
/// of the worker's clock cannot have passed ingest's validation, whatever the skew between the
/// ingest node's clock and the worker's: an outside producer wrote it (microseconds for
/// milliseconds, say).
pub const QUARANTINE_NODE_SKEW_SLACK_MS: u64 = 60_000;
/// Quarantine: a record whose event time is more than `EVENT_AGE_MS_MAX` plus this behind the
/// worker's clock is absurd. The slack is a week, a log retention's worth of consumer lag, so
/// that a backlog a worker catches up on is never quarantined.
pub const QUARANTINE_CONSUMER_LAG_SLACK_MS: u64 = 7 * 86_400_000;
/// How long after its event time a click id is remembered for dedup: window plus lateness plus a
/// client retry window of one minute.
pub const DEDUP_HORIZON_MS_DEFAULT: u64 = 180_000;
/// Dedup expiry granularity: ids expire a bucket at a time. Expiry is lazy (it moves a
/// threshold in constant time), so small buckets cost nothing per bucket; what they buy is
/// memory: the table is sized for the most ids it holds, just before a bucket expires, and at
/// 30 s buckets it held 26 bytes per id just after one did. At 5 s the whole-chain bench stays
/// at 20.5-23.8 bytes per id. The price is a tag rebase (a pass over the table, ~0.08 s at 10M ids)
/// every ~213 buckets, at most ~3 ns per event amortized (reports/2026-11-28-rust-svc/
/// hot-path-session-2.md).
pub const DEDUP_BUCKET_MS_DEFAULT: u64 = 5_000;
/// A dedup horizon holds at most this many buckets, so that every retained id's bucket fits the
/// table's one-byte tag (255 buckets of span) with room for the watermark to move in an epoch.
pub const DEDUP_BUCKETS_PER_HORIZON_MAX: u64 = 100;
/// Retained click ids per partition. 2^24 * 7/8 fills a power-of-two table to its max load.
pub const DEDUP_IDS_PER_PARTITION_MAX_DEFAULT: usize = (1 << 24) / 8 * 7;
/// Late-event counts per window are kept (and rewritten absolutely) for this long.
pub const LATE_RETENTION_MS_DEFAULT: u64 = 86_400_000;
/// Clicks per IP per event-time minute above which the rest of that minute's clicks are fraud.
pub const RATE_RULE_CLICKS_PER_IP_PER_MINUTE_MAX_DEFAULT: u32 = 100;
/// The rate rule counts per event-time minute.
pub const RATE_RULE_WINDOW_MS: u64 = 60_000;

/// Validation: the longest user agent accepted.
pub const USER_AGENT_BYTES_MAX: usize = 512;
/// Validation: how far in the future (clock skew) an event time may be, relative to `now`.
pub const EVENT_TIME_FUTURE_MS_MAX: u64 = 300_000;
/// Validation: how old an event may be, relative to `now`. Older clicks are not billable.
pub const EVENT_AGE_MS_MAX: u64 = LATE_RETENTION_MS_DEFAULT;
/// Validation: the longest click id text (a hyphenated UUID is 36 bytes; allow braces/urn forms).
pub const CLICK_ID_TEXT_BYTES_MAX: usize = 45;

/// The fraud Bloom filter's target false-positive rate.
pub const FRAUD_BLOOM_FALSE_POSITIVE_RATE: f64 = 0.001;
/// The largest fraud list accepted (entries). 100M entries at 16 bits each is 200 MB.
pub const FRAUD_LIST_ENTRIES_MAX: usize = 100_000_000;

/// Snapshots larger than this are refused on read, so a corrupt length can't exhaust memory.
pub const SNAPSHOT_BYTES_MAX: usize = 4 << 30;

const _: () = assert!(DEDUP_HORIZON_MS_DEFAULT >= WINDOW_MS_DEFAULT + ALLOWED_LATENESS_MS_DEFAULT);
const _: () = assert!(DEDUP_HORIZON_MS_DEFAULT.is_multiple_of(DEDUP_BUCKET_MS_DEFAULT));
const _: () = assert!(HOUR_MS.is_multiple_of(WINDOW_MS_DEFAULT));
const _: () = assert!(LATE_RETENTION_MS_DEFAULT >= HOUR_MS + ALLOWED_LATENESS_MS_DEFAULT);
const _: () = assert!(EVENT_AGE_MS_MAX <= LATE_RETENTION_MS_DEFAULT);
const _: () = assert!(WATERMARK_AHEAD_OF_PROCESSING_MS_MAX < QUARANTINE_NODE_SKEW_SLACK_MS);

/// The most salted sub-keys a hot campaign is split into. Queries sum salts `0..SALTS_MAX`.
pub const SALTS_MAX: u16 = 8;
