//! File helpers every part shares, once: atomic small writes, directory and filesystem
//! syncs, free space, and sizes for people.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cancel::Cancel;

/// Reads a small JSON file; `None` if it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is damaged; remove it to restore again", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Adds group and other write to the process's umask (keeping whatever else the caller
/// masks), first thing, before any thread exists. Called with umask 000, everything made
/// without a mode of its own (SQLite's catalog, a directory on the way to a target) would
/// be writable by every local user, who could then plant links for root to follow or act
/// as a bucket writer on a local repository. What holds secrets or matters sets its own
/// mode besides (keys 0600, staging and aside directories 0700, a local repository
/// 0700/0600, the marker 0644).
pub fn never_create_writable_by_others() {
    use rustix::fs::Mode;
    let old = rustix::process::umask(Mode::from_raw_mode(0o077));
    rustix::process::umask(old | Mode::from_raw_mode(0o022));
}

/// Writes a small JSON file atomically: temporary file (mode 0644 whatever the umask),
/// fsync, rename, fsync the directory.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let temp = path.with_extension("partial");
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&temp)?;
    file.set_permissions(fs::Permissions::from_mode(0o644))?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&temp, path)?;
    sync_dir(path.parent().expect("a file in a directory"))
}

/// Makes a directory's entries (new names, renames) durable.
/// Warns when a secret key file (`what`, e.g. "identity file") can be read by users who do
/// not need it: by others, or by its group although we own it. A Kubernetes Secret's files
/// are root's and reach the agent (uid 1000, group 0) only through their group, so a group
/// bit on a file we do not own is how it must be.
pub fn warn_if_others_can_read(path: &Path, metadata: &fs::Metadata, what: &str) {
    use std::os::unix::fs::MetadataExt;
    let mode = metadata.mode();
    let ours = metadata.uid() == rustix::process::geteuid().as_raw();
    if mode & 0o007 != 0 || (ours && mode & 0o070 != 0) {
        tracing::warn!(
            file = %path.display(),
            "the {what} is readable by other users; chmod 600 it (in Kubernetes, mount the \
             Secret read-only with defaultMode 0440: the agent reads it through its group)"
        );
    }
}

/// Creates `path` for a secret key: mode 0600, and never over an existing file (a key
/// overwritten is every snapshot made for it lost).
pub fn create_secret_file(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)?
        .sync_all()
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// One `syncfs` of the filesystem holding `path` instead of an fsync per file: tens of
/// thousands of attachments would otherwise cost a disk flush each. The flush runs on its
/// own thread so that a cancellation is noticed while it runs; the kernel finishes the
/// flush regardless.
pub fn sync_filesystem(path: &Path, cancel: &Cancel) -> Result<()> {
    let dir = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(rustix::fs::syncfs(&dir)));
    loop {
        match result.recv_timeout(Duration::from_millis(50)) {
            Ok(outcome) => return outcome.context("syncfs failed"),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => cancel.check()?,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => bail!("syncfs thread died"),
        }
    }
}

/// Fails with advice when the filesystem holding `target` has less than `needed` bytes
/// free. Not knowing (statvfs fails) is not a reason to refuse.
pub fn check_free_space(target: &Path, needed: u64) -> Result<()> {
    let Ok(stats) = rustix::fs::statvfs(target) else {
        return Ok(());
    };
    let available = stats.f_bavail.saturating_mul(stats.f_frsize);
    if available < needed {
        bail!(
            "{} has {} free but the snapshot holds {}: use a larger volume",
            target.display(),
            indicatif::HumanBytes(available),
            indicatif::HumanBytes(needed)
        );
    }
    Ok(())
}

/// Whether this process runs as root (and may therefore keep archived owners).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        assert!(read_json::<Vec<u32>>(&path).unwrap().is_none());
        write_json(&path, &vec![1u32, 2]).unwrap();
        assert_eq!(read_json::<Vec<u32>>(&path).unwrap(), Some(vec![1, 2]));
        assert!(!path.with_extension("partial").exists());
        sync_filesystem(dir.path(), &Cancel::new()).unwrap();
    }
}
