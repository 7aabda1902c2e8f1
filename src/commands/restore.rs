//! `restore`: a snapshot into a fresh volume, or not at all.
//!
//! The target moves through the states of [`crate::restoration`]: a restore interrupted
//! after its gate is finished, one interrupted before it is discarded, and a target with
//! data is refused without `--force`. With `--if-empty` (the init container), a target that
//! holds data is brought to the snapshot as [`crate::volume`] decides: left alone, left as it
//! is, caught up, or refused. SIGTERM or SIGINT stop a restore within about a
//! second, before its gate has passed: the staging directory is removed and the target is
//! left as it was, without a marker.

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::blocking::{self, Remote};
use crate::db_rebuild::Rebuilt;
use crate::exit::{self, Exit};
use crate::fsutil;
use crate::keys::Identities;
use crate::manifest::Manifest;
use crate::readback::{self, Plan, TakenFromVolume};
use crate::repo::{Repository, Selector};
use crate::restoration::{self, Next};
pub use crate::restoration::{MARKER, Marker, READY, STAGING};
use crate::update::FromVolume;
use crate::volume::{self, Start};
use crate::{keys, lease, signal_db};

#[derive(Clone)]
pub struct RestoreOptions {
    pub snapshot: Selector,
    pub identity: PathBuf,
    pub target: PathBuf,
    pub force: bool,
    pub if_empty: bool,
    pub chown: Option<(u32, u32)>,
    /// Who restores, for the lease check: the pod name unless set.
    pub lease_owner: String,
    /// How far another instance's clock may be ahead ([`crate::lease`]).
    pub lease_skew: std::time::Duration,
    /// Restore even though another instance's lease is live.
    pub break_lease: bool,
    /// An empty repository is an error, not a first install.
    pub require_snapshot: bool,
    /// A target restored earlier from this repository is brought to the snapshot by
    /// fetching only the difference ([`crate::update`]).
    pub update: bool,
    /// Restore ahead of a blue/green switch, while the other instance still holds the
    /// lease: nothing starts Signal on the result until a `restore --if-empty` (which does
    /// check the lease) has brought it to the snapshot handed over.
    pub prestage: bool,
}

#[derive(Debug)]
pub enum Outcome {
    Restored(Marker),
    /// An earlier restore had passed its gate and was interrupted while moving; finished now.
    Completed(Marker),
    /// `--if-empty` and the target already holds data (or a restore): nothing done.
    LeftAlone(String),
    /// `--update` and the target already holds the snapshot.
    UpToDate(Marker),
}

pub async fn run(repo: &Repository, options: &RestoreOptions) -> Result<Outcome> {
    let options = options.clone();
    blocking::until_signal(repo, move |remote| restore(remote, &options)).await
}

fn restore(remote: &Remote, options: &RestoreOptions) -> Result<Outcome> {
    check_chown(options.chown)?;
    // A target this restore creates and then fails to fill is removed again, so a retry
    // (or a person) does not find an empty directory that looks like a restore.
    let created = !options.target.exists();
    let result = restore_into(remote, options);
    if result.is_err() && created {
        let _ = std::fs::remove_dir(&options.target); // only if still empty
    }
    result
}

/// Giving files away needs root: found out at the end of a long download otherwise.
fn check_chown(chown: Option<(u32, u32)>) -> Result<()> {
    let (Some((uid, gid)), false) = (chown, rustix::process::geteuid().is_root()) else {
        return Ok(());
    };
    let ours = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    if (uid, gid) != ours {
        bail!(
            "--chown {uid}:{gid} needs root: this restore runs as {}:{}. Run it as root (in \
             Kubernetes, an init container with runAsUser: 0), or leave --chown out to own \
             the files yourself",
            ours.0,
            ours.1
        );
    }
    Ok(())
}

fn restore_into(remote: &Remote, options: &RestoreOptions) -> Result<Outcome> {
    let target = &options.target;
    if !options.prestage {
        check_lease(remote, options)?;
    }
    // An in-place catch-up interrupted before its commit point is undone first.
    restoration::settle_db_journal(target)?;
    let restored = match settle_target(remote, options)? {
        ControlFlow::Break(outcome) => return Ok(outcome),
        ControlFlow::Continue(restored) => restored,
    };
    if volume::first_start(
        remote,
        &options.snapshot,
        options.if_empty,
        options.require_snapshot,
    )? {
        return Ok(Outcome::LeftAlone(
            "the repository holds no snapshot yet".into(),
        ));
    }
    let identities = keys::identities(&options.identity)?;
    let manifest = remote.find(&options.snapshot)?;
    refuse_without_signal(&manifest, &options.snapshot)?;
    let mut plan = Plan::new(remote, &manifest, &identities).with_context(|| failure(&manifest))?;
    let from_volume = match &restored {
        Some(marker) if marker.snapshot == manifest.id => return already_holds(options, marker),
        Some(marker) => Some(update_from(
            remote,
            options,
            marker,
            &mut plan,
            &identities,
        )?),
        None => None,
    };
    fsutil::check_free_space(target, plan.content_bytes())?;
    tracing::info!(snapshot = %manifest.id, archives = plan.steps.len(), target_dir = %target.display(), "restoring");
    let from_volume = from_volume.as_ref().map(|v| v as &dyn TakenFromVolume);
    let staged = stage_and_gate(remote, options, &plan, &manifest, &identities, from_volume);
    let (ready, db_pages) = staged.map_err(|err| {
        discard_failed(target);
        err.context(failure(&manifest))
    })?;
    move_into_place(options, &ready, from_volume.is_some())?;
    seed_catalog(remote, options, &manifest, plan, db_pages);
    Ok(Outcome::Restored(ready))
}

/// The context of an error once the snapshot is known: the target has no marker.
fn failure(manifest: &Manifest) -> String {
    format!(
        "restore of snapshot {} failed; the target was left without a restore marker",
        manifest.id
    )
}

/// What the target holds decides what this restore does: `Break` with the outcome when
/// nothing is to be fetched, else `Continue` with the completed restore an update starts
/// from, if any.
fn settle_target(
    remote: &Remote,
    options: &RestoreOptions,
) -> Result<ControlFlow<Outcome, Option<Marker>>> {
    let target = &options.target;
    // An update starts from a completed restore: one asked for, or a pre-staged volume
    // that is to be brought to a newer snapshot.
    let mut restored = restoration::completed(target)?
        .filter(|marker| options.update || (marker.prestaged && options.prestage));
    let (mut force, mut if_empty) = (options.force, options.if_empty);
    if options.if_empty {
        match volume::at_start(
            remote,
            target,
            &options.snapshot,
            &options.lease_owner,
            options.force,
        )? {
            None => {}
            Some(Start::LeftAlone(why)) => return Ok(ControlFlow::Break(Outcome::LeftAlone(why))),
            Some(Start::Equal(marker)) => {
                tracing::info!(snapshot = %marker.snapshot, "the volume already equals the snapshot: nothing to do");
                return Ok(ControlFlow::Break(Outcome::UpToDate(marker)));
            }
            Some(Start::CatchUp(marker)) => {
                tracing::info!(from = %marker.snapshot, "the volume equals an older snapshot: catching up");
                restored = Some(marker);
                if_empty = false;
            }
            Some(Start::Replace) => (force, if_empty) = (true, false),
        }
    }
    Ok(
        match restoration::prepare(target, force || restored.is_some(), if_empty)? {
            Next::LeftAlone(why) => ControlFlow::Break(Outcome::LeftAlone(why)),
            Next::Finish(ready) => {
                tracing::warn!(snapshot = %ready.snapshot, "finishing a restore that was interrupted after its gate passed");
                restoration::finish(target, &ready)?;
                ControlFlow::Break(Outcome::Completed(ready))
            }
            Next::Restore => ControlFlow::Continue(restored),
        },
    )
}

/// An update of a target that already holds the snapshot: only its marker is written
/// again, pre-staged or not as this restore is.
fn already_holds(options: &RestoreOptions, marker: &Marker) -> Result<Outcome> {
    tracing::info!(snapshot = %marker.snapshot, "the target already holds this snapshot: nothing to update");
    let marker = Marker {
        prestaged: options.prestage,
        ..marker.clone()
    };
    restoration::mark(&options.target, &marker)?;
    Ok(Outcome::UpToDate(marker))
}

/// Removes the staging directory of a restore that failed before its gate, leaving the
/// target as it was. Left behind, it is harmless: this restore fails anyway, and the next
/// one discards it first.
fn discard_failed(target: &std::path::Path) {
    if let Err(err) = restoration::discard(target) {
        tracing::warn!(
            error = format!("{err:#}"),
            staging = %target.join(STAGING).display(),
            "cannot discard the failed restore's staging directory; the target's own files \
             are untouched, and the next restore discards it before it starts"
        );
    }
}

/// Gated → Restored: moves the staged snapshot into place and records the database's
/// stat; an update (`updated`) then removes the old snapshot's entries it replaced.
fn move_into_place(options: &RestoreOptions, ready: &Marker, updated: bool) -> Result<()> {
    let target = &options.target;
    let replaced = restoration::finish(target, ready)?;
    if let (Some(replaced), true, false) = (replaced, updated, options.force) {
        // Exactly the old snapshot (the update checked), which the repository keeps.
        if let Err(err) = std::fs::remove_dir_all(&replaced) {
            tracing::warn!(error = %err, path = %replaced.display(), "cannot remove the old snapshot's entries; remove them by hand");
        }
    }
    if let Err(err) = restoration::record_db_file(target, ready) {
        tracing::warn!(
            error = format!("{err:#}"),
            "cannot record the restored database's stat; the next update copies it"
        );
    }
    Ok(())
}

/// What an update takes from the target instead of the repository: the target holds
/// the snapshot `marker` names, which must be in this repository.
fn update_from(
    remote: &Remote,
    options: &RestoreOptions,
    marker: &Marker,
    plan: &mut Plan,
    identities: &Identities,
) -> Result<FromVolume> {
    let old = remote
        .find(&Selector::Id(marker.snapshot.clone()))
        .with_context(|| {
            format!(
                "{} holds snapshot {}, which this repository does not (forgotten, or another \
             repository): restore over it with --force instead of --update",
                options.target.display(),
                marker.snapshot
            )
        })?;
    let old_entries = Plan::new(remote, &old, identities)?.entries;
    FromVolume::take(
        &options.target,
        &old.id,
        &old_entries,
        plan,
        options.force,
        marker.db_file.as_ref(),
        remote.cancel(),
    )
}

/// The lease first: also before `--if-empty` leaves a volume with data alone, because
/// exiting 0 there starts Signal on it, and while another instance holds the lease (blue's
/// pod started again while green runs) that is two Signals on one identity.
fn check_lease(remote: &Remote, options: &RestoreOptions) -> Result<()> {
    let checked = remote.wait(lease::check_restore(
        remote.repo(),
        &options.lease_owner,
        options.break_lease,
        options.lease_skew,
    ));
    checked.map_err(|err| {
        // The one failure at pod start that is no one's mistake: say so, distinctly (exit
        // 6), for the alert and the person reading the init container's log.
        let unreachable = Exit::of(&err) == Exit::S3Unreachable;
        err.context(if unreachable {
            format!(
                "the repository cannot be reached at pod start, so nobody can tell whether \
                 another instance holds the lease: Signal does not start on {} until it \
                 answers (safety over availability: docs/kubernetes.md, \"Bucket unreachable \
                 at pod start\"); the kubelet retries this init container with back-off",
                options.target.display()
            )
        } else {
            format!(
                "refusing to restore into {} or to let Signal start on it",
                options.target.display()
            )
        })
    })
}

/// A snapshot without a Signal database (a home backed up with `--allow-no-signal`, or one
/// whose database was planted as a link and skipped) is restored only by its id: as
/// `latest` it is almost always the wrong one.
fn refuse_without_signal(manifest: &Manifest, snapshot: &Selector) -> Result<()> {
    if manifest.signal_db.is_some() || matches!(snapshot, Selector::Id(_)) {
        return Ok(());
    }
    Err(exit::coded(
        Exit::RestoreRefused,
        format!(
            "refusing to restore snapshot {}: it holds no Signal database (it was backed up \
             with --allow-no-signal, or its database was skipped: see that backup's \
             warnings). Restore it by its id, --snapshot {}, if it is the one you want",
            manifest.id, manifest.id
        ),
    ))
}

/// Empty → Staged → Gated: unpacks every archive (rebuilding Signal's database from its
/// deltas), runs the gate, writes the `ready` note. Also returns the database's page list.
fn stage_and_gate(
    remote: &Remote,
    options: &RestoreOptions,
    plan: &Plan,
    manifest: &Manifest,
    identities: &Identities,
    from_volume: Option<&dyn TakenFromVolume>,
) -> Result<(Marker, Option<Rebuilt>)> {
    let cancel = remote.cancel();
    let staging = restoration::begin(&options.target)?;
    cancel.enter("download and unpack")?;
    let db_pages = readback::unpack_into(
        remote,
        plan,
        identities,
        &staging,
        options.chown,
        from_volume,
    )?;
    cancel.enter("restore gate")?;
    let gate = signal_db::gate(manifest, &staging, db_pages.is_some(), cancel)?;
    let ready = Marker {
        prestaged: options.prestage,
        ..Marker::new(&manifest.id, gate)
    };
    restoration::pass_gate(&options.target, &ready, cancel)?;
    Ok((ready, db_pages))
}

/// The restored volume's catalog, so its next backup continues the chain.
fn seed_catalog(
    remote: &Remote,
    options: &RestoreOptions,
    manifest: &Manifest,
    plan: Plan,
    db_pages: Option<Rebuilt>,
) {
    if plan.entries.is_empty() {
        return;
    }
    let location = remote.repo().location();
    let chain_full = manifest.chain_full.as_ref().and_then(|id| {
        remote
            .find(&Selector::Id(id.clone()))
            .inspect_err(|err| {
                tracing::warn!(
                    error = format!("{err:#}"),
                    chain_full = %id,
                    "cannot read the manifest of the chain's full snapshot: the catalog is \
                     written without it, so the next backup is a full one"
                );
            })
            .ok()
    });
    if let Err(err) = restoration::seed_catalog(
        location,
        &options.target,
        manifest,
        chain_full.as_ref(),
        plan.entries,
        db_pages.as_ref().and_then(Rebuilt::raw),
        options.chown,
    ) {
        tracing::warn!(
            error = format!("{err:#}"),
            "could not write the catalog; the next backup will be a full one"
        );
    }
}
