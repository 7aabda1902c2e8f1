//! `restore`: a snapshot into a fresh volume, or not at all.
//!
//! The archive is unpacked into a staging directory inside the target, so the final moves
//! are renames on one filesystem. Only after the whole stream authenticated, matched its
//! manifest and the restored Signal database passed `integrity_check` (the gate) are the
//! entries moved into place, and the marker is written last. A crash before the gate
//! leaves no marker and a staging directory the next run discards; a crash while moving
//! leaves a `ready` note in the staging directory, and the next run finishes the moves.
//!
//! Existing data is never deleted: without `--force` a non-empty target is refused, and
//! with it every entry the snapshot replaces is moved aside into
//! `.ghostwire-backup-replaced-<time>/`.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::Plan;
use crate::catalog::Catalog;
use crate::index::IndexEntry;
use crate::manifest::Manifest;
use crate::profile::{self, DbKey};
use crate::repo::{Repository, Selector};
use crate::sqlite::{self, DbCheck};
use crate::unpack::{self, UnpackOptions};

/// Written last: a target with this file holds a complete, checked snapshot.
pub const MARKER: &str = ".ghostwire-backup-restore.json";
pub const STAGING: &str = ".ghostwire-backup-restore.tmp";
/// In the staging directory: the gate passed, the moves into place may begin.
pub const READY: &str = ".ghostwire-backup-ready.json";

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    pub snapshot: String,
    pub restored_at: chrono::DateTime<Utc>,
    pub agent_version: String,
    /// The restore gate's result: "ok", or "no Signal database in this snapshot".
    pub gate: String,
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
    let target = &options.target;
    fs::create_dir_all(target)
        .with_context(|| format!("cannot create the target {}", target.display()))?;
    let staging = target.join(STAGING);
    let marker_path = target.join(MARKER);

    if let Some(marker) = read_json::<Marker>(&marker_path)?
        && !options.force
    {
        let _ = fs::remove_dir_all(&staging); // leftover of a restore that completed
        let what = format!(
            "{} already holds snapshot {} (restored {})",
            target.display(),
            marker.snapshot,
            marker.restored_at
        );
        if options.if_empty {
            return Ok(Outcome::LeftAlone(what));
        }
        bail!(
            "{what}; pass --force to restore over it (replaced entries are moved aside, not deleted)"
        );
    }
    if let Some(ready) = read_json::<Marker>(&staging.join(READY))? {
        tracing::warn!(snapshot = %ready.snapshot, "finishing a restore that was interrupted after its gate passed");
        move_into_place(target, &staging)?;
        commit(target, &ready)?;
        return Ok(Outcome::Completed(ready));
    }
    if staging.exists() {
        tracing::info!("discarding the staging directory of an interrupted restore");
        fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot remove {}", staging.display()))?;
    }
    let existing = user_entries(target)?;
    if let Some(example) = existing.first().filter(|_| !options.force) {
        let what = format!(
            "{} is not empty ({} entries, e.g. {:?})",
            target.display(),
            existing.len(),
            example
        );
        if options.if_empty {
            return Ok(Outcome::LeftAlone(what));
        }
        bail!(
            "{what}: restore into an empty volume, or pass --force to move the entries the \
             snapshot replaces aside into .ghostwire-backup-replaced-<time>/"
        );
    }

    if options.if_empty
        && matches!(options.snapshot, Selector::Latest | Selector::Final)
        && repo.snapshots().await?.is_empty()
    {
        // First start of a new installation: nothing to restore yet, and Signal may start
        // on the empty volume. (An unreachable repository is an error, not an empty one.)
        tracing::warn!(repository = %repo.location(), "the repository holds no snapshot yet: nothing to restore");
        return Ok(Outcome::LeftAlone(
            "the repository holds no snapshot yet".into(),
        ));
    }
    crate::lease::check_restore(repo, &options.lease_owner, options.break_lease).await?;
    let identities = Arc::new(crate::keys::identities(&options.identity)?);
    let manifest = repo.find(&options.snapshot).await?;
    let failed = || {
        format!(
            "restore of snapshot {} failed; the target was left without a restore marker",
            manifest.id
        )
    };
    let plan = Plan::new(repo, &manifest, &identities)
        .await
        .with_context(failed)?;
    check_free_space(
        target,
        plan.steps
            .iter()
            .map(|step| step.manifest.content.bytes)
            .sum(),
    )?;
    tracing::info!(snapshot = %manifest.id, archives = plan.steps.len(), target = %target.display(), "restoring");
    fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let gate = match unpack_and_check(repo, &plan, &manifest, &identities, &staging, options.chown)
        .await
    {
        Ok(gate) => gate,
        Err(err) => {
            // Leave the target as it was; a later run would discard this anyway.
            let _ = fs::remove_dir_all(&staging);
            return Err(err.context(failed()));
        }
    };
    sync_filesystem(&staging)?;
    let marker = Marker {
        snapshot: manifest.id.clone(),
        restored_at: Utc::now(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        gate,
    };
    write_json(&staging.join(READY), &marker)?;
    move_into_place(target, &staging)?;
    commit(target, &marker)?;
    if !plan.entries.is_empty()
        && let Err(err) = seed_catalog(repo, target, &manifest, plan.entries, options.chown)
    {
        tracing::warn!(
            error = format!("{err:#}"),
            "could not write the catalog; the next backup will be a full one"
        );
    }
    Ok(Outcome::Restored(marker))
}

/// Unpacks every archive the plan needs into `staging`, checks that the index is complete,
/// and runs the restore gate; returns the gate's result.
async fn unpack_and_check(
    repo: &Repository,
    plan: &Plan,
    manifest: &Manifest,
    identities: &Arc<crate::keys::Identities>,
    staging: &Path,
    chown: Option<(u32, u32)>,
) -> Result<String> {
    for step in &plan.steps {
        let unpack_options = UnpackOptions {
            chown,
            // SAFETY: geteuid has no preconditions.
            preserve_owner: unsafe { libc::geteuid() } == 0,
            max_content_bytes: step.manifest.content.bytes,
        };
        let dest = staging.to_path_buf();
        let wanted = step.wanted.clone();
        let stats =
            super::read_snapshot(repo, &step.manifest, identities.clone(), move |archive| {
                let keep = |path: &Path| wanted.as_ref().is_none_or(|w| w.contains(path));
                unpack::unpack(archive, &dest, &unpack_options, &keep)
            })
            .await?;
        tracing::info!(archive = %step.manifest.id, files = stats.files, bytes = stats.bytes, "archive unpacked and authenticated");
    }
    let missing = plan
        .files()
        .filter(|e| !fs::symlink_metadata(staging.join(&e.path)).is_ok_and(|m| m.is_file()))
        .count();
    if missing > 0 {
        bail!("{missing} files of the snapshot's index were not in their archives");
    }

    gate(manifest, staging)
}

/// Writes the catalog of the restored volume from the snapshot's index, with the restored
/// files' own stat, so the next backup there continues the chain instead of starting a
/// full one. (The content is what the index says: it was authenticated on the way in.)
fn seed_catalog(
    repo: &Repository,
    target: &Path,
    manifest: &Manifest,
    entries: Vec<IndexEntry>,
    chown: Option<(u32, u32)>,
) -> Result<()> {
    let entries: Vec<IndexEntry> = entries
        .into_iter()
        .filter_map(|entry| {
            if entry.kind == crate::index::EntryKind::Deleted {
                return Some(entry);
            }
            let metadata = fs::symlink_metadata(target.join(&entry.path)).ok()?;
            let fresh = IndexEntry::new(&entry.path, entry.kind, &metadata);
            Some(IndexEntry {
                sha256: entry.sha256,
                archive: entry.archive,
                ..fresh
            })
        })
        .collect();
    let path = target.join(crate::catalog::DEFAULT_NAME);
    Catalog::open(&path)?.record(repo.location(), manifest, &entries)?;
    if let Some((uid, gid)) = chown {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// The restore gate: the restored Signal database opens with the restored key and passes
/// `integrity_check`.
fn gate(manifest: &Manifest, staged: &Path) -> Result<String> {
    if manifest.signal_db.is_none() {
        tracing::warn!("this snapshot holds no Signal database; no gate to run");
        return Ok("no Signal database in this snapshot".into());
    }
    let config = zeroize::Zeroizing::new(fs::read(staged.join(profile::SIGNAL_CONFIG)).context(
        "the restore gate failed: the snapshot has a Signal database but no config.json with its key",
    )?);
    let check = check_signal_db(&config, &staged.join(profile::SIGNAL_DB))
        .context("the restore gate failed")?;
    tracing::info!(
        user_version = check.user_version,
        "restore gate passed: integrity_check ok"
    );
    Ok(check.result)
}

/// Opens a Signal database with the key from its `config.json` and runs the full
/// `integrity_check`; fails unless it is "ok".
pub fn check_signal_db(config_json: &[u8], db: &Path) -> Result<DbCheck> {
    let key = DbKey::from_config_json(config_json, Path::new(profile::SIGNAL_CONFIG))?;
    let check = sqlite::integrity_check(db, Some(&key))?;
    if !check.is_ok() {
        bail!("Signal's database failed integrity_check: {}", check.result);
    }
    Ok(check)
}

/// Entries of the target that hold data: all but `lost+found` and our own bookkeeping.
fn user_entries(target: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(target)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name != "lost+found" && !name.starts_with(profile::OWN_FILES_PREFIX) {
            found.push(name);
        }
    }
    found.sort();
    Ok(found)
}

/// Renames every staged entry into the target, moving whatever it replaces aside first.
fn move_into_place(target: &Path, staging: &Path) -> Result<()> {
    let aside = target.join(format!(
        "{}-replaced-{}",
        profile::OWN_FILES_PREFIX,
        Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    let mut names: Vec<_> = fs::read_dir(staging)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let old_marker = target.join(MARKER);
    if old_marker.exists() {
        fs::create_dir_all(&aside)?;
        fs::rename(&old_marker, aside.join(MARKER))?;
    }
    for name in names.into_iter().filter(|n| n != READY) {
        let destination = target.join(&name);
        if fs::symlink_metadata(&destination).is_ok() {
            fs::create_dir_all(&aside)?;
            tracing::warn!(entry = ?name, moved_to = %aside.display(), "moving an existing entry aside");
            fs::rename(&destination, aside.join(&name))?;
        }
        fs::rename(staging.join(&name), &destination)
            .with_context(|| format!("cannot move {:?} into place", name))?;
    }
    sync_dir(target)
}

/// Writes the marker (the commit point), then removes the staging directory.
fn commit(target: &Path, marker: &Marker) -> Result<()> {
    write_json(&target.join(MARKER), marker)?;
    fs::remove_dir_all(target.join(STAGING)).ok();
    sync_filesystem(target)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is damaged; remove it to restore again", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes a small file atomically: temporary file, fsync, rename, fsync the directory.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let temp = path.with_extension("partial");
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    fs::write(&temp, &bytes)?;
    fs::File::open(&temp)?.sync_all()?;
    fs::rename(&temp, path)?;
    sync_dir(path.parent().expect("a file in a directory"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// One `syncfs` instead of an fsync per file: tens of thousands of attachments would
/// otherwise cost a disk flush each.
fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = fs::File::open(path)?;
    // SAFETY: syncfs on a file descriptor we own.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("syncfs failed");
    }
    Ok(())
}

fn check_free_space(target: &Path, needed: u64) -> Result<()> {
    let path = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())?;
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stats` a valid out-parameter.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Ok(()); // not knowing is not a reason to refuse
    }
    let available = stats.f_bavail as u64 * stats.f_frsize as u64;
    if available < needed {
        bail!(
            "{} has {} free but the snapshot holds {}: use a larger volume",
            target.display(),
            super::snapshots::human_bytes(available),
            super::snapshots::human_bytes(needed)
        );
    }
    Ok(())
}
