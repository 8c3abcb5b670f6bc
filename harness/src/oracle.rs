//! The oracle: what the counts must be, recomputed independently from the log, and the checks
//! of the invariants in DESIGN.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;

use adclick_core::billing::FraudSchedule;
use adclick_core::codec;
use adclick_core::event::ClickView;
use adclick_core::fraud::{FraudRegistry, FraudVerdict, ip_key};
use adclick_core::ids::*;
use adclick_core::limits::{HOUR_MS, RATE_RULE_WINDOW_MS};
use adclick_core::operator::{AggregatorConfig, Series};
use adclick_core::window::{Counts, HourKey, Lane, WindowKey};
use adclick_engine::clock::SystemClock;
use adclick_engine::seams::{
    Clock, Log, PartitionStatus, RealtimeStore, RecordBlock, StoredCounts, read_partition,
};
use serde::Serialize;

use crate::history::StatusHistory;

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

/// An order-independent fingerprint of a multiset of clicks: count and wrapping sum of hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ledger {
    pub count: u64,
    pub fingerprint: u64,
}

/// The identity of one click occurrence, as the ledgers count it.
pub fn click_key(click: &ClickView<'_>) -> u64 {
    foldhash::fast::FixedState::with_seed(0x0ac1e).hash_one((
        click.click_id,
        click.campaign_id,
        click.ad_id,
        click.event_time_ms,
        click.ip,
    ))
}

/// An exact multiset of click occurrences, for runs where some accepted clicks may be lost (an
/// ingest crash) and the no-loss check must say which and how many.
#[derive(Clone, Debug, Default)]
pub struct ClickMultiset {
    counts: HashMap<u64, i64>,
}

impl ClickMultiset {
    pub fn add(&mut self, click: &ClickView<'_>) {
        *self.counts.entry(click_key(click)).or_default() += 1;
    }

    pub fn add_all(&mut self, other: &ClickMultiset) {
        for (key, count) in &other.counts {
            *self.counts.entry(*key).or_default() += count;
        }
    }

    pub fn total(&self) -> i64 {
        self.counts.values().sum()
    }
}

impl Ledger {
    /// The multiset union of two ledgers.
    pub fn merged(self, other: Ledger) -> Ledger {
        Ledger {
            count: self.count + other.count,
            fingerprint: self.fingerprint.wrapping_add(other.fingerprint),
        }
    }

    pub fn add(&mut self, click: &ClickView<'_>) {
        let hasher = foldhash::fast::FixedState::with_seed(0x0ac1e);
        let hash = hasher.hash_one((
            click.click_id,
            click.campaign_id,
            click.ad_id,
            click.event_time_ms,
            click.ip,
        ));
        self.count += 1;
        self.fingerprint = self.fingerprint.wrapping_add(hash);
    }
}

/// Which lanes a count is for: the verified ones (on time and late, decided exactly) or the
/// unverified one (clicks the fast path could not decide).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LaneClass {
    Verified,
    Unverified,
}

impl LaneClass {
    pub fn of(lane: Lane) -> LaneClass {
        if lane.is_verified() {
            LaneClass::Verified
        } else {
            LaneClass::Unverified
        }
    }
}

/// What the log says the store must hold.
#[derive(Debug, Default)]
pub struct Expected {
    /// The truth, as billing sees it: dedup over the whole log, the rate rule with no expiry.
    pub series: BTreeMap<Series, Counts>,
    /// What the fast path must hold per series and lane class: the truth for the clicks it
    /// could decide, and the unverified clicks (`adclick_core::window`) apart.
    pub lanes: BTreeMap<(Series, LaneClass), Counts>,
    /// Partitions whose unverified clicks the history cannot pin down (the dedup bound evicted
    /// ids mid-epoch): their series are checked by totals, not per lane class.
    pub inexact_partitions: Vec<PartitionId>,
    /// Rule violations the store history saw (the watermark ahead of the clock, a dedup cutoff
    /// other than the horizon's).
    pub history_violations: Vec<String>,
    pub log: Ledger,
    /// Every click occurrence in the log, when asked for.
    pub log_clicks: Option<ClickMultiset>,
    pub undecodable: u64,
    pub end_offsets: Vec<Offset>,
}

impl Expected {
    /// Unique non-fraud clicks over every window series: what billing must bill.
    pub fn unique_billable_clicks(&self) -> u64 {
        self.series
            .iter()
            .filter(|(s, _)| matches!(s, Series::Window(_)))
            .map(|(_, c)| c.unique)
            .sum()
    }
}

/// Reads every partition from offset 0 and counts with plain maps, for a run whose history was
/// not recorded: every click is expected in a verified lane.
pub async fn expected_from_log(
    log: &dyn Log,
    fraud: &FraudSchedule,
    config: &AggregatorConfig,
    keep_clicks: bool,
) -> anyhow::Result<Expected> {
    expected_from_log_with(log, fraud, config, keep_clicks, None).await
}

/// `expected_from_log` with the store's history, which says which dedup cutoff each record was
/// counted under, and so which clicks belong in the unverified lane. The oracle derives that
/// from the cutoffs with its own rules (`adclick_core::window` documents them), so a worker that
/// puts a click in the wrong lane for its own cutoff is caught; `history` separately checks the
/// cutoffs against the watermarks.
pub async fn expected_from_log_with(
    log: &dyn Log,
    fraud: &FraudSchedule,
    config: &AggregatorConfig,
    keep_clicks: bool,
    history: Option<&StatusHistory>,
) -> anyhow::Result<Expected> {
    let mut expected = Expected {
        log_clicks: keep_clicks.then(ClickMultiset::default),
        history_violations: history.map(StatusHistory::violations).unwrap_or_default(),
        ..Expected::default()
    };
    // Dedup is by (campaign, click id) over the whole log, not per partition: the engine's
    // per-partition dedup equals it only if every resend lands where its original did, which is
    // exactly what hot-campaign salting must not break (DESIGN.md, "salting vs dedup").
    let mut seen: HashSet<(u64, u128)> = HashSet::new();
    for partition in (0..log.partitions()).map(PartitionId) {
        let end = log.end_offset(partition).await?;
        expected.end_offsets.push(end);
        if history.is_some_and(|history| history.evicted_early(partition)) {
            expected.inexact_partitions.push(partition);
        }
        let mut rules = PartitionRules::default();
        read_partition(log, partition, end, |offset, bytes| {
            let Ok(click) = codec::decode(bytes) else {
                expected.undecodable += 1;
                return;
            };
            expected.log.add(&click);
            if let Some(clicks) = &mut expected.log_clicks {
                clicks.add(&click);
            }
            let listed = fraud
                .list_for(partition, offset)
                .check(click.ip, click.user_agent)
                != FraudVerdict::Clean;
            let cutoff_ms = history.map_or(0, |history| history.cutoff_for(partition, offset));
            let first = seen.insert((click.campaign_id.0, click.click_id.0));
            let decision = rules.decide(&click, first, listed, cutoff_ms, config);
            expected.add(&click, config, decision);
        })
        .await?;
    }
    Ok(expected)
}

/// How the fast path decides one click: its lane class, the exact counts it adds (billing's
/// decision), and what it adds in its lane (the fraud list alone, for an unverified one).
#[derive(Clone, Copy)]
struct Decision {
    class: LaneClass,
    delta: Counts,
    fast_delta: Counts,
}

/// A partition's rate counters, as the workers keep them per partition.
#[derive(Default)]
struct PartitionRules {
    per_ip_minute: HashMap<(u128, u64), u64>,
    /// (IP, minute) whose rate counter an unverified click made incomplete in the worker.
    tainted: HashSet<(u128, u64)>,
}

impl PartitionRules {
    /// The fast path's decision, by the rules in `adclick_core::window`.
    fn decide(
        &mut self,
        click: &ClickView<'_>,
        first: bool,
        listed: bool,
        cutoff_ms: u64,
        config: &AggregatorConfig,
    ) -> Decision {
        let time = click.event_time_ms.0;
        let minute = time - time % RATE_RULE_WINDOW_MS;
        let rate_key = (ip_key(click.ip), minute);
        let class = if time < cutoff_ms {
            if minute + RATE_RULE_WINDOW_MS > cutoff_ms {
                self.tainted.insert(rate_key);
            }
            LaneClass::Unverified
        } else if first && self.tainted.contains(&rate_key) {
            LaneClass::Unverified
        } else {
            LaneClass::Verified
        };
        let delta = if !first {
            DUPLICATE
        } else {
            let rate = self.per_ip_minute.entry(rate_key).or_default();
            *rate += 1;
            if listed || *rate > u64::from(config.clicks_per_ip_per_minute_max) {
                FRAUD
            } else {
                CLEAN
            }
        };
        let fast_delta = match class {
            LaneClass::Verified => delta,
            LaneClass::Unverified if listed => FRAUD,
            LaneClass::Unverified => CLEAN,
        };
        Decision {
            class,
            delta,
            fast_delta,
        }
    }
}

impl Expected {
    /// One click's counts, into its window and hour, exact and per lane class.
    fn add(&mut self, click: &ClickView<'_>, config: &AggregatorConfig, decision: Decision) {
        let time = click.event_time_ms.0;
        let window = WindowKey {
            campaign_id: click.campaign_id,
            ad_id: click.ad_id,
            salt: click.salt,
            window_start_ms: config.window.window_start(time),
        };
        let hour = HourKey {
            campaign_id: click.campaign_id,
            salt: click.salt,
            hour_start_ms: time - time % HOUR_MS,
        };
        for series in [Series::Window(window), Series::Hour(hour)] {
            self.series.entry(series).or_default().add(decision.delta);
            self.lanes
                .entry((series, decision.class))
                .or_default()
                .add(decision.fast_delta);
        }
    }

    /// Unique non-fraud clicks per (campaign, hour start), both lanes, all salts: what billing
    /// must bill.
    pub fn unique_by_campaign_hour(&self) -> BTreeMap<(CampaignId, u64), u64> {
        let mut hours = BTreeMap::new();
        for (series, counts) in &self.series {
            if let Series::Hour(hour) = series {
                *hours
                    .entry((hour.campaign_id, hour.hour_start_ms))
                    .or_default() += counts.unique;
            }
        }
        hours
    }
}

/// The first few (campaign, hour) where billed and expected billable clicks differ (a missing
/// row counts as 0), described for a verdict. Empty when they agree.
pub fn billing_mismatches(
    expected: &BTreeMap<(CampaignId, u64), u64>,
    billed: &BTreeMap<(CampaignId, u64), u64>,
) -> Vec<String> {
    let count = |map: &BTreeMap<(CampaignId, u64), u64>, key| map.get(key).copied().unwrap_or(0);
    expected
        .keys()
        .chain(billed.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|key| count(expected, key) != count(billed, key))
        .take(3)
        .map(|key| {
            format!(
                "campaign {} hour {}: billed {}, oracle {}",
                key.0.0,
                key.1,
                count(billed, key),
                count(expected, key)
            )
        })
        .collect()
}

/// One invariant's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub invariant: &'static str,
    pub holds: bool,
    /// False for an invariant this kind of run cannot check; it then neither passes nor fails.
    pub checked: bool,
    pub detail: String,
}

impl Verdict {
    pub fn skipped(invariant: &'static str, detail: &str) -> Verdict {
        Verdict {
            invariant,
            holds: true,
            checked: false,
            detail: detail.to_owned(),
        }
    }
}

/// Sums a store scan over lanes: on time, late and unverified.
pub fn store_totals(scan: &[(Series, Lane, StoredCounts)]) -> BTreeMap<Series, Counts> {
    let mut totals: BTreeMap<Series, Counts> = BTreeMap::new();
    for (series, _, stored) in scan {
        totals.entry(*series).or_default().add(stored.counts);
    }
    totals
}

/// Sums a store scan per lane class: on time plus late, and unverified.
pub fn store_lanes(scan: &[(Series, Lane, StoredCounts)]) -> BTreeMap<(Series, LaneClass), Counts> {
    let mut lanes: BTreeMap<(Series, LaneClass), Counts> = BTreeMap::new();
    for (series, lane, stored) in scan {
        lanes
            .entry((*series, LaneClass::of(*lane)))
            .or_default()
            .add(stored.counts);
    }
    lanes
}

fn owner_of(series: &Series, partitions: u32) -> PartitionId {
    let (campaign_id, salt) = match series {
        Series::Window(key) => (key.campaign_id, key.salt),
        Series::Hour(key) => (key.campaign_id, key.salt),
    };
    adclick_core::partition::partition_for_campaign(campaign_id, salt, partitions)
}

/// Exactly-once, per lane class: for every series, the verified lanes (on time + late) hold
/// exactly the log's unique non-fraud clicks, fraud clicks and raw clicks among the clicks the
/// fast path could decide, and the unverified lane exactly the clicks it could not (by the
/// recorded dedup cutoffs). Never above, never below. A partition whose cutoff moved mid-epoch
/// (early evictions) is checked by totals: every click in some lane, and never more unique or
/// fraud clicks in verified lanes than the log has.
pub fn check_exactly_once(expected: &Expected, scan: &[(Series, Lane, StoredCounts)]) -> Verdict {
    let partitions = expected.end_offsets.len().max(1) as u32;
    let inexact = |series: &Series| {
        expected
            .inexact_partitions
            .contains(&owner_of(series, partitions))
    };
    let got_lanes = store_lanes(scan);
    let mut mismatches: Vec<String> = expected.history_violations.clone();
    for ((series, class), want) in &expected.lanes {
        if !inexact(series) {
            let got = got_lanes
                .get(&(*series, *class))
                .copied()
                .unwrap_or_default();
            mismatches.extend(lane_mismatch(series, *class, got, *want));
        }
    }
    let got_totals = store_totals(scan);
    for (series, want) in expected.series.iter().filter(|(series, _)| inexact(series)) {
        let got_total = got_totals.get(series).copied().unwrap_or_default();
        let got = got_lanes
            .get(&(*series, LaneClass::Verified))
            .copied()
            .unwrap_or_default();
        if got_total.clicks != want.clicks || got.unique > want.unique || got.fraud > want.fraud {
            mismatches.push(format!(
                "{series:?} (early evictions): store {got_total:?} in all lanes, {got:?} verified, log says {want:?}"
            ));
        }
    }
    for (series, class) in got_lanes
        .keys()
        .filter(|key| !expected.lanes.contains_key(key) && !inexact(&key.0))
    {
        mismatches.push(format!(
            "{series:?} {class:?}: in the store but not in the log"
        ));
    }
    exactly_once_verdict(expected, &mismatches)
}

/// One exactly-checked lane class of a series: the store's counts against the log's.
fn lane_mismatch(series: &Series, class: LaneClass, got: Counts, want: Counts) -> Option<String> {
    if got == want {
        return None;
    }
    // More first sightings than the log has unique clicks: a resend got past dedup.
    let hint = if class == LaneClass::Verified && got.unique + got.fraud > want.unique + want.fraud
    {
        " (a duplicate counted as unique: a resend past the dedup horizon outside the unverified lane, or routed to another partition than its original: check salting)"
    } else {
        ""
    };
    Some(format!(
        "{series:?} {class:?}: store {got:?}, log says {want:?}{hint}"
    ))
}

fn exactly_once_verdict(expected: &Expected, mismatches: &[String]) -> Verdict {
    let unverified: u64 = expected
        .lanes
        .iter()
        .filter(|((s, class), _)| matches!(s, Series::Window(_)) && *class == LaneClass::Unverified)
        .map(|(_, c)| c.clicks)
        .sum();
    Verdict {
        invariant: "exactly_once",
        holds: mismatches.is_empty(),
        checked: true,
        detail: if mismatches.is_empty() {
            format!(
                "{} series match the log exactly per lane ({} unique billable clicks, {unverified} clicks unverified)",
                expected.series.len(),
                expected.unique_billable_clicks()
            )
        } else {
            format!(
                "{} mismatches over {} series; first: {}",
                mismatches.len(),
                expected.series.len(),
                mismatches[..mismatches.len().min(3)].join(" | ")
            )
        },
    }
}

/// No loss: every accepted submission is in the log exactly once, and nothing else is.
pub fn check_no_loss(accepted: Ledger, expected: &Expected) -> Verdict {
    let holds = accepted == expected.log && expected.undecodable == 0;
    Verdict {
        invariant: "no_loss",
        holds,
        checked: true,
        detail: if holds {
            format!(
                "{} accepted clicks are in the log exactly once",
                accepted.count
            )
        } else {
            format!(
                "accepted {} clicks (fingerprint {:#x}), log holds {} (fingerprint {:#x}), {} undecodable",
                accepted.count,
                accepted.fingerprint,
                expected.log.count,
                expected.log.fingerprint,
                expected.undecodable
            )
        },
    }
}

/// On-time series that should be final but are not: every series whose close time its
/// partition's watermark has passed. A window ahead of the watermark (a click stamped ahead of
/// the worker's clock) is still open, rightly.
pub fn unfinished_series(
    scan: &[(Series, Lane, StoredCounts)],
    statuses: &[PartitionStatus],
    config: &AggregatorConfig,
) -> Vec<Series> {
    let partitions = statuses.len().max(1) as u32;
    scan.iter()
        .filter(|(_, lane, stored)| *lane == Lane::OnTime && !stored.is_final)
        .filter(|(series, _, _)| {
            let owner = owner_of(series, partitions);
            let watermark_ms = statuses
                .iter()
                .find(|status| status.partition == owner)
                .map_or(0, |status| status.watermark.watermark_ms);
            let close_ms = match series {
                Series::Window(key) => config
                    .window
                    .close_at(key.window_start_ms, config.window.window_ms),
                Series::Hour(key) => config.window.close_at(key.hour_start_ms, HOUR_MS),
            };
            close_ms <= watermark_ms
        })
        .map(|(series, _, _)| *series)
        .collect()
}

/// How far an idle, caught-up partition's reported watermark may trail the clock: the
/// out-of-orderness bound, the idle timeout, an epoch for the status to be written and one for
/// the poll, and a second of scheduling.
fn idle_watermark_lag_ms_max(config: &AggregatorConfig, epoch_ms: u64) -> u64 {
    config.window.max_out_of_orderness_ms + config.window.idle_timeout_ms + 2 * epoch_ms + 1_000
}

/// Partitions whose watermark trails the clock by more than an idle partition's may.
fn stalled_watermarks(
    statuses: &[PartitionStatus],
    config: &AggregatorConfig,
    epoch_ms: u64,
    now_ms: u64,
) -> Vec<String> {
    let lag_max = idle_watermark_lag_ms_max(config, epoch_ms);
    statuses
        .iter()
        .filter(|status| status.watermark.watermark_ms + lag_max < now_ms)
        .map(|status| {
            format!(
                "partition {} watermark {} trails the clock {now_ms} by more than {lag_max} ms",
                status.partition, status.watermark.watermark_ms
            )
        })
        .collect()
}

/// What the ingest crashes of a run lost: the clicks each crashed node still held in its
/// buffer (lost for certain: the log never saw them), and those in an append it had started
/// (lost or not, whichever the log says).
#[derive(Debug, Default)]
pub struct CrashLosses {
    pub certain: ClickMultiset,
    pub possible: ClickMultiset,
}

impl CrashLosses {
    /// One crash: the node's buffered records and its appends in flight.
    pub fn record(&mut self, buffered: &[Vec<u8>], in_flight: &[RecordBlock]) {
        for record in buffered {
            if let Ok(click) = codec::decode(record) {
                self.certain.add(&click);
            }
        }
        for record in in_flight.iter().flat_map(RecordBlock::iter) {
            if let Ok(click) = codec::decode(record) {
                self.possible.add(&click);
            }
        }
    }
}

/// Exact no-loss under ingest crashes. Every click in the log was accepted (or appended by the
/// duplicating producer), and the accepted clicks missing from it lie between two sets, click
/// by click: at least those a crashed node held only in its buffer, at most those plus its
/// appends in flight. Nothing is bounded by a multiplication, so one click lost anywhere else
/// (or a buffered one that still reached the log) fails it.
pub fn check_no_loss_exact(
    accepted: &ClickMultiset,
    appended_again: &ClickMultiset,
    expected: &Expected,
    losses: &CrashLosses,
) -> Verdict {
    let log = expected
        .log_clicks
        .as_ref()
        .expect("expected_from_log(keep_clicks = true)");
    let mut sent = accepted.clone();
    sent.add_all(appended_again);
    let (mut extra, mut lost, mut unexplained, mut reappeared) = (0i64, 0i64, 0i64, 0i64);
    for (key, count) in &sent.counts {
        let in_log = log.counts.get(key).copied().unwrap_or(0);
        let missing = (count - in_log).max(0);
        lost += missing;
        extra += (in_log - count).max(0);
        let certain = losses.certain.counts.get(key).copied().unwrap_or(0);
        let possible = losses.possible.counts.get(key).copied().unwrap_or(0);
        unexplained += (missing - certain - possible).max(0);
        reappeared += (certain - missing).max(0);
    }
    extra += log
        .counts
        .iter()
        .filter(|(key, _)| !sent.counts.contains_key(key))
        .map(|(_, count)| count)
        .sum::<i64>();
    let holds = extra == 0 && unexplained == 0 && reappeared == 0;
    Verdict {
        invariant: "no_loss",
        holds,
        checked: true,
        detail: format!(
            "{} accepted, {} in the log, {extra} in the log but never accepted; {lost} missing: \
             {} were buffered in a crashed ingest node and {} in its appends in flight; {unexplained} \
             missing beyond those, {reappeared} buffered ones in the log anyway",
            accepted.total(),
            log.total(),
            losses.certain.total(),
            losses.possible.total(),
        ),
    }
}

/// The clock the workers ran on, for liveness to check that idle watermarks followed it.
#[derive(Clone, Copy, Debug)]
pub struct WorkerClock {
    pub now_ms: u64,
    pub epoch_ms: u64,
}

impl WorkerClock {
    /// The system clock (real time, or virtual time in the simulator).
    pub fn system(epoch_ms: u64) -> WorkerClock {
        WorkerClock {
            now_ms: SystemClock.now_ms(),
            epoch_ms,
        }
    }
}

/// What a drained run is judged on, by both runners (the simulator and `adclick run`).
pub struct Evidence<'a> {
    pub expected: &'a Expected,
    pub scan: &'a [(Series, Lane, StoredCounts)],
    /// The partition statuses once drained.
    pub drained: &'a [PartitionStatus],
    pub config: &'a AggregatorConfig,
    /// The clock reading the statuses are as of.
    pub drained_clock: WorkerClock,
    pub drain_ms: u64,
}

/// The verdict of every invariant a scenario expects, in its order. The shared ones are judged
/// here; no loss, determinism and billing equality depend on what the runner recorded, so
/// `specific` gives them.
pub fn verdicts(
    invariants: &[adclick_engine::scenario::Invariant],
    evidence: &Evidence<'_>,
    mut specific: impl FnMut(adclick_engine::scenario::Invariant) -> Verdict,
) -> Vec<Verdict> {
    use adclick_engine::scenario::Invariant;
    let mut verdicts = Vec::with_capacity(invariants.len());
    for invariant in invariants {
        verdicts.push(match invariant {
            Invariant::ExactlyOnce => check_exactly_once(evidence.expected, evidence.scan),
            Invariant::Liveness => {
                let mut verdict = check_liveness(
                    evidence.expected,
                    evidence.drained,
                    evidence.scan,
                    evidence.config,
                    Some(evidence.drained_clock),
                    evidence.drain_ms,
                );
                // A run that logged clicks and left no status never processed them.
                verdict.holds &= !evidence.drained.is_empty() || evidence.expected.log.count == 0;
                verdict
            }
            other => specific(*other),
        });
    }
    verdicts
}

/// Liveness: every partition consumed to the end of the log, its watermark following the
/// workers' clock (when given), and every due window final: without the clock check, a stalled
/// watermark would make every window "not yet due".
pub fn check_liveness(
    expected: &Expected,
    statuses: &[PartitionStatus],
    scan: &[(Series, Lane, StoredCounts)],
    config: &AggregatorConfig,
    clock: Option<WorkerClock>,
    waited_ms: u64,
) -> Verdict {
    let mut problems = Vec::new();
    for (index, end) in expected.end_offsets.iter().enumerate() {
        let status = statuses
            .iter()
            .find(|status| status.partition.0 as usize == index);
        match status {
            Some(status) if status.next_offset == *end => {}
            Some(status) => problems.push(format!(
                "partition {index} at offset {} of {}",
                status.next_offset.0, end.0
            )),
            None if end.0 == 0 => {}
            None => problems.push(format!("partition {index} never reported")),
        }
    }
    if let Some(clock) = clock {
        problems.extend(stalled_watermarks(
            statuses,
            config,
            clock.epoch_ms,
            clock.now_ms,
        ));
    }
    let open = unfinished_series(scan, statuses, config);
    if !open.is_empty() {
        problems.push(format!(
            "{} on-time series past their close time are not final, first {:?}",
            open.len(),
            &open[..open.len().min(2)]
        ));
    }
    Verdict {
        invariant: "liveness",
        holds: problems.is_empty(),
        checked: true,
        detail: if problems.is_empty() {
            format!(
                "lag 0, watermarks follow the clock and every due window final {waited_ms} ms after traffic stopped"
            )
        } else {
            format!("after {waited_ms} ms: {}", problems.join("; "))
        },
    }
}

/// Waits until every partition has consumed the log, its watermark follows the clock and every
/// due window is final, or the timeout passes (real or virtual time, whichever the clock runs
/// on). Returns the last partition statuses seen.
pub async fn wait_until_drained(
    log: &dyn Log,
    store: &dyn RealtimeStore,
    config: &AggregatorConfig,
    epoch_ms: u64,
    timeout: std::time::Duration,
) -> anyhow::Result<Vec<PartitionStatus>> {
    let deadline_ms = SystemClock.now_ms() + timeout.as_millis() as u64;
    loop {
        let statuses = store.partition_status().await?;
        let mut caught_up = true;
        for partition in (0..log.partitions()).map(PartitionId) {
            let end = log.end_offset(partition).await?;
            let at = statuses
                .iter()
                .find(|s| s.partition == partition)
                .map_or(Offset(0), |s| s.next_offset);
            caught_up &= at == end;
        }
        let open = unfinished_series(&store.scan().await?, &statuses, config);
        let now_ms = SystemClock.now_ms();
        let stalled = stalled_watermarks(&statuses, config, epoch_ms, now_ms);
        if (caught_up && open.is_empty() && stalled.is_empty()) || now_ms >= deadline_ms {
            return Ok(statuses);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Billing equality, the pure part the simulator can run: the billing job's counting
/// (`core::billing`, dedup over the whole period) over the whole log equals the oracle's unique
/// non-fraud clicks per (campaign, hour). `adclick run` also goes through Parquet, the billing
/// store and reconciliation.
pub async fn check_billing_equality(
    log: &dyn Log,
    fraud: &FraudSchedule,
    config: &AggregatorConfig,
    expected: &Expected,
) -> anyhow::Result<Verdict> {
    let oracle_hours = expected.unique_by_campaign_hour();
    let (Some(first), Some(last)) = (
        oracle_hours.keys().map(|(_, hour)| *hour).min(),
        oracle_hours.keys().map(|(_, hour)| *hour).max(),
    ) else {
        return Ok(Verdict::skipped("billing_equality", "no clicks"));
    };
    let mut biller = adclick_core::billing::PeriodBiller::new(
        fraud.clone(),
        config.clicks_per_ip_per_minute_max,
        first,
        last + HOUR_MS,
    );
    for partition in (0..log.partitions()).map(PartitionId) {
        let end = log.end_offset(partition).await?;
        read_partition(log, partition, end, |offset, bytes| {
            if let Ok(click) = codec::decode(bytes) {
                biller.on_click(partition, offset, (&click).into());
            }
        })
        .await?;
    }
    let billed: BTreeMap<(CampaignId, u64), u64> = biller
        .finish()
        .into_iter()
        .map(|(key, bill)| ((key.campaign_id, key.hour_start_ms), bill.billable))
        .collect();
    let differing = billing_mismatches(&oracle_hours, &billed);
    Ok(Verdict {
        invariant: "billing_equality",
        holds: differing.is_empty(),
        checked: true,
        detail: if differing.is_empty() {
            format!(
                "{} (campaign, hour) billed = the oracle ({} billable)",
                billed.values().filter(|billable| **billable > 0).count(),
                billed.values().sum::<u64>()
            )
        } else {
            format!("billing differs from the oracle: {}", differing.join(" | "))
        },
    })
}

/// The fraud lists the workers judged with, from their checkpoints (`ListHistory`), each
/// version's text from the run's registry: what billing reads back in production. A partition
/// that never checkpointed gets the registry's current list.
pub async fn workers_schedule(
    checkpoints: &adclick_engine::checkpoint::CheckpointStore,
    partitions: u32,
    registry: &FraudRegistry,
) -> anyhow::Result<FraudSchedule> {
    let mut schedule = FraudSchedule::single(registry.current());
    for partition in (0..partitions).map(PartitionId) {
        let history = checkpoints.list_history(partition).await?;
        let mut changes = Vec::with_capacity(history.changes.len());
        for change in &history.changes {
            let list = registry.get(change.version).ok_or_else(|| {
                anyhow::anyhow!(
                    "partition {partition}'s checkpoints name fraud list version {}, which the run never published",
                    change.version.0
                )
            })?;
            changes.push((change.from_offset, list));
        }
        schedule.set_partition(partition, changes, history.checkpointed_to);
    }
    Ok(schedule)
}

/// The oracle's expectation of a run, judging fraud as the workers did (the list each
/// partition's checkpoints name per offset): the schedule, and what the log says.
pub async fn expected_as_judged(
    log: &dyn Log,
    checkpoints: &adclick_engine::checkpoint::CheckpointStore,
    registry: &std::sync::RwLock<FraudRegistry>,
    config: &AggregatorConfig,
    keep_clicks: bool,
    history: Option<&StatusHistory>,
) -> anyhow::Result<(FraudSchedule, Expected)> {
    let published = registry.read().expect("fraud registry lock").clone();
    let fraud = workers_schedule(checkpoints, log.partitions(), &published).await?;
    let expected = expected_from_log_with(log, &fraud, config, keep_clicks, history).await?;
    Ok((fraud, expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use adclick_core::event::ClickEvent;

    fn clicks(ids: std::ops::Range<u128>) -> Vec<ClickEvent> {
        let ip = "10.0.0.1".parse().unwrap();
        ids.map(|id| ClickEvent::example(id, CampaignId(1), ip, 1_000))
            .collect()
    }

    fn multiset(events: &[ClickEvent]) -> ClickMultiset {
        let mut set = ClickMultiset::default();
        for event in events {
            set.add(&event.view(Salt(0)));
        }
        set
    }

    fn records(events: &[ClickEvent]) -> Vec<Vec<u8>> {
        events
            .iter()
            .map(|event| codec::encode(event, Salt(0)))
            .collect()
    }

    fn block(events: &[ClickEvent]) -> RecordBlock {
        let mut block = RecordBlock::default();
        for record in records(events) {
            block.push(&record);
        }
        block
    }

    /// Ten accepted clicks; a crash held 5..7 in its buffer and 7..9 in an append in flight.
    fn judge(in_log: &[(u128, u128)]) -> Verdict {
        let mut log = ClickMultiset::default();
        for (from, to) in in_log {
            log.add_all(&multiset(&clicks(*from..*to)));
        }
        let expected = Expected {
            log_clicks: Some(log),
            ..Expected::default()
        };
        let mut losses = CrashLosses::default();
        losses.record(&records(&clicks(5..7)), &[block(&clicks(7..9))]);
        let empty = ClickMultiset::default();
        check_no_loss_exact(&multiset(&clicks(0..10)), &empty, &expected, &losses)
    }

    #[test]
    fn the_missing_clicks_must_lie_between_the_buffered_and_the_in_flight_ones() {
        // The append in flight landed, or it did not: both hold.
        for in_log in [vec![(0, 5), (7, 10)], vec![(0, 5), (9, 10)]] {
            let verdict = judge(&in_log);
            assert!(verdict.holds, "{in_log:?}: {}", verdict.detail);
        }
        // Click 9 lost too: it was neither buffered nor in flight.
        let verdict = judge(&[(0, 5)]);
        assert!(!verdict.holds, "{}", verdict.detail);
        assert!(
            verdict.detail.contains("1 missing beyond those"),
            "{}",
            verdict.detail
        );
    }

    #[test]
    fn one_accepted_click_lost_outside_a_crashed_buffer_fails() {
        // As exact as it gets (0..5 and 7..10 in the log), but click 2 dropped as well.
        let verdict = judge(&[(0, 2), (3, 5), (7, 10)]);
        assert!(!verdict.holds, "{}", verdict.detail);
        assert!(
            verdict.detail.contains("1 missing beyond those"),
            "{}",
            verdict.detail
        );
    }

    #[test]
    fn a_buffered_click_that_reached_the_log_anyway_fails() {
        let verdict = judge(&[(0, 10)]);
        assert!(!verdict.holds, "{}", verdict.detail);
        assert!(
            verdict.detail.contains("2 buffered ones in the log anyway"),
            "{}",
            verdict.detail
        );
    }
}
