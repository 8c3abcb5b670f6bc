//! What a run writes, decided from what the store holds: a bill for an unbilled period, a
//! correction (differences per (campaign, hour)) for a billed one. Pure: the stores load the
//! period's runs, billed rows and adjustments inside their transaction, call `plan_run`, and
//! insert what it returns, so two runs never both add the same difference.
//!
//! **Invariant:** the standing bill of an hour (billed row plus its adjustments) has
//! `spend_micros == billable × cpc_micros` with one price per hour; a correction keeps it so.
//! **Invariant:** a correction is relative to the standing bill, so rerunning it adds nothing.

use std::collections::{BTreeMap, BTreeSet};

use adclick_core::billing::{BillKey, HourBill};

use crate::store::{
    Adjustment, BilledRow, BillingStoreError, Finality, RunInput, RunKind, RunRecord, WrittenRun,
};

/// How much of a period earlier bill runs cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    Unbilled,
    Billed,
    /// Covered for `billed_ms` of the period's length.
    Partly {
        billed_ms: u64,
    },
}

/// The coverage of `[from_ms, to_ms)` by the periods of earlier bill runs.
pub fn coverage(bill_periods: &[(u64, u64)], from_ms: u64, to_ms: u64) -> Coverage {
    let mut clipped: Vec<(u64, u64)> = bill_periods
        .iter()
        .map(|&(from, to)| (from.max(from_ms), to.min(to_ms)))
        .filter(|(from, to)| from < to)
        .collect();
    clipped.sort_unstable();
    let mut billed_ms = 0;
    let mut reached = from_ms;
    for (from, to) in clipped {
        let start = from.max(reached);
        if to > start {
            billed_ms += to - start;
            reached = to;
        }
    }
    if billed_ms == 0 {
        Coverage::Unbilled
    } else if billed_ms == to_ms - from_ms {
        Coverage::Billed
    } else {
        Coverage::Partly { billed_ms }
    }
}

/// What a run inserts, and its audit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPlan {
    pub record: RunRecord,
    /// Rows for `adclick_billing_hourly` (a bill).
    pub rows: Vec<BilledRow>,
    /// Rows for `adclick_bill_adjustments` (a correction).
    pub adjustments: Vec<Adjustment>,
    /// The period's bill as it stands once the run is in.
    pub standing_after: Vec<BilledRow>,
}

impl RunPlan {
    /// What the store reports once the plan is committed as run `run_id`.
    pub fn written(self, run_id: u64) -> WrittenRun {
        WrittenRun {
            run_id,
            record: self.record,
            adjustments: self.adjustments,
            rows: self.standing_after,
        }
    }
}

/// Plans a run of `input` with the freshly computed `rows`, given the period's bill runs, its
/// billed rows and its earlier adjustments (by run).
pub fn plan_run(
    input: &RunInput,
    rows: &[BilledRow],
    bill_periods: &[(u64, u64)],
    billed: &[BilledRow],
    earlier: &[(u64, Adjustment)],
) -> Result<RunPlan, BillingStoreError> {
    let (from_ms, to_ms) = (input.period_from_ms, input.period_to_ms);
    let (kind, inserted_rows, adjustments, standing_after) = match coverage(
        bill_periods,
        from_ms,
        to_ms,
    ) {
        Coverage::Unbilled => {
            if !billed.is_empty() || !earlier.is_empty() {
                return Err(BillingStoreError::Invalid {
                    message: format!(
                        "the hours of [{from_ms}, {to_ms}) hold billed rows or adjustments but no bill run covers them"
                    ),
                });
            }
            (RunKind::Bill, rows.to_vec(), Vec::new(), rows.to_vec())
        }
        Coverage::Billed => {
            let standing = standing(billed, earlier)?;
            let adjustments = differences(rows, &standing)?;
            let after = apply(&standing, &adjustments)?;
            (RunKind::Correction, Vec::new(), adjustments, after)
        }
        Coverage::Partly { billed_ms } => {
            return Err(BillingStoreError::PartlyBilled {
                from_ms,
                to_ms,
                billed_ms,
                period_ms: to_ms - from_ms,
                billed_periods: bill_periods.to_vec(),
            });
        }
    };
    let record = RunRecord {
        kind,
        period_from_ms: from_ms,
        period_to_ms: to_ms,
        fraud_list_version: input.fraud_list_version,
        input_files: input.input_files.clone(),
        rows: (inserted_rows.len() + adjustments.len()) as u64,
        billable: standing_after.iter().map(|row| row.bill.billable).sum(),
        spend_micros: standing_after.iter().map(|row| row.spend_micros).sum(),
        created_at_ms: input.created_at_ms,
        provisional: input.finality == Finality::Provisional,
    };
    Ok(RunPlan {
        record,
        rows: inserted_rows,
        adjustments,
        standing_after,
    })
}

/// The bill as it stands: each billed row plus its adjustments, in run order, sorted by key.
pub fn standing(
    billed: &[BilledRow],
    adjustments: &[(u64, Adjustment)],
) -> Result<Vec<BilledRow>, BillingStoreError> {
    let mut rows: BTreeMap<BillKey, BilledRow> = billed.iter().map(|row| (row.key, *row)).collect();
    let mut ordered: Vec<&(u64, Adjustment)> = adjustments.iter().collect();
    ordered.sort_by_key(|(run_id, adjustment)| (*run_id, adjustment.key));
    for (_, adjustment) in ordered {
        let row = rows.entry(adjustment.key).or_insert(BilledRow {
            key: adjustment.key,
            bill: HourBill::default(),
            cpc_micros: adjustment.cpc_micros,
            spend_micros: 0,
        });
        *row = adjusted(row, adjustment)?;
    }
    Ok(rows.into_values().collect())
}

fn apply(
    standing: &[BilledRow],
    adjustments: &[Adjustment],
) -> Result<Vec<BilledRow>, BillingStoreError> {
    let numbered: Vec<(u64, Adjustment)> = adjustments
        .iter()
        .map(|adjustment| (0, *adjustment))
        .collect();
    self::standing(standing, &numbered)
}

/// `row` with `adjustment` added; an error if a count goes below zero or the hour's spend stops
/// being its billable clicks at one price (the database does not hold what it should).
fn adjusted(row: &BilledRow, adjustment: &Adjustment) -> Result<BilledRow, BillingStoreError> {
    let add = |what: &'static str, value: u64, delta: i64| {
        value
            .checked_add_signed(delta)
            .ok_or_else(|| BillingStoreError::Invalid {
                message: format!(
                    "{what} of campaign {} hour {}: {value} with an adjustment of {delta} is out of range",
                    row.key.campaign_id, row.key.hour_start_ms
                ),
            })
    };
    let next = BilledRow {
        key: row.key,
        bill: HourBill {
            clicks: add("clicks", row.bill.clicks, adjustment.clicks_delta)?,
            billable: add("billable", row.bill.billable, adjustment.billable_delta)?,
            fraud: add("fraud", row.bill.fraud, adjustment.fraud_delta)?,
            duplicates: add(
                "duplicates",
                row.bill.duplicates,
                adjustment.duplicates_delta,
            )?,
            reused_ids: add(
                "reused_ids",
                row.bill.reused_ids,
                adjustment.reused_ids_delta,
            )?,
        },
        cpc_micros: adjustment.cpc_micros,
        spend_micros: add(
            "spend_micros",
            row.spend_micros,
            adjustment.spend_micros_delta,
        )?,
    };
    if next.bill.billable.checked_mul(next.cpc_micros) != Some(next.spend_micros) {
        return Err(BillingStoreError::Invalid {
            message: format!(
                "campaign {} hour {}: spend {} micros is not {} billable clicks at {} micros once adjusted",
                row.key.campaign_id,
                row.key.hour_start_ms,
                next.spend_micros,
                next.bill.billable,
                next.cpc_micros
            ),
        });
    }
    Ok(next)
}

/// The differences from the standing bill to `rows`, per (campaign, hour), those with any.
fn differences(
    rows: &[BilledRow],
    standing: &[BilledRow],
) -> Result<Vec<Adjustment>, BillingStoreError> {
    let new: BTreeMap<BillKey, &BilledRow> = rows.iter().map(|row| (row.key, row)).collect();
    let old: BTreeMap<BillKey, &BilledRow> = standing.iter().map(|row| (row.key, row)).collect();
    let keys: BTreeSet<BillKey> = new.keys().chain(old.keys()).copied().collect();
    let mut adjustments = Vec::new();
    for key in keys {
        let zero = |cpc_micros| BilledRow {
            key,
            bill: HourBill::default(),
            cpc_micros,
            spend_micros: 0,
        };
        let (new, old) = match (new.get(&key), old.get(&key)) {
            (Some(new), Some(old)) => (**new, **old),
            (Some(new), None) => (**new, zero(new.cpc_micros)),
            (None, Some(old)) => (zero(old.cpc_micros), **old),
            (None, None) => unreachable!("the key came from one of the maps"),
        };
        let adjustment = difference(&new, &old)?;
        let unchanged = adjustment.clicks_delta == 0
            && adjustment.billable_delta == 0
            && adjustment.fraud_delta == 0
            && adjustment.duplicates_delta == 0
            && adjustment.reused_ids_delta == 0;
        if !unchanged {
            adjustments.push(adjustment);
        }
    }
    Ok(adjustments)
}

fn difference(new: &BilledRow, old: &BilledRow) -> Result<Adjustment, BillingStoreError> {
    let delta = |what: &'static str, new: u64, old: u64| {
        let out_of_range = || BillingStoreError::OutOfRange {
            what,
            value: new.max(old),
        };
        let new = i64::try_from(new).map_err(|_| out_of_range())?;
        let old = i64::try_from(old).map_err(|_| out_of_range())?;
        Ok::<i64, BillingStoreError>(new - old)
    };
    // The hour keeps the price it was billed at while it has billable clicks; otherwise the
    // campaign's price now (which the fresh row carries).
    let cpc_micros = if old.bill.billable > 0 {
        old.cpc_micros
    } else {
        new.cpc_micros
    };
    let billable_delta = delta("billable", new.bill.billable, old.bill.billable)?;
    let spend_micros_delta = i64::try_from(cpc_micros)
        .ok()
        .and_then(|cpc| cpc.checked_mul(billable_delta))
        .ok_or(BillingStoreError::OutOfRange {
            what: "spend_micros",
            value: cpc_micros.saturating_mul(billable_delta.unsigned_abs()),
        })?;
    Ok(Adjustment {
        key: new.key,
        clicks_delta: delta("clicks", new.bill.clicks, old.bill.clicks)?,
        billable_delta,
        fraud_delta: delta("fraud", new.bill.fraud, old.bill.fraud)?,
        duplicates_delta: delta("duplicates", new.bill.duplicates, old.bill.duplicates)?,
        reused_ids_delta: delta("reused_ids", new.bill.reused_ids, old.bill.reused_ids)?,
        cpc_micros,
        spend_micros_delta,
    })
}

#[cfg(test)]
mod tests {
    use adclick_core::ids::CampaignId;

    use super::*;

    const HOUR: u64 = 3_600_000;

    fn row(campaign: u64, hour: u64, billable: u64, cpc_micros: u64) -> BilledRow {
        BilledRow {
            key: BillKey {
                campaign_id: CampaignId(campaign),
                hour_start_ms: hour * HOUR,
            },
            bill: HourBill {
                clicks: billable + 1,
                billable,
                fraud: 1,
                duplicates: 0,
                reused_ids: 0,
            },
            cpc_micros,
            spend_micros: billable * cpc_micros,
        }
    }

    fn input() -> RunInput {
        RunInput {
            period_from_ms: 0,
            period_to_ms: 2 * HOUR,
            fraud_list_version: 0,
            input_files: Vec::new(),
            created_at_ms: 7,
            finality: Finality::Final,
        }
    }

    #[test]
    fn coverage_is_the_union_of_bill_periods() {
        assert_eq!(coverage(&[], 0, 2 * HOUR), Coverage::Unbilled);
        assert_eq!(
            coverage(&[(2 * HOUR, 3 * HOUR)], 0, 2 * HOUR),
            Coverage::Unbilled
        );
        assert_eq!(
            coverage(&[(0, HOUR), (HOUR, 3 * HOUR)], 0, 2 * HOUR),
            Coverage::Billed
        );
        assert_eq!(
            coverage(&[(0, 2 * HOUR), (0, HOUR)], 0, 2 * HOUR),
            Coverage::Billed
        );
        assert_eq!(
            coverage(&[(HOUR, 2 * HOUR), (HOUR, 3 * HOUR)], 0, 2 * HOUR),
            Coverage::Partly { billed_ms: HOUR }
        );
    }

    #[test]
    fn a_correction_charges_the_billed_price_and_a_rerun_adds_nothing() {
        let billed = vec![row(1, 0, 10, 100), row(2, 1, 0, 0)];
        let periods = [(0, 2 * HOUR)];
        // Campaign 1 gains 3 clicks (its price is 150 now), campaign 2 its first billable one
        // (no price when billed), campaign 3 a new hour.
        let fresh = vec![row(1, 0, 13, 150), row(2, 1, 1, 40), row(3, 1, 2, 9)];
        let plan = plan_run(&input(), &fresh, &periods, &billed, &[]).unwrap();
        assert_eq!(plan.record.kind, RunKind::Correction);
        assert!(plan.rows.is_empty(), "billed rows are never rewritten");
        let spend: Vec<(u64, i64, u64, i64)> = plan
            .adjustments
            .iter()
            .map(|adjustment| {
                (
                    adjustment.key.campaign_id.0,
                    adjustment.billable_delta,
                    adjustment.cpc_micros,
                    adjustment.spend_micros_delta,
                )
            })
            .collect();
        assert_eq!(spend, vec![(1, 3, 100, 300), (2, 1, 40, 40), (3, 2, 9, 18)]);
        assert_eq!(plan.record.billable, 16);
        assert_eq!(plan.record.spend_micros, 1300 + 40 + 18);

        let earlier: Vec<(u64, Adjustment)> = plan
            .adjustments
            .iter()
            .map(|adjustment| (2, *adjustment))
            .collect();
        let again = plan_run(&input(), &fresh, &periods, &billed, &earlier).unwrap();
        assert_eq!(again.adjustments, Vec::new());
        assert_eq!(again.record.rows, 0);
        assert_eq!(again.standing_after, plan.standing_after);

        // Fewer clicks later (a fraud list that now flags some) credits at the same price.
        let fewer = vec![row(1, 0, 12, 150), row(2, 1, 1, 40), row(3, 1, 2, 9)];
        let credit = plan_run(&input(), &fewer, &periods, &billed, &earlier).unwrap();
        assert_eq!(credit.adjustments.len(), 1);
        assert_eq!(credit.adjustments[0].billable_delta, -1);
        assert_eq!(credit.adjustments[0].spend_micros_delta, -100);
    }

    #[test]
    fn a_period_billed_in_part_is_refused_and_a_fresh_one_is_a_bill() {
        let fresh = vec![row(1, 0, 1, 1)];
        let error = plan_run(&input(), &fresh, &[(HOUR, 2 * HOUR)], &[], &[]).unwrap_err();
        assert!(error.to_string().contains("billed only in part"), "{error}");
        let plan = plan_run(&input(), &fresh, &[], &[], &[]).unwrap();
        assert_eq!(plan.record.kind, RunKind::Bill);
        assert_eq!(plan.rows, fresh);
    }
}
