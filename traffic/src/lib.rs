//! Deterministic click traffic from a scenario: Zipf-distributed campaigns, a viral campaign's
//! ramp, client resends (duplicates), late events (of every kind of click: ordinary, bots and
//! high-rate IPs), clock skew (clamped to what ingest accepts), bots from the fraud list and
//! high-rate IPs.
//!
//! **Invariant:** the same scenario and seed give the same events, in the same order, for the
//! same sequence of `next_batch` times. Nothing here reads a clock: time comes in as an argument.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};

use adclick_core::*;
use adclick_engine::scenario::Scenario;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// Fraud-list IPs come from the benchmarking range 198.18.0.0/15.
const BOT_IPS: u32 = 1_024;
const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 Version/17.1 Safari/605.1.15",
];
const BOT_USER_AGENT: &str = "ClickBot/3.1 (+fraud)";

/// What kind of click the generator meant to send: the oracle's ground truth of intent.
///
/// Any fresh click can be late. `Late` is a late ordinary click, as it always was; late bots and
/// late high-rate clicks keep their own kinds (`LateBot`, `LateHighRate`) so that nothing that
/// counts by kind has to guess which of the two a late click was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClickKind {
    Normal,
    Resend,
    Late,
    Bot,
    HighRate,
    LateBot,
    LateHighRate,
}

impl ClickKind {
    /// Whether the click's event time lags the run's clock by `late_lag_ms`.
    pub fn is_late(self) -> bool {
        matches!(
            self,
            ClickKind::Late | ClickKind::LateBot | ClickKind::LateHighRate
        )
    }

    /// Whether the click comes from an IP on the fraud list, on time or late.
    pub fn is_bot(self) -> bool {
        matches!(self, ClickKind::Bot | ClickKind::LateBot)
    }

    /// Whether the click comes from one of the high-rate IPs, on time or late.
    pub fn is_high_rate(self) -> bool {
        matches!(self, ClickKind::HighRate | ClickKind::LateHighRate)
    }

    /// The same kind of click, late.
    fn late(self) -> ClickKind {
        match self {
            ClickKind::Bot | ClickKind::LateBot => ClickKind::LateBot,
            ClickKind::HighRate | ClickKind::LateHighRate => ClickKind::LateHighRate,
            ClickKind::Normal | ClickKind::Late | ClickKind::Resend => ClickKind::Late,
        }
    }
}

/// Clicks and what the generator meant each to be, side by side, so that the clicks can be
/// submitted as one slice without copying.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GeneratedBatch {
    pub events: Vec<ClickEvent>,
    pub kinds: Vec<ClickKind>,
}

impl GeneratedBatch {
    pub fn clear(&mut self) {
        self.events.clear();
        self.kinds.clear();
    }

    fn push(&mut self, event: ClickEvent, kind: ClickKind) {
        self.events.push(event);
        self.kinds.push(kind);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ClickEvent, ClickKind)> {
        self.events.iter().zip(self.kinds.iter().copied())
    }
}

pub struct Generator {
    scenario: Scenario,
    rng: Pcg64Mcg,
    campaign_cdf: Vec<f64>,
    resends: VecDeque<(u64, ClickEvent)>,
    generated: u64,
}

impl Generator {
    pub fn new(scenario: &Scenario) -> Generator {
        let exponent = scenario.traffic.zipf_exponent;
        let mut cdf = Vec::with_capacity(scenario.traffic.campaigns as usize);
        let mut total = 0.0;
        for rank in 1..=scenario.traffic.campaigns {
            total += 1.0 / (rank as f64).powf(exponent);
            cdf.push(total);
        }
        for value in &mut cdf {
            *value /= total;
        }
        Generator {
            scenario: scenario.clone(),
            rng: Pcg64Mcg::seed_from_u64(scenario.seed),
            campaign_cdf: cdf,
            resends: VecDeque::new(),
            generated: 0,
        }
    }

    /// The fraud list the bots' IPs are on, in the plain-text list format.
    /// The fraud list the generator's bots are on (`fraud_list_text(1)`).
    pub fn fraud_list_text(&self) -> String {
        fraud_list_text(1)
    }

    pub fn generated(&self) -> u64 {
        self.generated
    }

    fn pick_campaign(&mut self, elapsed_ms: u64) -> CampaignId {
        let anomalies = &self.scenario.anomalies;
        if anomalies.viral_campaign_share > 0.0 {
            let ramp_ms = (anomalies.viral_ramp_s * 1000.0).max(1.0);
            let share = anomalies.viral_campaign_share * (elapsed_ms as f64 / ramp_ms).min(1.0);
            if self.rng.random_bool(share) {
                return CampaignId(1);
            }
        }
        let draw: f64 = self.rng.random();
        let index = self.campaign_cdf.partition_point(|value| *value < draw);
        CampaignId(index.min(self.campaign_cdf.len() - 1) as u64 + 1)
    }

    /// Appends `count` clicks due at `now_ms` (wall clock of the run), `elapsed_ms` into it.
    /// Resends that fall due go first.
    pub fn next_batch(
        &mut self,
        now_ms: u64,
        elapsed_ms: u64,
        count: usize,
        out: &mut GeneratedBatch,
    ) {
        let mut remaining = count;
        while remaining > 0 {
            match self.resends.front() {
                Some((due, _)) if *due <= now_ms => {
                    let (_, event) = self.resends.pop_front().expect("front exists");
                    out.push(event, ClickKind::Resend);
                    remaining -= 1;
                }
                _ => break,
            }
        }
        for _ in 0..remaining {
            let (event, kind) = self.fresh_click(now_ms, elapsed_ms);
            if self
                .rng
                .random_bool(self.scenario.anomalies.duplicate_fraction)
            {
                let due = now_ms + self.scenario.anomalies.duplicate_delay_ms;
                self.resends.push_back((due, event.clone()));
            }
            out.push(event, kind);
        }
        self.generated += count as u64;
    }

    /// Resends still waiting: a run flushes them before it ends.
    pub fn pending_resends(&self) -> usize {
        self.resends.len()
    }

    fn fresh_click(&mut self, now_ms: u64, elapsed_ms: u64) -> (ClickEvent, ClickKind) {
        let campaign_id = self.pick_campaign(elapsed_ms);
        let traffic = &self.scenario.traffic;
        let anomalies = &self.scenario.anomalies;
        let ad_id = AdId(self.rng.random_range(1..=traffic.ads_per_campaign));
        let roll: f64 = self.rng.random();
        let (kind, ip, user_agent) = if roll < anomalies.bot_fraction {
            let ip = bot_ip(self.rng.random_range(0..BOT_IPS));
            let agent = if self.rng.random_bool(0.5) {
                BOT_USER_AGENT
            } else {
                USER_AGENTS[0]
            };
            (ClickKind::Bot, ip, agent)
        } else if roll < anomalies.bot_fraction + anomalies.high_rate_ip_fraction {
            let index = self.rng.random_range(0..anomalies.high_rate_ips.max(1)) as u32;
            (
                ClickKind::HighRate,
                IpAddr::V4(Ipv4Addr::from(0xcb00_7100 + index)),
                USER_AGENTS[1],
            )
        } else {
            let index = self.rng.random_range(0..traffic.ips) as u32;
            let agent = USER_AGENTS[self.rng.random_range(0..USER_AGENTS.len())];
            (
                ClickKind::Normal,
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + index)),
                agent,
            )
        };
        let skew = anomalies.clock_skew_ms as i64;
        let skew_ms = if skew > 0 {
            self.rng.random_range(-skew..=skew)
        } else {
            0
        };
        // Ingest refuses event times more than `EVENT_TIME_FUTURE_MS_MAX` past its clock, which
        // is at or after `now_ms` when the click arrives: a skewed client never goes past it.
        let mut event_time_ms = now_ms
            .saturating_add_signed(skew_ms)
            .min(now_ms.saturating_add(limits::EVENT_TIME_FUTURE_MS_MAX));
        // Every kind of click can be late, bots and high-rate IPs too: a late click must be
        // judged exactly as an on-time one would be, whatever it is.
        let kind = if self.rng.random_bool(anomalies.late_fraction) {
            event_time_ms = now_ms.saturating_sub(anomalies.late_lag_ms);
            kind.late()
        } else {
            kind
        };
        let country_index = self.rng.random_range(0..traffic.countries.len());
        let country =
            Country::parse(&traffic.countries[country_index]).expect("validated scenario");
        let event = ClickEvent {
            click_id: ClickId(self.rng.random::<u128>() | 1),
            campaign_id,
            ad_id,
            user_id: UserId(self.rng.random_range(1..=traffic.users)),
            ip,
            user_agent: user_agent.to_owned(),
            country,
            event_time_ms: EventTimeMs(event_time_ms),
            publisher_id: Some(PublisherId(self.rng.random_range(1..=64))),
        };
        (event, kind)
    }
}

/// Version `version` of the fraud list, as an operator's rotation would publish it: version
/// 1 lists every bot IP and the bot user agent; each later version drops a different third
/// of the bot IPs and lists the user agent only in odd versions, so a rotation changes what
/// is fraud for clicks already in flight.
pub fn fraud_list_text(version: u64) -> String {
    let mut text = format!("# generated by adclick-traffic\nversion {version}\n");
    for index in 0..BOT_IPS {
        let dropped = version > 1 && (index as u64 + version).is_multiple_of(3);
        if !dropped {
            text.push_str(&format!("ip {}\n", bot_ip(index)));
        }
    }
    if version % 2 == 1 {
        text.push_str(&format!("ua {BOT_USER_AGENT}\n"));
    }
    text
}

fn bot_ip(index: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0xc612_0000 + index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        let text = "version = 1\nname = \"t\"\nseed = 7\n[traffic]\nrate_per_s = 1000\nduration_s = 1.0\ncampaigns = 50\nads_per_campaign = 3\n[anomalies]\nduplicate_fraction = 0.1\nduplicate_delay_ms = 10\nlate_fraction = 0.05\nlate_lag_ms = 100000\nbot_fraction = 0.02\n";
        Scenario::parse(text, "t.toml").unwrap()
    }

    fn run(generator: &mut Generator) -> Vec<(ClickEvent, ClickKind)> {
        let mut out = GeneratedBatch::default();
        for step in 0..50u64 {
            generator.next_batch(1_700_000_000_000 + step * 5, step * 5, 100, &mut out);
        }
        out.iter()
            .map(|(event, kind)| (event.clone(), kind))
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        let first = run(&mut Generator::new(&scenario()));
        let second = run(&mut Generator::new(&scenario()));
        assert_eq!(first, second);
        let mut other = scenario();
        other.seed = 8;
        assert_ne!(run(&mut Generator::new(&other)), first);
    }

    #[test]
    fn anomalies_appear_in_roughly_their_fractions() {
        let events = run(&mut Generator::new(&scenario()));
        let share = |matches: fn(ClickKind) -> bool| {
            events.iter().filter(|(_, kind)| matches(*kind)).count() as f64 / events.len() as f64
        };
        let resends = share(|kind| kind == ClickKind::Resend);
        assert!((0.05..0.15).contains(&resends), "resends {resends}");
        let late = share(ClickKind::is_late);
        assert!((0.02..0.08).contains(&late), "late {late}");
        let bots = share(ClickKind::is_bot);
        assert!((0.005..0.04).contains(&bots), "bots {bots}");
        let list =
            adclick_core::fraud::FraudList::parse(&Generator::new(&scenario()).fraud_list_text())
                .unwrap();
        let bots = events.iter().filter(|(_, kind)| kind.is_bot());
        assert!(
            bots.into_iter()
                .all(|(event, _)| list.check(event.ip, &event.user_agent)
                    != adclick_core::fraud::FraudVerdict::Clean)
        );
    }

    /// Bots, high-rate IPs and ordinary clients are all late at `late_fraction`, each keeping its
    /// kind, and a late click's resend is the same (late) click again.
    #[test]
    fn every_kind_of_click_can_be_late_and_be_resent() {
        let mut scenario = scenario();
        scenario.anomalies.late_fraction = 0.5;
        scenario.anomalies.bot_fraction = 0.2;
        scenario.anomalies.high_rate_ip_fraction = 0.2;
        scenario.anomalies.high_rate_ips = 3;
        scenario.anomalies.duplicate_fraction = 0.3;
        let mut generator = Generator::new(&scenario);
        let mut out = GeneratedBatch::default();
        let mut late_ids = std::collections::HashSet::new();
        let mut late_resends = 0;
        for step in 0..50u64 {
            out.clear();
            let now_ms = 1_700_000_000_000 + step * 5;
            generator.next_batch(now_ms, step * 5, 100, &mut out);
            for (event, kind) in out.iter() {
                if kind.is_late() {
                    assert_eq!(
                        event.event_time_ms.0,
                        now_ms - scenario.anomalies.late_lag_ms
                    );
                    late_ids.insert(event.click_id);
                } else if kind == ClickKind::Resend && late_ids.contains(&event.click_id) {
                    late_resends += 1;
                }
                if kind.is_high_rate() {
                    assert!(
                        matches!(event.ip, IpAddr::V4(ip) if ip.octets()[..3] == [203, 0, 113])
                    );
                }
            }
        }
        let events = run(&mut Generator::new(&scenario));
        for kind in [ClickKind::Late, ClickKind::LateBot, ClickKind::LateHighRate] {
            let count = events.iter().filter(|(_, k)| *k == kind).count();
            assert!(count > 100, "{kind:?}: {count}");
        }
        assert!(late_resends > 100, "resends of late clicks: {late_resends}");
    }

    /// A skew larger than ingest allows (only a scenario built without validation has one) is
    /// clamped to `EVENT_TIME_FUTURE_MS_MAX` past the run's clock; the full allowance is reached.
    #[test]
    fn skewed_clocks_stay_within_what_ingest_accepts() {
        let bound_ms = limits::EVENT_TIME_FUTURE_MS_MAX;
        for skew_ms in [bound_ms, 10 * bound_ms] {
            let mut scenario = scenario();
            scenario.anomalies.clock_skew_ms = skew_ms;
            let mut generator = Generator::new(&scenario);
            let mut out = GeneratedBatch::default();
            let mut ahead_ms_max = 0;
            for step in 0..50u64 {
                out.clear();
                let now_ms = 1_700_000_000_000 + step * 5;
                generator.next_batch(now_ms, step * 5, 100, &mut out);
                for (event, _) in out.iter() {
                    let ahead_ms = event.event_time_ms.0.saturating_sub(now_ms);
                    assert!(ahead_ms <= bound_ms, "skew {skew_ms}: {ahead_ms} ms ahead");
                    ahead_ms_max = ahead_ms_max.max(ahead_ms);
                }
            }
            assert!(
                ahead_ms_max > bound_ms * 9 / 10,
                "skew {skew_ms}: {ahead_ms_max}"
            );
        }
    }
}
