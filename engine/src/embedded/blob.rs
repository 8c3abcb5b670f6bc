//! Blob stores: in memory, and a local directory with atomic puts (write, fsync, rename).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::clock::SystemClock;
use crate::seams::{BlobError, BlobStore, Clock};

/// Blobs in memory, each with the time it was written (by its clock).
pub struct MemoryBlobStore {
    blobs: Mutex<BTreeMap<String, (Vec<u8>, u64)>>,
    clock: Arc<dyn Clock>,
}

impl Default for MemoryBlobStore {
    fn default() -> Self {
        MemoryBlobStore::with_clock(Arc::new(SystemClock))
    }
}

impl MemoryBlobStore {
    pub fn new() -> MemoryBlobStore {
        MemoryBlobStore::default()
    }

    /// A store that stamps writes with `clock` (a test's manual clock).
    pub fn with_clock(clock: Arc<dyn Clock>) -> MemoryBlobStore {
        MemoryBlobStore {
            blobs: Mutex::default(),
            clock,
        }
    }
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        let now_ms = self.clock.now_ms();
        self.blobs
            .lock()
            .expect("blob lock")
            .insert(key.to_owned(), (bytes, now_ms));
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<bool, BlobError> {
        let now_ms = self.clock.now_ms();
        let mut blobs = self.blobs.lock().expect("blob lock");
        match blobs.entry(key.to_owned()) {
            std::collections::btree_map::Entry::Occupied(_) => Ok(false),
            std::collections::btree_map::Entry::Vacant(vacant) => {
                vacant.insert((bytes, now_ms));
                Ok(true)
            }
        }
    }

    async fn modified_ms(&self, key: &str) -> Result<Option<u64>, BlobError> {
        let blobs = self.blobs.lock().expect("blob lock");
        Ok(blobs.get(key).map(|(_, modified_ms)| *modified_ms))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let blobs = self.blobs.lock().expect("blob lock");
        Ok(blobs.get(key).map(|(bytes, _)| bytes.clone()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let blobs = self.blobs.lock().expect("blob lock");
        Ok(blobs
            .range(prefix.to_owned()..)
            .map(|(key, _)| key)
            .take_while(|key| key.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.blobs.lock().expect("blob lock").remove(key);
        Ok(())
    }
}

/// Keys are `/`-separated relative paths under the root. Temp files end in `.tmp` and are never
/// listed, so a crash mid-put leaves nothing a reader can see; a put that fails (a full disk)
/// removes its temp file.
pub struct LocalDirBlobStore {
    root: PathBuf,
}

impl LocalDirBlobStore {
    pub fn new(root: impl Into<PathBuf>) -> LocalDirBlobStore {
        LocalDirBlobStore { root: root.into() }
    }

    /// Writes and syncs the bytes to a temp file beside the key's path: (temp, path). The temp
    /// name is new to this write (process id, a counter, the time), and created exclusively:
    /// two writers of one key, even in two containers that both run as pid 1 on a shared
    /// volume, never write into each other's temp file.
    fn write_temp(&self, key: &str, bytes: &[u8]) -> Result<(PathBuf, PathBuf), BlobError> {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = self.path(key)?;
        let parent = path.parent().expect("keys live under the root");
        std::fs::create_dir_all(parent).map_err(|error| io_error(key, error))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_nanos())
            .unwrap_or(0);
        let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temp = path.with_extension(format!("{}-{write}-{nanos}.tmp", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|error| io_error(key, error))?;
        let written = file.write_all(bytes).and_then(|()| file.sync_all());
        if let Err(error) = written {
            remove_temp(&temp);
            return Err(io_error(key, error));
        }
        Ok((temp, path))
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        let valid = !key.is_empty()
            && key
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !valid {
            return Err(BlobError::Unavailable {
                key: key.into(),
                message: "invalid key".into(),
            });
        }
        Ok(self.root.join(key))
    }
}

/// Removes the temp file of a put that failed. Nothing reads temp files, so this is only
/// about space: a full disk must not fill up further with them. A failure here leaves the
/// put's own error as the one to report.
fn remove_temp(temp: &Path) {
    if let Err(error) = std::fs::remove_file(temp) {
        tracing::warn!(file = %temp.display(), %error, "could not remove a failed put's temp file");
    }
}

/// Makes a new name in a directory durable (the file's own sync does not cover its entry).
fn sync_parent(key: &str, path: &Path) -> Result<(), BlobError> {
    let parent = path.parent().expect("keys live under the root");
    std::fs::File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| io_error(key, error))
}

fn io_error(key: &str, error: std::io::Error) -> BlobError {
    BlobError::Unavailable {
        key: key.to_owned(),
        message: error.to_string(),
    }
}

fn list_into(dir: &Path, root: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            list_into(&path, root, out)?;
        } else if path.extension().is_none_or(|ext| ext != "tmp") {
            let relative = path.strip_prefix(root).expect("listed under root");
            out.push(
                relative
                    .to_string_lossy()
                    .replace(std::path::MAIN_SEPARATOR, "/"),
            );
        }
    }
    Ok(())
}

#[async_trait]
impl BlobStore for LocalDirBlobStore {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        let (temp, path) = self.write_temp(key, &bytes)?;
        if let Err(error) = std::fs::rename(&temp, &path) {
            remove_temp(&temp);
            return Err(io_error(key, error));
        }
        sync_parent(key, &path)
    }

    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<bool, BlobError> {
        let (temp, path) = self.write_temp(key, &bytes)?;
        // The blob's timestamp is when it becomes visible (shared salt plans count from it),
        // not when the temp file was written before a slow sync.
        let stamped = std::fs::File::options()
            .write(true)
            .open(&temp)
            .and_then(|file| file.set_modified(std::time::SystemTime::now()));
        if let Err(error) = stamped {
            remove_temp(&temp);
            return Err(io_error(key, error));
        }
        // A hard link fails if the name exists, where a rename would replace it.
        let linked = std::fs::hard_link(&temp, &path);
        std::fs::remove_file(&temp).map_err(|error| io_error(key, error))?;
        match linked {
            Ok(()) => sync_parent(key, &path).map(|()| true),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(io_error(key, error)),
        }
    }

    async fn modified_ms(&self, key: &str) -> Result<Option<u64>, BlobError> {
        match std::fs::metadata(self.path(key)?).and_then(|meta| meta.modified()) {
            Ok(modified) => Ok(Some(
                modified
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|since| since.as_millis() as u64)
                    .unwrap_or(0),
            )),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error(key, error)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        match std::fs::read(self.path(key)?) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error(key, error)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let mut keys = Vec::new();
        list_into(&self.root, &self.root, &mut keys).map_err(|error| io_error(prefix, error))?;
        keys.retain(|key| key.starts_with(prefix));
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match std::fs::remove_file(self.path(key)?) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(key, error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_stores_put_get_list_delete_alike() {
        let dir = tempfile::tempdir().unwrap();
        let stores: Vec<Box<dyn BlobStore>> = vec![
            Box::new(MemoryBlobStore::new()),
            Box::new(LocalDirBlobStore::new(dir.path())),
        ];
        for store in stores {
            store.put("p1/b", b"2".to_vec()).await.unwrap();
            store.put("p1/a", b"1".to_vec()).await.unwrap();
            store.put("p2/a", b"3".to_vec()).await.unwrap();
            assert_eq!(store.get("p1/a").await.unwrap(), Some(b"1".to_vec()));
            assert_eq!(store.list("p1/").await.unwrap(), vec!["p1/a", "p1/b"]);
            store.delete("p1/a").await.unwrap();
            assert_eq!(store.get("p1/a").await.unwrap(), None);
            assert!(store.put_if_absent("p1/a", b"4".to_vec()).await.unwrap());
            assert!(!store.put_if_absent("p1/a", b"5".to_vec()).await.unwrap());
            assert_eq!(store.get("p1/a").await.unwrap(), Some(b"4".to_vec()));
            assert_eq!(store.list("p1/").await.unwrap(), vec!["p1/a", "p1/b"]);
        }
        assert!(
            LocalDirBlobStore::new(dir.path())
                .put("../escape", vec![])
                .await
                .is_err()
        );
    }

    /// A put whose rename fails (here: a directory holds the key's name) leaves no temp file
    /// behind to fill the disk.
    #[tokio::test]
    async fn a_failed_put_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirBlobStore::new(dir.path());
        store.put("a/b", b"1".to_vec()).await.unwrap();
        assert!(store.put("a", b"2".to_vec()).await.is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a"]);
        assert_eq!(store.list("").await.unwrap(), vec!["a/b"]);
    }
}
