//! The aggregator against a naive model written straight from the rules in DESIGN.md and the
//! core's module docs, with BTreeMaps and no cleverness: lanes (on time, late, unverified), the
//! watermark bounded by the clock, idle advance, dedup horizon, the rate rule and its taint.

use std::collections::{BTreeMap, BTreeSet};

use adclick_core::limits::HOUR_MS;
use adclick_core::operator::{PartitionAggregator, Series, SeriesUpdate};
use adclick_core::window::{Counts, HourKey, Lane, WindowKey};
use adclick_core::*;
use proptest::prelude::*;

use crate::inputs::{self, Call};

#[derive(Default)]
struct Model {
    watermark_ms: u64,
    max_event_time_ms: u64,
    last_activity_ms: Option<u64>,
    seen: BTreeMap<u128, u64>,
    dedup_cutoff_bucket: u64,
    rate: BTreeMap<(u128, u64), u64>,
    tainted: BTreeSet<(u128, u64)>,
    totals: BTreeMap<(Series, Lane), Counts>,
    late: u64,
    unverified: u64,
    expired: u64,
    duplicates: u64,
}

const DUPLICATE: Counts = Counts {
    clicks: 1,
    unique: 0,
    fraud: 0,
};
const CLEAN: Counts = Counts {
    clicks: 1,
    unique: 1,
    fraud: 0,
};
const FRAUD: Counts = Counts {
    clicks: 1,
    unique: 0,
    fraud: 1,
};

impl Model {
    fn click(&mut self, event: &ClickEvent, processing_ms: u64) {
        let config = inputs::config();
        let window = config.window;
        let time = event.event_time_ms.0;
        let start = time - time % window.window_ms;
        let window_lane =
            if start + window.window_ms + window.allowed_lateness_ms > self.watermark_ms {
                Lane::OnTime
            } else if start + window.window_ms + window.late_retention_ms > self.watermark_ms {
                Lane::Late
            } else {
                self.expired += 1;
                return;
            };
        // A client clock ahead of the worker's counts only up to the clock plus the allowance.
        let bounded = time.min(processing_ms + limits::WATERMARK_AHEAD_OF_PROCESSING_MS_MAX);
        if bounded > self.max_event_time_ms {
            self.max_event_time_ms = bounded;
            self.watermark_ms = self
                .watermark_ms
                .max(bounded.saturating_sub(window.max_out_of_orderness_ms));
        }
        let bucket = time / config.dedup.bucket_ms;
        let cutoff_ms = self.dedup_cutoff_bucket * config.dedup.bucket_ms;
        let minute = time - time % 60_000;
        let rate_key = (adclick_core::fraud::ip_key(event.ip), minute);
        let (lane, delta) = if self.seen.contains_key(&event.click_id.0) {
            self.duplicates += 1;
            (window_lane, DUPLICATE)
        } else if bucket < self.dedup_cutoff_bucket {
            // Below the cutoff: a copy may have come and gone. Its minute's counter, if the
            // minute is still kept, no longer holds every unique click.
            if minute + 60_000 > cutoff_ms {
                self.tainted.insert(rate_key);
            }
            (Lane::Unverified, CLEAN)
        } else {
            self.seen.insert(event.click_id.0, bucket);
            if self.tainted.contains(&rate_key) {
                (Lane::Unverified, CLEAN)
            } else {
                let rate = self.rate.entry(rate_key).or_default();
                *rate += 1;
                if *rate > u64::from(config.clicks_per_ip_per_minute_max) {
                    (window_lane, FRAUD)
                } else {
                    (window_lane, CLEAN)
                }
            }
        };
        match lane {
            Lane::Late => self.late += 1,
            Lane::Unverified => self.unverified += 1,
            Lane::OnTime => {}
        }
        let window_key = WindowKey {
            campaign_id: event.campaign_id,
            ad_id: event.ad_id,
            salt: Salt(0),
            window_start_ms: start,
        };
        let hour_key = HourKey {
            campaign_id: event.campaign_id,
            salt: Salt(0),
            hour_start_ms: time - time % HOUR_MS,
        };
        self.totals
            .entry((Series::Window(window_key), lane))
            .or_default()
            .add(delta);
        self.totals
            .entry((Series::Hour(hour_key), lane))
            .or_default()
            .add(delta);
    }

    fn idle(&mut self, processing_ms: u64) {
        let window = inputs::config().window;
        let idle = self
            .last_activity_ms
            .is_none_or(|last| processing_ms.saturating_sub(last) >= window.idle_timeout_ms);
        if idle {
            self.watermark_ms = self
                .watermark_ms
                .max(processing_ms.saturating_sub(window.max_out_of_orderness_ms));
        }
    }

    fn barrier(&mut self) {
        let config = inputs::config();
        let cutoff =
            self.watermark_ms.saturating_sub(config.dedup.horizon_ms) / config.dedup.bucket_ms;
        self.dedup_cutoff_bucket = self.dedup_cutoff_bucket.max(cutoff);
        let keep_from = self.dedup_cutoff_bucket;
        self.seen.retain(|_, bucket| *bucket >= keep_from);
        // A minute's counters go once the whole minute is below the dedup cutoff.
        let cutoff_ms = self.dedup_cutoff_bucket * config.dedup.bucket_ms;
        self.rate
            .retain(|(_, minute), _| *minute + 60_000 > cutoff_ms);
        self.tainted
            .retain(|(_, minute)| *minute + 60_000 > cutoff_ms);
    }
}

/// Applies updates the way the real-time store does: absolute values, last write wins.
pub fn apply(
    store: &mut BTreeMap<(Series, Lane), Counts>,
    finals: &mut BTreeMap<(Series, Lane), Counts>,
    updates: &[SeriesUpdate],
) {
    for update in updates {
        let key = (update.series, update.lane);
        assert!(!finals.contains_key(&key), "update after final for {key:?}");
        store.insert(key, update.counts);
        if update.is_final {
            finals.insert(key, update.counts);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn aggregator_matches_the_naive_model(steps in proptest::collection::vec(inputs::step(), 1..300)) {
        let calls = inputs::resolve(&steps);
        let mut model = Model::default();
        let mut aggregator = PartitionAggregator::new(inputs::config(), PartitionId(0), inputs::registry().get(FraudListVersion(0)).unwrap());
        let mut store = BTreeMap::new();
        let mut finals = BTreeMap::new();
        let mut epoch = 0;
        let mut barrier = |aggregator: &mut PartitionAggregator, store: &mut _, finals: &mut _| {
            epoch += 1;
            let output = aggregator.on_barrier(Epoch(epoch));
            apply(store, finals, &output.updates);
            aggregator.on_commit(Epoch(epoch));
        };
        for call in &calls {
            match call {
                Call::Click { offset, event, processing_ms } => {
                    let bytes = adclick_core::codec::encode(event, Salt(0));
                    let undecodable = aggregator.on_batch([(Offset(*offset), bytes.as_slice())], *processing_ms);
                    prop_assert!(undecodable.is_empty());
                    model.click(event, *processing_ms);
                    model.last_activity_ms = Some(*processing_ms);
                }
                Call::Idle { processing_ms } => {
                    aggregator.on_idle(*processing_ms);
                    model.idle(*processing_ms);
                }
                Call::Barrier => {
                    barrier(&mut aggregator, &mut store, &mut finals);
                    model.barrier();
                }
                // The model has no fraud list: this test checks windows, dedup and the rate rule.
                Call::Stage { .. } => {}
            }
            prop_assert_eq!(aggregator.watermark().watermark_ms, model.watermark_ms);
        }
        aggregator.on_watermark(u64::MAX);
        barrier(&mut aggregator, &mut store, &mut finals);
        prop_assert_eq!(&store, &model.totals);
        let on_time: Vec<_> = store.keys().filter(|(_, lane)| *lane == Lane::OnTime).collect();
        prop_assert!(on_time.iter().all(|key| finals.contains_key(key)), "every on-time series closes at end of input");
        let stats = aggregator.stats();
        prop_assert_eq!(stats.late, model.late);
        prop_assert_eq!(stats.unverified, model.unverified);
        prop_assert_eq!(stats.expired, model.expired);
        prop_assert_eq!(stats.duplicates, model.duplicates);
        prop_assert_eq!(aggregator.open_windows(), 0);
    }
}
