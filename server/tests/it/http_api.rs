use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use adclick_server::api::{CampaignClicks, Freshness, TopAds};
use adclick_server::config::{ServeConfig, StoreConfig};
use adclick_server::serve::{RunningServer, Seams, start};
use reqwest::StatusCode;
use serde_json::Value;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Small windows and short epochs, so counts become final within seconds.
pub(crate) fn test_config() -> ServeConfig {
    let text = r#"
[security]
allow_unsigned = true
[http]
listen = "127.0.0.1:0"
body_bytes_max = 65536
records_per_request_max = 100
[engine]
partitions = 4
epoch_ms = 100
window_ms = 1000
allowed_lateness_ms = 500
max_out_of_orderness_ms = 200
idle_timeout_ms = 300
dedup_horizon_ms = 20000
dedup_bucket_ms = 1000
"#;
    ServeConfig::parse(text, "test").unwrap()
}

pub(crate) async fn serve(config: ServeConfig) -> (RunningServer, String) {
    let seams = Seams::from_config(&config).await.unwrap();
    let server = start(config, seams).await.unwrap();
    let base = format!("http://{}", server.local_addr);
    (server, base)
}

/// A click JSON line; `n` makes the click id unique.
pub(crate) fn click(n: u64, campaign: u64, ad: u64, event_time_ms: u64) -> String {
    format!(
        r#"{{"click_id":"{:08x}-0000-4000-8000-{:012x}","campaign_id":{campaign},"ad_id":{ad},"user_id":{n},"ip":"10.1.{}.{}","user_agent":"test-agent","country":"DE","event_time_ms":{event_time_ms}}}"#,
        n + 1,
        n + 1,
        (n / 250) % 250,
        n % 250 + 1,
    )
}

pub(crate) async fn post(base: &str, content_type: &str, body: String) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/clicks"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

pub(crate) async fn get<T: serde::de::DeserializeOwned>(url: &str) -> T {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    response.json().await.unwrap()
}

/// Polls the campaign query until its range is final with `unique` clicks, or fails.
async fn wait_for_final_count(
    base: &str,
    campaign: u64,
    from_ms: u64,
    unique: u64,
) -> CampaignClicks {
    wait_for_final_count_within(base, campaign, from_ms, unique, Duration::from_secs(15)).await
}

/// Polls the campaign query until its range is final with `unique` clicks, or fails after `wait`.
pub(crate) async fn wait_for_final_count_within(
    base: &str,
    campaign: u64,
    from_ms: u64,
    unique: u64,
    wait: Duration,
) -> CampaignClicks {
    let deadline = Instant::now() + wait;
    let url = format!(
        "{base}/v1/campaigns/{campaign}/clicks?from={from_ms}&to={}",
        from_ms + 60_000
    );
    loop {
        let answer: CampaignClicks = get(&url).await;
        if answer.total.unique == unique && answer.total.is_final && !answer.windows.is_empty() {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "campaign {campaign} never showed {unique} final unique clicks; last answer: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends clicks for two campaigns (with resends of some), then checks every query endpoint.
async fn ingest_and_query(base: &str) {
    let start_ms = now_ms();
    let mut lines = Vec::new();
    for n in 0..60 {
        let (campaign, ad) = if n < 40 { (7, n % 3) } else { (8, 1) };
        lines.push(click(n, campaign, ad, start_ms));
    }
    // Ten resends of campaign 7's clicks: counted as clicks, not as unique ones.
    for n in 0..10 {
        lines.push(click(n, 7, n % 3, start_ms));
    }
    let (status, answer) = post(base, "application/x-ndjson", lines.join("\n")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["accepted"], 70);
    assert_eq!(answer["rejected"], 0);

    let campaign_7 = wait_for_final_count(base, 7, start_ms - 2_000, 40).await;
    assert_eq!(campaign_7.total.clicks, 50, "resends count as clicks");
    assert_eq!(campaign_7.total.fraud, 0);
    let campaign_8 = wait_for_final_count(base, 8, start_ms - 2_000, 20).await;
    assert_eq!(campaign_8.total.clicks, 20);

    let hours: CampaignClicks = get(&format!(
        "{base}/v1/campaigns/7/clicks?from={}&to={}&granularity=hour",
        start_ms / 3_600_000 * 3_600_000,
        start_ms / 3_600_000 * 3_600_000 + 3_600_000
    ))
    .await;
    assert_eq!(hours.total.unique, 40, "the hour rollup agrees: {hours:?}");

    let window_start = campaign_7.windows[0].start_ms;
    let top: TopAds = get(&format!("{base}/v1/top?window={window_start}&n=2")).await;
    assert_eq!(top.ads.len(), 2);
    assert_eq!(
        (top.ads[0].campaign_id, top.ads[0].ad_id, top.ads[0].unique),
        (8, 1, 20),
        "the busiest ad first: {top:?}"
    );
    assert_eq!(top.ads[1].campaign_id, 7);

    let freshness: Freshness = get(&format!("{base}/v1/freshness")).await;
    assert_eq!(freshness.partitions.len(), 4);
    let committed: u64 = freshness
        .partitions
        .iter()
        .filter_map(|partition| partition.status.map(|status| status.next_offset.0))
        .sum();
    assert_eq!(committed, 70, "every record is committed: {freshness:?}");
    assert!(
        freshness
            .partitions
            .iter()
            .all(|partition| partition.lag_records == Some(0))
    );

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("adclick_ingest_accepted_total 70"),
        "metrics: {metrics}"
    );
    assert!(metrics.contains("adclick_consumer_lag_records{partition=\"0\"} 0"));
    assert!(metrics.contains("adclick_worker_duplicates_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_serve_counts_what_it_was_sent() {
    let (server, base) = serve(test_config()).await;
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    ingest_and_query(&base).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_real_redis_counts_what_it_was_sent() {
    let url =
        std::env::var("ADCLICK_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let mut redis = adclick_io::redis_store::RedisConfig::new(url);
    redis.prefix = format!("adclick-test-serve-{}", std::process::id());
    let mut config = test_config();
    config.store = StoreConfig::Redis(redis.clone());
    let (server, base) = serve(config).await;
    ingest_and_query(&base).await;
    server.shutdown().await.unwrap();
    let keys = adclick_io::redis_store::KeySpace {
        partitions: 4,
        window_ms: 1000,
        salts_max: 1,
    };
    let store = adclick_io::redis_store::RedisStore::connect(redis, keys)
        .await
        .unwrap();
    assert!(
        store.delete_all().await.unwrap() > 0,
        "the server wrote to Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ingest_error_has_its_status_and_says_why() {
    let (server, base) = serve(test_config()).await;
    let now = now_ms();

    // A mix: the valid record is taken, the bad ones get their index and reason.
    let bad_ip = click(1, 7, 1, now).replace("10.1.0.2", "10.1.0.300");
    let body = format!(
        "[{}, {bad_ip}, {{\"campaign_id\": 7}}]",
        click(0, 7, 1, now)
    );
    let (status, answer) = post(&base, "application/json", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["rejected"], 2);
    assert_eq!(answer["errors"][0]["index"], 1);
    assert_eq!(answer["errors"][0]["reasons"][0]["reason"], "invalid_ip");
    assert_eq!(answer["errors"][1]["reasons"][0]["reason"], "missing_field");

    // Nothing valid: 400 with the reasons.
    let future = click(2, 7, 1, now + 3_600_000);
    let (status, answer) = post(&base, "application/json", future).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer["errors"][0]["reasons"][0]["reason"],
        "event_time_in_future"
    );
    let (status, answer) = post(&base, "application/json", "[1,".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"].as_str().unwrap().contains("not JSON"),
        "{answer}"
    );

    // A wrong content type: 415 naming what is accepted.
    let (status, answer) = post(&base, "text/plain", click(3, 7, 1, now)).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("application/x-ndjson")
    );

    // Over the body limit, and over the record limit: 413 naming the limit's key.
    let (status, answer) = post(&base, "application/x-ndjson", "x".repeat(70_000)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer["limit"], "http.body_bytes_max");
    let many: Vec<String> = (10..111).map(|n| click(n, 7, 1, now)).collect();
    let (status, answer) = post(&base, "application/x-ndjson", many.join("\n")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer["limit"], "http.records_per_request_max");
    assert!(
        answer["error"].as_str().unwrap().contains("101 records"),
        "{answer}"
    );

    // A durable ack answers once the log has the clicks.
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/clicks?ack=durable"))
        .header("content-type", "application/json")
        .body(click(200, 7, 1, now))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/clicks?ack=sometimes"))
        .header("content-type", "application/json")
        .body(click(201, 7, 1, now))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Queries refuse bad ranges with the limit's key.
    let response = reqwest::get(format!(
        "{base}/v1/campaigns/7/clicks?from=0&to={}",
        30 * 24 * 3_600_000u64
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["limit"], "http.query_span_ms_max");
    let response = reqwest::get(format!("{base}/v1/top?n=0")).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_answers_busy_with_retry_after_and_takes_nothing() {
    let mut config = test_config();
    // A tiny buffer that never flushes on its own during the test.
    config.engine.producer_buffer_events_max = 10;
    config.engine.producer_linger_ms = 60_000;
    let (server, base) = serve(config).await;
    let now = now_ms();
    let first: Vec<String> = (0..8).map(|n| click(n, 7, 1, now)).collect();
    let (status, _) = post(&base, "application/x-ndjson", first.join("\n")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let second: Vec<String> = (8..13).map(|n| click(n, 7, 1, now)).collect();
    let response = send_ndjson(&format!("{base}/v1/clicks"), &second).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["limit"], "engine.producer_buffer_events_max");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("5 events requested, 2 of 10 free")
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("adclick_ingest_buffer_events 8"),
        "{metrics}"
    );
    assert!(
        metrics.contains("adclick_http_ingest_busy_total 1"),
        "{metrics}"
    );
    // Shutdown drains the 8 buffered clicks into the log: nothing accepted is dropped.
    let log = server.state.log.clone();
    server.shutdown().await.unwrap();
    let mut in_log = 0;
    for partition in 0..log.partitions() {
        in_log += log
            .end_offset(adclick_core::ids::PartitionId(partition))
            .await
            .unwrap()
            .0;
    }
    assert_eq!(in_log, 8);
}

/// A log on a full disk: every append fails as the file log's does (retryable), until freed.
struct FullDisk {
    log: adclick_engine::embedded::MemoryLog,
    full: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl adclick_engine::seams::Log for FullDisk {
    fn partitions(&self) -> u32 {
        self.log.partitions()
    }
    async fn append(
        &self,
        partition: adclick_core::ids::PartitionId,
        batch: adclick_engine::seams::AppendBatch,
    ) -> Result<adclick_core::ids::Offset, adclick_engine::seams::LogError> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(adclick_engine::seams::LogError::Unavailable {
                message: "writing segment: No space left on device (os error 28)".into(),
            });
        }
        self.log.append(partition, batch).await
    }
    async fn read(
        &self,
        partition: adclick_core::ids::PartitionId,
        from: adclick_core::ids::Offset,
        records_max: usize,
    ) -> Result<Vec<adclick_engine::seams::ReadBatch>, adclick_engine::seams::LogError> {
        self.log.read(partition, from, records_max).await
    }
    async fn end_offset(
        &self,
        partition: adclick_core::ids::PartitionId,
    ) -> Result<adclick_core::ids::Offset, adclick_engine::seams::LogError> {
        self.log.end_offset(partition).await
    }
    async fn new_producer_id(&self) -> Result<u64, adclick_engine::seams::LogError> {
        self.log.new_producer_id().await
    }
}

/// Regression: a durable post while the log could not append waited out the request timeout
/// and answered 408. It answers busy within `http.durable_ack_timeout_ms`; the clicks stay
/// buffered, and once the disk frees, they and their resend count once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_post_on_a_full_disk_answers_busy_and_its_resend_counts_once() {
    let mut config = test_config();
    config.http.durable_ack_timeout_ms = 300;
    let disk = Arc::new(FullDisk {
        log: adclick_engine::embedded::MemoryLog::new(config.engine.partitions),
        full: std::sync::atomic::AtomicBool::new(true),
    });
    let mut seams = Seams::from_config(&config).await.unwrap();
    seams.log = disk.clone();
    let server = start(config, seams).await.unwrap();
    let base = format!("http://{}", server.local_addr);
    let now = now_ms();
    let clicks: Vec<String> = (0..3).map(|n| click(n, 9, 1, now)).collect();
    let started = Instant::now();
    let response = send_ndjson(&format!("{base}/v1/clicks?ack=durable"), &clicks).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered before the request timeout"
    );
    assert_eq!(response.headers()["retry-after"], "1");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["limit"], "http.durable_ack_timeout_ms", "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("resend"),
        "{answer}"
    );
    disk.full.store(false, std::sync::atomic::Ordering::SeqCst);
    let resend = send_ndjson(&format!("{base}/v1/clicks?ack=durable"), &clicks).await;
    assert_eq!(resend.status(), StatusCode::ACCEPTED);
    let counted = wait_for_campaign(&base, 9, now - 60_000, now + 60_000, |answer| {
        answer.total.clicks == 6
    })
    .await;
    assert_eq!(
        counted.total.unique, 3,
        "the buffered first try and its resend: {counted:?}"
    );
    server.shutdown().await.unwrap();
}

/// The campaign's counts over `[from_ms, to_ms)`, summed.
pub(crate) async fn campaign_total(
    base: &str,
    campaign: u64,
    from_ms: u64,
    to_ms: u64,
) -> CampaignClicks {
    get(&format!(
        "{base}/v1/campaigns/{campaign}/clicks?from={from_ms}&to={to_ms}"
    ))
    .await
}

/// Polls until `done` holds for the campaign's range, or fails with the last answer.
pub(crate) async fn wait_for_campaign(
    base: &str,
    campaign: u64,
    from_ms: u64,
    to_ms: u64,
    done: impl Fn(&CampaignClicks) -> bool,
) -> CampaignClicks {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = campaign_total(base, campaign, from_ms, to_ms).await;
        if done(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "never held; last answer: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts NDJSON lines to `url` (the clicks endpoint, with any query) and hands back the answer.
pub(crate) async fn send_ndjson(url: &str, lines: &[String]) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-ndjson")
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap()
}

/// Posts NDJSON lines and expects every one taken.
pub(crate) async fn post_ok(base: &str, lines: &[String]) {
    let (status, answer) = post(base, "application/x-ndjson", lines.join("\n")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["rejected"], 0, "{answer}");
}
