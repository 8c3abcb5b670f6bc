//! An outside reader: pyarrow (installed by `ci/python-env`) reads the files the archiver wrote
//! to a local directory and must count the same rows and the same campaign id sum.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use adclick_core::ids::{Offset, PartitionId};
use adclick_engine::embedded::LocalDirBlobStore;
use adclick_engine::seams::BlobStore;

use crate::*;

fn run(command: &mut Command) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn pyarrow_reads_the_same_rows_and_campaign_sum() {
    let mut filled = Filled::new();
    filled.generate(4, 300);
    let dir = tempfile::tempdir().unwrap();
    let blobs: Arc<dyn BlobStore> = Arc::new(LocalDirBlobStore::new(dir.path()));
    archive_all(filled.log.clone(), blobs.clone(), small_segments()).await;
    // A leftover of a crash: pyarrow must ignore it as the manifests do.
    let stray = adclick_archive::layout::file_key(
        PartitionId(0),
        Offset(1 << 40),
        Offset(1 << 41),
        START_MS,
    );
    blobs.put(&stray, b"not parquet".to_vec()).await.unwrap();

    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let python_env = run(Command::new(repo.join("ci/python-env")).env("CI", "true"));
    let python = python_env
        .lines()
        .last()
        .expect("ci/python-env prints the python path");
    let printed = run(Command::new(python)
        .arg(repo.join("ci/read_parquet.py"))
        .arg(dir.path()));
    let seen: serde_json::Value = serde_json::from_str(printed.trim()).unwrap();

    let files = adclick_archive::list_committed(blobs.as_ref(), 0, u64::MAX)
        .await
        .unwrap();
    let campaign_id_sum: u64 = filled
        .expected
        .iter()
        .map(|row| row.click.campaign_id.0)
        .sum();
    assert_eq!(seen["files"], files.len() as u64);
    assert_eq!(seen["rows"], filled.expected.len() as u64);
    assert_eq!(seen["campaign_id_sum"], campaign_id_sum);
    assert_eq!(seen["types"]["event_time_ms"], "timestamp[ms, tz=UTC]");
    assert_eq!(seen["types"]["click_id"], "fixed_size_binary[16]");
}
