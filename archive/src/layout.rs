//! Where archived files and manifests live, by event hour (UTC) and offset range:
//!
//! ```text
//! archive/clicks/dt=YYYY-MM-DD/hour=HH/p{partition:05}-{first_offset:020}-{last_offset:020}.parquet
//! archive/manifest/p{partition:05}.json
//! archive/exceptions/p{partition:05}-{first_offset:020}-{last_offset:020}.jsonl
//! ```
//!
//! An exceptions file holds, as JSON lines, every record of a segment that is in no hour file
//! (undecodable or quarantined), with its raw bytes in hex, so the archive keeps them after the
//! log's retention.
//!
//! `last_offset` is inclusive. Every file of one roll segment carries the segment's offset
//! range, whichever hour it holds, so a rewrite of a segment gives the same names.
//!
//! **Invariant:** pure string and date arithmetic; no clock, no I/O.

use adclick_core::ids::{Offset, PartitionId};

pub const CLICKS_PREFIX: &str = "archive/clicks/";
pub const MANIFEST_PREFIX: &str = "archive/manifest/";
pub const EXCEPTIONS_PREFIX: &str = "archive/exceptions/";
pub const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// The start of the UTC hour holding `event_time_ms`.
pub fn hour_start_ms(event_time_ms: u64) -> u64 {
    event_time_ms - event_time_ms % HOUR_MS
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `dt=YYYY-MM-DD/hour=HH` of the hour holding `event_time_ms`.
pub fn hour_dir(event_time_ms: u64) -> String {
    let (year, month, day) = civil_from_days(event_time_ms / DAY_MS);
    let hour = event_time_ms % DAY_MS / HOUR_MS;
    format!("dt={year:04}-{month:02}-{day:02}/hour={hour:02}")
}

/// The key of the file of one segment's rows in one hour.
pub fn file_key(partition: PartitionId, first: Offset, last: Offset, hour_start_ms: u64) -> String {
    format!(
        "{CLICKS_PREFIX}{}/p{:05}-{:020}-{:020}.parquet",
        hour_dir(hour_start_ms),
        partition.0,
        first.0,
        last.0
    )
}

/// The key of the file of one segment's unarchivable records.
pub fn exceptions_key(partition: PartitionId, first: Offset, last: Offset) -> String {
    format!(
        "{EXCEPTIONS_PREFIX}p{:05}-{:020}-{:020}.jsonl",
        partition.0, first.0, last.0
    )
}

pub fn manifest_key(partition: PartitionId) -> String {
    format!("{MANIFEST_PREFIX}p{:05}.json", partition.0)
}

/// What a file key says about its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileName {
    pub partition: PartitionId,
    pub first_offset: Offset,
    pub last_offset: Offset,
}

/// Parses the file name of an archived file key; `None` for anything else.
pub fn parse_file_key(key: &str) -> Option<FileName> {
    let rest = key.strip_prefix(CLICKS_PREFIX)?;
    let name = rest.rsplit('/').next()?.strip_suffix(".parquet")?;
    let mut parts = name.strip_prefix('p')?.split('-');
    let partition = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(FileName {
        partition: PartitionId(partition),
        first_offset: Offset(first),
        last_offset: Offset(last),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_and_dates_are_utc() {
        assert_eq!(hour_dir(0), "dt=1970-01-01/hour=00");
        // 2024-02-29T23:59:59.999Z, a leap day.
        assert_eq!(hour_dir(1_709_251_199_999), "dt=2024-02-29/hour=23");
        assert_eq!(hour_dir(1_709_251_200_000), "dt=2024-03-01/hour=00");
        // 2027-01-15T08:00:00Z (START_MS of the tests is 1_800_000_000_000 = 2027-01-15T08:00Z).
        assert_eq!(hour_dir(1_800_000_000_000), "dt=2027-01-15/hour=08");
        assert_eq!(hour_start_ms(1_800_000_123_456), 1_800_000_000_000);
    }

    #[test]
    fn file_keys_round_trip_and_sort_by_offset() {
        let key = file_key(PartitionId(3), Offset(10), Offset(99), 1_800_000_000_000);
        assert_eq!(
            key,
            "archive/clicks/dt=2027-01-15/hour=08/p00003-00000000000000000010-00000000000000000099.parquet"
        );
        assert_eq!(
            parse_file_key(&key),
            Some(FileName {
                partition: PartitionId(3),
                first_offset: Offset(10),
                last_offset: Offset(99)
            })
        );
        assert_eq!(parse_file_key("archive/clicks/x.parquet"), None);
        assert_eq!(parse_file_key("archive/manifest/p00001.json"), None);
        assert!(
            file_key(PartitionId(3), Offset(9), Offset(9), 0)
                < file_key(PartitionId(3), Offset(10), Offset(10), 0)
        );
    }
}
