//! The HTTP API: ingest (`POST /v1/clicks`), queries (`/v1/campaigns/{id}/clicks`, `/v1/top`,
//! `/v1/freshness`), the live dashboard page that reads those queries (`/`), and operations
//! (`/metrics`, `/healthz`, `/readyz`). A role that is not running here answers 404 on its
//! routes.

mod dashboard;
mod ingest;
mod ops;
mod query;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use adclick_engine::ingest::IngestCore;
use adclick_engine::seams::{Clock, Log, RealtimeStore};
use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use crate::config::{HttpConfig, Role, ServeConfig};

pub use query::{CampaignClicks, Freshness, TopAds, WindowCounts};

/// Everything a handler needs. Cloned per request (all shared parts are behind `Arc`s).
#[derive(Clone)]
pub struct AppState {
    pub http: HttpConfig,
    pub window_ms: u64,
    pub ingest: Option<IngestCore>,
    pub store: Arc<dyn RealtimeStore>,
    pub log: Arc<dyn Log>,
    pub clock: Arc<dyn Clock>,
    /// False until the workers have recovered their partitions, and again while shutting down.
    pub ready: Arc<AtomicBool>,
    pub counters: Arc<HttpCounters>,
    /// The active signing keys; `None` takes unsigned clicks (the demo mode).
    pub signing_keys: Option<Arc<adclick_core::signing::SigningKeys>>,
    /// Bearer tokens of the query API; `None` leaves it open.
    pub tokens: Option<Arc<crate::security::Tokens>>,
    pub client_rate: Option<crate::security::ClientRateLimit>,
    /// The worker supervisors of this node, when it runs the worker role.
    pub supervision: Option<Arc<adclick_engine::supervisor::Supervision>>,
}

/// Request outcomes the metrics endpoint reports.
#[derive(Default)]
pub struct HttpCounters {
    pub ingest_requests: AtomicU64,
    pub ingest_bad_requests: AtomicU64,
    pub ingest_busy: AtomicU64,
    pub ingest_too_large: AtomicU64,
    /// Clicks refused for a missing, unknown-key or wrong signature.
    pub ingest_signature_rejections: AtomicU64,
    pub query_requests: AtomicU64,
}

pub fn router(state: AppState, config: &ServeConfig) -> Router {
    let mut api = Router::new();
    if config.runs(Role::Ingest) {
        api = api.route("/v1/clicks", post(ingest::post_clicks));
    }
    if config.runs(Role::Query) {
        let queries = Router::new()
            .route(
                "/v1/campaigns/{campaign_id}/clicks",
                get(query::campaign_clicks),
            )
            .route("/v1/top", get(query::top))
            .route("/v1/freshness", get(query::freshness))
            .layer(axum::middleware::from_fn_with_state(
                state.tokens.clone(),
                crate::security::require_token,
            ));
        api = api.merge(queries);
    }
    let api = api.layer(axum::middleware::from_fn_with_state(
        state.client_rate.clone(),
        crate::security::limit_client_rate,
    ));
    let mut router = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(api);
    if config.runs(Role::Query) {
        router = router
            .route(dashboard::INDEX_PATH, get(dashboard::index))
            .route(dashboard::SCRIPT_PATH, get(dashboard::script))
            .route(dashboard::STYLE_PATH, get(dashboard::style));
    }
    router
        // Bodies are read whole and checked against http.body_bytes_max by the handler, so the
        // 413 can name the limit; axum's own limit is lifted to let it.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// The JSON error body every non-2xx answer carries.
#[derive(Serialize)]
pub struct ErrorBody {
    pub error: String,
    /// The config key of the limit that was broken, when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<&'static str>,
}

pub fn error_response(status: StatusCode, error: String, limit: Option<&'static str>) -> Response {
    (status, Json(ErrorBody { error, limit })).into_response()
}
