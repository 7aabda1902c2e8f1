//! A restore target as a small state machine, read from disk, so an interrupted restore is
//! finished or discarded — never half-applied — whoever runs next (`restore`, or
//! `restore --update`).
//!
//! ```text
//! Empty ──begin──▶ Staged ──pass_gate──▶ Gated ──move_into_place──▶ Moved ──mark──▶ Marked
//!   ▲                │ (error, cut, crash: discard)
//!   └────────────────┘
//! Dirty: data and no marker (restore only with --force: replaced entries are moved aside)
//! Foreign: a bookkeeping file of ours that cannot be read (a person must look)
//! ```
//! The archive is unpacked into a staging directory inside the target, so the final moves
//! are renames on one filesystem. Only after the whole stream authenticated, matched its
//! manifest and the restored Signal database passed `integrity_check` (the gate) is the
//! `ready` note written (Gated); then entries are moved into place and the marker is written
//! last. Existing data is never deleted: with `--force` every entry the snapshot replaces is
//! moved aside into `.ghostwire-backup-replaced-<time>/`.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::cancel::Cancel;
use crate::catalog::Catalog;
use crate::exit::{self, Exit};
use crate::fsutil::{self, read_json, write_json};
use crate::index::IndexEntry;
use crate::manifest::Manifest;
use crate::profile;
use crate::raw_pages::RawPageList;

/// Written last: a target with this file holds a complete, checked snapshot.
pub const MARKER: &str = ".ghostwire-backup-restore.json";
/// The staging directory inside the target.
pub const STAGING: &str = ".ghostwire-backup-restore.tmp";
/// In the staging directory: the gate passed, the moves into place may begin.
pub const READY: &str = ".ghostwire-backup-ready.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub snapshot: String,
    pub restored_at: chrono::DateTime<Utc>,
    pub agent_version: String,
    /// The restore gate's result: "ok", or "no Signal database in this snapshot".
    pub gate: String,
    /// Restored ahead of a switch (`restore --prestage`): another `--prestage` may bring it
    /// to a newer snapshot. At a pod start it needs no rule of its own: like any volume that
    /// equals an older snapshot, it is caught up ([`crate::volume`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prestaged: bool,
    /// Set by the sidecar when it took the lease, just before Signal started on the
    /// volume: from then on the volume no longer equals `snapshot`. The final snapshot,
    /// taken once Signal stopped, writes a new marker naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_started: Option<SignalStarted>,
    /// Signal's database file as the finished restore left it: while its inode and
    /// change time are these (a write, a link, a chmod or a time set back all move the
    /// change time, which no user can set), the file is the one the snapshot restored,
    /// and a later `restore --update` may write the newer pages into it in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_file: Option<DbFile>,
}

/// The stat of the database file a restore left ([`Marker::db_file`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbFile {
    pub ino: u64,
    pub size: u64,
    pub ctime_ns: i128,
}

impl DbFile {
    pub fn of(metadata: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            ino: metadata.ino(),
            size: metadata.len(),
            ctime_ns: i128::from(metadata.ctime()) * 1_000_000_000
                + i128::from(metadata.ctime_nsec()),
        }
    }
}

/// Who started Signal on a volume, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalStarted {
    pub at: chrono::DateTime<Utc>,
    /// The lease owner of the sidecar that let it start.
    pub owner: String,
}

/// The `gate` of a marker written after a final snapshot rather than by a restore.
pub const FINAL_SNAPSHOT_GATE: &str = "final snapshot of this volume, taken after Signal stopped";

impl Marker {
    pub fn new(snapshot: &str, gate: String) -> Self {
        Self {
            snapshot: snapshot.to_string(),
            restored_at: Utc::now(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            gate,
            prestaged: false,
            signal_started: None,
            db_file: None,
        }
    }
}

/// The sidecar took the lease and Signal is about to start on `volume`: a volume that
/// held a snapshot no longer equals it. A volume without a marker (a first install, or
/// one from before markers) is left as it is: it already reads as data no snapshot
/// records.
pub fn record_signal_start(volume: &Path, owner: &str) -> Result<()> {
    let State::Marked(marker) = detect(volume)? else {
        return Ok(());
    };
    let started = Marker {
        signal_started: Some(SignalStarted {
            at: Utc::now(),
            owner: owner.to_string(),
        }),
        ..marker
    };
    write_json(&volume.join(MARKER), &started).with_context(|| {
        format!(
            "cannot record on {} that Signal starts on it (its marker would still claim the \
             volume equals snapshot {})",
            volume.display(),
            started.snapshot
        )
    })
}

/// Signal stopped and the final snapshot `id` of `volume` was committed: the volume
/// equals it now.
pub fn record_final_snapshot(volume: &Path, id: &str) -> Result<()> {
    let marker = Marker::new(id, FINAL_SNAPSHOT_GATE.to_string());
    write_json(&volume.join(MARKER), &marker).with_context(|| {
        format!(
            "cannot record on {} that it equals snapshot {id}",
            volume.display()
        )
    })
}

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Nothing but `lost+found` and our own bookkeeping.
    Empty,
    /// A staging directory without a `ready` note: an unpack that did not finish.
    Staged,
    /// The gate passed; staged entries wait to be moved into place.
    Gated(Marker),
    /// Every staged entry is in place; the marker is not written yet.
    Moved(Marker),
    /// A complete, checked restore.
    Marked(Marker),
    /// Data without a marker: `entries` of them, e.g. `example`.
    Dirty { entries: usize, example: String },
    /// A marker or `ready` note that cannot be read.
    Foreign(String),
}

/// Reads the state of `target` from disk.
pub fn detect(target: &Path) -> Result<State> {
    let staging = target.join(STAGING);
    match read_json::<Marker>(&staging.join(READY)) {
        Err(err) => return Ok(State::Foreign(format!("{err:#}"))),
        Ok(Some(ready)) if staged_entries(&staging)?.is_empty() => return Ok(State::Moved(ready)),
        Ok(Some(ready)) => return Ok(State::Gated(ready)),
        Ok(None) if staging.exists() => return Ok(State::Staged),
        Ok(None) => {}
    }
    match read_json::<Marker>(&target.join(MARKER)) {
        Err(err) => return Ok(State::Foreign(format!("{err:#}"))),
        Ok(Some(marker)) => return Ok(State::Marked(marker)),
        Ok(None) => {}
    }
    let entries = user_entries(target)?;
    Ok(match entries.first() {
        Some(example) => State::Dirty {
            entries: entries.len(),
            example: example.clone(),
        },
        None => State::Empty,
    })
}

/// What a restore does next, given the target's state.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Stage, gate, move and mark a snapshot.
    Restore,
    /// An earlier restore passed its gate and was interrupted: finish it.
    Finish(Marker),
    /// `--if-empty` and the target already holds data (or a restore): nothing to do.
    LeftAlone(String),
}

/// Creates `target` if needed, discards an unfinished unpack, and decides.
pub fn prepare(target: &Path, force: bool, if_empty: bool) -> Result<Next> {
    if target.exists() && !target.is_dir() {
        return Err(exit::coded(
            Exit::RestoreRefused,
            format!(
                "the target {} is a file, not a directory: --target (GWB_TARGET) names the \
                 directory to restore into (an empty volume, or a new directory)",
                target.display()
            ),
        ));
    }
    fs::create_dir_all(target)
        .with_context(|| format!("cannot create the target {}", target.display()))?;
    let mut state = detect(target)?;
    if state == State::Staged {
        discard(target)?;
        state = detect(target)?;
    }
    next(target, &state, force, if_empty)
}

/// The decision alone: which states a restore may proceed from.
pub fn next(target: &Path, state: &State, force: bool, if_empty: bool) -> Result<Next> {
    let refusal = |what: String, advice: &str| -> Result<Next> {
        if if_empty {
            Ok(Next::LeftAlone(what))
        } else {
            Err(exit::coded(Exit::RestoreRefused, format!("{what}{advice}")))
        }
    };
    match state {
        State::Empty => Ok(Next::Restore),
        State::Gated(ready) | State::Moved(ready) => Ok(Next::Finish(ready.clone())),
        State::Marked(_) | State::Dirty { .. } if force => Ok(Next::Restore),
        State::Marked(marker) => refusal(
            format!(
                "{} already holds snapshot {} (restored {})",
                target.display(),
                marker.snapshot,
                marker.restored_at
            ),
            "; pass --force to restore over it (replaced entries are moved aside, not deleted)",
        ),
        State::Dirty { entries, example } => refusal(
            format!(
                "{} is not empty ({entries} entries, e.g. {example:?})",
                target.display()
            ),
            ": restore into an empty volume, or pass --force to move the entries the \
             snapshot replaces aside into .ghostwire-backup-replaced-<time>/",
        ),
        State::Foreign(why) => bail!("{why}"),
        State::Staged => bail!("{} holds an unfinished restore", target.display()),
    }
}

/// Staged → Empty (or Dirty): removes an unpack that did not pass its gate.
pub fn discard(target: &Path) -> Result<()> {
    let staging = target.join(STAGING);
    tracing::info!("discarding the staging directory of an interrupted restore");
    fs::remove_dir_all(&staging).with_context(|| format!("cannot remove {}", staging.display()))?;
    // A database written in place for that restore goes back to what the marker says.
    settle_db_journal(target)
}

/// Empty (or Dirty/Marked with --force) → Staged: the directory to unpack into.
pub fn begin(target: &Path) -> Result<PathBuf> {
    let staging = target.join(STAGING);
    if staging.exists() {
        discard(target)?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    Ok(staging)
}

/// Staged → Gated: makes the unpacked files durable, then writes the `ready` note.
pub fn pass_gate(target: &Path, ready: &Marker, cancel: &Cancel) -> Result<()> {
    let staging = target.join(STAGING);
    cancel.enter("sync of the restored files")?;
    fsutil::sync_filesystem(&staging, cancel)?;
    cancel.check()?;
    // Into the staging directory made here, whatever its owner put under its name since.
    let dir = std::fs::File::from(fsutil::open_own_dir(&staging)?);
    fsutil::write_json_in(&dir, &staging.join(READY), ready)?;
    // The commit point of a database written in place, too: its journal goes.
    settle_db_journal(target)
}

/// Gated → Moved → Marked: the end of every restore, also of one interrupted after its gate.
/// Not cut halfway: the moves are a few renames (one per top-level entry), and a cut
/// between two of them would leave a half-restored target.
/// Returns the directory the replaced entries were moved aside into, if any.
pub fn finish(target: &Path, ready: &Marker) -> Result<Option<PathBuf>> {
    let aside = move_into_place(target)?;
    mark(target, ready)?;
    Ok(aside)
}

/// The marker of a target that holds a completed restore (Marked, or Staged over one: a
/// later restore that did not pass its gate, which leaves it as it was), else `None`.
pub fn completed(target: &Path) -> Result<Option<Marker>> {
    if !target.is_dir() {
        return Ok(None);
    }
    Ok(match detect(target)? {
        State::Marked(marker) => Some(marker),
        State::Staged => read_json::<Marker>(&target.join(MARKER)).ok().flatten(),
        _ => None,
    })
}

/// Gated → Moved: renames every staged entry into the target, moving whatever it replaces
/// aside first; returns where, if anything was. The target's owner may plant links while
/// this runs: every rename is made relative to directory handles (the staging directory
/// and the aside directory must be ones this process made, [`fsutil::open_own_dir`]), and
/// the aside directory is always a new one, so nothing is moved into or out of a directory
/// a link leads to.
pub fn move_into_place(target: &Path) -> Result<Option<PathBuf>> {
    let staging = fsutil::open_own_dir(&target.join(STAGING))?;
    let target_dir = open_target(target)?;
    let mut aside = Aside::new(target);
    if exists_at(&target_dir, MARKER.as_ref()) {
        aside.move_in(&target_dir, MARKER.as_ref())?;
    }
    let mut names = crate::home::read_names(std::os::fd::AsFd::as_fd(&staging))?;
    names.retain(|n| n != READY);
    names.sort();
    for name in names {
        if exists_at(&target_dir, &name) {
            let moved_to = aside.move_in(&target_dir, &name)?;
            tracing::warn!(entry = ?name, moved_to = %moved_to.display(), "moved an existing entry aside");
        }
        rustix::fs::renameat(&staging, &name, &target_dir, &name)
            .with_context(|| format!("cannot move {name:?} into place"))?;
    }
    fsutil::sync_dir(target)?;
    Ok(aside.made.map(|(path, _)| path))
}

/// The directory replaced entries are moved into, made on the first one.
struct Aside<'a> {
    target: &'a Path,
    stem: String,
    made: Option<(PathBuf, std::os::fd::OwnedFd)>,
}

impl<'a> Aside<'a> {
    fn new(target: &'a Path) -> Self {
        let stem = format!(
            "{}-replaced-{}",
            profile::OWN_FILES_PREFIX,
            Utc::now().format("%Y%m%dT%H%M%SZ")
        );
        Self {
            target,
            stem,
            made: None,
        }
    }

    /// Renames `name` of the target into the aside directory; returns where that is.
    fn move_in(&mut self, target_dir: &std::fs::File, name: &std::ffi::OsStr) -> Result<&Path> {
        if self.made.is_none() {
            self.made = Some(fsutil::create_fresh_dir(self.target, &self.stem)?);
        }
        let (path, dir) = self.made.as_ref().expect("made above");
        rustix::fs::renameat(target_dir, name, dir, name)
            .with_context(|| format!("cannot move {name:?} aside into {}", path.display()))?;
        Ok(path)
    }
}

/// The target directory, to rename relative to.
fn open_target(target: &Path) -> Result<std::fs::File> {
    std::fs::File::open(target).with_context(|| format!("cannot open {}", target.display()))
}

/// Whether `name` exists in `dir` (a link counts as itself).
fn exists_at(dir: &std::fs::File, name: &std::ffi::OsStr) -> bool {
    rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok()
}

/// Moved → Marked: writes the marker (the commit point), then removes the staging directory.
pub fn mark(target: &Path, marker: &Marker) -> Result<()> {
    write_json(&target.join(MARKER), marker)?;
    fs::remove_dir_all(target.join(STAGING)).ok();
    // Only renames and the marker are left to flush: quick, and not to be cut.
    fsutil::sync_filesystem(target, &Cancel::new())
}

/// Rewrites the marker of a finished restore with the stat of the Signal database it
/// left ([`Marker::db_file`]), once nothing of the restore touches that file any more.
/// Not recorded (a kill first, no database, a link in its place): the next update copies
/// the database instead of writing into it.
pub fn record_db_file(target: &Path, marker: &Marker) -> Result<()> {
    let db = target.join(profile::SIGNAL_DB);
    if crate::signal_db::plain_tree(target, Path::new(profile::SIGNAL_DB)).is_err() {
        return Ok(());
    }
    let Ok(metadata) = fs::symlink_metadata(&db) else {
        return Ok(());
    };
    let marker = Marker {
        db_file: Some(DbFile::of(&metadata)),
        ..marker.clone()
    };
    write_json(&target.join(MARKER), &marker)
}

/// Settles a page journal ([`crate::page_journal`]) that an in-place catch-up of the
/// target's Signal database left: its writes count as committed once the `ready` note
/// (or the marker) names the snapshot they bring the database to, and are undone
/// otherwise. Runs before anything reads the database.
pub fn settle_db_journal(target: &Path) -> Result<()> {
    let relative = Path::new(profile::SIGNAL_DB);
    if !target.is_dir() || crate::signal_db::plain_tree(target, relative).is_err() {
        return Ok(()); // no journal of ours: one is only made in a plain tree
    }
    let journal = crate::page_journal::path_of(&target.join(relative));
    if fs::symlink_metadata(&journal).is_err() {
        return Ok(()); // none (reached again below without following a link)
    }
    let committed_to = match detect(target)? {
        State::Gated(ready) | State::Moved(ready) | State::Marked(ready) => Some(ready.snapshot),
        _ => None,
    };
    let db = crate::catch_up::AnchoredDb::open(target)?;
    let found = crate::page_journal::recover(db.path(), |tag| committed_to.as_deref() == Some(tag))
        .context("cannot settle the page journal of an interrupted in-place catch-up")?;
    if found != crate::page_journal::Recovered::Nothing {
        tracing::info!(outcome = ?found, "settled the page journal of an interrupted in-place catch-up");
    }
    Ok(())
}

/// Writes the catalog of the restored volume: the snapshot's index as it is, so its rows
/// hash to the manifest's `catalog_digest` and the next backup there continues the chain
/// instead of starting a full one, with the page list of the restored database, so its
/// next copy can be a delta, and the chain's full snapshot (`chain_full`, for an
/// incremental one), whose age tells when the chain must end. The restored files have new inodes and ctimes (and
/// whole-second mtimes, as tar keeps them), so that backup compares their content with the
/// index's hashes instead of trusting their stat (see [`IndexEntry::unchanged`]).
pub fn seed_catalog(
    repository: &str,
    target: &Path,
    manifest: &Manifest,
    chain_full: Option<&Manifest>,
    entries: Vec<IndexEntry>,
    db_pages: Option<&RawPageList>,
    chown: Option<(u32, u32)>,
) -> Result<()> {
    let path = target.join(crate::catalog::DEFAULT_NAME);
    let mut catalog = Catalog::open_cache(&path)?;
    if let Some(full) = chain_full {
        catalog.record_snapshot(full)?;
    }
    catalog.record(repository, manifest, &entries, db_pages)?;
    if let Some((uid, gid)) = chown {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Entries of the target that hold data: all but `lost+found` and our own bookkeeping.
fn user_entries(target: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in
        fs::read_dir(target).with_context(|| format!("cannot read {}", target.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name != "lost+found" && !name.starts_with(profile::OWN_FILES_PREFIX) {
            found.push(name);
        }
    }
    found.sort();
    Ok(found)
}

/// What the staging directory holds besides its `ready` note, sorted.
fn staged_entries(staging: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut names: Vec<_> = fs::read_dir(staging)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.retain(|n| n != READY);
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> Marker {
        Marker {
            restored_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            ..Marker::new("20260101T000000Z", "ok".into())
        }
    }

    /// A target with a staged profile that passed its gate.
    fn gated() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let staging = begin(dir.path()).unwrap();
        fs::create_dir(staging.join(".config")).unwrap();
        fs::write(staging.join(".config/file"), b"restored").unwrap();
        pass_gate(dir.path(), &marker(), &Cancel::new()).unwrap();
        dir
    }

    #[test]
    fn every_state_is_read_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path();
        fs::create_dir(target.join("lost+found")).unwrap();
        assert_eq!(detect(target).unwrap(), State::Empty);
        begin(target).unwrap();
        assert_eq!(detect(target).unwrap(), State::Staged);
        fs::write(target.join(STAGING).join("f"), b"x").unwrap();
        pass_gate(target, &marker(), &Cancel::new()).unwrap();
        assert_eq!(detect(target).unwrap(), State::Gated(marker()));
        move_into_place(target).unwrap();
        assert_eq!(detect(target).unwrap(), State::Moved(marker()));
        mark(target, &marker()).unwrap();
        assert_eq!(detect(target).unwrap(), State::Marked(marker()));
        fs::write(target.join(MARKER), b"{ torn").unwrap();
        assert!(matches!(detect(target).unwrap(), State::Foreign(why) if why.contains("damaged")));
        fs::remove_file(target.join(MARKER)).unwrap();
        assert_eq!(
            detect(target).unwrap(),
            State::Dirty {
                entries: 1,
                example: "f".into()
            }
        );
    }

    #[test]
    fn a_restore_interrupted_after_its_gate_is_finished() {
        let dir = gated();
        let target = dir.path();
        assert_eq!(
            prepare(target, false, false).unwrap(),
            Next::Finish(marker())
        );
        finish(target, &marker()).unwrap();
        assert_eq!(fs::read(target.join(".config/file")).unwrap(), b"restored");
        assert_eq!(detect(target).unwrap(), State::Marked(marker()));
        assert!(!target.join(STAGING).exists());

        // Interrupted between the last move and the marker: Moved, finished the same way.
        let dir = gated();
        move_into_place(dir.path()).unwrap();
        assert_eq!(
            prepare(dir.path(), false, false).unwrap(),
            Next::Finish(marker())
        );
        finish(dir.path(), &marker()).unwrap();
        assert_eq!(detect(dir.path()).unwrap(), State::Marked(marker()));
    }

    #[test]
    fn an_unfinished_unpack_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let staging = begin(dir.path()).unwrap();
        fs::write(staging.join("half"), b"x").unwrap();
        assert_eq!(prepare(dir.path(), false, false).unwrap(), Next::Restore);
        assert!(!staging.exists());
    }

    #[test]
    fn data_is_refused_without_force_and_left_alone_with_if_empty() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let err = prepare(dir.path(), false, false).unwrap_err().to_string();
        assert!(
            err.contains("is not empty") && err.contains("--force"),
            "{err}"
        );
        assert!(matches!(
            prepare(dir.path(), false, true).unwrap(),
            Next::LeftAlone(_)
        ));
        assert_eq!(prepare(dir.path(), true, false).unwrap(), Next::Restore);

        mark(dir.path(), &marker()).unwrap();
        let err = prepare(dir.path(), false, false).unwrap_err().to_string();
        assert!(err.contains("already holds snapshot"), "{err}");
        assert_eq!(prepare(dir.path(), true, false).unwrap(), Next::Restore);
    }

    #[test]
    fn forced_moves_keep_what_they_replace() {
        let dir = gated();
        fs::create_dir(dir.path().join(".config")).unwrap();
        fs::write(dir.path().join(".config/old"), b"old").unwrap();
        finish(dir.path(), &marker()).unwrap();
        let aside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("-replaced-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(
            fs::read(dir.path().join(&aside[0]).join(".config/old")).unwrap(),
            b"old"
        );
    }
}
