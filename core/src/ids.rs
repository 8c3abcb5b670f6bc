//! Newtypes for identifiers and times, so that a campaign id can never be passed where an ad id
//! or a timestamp is expected.

use serde::{Deserialize, Serialize};

/// Defines a `u64` newtype with the derives every id needs.
macro_rules! id_u64 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_u64!(
    /// The advertiser's campaign. The partition key.
    CampaignId
);
id_u64!(
    /// One ad (creative) inside a campaign.
    AdId
);
id_u64!(
    /// The user who clicked, as assigned by the ad server.
    UserId
);
id_u64!(
    /// The site or app that showed the ad.
    PublisherId
);
id_u64!(
    /// Event time: when the click happened, in ms since the Unix epoch, as the client says.
    EventTimeMs
);
id_u64!(
    /// A log offset within one partition. Offsets are dense and start at 0.
    Offset
);
id_u64!(
    /// A checkpoint epoch of one partition. Epochs only grow.
    Epoch
);
id_u64!(
    /// The ownership generation of one partition. A new owner bumps it, which fences the old.
    Generation
);
id_u64!(
    /// The version of an immutable fraud list. Version 0 is the empty list.
    FraudListVersion
);

/// A partition of the log.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct PartitionId(pub u32);

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The client-assigned identity of one click and the dedup key. A UUID on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClickId(pub u128);

impl ClickId {
    /// Parses the hyphenated or simple UUID text form. The nil UUID is not a valid click id.
    pub fn parse(text: &str) -> Option<ClickId> {
        let uuid = uuid::Uuid::try_parse(text).ok()?;
        (!uuid.is_nil()).then(|| ClickId(uuid.as_u128()))
    }
}

impl std::fmt::Display for ClickId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        uuid::Uuid::from_u128(self.0).hyphenated().fmt(f)
    }
}

/// A salt sub-key of a hot campaign. Salt 0 is the campaign's own, unsalted key.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Salt(pub u16);

/// An ISO 3166-1 alpha-2 country code, two ASCII uppercase letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Country(pub [u8; 2]);

impl Country {
    pub fn parse(text: &str) -> Option<Country> {
        match text.as_bytes() {
            [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Some(Country([*a, *b])),
            _ => None,
        }
    }

    pub fn is_valid(self) -> bool {
        self.0[0].is_ascii_uppercase() && self.0[1].is_ascii_uppercase()
    }

    pub fn as_str(&self) -> &str {
        // Construction only admits ASCII uppercase letters, so this never fails.
        std::str::from_utf8(&self.0).expect("country codes are ASCII")
    }
}
