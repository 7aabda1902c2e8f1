//! A repository in a local directory: the embedded default (`--repo ./backups`), and what
//! a mounted NFS share or a second volume looks like. Objects are files; a write goes to a
//! `*.partial-*` file that is fsynced and renamed into place, so a crash never leaves a
//! half-written object under its real name.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::{ChunkStream, Conflict, NotFound, ObjectInfo, ObjectReader, Store, check_key};

const PARTIAL_MARK: &str = ".partial-";

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// Writes `key` through a temporary file: `fill` writes the content, then the file is
    /// fsynced and renamed into place. On any error the temporary file is removed.
    async fn write_via_temp<F>(&self, key: &str, fill: F) -> Result<u64>
    where
        F: AsyncFnOnce(&mut tokio::fs::File) -> Result<u64>,
    {
        let path = self.path(key)?;
        let dir = path.parent().expect("a key always has a parent");
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("cannot create repository directory {}", dir.display()))?;
        let name = path.file_name().unwrap().to_string_lossy();
        let temp = dir.join(format!(
            "{name}{PARTIAL_MARK}{:016x}",
            rand::random::<u64>()
        ));
        let result = async {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .await
                .with_context(|| format!("cannot create {}", temp.display()))?;
            let size = fill(&mut file).await?;
            file.flush().await?;
            file.sync_all().await?;
            tokio::fs::rename(&temp, &path).await?;
            sync_dir(dir).await?;
            Ok::<_, anyhow::Error>(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result.with_context(|| format!("cannot write {}", path.display()))
    }
}

async fn sync_dir(dir: &Path) -> Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await?;
    Ok(())
}

#[async_trait]
impl Store for LocalStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.write_via_temp(key, async |file| {
            file.write_all(&data).await?;
            Ok(data.len() as u64)
        })
        .await?;
        Ok(())
    }

    async fn put_stream(&self, key: &str, mut body: ChunkStream) -> Result<u64> {
        self.write_via_temp(key, async |file| {
            let mut size = 0;
            while let Some(chunk) = body.next().await? {
                file.write_all(&chunk).await?;
                size += chunk.len() as u64;
            }
            Ok(size)
        })
        .await
    }

    async fn get(&self, key: &str, offset: u64) -> Result<ObjectReader> {
        let path = self.path(key)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NotFound(key.to_string()).into());
            }
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        file.seek(SeekFrom::Start(offset)).await?;
        Ok(Box::new(file))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            list_dir(&root, "", &prefix, &mut found)?;
            found.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(found)
        })
        .await?
    }

    async fn get_versioned(&self, key: &str) -> Result<Option<(Bytes, String)>> {
        match tokio::fs::read(self.path(key)?).await {
            Ok(bytes) => {
                let version = content_version(&bytes);
                Ok(Some((Bytes::from(bytes), version)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {key}")),
        }
    }

    async fn put_if(&self, key: &str, data: Bytes, expected: Option<&str>) -> Result<String> {
        // The compare and the swap happen under an exclusive lock on a sidecar file, so
        // writers on this host (or sharing this filesystem's locks) cannot interleave.
        let lock_path = self.path(&format!("{key}.lock"))?;
        let guard = tokio::task::spawn_blocking(move || -> Result<std::fs::File> {
            std::fs::create_dir_all(lock_path.parent().unwrap())?;
            let file = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            Ok(file)
        })
        .await??;
        let current = self.get_versioned(key).await?.map(|(_, version)| version);
        if current.as_deref() != expected {
            return Err(Conflict(key.to_string()).into());
        }
        let version = content_version(&data);
        self.put(key, data).await?;
        drop(guard);
        Ok(version)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

fn content_version(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Collects the objects below `dir` (whose key so far is `base`) that match `prefix`,
/// descending only into directories that can hold such keys.
fn list_dir(dir: &Path, base: &str, prefix: &str, found: &mut Vec<ObjectInfo>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let key = format!("{base}{name}");
        let kind = entry.file_type()?;
        if kind.is_dir() {
            let sub = format!("{key}/");
            if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                list_dir(&entry.path(), &sub, prefix, found)?;
            }
        } else if kind.is_file()
            && key.starts_with(prefix)
            && !name.contains(PARTIAL_MARK)
            && !name.ends_with(".lock")
        {
            found.push(ObjectInfo {
                key,
                size: entry.metadata()?.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::chunk_channel;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn abandoned_stream_leaves_no_object_and_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let (tx, rx) = chunk_channel(1);
        let producer = std::thread::spawn(move || {
            tx.send(Bytes::from_static(b"half an archive")).unwrap();
            drop(tx); // the archive writer failed: no finish()
        });
        let err = store.put_stream("archives/a", rx).await.unwrap_err();
        producer.join().unwrap();
        assert!(format!("{err:#}").contains("abandoned"), "{err:#}");
        assert!(store.list("").await.unwrap().is_empty());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("archives"))
            .unwrap()
            .collect();
        assert!(
            leftovers.is_empty(),
            "partial file left behind: {leftovers:?}"
        );
    }

    #[tokio::test]
    async fn finished_stream_is_listed_and_read_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let (tx, rx) = chunk_channel(1);
        let producer = std::thread::spawn(move || {
            tx.send(Bytes::from_static(b"hello ")).unwrap();
            tx.send(Bytes::from_static(b"world")).unwrap();
            tx.finish().unwrap();
        });
        assert_eq!(store.put_stream("archives/a", rx).await.unwrap(), 11);
        producer.join().unwrap();
        store
            .put("snapshots/a.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let listed = store.list("archives/").await.unwrap();
        assert_eq!(
            listed,
            vec![ObjectInfo {
                key: "archives/a".into(),
                size: 11
            }]
        );
        let mut text = String::new();
        store
            .get("archives/a", 6)
            .await
            .unwrap()
            .read_to_string(&mut text)
            .await
            .unwrap();
        assert_eq!(text, "world");
        let missing = store.get("archives/b", 0).await.err().unwrap();
        assert!(missing.downcast_ref::<NotFound>().is_some());
        assert!(store.get("../etc/passwd", 0).await.is_err());
    }
}
