//! `POST /v1/clicks[?ack=durable]`.
//!
//! - 202: at least one record was accepted (or the body held none); the answer counts accepted
//!   and rejected records and gives each rejected record's index and reasons.
//! - 400: nothing was accepted: the body is not JSON, not clicks, or every record is invalid.
//! - 401: nothing was accepted, and signatures were why (unsigned, unknown key id, forged).
//! - 408: the body did not arrive within `http.request_timeout_ms`.
//! - 413: the body is over `http.body_bytes_max`, or holds more than
//!   `http.records_per_request_max` records.
//! - 415: the content type is not JSON or NDJSON.
//! - 503 with `Retry-After`: the producer buffer is full (nothing of the request was taken), the
//!   log failed a durable append or did not confirm it within `http.durable_ack_timeout_ms`
//!   (resend the same click ids), or the server is shutting down.

use std::sync::atomic::Ordering;

use adclick_core::event::TimeBound;
use adclick_engine::ingest::{Ack, IngestError};
use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{AppState, error_response};
use crate::body::{ACCEPTED_CONTENT_TYPES, BodyError, BodyFormat, RecordError, parse_body};

#[derive(Deserialize)]
pub struct IngestParams {
    ack: Option<String>,
}

#[derive(Serialize)]
pub struct IngestAnswer {
    pub accepted: usize,
    pub rejected: usize,
    pub errors: Vec<RecordError>,
}

pub async fn post_clicks(
    State(state): State<AppState>,
    Query(params): Query<IngestParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    state
        .counters
        .ingest_requests
        .fetch_add(1, Ordering::Relaxed);
    let Some(ingest) = state.ingest.clone() else {
        return error_response(
            StatusCode::NOT_FOUND,
            "this node runs no ingest role".into(),
            None,
        );
    };
    let ack = match params.ack.as_deref() {
        None | Some("buffered") => Ack::Buffered,
        Some("durable") => Ack::Durable,
        Some(other) => {
            return bad_request(
                &state,
                format!("ack={other:?} is not one of \"buffered\", \"durable\""),
            );
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let Some(format) = BodyFormat::from_content_type(content_type) else {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type {content_type:?} is not accepted; send {ACCEPTED_CONTENT_TYPES}"),
            None,
        );
    };
    let limit = state.http.body_bytes_max;
    let read = tokio::time::timeout(
        std::time::Duration::from_millis(state.http.request_timeout_ms),
        axum::body::to_bytes(body, limit),
    )
    .await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Err(_) => {
            return error_response(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} ms",
                    state.http.request_timeout_ms
                ),
                Some("http.request_timeout_ms"),
            );
        }
        Ok(Err(_)) => {
            state
                .counters
                .ingest_too_large
                .fetch_add(1, Ordering::Relaxed);
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is over the limit of {limit} bytes"),
                Some("http.body_bytes_max"),
            );
        }
    };
    let bound = TimeBound::live(state.clock.now_ms());
    let keys = state.signing_keys.as_deref();
    let parsed = match parse_body(
        &bytes,
        format,
        bound,
        state.http.records_per_request_max,
        keys,
    ) {
        Ok(parsed) => parsed,
        Err(error @ BodyError::TooManyRecords { .. }) => {
            state
                .counters
                .ingest_too_large
                .fetch_add(1, Ordering::Relaxed);
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                error.to_string(),
                Some("http.records_per_request_max"),
            );
        }
        Err(error) => return bad_request(&state, error.to_string()),
    };
    let forged = parsed
        .rejected
        .iter()
        .filter(|error| error.reasons.iter().any(|reason| reason.is_signature()))
        .count();
    state
        .counters
        .ingest_signature_rejections
        .fetch_add(forged as u64, Ordering::Relaxed);
    let mut errors = parsed.rejected;
    let submitted = match ack {
        Ack::Buffered => Ok(ingest.submit(&parsed.clicks, ack).await),
        Ack::Durable => tokio::time::timeout(
            std::time::Duration::from_millis(state.http.durable_ack_timeout_ms),
            ingest.submit(&parsed.clicks, ack),
        )
        .await
        .map_err(|_| ()),
    };
    let outcome = match submitted {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => return ingest_error(&state, error),
        Err(()) => return durable_ack_timed_out(&state),
    };
    // The core validates again (limits it owns); map its indexes back to the request's.
    for (index, rejection) in outcome.rejected {
        errors.push(RecordError {
            index: parsed.indexes[index],
            reasons: rejection.reasons,
        });
    }
    errors.sort_by_key(|error| error.index);
    let answer = IngestAnswer {
        accepted: outcome.accepted,
        rejected: errors.len(),
        errors,
    };
    let status = if answer.accepted == 0 && answer.rejected > 0 {
        state
            .counters
            .ingest_bad_requests
            .fetch_add(1, Ordering::Relaxed);
        if forged > 0 {
            // Nothing taken, and signatures were the problem: not authenticated.
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        }
    } else {
        StatusCode::ACCEPTED
    };
    (status, Json(answer)).into_response()
}

fn bad_request(state: &AppState, error: String) -> Response {
    state
        .counters
        .ingest_bad_requests
        .fetch_add(1, Ordering::Relaxed);
    error_response(StatusCode::BAD_REQUEST, error, None)
}

/// The log did not confirm a durable append in time (a full disk, a broker down). The clicks
/// were taken into the buffer and ingest keeps retrying them, so they may still land: the
/// client resends the same click ids, and dedup counts each once.
fn durable_ack_timed_out(state: &AppState) -> Response {
    state.counters.ingest_busy.fetch_add(1, Ordering::Relaxed);
    let mut response = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the log did not confirm the durable append within {} ms; the clicks may still be \
             appended: resend them with the same click ids (a resend is counted once)",
            state.http.durable_ack_timeout_ms
        ),
        Some("http.durable_ack_timeout_ms"),
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(state.http.busy_retry_after_s),
    );
    response
}

fn ingest_error(state: &AppState, error: IngestError) -> Response {
    let retry_after_s = state.http.busy_retry_after_s;
    let (status, limit) = match &error {
        IngestError::Busy { .. } => {
            state.counters.ingest_busy.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("engine.producer_buffer_events_max"),
            )
        }
        IngestError::SaltPlanPending { .. } | IngestError::SaltPlansUnread { .. } => {
            state.counters.ingest_busy.fetch_add(1, Ordering::Relaxed);
            (StatusCode::SERVICE_UNAVAILABLE, None)
        }
        IngestError::TooManyRecords { .. } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("http.records_per_request_max"),
        ),
        IngestError::Log(_) | IngestError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, None),
    };
    let mut response = error_response(status, error.to_string(), limit);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
    }
    response
}
