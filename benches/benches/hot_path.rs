//! Criterion benches of the per-event hot path of one partition: `decode`, `dedup_insert`,
//! `bloom_lookup` (the fraud list), `window_update`, `rate_rule`, and `whole_chain` (the operator's
//! `on_batch` with barriers).
//!
//! Run with `cargo bench -p adclick-benches --bench hot_path`; add `-- <filter>` for one group.
//! Every bench counts throughput in events (criterion elements), so criterion prints events/s.
//! What criterion cannot express (dedup bytes per retained id, expiry and barrier costs, the
//! aggregator's counters) is printed to stderr, one line each, prefixed with `hot_path:`.
//! `HOT_PATH_CLOCK=thread-cpu` times the bench thread's CPU time instead of wall time, for a
//! machine shared with other work.
//!
//! Traffic is synthetic and deterministic (a splitmix64 PRNG with fixed seeds): 1000 campaigns
//! with Zipf (s = 1) popularity, 10 ads each, the top 4 campaigns salted 4 ways, IPv4 addresses
//! from a pool of 100k plus a few bots, six user agents of 53 to 93 bytes, ~1% client retries
//! (duplicate click ids), ~0.1% events arriving 1.5 to 2.5 minutes late, event times out of
//! order by up to 2 s.
//!
//! The whole-chain bench models one partition whose live rate is `LIVE_EVENTS_PER_S` being
//! processed as fast as the core allows (catch-up after a restart, or replay), with a barrier
//! every `BATCHES_PER_EPOCH` batches: a 1 s epoch at 1M events/s. Event time advances at the live
//! rate, so each epoch covers 20 s of event time: windows close, dedup expires, and the dedup set
//! sits at its steady size for the default 180 s horizon.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use adclick_core::codec;
use adclick_core::dedup::{DedupConfig, DedupSet};
use adclick_core::fraud::{FraudList, FraudVerdict, RateRule, ip_key};
use adclick_core::limits;
use adclick_core::operator::{AggregatorConfig, PartitionAggregator};
use adclick_core::snapshot::{CheckpointKind, PartitionCheckpoint, encode_checkpoint};
use adclick_core::window::{Counts, CountsTable, HourKey, WindowConfig, WindowKey};
use adclick_core::{
    AdId, CampaignId, ClickId, ClickView, Country, Epoch, EventTimeMs, FraudListVersion, Offset,
    PartitionId, PublisherId, Salt, UserId,
};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

/// Records per log batch, as a consumer fetch would hand them to the operator.
const BATCH_RECORDS: usize = 4096;
/// Barrier cadence: a 1 s epoch at ~1M events/s.
const BATCHES_PER_EPOCH: u64 = 1_000_000 / BATCH_RECORDS as u64;
/// The partition's live rate: event time advances by 1 s per this many records.
const LIVE_EVENTS_PER_S: u64 = 50_000;
const CAMPAIGNS: usize = 1000;
const ADS_PER_CAMPAIGN: u64 = 10;
const HOT_CAMPAIGNS_SALTED: usize = 4;
const SALTS_PER_HOT_CAMPAIGN: u64 = 4;
const IP_POOL: usize = 100_000;
const BOT_IPS: usize = 5;
const USERS: u64 = 1_000_000;
const PUBLISHERS: u64 = 500;
/// Start of event time: 2026-11-28T00:00:00Z.
const T0_MS: u64 = 1_795_824_000_000;
const USER_AGENTS: [&str; 6] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/126.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari/605.1",
    "Dalvik/2.1.0 (Linux; U; Android 13; SM-A536B Build/TP1A)",
    "okhttp/4.12.0 AdSDK/7.3.1 (Android 12; Redmi Note 11)",
];
const COUNTRIES: [[u8; 2]; 8] = [
    *b"US", *b"DE", *b"GB", *b"FR", *b"IN", *b"BR", *b"JP", *b"CA",
];

/// splitmix64: tiny, fast, and good enough for synthetic traffic.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn click_id(&mut self) -> ClickId {
        loop {
            let id = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
            if id != 0 {
                return ClickId(id);
            }
        }
    }

    fn ipv4(&mut self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self.next_u64() as u32))
    }
}

/// Campaign popularity: Zipf with exponent 1 over `CAMPAIGNS` ranks.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, exponent: f64) -> Zipf {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(exponent);
                total
            })
            .collect();
        for value in &mut cdf {
            *value /= total;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.unit();
        self.cdf
            .partition_point(|&p| p <= u)
            .min(self.cdf.len() - 1)
    }
}

fn campaign_of(rank: usize) -> CampaignId {
    CampaignId(100_000 + rank as u64)
}

fn ad_of(campaign: CampaignId, index: u64) -> AdId {
    AdId(campaign.0 * 100 + index)
}

/// The synthetic click source.
struct Traffic {
    rng: SplitMix64,
    campaigns: Zipf,
    ips: Vec<IpAddr>,
    bots: Vec<IpAddr>,
}

impl Traffic {
    fn new(seed: u64) -> Traffic {
        let mut rng = SplitMix64(seed);
        let ips = (0..IP_POOL).map(|_| rng.ipv4()).collect();
        let bots = (0..BOT_IPS).map(|_| rng.ipv4()).collect();
        Traffic {
            rng,
            campaigns: Zipf::new(CAMPAIGNS, 1.0),
            ips,
            bots,
        }
    }

    fn ip(&mut self) -> IpAddr {
        if self.rng.chance(1) {
            self.bots[self.rng.below(BOT_IPS as u64) as usize]
        } else {
            self.ips[self.rng.below(IP_POOL as u64) as usize]
        }
    }

    fn click(&mut self, event_time_ms: u64) -> ClickView<'static> {
        let rank = self.campaigns.sample(&mut self.rng);
        let campaign_id = campaign_of(rank);
        let salt = if rank < HOT_CAMPAIGNS_SALTED {
            Salt(self.rng.below(SALTS_PER_HOT_CAMPAIGN) as u16)
        } else {
            Salt(0)
        };
        ClickView {
            click_id: self.rng.click_id(),
            campaign_id,
            ad_id: ad_of(campaign_id, self.rng.below(ADS_PER_CAMPAIGN)),
            user_id: UserId(self.rng.below(USERS)),
            ip: self.ip(),
            user_agent: USER_AGENTS[self.rng.below(USER_AGENTS.len() as u64) as usize],
            country: Country(COUNTRIES[self.rng.below(COUNTRIES.len() as u64) as usize]),
            event_time_ms: EventTimeMs(event_time_ms),
            publisher_id: (!self.rng.chance(100))
                .then(|| PublisherId(1 + self.rng.below(PUBLISHERS))),
            salt,
        }
    }
}

/// Byte offsets of the fields the chain bench rewrites in place (see the codec's layout table).
const CLICK_ID_AT: usize = 8;
const EVENT_TIME_AT: usize = 48;

/// One fetched batch of encoded log records.
struct Batch {
    bytes: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

impl Batch {
    fn encode(traffic: &mut Traffic, records: usize, event_time_ms: u64) -> Batch {
        let mut bytes = Vec::new();
        let mut spans = Vec::with_capacity(records);
        for _ in 0..records {
            let start = bytes.len();
            codec::encode_into(&traffic.click(event_time_ms), &mut bytes);
            spans.push((start, bytes.len()));
        }
        Batch { bytes, spans }
    }

    fn records(&self) -> impl Iterator<Item = &[u8]> {
        self.spans
            .iter()
            .map(|&(start, end)| &self.bytes[start..end])
    }

    fn set_click(&mut self, record: usize, click_id: ClickId, event_time_ms: u64) {
        let start = self.spans[record].0;
        self.bytes[start + CLICK_ID_AT..start + CLICK_ID_AT + 16]
            .copy_from_slice(&click_id.0.to_le_bytes());
        self.bytes[start + EVENT_TIME_AT..start + EVENT_TIME_AT + 8]
            .copy_from_slice(&event_time_ms.to_le_bytes());
    }
}

/// The IPs of the click pool that a fraud list flags: 1 in 100, plus every bot.
fn listed_pool_ips(traffic: &Traffic) -> Vec<IpAddr> {
    traffic
        .ips
        .iter()
        .step_by(100)
        .chain(&traffic.bots)
        .copied()
        .collect()
}

/// A fraud list's content: 20 bad user agents, the listed pool IPs, and random IPv4 addresses.
fn fraud_entries(entries: usize) -> (Vec<IpAddr>, Vec<String>) {
    let traffic = Traffic::new(1);
    let mut rng = SplitMix64(0xf4a0_d000 + entries as u64);
    let mut ips = listed_pool_ips(&traffic);
    let user_agents: Vec<String> = (0..20).map(|n| format!("BadBot/{n}.0 (scraper)")).collect();
    while ips.len() + user_agents.len() < entries {
        ips.push(rng.ipv4());
    }
    (ips, user_agents)
}

fn build_fraud_list(entries: usize) -> FraudList {
    let (ips, user_agents) = fraud_entries(entries);
    FraudList::build(FraudListVersion(1), ips, user_agents)
}

/// Not the core's code: the fraud list as the core kept it before its split-block filters,
/// fastbloom's unblocked filters with foldhash at the same false-positive rate, same check
/// order. The reference the split-block filters are measured against.
struct UnblockedBlooms {
    ips: fastbloom::BloomFilter<foldhash::fast::FixedState>,
    user_agents: fastbloom::BloomFilter<foldhash::fast::FixedState>,
}

impl UnblockedBlooms {
    fn build(entries: usize) -> UnblockedBlooms {
        let (ips, user_agents) = fraud_entries(entries);
        let bloom = |items: usize| {
            fastbloom::BloomFilter::with_false_pos(limits::FRAUD_BLOOM_FALSE_POSITIVE_RATE)
                .hasher(foldhash::fast::FixedState::with_seed(0xadc1))
                .expected_items(items.max(1))
        };
        let mut blooms = UnblockedBlooms {
            ips: bloom(ips.len()),
            user_agents: bloom(user_agents.len()),
        };
        for ip in ips {
            blooms.ips.insert(&ip_key(ip));
        }
        for agent in &user_agents {
            blooms.user_agents.insert(agent.as_str());
        }
        blooms
    }

    fn check(&self, ip: IpAddr, user_agent: &str) -> FraudVerdict {
        if self.ips.contains(&ip_key(ip)) {
            return FraudVerdict::KnownBadIp;
        }
        if self.user_agents.contains(user_agent) {
            return FraudVerdict::KnownBadUserAgent;
        }
        FraudVerdict::Clean
    }
}

/// The 1M-entry list is shared by the Bloom and the whole-chain benches.
fn fraud_list_1m() -> Arc<FraudList> {
    static LIST: OnceLock<Arc<FraudList>> = OnceLock::new();
    LIST.get_or_init(|| Arc::new(build_fraud_list(1_000_000)))
        .clone()
}

/// What the benches time: wall-clock time by default, or with `HOT_PATH_CLOCK=thread-cpu` the
/// bench thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), which leaves out the time other
/// processes on a busy machine hold the core (but not their pressure on the shared L3 and
/// memory). Either way the value is a `Duration` and criterion prints it as time.
#[derive(Clone, Copy, Debug)]
struct Clock {
    thread_cpu: bool,
}

impl Clock {
    fn from_env() -> Clock {
        match std::env::var("HOT_PATH_CLOCK").as_deref() {
            Err(_) | Ok("wall") => Clock { thread_cpu: false },
            Ok("thread-cpu") => Clock { thread_cpu: true },
            Ok(other) => panic!("HOT_PATH_CLOCK={other:?}: expected `wall` or `thread-cpu`"),
        }
    }

    fn name(self) -> &'static str {
        if self.thread_cpu {
            "thread-cpu"
        } else {
            "wall"
        }
    }

    /// Time since an arbitrary origin.
    fn now(self) -> Duration {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        if self.thread_cpu {
            thread_cpu_time()
        } else {
            ORIGIN.get_or_init(Instant::now).elapsed()
        }
    }
}

#[cfg(target_os = "linux")]
fn thread_cpu_time() -> Duration {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock_id: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut time = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec; the clock id is Linux's thread CPU clock.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut time) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_time() -> Duration {
    panic!("HOT_PATH_CLOCK=thread-cpu is only implemented on Linux")
}

static CLOCK: OnceLock<Clock> = OnceLock::new();

/// The current reading of the bench clock.
fn now() -> Duration {
    CLOCK.get_or_init(Clock::from_env).now()
}

impl Measurement for Clock {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        self.now()
    }
    fn end(&self, start: Duration) -> Duration {
        self.now() - start
    }
    fn add(&self, v1: &Duration, v2: &Duration) -> Duration {
        *v1 + *v2
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

fn criterion_config() -> Criterion<Clock> {
    let clock = *CLOCK.get_or_init(Clock::from_env);
    print(&format!("clock: {}", clock.name()));
    Criterion::default().with_measurement(clock)
}

fn print(line: &str) {
    eprintln!("hot_path: {line}");
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

// ---------------------------------------------------------------------------------------------
// 1. decode

fn bench_decode(c: &mut Criterion<Clock>) {
    let mut traffic = Traffic::new(1);
    // 16 batches (~9 MB), so the records come from L3/memory as a fresh fetch would, not from L1.
    let batches: Vec<Batch> = (0..16)
        .map(|_| Batch::encode(&mut traffic, BATCH_RECORDS, T0_MS))
        .collect();
    let bytes: usize = batches.iter().map(|batch| batch.bytes.len()).sum();
    print(&format!(
        "decode: {} records, mean {:.1} bytes per record",
        batches.len() * BATCH_RECORDS,
        bytes as f64 / (batches.len() * BATCH_RECORDS) as f64
    ));
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(BATCH_RECORDS as u64));
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(2));
    let mut next = 0;
    group.bench_function("batch_4096", |b| {
        b.iter(|| {
            let batch = &batches[next % batches.len()];
            next += 1;
            for record in batch.records() {
                let view = codec::decode(record).expect("valid record");
                black_box(&view);
            }
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 2. dedup

/// Inserts fresh random ids at a steady rate of event time, expiring (and taking the journal,
/// as a barrier would) at every bucket boundary, so the set holds between horizon / (horizon +
/// one default bucket) and all of `steady_ids`.
struct DedupDriver {
    set: DedupSet,
    config: DedupConfig,
    steady_ids: u64,
    rng: SplitMix64,
    /// Ids inserted so far; id `n` has event time `T0_MS + n * span / steady_ids`.
    index: u64,
    last_bucket: u64,
    ids: Vec<ClickId>,
    insert_time: Duration,
    expire_time: Duration,
    expires: u64,
    inserts: u64,
    table_bytes: usize,
    /// Every change of the table's allocation: (ids inserted so far, len, bytes before, after,
    /// time of the batch that grew it).
    growths: Vec<(u64, usize, usize, usize, Duration)>,
}

impl DedupDriver {
    /// `steady_ids` fixes the rate: that many ids per horizon plus one default bucket.
    fn new(steady_ids: usize, bucket_ms: u64) -> DedupDriver {
        let config = DedupConfig {
            ids_expected: steady_ids,
            ids_max: steady_ids.max(limits::DEDUP_IDS_PER_PARTITION_MAX_DEFAULT),
            bucket_ms,
            ..DedupConfig::default()
        };
        let set = DedupSet::new(config);
        let mut driver = DedupDriver {
            table_bytes: set.allocated_bytes(),
            set,
            config,
            steady_ids: steady_ids as u64,
            rng: SplitMix64(0xdedd + steady_ids as u64),
            index: 0,
            last_bucket: T0_MS / config.bucket_ms,
            ids: vec![ClickId(0); BATCH_RECORDS],
            insert_time: Duration::ZERO,
            expire_time: Duration::ZERO,
            expires: 0,
            inserts: 0,
            growths: Vec::new(),
        };
        // Reach the steady size: the horizon plus a bucket, plus 6/19 of that again.
        let warm_batches = (steady_ids + 6 * steady_ids / 19) / BATCH_RECORDS + 1;
        for _ in 0..warm_batches {
            driver.run_batch();
        }
        driver.insert_time = Duration::ZERO;
        driver.expire_time = Duration::ZERO;
        driver.expires = 0;
        driver.inserts = 0;
        driver
    }

    fn event_time_ms(&self, index: u64) -> u64 {
        let span_ms = self.config.horizon_ms + limits::DEDUP_BUCKET_MS_DEFAULT;
        T0_MS + (u128::from(index) * u128::from(span_ms) / u128::from(self.steady_ids)) as u64
    }

    fn run_batch(&mut self) -> Duration {
        for id in &mut self.ids {
            *id = self.rng.click_id();
        }
        let times: [u64; 2] = [
            self.event_time_ms(self.index),
            self.event_time_ms(self.index + BATCH_RECORDS as u64),
        ];
        let start = now();
        for (n, &id) in self.ids.iter().enumerate() {
            // Interpolate within the batch: cheaper than a 128-bit division per id.
            let time_ms = times[0] + (times[1] - times[0]) * n as u64 / BATCH_RECORDS as u64;
            black_box(self.set.insert(id, time_ms));
        }
        let inserted = now();
        self.index += BATCH_RECORDS as u64;
        self.inserts += BATCH_RECORDS as u64;
        let bucket = times[1] / self.config.bucket_ms;
        if bucket > self.last_bucket {
            self.last_bucket = bucket;
            self.set.expire(times[1]);
            drop(black_box(self.set.take_journal()));
            self.expires += 1;
        }
        let done = now();
        self.insert_time += inserted - start;
        self.expire_time += done - inserted;
        let bytes = self.set.allocated_bytes();
        if bytes != self.table_bytes {
            self.growths.push((
                self.index,
                self.set.len(),
                self.table_bytes,
                bytes,
                inserted - start,
            ));
            self.table_bytes = bytes;
        }
        done - start
    }
}

/// Bytes per retained id at a few fill levels, each table pre-sized with `ids_expected`.
fn report_dedup_memory() {
    let cases: [(&str, usize, usize); 5] = [
        ("1M ids, ids_expected 1M", 1_000_000, 1_000_000),
        (
            "7.34M ids (2^23*7/8), ids_expected 7.34M",
            7_340_032,
            7_340_032,
        ),
        (
            "7.34M+1 ids, ids_expected 7.34M (one past the pre-size)",
            7_340_033,
            7_340_032,
        ),
        (
            "14.68M ids (2^24*7/8, the default bound), ids_expected 14.68M",
            14_680_064,
            14_680_064,
        ),
        (
            "1M ids, ids_expected 14.68M (pre-sized to the default bound)",
            1_000_000,
            14_680_064,
        ),
    ];
    for (name, ids, ids_expected) in cases {
        let mut set = DedupSet::new(DedupConfig {
            ids_expected,
            ids_max: ids_expected.max(ids),
            ..DedupConfig::default()
        });
        let mut rng = SplitMix64(ids as u64);
        for _ in 0..ids {
            set.insert(rng.click_id(), T0_MS);
        }
        drop(set.take_journal());
        print(&format!(
            "dedup memory: {name}: len {}, allocated {} bytes ({:.1} MiB), {:.2} bytes per retained id",
            set.len(),
            set.allocated_bytes(),
            mb(set.allocated_bytes()),
            set.allocated_bytes() as f64 / set.len() as f64
        ));
    }
}

fn bench_dedup(c: &mut Criterion<Clock>) {
    // Only when a dedup bench runs: filling the tables takes seconds and ~1 GB.
    let mut memory_reported = false;
    let mut group = c.benchmark_group("dedup_insert");
    group.throughput(Throughput::Elements(BATCH_RECORDS as u64));
    group.measurement_time(Duration::from_secs(8));
    group.warm_up_time(Duration::from_secs(2));
    group.sample_size(20);
    group.sampling_mode(SamplingMode::Flat);
    let cases = [
        ("steady_1M", 1_000_000, limits::DEDUP_BUCKET_MS_DEFAULT),
        ("steady_7.34M", 7_340_032, limits::DEDUP_BUCKET_MS_DEFAULT),
        // Not the default config: the same traffic with 30 s expiry buckets (the default until
        // 5 s buckets made the peak bytes per id fit 24).
        ("steady_7.34M_bucket_30s", 7_340_032, 30_000),
    ];
    for (name, steady_ids, bucket_ms) in cases {
        let mut driver: Option<DedupDriver> = None;
        group.bench_function(name, |b| {
            let driver = driver.get_or_insert_with(|| {
                if !memory_reported {
                    memory_reported = true;
                    report_dedup_memory();
                }
                DedupDriver::new(steady_ids, bucket_ms)
            });
            b.iter_custom(|iters| (0..iters).map(|_| driver.run_batch()).sum());
        });
        if let Some(driver) = driver {
            print(&format!(
                "dedup_insert/{name}: len {}, {:.2} bytes per retained id; {} inserts at {:.1} ns each excluding expiry; {} expiries (lazy: each moves a threshold) at {:.1} ms each, {:.1} ns per insert amortized",
                driver.set.len(),
                driver.set.allocated_bytes() as f64 / driver.set.len() as f64,
                driver.inserts,
                driver.insert_time.as_secs_f64() * 1e9 / driver.inserts.max(1) as f64,
                driver.expires,
                driver.expire_time.as_secs_f64() * 1e3 / driver.expires.max(1) as f64,
                driver.expire_time.as_secs_f64() * 1e9 / driver.inserts.max(1) as f64,
            ));
            for (index, len, before, after, took) in &driver.growths {
                print(&format!(
                    "dedup_insert/{name}: table went from {:.0} MiB to {:.0} MiB after {index} inserts, at len {len} ({:.1} ms batch)",
                    mb(*before),
                    mb(*after),
                    took.as_secs_f64() * 1e3
                ));
            }
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. Bloom lookup

fn bench_bloom(c: &mut Criterion<Clock>) {
    let mut group = c.benchmark_group("bloom_lookup");
    group.throughput(Throughput::Elements(BATCH_RECORDS as u64));
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(2));
    // 64k lookups drawn like the clicks: IPs from the 100k pool (1% listed) and bots.
    let mut traffic = Traffic::new(1);
    let lookups: Vec<(IpAddr, &str)> = (0..1 << 16)
        .map(|_| {
            let click = traffic.click(T0_MS);
            (click.ip, click.user_agent)
        })
        .collect();
    for (name, entries) in [("list_1M", 1_000_000), ("list_10M", 10_000_000)] {
        let mut list: Option<Arc<FraudList>> = None;
        let mut next = 0;
        group.bench_function(name, |b| {
            let list = list.get_or_insert_with(|| {
                let start = Instant::now();
                let list = if entries == 1_000_000 {
                    fraud_list_1m()
                } else {
                    Arc::new(build_fraud_list(entries))
                };
                print(&format!(
                    "bloom_lookup/{name}: {} entries, {:.1} MiB of Bloom filters, built in {:.2} s",
                    list.entries(),
                    mb(list.bloom_bytes()),
                    start.elapsed().as_secs_f64()
                ));
                list
            });
            b.iter(|| {
                let chunk = &lookups[next..next + BATCH_RECORDS];
                next = (next + BATCH_RECORDS) % lookups.len();
                let mut flagged = 0u32;
                for &(ip, agent) in chunk {
                    flagged += u32::from(list.check(ip, agent) != FraudVerdict::Clean);
                }
                black_box(flagged)
            })
        });
        if let Some(list) = list {
            let flagged = lookups
                .iter()
                .filter(|(ip, agent)| list.check(*ip, agent) != FraudVerdict::Clean)
                .count();
            print(&format!(
                "bloom_lookup/{name}: {:.2}% of the lookups are flagged",
                100.0 * flagged as f64 / lookups.len() as f64
            ));
        }
    }
    let mut blooms: Option<UnblockedBlooms> = None;
    let mut next = 0;
    group.bench_function("list_1M_fastbloom_not_core", |b| {
        let blooms = blooms.get_or_insert_with(|| UnblockedBlooms::build(1_000_000));
        b.iter(|| {
            let chunk = &lookups[next..next + BATCH_RECORDS];
            next = (next + BATCH_RECORDS) % lookups.len();
            let mut flagged = 0u32;
            for &(ip, agent) in chunk {
                flagged += u32::from(blooms.check(ip, agent) != FraudVerdict::Clean);
            }
            black_box(flagged)
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. window counts, and the rate rule's counters

/// A stream of counts-table keys, pre-drawn so that drawing costs nothing in the timed loop.
fn window_keys(count: usize) -> Vec<(WindowKey, HourKey)> {
    let mut traffic = Traffic::new(2);
    let window = WindowConfig::default();
    let current = window.window_start(T0_MS + 30 * window.window_ms);
    (0..count)
        .map(|_| {
            // Three open windows: nearly every click in the current one, a few stragglers.
            let back = match traffic.rng.below(1000) {
                0..970 => 0,
                970..995 => 1,
                _ => 2,
            };
            let click = traffic.click(current - back * window.window_ms);
            let start = window.window_start(click.event_time_ms.0);
            (
                WindowKey {
                    campaign_id: click.campaign_id,
                    ad_id: click.ad_id,
                    salt: click.salt,
                    window_start_ms: start,
                },
                HourKey {
                    campaign_id: click.campaign_id,
                    salt: click.salt,
                    hour_start_ms: start - start % limits::HOUR_MS,
                },
            )
        })
        .collect()
}

fn bench_window(c: &mut Criterion<Clock>) {
    let mut group = c.benchmark_group("window_update");
    group.throughput(Throughput::Elements(BATCH_RECORDS as u64));
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(2));
    let keys = window_keys(1 << 20);
    let delta = Counts {
        clicks: 1,
        unique: 1,
        fraud: 0,
    };

    let mut windows = CountsTable::<WindowKey>::default();
    let mut hours = CountsTable::<HourKey>::default();
    // Every (campaign, ad, salt) in each of the three open windows.
    let window = WindowConfig::default();
    let current = window.window_start(T0_MS + 30 * window.window_ms);
    for rank in 0..CAMPAIGNS {
        let campaign_id = campaign_of(rank);
        let salts = if rank < HOT_CAMPAIGNS_SALTED {
            SALTS_PER_HOT_CAMPAIGN
        } else {
            1
        };
        for salt in 0..salts {
            for ad in 0..ADS_PER_CAMPAIGN {
                for back in 0..3 {
                    windows.add(
                        WindowKey {
                            campaign_id,
                            ad_id: ad_of(campaign_id, ad),
                            salt: Salt(salt as u16),
                            window_start_ms: current - back * window.window_ms,
                        },
                        delta,
                    );
                }
            }
        }
    }
    for &(_, hour) in &keys {
        hours.add(hour, delta);
    }
    drop(windows.take_dirty());
    drop(hours.take_dirty());
    print(&format!(
        "window_update: {} window series, {} hour series",
        windows.len(),
        hours.len()
    ));

    // The barrier takes the dirty series every epoch; that is part of the cost.
    let mut next = 0;
    let mut batches = 0u64;
    group.bench_function("window_key_30k_series", |b| {
        b.iter(|| {
            for &(key, _) in &keys[next..next + BATCH_RECORDS] {
                windows.add(key, delta);
            }
            next = (next + BATCH_RECORDS) % keys.len();
            batches += 1;
            if batches.is_multiple_of(BATCHES_PER_EPOCH) {
                black_box(windows.take_dirty());
            }
        })
    });
    let mut next = 0;
    let mut batches = 0u64;
    group.bench_function("hour_key", |b| {
        b.iter(|| {
            for &(_, key) in &keys[next..next + BATCH_RECORDS] {
                hours.add(key, delta);
            }
            next = (next + BATCH_RECORDS) % keys.len();
            batches += 1;
            if batches.is_multiple_of(BATCHES_PER_EPOCH) {
                black_box(hours.take_dirty());
            }
        })
    });
    group.finish();
}

/// The rate rule's steady state: every pool IP in each of the ~3 live minutes.
struct RateDriver {
    rule: RateRule,
    /// (ip, event-time offset in ms within one lap of the stream)
    stream: Vec<(IpAddr, u64)>,
    lap_ms: u64,
    lap: u64,
    next: usize,
    batches: u64,
}

impl RateDriver {
    fn new() -> RateDriver {
        let mut traffic = Traffic::new(3);
        let count = 1 << 20;
        let stream: Vec<(IpAddr, u64)> = (0..count as u64)
            .map(|index| {
                let jitter = traffic.rng.below(2000);
                (
                    traffic.ip(),
                    (index * 1000 / LIVE_EVENTS_PER_S).saturating_sub(jitter),
                )
            })
            .collect();
        let mut driver = RateDriver {
            rule: RateRule::new(limits::RATE_RULE_CLICKS_PER_IP_PER_MINUTE_MAX_DEFAULT),
            lap_ms: count as u64 * 1000 / LIVE_EVENTS_PER_S,
            stream,
            lap: 0,
            next: 0,
            batches: 0,
        };
        // Four minutes of traffic reach the steady number of live counters.
        let warm = (4 * 60 * LIVE_EVENTS_PER_S) as usize / BATCH_RECORDS;
        for _ in 0..warm {
            driver.run_batch();
        }
        driver
    }

    fn run_batch(&mut self) {
        let base_ms = T0_MS + self.lap * self.lap_ms;
        let chunk = &self.stream[self.next..self.next + BATCH_RECORDS];
        let mut exceeded = 0u32;
        let mut max_ms = 0;
        for &(ip, offset_ms) in chunk {
            let event_time_ms = base_ms + offset_ms;
            max_ms = event_time_ms;
            exceeded += u32::from(!self.rule.admit(ip, event_time_ms));
        }
        black_box(exceeded);
        self.next += BATCH_RECORDS;
        if self.next == self.stream.len() {
            self.next = 0;
            self.lap += 1;
        }
        self.batches += 1;
        // The barrier: take the dirty counters and retire the closed minutes, as on_barrier does,
        // at the whole-chain bench's cadence.
        if self.batches.is_multiple_of(BATCHES_PER_EPOCH) {
            let window = WindowConfig::default();
            let watermark_ms = max_ms.saturating_sub(window.max_out_of_orderness_ms);
            black_box(self.rule.take_changed());
            self.rule.retire_before(watermark_ms, |start| {
                window.close_at(start, limits::RATE_RULE_WINDOW_MS)
            });
        }
    }
}

fn bench_rate_rule(c: &mut Criterion<Clock>) {
    let mut group = c.benchmark_group("rate_rule");
    group.throughput(Throughput::Elements(BATCH_RECORDS as u64));
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(2));
    let mut driver: Option<RateDriver> = None;
    group.bench_function("admit", |b| {
        let driver = driver.get_or_insert_with(|| {
            let driver = RateDriver::new();
            print(&format!(
                "rate_rule/admit: {} live (ip, minute) counters",
                driver.rule.len()
            ));
            driver
        });
        b.iter(|| driver.run_batch())
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. the whole chain

/// Distinct encoded batches; the chain rewrites click id and event time of each record on reuse.
const CHAIN_POOL_BATCHES: usize = 64;
/// Per mille of records that are client retries of a recent click.
const RETRY_PER_MILLE: u64 = 10;
/// Per mille of records that arrive 1.5 to 2.5 minutes late.
const LATE_PER_MILLE: u64 = 1;

#[derive(Default)]
struct ChainTimes {
    batches: u64,
    batch_time: Duration,
    delta_barriers: u64,
    delta_barrier_time: Duration,
    delta_checkpoint_bytes: usize,
    full_barriers: u64,
    full_barrier_time: Duration,
    full_checkpoint_bytes: usize,
    slowest_batch: Duration,
}

struct ChainDriver {
    aggregator: PartitionAggregator,
    pool: Vec<Batch>,
    rng: SplitMix64,
    next_batch: usize,
    records: u64,
    epoch: u64,
    recent: Vec<(ClickId, u64)>,
    times: ChainTimes,
    dedup_bytes: usize,
    /// Every change of the dedup table's allocation: (records so far, len, bytes before, after,
    /// time of the batch that did it).
    dedup_growths: Vec<(u64, usize, usize, usize, Duration)>,
    /// Bytes per retained dedup id after each batch since warm-up: (min, sum, max, samples).
    /// Bucketed expiry makes it a sawtooth, so one end-of-run figure would be arbitrary.
    dedup_bytes_per_id: (f64, f64, f64, u64),
    /// Dedup passes over the whole table (grows, tag rebases) and displacements during the
    /// warm-up, to count those of the timed run.
    warm_table_passes: u64,
    warm_displacements: u64,
}

/// The most event time the chain's dedup set holds under the default configs: the horizon, the
/// bucket being filled, the watermark's lag, and one epoch of event time between expiries.
fn chain_held_event_ms() -> u64 {
    let (window, dedup) = (WindowConfig::default(), DedupConfig::default());
    let epoch_event_ms = BATCHES_PER_EPOCH * BATCH_RECORDS as u64 * 1000 / LIVE_EVENTS_PER_S;
    dedup.horizon_ms + dedup.bucket_ms + window.max_out_of_orderness_ms + epoch_event_ms
}

fn chain_config() -> AggregatorConfig {
    AggregatorConfig {
        dedup: DedupConfig {
            ids_expected: (chain_held_event_ms() * LIVE_EVENTS_PER_S / 1000) as usize,
            ..DedupConfig::default()
        },
        ..AggregatorConfig::default()
    }
}

impl ChainDriver {
    fn new() -> ChainDriver {
        let mut traffic = Traffic::new(1);
        let pool = (0..CHAIN_POOL_BATCHES)
            .map(|_| Batch::encode(&mut traffic, BATCH_RECORDS, T0_MS))
            .collect();
        let config = chain_config();
        let mut driver = ChainDriver {
            aggregator: PartitionAggregator::new(config, PartitionId(0), fraud_list_1m()),
            pool,
            rng: SplitMix64(0xc4a1),
            next_batch: 0,
            records: 0,
            epoch: 0,
            recent: vec![(ClickId(1), T0_MS); 4096],
            times: ChainTimes::default(),
            dedup_bytes: 0,
            dedup_growths: Vec::new(),
            dedup_bytes_per_id: (f64::MAX, 0.0, 0.0, 0),
            warm_table_passes: 0,
            warm_displacements: 0,
        };
        driver.dedup_bytes = driver.aggregator.dedup().allocated_bytes();
        // Fill dedup to its steady size: the horizon plus a few epochs of event time.
        let warm_events = (config.dedup.ids_expected as u64 + 2_000_000) as usize;
        for _ in 0..warm_events / BATCH_RECORDS {
            driver.run_batch();
        }
        driver.times = ChainTimes::default();
        driver.dedup_bytes_per_id = (f64::MAX, 0.0, 0.0, 0);
        driver.warm_table_passes = driver.aggregator.dedup().table_passes();
        driver.warm_displacements = driver.aggregator.dedup().displacements();
        driver
    }

    /// Rewrites the next pool batch with fresh ids and advancing event times (not timed), then
    /// times the operator on it and, every `BATCHES_PER_EPOCH`, a barrier and commit.
    fn run_batch(&mut self) -> Duration {
        let batch = &mut self.pool[self.next_batch];
        self.next_batch = (self.next_batch + 1) % CHAIN_POOL_BATCHES;
        for record in 0..BATCH_RECORDS {
            let index = self.records + record as u64;
            let now_ms = T0_MS + index * 1000 / LIVE_EVENTS_PER_S;
            let slot = (index % self.recent.len() as u64) as usize;
            let (click_id, event_time_ms) = if self.rng.chance(RETRY_PER_MILLE) {
                self.recent[self.rng.below(self.recent.len() as u64) as usize]
            } else {
                let lateness_ms = if self.rng.chance(LATE_PER_MILLE) {
                    90_000 + self.rng.below(60_000)
                } else {
                    self.rng.below(2_000)
                };
                (self.rng.click_id(), now_ms - lateness_ms)
            };
            self.recent[slot] = (click_id, event_time_ms);
            batch.set_click(record, click_id, event_time_ms);
        }
        let first_offset = self.records;
        let processing_ms = T0_MS + first_offset * 1000 / LIVE_EVENTS_PER_S;
        self.records += BATCH_RECORDS as u64;

        let start = now();
        let undecodable = self.aggregator.on_batch(
            batch
                .records()
                .enumerate()
                .map(|(index, record)| (Offset(first_offset + index as u64), record)),
            processing_ms,
        );
        let batch_done = now();
        assert!(undecodable.is_empty());
        self.times.batches += 1;
        self.times.batch_time += batch_done - start;
        self.times.slowest_batch = self.times.slowest_batch.max(batch_done - start);
        let dedup_bytes = self.aggregator.dedup().allocated_bytes();
        if dedup_bytes != self.dedup_bytes {
            self.dedup_growths.push((
                self.records,
                self.aggregator.dedup().len(),
                self.dedup_bytes,
                dedup_bytes,
                batch_done - start,
            ));
            self.dedup_bytes = dedup_bytes;
        }
        let per_id = dedup_bytes as f64 / self.aggregator.dedup().len().max(1) as f64;
        let (low, sum, high, samples) = &mut self.dedup_bytes_per_id;
        (*low, *sum, *high, *samples) = (
            low.min(per_id),
            *sum + per_id,
            high.max(per_id),
            *samples + 1,
        );
        if !self.times.batches.is_multiple_of(BATCHES_PER_EPOCH) {
            return batch_done - start;
        }
        self.epoch += 1;
        let output = self.aggregator.on_barrier(Epoch(self.epoch));
        self.aggregator.on_commit(Epoch(self.epoch));
        let kind = output.checkpoint.kind;
        let checkpoint_bytes = output.checkpoint_bytes.len();
        let output = black_box(output);
        // As the engine's worker does once the checkpoint is stored.
        self.aggregator
            .recycle(output.checkpoint, output.checkpoint_bytes);
        let done = now();
        if kind == CheckpointKind::Full {
            self.times.full_barriers += 1;
            self.times.full_barrier_time += done - batch_done;
            self.times.full_checkpoint_bytes = checkpoint_bytes;
        } else {
            self.times.delta_barriers += 1;
            self.times.delta_barrier_time += done - batch_done;
            self.times.delta_checkpoint_bytes = checkpoint_bytes;
        }
        done - start
    }

    /// A full checkpoint comes every 60 epochs (60M events here), so it rarely falls inside the
    /// measurement. Its dominant part is the sorted dump of every dedup id; time that part the
    /// way `on_barrier` does it (sort, then encode), on the steady-state set.
    fn report_full_checkpoint_estimate(&self) {
        let start = now();
        let dedup_ids = self.aggregator.dedup().entries_sorted();
        let sorted = now();
        let checkpoint = PartitionCheckpoint {
            partition: PartitionId(0),
            epoch: Epoch(self.epoch),
            kind: CheckpointKind::Full,
            next_offset: self.aggregator.next_offset(),
            watermark: self.aggregator.watermark(),
            fraud_list_version: self.aggregator.fraud_list_version(),
            stats: self.aggregator.stats(),
            windows: Vec::new(),
            hours: Vec::new(),
            rate: Vec::new(),
            dedup_ids,
            dedup_cutoff_bucket: self.aggregator.dedup().cutoff_bucket(),
            dedup_stats: self.aggregator.dedup().stats(),
            window_ms: chain_config().window.window_ms,
            dedup_bucket_ms: chain_config().dedup.bucket_ms,
        };
        let bytes = encode_checkpoint(&checkpoint);
        let encoded = now();
        let full_epochs = chain_config().full_checkpoint_every_epochs;
        let took = encoded - start;
        print(&format!(
            "whole_chain: full checkpoint estimate (dedup ids only, {} ids): sort {:.0} ms + encode {:.0} ms = {:.0} ms, {:.1} MiB; {:.1} ns/event amortized over {} epochs of {} events",
            checkpoint.dedup_ids.len(),
            (sorted - start).as_secs_f64() * 1e3,
            (encoded - sorted).as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e3,
            mb(bytes.len()),
            took.as_secs_f64() * 1e9
                / (full_epochs * BATCHES_PER_EPOCH * BATCH_RECORDS as u64) as f64,
            full_epochs,
            BATCHES_PER_EPOCH * BATCH_RECORDS as u64,
        ));
    }

    fn report(&self) {
        let times = &self.times;
        let per_event_ns = |time: Duration, events: u64| time.as_secs_f64() * 1e9 / events as f64;
        let events = times.batches * BATCH_RECORDS as u64;
        print(&format!(
            "whole_chain: {} events in {} batches since warm-up; on_batch alone {:.1} ns/event ({:.2}M events/s), slowest batch {:.1} ms",
            events,
            times.batches,
            per_event_ns(times.batch_time, events),
            1e3 / per_event_ns(times.batch_time, events),
            times.slowest_batch.as_secs_f64() * 1e3,
        ));
        if times.delta_barriers > 0 {
            print(&format!(
                "whole_chain: {} delta barriers, {:.1} ms each ({:.1} ns/event amortized over an epoch of {} events), last checkpoint {:.1} MiB",
                times.delta_barriers,
                times.delta_barrier_time.as_secs_f64() * 1e3 / times.delta_barriers as f64,
                per_event_ns(
                    times.delta_barrier_time,
                    times.delta_barriers * BATCHES_PER_EPOCH * BATCH_RECORDS as u64
                ),
                BATCHES_PER_EPOCH * BATCH_RECORDS as u64,
                mb(times.delta_checkpoint_bytes)
            ));
        }
        if times.full_barriers > 0 {
            let full_epochs = chain_config().full_checkpoint_every_epochs;
            print(&format!(
                "whole_chain: {} full barriers, {:.1} ms each ({:.1} ns/event amortized over {} epochs), checkpoint {:.1} MiB",
                times.full_barriers,
                times.full_barrier_time.as_secs_f64() * 1e3 / times.full_barriers as f64,
                per_event_ns(
                    times.full_barrier_time,
                    times.full_barriers * full_epochs * BATCHES_PER_EPOCH * BATCH_RECORDS as u64
                ),
                full_epochs,
                mb(times.full_checkpoint_bytes)
            ));
        }
        let stats = self.aggregator.stats();
        let dedup = self.aggregator.dedup();
        print(&format!(
            "whole_chain: totals since start: {} clicks, {} duplicates, {} late, {} expired, fraud {} known ip / {} known ua / {} rate; {} open windows; watermark {} s of event time in",
            stats.clicks,
            stats.duplicates,
            stats.late,
            stats.expired,
            stats.fraud_known_ip,
            stats.fraud_known_user_agent,
            stats.fraud_rate,
            self.aggregator.open_windows(),
            (self.aggregator.watermark().watermark_ms - T0_MS) / 1000,
        ));
        print(&format!(
            "whole_chain: dedup len {}, ids_expected {}, {:.1} MiB, {:.2} bytes per retained id, {:?}; since warm-up {} passes over the table ({} in all) and {} displacements ({:.4} per event)",
            dedup.len(),
            chain_config().dedup.ids_expected,
            mb(dedup.allocated_bytes()),
            dedup.allocated_bytes() as f64 / dedup.len() as f64,
            dedup.stats(),
            dedup.table_passes() - self.warm_table_passes,
            dedup.table_passes(),
            dedup.displacements() - self.warm_displacements,
            (dedup.displacements() - self.warm_displacements) as f64 / events.max(1) as f64,
        ));
        let (low, sum, high, samples) = self.dedup_bytes_per_id;
        print(&format!(
            "whole_chain: dedup bytes per retained id over {samples} batches: min {low:.2}, mean {:.2}, max {high:.2}",
            sum / samples.max(1) as f64
        ));
        for (records, len, before, after, took) in &self.dedup_growths {
            print(&format!(
                "whole_chain: dedup table went from {:.0} MiB to {:.0} MiB after {records} records, at len {len} ({:.1} ms batch)",
                mb(*before),
                mb(*after),
                took.as_secs_f64() * 1e3
            ));
        }
    }
}

impl ChainDriver {
    /// The dedup set's one-byte tags span 255 buckets, so every `255 - held` buckets of event
    /// time it rebases them: a pass over the whole table, inside the `on_batch`
    /// that needs it. With the default 5 s buckets that is every ~18 min of event time, outside
    /// the timed run: force one at the end (one click 255 buckets past the cutoff) and time it.
    fn report_tag_rebase(&mut self) {
        let dedup = chain_config().dedup;
        let held_buckets = chain_held_event_ms().div_ceil(dedup.bucket_ms);
        let events_between = (255 - held_buckets) * dedup.bucket_ms * LIVE_EVENTS_PER_S / 1000;
        let len = self.aggregator.dedup().len();
        let ahead_ms = u64::from(self.aggregator.dedup().cutoff_bucket() + 255) * dedup.bucket_ms;
        let click = Traffic::new(9).click(ahead_ms);
        let offset = self.aggregator.next_offset();
        let start = now();
        // Judged at its own time, as if the clock had moved there: far enough ahead of the
        // chain's clock that the quarantine would otherwise take it.
        self.aggregator
            .on_click(offset, &click, ahead_ms)
            .expect("judged at its own time, the click is in bounds");
        let took = now() - start;
        print(&format!(
            "whole_chain: a forced dedup tag rebase at len {len} took {:.1} ms; at {} s buckets one comes every {} buckets ({events_between} events at the live rate): {:.1} ns/event amortized",
            took.as_secs_f64() * 1e3,
            dedup.bucket_ms / 1000,
            255 - held_buckets,
            took.as_secs_f64() * 1e9 / events_between as f64,
        ));
    }
}

fn bench_whole_chain(c: &mut Criterion<Clock>) {
    let mut group = c.benchmark_group("whole_chain");
    group.throughput(Throughput::Elements(BATCH_RECORDS as u64));
    group.measurement_time(Duration::from_secs(10));
    group.warm_up_time(Duration::from_secs(3));
    group.sample_size(20);
    group.sampling_mode(SamplingMode::Flat);
    let mut driver: Option<ChainDriver> = None;
    group.bench_function("on_batch_4096_with_barriers", |b| {
        let driver = driver.get_or_insert_with(|| {
            let start = Instant::now();
            let driver = ChainDriver::new();
            print(&format!(
                "whole_chain: warm-up to steady state took {:.1} s; config {:?}",
                start.elapsed().as_secs_f64(),
                chain_config()
            ));
            driver
        });
        b.iter_custom(|iters| (0..iters).map(|_| driver.run_batch()).sum());
    });
    group.finish();
    if let Some(mut driver) = driver {
        driver.report();
        driver.report_full_checkpoint_estimate();
        driver.report_tag_rebase();
    }
}

criterion_group!(
    name = benches;
    config = criterion_config();
    targets = bench_decode,
    bench_dedup,
    bench_bloom,
    bench_window,
    bench_rate_rule,
    bench_whole_chain
);
criterion_main!(benches);
