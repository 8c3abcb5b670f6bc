//! `adclick rebuild` (as the library function the command calls) against the real Redis and a
//! file log, and the `rebuilding` flag of the query answers.

use std::time::{Duration, Instant};

use adclick_core::ids::{CampaignId, PartitionId, Salt};
use adclick_core::limits::SALTS_MAX;
use adclick_core::partition::partition_for_campaign;
use adclick_engine::rebuild::RebuildRange;
use adclick_engine::seams::Rebuilder;
use adclick_server::api::{CampaignClicks, Freshness, TopAds};
use adclick_server::config::{Role, ServeConfig};

use crate::http_api::{click, get, now_ms, post_ok, serve, test_config, wait_for_campaign};
use crate::operations::{config, forget_everything, list_path};

const CAMPAIGNS: std::ops::Range<u64> = 90..94;

/// Every window and hour of the test's campaigns, as the query API answers them.
async fn answers(base: &str, from_ms: u64, to_ms: u64) -> Vec<CampaignClicks> {
    let mut answers = Vec::new();
    for campaign in CAMPAIGNS {
        for granularity in ["minute", "hour"] {
            let hour_from_ms = from_ms / 3_600_000 * 3_600_000;
            let (from_ms, to_ms) = match granularity {
                "hour" => (hour_from_ms, hour_from_ms + 2 * 3_600_000),
                _ => (from_ms, to_ms),
            };
            let answer: CampaignClicks = get(&format!(
                "{base}/v1/campaigns/{campaign}/clicks?from={from_ms}&to={to_ms}&granularity={granularity}"
            ))
            .await;
            assert!(!answer.rebuilding, "{answer:?}");
            answers.push(answer);
        }
    }
    answers
}

async fn wait_until_recovered(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let freshness: Freshness = get(&format!("{base}/v1/freshness")).await;
        let recovered = freshness.partitions.iter().all(|partition| {
            partition
                .supervision
                .as_ref()
                .is_some_and(|supervision| supervision.recovered)
        });
        if recovered {
            assert!(!freshness.rebuilding, "{:?}", freshness.partitions);
            return;
        }
        assert!(Instant::now() < deadline, "{:?}", freshness.partitions);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The store loses every key; the rebuild replays the log. Its values are checked alone first
/// (a node with no workers, so nothing else writes), then with workers restored from their
/// checkpoints above the rebuild's generation: every closed window is what it was. The minute
/// windows come from the replay; the hours, which start before `--from`, come back from what
/// the checkpoints say the workers wrote, since the store had forgotten them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_after_redis_lost_every_key_gives_back_every_closed_window() {
    let dir = tempfile::tempdir().unwrap();
    let url =
        std::env::var("ADCLICK_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let mut redis = adclick_io::redis_store::RedisConfig::new(url);
    redis.prefix = format!("adclick-test-rebuild-{}", std::process::id());
    // click(n, ..) comes from 10.1.0.(n + 1): click 1 is fraud.
    std::fs::write(list_path(dir.path()), "version 1\nip 10.1.0.2\n").unwrap();
    let config = config(dir.path(), &redis);
    let (server, base) = serve(config.clone()).await;
    let start_ms = now_ms();
    let mut clicks: Vec<String> = (0..40).map(|n| click(n, 90 + n % 4, 1, now_ms())).collect();
    clicks.extend((0..6).map(|n| click(n, 90 + n % 4, 1, start_ms)));
    post_ok(&base, &clicks).await;
    let (from_ms, to_ms) = (start_ms - 60_000, start_ms + 60_000);
    for campaign in CAMPAIGNS {
        wait_for_campaign(&base, campaign, from_ms, to_ms, |answer| {
            answer.total.unique + answer.total.fraud == 10 && answer.total.is_final
        })
        .await;
    }
    let before = answers(&base, from_ms, to_ms).await;
    server.shutdown().await.unwrap();

    assert!(forget_everything(&redis).await > 0);
    let range = RebuildRange {
        from_ms,
        to_ms: u64::MAX,
    };
    let rebuilt = adclick_server::rebuild::run(
        &config,
        range,
        adclick_server::rebuild::Judging::AsTheWorkersDid,
    )
    .await
    .unwrap();
    let written: usize = rebuilt
        .iter()
        .map(|partition| partition.series_written)
        .sum();
    assert!(written > 0, "{rebuilt:?}");

    let query_only = ServeConfig {
        roles: vec![Role::Query],
        ..config.clone()
    };
    let (server, base) = serve(query_only).await;
    assert_eq!(answers(&base, from_ms, to_ms).await, before);
    server.shutdown().await.unwrap();

    let (server, base) = serve(config).await;
    wait_until_recovered(&base).await;
    assert_eq!(answers(&base, from_ms, to_ms).await, before);
    server.shutdown().await.unwrap();
    forget_everything(&redis).await;
}

/// Reads say `rebuilding` while a partition that holds their data carries a mark, and only
/// then: a campaign answer for its salts' partitions, the freshness answer per partition, the
/// top-N answer for any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_say_rebuilding_while_a_partition_of_theirs_carries_the_mark() {
    let mut config = test_config();
    // More partitions than salts, so some campaign lives on none of the marked partition.
    config.engine.partitions = 16;
    let (server, base) = serve(config).await;
    let partitions_of = |campaign: u64| -> Vec<PartitionId> {
        (0..SALTS_MAX)
            .map(|salt| partition_for_campaign(CampaignId(campaign), Salt(salt), 16))
            .collect()
    };
    let marked = partitions_of(1)[0];
    let elsewhere = (2..)
        .find(|campaign| !partitions_of(*campaign).contains(&marked))
        .unwrap();
    post_ok(&base, &[click(0, 1, 1, now_ms())]).await;
    let campaign = |campaign: u64| format!("{base}/v1/campaigns/{campaign}/clicks");
    let store = server.state.store.clone();
    for rebuilder in [Rebuilder::Replay, Rebuilder::Worker] {
        store.set_rebuilding(marked, rebuilder, true).await.unwrap();
        let answer: CampaignClicks = get(&campaign(1)).await;
        assert!(answer.rebuilding, "{answer:?}");
        let answer: CampaignClicks = get(&campaign(elsewhere)).await;
        assert!(!answer.rebuilding, "campaign {elsewhere}: {answer:?}");
        let freshness: Freshness = get(&format!("{base}/v1/freshness")).await;
        assert!(freshness.rebuilding);
        for partition in &freshness.partitions {
            assert_eq!(partition.rebuilding, partition.partition == marked.0);
        }
        let top: TopAds = get(&format!("{base}/v1/top")).await;
        assert!(top.rebuilding);

        store
            .set_rebuilding(marked, rebuilder, false)
            .await
            .unwrap();
        let answer: CampaignClicks = get(&campaign(1)).await;
        assert!(!answer.rebuilding, "{answer:?}");
        let freshness: Freshness = get(&format!("{base}/v1/freshness")).await;
        assert!(!freshness.rebuilding);
        let top: TopAds = get(&format!("{base}/v1/top")).await;
        assert!(!top.rebuilding);
    }
    server.shutdown().await.unwrap();
}
