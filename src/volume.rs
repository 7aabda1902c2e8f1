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

use anyhow::{Context, Result};

use crate::exit::{self, Exit};
use crate::lease::View;
use crate::manifest::Manifest;
use crate::restoration::{Marker, State};

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
        View::Unreleased { owner: holder } if holder == owner => Some(
            "the lease is this pod's own and unreleased: the volume holds its newest state \
             (Signal stopped without a final snapshot)"
                .into(),
        ),
        View::Released { owner: holder, .. } if holder == owner => Some(
            "this pod released the lease itself, after its final snapshot of this volume: \
             nobody ran Signal on the identity since"
                .into(),
        ),
        _ => None,
    }
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
    let fenced = volume.join(format!(
        "{FENCED_PREFIX}{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    std::fs::create_dir_all(&fenced)
        .with_context(|| format!("cannot create {}", fenced.display()))?;
    let moved = fenced.join("sql");
    std::fs::rename(&sql, &moved)
        .with_context(|| format!("cannot move {} aside", sql.display()))?;
    crate::fsutil::sync_dir(volume)?;
    Ok(Some(moved))
}
