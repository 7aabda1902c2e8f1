//! `restore --update`: bring a volume that an earlier restore of this repository produced
//! (its marker names the snapshot) to a later snapshot by fetching only the difference.
//!
//! Files the volume already holds as the newer snapshot restores them (their content, read
//! and hashed now, is the snapshot's; mode and mtime as the restore left them) are
//! hard-linked into the staging directory instead of downloaded; Signal's database is
//! brought forward with the deltas the newer snapshot added to its chain: written into the
//! volume's own file behind a page journal when it is provably the file the restore left
//! and the chain is raw pages ([`crate::catch_up`]), else into a copy of it. Archives
//! nothing is needed from are not
//! read at all. The rest is an ordinary restore — unpack, gate, `ready` note, moves, marker
//! (see [`crate::restoration`]) — so an update is as all-or-nothing as a restore: killed
//! before its gate, the volume is still at its old snapshot (a database written in place
//! once the next run rolled its journal back, the first thing any restore does); after,
//! the next run finishes.
//!
//! A volume that changed since its restore (Signal ran on it) is refused unless `--force`:
//! then whatever changed is fetched from the repository and moved aside, not deleted.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::archive;
use crate::cancel::Cancel;
use crate::catch_up;
use crate::db_rebuild::Deltas;
use crate::exit::{self, Exit};
use crate::home::{Home, Opened};
use crate::index::{DbChain, EntryKind, IndexEntry};
use crate::profile::{self, DbKey};
use crate::raw_pages::RawPageList;
use crate::readback::{Plan, TakenFromVolume};
use crate::restoration::DbFile;
use crate::reuse;
use crate::walk::{self, Kind};

/// What a restore takes from the volume it updates instead of the repository.
pub struct FromVolume {
    /// The volume (the restore's target).
    volume: PathBuf,
    /// Files to hard-link into the staging directory, with their stat as listed.
    linked: Vec<(PathBuf, std::fs::Metadata)>,
    /// Signal's database as listed, to copy (it will be written) when deltas bring it
    /// forward; `None` when it is linked as it is, or fetched.
    db_copy: Option<std::fs::Metadata>,
    /// What rebuilding the database then takes: only the deltas newer than the volume's.
    db_chain: Option<DbChain>,
    /// Whether the deltas are written into the volume's database in place
    /// ([`crate::catch_up`]) rather than into a copy: it is then linked.
    db_in_place: bool,
    /// The page list of the volume's database then, handed over to the catch-up (moved,
    /// not cloned: 16 bytes a page, 8 MiB at 2 GiB).
    db_base: Cell<Option<RawPageList>>,
}

impl FromVolume {
    /// Compares `volume` with `old`, the index of the snapshot its marker names, and takes
    /// out of `plan` (the newer snapshot's) every entry the volume already holds: steps
    /// left with nothing to read are dropped. Refuses a volume that changed since its
    /// restore, unless `force`.
    pub fn take(
        volume: &Path,
        old_id: &str,
        old: &[IndexEntry],
        plan: &mut Plan,
        force: bool,
        db_file: Option<&DbFile>,
        cancel: &Cancel,
    ) -> Result<Self> {
        let excludes = profile::excludes(&[])?;
        let listing = walk::list(volume, &excludes, &[Path::new(profile::SIGNAL_DB)], cancel)?;
        let listed: HashMap<&Path, &walk::Entry> = listing
            .entries
            .iter()
            .map(|e| (e.path.as_path(), e))
            .collect();
        let old: HashMap<&Path, &IndexEntry> = old.iter().map(|e| (e.path.as_path(), e)).collect();
        let home = Home::open(volume)?;
        let changed = changes(&home, &old, &listed, cancel)?;
        refuse_changed(volume, old_id, &changed, force)?;

        let mut taken = Self {
            volume: volume.to_path_buf(),
            linked: Vec::new(),
            db_copy: None,
            db_chain: None,
            db_in_place: false,
            db_base: Cell::new(None),
        };
        let mut not_needed = NotNeeded::new();
        for new in plan.files() {
            let (Some(previous), Some(entry)) =
                (old.get(new.path.as_path()), listed.get(new.path.as_path()))
            else {
                continue;
            };
            let Some(archive) = &new.archive else {
                continue;
            };
            if changed.contains(&new.path) {
                continue;
            }
            if new.path == Path::new(profile::SIGNAL_DB) {
                taken.take_db(
                    previous,
                    new,
                    archive,
                    &entry.metadata,
                    db_file,
                    &mut not_needed,
                );
            } else if restores_as(previous, new) {
                taken.link(new, archive, &entry.metadata, &mut not_needed);
            }
        }
        plan.leave_out(&not_needed);
        taken.log(plan.steps.len());
        Ok(taken)
    }

    /// Takes Signal's database from the volume when the newer snapshot's chain continues
    /// the one it was restored from (the same full copy): only the newer deltas are then
    /// read, into the volume's file in place or into a copy of it; an unchanged one is
    /// linked as it is. Otherwise it is fetched.
    fn take_db(
        &mut self,
        previous: &IndexEntry,
        new: &IndexEntry,
        archive: &str,
        listed: &std::fs::Metadata,
        db_file: Option<&DbFile>,
        not_needed: &mut NotNeeded,
    ) {
        let (Some(before), Some(after)) = (&previous.db_chain, &new.db_chain) else {
            return;
        };
        if previous.archive != new.archive || !after.deltas.starts_with(&before.deltas) {
            return; // another full copy: fetched
        }
        for id in &before.deltas {
            leave_out(not_needed, id, Path::new(archive::DB_DELTA));
        }
        self.db_chain = Some(DbChain {
            deltas: after.deltas[before.deltas.len()..].to_vec(),
            ..after.clone()
        });
        if before != after {
            let base = in_place_base(&self.volume, db_file, listed, before, after);
            self.db_in_place = base.is_some();
            self.db_base.set(base);
            if !self.db_in_place {
                leave_out(not_needed, archive, &new.path);
                self.db_copy = Some(listed.clone());
                return;
            }
        }
        self.link(new, archive, listed, not_needed);
    }

    /// Takes the file `new` from the volume, as listed, instead of from `archive`.
    fn link(
        &mut self,
        new: &IndexEntry,
        archive: &str,
        listed: &std::fs::Metadata,
        not_needed: &mut NotNeeded,
    ) {
        leave_out(not_needed, archive, &new.path);
        self.linked.push((new.path.clone(), listed.clone()));
    }

    fn log(&self, archives: usize) {
        tracing::info!(
            linked = self.linked.len(),
            database = match (&self.db_chain, &self.db_copy, self.db_in_place) {
                (Some(_), _, true) => "brought forward in place with the newer deltas",
                (Some(_), Some(_), false) => "copied, brought forward with the newer deltas",
                (Some(_), None, false) => "unchanged",
                (None, _, _) => "fetched",
            },
            archives,
            "updating: files the volume already holds are not fetched again"
        );
    }
}

/// Paths the plan's archives (by snapshot id) need not provide: taken from the volume.
type NotNeeded = HashMap<String, Vec<PathBuf>>;

fn leave_out(not_needed: &mut NotNeeded, archive: &str, path: &Path) {
    not_needed
        .entry(archive.to_owned())
        .or_default()
        .push(path.to_path_buf());
}

/// Refuses a volume that changed since its restore (`changed` are the paths that differ
/// from snapshot `old_id`), unless `force`: then what changed is fetched.
fn refuse_changed(
    volume: &Path,
    old_id: &str,
    changed: &HashSet<PathBuf>,
    force: bool,
) -> Result<()> {
    let Some(example) = changed.iter().next() else {
        return Ok(());
    };
    let what = format!(
        "{} changed since it was restored from snapshot {old_id}: {} paths differ from \
         that snapshot, e.g. {} (Signal, or someone, ran on it)",
        volume.display(),
        changed.len(),
        example.display()
    );
    if !force {
        return Err(exit::coded(
            Exit::RestoreRefused,
            format!(
                "{what}. Nothing was changed. Pass --force to update it anyway (what \
                 changed is moved aside into .ghostwire-backup-replaced-<time>/), or \
                 restore into an empty volume"
            ),
        ));
    }
    tracing::warn!("{what}; --force: fetching those from the repository");
    Ok(())
}

impl TakenFromVolume for FromVolume {
    fn db_chain(&self) -> Option<&DbChain> {
        self.db_chain.as_ref()
    }

    /// When the deltas are written into the volume's database in place, the database is
    /// the volume's own file, linked into the staging directory.
    fn db_written_in_place(&self) -> bool {
        self.db_in_place
    }

    /// Writes the newer deltas into the volume's database in place ([`crate::catch_up`]),
    /// keyed from `config` (the snapshot's `config.json`); `to` is the snapshot they bring
    /// it to; `staged` is the database's link in the staging directory. Returns its new
    /// page list.
    fn catch_up_in_place(
        &self,
        staged: &Path,
        deltas: &Deltas,
        expected_bytes: &dyn Fn(&str) -> Option<u64>,
        config: &[u8],
        to: &str,
        cancel: &Cancel,
    ) -> Result<RawPageList> {
        let (Some(base), Some(chain)) = (self.db_base.take(), &self.db_chain) else {
            bail!("Signal's database is not written in place by this update, or was already");
        };
        let key = DbKey::from_config_json(config, Path::new(profile::SIGNAL_CONFIG))?;
        let chain = catch_up::Chain {
            deltas,
            chain,
            expected_bytes,
        };
        let db = catch_up::AnchoredDb::open(&self.volume)?;
        catch_up::catch_up(db.path(), staged, &key, base, &chain, to, cancel).map_err(|err| {
            if crate::cancel::is_cancelled(&err) {
                return err;
            }
            err.context(
                "the target's Signal database is not the version its restore left, or could \
                 not be brought forward in place; it was put back as it was and nothing was \
                 moved into place. Run the update again (it copies the database then), or \
                 restore over it without --update (with --force)",
            )
        })
    }

    /// Puts what is taken from the volume into `staging`: hard links of the files (Signal's
    /// database among them when it is written in place), or a copy of the database (it
    /// will be written). Every file is opened without following a
    /// link and must still be the one listed.
    fn stage(&self, staging: &Path, cancel: &Cancel) -> Result<()> {
        let home = Home::open(&self.volume)?;
        for (path, listed) in &self.linked {
            cancel.check()?;
            let file = open_listed(&home, path, listed)?;
            let destination = staging.join(path);
            create_parents(staging, path)?;
            // Linking the open file itself: no path is looked up again.
            rustix::fs::linkat(
                rustix::fs::CWD,
                format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file)),
                rustix::fs::CWD,
                &destination,
                rustix::fs::AtFlags::SYMLINK_FOLLOW,
            )
            .with_context(|| {
                format!("cannot link {} into the staging directory", path.display())
            })?;
        }
        if let Some(listed) = &self.db_copy {
            let relative = Path::new(profile::SIGNAL_DB);
            let mut file = open_listed(&home, relative, listed)?;
            create_parents(staging, relative)?;
            let destination = staging.join(relative);
            let mut copy = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(listed.mode() & 0o7777)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&destination)?;
            std::io::copy(&mut cancel.reader(&mut file), &mut copy)?;
            copy.flush()?;
            std::os::unix::fs::fchown(&copy, Some(listed.uid()), Some(listed.gid()))?;
        }
        Ok(())
    }
}

/// The page list of the volume's database, to write the newer deltas into it in place:
/// only while the file is provably the one its restore left (the inode and change time
/// that restore recorded in the marker) and the volume's catalog still holds the page
/// list of the version `before` names (it is on the user's volume: it must hash to that
/// signed digest). Otherwise `None`: the database is copied and checked whole.
fn in_place_base(
    volume: &Path,
    recorded: Option<&DbFile>,
    listed: &std::fs::Metadata,
    before: &DbChain,
    after: &DbChain,
) -> Option<RawPageList> {
    let why_not = match recorded {
        _ if !(before.is_raw() && after.raw_page_size == before.raw_page_size) => {
            "its chain is not raw pages (a snapshot of format 1 or 2): its deltas are decrypted pages"
        }
        None => {
            "the marker records no database file (restored by an older agent, or finished after a kill)"
        }
        Some(file) if *file != DbFile::of(listed) => {
            "the database file's inode or change time is not the one its restore recorded"
        }
        Some(_) => match crate::signal_db::plain_tree(volume, Path::new(profile::SIGNAL_DB)) {
            Err(_) => "the database's path is not a plain directory tree",
            Ok(()) => match catalog_page_list(volume, &before.pages) {
                Some(list) => return Some(list),
                None => "the volume's catalog holds no page list of the restored version",
            },
        },
    };
    tracing::info!(
        why = why_not,
        "Signal's database is copied and brought forward, not written in place"
    );
    None
}

fn catalog_page_list(volume: &Path, digest: &str) -> Option<RawPageList> {
    let path = volume.join(crate::catalog::DEFAULT_NAME);
    if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
        return None;
    }
    // Unreadable, it is only a reason to copy instead of writing in place: said, not fatal.
    let list = crate::catalog::Catalog::open(&path).and_then(|catalog| catalog.page_list(digest));
    list.unwrap_or_else(|err| {
        tracing::warn!(
            error = format!("{err:#}"),
            "cannot read the volume's catalog"
        );
        None
    })
}

/// Whether the file `old` restored is the file `new` restores: same content, and the
/// same mode and (whole-second) mtime, which a later update compares.
fn restores_as(old: &IndexEntry, new: &IndexEntry) -> bool {
    old.kind == EntryKind::File
        && old.sha256.is_some()
        && old.sha256 == new.sha256
        && old.mode == new.mode
        && old.mtime_ns.div_euclid(1_000_000_000) == new.mtime_ns.div_euclid(1_000_000_000)
}

/// Paths where the volume differs from the snapshot it was restored from: a file or link
/// missing, of another kind, mode or mtime (see [`mtime_as_left`]) or content (see
/// [`restored_content`]: every file is read and hashed); a file or link the
/// snapshot does not have; a database (Signal's, or a plain SQLite one) with a WAL or
/// journal holding data. (A database written with its mtime set back is still caught:
/// the deltas applied to it check its pages.)
fn changes(
    home: &Home,
    old: &HashMap<&Path, &IndexEntry>,
    listed: &HashMap<&Path, &walk::Entry>,
    cancel: &Cancel,
) -> Result<HashSet<PathBuf>> {
    let mut changed = HashSet::new();
    for (path, entry) in old {
        let same = match (entry.kind, listed.get(path)) {
            (EntryKind::Deleted, _) => true,
            (EntryKind::Directory, Some(now)) => matches!(now.kind, Kind::Directory),
            (EntryKind::Symlink, Some(now)) => matches!(now.kind, Kind::Symlink(_)),
            (EntryKind::File, Some(now)) => {
                matches!(now.kind, Kind::File | Kind::PlainSqlite)
                    && now.metadata.mode() & 0o7777 == entry.mode
                    && mtime_as_left(&now.kind, &now.metadata, entry.mtime_ns)
                    && restored_content(home, entry, now, cancel)?
            }
            _ => false,
        };
        if !same {
            changed.insert(path.to_path_buf());
        }
    }
    for (path, entry) in listed {
        if !old.contains_key(path) && !matches!(entry.kind, Kind::Directory) {
            changed.insert(path.to_path_buf());
        }
        let database =
            matches!(entry.kind, Kind::PlainSqlite) || *path == Path::new(profile::SIGNAL_DB);
        if database && journal_holds_data(home, path) {
            changed.insert(path.to_path_buf());
        }
    }
    Ok(changed)
}

/// Whether a file's mtime is the one the snapshot left it with: the snapshot's own, to the
/// nanosecond (a volume whose final snapshot was taken in place), or its whole second with
/// no fraction (a restore sets whole seconds). A write in the very second the snapshot
/// recorded shows by its fraction of a second, where file times keep nanoseconds. A plain
/// SQLite database is archived as a snapshot copy whose recorded time is not the live
/// file's to the nanosecond: its whole second is compared (and its size or content).
fn mtime_as_left(kind: &Kind, now: &std::fs::Metadata, snapshot_mtime_ns: i64) -> bool {
    let same_second = now.mtime() == snapshot_mtime_ns.div_euclid(1_000_000_000);
    if matches!(kind, Kind::PlainSqlite) {
        return same_second;
    }
    let now_ns = i128::from(now.mtime()) * 1_000_000_000 + i128::from(now.mtime_nsec());
    now_ns == i128::from(snapshot_mtime_ns) || (same_second && now.mtime_nsec() == 0)
}

/// Whether the volume's file `now` still has the content the restore gave it: its content
/// hash is the one the snapshot recorded (the hash of the copy it archived, for a plain
/// SQLite database). Content, not stat: the volume's owner can rewrite a file and set its
/// size, mode and mtime back (`touch -d`), and only its ctime would show it, which nothing
/// the owner cannot also write records. Signal's database is checked by its deltas and the
/// restore gate instead. A plain SQLite database is archived as a snapshot copy, which is
/// the live file byte for byte only where a restore wrote it (not where the final snapshot
/// was taken in place): one of the same size keeps the stat rule, one of another size is
/// compared by the copy's hash. A file without a recorded hash is compared by size.
fn restored_content(
    home: &Home,
    entry: &IndexEntry,
    now: &walk::Entry,
    cancel: &Cancel,
) -> Result<bool> {
    if entry.path == Path::new(profile::SIGNAL_DB) {
        return Ok(true);
    }
    let same_size = now.metadata.len() == entry.size;
    let Some(archived) = &entry.sha256 else {
        return Ok(same_size);
    };
    match (&now.kind, same_size) {
        (Kind::PlainSqlite, true) => return Ok(true),
        (Kind::PlainSqlite, false) => {}
        (_, false) => return Ok(false),
        (_, true) => {}
    }
    cancel.check()?;
    let Opened::File(file, _) = home.open_listed(&entry.path, &now.metadata)? else {
        return Ok(false);
    };
    let sha256 = reuse::content_sha256(file, cancel)
        .with_context(|| format!("cannot read {}", home.path().join(&entry.path).display()))?;
    Ok(&sha256 == archived)
}

/// A database's `-wal` or `-journal` with data in it (or that is not a regular file): an
/// application wrote to it since the restore, which leaves neither.
fn journal_holds_data(home: &Home, database: &Path) -> bool {
    ["-wal", "-journal"].iter().any(|suffix| {
        let mut companion = database.as_os_str().to_owned();
        companion.push(suffix);
        home.lstat(Path::new(&companion))
            .is_ok_and(|m| !m.is_file() || m.len() > 0)
    })
}

fn open_listed(home: &Home, path: &Path, listed: &std::fs::Metadata) -> Result<std::fs::File> {
    match home.open_listed(path, listed)? {
        Opened::File(file, _) => Ok(file),
        _ => bail!(
            "{} changed while the update read the volume: run it again",
            home.path().join(path).display()
        ),
    }
}

/// Creates the directories above `relative` in `staging` (their modes and times come from
/// the snapshot's own archive, read last).
fn create_parents(staging: &Path, relative: &Path) -> Result<()> {
    if let Some(parent) = relative.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(staging.join(parent))?;
    }
    Ok(())
}
