//! `adclick serve` over real HTTP (reqwest): every status of the ingest API, the query API's
//! counts against what was sent, and the same flow on a real Redis.

mod http_api;
