//! Abuse resistance over real HTTP: forged, altered and retired-key clicks are refused;
//! advertisers see only their own campaigns; bursts get 429 and then recover; a slow client is
//! cut off.

use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use adclick_core::ids::ClickId;
use adclick_core::signing::{SigningKeys, signed_message};
use adclick_server::config::ServeConfig;
use adclick_server::serve::{RunningServer, Seams, start};
use reqwest::StatusCode;
use serde_json::Value;

const K1: &str = "00112233445566778899aabbccddeeff";
const K_OLD: &str = "ffeeddccbbaa99887766554433221100";
const ACME_TOKEN: &str = "acme-token-0123456789";
const GLOBEX_TOKEN: &str = "globex-token-0123456789";
const ADMIN_TOKEN: &str = "admin-token-0123456789";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Secured {
    server: RunningServer,
    base: String,
    _dir: tempfile::TempDir,
}

async fn secured_server(extra_http: &str) -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("signing-keys.toml");
    std::fs::write(&keys, format!("k1 = \"{K1}\"\n")).unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\ntoken = \"{ACME_TOKEN}\"\nadvertiser = \"acme\"\n\
             [[token]]\ntoken = \"{GLOBEX_TOKEN}\"\nadvertiser = \"globex\"\n\
             [[token]]\ntoken = \"{ADMIN_TOKEN}\"\nadmin = true\n\
             [advertisers.acme]\ncampaigns = [7]\n[advertisers.globex]\ncampaigns = [8]\n"
        ),
    )
    .unwrap();
    let text = format!(
        "[security]\nsigning_keys_file = \"{}\"\ntokens_file = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n{extra_http}\n\
         [engine]\npartitions = 2\nepoch_ms = 100\nwindow_ms = 1000\nallowed_lateness_ms = 500\n\
         max_out_of_orderness_ms = 200\nidle_timeout_ms = 300\n",
        keys.display(),
        tokens.display()
    );
    let config = ServeConfig::parse(&text, "security test").unwrap();
    let seams = Seams::from_config(&config).await.unwrap();
    let server = start(config, seams).await.unwrap();
    let base = format!("http://{}", server.local_addr);
    Secured {
        server,
        base,
        _dir: dir,
    }
}

fn keys(hex_key: &str) -> SigningKeys {
    let mut keys = SigningKeys::default();
    keys.insert("k1", adclick_core::signing::hex_decode(hex_key).unwrap());
    keys
}

/// A click JSON, signed with `hex_key` under key id `key_id` (or unsigned).
fn click(n: u64, campaign: u64, event_time_ms: u64, signer: Option<(&str, &str)>) -> Value {
    let click_id = format!("{:08x}-0000-4000-8000-{:012x}", n + 1, n + 1);
    let mut json = serde_json::json!({
        "click_id": click_id, "campaign_id": campaign, "ad_id": 1, "user_id": n,
        "ip": format!("10.2.0.{}", n % 250 + 1), "user_agent": "ua", "country": "DE",
        "event_time_ms": event_time_ms,
    });
    if let Some((key_id, hex_key)) = signer {
        let id = ClickId::parse(&click_id).unwrap();
        let message = signed_message(id.0, campaign, 1, event_time_ms);
        json["key_id"] = key_id.into();
        json["signature"] = keys(hex_key).sign("k1", &message).unwrap().into();
    }
    json
}

async fn post(base: &str, body: &Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/clicks"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_altered_and_retired_key_clicks_are_refused() {
    let secured = secured_server("").await;
    let base = &secured.base;
    let now = now_ms();

    let (status, answer) = post(base, &click(1, 7, now, Some(("k1", K1)))).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "a signed click is taken: {answer}"
    );

    let (status, answer) = post(base, &click(2, 7, now, None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(answer["errors"][0]["reasons"][0]["reason"], "unsigned");

    // Replayed with a changed field: the signature no longer matches.
    let mut altered = click(3, 7, now, Some(("k1", K1)));
    altered["campaign_id"] = 8.into();
    let (status, answer) = post(base, &altered).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer["errors"][0]["reasons"][0]["reason"], "bad_signature");

    // Signed by someone without the key.
    let (status, answer) = post(base, &click(4, 7, now, Some(("k1", K_OLD)))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer["errors"][0]["reasons"][0]["reason"], "bad_signature");

    // A key id that was rotated out (not active).
    let (status, answer) = post(base, &click(5, 7, now, Some(("k0", K1)))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer["errors"][0]["reasons"][0]["reason"],
        "unknown_signing_key"
    );

    // A mix: the good one is taken, the forged one named.
    let mix = Value::Array(vec![
        click(6, 7, now, Some(("k1", K1))),
        click(7, 7, now, None),
    ]);
    let (status, answer) = post(base, &mix).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(answer["errors"][0]["index"], 1);

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("adclick_http_ingest_signature_rejections_total 5"),
        "{metrics}"
    );
    secured.server.shutdown().await.unwrap();
}

async fn get_as(url: &str, token: Option<&str>) -> StatusCode {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status()
}

/// `GET /v1/top` for one window, as the holder of `token`.
async fn top_as(base: &str, window_start_ms: u64, token: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}/v1/top?window={window_start_ms}&n=10"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advertiser_sees_only_its_own_campaigns() {
    let secured = secured_server("").await;
    let base = &secured.base;
    let now = now_ms();
    for (n, campaign) in [(1, 7), (2, 8)] {
        let (status, _) = post(base, &click(n, campaign, now, Some(("k1", K1)))).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let campaign = |id: u64| format!("{base}/v1/campaigns/{id}/clicks");
    assert_eq!(get_as(&campaign(7), None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get_as(&campaign(7), Some("wrong-token-0123456789")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get_as(&campaign(7), Some(ACME_TOKEN)).await, StatusCode::OK);
    // Another advertiser's campaign is 404, exactly like one that does not exist.
    assert_eq!(
        get_as(&campaign(8), Some(ACME_TOKEN)).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_as(&campaign(99), Some(ACME_TOKEN)).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_as(&campaign(8), Some(GLOBEX_TOKEN)).await,
        StatusCode::OK
    );
    assert_eq!(
        get_as(&campaign(8), Some(ADMIN_TOKEN)).await,
        StatusCode::OK
    );

    // Top-N lists only the caller's campaigns. The clicks' own window, by its start: "current"
    // follows the watermark, which idle partitions move on with the clock, so a loaded machine
    // could see the clicks' window stop being current before their counts arrive.
    let window_start_ms = now / 1000 * 1000;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let top = top_as(base, window_start_ms, ADMIN_TOKEN).await;
        if top["ads"].as_array().map_or(0, Vec::len) == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "both clicks never showed: {top}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let top = top_as(base, window_start_ms, ACME_TOKEN).await;
    let campaigns: Vec<u64> = top["ads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ad| ad["campaign_id"].as_u64().unwrap())
        .collect();
    assert_eq!(campaigns, vec![7], "{top}");
    secured.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_gets_429_with_retry_after_then_recovers() {
    let secured =
        secured_server("requests_per_s_per_client = 5\nrequest_burst_per_client = 5").await;
    let url = format!("{}/v1/freshness", secured.base);
    let mut limited = None;
    for _ in 0..20 {
        let response = reqwest::Client::new()
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("20 requests at once exceed a burst of 5");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=2).contains(&retry_after),
        "retry after {retry_after} s"
    );
    let answer: Value = limited.json().await.unwrap();
    assert_eq!(answer["limit"], "http.requests_per_s_per_client");
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        get_as(&url, Some(ADMIN_TOKEN)).await,
        StatusCode::OK,
        "recovered"
    );
    secured.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off_at_the_header_timeout() {
    let secured = secured_server("header_read_timeout_ms = 500").await;
    let address = secured.server.local_addr;
    let started = Instant::now();
    let closed_after = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Slowloris: a header line trickles in, never finished.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let mut buffer = [0u8; 512];
        let mut answer = Vec::new();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            if stream.write_all(b"X-Slow: a\r\n").is_err() {
                break;
            }
        }
        // The server must have closed (possibly after a 408) by now.
        loop {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => answer.extend_from_slice(&buffer[..read]),
            }
        }
        (
            Instant::now(),
            String::from_utf8_lossy(&answer).into_owned(),
        )
    })
    .await
    .unwrap();
    let (closed_at, answer) = closed_after;
    let held = closed_at.duration_since(started);
    assert!(
        held < Duration::from_secs(5),
        "the slow connection was held for {held:?}"
    );
    assert!(
        !answer.contains("200 OK"),
        "the slow request was not served: {answer}"
    );
    secured.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn ingest_without_keys_or_demo_mode_does_not_start() {
    let error = ServeConfig::parse("[http]\nlisten = \"127.0.0.1:0\"\n", "prod.toml").unwrap_err();
    assert!(
        error.to_string().contains("security.signing_keys_file"),
        "{error}"
    );
}
