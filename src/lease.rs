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

use crate::exit::{self, Exit};
use crate::layout::Object;
use crate::manifest::Manifest;
use crate::repo::{Listing, Repository};
use crate::store::StoreError;

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
    /// minisign signature by the backup side's signing key over this lease without its
    /// signature (compact JSON): what makes a handoff trustworthy. Anyone who can write to
    /// the bucket could otherwise name an older genuine snapshot as the final one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Lease {
    /// Whether another instance must still honour it: unreleased, and not expired by more
    /// than `skew` on the reader's clock. `expires_at` is the holder's clock plus the TTL;
    /// a reader whose clock runs ahead by up to `skew` never takes a lease its holder still
    /// counts as running.
    fn is_live(&self, now: DateTime<Utc>, skew: Duration) -> bool {
        self.released_at.is_none() && self.expires_at + skew > now
    }

    /// What the signature covers: the lease without it.
    fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = Lease {
            signature: None,
            ..self.clone()
        };
        serde_json::to_vec(&unsigned).expect("a lease serializes")
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

/// How far apart two instances' clocks may be for the lease still to keep them apart: a
/// reader honours an unreleased lease until its `expires_at` plus this much.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Who this instance is, for the lease.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// `--lease-owner`: used as it is.
    pub owner: Option<String>,
    /// The cluster's name, unique among the clusters sharing the repository.
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

impl Identity {
    /// The owner name: `--lease-owner` if set; else `<cluster>/<namespace>/<pod>`, which
    /// two pods never share (the same release name in another namespace or a DR cluster
    /// differs in one part); else, outside Kubernetes, the host name.
    pub fn owner(&self) -> Result<String> {
        if let Some(owner) = self.owner.as_ref().filter(|o| !o.is_empty()) {
            return Ok(owner.clone());
        }
        let Some(pod) = self.pod.as_ref().filter(|p| !p.is_empty()) else {
            return Ok(crate::lock::host_name());
        };
        let missing = |what: &str, variable: &str| {
            anyhow::anyhow!(
                "GWB_POD_NAME is set ({pod}) but {what} is not: set {variable} too. The lease \
                 owner is <cluster>/<namespace>/<pod>, so that the same pod name in another \
                 namespace or cluster can never take over a live lease"
            )
        };
        let namespace = self
            .namespace
            .as_ref()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| missing("the pod's namespace", "GWB_POD_NAMESPACE"))?;
        let cluster = self
            .cluster
            .as_ref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| missing("the cluster's id", "GWB_CLUSTER_ID"))?;
        Ok(format!("{cluster}/{namespace}/{pod}"))
    }
}

/// The lease object as found: absent, a lease, or something that is not one.
enum Found {
    Absent,
    Lease(Lease, String),
    /// Not a lease this version can read (damaged, or written by something else), with
    /// its version so it can be replaced by compare-and-swap. A live holder renews a
    /// well-formed lease, so junk proves no one holds it.
    Junk(serde_json::Error, String),
}

impl Found {
    fn version(&self) -> Option<&str> {
        match self {
            Found::Absent => None,
            Found::Lease(_, version) | Found::Junk(_, version) => Some(version),
        }
    }
}

async fn read(repo: &Repository) -> Result<Found> {
    Ok(
        match repo
            .store()
            .get_versioned(&Object::Lease.key(), crate::layout::MAX_RECORD)
            .await?
        {
            None => Found::Absent,
            Some((bytes, version)) => match serde_json::from_slice(&bytes) {
                Ok(lease) => Found::Lease(lease, version),
                Err(err) => Found::Junk(err, version),
            },
        },
    )
}

fn junk_message(err: &serde_json::Error) -> String {
    format!("the repository's lease.json is not a lease ({err})")
}

/// What an attempt to take the lease found.
pub enum Attempt {
    /// The lease is ours now. `handoff_missing`: the previous holder did not release it
    /// with a final snapshot (it expired, or was released without one).
    Taken { held: Held, handoff_missing: bool },
    /// Another owner holds it live: who, and until when.
    Busy(String),
}

/// Another writer changed the lease between our read and our write.
#[derive(Debug, thiserror::Error)]
#[error("the lease was changed by another writer")]
pub struct TakenOver;

/// Why a renewal did not go through.
#[derive(Debug, thiserror::Error)]
pub enum Renewal {
    /// The lease is not ours any more.
    #[error("{0:#}")]
    Lost(anyhow::Error),
    /// Not renewed this time; still ours until it expires.
    #[error("{0:#}")]
    Failed(anyhow::Error),
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
        match Self::try_acquire(repo, owner, ttl, DEFAULT_CLOCK_SKEW).await? {
            Attempt::Taken { held, .. } => Ok(held),
            Attempt::Busy(busy) => bail!(
                "the repository's lease is {busy}: another Ghostwire instance is running on this \
                 Signal identity. Stop it first (its final snapshot releases the lease); two \
                 instances on one identity break each other"
            ),
        }
    }

    /// Takes the lease, or says who holds it live ([`Attempt::Busy`]) so the caller can
    /// wait and try again.
    pub async fn try_acquire(
        repo: &Repository,
        owner: &str,
        ttl: Duration,
        skew: Duration,
    ) -> Result<Attempt> {
        let now = Utc::now();
        let current = read(repo).await?;
        if let Found::Junk(err, _) = &current {
            tracing::warn!(
                problem = junk_message(err),
                "replacing it: no instance holds a lease it cannot read"
            );
        }
        if let Found::Lease(lease, _) = &current
            && lease.owner != owner
            && lease.is_live(now, skew)
        {
            return Ok(Attempt::Busy(lease.describe()));
        }
        if let Found::Lease(lease, _) = &current
            && lease.released_at.is_none()
        {
            tracing::warn!(previous = %lease.describe(), "taking over a lease that was never released: its holder stopped without a final snapshot");
        }
        // The previous holder handed over cleanly only if it released the lease with a
        // final snapshot; an expired, unreleased or unreadable lease means it did not.
        let handoff_missing = match &current {
            Found::Absent => false,
            Found::Lease(lease, _) => lease.final_snapshot.is_none(),
            Found::Junk(..) => true,
        };
        let lease = Lease {
            owner: owner.to_string(),
            acquired_at: now,
            renewed_at: now,
            expires_at: now + ttl,
            released_at: None,
            final_snapshot: None,
            signature: None,
        };
        let version = write(repo, &lease, current.version()).await?;
        tracing::info!(owner, expires = %lease.expires_at.to_rfc3339(), "lease acquired");
        Ok(Attempt::Taken {
            held: Self {
                lease,
                version,
                ttl,
            },
            handoff_missing,
        })
    }

    /// How often to renew: a third of the lifetime, so one missed renewal is harmless.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// When the lease, as last written, expires.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.lease.expires_at
    }

    /// Extends the lease by its TTL, by a write conditional on the version this instance
    /// wrote last. An error is [`Renewal::Lost`] when that version is gone: another writer
    /// changed the lease (took it over after it expired, or broke it). Anything else (the
    /// bucket unreachable, also for longer than the TTL) is [`Renewal::Failed`]: try again.
    /// A lease past its expiry that nobody wrote meanwhile is still this instance's, and
    /// the next renewal that gets through takes it back: the conditional write proves
    /// nobody else holds it.
    pub async fn renew(&mut self, repo: &Repository) -> std::result::Result<(), Renewal> {
        let now = Utc::now();
        let lease = Lease {
            renewed_at: now,
            expires_at: now + self.ttl,
            ..self.lease.clone()
        };
        match write(repo, &lease, Some(&self.version)).await {
            Ok(version) => {
                if now >= self.lease.expires_at {
                    tracing::warn!(
                        expired = %self.lease.expires_at.to_rfc3339(),
                        "the lease had expired but nobody took it meanwhile: renewed, carrying on"
                    );
                }
                self.version = version;
                self.lease = lease;
                Ok(())
            }
            Err(err) if err.is::<TakenOver>() => Err(Renewal::Lost(err.context(
                "cannot renew the lease: another instance wrote it since this one last did \
                 (it took the lease over, or broke it): this instance no longer owns the \
                 Signal identity",
            ))),
            Err(err) if now >= self.lease.expires_at => Err(Renewal::Failed(err.context(format!(
                "cannot renew the lease, which expired at {}: it stays this instance's unless \
                 another writes it meanwhile (possible once it is past its expiry plus the \
                 readers' clock skew)",
                self.lease.expires_at.to_rfc3339()
            )))),
            Err(err) => Err(Renewal::Failed(err.context(format!(
                "cannot renew the lease (it stays ours until {})",
                self.lease.expires_at.to_rfc3339()
            )))),
        }
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

/// The store ignores a conditional write's precondition: the lease would be
/// last-writer-wins there, and could not keep two instances apart.
#[derive(Debug, thiserror::Error)]
#[error(
    "the repository's store ignores {0} on writes: it does not support S3 conditional \
     writes, so the lease could not keep two Signal instances on one identity apart. Use a \
     store that does (AWS S3, MinIO ≥ RELEASE.2024-11, Ceph RGW ≥ 19, moto ≥ 5.0.23); until \
     then run backups without the sidecar (the CronJob), never two Signals"
)]
pub struct NoConditionalWrites(&'static str);

/// Checks, on an object of its own, that the store refuses a write whose precondition
/// fails (`If-None-Match: *` over an existing object, `If-Match` with a version it does
/// not have) before the lease relies on it. Errors reaching the store are returned as
/// they are, for the caller to retry; [`NoConditionalWrites`] when a precondition was
/// ignored. A local directory is not probed: its compare-and-swap is this program's own,
/// under a file lock.
pub async fn check_conditional_writes(repo: &Repository) -> Result<()> {
    if !repo.location().starts_with("s3://") {
        return Ok(());
    }
    let key = format!(
        "locks/conditional-write-probe-{:016x}",
        rand::random::<u64>()
    );
    let store = repo.store();
    store
        .put_if(&key, Bytes::from_static(b"first"), None)
        .await
        .context("cannot write the conditional-write probe")?;
    let absent_only = store
        .put_if(&key, Bytes::from_static(b"second"), None)
        .await;
    let same_version = store
        .put_if(
            &key,
            Bytes::from_static(b"third"),
            Some("\"not-a-version\""),
        )
        .await;
    if let Err(err) = store.delete(&key).await {
        tracing::warn!(
            key,
            error = format!("{err:#}"),
            "cannot remove the conditional-write probe; it is harmless, remove it by hand"
        );
    }
    for (outcome, header) in [(absent_only, "If-None-Match"), (same_version, "If-Match")] {
        match outcome {
            Err(StoreError::Conflict(_)) => {}
            Ok(_) => return Err(NoConditionalWrites(header).into()),
            Err(err) => return Err(anyhow::Error::from(err).context("conditional-write probe")),
        }
    }
    Ok(())
}

/// Writes the lease, signed when this side holds the signing key.
async fn write(repo: &Repository, lease: &Lease, expected: Option<&str>) -> Result<String> {
    let signature = match repo.signer() {
        Some(signer) => Some(sign(repo, signer, lease).await),
        None => None,
    };
    let signed = Lease {
        signature,
        ..lease.clone()
    };
    let json = serde_json::to_vec_pretty(&signed).expect("a lease serializes");
    match repo
        .store()
        .put_if(&Object::Lease.key(), Bytes::from(json), expected)
        .await
    {
        Ok(version) => Ok(version),
        Err(StoreError::Conflict(_)) => Err(TakenOver.into()),
        Err(err) => Err(err.into()),
    }
}

/// The lease's signature, naming the repository. Without a trustworthy repository id (a
/// damaged `repository.json`) it names none, as before ids existed: a bucket writer must
/// not be able to keep every sidecar from taking the lease, and so Signal from starting.
async fn sign(repo: &Repository, signer: &crate::signing::Signer, lease: &Lease) -> String {
    let repository = match repo.id_for_signing(signer).await {
        Ok(id) => Some(id),
        Err(err) => {
            tracing::warn!(
                error = format!("{err:#}"),
                "signing the lease without the repository's id"
            );
            None
        }
    };
    signer.sign(
        &Object::Lease.key(),
        repository.as_deref(),
        &lease.signed_bytes(),
    )
}

/// The snapshot to restore for `--snapshot handoff`: exactly the final snapshot the last
/// holder released the lease with. Without one (no lease yet, a crash, a final snapshot that
/// failed or was cut, or one still running) there is no handoff, and restoring the newest
/// snapshot instead could silently roll Signal's sessions back: that is an error naming the
/// newest snapshot and its age, for a person to choose. `listing` is the repository's, read
/// before the lease; the caller also refuses a handoff older than an unverifiable manifest.
pub async fn handoff(repo: &Repository, listing: &Listing) -> Result<String> {
    let found = read(repo).await?;
    if let (Some(id), Found::Lease(lease, _)) = (handed_over(&found), &found) {
        trust_handoff(repo, listing, lease, id).await?;
        return Ok(id.to_string());
    }
    bail!(
        "{}",
        no_handoff(
            &found,
            listing.snapshots.last(),
            repo.location(),
            Utc::now()
        )
    )
}

/// A handoff is trusted only if the backup side signed the lease that names it, and no
/// sidecar took a snapshot after it: after its final snapshot the holder takes no other, so
/// a newer one taken under the lease means this lease is an old genuine one put back (a
/// replay), and restoring it would roll Signal back.
async fn trust_handoff(
    repo: &Repository,
    listing: &Listing,
    lease: &Lease,
    id: &str,
) -> Result<()> {
    let verifier = repo.verifier()?;
    let known = repo.known_id().await?;
    let checked = match &lease.signature {
        None => Err(crate::signing::Rejected::Unsigned),
        Some(signature) => verifier.verify(
            &Object::Lease.key(),
            known.id(),
            &lease.signed_bytes(),
            signature,
        ),
    };
    if let Err(why) = checked {
        return Err(exit::coded(
            Exit::Untrusted,
            format!(
                "the lease names snapshot {id} as the final snapshot {} released it with, \
                 but {why}: it was written by a ghostwire-backup before signing, or by \
                 someone with write access to the bucket. Check `ghostwire-backup \
                 snapshots`; if {id} is the snapshot to restore, pass --snapshot {id}",
                lease.owner
            ),
        ));
    }
    // Backups run by hand or by a CronJob may follow a handoff; a sidecar's only follow
    // a newer acquisition of the lease.
    let newer = listing
        .snapshots
        .iter()
        .rfind(|snapshot| snapshot.lease_owner.is_some() && snapshot.id.as_str() > id);
    if let Some(newer) = newer {
        return Err(exit::coded(
            Exit::Untrusted,
            format!(
                "the lease names snapshot {id} as the final snapshot {} released it with, \
                 but {} took snapshot {} after it while holding the lease: this lease is an \
                 older one put back. Not restoring the older state: check `ghostwire-backup \
                 snapshots`, then pass the --snapshot to restore explicitly",
                lease.owner,
                newer.lease_owner.as_deref().unwrap_or_default(),
                newer.id
            ),
        ));
    }
    Ok(())
}

/// The snapshot `--snapshot handoff` restores now, if any: what `forget` must not remove.
pub async fn handed_over_snapshot(repo: &Repository) -> Result<Option<String>> {
    Ok(handed_over(&read(repo).await?).map(str::to_string))
}

/// The lease as a pod start sees it, to decide what its volume holds.
#[derive(Debug, Clone, PartialEq)]
pub enum View {
    /// No lease: no sidecar has run on this repository.
    Absent,
    /// Not a lease this version can read.
    Unreadable,
    /// Held (live or expired) and not released.
    Unreleased { owner: String },
    /// Released, with the final snapshot it names if any.
    Released {
        owner: String,
        final_snapshot: Option<String>,
    },
}

pub async fn view(repo: &Repository) -> Result<View> {
    Ok(match read(repo).await? {
        Found::Absent => View::Absent,
        Found::Junk(..) => View::Unreadable,
        Found::Lease(lease, _) if lease.released_at.is_some() => View::Released {
            owner: lease.owner,
            final_snapshot: lease.final_snapshot,
        },
        Found::Lease(lease, _) => View::Unreleased { owner: lease.owner },
    })
}

/// The final snapshot a released lease names, if any.
fn handed_over(found: &Found) -> Option<&str> {
    match found {
        Found::Lease(lease, _) if lease.released_at.is_some() => lease.final_snapshot.as_deref(),
        _ => None,
    }
}

/// Why there is no handoff, what the newest snapshot is, and how to choose anyway.
fn no_handoff(
    found: &Found,
    newest: Option<&Manifest>,
    location: &str,
    now: DateTime<Utc>,
) -> String {
    let why = match found {
        Found::Absent => format!(
            "{location} holds no lease: no sidecar has run on this repository yet (a first \
             install, or backups made without `run`)"
        ),
        Found::Junk(err, _) => junk_message(err),
        Found::Lease(lease, _) => match lease.released_at {
            Some(released) => format!(
                "{} released the lease at {} without a final snapshot (--final-snapshot=false)",
                lease.owner,
                released.to_rfc3339()
            ),
            None if lease.is_live(now, Duration::ZERO) => format!(
                "the lease is {} and names no final snapshot: that instance is still running, \
                 or stopped without one and its lease has not expired yet",
                lease.describe()
            ),
            None => format!(
                "{}'s lease expired at {} without a final snapshot: it crashed, was killed, \
                 or its final snapshot failed or was cut at its deadline",
                lease.owner,
                lease.expires_at.to_rfc3339()
            ),
        },
    };
    let newest = match newest {
        Some(manifest) => {
            let age = (now - manifest.finished_at).to_std().unwrap_or_default();
            format!(
                "The newest snapshot is {}, taken {} ago ({}): changes after it are not in \
                 the repository. If that is acceptable, restore it with --snapshot latest \
                 (GWB_SNAPSHOT=latest), or pass an explicit snapshot id",
                manifest.id,
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                manifest.finished_at.to_rfc3339()
            )
        }
        None => format!(
            "{location} holds no snapshot at all: check the repository location; on a first \
             install there is nothing to restore"
        ),
    };
    format!("no handoff snapshot to restore: {why}. {newest}")
}

/// Refuses a restore for `owner` while another owner's lease is live (or one that cannot
/// be read is there), unless `break_lease`.
pub async fn check_restore(
    repo: &Repository,
    owner: &str,
    break_lease: bool,
    skew: Duration,
) -> Result<()> {
    let lease = match read(repo).await? {
        Found::Absent => return Ok(()),
        Found::Lease(lease, _) => lease,
        Found::Junk(err, _) if break_lease => {
            tracing::warn!(
                problem = junk_message(&err),
                "--break-lease: restoring anyway"
            );
            return Ok(());
        }
        Found::Junk(err, _) => bail!(
            "{}, so nobody can tell whether another instance still runs on this Signal \
             identity. If none does, pass --break-lease (the next instance's lease replaces it)",
            junk_message(&err)
        ),
    };
    if lease.owner == owner || !lease.is_live(Utc::now(), skew) {
        return Ok(());
    }
    if break_lease {
        tracing::warn!(lease = %lease.describe(), "--break-lease: restoring although the lease is live");
        return Ok(());
    }
    Err(exit::coded(
        Exit::RestoreRefused,
        format!(
            "the repository's lease is {}: that instance may still be running on this Signal \
             identity, and two instances on one identity break each other. Stop it first (its \
             final snapshot releases the lease), or pass --break-lease if it is gone for good",
            lease.describe()
        ),
    ))
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
        check_restore(&repo, "ghostwire-green-0", false, Duration::ZERO)
            .await
            .unwrap();
        let mut blue = Held::acquire(&repo, "ghostwire-0", ttl).await.unwrap();
        blue.renew(&repo).await.unwrap();
        let refused = check_restore(&repo, "ghostwire-green-0", false, Duration::ZERO)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("held by ghostwire-0") && refused.contains("--break-lease"),
            "{refused}"
        );
        check_restore(&repo, "ghostwire-green-0", true, Duration::ZERO)
            .await
            .unwrap();
        // Blue's own pod restarting may restore: it is the same instance.
        check_restore(&repo, "ghostwire-0", false, Duration::ZERO)
            .await
            .unwrap();
        let taken = Held::acquire(&repo, "ghostwire-green-0", ttl)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(taken.contains("another Ghostwire instance"), "{taken}");
        blue.release(&repo, Some("final-id")).await.unwrap();
        check_restore(&repo, "ghostwire-green-0", false, Duration::ZERO)
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
        // Within the clock-skew allowance an expired lease still keeps others out.
        let skew = Duration::from_secs(60);
        check_restore(&repo, "ghostwire-green-0", false, skew)
            .await
            .unwrap_err();
        let busy = Held::try_acquire(&repo, "ghostwire-green-0", Duration::from_secs(600), skew);
        assert!(matches!(busy.await.unwrap(), Attempt::Busy(_)));
        check_restore(&repo, "ghostwire-green-0", false, Duration::ZERO)
            .await
            .unwrap();
        let green = Held::try_acquire(
            &repo,
            "ghostwire-green-0",
            Duration::from_secs(600),
            Duration::ZERO,
        );
        assert!(matches!(green.await.unwrap(), Attempt::Taken { .. }));
        let err = blue.renew(&repo).await.unwrap_err();
        assert!(matches!(err, Renewal::Lost(_)), "{err}");
        assert!(
            err.to_string().contains("another instance wrote it"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_expired_lease_nobody_took_is_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let mut blue = Held::acquire(&repo, "ghostwire-0", Duration::from_millis(1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        blue.renew(&repo).await.unwrap();
        blue.release(&repo, Some("final-id")).await.unwrap();
    }

    #[test]
    fn the_owner_is_cluster_namespace_and_pod() {
        let identity = |owner: Option<&str>, cluster: Option<&str>, namespace: Option<&str>| {
            Identity {
                owner: owner.map(str::to_string),
                cluster: cluster.map(str::to_string),
                namespace: namespace.map(str::to_string),
                pod: Some("ghostwire-0".into()),
            }
            .owner()
        };
        assert_eq!(
            identity(None, Some("eu-1"), Some("ghostwire")).unwrap(),
            "eu-1/ghostwire/ghostwire-0"
        );
        assert_eq!(identity(Some("mine"), None, None).unwrap(), "mine");
        let err = identity(None, None, Some("ghostwire"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("GWB_CLUSTER_ID"), "{err}");
        let err = identity(None, Some("eu-1"), None).unwrap_err().to_string();
        assert!(err.contains("GWB_POD_NAMESPACE"), "{err}");
    }

    #[tokio::test]
    async fn a_junk_lease_stops_no_restore_with_break_lease_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        repo.put(&Object::Lease, Bytes::from_static(b"\x00not json"))
            .await
            .unwrap();
        let refused = check_restore(&repo, "ghostwire-green-0", false, Duration::ZERO)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("lease.json is not a lease") && refused.contains("--break-lease"),
            "{refused}"
        );
        check_restore(&repo, "ghostwire-green-0", true, Duration::ZERO)
            .await
            .unwrap();
        // The new instance's sidecar takes the lease over, and it reads as a lease again.
        let green = Held::acquire(&repo, "ghostwire-green-0", Duration::from_secs(600))
            .await
            .unwrap();
        let refused = check_restore(&repo, "ghostwire-blue-0", false, Duration::ZERO)
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("held by ghostwire-green-0"), "{refused}");
        green.release(&repo, None).await.unwrap();
    }
}
