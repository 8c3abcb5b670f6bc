//! The query API. It reads only the real-time store and the log's end offsets, and sums a
//! campaign's salted sub-keys, so a hot campaign reads as one.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use adclick_core::ids::{CampaignId, PartitionId, Salt};
use adclick_core::limits::SALTS_MAX;
use adclick_core::operator::Series;
use adclick_core::partition::partition_for_campaign;
use adclick_core::window::{Counts, Lane};
use adclick_engine::seams::{Granularity, PartitionStatus, StoreError, StoredCounts};
use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{AppState, error_response};
use crate::security::Principal;

const HOUR_MS: u64 = 3_600_000;

#[derive(Deserialize)]
pub struct RangeParams {
    from: Option<u64>,
    to: Option<u64>,
    granularity: Option<String>,
}

/// One window (or hour) of one campaign, summed over ads and salts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCounts {
    pub start_ms: u64,
    pub end_ms: u64,
    /// Every valid click, duplicates and fraud included.
    pub clicks: u64,
    /// Unique non-fraud clicks: the billable count.
    pub unique: u64,
    pub fraud: u64,
    /// Unique non-fraud clicks that arrived after the window closed (the late side output).
    pub late_unique: u64,
    pub late_clicks: u64,
    /// Clicks the fast path could not deduplicate or rate-check (older than the dedup
    /// horizon when they arrived): `unverified_clicks` of them, `unverified_unique` not on the
    /// fraud list. Not billable as they stand: billing, over the whole period, decides them.
    pub unverified_unique: u64,
    pub unverified_clicks: u64,
    /// The window closed: its on-time counts will not change.
    #[serde(rename = "final")]
    pub is_final: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignClicks {
    pub campaign_id: u64,
    pub granularity: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub windows: Vec<WindowCounts>,
    pub total: WindowCounts,
    /// A partition holding this campaign's series (any salt) is being rebuilt: the counts may
    /// be partial until it is done (README.md, "Rebuilding the store").
    #[serde(default)]
    pub rebuilding: bool,
}

pub async fn campaign_clicks(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(campaign_id): Path<u64>,
    Query(params): Query<RangeParams>,
) -> Response {
    state
        .counters
        .query_requests
        .fetch_add(1, Ordering::Relaxed);
    if !principal.may_see(campaign_id) {
        // 404, not 403: another advertiser's campaign ids must not leak.
        return error_response(
            StatusCode::NOT_FOUND,
            format!("no campaign {campaign_id}"),
            None,
        );
    }
    let (granularity, step_ms, from_ms, to_ms) = match asked_range(&state, &params) {
        Ok(range) => range,
        Err(response) => return *response,
    };
    let series = match state
        .store
        .campaign_series(CampaignId(campaign_id), granularity, from_ms, to_ms)
        .await
    {
        Ok(series) => series,
        Err(error) => return unavailable(error.to_string()),
    };
    let rebuilding = match campaign_rebuilding(&state, CampaignId(campaign_id)).await {
        Ok(rebuilding) => rebuilding,
        Err(error) => return unavailable(error.to_string()),
    };
    let windows = merge_windows(&series, step_ms);
    let total = total_of(&windows, from_ms, to_ms);
    Json(CampaignClicks {
        campaign_id,
        granularity: match granularity {
            Granularity::Window => "minute".into(),
            Granularity::Hour => "hour".into(),
        },
        from_ms,
        to_ms,
        windows,
        total,
        rebuilding,
    })
    .into_response()
}

/// The granularity, its step, and the range `[from, to)` asked for (the last hour by default),
/// within `http.query_span_ms_max`.
fn asked_range(
    state: &AppState,
    params: &RangeParams,
) -> Result<(Granularity, u64, u64, u64), Box<Response>> {
    let (granularity, step_ms) = match params.granularity.as_deref() {
        None | Some("minute") | Some("window") => (Granularity::Window, state.window_ms),
        Some("hour") => (Granularity::Hour, HOUR_MS),
        Some(other) => {
            return Err(Box::new(bad_request(format!(
                "granularity={other:?} is not one of \"minute\", \"hour\""
            ))));
        }
    };
    let now_ms = state.clock.now_ms();
    let to_ms = params.to.unwrap_or(now_ms + step_ms);
    let from_ms = params.from.unwrap_or(to_ms.saturating_sub(HOUR_MS));
    if from_ms >= to_ms {
        let message = format!("from={from_ms} must be before to={to_ms}");
        return Err(Box::new(bad_request(message)));
    }
    let span_max = state.http.query_span_ms_max;
    if to_ms - from_ms > span_max {
        return Err(Box::new(error_response(
            StatusCode::BAD_REQUEST,
            format!(
                "the range spans {} ms, over the limit of {span_max} ms",
                to_ms - from_ms
            ),
            Some("http.query_span_ms_max"),
        )));
    }
    Ok((granularity, step_ms, from_ms, to_ms))
}

/// The windows summed over `[from, to)`; final only if every window is.
fn total_of(windows: &[WindowCounts], from_ms: u64, to_ms: u64) -> WindowCounts {
    let mut total = WindowCounts {
        start_ms: from_ms,
        end_ms: to_ms,
        is_final: windows.iter().all(|window| window.is_final),
        ..WindowCounts::default()
    };
    for window in windows {
        total.clicks += window.clicks;
        total.unique += window.unique;
        total.fraud += window.fraud;
        total.late_clicks += window.late_clicks;
        total.late_unique += window.late_unique;
        total.unverified_clicks += window.unverified_clicks;
        total.unverified_unique += window.unverified_unique;
    }
    total
}

/// Whether a partition that holds some salt of the campaign carries a rebuilding mark. Read
/// after the series, so a rebuild that ends in between still reads as rebuilding.
async fn campaign_rebuilding(state: &AppState, campaign: CampaignId) -> Result<bool, StoreError> {
    let rebuilding = state.store.rebuilding_partitions().await?;
    let partitions = state.log.partitions();
    Ok((0..SALTS_MAX)
        .any(|salt| rebuilding.contains(&partition_for_campaign(campaign, Salt(salt), partitions))))
}

fn start_of(series: &Series) -> u64 {
    match series {
        Series::Window(key) => key.window_start_ms,
        Series::Hour(key) => key.hour_start_ms,
    }
}

/// Sums ads and salts per window start. A window is final when every on-time series in it is.
fn merge_windows(series: &[(Series, Lane, StoredCounts)], step_ms: u64) -> Vec<WindowCounts> {
    let mut windows: BTreeMap<u64, WindowCounts> = BTreeMap::new();
    for (series, lane, stored) in series {
        let start_ms = start_of(series);
        let window = windows.entry(start_ms).or_insert_with(|| WindowCounts {
            start_ms,
            end_ms: start_ms + step_ms,
            is_final: true,
            ..WindowCounts::default()
        });
        match lane {
            Lane::OnTime => {
                window.clicks += stored.counts.clicks;
                window.unique += stored.counts.unique;
                window.fraud += stored.counts.fraud;
                window.is_final &= stored.is_final;
            }
            Lane::Late => {
                window.late_clicks += stored.counts.clicks;
                window.late_unique += stored.counts.unique;
            }
            Lane::Unverified => {
                window.unverified_clicks += stored.counts.clicks;
                window.unverified_unique += stored.counts.unique;
            }
        }
    }
    windows.into_values().collect()
}

#[derive(Deserialize)]
pub struct TopParams {
    window: Option<String>,
    n: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopAd {
    pub campaign_id: u64,
    pub ad_id: u64,
    pub clicks: u64,
    pub unique: u64,
    pub fraud: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopAds {
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    pub ads: Vec<TopAd>,
    /// Some partition is being rebuilt: the ranking may rest on partial counts.
    #[serde(default)]
    pub rebuilding: bool,
}

/// `GET /v1/top?window=last|current|START_MS&n=10`: the ads with the most unique clicks in a
/// window (on-time and late lanes, all salts). `last` is the newest window every partition's watermark has
/// passed; `current` the window holding the newest watermark.
pub async fn top(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(params): Query<TopParams>,
) -> Response {
    state
        .counters
        .query_requests
        .fetch_add(1, Ordering::Relaxed);
    let n = params.n.unwrap_or(10);
    if n == 0 || n > state.http.top_n_max {
        return error_response(
            StatusCode::BAD_REQUEST,
            format!("n={n} must be between 1 and {}", state.http.top_n_max),
            Some("http.top_n_max"),
        );
    }
    let window_ms = state.window_ms;
    let window_start_ms = match top_window(&state, params.window.as_deref()).await {
        Ok(start_ms) => start_ms,
        Err(response) => return *response,
    };
    let series = match state.store.window_series(window_start_ms).await {
        Ok(series) => series,
        Err(error) => return unavailable(error.to_string()),
    };
    let rebuilding = match state.store.rebuilding_partitions().await {
        Ok(partitions) => !partitions.is_empty(),
        Err(error) => return unavailable(error.to_string()),
    };
    let mut ads = ranked_ads(&series, &principal);
    ads.truncate(n);
    Json(TopAds {
        window_start_ms,
        window_end_ms: window_start_ms + window_ms,
        ads,
        rebuilding,
    })
    .into_response()
}

/// The window `window=` names: "last" (the newest every partition has closed), "current" (the
/// newest any partition is in), or a window start in ms.
async fn top_window(state: &AppState, window: Option<&str>) -> Result<u64, Box<Response>> {
    let window_ms = state.window_ms;
    match window {
        None | Some("last") | Some("current") => {
            let statuses = match state.store.partition_status().await {
                Ok(statuses) => statuses,
                Err(error) => return Err(Box::new(unavailable(error.to_string()))),
            };
            let watermarks = statuses.iter().map(|status| status.watermark.watermark_ms);
            Ok(if window == Some("current") {
                watermarks.max().unwrap_or(0) / window_ms * window_ms
            } else {
                (watermarks.min().unwrap_or(0) / window_ms * window_ms).saturating_sub(window_ms)
            })
        }
        Some(text) => match text.parse::<u64>() {
            Ok(start_ms) if start_ms % window_ms == 0 => Ok(start_ms),
            _ => Err(Box::new(bad_request(format!(
                "window={text:?} is not \"last\", \"current\" or a window start in ms \
                 (a multiple of {window_ms})"
            )))),
        },
    }
}

/// The caller's ads of the window by unique clicks, ties broken by id (the same answer on every
/// call). Unverified clicks are not known unique: billing decides them, the ranking does not.
fn ranked_ads(series: &[(Series, Lane, StoredCounts)], principal: &Principal) -> Vec<TopAd> {
    let mut ads: BTreeMap<(u64, u64), Counts> = BTreeMap::new();
    for (series, lane, stored) in series {
        if let Series::Window(key) = series
            && lane.is_verified()
            && principal.may_see(key.campaign_id.0)
        {
            ads.entry((key.campaign_id.0, key.ad_id.0))
                .or_default()
                .add(stored.counts);
        }
    }
    let mut ads: Vec<TopAd> = ads
        .into_iter()
        .map(|((campaign_id, ad_id), counts)| TopAd {
            campaign_id,
            ad_id,
            clicks: counts.clicks,
            unique: counts.unique,
            fraud: counts.fraud,
        })
        .collect();
    ads.sort_by(|a, b| {
        b.unique
            .cmp(&a.unique)
            .then(a.campaign_id.cmp(&b.campaign_id))
            .then(a.ad_id.cmp(&b.ad_id))
    });
    ads
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartitionFreshness {
    pub partition: u32,
    /// Absent until a worker committed the partition's first epoch.
    pub status: Option<PartitionStatus>,
    pub end_offset: Option<u64>,
    /// Records in the log the worker has not committed yet.
    pub lag_records: Option<u64>,
    /// How far the partition's watermark trails this node's clock.
    pub watermark_delay_ms: Option<u64>,
    /// How this node's supervisor of the partition's worker is doing (recovered, restarts, the
    /// last error); absent where no worker of this node runs the partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervision: Option<adclick_engine::supervisor::PartitionSupervision>,
    /// A rebuild (or a worker writing back what the store forgot) is rewriting the partition's
    /// values: they may be partial until it is done.
    #[serde(default)]
    pub rebuilding: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Freshness {
    pub now_ms: u64,
    pub partitions: Vec<PartitionFreshness>,
    /// Some partition is being rebuilt.
    #[serde(default)]
    pub rebuilding: bool,
}

pub async fn freshness(State(state): State<AppState>) -> Response {
    state
        .counters
        .query_requests
        .fetch_add(1, Ordering::Relaxed);
    match freshness_of(&state).await {
        Ok(freshness) => Json(freshness).into_response(),
        Err(error) => unavailable(error),
    }
}

pub(crate) async fn freshness_of(state: &AppState) -> Result<Freshness, String> {
    let statuses = state
        .store
        .partition_status()
        .await
        .map_err(|error| error.to_string())?;
    let by_partition: BTreeMap<u32, PartitionStatus> = statuses
        .into_iter()
        .map(|status| (status.partition.0, status))
        .collect();
    let rebuilding = state
        .store
        .rebuilding_partitions()
        .await
        .map_err(|error| error.to_string())?;
    let now_ms = state.clock.now_ms();
    let mut partitions = Vec::new();
    for partition in 0..state.log.partitions() {
        let end_offset = state.log.end_offset(PartitionId(partition)).await.ok();
        let status = by_partition.get(&partition).copied();
        let lag_records = match (end_offset, status) {
            (Some(end), Some(status)) => Some(end.0.saturating_sub(status.next_offset.0)),
            (Some(end), None) => Some(end.0),
            _ => None,
        };
        partitions.push(PartitionFreshness {
            partition,
            status,
            end_offset: end_offset.map(|offset| offset.0),
            lag_records,
            watermark_delay_ms: status
                .filter(|status| status.watermark.watermark_ms > 0)
                .map(|status| now_ms.saturating_sub(status.watermark.watermark_ms)),
            supervision: state
                .supervision
                .as_ref()
                .and_then(|supervision| supervision.get(PartitionId(partition))),
            rebuilding: rebuilding.contains(&PartitionId(partition)),
        });
    }
    Ok(Freshness {
        now_ms,
        rebuilding: !rebuilding.is_empty(),
        partitions,
    })
}

fn bad_request(error: String) -> Response {
    error_response(StatusCode::BAD_REQUEST, error, None)
}

fn unavailable(error: String) -> Response {
    error_response(StatusCode::SERVICE_UNAVAILABLE, error, None)
}
