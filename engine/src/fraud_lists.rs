//! The fraud lists' durable copies: one immutable blob per version in the checkpoint blob store.
//!
//! A checkpoint names the fraud-list version its epochs used, and a restore must judge the
//! replayed clicks with that same list, or the replay decides differently from the run it
//! repeats. Lists are read from an operator's file that changes (the source design rebuilds it
//! hourly), so the file alone cannot answer for an old version. Every version is therefore
//! stored here *before* it becomes current anywhere, create-only, and a restore that meets a
//! version it does not hold loads it from here.
//!
//! `fraud-lists/v{version:020}.list` holds the list's text as the operator wrote it; its
//! checksum is the parsed list's. Create-only per version, so two nodes that publish different
//! content under one version cannot both win: the second is refused with `VersionReused`.
//! Versions are never deleted here: a list is a few megabytes at most, and any retained
//! checkpoint or unbilled period may name it.

use std::sync::{Arc, RwLock};

use adclick_core::fraud::{FraudList, FraudListError, FraudRegistry};
use adclick_core::ids::FraudListVersion;

use crate::seams::{BlobError, BlobStore};

pub const FRAUD_LISTS_PREFIX: &str = "fraud-lists/";

#[derive(Debug, thiserror::Error)]
pub enum FraudListStoreError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("{key}: {source}")]
    Invalid { key: String, source: FraudListError },
    #[error(transparent)]
    List(#[from] FraudListError),
    #[error("{key} holds fraud list version {found}, not the version its name says")]
    WrongVersion {
        key: String,
        found: FraudListVersion,
    },
    #[error("fraud list version {version} is named by a checkpoint but stored nowhere ({key})")]
    Missing {
        version: FraudListVersion,
        key: String,
    },
}

/// The fraud lists of a deployment, by version.
#[derive(Clone)]
pub struct FraudListStore {
    blobs: Arc<dyn BlobStore>,
}

pub fn fraud_list_key(version: FraudListVersion) -> String {
    format!("{FRAUD_LISTS_PREFIX}v{:020}.list", version.0)
}

impl FraudListStore {
    pub fn new(blobs: Arc<dyn BlobStore>) -> FraudListStore {
        FraudListStore { blobs }
    }

    /// Stores a list's text under its version unless that version is stored already, and returns
    /// the parsed list. Same version, other content: `VersionReused`, naming both checksums.
    pub async fn store(&self, text: &str) -> Result<FraudList, FraudListStoreError> {
        let list = FraudList::parse(text)?;
        let key = fraud_list_key(list.version());
        if self
            .blobs
            .put_if_absent(&key, text.as_bytes().to_vec())
            .await?
        {
            return Ok(list);
        }
        let stored = self.load(list.version()).await?;
        if stored.checksum() != list.checksum() {
            return Err(FraudListError::VersionReused {
                version: list.version(),
                registered: stored.checksum(),
                new: list.checksum(),
            }
            .into());
        }
        Ok(list)
    }

    /// The stored list of one version.
    pub async fn load(&self, version: FraudListVersion) -> Result<FraudList, FraudListStoreError> {
        let key = fraud_list_key(version);
        let Some(bytes) = self.blobs.get(&key).await? else {
            return Err(FraudListStoreError::Missing { version, key });
        };
        let text = String::from_utf8_lossy(&bytes);
        let list = FraudList::parse(&text).map_err(|source| FraudListStoreError::Invalid {
            key: key.clone(),
            source,
        })?;
        if list.version() != version {
            return Err(FraudListStoreError::WrongVersion {
                key,
                found: list.version(),
            });
        }
        Ok(list)
    }

    /// Stores `text` (durably, first) and makes it the registry's current list. Returns whether
    /// the current list changed.
    pub async fn publish(
        &self,
        text: &str,
        registry: &RwLock<FraudRegistry>,
    ) -> Result<bool, FraudListStoreError> {
        let parsed = FraudList::parse(text)?;
        {
            let current = registry.read().expect("fraud registry lock").current();
            if current.version() == parsed.version() && current.checksum() == parsed.checksum() {
                return Ok(false);
            }
        }
        let list = self.store(text).await?;
        registry
            .write()
            .expect("fraud registry lock")
            .register(list)?;
        Ok(true)
    }

    /// Makes sure the registry holds `version`, loading it from the store if it does not.
    pub async fn ensure_known(
        &self,
        version: FraudListVersion,
        registry: &RwLock<FraudRegistry>,
    ) -> Result<(), FraudListStoreError> {
        if registry
            .read()
            .expect("fraud registry lock")
            .get(version)
            .is_some()
        {
            return Ok(());
        }
        let list = self.load(version).await?;
        registry
            .write()
            .expect("fraud registry lock")
            .insert_known(list)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::MemoryBlobStore;

    const V1: &str = "version 1\nip 203.0.113.9\n";
    const V2: &str = "version 2\nip 203.0.113.9\nua EvilBot/2.0\n";

    #[tokio::test]
    async fn a_published_version_is_stored_before_it_is_current_and_found_after_a_restart() {
        let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
        let store = FraudListStore::new(blobs.clone());
        let registry = RwLock::new(FraudRegistry::new());
        assert!(store.publish(V1, &registry).await.unwrap());
        assert!(!store.publish(V1, &registry).await.unwrap(), "no change");
        assert!(store.publish(V2, &registry).await.unwrap());
        let current = registry.read().unwrap().current().version();
        assert_eq!(current, FraudListVersion(2));

        // A restarted node knows only its file's list (v2); a checkpoint names v1.
        let restarted = RwLock::new(FraudRegistry::new());
        FraudListStore::new(blobs.clone())
            .publish(V2, &restarted)
            .await
            .unwrap();
        assert!(restarted.read().unwrap().get(FraudListVersion(1)).is_none());
        store
            .ensure_known(FraudListVersion(1), &restarted)
            .await
            .unwrap();
        let registry = restarted.read().unwrap();
        assert!(registry.get(FraudListVersion(1)).is_some());
        assert_eq!(registry.current().version(), FraudListVersion(2));
    }

    #[tokio::test]
    async fn other_content_under_a_stored_version_is_refused() {
        let store = FraudListStore::new(Arc::new(MemoryBlobStore::new()));
        store.store(V1).await.unwrap();
        let error = store
            .store("version 1\nip 198.51.100.1\n")
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                FraudListStoreError::List(FraudListError::VersionReused { .. })
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_version_stored_nowhere_is_an_error_naming_its_key() {
        let store = FraudListStore::new(Arc::new(MemoryBlobStore::new()));
        let registry = RwLock::new(FraudRegistry::new());
        let error = store
            .ensure_known(FraudListVersion(7), &registry)
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("v00000000000000000007.list"),
            "{error}"
        );
    }
}
