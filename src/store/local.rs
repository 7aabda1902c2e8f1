//! A repository in a local directory: the embedded default (`--repo ./backups`), and what
//! a mounted NFS share or a second volume looks like. Objects are files; a write goes to a
//! `*.partial-*` file that is fsynced and renamed into place, so a crash never leaves a
//! half-written object under its real name.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncSeekExt;

use super::{
    ObjectInfo, ObjectReader, Result, Retention, Store, StoreError, check_key, read_bounded,
    too_large,
};

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

    /// Opens `key` for a bounded read: `None` if it does not exist, [`StoreError::TooLarge`]
    /// if the open file is already larger than `limit` (the read counts too, for a file
    /// that grows meanwhile).
    async fn open_bounded(&self, key: &str, limit: u64) -> Result<Option<tokio::fs::File>> {
        let path = self.path(key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(anyhow::Error::from(e)
                    .context(format!("cannot read {}", path.display()))
                    .into());
            }
        };
        if file.metadata().await?.len() > limit {
            return Err(too_large(key, limit));
        }
        Ok(Some(file))
    }
}

/// A local repository is its owner's alone, whatever the umask: anyone who can write to
/// it is a bucket writer, and its manifests say what was backed up when.
const OBJECT_MODE: u32 = 0o600;
const DIRECTORY_MODE: u32 = 0o700;

/// Creates `dir` and the directories above it that are missing, each with
/// [`DIRECTORY_MODE`].
fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIRECTORY_MODE)
        .create(dir)
}

/// Writes `path` through a temporary file: written, fsynced and renamed into place, then
/// the directory fsynced; on any error the temporary file is removed. One blocking call on
/// the caller's buffer: tokio's `File` copies what it writes, up to 2 MiB a write, and with
/// an archive's parts in flight a 2 GiB backup to a directory peaked 15 MiB higher than to
/// S3. (A directory has no retention: [`Retention`] is not asked.)
fn write_via_temp(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().expect("a key always has a parent");
    create_private_dirs(dir)
        .with_context(|| format!("cannot create repository directory {}", dir.display()))?;
    let name = path.file_name().unwrap().to_string_lossy();
    let temp = dir.join(format!(
        "{name}{PARTIAL_MARK}{:016x}",
        rand::random::<u64>()
    ));
    let result = (|| -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(OBJECT_MODE)
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(|err| err.context(format!("cannot write {}", path.display())))
}

/// Bytes read from a file at a time by [`Store::get`].
const READ_BUFFER: usize = 1 << 20;

#[async_trait]
impl Store for LocalStore {
    async fn put(&self, key: &str, data: Bytes, _: Retention) -> Result<()> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || write_via_temp(&path, &data))
            .await
            .map_err(anyhow::Error::from)?
    }

    async fn get(&self, key: &str, offset: u64) -> Result<ObjectReader> {
        let path = self.path(key)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(key.to_string()));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot open {}", path.display()))
                    .map_err(Into::into);
            }
        };
        file.seek(SeekFrom::Start(offset)).await?;
        // Each read of a tokio file is a trip to a blocking thread: one per MiB, not one
        // per 64 KiB age chunk (a 2 GiB restore from a directory took 11 s instead of 8).
        Ok(Box::new(tokio::io::BufReader::with_capacity(
            READ_BUFFER,
            file,
        )))
    }

    /// Two: one part's fsync overlaps the next one's write, and a disk gains nothing from
    /// more, while each part on its way holds its 5 MiB.
    fn parallel_writes(&self) -> usize {
        2
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let listing = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            list_dir(&root, "", &prefix, &mut found)?;
            found.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(found)
        });
        listing.await.map_err(anyhow::Error::from)?
    }

    async fn get_bounded(&self, key: &str, limit: u64) -> Result<Bytes> {
        let Some(file) = self.open_bounded(key, limit).await? else {
            return Err(StoreError::NotFound(key.to_string()));
        };
        read_bounded(file, key, limit).await
    }

    async fn get_versioned(&self, key: &str, limit: u64) -> Result<Option<(Bytes, String)>> {
        let Some(file) = self.open_bounded(key, limit).await? else {
            return Ok(None);
        };
        let bytes = read_bounded(file, key, limit).await?;
        let version = content_version(&bytes);
        Ok(Some((bytes, version)))
    }

    async fn put_if(&self, key: &str, data: Bytes, expected: Option<&str>) -> Result<String> {
        // The compare and the swap happen under an exclusive lock on a sidecar file, so
        // writers on this host (or sharing this filesystem's locks) cannot interleave.
        let lock_path = self.path(&format!("{key}.lock"))?;
        let guard = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            use std::os::unix::fs::OpenOptionsExt;
            create_private_dirs(lock_path.parent().unwrap())?;
            let file = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(OBJECT_MODE)
                .open(&lock_path)?;
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
            Ok(file)
        });
        let guard = guard
            .await
            .map_err(anyhow::Error::from)?
            .with_context(|| format!("cannot lock {key} for a conditional write"))?;
        let path = self.path(key)?;
        let current = tokio::task::spawn_blocking(move || file_version(&path))
            .await
            .map_err(anyhow::Error::from)?
            .with_context(|| format!("cannot read {key} for a conditional write"))?;
        if current.as_deref() != expected {
            return Err(StoreError::Conflict(key.to_string()));
        }
        let version = content_version(&data);
        self.put(key, data, Retention::Replaceable).await?;
        drop(guard);
        Ok(version)
    }

    async fn remove_interrupted(&self, older_than: std::time::Duration) -> Result<u64> {
        let root = self.root.clone();
        let removed = tokio::task::spawn_blocking(move || remove_partials(&root, older_than));
        Ok(removed.await.map_err(anyhow::Error::from)??)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(anyhow::Error::from(e)
                .context(format!("cannot delete {}", path.display()))
                .into()),
            _ => Ok(()),
        }
    }
}

fn content_version(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The version of the file at `path` (as [`content_version`], read in pieces whatever its
/// size), or `None` if there is none.
fn file_version(path: &Path) -> std::io::Result<Option<String>> {
    use sha2::Digest;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut digest = sha2::Sha256::new();
    std::io::copy(&mut file, &mut digest)?;
    Ok(Some(hex::encode(digest.finalize())))
}

/// Collects the objects below `dir` (whose key so far is `base`) that match `prefix`,
/// descending only into directories that can hold such keys.
fn list_dir(
    dir: &Path,
    base: &str,
    prefix: &str,
    found: &mut Vec<ObjectInfo>,
) -> anyhow::Result<()> {
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

/// Deletes the `*.partial-*` files below `dir` last modified longer than `older_than` ago:
/// what a write killed before its rename left (a live write touches its file all along).
fn remove_partials(dir: &Path, older_than: std::time::Duration) -> anyhow::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            removed += remove_partials(&entry.path(), older_than)?;
            continue;
        }
        let partial = kind.is_file() && entry.file_name().to_string_lossy().contains(PARTIAL_MARK);
        let age = entry.metadata()?.modified()?.elapsed().unwrap_or_default();
        if partial && age > older_than {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot delete {}", entry.path().display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}
