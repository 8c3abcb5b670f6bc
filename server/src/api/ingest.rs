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

/// A refusal: the response to send instead (boxed: a response is large).
type Refused = Box<Response>;

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
    match take_clicks(&state, params, &headers, body).await {
        Ok(response) => response,
        Err(refused) => *refused,
    }
}

/// The request's way through: its form, its body, its records, the ingest core, the answer. Each
/// step's refusal is the response.
async fn take_clicks(
    state: &AppState,
    params: IngestParams,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refused> {
    let Some(ingest) = state.ingest.clone() else {
        let message = "this node runs no ingest role".into();
        return Err(Box::new(error_response(
            StatusCode::NOT_FOUND,
            message,
            None,
        )));
    };
    let ack = ack_of(state, &params)?;
    let format = format_of(headers)?;
    let bytes = read_body(state, body).await?;
    let parsed = parse(state, &bytes, format)?;
    let forged = parsed
        .rejected
        .iter()
        .filter(|error| error.reasons.iter().any(|reason| reason.is_signature()))
        .count();
    state
        .counters
        .ingest_signature_rejections
        .fetch_add(forged as u64, Ordering::Relaxed);
    let outcome = submit(state, &ingest, &parsed.clicks, ack).await?;
    Ok(answer(state, parsed, outcome, forged))
}

fn ack_of(state: &AppState, params: &IngestParams) -> Result<Ack, Refused> {
    match params.ack.as_deref() {
        None | Some("buffered") => Ok(Ack::Buffered),
        Some("durable") => Ok(Ack::Durable),
        Some(other) => Err(Box::new(bad_request(
            state,
            format!("ack={other:?} is not one of \"buffered\", \"durable\""),
        ))),
    }
}

fn format_of(headers: &HeaderMap) -> Result<BodyFormat, Refused> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    BodyFormat::from_content_type(content_type).ok_or_else(|| {
        Box::new(error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type {content_type:?} is not accepted; send {ACCEPTED_CONTENT_TYPES}"),
            None,
        ))
    })
}

/// The body, within `http.request_timeout_ms` and `http.body_bytes_max`.
async fn read_body(state: &AppState, body: Body) -> Result<axum::body::Bytes, Refused> {
    let limit = state.http.body_bytes_max;
    let timeout_ms = state.http.request_timeout_ms;
    let read = tokio::time::timeout(
        std::time::Duration::from_millis(timeout_ms),
        axum::body::to_bytes(body, limit),
    )
    .await;
    match read {
        Ok(Ok(bytes)) => Ok(bytes),
        Err(_) => Err(Box::new(error_response(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {timeout_ms} ms"),
            Some("http.request_timeout_ms"),
        ))),
        Ok(Err(_)) => {
            state
                .counters
                .ingest_too_large
                .fetch_add(1, Ordering::Relaxed);
            Err(Box::new(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is over the limit of {limit} bytes"),
                Some("http.body_bytes_max"),
            )))
        }
    }
}

/// The records, their signatures checked and each validated against the live time bound.
fn parse(
    state: &AppState,
    bytes: &[u8],
    format: BodyFormat,
) -> Result<crate::body::ParsedBody, Refused> {
    let bound = TimeBound::live(state.clock.now_ms());
    let keys = state.signing_keys.as_deref();
    let records_max = state.http.records_per_request_max;
    match parse_body(bytes, format, bound, records_max, keys) {
        Ok(parsed) => Ok(parsed),
        Err(error @ BodyError::TooManyRecords { .. }) => {
            state
                .counters
                .ingest_too_large
                .fetch_add(1, Ordering::Relaxed);
            Err(Box::new(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                error.to_string(),
                Some("http.records_per_request_max"),
            )))
        }
        Err(error) => Err(Box::new(bad_request(state, error.to_string()))),
    }
}

/// Into the ingest core; a durable ack waits at most `http.durable_ack_timeout_ms`.
async fn submit(
    state: &AppState,
    ingest: &adclick_engine::ingest::IngestCore,
    clicks: &[adclick_core::event::ClickEvent],
    ack: Ack,
) -> Result<adclick_engine::ingest::SubmitOutcome, Refused> {
    let submitted = match ack {
        Ack::Buffered => Ok(ingest.submit(clicks, ack).await),
        Ack::Durable => tokio::time::timeout(
            std::time::Duration::from_millis(state.http.durable_ack_timeout_ms),
            ingest.submit(clicks, ack),
        )
        .await
        .map_err(|_| ()),
    };
    match submitted {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(error)) => Err(Box::new(ingest_error(state, error))),
        Err(()) => Err(Box::new(durable_ack_timed_out(state))),
    }
}

/// 202 with what was taken and each rejected record's reasons; 400 (or 401, when signatures
/// were the problem) when nothing was.
fn answer(
    state: &AppState,
    parsed: crate::body::ParsedBody,
    outcome: adclick_engine::ingest::SubmitOutcome,
    forged: usize,
) -> Response {
    let mut errors = parsed.rejected;
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
