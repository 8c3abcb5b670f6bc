//! Exact billing of a period: the slow path's counting, pure.
//!
//! Unlike the streaming aggregator, billing sees the whole period at once, so it dedups by
//! click id over everything (no horizon) and bills late clicks in their event-time hour whatever
//! their lane. The fraud decision is the aggregator's own (`fraud::judge`) with the list version
//! the workers used for that very click (`FraudSchedule`, from their checkpoints), and the rate
//! rule runs per partition in offset order, as the workers run it, so the two paths differ only
//! where reconciliation can name the cause.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::ClickView;
use crate::fraud::{FraudList, FraudVerdict, RateRule, judge};
use crate::ids::{CampaignId, ClickId, FraudListVersion, Offset, PartitionId};
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

/// Which fraud list judges each click: per partition, the list in force from each offset on, as
/// the workers' checkpoints recorded it. A partition with no changes gets `fallback`.
#[derive(Clone, Debug)]
pub struct FraudSchedule {
    fallback: Arc<FraudList>,
    partitions: BTreeMap<PartitionId, PartitionLists>,
}

#[derive(Clone, Debug)]
struct PartitionLists {
    changes: Vec<(Offset, Arc<FraudList>)>,
    /// Clicks from here on have no committed judgement yet: a rotation may still come first.
    checkpointed_to: Offset,
}

impl FraudSchedule {
    /// One list for every click (a deployment that never rotated, or the simulator's oracle
    /// before a run checkpointed).
    pub fn single(list: Arc<FraudList>) -> FraudSchedule {
        FraudSchedule {
            fallback: list,
            partitions: BTreeMap::new(),
        }
    }

    /// The partition's lists from each offset on, oldest first, as far as its checkpoints went
    /// (`checkpointed_to`). A click before the first offset gets the first list: it was read
    /// before the partition's first checkpoint.
    pub fn set_partition(
        &mut self,
        partition: PartitionId,
        changes: Vec<(Offset, Arc<FraudList>)>,
        checkpointed_to: Offset,
    ) {
        assert!(
            changes.is_sorted_by_key(|(offset, _)| *offset),
            "list changes in offset order"
        );
        if changes.is_empty() {
            self.partitions.remove(&partition);
        } else {
            let lists = PartitionLists {
                changes,
                checkpointed_to,
            };
            self.partitions.insert(partition, lists);
        }
    }

    pub fn list_for(&self, partition: PartitionId, offset: Offset) -> &Arc<FraudList> {
        let Some(lists) = self.partitions.get(&partition) else {
            return &self.fallback;
        };
        let after = lists.changes.partition_point(|(from, _)| *from <= offset);
        &lists.changes[after.saturating_sub(1)].1
    }

    /// Whether the workers have committed their judgement of the click at `offset` (always,
    /// for a partition judged by `fallback` alone: nothing to follow).
    pub fn confirmed(&self, partition: PartitionId, offset: Offset) -> bool {
        self.partitions
            .get(&partition)
            .is_none_or(|lists| offset < lists.checkpointed_to)
    }

    /// The list of a partition with no history.
    pub fn fallback(&self) -> &Arc<FraudList> {
        &self.fallback
    }

    /// Whether any partition follows the workers' history (else every click got `fallback`).
    pub fn follows_workers(&self) -> bool {
        !self.partitions.is_empty()
    }

    /// The versions the workers' histories name, or the fallback's where none was set.
    pub fn versions(&self) -> std::collections::BTreeSet<FraudListVersion> {
        let histories = self
            .partitions
            .values()
            .flat_map(|lists| &lists.changes)
            .map(|(_, list)| list.version());
        let fallback = (!self.follows_workers()).then(|| self.fallback.version());
        histories.chain(fallback).collect()
    }
}

/// Accumulates a period. Feed each partition's clicks in offset order.
pub struct PeriodBiller {
    fraud: FraudSchedule,
    clicks_per_ip_per_minute_max: u32,
    /// Each click id's campaign, over the whole period.
    seen: hashbrown::HashMap<ClickId, CampaignId, foldhash::fast::FixedState>,
    rates: BTreeMap<PartitionId, RateRule>,
    hours: BTreeMap<BillKey, HourBill>,
    /// Per partition, the period's clicks judged ahead of the workers' checkpoints.
    unconfirmed: BTreeMap<PartitionId, u64>,
    from_ms: u64,
    to_ms: u64,
}

impl PeriodBiller {
    /// Bills clicks whose event time is in `[from_ms, to_ms)` (whole hours).
    pub fn new(
        fraud: FraudSchedule,
        clicks_per_ip_per_minute_max: u32,
        from_ms: u64,
        to_ms: u64,
    ) -> PeriodBiller {
        assert!(
            from_ms.is_multiple_of(HOUR_MS) && to_ms.is_multiple_of(HOUR_MS) && from_ms < to_ms
        );
        PeriodBiller {
            fraud,
            clicks_per_ip_per_minute_max,
            seen: hashbrown::HashMap::with_hasher(foldhash::fast::FixedState::with_seed(0)),
            rates: BTreeMap::new(),
            hours: BTreeMap::new(),
            unconfirmed: BTreeMap::new(),
            from_ms,
            to_ms,
        }
    }

    /// One click, at `offset` of `partition`'s log.
    pub fn on_click(&mut self, partition: PartitionId, offset: Offset, click: BillableClick<'_>) {
        let event_time_ms = click.event_time_ms;
        if !(self.from_ms..self.to_ms).contains(&event_time_ms) {
            return;
        }
        let key = BillKey {
            campaign_id: click.campaign_id,
            hour_start_ms: event_time_ms - event_time_ms % HOUR_MS,
        };
        if !self.fraud.confirmed(partition, offset) {
            *self.unconfirmed.entry(partition).or_default() += 1;
        }
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
                    self.fraud.list_for(partition, offset),
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

    /// Per partition, how many of the period's clicks lie past the workers' last checkpoint:
    /// judged with the list they last named, which a rotation before they get there would
    /// change. Empty once the workers have caught up.
    pub fn unconfirmed(&self) -> &BTreeMap<PartitionId, u64> {
        &self.unconfirmed
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
        let mut biller = PeriodBiller::new(FraudSchedule::single(list), 100, 0, 2 * HOUR_MS);
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
        for (offset, event) in clicks.iter().enumerate() {
            biller.on_click(p, Offset(offset as u64), (&event.view(Salt(0))).into());
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

    #[test]
    fn each_click_is_judged_with_the_list_in_force_at_its_offset() {
        let list = |version: u64| {
            Arc::new(
                FraudList::parse(&format!("version {version}\nip 10.0.0.{version}\n")).unwrap(),
            )
        };
        let mut schedule = FraudSchedule::single(list(9));
        // Partition 0: version 1 from offset 0, version 2 from offset 2. Partition 1: no history.
        let changes = vec![(Offset(0), list(1)), (Offset(2), list(2))];
        schedule.set_partition(PartitionId(0), changes, Offset(3));
        let mut biller = PeriodBiller::new(schedule.clone(), 100, 0, HOUR_MS);
        let on = |biller: &mut PeriodBiller, partition: u32, offset: u64, id: u128, ip: &str| {
            let event = click(id, 7, 10, ip);
            biller.on_click(
                PartitionId(partition),
                Offset(offset),
                (&event.view(Salt(0))).into(),
            );
        };
        on(&mut biller, 0, 0, 1, "10.0.0.1"); // listed in version 1: fraud
        on(&mut biller, 0, 1, 2, "10.0.0.2"); // not in version 1: billable
        on(&mut biller, 0, 2, 3, "10.0.0.1"); // version 2 no longer lists it: billable
        on(&mut biller, 0, 3, 4, "10.0.0.2"); // listed in version 2: fraud
        on(&mut biller, 1, 0, 5, "10.0.0.9"); // the fallback lists it: fraud
        let unconfirmed = biller.unconfirmed().clone();
        let bill = biller.finish()[&BillKey {
            campaign_id: CampaignId(7),
            hour_start_ms: 0,
        }];
        assert_eq!((bill.billable, bill.fraud), (2, 3));
        assert_eq!(
            unconfirmed.iter().collect::<Vec<_>>(),
            [(&PartitionId(0), &1)],
            "offset 3 is past partition 0's last checkpoint"
        );
        assert_eq!(
            schedule
                .versions()
                .into_iter()
                .map(|v| v.0)
                .collect::<Vec<_>>(),
            [1, 2]
        );
    }
}
