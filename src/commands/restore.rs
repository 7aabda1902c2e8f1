//! `restore`: a snapshot into a fresh volume, or not at all.
//!
//! The target moves through the states of [`crate::restoration`]: a restore interrupted
//! after its gate is finished, one interrupted before it is discarded, and a target with
//! data is refused without `--force`. SIGTERM or SIGINT stop a restore within about a
//! second, before its gate has passed: the staging directory is removed and the target is
//! left as it was, without a marker.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::blocking::{self, Remote};
use crate::fsutil;
use crate::keys::Identities;
use crate::manifest::Manifest;
use crate::readback::{self, Plan};
use crate::repo::{Repository, Selector};
use crate::restoration::{self, Next};
pub use crate::restoration::{MARKER, Marker, READY, STAGING};
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
    /// Restore even though another instance's lease is live.
    pub break_lease: bool,
}

#[derive(Debug)]
pub enum Outcome {
    Restored(Marker),
    /// An earlier restore had passed its gate and was interrupted while moving; finished now.
    Completed(Marker),
    /// `--if-empty` and the target already holds data (or a restore): nothing done.
    LeftAlone(String),
}

pub async fn run(repo: &Repository, options: &RestoreOptions) -> Result<Outcome> {
    let options = options.clone();
    blocking::until_signal(repo, move |remote| restore(remote, &options)).await
}

fn restore(remote: &Remote, options: &RestoreOptions) -> Result<Outcome> {
    let target = &options.target;
    match restoration::prepare(target, options.force, options.if_empty)? {
        Next::LeftAlone(why) => return Ok(Outcome::LeftAlone(why)),
        Next::Finish(ready) => {
            tracing::warn!(snapshot = %ready.snapshot, "finishing a restore that was interrupted after its gate passed");
            restoration::finish(target, &ready)?;
            return Ok(Outcome::Completed(ready));
        }
        Next::Restore => {}
    }
    if options.if_empty && first_start(remote, &options.snapshot)? {
        return Ok(Outcome::LeftAlone(
            "the repository holds no snapshot yet".into(),
        ));
    }
    remote.wait(lease::check_restore(
        remote.repo(),
        &options.lease_owner,
        options.break_lease,
    ))?;
    let identities = keys::identities(&options.identity)?;
    let manifest = remote.find(&options.snapshot)?;
    let failed = || {
        format!(
            "restore of snapshot {} failed; the target was left without a restore marker",
            manifest.id
        )
    };
    let plan = Plan::new(remote, &manifest, &identities).with_context(failed)?;
    fsutil::check_free_space(target, plan.content_bytes())?;
    tracing::info!(snapshot = %manifest.id, archives = plan.steps.len(), target = %target.display(), "restoring");
    let ready = match stage_and_gate(remote, options, &plan, &manifest, &identities) {
        Ok(ready) => ready,
        Err(err) => {
            // Leave the target as it was; a later run would discard this anyway.
            let _ = restoration::discard(target);
            return Err(err.context(failed()));
        }
    };
    restoration::finish(target, &ready)?;
    seed_catalog(remote, options, &manifest, plan);
    Ok(Outcome::Restored(ready))
}

/// `--if-empty` on a new installation: nothing to restore yet, and Signal may start on the
/// empty volume. (An unreachable repository is an error, not an empty one.)
fn first_start(remote: &Remote, snapshot: &Selector) -> Result<bool> {
    let empty =
        matches!(snapshot, Selector::Latest | Selector::Final) && remote.snapshots()?.is_empty();
    if empty {
        tracing::warn!(repository = %remote.repo().location(), "the repository holds no snapshot yet: nothing to restore");
    }
    Ok(empty)
}

/// Empty → Staged → Gated: unpacks every archive, runs the gate, writes the `ready` note.
fn stage_and_gate(
    remote: &Remote,
    options: &RestoreOptions,
    plan: &Plan,
    manifest: &Manifest,
    identities: &Identities,
) -> Result<Marker> {
    let cancel = remote.cancel();
    let staging = restoration::begin(&options.target)?;
    cancel.enter("download and unpack")?;
    readback::unpack_into(remote, plan, identities, &staging, options.chown)?;
    cancel.enter("restore gate")?;
    let gate = signal_db::gate(manifest, &staging, cancel)?;
    let ready = Marker::new(&manifest.id, gate);
    restoration::pass_gate(&options.target, &ready, cancel)?;
    Ok(ready)
}

/// The restored volume's catalog, so its next backup continues the chain.
fn seed_catalog(remote: &Remote, options: &RestoreOptions, manifest: &Manifest, plan: Plan) {
    if plan.entries.is_empty() {
        return;
    }
    let location = remote.repo().location();
    if let Err(err) = restoration::seed_catalog(
        location,
        &options.target,
        manifest,
        plan.entries,
        options.chown,
    ) {
        tracing::warn!(
            error = format!("{err:#}"),
            "could not write the catalog; the next backup will be a full one"
        );
    }
}
