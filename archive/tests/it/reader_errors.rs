//! Bad files give errors that name the file and what is wrong; the reader never panics.

use std::sync::Arc;

use adclick_archive::{ReadError, read_billing_rows, read_rows, write_parquet};
use arrow_array::{Int64Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;

use crate::*;

const FILE: &str =
    "archive/clicks/dt=2027-01-15/hour=08/p00000-00000000000000000000-00000000000000000009.parquet";

fn good_file() -> Vec<u8> {
    let mut filled = Filled::new();
    filled.generate(1, 50);
    write_parquet(&filled.expected).unwrap()
}

fn file_of(fields: Vec<(&str, DataType)>) -> Vec<u8> {
    let schema = Arc::new(Schema::new(
        fields
            .iter()
            .map(|(name, data_type)| Field::new(*name, data_type.clone(), false))
            .collect::<Vec<_>>(),
    ));
    let columns = fields
        .iter()
        .map(|(_, data_type)| -> arrow_array::ArrayRef {
            match data_type {
                DataType::Int64 => Arc::new(Int64Array::from(vec![1, 2])),
                _ => Arc::new(UInt64Array::from(vec![1, 2])),
            }
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    out
}

#[test]
fn corrupt_bytes_are_an_error_naming_the_file() {
    let good = good_file();
    let mut cases = vec![
        Vec::new(),
        b"PAR1 this is not parquet PAR1".to_vec(),
        good[..good.len() / 2].to_vec(),
    ];
    // A flipped byte in the middle of the data pages, or in the footer.
    for at in [good.len() / 3, good.len() - 12] {
        let mut flipped = good.clone();
        flipped[at] ^= 0xff;
        cases.push(flipped);
    }
    for (index, bytes) in cases.into_iter().enumerate() {
        match read_rows(FILE, bytes) {
            Err(error) => {
                assert!(error.to_string().starts_with(FILE), "case {index}: {error}");
            }
            // A flip inside a value can still decode; it must not panic, and what it reads is
            // a row like any other.
            Ok(rows) => assert!(index >= 3, "case {index} read {} rows", rows.len()),
        }
    }
    assert!(matches!(
        read_billing_rows(FILE, b"garbage".to_vec()),
        Err(ReadError::Corrupt { file, .. }) if file == FILE
    ));
}

#[test]
fn a_missing_column_is_an_error_naming_the_file_and_the_column() {
    let bytes = file_of(vec![("campaign_id", DataType::UInt64)]);
    let error = read_billing_rows(FILE, bytes).unwrap_err();
    assert_eq!(
        error,
        ReadError::MissingColumn {
            file: FILE.into(),
            column: "click_id"
        }
    );
    assert_eq!(
        error.to_string(),
        format!("{FILE}: column `click_id` is missing")
    );
}

#[test]
fn a_column_of_the_wrong_type_is_an_error_naming_both_types() {
    let good = good_file();
    // The billing projection does not read user_id, so a file without it still reads.
    assert!(read_billing_rows(FILE, good).is_ok());
    let bytes = file_of(vec![("click_id", DataType::Int64)]);
    let error = read_billing_rows(FILE, bytes).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("{FILE}: column `click_id` is Int64, expected FixedSizeBinary(16)")
    );
}

#[test]
fn files_carry_a_fixed_created_by_and_no_varying_metadata() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let bytes = good_file();
    assert_eq!(bytes, good_file(), "same rows, same bytes");
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
    let metadata = reader.metadata().file_metadata();
    assert_eq!(
        metadata.created_by(),
        Some(adclick_archive::schema::CREATED_BY)
    );
    let keys: Vec<&str> = metadata
        .key_value_metadata()
        .map(|entries| entries.iter().map(|entry| entry.key.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(keys, vec!["ARROW:schema"]);
}
