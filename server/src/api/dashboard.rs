//! The live dashboard: one HTML page and its script and stylesheet, embedded in the binary and
//! served by the query role at `/` and `/assets/...`.
//!
//! **Invariant:** this module serves static files only. The page reads nothing but the query
//! API (`/v1/top`, `/v1/campaigns/{id}/clicks`, `/v1/freshness`) from the browser, and shows
//! the numbers it answers as they are, so the page can never disagree with the API.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../dashboard/dashboard.css");

pub const INDEX_PATH: &str = "/";
pub const SCRIPT_PATH: &str = "/assets/dashboard.js";
pub const STYLE_PATH: &str = "/assets/dashboard.css";

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}

/// The files are small and change with the binary; `no-cache` makes a browser revalidate them
/// after an upgrade instead of running an old script against a new API.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
