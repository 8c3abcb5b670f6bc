//! `adclick load SCENARIO --target http://HOST:PORT`: drives a running `adclick serve` at the
//! scenario's rate, open loop, and measures the achieved rate, ack latency and freshness.
//!
//! Open loop (wrk2's rule): request `i` is due at `start + i * batch / rate`, whether or not
//! earlier requests were answered. Latency is measured from that intended time, so a slow
//! server cannot hide its queueing by slowing the generator down (coordinated omission); the
//! raw latency from the actual send is reported too. Request bodies are generated on their own
//! thread ahead of schedule, so generating never delays a send.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use adclick_engine::scenario::Scenario;
use adclick_traffic::{GeneratedBatch, Generator};
use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Deserialize;

use crate::{LoadReport, new_histogram, percentiles};

/// Bodies generated ahead of their send time at most.
const BODIES_AHEAD: usize = 512;

#[derive(Default)]
struct Tally {
    /// Latency from the intended send time, in µs.
    corrected_us: Option<Histogram<u64>>,
    /// Latency from the actual send, in µs.
    raw_us: Option<Histogram<u64>>,
    events_accepted: u64,
    events_rejected: u64,
    requests_ok: u64,
    requests_busy: u64,
    requests_failed: u64,
}

#[derive(Deserialize)]
struct IngestAnswer {
    accepted: u64,
    rejected: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Generates NDJSON request bodies on a thread of its own, each with the time it is due.
fn spawn_body_generator(
    scenario: &Scenario,
    requests: u64,
    batch_events: usize,
    interval: Duration,
    start: Instant,
) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(BODIES_AHEAD);
    let signer = signer_from_env();
    let mut generator = Generator::new(scenario);
    let start_wall_ms = now_ms();
    std::thread::spawn(move || {
        let mut batch = GeneratedBatch::default();
        for index in 0..requests {
            let due = start + interval * index as u32;
            let offset_ms = due.saturating_duration_since(start).as_millis() as u64;
            batch.events.clear();
            batch.kinds.clear();
            generator.next_batch(
                start_wall_ms + offset_ms,
                offset_ms,
                batch_events,
                &mut batch,
            );
            let mut body = Vec::with_capacity(batch.events.len() * 320);
            for event in &batch.events {
                body.extend_from_slice(&ndjson_line(event, &signer));
            }
            if sender.send(body).is_err() {
                return;
            }
        }
    });
    receiver
}

/// Signs clicks like an ad server when `ADCLICK_SIGNING_KEYS` (`KEY_ID=HEX,...`) is set, with
/// its first key, so a secured `adclick serve` takes them.
fn signer_from_env() -> Signer {
    let text = std::env::var("ADCLICK_SIGNING_KEYS").ok()?;
    let (key_id, hex) = text.split(',').next()?.split_once('=')?;
    let key = adclick_core::signing::hex_decode(hex.trim())?;
    let mut keys = adclick_core::signing::SigningKeys::default();
    keys.insert(key_id.trim(), key);
    Some((key_id.trim().to_owned(), keys))
}

/// One click as an NDJSON line, signed when `ADCLICK_SIGNING_KEYS` is set.
fn ndjson_line(event: &adclick_core::event::ClickEvent, signer: &Signer) -> Vec<u8> {
    let mut wire = adclick_core::event::WireClick::from(event);
    if let Some((key_id, keys)) = signer {
        let message = adclick_core::signing::signed_message(
            event.click_id.0,
            event.campaign_id.0,
            event.ad_id.0,
            event.event_time_ms.0,
        );
        wire.signature = keys.sign(key_id, &message);
        wire.key_id = Some(key_id.clone());
    }
    let mut line = serde_json::to_vec(&wire).expect("a click serializes");
    line.push(b'\n');
    line
}

type Signer = Option<(String, adclick_core::signing::SigningKeys)>;

pub async fn drive(
    scenario: &Scenario,
    base: &str,
    connections: usize,
) -> anyhow::Result<(LoadReport, adclick_harness::run::RunReport)> {
    let rate = scenario.traffic.rate_per_s.max(1);
    let batch_events = scenario.traffic.batch_events.max(1);
    let requests =
        ((rate as f64 * scenario.traffic.duration_s) / batch_events as f64).ceil() as u64;
    let interval = Duration::from_secs_f64(batch_events as f64 / rate as f64);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .build()?;
    let url = format!("{base}/v1/clicks");
    eprintln!(
        "load {}: {rate} clicks/s for {} s to {url}, {batch_events} per request, {connections} connections (open loop)",
        scenario.name, scenario.traffic.duration_s
    );
    let start = Instant::now() + Duration::from_millis(200);
    let bodies = spawn_body_generator(scenario, requests, batch_events, interval, start);
    let tally = Arc::new(Mutex::new(Tally {
        corrected_us: Some(new_histogram()),
        raw_us: Some(new_histogram()),
        ..Tally::default()
    }));
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stop_watching, watching) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(crate::monitor::watch_server(
        client.clone(),
        base.to_owned(),
        accepted.clone(),
        start,
        watching.clone(),
    ));
    let signer = signer_from_env();
    let sampler = tokio::spawn(crate::monitor::sample_freshness(
        client.clone(),
        base.to_owned(),
        scenario.clone(),
        move |event| ndjson_line(event, &signer),
        watching,
    ));
    let post = Post {
        client: client.clone(),
        url,
        tally: tally.clone(),
        accepted: accepted.clone(),
    };
    let schedule = Schedule {
        start,
        interval,
        requests,
        connections,
    };
    send_on_schedule(&post, bodies, schedule).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let (after_drain, drain_ms) = drain(&client, base).await;
    let _ = stop_watching.send(true);
    let (timeline, last_watched) = watcher.await?;
    // The drain's own last answer is newer than the watcher's.
    let last = after_drain.or(last_watched);
    let (freshness_ms, _) = sampler.await?;
    let tally = tally.lock().expect("tally lock");
    let report = load_report(scenario, base, connections, elapsed, &tally);
    let run_report = http_run_report(
        scenario,
        &report,
        &tally,
        (timeline, last, freshness_ms),
        drain_ms,
    );
    Ok((report, run_report))
}

/// When each request is due: request `i` at `start + i * interval`, open loop.
struct Schedule {
    start: Instant,
    interval: Duration,
    requests: u64,
    connections: usize,
}

/// Sends every body at its intended time and waits for every answer.
async fn send_on_schedule(
    post: &Post,
    bodies: std::sync::mpsc::Receiver<Vec<u8>>,
    schedule: Schedule,
) -> anyhow::Result<()> {
    let bodies = Arc::new(Mutex::new(bodies));
    let permits = Arc::new(tokio::sync::Semaphore::new(schedule.connections));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..schedule.requests {
        let intended = schedule.start + schedule.interval * index as u32;
        tokio::time::sleep_until(intended.into()).await;
        // At most `connections` requests in flight; waiting here counts against latency,
        // because latency runs from `intended`.
        let permit = permits.clone().acquire_owned().await?;
        let bodies = bodies.clone();
        let body = tokio::task::spawn_blocking(move || bodies.lock().expect("bodies").recv())
            .await?
            .context("the body generator stopped early")?;
        tasks.spawn(post.clone().send(body, intended, permit));
        // Reap finished requests so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// One request's way to the target and its answer into the tally.
#[derive(Clone)]
struct Post {
    client: reqwest::Client,
    url: String,
    tally: Arc<Mutex<Tally>>,
    accepted: Arc<std::sync::atomic::AtomicU64>,
}

impl Post {
    /// Posts `body`; latency runs from `intended` (corrected for coordinated omission) and from
    /// the send (raw). The permit is held until the answer is in.
    async fn send(
        self,
        body: Vec<u8>,
        intended: Instant,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let sent = Instant::now();
        let result = self
            .client
            .post(&self.url)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await;
        let answer = match result {
            Ok(response) => {
                let status = response.status();
                let body = response.bytes().await.unwrap_or_default();
                Ok((status, body))
            }
            Err(error) => Err(error),
        };
        let done = Instant::now();
        drop(permit);
        let mut tally = self.tally.lock().expect("tally lock");
        let corrected = done.duration_since(intended).as_micros() as u64;
        let raw = done.duration_since(sent).as_micros() as u64;
        let tally = &mut *tally;
        let histograms = [
            (&mut tally.corrected_us, corrected),
            (&mut tally.raw_us, raw),
        ];
        for (histogram, us) in histograms {
            histogram
                .as_mut()
                .expect("set")
                .saturating_record(us.max(1));
        }
        match answer {
            Ok((status, body)) if status.is_success() || status.as_u16() == 400 => {
                tally.requests_ok += 1;
                if let Ok(answer) = serde_json::from_slice::<IngestAnswer>(&body) {
                    let ordering = std::sync::atomic::Ordering::Relaxed;
                    self.accepted.fetch_add(answer.accepted, ordering);
                    tally.events_accepted += answer.accepted;
                    tally.events_rejected += answer.rejected;
                }
            }
            Ok((status, _)) if status.as_u16() == 503 => tally.requests_busy += 1,
            _ => tally.requests_failed += 1,
        }
    }
}

/// Lets the workers catch up (when the target answers /v1/freshness, for up to 60 s): the last
/// answer, and how long it took.
async fn drain(
    client: &reqwest::Client,
    base: &str,
) -> (Option<adclick_server::api::Freshness>, u64) {
    let drain_started = Instant::now();
    let mut after_drain = None;
    while let Some(answer) = crate::monitor::freshness(client, base).await {
        let done =
            crate::monitor::drained(&answer) || drain_started.elapsed() > Duration::from_secs(60);
        after_drain = Some(answer);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (after_drain, drain_started.elapsed().as_millis() as u64)
}

fn load_report(
    scenario: &Scenario,
    base: &str,
    connections: usize,
    elapsed: f64,
    tally: &Tally,
) -> LoadReport {
    LoadReport {
        scenario: scenario.name.clone(),
        target: base.to_owned(),
        connections,
        batch_events: scenario.traffic.batch_events.max(1),
        target_rate_per_s: scenario.traffic.rate_per_s.max(1),
        achieved_rate_per_s: tally.events_accepted as f64 / elapsed,
        duration_s: elapsed,
        events_accepted: tally.events_accepted,
        events_rejected: tally.events_rejected,
        requests_ok: tally.requests_ok,
        requests_busy: tally.requests_busy,
        requests_failed: tally.requests_failed,
        ack_latency_ms: percentiles(tally.corrected_us.as_ref().expect("set")),
        ack_latency_raw_ms: percentiles(tally.raw_us.as_ref().expect("set")),
    }
}

/// What an HTTP client can judge: the rate, and that every partition drained afterwards.
fn http_verdicts(
    report: &LoadReport,
    last: Option<&adclick_server::api::Freshness>,
    drain_ms: u64,
) -> Vec<adclick_harness::oracle::Verdict> {
    use adclick_harness::oracle::Verdict;
    let needed = 0.95 * report.target_rate_per_s as f64;
    vec![
        Verdict {
            invariant: "rate",
            holds: report.achieved_rate_per_s >= needed,
            checked: true,
            detail: format!(
                "sustained {:.0}/s, needed {needed:.0}/s",
                report.achieved_rate_per_s
            ),
        },
        Verdict {
            invariant: "drained",
            holds: last.is_some_and(crate::monitor::drained),
            checked: last.is_some(),
            detail: format!(
                "every partition committed up to the log's end {drain_ms} ms after the load"
            ),
        },
        Verdict::skipped(
            "exactly_once",
            "checked by in-process runs and the simulator; an HTTP client cannot see the log",
        ),
    ]
}

/// The same report shape as an in-process run, from what an HTTP client can see.
fn http_run_report(
    scenario: &Scenario,
    report: &LoadReport,
    tally: &Tally,
    (timeline, last, freshness_ms): (
        Vec<adclick_harness::measure::TimelinePoint>,
        Option<adclick_server::api::Freshness>,
        adclick_harness::measure::Distribution,
    ),
    drain_ms: u64,
) -> adclick_harness::run::RunReport {
    let statuses: Vec<_> = last
        .as_ref()
        .map(|answer| answer.partitions.iter().filter_map(|p| p.status).collect())
        .unwrap_or_default();
    let sum = |field: fn(&adclick_core::snapshot::PartitionStats) -> u64| {
        statuses
            .iter()
            .map(|status| field(&status.stats))
            .sum::<u64>()
    };
    let verdicts = http_verdicts(report, last.as_ref(), drain_ms);
    adclick_harness::run::RunReport {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        partitions: last
            .as_ref()
            .map_or(0, |answer| answer.partitions.len() as u32),
        target_rate_per_s: report.target_rate_per_s,
        traffic_s: report.duration_s,
        generated: (report.target_rate_per_s as f64 * scenario.traffic.duration_s) as u64,
        accepted: report.events_accepted,
        rejected: report.events_rejected,
        busy_answers: tally.requests_busy,
        achieved_rate_per_s: report.achieved_rate_per_s,
        duplicates_dropped: sum(|stats| stats.duplicates),
        late_clicks: sum(|stats| stats.late),
        fraud_clicks: sum(|stats| {
            stats.fraud_known_ip + stats.fraud_known_user_agent + stats.fraud_rate
        }),
        unique_billable_clicks: 0,
        worker_crashes_injected: 0,
        worker_restarts: 0,
        store_errors_injected: 0,
        drain_ms,
        passed: verdicts.iter().all(|verdict| verdict.holds),
        verdicts,
        measurements: adclick_harness::measure::Measurements {
            ack_latency_ms: adclick_harness::measure::distribution(
                tally.corrected_us.as_ref().expect("set"),
            ),
            ack_latency_raw_ms: adclick_harness::measure::distribution(
                tally.raw_us.as_ref().expect("set"),
            ),
            freshness_ms,
            timeline,
            faults: Vec::new(),
            partition_records: statuses.iter().map(|status| status.stats.records).collect(),
        },
        artifacts: None,
    }
}
