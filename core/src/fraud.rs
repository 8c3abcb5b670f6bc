//! Fraud checks: split-block Bloom filters of known-bad IPs and user agents, and the one fraud
//! decision (`judge`) that combines them with the rate rule on clicks per IP per event-time
//! minute (`rate_rule`, re-exported here).
//!
//! A fraud list is immutable and has a version. The aggregator swaps lists only at an epoch
//! barrier and records the version in its checkpoint, so a replay after a crash makes the same
//! decisions as the original run. A registry keeps every list by version so that a restore can
//! find the one its checkpoint names.
//!
//! **Invariant:** no I/O here. Lists are parsed from text the caller read.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::FraudListVersion;
use crate::limits;
pub use crate::rate_rule::{RateKey, RateRule};

/// Why a click is fraud.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FraudVerdict {
    Clean,
    KnownBadIp,
    KnownBadUserAgent,
    RateExceeded,
}

/// One immutable, versioned list of known-bad IPs and user agents, held in Bloom filters.
pub struct FraudList {
    version: FraudListVersion,
    checksum: u32,
    entries: usize,
    bad_ips: Bloom,
    bad_user_agents: Bloom,
}

/// A split-block Bloom filter (the Parquet format's): a key sets 8 bits in one 32-byte block,
/// so a check reads one cache line, which `prefetch` requests whole. fastbloom, before it, spread
/// a key's ~10 bits over the whole filter: a clean click was rejected after two lines on average,
/// and the lines past the two prefetched stalled the chain. The `bloom_lookup` bench measured
/// 1.5 to 1.8 times as fast a check (reports/2026-11-28-rust-svc/hot-path-session-4.md).
type Bloom = sbbf_rs_safe::Filter;

/// Bits per listed key. At 16 the measured false-positive rate is 0.075%, under
/// `limits::FRAUD_BLOOM_FALSE_POSITIVE_RATE` (a test measures it); a split-block filter needs a
/// few more bits than an unblocked one (fastbloom took 14.4) for the same rate.
const BLOOM_BITS_PER_KEY: usize = 16;

/// The filters' hasher: foldhash under a fixed seed, so that every process builds identical
/// filters and makes identical decisions.
const BLOOM_HASHER: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(BLOOM_SEED);

impl std::fmt::Debug for FraudList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FraudList")
            .field("version", &self.version)
            .field("checksum", &self.checksum)
            .field("entries", &self.entries)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FraudListError {
    #[error("line {line}: expected `version N` with N > 0 before any entry")]
    MissingVersion { line: usize },
    #[error("line {line}: {message}")]
    BadLine { line: usize, message: String },
    #[error("list has {entries} entries, over the limit of {limit}")]
    TooLarge { entries: usize, limit: usize },
    #[error(
        "fraud list version {version} is already registered with different content (checksum {registered:#010x}, new {new:#010x}); lists are immutable, give the new one a new version"
    )]
    VersionReused {
        version: FraudListVersion,
        registered: u32,
        new: u32,
    },
}

/// Bloom filters take one fixed seed so that every process builds identical filters.
const BLOOM_SEED: u64 = 0xad_c11c_f4a0_d000;

impl FraudList {
    /// The empty list, version 0.
    pub fn empty() -> FraudList {
        FraudList::build(FraudListVersion(0), Vec::new(), Vec::new())
    }

    /// Builds a list from IPs and user agents.
    pub fn build(
        version: FraudListVersion,
        mut ips: Vec<IpAddr>,
        mut user_agents: Vec<String>,
    ) -> FraudList {
        ips.sort_unstable();
        ips.dedup();
        user_agents.sort_unstable();
        user_agents.dedup();
        let mut checksum = crc32fast::Hasher::new();
        let mut bad_ips = new_bloom(ips.len());
        for ip in &ips {
            checksum.update(ip.to_string().as_bytes());
            checksum.update(b"\n");
            bad_ips.insert_hash(BLOOM_HASHER.hash_one(ip_key(*ip)));
        }
        let mut bad_user_agents = new_bloom(user_agents.len());
        for agent in &user_agents {
            checksum.update(agent.as_bytes());
            checksum.update(b"\n");
            bad_user_agents.insert_hash(BLOOM_HASHER.hash_one(agent.as_str()));
        }
        FraudList {
            version,
            checksum: checksum.finalize(),
            entries: ips.len() + user_agents.len(),
            bad_ips,
            bad_user_agents,
        }
    }

    /// Parses the plain-text list format:
    ///
    /// ```text
    /// # comments and blank lines are ignored
    /// version 3
    /// ip 203.0.113.9
    /// ua BadBot/1.0
    /// ```
    pub fn parse(text: &str) -> Result<FraudList, FraudListError> {
        let mut version = None;
        let mut ips = Vec::new();
        let mut user_agents = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (kind, value) =
                trimmed
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| FraudListError::BadLine {
                        line,
                        message: format!("expected `KIND VALUE`, got {trimmed:?}"),
                    })?;
            let value = value.trim();
            match (kind, version) {
                ("version", None) => {
                    let parsed = value.parse::<u64>().ok().filter(|v| *v > 0);
                    version = Some(parsed.ok_or(FraudListError::MissingVersion { line })?);
                }
                ("version", Some(_)) => {
                    return Err(FraudListError::BadLine {
                        line,
                        message: "second `version` line".into(),
                    });
                }
                (_, None) => return Err(FraudListError::MissingVersion { line }),
                ("ip", Some(_)) => {
                    ips.push(
                        value
                            .parse::<IpAddr>()
                            .map_err(|_| FraudListError::BadLine {
                                line,
                                message: format!("{value:?} is not an ip address"),
                            })?,
                    )
                }
                ("ua", Some(_)) if value.len() <= limits::USER_AGENT_BYTES_MAX => {
                    user_agents.push(value.to_owned())
                }
                ("ua", Some(_)) => {
                    return Err(FraudListError::BadLine {
                        line,
                        message: format!(
                            "user agent is {} bytes, over the limit of {} bytes",
                            value.len(),
                            limits::USER_AGENT_BYTES_MAX
                        ),
                    });
                }
                (other, Some(_)) => {
                    return Err(FraudListError::BadLine {
                        line,
                        message: format!("unknown entry kind {other:?}, expected `ip` or `ua`"),
                    });
                }
            }
            if ips.len() + user_agents.len() > limits::FRAUD_LIST_ENTRIES_MAX {
                return Err(FraudListError::TooLarge {
                    entries: ips.len() + user_agents.len(),
                    limit: limits::FRAUD_LIST_ENTRIES_MAX,
                });
            }
        }
        let version = version.ok_or(FraudListError::MissingVersion {
            line: text.lines().count() + 1,
        })?;
        Ok(FraudList::build(
            FraudListVersion(version),
            ips,
            user_agents,
        ))
    }

    pub fn version(&self) -> FraudListVersion {
        self.version
    }

    pub fn checksum(&self) -> u32 {
        self.checksum
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Bloom filter memory, for the dashboard and the limits docs.
    pub fn bloom_bytes(&self) -> usize {
        self.bad_ips.as_bytes().len() + self.bad_user_agents.as_bytes().len()
    }

    /// The filters' hashes of a click's IP and user agent, for `prefetch` and `check_hashed` on
    /// this list. (Every list with entries hashes with the same seeded hasher.) An empty list
    /// checks nothing, so it hashes nothing: no user agent is hashed for nothing per click.
    pub fn hashes(&self, ip: IpAddr, user_agent: &str) -> FraudHashes {
        if self.entries == 0 {
            return FraudHashes {
                ip: 0,
                user_agent: 0,
            };
        }
        FraudHashes {
            ip: BLOOM_HASHER.hash_one(ip_key(ip)),
            user_agent: BLOOM_HASHER.hash_one(user_agent),
        }
    }

    /// Starts loading the filter blocks a check of `hashes` reads. A hint only.
    pub fn prefetch(&self, hashes: FraudHashes) {
        if self.entries == 0 {
            return;
        }
        prefetch_block(&self.bad_ips, hashes.ip);
        prefetch_block(&self.bad_user_agents, hashes.user_agent);
    }

    pub fn check(&self, ip: IpAddr, user_agent: &str) -> FraudVerdict {
        self.check_hashed(self.hashes(ip, user_agent))
    }

    /// `check` on hashes from `hashes`, for callers that computed them ahead (to prefetch).
    pub fn check_hashed(&self, hashes: FraudHashes) -> FraudVerdict {
        if self.entries == 0 {
            return FraudVerdict::Clean;
        }
        if self.bad_ips.contains_hash(hashes.ip) {
            return FraudVerdict::KnownBadIp;
        }
        if self.bad_user_agents.contains_hash(hashes.user_agent) {
            return FraudVerdict::KnownBadUserAgent;
        }
        FraudVerdict::Clean
    }
}

/// A click's hashes under the fraud filters: computed once per click, used to prefetch and then
/// to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FraudHashes {
    ip: u64,
    user_agent: u64,
}

/// Bytes of a split-block filter's block: eight 32-bit words, one bit set in each per key.
const BLOOM_BLOCK_BYTES: usize = 32;

/// The block a filter checks for `hash`: the hash's high 32 bits scaled onto the block count.
/// It mirrors sbbf-rs 0.2, which does not expose it; should that ever change, only the prefetch
/// misses (a test checks the mirror).
fn bloom_block(filter: &Bloom, hash: u64) -> usize {
    let blocks = (filter.as_bytes().len() / BLOOM_BLOCK_BYTES) as u64;
    (((hash >> 32) * blocks) >> 32) as usize
}

/// Asks the CPU to start loading the block of `filter` a check of `hash` reads. A hint.
fn prefetch_block(filter: &Bloom, hash: u64) {
    if let Some(byte) = filter
        .as_bytes()
        .get(bloom_block(filter, hash) * BLOOM_BLOCK_BYTES)
    {
        crate::probing::prefetch_line(byte);
    }
}

fn new_bloom(entries: usize) -> Bloom {
    sbbf_rs_safe::Filter::new(BLOOM_BITS_PER_KEY, entries.max(1))
}

/// IPv4 and IPv4-mapped IPv6 addresses hash the same.
pub fn ip_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Every fraud list by version, and the current one. Restores look up the version their
/// checkpoint names; barriers stage the current one.
#[derive(Debug, Clone)]
pub struct FraudRegistry {
    lists: BTreeMap<FraudListVersion, Arc<FraudList>>,
    current: FraudListVersion,
}

impl Default for FraudRegistry {
    fn default() -> FraudRegistry {
        FraudRegistry::new()
    }
}

impl FraudRegistry {
    /// The empty list, version 0, current.
    pub fn new() -> FraudRegistry {
        let mut lists = BTreeMap::new();
        lists.insert(FraudListVersion(0), Arc::new(FraudList::empty()));
        FraudRegistry {
            lists,
            current: FraudListVersion(0),
        }
    }

    /// Registers a list and makes it current. The same version with different content is
    /// refused. Whichever version the operator publishes is current, lower ones too: a version
    /// names content, not an order.
    pub fn register(&mut self, list: FraudList) -> Result<Arc<FraudList>, FraudListError> {
        let list = self.insert_known(list)?;
        self.current = list.version;
        Ok(list)
    }

    /// Registers a list without making it current: one an old checkpoint names.
    pub fn insert_known(&mut self, list: FraudList) -> Result<Arc<FraudList>, FraudListError> {
        if let Some(existing) = self.lists.get(&list.version) {
            if existing.checksum != list.checksum {
                return Err(FraudListError::VersionReused {
                    version: list.version,
                    registered: existing.checksum,
                    new: list.checksum,
                });
            }
            return Ok(existing.clone());
        }
        let list = Arc::new(list);
        self.lists.insert(list.version, list.clone());
        Ok(list)
    }

    pub fn get(&self, version: FraudListVersion) -> Option<Arc<FraudList>> {
        self.lists.get(&version).cloned()
    }

    /// The list new epochs use.
    pub fn current(&self) -> Arc<FraudList> {
        self.lists[&self.current].clone()
    }
}

/// The fraud decision for one unique click: the list first, then the rate rule. Every unique
/// click counts toward its IP's rate, whatever the list says. The aggregator and the billing
/// job both decide through this one function.
pub fn judge(
    list: &FraudList,
    rate: &mut RateRule,
    ip: IpAddr,
    user_agent: &str,
    event_time_ms: u64,
) -> FraudVerdict {
    let within_rate = rate.admit(ip, event_time_ms);
    decide(list.check(ip, user_agent), within_rate)
}

/// The rule `judge` applies: a listed click is fraud for its listing, else a click over the rate
/// is. The aggregator, which computes its inputs ahead from prefetched hashes, decides here too.
pub(crate) fn decide(listed: FraudVerdict, within_rate: bool) -> FraudVerdict {
    match listed {
        FraudVerdict::Clean if !within_rate => FraudVerdict::RateExceeded,
        verdict => verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "# test list\nversion 4\nip 203.0.113.9\nip 2001:db8::7\nua EvilBot/2.0\n";

    #[test]
    fn parses_and_flags_listed_ips_and_agents() {
        let list = FraudList::parse(LIST).unwrap();
        assert_eq!(list.version(), FraudListVersion(4));
        assert_eq!(list.entries(), 3);
        assert_eq!(
            list.check("203.0.113.9".parse().unwrap(), "Mozilla"),
            FraudVerdict::KnownBadIp
        );
        assert_eq!(
            list.check("::ffff:203.0.113.9".parse().unwrap(), "x"),
            FraudVerdict::KnownBadIp
        );
        assert_eq!(
            list.check("198.51.100.1".parse().unwrap(), "EvilBot/2.0"),
            FraudVerdict::KnownBadUserAgent
        );
        assert_eq!(
            list.check("198.51.100.1".parse().unwrap(), "Mozilla"),
            FraudVerdict::Clean
        );
    }

    #[test]
    fn bad_lists_name_the_line() {
        assert_eq!(
            FraudList::parse("ip 1.2.3.4\n").unwrap_err(),
            FraudListError::MissingVersion { line: 1 }
        );
        let error = FraudList::parse("version 1\nip nope\n").unwrap_err();
        assert_eq!(error.to_string(), "line 2: \"nope\" is not an ip address");
        let error = FraudList::parse("version 1\nasn 7\n").unwrap_err();
        assert!(error.to_string().starts_with("line 2: unknown entry kind"));
    }

    #[test]
    fn a_version_cannot_be_reused_for_other_content() {
        let mut registry = FraudRegistry::new();
        registry.register(FraudList::parse(LIST).unwrap()).unwrap();
        registry.register(FraudList::parse(LIST).unwrap()).unwrap();
        let changed = LIST.replace("EvilBot", "OtherBot");
        let error = registry
            .register(FraudList::parse(&changed).unwrap())
            .unwrap_err();
        assert!(matches!(error, FraudListError::VersionReused { .. }));
        assert_eq!(registry.current().version(), FraudListVersion(4));
    }

    #[test]
    fn a_known_list_is_found_by_version_without_becoming_current() {
        let mut registry = FraudRegistry::new();
        registry.register(FraudList::parse(LIST).unwrap()).unwrap();
        let older = FraudList::parse("version 2\nip 192.0.2.1\n").unwrap();
        registry.insert_known(older).unwrap();
        assert_eq!(registry.current().version(), FraudListVersion(4));
        assert!(registry.get(FraudListVersion(2)).is_some());
        let rolled_back = FraudList::parse("version 2\nip 192.0.2.1\n").unwrap();
        registry.register(rolled_back).unwrap();
        assert_eq!(registry.current().version(), FraudListVersion(2));
    }

    /// The prefetch names the filter's own block: a key inserted into an empty filter sets
    /// bits in exactly the block `bloom_block` names, and nowhere else.
    #[test]
    fn the_prefetched_block_is_the_filters_own() {
        for n in 0..2000u64 {
            let hash = BLOOM_HASHER.hash_one(n);
            let mut filter = new_bloom(1000);
            filter.insert_hash(hash);
            let touched: Vec<usize> = filter
                .as_bytes()
                .chunks(BLOOM_BLOCK_BYTES)
                .enumerate()
                .filter(|(_, block)| block.iter().any(|&byte| byte != 0))
                .map(|(index, _)| index)
                .collect();
            assert_eq!(touched, vec![bloom_block(&filter, hash)], "hash {hash:#x}");
            assert!(filter.contains_hash(hash));
        }
    }

    /// The filters hold the false-positive rate `limits` promises, measured on addresses that
    /// are not listed: a filter sized too small, or hashing badly, flags more clean clicks.
    #[test]
    fn clean_addresses_are_flagged_at_most_at_the_promised_rate() {
        let listed = 200_000u32;
        let text: String = (0..listed)
            .map(|n| format!("ip 10.{}.{}.{}\n", n >> 16, (n >> 8) & 0xff, n & 0xff))
            .collect();
        let list = FraudList::parse(&format!("version 1\n{text}")).unwrap();
        let trials = 1_000_000u32;
        let flagged = (0..trials)
            .filter(|&n| {
                let ip = IpAddr::from([172, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
                list.check(ip, "Mozilla") != FraudVerdict::Clean
            })
            .count();
        let rate = flagged as f64 / f64::from(trials);
        assert!(
            rate <= limits::FRAUD_BLOOM_FALSE_POSITIVE_RATE * 1.5,
            "false-positive rate {rate} over the promised {}",
            limits::FRAUD_BLOOM_FALSE_POSITIVE_RATE
        );
    }
}
