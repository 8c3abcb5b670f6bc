//! Rows to Parquet bytes and back, in memory.
//!
//! The writer is deterministic: the same rows give the same bytes (fixed settings, fixed
//! `created_by`, rows in the order given). The reader prunes columns to a projection and checks
//! every column it reads by name and type; its errors name the file and what is wrong, and no
//! input makes it panic.
//!
//! **Invariant:** no I/O here; bytes come in and go out. The archiver and the billing job bring
//! them to and from the blob store.

use std::net::IpAddr;
use std::sync::Arc;

use adclick_core::event::ClickEvent;
use adclick_core::ids::*;
use arrow_array::builder::{
    FixedSizeBinaryBuilder, StringBuilder, TimestampMillisecondBuilder, UInt16Builder,
    UInt32Builder, UInt64Builder,
};
use arrow_array::{
    Array, ArrayRef, FixedSizeBinaryArray, RecordBatch, StringArray, TimestampMillisecondArray,
    UInt16Array, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;

use crate::schema::{ArchiveRow, BillingRow, Column, arrow_schema, writer_properties};

/// Rows per Arrow batch on read.
const READ_BATCH_ROWS: usize = 8192;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("{file}: not a readable parquet file: {message}")]
    Corrupt { file: String, message: String },
    #[error("{file}: column `{column}` is missing")]
    MissingColumn { file: String, column: &'static str },
    #[error("{file}: column `{column}` is {found}, expected {expected}")]
    WrongType {
        file: String,
        column: &'static str,
        found: String,
        expected: String,
    },
    #[error("{file}: column `{column}` row {row}: {message}")]
    BadValue {
        file: String,
        column: &'static str,
        row: usize,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write parquet: {message}")]
pub struct WriteError {
    pub message: String,
}

/// One Arrow batch of `rows`, in the archive schema.
pub fn to_record_batch(rows: &[ArchiveRow]) -> RecordBatch {
    let count = rows.len();
    let mut click_id = FixedSizeBinaryBuilder::with_capacity(count, 16);
    let mut campaign_id = UInt64Builder::with_capacity(count);
    let mut ad_id = UInt64Builder::with_capacity(count);
    let mut salt = UInt16Builder::with_capacity(count);
    let mut user_id = UInt64Builder::with_capacity(count);
    let mut ip = StringBuilder::with_capacity(count, count * 16);
    let mut user_agent = StringBuilder::with_capacity(count, count * 96);
    let mut country = StringBuilder::with_capacity(count, count * 2);
    let mut event_time = TimestampMillisecondBuilder::with_capacity(count).with_timezone("UTC");
    let mut publisher_id = UInt64Builder::with_capacity(count);
    let mut partition = UInt32Builder::with_capacity(count);
    let mut offset = UInt64Builder::with_capacity(count);
    let mut ip_text = String::with_capacity(40);
    for row in rows {
        let click = &row.click;
        click_id
            .append_value(click.click_id.0.to_be_bytes())
            .expect("16 bytes fit a 16-byte column");
        campaign_id.append_value(click.campaign_id.0);
        ad_id.append_value(click.ad_id.0);
        salt.append_value(row.salt.0);
        user_id.append_value(click.user_id.0);
        ip_text.clear();
        std::fmt::Write::write_fmt(&mut ip_text, format_args!("{}", click.ip))
            .expect("writing to a String never fails");
        ip.append_value(&ip_text);
        user_agent.append_value(&click.user_agent);
        country.append_value(click.country.as_str());
        // The archiver only admits event times that fit an i64 (see `archiver::admit`).
        event_time.append_value(i64::try_from(click.event_time_ms.0).unwrap_or(i64::MAX));
        publisher_id.append_option(click.publisher_id.map(|id| id.0));
        partition.append_value(row.partition.0);
        offset.append_value(row.offset.0);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(click_id.finish()),
        Arc::new(campaign_id.finish()),
        Arc::new(ad_id.finish()),
        Arc::new(salt.finish()),
        Arc::new(user_id.finish()),
        Arc::new(ip.finish()),
        Arc::new(user_agent.finish()),
        Arc::new(country.finish()),
        Arc::new(event_time.finish()),
        Arc::new(publisher_id.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
    ];
    RecordBatch::try_new(arrow_schema(), columns).expect("columns match the archive schema")
}

/// Rows → Parquet bytes with the archive's writer settings.
pub fn write_parquet(rows: &[ArchiveRow]) -> Result<Vec<u8>, WriteError> {
    write_parquet_with(rows, writer_properties())
}

/// Rows → Parquet bytes with explicit settings (for measurements of the settings themselves).
pub fn write_parquet_with(
    rows: &[ArchiveRow],
    properties: WriterProperties,
) -> Result<Vec<u8>, WriteError> {
    let error = |error: parquet::errors::ParquetError| WriteError {
        message: error.to_string(),
    };
    let mut out = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut out, arrow_schema(), Some(properties)).map_err(error)?;
    writer.write(&to_record_batch(rows)).map_err(error)?;
    writer.close().map_err(error)?;
    Ok(out)
}

fn type_matches(found: &DataType, expected: &DataType) -> bool {
    match (found, expected) {
        // A UTC-adjusted Parquet timestamp may come back with any spelling of UTC.
        (
            DataType::Timestamp(TimeUnit::Millisecond, Some(_)),
            DataType::Timestamp(TimeUnit::Millisecond, Some(_)),
        ) => true,
        _ => found == expected,
    }
}

/// Reads `columns` of a Parquet file (`file` names it in errors), pruning every other column.
/// Each returned batch has exactly `columns`, in the file's column order.
pub fn read_columns(
    file: &str,
    bytes: Vec<u8>,
    columns: &[Column],
) -> Result<Vec<RecordBatch>, ReadError> {
    let corrupt = |error: parquet::errors::ParquetError| ReadError::Corrupt {
        file: file.to_owned(),
        message: error.to_string(),
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .map_err(corrupt)?
        .with_batch_size(READ_BATCH_ROWS);
    let mut indices = Vec::with_capacity(columns.len());
    for column in columns {
        let Some((index, field)) = builder.schema().column_with_name(column.name()) else {
            return Err(ReadError::MissingColumn {
                file: file.to_owned(),
                column: column.name(),
            });
        };
        if !type_matches(field.data_type(), &column.data_type()) {
            return Err(ReadError::WrongType {
                file: file.to_owned(),
                column: column.name(),
                found: field.data_type().to_string(),
                expected: column.data_type().to_string(),
            });
        }
        indices.push(index);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let reader = builder.with_projection(mask).build().map_err(corrupt)?;
    let mut batches = Vec::new();
    for batch in reader {
        batches.push(batch.map_err(|error| ReadError::Corrupt {
            file: file.to_owned(),
            message: error.to_string(),
        })?);
    }
    Ok(batches)
}

/// Typed access to one column of a batch read by `read_columns`.
struct Columns<'a> {
    file: &'a str,
    batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    fn get<T: Array + 'static>(&self, column: Column) -> Result<&'a T, ReadError> {
        let array = self
            .batch
            .column_by_name(column.name())
            .ok_or(ReadError::MissingColumn {
                file: self.file.to_owned(),
                column: column.name(),
            })?;
        if array.null_count() > 0 && !column.nullable() {
            let row = (0..array.len())
                .find(|row| array.is_null(*row))
                .unwrap_or(0);
            return Err(self.bad(column, row, "null in a non-nullable column".into()));
        }
        array
            .as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| ReadError::WrongType {
                file: self.file.to_owned(),
                column: column.name(),
                found: array.data_type().to_string(),
                expected: column.data_type().to_string(),
            })
    }

    fn bad(&self, column: Column, row: usize, message: String) -> ReadError {
        ReadError::BadValue {
            file: self.file.to_owned(),
            column: column.name(),
            row,
            message,
        }
    }

    fn click_id(&self, row: usize, array: &FixedSizeBinaryArray) -> Result<ClickId, ReadError> {
        let bytes: [u8; 16] = array
            .value(row)
            .try_into()
            .map_err(|_| self.bad(Column::ClickId, row, "not 16 bytes".into()))?;
        Ok(ClickId(u128::from_be_bytes(bytes)))
    }

    fn ip(&self, row: usize, array: &StringArray) -> Result<IpAddr, ReadError> {
        let text = array.value(row);
        text.parse().map_err(|_| {
            let shown: String = text.chars().take(64).collect();
            self.bad(Column::Ip, row, format!("{shown:?} is not an ip address"))
        })
    }

    fn event_time(&self, row: usize, array: &TimestampMillisecondArray) -> Result<u64, ReadError> {
        let value = array.value(row);
        u64::try_from(value).map_err(|_| {
            self.bad(
                Column::EventTimeMs,
                row,
                format!("{value} is before the Unix epoch"),
            )
        })
    }
}

/// Reads every column of a file into rows, in file order.
pub fn read_rows(file: &str, bytes: Vec<u8>) -> Result<Vec<ArchiveRow>, ReadError> {
    let mut rows = Vec::new();
    for batch in read_columns(file, bytes, &Column::ALL)? {
        let columns = Columns {
            file,
            batch: &batch,
        };
        let click_id = columns.get::<FixedSizeBinaryArray>(Column::ClickId)?;
        let campaign_id = columns.get::<UInt64Array>(Column::CampaignId)?;
        let ad_id = columns.get::<UInt64Array>(Column::AdId)?;
        let salt = columns.get::<UInt16Array>(Column::Salt)?;
        let user_id = columns.get::<UInt64Array>(Column::UserId)?;
        let ip = columns.get::<StringArray>(Column::Ip)?;
        let user_agent = columns.get::<StringArray>(Column::UserAgent)?;
        let country = columns.get::<StringArray>(Column::Country)?;
        let event_time = columns.get::<TimestampMillisecondArray>(Column::EventTimeMs)?;
        let publisher_id = columns.get::<UInt64Array>(Column::PublisherId)?;
        let partition = columns.get::<UInt32Array>(Column::Partition)?;
        let offset = columns.get::<UInt64Array>(Column::Offset)?;
        for row in 0..batch.num_rows() {
            let country_text = country.value(row);
            let country_code = Country::parse(country_text).ok_or_else(|| {
                columns.bad(
                    Column::Country,
                    row,
                    format!("{country_text:?} is not two uppercase letters"),
                )
            })?;
            rows.push(ArchiveRow {
                partition: PartitionId(partition.value(row)),
                offset: Offset(offset.value(row)),
                salt: Salt(salt.value(row)),
                click: ClickEvent {
                    click_id: columns.click_id(row, click_id)?,
                    campaign_id: CampaignId(campaign_id.value(row)),
                    ad_id: AdId(ad_id.value(row)),
                    user_id: UserId(user_id.value(row)),
                    ip: columns.ip(row, ip)?,
                    user_agent: user_agent.value(row).to_owned(),
                    country: country_code,
                    event_time_ms: EventTimeMs(columns.event_time(row, event_time)?),
                    publisher_id: (!publisher_id.is_null(row))
                        .then(|| PublisherId(publisher_id.value(row))),
                },
            });
        }
    }
    Ok(rows)
}

/// Reads the billing projection (`Column::BILLING`) of a file, pruning the other columns.
pub fn read_billing_rows(file: &str, bytes: Vec<u8>) -> Result<Vec<BillingRow>, ReadError> {
    let mut rows = Vec::new();
    for batch in read_columns(file, bytes, &Column::BILLING)? {
        let columns = Columns {
            file,
            batch: &batch,
        };
        let click_id = columns.get::<FixedSizeBinaryArray>(Column::ClickId)?;
        let campaign_id = columns.get::<UInt64Array>(Column::CampaignId)?;
        let ad_id = columns.get::<UInt64Array>(Column::AdId)?;
        let salt = columns.get::<UInt16Array>(Column::Salt)?;
        let ip = columns.get::<StringArray>(Column::Ip)?;
        let user_agent = columns.get::<StringArray>(Column::UserAgent)?;
        let event_time = columns.get::<TimestampMillisecondArray>(Column::EventTimeMs)?;
        let partition = columns.get::<UInt32Array>(Column::Partition)?;
        let offset = columns.get::<UInt64Array>(Column::Offset)?;
        rows.reserve(batch.num_rows());
        for row in 0..batch.num_rows() {
            rows.push(BillingRow {
                click_id: columns.click_id(row, click_id)?,
                campaign_id: CampaignId(campaign_id.value(row)),
                ad_id: AdId(ad_id.value(row)),
                salt: Salt(salt.value(row)),
                ip: columns.ip(row, ip)?,
                user_agent: user_agent.value(row).to_owned(),
                event_time_ms: EventTimeMs(columns.event_time(row, event_time)?),
                partition: PartitionId(partition.value(row)),
                offset: Offset(offset.value(row)),
            });
        }
    }
    Ok(rows)
}
