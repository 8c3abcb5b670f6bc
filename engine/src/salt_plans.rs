//! The salt table's durable copy: one blob per salted campaign in the checkpoint blob store.
//!
//! A salt plan is routing state that must outlive the ingest node that made it. After a restart,
//! a resend of a click that was routed to a salted sub-key must be routed there again, or the
//! partition that dedups it never sees it and the fast path counts it twice. So a plan is
//! written here *before* any click is routed by it (`IngestCore` holds it pending until then),
//! and a starting ingest node loads every plan before it accepts a click.
//!
//! Each plan is a small JSON document, `salt-plans/campaign-<id>.json`, readable by an operator:
//! `{"format_version":1,"campaign_id":7,"salts":4,"from_event_time_ms":1700000000000}`, plus
//! `"shared":true` when ingest nodes share plans (the start then also counts from the store's
//! timestamp, for every reader, whatever its own config). One blob
//! per campaign because plans are only ever added, never changed: a put never rewrites another
//! campaign's plan, and a lost race between two writers of the same plan is harmless.
//!
//! A shared plan starts at `max(proposed start, store stamp rounded up to the second +
//! SHARED_PLAN_START_AFTER_STORE_MS)`, which every reader computes from the blob's
//! `BlobStore::modified_ms` (S3's Last-Modified, a file's mtime). So a put that took long (store
//! down, slow network) still starts after every event time a node accepted while it could not
//! see the plan. The delay is `EVENT_TIME_FUTURE_MS_MAX` (the most a node accepts ahead of its
//! clock), plus `SALT_PLAN_SHARED_DELAY_MS` (time for every node to read the plan), plus
//! `BLOB_VISIBLE_AFTER_STAMP_MS_MAX` (a store that stamps a blob before readers see it). The
//! first reader keeps the computed start in a create-only `salt-plans/campaign-<id>.start` blob
//! that every reader then takes, so a copy of the store (new timestamps) never moves a plan.
//! The rule assumes node and store clocks within `NODE_CLOCK_SKEW_MS_MAX` of each other and a
//! store that honours create-only puts (S3 and local directories do).

use std::sync::Arc;

use adclick_core::ids::CampaignId;
use adclick_core::limits::{EVENT_TIME_FUTURE_MS_MAX, SALTS_MAX};
use adclick_core::salt::{SaltPlan, SaltTable};
use serde::{Deserialize, Serialize};

use crate::seams::{BlobError, BlobStore};

/// Where plans live in the blob store.
pub const SALT_PLANS_PREFIX: &str = "salt-plans/";

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SaltPlansError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("salt plan {key}: {problem}")]
    Invalid { key: String, problem: String },
}

/// One plan as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredPlan {
    format_version: u32,
    campaign_id: u64,
    salts: u16,
    from_event_time_ms: u64,
    /// Written by a node sharing plans: the plan starts no earlier than the store's timestamp
    /// plus `SHARED_PLAN_START_AFTER_STORE_MS`. Recorded in the plan, not taken from the
    /// reader's config, so that changing `engine.ingest_nodes` never moves an existing plan.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    shared: bool,
}

/// How many ingest nodes make and follow salt plans.
/// In config files: `engine.ingest_nodes = "one"` or `"several"` (the default, safe for both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlanSharing {
    /// This is the only ingest node: a plan can start 2 s after the campaign turns hot.
    #[serde(rename = "one")]
    OneNode,
    /// Several ingest nodes share the plans: a plan starts about 6 minutes after the store
    /// took it, past every event time any node can have accepted before reading it.
    #[default]
    #[serde(rename = "several")]
    Shared,
}

/// The salt plans in a blob store.
#[derive(Clone)]
pub struct SaltPlanStore {
    blobs: Arc<dyn BlobStore>,
    sharing: PlanSharing,
}

pub fn plan_key(campaign: CampaignId) -> String {
    format!("{SALT_PLANS_PREFIX}campaign-{}.json", campaign.0)
}

/// Where a shared plan's start, once computed, is kept: `salt-plans/campaign-<id>.start`.
fn start_key(campaign: CampaignId) -> String {
    format!("{SALT_PLANS_PREFIX}campaign-{}.start", campaign.0)
}

/// The campaign whose plan `key` is, if it is exactly a plan's key.
fn campaign_of_key(key: &str) -> Option<CampaignId> {
    let id = key
        .strip_prefix(SALT_PLANS_PREFIX)?
        .strip_prefix("campaign-")?
        .strip_suffix(".json")?;
    let campaign = CampaignId(id.parse().ok()?);
    (plan_key(campaign) == key).then_some(campaign)
}

/// A shared plan's start as first computed, so that it never moves again (a copy of the store
/// to another bucket or disk changes every blob's timestamp).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredStart {
    from_event_time_ms: u64,
}

impl SaltPlanStore {
    pub fn new(blobs: Arc<dyn BlobStore>, sharing: PlanSharing) -> SaltPlanStore {
        SaltPlanStore { blobs, sharing }
    }

    pub fn sharing(&self) -> PlanSharing {
        self.sharing
    }

    /// Stores a plan for a campaign that has none, and returns the plan in force: this one, or
    /// the one another ingest node stored first (the put is create-only, so two nodes that
    /// planned the same campaign at once agree on the first). Returns once the store has it.
    pub async fn claim(
        &self,
        campaign: CampaignId,
        plan: SaltPlan,
    ) -> Result<SaltPlan, SaltPlansError> {
        let stored = StoredPlan {
            format_version: FORMAT_VERSION,
            campaign_id: campaign.0,
            salts: plan.salts,
            from_event_time_ms: plan.from_event_time_ms,
            shared: self.sharing == PlanSharing::Shared,
        };
        let bytes = serde_json::to_vec(&stored).expect("a plan serializes");
        let key = plan_key(campaign);
        self.blobs.put_if_absent(&key, bytes).await?;
        match self.read(&key).await? {
            Some((_, in_force)) => Ok(in_force),
            None => Err(SaltPlansError::Invalid {
                key,
                problem: "gone right after a create-only put".into(),
            }),
        }
    }

    /// Every stored plan. A plan that cannot be read is an error, not a gap: routing without it
    /// could send a resend somewhere its original is not.
    pub async fn load(&self) -> Result<SaltTable, SaltPlansError> {
        self.load_new(&SaltTable::default()).await
    }

    /// The stored plans of campaigns `known` has no plan for (plans never change, so a poll
    /// reads only the new ones).
    pub async fn load_new(&self, known: &SaltTable) -> Result<SaltTable, SaltPlansError> {
        let mut table = SaltTable::default();
        for key in self.blobs.list(SALT_PLANS_PREFIX).await? {
            if key.ends_with(".start")
                || campaign_of_key(&key).is_some_and(|campaign| known.plan(campaign).is_some())
            {
                continue;
            }
            let Some((campaign, plan)) = self.read(&key).await? else {
                // Listed, then gone: only an operator deletes plans, and then routing is
                // theirs to answer for; nothing here can bring it back.
                return Err(SaltPlansError::Invalid {
                    key,
                    problem: "listed but no longer present".into(),
                });
            };
            table.insert(campaign, plan);
        }
        Ok(table)
    }

    /// One plan as it routes. Shared plans start no earlier than
    /// `SHARED_PLAN_START_AFTER_STORE_MS` past the moment the store took them (its timestamp,
    /// rounded up to the second), however long the put took: a node that read the plans just
    /// before that moment refuses every event time from there on, so no node can have routed
    /// a click in a shared plan's range without knowing the plan. The first reader keeps the
    /// start it computed in a create-only `.start` blob, and every reader takes it from there,
    /// so all nodes agree for good.
    async fn read(&self, key: &str) -> Result<Option<(CampaignId, SaltPlan)>, SaltPlansError> {
        let Some(bytes) = self.blobs.get(key).await? else {
            return Ok(None);
        };
        let (campaign, mut plan, shared) = decode(key, &bytes)?;
        if shared {
            let start = start_key(campaign);
            if self.blobs.get(&start).await?.is_none() {
                let Some(modified_ms) = self.blobs.modified_ms(key).await? else {
                    return Ok(None);
                };
                let stored_at_ms = modified_ms.div_ceil(1_000) * 1_000;
                let computed = StoredStart {
                    from_event_time_ms: plan
                        .from_event_time_ms
                        .max(stored_at_ms + SHARED_PLAN_START_AFTER_STORE_MS),
                };
                let bytes = serde_json::to_vec(&computed).expect("a start serializes");
                self.blobs.put_if_absent(&start, bytes).await?;
            }
            let Some(bytes) = self.blobs.get(&start).await? else {
                return Err(SaltPlansError::Invalid {
                    key: start,
                    problem: "gone right after a create-only put".into(),
                });
            };
            let stored: StoredStart =
                serde_json::from_slice(&bytes).map_err(|error| SaltPlansError::Invalid {
                    key: start.clone(),
                    problem: format!("not a plan start: {error}"),
                })?;
            if stored.from_event_time_ms < plan.from_event_time_ms {
                return Err(SaltPlansError::Invalid {
                    key: start,
                    problem: format!(
                        "starts at {} ms, before its plan's {} ms",
                        stored.from_event_time_ms, plan.from_event_time_ms
                    ),
                });
            }
            plan.from_event_time_ms = stored.from_event_time_ms;
        }
        Ok(Some((campaign, plan)))
    }
}

/// How long after the store stamps a shared plan it may start: past every event time a node may
/// accept (its clock plus `EVENT_TIME_FUTURE_MS_MAX`) before its next read of the plans, plus
/// the time a store may take to make a stamped blob visible.
pub const SHARED_PLAN_START_AFTER_STORE_MS: u64 = EVENT_TIME_FUTURE_MS_MAX
    + crate::limits::SALT_PLAN_SHARED_DELAY_MS
    + crate::limits::BLOB_VISIBLE_AFTER_STAMP_MS_MAX;

/// The earliest start of a shared plan that a read of the plans beginning at `read_at_ms` did not
/// see. Such a plan became visible after the read began, so the store stamped it after
/// `read_at_ms - BLOB_VISIBLE_AFTER_STAMP_MS_MAX - NODE_CLOCK_SKEW_MS_MAX`, and it starts
/// `SHARED_PLAN_START_AFTER_STORE_MS` after its stamp. A node whose last good read began at
/// `read_at_ms` may take event times below this and must refuse the rest.
pub fn earliest_unseen_shared_start_ms(read_at_ms: u64) -> u64 {
    read_at_ms + SHARED_PLAN_START_AFTER_STORE_MS
        - crate::limits::BLOB_VISIBLE_AFTER_STAMP_MS_MAX
        - crate::limits::NODE_CLOCK_SKEW_MS_MAX
}

/// One stored plan, checked against its key, and whether it was written shared.
fn decode(key: &str, bytes: &[u8]) -> Result<(CampaignId, SaltPlan, bool), SaltPlansError> {
    let invalid = |problem: String| SaltPlansError::Invalid {
        key: key.to_owned(),
        problem,
    };
    let stored: StoredPlan = serde_json::from_slice(bytes)
        .map_err(|error| invalid(format!("not a salt plan: {error}")))?;
    if stored.format_version != FORMAT_VERSION {
        return Err(invalid(format!(
            "format_version {} is not the supported {FORMAT_VERSION}",
            stored.format_version
        )));
    }
    let campaign = CampaignId(stored.campaign_id);
    if key != plan_key(campaign) {
        return Err(invalid(format!(
            "holds campaign {}, whose plan belongs at {}",
            stored.campaign_id,
            plan_key(campaign)
        )));
    }
    if !(2..=SALTS_MAX).contains(&stored.salts) {
        return Err(invalid(format!(
            "salts = {} is outside 2..={SALTS_MAX}",
            stored.salts
        )));
    }
    let plan = SaltPlan {
        salts: stored.salts,
        from_event_time_ms: stored.from_event_time_ms,
    };
    Ok((campaign, plan, stored.shared))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::MemoryBlobStore;

    fn plan(salts: u16, from_event_time_ms: u64) -> SaltPlan {
        SaltPlan {
            salts,
            from_event_time_ms,
        }
    }

    #[tokio::test]
    async fn saved_plans_load_back_as_the_same_table() {
        let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
        let store = SaltPlanStore::new(blobs.clone(), PlanSharing::OneNode);
        assert!(store.load().await.unwrap().is_empty());
        assert_eq!(
            store.claim(CampaignId(7), plan(4, 1_000)).await.unwrap(),
            plan(4, 1_000)
        );
        assert_eq!(
            store.claim(CampaignId(12), plan(8, 2_000)).await.unwrap(),
            plan(8, 2_000)
        );
        assert_eq!(
            store.claim(CampaignId(7), plan(2, 5_000)).await.unwrap(),
            plan(4, 1_000),
            "a second claim gets the plan in force"
        );
        let table = store.load().await.unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table.plan(CampaignId(7)), Some(plan(4, 1_000)));
        assert_eq!(table.plan(CampaignId(12)), Some(plan(8, 2_000)));
        let text =
            String::from_utf8(blobs.get(&plan_key(CampaignId(7))).await.unwrap().unwrap()).unwrap();
        assert_eq!(
            text,
            r#"{"format_version":1,"campaign_id":7,"salts":4,"from_event_time_ms":1000}"#
        );
    }

    /// A shared plan whose put took long (the store down, a slow network) must not start in
    /// event times that nodes which read the plans meanwhile, without it, have accepted: it
    /// starts `SHARED_PLAN_START_AFTER_STORE_MS` after the store took it, rounded up to the
    /// second, for every reader alike.
    #[tokio::test]
    async fn a_shared_plan_starts_after_the_store_took_it() {
        let clock = Arc::new(crate::clock::ManualClock::new(1_700_000_000_000));
        let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::with_clock(clock.clone()));
        let proposed = plan(4, 1_700_000_000_000 + SHARED_PLAN_START_AFTER_STORE_MS);
        clock.advance(42_500);
        let shared = SaltPlanStore::new(blobs.clone(), PlanSharing::Shared);
        let in_force = shared.claim(CampaignId(7), proposed).await.unwrap();
        let expected = 1_700_000_043_000 + SHARED_PLAN_START_AFTER_STORE_MS;
        assert_eq!(in_force, plan(4, expected));
        assert_eq!(
            shared.load().await.unwrap().plan(CampaignId(7)),
            Some(in_force)
        );
        // A copy of the store gives the blob a new timestamp; the kept start does not move.
        let copied = blobs.get(&plan_key(CampaignId(7))).await.unwrap().unwrap();
        clock.advance(3_600_000);
        blobs.put(&plan_key(CampaignId(7)), copied).await.unwrap();
        assert_eq!(
            shared.load().await.unwrap().plan(CampaignId(7)),
            Some(in_force)
        );
        let one_node = SaltPlanStore::new(blobs.clone(), PlanSharing::OneNode);
        assert_eq!(
            one_node.load().await.unwrap().plan(CampaignId(7)),
            Some(in_force),
            "the plan says it was shared: a reader configured otherwise starts it alike"
        );
        // A single node's plan starts where it was proposed, for every reader.
        let proposed_12 = plan(2, 1_700_000_000_500);
        assert_eq!(
            one_node.claim(CampaignId(12), proposed_12).await.unwrap(),
            proposed_12
        );
        assert_eq!(
            shared.load().await.unwrap().plan(CampaignId(12)),
            Some(proposed_12)
        );
    }

    #[tokio::test]
    async fn an_unreadable_plan_is_an_error_that_names_its_key() {
        let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
        let store = SaltPlanStore::new(blobs.clone(), PlanSharing::OneNode);
        for (bytes, expected) in [
            (&b"{\"format_version\":1"[..], "not a salt plan"),
            (
                br#"{"format_version":2,"campaign_id":7,"salts":4,"from_event_time_ms":1}"#,
                "format_version 2 is not the supported 1",
            ),
            (
                br#"{"format_version":1,"campaign_id":8,"salts":4,"from_event_time_ms":1}"#,
                "holds campaign 8, whose plan belongs at salt-plans/campaign-8.json",
            ),
            (
                br#"{"format_version":1,"campaign_id":7,"salts":9,"from_event_time_ms":1}"#,
                "salts = 9 is outside 2..=8",
            ),
        ] {
            blobs
                .put(&plan_key(CampaignId(7)), bytes.to_vec())
                .await
                .unwrap();
            let error = store.load().await.unwrap_err().to_string();
            assert!(
                error.starts_with("salt plan salt-plans/campaign-7.json: ")
                    && error.contains(expected),
                "{error}"
            );
        }
    }
}
