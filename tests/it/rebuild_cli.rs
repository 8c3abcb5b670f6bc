//! `adclick rebuild` through the real binary: a file log written directly, replayed into the
//! real Redis under a prefix of this test's own.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use adclick_core::event::ClickEvent;
use adclick_core::ids::{AdId, CampaignId, ClickId, Country, EventTimeMs, PartitionId, UserId};
use adclick_core::limits::SALTS_MAX;
use adclick_core::window::Lane;
use adclick_engine::embedded::FileLog;
use adclick_engine::seams::{AppendBatch, Granularity, Log, RealtimeStore, RecordBlock};
use adclick_io::redis_store::{KeySpace, RedisConfig, RedisStore};

const PARTITIONS: u32 = 4;
const WINDOW_MS: u64 = 1_000;

fn click(n: u64, campaign: u64, event_time_ms: u64) -> ClickEvent {
    ClickEvent {
        click_id: ClickId(u128::from(n) + 1),
        campaign_id: CampaignId(campaign),
        ad_id: AdId(1),
        user_id: UserId(n),
        ip: IpAddr::V4(Ipv4Addr::new(10, 2, 0, 1)),
        user_agent: "test-agent".into(),
        country: Country::parse("DE").unwrap(),
        event_time_ms: EventTimeMs(event_time_ms),
        publisher_id: None,
    }
}

fn config_text(dir: &std::path::Path, prefix: &str, redis_url: &str) -> String {
    format!(
        r#"
[security]
allow_unsigned = true
[engine]
partitions = {PARTITIONS}
window_ms = {WINDOW_MS}
allowed_lateness_ms = 500
max_out_of_orderness_ms = 200
idle_timeout_ms = 300
dedup_horizon_ms = 20000
dedup_bucket_ms = 1000
[log]
kind = "file"
dir = "{}"
[store]
kind = "redis"
url = "{redis_url}"
prefix = "{prefix}"
[checkpoints]
url = "file://{}"
"#,
        dir.join("log").display(),
        dir.join("checkpoints").display(),
    )
}

/// Ten clicks per campaign a second apart ten minutes ago, and two resends of campaign 1's.
/// Returns how many partitions hold clicks.
async fn write_log(dir: &std::path::Path, start_ms: u64) -> usize {
    let mut clicks: Vec<ClickEvent> = (0..40)
        .map(|n| click(n, 1 + n % 4, start_ms + n * 250))
        .collect();
    clicks.push(click(0, 1, start_ms));
    clicks.push(click(4, 1, start_ms + 1_000));
    let log = FileLog::open(dir.join("log"), PARTITIONS, Default::default()).unwrap();
    let blocks = RecordBlock::route(&clicks, PARTITIONS);
    let used = blocks.iter().filter(|block| !block.is_empty()).count();
    for (partition, records) in blocks.into_iter().enumerate() {
        let batch = AppendBatch {
            producer_id: 1,
            first_sequence: 0,
            records,
        };
        log.append(PartitionId(partition as u32), batch)
            .await
            .unwrap();
    }
    used
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuild_command_replays_a_file_log_into_redis() {
    let dir = tempfile::tempdir().unwrap();
    let redis_url =
        std::env::var("ADCLICK_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let prefix = format!("adclick-test-rebuild-cli-{}", std::process::id());
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let start_ms = (now_ms - 600_000) / WINDOW_MS * WINDOW_MS;
    let partitions_used = write_log(dir.path(), start_ms).await;
    let config = dir.path().join("adclick.toml");
    std::fs::write(&config, config_text(dir.path(), &prefix, &redis_url)).unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_adclick"))
        .args(["rebuild", "--config"])
        .arg(&config)
        .args(["--from", &start_ms.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.matches("series written").count(),
        PARTITIONS as usize
    );

    let mut redis = RedisConfig::new(redis_url);
    redis.prefix = prefix;
    let keys = KeySpace {
        partitions: PARTITIONS,
        window_ms: WINDOW_MS,
        salts_max: SALTS_MAX,
    };
    let store = RedisStore::connect(redis, keys).await.unwrap();
    for campaign in 1..=4 {
        let series = store
            .campaign_series(
                CampaignId(campaign),
                Granularity::Window,
                start_ms,
                start_ms + 60_000,
            )
            .await
            .unwrap();
        let (mut clicks, mut unique) = (0, 0);
        for (_, lane, stored) in &series {
            assert_eq!(*lane, Lane::OnTime);
            assert!(stored.is_final, "campaign {campaign}: {series:?}");
            clicks += stored.counts.clicks;
            unique += stored.counts.unique;
        }
        let resends = if campaign == 1 { 2 } else { 0 };
        assert_eq!((clicks, unique), (10 + resends, 10), "campaign {campaign}");
    }
    assert_eq!(store.rebuilding_partitions().await.unwrap(), []);
    assert_eq!(
        store.partition_status().await.unwrap().len(),
        partitions_used,
        "a status for every partition written"
    );
    store.delete_all().await.unwrap();
}
