//! Regressions from outside the comfortable envelope (late data past the dedup horizon, late
//! clicks from high-rate IPs): the aggregator's verified lanes decide every click as billing
//! does, and what it cannot decide it counts apart, in the unverified lane.

use std::collections::BTreeMap;
use std::sync::Arc;

use adclick_core::billing::{BillKey, HourBill, PeriodBiller};
use adclick_core::fraud::FraudList;
use adclick_core::limits::HOUR_MS;
use adclick_core::operator::{AggregatorConfig, PartitionAggregator, Series};
use adclick_core::window::{Counts, Lane};
use adclick_core::*;

use crate::inputs;

/// Drives one partition and billing over the same clicks, with a barrier after each group.
struct Both {
    aggregator: PartitionAggregator,
    biller: PeriodBiller,
    store: BTreeMap<(Series, Lane), Counts>,
    offset: u64,
    epoch: u64,
}

impl Both {
    fn new(config: AggregatorConfig, hour_ms: u64) -> Both {
        let list = Arc::new(FraudList::empty());
        Both {
            aggregator: PartitionAggregator::new(config, PartitionId(0), list.clone()),
            biller: PeriodBiller::new(
                adclick_core::billing::FraudSchedule::single(list),
                config.clicks_per_ip_per_minute_max,
                hour_ms,
                hour_ms + 2 * HOUR_MS,
            ),
            store: BTreeMap::new(),
            offset: 0,
            epoch: 0,
        }
    }

    /// Sends `clicks` at processing time `now_ms`, then a barrier.
    fn send(&mut self, clicks: &[ClickEvent], now_ms: u64) {
        for click in clicks {
            let bytes = codec::encode(click, Salt(0));
            let problems = self
                .aggregator
                .on_batch([(Offset(self.offset), bytes.as_slice())], now_ms);
            assert!(problems.is_empty(), "{problems:?}");
            self.biller.on_click(
                PartitionId(0),
                Offset(self.offset),
                (&click.view(Salt(0))).into(),
            );
            self.offset += 1;
        }
        self.epoch += 1;
        let output = self.aggregator.on_barrier(Epoch(self.epoch));
        for update in output.updates {
            self.store
                .insert((update.series, update.lane), update.counts);
        }
        self.aggregator.on_commit(Epoch(self.epoch));
    }

    fn hour(&self, campaign: u8, hour_ms: u64, lane: Lane) -> Counts {
        let key = window::HourKey {
            campaign_id: CampaignId(u64::from(campaign)),
            salt: Salt(0),
            hour_start_ms: hour_ms,
        };
        self.store
            .get(&(Series::Hour(key), lane))
            .copied()
            .unwrap_or_default()
    }

    fn bill(self, campaign: u8, hour_ms: u64) -> HourBill {
        let bills: BTreeMap<BillKey, HourBill> = self.biller.finish();
        bills[&BillKey {
            campaign_id: CampaignId(u64::from(campaign)),
            hour_start_ms: hour_ms,
        }]
    }
}

/// Default windows and horizon (a minute, a minute of lateness, three minutes of dedup).
fn config() -> AggregatorConfig {
    AggregatorConfig::default()
}

const HOUR: u64 = 500 * HOUR_MS;

/// Regression (the rate rule decided late clicks differently on the two paths): workers dropped
/// a minute's rate counters when its window closed, so a late click from a high-rate IP opened
/// a fresh counter and was billable, while billing, which never drops a minute, called it fraud.
/// Now counters live as long as the dedup horizon, and clicks past it are unverified.
#[test]
fn late_clicks_from_a_high_rate_ip_are_decided_as_billing_decides_them() {
    let mut both = Both::new(config(), HOUR);
    let minute = HOUR + 10 * 60_000;
    let max = config().clicks_per_ip_per_minute_max as u8;
    // IP 9 reaches the rule's threshold in its minute, on time.
    let on_time: Vec<ClickEvent> = (0..max)
        .map(|n| inputs::click_with_id(1_000 + u32::from(n), 1, 0, 9, minute + u64::from(n)))
        .collect();
    both.send(&on_time, minute + 1_000);
    // Other traffic moves the watermark 150 s on: the minute's window closed, within the horizon.
    both.send(
        &[inputs::click_with_id(1, 2, 0, 1, minute + 150_000)],
        minute + 150_000,
    );
    let late: Vec<ClickEvent> = (0..5)
        .map(|n| inputs::click_with_id(2_000 + n, 1, 0, 9, minute + 30_000))
        .collect();
    both.send(&late, minute + 150_000);
    let late_lane = both.hour(1, HOUR, Lane::Late);
    assert_eq!(
        (late_lane.unique, late_lane.fraud),
        (0, 5),
        "over the threshold, as billing says"
    );
    // Past the horizon: the fast path cannot decide them, billing does.
    both.send(
        &[inputs::click_with_id(3, 2, 0, 1, minute + 400_000)],
        minute + 400_000,
    );
    let past: Vec<ClickEvent> = (0..3)
        .map(|n| inputs::click_with_id(3_000 + n, 1, 0, 9, minute + 30_000))
        .collect();
    both.send(&past, minute + 400_000);
    let unverified = both.hour(1, HOUR, Lane::Unverified);
    assert_eq!(unverified.clicks, 3);
    let on_time_lane = both.hour(1, HOUR, Lane::OnTime);
    let bill = both.bill(1, HOUR);
    assert_eq!(bill.billable, on_time_lane.unique + late_lane.unique);
    assert_eq!(
        bill.fraud, 8,
        "billing calls every click over the threshold fraud"
    );
}

/// Regression (late clicks older than the dedup horizon were counted as unique): a late click
/// past the horizon and two resends of it each counted as a unique click on the fast path. Now
/// all three are unverified, never unique in a verified lane, and billing bills one.
#[test]
fn late_clicks_and_their_resends_past_the_horizon_are_unverified_never_unique() {
    let mut both = Both::new(config(), HOUR);
    let now_ms = HOUR + 30 * 60_000;
    both.send(&[inputs::click_with_id(1, 2, 0, 1, now_ms)], now_ms);
    let old = inputs::click_with_id(7, 1, 0, 3, now_ms - 10 * 60_000);
    for _ in 0..3 {
        both.send(std::slice::from_ref(&old), now_ms);
    }
    let verified = |lane| both.hour(1, HOUR, lane);
    assert_eq!(verified(Lane::OnTime), Counts::default());
    assert_eq!(verified(Lane::Late), Counts::default());
    assert_eq!(
        both.hour(1, HOUR, Lane::Unverified),
        Counts {
            clicks: 3,
            unique: 3,
            fraud: 0
        }
    );
    assert_eq!(both.aggregator.stats().unverified, 3);
    let bill = both.bill(1, HOUR);
    assert_eq!((bill.billable, bill.duplicates), (1, 2));
}
