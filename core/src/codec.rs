//! The compact, versioned binary record format of the log.
//!
//! Layout of version 1, little-endian, fixed where it can be:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version (1) |
//! | 1 | 1 | flags: bit 0 publisher present, bit 1 IPv6 |
//! | 2 | 2 | salt |
//! | 4 | 2 | country (ASCII) |
//! | 6 | 2 | user agent length in bytes |
//! | 8 | 16 | click id |
//! | 24 | 8 | campaign id |
//! | 32 | 8 | ad id |
//! | 40 | 8 | user id |
//! | 48 | 8 | event time, ms |
//! | 56 | 8 | publisher id (0 when absent) |
//! | 64 | 4 or 16 | IP address |
//! | … | n | user agent, UTF-8 |
//!
//! **Invariant:** decoding never panics and never allocates. Records come from a log that outside
//! producers can write to, so every byte is checked: unknown versions, unknown flags, truncated or
//! trailing bytes, bad UTF-8 and bad country codes are errors.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::event::{ClickEvent, ClickView};
use crate::ids::*;
use crate::limits;

pub const CODEC_VERSION: u8 = 1;
const FLAG_PUBLISHER: u8 = 1;
const FLAG_IPV6: u8 = 2;
const FLAGS_KNOWN: u8 = FLAG_PUBLISHER | FLAG_IPV6;
const FIXED_BYTES: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("unknown record version {version}, this build reads version {CODEC_VERSION}")]
    UnknownVersion { version: u8 },
    #[error("unknown flag bits {flags:#04x}")]
    UnknownFlags { flags: u8 },
    #[error(
        "record is {length_bytes} bytes, truncated below the {needed_bytes} bytes its header needs"
    )]
    Truncated {
        length_bytes: usize,
        needed_bytes: usize,
    },
    #[error("record has {extra_bytes} trailing bytes")]
    TrailingBytes { extra_bytes: usize },
    #[error("user agent is {length_bytes} bytes, over the limit of {limit_bytes} bytes")]
    UserAgentTooLong {
        length_bytes: usize,
        limit_bytes: usize,
    },
    #[error("user agent is not valid utf-8")]
    UserAgentNotUtf8,
    #[error("country bytes {bytes:?} are not two uppercase ascii letters")]
    InvalidCountry { bytes: [u8; 2] },
    #[error("publisher id bytes are {value} but the publisher flag is clear; they must be 0")]
    NonCanonicalPublisher { value: u64 },
}

/// The encoded size of a click.
pub fn encoded_len(event: &ClickView<'_>) -> usize {
    FIXED_BYTES + ip_len(event.ip) + event.user_agent.len()
}

fn ip_len(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 16,
    }
}

/// Appends the encoded click to `out`. Panics if the user agent breaks its limit: validation
/// runs before encoding, so that would be a programmer error.
pub fn encode_into(event: &ClickView<'_>, out: &mut Vec<u8>) {
    assert!(
        event.user_agent.len() <= limits::USER_AGENT_BYTES_MAX,
        "validate before encoding"
    );
    out.reserve(encoded_len(event));
    let mut flags = 0;
    if event.publisher_id.is_some() {
        flags |= FLAG_PUBLISHER;
    }
    if event.ip.is_ipv6() {
        flags |= FLAG_IPV6;
    }
    out.push(CODEC_VERSION);
    out.push(flags);
    out.extend_from_slice(&event.salt.0.to_le_bytes());
    out.extend_from_slice(&event.country.0);
    out.extend_from_slice(&(event.user_agent.len() as u16).to_le_bytes());
    out.extend_from_slice(&event.click_id.0.to_le_bytes());
    out.extend_from_slice(&event.campaign_id.0.to_le_bytes());
    out.extend_from_slice(&event.ad_id.0.to_le_bytes());
    out.extend_from_slice(&event.user_id.0.to_le_bytes());
    out.extend_from_slice(&event.event_time_ms.0.to_le_bytes());
    out.extend_from_slice(&event.publisher_id.map_or(0, |id| id.0).to_le_bytes());
    match event.ip {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(event.user_agent.as_bytes());
}

pub fn encode(event: &ClickEvent, salt: Salt) -> Vec<u8> {
    let view = event.view(salt);
    let mut out = Vec::with_capacity(encoded_len(&view));
    encode_into(&view, &mut out);
    out
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(
        bytes[at..at + 8]
            .try_into()
            .expect("length checked by caller"),
    )
}

/// Decodes a record into a view that borrows the user agent from `bytes`.
pub fn decode(bytes: &[u8]) -> Result<ClickView<'_>, CodecError> {
    let Some(&version) = bytes.first() else {
        return Err(CodecError::Empty);
    };
    if version != CODEC_VERSION {
        return Err(CodecError::UnknownVersion { version });
    }
    if bytes.len() < FIXED_BYTES {
        return Err(CodecError::Truncated {
            length_bytes: bytes.len(),
            needed_bytes: FIXED_BYTES,
        });
    }
    let flags = bytes[1];
    if flags & !FLAGS_KNOWN != 0 {
        return Err(CodecError::UnknownFlags { flags });
    }
    let salt = Salt(u16::from_le_bytes([bytes[2], bytes[3]]));
    let country = Country([bytes[4], bytes[5]]);
    if !country.is_valid() {
        return Err(CodecError::InvalidCountry { bytes: country.0 });
    }
    let agent_len = u16::from_le_bytes([bytes[6], bytes[7]]) as usize;
    if agent_len > limits::USER_AGENT_BYTES_MAX {
        return Err(CodecError::UserAgentTooLong {
            length_bytes: agent_len,
            limit_bytes: limits::USER_AGENT_BYTES_MAX,
        });
    }
    let ip_bytes = if flags & FLAG_IPV6 != 0 { 16 } else { 4 };
    let needed_bytes = FIXED_BYTES + ip_bytes + agent_len;
    if bytes.len() < needed_bytes {
        return Err(CodecError::Truncated {
            length_bytes: bytes.len(),
            needed_bytes,
        });
    }
    if bytes.len() > needed_bytes {
        return Err(CodecError::TrailingBytes {
            extra_bytes: bytes.len() - needed_bytes,
        });
    }
    // One click has one encoding, so that equal records are equal bytes (dedup and checksums
    // of archived files rely on it).
    let publisher_bytes = u64_at(bytes, 56);
    if flags & FLAG_PUBLISHER == 0 && publisher_bytes != 0 {
        return Err(CodecError::NonCanonicalPublisher {
            value: publisher_bytes,
        });
    }
    let click_id = ClickId(u128::from_le_bytes(
        bytes[8..24].try_into().expect("length checked"),
    ));
    let ip_slice = &bytes[FIXED_BYTES..FIXED_BYTES + ip_bytes];
    let ip = if ip_bytes == 16 {
        let octets: [u8; 16] = ip_slice.try_into().expect("length checked");
        IpAddr::V6(Ipv6Addr::from(octets))
    } else {
        let octets: [u8; 4] = ip_slice.try_into().expect("length checked");
        IpAddr::V4(Ipv4Addr::from(octets))
    };
    let user_agent = std::str::from_utf8(&bytes[FIXED_BYTES + ip_bytes..])
        .map_err(|_| CodecError::UserAgentNotUtf8)?;
    Ok(ClickView {
        click_id,
        campaign_id: CampaignId(u64_at(bytes, 24)),
        ad_id: AdId(u64_at(bytes, 32)),
        user_id: UserId(u64_at(bytes, 40)),
        event_time_ms: EventTimeMs(u64_at(bytes, 48)),
        publisher_id: (flags & FLAG_PUBLISHER != 0).then_some(PublisherId(publisher_bytes)),
        ip,
        user_agent,
        country,
        salt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(ip: IpAddr, publisher: Option<u64>) -> ClickEvent {
        ClickEvent {
            click_id: ClickId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            campaign_id: CampaignId(42),
            ad_id: AdId(7),
            user_id: UserId(1234),
            ip,
            user_agent: "Mozilla/5.0 (X11; Linux x86_64)".into(),
            country: Country(*b"US"),
            event_time_ms: EventTimeMs(1_700_000_000_123),
            publisher_id: publisher.map(PublisherId),
        }
    }

    #[test]
    fn round_trips_v4_and_v6_with_and_without_publisher() {
        for (ip, publisher) in [
            ("198.51.100.7".parse().unwrap(), Some(5)),
            ("2001:db8::1".parse().unwrap(), None),
        ] {
            let event = sample(ip, publisher);
            let bytes = encode(&event, Salt(3));
            let view = decode(&bytes).unwrap();
            assert_eq!(view.salt, Salt(3));
            assert_eq!(view.to_owned_event(), event);
            assert_eq!(bytes.len(), encoded_len(&view));
        }
    }

    #[test]
    fn rejects_unknown_versions_truncation_and_trailing_bytes() {
        let bytes = encode(&sample("10.0.0.1".parse().unwrap(), None), Salt(0));
        assert_eq!(decode(&[]), Err(CodecError::Empty));
        let mut future = bytes.clone();
        future[0] = 2;
        assert_eq!(
            decode(&future),
            Err(CodecError::UnknownVersion { version: 2 })
        );
        for cut in 1..bytes.len() {
            assert!(
                matches!(decode(&bytes[..cut]), Err(CodecError::Truncated { .. })),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            decode(&longer),
            Err(CodecError::TrailingBytes { extra_bytes: 1 })
        );
    }

    /// Regression: a record whose publisher flag was cleared but whose publisher bytes were not
    /// decoded fine and re-encoded to different bytes (found by the mutation property test).
    #[test]
    fn regression_publisher_bytes_without_the_flag_are_rejected() {
        let mut bytes = encode(&sample("2001:db8::1".parse().unwrap(), Some(1)), Salt(1));
        bytes[1] &= !FLAG_PUBLISHER;
        assert_eq!(
            decode(&bytes),
            Err(CodecError::NonCanonicalPublisher { value: 1 })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        /// A user agent decodes exactly when its bytes are UTF-8, whatever the bytes.
        #[test]
        fn user_agents_decode_exactly_when_they_are_utf8(
            agent in proptest::collection::vec(prop_oneof![any::<u8>(), 0x20u8..0x7f], 0..300)
        ) {
            let mut bytes = encode(&sample("192.0.2.1".parse().unwrap(), None), Salt(0));
            let agent_at = bytes.len() - sample("192.0.2.1".parse().unwrap(), None).user_agent.len();
            bytes.truncate(agent_at);
            bytes.extend_from_slice(&agent);
            bytes[6..8].copy_from_slice(&(agent.len() as u16).to_le_bytes());
            let decoded = decode(&bytes);
            match String::from_utf8(agent) {
                Ok(text) => prop_assert_eq!(decoded.map(|view| view.user_agent), Ok(text.as_str())),
                Err(_) => prop_assert_eq!(decoded.map(|_| ()), Err(CodecError::UserAgentNotUtf8)),
            }
        }

        #[test]
        fn decoding_mutated_records_never_panics(index in 0usize..120, value in any::<u8>()) {
            let mut bytes = encode(&sample("2001:db8::1".parse().unwrap(), Some(1)), Salt(1));
            let at = index % bytes.len();
            bytes[at] = value;
            if let Ok(view) = decode(&bytes) {
                // Whatever decodes must re-encode to the same bytes.
                let mut again = Vec::new();
                encode_into(&view, &mut again);
                prop_assert_eq!(again, bytes);
            }
        }
    }
}
