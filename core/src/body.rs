//! The clicks request body: one JSON click, a JSON array of clicks, or NDJSON (one click per
//! line). Each record is validated on its own, so one bad record never sinks the others: it gets
//! a reason, with its index in the request.

use crate::event::{ClickEvent, InvalidReason, Rejection, TimeBound, WireClick, validate};
use crate::signing::SigningKeys;
use serde::Serialize;

/// The content types the endpoint takes.
pub const ACCEPTED_CONTENT_TYPES: &str =
    "application/json (one click or an array), application/x-ndjson (one click per line)";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    NdJson,
}

impl BodyFormat {
    /// The format a `Content-Type` names; parameters such as `charset` are ignored.
    pub fn from_content_type(content_type: &str) -> Option<BodyFormat> {
        let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Some(BodyFormat::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                Some(BodyFormat::NdJson)
            }
            _ => None,
        }
    }
}

/// Why a whole body was refused (as opposed to one record in it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body is not JSON: {message}")]
    NotJson { message: String },
    #[error("body is JSON but neither a click object nor an array of them")]
    NotClicks,
    #[error(
        "body holds {records} records, over the limit of {limit} (http.records_per_request_max)"
    )]
    TooManyRecords { records: usize, limit: usize },
}

/// A rejected record and where it was in the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordError {
    pub index: usize,
    pub reasons: Vec<InvalidReason>,
}

/// The parsed body: the valid clicks, and a reason for each invalid record.
#[derive(Debug, Default)]
pub struct ParsedBody {
    pub clicks: Vec<ClickEvent>,
    /// For each click, its index in the request.
    pub indexes: Vec<usize>,
    pub rejected: Vec<RecordError>,
}

impl ParsedBody {
    fn push(&mut self, index: usize, result: Result<ClickEvent, Rejection>) {
        match result {
            Ok(click) => {
                self.clicks.push(click);
                self.indexes.push(index);
            }
            Err(rejection) => self.rejected.push(RecordError {
                index,
                reasons: rejection.reasons,
            }),
        }
    }

    pub fn records(&self) -> usize {
        self.clicks.len() + self.rejected.len()
    }
}

/// Parses and validates a body. With `keys`, every click must carry a valid signature, checked
/// before anything else about it. Never panics, whatever the bytes.
pub fn parse_body(
    bytes: &[u8],
    format: BodyFormat,
    bound: TimeBound,
    records_max: usize,
    keys: Option<&SigningKeys>,
) -> Result<ParsedBody, BodyError> {
    let mut parsed = ParsedBody::default();
    match format {
        BodyFormat::NdJson => {
            let lines = bytes
                .split(|byte| *byte == b'\n')
                .filter(|line| !line.iter().all(u8::is_ascii_whitespace));
            for (index, line) in lines.enumerate() {
                if index >= records_max {
                    let records = index
                        + bytes[..]
                            .split(|byte| *byte == b'\n')
                            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
                            .skip(index)
                            .count();
                    return Err(BodyError::TooManyRecords {
                        records,
                        limit: records_max,
                    });
                }
                let wire = serde_json::from_slice::<WireClick>(line).map_err(malformed);
                parsed.push(index, wire.and_then(|wire| check(wire, bound, keys)));
            }
        }
        BodyFormat::Json => {
            let first = bytes.iter().find(|byte| !byte.is_ascii_whitespace());
            match first {
                Some(b'[') => {
                    let values: Vec<serde_json::Value> =
                        serde_json::from_slice(bytes).map_err(|error| BodyError::NotJson {
                            message: error.to_string(),
                        })?;
                    if values.len() > records_max {
                        return Err(BodyError::TooManyRecords {
                            records: values.len(),
                            limit: records_max,
                        });
                    }
                    for (index, value) in values.into_iter().enumerate() {
                        let wire = serde_json::from_value::<WireClick>(value).map_err(malformed);
                        parsed.push(index, wire.and_then(|wire| check(wire, bound, keys)));
                    }
                }
                Some(b'{') => {
                    // A single object that does not parse is still one record with a reason.
                    let wire = serde_json::from_slice::<WireClick>(bytes).map_err(malformed);
                    parsed.push(0, wire.and_then(|wire| check(wire, bound, keys)));
                }
                Some(_) => {
                    serde_json::from_slice::<serde_json::Value>(bytes).map_err(|error| {
                        BodyError::NotJson {
                            message: error.to_string(),
                        }
                    })?;
                    return Err(BodyError::NotClicks);
                }
                None => {}
            }
        }
    }
    Ok(parsed)
}

fn malformed(error: serde_json::Error) -> Rejection {
    Rejection {
        reasons: vec![InvalidReason::Malformed {
            message: error.to_string(),
        }],
    }
}

/// The signature first (nothing a forged click says is worth checking), then validation.
fn check(
    wire: WireClick,
    bound: TimeBound,
    keys: Option<&SigningKeys>,
) -> Result<ClickEvent, Rejection> {
    if let Some(keys) = keys {
        keys.verify(&wire).map_err(|reason| Rejection {
            reasons: vec![reason],
        })?;
    }
    validate(wire, bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CLICK: &str = r#"{"click_id":"67e55044-10b1-426f-9247-bb680e5fe0c8","campaign_id":7,"ad_id":3,"user_id":9,"ip":"10.0.0.1","user_agent":"ua","country":"DE","event_time_ms":1000}"#;

    fn parse(body: &str, format: BodyFormat) -> Result<ParsedBody, BodyError> {
        parse_body(body.as_bytes(), format, TimeBound::None, 100, None)
    }

    #[test]
    fn one_object_an_array_and_ndjson_all_parse() {
        assert_eq!(parse(CLICK, BodyFormat::Json).unwrap().clicks.len(), 1);
        let array = format!("[{CLICK},{CLICK}]");
        assert_eq!(parse(&array, BodyFormat::Json).unwrap().clicks.len(), 2);
        let lines = format!("{CLICK}\n\n{CLICK}\r\n{CLICK}\n");
        assert_eq!(parse(&lines, BodyFormat::NdJson).unwrap().clicks.len(), 3);
    }

    #[test]
    fn a_bad_record_gets_its_index_and_reasons_and_the_others_pass() {
        let bad = CLICK.replace("10.0.0.1", "10.0.0.300");
        let lines = format!("{CLICK}\n{bad}\nnot json\n");
        let parsed = parse(&lines, BodyFormat::NdJson).unwrap();
        assert_eq!(parsed.clicks.len(), 1);
        assert_eq!(parsed.rejected.len(), 2);
        assert_eq!(parsed.rejected[0].index, 1);
        assert!(matches!(
            parsed.rejected[0].reasons[0],
            InvalidReason::InvalidIp { .. }
        ));
        assert!(matches!(
            parsed.rejected[1].reasons[0],
            InvalidReason::Malformed { .. }
        ));
        let array = format!("[{CLICK}, 5, {{\"campaign_id\": \"x\"}}]");
        let parsed = parse(&array, BodyFormat::Json).unwrap();
        assert_eq!(parsed.clicks.len(), 1);
        assert_eq!(
            parsed.rejected.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn whole_body_errors_say_what_was_wrong() {
        assert!(matches!(
            parse("[1,", BodyFormat::Json),
            Err(BodyError::NotJson { .. })
        ));
        assert_eq!(
            parse("42", BodyFormat::Json).unwrap_err(),
            BodyError::NotClicks
        );
        let many = format!("{CLICK}\n").repeat(101);
        assert_eq!(
            parse(&many, BodyFormat::NdJson).unwrap_err(),
            BodyError::TooManyRecords {
                records: 101,
                limit: 100
            }
        );
    }

    #[test]
    fn content_types_are_matched_on_their_essence() {
        assert_eq!(
            BodyFormat::from_content_type("application/json; charset=utf-8"),
            Some(BodyFormat::Json)
        );
        assert_eq!(
            BodyFormat::from_content_type("Application/X-NDJSON"),
            Some(BodyFormat::NdJson)
        );
        assert_eq!(BodyFormat::from_content_type("text/plain"), None);
    }

    proptest! {
        // The parser takes hostile bytes: it never panics, and every record is either a click
        // or a rejection, never lost.
        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for format in [BodyFormat::Json, BodyFormat::NdJson] {
                if let Ok(parsed) = parse_body(&bytes, format, TimeBound::None, 100, None) {
                    prop_assert_eq!(parsed.clicks.len(), parsed.indexes.len());
                }
            }
        }

        #[test]
        fn ndjson_accounts_for_every_line(valid in proptest::collection::vec(any::<bool>(), 0..50)) {
            let body: String = valid
                .iter()
                .map(|ok| if *ok { format!("{CLICK}\n") } else { "{\"campaign_id\":1}\n".to_owned() })
                .collect();
            let parsed = parse(&body, BodyFormat::NdJson).unwrap();
            prop_assert_eq!(parsed.records(), valid.len());
            prop_assert_eq!(parsed.clicks.len(), valid.iter().filter(|ok| **ok).count());
        }
    }
}
