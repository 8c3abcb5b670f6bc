//! Who may do what: signed clicks at ingest, per-advertiser bearer tokens on the query API, and
//! per-client request rates. Secrets (signing keys, tokens) come from files or the environment,
//! never from the config itself, and never reach a log line.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use adclick_core::signing::{SigningKeys, hex_decode};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::api::error_response;

/// The environment variable that can hold signing keys: `k1=HEX,k2=HEX`.
pub const SIGNING_KEYS_ENV: &str = "ADCLICK_SIGNING_KEYS";

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Accept clicks without a valid signature: for the embedded demo only (the start-up log
    /// warns loudly). With no config file at all, `adclick serve` runs this way.
    pub allow_unsigned: bool,
    /// A TOML file of active signing keys, `KEY_ID = "hex"`; or set ADCLICK_SIGNING_KEYS.
    pub signing_keys_file: Option<PathBuf>,
    /// A TOML file of bearer tokens for the query API (see README, "Security model").
    /// Absent: the query API is open.
    pub tokens_file: Option<PathBuf>,
}

/// What a query caller may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Tokens are not configured: everything is visible.
    Open,
    Admin,
    Advertiser {
        name: String,
        campaigns: Arc<BTreeSet<u64>>,
    },
}

impl Principal {
    pub fn may_see(&self, campaign: u64) -> bool {
        match self {
            Principal::Open | Principal::Admin => true,
            Principal::Advertiser { campaigns, .. } => campaigns.contains(&campaign),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
    #[serde(default)]
    advertisers: BTreeMap<String, AdvertiserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    #[serde(default)]
    advertiser: Option<String>,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvertiserEntry {
    campaigns: Vec<u64>,
}

/// Bearer tokens, stored by their SHA-256 so that a lookup leaks no timing about the token.
#[derive(Clone, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Principal>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.by_digest.len())
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    pub fn parse(text: &str, origin: &str) -> Result<Tokens, String> {
        let file: TokensFile =
            toml::from_str(text).map_err(|error| format!("{origin}: {error}"))?;
        let mut tokens = Tokens::default();
        for (index, entry) in file.token.iter().enumerate() {
            let principal = match (&entry.advertiser, entry.admin) {
                (None, true) => Principal::Admin,
                (Some(name), false) => {
                    let advertiser = file.advertisers.get(name).ok_or_else(|| {
                        format!(
                            "{origin}: token #{} names advertiser {name:?}, which has no [advertisers.{name}] campaigns",
                            index + 1
                        )
                    })?;
                    Principal::Advertiser {
                        name: name.clone(),
                        campaigns: Arc::new(advertiser.campaigns.iter().copied().collect()),
                    }
                }
                _ => {
                    return Err(format!(
                        "{origin}: token #{} must have exactly one of `advertiser = \"NAME\"` or `admin = true`",
                        index + 1
                    ));
                }
            };
            if entry.token.len() < 16 {
                return Err(format!(
                    "{origin}: token #{} is {} characters, under the minimum of 16",
                    index + 1,
                    entry.token.len()
                ));
            }
            tokens.by_digest.insert(digest(&entry.token), principal);
        }
        Ok(tokens)
    }

    pub fn principal(&self, token: &str) -> Option<Principal> {
        self.by_digest.get(&digest(token)).cloned()
    }
}

/// Loads the signing keys: the file, then the environment variable.
pub fn load_signing_keys(config: &SecurityConfig) -> anyhow::Result<SigningKeys> {
    let mut keys = SigningKeys::default();
    if let Some(path) = &config.signing_keys_file {
        let text = read_secret_file(path, "security.signing_keys_file")?;
        let table: BTreeMap<String, String> = toml::from_str(&text).map_err(|error| {
            anyhow::anyhow!("security.signing_keys_file {}: {error}", path.display())
        })?;
        for (key_id, hex) in table {
            let key = decode_key(&key_id, &hex).map_err(|error| {
                anyhow::anyhow!("security.signing_keys_file {}: {error}", path.display())
            })?;
            keys.insert(key_id, key);
        }
    }
    if let Ok(text) = std::env::var(SIGNING_KEYS_ENV) {
        for pair in text.split(',').filter(|pair| !pair.trim().is_empty()) {
            let (key_id, hex) = pair.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("{SIGNING_KEYS_ENV}: entries are KEY_ID=HEX, comma-separated")
            })?;
            let key = decode_key(key_id.trim(), hex.trim())
                .map_err(|error| anyhow::anyhow!("{SIGNING_KEYS_ENV}: {error}"))?;
            keys.insert(key_id.trim(), key);
        }
    }
    Ok(keys)
}

fn decode_key(key_id: &str, hex: &str) -> Result<Vec<u8>, String> {
    let key = hex_decode(hex)
        .ok_or_else(|| format!("key {key_id:?} is not hex (the value is not shown)"))?;
    if key.len() < 16 {
        return Err(format!(
            "key {key_id:?} is {} bytes, under the minimum of 16",
            key.len()
        ));
    }
    Ok(key)
}

pub fn load_tokens(config: &SecurityConfig) -> anyhow::Result<Option<Tokens>> {
    let Some(path) = &config.tokens_file else {
        return Ok(None);
    };
    let text = read_secret_file(path, "security.tokens_file")?;
    Tokens::parse(&text, &path.display().to_string())
        .map(Some)
        .map_err(anyhow::Error::msg)
}

fn read_secret_file(path: &Path, key: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|error| anyhow::anyhow!("{key} {}: {error}", path.display()))
}

/// The query API's gate: a missing or unknown bearer token is 401; a known one becomes the
/// request's `Principal`.
pub async fn require_token(
    State(tokens): State<Option<Arc<Tokens>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let principal = match &tokens {
        None => Principal::Open,
        Some(tokens) => {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "));
            match presented.and_then(|token| tokens.principal(token.trim())) {
                Some(principal) => principal,
                None => {
                    let mut response = error_response(
                        StatusCode::UNAUTHORIZED,
                        "a valid bearer token is required (Authorization: Bearer TOKEN)".into(),
                        None,
                    );
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return response;
                }
            }
        }
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

type KeyedLimiter = governor::DefaultKeyedRateLimiter<IpAddr>;

/// Requests per second per client IP, with a burst. Over it: 429 with Retry-After.
#[derive(Clone)]
pub struct ClientRateLimit {
    limiter: Arc<KeyedLimiter>,
}

impl ClientRateLimit {
    pub fn new(per_s: u32, burst: u32) -> Option<ClientRateLimit> {
        let per_s = NonZeroU32::new(per_s)?;
        let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
        let quota = governor::Quota::per_second(per_s).allow_burst(burst);
        Some(ClientRateLimit {
            limiter: Arc::new(governor::RateLimiter::keyed(quota)),
        })
    }
}

pub async fn limit_client_rate(
    State(limit): State<Option<ClientRateLimit>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(limit) = &limit {
        let client = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        if let Some(client) = client
            && let Err(not_until) = limit.limiter.check_key(&client)
        {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            let retry_after_s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let mut response = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                format!("client {client} is over its request rate; retry after {retry_after_s} s"),
                Some("http.requests_per_s_per_client"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s.max(1)));
            return response;
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_advertisers_and_admins() {
        let text = r#"
[[token]]
token = "acme-0123456789abcdef"
advertiser = "acme"
[[token]]
token = "ops-0123456789abcdef"
admin = true
[advertisers.acme]
campaigns = [1, 2]
"#;
        let tokens = Tokens::parse(text, "tokens.toml").unwrap();
        let acme = tokens.principal("acme-0123456789abcdef").unwrap();
        assert!(acme.may_see(1) && !acme.may_see(3));
        assert_eq!(
            tokens.principal("ops-0123456789abcdef"),
            Some(Principal::Admin)
        );
        assert_eq!(tokens.principal("nobody-0123456789"), None);
        assert!(
            !format!("{tokens:?}").contains("acme-0123"),
            "tokens never print"
        );
    }

    #[test]
    fn bad_token_files_say_what_is_wrong() {
        let error =
            Tokens::parse("[[token]]\ntoken = \"short\"\nadmin = true\n", "t.toml").unwrap_err();
        assert!(error.contains("under the minimum of 16"), "{error}");
        let error = Tokens::parse(
            "[[token]]\ntoken = \"0123456789abcdefgh\"\nadvertiser = \"x\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(error.contains("no [advertisers.x]"), "{error}");
    }
}
