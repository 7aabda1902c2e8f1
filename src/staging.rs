//! Scratch space for database snapshots while a backup runs.
//!
//! One directory, locked with `flock` for the whole backup: the lock is what keeps two
//! backups on one host from running at once, and it dies with its process, so a killed run
//! never blocks the next one. Whoever takes the lock removes what a killed run left.
//! Only snapshot copies live here: Signal's stays encrypted with Signal's key.

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cancel::Cancel;

const LOCK: &str = "lock";

pub struct Staging {
    dir: PathBuf,
    _lock: File,
}

impl Staging {
    /// Takes the staging directory under `base`, waiting up to `wait` for a backup that
    /// holds it (such as one the daemon just abandoned) to let go.
    pub fn acquire(base: &Path, wait: Duration, cancel: &Cancel) -> Result<Self> {
        let dir = base.join("ghostwire-backup-staging");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| {
                format!(
                    "cannot create staging directory {} (set --staging-dir)",
                    dir.display()
                )
            })?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))?;
        let deadline = Instant::now() + wait;
        while rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .is_err()
        {
            cancel.check()?;
            if Instant::now() >= deadline {
                bail!(
                    "another backup is running on this host (it holds {}); try again when it ends",
                    dir.join(LOCK).display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let staging = Self { dir, _lock: lock };
        staging.clear()?;
        Ok(staging)
    }

    /// A path for a new scratch file.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn clear(&self) -> Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name() != LOCK {
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    fs::remove_dir_all(&path)?;
                } else {
                    fs::remove_file(&path)?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(err) = self.clear() {
            tracing::warn!(dir = %self.dir.display(), error = %err, "could not clean the staging directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_backup_at_a_time_and_leftovers_are_cleared() {
        let base = tempfile::tempdir().unwrap();
        let first = Staging::acquire(base.path(), Duration::ZERO, &Cancel::new()).unwrap();
        let err = Staging::acquire(base.path(), Duration::ZERO, &Cancel::new())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("another backup is running"), "{err}");
        drop(first);
        // What a killed run leaves behind: a snapshot copy next to a lock nobody holds.
        let leftover = base.path().join("ghostwire-backup-staging/db-0.sqlite");
        fs::write(&leftover, b"x").unwrap();
        let _second = Staging::acquire(base.path(), Duration::ZERO, &Cancel::new()).unwrap();
        assert!(!leftover.exists());
    }
}
