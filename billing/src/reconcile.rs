//! Reconciliation: the fast path's hour totals against billing, per (campaign, hour), with
//! every difference attributed to a cause. What no cause explains is "unexplained", a bug.
//!
//! For each (campaign, hour), with the fast path's hour rollups summed over salts:
//!
//! ```text
//! billed = on_time + late − duplicates_beyond_horizon − reused_click_ids ± fraud_list_change + unexplained
//! ```
//!
//! - `late`: unique clicks in the late lane (arrived after their window closed, beyond the
//!   allowed lateness). The fast path keeps them in the late side output; billing bills them.
//! - `duplicates_beyond_horizon`: the fast path counted more than billing, and billing dropped at
//!   least that many resends of the same campaign's click ids (a resend past the dedup horizon
//!   looks new to a worker; billing dedups over the whole period).
//! - `reused_click_ids`: the same for click ids billing first saw under another campaign.
//! - `fraud_list_change`: the paths disagree on fraud and the fast path ran other fraud-list
//!   versions than the billing run.

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
    pub fast_fraud: u64,
    pub billed: u64,
    pub billed_fraud: u64,
    pub duplicates_beyond_horizon: u64,
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
    fast_fraud_list_versions: &BTreeSet<u64>,
    billing_fraud_list_version: u64,
) -> Reconciliation {
    #[derive(Default)]
    struct Fast {
        on_time: u64,
        late: u64,
        fraud: u64,
    }
    let mut fast_hours: BTreeMap<BillKey, Fast> = BTreeMap::new();
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
        }
        entry.fraud += stored.counts.fraud;
    }
    let versions_differ = fast_fraud_list_versions
        .iter()
        .any(|version| *version != billing_fraud_list_version);
    let keys: BTreeSet<BillKey> = fast_hours.keys().chain(billed.keys()).copied().collect();
    let mut reconciliation = Reconciliation {
        fast_fraud_list_versions: fast_fraud_list_versions.iter().copied().collect(),
        billing_fraud_list_version,
        ..Reconciliation::default()
    };
    for key in keys {
        let fast = fast_hours.get(&key);
        let bill = billed.get(&key).copied().unwrap_or_default();
        let mut hour = ReconciledHour {
            campaign_id: key.campaign_id.0,
            hour_start_ms: key.hour_start_ms,
            on_time: fast.map_or(0, |fast| fast.on_time),
            late: fast.map_or(0, |fast| fast.late),
            fast_fraud: fast.map_or(0, |fast| fast.fraud),
            billed: bill.billable,
            billed_fraud: bill.fraud,
            ..ReconciledHour::default()
        };
        // Positive: the fast path counted more than billing bills.
        let mut surplus = (hour.on_time + hour.late) as i64 - bill.billable as i64;
        if surplus > 0 {
            hour.duplicates_beyond_horizon = (surplus as u64).min(bill.duplicates);
            surplus -= hour.duplicates_beyond_horizon as i64;
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
        add_into(&mut reconciliation.totals, &hour);
        reconciliation.hours.push(hour);
    }
    reconciliation
}

fn add_into(total: &mut ReconciledHour, hour: &ReconciledHour) {
    total.on_time += hour.on_time;
    total.late += hour.late;
    total.fast_fraud += hour.fast_fraud;
    total.billed += hour.billed;
    total.billed_fraud += hour.billed_fraud;
    total.duplicates_beyond_horizon += hour.duplicates_beyond_horizon;
    total.reused_click_ids += hour.reused_click_ids;
    total.fraud_list_change += hour.fraud_list_change;
    total.unexplained += hour.unexplained;
}

/// The table `adclick reconcile` prints.
pub fn render_table(reconciliation: &Reconciliation) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:>12} {:>15} {:>9} {:>7} {:>9} {:>10} {:>8} {:>8} {:>11}\n",
        "campaign",
        "hour_start_ms",
        "on_time",
        "late",
        "billed",
        "dup>horiz",
        "reused",
        "fraudlst",
        "unexplained"
    ));
    let mut row = |label: String, hour: &ReconciledHour| {
        out.push_str(&format!(
            "{:>12} {:>15} {:>9} {:>7} {:>9} {:>10} {:>8} {:>8} {:>11}\n",
            label,
            if label == "total" {
                String::new()
            } else {
                hour.hour_start_ms.to_string()
            },
            hour.on_time,
            hour.late,
            hour.billed,
            hour.duplicates_beyond_horizon,
            hour.reused_click_ids,
            hour.fraud_list_change,
            hour.unexplained
        ));
    };
    for hour in reconciliation.hours.iter().filter(|hour| {
        hour.unexplained != 0
            || hour.duplicates_beyond_horizon != 0
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

    fn key(campaign: u64) -> BillKey {
        BillKey {
            campaign_id: CampaignId(campaign),
            hour_start_ms: 0,
        }
    }

    #[test]
    fn late_and_salts_add_up_and_horizon_duplicates_are_named() {
        let fast = vec![
            fast_hour(7, 0, Lane::OnTime, 50),
            fast_hour(7, 1, Lane::OnTime, 40),
            fast_hour(7, 0, Lane::Late, 10),
            // Campaign 8: the fast path counted 3 resends billing dropped.
            fast_hour(8, 0, Lane::OnTime, 23),
        ];
        let billed = BTreeMap::from([(key(7), bill(100, 0)), (key(8), bill(20, 5))]);
        let versions = BTreeSet::from([1]);
        let result = reconcile(&fast, &billed, 0, 3_600_000, &versions, 1);
        assert!(result.holds(), "{}", render_table(&result));
        assert_eq!(result.hours[0].late, 10);
        assert_eq!(result.hours[1].duplicates_beyond_horizon, 3);
    }

    #[test]
    fn a_difference_nothing_explains_fails() {
        let fast = vec![fast_hour(7, 0, Lane::OnTime, 90)];
        let billed = BTreeMap::from([(key(7), bill(100, 0))]);
        let result = reconcile(&fast, &billed, 0, 3_600_000, &BTreeSet::from([1]), 1);
        assert!(!result.holds());
        assert_eq!(result.hours[0].unexplained, 10);
        // A fast path that counted more than billing with no dropped resends fails too.
        let fast = vec![fast_hour(7, 0, Lane::OnTime, 101)];
        let result = reconcile(&fast, &billed, 0, 3_600_000, &BTreeSet::from([1]), 1);
        assert_eq!(result.hours[0].unexplained, -1);
    }
}
