//! Exact billing of a period: the slow path's counting, pure.
//!
//! Unlike the streaming aggregator, billing sees the whole period at once, so it dedups by
//! click id over everything (no horizon) and bills late clicks in their event-time hour whatever
//! their lane. The fraud decision is the aggregator's own (`fraud::judge`) with the same list
//! version, and the rate rule runs per partition in offset order, as the workers run it, so the
//! two paths differ only where reconciliation can name the cause.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::ClickView;
use crate::fraud::{FraudList, FraudVerdict, RateRule, judge};
use crate::ids::{CampaignId, ClickId, PartitionId};
use crate::limits::HOUR_MS;

/// One (campaign, hour) of a billing period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourBill {
    /// Every valid click in the log, resends included.
    pub clicks: u64,
    /// Unique, not fraud: what the advertiser pays for.
    pub billable: u64,
    /// Unique clicks the fraud checks flagged.
    pub fraud: u64,
    /// Resends of a click id already seen under the same campaign.
    pub duplicates: u64,
    /// Click ids already seen under another campaign (buggy or hostile clients).
    pub reused_ids: u64,
}

impl HourBill {
    pub fn add(&mut self, other: HourBill) {
        self.clicks += other.clicks;
        self.billable += other.billable;
        self.fraud += other.fraud;
        self.duplicates += other.duplicates;
        self.reused_ids += other.reused_ids;
    }
}

/// The key of a billed row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BillKey {
    pub campaign_id: CampaignId,
    pub hour_start_ms: u64,
}

/// The fields billing decides on: a log record's, or an archived row's.
#[derive(Clone, Copy, Debug)]
pub struct BillableClick<'a> {
    pub click_id: ClickId,
    pub campaign_id: CampaignId,
    pub ip: std::net::IpAddr,
    pub user_agent: &'a str,
    pub event_time_ms: u64,
}

impl<'a> From<&ClickView<'a>> for BillableClick<'a> {
    fn from(click: &ClickView<'a>) -> BillableClick<'a> {
        BillableClick {
            click_id: click.click_id,
            campaign_id: click.campaign_id,
            ip: click.ip,
            user_agent: click.user_agent,
            event_time_ms: click.event_time_ms.0,
        }
    }
}

/// Accumulates a period. Feed each partition's clicks in offset order.
pub struct PeriodBiller {
    fraud_list: Arc<FraudList>,
    clicks_per_ip_per_minute_max: u32,
    /// Each click id's campaign, over the whole period.
    seen: hashbrown::HashMap<ClickId, CampaignId, foldhash::fast::FixedState>,
    rates: BTreeMap<PartitionId, RateRule>,
    hours: BTreeMap<BillKey, HourBill>,
    from_ms: u64,
    to_ms: u64,
}

impl PeriodBiller {
    /// Bills clicks whose event time is in `[from_ms, to_ms)` (whole hours).
    pub fn new(
        fraud_list: Arc<FraudList>,
        clicks_per_ip_per_minute_max: u32,
        from_ms: u64,
        to_ms: u64,
    ) -> PeriodBiller {
        assert!(
            from_ms.is_multiple_of(HOUR_MS) && to_ms.is_multiple_of(HOUR_MS) && from_ms < to_ms
        );
        PeriodBiller {
            fraud_list,
            clicks_per_ip_per_minute_max,
            seen: hashbrown::HashMap::with_hasher(foldhash::fast::FixedState::with_seed(0)),
            rates: BTreeMap::new(),
            hours: BTreeMap::new(),
            from_ms,
            to_ms,
        }
    }

    pub fn on_click(&mut self, partition: PartitionId, click: BillableClick<'_>) {
        let event_time_ms = click.event_time_ms;
        if !(self.from_ms..self.to_ms).contains(&event_time_ms) {
            return;
        }
        let key = BillKey {
            campaign_id: click.campaign_id,
            hour_start_ms: event_time_ms - event_time_ms % HOUR_MS,
        };
        let mut delta = HourBill {
            clicks: 1,
            ..HourBill::default()
        };
        match self.seen.entry(click.click_id) {
            hashbrown::hash_map::Entry::Occupied(first) => {
                if *first.get() == click.campaign_id {
                    delta.duplicates = 1;
                } else {
                    delta.reused_ids = 1;
                }
            }
            hashbrown::hash_map::Entry::Vacant(slot) => {
                slot.insert(click.campaign_id);
                let max = self.clicks_per_ip_per_minute_max;
                let rate = self
                    .rates
                    .entry(partition)
                    .or_insert_with(|| RateRule::new(max));
                match judge(
                    &self.fraud_list,
                    rate,
                    click.ip,
                    click.user_agent,
                    event_time_ms,
                ) {
                    FraudVerdict::Clean => delta.billable = 1,
                    _ => delta.fraud = 1,
                }
            }
        }
        self.hours.entry(key).or_default().add(delta);
    }

    pub fn finish(self) -> BTreeMap<BillKey, HourBill> {
        self.hours
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ClickEvent;
    use crate::ids::*;

    fn click(id: u128, campaign: u64, event_time_ms: u64, ip: &str) -> ClickEvent {
        ClickEvent {
            click_id: ClickId(id),
            campaign_id: CampaignId(campaign),
            ad_id: AdId(1),
            user_id: UserId(1),
            ip: ip.parse().unwrap(),
            user_agent: "ua".into(),
            country: Country::parse("DE").unwrap(),
            event_time_ms: EventTimeMs(event_time_ms),
            publisher_id: None,
        }
    }

    #[test]
    fn dedup_spans_the_period_and_names_reused_ids() {
        let list = Arc::new(FraudList::parse("version 1\nip 10.0.0.66\n").unwrap());
        let mut biller = PeriodBiller::new(list, 100, 0, 2 * HOUR_MS);
        let p = PartitionId(0);
        let clicks = [
            click(1, 7, 10, "10.0.0.1"),
            // A resend an hour later (past any streaming horizon) is still a duplicate.
            click(1, 7, 10, "10.0.0.1"),
            click(2, 7, HOUR_MS + 5, "10.0.0.66"),
            click(3, 8, HOUR_MS + 6, "10.0.0.2"),
            // Click id 3 again under another campaign.
            click(3, 9, HOUR_MS + 7, "10.0.0.2"),
            // Outside the period: not billed here.
            click(4, 7, 2 * HOUR_MS, "10.0.0.1"),
        ];
        for event in &clicks {
            biller.on_click(p, (&event.view(Salt(0))).into());
        }
        let hours = biller.finish();
        let key = |campaign, hour| BillKey {
            campaign_id: CampaignId(campaign),
            hour_start_ms: hour * HOUR_MS,
        };
        assert_eq!(
            hours[&key(7, 0)],
            HourBill {
                clicks: 2,
                billable: 1,
                duplicates: 1,
                ..HourBill::default()
            }
        );
        assert_eq!(hours[&key(7, 1)].fraud, 1, "a listed ip");
        assert_eq!(hours[&key(8, 1)].billable, 1);
        assert_eq!(hours[&key(9, 1)].reused_ids, 1);
        assert_eq!(hours.len(), 4);
    }
}
