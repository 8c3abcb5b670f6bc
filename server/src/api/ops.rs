//! Liveness, readiness and Prometheus metrics.
//!
//! Metrics are read at scrape time from the state the engine already keeps (ingest counters,
//! each partition's last committed status), recorded into a fresh `metrics` recorder and
//! rendered by its Prometheus exporter. Nothing on the hot path pays for them.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;

use super::AppState;
use super::query::freshness_of;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// A readiness probe waits this long for the log before it calls an ingest node unready.
const READYZ_LOG_TIMEOUT_MS: u64 = 1_000;

/// Readiness, per node and by what the node runs, so a load balancer routes only to nodes that
/// can do their job:
/// - an ingest node is ready while it can reach the log: one bad partition never takes ingest
///   out of the load balancer;
/// - a worker node (without ingest) is ready once every partition it supervises has recovered;
/// - any node is unready while starting and stopping.
///
/// The body names what is wrong: the partitions not recovered, with their last error.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return unready("starting or stopping".to_string());
    }
    let not_recovered = state
        .supervision
        .as_ref()
        .map(|supervision| not_recovered_lines(supervision))
        .unwrap_or_default();
    if state.ingest.is_some() {
        let probe = tokio::time::timeout(
            std::time::Duration::from_millis(READYZ_LOG_TIMEOUT_MS),
            state.log.end_offset(adclick_core::ids::PartitionId(0)),
        )
        .await;
        return match probe {
            Ok(Ok(_)) if not_recovered.is_empty() => (StatusCode::OK, "ready\n").into_response(),
            Ok(Ok(_)) => (
                StatusCode::OK,
                format!("ready for ingest; workers not recovered:\n{not_recovered}"),
            )
                .into_response(),
            Ok(Err(error)) => unready(format!("ingest cannot reach the log: {error}")),
            Err(_) => unready(format!(
                "ingest cannot reach the log: no answer in {READYZ_LOG_TIMEOUT_MS} ms"
            )),
        };
    }
    if !not_recovered.is_empty() {
        return unready(format!("workers not recovered:\n{not_recovered}"));
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// This node's supervisors only: a partition is reported by the node that runs it, so a sum over
/// instances counts each restart once.
fn supervision_metrics(supervision: &adclick_engine::supervisor::Supervision) {
    metrics::describe_counter!(
        "adclick_worker_restarts_total",
        "Failed worker attempts (recoveries or runs) of the partition on this node; each is followed by a back-off"
    );
    metrics::describe_gauge!(
        "adclick_worker_recovered",
        "1 while the partition's worker on this node has recovered and runs, 0 while it recovers or backs off"
    );
    for (partition, state) in supervision.snapshot() {
        let label = [("partition", partition.to_string())];
        counter!("adclick_worker_restarts_total", &label).absolute(state.restarts);
        gauge!("adclick_worker_recovered", &label).set(if state.recovered { 1.0 } else { 0.0 });
    }
}

fn unready(reason: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {reason}\n"),
    )
        .into_response()
}

/// One line per partition whose worker has not recovered, with its last error.
fn not_recovered_lines(supervision: &adclick_engine::supervisor::Supervision) -> String {
    let snapshot = supervision.snapshot();
    let mut lines = String::new();
    for partition in supervision.not_recovered() {
        let state = &snapshot[&partition];
        let error = state.last_error.as_deref().unwrap_or("recovering");
        lines.push_str(&format!(
            "  partition {partition}: {} restarts; {error}\n",
            state.restarts
        ));
    }
    lines
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let freshness = freshness_of(&state).await.ok();
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let http = &state.counters;
        counter!("adclick_http_ingest_requests_total")
            .absolute(http.ingest_requests.load(Ordering::Relaxed));
        counter!("adclick_http_ingest_bad_requests_total")
            .absolute(http.ingest_bad_requests.load(Ordering::Relaxed));
        counter!("adclick_http_ingest_busy_total")
            .absolute(http.ingest_busy.load(Ordering::Relaxed));
        counter!("adclick_http_ingest_too_large_total")
            .absolute(http.ingest_too_large.load(Ordering::Relaxed));
        counter!("adclick_http_ingest_signature_rejections_total")
            .absolute(http.ingest_signature_rejections.load(Ordering::Relaxed));
        counter!("adclick_http_query_requests_total")
            .absolute(http.query_requests.load(Ordering::Relaxed));
        if let Some(ingest) = &state.ingest {
            let stats = ingest.stats();
            counter!("adclick_ingest_accepted_total").absolute(stats.accepted);
            counter!("adclick_ingest_rejected_total").absolute(stats.rejected);
            counter!("adclick_ingest_appended_total").absolute(stats.appended);
            counter!("adclick_ingest_append_retries_total").absolute(stats.append_retries);
            gauge!("adclick_ingest_buffer_events").set(ingest.buffered() as f64);
            gauge!("adclick_ingest_buffer_events_max").set(ingest.buffer_limit() as f64);
        }
        for partition in freshness.iter().flat_map(|f| &f.partitions) {
            let label = [("partition", partition.partition.to_string())];
            if let Some(lag) = partition.lag_records {
                gauge!("adclick_consumer_lag_records", &label).set(lag as f64);
            }
            if let Some(delay) = partition.watermark_delay_ms {
                gauge!("adclick_watermark_delay_ms", &label).set(delay as f64);
            }
            let Some(status) = &partition.status else {
                continue;
            };
            let stats = &status.stats;
            gauge!("adclick_checkpoint_epoch", &label).set(status.epoch.0 as f64);
            gauge!("adclick_checkpoint_duration_ms", &label)
                .set(status.health.last_barrier_ms as f64);
            counter!("adclick_worker_records_total", &label).absolute(stats.records);
            counter!("adclick_worker_duplicates_total", &label).absolute(stats.duplicates);
            counter!("adclick_worker_late_clicks_total", &label).absolute(stats.late);
            counter!("adclick_worker_expired_clicks_total", &label).absolute(stats.expired);
            counter!("adclick_worker_unverified_clicks_total", &label).absolute(stats.unverified);
            counter!("adclick_worker_quarantined_records_total", &label)
                .absolute(stats.quarantined);
            counter!("adclick_worker_undecodable_records_total", &label)
                .absolute(stats.undecodable);
            for (rule, count) in [
                ("known_ip", stats.fraud_known_ip),
                ("known_user_agent", stats.fraud_known_user_agent),
                ("rate", stats.fraud_rate),
            ] {
                let labels = [
                    ("partition", partition.partition.to_string()),
                    ("rule", rule.to_owned()),
                ];
                counter!("adclick_worker_fraud_clicks_total", &labels).absolute(count);
            }
            gauge!("adclick_dedup_ids", &label).set(status.health.dedup_ids as f64);
            gauge!("adclick_dedup_bytes", &label).set(status.health.dedup_bytes as f64);
        }
        if let Some(supervision) = &state.supervision {
            supervision_metrics(supervision);
        }
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
