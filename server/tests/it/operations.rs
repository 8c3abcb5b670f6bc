//! Routine operations through `adclick serve` on a file log, file checkpoints and the real
//! Redis: rotating the fraud list, with and without a restart; Redis forgetting a partition.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use adclick_server::api::{CampaignClicks, Freshness};
use adclick_server::config::{ServeConfig, StoreConfig};
use reqwest::StatusCode;

use crate::http_api::{campaign_total, click, get, now_ms, post_ok, serve, wait_for_campaign};

pub(crate) fn config(dir: &Path, redis: &adclick_io::redis_store::RedisConfig) -> ServeConfig {
    let text = format!(
        r#"
[security]
allow_unsigned = true
[http]
listen = "127.0.0.1:0"
[engine]
partitions = 4
epoch_ms = 100
window_ms = 1000
allowed_lateness_ms = 500
max_out_of_orderness_ms = 200
idle_timeout_ms = 300
dedup_horizon_ms = 20000
dedup_bucket_ms = 1000
[log]
kind = "file"
dir = "{}"
[checkpoints]
url = "file://{}"
[fraud]
list = "{}"
reload_interval_ms = 100
"#,
        dir.join("log").display(),
        dir.join("checkpoints").display(),
        list_path(dir).display(),
    );
    let mut config = ServeConfig::parse(&text, "operations test").unwrap();
    config.store = StoreConfig::Redis(redis.clone());
    config
}

pub(crate) fn list_path(dir: &Path) -> PathBuf {
    dir.join("fraud.list")
}

fn stored_list(dir: &Path, version: u64) -> PathBuf {
    dir.join(format!("checkpoints/fraud-lists/v{version:020}.list"))
}

/// A click of `campaign` from `ip`; `id` makes it unique.
fn click_from(id: u64, campaign: u64, ip: &str, event_time_ms: u64) -> String {
    format!(
        r#"{{"click_id":"00000000-0000-4000-9000-{id:012x}","campaign_id":{campaign},"ad_id":1,"user_id":{id},"ip":"{ip}","user_agent":"test-agent","country":"DE","event_time_ms":{event_time_ms}}}"#
    )
}

async fn wait_until_exists(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Regression (a new fraud-list version bricked recovery): the checkpoints of the first run name
/// version 1; the second run starts with version 2 in the file. Every worker looped on "cannot
/// restore: checkpoint names fraud list version 1, which is not registered" and no click was
/// counted again. Now version 1 is stored when first used, the restore loads it, and new clicks
/// are judged by version 2. Then version 3 is picked up without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fraud_list_rotation_with_and_without_a_restart_never_bricks_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let url =
        std::env::var("ADCLICK_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let mut redis = adclick_io::redis_store::RedisConfig::new(url);
    redis.prefix = format!("adclick-test-operations-{}", std::process::id());
    let start_ms = now_ms();
    // click(n, ..) comes from 10.1.0.(n + 1).
    std::fs::write(list_path(dir.path()), "version 1\nip 10.1.0.2\n").unwrap();

    let (server, base) = serve(config(dir.path(), &redis)).await;
    post_ok(
        &base,
        &[click(0, 50, 1, now_ms()), click(1, 50, 1, now_ms())],
    )
    .await;
    wait_for_campaign(&base, 50, start_ms - 5_000, start_ms + 55_000, |answer| {
        answer.total.is_final && answer.total.unique == 1 && answer.total.fraud == 1
    })
    .await;
    assert!(
        stored_list(dir.path(), 1).exists(),
        "stored when first used"
    );
    server.shutdown().await.unwrap();

    std::fs::write(
        list_path(dir.path()),
        "version 2\nip 10.1.0.2\nip 10.1.0.4\n",
    )
    .unwrap();
    let (server, base) = serve(config(dir.path(), &redis)).await;
    post_ok(
        &base,
        &[click(2, 51, 1, now_ms()), click(3, 51, 1, now_ms())],
    )
    .await;
    wait_for_campaign(&base, 51, start_ms - 5_000, start_ms + 55_000, |answer| {
        answer.total.is_final && answer.total.unique == 1 && answer.total.fraud == 1
    })
    .await;
    let freshness: Freshness = get(&format!("{base}/v1/freshness")).await;
    for partition in &freshness.partitions {
        let supervision = partition.supervision.as_ref().expect("this node's worker");
        assert!(supervision.recovered, "{partition:?}");
        assert_eq!(supervision.restarts, 0, "{partition:?}");
    }
    assert!(stored_list(dir.path(), 2).exists());
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("# HELP adclick_worker_recovered"),
        "{metrics}"
    );
    assert!(
        metrics.contains("adclick_worker_recovered{partition=\"0\"} 1"),
        "{metrics}"
    );

    // Without a restart: 10.9.9.9 is clean under version 2, fraud once version 3 is in.
    post_ok(&base, &[click_from(1, 52, "10.9.9.9", now_ms())]).await;
    wait_for_campaign(&base, 52, start_ms - 5_000, start_ms + 55_000, |answer| {
        answer.total.is_final && answer.total.unique == 1 && answer.total.fraud == 0
    })
    .await;
    std::fs::write(
        list_path(dir.path()),
        "version 3\nip 10.1.0.2\nip 10.1.0.4\nip 10.9.9.9\n",
    )
    .unwrap();
    wait_until_exists(&stored_list(dir.path(), 3)).await;
    // The swap happens at each partition's next epoch; clicks read before it are judged by
    // version 2. Far fewer probes than the rate rule's 100 per IP and minute.
    let probes_from_ms = now_ms();
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in 100u64.. {
        post_ok(&base, &[click_from(id, 53, "10.9.9.9", now_ms())]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let answer =
            campaign_total(&base, 53, probes_from_ms - 5_000, probes_from_ms + 55_000).await;
        if answer.total.fraud > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline && id < 130,
            "version 3 was never applied; last answer: {answer:?}"
        );
    }
    server.shutdown().await.unwrap();
    forget_everything(&redis).await;
}

/// Deletes every key under the store's prefix: what a Redis restart without persistence, an
/// eviction policy or an asynchronous failover does to a partition.
pub(crate) async fn forget_everything(redis: &adclick_io::redis_store::RedisConfig) -> usize {
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", redis.prefix))
        .query_async(&mut connection)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    keys.len()
}

/// Regression (the fencing generation lived only in Redis): after every key of the partitions
/// was deleted, the worker claimed generation 1 again, the same as before, so a zombie holding
/// it could write again and two owners' checkpoint names could collide; and the closed windows
/// Redis lost were never written again. Now the claim rises above every generation the
/// checkpoint store has seen, the loss is detected and reported, and every value the
/// partition's complete epochs wrote is written back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_forgetting_a_partition_raises_the_generation_and_restores_every_closed_window() {
    let dir = tempfile::tempdir().unwrap();
    let url =
        std::env::var("ADCLICK_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let mut redis = adclick_io::redis_store::RedisConfig::new(url);
    redis.prefix = format!("adclick-test-forget-{}", std::process::id());
    std::fs::write(list_path(dir.path()), "version 1\n").unwrap();
    // 1 s windows and 0.5 s lateness: every window of the test is closed, final and retired
    // from the workers' state when Redis forgets it.
    let config = config(dir.path(), &redis);
    let (server, base) = serve(config).await;
    let start_ms = now_ms();
    let clicks: Vec<String> = (0..40).map(|n| click(n, 70 + n % 4, 1, now_ms())).collect();
    post_ok(&base, &clicks).await;
    let counted = |answer: &CampaignClicks| answer.total.unique == 10 && answer.total.is_final;
    for campaign in 70..74 {
        wait_for_campaign(
            &base,
            campaign,
            start_ms - 60_000,
            start_ms + 60_000,
            counted,
        )
        .await;
    }
    let before: Freshness = get(&format!("{base}/v1/freshness")).await;
    let generations: Vec<u64> = before
        .partitions
        .iter()
        .map(|partition| partition.status.expect("committed").generation.0)
        .collect();

    assert!(forget_everything(&redis).await > 0);
    for campaign in 70..74 {
        wait_for_campaign(
            &base,
            campaign,
            start_ms - 60_000,
            start_ms + 60_000,
            counted,
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let after: Freshness = get(&format!("{base}/v1/freshness")).await;
        let rewritten = after
            .partitions
            .iter()
            .zip(&generations)
            .all(|(partition, old)| {
                partition.status.is_some_and(|status| {
                    status.generation.0 > *old && status.health.store_loss_detected_ms.is_some()
                })
            });
        if rewritten {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "generations before {generations:?}, after {:?}",
            after.partitions
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown().await.unwrap();
    forget_everything(&redis).await;
}

/// A worker node is not ready while a partition it runs cannot recover, and says which and why;
/// an ingest node stays ready. The case: a checkpoint names a fraud-list version that is stored
/// nowhere any more (its blob was deleted by hand), so every restore fails and backs off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_node_that_cannot_recover_is_unready_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let url =
        std::env::var("ADCLICK_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let mut redis = adclick_io::redis_store::RedisConfig::new(url);
    redis.prefix = format!("adclick-test-unready-{}", std::process::id());
    std::fs::write(list_path(dir.path()), "version 1\nip 10.1.0.2\n").unwrap();
    let start_ms = now_ms();
    let (server, base) = serve(config(dir.path(), &redis)).await;
    let clicks: Vec<String> = (0..8).map(|n| click(n, 80 + n % 4, 1, now_ms())).collect();
    post_ok(&base, &clicks).await;
    for campaign in 80..84 {
        wait_for_campaign(
            &base,
            campaign,
            start_ms - 5_000,
            start_ms + 60_000,
            |answer| answer.total.clicks == 2 && answer.total.is_final,
        )
        .await;
    }
    server.shutdown().await.unwrap();
    std::fs::remove_file(stored_list(dir.path(), 1)).unwrap();
    std::fs::write(list_path(dir.path()), "version 2\nip 10.1.0.2\n").unwrap();

    let mut worker_node = config(dir.path(), &redis);
    worker_node.roles = vec![
        adclick_server::config::Role::Worker,
        adclick_server::config::Role::Query,
    ];
    let (server, base) = serve(worker_node).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
        let status = ready.status();
        let body = ready.text().await.unwrap();
        if status == StatusCode::SERVICE_UNAVAILABLE && body.contains("fraud list version 1") {
            assert!(body.contains("partition"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "{status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let freshness: Freshness = get(&format!("{base}/v1/freshness")).await;
    let failing = freshness
        .partitions
        .iter()
        .filter_map(|partition| partition.supervision.as_ref())
        .filter(|supervision| !supervision.recovered && supervision.restarts > 0)
        .count();
    assert!(failing > 0, "{:?}", freshness.partitions);
    let stopped_at = Instant::now();
    server.shutdown().await.unwrap();
    assert!(
        stopped_at.elapsed() < Duration::from_millis(adclick_server::serve::SHUTDOWN_MS_MAX),
        "a node whose workers back off still stops within its bound"
    );
    forget_everything(&redis).await;
}
