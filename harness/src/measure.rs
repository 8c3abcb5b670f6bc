//! What a real-time run measures, for its report: ack latency (from the intended send time and
//! raw), click-to-count freshness of tagged sample clicks, and a timeline of rate, lag and
//! watermark delay, with the faults marked on it.

use std::sync::Mutex;
use std::time::Instant;

use adclick_core::ids::PartitionId;
use adclick_engine::seams::{Log, RealtimeStore};
use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

/// A latency distribution in ms: its summary and its percentile curve (for the plot).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Distribution {
    pub summary: Percentiles,
    /// (percentile, ms) points from p0 to p100.
    pub curve: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TimelinePoint {
    pub t_ms: u64,
    pub accepted: u64,
    /// Accepted clicks per second over the last interval.
    pub rate_per_s: f64,
    /// Records in the log not yet committed by a worker, per partition.
    pub lag_records: Vec<u64>,
    /// How far the slowest partition's watermark trails the clock.
    pub watermark_delay_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FaultMark {
    pub t_ms: u64,
    pub what: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Measurements {
    pub ack_latency_ms: Distribution,
    pub ack_latency_raw_ms: Distribution,
    pub freshness_ms: Distribution,
    pub timeline: Vec<TimelinePoint>,
    pub faults: Vec<FaultMark>,
    /// Records each partition received: the hot partition stands out.
    pub partition_records: Vec<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

pub fn distribution(histogram: &Histogram<u64>) -> Distribution {
    let ms = |us: u64| us as f64 / 1000.0;
    if histogram.is_empty() {
        return Distribution::default();
    }
    let curve = [
        0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
    ]
    .iter()
    .map(|percentile| {
        (
            *percentile,
            ms(histogram.value_at_quantile(percentile / 100.0)),
        )
    })
    .collect();
    Distribution {
        summary: Percentiles {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p99_9: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        },
        curve,
    }
}

/// A click submitted with a durable ack: visible once its partition's committed offset passes
/// `needed_offset` (the log's end right after the ack, so an upper bound on its own offset).
struct Sample {
    partition: PartitionId,
    needed_offset: u64,
    intended: Instant,
}

pub struct Recorder {
    started: Instant,
    ack: Mutex<(Histogram<u64>, Histogram<u64>)>,
    freshness: Mutex<Histogram<u64>>,
    pending: Mutex<Vec<Sample>>,
    timeline: Mutex<Vec<TimelinePoint>>,
    faults: Mutex<Vec<FaultMark>>,
}

impl Recorder {
    pub fn new(started: Instant) -> Recorder {
        Recorder {
            started,
            ack: Mutex::new((histogram(), histogram())),
            freshness: Mutex::new(histogram()),
            pending: Mutex::new(Vec::new()),
            timeline: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
        }
    }

    /// One answered request: due at `intended`, sent at `sent`, answered now.
    pub fn ack(&self, intended: Instant, sent: Instant) {
        let now = Instant::now();
        let mut ack = self.ack.lock().expect("ack lock");
        let corrected = now.saturating_duration_since(intended).as_micros() as u64;
        let raw = now.saturating_duration_since(sent).as_micros() as u64;
        ack.0.saturating_record(corrected.max(1));
        ack.1.saturating_record(raw.max(1));
    }

    /// The ack latency p99 so far (from the intended send time), for the progress bar.
    pub fn ack_p99_ms(&self) -> f64 {
        self.ack.lock().expect("ack lock").0.value_at_quantile(0.99) as f64 / 1000.0
    }

    pub fn sample(&self, partition: PartitionId, needed_offset: u64, intended: Instant) {
        self.pending.lock().expect("pending lock").push(Sample {
            partition,
            needed_offset,
            intended,
        });
    }

    pub fn fault(&self, what: String) {
        let t_ms = self.started.elapsed().as_millis() as u64;
        self.faults
            .lock()
            .expect("faults lock")
            .push(FaultMark { t_ms, what });
    }

    /// Checks pending samples against the store's committed offsets, and every `timeline_every`
    /// polls adds a timeline point.
    pub async fn poll(
        &self,
        log: &dyn Log,
        store: &dyn RealtimeStore,
        accepted: u64,
        now_ms: u64,
        with_timeline: bool,
    ) {
        let Ok(statuses) = store.partition_status().await else {
            return;
        };
        let mut committed = vec![0u64; log.partitions() as usize];
        let mut slowest_watermark_ms = u64::MAX;
        for status in &statuses {
            committed[status.partition.0 as usize] = status.next_offset.0;
            slowest_watermark_ms = slowest_watermark_ms.min(status.watermark.watermark_ms);
        }
        {
            let now = Instant::now();
            let mut pending = self.pending.lock().expect("pending lock");
            let mut freshness = self.freshness.lock().expect("freshness lock");
            pending.retain(|sample| {
                let visible = committed[sample.partition.0 as usize] >= sample.needed_offset;
                if visible {
                    let us = now.saturating_duration_since(sample.intended).as_micros() as u64;
                    freshness.saturating_record(us.max(1));
                }
                !visible
            });
        }
        if !with_timeline {
            return;
        }
        let mut lag_records = Vec::with_capacity(committed.len());
        for (partition, committed) in committed.iter().enumerate() {
            let end = log
                .end_offset(PartitionId(partition as u32))
                .await
                .map_or(0, |offset| offset.0);
            lag_records.push(end.saturating_sub(*committed));
        }
        let t_ms = self.started.elapsed().as_millis() as u64;
        let mut timeline = self.timeline.lock().expect("timeline lock");
        let rate_per_s = match timeline.last() {
            Some(last) if t_ms > last.t_ms => {
                (accepted - last.accepted) as f64 * 1000.0 / (t_ms - last.t_ms) as f64
            }
            _ => 0.0,
        };
        timeline.push(TimelinePoint {
            t_ms,
            accepted,
            rate_per_s,
            lag_records,
            watermark_delay_ms: if slowest_watermark_ms == u64::MAX || slowest_watermark_ms == 0 {
                0
            } else {
                now_ms.saturating_sub(slowest_watermark_ms)
            },
        });
    }

    pub fn finish(&self, partition_records: Vec<u64>) -> Measurements {
        let ack = self.ack.lock().expect("ack lock");
        Measurements {
            ack_latency_ms: distribution(&ack.0),
            ack_latency_raw_ms: distribution(&ack.1),
            freshness_ms: distribution(&self.freshness.lock().expect("freshness lock")),
            timeline: self.timeline.lock().expect("timeline lock").clone(),
            faults: self.faults.lock().expect("faults lock").clone(),
            partition_records,
        }
    }
}
