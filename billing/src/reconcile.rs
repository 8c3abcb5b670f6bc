//! Reconciliation: the fast path's hour totals against billing, per (campaign, hour), with
//! every difference attributed to a cause. What no cause explains is "unexplained", a bug.
//!
//! For each (campaign, hour), with the fast path's hour rollups summed over salts:
//!
//! ```text
//! billed = on_time + late + unverified − unverified_rejected − reused_click_ids ± fraud_list_change + unexplained
//! ```
//!
//! - `late`: unique clicks in the late lane (arrived after their window closed, beyond the
//!   allowed lateness, within the dedup horizon). Decided exactly; billing bills them.
//! - `unverified`: clicks in the unverified lane not on the fraud list: the fast path could not
//!   deduplicate or rate-check them (`adclick_core::window` says when). Every verified click is
//!   decided as billing decides it, so the fast path can only count more than billing there.
//! - `unverified_rejected`: the duplicates and rate-rule fraud billing found among them: the
//!   fast path's surplus, explained only up to the unverified count and up to what billing
//!   dropped in that (campaign, hour) as duplicates or fraud.
//! - `reused_click_ids`: the same for click ids billing first saw under another campaign.
//! - `fraud_list_change`: the paths disagree on fraud and the fast path ran other fraud-list
//!   versions than the billing run. Never for a run judged as the workers judged (`adclick bill
//!   --checkpoints`): each click got the very version the fast path used, so a fraud
//!   difference there is unexplained.

use std::collections::{BTreeMap, BTreeSet};

use adclick_core::billing::{BillKey, HourBill};
use adclick_core::operator::Series;
use adclick_core::window::Lane;
use adclick_engine::seams::StoredCounts;
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReconciledHour {
    pub campaign_id: u64,
    pub hour_start_ms: u64,
    pub on_time: u64,
    pub late: u64,
    pub unverified: u64,
    pub fast_fraud: u64,
    pub billed: u64,
    pub billed_fraud: u64,
    pub unverified_rejected: u64,
    pub reused_click_ids: u64,
    /// Signed: billing minus the fast path, where a fraud-list change explains it.
    pub fraud_list_change: i64,
    /// Signed: what nothing explains. Non-zero fails reconciliation.
    pub unexplained: i64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Reconciliation {
    pub hours: Vec<ReconciledHour>,
    pub totals: ReconciledHour,
    pub fast_fraud_list_versions: Vec<u64>,
    pub billing_fraud_list_version: u64,
    /// Billing judged each click with the workers' own list (so no list change explains).
    pub judged_as_workers: bool,
}

/// How the billing run judged fraud.
#[derive(Clone, Debug)]
pub enum BillingLists {
    /// Each click with the version the workers used for it.
    AsWorkers,
    /// Every click with `billing`, while the fast path ran `fast`.
    One { billing: u64, fast: BTreeSet<u64> },
}

impl Reconciliation {
    pub fn unexplained_hours(&self) -> usize {
        self.hours
            .iter()
            .filter(|hour| hour.unexplained != 0)
            .count()
    }

    pub fn holds(&self) -> bool {
        self.unexplained_hours() == 0
    }
}

/// Compares. `fast` is the real-time store's content (only hour rollups in the period are
/// used); `billed` the billing rows of the period.
pub fn reconcile(
    fast: &[(Series, Lane, StoredCounts)],
    billed: &BTreeMap<BillKey, HourBill>,
    from_ms: u64,
    to_ms: u64,
    lists: &BillingLists,
) -> Reconciliation {
    let fast_hours = fast_hours(fast, from_ms, to_ms);
    let (versions_differ, mut reconciliation) = match lists {
        BillingLists::AsWorkers => (
            false,
            Reconciliation {
                judged_as_workers: true,
                ..Reconciliation::default()
            },
        ),
        BillingLists::One { billing, fast } => (
            fast.iter().any(|version| version != billing),
            Reconciliation {
                fast_fraud_list_versions: fast.iter().copied().collect(),
                billing_fraud_list_version: *billing,
                ..Reconciliation::default()
            },
        ),
    };
    let keys: BTreeSet<BillKey> = fast_hours.keys().chain(billed.keys()).copied().collect();
    for key in keys {
        let fast = fast_hours.get(&key).copied().unwrap_or_default();
        let bill = billed.get(&key).copied().unwrap_or_default();
        let hour = reconcile_hour(key, fast, bill, versions_differ);
        add_into(&mut reconciliation.totals, &hour);
        reconciliation.hours.push(hour);
    }
    reconciliation
}

/// The fast path's side of one (campaign, hour): its hour rollups summed over salts.
#[derive(Clone, Copy, Default)]
struct FastHour {
    on_time: u64,
    late: u64,
    unverified: u64,
    fraud: u64,
}

fn fast_hours(
    fast: &[(Series, Lane, StoredCounts)],
    from_ms: u64,
    to_ms: u64,
) -> BTreeMap<BillKey, FastHour> {
    let mut fast_hours: BTreeMap<BillKey, FastHour> = BTreeMap::new();
    for (series, lane, stored) in fast {
        let Series::Hour(hour) = series else { continue };
        if !(from_ms..to_ms).contains(&hour.hour_start_ms) {
            continue;
        }
        let key = BillKey {
            campaign_id: hour.campaign_id,
            hour_start_ms: hour.hour_start_ms,
        };
        let entry = fast_hours.entry(key).or_default();
        match lane {
            Lane::OnTime => entry.on_time += stored.counts.unique,
            Lane::Late => entry.late += stored.counts.unique,
            Lane::Unverified => entry.unverified += stored.counts.unique,
        }
        if lane.is_verified() {
            entry.fraud += stored.counts.fraud;
        }
    }
    fast_hours
}

/// One (campaign, hour): each cause takes what it explains of the difference, in order; the
/// rest is unexplained.
fn reconcile_hour(
    key: BillKey,
    fast: FastHour,
    bill: HourBill,
    versions_differ: bool,
) -> ReconciledHour {
    let mut hour = ReconciledHour {
        campaign_id: key.campaign_id.0,
        hour_start_ms: key.hour_start_ms,
        on_time: fast.on_time,
        late: fast.late,
        unverified: fast.unverified,
        fast_fraud: fast.fraud,
        billed: bill.billable,
        billed_fraud: bill.fraud,
        ..ReconciledHour::default()
    };
    // Positive: the fast path counted more than billing bills.
    let mut surplus = (hour.on_time + hour.late + hour.unverified) as i64 - bill.billable as i64;
    if surplus > 0 {
        hour.unverified_rejected = (surplus as u64)
            .min(hour.unverified)
            .min(bill.duplicates + bill.fraud);
        surplus -= hour.unverified_rejected as i64;
        hour.reused_click_ids = (surplus as u64).min(bill.reused_ids);
        surplus -= hour.reused_click_ids as i64;
    }
    if surplus != 0 && versions_differ && hour.fast_fraud != bill.fraud {
        let fraud_gap = bill.fraud as i64 - hour.fast_fraud as i64;
        // The fast path flagged fewer clicks (fraud_gap > 0) means it counted more.
        if fraud_gap.signum() == surplus.signum() {
            let explained = surplus.abs().min(fraud_gap.abs()) * surplus.signum();
            hour.fraud_list_change = -explained;
            surplus -= explained;
        }
    }
    hour.unexplained = -surplus;
    hour
}

fn add_into(total: &mut ReconciledHour, hour: &ReconciledHour) {
    total.on_time += hour.on_time;
    total.late += hour.late;
    total.unverified += hour.unverified;
    total.fast_fraud += hour.fast_fraud;
    total.billed += hour.billed;
    total.billed_fraud += hour.billed_fraud;
    total.unverified_rejected += hour.unverified_rejected;
    total.reused_click_ids += hour.reused_click_ids;
    total.fraud_list_change += hour.fraud_list_change;
    total.unexplained += hour.unexplained;
}

/// The table `adclick reconcile` prints.
pub fn render_table(reconciliation: &Reconciliation) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:>12} {:>15} {:>9} {:>7} {:>10} {:>9} {:>10} {:>8} {:>8} {:>11}\n",
        "campaign",
        "hour_start_ms",
        "on_time",
        "late",
        "unverified",
        "billed",
        "unv_reject",
        "reused",
        "fraudlst",
        "unexplained"
    ));
    let mut row = |label: String, hour: &ReconciledHour| {
        out.push_str(&format!(
            "{:>12} {:>15} {:>9} {:>7} {:>10} {:>9} {:>10} {:>8} {:>8} {:>11}\n",
            label,
            if label == "total" {
                String::new()
            } else {
                hour.hour_start_ms.to_string()
            },
            hour.on_time,
            hour.late,
            hour.unverified,
            hour.billed,
            hour.unverified_rejected,
            hour.reused_click_ids,
            hour.fraud_list_change,
            hour.unexplained
        ));
    };
    for hour in reconciliation.hours.iter().filter(|hour| {
        hour.unexplained != 0
            || hour.unverified_rejected != 0
            || hour.reused_click_ids != 0
            || hour.fraud_list_change != 0
    }) {
        row(hour.campaign_id.to_string(), hour);
    }
    row("total".into(), &reconciliation.totals);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use adclick_core::ids::*;
    use adclick_core::window::{Counts, HourKey};
    use adclick_engine::fencing::Fence;

    fn fast_hour(
        campaign: u64,
        salt: u16,
        lane: Lane,
        unique: u64,
    ) -> (Series, Lane, StoredCounts) {
        (
            Series::Hour(HourKey {
                campaign_id: CampaignId(campaign),
                salt: Salt(salt),
                hour_start_ms: 0,
            }),
            lane,
            StoredCounts {
                counts: Counts {
                    clicks: unique,
                    unique,
                    fraud: 0,
                },
                is_final: true,
                fence: Fence {
                    generation: Generation(1),
                    epoch: Epoch(1),
                },
            },
        )
    }

    fn bill(billable: u64, duplicates: u64) -> HourBill {
        HourBill {
            clicks: billable + duplicates,
            billable,
            duplicates,
            ..HourBill::default()
        }
    }

    fn one_version() -> BillingLists {
        BillingLists::One {
            billing: 1,
            fast: BTreeSet::from([1]),
        }
    }

    /// The fast path ran versions 1 and 2 and flagged 3 fewer clicks than billing with version
    /// 2: a list change explains it. Judged as the workers judged, nothing does.
    #[test]
    fn a_list_change_explains_a_fraud_gap_only_when_billing_used_one_version() {
        let fast = vec![fast_hour(7, 0, Lane::OnTime, 23)];
        let billed = BTreeMap::from([(
            key(7),
            HourBill {
                clicks: 23,
                billable: 20,
                fraud: 3,
                ..HourBill::default()
            },
        )]);
        let one = BillingLists::One {
            billing: 2,
            fast: BTreeSet::from([1, 2]),
        };
        let result = reconcile(&fast, &billed, 0, 3_600_000, &one);
        assert!(result.holds(), "{}", render_table(&result));
        assert_eq!(result.hours[0].fraud_list_change, -3);
        let result = reconcile(&fast, &billed, 0, 3_600_000, &BillingLists::AsWorkers);
        assert_eq!(result.hours[0].unexplained, -3);
        assert!(result.judged_as_workers && !result.holds());
    }

    fn key(campaign: u64) -> BillKey {
        BillKey {
            campaign_id: CampaignId(campaign),
            hour_start_ms: 0,
        }
    }

    #[test]
    fn late_and_salts_add_up_and_unverified_duplicates_are_named() {
        let fast = vec![
            fast_hour(7, 0, Lane::OnTime, 50),
            fast_hour(7, 1, Lane::OnTime, 40),
            fast_hour(7, 0, Lane::Late, 10),
            // Campaign 8: 4 unverified clicks, 3 of them resends billing dropped.
            fast_hour(8, 0, Lane::OnTime, 19),
            fast_hour(8, 0, Lane::Unverified, 4),
        ];
        let billed = BTreeMap::from([(key(7), bill(100, 0)), (key(8), bill(20, 5))]);
        let result = reconcile(&fast, &billed, 0, 3_600_000, &one_version());
        assert!(result.holds(), "{}", render_table(&result));
        assert_eq!(result.hours[0].late, 10);
        assert_eq!(result.hours[1].unverified, 4);
        assert_eq!(result.hours[1].unverified_rejected, 3);
    }

    /// Regression (duplicates beyond the horizon explained any surplus up to billing's count of
    /// all resends): a surplus in verified lanes is a fast-path bug, whatever billing dropped.
    #[test]
    fn a_surplus_beyond_the_unverified_lane_is_unexplained() {
        let fast = vec![
            fast_hour(8, 0, Lane::OnTime, 22),
            fast_hour(8, 0, Lane::Unverified, 1),
        ];
        let billed = BTreeMap::from([(key(8), bill(20, 5))]);
        let result = reconcile(&fast, &billed, 0, 3_600_000, &one_version());
        assert_eq!(result.hours[0].unverified_rejected, 1);
        assert_eq!(result.hours[0].unexplained, -2);
        assert!(!result.holds());
    }

    #[test]
    fn a_difference_nothing_explains_fails() {
        let fast = vec![fast_hour(7, 0, Lane::OnTime, 90)];
        let billed = BTreeMap::from([(key(7), bill(100, 0))]);
        let result = reconcile(&fast, &billed, 0, 3_600_000, &one_version());
        assert!(!result.holds());
        assert_eq!(result.hours[0].unexplained, 10);
        // A fast path that counted more than billing with no dropped resends fails too.
        let fast = vec![fast_hour(7, 0, Lane::OnTime, 101)];
        let result = reconcile(&fast, &billed, 0, 3_600_000, &one_version());
        assert_eq!(result.hours[0].unexplained, -1);
    }
}
