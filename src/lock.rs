//! Repository locks: backups share the repository, prune needs it alone. A lock is an
//! object `locks/<id>.json`; whoever finds a conflicting live lock withdraws its own.
//!
//! A crashed run must not block the next one forever (a top complaint about restic, K8up
//! and VolSync): every lock expires, and a lock left by a process that no longer exists on
//! this host is stale at once. Stale locks are ignored and removed.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::repo::Repository;

const PREFIX: &str = "locks/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Backups: many at once.
    Shared,
    /// Prune: nothing else at the same time.
    Exclusive,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    mode: Mode,
    purpose: String,
    host: String,
    pid: u32,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl Record {
    fn is_stale(&self, now: DateTime<Utc>, host: &str) -> bool {
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let dead_here = self.host == host && unsafe { libc::kill(self.pid as i32, 0) } != 0;
        self.expires_at < now || dead_here
    }
}

pub struct Lock {
    repo: Repository,
    key: String,
}

impl Lock {
    /// Takes a lock, or fails naming who holds a conflicting one.
    pub async fn acquire(repo: &Repository, mode: Mode, purpose: &str) -> Result<Self> {
        let now = Utc::now();
        let host = crate::lease::default_owner();
        // Long enough for the longest run; a crash is caught sooner on the same host.
        let ttl = match mode {
            Mode::Shared => Duration::from_secs(6 * 3600),
            Mode::Exclusive => Duration::from_secs(3600),
        };
        let record = Record {
            mode,
            purpose: purpose.to_string(),
            host: host.clone(),
            pid: std::process::id(),
            created_at: now,
            expires_at: now + ttl,
        };
        let key = format!("{PREFIX}{}.json", crate::manifest::new_snapshot_id(now));
        repo.store()
            .put(&key, Bytes::from(serde_json::to_vec(&record)?))
            .await
            .context("cannot write a repository lock")?;
        let lock = Self {
            repo: repo.clone(),
            key,
        };
        for object in repo.store().list(PREFIX).await? {
            if object.key == lock.key {
                continue;
            }
            let Some(other) = read(repo, &object.key).await? else {
                continue;
            };
            if other.is_stale(now, &host) {
                if mode == Mode::Exclusive {
                    tracing::warn!(lock = %object.key, purpose = %other.purpose, host = %other.host, "removing a stale repository lock");
                    repo.store().delete(&object.key).await?;
                }
                continue;
            }
            if mode == Mode::Exclusive || other.mode == Mode::Exclusive {
                lock.release().await;
                bail!(
                    "the repository is locked by a {} on {} (pid {}) since {}; try again when it \
                     ends (a lock from a crashed run expires at {})",
                    other.purpose,
                    other.host,
                    other.pid,
                    other.created_at.to_rfc3339(),
                    other.expires_at.to_rfc3339()
                );
            }
        }
        Ok(lock)
    }

    pub async fn release(self) {
        if let Err(err) = self.repo.store().delete(&self.key).await {
            tracing::warn!(lock = %self.key, error = format!("{err:#}"), "could not remove the repository lock; it expires by itself");
        }
    }
}

async fn read(repo: &Repository, key: &str) -> Result<Option<Record>> {
    let mut bytes = Vec::new();
    match repo.store().get(key, 0).await {
        Ok(mut reader) => reader.read_to_end(&mut bytes).await?,
        Err(err) if err.downcast_ref::<crate::store::NotFound>().is_some() => return Ok(None),
        Err(err) => return Err(err),
    };
    // A lock we cannot parse is someone's; treat it as live rather than guess.
    Ok(Some(serde_json::from_slice(&bytes).unwrap_or(Record {
        mode: Mode::Exclusive,
        purpose: format!("unknown lock {key}"),
        host: String::new(),
        pid: 0,
        created_at: Utc::now(),
        expires_at: Utc::now() + Duration::from_secs(3600),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::s3::S3Options;

    #[tokio::test]
    async fn backups_share_prune_is_alone_and_crashed_locks_do_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(dir.path().to_str().unwrap(), &S3Options::default())
            .await
            .unwrap();
        let first = Lock::acquire(&repo, Mode::Shared, "backup").await.unwrap();
        let second = Lock::acquire(&repo, Mode::Shared, "backup").await.unwrap();
        let err = Lock::acquire(&repo, Mode::Exclusive, "prune")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("locked by a backup"), "{err}");
        first.release().await;
        second.release().await;
        let prune = Lock::acquire(&repo, Mode::Exclusive, "prune")
            .await
            .unwrap();
        assert!(Lock::acquire(&repo, Mode::Shared, "backup").await.is_err());
        prune.release().await;

        // A lock left by a process that died on this host is stale at once.
        let crashed = Record {
            mode: Mode::Exclusive,
            purpose: "prune".into(),
            host: crate::lease::default_owner(),
            pid: i32::MAX as u32,
            created_at: Utc::now(),
            expires_at: Utc::now() + Duration::from_secs(3600),
        };
        repo.store()
            .put(
                "locks/crashed.json",
                Bytes::from(serde_json::to_vec(&crashed).unwrap()),
            )
            .await
            .unwrap();
        Lock::acquire(&repo, Mode::Shared, "backup")
            .await
            .unwrap()
            .release()
            .await;
        // So is one from another host whose time ran out; prune removes it.
        let expired = Record {
            host: "elsewhere".into(),
            pid: 1,
            expires_at: Utc::now() - Duration::from_secs(1),
            ..crashed
        };
        repo.store()
            .put(
                "locks/expired.json",
                Bytes::from(serde_json::to_vec(&expired).unwrap()),
            )
            .await
            .unwrap();
        Lock::acquire(&repo, Mode::Exclusive, "prune")
            .await
            .unwrap()
            .release()
            .await;
        assert!(repo.store().list("locks/").await.unwrap().is_empty());
    }
}
