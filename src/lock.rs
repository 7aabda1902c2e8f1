//! Repository locks: backups share the repository, prune needs it alone. A lock is an
//! object `locks/<id>.json`; whoever finds a conflicting live lock withdraws its own.
//!
//! A crashed run must not block the next one forever (a top complaint about restic, K8up
//! and VolSync): every lock expires, and a lock whose process is provably gone is stale at
//! once. Provably: a lock records its host name, the kernel's boot id and its PID
//! namespace besides its pid, and only a reader on the same host, in the same boot and
//! the same PID namespace asks the kernel about that pid (two containers of one pod share
//! the host name, not the pids; a host name seen with another boot id is a rebooted or
//! replaced machine, whose processes are all gone). Anyone else waits for the expiry.
//! A lock that cannot be read is never guessed about: it is reported, and
//! `ghostwire-backup unlock` removes it.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::layout::Object;
use crate::repo::Repository;
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Backups: many at once.
    Shared,
    /// Prune: nothing else at the same time.
    Exclusive,
}

/// A lock object's content (docs/format.md lists the fields).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    mode: Mode,
    purpose: String,
    host: String,
    pid: u32,
    /// The holder's kernel boot id; absent in locks of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_id: Option<String>,
    /// The inode number of the holder's PID namespace; absent in locks of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid_namespace: Option<u64>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

/// Where this process runs, as far as a lock's liveness can be told from it.
#[derive(Debug, Clone)]
struct Here {
    host: String,
    boot_id: Option<String>,
    pid_namespace: Option<u64>,
}

impl Here {
    fn current() -> Self {
        Self {
            host: host_name(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_string())
                .filter(|id| !id.is_empty()),
            pid_namespace: std::fs::metadata("/proc/self/ns/pid")
                .ok()
                .map(|ns| ns.ino()),
        }
    }
}

/// What can be told about a lock holder's process from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Alive,
    Gone,
    /// Another host or PID namespace, or a lock without the fields to tell: only the
    /// expiry says.
    Unknown,
}

impl Record {
    fn holder(&self, here: &Here) -> Holder {
        if self.host != here.host {
            return Holder::Unknown;
        }
        match (&self.boot_id, &here.boot_id) {
            (Some(theirs), Some(ours)) if theirs != ours => return Holder::Gone,
            (Some(_), Some(_)) => {}
            _ => return Holder::Unknown,
        }
        match (self.pid_namespace, here.pid_namespace) {
            (Some(theirs), Some(ours)) if theirs == ours => process(self.pid),
            _ => Holder::Unknown,
        }
    }

    /// Why the lock no longer holds anything, or `None` while it may.
    fn stale(&self, now: DateTime<Utc>, here: &Here) -> Option<String> {
        if self.expires_at < now {
            return Some(format!("expired at {}", self.expires_at.to_rfc3339()));
        }
        match self.holder(here) {
            Holder::Gone => Some(format!("process {} on {} is gone", self.pid, self.host)),
            Holder::Alive | Holder::Unknown => None,
        }
    }

    fn describe(&self) -> String {
        format!(
            "the {} lock of a {} on {} (pid {}) since {}",
            match self.mode {
                Mode::Shared => "shared",
                Mode::Exclusive => "exclusive",
            },
            self.purpose,
            self.host,
            self.pid,
            self.created_at.to_rfc3339(),
        )
    }
}

/// Whether a process of this PID namespace exists. Only "no such process" means gone:
/// "not permitted" is a live process of another user.
fn process(pid: u32) -> Holder {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Holder::Unknown;
    };
    match rustix::process::test_kill_process(pid) {
        Err(rustix::io::Errno::SRCH) => Holder::Gone,
        _ => Holder::Alive,
    }
}

/// A lock object as found in the repository.
enum Found {
    Record(Record),
    /// Not a lock record this version can read: damaged, or not ours.
    Unreadable(String),
}

/// Reads a lock; `None` if it was removed meanwhile.
async fn read(repo: &Repository, lock: &Object) -> Result<Option<Found>> {
    let bytes = match repo.read(lock).await {
        Ok(bytes) => bytes,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(err @ StoreError::TooLarge { .. }) => {
            return Ok(Some(Found::Unreadable(err.to_string())));
        }
        Err(err) => return Err(err).with_context(|| format!("cannot read the lock {lock}")),
    };
    Ok(Some(match serde_json::from_slice(&bytes) {
        Ok(record) => Found::Record(record),
        Err(err) => Found::Unreadable(err.to_string()),
    }))
}

fn unreadable(lock: &Object, err: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the repository lock {lock} cannot be read ({err}), so nobody can tell whose it is or \
         whether it is still held; if no backup or prune is running on this repository, \
         remove it with `ghostwire-backup unlock`"
    )
}

/// How long a lock holds unless renewed, and how often its holder renews it while it
/// works: a backup or a prune of any length keeps its exclusion, a crashed holder's lock
/// holds nothing after [`LIFETIME`], and a live one survives two failed renewals in a row.
const LIFETIME: Duration = Duration::from_secs(30 * 60);
const RENEW_EVERY: Duration = Duration::from_secs(10 * 60);

pub struct Lock {
    repo: Repository,
    object: Object,
    /// The task that renews the lock; stopped on release, and on drop (a release given
    /// up on must not leave a lock renewed forever).
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}

impl Lock {
    /// Takes a lock, or fails naming who holds a conflicting one. The lock renews itself
    /// every [`RENEW_EVERY`] until it is released or dropped.
    pub async fn acquire(repo: &Repository, mode: Mode, purpose: &str) -> Result<Self> {
        Self::acquire_for(repo, mode, purpose, LIFETIME, RENEW_EVERY).await
    }

    async fn acquire_for(
        repo: &Repository,
        mode: Mode,
        purpose: &str,
        lifetime: Duration,
        renew_every: Duration,
    ) -> Result<Self> {
        let now = Utc::now();
        let here = Here::current();
        let record = Record {
            mode,
            purpose: purpose.to_string(),
            host: here.host.clone(),
            pid: std::process::id(),
            boot_id: here.boot_id.clone(),
            pid_namespace: here.pid_namespace,
            created_at: now,
            expires_at: now + lifetime,
        };
        let object = Object::Lock(crate::manifest::new_snapshot_id(now));
        repo.put(&object, Bytes::from(serde_json::to_vec(&record)?))
            .await
            .context("cannot write a repository lock")?;
        let mut lock = Self {
            repo: repo.clone(),
            object,
            renewal: None,
        };
        if let Err(err) = lock.check_others(mode, now, &here).await {
            lock.release().await;
            return Err(err);
        }
        lock.renewal = Some(tokio::spawn(renew(
            repo.clone(),
            lock.object.clone(),
            record,
            lifetime,
            renew_every,
        )));
        Ok(lock)
    }

    /// Fails if another lock conflicts with ours or cannot be read; an exclusive taker
    /// removes the stale locks it finds.
    async fn check_others(&self, mode: Mode, now: DateTime<Utc>, here: &Here) -> Result<()> {
        for other in self.repo.list(Object::Lock).await? {
            if other == self.object {
                continue;
            }
            let record = match read(&self.repo, &other).await? {
                None => continue,
                Some(Found::Unreadable(err)) => return Err(unreadable(&other, &err)),
                Some(Found::Record(record)) => record,
            };
            if let Some(why) = record.stale(now, here) {
                if mode == Mode::Exclusive {
                    tracing::warn!(lock = %other, holder = %record.describe(), why, "removing a stale repository lock");
                    self.repo.delete(&other).await?;
                }
                continue;
            }
            if mode == Mode::Exclusive || record.mode == Mode::Exclusive {
                bail!(
                    "the repository is locked by a {} on {} (pid {}) since {}; try again when it \
                     ends (a lock from a crashed run expires at {}; `ghostwire-backup unlock` \
                     removes it sooner if that run is gone)",
                    record.purpose,
                    record.host,
                    record.pid,
                    record.created_at.to_rfc3339(),
                    record.expires_at.to_rfc3339()
                );
            }
        }
        Ok(())
    }

    pub async fn release(mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
            let _ = renewal.await; // a renewal in flight must not land after the delete
        }
        if let Err(err) = self.repo.delete(&self.object).await {
            tracing::warn!(lock = %self.object, error = format!("{:#}", anyhow::Error::from(err)), "could not remove the repository lock; it expires by itself");
        }
    }
}

/// Rewrites the lock with a new expiry every `every`, until aborted. A failed renewal is
/// a warning: the lock still holds until its expiry, and the next renewal tries again.
async fn renew(
    repo: Repository,
    object: Object,
    mut record: Record,
    lifetime: Duration,
    every: Duration,
) {
    let mut held_until = record.expires_at;
    loop {
        tokio::time::sleep(every).await;
        record.expires_at = Utc::now() + lifetime;
        let written = match serde_json::to_vec(&record) {
            Ok(bytes) => repo.put(&object, Bytes::from(bytes)).await,
            Err(err) => Err(anyhow::Error::from(err).into()),
        };
        match written {
            Ok(()) => {
                held_until = record.expires_at;
                tracing::debug!(lock = %object, until = %held_until.to_rfc3339(), "repository lock renewed");
            }
            Err(err) => tracing::warn!(
                lock = %object,
                holds_until = %held_until.to_rfc3339(),
                error = format!("{:#}", anyhow::Error::from(err)),
                "could not renew the repository lock; trying again in {} s",
                every.as_secs()
            ),
        }
    }
}

/// Runs `work` alone in the repository under the exclusive lock (prune, forget), or
/// without one for a dry run, which deletes nothing.
pub async fn exclusively<T>(
    repo: &Repository,
    purpose: &str,
    dry_run: bool,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let lock = match dry_run {
        true => None,
        false => Some(Lock::acquire(repo, Mode::Exclusive, purpose).await?),
    };
    let result = work.await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    result
}

/// What [`unlock`] did with one lock.
#[derive(Debug)]
pub enum Unlocked {
    /// Removed: expired, its process gone, or unreadable.
    Stale { lock: String, why: String },
    /// Removed although it may still be held (`--all`).
    Live { lock: String, holder: String },
    /// Left in place: it may still be held.
    Kept { lock: String, holder: String },
}

/// Removes the locks that hold nothing (expired, their process gone, unreadable), and with
/// `all` the live ones too. A live lock removed under a running prune or backup lets the
/// other start alongside it, which the lock exists to prevent: `all` is for a run known to
/// be gone that this host cannot prove gone (another pod, another PID namespace).
pub async fn unlock(repo: &Repository, all: bool) -> Result<Vec<Unlocked>> {
    let now = Utc::now();
    let here = Here::current();
    let mut done = Vec::new();
    for lock in repo.list(Object::Lock).await? {
        let outcome = match read(repo, &lock).await? {
            None => continue,
            Some(Found::Unreadable(err)) => Unlocked::Stale {
                lock: lock.key(),
                why: format!("unreadable ({err})"),
            },
            Some(Found::Record(record)) => match record.stale(now, &here) {
                Some(why) => Unlocked::Stale {
                    lock: lock.key(),
                    why: format!("{why}; {}", record.describe()),
                },
                None if all => Unlocked::Live {
                    lock: lock.key(),
                    holder: record.describe(),
                },
                None => Unlocked::Kept {
                    lock: lock.key(),
                    holder: format!(
                        "{}, expiring at {}",
                        record.describe(),
                        record.expires_at.to_rfc3339()
                    ),
                },
            },
        };
        if !matches!(outcome, Unlocked::Kept { .. }) {
            repo.delete(&lock)
                .await
                .with_context(|| format!("cannot remove the lock {lock}"))?;
        }
        done.push(outcome);
    }
    Ok(done)
}

/// The host name: the pod name (HOSTNAME) in Kubernetes, else the machine's.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::s3::S3Options;

    async fn repo(dir: &std::path::Path) -> Repository {
        Repository::open(dir.to_str().unwrap(), &S3Options::default())
            .await
            .unwrap()
    }

    /// A lock of this host, boot and PID namespace, held by `pid`.
    fn lock_of(pid: u32, mode: Mode) -> Record {
        let here = Here::current();
        Record {
            mode,
            purpose: "prune".into(),
            host: here.host,
            pid,
            boot_id: here.boot_id,
            pid_namespace: here.pid_namespace,
            created_at: Utc::now(),
            expires_at: Utc::now() + Duration::from_secs(3600),
        }
    }

    async fn place(repo: &Repository, id: &str, record: &Record) {
        repo.put(
            &Object::Lock(id.into()),
            Bytes::from(serde_json::to_vec(record).unwrap()),
        )
        .await
        .unwrap();
    }

    /// A pid no process has: a child that has exited and been reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    }

    async fn prune_may_run(repo: &Repository) -> bool {
        match Lock::acquire(repo, Mode::Exclusive, "prune").await {
            Ok(lock) => {
                lock.release().await;
                true
            }
            Err(_) => false,
        }
    }

    /// Waits until the wall clock is past `instant`: the event a renewal must outlive.
    async fn until_past(instant: DateTime<Utc>) {
        while Utc::now() <= instant {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_renewed_while_its_holder_works_keeps_prune_out_past_its_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let (lifetime, every) = (Duration::from_secs(2), Duration::from_millis(400));
        let backup = Lock::acquire_for(&repo, Mode::Shared, "backup", lifetime, every)
            .await
            .unwrap();
        until_past(Utc::now() + lifetime * 2).await;
        let err = Lock::acquire(&repo, Mode::Exclusive, "prune")
            .await
            .err()
            .expect("prune took the repository from a backup still working");
        assert!(err.to_string().contains("locked by a backup"), "{err:#}");
        backup.release().await;
        Lock::acquire(&repo, Mode::Exclusive, "prune")
            .await
            .unwrap()
            .release()
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_given_up_on_is_renewed_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let (lifetime, every) = (Duration::from_secs(1), Duration::from_millis(200));
        let backup = Lock::acquire_for(&repo, Mode::Shared, "backup", lifetime, every)
            .await
            .unwrap();
        // What a release that timed out leaves: the lock object, and no renewal.
        drop(backup);
        until_past(Utc::now() + lifetime + every * 2).await;
        Lock::acquire(&repo, Mode::Exclusive, "prune")
            .await
            .expect("a lock no one renews expires")
            .release()
            .await;
    }

    #[tokio::test]
    async fn backups_share_prune_is_alone() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
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
        assert!(repo.list(Object::Lock).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_lock_whose_process_is_gone_here_is_stale_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        place(&repo, "crashed", &lock_of(dead_pid(), Mode::Exclusive)).await;
        assert!(prune_may_run(&repo).await);
        assert!(repo.list(Object::Lock).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_live_process_holds_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        place(&repo, "live", &lock_of(std::process::id(), Mode::Shared)).await;
        assert!(!prune_may_run(&repo).await);
    }

    #[tokio::test]
    async fn the_same_host_name_in_another_boot_is_a_gone_process() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        // Our own pid: alive here, but the lock says it was taken in another boot.
        let rebooted = Record {
            boot_id: Some("00000000-0000-0000-0000-000000000000".into()),
            ..lock_of(std::process::id(), Mode::Exclusive)
        };
        if Here::current().boot_id.is_none() {
            // No boot id on this kernel: nothing proves the boot changed.
            place(&repo, "rebooted", &rebooted).await;
            assert!(!prune_may_run(&repo).await);
            return;
        }
        place(&repo, "rebooted", &rebooted).await;
        assert!(prune_may_run(&repo).await);
    }

    #[tokio::test]
    async fn another_pid_namespace_waits_for_the_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        // A dead pid here, but the holder counts pids in another namespace (another
        // container of the pod): its pid says nothing here.
        let elsewhere = Record {
            pid_namespace: Some(1),
            ..lock_of(dead_pid(), Mode::Exclusive)
        };
        place(&repo, "container", &elsewhere).await;
        assert!(!prune_may_run(&repo).await);
        // So does a lock of an older version, which recorded neither.
        let old = Record {
            boot_id: None,
            pid_namespace: None,
            ..lock_of(dead_pid(), Mode::Exclusive)
        };
        repo.delete(&Object::Lock("container".into()))
            .await
            .unwrap();
        place(&repo, "old", &old).await;
        assert!(!prune_may_run(&repo).await);
        // Once expired, any host may remove it.
        let expired = Record {
            host: "elsewhere".into(),
            expires_at: Utc::now() - Duration::from_secs(1),
            ..old
        };
        place(&repo, "old", &expired).await;
        assert!(prune_may_run(&repo).await);
        assert!(repo.list(Object::Lock).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_unreadable_lock_is_reported_naming_unlock_and_unlock_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let junk = Object::Lock("junk".into());
        repo.put(&junk, Bytes::from_static(b"{\"mode\": \"exclu"))
            .await
            .unwrap();
        for mode in [Mode::Shared, Mode::Exclusive] {
            let err = Lock::acquire(&repo, mode, "backup")
                .await
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("locks/junk.json cannot be read")
                    && err.contains("ghostwire-backup unlock"),
                "{err}"
            );
            // It stays the same error on every try: nothing pretends it will expire.
            assert!(!err.contains("expires"), "{err}");
        }
        // Our own withdrawn locks are gone; only the junk is left.
        assert_eq!(repo.list(Object::Lock).await.unwrap(), vec![junk.clone()]);

        place(&repo, "live", &lock_of(std::process::id(), Mode::Shared)).await;
        place(&repo, "crashed", &lock_of(dead_pid(), Mode::Shared)).await;
        let done = unlock(&repo, false).await.unwrap();
        assert!(
            matches!(&done[..], [
                Unlocked::Stale { lock: a, .. },
                Unlocked::Stale { lock: b, why },
                Unlocked::Kept { lock: c, .. },
            ] if a == "locks/crashed.json" && b == "locks/junk.json"
                && why.starts_with("unreadable") && c == "locks/live.json"),
            "{done:?}"
        );
        assert_eq!(
            repo.list(Object::Lock).await.unwrap(),
            vec![Object::Lock("live".into())]
        );
        let done = unlock(&repo, true).await.unwrap();
        assert!(matches!(&done[..], [Unlocked::Live { .. }]), "{done:?}");
        assert!(repo.list(Object::Lock).await.unwrap().is_empty());
    }
}
