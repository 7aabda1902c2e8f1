//! Signal's encrypted database: its snapshot at backup, and the check every restore and
//! verify must pass (the gate).
//!
//! The key comes from Signal's `config.json` (or `--db-key-file`); the snapshot stays
//! encrypted with it. A backup that images the whole database (a full copy) runs
//! `cipher_integrity_check` beside its upload (made as the gate makes it: our own page
//! HMAC check, SQLCipher deciding if a page fails) and records the result (a database that fails
//! goes ahead with a warning: the damage is Signal's, and the snapshot is the best copy
//! there is); a delta, which writes only the changed pages, and the final snapshot run
//! none. The structural checks are `verify`'s ([`COPY_CHECKS`] says why). A restore stops before anything is moved into place unless its gate passes
//! ([`gate`]): every page of the rebuilt database equal to the snapshot's signed page
//! digest and authenticated with the restored key (`cipher_integrity_check` for raw
//! chains, decrypted reads for formats 1 and 2); the full `integrity_check` only for a
//! snapshot without a page digest, or whose backup check found problems. `verify` (the
//! scheduled drill) runs the full check on every snapshot it reads.
//!
//! A database nothing wrote to since the parent snapshot is not copied again: its
//! [`Stamp`] (the stat of the database and its journal files, taken before the copy) still
//! matches the one the parent recorded, so the parent's copy is reused. One that changed
//! is imaged raw ([`crate::wal`]: still encrypted, no decryption), and the image's raw page
//! hashes are compared with the parent's: the archive then holds only the raw pages that
//! changed ([`crate::raw_pages`]), as long as the deltas since the last full copy stay
//! small ([`DELTA_SHARE`]).

use std::collections::HashSet;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use crate::cancel::{Cancel, is_cancelled};
use crate::home::{self, Home, Opened};
use crate::index::{DbChain, IndexEntry};
use crate::manifest::{AttachmentCheck, COPY_CHECKS, DatabaseInfo, Manifest};
use crate::profile::{self, DbKey};
use crate::raw_pages::{RawDelta, RawPageList};
use crate::sqlite::{self, DbCheck};
use crate::staging::Staging;
use crate::wal;

/// A snapshot of Signal's database: a copy in the staging directory, or the parent
/// snapshot's copy when nothing wrote to the database since.
pub struct SignalSnapshot {
    pub origin: Origin,
    pub info: DatabaseInfo,
    /// The attachment files it references, `xx/<hash>`: the copy's, and empty for a reused
    /// one (its references are not read again, see [`Origin::Parent`]).
    pub references: HashSet<String>,
    /// The database's files just before the copy, if they were quiet long enough to tell a
    /// later write apart ([`stamp`]).
    pub stamp: Option<Stamp>,
    /// The hash of every raw page of this version, for the next backup's delta; `None`
    /// when unknown (a reused parent's copy whose list the catalog lost: the next copy is
    /// then full).
    pub pages: Option<RawPageList>,
}

/// Where a snapshot's copy of Signal's database is.
#[derive(Clone)]
pub enum Origin {
    /// Copied now into the staging directory (still encrypted with `key`), to be archived
    /// in place of the live file.
    Copied { copy: PathBuf, key: DbKey },
    /// Copied now, and archived as the raw pages that changed since the parent's version,
    /// whose index entry (naming the full copy and the deltas since) is extended.
    Delta {
        copy: PathBuf,
        key: DbKey,
        delta: RawDelta,
        parent: IndexEntry,
    },
    /// Unchanged since the parent snapshot: the parent's index entry (naming the archive
    /// that holds its copy) is reused, and so is its attachment check, which still holds
    /// for every file not deleted since.
    Parent {
        entry: IndexEntry,
        attachments: AttachmentCheck,
    },
}

/// What Signal's database files (`db.sqlite`, `-wal`, `-journal`) looked like: device,
/// inode, size and modification time of each (an empty WAL or journal counts as a missing
/// one), and the database file's change time.
///
/// Every commit writes one of them, so a write after the stamp changes it. SQLite itself
/// offers no cheaper signal that survives between processes: `PRAGMA data_version` is
/// per connection, and in WAL mode the header's change counter is not bumped by every
/// commit (sqlite.org/fileformat2.html, "File change counter").
///
/// The desktop user can set modification times back but not change times, so a write to
/// the database file cannot be hidden. The WAL's change time is left out because our own
/// read moves it: SQLite, run as root, `fchown`s every WAL it opens to the database's
/// owner (`robustFchown` in sqlite3.c), and a chown sets the ctime even when nothing
/// changes. So a user who rewrites the WAL to the same size and sets its mtime back hides
/// that write from the next backups until Signal writes again or the next full snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp(pub String);

/// A file changed this recently may be written again within the same timestamp tick, and
/// that write would not show. Linux file systems keep nanoseconds but take them from a
/// clock that ticks every few milliseconds (a jiffy); 100 ms is well past one tick.
const QUIET_FOR: Duration = Duration::from_millis(100);

/// The same for a file system that keeps whole seconds (or two, as FAT does): its times
/// show no nanoseconds.
const QUIET_FOR_COARSE: Duration = Duration::from_secs(2);

/// The [`Stamp`] of Signal's database in `home`, or `None` if any of its files changed
/// within [`QUIET_FOR`] (or [`QUIET_FOR_COARSE`]), is not a regular file, or cannot be
/// read: then it is copied.
pub fn stamp(home: &Path) -> Result<Option<Stamp>> {
    let home = Home::open(home)?;
    let now = SystemTime::now();
    let mut parts = Vec::new();
    for suffix in ["", "-wal", "-journal"] {
        let relative = PathBuf::from(format!("{}{suffix}", profile::SIGNAL_DB));
        let database_file = suffix.is_empty();
        let metadata = match home.lstat(&relative) {
            // An empty WAL or journal holds nothing, as a missing one: Signal truncates its
            // WAL after each checkpoint and SQLite deletes it when Signal quits, which
            // must not count as a write (the final snapshot at shutdown is then small).
            Ok(metadata) if metadata.is_file() && (database_file || metadata.len() > 0) => metadata,
            Ok(metadata) if metadata.is_file() => {
                parts.push(format!("db{suffix}:empty"));
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                parts.push(format!("db{suffix}:empty"));
                continue;
            }
            _ => return Ok(None),
        };
        let mut newest = metadata.modified()?;
        let mut whole_seconds = metadata.mtime_nsec() == 0;
        if database_file {
            newest = newest.max(changed(&metadata));
            whole_seconds &= metadata.ctime_nsec() == 0;
        }
        let quiet_for = if whole_seconds {
            QUIET_FOR_COARSE
        } else {
            QUIET_FOR
        };
        if newest + quiet_for > now {
            return Ok(None);
        }
        let mut part = format!(
            "db{suffix}:{}:{}:{}:{}.{:09}",
            metadata.dev(),
            metadata.ino(),
            metadata.len(),
            metadata.mtime(),
            metadata.mtime_nsec(),
        );
        if database_file {
            part += &format!(":{}.{:09}", metadata.ctime(), metadata.ctime_nsec());
        }
        parts.push(part);
    }
    Ok(Some(Stamp(parts.join(" "))))
}

fn changed(metadata: &Metadata) -> SystemTime {
    let since_epoch = Duration::new(
        metadata.ctime().max(0) as u64,
        metadata.ctime_nsec().clamp(0, 999_999_999) as u32,
    );
    SystemTime::UNIX_EPOCH + since_epoch
}

/// The parent's copy of the database, if `stamp` shows nothing wrote to it since the
/// parent took that copy: the parent's index entry recorded the same stamp.
pub fn unchanged_since(
    parent: &Manifest,
    parent_entry: Option<&IndexEntry>,
    parent_pages: Option<&RawPageList>,
    stamp: Option<&Stamp>,
) -> Option<SignalSnapshot> {
    let stamp = stamp?;
    let entry = parent_entry?;
    entry.archive.as_ref()?;
    // A decrypted-page chain (formats 1 and 2) is not continued: a raw full copy starts
    // a new one.
    entry.db_chain.as_ref().filter(|chain| chain.is_raw())?;
    if entry.db_stamp.as_deref() != Some(stamp.0.as_str()) {
        return None;
    }
    Some(SignalSnapshot {
        origin: Origin::Parent {
            entry: entry.clone(),
            attachments: parent.attachments.clone(),
        },
        info: DatabaseInfo {
            delta_pages: None,
            ..parent.signal_db.clone()?
        },
        references: HashSet::new(),
        stamp: Some(stamp.clone()),
        pages: parent_pages.cloned(),
    })
}

/// The largest share of the database one delta may be, and all deltas since its last full
/// copy together: past it a full copy costs little more to upload, and a restore reads
/// the full copy and every delta.
const DELTA_SHARE: (u64, u64) = (1, 4);
const CHAIN_SHARE: (u64, u64) = (1, 2);

/// `copied` as a delta against the parent's version of the database, if the parent's page
/// list is known (`base`, from the catalog, matching the parent's entry) and the delta is
/// small enough; else `copied` as it is, a full copy.
pub fn as_delta(
    copied: SignalSnapshot,
    parent_entry: Option<&IndexEntry>,
    base: Option<&RawPageList>,
) -> SignalSnapshot {
    let (Origin::Copied { copy, key }, Some(now), Some(base), Some(parent)) =
        (&copied.origin, &copied.pages, base, parent_entry)
    else {
        return copied;
    };
    let Some(chain) = parent
        .db_chain
        .as_ref()
        .filter(|chain| parent.archive.is_some() && chain.is_raw())
    else {
        return copied;
    };
    let Some(delta) = RawDelta::between(base, now) else {
        tracing::info!("Signal's database changed its page size: copying it in full");
        return copied;
    };
    let (bytes, length) = (copied.info.bytes, delta.header.bytes());
    let share =
        |(num, den): (u64, u64), part: u64| part.saturating_mul(den) <= bytes.saturating_mul(num);
    if !share(DELTA_SHARE, length) || !share(CHAIN_SHARE, chain.delta_bytes + length) {
        tracing::info!(
            pages = delta.changed.len(),
            delta_bytes = length,
            since_full_copy = chain.delta_bytes + length,
            database_bytes = bytes,
            "Signal's database changed too much for a delta: copying it in full"
        );
        return copied;
    }
    tracing::info!(
        pages = delta.changed.len(),
        delta_bytes = length,
        database_bytes = bytes,
        "Signal's database changed: archiving the pages that changed"
    );
    let info = DatabaseInfo {
        delta_pages: Some(delta.changed.len() as u64),
        ..copied.info.clone()
    };
    SignalSnapshot {
        origin: Origin::Delta {
            copy: copy.clone(),
            key: key.clone(),
            delta,
            parent: parent.clone(),
        },
        info,
        ..copied
    }
}

impl SignalSnapshot {
    /// How the snapshot's index entry rebuilds this version of the database, `id` being
    /// the snapshot's.
    pub fn chain(&self, id: &str) -> Option<DbChain> {
        // A reused copy keeps its chain, whether or not the catalog still has its list.
        if let Origin::Parent { entry, .. } = &self.origin {
            return entry.db_chain.clone();
        }
        let list = self.pages.as_ref()?;
        let pages = list.digest_hex();
        match &self.origin {
            Origin::Copied { .. } => Some(DbChain {
                deltas: Vec::new(),
                pages,
                delta_bytes: 0,
                raw_page_size: Some(list.page_size),
            }),
            Origin::Parent { .. } => None, // returned above
            Origin::Delta { delta, parent, .. } => {
                let before = parent.db_chain.as_ref()?;
                let mut deltas = before.deltas.clone();
                deltas.push(id.to_string());
                Some(DbChain {
                    deltas,
                    pages,
                    delta_bytes: before.delta_bytes + delta.header.bytes(),
                    raw_page_size: Some(list.page_size),
                })
            }
        }
    }
}

/// Snapshots Signal's encrypted database, if the home has a Signal profile. A database
/// that is a symlink, or is reached through one, is not followed (see [`crate::home`]):
/// the snapshot goes ahead without it, with a warning.
///
/// The copy is not checked here: its `quick_check` and `cipher_integrity_check` read the
/// whole database (about 15 s per GiB together), and run beside the upload instead
/// ([`PendingCheck`]), or not at all for a delta or the final snapshot; until then its
/// `info.check` says [`crate::manifest::NOT_CHECKED`].
pub fn snapshot_signal_db(
    home: &Path,
    key_file: Option<&Path>,
    staging: &Staging,
    wait: Duration,
    cancel: &Cancel,
) -> Result<Option<SignalSnapshot>> {
    let home = Home::open(home)?;
    let relative = Path::new(profile::SIGNAL_DB);
    let db = home.path().join(relative);
    let Some(listed) = listed_database(&home, relative)? else {
        return Ok(None);
    };
    let key = read_key(&home, key_file)?;
    let copy = staging.file("signal.sqlite");
    let pages = wal::raw_image(&db, &listed, &copy, Some(&key), wait, cancel)
        .context("cannot snapshot Signal's database")?;
    // SQLite opened it by path: it must still be the file found above.
    if !matches!(home.open_listed(relative, &listed)?, Opened::File(..)) {
        std::fs::remove_file(&copy).ok();
        tracing::warn!(path = %db.display(), "Signal's database was replaced while it was snapshotted (by a link, or another file); this snapshot holds no Signal database. If nobody is tampering with the home, run the backup again");
        return Ok(None);
    }
    cancel.enter("attachment references")?;
    let references = sqlite::attachment_references(&copy, &key, cancel)?;
    let info = DatabaseInfo {
        user_version: sqlite::user_version(&copy, &key)?,
        check: crate::manifest::NOT_CHECKED.to_string(),
        checks: Some(Vec::new()),
        bytes: pages.bytes(),
        delta_pages: None,
    };
    Ok(Some(SignalSnapshot {
        origin: Origin::Copied { copy, key },
        info,
        references,
        stamp: None,
        pages: Some(pages),
    }))
}

/// Signal's database as a delta against the parent's version (`base`, its raw page list,
/// from the catalog), writing only the changed pages ([`wal::raw_changes`]) instead of a
/// whole image: what every backup after a few messages takes, the final snapshot too.
/// `None` when it does not apply (no database, no raw chain to extend, a delta too
/// large): then [`snapshot_signal_db`] takes a full image.
pub fn snapshot_changes(
    home: &Path,
    key_file: Option<&Path>,
    staging: &Staging,
    wait: Duration,
    parent_entry: Option<&IndexEntry>,
    base: &RawPageList,
    cancel: &Cancel,
) -> Result<Option<SignalSnapshot>> {
    let home = Home::open(home)?;
    let relative = Path::new(profile::SIGNAL_DB);
    let db = home.path().join(relative);
    let Ok(listed) = home.lstat(relative) else {
        return Ok(None);
    };
    if !listed.is_file() {
        return Ok(None);
    }
    let key = read_key(&home, key_file)?;
    let copy = staging.file("signal-changes.sqlite");
    let changes = wal::raw_changes(&db, &listed, &copy, &key, base, wait, cancel)
        .context("cannot snapshot Signal's database")?;
    if !matches!(home.open_listed(relative, &listed)?, Opened::File(..)) {
        std::fs::remove_file(&copy).ok();
        return Ok(None); // the full path says why
    }
    let changed = SignalSnapshot {
        info: DatabaseInfo {
            user_version: changes.user_version,
            check: crate::manifest::NOT_CHECKED.to_string(),
            checks: Some(Vec::new()),
            bytes: changes.pages.bytes(),
            delta_pages: None,
        },
        references: changes.references,
        stamp: None,
        pages: Some(changes.pages),
        origin: Origin::Copied {
            copy: copy.clone(),
            key,
        },
    };
    let snapshot = as_delta(changed, parent_entry, Some(base));
    if !matches!(snapshot.origin, Origin::Delta { .. }) {
        // Only the changed pages are in the file: never archived as a copy.
        std::fs::remove_file(&copy).ok();
        return Ok(None);
    }
    tracing::info!("Signal's database read once, only the pages that changed written to staging");
    Ok(Some(snapshot))
}

/// The whole-database check of a snapshot's copy ([`COPY_CHECKS`]: every page's HMAC), on
/// a thread of its own beside the archive and upload,
/// which read the same copy. A backup that fails or is cut stops them (dropping this
/// stops the checks and waits for them), before the copy is removed.
pub struct PendingCheck {
    stop: Cancel,
    worker: Option<std::thread::JoinHandle<Result<Vec<String>>>>,
}

impl PendingCheck {
    /// Starts checking `snapshot`'s copy, if it made one now (a reused parent's copy keeps
    /// the parent's check).
    pub fn start(snapshot: &SignalSnapshot) -> Option<Self> {
        // A full copy only: a delta's staging file may hold nothing but the changed pages.
        let Origin::Copied { copy, key } = &snapshot.origin else {
            return None;
        };
        let stop = Cancel::new();
        let (copy, key, token) = (copy.clone(), key.clone(), stop.clone());
        let page_size = snapshot.pages.as_ref().map(|list| list.page_size);
        let worker = std::thread::spawn(move || check_copy(&copy, &key, page_size, &token));
        Some(Self {
            stop,
            worker: Some(worker),
        })
    }

    /// Waits for the checks and records what they found in `info`. A cut of `cancel`
    /// stops them within about a second.
    pub fn finish(mut self, info: &mut DatabaseInfo, cancel: &Cancel) -> Result<()> {
        while self.worker.as_ref().is_some_and(|w| !w.is_finished()) {
            cancel.check()?; // dropped: stopped and joined
            std::thread::sleep(Duration::from_millis(50));
        }
        let worker = self
            .worker
            .take()
            .context("the database check was joined already")?;
        let check = worker
            .join()
            .map_err(|_| anyhow::anyhow!("the database check panicked"))?;
        record_check(info, check)
    }
}

impl Drop for PendingCheck {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// SQLCipher's `cipher_integrity_check` of a full copy, as the restore gate makes it: our
/// own check of every page's HMAC ([`crate::page_auth`], on every core, eight pages at a
/// time where the CPU can; a 2 GiB backup took 4–5 s less CPU), SQLCipher opening the file with the
/// key, and SQLCipher's own check deciding, with its words, if any page fails. Without the
/// page size (no page list), SQLCipher's check alone.
fn check_copy(
    copy: &Path,
    key: &DbKey,
    page_size: Option<u32>,
    cancel: &Cancel,
) -> Result<Vec<String>> {
    if let Some(page_size) = page_size {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(copy)?;
        if crate::page_auth::authenticate_file(&file, page_size, key, cancel)?.is_empty() {
            sqlite::opens_with_key(copy, key)?;
            return Ok(Vec::new());
        }
    }
    sqlite::cipher_check(copy, key, cancel)
}

/// Notes a check's outcome: problems, or a check that could not run, are warned about and
/// recorded (the restore gate then runs the full `integrity_check`), and the backup goes
/// ahead: the damage is Signal's, and the snapshot is the best copy there is.
fn record_check(info: &mut DatabaseInfo, problems: Result<Vec<String>>) -> Result<()> {
    match problems {
        Ok(problems) if problems.is_empty() => {
            info.checks = Some(COPY_CHECKS.iter().map(|c| c.to_string()).collect());
            info.check = "ok".into();
        }
        Ok(problems) => {
            let found = problems.join("; ");
            tracing::warn!(check = %found, "cipher_integrity_check found pages that do not authenticate in Signal's database; backing it up as it is");
            info.checks = Some(Vec::new());
            info.check = found;
        }
        Err(err) if is_cancelled(&err) => return Err(err),
        Err(err) => {
            tracing::warn!(
                error = format!("{err:#}"),
                "cannot check Signal's database copy; backing it up unchecked"
            );
            info.checks = Some(Vec::new());
            info.check = format!("the check could not run: {err:#}");
        }
    }
    Ok(())
}

/// The stat of Signal's database if it is a regular file reached without links; `None`,
/// with a warning, if it is missing or is (or is reached through) a link.
fn listed_database(home: &Home, relative: &Path) -> Result<Option<Metadata>> {
    let db = home.path().join(relative);
    match home.lstat(relative) {
        Ok(metadata) if metadata.is_file() => Ok(Some(metadata)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(
                path = %db.display(),
                "no Signal database in this home; backing up the files only (is --source right?)"
            );
            Ok(None)
        }
        Err(e) if !home::is_replaced(&e) => {
            Err(e).with_context(|| format!("cannot read {}", db.display()))
        }
        _ => {
            tracing::warn!(
                path = %db.display(),
                "Signal's database is a symlink, or a directory above it is, or it is not a \
                 regular file: not following it, so this snapshot holds no Signal database. \
                 Signal never makes it a link: replace the link with the database file"
            );
            Ok(None)
        }
    }
}

fn read_key(home: &Home, key_file: Option<&Path>) -> Result<DbKey> {
    if let Some(file) = key_file {
        return DbKey::from_file(file);
    }
    let relative = Path::new(profile::SIGNAL_CONFIG);
    let config = home.path().join(relative);
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    home.open_nofollow(relative)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .with_context(|| {
            format!(
                "cannot read Signal's database key from {} (it must be a regular file, not \
                 a link)",
                config.display()
            )
        })?;
    DbKey::from_config_json(&bytes, &config)
}

/// Opens a Signal database with the key from its `config.json` and runs the full
/// `integrity_check`; fails unless it is "ok".
pub fn check_signal_db(config_json: &[u8], db: &Path, cancel: &Cancel) -> Result<DbCheck> {
    let key = DbKey::from_config_json(config_json, Path::new(profile::SIGNAL_CONFIG))?;
    let check = sqlite::integrity_check(db, Some(&key), cancel)?;
    if !check.is_ok() {
        bail!("Signal's database failed integrity_check: {}", check.result);
    }
    Ok(check)
}

/// The restore gate on a profile unpacked at `staged`: the restored Signal database opens
/// with the restored key and is sound. Returns the gate's result for the restore marker.
///
/// `pages_verified`: the restore has authenticated every page of the database with the
/// restored key (raw pages: each page's HMAC checked as SQLCipher checks it, SQLCipher
/// deciding wherever that check finds one bad, [`crate::page_auth`]; decrypted pages:
/// read back through SQLCipher) and found them to hash to the page digest in the
/// snapshot's signed index ([`crate::db_rebuild`]). That is the gate's
/// promise: the database is, page for page, the copy the backup took of what Signal had
/// committed, and it opens with the restored key. The full `integrity_check` adds nothing
/// a restore can break, and costs about 30 s per GiB inside the switch's downtime: it is
/// left to `verify`, which runs it on every snapshot. The gate
/// runs it only when the pages were not verified (an older snapshot without a page
/// digest) or when the backup's own check found problems.
pub fn gate(
    manifest: &Manifest,
    staged: &Path,
    pages_verified: bool,
    cancel: &Cancel,
) -> Result<String> {
    let Some(backed_up) = &manifest.signal_db else {
        tracing::warn!("this snapshot holds no Signal database; no gate to run");
        return Ok("no Signal database in this snapshot".into());
    };
    if pages_verified && !backed_up.check_failed() {
        tracing::info!(
            user_version = backed_up.user_version,
            checks_at_backup = backed_up.passed_checks().join(","),
            "restore gate passed: every page authenticated with the restored key and equal to the snapshot's signed digest"
        );
        return Ok("ok".into());
    }
    for path in [profile::SIGNAL_CONFIG, profile::SIGNAL_DB] {
        plain_tree(staged, Path::new(path)).context("the restore gate failed")?;
    }
    let config = zeroize::Zeroizing::new(std::fs::read(staged.join(profile::SIGNAL_CONFIG)).context(
        "the restore gate failed: the snapshot has a Signal database but no config.json with its key",
    )?);
    let check = check_signal_db(&config, &staged.join(profile::SIGNAL_DB), cancel)
        .context("the restore gate failed")?;
    tracing::info!(
        user_version = check.user_version,
        "restore gate passed: integrity_check ok"
    );
    Ok(check.result)
}

/// Fails unless every component of `relative` under `root` is a real directory and the
/// last a regular file, not a symbolic link: the gate opens the database with SQLite (which
/// may write a WAL beside it), and a `.config` that the desktop user made a link in their
/// home, archived as a link, would lead it out of the restore's staging directory into
/// whatever database the link points at. A missing file is left to the caller's message.
pub fn plain_tree(root: &Path, relative: &Path) -> Result<()> {
    let mut path = root.to_path_buf();
    let components: Vec<_> = relative.components().collect();
    for (n, component) in components.iter().enumerate() {
        path.push(component);
        let metadata = match std::fs::symlink_metadata(&path) {
            Ok(metadata) => metadata,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => {
                return Err(err).with_context(|| format!("cannot inspect {}", path.display()));
            }
        };
        let last = n + 1 == components.len();
        let what = if metadata.file_type().is_symlink() {
            Some("a symbolic link")
        } else if !last && !metadata.is_dir() {
            Some("not a directory")
        } else if last && !metadata.is_file() {
            Some("not a regular file")
        } else {
            None
        };
        if let Some(what) = what {
            let inside: PathBuf = components[..=n].iter().collect();
            bail!(
                "the Signal profile in this snapshot is not a plain directory tree: {} is {what} \
                 (the home it was backed up from had it so). The restore stops here: nothing was \
                 moved into place and nothing outside the target was opened. Restore another \
                 snapshot, or make {} a real directory in the home and back it up again",
                inside.display(),
                inside.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_db(home: &Path, content: &[u8]) -> PathBuf {
        let db = home.join(profile::SIGNAL_DB);
        std::fs::create_dir_all(db.parent().unwrap()).unwrap();
        std::fs::write(&db, content).unwrap();
        db
    }

    fn quiet() {
        std::thread::sleep(QUIET_FOR_COARSE + Duration::from_millis(100));
    }

    #[test]
    fn a_full_copy_s_check_passes_an_intact_copy_and_reports_sqlcipher_s_findings_on_a_bad_page() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("db.sqlite");
        let key = DbKey::from_hex(&"7e".repeat(32)).unwrap();
        let conn = rusqlite::Connection::open(&copy).unwrap();
        conn.execute_batch(&key.pragma()).unwrap();
        conn.execute_batch(
            "CREATE TABLE t(x);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
             INSERT INTO t SELECT randomblob(3900) FROM n;",
        )
        .unwrap();
        drop(conn);
        let cancel = Cancel::new();
        for page_size in [Some(4096), None] {
            assert_eq!(
                check_copy(&copy, &key, page_size, &cancel).unwrap(),
                Vec::<String>::new()
            );
        }
        let mut bytes = std::fs::read(&copy).unwrap();
        bytes[40 * 4096 + 300] ^= 1; // page 41, in a group of eight
        std::fs::write(&copy, &bytes).unwrap();
        for page_size in [Some(4096), None] {
            let problems = check_copy(&copy, &key, page_size, &cancel).unwrap();
            assert!(
                problems.iter().any(|p| p.contains("41")),
                "{page_size:?}: {problems:?}"
            );
        }
    }

    #[test]
    fn a_stamp_changes_with_every_write_even_with_the_times_set_back() {
        let home = tempfile::tempdir().unwrap();
        let db = write_db(home.path(), b"page one");
        let file = std::fs::File::options().write(true).open(&db).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(1))
            .unwrap();
        assert_eq!(
            stamp(home.path()).unwrap(),
            None,
            "just written: too recent to trust"
        );
        file.set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        quiet();
        let before = stamp(home.path()).unwrap().expect("quiet for long enough");
        assert_eq!(stamp(home.path()).unwrap().as_ref(), Some(&before));

        // Same size, modification time put back: the change time still moves.
        let mtime = std::fs::metadata(&db).unwrap().modified().unwrap();
        write_db(home.path(), b"page two");
        std::fs::File::options()
            .write(true)
            .open(&db)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        quiet();
        let after = stamp(home.path()).unwrap().unwrap();
        assert_ne!(after, before);

        // An empty WAL appearing or going holds nothing: no write. One with frames is.
        let wal = db.with_file_name("db.sqlite-wal");
        std::fs::write(&wal, b"").unwrap();
        assert_eq!(stamp(home.path()).unwrap().as_ref(), Some(&after));
        std::fs::write(&wal, b"frame").unwrap();
        quiet();
        let with_frames = stamp(home.path()).unwrap().unwrap();
        assert_ne!(with_frames, after);
        std::fs::remove_file(&wal).unwrap();
        assert_eq!(stamp(home.path()).unwrap().as_ref(), Some(&after));
    }

    #[test]
    fn a_linked_database_file_has_no_stamp() {
        let home = tempfile::tempdir().unwrap();
        let real = home.path().join("elsewhere.sqlite");
        std::fs::write(&real, b"x").unwrap();
        write_db(home.path(), b"x");
        let wal = home.path().join(format!("{}-wal", profile::SIGNAL_DB));
        std::os::unix::fs::symlink(&real, &wal).unwrap();
        quiet();
        assert_eq!(stamp(home.path()).unwrap(), None);
    }
}
