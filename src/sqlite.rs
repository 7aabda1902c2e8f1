//! Consistent snapshots of live SQLite databases, and the checks that prove a copy good.
//!
//! A database in WAL mode keeps its newest commits in `-wal` until a checkpoint, so copying
//! `db.sqlite` as a file loses data, and copying the three files one after another tears
//! them. Instead we use SQLite's online backup API: it copies every page inside one read
//! transaction, which in WAL mode never blocks the writer (Signal keeps writing).
//!
//! The copy is made in bounded steps inside **one read transaction** held on the source for
//! the whole copy. Without it, each `step(N)` takes its own transaction and the backup
//! restarts every time the writer commits, so on a busy database it never finishes
//! (measured, SIGNAL.md); holding the transaction pins one snapshot (WAL readers never block
//! the writer), and the steps let a deadline cut the copy between two of them. The checks
//! run with a progress handler that interrupts them at a cut.
//! This copies the home's other SQLite databases; Signal's is read as a raw image instead
//! ([`crate::wal`]), still encrypted, at the cost of reading the file once. A keyed copy
//! made here is keyed with the same key, so the staging file is as encrypted as the original.

use std::collections::HashSet;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::cancel::Cancel;
use crate::cut_vfs::CutVfs;
use crate::profile::DbKey;

/// Pages copied per backup step: about 4 MiB, a few milliseconds between two looks at the
/// cancellation token.
const PAGES_PER_STEP: i32 = 1024;

/// SQLite virtual-machine instructions between two looks at the token during a check.
const OPS_PER_CHECK: i32 = 10_000;

/// The first 16 bytes of every unencrypted SQLite database file.
pub const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// What a snapshot or a check found.
#[derive(Debug, Clone)]
pub struct DbCheck {
    pub user_version: i64,
    /// "ok", or the first problems `quick_check`/`integrity_check` reported.
    pub result: String,
}

impl DbCheck {
    pub fn is_ok(&self) -> bool {
        self.result == "ok"
    }
}

/// Opens a database, applies the key if any and reads the schema, so a wrong key or a file
/// that is not a database fails here, with a message that says so.
pub(crate) fn open(path: &Path, flags: OpenFlags, key: Option<&DbKey>) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    if let Some(key) = key {
        // The statement holds the key: keep rusqlite's error (which may quote it) out.
        conn.execute_batch(&key.pragma())
            .map_err(|_| anyhow::anyhow!("cannot apply the key to {}", path.display()))?;
    }
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
        row.get::<_, i64>(0)
    })
    .map_err(|err| match err.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) if key.is_some() => anyhow::anyhow!(
            "cannot read {}: the database key is wrong, or the file is not a SQLCipher \
                 database (SQLITE_NOTADB)",
            path.display()
        ),
        Some(rusqlite::ErrorCode::NotADatabase) => {
            anyhow::anyhow!(
                "{} is not a SQLite database (SQLITE_NOTADB)",
                path.display()
            )
        }
        _ => anyhow::Error::new(err).context(format!("cannot read {}", path.display())),
    })?;
    Ok(conn)
}

/// Copies the live database at `source` into the new file `copy` as one consistent
/// snapshot, then, if `check`, runs `quick_check` (and on an encrypted one
/// `cipher_integrity_check`) on the copy; without, the result says
/// [`crate::manifest::NOT_CHECKED`]. `wait` bounds how long a locked source
/// (a rollback-journal database mid-write) may hold us up.
///
/// `listed` is the stat the walk recorded for `source`: the file SQLite opened must be
/// that one (same device and inode), or nothing is copied. SQLite opens by path, and the
/// home's owner can swap a directory on that path for a link at any moment.
pub fn snapshot(
    source: &Path,
    listed: &Metadata,
    copy: &Path,
    key: Option<&DbKey>,
    wait: Duration,
    check: bool,
    cancel: &Cancel,
) -> Result<DbCheck> {
    // Read-only: we never checkpoint, truncate or otherwise touch the live files. No link
    // is followed (SQLite refuses one anywhere in the path): the home's owner must not be
    // able to point us at a database outside it (see crate::home; callers pass a path
    // whose part above the home holds no link).
    let live = open(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        key,
    )?;
    check_opened(&live, source, listed)?;
    let mut staged = open(
        copy,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        key,
    )?;
    let started = Instant::now();
    begin_read(&live, source, wait, cancel)?;
    copy_pages(&live, &mut staged, source, wait, started, cancel)?;
    drop(live); // ends the read transaction
    let check = if check {
        run_check(&mut staged, copy, "quick_check", key, cancel)?
    } else {
        DbCheck {
            user_version: staged.query_row("PRAGMA user_version", [], |row| row.get(0))?,
            result: crate::manifest::NOT_CHECKED.to_string(),
        }
    };
    tracing::debug!(db = %source.display(), elapsed = ?started.elapsed(), "database snapshot taken");
    Ok(check)
}

/// Copies every page of `live` into `staged` with the online backup API, a step at a time
/// so that `cancel` is looked at between two; a locked source is waited for until `wait`
/// after `started`.
fn copy_pages(
    live: &Connection,
    staged: &mut Connection,
    source: &Path,
    wait: Duration,
    started: Instant,
    cancel: &Cancel,
) -> Result<()> {
    let backup = Backup::new(live, staged)
        .with_context(|| format!("cannot start snapshot of {}", source.display()))?;
    loop {
        cancel.check()?;
        match backup.step(PAGES_PER_STEP) {
            Ok(StepResult::Done) => return Ok(()),
            Ok(StepResult::More) => continue,
            Ok(StepResult::Busy | StepResult::Locked) if started.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(_) => bail!(
                "{} stayed locked for {:?}; another process holds a write lock on it",
                source.display(),
                wait
            ),
            Err(err) => {
                return Err(err).with_context(|| format!("cannot snapshot {}", source.display()));
            }
        }
    }
}

/// Fails unless the main database file `conn` holds open is the file `listed` describes.
pub(crate) fn check_opened(conn: &Connection, source: &Path, listed: &Metadata) -> Result<()> {
    let opened = main_file_descriptor(conn)
        .and_then(|fd| {
            // SAFETY: SQLite keeps this descriptor open while `conn` lives; we only fstat it.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            rustix::fs::fstat(fd).ok()
        })
        .with_context(|| {
            format!(
                "cannot tell which file SQLite opened for {}",
                source.display()
            )
        })?;
    if opened.st_dev != listed.dev() || opened.st_ino != listed.ino() {
        bail!(
            "{} is no longer the file listed (it, or a directory above it, was replaced by a \
             link or another file while it was opened): not snapshotted",
            source.display()
        );
    }
    Ok(())
}

/// The descriptor of `conn`'s main database file.
pub(crate) fn main_file_descriptor(conn: &Connection) -> Option<std::os::fd::RawFd> {
    file_descriptor(conn, rusqlite::ffi::SQLITE_FCNTL_FILE_POINTER)
}

/// The descriptor of the WAL file `conn` has open (in WAL mode, once it has read), or
/// `None` if it has none open.
pub(crate) fn wal_file_descriptor(conn: &Connection) -> Option<std::os::fd::RawFd> {
    file_descriptor(conn, rusqlite::ffi::SQLITE_FCNTL_JOURNAL_POINTER)
}

/// The descriptor of the file `opcode` asks SQLite for. SQLite has no call that returns
/// it: its file object (`struct unixFile` in sqlite3.c, the default VFS on Linux) starts
/// with three pointers and then the descriptor. `main_file_descriptor_is_the_database_file`
/// checks this against the bundled SQLite, so an upgrade that moves it fails that test.
fn file_descriptor(conn: &Connection, opcode: std::ffi::c_int) -> Option<std::os::fd::RawFd> {
    #[repr(C)]
    struct UnixFileHead {
        methods: *const std::ffi::c_void,
        vfs: *const std::ffi::c_void,
        inode: *const std::ffi::c_void,
        fd: std::ffi::c_int,
    }
    let mut file: *mut rusqlite::ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: a file-control call on a live connection; SQLite writes the pointer to its
    // own file object of the main database, valid while the connection is open.
    let (rc, vfs) = unsafe {
        let rc = rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            opcode,
            (&raw mut file).cast(),
        );
        let vfs = rusqlite::ffi::sqlite3_vfs_find(std::ptr::null());
        (rc, vfs)
    };
    // SAFETY: a file object SQLite returned; a closed one has no methods.
    if rc != rusqlite::ffi::SQLITE_OK
        || file.is_null()
        || vfs.is_null()
        || unsafe { (*file).pMethods.is_null() }
    {
        return None;
    }
    // SAFETY: the default VFS's name is a C string owned by SQLite.
    let vfs_name = unsafe { std::ffi::CStr::from_ptr((*vfs).zName) };
    if vfs_name != c"unix" {
        return None;
    }
    // SAFETY: with the "unix" VFS the file object is a unixFile (see above).
    Some(unsafe { (*file.cast::<UnixFileHead>()).fd })
}

/// Opens the read transaction the whole copy is made in, waiting up to `wait` for a
/// writer's lock on a rollback-journal database.
pub(crate) fn begin_read(
    live: &Connection,
    source: &Path,
    wait: Duration,
    cancel: &Cancel,
) -> Result<()> {
    let started = Instant::now();
    loop {
        cancel.check()?;
        let begun = live
            .execute_batch("BEGIN")
            .and_then(|()| live.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())));
        match begun {
            Ok(()) => return Ok(()),
            Err(err)
                if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && started.elapsed() < wait =>
            {
                let _ = live.execute_batch("ROLLBACK");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot start snapshot of {}", source.display()));
            }
        }
    }
}

/// Lets a cut interrupt whatever statement `conn` runs.
fn interruptible(conn: &mut Connection, cancel: &Cancel) -> Result<()> {
    let cancel = cancel.clone();
    conn.progress_handler(OPS_PER_CHECK, Some(move || cancel.is_cancelled()))?;
    Ok(())
}

/// A statement's error, or the cut that interrupted it.
fn cut_or<E: Into<anyhow::Error>>(cancel: &Cancel, err: E) -> anyhow::Error {
    if cancel.is_cancelled() {
        cancel.cancelled().into()
    } else {
        err.into()
    }
}

/// Runs the full `integrity_check` on a restored copy: the restore gate. The copy is in WAL
/// mode like the original; it is opened read-write (never created) so that closing it
/// removes the `-wal`/`-shm` files opening it made, leaving exactly the restored file.
pub fn integrity_check(path: &Path, key: Option<&DbKey>, cancel: &Cancel) -> Result<DbCheck> {
    if !path.is_file() {
        bail!("{} is missing", path.display());
    }
    let mut conn = open(path, OpenFlags::SQLITE_OPEN_READ_WRITE, key)?;
    run_check(&mut conn, path, "integrity_check", key, cancel)
}

/// Runs `quick_check` (and on an encrypted database `cipher_integrity_check`) on a copy
/// [`snapshot`] made without them. Opened read-write (never created), as the gate opens a
/// restored copy: closing it removes the `-wal`/`-shm` opening it made.
pub fn check_copy(copy: &Path, key: Option<&DbKey>, cancel: &Cancel) -> Result<DbCheck> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let mut conn = open(copy, flags, key)?;
    run_check(&mut conn, copy, "quick_check", key, cancel)
}

/// Runs `quick_check` or `integrity_check` table by table, skipping virtual tables: Signal's
/// full-text index uses Signal's own tokenizer, which only Signal registers, and a whole-
/// database check stops at it with "SQL logic error". The FTS shadow tables, which hold
/// the index's data, are ordinary tables and are checked. On an encrypted database,
/// `cipher_integrity_check` also verifies every page's HMAC.
fn run_check(
    conn: &mut Connection,
    path: &Path,
    pragma: &str,
    key: Option<&DbKey>,
    cancel: &Cancel,
) -> Result<DbCheck> {
    cancel.check()?;
    // Both read every page: side by side they take about as long as the longer one.
    let cipher = key.map(|key| CipherCheck::start(path, key)).transpose()?;
    interruptible(conn, cancel)?;
    let checked = check_tables(conn, pragma).map_err(|err| cut_or(cancel, err));
    conn.progress_handler(0, None::<fn() -> bool>)?;
    let problems = match cipher {
        Some(cipher) => cipher.wait(cancel)?,
        None => Vec::new(),
    };
    let mut check = checked?;
    if !problems.is_empty() {
        check.result = match check.result.as_str() {
            "ok" => problems.join("; "),
            tables => format!("{tables}; {}", problems.join("; ")),
        };
    }
    Ok(check)
}

/// `cipher_integrity_check` verifies every page's HMAC in one C loop that neither the
/// progress handler nor `sqlite3_interrupt` can stop: it runs on a connection and a thread
/// of its own, beside the table checks, reading through a [`CutVfs`]. A cut makes every
/// read of that VFS fail, so the loop ends within moments, and the thread is joined before
/// the check returns or is dropped, on every path. (A thread left running after a cut,
/// tearing down its SQLCipher and OpenSSL state while the process exited, raced OpenSSL's
/// exit-time cleanup: the likeliest cause of a `verify` that once died of SIGABRT.)
struct CipherCheck {
    worker: Option<std::thread::JoinHandle<()>>,
    outcome: std::sync::mpsc::Receiver<Result<Vec<String>>>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Reads through the check's VFS so far: how a test sees it at work.
    reads: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CipherCheck {
    fn start(path: &Path, key: &DbKey) -> Result<Self> {
        let vfs = CutVfs::register()?;
        let (cut, reads) = (vfs.cut(), vfs.reads());
        let (done, outcome) = std::sync::mpsc::channel();
        let (path, key) = (path.to_path_buf(), key.clone());
        let worker = std::thread::spawn(move || {
            let problems = Self::run(&vfs, &path, &key);
            let _ = done.send(problems);
            drop(vfs); // after the connection `run` closed
        });
        Ok(Self {
            worker: Some(worker),
            outcome,
            cut,
            reads,
        })
    }

    fn run(vfs: &CutVfs, path: &Path, key: &DbKey) -> Result<Vec<String>> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY;
        let conn = Connection::open_with_flags_and_vfs(path, flags, vfs.name())
            .with_context(|| format!("cannot open database {}", path.display()))?;
        // The statement holds the key: keep rusqlite's error (which may quote it) out.
        conn.execute_batch(&key.pragma())
            .map_err(|_| anyhow::anyhow!("cannot apply the key to {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        tracing::debug!(path = %path.display(), "cipher_integrity_check: verifying every page's HMAC");
        let mut statement = conn.prepare("PRAGMA cipher_integrity_check")?;
        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The problems it found. A cut stops the check and joins its thread (in `drop`).
    fn wait(self, cancel: &Cancel) -> Result<Vec<String>> {
        loop {
            match self.outcome.recv_timeout(Duration::from_millis(50)) {
                Ok(problems) => return problems,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if cancel.is_cancelled() => {
                    let reads = self.reads.load(std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(reads, "cut: stopping cipher_integrity_check");
                    return Err(cancel.cancelled().into());
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("cipher_integrity_check stopped without an answer")
                }
            }
        }
    }
}

impl Drop for CipherCheck {
    fn drop(&mut self) {
        // Harmless once it answered; otherwise what ends it.
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn check_tables(conn: &Connection, pragma: &str) -> Result<DbCheck> {
    let user_version = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND coalesce(sql, '') NOT LIKE 'CREATE VIRTUAL TABLE%'",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut problems = Vec::new();
    for table in tables {
        let sql = format!("PRAGMA {pragma}(\"{}\")", table.replace('"', "\"\""));
        let mut statement = conn.prepare(&sql)?;
        for row in statement.query_map([], |row| row.get::<_, String>(0))? {
            let row = row?;
            if row != "ok" && problems.len() < 20 {
                problems.push(row);
            }
        }
    }
    let result = if problems.is_empty() {
        "ok".to_string()
    } else {
        problems.join("; ")
    };
    Ok(DbCheck {
        user_version,
        result,
    })
}

/// The `user_version` of the database copy at `path` (Signal's schema version).
pub fn user_version(path: &Path, key: &DbKey) -> Result<i64> {
    let conn = open(path, OpenFlags::SQLITE_OPEN_READ_ONLY, Some(key))?;
    Ok(conn.query_row("PRAGMA user_version", [], |row| row.get(0))?)
}

/// Runs `cipher_integrity_check` on the database copy at `path`: every page's HMAC with
/// `key`. Returns the problems it found (none: every page authenticates). Opened
/// read-write (never created) as the last connection, so closing it removes the
/// `-wal`/`-shm` opening it made, leaving exactly the file.
pub fn cipher_check(path: &Path, key: &DbKey, cancel: &Cancel) -> Result<Vec<String>> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = open(path, flags, Some(key))?;
    let problems = CipherCheck::start(path, key)?.wait(cancel)?;
    conn.close().map_err(|(_, err)| err)?;
    Ok(problems)
}

/// Opens the database copy at `path` with `key` and reads its schema: SQLCipher itself
/// decrypts page 1 and the schema's pages, so the key and the cipher settings are ones it
/// reads. Read-write (never created) as the last connection, so closing it removes the
/// `-wal`/`-shm` opening it made, leaving exactly the file.
pub fn opens_with_key(path: &Path, key: &DbKey) -> Result<()> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = open(path, flags, Some(key))?;
    conn.close().map_err(|(_, err)| err)?;
    Ok(())
}

/// Attachment files a Signal database references, as `xx/<64 hex>` paths relative to a
/// `*.noindex` directory. Schema-agnostic: every text column whose name ends in "path"
/// (Signal's `message_attachments.path`, `thumbnailPath`, stickers' `path`, …) is read,
/// and values of the attachment-path shape are kept.
pub fn attachment_references(db: &Path, key: &DbKey, cancel: &Cancel) -> Result<HashSet<String>> {
    let mut conn = open(db, OpenFlags::SQLITE_OPEN_READ_ONLY, Some(key))?;
    interruptible(&mut conn, cancel)?;
    references(&conn).map_err(|err| cut_or(cancel, err))
}

/// [`attachment_references`] of the database `conn` has open (in its transaction, if any).
pub(crate) fn references_of(conn: &mut Connection, cancel: &Cancel) -> Result<HashSet<String>> {
    interruptible(conn, cancel)?;
    let found = references(conn).map_err(|err| cut_or(cancel, err));
    conn.progress_handler(0, None::<fn() -> bool>)?;
    found
}

fn references(conn: &Connection) -> Result<HashSet<String>> {
    let mut columns = Vec::new();
    let mut tables = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
    for table in tables.query_map([], |row| row.get::<_, String>(0))? {
        let table = table?;
        let mut info = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
        for column in info.query_map([&table], |row| row.get::<_, String>(0))? {
            let column = column?;
            if column.to_ascii_lowercase().ends_with("path") {
                columns.push((table.clone(), column));
            }
        }
    }
    let mut found = HashSet::new();
    for (table, column) in columns {
        let sql = format!(
            "SELECT DISTINCT \"{}\" FROM \"{}\" WHERE typeof(\"{0}\") = 'text'",
            column.replace('"', "\"\""),
            table.replace('"', "\"\"")
        );
        let mut statement = conn.prepare(&sql)?;
        for value in statement.query_map([], |row| row.get::<_, String>(0))? {
            let value = value?;
            if is_attachment_path(&value) {
                found.insert(value);
            }
        }
    }
    Ok(found)
}

/// `xx/<64 hex>` where `xx` is the name's first two digits: how Signal names the files in
/// `attachments.noindex` and its siblings.
pub fn is_attachment_path(value: &str) -> bool {
    match value.split_once('/') {
        Some((dir, name)) => {
            dir.len() == 2
                && name.len() == 64
                && name.starts_with(dir)
                && name.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The descriptors this process holds open on `path`.
    fn descriptors_of(path: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target == path)
            .count()
    }

    /// A cut while `cipher_integrity_check` reads the pages (an uninterruptible C loop)
    /// stops it and joins its thread before the check returns: afterwards nothing holds
    /// the database open, and only part of its pages were read. (Before, the cut returned at
    /// once and left the thread reading the rest.)
    #[test]
    fn a_cut_stops_the_cipher_check_and_joins_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("large.sqlite");
        let key = DbKey::from_hex(&"5a".repeat(32)).unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&key.pragma()).unwrap();
        // One 3,900-byte row a page: 64 MiB.
        conn.execute_batch(
            "CREATE TABLE t(x);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 16384)
             INSERT INTO t SELECT randomblob(3900) FROM n;",
        )
        .unwrap();
        drop(conn);
        let pages = std::fs::metadata(&path).unwrap().len() / 4096;
        let cancel = Cancel::new();
        let check = CipherCheck::start(&path, &key).unwrap();
        let reads = check.reads.clone();
        let started = Instant::now();
        // The event: the check reads the pages.
        while reads.load(std::sync::atomic::Ordering::Relaxed) < 100 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the check never read"
            );
            std::thread::yield_now();
        }
        cancel.cancel();
        let err = check.wait(&cancel).unwrap_err();
        assert!(
            err.downcast_ref::<crate::cancel::Cancelled>().is_some(),
            "{err:#}"
        );
        assert_eq!(
            descriptors_of(&path),
            0,
            "the check still holds the database open"
        );
        let read = reads.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("{read} of {pages} pages read before the cut stopped the check");
        assert!(
            read < pages,
            "the check read all {pages} pages despite the cut"
        );
    }

    #[test]
    fn attachment_path_shape() {
        let name = format!("ab{}", "0".repeat(62));
        assert!(is_attachment_path(&format!("ab/{name}")));
        assert!(!is_attachment_path(&format!("cd/{name}")));
        assert!(!is_attachment_path("ab/short"));
        assert!(!is_attachment_path("/etc/passwd"));
    }

    #[test]
    fn snapshot_of_a_wal_database_holds_uncheckpointed_commits() {
        let dir = tempfile::tempdir().unwrap();
        let live_path = dir.path().join("live.sqlite");
        let key = DbKey::from_hex(&"5a".repeat(32)).unwrap();
        let live = Connection::open(&live_path).unwrap();
        live.execute_batch(&key.pragma()).unwrap();
        live.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);",
        )
        .unwrap();
        // `live` stays open: the rows exist only in the -wal file.
        let copy = dir.path().join("copy.sqlite");
        let check = snapshot(
            &live_path,
            &std::fs::metadata(&live_path).unwrap(),
            &copy,
            Some(&key),
            Duration::from_secs(1),
            true,
            &Cancel::new(),
        )
        .unwrap();
        assert!(check.is_ok(), "{check:?}");
        let restored = open(&copy, OpenFlags::SQLITE_OPEN_READ_ONLY, Some(&key)).unwrap();
        let rows: i64 = restored
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 3);
        let wrong = DbKey::from_hex(&"00".repeat(32)).unwrap();
        let err = integrity_check(&copy, Some(&wrong), &Cancel::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("key is wrong"), "{err}");
        assert!(
            !std::fs::read(&copy).unwrap().starts_with(SQLITE_HEADER),
            "copy must stay encrypted"
        );
    }

    /// With small steps and no held read transaction, every commit of the writer restarts
    /// the backup (SIGNAL.md); inside one read transaction it finishes, and holds exactly
    /// the rows committed before it began.
    #[test]
    fn stepped_snapshot_finishes_while_another_connection_keeps_writing() {
        let dir = tempfile::tempdir().unwrap();
        let live_path = dir.path().join("live.sqlite");
        let live = Connection::open(&live_path).unwrap();
        live.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t(x);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
             INSERT INTO t SELECT randomblob(4000) FROM n;",
        )
        .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut commits = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    live.execute("INSERT INTO t VALUES (randomblob(100))", [])
                        .unwrap();
                    commits += 1;
                }
                commits
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        let (done, result) = std::sync::mpsc::channel();
        let copy = dir.path().join("copy.sqlite");
        let listed = std::fs::metadata(&live_path).unwrap();
        std::thread::spawn(move || {
            let check = snapshot(
                &live_path,
                &listed,
                &copy,
                None,
                Duration::from_secs(5),
                true,
                &Cancel::new(),
            );
            let rows: Option<i64> = Connection::open(&copy)
                .ok()
                .and_then(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).ok());
            done.send((check.map(|c| c.result), rows)).unwrap();
        });
        let outcome = result.recv_timeout(Duration::from_secs(60));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let commits = writer.join().unwrap();
        let (check, rows) = outcome.expect("the snapshot never finished while the writer ran");
        assert_eq!(check.unwrap(), "ok");
        assert!(rows.unwrap() >= 5000, "{rows:?}");
        assert!(commits > 0);
    }

    #[test]
    fn main_file_descriptor_is_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        let fd = main_file_descriptor(&conn).expect("the unix VFS's descriptor");
        // SAFETY: the connection holds it open.
        let opened = rustix::fs::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }).unwrap();
        assert_eq!(opened.st_ino, std::fs::metadata(&path).unwrap().ino());
    }

    /// What SQLite opened is compared with the listing, not what the path names later: a
    /// database other than the listed one is never copied.
    #[test]
    fn a_database_that_is_not_the_listed_file_is_not_snapshotted() {
        let dir = tempfile::tempdir().unwrap();
        let live_path = dir.path().join("live.sqlite");
        Connection::open(&live_path)
            .unwrap()
            .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, b"listed").unwrap();
        let listed = std::fs::metadata(&other).unwrap();
        let copy = dir.path().join("copy.sqlite");
        let err = snapshot(
            &live_path,
            &listed,
            &copy,
            None,
            Duration::from_secs(1),
            true,
            &Cancel::new(),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("no longer the file listed"),
            "{err:#}"
        );
        assert!(!copy.exists() || std::fs::metadata(&copy).unwrap().len() == 0);
    }

    #[test]
    fn a_cut_stops_the_copy_and_the_checks() {
        let dir = tempfile::tempdir().unwrap();
        let live_path = dir.path().join("live.sqlite");
        Connection::open(&live_path)
            .unwrap()
            .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        let cancel = Cancel::new();
        cancel.enter("database snapshot").unwrap();
        cancel.cancel();
        let copy = dir.path().join("copy.sqlite");
        let listed = std::fs::metadata(&live_path).unwrap();
        let err = snapshot(
            &live_path,
            &listed,
            &copy,
            None,
            Duration::from_secs(1),
            true,
            &cancel,
        )
        .unwrap_err();
        assert!(crate::cancel::is_cancelled(&err), "{err:#}");
        let err = integrity_check(&live_path, None, &cancel).unwrap_err();
        assert!(crate::cancel::is_cancelled(&err), "{err:#}");
    }
}
