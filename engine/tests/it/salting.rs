//! Hot-campaign salting through the ingest core with durable plans: a plan routes nothing until
//! the blob store has it, a restarted node routes a resend where its original went, and plans
//! keep routing when detection is turned off.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use adclick_core::codec;
use adclick_core::event::ClickEvent;
use adclick_core::ids::{CampaignId, PartitionId};
use adclick_core::salt::{HotCampaignConfig, SaltPlan, SaltTable};
use adclick_engine::clock::ManualClock;
use adclick_engine::embedded::{MemoryBlobStore, MemoryLog};
use adclick_engine::ingest::{
    Ack, DurablePlans, IngestConfig, IngestCore, IngestError, PlanSharing, SaltingStart,
};
use adclick_engine::salt_plans::{SaltPlanStore, plan_key};
use adclick_engine::seams::{BlobError, BlobStore, Log, read_partition};
use async_trait::async_trait;

use crate::support::click;

const PARTITIONS: u32 = 8;
const HOT: CampaignId = CampaignId(7);
const START_MS: u64 = 1_700_000_000_000;

/// A blob store whose puts fail while it is down.
#[derive(Default)]
struct FlakyBlobs {
    inner: MemoryBlobStore,
    down: AtomicBool,
    failed_calls: AtomicU64,
}

#[async_trait]
impl BlobStore for FlakyBlobs {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        self.check(key)?;
        self.inner.put(key, bytes).await
    }
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<bool, BlobError> {
        self.check(key)?;
        self.inner.put_if_absent(key, bytes).await
    }

    async fn modified_ms(&self, key: &str) -> Result<Option<u64>, BlobError> {
        self.check(key)?;
        self.inner.modified_ms(key).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        self.check(key)?;
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        self.check(prefix)?;
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.inner.delete(key).await
    }
}

impl FlakyBlobs {
    fn check(&self, key: &str) -> Result<(), BlobError> {
        if self.down.load(Ordering::SeqCst) {
            self.failed_calls.fetch_add(1, Ordering::SeqCst);
            return Err(BlobError::Unavailable {
                key: key.to_owned(),
                message: "down for the test".into(),
            });
        }
        Ok(())
    }
}

/// Each incarnation appends under a producer id of its own, as `adclick serve` asks the log for.
async fn config(log: &MemoryLog, hot_campaigns: Option<HotCampaignConfig>) -> IngestConfig {
    IngestConfig {
        hot_campaigns,
        producer_id: log.new_producer_id().await.unwrap(),
        ..IngestConfig::default()
    }
}

fn detection() -> Option<HotCampaignConfig> {
    Some(HotCampaignConfig {
        share_min: 0.2,
        period_clicks_min: 100,
        salts: 4,
        period_ms: 1_000,
    })
}

/// Where each click of `campaign` is in the log: click id → (partition, salt).
async fn placements(log: &MemoryLog, campaign: CampaignId) -> BTreeMap<u128, Vec<(u32, u16)>> {
    let mut found: BTreeMap<u128, Vec<(u32, u16)>> = BTreeMap::new();
    for partition in (0..PARTITIONS).map(PartitionId) {
        let end = log.end_offset(partition).await.unwrap();
        read_partition(log, partition, end, |_, record| {
            let view = codec::decode(record).unwrap();
            if view.campaign_id == campaign {
                found
                    .entry(view.click_id.0)
                    .or_default()
                    .push((partition.0, view.salt.0));
            }
        })
        .await
        .unwrap();
    }
    found
}

fn one_node(plans: &SaltPlanStore) -> DurablePlans {
    DurablePlans {
        store: plans.clone(),
        loaded_at_ms: START_MS,
    }
}

async fn wait_until_no_plan_is_pending(ingest: &IngestCore) {
    for _ in 0..500 {
        if ingest.pending_salt_plans().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("a salt plan is still pending after 5 s");
}

#[tokio::test]
async fn a_plan_routes_nothing_until_stored_and_a_restart_routes_resends_like_their_originals() {
    let log = Arc::new(MemoryLog::new(PARTITIONS));
    let blobs = Arc::new(FlakyBlobs::default());
    let plans = SaltPlanStore::new(blobs.clone(), PlanSharing::OneNode);
    let clock = Arc::new(ManualClock::new(START_MS));
    let (ingest, flusher) = IngestCore::start_with(
        log.clone(),
        clock.clone(),
        config(&log, detection()).await,
        SaltingStart {
            durable: Some(one_node(&plans)),
            ..SaltingStart::default()
        },
    );

    // One detection period in which campaign 7 has half the clicks, with the blob store down.
    blobs.down.store(true, Ordering::SeqCst);
    let first: Vec<ClickEvent> = (0..400u128)
        .map(|n| {
            let campaign = if n % 2 == 0 {
                HOT
            } else {
                CampaignId(100 + n as u64 % 50)
            };
            click(n + 1, campaign, START_MS + n as u64)
        })
        .collect();
    let max_event_time_ms = START_MS + 399;
    ingest.submit(&first, Ack::Durable).await.unwrap();
    clock.advance(1_000);
    ingest
        .submit(&[click(1_000, CampaignId(100), START_MS)], Ack::Durable)
        .await
        .unwrap();
    let plan = SaltPlan {
        salts: 4,
        from_event_time_ms: max_event_time_ms
            + 1
            + adclick_engine::limits::SALT_PLAN_DURABILITY_MARGIN_MS,
    };
    assert_eq!(ingest.pending_salt_plans(), vec![(HOT, plan)]);

    // Inside the margin, campaign 7 is still routed unsalted; in the plan's range it is busy,
    // whole request, nothing buffered.
    let before_plan = click(2_000, HOT, plan.from_event_time_ms - 1);
    ingest.submit(&[before_plan], Ack::Durable).await.unwrap();
    let in_plan: Vec<ClickEvent> = (0..200u128)
        .map(|n| click(10_000 + n, HOT, plan.from_event_time_ms + n as u64))
        .collect();
    let mut request = vec![click(3_000, CampaignId(100), START_MS)];
    request.extend(in_plan.iter().cloned());
    let busy_before = ingest.stats().busy;
    let error = ingest.submit(&request, Ack::Durable).await.unwrap_err();
    assert!(
        matches!(
            error,
            IngestError::SaltPlanPending {
                campaign: 7,
                salts: 4,
                events: 200,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.retry_after_ms().is_some());
    assert!(
        error.to_string().contains("campaign 7 is being split"),
        "{error}"
    );
    assert_eq!(ingest.stats().busy, busy_before + 1);
    assert_eq!(
        ingest.buffered(),
        0,
        "a refused request holds no buffer space"
    );
    assert!(placements(&log, HOT).await.keys().all(|id| *id < 10_000));
    assert!(blobs.failed_calls.load(Ordering::SeqCst) >= 1);
    assert!(blobs.inner.get(&plan_key(HOT)).await.unwrap().is_none());

    // The store comes back: the plan is stored, then routes.
    blobs.down.store(false, Ordering::SeqCst);
    wait_until_no_plan_is_pending(&ingest).await;
    assert_eq!(plans.load().await.unwrap().plan(HOT), Some(plan));
    ingest.submit(&request, Ack::Durable).await.unwrap();
    let placed = placements(&log, HOT).await;
    let salts: std::collections::BTreeSet<u16> = in_plan
        .iter()
        .map(|event| placed[&event.click_id.0][0].1)
        .collect();
    assert_eq!(
        salts.len(),
        4,
        "clicks in the plan's range spread over every salt"
    );
    assert_eq!(
        placed[&2_000],
        vec![(placed[&2_000][0].0, 0)],
        "before the plan: unsalted"
    );
    ingest.close(flusher).await;

    // A new incarnation loads the plans and routes every resend to its original's partition.
    let (restarted, flusher) = IngestCore::start_with(
        log.clone(),
        clock.clone(),
        config(&log, detection()).await,
        SaltingStart {
            table: Arc::new(std::sync::Mutex::new(plans.load().await.unwrap())),
            accepted_event_time_floor_ms: clock_now(&clock)
                + adclick_core::limits::EVENT_TIME_FUTURE_MS_MAX,
            durable: Some(one_node(&plans)),
        },
    );
    let mut resends = in_plan.clone();
    resends.extend(
        first
            .iter()
            .filter(|event| event.campaign_id == HOT)
            .cloned(),
    );
    resends.push(click(2_000, HOT, plan.from_event_time_ms - 1));
    restarted.submit(&resends, Ack::Durable).await.unwrap();
    let resent: std::collections::BTreeSet<u128> =
        resends.iter().map(|event| event.click_id.0).collect();
    for (id, places) in placements(&log, HOT).await {
        assert_eq!(places.len(), if resent.contains(&id) { 2 } else { 1 });
        assert!(
            places.windows(2).all(|pair| pair[0] == pair[1]),
            "click {id} and its resend were routed apart: {places:?}"
        );
    }
    restarted.close(flusher).await;
}

fn clock_now(clock: &ManualClock) -> u64 {
    use adclick_engine::seams::Clock;
    clock.now_ms()
}

#[tokio::test]
async fn stored_plans_route_even_with_detection_off() {
    let log = Arc::new(MemoryLog::new(PARTITIONS));
    let mut table = SaltTable::default();
    table.insert(
        HOT,
        SaltPlan {
            salts: 4,
            from_event_time_ms: START_MS,
        },
    );
    let (ingest, flusher) = IngestCore::start_with(
        log.clone(),
        Arc::new(ManualClock::new(START_MS)),
        config(&log, None).await,
        SaltingStart {
            table: Arc::new(std::sync::Mutex::new(table)),
            ..SaltingStart::default()
        },
    );
    let clicks: Vec<ClickEvent> = (1..=200u128)
        .map(|n| click(n, HOT, START_MS + n as u64))
        .collect();
    ingest.submit(&clicks, Ack::Durable).await.unwrap();
    let salts: std::collections::BTreeSet<u16> = placements(&log, HOT)
        .await
        .values()
        .map(|places| places[0].1)
        .collect();
    assert_eq!(salts.len(), 4);
    ingest.close(flusher).await;
}

/// Several ingest nodes: one node's plan starts past what any node can have accepted, reaches
/// every node through the store, and a node that cannot read the plans refuses only the clicks a
/// plan it has not seen could cover.
#[tokio::test]
async fn shared_plans_reach_every_node_and_an_unread_store_refuses_only_far_clicks() {
    use adclick_core::limits::EVENT_TIME_FUTURE_MS_MAX;
    use adclick_engine::limits::{BLOB_VISIBLE_AFTER_STAMP_MS_MAX, SALT_PLAN_SHARED_DELAY_MS};
    let log = Arc::new(MemoryLog::new(PARTITIONS));
    let clock = Arc::new(ManualClock::new(START_MS));
    // The store stamps plans with the test's clock: a shared plan starts after that stamp.
    let blobs = Arc::new(FlakyBlobs {
        inner: MemoryBlobStore::with_clock(clock.clone()),
        ..FlakyBlobs::default()
    });
    let plans = SaltPlanStore::new(blobs.clone(), PlanSharing::Shared);
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(IngestCore::start_with(
            log.clone(),
            clock.clone(),
            config(&log, detection()).await,
            SaltingStart {
                durable: Some(DurablePlans {
                    store: plans.clone(),
                    loaded_at_ms: START_MS,
                }),
                ..SaltingStart::default()
            },
        ));
    }
    let (a, b) = (&nodes[0].0, &nodes[1].0);

    // Campaign 7 turns hot on node A, and campaign 9 on both nodes in the same period.
    let hot: Vec<ClickEvent> = (0..400u128)
        .map(|n| {
            click(
                n + 1,
                if n % 2 == 0 { HOT } else { CampaignId(9) },
                START_MS,
            )
        })
        .collect();
    a.submit(&hot, Ack::Durable).await.unwrap();
    let nine: Vec<ClickEvent> = (0..200u128)
        .map(|n| click(500 + n, CampaignId(9), START_MS))
        .collect();
    b.submit(&nine, Ack::Durable).await.unwrap();
    clock.advance(1_000);
    let decide = [click(1_000, CampaignId(100), START_MS)];
    a.submit(&decide, Ack::Durable).await.unwrap();
    clock.advance(10);
    b.submit(&decide, Ack::Durable).await.unwrap();
    let planned_at_ms = START_MS + 1_000;
    wait_until_no_plan_is_pending(a).await;
    wait_until_no_plan_is_pending(b).await;
    let stored = plans.load().await.unwrap();
    let plan = stored.plan(HOT).unwrap();
    assert!(
        plan.from_event_time_ms
            >= planned_at_ms + EVENT_TIME_FUTURE_MS_MAX + SALT_PLAN_SHARED_DELAY_MS,
        "past every event time any node can have accepted: {plan:?}"
    );
    let nine_plan = stored.plan(CampaignId(9)).unwrap();
    assert!(nine_plan.from_event_time_ms >= plan.from_event_time_ms);

    // Once the clock reaches the plan's range, node B routes campaign 7 by A's plan, and both
    // nodes route campaign 9 alike. A node may refuse until its next read of the plans.
    clock.advance(SALT_PLAN_SHARED_DELAY_MS + BLOB_VISIBLE_AFTER_STAMP_MS_MAX + 10_000);
    let salted: Vec<ClickEvent> = (0..100u128)
        .map(|n| click(20_000 + n, HOT, plan.from_event_time_ms + n as u64))
        .collect();
    let nines: Vec<ClickEvent> = (0..100u128)
        .map(|n| {
            click(
                30_000 + n,
                CampaignId(9),
                plan.from_event_time_ms + n as u64,
            )
        })
        .collect();
    submit_once_plans_are_read(b, &salted).await;
    submit_once_plans_are_read(b, &nines).await;
    submit_once_plans_are_read(a, &nines).await;
    let placed = placements(&log, HOT).await;
    let salts: std::collections::BTreeSet<u16> = salted
        .iter()
        .map(|event| placed[&event.click_id.0][0].1)
        .collect();
    assert_eq!(salts.len(), 4, "node B routes by node A's plan");
    for (id, places) in placements(&log, CampaignId(9)).await {
        if id >= 30_000 {
            assert_eq!(places.len(), 2);
            assert_eq!(
                places[0], places[1],
                "click {id}: both nodes route it alike"
            );
        }
    }

    // The store goes away: after the plans go unread for a while, a click at the future edge
    // is refused, and one at the present is still taken.
    blobs.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    clock.advance(SALT_PLAN_SHARED_DELAY_MS);
    let now_ms = clock_now(&clock);
    let edge = [click(
        40_000,
        CampaignId(100),
        now_ms + EVENT_TIME_FUTURE_MS_MAX,
    )];
    let error = b.submit(&edge, Ack::Durable).await.unwrap_err();
    assert!(
        matches!(error, IngestError::SaltPlansUnread { events: 1, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("last read at"), "{error}");
    b.submit(&[click(40_001, CampaignId(100), now_ms)], Ack::Durable)
        .await
        .unwrap();
    blobs.down.store(false, Ordering::SeqCst);
    submit_once_plans_are_read(b, &edge).await;
    for (node, flusher) in nodes {
        node.close(flusher).await;
    }
}

/// Submits, retrying while the node has not read the plans recently enough (its poller reads
/// them every second).
async fn submit_once_plans_are_read(node: &IngestCore, events: &[ClickEvent]) {
    for _ in 0..50 {
        match node.submit(events, Ack::Durable).await {
            Ok(outcome) => {
                assert_eq!(outcome.accepted, events.len());
                return;
            }
            Err(IngestError::SaltPlansUnread { .. }) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{error}"),
        }
    }
    panic!("the node never read the plans");
}
