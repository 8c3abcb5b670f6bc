//! The fraud list file, followed while the server runs.
//!
//! At start, and then on SIGHUP and every `fraud.reload_interval_ms`, the file is read and, if
//! it holds another list than the current one, published: stored in the checkpoint blob store
//! first (`FraudListStore`), then made current in the registry. Workers stage the current list
//! at their next epoch barrier, so the swap happens at an epoch boundary, and checkpoints name
//! the version each epoch used. A file that does not parse, or reuses a version for other
//! content, is logged once per distinct problem; the current list stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use adclick_core::fraud::FraudRegistry;
use adclick_engine::fraud_lists::FraudListStore;
use anyhow::Context;
use tokio::sync::watch;

/// Reads the file and publishes its list; `Ok(true)` when the current list changed.
pub async fn publish_file(
    path: &Path,
    store: &FraudListStore,
    registry: &RwLock<FraudRegistry>,
) -> anyhow::Result<bool> {
    let text = tokio::fs::read_to_string(path)
        .await
        .with_context(|| format!("fraud.list {}", path.display()))?;
    store
        .publish(&text, registry)
        .await
        .with_context(|| format!("fraud.list {}", path.display()))
}

/// Follows the file until `stop`: re-reads it on SIGHUP and every `interval`.
pub async fn follow(
    path: PathBuf,
    store: FraudListStore,
    registry: Arc<RwLock<FraudRegistry>>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut hangups = hangup_signals();
    let mut last_problem: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = next_hangup(&mut hangups) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        match publish_file(&path, &store, &registry).await {
            Ok(changed) => {
                last_problem = None;
                if changed {
                    let current = registry.read().expect("fraud registry lock").current();
                    tracing::info!(
                        version = current.version().0,
                        checksum = format_args!("{:#010x}", current.checksum()),
                        entries = current.entries(),
                        "fraud list published; workers swap to it at their next epoch"
                    );
                }
            }
            Err(error) => {
                let problem = format!("{error:#}");
                if last_problem.as_deref() != Some(problem.as_str()) {
                    tracing::error!(%problem, "fraud list not reloaded; the current list stays");
                    last_problem = Some(problem);
                }
            }
        }
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangup_signals() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangup_signals() -> Hangups {}

#[cfg(unix)]
async fn next_hangup(hangups: &mut Hangups) {
    match hangups {
        Some(signal) => {
            if signal.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangups) {
    std::future::pending().await
}
