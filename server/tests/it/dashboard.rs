//! The dashboard in headless Chromium. Starts `adclick serve` on embedded seams with 10 s
//! windows, posts generated clicks (resends, a bot over the rate rule, late clicks), installs
//! the browser with `ci/browser-env`, and runs `ci/browser/dashboard.test.mjs`, which checks
//! that the page shows exactly what the query API answers, follows new clicks within 5 s, shows
//! "no data yet" and "backend unreachable", and fits 1280 px and 390 px.
//!
//! Set `ADCLICK_DASHBOARD_SCREENSHOTS=DIR` to keep the screenshots (reports/ holds a run's).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use adclick_server::api::Freshness;
use adclick_server::config::ServeConfig;
use adclick_server::serve::{RunningServer, Seams, start};
use reqwest::StatusCode;

const WINDOW_MS: u64 = 2_000;
/// Clicks are generated in real time, one request per tick: history posted at once would read
/// as late, since a fresh partition's watermark follows processing time until it sees a click.
const TICK_MS: u64 = 250;
const TICKS: u64 = 72;
const CAMPAIGNS: u64 = 6;
const ADS_PER_CAMPAIGN: u64 = 3;
/// A bot's burst over two seconds: 256 clicks from one IP, so at least 128 fall in one minute,
/// over the default rate rule of 100 clicks per IP per minute.
const BOT_TICKS: std::ops::Range<u64> = 20..28;
const BOT_CLICKS_PER_TICK: u64 = 32;
const LATE_TICK: u64 = 48;
const LATE_CLICKS: u64 = 12;
/// The campaign the browser script posts its own clicks for; the generated data never uses it.
const LIVE_CAMPAIGN: u64 = 9001;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Windows of 2 s (the page's "minute" granularity is the window), closing 0.5 s after their end.
/// Idle partitions wait 10 minutes before processing time moves their watermark, so after the
/// generator stops the current and last windows still hold its clicks for the page to show.
fn dashboard_config() -> ServeConfig {
    let text = r#"
[security]
allow_unsigned = true
[http]
listen = "127.0.0.1:0"
[engine]
partitions = 4
epoch_ms = 100
window_ms = 2000
allowed_lateness_ms = 500
max_out_of_orderness_ms = 200
idle_timeout_ms = 600000
dedup_horizon_ms = 600000
dedup_bucket_ms = 10000
"#;
    ServeConfig::parse(text, "dashboard test").unwrap()
}

async fn serve() -> (RunningServer, String) {
    let config = dashboard_config();
    let seams = Seams::from_config(&config).await.unwrap();
    let server = start(config, seams).await.unwrap();
    let base = format!("http://{}", server.local_addr);
    (server, base)
}

/// One click as a JSON line; `n` makes the click id unique, `ip` may be shared (a bot).
fn click(n: u64, campaign: u64, ad: u64, ip: &str, event_time_ms: u64) -> (u64, String) {
    let line = format!(
        r#"{{"click_id":"{:08x}-0000-4000-8000-{n:012x}","campaign_id":{campaign},"ad_id":{ad},"user_id":{n},"ip":"{ip}","user_agent":"dashboard-test","country":"DE","event_time_ms":{event_time_ms}}}"#,
        campaign + 1,
    );
    (event_time_ms, line)
}

fn user_ip(n: u64) -> String {
    format!("10.2.{}.{}", (n / 250) % 250, n % 250 + 1)
}

/// One tick's clicks at `now_ms`: campaign 1 busiest, counts changing every two seconds, every
/// tenth click sent twice, the bot's burst on its ticks, and late clicks for a closed window.
fn tick_clicks(tick: u64, now_ms: u64, next_n: &mut u64) -> Vec<String> {
    let mut clicks = Vec::new();
    let mut next = |campaign: u64, ad: u64, ip: Option<&str>, event_time_ms: u64| {
        let n = *next_n;
        *next_n += 1;
        click(n, campaign, ad, ip.unwrap_or(&user_ip(n)), event_time_ms).1
    };
    for campaign in 1..=CAMPAIGNS {
        for ad in 1..=ADS_PER_CAMPAIGN {
            let count = (CAMPAIGNS + 1 - campaign + ad + (tick / 8) % 3) / 2;
            for index in 0..count {
                let line = next(campaign, ad, None, now_ms);
                if index % 10 == 0 {
                    clicks.push(line.clone());
                }
                clicks.push(line);
            }
        }
    }
    if BOT_TICKS.contains(&tick) {
        for _ in 0..BOT_CLICKS_PER_TICK {
            clicks.push(next(1, 2, Some("10.66.0.1"), now_ms));
        }
    }
    if tick == LATE_TICK {
        // Five windows back: closed on every partition, so these go to the late lane.
        let late_window_ms = (now_ms / WINDOW_MS - 5) * WINDOW_MS;
        for index in 0..LATE_CLICKS {
            clicks.push(next(1, 1, None, late_window_ms + index));
        }
    }
    clicks
}

/// Posts `TICKS` ticks of clicks in real time (18 s), the pace a real ad server would send.
async fn generate(base: &str) {
    let mut ticker = tokio::time::interval(Duration::from_millis(TICK_MS));
    let mut next_n = 0;
    for tick in 0..TICKS {
        ticker.tick().await;
        post(base, &tick_clicks(tick, now_ms(), &mut next_n)).await;
    }
}

async fn post(base: &str, lines: &[String]) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/clicks"))
        .header("content-type", "application/x-ndjson")
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer = response.text().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "POST /v1/clicks: {answer}");
    assert!(answer.contains(r#""rejected":0"#), "{answer}");
}

/// Polls freshness until every record in the log is committed, or fails after 20 s.
async fn wait_until_committed(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let freshness: Freshness = reqwest::get(format!("{base}/v1/freshness"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if freshness
            .partitions
            .iter()
            .all(|partition| partition.lag_records == Some(0))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the workers never caught up: {freshness:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs a command off the async runtime (the servers keep serving meanwhile).
async fn run(mut command: Command) -> Output {
    let description = format!("{command:?}");
    tokio::task::spawn_blocking(move || command.stdin(Stdio::null()).output())
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("{description} did not start: {error}"))
}

fn show(output: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium_shows_exactly_what_the_api_answers() {
    let root = workspace_root();
    let mut browser_env = Command::new(root.join("ci/browser-env"));
    browser_env.env("CI", "true");
    let installed = run(browser_env).await;
    assert!(
        installed.status.success(),
        "ci/browser-env failed\n{}",
        show(&installed)
    );
    let node_modules = String::from_utf8(installed.stdout.clone()).unwrap();

    let (server, base) = serve().await;
    let (empty_server, empty_base) = serve().await;
    generate(&base).await;
    wait_until_committed(&base).await;

    let screenshots = match std::env::var_os("ADCLICK_DASHBOARD_SCREENSHOTS") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("adclick-dashboard-{}", std::process::id())),
    };
    let started = Instant::now();
    let mut browser_test = Command::new("node");
    browser_test
        .arg(root.join("ci/browser/dashboard.test.mjs"))
        .args(["--base", &base, "--empty-base", &empty_base])
        .arg("--screenshots")
        .arg(&screenshots)
        .args(["--node-modules", node_modules.trim()])
        .args(["--campaign", &LIVE_CAMPAIGN.to_string()]);
    let output = run(browser_test).await;
    assert!(
        output.status.success(),
        "the dashboard's browser test failed\n{}",
        show(&output)
    );
    println!(
        "{}the browser test took {:?}; screenshots in {}",
        String::from_utf8_lossy(&output.stdout),
        started.elapsed(),
        screenshots.display()
    );
    server.shutdown().await.unwrap();
    empty_server.shutdown().await.unwrap();
}

/// The page and its assets come with the query role, and only with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_query_role_serves_the_dashboard() {
    for (roles, expected) in [("query", StatusCode::OK), ("ingest", StatusCode::NOT_FOUND)] {
        let text = format!(
            "roles = [\"{roles}\"]\n[security]\nallow_unsigned = true\n[http]\nlisten = \"127.0.0.1:0\"\n"
        );
        let config = ServeConfig::parse(&text, "dashboard roles test").unwrap();
        let seams = Seams::from_config(&config).await.unwrap();
        let server = start(config, seams).await.unwrap();
        let base = format!("http://{}", server.local_addr);
        for (path, content_type) in [
            ("/", "text/html; charset=utf-8"),
            ("/assets/dashboard.js", "text/javascript; charset=utf-8"),
            ("/assets/dashboard.css", "text/css; charset=utf-8"),
        ] {
            let response = reqwest::get(format!("{base}{path}")).await.unwrap();
            assert_eq!(response.status(), expected, "GET {path} with roles {roles}");
            if expected == StatusCode::OK {
                assert_eq!(response.headers()["content-type"], content_type, "{path}");
                assert!(!response.text().await.unwrap().is_empty(), "{path}");
            }
        }
        server.shutdown().await.unwrap();
    }
}
