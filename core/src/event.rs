//! The click event: its JSON wire form, validation with a typed reason per broken rule, and the
//! borrowed view the hot path works on.
//!
//! **Invariant:** validation never reads a clock. Live ingest passes `now`; batch mode over
//! historical files passes no time bound at all.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::ids::*;
use crate::limits;

/// One click, as the ad server reports it and as it is archived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickEvent {
    pub click_id: ClickId,
    pub campaign_id: CampaignId,
    pub ad_id: AdId,
    pub user_id: UserId,
    pub ip: IpAddr,
    pub user_agent: String,
    pub country: Country,
    pub event_time_ms: EventTimeMs,
    pub publisher_id: Option<PublisherId>,
}

/// A click borrowed from a log record: what the aggregator reads, with no allocation.
/// `salt` is routing metadata added by ingest, not part of the client's click.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClickView<'a> {
    pub click_id: ClickId,
    pub campaign_id: CampaignId,
    pub ad_id: AdId,
    pub user_id: UserId,
    pub ip: IpAddr,
    pub user_agent: &'a str,
    pub country: Country,
    pub event_time_ms: EventTimeMs,
    pub publisher_id: Option<PublisherId>,
    pub salt: Salt,
}

impl ClickEvent {
    /// A valid click of `campaign` from `ip` at `event_time_ms`, every other field fixed (ad 1,
    /// user 1, country DE): the one click builder tests share.
    pub fn example(
        click_id: u128,
        campaign: CampaignId,
        ip: IpAddr,
        event_time_ms: u64,
    ) -> ClickEvent {
        ClickEvent {
            click_id: ClickId(click_id),
            campaign_id: campaign,
            ad_id: AdId(1),
            user_id: UserId(1),
            ip,
            user_agent: "example-agent".into(),
            country: Country::parse("DE").expect("a valid country code"),
            event_time_ms: EventTimeMs(event_time_ms),
            publisher_id: None,
        }
    }

    pub fn view(&self, salt: Salt) -> ClickView<'_> {
        ClickView {
            click_id: self.click_id,
            campaign_id: self.campaign_id,
            ad_id: self.ad_id,
            user_id: self.user_id,
            ip: self.ip,
            user_agent: &self.user_agent,
            country: self.country,
            event_time_ms: self.event_time_ms,
            publisher_id: self.publisher_id,
            salt,
        }
    }

    /// The JSON wire form: ids as numbers, the click id as a UUID string.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&WireClick::from(self)).expect("a click always serializes")
    }
}

impl ClickView<'_> {
    pub fn to_owned_event(&self) -> ClickEvent {
        ClickEvent {
            click_id: self.click_id,
            campaign_id: self.campaign_id,
            ad_id: self.ad_id,
            user_id: self.user_id,
            ip: self.ip,
            user_agent: self.user_agent.to_owned(),
            country: self.country,
            event_time_ms: self.event_time_ms,
            publisher_id: self.publisher_id,
        }
    }
}

/// The JSON shape on the wire. Every field is optional here so that a missing field becomes a
/// typed reason instead of an opaque parse error.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WireClick {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub click_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ad_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_time_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher_id: Option<u64>,
    /// The id of the ad server's key that signed the click (see `signing`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// HMAC-SHA256 over (click_id, campaign_id, ad_id, event_time_ms), lowercase hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl From<&ClickEvent> for WireClick {
    fn from(event: &ClickEvent) -> Self {
        WireClick {
            click_id: Some(event.click_id.to_string()),
            campaign_id: Some(event.campaign_id.0),
            ad_id: Some(event.ad_id.0),
            user_id: Some(event.user_id.0),
            ip: Some(event.ip.to_string()),
            user_agent: Some(event.user_agent.clone()),
            country: Some(event.country.as_str().to_owned()),
            event_time_ms: Some(event.event_time_ms.0),
            publisher_id: event.publisher_id.map(|id| id.0),
            key_id: None,
            signature: None,
        }
    }
}

/// The time bound validation applies to event times.
#[derive(Clone, Copy, Debug)]
pub enum TimeBound {
    /// Live ingest: event times must lie within the configured skew and age of `now_ms`.
    Live {
        now_ms: u64,
        future_ms_max: u64,
        age_ms_max: u64,
    },
    /// Batch mode over historical files: any event time is valid.
    None,
}

impl TimeBound {
    pub fn live(now_ms: u64) -> TimeBound {
        TimeBound::Live {
            now_ms,
            future_ms_max: limits::EVENT_TIME_FUTURE_MS_MAX,
            age_ms_max: limits::EVENT_AGE_MS_MAX,
        }
    }
}

/// One broken rule. A rejected record carries every rule it broke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum InvalidReason {
    #[error("malformed json: {message}")]
    Malformed { message: String },
    #[error("missing field `{field}`")]
    MissingField { field: &'static str },
    #[error("click_id {value:?} is not a non-nil uuid")]
    InvalidClickId { value: String },
    #[error("ip {value:?} is not an ipv4 or ipv6 address")]
    InvalidIp { value: String },
    #[error("country {value:?} is not two uppercase ascii letters (iso 3166-1 alpha-2)")]
    InvalidCountry { value: String },
    #[error("field `{field}` is {length_bytes} bytes, over the limit of {limit_bytes} bytes")]
    FieldTooLong {
        field: &'static str,
        length_bytes: usize,
        limit_bytes: usize,
    },
    #[error(
        "event_time_ms {event_time_ms} is {ahead_ms} ms ahead of now ({now_ms}), over the limit of {limit_ms} ms"
    )]
    EventTimeInFuture {
        event_time_ms: u64,
        now_ms: u64,
        ahead_ms: u64,
        limit_ms: u64,
    },
    #[error(
        "event_time_ms {event_time_ms} is {age_ms} ms older than now ({now_ms}), over the limit of {limit_ms} ms"
    )]
    EventTimeTooOld {
        event_time_ms: u64,
        now_ms: u64,
        age_ms: u64,
        limit_ms: u64,
    },
    #[error("the click is not signed (key_id and signature are required)")]
    Unsigned,
    #[error("signing key {key_id:?} is not an active key")]
    UnknownSigningKey { key_id: String },
    #[error("the signature does not match the click (click_id, campaign_id, ad_id, event_time_ms)")]
    BadSignature,
}

impl InvalidReason {
    /// Whether this reason is about the click's signature (answered 401, not 400).
    pub fn is_signature(&self) -> bool {
        matches!(
            self,
            InvalidReason::Unsigned
                | InvalidReason::UnknownSigningKey { .. }
                | InvalidReason::BadSignature
        )
    }
}

/// Every reason one record was rejected, in field order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub reasons: Vec<InvalidReason>,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, reason) in self.reasons.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{reason}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejection {}

impl Rejection {
    fn one(reason: InvalidReason) -> Rejection {
        Rejection {
            reasons: vec![reason],
        }
    }
}

/// Parses one JSON click and validates it.
pub fn parse_json_click(text: &[u8], bound: TimeBound) -> Result<ClickEvent, Rejection> {
    let wire: WireClick = serde_json::from_slice(text).map_err(|error| {
        Rejection::one(InvalidReason::Malformed {
            message: error.to_string(),
        })
    })?;
    validate(wire, bound)
}

/// Validates a wire click, collecting every broken rule rather than stopping at the first:
/// missing fields first, in field order, then the values that do not parse or break a limit.
pub fn validate(wire: WireClick, bound: TimeBound) -> Result<ClickEvent, Rejection> {
    let mut reasons = Vec::new();
    let mut required = |field: &'static str, present: bool| {
        if !present {
            reasons.push(InvalidReason::MissingField { field });
        }
    };
    required("click_id", wire.click_id.is_some());
    required("campaign_id", wire.campaign_id.is_some());
    required("ad_id", wire.ad_id.is_some());
    required("user_id", wire.user_id.is_some());
    required("ip", wire.ip.is_some());
    required("user_agent", wire.user_agent.is_some());
    required("country", wire.country.is_some());
    required("event_time_ms", wire.event_time_ms.is_some());
    let click_id = parse_field(
        wire.click_id,
        &mut reasons,
        |text| {
            let fits = text.len() <= limits::CLICK_ID_TEXT_BYTES_MAX;
            fits.then(|| ClickId::parse(text)).flatten()
        },
        |value| InvalidReason::InvalidClickId { value },
    );
    let ip = parse_field(
        wire.ip,
        &mut reasons,
        |text| text.parse::<IpAddr>().ok(),
        |value| InvalidReason::InvalidIp { value },
    );
    if let Some(agent) = &wire.user_agent
        && agent.len() > limits::USER_AGENT_BYTES_MAX
    {
        reasons.push(InvalidReason::FieldTooLong {
            field: "user_agent",
            length_bytes: agent.len(),
            limit_bytes: limits::USER_AGENT_BYTES_MAX,
        });
    }
    let country = parse_field(wire.country, &mut reasons, Country::parse, |value| {
        InvalidReason::InvalidCountry { value }
    });
    if let Some(event_time_ms) = wire.event_time_ms
        && let Err(reason) = check_event_time(event_time_ms, bound)
    {
        reasons.push(reason);
    }
    if !reasons.is_empty() {
        return Err(Rejection { reasons });
    }
    Ok(ClickEvent {
        click_id: click_id.expect("checked above"),
        campaign_id: CampaignId(wire.campaign_id.expect("checked above")),
        ad_id: AdId(wire.ad_id.expect("checked above")),
        user_id: UserId(wire.user_id.expect("checked above")),
        ip: ip.expect("checked above"),
        user_agent: wire.user_agent.expect("checked above"),
        country: country.expect("checked above"),
        event_time_ms: EventTimeMs(wire.event_time_ms.expect("checked above")),
        publisher_id: wire.publisher_id.map(PublisherId),
    })
}

/// A present text field, parsed; one that does not parse adds its reason, naming the value
/// (truncated for the message).
fn parse_field<T>(
    text: Option<String>,
    reasons: &mut Vec<InvalidReason>,
    parse: impl Fn(&str) -> Option<T>,
    invalid: impl Fn(String) -> InvalidReason,
) -> Option<T> {
    let text = text?;
    let parsed = parse(&text);
    if parsed.is_none() {
        reasons.push(invalid(truncate_for_message(&text)));
    }
    parsed
}

/// Checks an event time against the bound. Shared with the ingest core.
pub fn check_event_time(event_time_ms: u64, bound: TimeBound) -> Result<(), InvalidReason> {
    let TimeBound::Live {
        now_ms,
        future_ms_max,
        age_ms_max,
    } = bound
    else {
        return Ok(());
    };
    if event_time_ms > now_ms && event_time_ms - now_ms > future_ms_max {
        return Err(InvalidReason::EventTimeInFuture {
            event_time_ms,
            now_ms,
            ahead_ms: event_time_ms - now_ms,
            limit_ms: future_ms_max,
        });
    }
    if now_ms > event_time_ms && now_ms - event_time_ms > age_ms_max {
        return Err(InvalidReason::EventTimeTooOld {
            event_time_ms,
            now_ms,
            age_ms: now_ms - event_time_ms,
            limit_ms: age_ms_max,
        });
    }
    Ok(())
}

/// Echoing a hostile 1 MB value back in an error helps no one: keep messages short.
fn truncate_for_message(text: &str) -> String {
    const ECHO_BYTES_MAX: usize = 64;
    if text.len() <= ECHO_BYTES_MAX {
        return text.to_owned();
    }
    let mut end = ECHO_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"click_id":"6f1c1a4e-8a2b-4c3d-9e0f-112233445566","campaign_id":7,
        "ad_id":3,"user_id":99,"ip":"203.0.113.9","user_agent":"Mozilla/5.0","country":"DE",
        "event_time_ms":1700000000000,"publisher_id":12}"#;

    #[test]
    fn a_good_click_parses_and_round_trips_through_json() {
        let event = parse_json_click(GOOD.as_bytes(), TimeBound::live(1_700_000_000_500)).unwrap();
        assert_eq!(event.campaign_id, CampaignId(7));
        assert_eq!(
            event.click_id.to_string(),
            "6f1c1a4e-8a2b-4c3d-9e0f-112233445566"
        );
        let again = parse_json_click(event.to_json().as_bytes(), TimeBound::None).unwrap();
        assert_eq!(again, event);
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let text = format!(
            r#"{{"click_id":"nope","ad_id":3,"user_id":1,"ip":"999.1.1.1","user_agent":"{}",
            "country":"de","event_time_ms":1}}"#,
            "x".repeat(600)
        );
        let rejection =
            parse_json_click(text.as_bytes(), TimeBound::live(1_000_000_000)).unwrap_err();
        let reasons = rejection.reasons;
        assert!(reasons.contains(&InvalidReason::MissingField {
            field: "campaign_id"
        }));
        assert!(reasons.contains(&InvalidReason::InvalidClickId {
            value: "nope".into()
        }));
        assert!(reasons.contains(&InvalidReason::InvalidIp {
            value: "999.1.1.1".into()
        }));
        assert!(reasons.contains(&InvalidReason::InvalidCountry { value: "de".into() }));
        assert!(reasons.contains(&InvalidReason::FieldTooLong {
            field: "user_agent",
            length_bytes: 600,
            limit_bytes: 512
        }));
        assert!(
            reasons
                .iter()
                .any(|reason| matches!(reason, InvalidReason::EventTimeTooOld { .. }))
        );
    }

    #[test]
    fn future_events_beyond_the_skew_limit_are_rejected_with_the_limit_named() {
        let reason = check_event_time(10_000_000, TimeBound::live(1_000_000)).unwrap_err();
        assert_eq!(
            reason.to_string(),
            "event_time_ms 10000000 is 9000000 ms ahead of now (1000000), over the limit of 300000 ms"
        );
        assert!(check_event_time(1_200_000, TimeBound::live(1_000_000)).is_ok());
        assert!(check_event_time(1, TimeBound::None).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse_json_click(&bytes, TimeBound::live(1_700_000_000_000));
        }

        #[test]
        fn parsing_json_like_text_never_panics(text in r#"\{("[a-z_]{1,14}":("[ -~]{0,40}"|-?[0-9]{1,22}|null|true|\[\]),?){0,10}\}"#) {
            let _ = parse_json_click(text.as_bytes(), TimeBound::None);
        }
    }

    #[test]
    fn nil_uuid_and_wrong_types_are_rejected() {
        assert!(ClickId::parse("00000000-0000-0000-0000-000000000000").is_none());
        let rejection =
            parse_json_click(br#"{"campaign_id":"seven"}"#, TimeBound::None).unwrap_err();
        assert!(matches!(
            rejection.reasons[0],
            InvalidReason::Malformed { .. }
        ));
    }
}
