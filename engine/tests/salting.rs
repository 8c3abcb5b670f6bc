//! Hot-campaign salting through the ingest core with durable plans: a plan routes nothing until
//! the blob store has it, a restarted node routes a resend where its original went, and plans
//! keep routing when detection is turned off.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use adclick_core::codec;
use adclick_core::event::ClickEvent;
use adclick_core::ids::{AdId, CampaignId, ClickId, Country, EventTimeMs, PartitionId, UserId};
use adclick_core::salt::{HotCampaignConfig, SaltPlan, SaltTable};
use adclick_engine::clock::ManualClock;
use adclick_engine::embedded::{MemoryBlobStore, MemoryLog};
use adclick_engine::ingest::{Ack, IngestConfig, IngestCore, IngestError, SaltingStart};
use adclick_engine::salt_plans::{SaltPlanStore, plan_key};
use adclick_engine::seams::{BlobError, BlobStore, Log, read_partition};
use async_trait::async_trait;

const PARTITIONS: u32 = 8;
const HOT: CampaignId = CampaignId(7);
const START_MS: u64 = 1_700_000_000_000;

/// A blob store whose puts fail while it is down.
#[derive(Default)]
struct FlakyBlobs {
    inner: MemoryBlobStore,
    down: AtomicBool,
    failed_puts: AtomicU64,
}

#[async_trait]
impl BlobStore for FlakyBlobs {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        if self.down.load(Ordering::SeqCst) {
            self.failed_puts.fetch_add(1, Ordering::SeqCst);
            return Err(BlobError::Unavailable {
                key: key.to_owned(),
                message: "down for the test".into(),
            });
        }
        self.inner.put(key, bytes).await
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.inner.delete(key).await
    }
}

fn click(id: u128, campaign: CampaignId, event_time_ms: u64) -> ClickEvent {
    ClickEvent {
        click_id: ClickId(id),
        campaign_id: campaign,
        ad_id: AdId(1),
        user_id: UserId(1),
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        user_agent: "test".into(),
        country: Country::parse("DE").unwrap(),
        event_time_ms: EventTimeMs(event_time_ms),
        publisher_id: None,
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
    let plans = SaltPlanStore::new(blobs.clone());
    let clock = Arc::new(ManualClock::new(START_MS));
    let (ingest, flusher) = IngestCore::start_with(
        log.clone(),
        clock.clone(),
        config(&log, detection()).await,
        SaltingStart {
            durable: Some(plans.clone()),
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
    assert!(blobs.failed_puts.load(Ordering::SeqCst) >= 1);
    assert!(blobs.get(&plan_key(HOT)).await.unwrap().is_none());

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
            durable: Some(plans.clone()),
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
