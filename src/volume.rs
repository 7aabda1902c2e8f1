//! What a pod start does to a volume that already holds data: bring it to the snapshot
//! the pod is to run from (normally the handoff), never start Signal on older state.
//!
//! Every volume knows which snapshot it equals: its restore marker
//! ([`crate::restoration::Marker`]) is written by a restore, rewritten by the sidecar when
//! Signal starts on it (it no longer equals that snapshot), and written again after the
//! final snapshot once Signal stopped (it equals that one). So at the next start:
//!
//! | volume | lease | then |
//! |---|---|---|
//! | any | none (no sidecar ever ran) | left alone |
//! | any | this pod's own, unreleased or released by it | left alone: its newest state |
//! | equals the snapshot wanted | released by another | nothing to do |
//! | equals an older snapshot | released by another | caught up (`restore --update`'s machinery) |
//! | Signal ran since its snapshot, or data no snapshot records, or a newer snapshot | released by another | refused (exit 7) unless `--force` |
//!
//! A pre-staged volume is just one that equals an older snapshot; blue's old volume after
//! green handed off is another. Only one lease holder's sidecar takes an identity's
//! snapshots at a time, so the repository's snapshots in id (time) order are one history:
//! a snapshot older than the one wanted is its ancestor. The catch-up itself still compares
//! the volume with that snapshot's index and refuses a volume that changed since.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::blocking::Remote;
use crate::exit::{self, Exit};
use crate::lease::{self, View};
use crate::manifest::Manifest;
use crate::repo::Selector;
use crate::restoration::{self, Marker, State};

/// What the start does to the volume.
#[derive(Debug, PartialEq)]
pub enum Start {
    /// Nothing: why.
    LeftAlone(String),
    /// It already equals the snapshot wanted.
    Equal(Marker),
    /// It equals an older snapshot: fetch only what differs.
    CatchUp(Marker),
    /// `--force` over a volume that diverged: restore over it (what differs is moved aside).
    Replace,
}

/// The decisions the lease alone makes, before any snapshot is looked up: `Some(why)`
/// leaves the volume alone.
pub fn own_state(lease: &View, owner: &str) -> Option<String> {
    match lease {
        View::Absent => Some(
            "the repository holds no lease: no sidecar has run on it yet (a first install, \
             or backups by CronJob), so the volume's data is this identity's newest state"
                .into(),
        ),
        View::Unreleased { owner: holder } if is_ours(holder, owner) => Some(
            "the lease is this pod's own and unreleased: the volume holds its newest state \
             (Signal stopped without a final snapshot)"
                .into(),
        ),
        View::Released { owner: holder, .. } if is_ours(holder, owner) => Some(
            "this pod released the lease itself, after its final snapshot of this volume: \
             nobody ran Signal on the identity since"
                .into(),
        ),
        _ => None,
    }
}

/// Whether the lease's `holder` is this pod (`owner`). A lease written before owners had
/// three parts names the bare pod name: taken as this pod's when it is this pod's name, so
/// that the first start after an upgrade finds its own volume its own (this transition is
/// the one place a bare pod name still counts).
fn is_ours(holder: &str, owner: &str) -> bool {
    holder == owner || (!holder.contains('/') && owner.rsplit('/').next() == Some(holder))
}

/// Compares the volume's state with `wanted`. A volume that diverged is refused unless
/// `force`.
pub fn decide(target: &Path, state: &State, wanted: &Manifest, force: bool) -> Result<Start> {
    let diverged = match state {
        State::Marked(marker) => match &marker.signal_started {
            None if marker.snapshot == wanted.id => return Ok(Start::Equal(marker.clone())),
            None if marker.snapshot < wanted.id => return Ok(Start::CatchUp(marker.clone())),
            None => format!(
                "it holds snapshot {}, newer than {}",
                marker.snapshot, wanted.id
            ),
            Some(started) => format!(
                "it held snapshot {}, then Signal ran on it (started {} by {}) and no final \
                 snapshot recorded what changed",
                marker.snapshot,
                started.at.to_rfc3339(),
                started.owner
            ),
        },
        _ => "it holds data that no snapshot records as its state (no restore marker)".into(),
    };
    if force {
        tracing::warn!(target_dir = %target.display(), snapshot = %wanted.id, why = %diverged, "--force: bringing a volume that diverged to the snapshot; what differs is moved aside");
        return Ok(Start::Replace);
    }
    Err(exit::coded(
        Exit::RestoreRefused,
        format!(
            "{} cannot be brought to snapshot {}: {diverged}. Starting Signal on it as it is \
             would run the identity on other state than the snapshot handed over, the \
             rollback the handoff exists to prevent. Nothing was changed. If {} is the state \
             to run here, pass --force (GWB_FORCE=true) for one start: the volume is brought \
             to it, and whatever differs is moved aside into \
             .ghostwire-backup-replaced-<time>/, never deleted",
            target.display(),
            wanted.id,
            wanted.id
        ),
    ))
}

/// `--if-empty` on a volume that holds data: what brings it to the snapshot
/// ([`crate::volume`]). `None`: the volume holds no data (or an interrupted restore, which
/// `prepare` finishes or discards), so the ordinary restore goes on.
pub fn at_start(
    remote: &Remote,
    target: &Path,
    snapshot: &Selector,
    owner: &str,
    force: bool,
) -> Result<Option<Start>> {
    if !target.is_dir() {
        return Ok(None);
    }
    let state = restoration::detect(target)?;
    if !matches!(state, State::Marked(_) | State::Dirty { .. }) {
        return Ok(None);
    }
    let lease = remote.wait(lease::view(remote.repo()))?;
    if let Some(why) = own_state(&lease, owner) {
        return Ok(Some(Start::LeftAlone(why)));
    }
    let wanted = remote.find(snapshot)?;
    decide(target, &state, &wanted, force).map(Some)
}

/// An empty repository. With `--require-snapshot` that is an error: during disaster
/// recovery a wrong bucket or prefix looks exactly like it, and Signal must not start on an
/// empty profile that the sidecar would then back up as the latest state. Without it, and
/// with `--if-empty`, it is a first install: nothing to restore, Signal may start on the
/// empty volume. (An unreachable repository is an error, not an empty one.)
pub fn first_start(
    remote: &Remote,
    snapshot: &Selector,
    if_empty: bool,
    require_snapshot: bool,
) -> Result<bool> {
    let asks_for_any = !matches!(snapshot, Selector::Id(_));
    if !asks_for_any || !(if_empty || require_snapshot) {
        return Ok(false);
    }
    if !remote.snapshots()?.is_empty() {
        return Ok(false);
    }
    let location = remote.repo().location();
    if require_snapshot {
        bail!(
            "the repository {location} holds no snapshot, and --require-snapshot \
             (GWB_REQUIRE_SNAPSHOT) says there must be one: check the repository location \
             (bucket, prefix, endpoint; during disaster recovery a wrong one looks exactly like \
             this). On a first install, where there is nothing to restore yet, set \
             GWB_REQUIRE_SNAPSHOT=false for that one start"
        );
    }
    if if_empty {
        tracing::warn!(repository = %location, "the repository holds no snapshot yet: nothing to restore");
    }
    Ok(if_empty)
}

/// Where [`fence_signal`] moves Signal's database directory: the agent's own prefix, so
/// backups and the restore's emptiness check leave it out.
pub const FENCED_PREFIX: &str = ".ghostwire-backup-fenced-";

/// The fail-safe after a lost lease when the pod cannot be deleted: moves Signal's
/// database directory (`.config/Signal/sql`, which holds the identity's keys and sessions)
/// aside into `.ghostwire-backup-fenced-<time>/`, so that a Signal the kubelet restarts in
/// this pod finds no identity and cannot act as it (it offers to link a new device). Nothing
/// is deleted; the volume's marker already says Signal ran on it, so a later start refuses
/// it unless `--force`. Returns where the directory went, `None` if there was none.
pub fn fence_signal(volume: &Path) -> Result<Option<PathBuf>> {
    let database = Path::new(crate::profile::SIGNAL_DB);
    let sql = volume.join(database.parent().expect("the database is in a directory"));
    if std::fs::symlink_metadata(&sql).is_err() {
        return Ok(None);
    }
    // A new directory of ours, never one planted under the name (a link to elsewhere).
    let stem = format!(
        "{FENCED_PREFIX}{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    let (fenced, fenced_dir) = crate::fsutil::create_fresh_dir(volume, &stem)?;
    let moved = fenced.join("sql");
    rustix::fs::renameat(rustix::fs::CWD, &sql, &fenced_dir, "sql")
        .with_context(|| format!("cannot move {} aside", sql.display()))?;
    crate::fsutil::sync_dir(volume)?;
    Ok(Some(moved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_alone_leaves_this_pods_own_volume_alone() {
        let me = "eu-1/ghostwire/ghostwire-0";
        let released = |owner: &str| View::Released {
            owner: owner.into(),
            final_snapshot: Some("f".into()),
        };
        assert!(own_state(&View::Absent, me).is_some());
        assert!(own_state(&View::Unreleased { owner: me.into() }, me).is_some());
        assert!(own_state(&released(me), me).is_some());
        // Written by this pod before owners had three parts.
        assert!(own_state(&released("ghostwire-0"), me).is_some());
        // Another pod, the same name elsewhere, another release's pod.
        assert!(own_state(&released("eu-1/ghostwire-green/ghostwire-green-0"), me).is_none());
        assert!(own_state(&released("eu-2/ghostwire/ghostwire-0"), me).is_none());
        assert!(own_state(&released("ghostwire-green-0"), me).is_none());
        assert!(own_state(&View::Unreadable, me).is_none());
    }
}
