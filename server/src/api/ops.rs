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

pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: workers are recovering or stopping\n",
        )
            .into_response()
    }
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
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
