//! `adclick load SCENARIO --target kafka://BROKERS/TOPIC?partitions=N`: produces the scenario's
//! clicks straight into a Kafka-protocol topic with the engine's own producer (rdkafka,
//! idempotent, keyed by campaign), open loop, and reports the produce-ack latency from the
//! intended send time. Workers of an `adclick serve` on that topic then count them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adclick_engine::clock::SystemClock;
use adclick_engine::scenario::Scenario;
use adclick_engine::seams::{AppendBatch, Clock, Log, RecordBlock};
use adclick_io::kafka::{KafkaConfig, KafkaLog, create_topic};
use adclick_traffic::{GeneratedBatch, Generator};
use anyhow::Context;
use hdrhistogram::Histogram;

/// `kafka://host:port[,host:port]/topic?partitions=N`
fn parse_target(target: &str) -> anyhow::Result<(String, String, u32)> {
    let rest = target
        .strip_prefix("kafka://")
        .context("a kafka target starts with kafka://")?;
    let (brokers, path) = rest
        .split_once('/')
        .context("--target kafka://BROKERS/TOPIC?partitions=N: the topic is missing")?;
    let (topic, query) = path.split_once('?').unwrap_or((path, ""));
    let partitions = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("partitions="))
        .context("--target kafka://BROKERS/TOPIC?partitions=N: partitions is missing")?
        .parse()
        .context("partitions must be a positive integer")?;
    anyhow::ensure!(!topic.is_empty(), "--target {target}: the topic is empty");
    Ok((brokers.to_owned(), topic.to_owned(), partitions))
}

pub async fn drive(
    scenario: &Scenario,
    target: &str,
    in_flight_max: usize,
) -> anyhow::Result<crate::LoadReport> {
    let (brokers, topic, partitions) = parse_target(target)?;
    let log = connect(&brokers, &topic, partitions).await?;
    let rate = scenario.traffic.rate_per_s.max(1);
    let batch_events = scenario.traffic.batch_events.max(1);
    let requests =
        ((rate as f64 * scenario.traffic.duration_s) / batch_events as f64).ceil() as u64;
    let interval = Duration::from_secs_f64(batch_events as f64 / rate as f64);
    eprintln!(
        "load {}: {rate} clicks/s for {} s into kafka topic {topic} ({partitions} partitions), {batch_events} per batch (open loop)",
        scenario.name, scenario.traffic.duration_s
    );
    let mut generator = Generator::new(scenario);
    let histograms: Arc<KafkaTally> = Arc::new(std::sync::Mutex::new((
        crate::new_histogram(),
        crate::new_histogram(),
        0u64,
        0u64,
    )));
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight_max));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now() + Duration::from_millis(200);
    let start_wall_ms = SystemClock.now_ms() + 200;
    let mut sequences = vec![0u64; partitions as usize];
    for index in 0..requests {
        let intended = start + interval * index as u32;
        tokio::time::sleep_until(intended.into()).await;
        let permit = permits.clone().acquire_owned().await?;
        let offset_ms = (interval * index as u32).as_millis() as u64;
        let mut batch = GeneratedBatch::default();
        generator.next_batch(
            start_wall_ms + offset_ms,
            offset_ms,
            batch_events,
            &mut batch,
        );
        let count = batch.events.len() as u64;
        let appends = route(&batch, &mut sequences);
        let sent = Sent {
            intended,
            count,
            permit,
        };
        tasks.spawn(append_all(log.clone(), histograms.clone(), appends, sent));
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let histograms = histograms.lock().expect("histogram lock");
    let report = crate::LoadReport {
        scenario: scenario.name.clone(),
        target: target.to_owned(),
        connections: in_flight_max,
        batch_events,
        target_rate_per_s: rate,
        achieved_rate_per_s: histograms.2 as f64 / elapsed,
        duration_s: elapsed,
        events_accepted: histograms.2,
        events_rejected: 0,
        requests_ok: requests - histograms.3,
        requests_busy: 0,
        requests_failed: histograms.3,
        ack_latency_ms: crate::percentiles(&histograms.0),
        ack_latency_raw_ms: crate::percentiles(&histograms.1),
    };
    Ok(report)
}

/// The topic's log, creating the topic if it can (it may exist already).
async fn connect(brokers: &str, topic: &str, partitions: u32) -> anyhow::Result<Arc<KafkaLog>> {
    let config = KafkaConfig::new(brokers, topic, partitions, &format!("{topic}-load"));
    if let Err(error) = create_topic(&config, 1).await {
        tracing::warn!(%error, "could not create the topic; it may exist already");
    }
    Ok(Arc::new(KafkaLog::connect(config).await?))
}

/// A batch on its way: when it was due, its clicks, and its in-flight permit.
struct Sent {
    intended: Instant,
    count: u64,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// Appends one generated batch (one append per partition it touches) and tallies it.
async fn append_all(
    log: Arc<KafkaLog>,
    histograms: Arc<KafkaTally>,
    appends: Vec<(adclick_core::ids::PartitionId, AppendBatch)>,
    batch: Sent,
) {
    let sent = Instant::now();
    let appended = futures::future::join_all(
        appends
            .into_iter()
            .map(|(partition, append)| log.append(partition, append)),
    )
    .await
    .iter()
    .all(Result::is_ok);
    let done = Instant::now();
    drop(batch.permit);
    let count = appended.then_some(batch.count);
    tally(&histograms, batch.intended, sent, done, count);
}

/// Corrected and raw latencies (µs), clicks appended, batches failed.
type KafkaTally = std::sync::Mutex<(Histogram<u64>, Histogram<u64>, u64, u64)>;

/// A generated batch as one append per partition it touches, each continuing that
/// partition's sequence (one idempotent producer).
fn route(
    batch: &GeneratedBatch,
    sequences: &mut [u64],
) -> Vec<(adclick_core::ids::PartitionId, AppendBatch)> {
    let partitions = sequences.len() as u32;
    let mut appends = Vec::new();
    for (partition, block) in RecordBlock::route(&batch.events, partitions)
        .into_iter()
        .enumerate()
        .filter(|(_, block)| !block.is_empty())
    {
        let first_sequence = sequences[partition];
        sequences[partition] += block.len() as u64;
        let append = AppendBatch {
            producer_id: 1,
            first_sequence,
            records: block,
        };
        appends.push((adclick_core::ids::PartitionId(partition as u32), append));
    }
    appends
}

/// One batch's latencies, and its clicks when every append succeeded (else a failure).
fn tally(
    histograms: &KafkaTally,
    intended: Instant,
    sent: Instant,
    done: Instant,
    appended: Option<u64>,
) {
    let mut histograms = histograms.lock().expect("histogram lock");
    let corrected = done.duration_since(intended).as_micros() as u64;
    let raw = done.duration_since(sent).as_micros() as u64;
    histograms.0.saturating_record(corrected.max(1));
    histograms.1.saturating_record(raw.max(1));
    match appended {
        Some(count) => histograms.2 += count,
        None => histograms.3 += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_targets_parse_and_say_what_is_missing() {
        assert_eq!(
            parse_target("kafka://a:9092,b:9092/clicks?partitions=8").unwrap(),
            ("a:9092,b:9092".into(), "clicks".into(), 8)
        );
        let error = parse_target("kafka://a:9092/clicks").unwrap_err();
        assert!(
            error.to_string().contains("partitions is missing"),
            "{error}"
        );
        assert!(parse_target("kafka://a:9092").is_err());
    }
}
