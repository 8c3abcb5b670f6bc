//! Real client clocks and real late data through `adclick serve` over HTTP: a click stamped
//! ahead never moves the watermark past the worker's clock, and a late click past the dedup
//! horizon (and its resends) is counted in the unverified lane, never as unique.

use std::time::Duration;

use adclick_server::api::Freshness;

use crate::http_api::{
    campaign_total, click, get, now_ms, post_ok, serve, test_config, wait_for_campaign,
};

/// Regression (a future-dated click moved the watermark): click A at now, a click of A's
/// campaign (so on A's partition) stamped 295 s ahead, which ingest accepts, then after a few
/// barriers a resend of A. The watermark had followed the future click, so the dedup set had
/// forgotten A and its resend counted again (`late_unique` 1 beside `unique` 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_dated_click_never_moves_the_watermark_past_the_clock() {
    let (server, base) = serve(test_config()).await;
    let start_ms = now_ms();
    let original = click(1, 31, 1, start_ms);
    post_ok(&base, std::slice::from_ref(&original)).await;
    let ahead_ms = start_ms + 295_000;
    post_ok(&base, &[click(2, 31, 2, ahead_ms)]).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let freshness: Freshness = get(&format!("{base}/v1/freshness")).await;
    for partition in &freshness.partitions {
        let Some(status) = partition.status else {
            continue;
        };
        assert!(
            status.watermark.watermark_ms
                <= now_ms() + adclick_core::limits::WATERMARK_AHEAD_OF_PROCESSING_MS_MAX,
            "partition {} watermark {} is ahead of the clock",
            partition.partition,
            status.watermark.watermark_ms
        );
    }
    post_ok(&base, &[original]).await;
    let around = wait_for_campaign(&base, 31, start_ms - 5_000, start_ms + 5_000, |answer| {
        answer.total.is_final && answer.total.clicks + answer.total.late_clicks == 2
    })
    .await;
    assert_eq!(around.total.unique, 1, "{around:?}");
    assert_eq!(
        around.total.late_unique, 0,
        "the resend is a duplicate: {around:?}"
    );
    assert_eq!(around.total.unverified_clicks, 0, "{around:?}");
    // The future click is counted in its own window, which is still open.
    let ahead = campaign_total(&base, 31, ahead_ms - 1_000, ahead_ms + 1_000).await;
    assert_eq!(ahead.total.unique, 1, "{ahead:?}");
    assert!(!ahead.total.is_final, "its time has not come: {ahead:?}");
    server.shutdown().await.unwrap();
}

/// Regression (late clicks older than the dedup horizon were counted as unique): a click 60 s
/// old (the horizon is 20 s here; ingest accepts a day) and two resends of it each counted as a
/// unique late click. Now all three are unverified, shown as such, and never unique.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_clicks_past_the_dedup_horizon_are_unverified_never_unique() {
    let (server, base) = serve(test_config()).await;
    let start_ms = now_ms();
    // A current click first, so that the partition's watermark is at the clock.
    post_ok(&base, &[click(1, 32, 1, start_ms)]).await;
    wait_for_campaign(&base, 32, start_ms - 5_000, start_ms + 5_000, |answer| {
        answer.total.is_final && answer.total.unique == 1
    })
    .await;
    let old_ms = start_ms - 60_000;
    let late = click(2, 32, 1, old_ms);
    for _ in 0..3 {
        post_ok(&base, std::slice::from_ref(&late)).await;
    }
    let old = wait_for_campaign(&base, 32, old_ms - 1_000, old_ms + 1_000, |answer| {
        answer.total.unverified_clicks == 3
    })
    .await;
    assert_eq!(old.total.unique, 0, "{old:?}");
    assert_eq!(old.total.late_unique, 0, "{old:?}");
    assert_eq!(
        old.total.unverified_unique, 3,
        "not on the fraud list: {old:?}"
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let unverified: u64 = metrics
        .lines()
        .filter(|line| line.starts_with("adclick_worker_unverified_clicks_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(unverified, 3, "metrics: {metrics}");
    server.shutdown().await.unwrap();
}
