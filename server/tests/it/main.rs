//! `adclick serve` over real HTTP (reqwest): every status of the ingest API, the query API's
//! counts against what was sent, and the same flow on a real Redis; the dashboard page in
//! headless Chromium against the same API.

mod dashboard;
mod envelope;
mod http_api;
mod operations;
mod rebuild;
mod restart;
mod security;
