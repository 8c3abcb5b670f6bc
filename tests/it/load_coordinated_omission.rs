//! The load generator's latency is coordinated-omission-safe: against a target that stalls for
//! 1 s, the latency measured from each request's intended send time shows the stall (requests
//! that were due during it waited), and the raw latency from the actual send mostly does not
//! (only the few requests in flight saw it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;

/// A fake ingest that answers every request at once, except between 1 s and 2 s after the first
/// request, when every answer waits until the 2 s mark.
async fn stalling_target() -> std::net::SocketAddr {
    let first_request: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let app = Router::new().route(
        "/v1/clicks",
        post(move |body: String| {
            let first_request = first_request.clone();
            async move {
                let first = *first_request.get_or_init(Instant::now);
                let since = first.elapsed();
                if since >= Duration::from_secs(1) && since < Duration::from_secs(2) {
                    tokio::time::sleep(Duration::from_secs(2) - since).await;
                }
                let clicks = body.lines().filter(|line| !line.is_empty()).count();
                (
                    axum::http::StatusCode::ACCEPTED,
                    format!("{{\"accepted\":{clicks},\"rejected\":0,\"errors\":[]}}"),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_shows_in_corrected_latency_and_not_in_raw() {
    let address = stalling_target().await;
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("stall.toml");
    std::fs::write(
        &scenario,
        "version = 1\nname = \"stall\"\nseed = 3\n[traffic]\nrate_per_s = 20000\nduration_s = 4.0\n\
         campaigns = 10\nads_per_campaign = 2\nbatch_events = 100\n",
    )
    .unwrap();
    let json = dir.path().join("report.json");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_adclick"));
    command
        .arg("load")
        .arg(&scenario)
        .args([
            "--target",
            &format!("http://{address}"),
            "--connections",
            "4",
            "--json",
        ])
        .arg(&json);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "adclick load failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let corrected_p99 = report["ack_latency_ms"]["p99"].as_f64().unwrap();
    let raw_p99 = report["ack_latency_raw_ms"]["p99"].as_f64().unwrap();
    assert_eq!(report["events_accepted"], 80_000, "{report}");
    assert!(
        corrected_p99 >= 500.0,
        "the stall must show from the intended send time: p99 {corrected_p99} ms"
    );
    assert!(
        raw_p99 < 200.0,
        "only the 4 requests in flight saw the stall raw: p99 {raw_p99} ms"
    );
}
