//! Helpers shared by the engine's integration tests.

use std::net::{IpAddr, Ipv4Addr};

use adclick_core::event::ClickEvent;
use adclick_core::ids::{AdId, CampaignId, ClickId, Country, EventTimeMs, UserId};

/// A valid click; the id makes it unique.
pub fn click(id: u128, campaign: CampaignId, event_time_ms: u64) -> ClickEvent {
    ClickEvent {
        click_id: ClickId(id),
        campaign_id: campaign,
        ad_id: AdId(1),
        user_id: UserId(1),
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        user_agent: "test".into(),
        country: Country::parse("DE").unwrap(),
        event_time_ms: EventTimeMs(event_time_ms),
        publisher_id: None,
    }
}
