//! The rate rule: unique clicks per IP per event-time minute, past a threshold, are fraud.
//!
//! Counters live in one table per minute, keyed by IP. A barrier does two things to them, and
//! the layout makes both cost what the epoch changed, not what the rule holds:
//! - **Take the changed counters** (a delta checkpoint holds them): each minute lists the IPs
//!   whose counter first changed this epoch, in that order, and the barrier reads exactly those.
//!   The order is a function of the epoch's clicks alone, so checkpoint bytes are the same for a
//!   run that never stopped and one restored mid-way, and nothing needs sorting.
//! - **Drop the closed minutes**: a whole table at a time, reused by the next new minute.
//!
//! One table for every (IP, minute) did both with passes over all of it and a sort of the
//! changed keys: a third of every barrier in the whole-chain bench, because late clicks open
//! counters in old minutes at nearly every barrier
//! (reports/2026-11-28-rust-svc/hot-path-session-4.md).
//!
//! **Tainted counters.** The aggregator counts only the clicks it can verify (`window` names the
//! lanes). When a click of an IP and minute goes unverified while the minute still has live
//! counters, the counter no longer holds every unique click billing will count for it, so it is
//! *tainted*: every later unique click of that IP and minute is unverified too, and billing,
//! which counts the whole period, decides them. So a verified click's rate decision is always
//! billing's.
//!
//! **Invariant:** the rule's decisions and checkpoint form depend only on the sequence of
//! calls; the table's hasher has a fixed seed and slot order never leaves this module.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::fraud::ip_key;
use crate::limits;
use crate::open_table::{OpenTable, key_hash};
use crate::probing::ProbeSlots;
use crate::window::Counts;

/// Key of the rate rule's counter: an IP in one event-time minute.
///
/// The IP is kept as two `u64` halves (high first, so the derived order is the `u128`'s) so that
/// a counter slot aligns to 8 bytes, not 16. On the wire (checkpoints) it is the `u128` it
/// always was.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(from = "RateKeyWire", into = "RateKeyWire")]
pub struct RateKey {
    ip_halves: IpHalves,
    pub minute_start_ms: u64,
}

/// An IP as `ip_key` gives it, high half first.
type IpHalves = [u64; 2];

/// `RateKey` as checkpoints hold it.
#[derive(Clone, Copy, Serialize, Deserialize)]
struct RateKeyWire {
    ip: u128,
    minute_start_ms: u64,
}

impl From<RateKeyWire> for RateKey {
    fn from(wire: RateKeyWire) -> RateKey {
        RateKey::new(wire.ip, wire.minute_start_ms)
    }
}

impl From<RateKey> for RateKeyWire {
    fn from(key: RateKey) -> RateKeyWire {
        RateKeyWire {
            ip: key.ip(),
            minute_start_ms: key.minute_start_ms,
        }
    }
}

impl RateKey {
    /// The key of `ip` (as `ip_key` gives it) in the minute starting at `minute_start_ms`.
    pub fn new(ip: u128, minute_start_ms: u64) -> RateKey {
        RateKey {
            ip_halves: [(ip >> 64) as u64, ip as u64],
            minute_start_ms,
        }
    }

    pub fn ip(&self) -> u128 {
        u128::from(self.ip_halves[0]) << 64 | u128::from(self.ip_halves[1])
    }

    /// The hash `RateRule::prefetch` and `RateRule::admit_hashed` take: of the IP, since each
    /// minute has its own table.
    #[inline]
    pub fn hash(&self) -> u64 {
        key_hash(&self.ip_halves)
    }
}

/// One IP's clicks in one minute.
#[derive(Clone, Copy, Debug, Default)]
struct Counter {
    clicks: u32,
    /// Changed since the last barrier (and listed in its minute's `changed`).
    changed: bool,
    /// An unverified click of this IP and minute came by: the count is no longer complete.
    tainted: bool,
}

#[derive(Clone, Debug)]
struct Minute {
    start_ms: u64,
    counters: OpenTable<IpHalves, Counter>,
    /// The IPs whose counter changed since the last barrier, in the order they first changed.
    changed: Vec<IpHalves>,
}

/// Counts unique clicks per IP per event-time minute.
#[derive(Clone, Debug, Default)]
pub struct RateRule {
    pub clicks_per_ip_per_minute_max: u32,
    /// Ascending by start, one per minute that has counters.
    minutes: Vec<Minute>,
    /// A dropped minute's table, emptied, which the next new minute takes over with the memory
    /// it grew to, instead of growing a table from nothing every minute.
    spare: Option<OpenTable<IpHalves, Counter>>,
}

/// How many changed counters ahead `take_changed` requests from memory.
const TAKE_PREFETCH_DISTANCE: usize = 16;

impl RateRule {
    pub fn new(clicks_per_ip_per_minute_max: u32) -> RateRule {
        RateRule {
            clicks_per_ip_per_minute_max,
            ..RateRule::default()
        }
    }

    /// The counter a click from `ip` at `event_time_ms` counts toward.
    pub fn key(ip: IpAddr, event_time_ms: u64) -> RateKey {
        RateKey::new(ip_key(ip), minute_start(event_time_ms))
    }

    /// Counts one unique click and says whether it is within the rule.
    pub fn admit(&mut self, ip: IpAddr, event_time_ms: u64) -> bool {
        let key = RateRule::key(ip, event_time_ms);
        self.admit_hashed(key, key.hash())
    }

    /// `admit` for a key whose hash (`RateKey::hash`) the caller computed ahead, to prefetch.
    pub fn admit_hashed(&mut self, key: RateKey, hash: u64) -> bool {
        debug_assert_eq!(hash, key.hash(), "a hash from RateKey::hash");
        let minute = self.minute_mut(key.minute_start_ms);
        let counter = minute
            .counters
            .get_or_insert_hashed(key.ip_halves, hash, Counter::default());
        counter.clicks = counter.clicks.saturating_add(1);
        let clicks = counter.clicks;
        if !counter.changed {
            counter.changed = true;
            minute.changed.push(key.ip_halves);
        }
        clicks <= self.clicks_per_ip_per_minute_max
    }

    /// `admit_hashed` for the aggregator, which counts only what it can verify: `None` (and
    /// nothing counted) when the counter is tainted, else whether the click is within the rule.
    pub fn admit_verified_hashed(&mut self, key: RateKey, hash: u64) -> Option<bool> {
        debug_assert_eq!(hash, key.hash(), "a hash from RateKey::hash");
        let max = self.clicks_per_ip_per_minute_max;
        let minute = self.minute_mut(key.minute_start_ms);
        let counter = minute
            .counters
            .get_or_insert_hashed(key.ip_halves, hash, Counter::default());
        if counter.tainted {
            return None;
        }
        counter.clicks = counter.clicks.saturating_add(1);
        let clicks = counter.clicks;
        if !counter.changed {
            counter.changed = true;
            minute.changed.push(key.ip_halves);
        }
        Some(clicks <= max)
    }

    /// Marks the counter of `key` incomplete: an unverified click of its IP and minute came by.
    pub fn taint_hashed(&mut self, key: RateKey, hash: u64) {
        debug_assert_eq!(hash, key.hash(), "a hash from RateKey::hash");
        let minute = self.minute_mut(key.minute_start_ms);
        let counter = minute
            .counters
            .get_or_insert_hashed(key.ip_halves, hash, Counter::default());
        if counter.tainted {
            return;
        }
        counter.tainted = true;
        if !counter.changed {
            counter.changed = true;
            minute.changed.push(key.ip_halves);
        }
    }

    /// Asks the CPU to start loading the counter of the key in the minute starting at
    /// `minute_start_ms` whose `RateKey::hash` is `hash`. A hint only: no effect on results.
    #[inline]
    pub fn prefetch(&self, minute_start_ms: u64, hash: u64) {
        if let Ok(index) = self.minute_index(minute_start_ms) {
            self.minutes[index].counters.prefetch(hash);
        }
    }

    /// How many counters the rule holds.
    pub fn len(&self) -> usize {
        self.minutes
            .iter()
            .map(|minute| minute.counters.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counters changed since the last call, in their checkpoint form (`counters_sorted`):
    /// minute by minute, in the order each IP's counter first changed.
    pub fn take_changed(&mut self) -> Vec<(RateKey, Counts)> {
        let mut taken = Vec::with_capacity(self.minutes.iter().map(|m| m.changed.len()).sum());
        for minute in &mut self.minutes {
            let Minute {
                start_ms,
                counters,
                changed,
            } = minute;
            // Each changed counter is a random read in a table of megabytes: request them ahead.
            for ip in changed.iter().take(TAKE_PREFETCH_DISTANCE) {
                counters.prefetch(key_hash(ip));
            }
            for (index, ip) in changed.iter().enumerate() {
                if let Some(ahead) = changed.get(index + TAKE_PREFETCH_DISTANCE) {
                    counters.prefetch(key_hash(ahead));
                }
                let counter = counters.get_mut(ip).expect("a changed counter is present");
                counter.changed = false;
                let key = RateKey {
                    ip_halves: *ip,
                    minute_start_ms: *start_ms,
                };
                taken.push((key, on_the_wire(counter)));
            }
            // Cleared, not dropped: the list's memory serves the next epoch.
            changed.clear();
        }
        taken
    }

    /// Drops every minute whose `close_at(start)` is at or below the watermark. Changed counters
    /// must have been taken first.
    pub fn retire_before(&mut self, watermark_ms: u64, close_at: impl Fn(u64) -> u64) {
        let closed = self
            .minutes
            .iter()
            .take_while(|minute| close_at(minute.start_ms) <= watermark_ms)
            .count();
        for mut minute in self.minutes.drain(..closed) {
            assert!(
                minute.changed.is_empty(),
                "take changed counters before retiring"
            );
            let keep = self
                .spare
                .as_ref()
                .is_none_or(|spare| spare.slots() < minute.counters.slots());
            if keep {
                minute.counters.clear();
                self.spare = Some(minute.counters);
            }
        }
    }

    /// Every counter, sorted by key, in its checkpoint form: `Counts` with only `clicks` set, as
    /// when the rule kept whole `Counts`, so the checkpoint format did not change with the `u32`.
    pub fn counters_sorted(&self) -> Vec<(RateKey, Counts)> {
        let mut all: Vec<(RateKey, Counts)> = Vec::with_capacity(self.len());
        for minute in &self.minutes {
            assert!(minute.changed.is_empty(), "snapshot only at a barrier");
            all.extend(minute.counters.iter().map(|(ip, counter)| {
                let key = RateKey {
                    ip_halves: *ip,
                    minute_start_ms: minute.start_ms,
                };
                (key, on_the_wire(counter))
            }));
        }
        all.sort_unstable_by_key(|(key, _)| *key);
        all
    }

    /// Restore: sets counters from their checkpoint form, unchanged.
    pub fn restore(&mut self, counters: &[(RateKey, Counts)]) {
        for &(key, counts) in counters {
            // The rule's threshold is a u32: more clicks than that from one IP in a minute is
            // over any threshold either way.
            let clicks = u32::try_from(counts.clicks).unwrap_or(u32::MAX);
            let tainted = counts.fraud != 0;
            let counter = self.minute_mut(key.minute_start_ms).counters.get_or_insert(
                key.ip_halves,
                Counter {
                    clicks,
                    changed: false,
                    tainted,
                },
            );
            counter.clicks = clicks;
            counter.tainted = tainted;
        }
    }

    /// The minute starting at `start_ms`, or where it would go.
    #[inline]
    fn minute_index(&self, start_ms: u64) -> Result<usize, usize> {
        // Clicks nearly all fall in the newest minute: try it before searching.
        match self.minutes.last() {
            Some(newest) if newest.start_ms == start_ms => Ok(self.minutes.len() - 1),
            _ => self
                .minutes
                .binary_search_by_key(&start_ms, |minute| minute.start_ms),
        }
    }

    fn minute_mut(&mut self, start_ms: u64) -> &mut Minute {
        let index = match self.minute_index(start_ms) {
            Ok(index) => index,
            Err(index) => {
                let minute = Minute {
                    start_ms,
                    counters: self.spare.take().unwrap_or_default(),
                    changed: Vec::new(),
                };
                self.minutes.insert(index, minute);
                index
            }
        };
        &mut self.minutes[index]
    }
}

/// The start of the rate rule's minute holding `event_time_ms`.
#[inline]
pub fn minute_start(event_time_ms: u64) -> u64 {
    event_time_ms - event_time_ms % limits::RATE_RULE_WINDOW_MS
}

/// A counter's checkpoint form: its clicks in `clicks`, and 1 in `fraud` when it is tainted
/// (the field is otherwise unused, so the format did not change for the taint).
fn on_the_wire(counter: &Counter) -> Counts {
    Counts {
        clicks: u64::from(counter.clicks),
        unique: 0,
        fraud: u64::from(counter.tainted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Checkpoints written before the key was split into halves hold `(u128, u64)`: the key's
    /// wire form must stay exactly that, and its order the `u128`'s.
    #[test]
    fn a_rate_key_keeps_its_wire_form_and_order() {
        let ip = ip_key("2001:db8::7".parse().unwrap());
        let key = RateKey::new(ip, 120_000);
        assert_eq!(key.ip(), ip);
        assert_eq!(
            postcard::to_allocvec(&key).unwrap(),
            postcard::to_allocvec(&(ip, 120_000u64)).unwrap()
        );
        let back: RateKey = postcard::from_bytes(&postcard::to_allocvec(&key).unwrap()).unwrap();
        assert_eq!(back, key);
        let low = RateKey::new(u128::from(u64::MAX), 0);
        let high = RateKey::new(1 << 64, 0);
        assert!(low < high, "ordered as the u128, high half first");
    }

    /// A counter slot: the IP's 16 bytes and an 8-byte counter.
    #[test]
    fn a_rate_counter_slot_is_24_bytes() {
        assert_eq!(std::mem::size_of::<(IpHalves, Counter)>(), 24);
    }

    #[test]
    fn the_rate_rule_flags_clicks_past_the_threshold_in_a_minute() {
        let mut rule = RateRule::new(2);
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        assert!(rule.admit(ip, 1_000));
        assert!(rule.admit(ip, 2_000));
        assert!(!rule.admit(ip, 59_999));
        assert!(rule.admit(ip, 60_000), "a new minute starts a new count");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Click {
            ip: u8,
            minute: u64,
        },
        Barrier {
            watermark_minutes: u64,
        },
        /// A full checkpoint, dropped and restored.
        Restore,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            12 => (0u8..40, 0u64..8).prop_map(|(ip, minute)| Op::Click { ip, minute }),
            2 => (0u64..9).prop_map(|watermark_minutes| Op::Barrier { watermark_minutes }),
            1 => Just(Op::Restore),
        ]
    }

    proptest! {
        /// Against a BTreeMap of (IP, minute) counts: every decision, every barrier's changed
        /// counters (each once, with its count) and the sorted dump, through minutes dropped
        /// out of order of their creation, reused tables and restores.
        #[test]
        fn matches_a_map_of_counts(ops in proptest::collection::vec(op(), 1..400)) {
            const MAX: u32 = 3;
            let mut rule = RateRule::new(MAX);
            let mut model: BTreeMap<RateKey, u32> = BTreeMap::new();
            let mut changed_in_model: Vec<RateKey> = Vec::new();
            let close_at = |start: u64| start + 60_000;
            for op in ops {
                match op {
                    Op::Click { ip, minute } => {
                        let ip = IpAddr::from([10, 0, 0, ip]);
                        let event_time_ms = minute * 60_000 + u64::from(ip_key(ip) as u8) * 100;
                        let key = RateRule::key(ip, event_time_ms);
                        let clicks = model.entry(key).or_insert(0);
                        *clicks += 1;
                        if !changed_in_model.contains(&key) {
                            changed_in_model.push(key);
                        }
                        prop_assert_eq!(rule.admit(ip, event_time_ms), *clicks <= MAX);
                    }
                    Op::Barrier { watermark_minutes } => {
                        let taken = rule.take_changed();
                        let taken_keys: Vec<RateKey> = taken.iter().map(|(key, _)| *key).collect();
                        let mut expected = changed_in_model.clone();
                        // Minute by minute, each in order of first change.
                        expected.sort_by_key(|key| key.minute_start_ms);
                        prop_assert_eq!(taken_keys, expected);
                        for (key, counts) in &taken {
                            prop_assert_eq!(counts.clicks, u64::from(model[key]));
                        }
                        changed_in_model.clear();
                        let watermark_ms = watermark_minutes * 60_000;
                        rule.retire_before(watermark_ms, close_at);
                        model.retain(|key, _| close_at(key.minute_start_ms) > watermark_ms);
                        prop_assert_eq!(rule.len(), model.len());
                    }
                    Op::Restore => {
                        if !changed_in_model.is_empty() {
                            continue;
                        }
                        let dump = rule.counters_sorted();
                        let expected: Vec<(RateKey, u64)> =
                            model.iter().map(|(key, clicks)| (*key, u64::from(*clicks))).collect();
                        let dumped: Vec<(RateKey, u64)> =
                            dump.iter().map(|(key, counts)| (*key, counts.clicks)).collect();
                        prop_assert_eq!(dumped, expected);
                        rule = RateRule::new(MAX);
                        rule.restore(&dump);
                        prop_assert!(rule.take_changed().is_empty(), "restored counters are unchanged");
                    }
                }
            }
        }
    }
}
