//! The archived click row: its Arrow schema, its Parquet writer settings, and the row type.
//!
//! One row per decodable log record:
//!
//! | column | Arrow type | null | what |
//! |---|---|---|---|
//! | `click_id` | FixedSizeBinary(16) | no | the u128 big-endian: UUID byte order |
//! | `campaign_id` | UInt64 | no | |
//! | `ad_id` | UInt64 | no | |
//! | `salt` | UInt16 | no | the hot-campaign sub-key ingest routed by (0 = unsalted) |
//! | `user_id` | UInt64 | no | |
//! | `ip` | Utf8 | no | text form (`203.0.113.9`, `2001:db8::1`), Parquet dictionary pages |
//! | `user_agent` | Utf8 | no | Parquet dictionary pages |
//! | `country` | Utf8 | no | two uppercase letters, Parquet dictionary pages |
//! | `event_time_ms` | Timestamp(ms, "UTC") | no | event time; pyarrow reads `timestamp[ms, tz=UTC]` |
//! | `publisher_id` | UInt64 | yes | |
//! | `partition` | UInt32 | no | the log partition the record came from |
//! | `offset` | UInt64 | no | its log offset: (partition, offset) is the row's identity |
//!
//! Rows are in offset order. Snappy compression; `offset` and `event_time_ms` are delta-encoded
//! (DELTA_BINARY_PACKED). `ip` is text, not FixedSizeBinary(16): the log
//! codec tells IPv4 from IPv6, and a 16-byte column would fold `1.2.3.4` and `::ffff:1.2.3.4`
//! into one value; text round-trips exactly, every tool reads it, and the repeating IPs that
//! matter to fraud (bots, high-rate IPs) compress away in the dictionary.
//!
//! **Invariant:** the Parquet bytes are a function of the rows alone: `created_by` is fixed and
//! no key-value metadata varies (the only entry is the Arrow schema, which is constant).

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use adclick_core::event::ClickEvent;
use adclick_core::ids::{Offset, PartitionId, Salt};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::basic::{Compression, Encoding};
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;

/// The `created_by` every archived file carries. Fixed, so that a rewrite is byte-identical.
pub const CREATED_BY: &str = "adclick-archive format 1";

/// The archive's columns, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Column {
    ClickId,
    CampaignId,
    AdId,
    Salt,
    UserId,
    Ip,
    UserAgent,
    Country,
    EventTimeMs,
    PublisherId,
    Partition,
    Offset,
}

impl Column {
    pub const ALL: [Column; 12] = [
        Column::ClickId,
        Column::CampaignId,
        Column::AdId,
        Column::Salt,
        Column::UserId,
        Column::Ip,
        Column::UserAgent,
        Column::Country,
        Column::EventTimeMs,
        Column::PublisherId,
        Column::Partition,
        Column::Offset,
    ];

    /// What the billing job reads: dedup, fraud, the hour, and the row's identity.
    pub const BILLING: [Column; 9] = [
        Column::ClickId,
        Column::CampaignId,
        Column::AdId,
        Column::Salt,
        Column::Ip,
        Column::UserAgent,
        Column::EventTimeMs,
        Column::Partition,
        Column::Offset,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Column::ClickId => "click_id",
            Column::CampaignId => "campaign_id",
            Column::AdId => "ad_id",
            Column::Salt => "salt",
            Column::UserId => "user_id",
            Column::Ip => "ip",
            Column::UserAgent => "user_agent",
            Column::Country => "country",
            Column::EventTimeMs => "event_time_ms",
            Column::PublisherId => "publisher_id",
            Column::Partition => "partition",
            Column::Offset => "offset",
        }
    }

    pub fn data_type(self) -> DataType {
        match self {
            Column::ClickId => DataType::FixedSizeBinary(16),
            Column::CampaignId | Column::AdId | Column::UserId => DataType::UInt64,
            Column::PublisherId | Column::Offset => DataType::UInt64,
            Column::Salt => DataType::UInt16,
            Column::Ip | Column::UserAgent | Column::Country => DataType::Utf8,
            Column::EventTimeMs => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            Column::Partition => DataType::UInt32,
        }
    }

    pub fn nullable(self) -> bool {
        self == Column::PublisherId
    }

    fn field(self) -> Field {
        Field::new(self.name(), self.data_type(), self.nullable())
    }
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(
        Column::ALL
            .iter()
            .map(|column| column.field())
            .collect::<Vec<_>>(),
    ))
});

/// The Arrow schema of an archived file.
pub fn arrow_schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Which columns get Parquet dictionary pages. Random ids (click, user), offsets and event
/// times never repeat within a file, so a dictionary there only costs a failed attempt and a
/// fallback.
fn dictionary_enabled(column: Column, text_dictionary: bool) -> bool {
    match column {
        Column::ClickId | Column::UserId | Column::EventTimeMs | Column::Offset => false,
        Column::Ip | Column::UserAgent | Column::Country => text_dictionary,
        Column::CampaignId | Column::AdId | Column::Salt => true,
        Column::PublisherId | Column::Partition => true,
    }
}

/// The writer settings of every archived file: Snappy, fixed `created_by`, dictionaries where
/// values repeat.
pub fn writer_properties() -> WriterProperties {
    writer_properties_tuned(true)
}

/// The writer settings with or without dictionary pages on the text columns (`ip`,
/// `user_agent`, `country`); only the size measurement uses `false`.
pub fn writer_properties_tuned(text_dictionary: bool) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(Compression::SNAPPY)
        .set_created_by(CREATED_BY.to_owned())
        .set_key_value_metadata(None);
    for column in Column::ALL {
        builder = builder.set_column_dictionary_enabled(
            ColumnPath::from(column.name()),
            dictionary_enabled(column, text_dictionary),
        );
    }
    // Offsets are consecutive and event times nearly sorted: deltas take a few bits a row
    // where plain values take 8 bytes before Snappy.
    for column in [Column::Offset, Column::EventTimeMs] {
        builder = builder.set_column_encoding(
            ColumnPath::from(column.name()),
            Encoding::DELTA_BINARY_PACKED,
        );
    }
    builder.build()
}

/// One archived log record: the click, the salt ingest routed it by, and where it sat in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveRow {
    pub partition: PartitionId,
    pub offset: Offset,
    pub salt: Salt,
    pub click: ClickEvent,
}

/// The billing projection of a row (`Column::BILLING`): everything dedup, fraud and the hourly
/// totals need, nothing more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillingRow {
    pub click_id: adclick_core::ids::ClickId,
    pub campaign_id: adclick_core::ids::CampaignId,
    pub ad_id: adclick_core::ids::AdId,
    pub salt: Salt,
    pub ip: IpAddr,
    pub user_agent: String,
    pub event_time_ms: adclick_core::ids::EventTimeMs,
    pub partition: PartitionId,
    pub offset: Offset,
}

impl From<&ArchiveRow> for BillingRow {
    fn from(row: &ArchiveRow) -> BillingRow {
        BillingRow {
            click_id: row.click.click_id,
            campaign_id: row.click.campaign_id,
            ad_id: row.click.ad_id,
            salt: row.salt,
            ip: row.click.ip,
            user_agent: row.click.user_agent.clone(),
            event_time_ms: row.click.event_time_ms,
            partition: row.partition,
            offset: row.offset,
        }
    }
}
