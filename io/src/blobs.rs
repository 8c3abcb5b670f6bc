//! Checkpoints and cold storage through `object_store`: a local directory or S3 (and anything
//! S3-compatible), chosen by URL.
//!
//! `object_store` guarantees atomic puts on every backend (a temp file and a rename on local
//! disk), which is what the checkpoint protocol needs: a reader sees a whole record or none.

use std::collections::BTreeMap;
use std::sync::Arc;

use adclick_engine::seams::{BlobError, BlobStore};
use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BlobConfig {
    /// `file:///var/lib/adclick/checkpoints` or `s3://bucket/prefix`.
    pub url: String,
    /// Backend options, e.g. `aws_endpoint`, `aws_region`, `aws_allow_http`. Credentials come
    /// from the environment (`AWS_ACCESS_KEY_ID`, ...), never from this file.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
    description: String,
}

impl ObjectBlobStore {
    /// Opens the store a URL names. A `file://` directory is created if absent.
    pub fn open(config: &BlobConfig) -> anyhow::Result<ObjectBlobStore> {
        let url = url::Url::parse(&config.url).map_err(|error| {
            anyhow::anyhow!(
                "blob url {:?} is not a URL ({error}); use file:///dir or s3://bucket/prefix",
                config.url
            )
        })?;
        if url.scheme() == "file" {
            let dir = url
                .to_file_path()
                .map_err(|()| anyhow::anyhow!("blob url {:?} is not a local path", config.url))?;
            std::fs::create_dir_all(&dir)
                .map_err(|error| anyhow::anyhow!("cannot create {}: {error}", dir.display()))?;
        }
        let mut options: Vec<(String, String)> = config
            .options
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        if url.scheme() == "s3" {
            // Credentials and region from the environment, as every AWS tool does.
            for (key, value) in std::env::vars() {
                if key.starts_with("AWS_") {
                    options.push((key.to_ascii_lowercase(), value));
                }
            }
        }
        let (store, root) = object_store::parse_url_opts(&url, options)
            .map_err(|error| anyhow::anyhow!("blob url {:?}: {error}", config.url))?;
        Ok(ObjectBlobStore {
            store: Arc::from(store),
            root,
            description: config.url.clone(),
        })
    }

    fn path(&self, key: &str) -> Path {
        let mut path = self.root.clone();
        for part in key.split('/').filter(|part| !part.is_empty()) {
            path = path.join(part);
        }
        path
    }

    fn error(&self, key: &str, error: object_store::Error) -> BlobError {
        BlobError::Unavailable {
            key: format!("{}/{key}", self.description),
            message: error.to_string(),
        }
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        self.store
            .put(&self.path(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|error| self.error(key, error))
    }

    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<bool, BlobError> {
        let options = object_store::PutOptions::from(object_store::PutMode::Create);
        match self
            .store
            .put_opts(&self.path(key), PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(error) => Err(self.error(key, error)),
        }
    }

    async fn modified_ms(&self, key: &str) -> Result<Option<u64>, BlobError> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.last_modified.timestamp_millis().max(0) as u64)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(self.error(key, error)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        match self.store.get(&self.path(key)).await {
            Ok(result) => {
                let bytes = result
                    .bytes()
                    .await
                    .map_err(|error| self.error(key, error))?;
                Ok(Some(bytes.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(self.error(key, error)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        // object_store lists by path segments; list the enclosing directory and filter, so a
        // prefix that ends mid-name works as it does on the other blob stores.
        let (dir, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let listing: Vec<_> = self
            .store
            .list(Some(&self.path(dir)))
            .try_collect()
            .await
            .map_err(|error| self.error(prefix, error))?;
        let root = self.root.as_ref();
        let mut keys: Vec<String> = listing
            .into_iter()
            .filter_map(|meta| {
                let full = meta.location.as_ref();
                let key = if root.is_empty() {
                    full
                } else {
                    full.strip_prefix(root)?.strip_prefix('/')?
                };
                key.starts_with(prefix).then(|| key.to_owned())
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(self.error(key, error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_url_store_puts_lists_and_creates_only_if_absent() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectBlobStore::open(&BlobConfig {
            url: format!("file://{}", dir.path().display()),
            options: BTreeMap::new(),
        })
        .unwrap();
        store.put("plans/a", b"1".to_vec()).await.unwrap();
        assert!(store.put_if_absent("plans/b", b"2".to_vec()).await.unwrap());
        assert!(!store.put_if_absent("plans/b", b"3".to_vec()).await.unwrap());
        assert!(!store.put_if_absent("plans/a", b"4".to_vec()).await.unwrap());
        assert_eq!(store.get("plans/b").await.unwrap(), Some(b"2".to_vec()));
        assert_eq!(store.get("plans/a").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            store.list("plans/").await.unwrap(),
            vec!["plans/a", "plans/b"]
        );
    }
}
