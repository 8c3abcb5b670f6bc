//! The Redis store against a real Redis (127.0.0.1:6379, or `ADCLICK_REDIS_URL`), held to the
//! same contract as the embedded store: every check runs on both.

use std::sync::Arc;

use adclick_core::ids::*;
use adclick_core::operator::{Series, SeriesUpdate};
use adclick_core::partition::partition_for_campaign;
use adclick_core::window::{Counts, HourKey, Lane, WindowKey};
use adclick_engine::embedded::MemoryRealtimeStore;
use adclick_engine::fencing::Fence;
use adclick_engine::seams::{Granularity, PartitionStatus, RealtimeStore, Rebuilder, StoreError};
use adclick_io::redis_store::{KeySpace, RedisConfig, RedisStore};

const PARTITIONS: u32 = 4;
const WINDOW_MS: u64 = 60_000;

pub fn redis_url() -> String {
    std::env::var("ADCLICK_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned())
}

/// A store under a prefix of its own, so tests never see each other's keys.
async fn redis_store(test: &str) -> RedisStore {
    let mut config = RedisConfig::new(redis_url());
    config.prefix = format!("adclick-test-{test}-{}", std::process::id());
    let keys = KeySpace {
        partitions: PARTITIONS,
        window_ms: WINDOW_MS,
        salts_max: 2,
    };
    let store = RedisStore::connect(config, keys).await.unwrap_or_else(|error| {
        panic!(
            "these tests need a real Redis at {} (start it with the command in the machine doc, \
             or set ADCLICK_REDIS_URL): {error:#}",
            redis_url()
        )
    });
    store.delete_all().await.unwrap();
    store
}

fn window(campaign: u64, ad: u64, salt: u16, minute: u64) -> Series {
    Series::Window(WindowKey {
        campaign_id: CampaignId(campaign),
        ad_id: AdId(ad),
        salt: Salt(salt),
        window_start_ms: minute * WINDOW_MS,
    })
}

fn update(series: Series, lane: Lane, unique: u64, is_final: bool) -> SeriesUpdate {
    SeriesUpdate {
        series,
        lane,
        counts: Counts {
            clicks: unique + 1,
            unique,
            fraud: 1,
        },
        is_final,
    }
}

fn status(partition: PartitionId, generation: Generation, epoch: u64) -> PartitionStatus {
    PartitionStatus {
        partition,
        generation,
        epoch: Epoch(epoch),
        next_offset: Offset(epoch * 10),
        watermark: Default::default(),
        stats: Default::default(),
        dedup_cutoff_ms: 0,
        dedup_early_evictions: 0,
        last_idle_advance: None,
        health: Default::default(),
    }
}

fn owner(campaign: u64, salt: u16) -> PartitionId {
    partition_for_campaign(CampaignId(campaign), Salt(salt), PARTITIONS)
}

/// Fencing: a stale generation is refused, an older epoch is stale, a replay is harmless.
async fn fencing_contract(store: &dyn RealtimeStore) {
    let partition = owner(7, 0);
    let series = window(7, 1, 0, 10);
    let first = store
        .claim_partition(partition, Generation(0))
        .await
        .unwrap()
        .generation;
    let fence = |generation, epoch| Fence {
        generation,
        epoch: Epoch(epoch),
    };
    let outcome = store
        .apply(
            partition,
            fence(first, 5),
            &[update(series, Lane::OnTime, 10, false)],
            status(partition, first, 5),
        )
        .await
        .unwrap();
    assert_eq!(outcome.applied, 1);

    // Replaying the same epoch with the same values is harmless.
    let replay = store
        .apply(
            partition,
            fence(first, 5),
            &[update(series, Lane::OnTime, 10, false)],
            status(partition, first, 5),
        )
        .await
        .unwrap();
    assert_eq!(replay.applied, 1);
    // A replayed older epoch does not overwrite the newer value.
    let old = store
        .apply(
            partition,
            fence(first, 4),
            &[update(series, Lane::OnTime, 3, false)],
            status(partition, first, 4),
        )
        .await
        .unwrap();
    assert_eq!((old.applied, old.stale), (0, 1));
    let stored = store.get(series, Lane::OnTime).await.unwrap().unwrap();
    assert_eq!(stored.counts.unique, 10);
    assert_eq!(stored.fence, fence(first, 5));

    // A new owner fences the old one off, even for keys the new owner never wrote.
    let second = store
        .claim_partition(partition, Generation(0))
        .await
        .unwrap()
        .generation;
    assert!(second > first);
    let zombie = store
        .apply(
            partition,
            fence(first, 9),
            &[update(window(7, 2, 0, 11), Lane::OnTime, 99, false)],
            status(partition, first, 9),
        )
        .await;
    match zombie {
        Err(StoreError::Fenced {
            current, writer, ..
        }) => {
            assert_eq!(current, second);
            assert_eq!(writer, first);
        }
        other => panic!("a zombie write must be fenced, got {other:?}"),
    }
    assert_eq!(
        store.get(window(7, 2, 0, 11), Lane::OnTime).await.unwrap(),
        None
    );
    // The new owner re-commits at the same epoch and wins.
    store
        .apply(
            partition,
            fence(second, 5),
            &[update(series, Lane::OnTime, 11, true)],
            status(partition, second, 5),
        )
        .await
        .unwrap();
    let stored = store.get(series, Lane::OnTime).await.unwrap().unwrap();
    assert_eq!(stored.counts.unique, 11);
    assert!(stored.is_final);
    let statuses = store.partition_status().await.unwrap();
    assert_eq!(statuses, vec![status(partition, second, 5)]);

    // A claim rises above the durable floor it is given, and says the store was behind it.
    let floor = Generation(second.0 + 40);
    let raised = store.claim_partition(partition, floor).await.unwrap();
    assert_eq!(raised.generation, Generation(floor.0 + 1));
    assert!(raised.store_forgot);
    let next = store
        .claim_partition(partition, Generation(0))
        .await
        .unwrap();
    assert!(next.generation > raised.generation);
    assert!(!next.store_forgot);
}

/// Queries: a campaign's windows and hours over a range, merged over salts; one window's series.
async fn query_contract(store: &dyn RealtimeStore) {
    let mut generations = std::collections::BTreeMap::new();
    let mut writes: std::collections::BTreeMap<PartitionId, Vec<SeriesUpdate>> = Default::default();
    for (campaign, salt, ad, minute, lane) in [
        (7, 0, 1, 10, Lane::OnTime),
        (7, 1, 1, 10, Lane::OnTime),
        (7, 0, 2, 11, Lane::Late),
        (7, 0, 1, 12, Lane::OnTime),
        (8, 0, 1, 10, Lane::OnTime),
    ] {
        writes
            .entry(owner(campaign, salt))
            .or_default()
            .push(update(
                window(campaign, ad, salt, minute),
                lane,
                minute,
                true,
            ));
    }
    let hour = Series::Hour(HourKey {
        campaign_id: CampaignId(7),
        salt: Salt(0),
        hour_start_ms: 0,
    });
    writes
        .entry(owner(7, 0))
        .or_default()
        .push(update(hour, Lane::OnTime, 33, false));
    for (partition, updates) in &writes {
        let generation = store
            .claim_partition(*partition, Generation(0))
            .await
            .unwrap()
            .generation;
        generations.insert(*partition, generation);
        let fence = Fence {
            generation,
            epoch: Epoch(1),
        };
        store
            .apply(
                *partition,
                fence,
                updates,
                status(*partition, generation, 1),
            )
            .await
            .unwrap();
    }
    let minutes = store
        .campaign_series(
            CampaignId(7),
            Granularity::Window,
            10 * WINDOW_MS,
            12 * WINDOW_MS,
        )
        .await
        .unwrap();
    let found: Vec<(Series, Lane)> = minutes.iter().map(|(s, l, _)| (*s, *l)).collect();
    assert_eq!(
        found,
        vec![
            (window(7, 1, 0, 10), Lane::OnTime),
            (window(7, 1, 1, 10), Lane::OnTime),
            (window(7, 2, 0, 11), Lane::Late),
        ],
        "both salts of minute 10, the late lane of minute 11, nothing from minute 12 or campaign 8"
    );
    let hours = store
        .campaign_series(CampaignId(7), Granularity::Hour, 0, 3_600_000)
        .await
        .unwrap();
    assert_eq!(hours.len(), 1);
    assert_eq!(hours[0].2.counts.unique, 33);
    let minute_10 = store.window_series(10 * WINDOW_MS).await.unwrap();
    let campaigns: Vec<u64> = minute_10
        .iter()
        .map(|(series, _, _)| match series {
            Series::Window(key) => key.campaign_id.0,
            Series::Hour(_) => panic!("window_series returns windows only"),
        })
        .collect();
    assert_eq!(campaigns, vec![7, 7, 8]);
    let everything = store.scan().await.unwrap();
    assert_eq!(everything.len(), 6);
}

/// Rebuilding marks: per partition and per rebuilder, so one rebuilder finishing never clears
/// another's mark; no claim or write clears them; a claim by a new owner leaves them.
async fn rebuilding_contract(store: &dyn RealtimeStore) {
    let (busy, other) = (PartitionId(1), PartitionId(3));
    assert_eq!(store.rebuilding_partitions().await.unwrap(), vec![]);
    store
        .set_rebuilding(busy, Rebuilder::Replay, true)
        .await
        .unwrap();
    store
        .set_rebuilding(busy, Rebuilder::Worker, true)
        .await
        .unwrap();
    let generation = store
        .claim_partition(busy, Generation(0))
        .await
        .unwrap()
        .generation;
    store
        .apply(
            busy,
            Fence {
                generation,
                epoch: Epoch(1),
            },
            &[],
            status(busy, generation, 1),
        )
        .await
        .unwrap();
    assert_eq!(store.rebuilding_partitions().await.unwrap(), vec![busy]);
    store
        .set_rebuilding(busy, Rebuilder::Worker, false)
        .await
        .unwrap();
    assert_eq!(
        store.rebuilding_partitions().await.unwrap(),
        vec![busy],
        "the replay's mark outlives the worker's"
    );
    store
        .set_rebuilding(other, Rebuilder::Replay, true)
        .await
        .unwrap();
    assert_eq!(
        store.rebuilding_partitions().await.unwrap(),
        vec![busy, other]
    );
    for partition in [busy, other] {
        store
            .set_rebuilding(partition, Rebuilder::Replay, false)
            .await
            .unwrap();
    }
    // Clearing what is not set is harmless: a rebuild run again after a crash does it.
    store
        .set_rebuilding(busy, Rebuilder::Replay, false)
        .await
        .unwrap();
    assert_eq!(store.rebuilding_partitions().await.unwrap(), vec![]);
}

#[tokio::test]
async fn the_embedded_store_keeps_the_rebuilding_contract() {
    rebuilding_contract(&MemoryRealtimeStore::new()).await;
}

#[tokio::test]
async fn redis_keeps_the_rebuilding_contract() {
    let store = redis_store("rebuilding").await;
    rebuilding_contract(&store).await;
    store.delete_all().await.unwrap();
}

#[tokio::test]
async fn the_embedded_store_keeps_the_fencing_contract() {
    fencing_contract(&MemoryRealtimeStore::new()).await;
}

#[tokio::test]
async fn redis_keeps_the_fencing_contract() {
    let store = redis_store("fencing").await;
    fencing_contract(&store).await;
    store.delete_all().await.unwrap();
}

#[tokio::test]
async fn the_embedded_store_answers_queries() {
    query_contract(&MemoryRealtimeStore::new()).await;
}

#[tokio::test]
async fn redis_answers_queries() {
    let store = redis_store("query").await;
    query_contract(&store).await;
    store.delete_all().await.unwrap();
}

#[tokio::test]
async fn redis_applies_an_epoch_larger_than_one_script_call() {
    let store = Arc::new(redis_store("chunks").await);
    let partition = PartitionId(0);
    let generation = store
        .claim_partition(partition, Generation(0))
        .await
        .unwrap()
        .generation;
    // 2,000 ads of campaigns owned by partition 0 spread over 3 windows: several script calls.
    let campaign = (1..)
        .find(|campaign| owner(*campaign, 0) == partition)
        .unwrap();
    let updates: Vec<SeriesUpdate> = (0..2_000)
        .map(|ad| update(window(campaign, ad, 0, ad % 3), Lane::OnTime, ad + 1, false))
        .collect();
    let fence = Fence {
        generation,
        epoch: Epoch(1),
    };
    let outcome = store
        .apply(partition, fence, &updates, status(partition, generation, 1))
        .await
        .unwrap();
    assert_eq!(outcome.applied, 2_000);
    let total: u64 = store
        .campaign_series(CampaignId(campaign), Granularity::Window, 0, 3 * WINDOW_MS)
        .await
        .unwrap()
        .iter()
        .map(|(_, _, stored)| stored.counts.unique)
        .sum();
    assert_eq!(total, (1..=2_000).sum::<u64>());
    store.delete_all().await.unwrap();
}

#[tokio::test]
async fn redis_connection_errors_name_the_url() {
    let config = RedisConfig::new("redis://127.0.0.1:1/");
    let keys = KeySpace {
        partitions: 1,
        window_ms: WINDOW_MS,
        salts_max: 1,
    };
    let error = RedisStore::connect(config, keys).await.err().unwrap();
    assert!(
        format!("{error:#}").contains("127.0.0.1:1"),
        "the error names the address: {error:#}"
    );
}

/// A redis-server of the test's own on a spare port, stopped on drop (also when the test fails).
struct PrivateRedis {
    child: std::process::Child,
    url: String,
}

impl PrivateRedis {
    fn start(args: &[&str]) -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (installed with the machine's Redis) starts");
        let url = format!("redis://127.0.0.1:{port}/");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server on {port} never listened"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        PrivateRedis { child, url }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn redis_that_may_evict_counts_is_refused_unless_allowed() {
    let redis = PrivateRedis::start(&["--maxmemory-policy", "allkeys-lru"]);
    let keys = KeySpace {
        partitions: PARTITIONS,
        window_ms: WINDOW_MS,
        salts_max: 2,
    };
    let error = RedisStore::connect(RedisConfig::new(redis.url.clone()), keys)
        .await
        .err()
        .expect("an evicting Redis is refused");
    let message = error.to_string();
    assert!(
        message.contains("allkeys-lru") && message.contains("noeviction"),
        "{message}"
    );
    let mut allowed = RedisConfig::new(redis.url.clone());
    allowed.allow_eviction = true;
    RedisStore::connect(allowed, keys).await.unwrap();
}
