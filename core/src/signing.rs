//! Signed clicks: an ad server signs each click with HMAC-SHA256 over its identity and time, so
//! nobody without a key can forge a click or replay one with changed fields.
//!
//! The signed message is fixed-layout, 40 bytes: `click_id` (16, big-endian, UUID byte order),
//! `campaign_id` (8, BE), `ad_id` (8, BE), `event_time_ms` (8, BE). Keys rotate: several key ids
//! are active at once, and a click names the one that signed it. Comparison is constant-time
//! (`hmac`'s `verify_slice`). Keys never appear in `Debug` output or errors.

use std::collections::BTreeMap;

use hmac::{KeyInit, Mac};

use crate::event::{InvalidReason, WireClick};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The bytes a click's signature covers.
pub fn signed_message(
    click_id: u128,
    campaign_id: u64,
    ad_id: u64,
    event_time_ms: u64,
) -> [u8; 40] {
    let mut message = [0u8; 40];
    message[..16].copy_from_slice(&click_id.to_be_bytes());
    message[16..24].copy_from_slice(&campaign_id.to_be_bytes());
    message[24..32].copy_from_slice(&ad_id.to_be_bytes());
    message[32..].copy_from_slice(&event_time_ms.to_be_bytes());
    message
}

/// The active signing keys, by key id.
#[derive(Clone, Default)]
pub struct SigningKeys {
    keys: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: the key bytes are secret.
        f.debug_struct("SigningKeys")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SigningKeys {
    pub fn insert(&mut self, key_id: impl Into<String>, key: Vec<u8>) {
        self.keys.insert(key_id.into(), key);
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The signature of a click under `key_id`, lowercase hex; `None` for an unknown key id.
    pub fn sign(&self, key_id: &str, message: &[u8; 40]) -> Option<String> {
        let key = self.keys.get(key_id)?;
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(message);
        Some(hex_encode(&mac.finalize().into_bytes()))
    }

    /// Checks a wire click's signature before anything else about it is trusted. A click with
    /// a missing or malformed id field fails as unsigned: what it claims cannot be checked.
    pub fn verify(&self, wire: &WireClick) -> Result<(), InvalidReason> {
        let (Some(key_id), Some(signature)) = (&wire.key_id, &wire.signature) else {
            return Err(InvalidReason::Unsigned);
        };
        let Some(key) = self.keys.get(key_id) else {
            return Err(InvalidReason::UnknownSigningKey {
                key_id: key_id.chars().take(64).collect(),
            });
        };
        let click_id = wire
            .click_id
            .as_deref()
            .and_then(crate::ids::ClickId::parse)
            .ok_or(InvalidReason::BadSignature)?;
        let (Some(campaign_id), Some(ad_id), Some(event_time_ms)) =
            (wire.campaign_id, wire.ad_id, wire.event_time_ms)
        else {
            return Err(InvalidReason::BadSignature);
        };
        let signature = hex_decode(signature).ok_or(InvalidReason::BadSignature)?;
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(&signed_message(
            click_id.0,
            campaign_id,
            ad_id,
            event_time_ms,
        ));
        mac.verify_slice(&signature)
            .map_err(|_| InvalidReason::BadSignature)
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 15) as usize] as char);
    }
    out
}

/// Decodes hex (either case); `None` for odd lengths or other characters.
pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) || bytes.len() > 256 {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> WireClick {
        WireClick {
            click_id: Some("67e55044-10b1-426f-9247-bb680e5fe0c8".into()),
            campaign_id: Some(7),
            ad_id: Some(3),
            event_time_ms: Some(1_000),
            ..WireClick::default()
        }
    }

    fn keys() -> SigningKeys {
        let mut keys = SigningKeys::default();
        keys.insert("k1", b"secret one".to_vec());
        keys.insert("k2", b"secret two".to_vec());
        keys
    }

    fn signed(keys: &SigningKeys, key_id: &str) -> WireClick {
        let mut click = wire();
        let id = crate::ids::ClickId::parse(click.click_id.as_deref().unwrap()).unwrap();
        let message = signed_message(id.0, 7, 3, 1_000);
        click.key_id = Some(key_id.into());
        click.signature = keys.sign(key_id, &message);
        click
    }

    #[test]
    fn a_signed_click_verifies_under_any_active_key() {
        let keys = keys();
        assert_eq!(keys.verify(&signed(&keys, "k1")), Ok(()));
        assert_eq!(keys.verify(&signed(&keys, "k2")), Ok(()));
    }

    #[test]
    fn forged_changed_unsigned_and_retired_clicks_are_refused() {
        let keys = keys();
        assert_eq!(keys.verify(&wire()), Err(InvalidReason::Unsigned));
        let mut changed = signed(&keys, "k1");
        changed.campaign_id = Some(8);
        assert_eq!(keys.verify(&changed), Err(InvalidReason::BadSignature));
        let mut later = signed(&keys, "k1");
        later.event_time_ms = Some(1_001);
        assert_eq!(keys.verify(&later), Err(InvalidReason::BadSignature));
        let mut forged = signed(&keys, "k1");
        forged.signature = Some("00".repeat(32));
        assert_eq!(keys.verify(&forged), Err(InvalidReason::BadSignature));
        let mut not_hex = signed(&keys, "k1");
        not_hex.signature = Some("zz".into());
        assert_eq!(keys.verify(&not_hex), Err(InvalidReason::BadSignature));
        let mut rotated_out = SigningKeys::default();
        rotated_out.insert("k2", b"secret two".to_vec());
        assert!(matches!(
            rotated_out.verify(&signed(&keys, "k1")),
            Err(InvalidReason::UnknownSigningKey { .. })
        ));
    }

    #[test]
    fn debug_output_names_key_ids_only() {
        let text = format!("{:?}", keys());
        assert!(text.contains("k1") && !text.contains("secret"), "{text}");
    }
}
