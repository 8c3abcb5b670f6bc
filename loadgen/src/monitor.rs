//! What `adclick load --target http://` watches besides its own requests: the server's
//! `/v1/freshness` every 500 ms (rate, lag, watermark delay, per-partition load), and tagged
//! sample clicks sent with a durable ack, timed until their partition's committed offset passes
//! them (click-to-count freshness).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use adclick_core::ids::Salt;
use adclick_core::partition::partition_for_campaign;
use adclick_engine::scenario::Scenario;
use adclick_harness::measure::{TimelinePoint, distribution};
use adclick_server::api::Freshness;
use adclick_traffic::{GeneratedBatch, Generator};
use hdrhistogram::Histogram;
use tokio::sync::watch;

pub async fn freshness(client: &reqwest::Client, base: &str) -> Option<Freshness> {
    let response = client
        .get(format!("{base}/v1/freshness"))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    serde_json::from_slice(&response.bytes().await.ok()?).ok()
}

/// Everything in the log is committed by a worker.
pub fn drained(freshness: &Freshness) -> bool {
    freshness.partitions.iter().all(|partition| {
        partition.lag_records == Some(0)
            || (partition.end_offset == Some(0) && partition.status.is_none())
    })
}

/// Polls `/v1/freshness` until `stop`, recording a timeline point every 500 ms.
pub async fn watch_server(
    client: reqwest::Client,
    base: String,
    accepted: Arc<AtomicU64>,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) -> (Vec<TimelinePoint>, Option<Freshness>) {
    let mut timeline: Vec<TimelinePoint> = Vec::new();
    let mut last = None;
    while !*stop.borrow() {
        if let Some(answer) = freshness(&client, &base).await {
            let t_ms = started.elapsed().as_millis() as u64;
            let accepted = accepted.load(Ordering::Relaxed);
            let rate_per_s = match timeline.last() {
                Some(previous) if t_ms > previous.t_ms => {
                    (accepted - previous.accepted) as f64 * 1000.0 / (t_ms - previous.t_ms) as f64
                }
                _ => 0.0,
            };
            timeline.push(TimelinePoint {
                t_ms,
                accepted,
                rate_per_s,
                lag_records: answer
                    .partitions
                    .iter()
                    .map(|partition| partition.lag_records.unwrap_or(0))
                    .collect(),
                watermark_delay_ms: answer
                    .partitions
                    .iter()
                    .filter_map(|partition| partition.watermark_delay_ms)
                    .max()
                    .unwrap_or(0),
            });
            last = Some(answer);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => {}
        }
    }
    (timeline, last)
}

/// Sends a tagged click every 500 ms with `?ack=durable`, then polls until its partition has
/// committed past the log's end at the ack. Sample clicks come from their own seed, so they
/// never collide with the load's click ids.
pub async fn sample_freshness(
    client: reqwest::Client,
    base: String,
    scenario: Scenario,
    sign: impl Fn(&adclick_core::event::ClickEvent) -> Vec<u8> + Send + Sync + 'static,
    mut stop: watch::Receiver<bool>,
) -> (adclick_harness::measure::Distribution, u64) {
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
    ));
    let mut sample_scenario = scenario.clone();
    sample_scenario.seed ^= 0x5a5a_5a5a;
    sample_scenario.anomalies = Default::default();
    let mut generator = Generator::new(&sample_scenario);
    let sign = Arc::new(sign);
    let mut samples = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    let started = Instant::now();
    while !*stop.borrow() {
        let mut batch = GeneratedBatch::default();
        let now_ms = adclick_engine::seams::Clock::now_ms(&adclick_engine::clock::SystemClock);
        generator.next_batch(now_ms, started.elapsed().as_millis() as u64, 1, &mut batch);
        if let Some(event) = batch.events.pop() {
            sent += 1;
            let (client, base, histogram, sign) = (
                client.clone(),
                base.clone(),
                histogram.clone(),
                sign.clone(),
            );
            samples.spawn(async move {
                let sent_at = Instant::now();
                let answer = client
                    .post(format!("{base}/v1/clicks?ack=durable"))
                    .header("content-type", "application/x-ndjson")
                    .body(sign(&event))
                    .send()
                    .await;
                if !answer.is_ok_and(|answer| answer.status().as_u16() == 202) {
                    return;
                }
                let Some(at_ack) = freshness(&client, &base).await else {
                    return;
                };
                let partitions = at_ack.partitions.len() as u32;
                let partition =
                    partition_for_campaign(event.campaign_id, Salt(0), partitions).0 as usize;
                let Some(needed) = at_ack.partitions[partition].end_offset else {
                    return;
                };
                let deadline = sent_at + Duration::from_secs(60);
                while Instant::now() < deadline {
                    if let Some(now) = freshness(&client, &base).await
                        && now.partitions[partition]
                            .status
                            .is_some_and(|status| status.next_offset.0 >= needed)
                    {
                        let us = sent_at.elapsed().as_micros() as u64;
                        histogram
                            .lock()
                            .expect("histogram lock")
                            .saturating_record(us.max(1));
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => {}
        }
    }
    while samples.join_next().await.is_some() {}
    let histogram = histogram.lock().expect("histogram lock");
    (distribution(&histogram), sent)
}
