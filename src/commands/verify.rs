//! `verify`: prove a snapshot restorable without writing a restore anywhere.
//!
//! `--quick` needs no key: it downloads every archive the snapshot needs (and its index)
//! and checks sizes and SHA-256 against the manifests. The full check also decrypts and
//! decompresses every stream, checks every entry name as a restore would, checks that
//! each file of the index is in its archive, and runs the restore gate on the Signal
//! database (copied to a temporary file, which stays encrypted with Signal's key).
//! SIGTERM or SIGINT stop it within about a second.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::blocking::{self, Remote};
use crate::manifest::Manifest;
use crate::readback::{self, Plan};
use crate::repo::{Repository, Selector};
use crate::{keys, signal_db};

#[derive(Clone)]
pub struct VerifyOptions {
    pub snapshot: Selector,
    pub identity: Option<PathBuf>,
    pub quick: bool,
}

pub async fn run(repo: &Repository, options: &VerifyOptions) -> Result<Manifest> {
    let options = options.clone();
    blocking::until_signal(repo, move |remote| verify(remote, &options)).await
}

fn verify(remote: &Remote, options: &VerifyOptions) -> Result<Manifest> {
    let cancel = remote.cancel();
    let manifest = remote.find(&options.snapshot)?;
    if options.quick {
        cancel.enter("download and checksum")?;
        readback::check_objects(remote, &manifest)?;
        tracing::info!(snapshot = %manifest.id, "quick check passed: every archive present, sizes and sha256 match");
        return Ok(manifest);
    }
    let identity = options
        .identity
        .as_ref()
        .context("a full verify needs --identity (or use --quick)")?;
    let identities = keys::identities(identity)?;
    let plan = Plan::new(remote, &manifest, &identities)?;
    cancel.enter("download and unpack")?;
    let survey = readback::survey(remote, &plan, &identities)?;
    let missing = plan
        .files()
        .filter(|e| !survey.files.contains(&e.path))
        .count();
    if missing > 0 {
        bail!(
            "snapshot {}: {missing} files of its index are not in their archives",
            manifest.id
        );
    }
    cancel.enter("restore gate")?;
    match (manifest.signal_db.is_some(), survey.db) {
        (true, Some(db)) => {
            plan.rebuild_db(survey.deltas, db.path(), &survey.config, cancel)?;
            let check = signal_db::check_signal_db(&survey.config, db.path(), cancel)?;
            tracing::info!(snapshot = %manifest.id, user_version = check.user_version, "verify passed: streams authenticated, manifests match, integrity_check ok");
        }
        (true, None) => bail!(
            "snapshot {} should hold Signal's database but does not",
            manifest.id
        ),
        (false, _) => {
            tracing::info!(snapshot = %manifest.id, "verify passed (no Signal database in this snapshot)")
        }
    }
    Ok(manifest)
}
