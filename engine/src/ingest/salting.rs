//! Hot-campaign salting at ingest: routing by the salt table, planning new splits, and keeping
//! the plans durable and, across several ingest nodes, shared.
//!
//! The one rule (core's `salt` module): a resend must be routed as its original was. A plan
//! therefore starts after every event time any ingest node may have accepted, and routes nothing
//! until it is stored:
//!
//! - **One ingest node** (`PlanSharing::OneNode`): the plan starts
//!   `SALT_PLAN_DURABILITY_MARGIN_MS` past every event time this node accepted. Until the store
//!   has it, clicks of the campaign in its range are refused whole as busy.
//! - **Several ingest nodes** (`PlanSharing::Shared`): a node cannot see what the others
//!   accepted, only that no node accepts an event time past its clock plus
//!   `EVENT_TIME_FUTURE_MS_MAX`. A plan starts `SHARED_PLAN_START_AFTER_STORE_MS` after the
//!   store stamped it, however long the put took. Every node reads the plans every
//!   `SALT_PLAN_POLL_MS`, and refuses a click that a plan made since its last successful read
//!   could cover (`earliest_unseen_shared_start_ms`: only after the store has been unreachable
//!   for about `SALT_PLAN_SHARED_DELAY_MS - NODE_CLOCK_SKEW_MS_MAX`, for clicks at the future
//!   edge). Both rules live in `salt_plans`. Two nodes that plan the same campaign at once agree
//!   on the first stored plan (a create-only put).
//!
//! A restarted node keeps the table (durable state) and plans only past
//! `SaltingStart::accepted_event_time_floor_ms`: its start plus `EVENT_TIME_FUTURE_MS_MAX`, the
//! most its predecessor can have accepted (`adclick serve` uses 0 when every partition of the
//! log is empty). The detector sees every click under the lock that routes it, so a plan's start
//! is past every event time routed before it. Plans route even with detection off: a plan never
//! goes away.
//!
//! Refusals are whole requests, answered busy with a retry hint (503 with Retry-After over
//! HTTP): `SaltPlanPending` while a plan that covers a click of the request is not stored yet,
//! `SaltPlansUnread` (shared plans) for a click a plan made since the last good read could
//! cover. The plan writer retries each put with back-off until the store has it. It is a task
//! of this node and dies with it, so a crashed node stops retrying; only a put already in flight
//! can land after the successor loaded the plans. Shared plans make that harmless (the start
//! counts from the store's stamp); with one node such a late plan goes unnoticed until the next
//! restart routes by it (ARCHITECTURE.md, "Known gaps").

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use adclick_core::event::ClickEvent;
use adclick_core::ids::{CampaignId, Salt};
use adclick_core::salt::{HotCampaignDetector, SaltPlan, SaltTable};
use tokio::sync::mpsc;

use super::IngestError;
use crate::limits;
pub use crate::salt_plans::PlanSharing;
use crate::salt_plans::{
    SHARED_PLAN_START_AFTER_STORE_MS, SaltPlanStore, earliest_unseen_shared_start_ms,
};
use crate::seams::Clock;

/// The salt table, shared by every incarnation of an ingest node (it must outlive a crash: a
/// resend after a restart must be routed as the original was).
pub type SharedSaltTable = Arc<Mutex<SaltTable>>;

/// Where plans are stored before they route anything (the store knows how they are shared).
#[derive(Clone)]
pub struct DurablePlans {
    pub store: SaltPlanStore,
    /// When the plans in `SaltingStart::table` were read from the store (clock ms; when that
    /// read began).
    pub loaded_at_ms: u64,
}

/// How a (re)started ingest node salts hot campaigns.
#[derive(Clone, Default)]
pub struct SaltingStart {
    /// The plans made so far. Routing follows them even when detection is off
    /// (`hot_campaigns = None`): a plan never goes away.
    pub table: SharedSaltTable,
    /// Every click accepted before this start (by an earlier incarnation) has an event time
    /// below this: 0 for a fresh log, start time plus the largest allowed clock skew otherwise.
    pub accepted_event_time_floor_ms: u64,
    /// Where new plans are made durable before any click is routed by them. `None`: the table
    /// itself is the durable copy (it outlives the node) and this is the only ingest node.
    pub durable: Option<DurablePlans>,
}

pub(super) struct Salting {
    /// `None` when detection is off and only existing plans route.
    detector: Option<HotCampaignDetector>,
    table: SharedSaltTable,
    /// New plans go to the plan writer, a task of this node (so it dies with the node, and a
    /// crashed node's plan is never stored after its successor has loaded the plans).
    plans_to_store: Option<mpsc::UnboundedSender<(CampaignId, SaltPlan)>>,
    sharing: PlanSharing,
    /// Plans being stored. Until one is, a click of its campaign in its range is refused: routed
    /// unsalted it would contradict the plan once stored, routed salted it would be lost to a
    /// crash before the store.
    pending: BTreeMap<CampaignId, SaltPlan>,
    /// Shared plans: when the last successful read of the plans began (clock ms).
    plans_read_at_ms: u64,
}

/// The tasks a salting ingest core runs beside its flusher.
pub(super) struct SaltingTasks {
    writer: Option<(
        SaltPlanStore,
        mpsc::UnboundedReceiver<(CampaignId, SaltPlan)>,
    )>,
    poller: Option<SaltPlanStore>,
}

impl Salting {
    /// The salting state, or `None` when there is nothing to salt by and nothing to detect.
    pub(super) fn new(
        start: SaltingStart,
        detector: Option<HotCampaignDetector>,
    ) -> Option<(Arc<Mutex<Salting>>, SaltingTasks)> {
        let has_plans = !start.table.lock().expect("salt table lock").is_empty();
        let shared = start
            .durable
            .as_ref()
            .is_some_and(|durable| durable.store.sharing() == PlanSharing::Shared);
        // With shared plans, another node's plans route here even with detection off.
        if detector.is_none() && !has_plans && !shared {
            return None;
        }
        let mut tasks = SaltingTasks {
            writer: None,
            poller: None,
        };
        let (plans_to_store, sharing, plans_read_at_ms) = match start.durable {
            Some(durable) => {
                let (sender, receiver) = mpsc::unbounded_channel();
                tasks.writer = Some((durable.store.clone(), receiver));
                let sharing = durable.store.sharing();
                if sharing == PlanSharing::Shared {
                    tasks.poller = Some(durable.store);
                }
                (Some(sender), sharing, durable.loaded_at_ms)
            }
            None => (None, PlanSharing::OneNode, 0),
        };
        let salting = Salting {
            detector,
            table: start.table,
            plans_to_store,
            sharing,
            pending: BTreeMap::new(),
            plans_read_at_ms,
        };
        Some((Arc::new(Mutex::new(salting)), tasks))
    }

    /// Routes every event of a request (calling `route` with its salt) and plans new splits,
    /// or refuses the whole request and routes nothing.
    pub(super) fn route<'a>(
        &mut self,
        events: &[&'a ClickEvent],
        now_ms: u64,
        mut route: impl FnMut(&'a ClickEvent, Salt),
    ) -> Result<(), IngestError> {
        if let Some(error) = self.refusal(events) {
            return Err(error);
        }
        let mut table = self.table.lock().expect("salt table lock");
        for event in events {
            if let Some(detector) = self.detector.as_mut() {
                detector.observe(event.campaign_id, event.event_time_ms.0);
            }
            route(
                event,
                table.salt_for(event.campaign_id, event.click_id, event.event_time_ms.0),
            );
        }
        let Some(detector) = self.detector.as_mut() else {
            return Ok(());
        };
        let (margin_ms, not_before_ms) = match (&self.plans_to_store, self.sharing) {
            (None, _) => (0, 0),
            (Some(_), PlanSharing::OneNode) => (limits::SALT_PLAN_DURABILITY_MARGIN_MS, 0),
            // The store will stamp the plan at `now_ms` or later, and its start counts from
            // there (`salt_plans`): propose that start, so the pending range is the final one.
            (Some(_), PlanSharing::Shared) => (0, now_ms + SHARED_PLAN_START_AFTER_STORE_MS),
        };
        let pending = &mut self.pending;
        let planned = |campaign| table.plan(campaign).is_some() || pending.contains_key(&campaign);
        for (campaign, plan) in detector.propose(now_ms, margin_ms, not_before_ms, planned) {
            tracing::info!(
                campaign = campaign.0,
                salts = plan.salts,
                from_event_time_ms = plan.from_event_time_ms,
                stored_first = self.plans_to_store.is_some(),
                "hot campaign: splitting its key"
            );
            match &self.plans_to_store {
                None => {
                    table.insert(campaign, plan);
                }
                Some(writer) => {
                    pending.insert(campaign, plan);
                    // The writer lives as long as the ingest core, which holds this sender.
                    let _ = writer.send((campaign, plan));
                }
            }
        }
        Ok(())
    }

    /// Why a request must be refused whole, if it must: a click in the range of a plan not yet
    /// stored, or (shared plans) a click a plan made since the last read could cover.
    fn refusal(&self, events: &[&ClickEvent]) -> Option<IngestError> {
        // `sharing` is `Shared` only with a store to share through.
        if self.sharing == PlanSharing::Shared {
            let unseen_plans_from_ms = earliest_unseen_shared_start_ms(self.plans_read_at_ms);
            let stale = events
                .iter()
                .filter(|event| event.event_time_ms.0 >= unseen_plans_from_ms)
                .count();
            if stale > 0 {
                return Some(IngestError::SaltPlansUnread {
                    read_at_ms: self.plans_read_at_ms,
                    event_time_ms_max: unseen_plans_from_ms - 1,
                    events: stale,
                    retry_after_ms: limits::BUSY_RETRY_AFTER_MS,
                });
            }
        }
        self.pending_conflict(events)
    }

    /// The request's first campaign with events in the range of a plan not yet stored.
    fn pending_conflict(&self, events: &[&ClickEvent]) -> Option<IngestError> {
        if self.pending.is_empty() {
            return None;
        }
        let mut conflict: Option<(CampaignId, SaltPlan, usize)> = None;
        for event in events {
            if let Some(plan) = self.pending.get(&event.campaign_id)
                && event.event_time_ms.0 >= plan.from_event_time_ms
            {
                match &mut conflict {
                    Some((campaign, _, count)) if *campaign == event.campaign_id => *count += 1,
                    Some(_) => {}
                    None => conflict = Some((event.campaign_id, *plan, 1)),
                }
            }
        }
        conflict.map(|(campaign, plan, events)| IngestError::SaltPlanPending {
            campaign: campaign.0,
            salts: plan.salts,
            from_event_time_ms: plan.from_event_time_ms,
            events,
            retry_after_ms: limits::BUSY_RETRY_AFTER_MS,
        })
    }

    pub(super) fn pending(&self) -> Vec<(CampaignId, SaltPlan)> {
        self.pending.iter().map(|(c, p)| (*c, *p)).collect()
    }

    /// A plan the store has: it routes from now on, and is no longer pending.
    fn adopt(&mut self, campaign: CampaignId, plan: SaltPlan) {
        if let Some(ours) = self.pending.remove(&campaign)
            && ours != plan
        {
            // Another node's plan, stored first, or ours starting later: a shared plan starts
            // from when the store took it.
            tracing::info!(
                campaign = campaign.0,
                proposed_from_ms = ours.from_event_time_ms,
                from_event_time_ms = plan.from_event_time_ms,
                salts = plan.salts,
                "following the stored plan"
            );
        }
        let accepted_max_ms = self
            .detector
            .as_ref()
            .map_or(0, HotCampaignDetector::max_accepted_event_time_ms);
        let mut table = self.table.lock().expect("salt table lock");
        match table.plan(campaign) {
            None => {
                if plan.from_event_time_ms <= accepted_max_ms {
                    // Only clocks apart by more than NODE_CLOCK_SKEW_MS_MAX get here: clicks of
                    // this campaign this node routed unsalted may fall in the plan's range.
                    tracing::error!(
                        campaign = campaign.0,
                        from_event_time_ms = plan.from_event_time_ms,
                        accepted_max_ms,
                        "a salt plan starts before event times this node already accepted; \
                         resends of those clicks may be counted twice on the fast path"
                    );
                }
                table.insert(campaign, plan);
            }
            Some(known) if known != plan => tracing::error!(
                campaign = campaign.0,
                ?known,
                stored = ?plan,
                "the stored salt plan differs from the one routing here; keeping this one"
            ),
            Some(_) => {}
        }
    }
}

impl SaltingTasks {
    /// Spawns the plan writer and (shared plans) the plan poller on the current runtime, so
    /// both die with the node. They end when the ingest core is dropped.
    pub(super) fn spawn(self, salting: &Arc<Mutex<Salting>>, clock: Arc<dyn Clock>) {
        if let Some((store, receiver)) = self.writer {
            tokio::spawn(run_plan_writer(Arc::downgrade(salting), store, receiver));
        }
        if let Some(store) = self.poller {
            tokio::spawn(run_plan_poller(Arc::downgrade(salting), store, clock));
        }
    }
}

/// Stores each new plan, retrying until the blob store has it, then routes by the plan in force
/// (ours, or one another node stored first). Until then the plan's range of its campaign is
/// refused, the safe state to stay in for as long as the store is down.
async fn run_plan_writer(
    salting: Weak<Mutex<Salting>>,
    store: SaltPlanStore,
    mut plans: mpsc::UnboundedReceiver<(CampaignId, SaltPlan)>,
) {
    while let Some((campaign, plan)) = plans.recv().await {
        let mut backoff_ms = 50;
        let in_force = loop {
            match store.claim(campaign, plan).await {
                Ok(in_force) => break in_force,
                Err(error) => {
                    tracing::warn!(campaign = campaign.0, %error, "could not store a salt plan, retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(backoff_ms)).await;
                    backoff_ms = (backoff_ms * 2).min(5_000);
                }
            }
        };
        let Some(salting) = salting.upgrade() else {
            return;
        };
        salting
            .lock()
            .expect("salting lock")
            .adopt(campaign, in_force);
        tracing::info!(campaign = campaign.0, "salt plan stored; routing by it");
    }
}

/// Shared plans: reads every plan every `SALT_PLAN_POLL_MS` and routes by the new ones.
async fn run_plan_poller(
    salting: Weak<Mutex<Salting>>,
    store: SaltPlanStore,
    clock: Arc<dyn Clock>,
) {
    let mut failing = false;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(limits::SALT_PLAN_POLL_MS)).await;
        let known = {
            let Some(salting) = salting.upgrade() else {
                return;
            };
            let salting = salting.lock().expect("salting lock");
            let table = salting.table.lock().expect("salt table lock");
            table.clone()
        };
        let read_at_ms = clock.now_ms();
        let loaded = store.load_new(&known).await;
        // Not held across the read: a dropped core's state goes at once.
        let Some(salting) = salting.upgrade() else {
            return;
        };
        match loaded {
            Ok(table) => {
                if failing {
                    tracing::info!("salt plans readable again");
                    failing = false;
                }
                let mut salting = salting.lock().expect("salting lock");
                for (campaign, plan) in table.plans() {
                    salting.adopt(campaign, plan);
                }
                salting.plans_read_at_ms = salting.plans_read_at_ms.max(read_at_ms);
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "cannot read the salt plans; clicks far enough ahead will be refused until they can be read");
                    failing = true;
                }
            }
        }
    }
}
