//! Hot-campaign salting: a viral campaign's key is split into K salted sub-keys so its load
//! spreads over partitions, while every count stays exact.
//!
//! Exactness rests on one rule (DESIGN.md, "salting vs dedup"): a resent click must land on the
//! same partition as the original, or per-partition dedup cannot see it. So the salt is a pure
//! function of the click (`click_id`, `event_time_ms`) and of a table that only ever grows:
//!
//! - a plan salts a campaign only for event times from `from_event_time_ms` on, and
//! - a plan is installed only while no click of that event time or later has been accepted, so
//!   every click that could be resent was routed under the same plan it will be routed by again.
//!
//! The detector picks campaigns whose share of recent traffic is above a threshold with the
//! Space-Saving algorithm (Metwally et al.), which keeps `ceil(2 / share)` counters and never
//! misses an item above the share.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{CampaignId, ClickId, Salt};

/// How one campaign is split: into `salts` sub-keys, for event times from `from_event_time_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaltPlan {
    pub salts: u16,
    pub from_event_time_ms: u64,
}

/// Every campaign's plan. Plans are never removed or changed: un-salting has the same hazard as
/// salting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaltTable {
    plans: BTreeMap<CampaignId, SaltPlan>,
}

/// The salt of a click of a campaign split into `salts`: a fixed hash of its id.
pub fn salt_of_click(click_id: ClickId, salts: u16) -> Salt {
    debug_assert!(salts > 0);
    let folded = (click_id.0 as u64) ^ ((click_id.0 >> 64) as u64);
    // Fibonacci hashing: client ids may be sequential, so mix before taking the remainder.
    let mixed = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    Salt((mixed % u64::from(salts)) as u16)
}

impl SaltTable {
    pub fn salt_for(&self, campaign: CampaignId, click_id: ClickId, event_time_ms: u64) -> Salt {
        match self.plans.get(&campaign) {
            Some(plan) if plan.salts > 1 && event_time_ms >= plan.from_event_time_ms => {
                salt_of_click(click_id, plan.salts)
            }
            _ => Salt(0),
        }
    }

    pub fn plan(&self, campaign: CampaignId) -> Option<SaltPlan> {
        self.plans.get(&campaign).copied()
    }

    pub fn plans(&self) -> impl Iterator<Item = (CampaignId, SaltPlan)> + '_ {
        self.plans.iter().map(|(campaign, plan)| (*campaign, *plan))
    }

    pub fn len(&self) -> usize {
        self.plans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// Adds a plan for a campaign that has none. Returns false (and changes nothing) otherwise.
    pub fn insert(&mut self, campaign: CampaignId, plan: SaltPlan) -> bool {
        if self.plans.contains_key(&campaign) {
            return false;
        }
        self.plans.insert(campaign, plan);
        true
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HotCampaignConfig {
    /// A campaign above this share of a period's clicks is split.
    pub share_min: f64,
    /// Periods with fewer clicks decide nothing (a share of a trickle is noise).
    pub period_clicks_min: u64,
    pub salts: u16,
    /// The detection period, in processing time.
    pub period_ms: u64,
}

/// Finds campaigns above the share threshold and plans their salting.
#[derive(Clone, Debug)]
pub struct HotCampaignDetector {
    config: HotCampaignConfig,
    /// Space-Saving counters: (campaign, count). At most `capacity`.
    counters: Vec<(CampaignId, u64)>,
    capacity: usize,
    period_clicks: u64,
    period_start_ms: Option<u64>,
    /// The largest event time accepted so far, and a floor for it that covers clicks accepted
    /// before this detector existed (a restarted ingest node).
    max_event_time_ms: u64,
}

impl HotCampaignDetector {
    /// `accepted_event_time_floor_ms` bounds the event times of clicks accepted before now (by
    /// an earlier incarnation): e.g. start time plus the largest allowed clock skew.
    pub fn new(config: HotCampaignConfig, accepted_event_time_floor_ms: u64) -> Self {
        assert!(config.share_min > 0.0 && config.share_min <= 1.0);
        assert!(config.salts >= 2);
        let capacity = (2.0 / config.share_min).ceil() as usize;
        HotCampaignDetector {
            config,
            counters: Vec::with_capacity(capacity),
            capacity,
            period_clicks: 0,
            period_start_ms: None,
            max_event_time_ms: accepted_event_time_floor_ms,
        }
    }

    /// The largest event time accepted so far (or the floor it started with).
    pub fn max_accepted_event_time_ms(&self) -> u64 {
        self.max_event_time_ms
    }

    /// Counts an accepted click.
    pub fn observe(&mut self, campaign: CampaignId, event_time_ms: u64) {
        self.period_clicks += 1;
        self.max_event_time_ms = self.max_event_time_ms.max(event_time_ms);
        if let Some(counter) = self.counters.iter_mut().find(|(id, _)| *id == campaign) {
            counter.1 += 1;
        } else if self.counters.len() < self.capacity {
            self.counters.push((campaign, 1));
        } else {
            // Space-Saving: the new item replaces the smallest counter and inherits its count.
            let smallest = self
                .counters
                .iter_mut()
                .min_by_key(|(_, count)| *count)
                .expect("capacity is at least 2");
            *smallest = (campaign, smallest.1 + 1);
        }
    }

    /// At the end of a period, adds a plan for every new campaign above the share. Returns the
    /// campaigns it planned (sorted). Call with the processing time; it is a no-op mid-period.
    pub fn decide(&mut self, now_ms: u64, table: &mut SaltTable) -> Vec<CampaignId> {
        let proposed = self.propose(now_ms, 0, 0, |campaign| table.plan(campaign).is_some());
        for (campaign, plan) in &proposed {
            table.insert(*campaign, *plan);
        }
        proposed.into_iter().map(|(campaign, _)| campaign).collect()
    }

    /// At the end of a period, a plan (sorted by campaign) for every campaign above the share
    /// that `planned` says has none yet. Each starts `margin_ms` after every accepted event time
    /// (the time a caller has to make the plan durable before a click can fall in its range),
    /// and not before `not_before_ms` (past what other ingest nodes may have accepted).
    /// Call with the processing time; it is a no-op mid-period.
    pub fn propose(
        &mut self,
        now_ms: u64,
        margin_ms: u64,
        not_before_ms: u64,
        planned: impl Fn(CampaignId) -> bool,
    ) -> Vec<(CampaignId, SaltPlan)> {
        let start_ms = *self.period_start_ms.get_or_insert(now_ms);
        if now_ms < start_ms + self.config.period_ms {
            return Vec::new();
        }
        let mut proposed = Vec::new();
        if self.period_clicks >= self.config.period_clicks_min {
            let threshold = (self.config.share_min * self.period_clicks as f64).ceil() as u64;
            let plan = SaltPlan {
                salts: self.config.salts,
                // Later than every accepted click, so no click routed unsalted can be resent
                // into the salted range.
                from_event_time_ms: self
                    .max_event_time_ms
                    .saturating_add(1 + margin_ms)
                    .max(not_before_ms),
            };
            proposed = self
                .counters
                .iter()
                .filter(|(campaign, count)| *count >= threshold && !planned(*campaign))
                .map(|(campaign, _)| (*campaign, plan))
                .collect();
            proposed.sort_by_key(|(campaign, _)| *campaign);
        }
        self.counters.clear();
        self.period_clicks = 0;
        self.period_start_ms = Some(now_ms);
        proposed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HotCampaignConfig {
        HotCampaignConfig {
            share_min: 0.2,
            period_clicks_min: 100,
            salts: 4,
            period_ms: 1_000,
        }
    }

    #[test]
    fn a_campaign_above_the_share_is_salted_after_every_accepted_event_time() {
        let mut detector = HotCampaignDetector::new(config(), 0);
        let mut table = SaltTable::default();
        for n in 0..1_000u64 {
            // Campaign 7 has 30% of the clicks, the rest spread over 100 campaigns.
            let campaign = if n % 10 < 3 { 7 } else { 100 + n % 100 };
            detector.observe(CampaignId(campaign), 5_000 + n);
        }
        assert!(
            detector.decide(0, &mut table).is_empty(),
            "the first call starts a period"
        );
        assert!(detector.decide(500, &mut table).is_empty(), "mid-period");
        assert_eq!(detector.decide(1_000, &mut table), vec![CampaignId(7)]);
        let plan = table.plan(CampaignId(7)).unwrap();
        assert_eq!(plan.from_event_time_ms, 5_000 + 999 + 1);
        // Clicks before the plan's start keep salt 0 forever; later ones spread.
        let click = ClickId(12345);
        assert_eq!(table.salt_for(CampaignId(7), click, 5_999), Salt(0));
        let salts: std::collections::BTreeSet<Salt> = (1..200u128)
            .map(|id| table.salt_for(CampaignId(7), ClickId(id), 6_000))
            .collect();
        assert_eq!(salts.len(), 4, "sequential ids spread over every salt");
        assert_eq!(table.salt_for(CampaignId(100), click, 9_000), Salt(0));
    }

    #[test]
    fn plans_never_change_once_made() {
        let mut detector = HotCampaignDetector::new(config(), 0);
        let mut table = SaltTable::default();
        detector.decide(0, &mut table);
        for period in 1..=3u64 {
            for _ in 0..200 {
                detector.observe(CampaignId(7), period * 10_000);
            }
            detector.decide(period * 1_000, &mut table);
        }
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.plan(CampaignId(7)).unwrap().from_event_time_ms,
            10_001
        );
    }

    #[test]
    fn a_restarted_detector_plans_after_its_floor_and_trickles_decide_nothing() {
        let mut detector = HotCampaignDetector::new(config(), 400_000);
        let mut table = SaltTable::default();
        for _ in 0..50 {
            detector.observe(CampaignId(7), 1_000);
        }
        assert!(detector.decide(0, &mut table).is_empty());
        assert!(
            detector.decide(1_000, &mut table).is_empty(),
            "50 clicks is a trickle"
        );
        for _ in 0..500 {
            detector.observe(CampaignId(7), 1_000);
        }
        detector.decide(2_000, &mut table);
        assert_eq!(
            table.plan(CampaignId(7)).unwrap().from_event_time_ms,
            400_001
        );
    }
}
