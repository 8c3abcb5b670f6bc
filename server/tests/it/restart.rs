//! `adclick serve` stopped and started again on the same file log, checkpoint directory and
//! Redis: every click sent to either run is counted once, and a resend of a click that the first
//! run routed to a hot campaign's salted sub-key is recognised by the second. The resends come
//! within the allowed lateness (10 s), so each one reaches dedup.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adclick_server::config::{ServeConfig, StoreConfig};
use adclick_server::serve::{RunningServer, Seams, start};
use reqwest::StatusCode;
use serde_json::Value;

use crate::http_api::{click, post, wait_for_final_count_within};

const HOT: u64 = 7;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn config(dir: &Path, redis: &adclick_io::redis_store::RedisConfig) -> ServeConfig {
    let text = format!(
        r#"
[security]
allow_unsigned = true
[http]
listen = "127.0.0.1:0"
records_per_request_max = 5000
body_bytes_max = 4194304
[engine]
partitions = 4
epoch_ms = 100
window_ms = 1000
allowed_lateness_ms = 10000
max_out_of_orderness_ms = 200
idle_timeout_ms = 300
dedup_horizon_ms = 60000
dedup_bucket_ms = 1000
hot_campaign_share = 0.3
hot_campaign_salts = 4
ingest_nodes = "one"
[log]
kind = "file"
dir = "{}"
[checkpoints]
url = "file://{}"
"#,
        dir.join("log").display(),
        dir.join("checkpoints").display()
    );
    let mut config = ServeConfig::parse(&text, "restart test").unwrap();
    config.store = StoreConfig::Redis(redis.clone());
    config
}

async fn serve(config: ServeConfig) -> (RunningServer, String) {
    let seams = Seams::from_config(&config).await.unwrap();
    let server = start(config, seams).await.unwrap();
    let base = format!("http://{}", server.local_addr);
    (server, base)
}

async fn send(base: &str, clicks: &[String]) {
    for chunk in clicks.chunks(5_000) {
        let (status, answer): (StatusCode, Value) =
            post(base, "application/x-ndjson", chunk.join("\n")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        assert_eq!(answer["accepted"], chunk.len(), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_counts_every_click_once_and_routes_resends_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let url =
        std::env::var("ADCLICK_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let mut redis = adclick_io::redis_store::RedisConfig::new(url);
    redis.prefix = format!("adclick-test-restart-{}", std::process::id());
    let start_ms = now_ms();

    // First run: a period in which campaign 7 has 60% of 2,000 clicks makes it hot.
    let (server, base) = serve(config(dir.path(), &redis)).await;
    let hot_period: Vec<String> = (0..2_000u64)
        .map(|n| {
            let campaign = if n % 5 < 3 { HOT } else { 100 + n % 40 };
            click(n, campaign, 1, now_ms())
        })
        .collect();
    send(&base, &hot_period).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    send(&base, &[click(5_000, 100, 1, now_ms())]).await;
    // The plan is stored before it routes anything; it starts 2 s past every accepted time.
    let plan_path = dir.path().join("checkpoints/salt-plans/campaign-7.json");
    let mut waited = 0;
    while !plan_path.exists() {
        assert!(waited < 100, "no salt plan was stored for campaign 7");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    let plan: Value = serde_json::from_slice(&std::fs::read(&plan_path).unwrap()).unwrap();
    let from_ms = plan["from_event_time_ms"].as_u64().unwrap();
    assert_eq!(plan["salts"], 4);
    tokio::time::sleep(Duration::from_millis(from_ms.saturating_sub(now_ms()) + 50)).await;
    let salted: Vec<String> = (10_000..10_400u64)
        .map(|n| click(n, HOT, 1, now_ms()))
        .collect();
    send(&base, &salted).await;
    server.shutdown().await.unwrap();

    // Second run: every earlier click of campaign 7 again, plus 100 new ones.
    let (server, base) = serve(config(dir.path(), &redis)).await;
    let mut second: Vec<String> = hot_period
        .iter()
        .enumerate()
        .filter(|(n, _)| n % 5 < 3)
        .map(|(_, line)| line.clone())
        .collect();
    second.extend(salted.iter().cloned());
    second.extend((20_000..20_100u64).map(|n| click(n, HOT, 1, now_ms())));
    send(&base, &second).await;
    let unique = 1_200 + 400 + 100;
    // Windows are final 10 s (the lateness) past their end.
    let counted = wait_for_final_count_within(
        &base,
        HOT,
        start_ms - 2_000,
        unique,
        Duration::from_secs(40),
    )
    .await;
    assert_eq!(counted.total.clicks, 1_200 + 400 + second.len() as u64);
    server.shutdown().await.unwrap();

    let keys = adclick_io::redis_store::KeySpace {
        partitions: 4,
        window_ms: 1000,
        salts_max: adclick_core::limits::SALTS_MAX,
    };
    let store = adclick_io::redis_store::RedisStore::connect(redis, keys)
        .await
        .unwrap();
    store.delete_all().await.unwrap();
}
