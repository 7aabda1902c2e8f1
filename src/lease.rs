//! Single-writer fencing. Two Signal instances on one linked-device identity break each
//! other (SIGNAL.md), so blue and green must never run at once. The running sidecar holds
//! a lease object in the repository, renewed while it runs; a restore for a new instance
//! refuses to run while another owner's lease is live. The final snapshot releases it:
//!
//! stop blue → blue's sidecar takes the final snapshot and releases the lease → restore
//! into green's fresh volume → start green (whose sidecar takes the lease).
//!
//! Writes are compare-and-swap ([`Store::put_if`]: S3 conditional writes), so a sidecar
//! notices when someone else took the lease over.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repo::Repository;
use crate::store::Conflict;

const KEY: &str = "lease.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    /// Who holds it: the pod name (HOSTNAME) unless set with --lease-owner.
    pub owner: String,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Set when the holder let go, normally after its final snapshot.
    pub released_at: Option<DateTime<Utc>>,
    pub final_snapshot: Option<String>,
}

impl Lease {
    fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.released_at.is_none() && self.expires_at > now
    }

    fn describe(&self) -> String {
        format!(
            "held by {} (renewed {}, expires {})",
            self.owner,
            self.renewed_at.to_rfc3339(),
            self.expires_at.to_rfc3339()
        )
    }
}

/// This process's name for lease ownership: `--lease-owner`, else the pod name.
pub fn default_owner() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            let mut buffer = [0u8; 256];
            // SAFETY: gethostname writes at most `len` bytes into our buffer.
            unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
            let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
            String::from_utf8_lossy(&buffer[..end]).into_owned()
        })
}

async fn read(repo: &Repository) -> Result<Option<(Lease, String)>> {
    match repo.store().get_versioned(KEY).await? {
        Some((bytes, version)) => {
            let lease = serde_json::from_slice(&bytes)
                .context("the repository's lease.json is malformed")?;
            Ok(Some((lease, version)))
        }
        None => Ok(None),
    }
}

/// A lease this process holds.
pub struct Held {
    lease: Lease,
    version: String,
    ttl: Duration,
}

impl Held {
    /// Takes the lease, unless another owner holds it live.
    pub async fn acquire(repo: &Repository, owner: &str, ttl: Duration) -> Result<Self> {
        let now = Utc::now();
        let current = read(repo).await?;
        if let Some((lease, _)) = &current
            && lease.owner != owner
            && lease.is_live(now)
        {
            bail!(
                "the repository's lease is {}: another Ghostwire instance is running on this \
                 Signal identity. Stop it first (its final snapshot releases the lease); two \
                 instances on one identity break each other",
                lease.describe()
            );
        }
        if let Some((lease, _)) = current
            .as_ref()
            .filter(|(l, _)| l.owner != owner && l.released_at.is_none())
        {
            tracing::warn!(previous = %lease.describe(), "taking over an expired lease");
        }
        let lease = Lease {
            owner: owner.to_string(),
            acquired_at: now,
            renewed_at: now,
            expires_at: now + ttl,
            released_at: None,
            final_snapshot: None,
        };
        let version = write(repo, &lease, current.as_ref().map(|(_, v)| v.as_str())).await?;
        tracing::info!(owner, expires = %lease.expires_at.to_rfc3339(), "lease acquired");
        Ok(Self {
            lease,
            version,
            ttl,
        })
    }

    /// How often to renew: a third of the lifetime, so one missed renewal is harmless.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    pub async fn renew(&mut self, repo: &Repository) -> Result<()> {
        let now = Utc::now();
        let lease = Lease {
            renewed_at: now,
            expires_at: now + self.ttl,
            ..self.lease.clone()
        };
        self.version = write(repo, &lease, Some(&self.version)).await.context(
            "cannot renew the lease: someone else took it over — is another instance running?",
        )?;
        self.lease = lease;
        Ok(())
    }

    /// Lets go, recording the final snapshot a successor should restore.
    pub async fn release(mut self, repo: &Repository, final_snapshot: Option<&str>) -> Result<()> {
        self.lease.released_at = Some(Utc::now());
        self.lease.final_snapshot = final_snapshot.map(str::to_string);
        write(repo, &self.lease, Some(&self.version))
            .await
            .context("cannot release the lease")?;
        tracing::info!(final_snapshot, "lease released");
        Ok(())
    }
}

async fn write(repo: &Repository, lease: &Lease, expected: Option<&str>) -> Result<String> {
    let json = serde_json::to_vec_pretty(lease).expect("a lease serializes");
    repo.store()
        .put_if(KEY, Bytes::from(json), expected)
        .await
        .map_err(|err| match err.downcast_ref::<Conflict>() {
            Some(_) => anyhow::anyhow!("the lease was changed by another writer at the same time"),
            None => err,
        })
}

/// Refuses a restore for `owner` while another owner's lease is live.
pub async fn check_restore(repo: &Repository, owner: &str, break_lease: bool) -> Result<()> {
    let Some((lease, _)) = read(repo).await? else {
        return Ok(());
    };
    if lease.owner == owner || !lease.is_live(Utc::now()) {
        return Ok(());
    }
    if break_lease {
        tracing::warn!(lease = %lease.describe(), "--break-lease: restoring although the lease is live");
        return Ok(());
    }
    bail!(
        "refusing to restore: the repository's lease is {}, so that instance may still be \
         running on this Signal identity and two instances break each other. Stop it first \
         (its final snapshot releases the lease), or pass --break-lease if it is gone for good",
        lease.describe()
    )
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

    #[tokio::test]
    async fn blue_holds_green_waits_until_release() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let ttl = Duration::from_secs(600);
        check_restore(&repo, "ghostwire-green-0", false)
            .await
            .unwrap();
        let mut blue = Held::acquire(&repo, "ghostwire-0", ttl).await.unwrap();
        blue.renew(&repo).await.unwrap();
        let refused = check_restore(&repo, "ghostwire-green-0", false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("held by ghostwire-0") && refused.contains("--break-lease"),
            "{refused}"
        );
        check_restore(&repo, "ghostwire-green-0", true)
            .await
            .unwrap();
        // Blue's own pod restarting may restore: it is the same instance.
        check_restore(&repo, "ghostwire-0", false).await.unwrap();
        let taken = Held::acquire(&repo, "ghostwire-green-0", ttl)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(taken.contains("another Ghostwire instance"), "{taken}");
        blue.release(&repo, Some("final-id")).await.unwrap();
        check_restore(&repo, "ghostwire-green-0", false)
            .await
            .unwrap();
        Held::acquire(&repo, "ghostwire-green-0", ttl)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_the_old_holder_notices() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let mut blue = Held::acquire(&repo, "ghostwire-0", Duration::from_millis(1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        check_restore(&repo, "ghostwire-green-0", false)
            .await
            .unwrap();
        let _green = Held::acquire(&repo, "ghostwire-green-0", Duration::from_secs(600))
            .await
            .unwrap();
        let err = format!("{:#}", blue.renew(&repo).await.unwrap_err());
        assert!(err.contains("someone else took it over"), "{err}");
    }
}
