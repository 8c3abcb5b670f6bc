//! Generated inputs shared by the property tests: a stream of operator calls with dups,
//! out-of-order and late clicks, idle periods and barriers.

use std::net::{IpAddr, Ipv4Addr};

use adclick_core::dedup::DedupConfig;
use adclick_core::operator::AggregatorConfig;
use adclick_core::window::WindowConfig;
use adclick_core::*;
use proptest::prelude::*;

/// Small windows and bounds so that short inputs cross every rule.
pub fn config() -> AggregatorConfig {
    AggregatorConfig {
        window: WindowConfig {
            window_ms: 1_000,
            allowed_lateness_ms: 2_000,
            max_out_of_orderness_ms: 500,
            idle_timeout_ms: 1_000,
            late_retention_ms: 3_600_000 + 2_000,
        },
        dedup: DedupConfig {
            horizon_ms: 4_000,
            bucket_ms: 1_000,
            ids_max: 1 << 20,
            ids_expected: 1024,
        },
        clicks_per_ip_per_minute_max: 3,
        full_checkpoint_every_epochs: 3,
    }
}

#[derive(Clone, Debug)]
pub enum Step {
    Click {
        id: u8,
        campaign: u8,
        ad: u8,
        ip: u8,
        time_back_ms: u16,
        late_ms: u32,
        /// A client clock ahead of the worker's.
        ahead_ms: u32,
    },
    Advance {
        ms: u16,
    },
    JumpHour,
    Idle {
        after_ms: u16,
    },
    Barrier,
    StageFraudList {
        version: u8,
    },
}

pub fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        30 => (
            any::<u8>(), 0u8..3, 0u8..2, 0u8..6, 0u16..800,
            // Late by up to the lateness, and past the dedup horizon and the rate minute.
            prop_oneof![18 => Just(0u32), 1 => 0u32..9000, 1 => 0u32..150_000],
            prop_oneof![19 => Just(0u32), 1 => 0u32..300_000],
        )
            .prop_map(|(id, campaign, ad, ip, time_back_ms, late_ms, ahead_ms)| Step::Click { id, campaign, ad, ip, time_back_ms, late_ms, ahead_ms }),
        8 => (0u16..400).prop_map(|ms| Step::Advance { ms }),
        1 => Just(Step::JumpHour),
        2 => (0u16..3000).prop_map(|after_ms| Step::Idle { after_ms }),
        4 => Just(Step::Barrier),
        1 => (0u8..3).prop_map(|version| Step::StageFraudList { version }),
    ]
}

/// One concrete operator call, with times resolved.
#[derive(Clone, Debug)]
pub enum Call {
    Click {
        offset: u64,
        event: ClickEvent,
        processing_ms: u64,
    },
    Idle {
        processing_ms: u64,
    },
    Barrier,
    Stage {
        version: u64,
    },
}

/// Resolves steps into calls: a clock that moves forward, clicks placed behind it.
pub fn resolve(steps: &[Step]) -> Vec<Call> {
    let mut now_ms: u64 = 10_000_000;
    let mut offset = 0;
    let mut calls = Vec::new();
    for step in steps {
        match *step {
            Step::Click {
                id,
                campaign,
                ad,
                ip,
                time_back_ms,
                late_ms,
                ahead_ms,
            } => {
                let event_time_ms =
                    now_ms - u64::from(time_back_ms) - u64::from(late_ms) + u64::from(ahead_ms);
                calls.push(Call::Click {
                    offset,
                    event: click(id, campaign, ad, ip, event_time_ms),
                    processing_ms: now_ms,
                });
                offset += 1;
                now_ms += 7;
            }
            Step::Advance { ms } => now_ms += u64::from(ms),
            Step::JumpHour => now_ms += 3_600_000,
            Step::Idle { after_ms } => {
                now_ms += u64::from(after_ms);
                calls.push(Call::Idle {
                    processing_ms: now_ms,
                });
            }
            Step::Barrier => calls.push(Call::Barrier),
            Step::StageFraudList { version } => calls.push(Call::Stage {
                version: u64::from(version),
            }),
        }
    }
    calls
}

pub fn click(id: u8, campaign: u8, ad: u8, ip: u8, event_time_ms: u64) -> ClickEvent {
    click_with_id(u32::from(id), campaign, ad, ip, event_time_ms)
}

/// `click` with a wider id space, for tests that need more than 256 distinct clicks.
pub fn click_with_id(id: u32, campaign: u8, ad: u8, ip: u8, event_time_ms: u64) -> ClickEvent {
    ClickEvent {
        click_id: ClickId(u128::from(id) + 1),
        campaign_id: CampaignId(u64::from(campaign)),
        ad_id: AdId(u64::from(ad)),
        user_id: UserId(1),
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, ip)),
        user_agent: if ip == 5 {
            "EvilBot/1.0".into()
        } else {
            "Mozilla/5.0".into()
        },
        country: Country(*b"NL"),
        event_time_ms: EventTimeMs(event_time_ms),
        publisher_id: None,
    }
}

/// Fraud lists 1 and 2 of the registry used by the tests.
pub fn registry() -> adclick_core::fraud::FraudRegistry {
    use adclick_core::fraud::{FraudList, FraudRegistry};
    let mut registry = FraudRegistry::new();
    registry
        .register(FraudList::parse("version 1\nip 10.0.0.4\n").unwrap())
        .unwrap();
    registry
        .register(FraudList::parse("version 2\nip 10.0.0.3\nua EvilBot/1.0\n").unwrap())
        .unwrap();
    registry
}
