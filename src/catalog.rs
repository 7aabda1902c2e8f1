//! The local catalog (SQLite): the snapshots this host committed and the file index of the
//! latest one, so the next backup can tell what changed without downloading anything.
//!
//! It is a cache, never the source of truth. It lives on the data volume (default
//! `.ghostwire-backup-catalog.sqlite` in the home, which backups skip) so it survives pod
//! restarts; a restore writes one into the volume it restores, from the snapshot's index.
//! If it is lost, or belongs to another repository, the next backup is simply a full one:
//! the backup side holds no secret key, so it cannot read the encrypted indexes back.
//!
//! Schema changes are SQL files in `migrations/`, applied in order at open; the database's
//! `user_version` counts those applied.
//!
//! It lives where the desktop user can write, and the agent may run as root, so nothing in
//! it is trusted: [`Catalog::open_cache`] never follows a link to it and sets aside one it
//! cannot use (garbage, a newer schema) instead of stopping the backup, and the next backup
//! uses its rows only if they hash to the [`digest`] the parent snapshot's manifest records
//! (a rewritten row could otherwise make a changed file look unchanged).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::index::{DbChain, EntryKind, IndexEntry};
use crate::manifest::Manifest;
use crate::raw_pages::{RawPageHash, RawPageList};

pub const DEFAULT_NAME: &str = ".ghostwire-backup-catalog.sqlite";

/// Every migration, in order. Append only: never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_catalog.sql"),
    include_str!("../migrations/0002_chains.sql"),
    include_str!("../migrations/0003_db_stamp.sql"),
    include_str!("../migrations/0004_db_pages.sql"),
];

pub struct Catalog {
    conn: Connection,
}

/// Where the latest snapshot sits in its chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    pub id: String,
    pub chain_length: u32,
    pub full_id: String,
    /// When the chain's full snapshot was taken, if the catalog knows.
    pub full_finished_at: Option<DateTime<Utc>>,
}

/// SQLite's companion files of a database: a stale one would be replayed into a fresh one.
const COMPANIONS: &[&str] = &["-journal", "-wal", "-shm"];

impl Catalog {
    /// Opens the catalog at `path`, never through a symbolic link (SQLite's own
    /// `SQLITE_OPEN_NOFOLLOW`; it opens the journal and WAL with `O_NOFOLLOW` as well).
    pub fn open(path: &Path) -> Result<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let conn = Connection::open_with_flags(path, flags)
            .with_context(|| format!("cannot open the catalog {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mut catalog = Self { conn };
        catalog
            .migrate()
            .and_then(|()| catalog.check())
            .with_context(|| format!("cannot prepare the catalog {}", path.display()))?;
        Ok(catalog)
    }

    /// Opens the catalog as the cache it is: a symbolic link in its place (or in place of
    /// its journal or WAL) is removed, never followed; a catalog that cannot be used (not
    /// SQLite, damaged, from a newer version) is moved aside; either way a fresh one is
    /// started, with a warning, and the next snapshot is a full one.
    pub fn open_cache(path: &Path) -> Result<Self> {
        for suffix in std::iter::once("").chain(COMPANIONS.iter().copied()) {
            let file = with_suffix(path, suffix);
            if std::fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_symlink()) {
                tracing::warn!(catalog = %file.display(), "the catalog is a symbolic link: not following it; removing the link and starting a fresh catalog (the next snapshot is a full one)");
                std::fs::remove_file(&file)
                    .with_context(|| format!("cannot remove the link {}", file.display()))?;
            }
        }
        let is_file = std::fs::symlink_metadata(path).map(|m| m.is_file());
        let problem = match is_file {
            Ok(false) => anyhow::anyhow!("it is not a regular file"),
            Err(_) => return Self::open(path),
            Ok(true) => match Self::open(path) {
                Ok(catalog) => return Ok(catalog),
                Err(err) => err,
            },
        };
        let aside = set_aside(path)?;
        tracing::warn!(
            catalog = %path.display(),
            moved_to = %aside.display(),
            error = format!("{problem:#}"),
            "the catalog cannot be used (not a catalog, damaged, or from a newer version): moved it aside and starting a fresh one; taking a full snapshot"
        );
        Self::open(path)
    }

    /// The statements the catalog's readers use all prepare, and the file is sound.
    fn check(&self) -> Result<()> {
        let check: String = self
            .conn
            .query_row("PRAGMA quick_check", [], |row| row.get(0))?;
        if check != "ok" {
            bail!("quick_check: {check}");
        }
        for sql in [
            "SELECT path, kind, size, mtime_ns, ctime_ns, ino, mode, uid, gid, sha256, archive, db_stamp, db_chain FROM files LIMIT 0",
            "SELECT digest, list FROM page_lists LIMIT 0",
            "SELECT id, kind, parent, finished_at, chain_length, full_id FROM snapshots LIMIT 0",
            "SELECT key, value FROM state LIMIT 0",
        ] {
            self.conn.prepare(sql)?;
        }
        Ok(())
    }

    /// Applies the migrations this catalog has not seen yet.
    pub fn migrate(&mut self) -> Result<()> {
        self.migrate_to(MIGRATIONS.len())
    }

    fn migrate_to(&mut self, target: usize) -> Result<()> {
        let applied: usize = self
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))?
            as usize;
        if applied > MIGRATIONS.len() {
            bail!(
                "the catalog was written by a newer ghostwire-backup (schema {applied}); delete it to start over (the next backup is then a full one)"
            );
        }
        for (number, sql) in MIGRATIONS.iter().enumerate().take(target).skip(applied) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)
                .with_context(|| format!("migration {} failed", number + 1))?;
            tx.pragma_update(None, "user_version", (number + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// The latest snapshot recorded for `repository`, if the catalog belongs to it.
    pub fn latest(&self, repository: &str) -> Result<Option<Latest>> {
        if self.state("repository")?.as_deref() != Some(repository) {
            return Ok(None);
        }
        let Some(id) = self.state("latest")? else {
            return Ok(None);
        };
        self.conn
            .query_row(
                "SELECT s.chain_length, s.full_id, f.finished_at FROM snapshots s
                 LEFT JOIN snapshots f ON f.id = s.full_id WHERE s.id = ?1",
                [&id],
                |row| {
                    Ok(Latest {
                        id: id.clone(),
                        chain_length: row.get(0)?,
                        full_id: row
                            .get::<_, Option<String>>(1)?
                            .unwrap_or_else(|| id.clone()),
                        full_finished_at: row
                            .get::<_, Option<String>>(2)?
                            .and_then(|t| t.parse().ok()),
                    })
                },
            )
            .optional()
            .map_err(Into::into)
    }

    fn state(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM state WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?)
    }

    /// The file index of the latest snapshot, by path.
    pub fn index(&self) -> Result<HashMap<PathBuf, IndexEntry>> {
        let mut statement = self.conn.prepare(
            "SELECT path, kind, size, mtime_ns, ctime_ns, ino, mode, uid, gid, sha256, archive, db_stamp, db_chain FROM files",
        )?;
        let rows = statement.query_map([], |row| {
            let path = PathBuf::from(OsStr::from_bytes(&row.get::<_, Vec<u8>>(0)?));
            let kind = match row.get::<_, String>(1)?.as_str() {
                "file" => EntryKind::File,
                "directory" => EntryKind::Directory,
                "symlink" => EntryKind::Symlink,
                _ => EntryKind::Deleted,
            };
            Ok(IndexEntry {
                path,
                kind,
                size: row.get::<_, i64>(2)? as u64,
                mtime_ns: row.get(3)?,
                ctime_ns: row.get(4)?,
                ino: row.get::<_, i64>(5)? as u64,
                mode: row.get(6)?,
                uid: row.get(7)?,
                gid: row.get(8)?,
                sha256: row.get(9)?,
                archive: row.get(10)?,
                db_stamp: row.get(11)?,
                db_chain: match row.get::<_, Option<String>>(12)? {
                    // A row that does not parse is an error, not a database without
                    // deltas: the backup then distrusts the catalog and starts a full one.
                    Some(json) => Some(serde_json::from_str(&json).map_err(|err| {
                        rusqlite::Error::FromSqlConversionFailure(
                            12,
                            rusqlite::types::Type::Text,
                            Box::new(err),
                        )
                    })?),
                    None => None,
                },
            })
        })?;
        let mut index = HashMap::new();
        for entry in rows {
            let entry = entry?;
            index.insert(entry.path.clone(), entry);
        }
        Ok(index)
    }

    /// The page list of Signal's database whose digest is `digest`, if the catalog holds
    /// it and it still hashes so (the catalog is on the user's volume).
    /// A decrypted list (formats 1 and 2) never hashes as a raw one: it is not found.
    /// An error only if the catalog cannot be read.
    pub fn page_list(&self, digest: &str) -> Result<Option<RawPageList>> {
        let row: Option<(i64, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT rowid, length(list) FROM page_lists
                 WHERE digest = ?1 AND typeof(list) = 'blob'",
                [digest],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((rowid, Some(len))) = row else {
            return Ok(None);
        };
        let list = read_page_list(&self.conn, rowid, len)?;
        Ok(list.filter(|list| list.digest_hex() == digest))
    }

    /// Records a committed snapshot and makes `entries` the latest index, and `pages` the
    /// page list of its Signal database, atomically.
    pub fn record(
        &mut self,
        repository: &str,
        manifest: &Manifest,
        entries: &[IndexEntry],
        pages: Option<&RawPageList>,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        insert_snapshot(&tx, manifest)?;
        tx.execute("DELETE FROM files", [])?;
        tx.execute("DELETE FROM page_lists", [])?;
        if let Some(list) = pages {
            write_page_list(&tx, list)?;
        }
        {
            let mut insert = tx.prepare(
                "INSERT INTO files (path, kind, size, mtime_ns, ctime_ns, ino, mode, uid, gid, sha256, archive, db_stamp, db_chain)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for e in entries {
                insert.execute(params![
                    e.path.as_os_str().as_bytes(),
                    kind_name(e.kind),
                    e.size as i64,
                    e.mtime_ns,
                    e.ctime_ns,
                    e.ino as i64,
                    e.mode,
                    e.uid,
                    e.gid,
                    e.sha256,
                    e.archive,
                    e.db_stamp,
                    e.db_chain.as_ref().map(json_text)
                ])?;
            }
        }
        for (key, value) in [("repository", repository), ("latest", manifest.id.as_str())] {
            tx.execute(
                "INSERT OR REPLACE INTO state (key, value) VALUES (?1, ?2)",
                params![key, value],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a snapshot other than the latest: on a restored volume, the chain's full
    /// snapshot, whose age decides when the next full one is due.
    pub fn record_snapshot(&mut self, manifest: &Manifest) -> Result<()> {
        insert_snapshot(&self.conn, manifest)
    }
}

fn insert_snapshot(conn: &Connection, manifest: &Manifest) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO snapshots (id, kind, parent, finished_at, chain_length, full_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            manifest.id,
            if manifest.parent.is_some() {
                "incremental"
            } else {
                "full"
            },
            manifest.parent,
            manifest.finished_at.to_rfc3339(),
            manifest.chain_length,
            manifest.full_id(),
        ],
    )?;
    Ok(())
}

/// A page list's row: the page size (u32, big-endian), then the hashes. It is written and
/// read in place through SQLite's incremental blob I/O, never built or bound whole: a
/// list is 16 bytes a page (8 MiB at 2 GiB), and a bound blob is copied by SQLite and
/// again into its record.
fn write_page_list(conn: &Connection, list: &RawPageList) -> Result<()> {
    let len = 4 + std::mem::size_of_val(list.hashes.as_slice());
    conn.execute(
        "INSERT INTO page_lists (digest, list) VALUES (?1, zeroblob(?2))",
        params![list.digest_hex(), len as i64],
    )?;
    let rowid = conn.last_insert_rowid();
    let mut blob = conn.blob_open(rusqlite::MAIN_DB, c"page_lists", c"list", rowid, false)?;
    blob.write_all(&list.page_size.to_be_bytes())?;
    blob.write_all(list.hashes.as_flattened())?;
    blob.close()?;
    Ok(())
}

/// The page list in row `rowid`, `len` bytes long; `None` if it is not one.
fn read_page_list(conn: &Connection, rowid: i64, len: i64) -> Result<Option<RawPageList>> {
    let Some(hashes_len) = usize::try_from(len).ok().and_then(|len| len.checked_sub(4)) else {
        return Ok(None);
    };
    if !hashes_len.is_multiple_of(16) {
        return Ok(None);
    }
    let mut blob = conn.blob_open(rusqlite::MAIN_DB, c"page_lists", c"list", rowid, true)?;
    let mut page_size = [0u8; 4];
    blob.read_exact(&mut page_size)?;
    let mut hashes = vec![RawPageHash::default(); hashes_len / 16];
    blob.read_exact(hashes.as_flattened_mut())?;
    Ok(Some(RawPageList {
        page_size: u32::from_be_bytes(page_size),
        hashes,
    }))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// Renames the catalog and its companions to `<name>.unusable-<time>` (a rename moves a
/// link or a directory itself, never what it points at); returns the new name.
fn set_aside(path: &Path) -> Result<PathBuf> {
    let aside = with_suffix(
        path,
        &format!(".unusable-{}", Utc::now().format("%Y%m%dT%H%M%S%.9fZ")),
    );
    std::fs::rename(path, &aside).with_context(|| {
        format!(
            "cannot move the unusable catalog {} aside; remove it (it is only a cache)",
            path.display()
        )
    })?;
    for suffix in COMPANIONS {
        let companion = with_suffix(path, suffix);
        if std::fs::symlink_metadata(&companion).is_ok() {
            std::fs::rename(&companion, with_suffix(&aside, suffix))?;
        }
    }
    Ok(aside)
}

/// SHA-256 over the file rows of one snapshot's index, in a canonical order (by path bytes)
/// and encoding (every field, length-prefixed or fixed-width): what a snapshot's manifest
/// records as `catalog_digest`, computed from the entries a backup (or a restore) writes
/// into the catalog, and again from the rows the next backup reads back.
pub fn digest<'a>(entries: impl IntoIterator<Item = &'a IndexEntry>) -> String {
    fn bytes(hash: &mut Sha256, value: &[u8]) {
        hash.update((value.len() as u64).to_le_bytes());
        hash.update(value);
    }
    fn optional(hash: &mut Sha256, value: Option<&str>) {
        match value {
            None => hash.update([0]),
            Some(text) => {
                hash.update([1]);
                bytes(hash, text.as_bytes());
            }
        }
    }
    let mut sorted: Vec<&IndexEntry> = entries.into_iter().collect();
    sorted.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    let mut hash = Sha256::new();
    hash.update(b"ghostwire-backup catalog digest 1\n");
    for e in sorted {
        bytes(&mut hash, e.path.as_os_str().as_bytes());
        bytes(&mut hash, kind_name(e.kind).as_bytes());
        for number in [e.size, e.mtime_ns as u64, e.ctime_ns as u64, e.ino] {
            hash.update(number.to_le_bytes());
        }
        for number in [e.mode, e.uid, e.gid] {
            hash.update(number.to_le_bytes());
        }
        optional(&mut hash, e.sha256.as_deref());
        optional(&mut hash, e.archive.as_deref());
        // Only where present, so rows without one hash as they did before it existed.
        if let Some(stamp) = &e.db_stamp {
            hash.update([2]);
            bytes(&mut hash, stamp.as_bytes());
        }
        if let Some(chain) = &e.db_chain {
            hash.update([3]);
            bytes(&mut hash, json_text(chain).as_bytes());
        }
    }
    hex::encode(hash.finalize())
}

fn json_text(chain: &DbChain) -> String {
    serde_json::to_string(chain).expect("a DbChain serializes")
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "file",
        EntryKind::Directory => "directory",
        EntryKind::Symlink => "symlink",
        EntryKind::Deleted => "deleted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_catalog_is_upgraded_in_place_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        {
            // A catalog as the first release wrote it: schema 1 only.
            let mut old = Catalog {
                conn: Connection::open(&path).unwrap(),
            };
            old.migrate_to(1).unwrap();
            old.conn
                .execute_batch(
                    "INSERT INTO snapshots (id, kind, parent, finished_at) VALUES ('s1', 'full', NULL, '2026-11-01T00:00:00Z');
                     INSERT INTO state VALUES ('repository', 's3://b/p'), ('latest', 's1');
                     INSERT INTO files VALUES (x'612f62', 'file', 3, 1, 2, 3, 420, 1000, 0, 'ab', 's1');",
                )
                .unwrap();
        }
        let catalog = Catalog::open(&path).unwrap();
        let version: i64 = catalog
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
        let latest = catalog.latest("s3://b/p").unwrap().unwrap();
        assert_eq!((latest.chain_length, latest.full_id.as_str()), (0, "s1"));
        assert!(latest.full_finished_at.is_some());
        assert_eq!(
            catalog.index().unwrap()[Path::new("a/b")]
                .archive
                .as_deref(),
            Some("s1")
        );
        assert!(
            catalog.latest("s3://other/repo").unwrap().is_none(),
            "a catalog of another repository is not used"
        );
    }

    #[test]
    fn a_catalog_from_a_newer_version_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = format!("{:#}", Catalog::open(&path).err().unwrap());
        assert!(
            err.contains("newer ghostwire-backup") && err.contains("delete it"),
            "{err}"
        );
    }

    fn entries() -> Vec<IndexEntry> {
        let metadata = std::fs::metadata(".").unwrap();
        let mut file = IndexEntry::new(Path::new("b/file"), EntryKind::File, &metadata);
        file.sha256 = Some("ab".repeat(32));
        file.archive = Some("s1".into());
        let mut db = file.clone();
        db.path = PathBuf::from("c/db.sqlite");
        db.db_stamp = Some("db:1:2:3:4.000000005:6.000000007".into());
        vec![
            file,
            db,
            IndexEntry::new(Path::new("a"), EntryKind::Directory, &metadata),
            IndexEntry::tombstone(Path::new(OsStr::from_bytes(b"caf\xe9"))),
        ]
    }

    fn manifest(id: &str) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "format": 1, "id": id, "started_at": "2026-11-01T00:00:00Z",
            "finished_at": "2026-11-01T00:00:00Z", "agent_version": "t",
            "archive": {"key": "k", "size": 0, "sha256": "", "encoding": ""},
            "content": {"files": 0, "directories": 0, "symlinks": 0, "bytes": 0,
                        "sqlite_snapshots": 0, "changed_while_read": 0, "vanished": 0},
            "signal_db": null
        }))
        .unwrap()
    }

    #[test]
    fn a_page_list_recorded_is_read_back_whole_and_a_changed_one_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut catalog = Catalog::open(&dir.path().join("c.sqlite")).unwrap();
        let list = RawPageList {
            page_size: 4096,
            hashes: (0..1001u32)
                .map(|n| crate::raw_pages::raw_page_hash(&n.to_le_bytes()))
                .collect(),
        };
        let digest = list.digest_hex();
        catalog
            .record("r", &manifest("s1"), &entries(), Some(&list))
            .unwrap();
        assert_eq!(catalog.page_list(&digest).unwrap(), Some(list.clone()));
        assert_eq!(catalog.page_list(&"0".repeat(64)).unwrap(), None);
        let mut changed = list.clone();
        changed.hashes[500][3] ^= 1;
        catalog.conn.execute("DELETE FROM page_lists", []).unwrap();
        write_page_list(&catalog.conn, &changed).unwrap();
        catalog
            .conn
            .execute("UPDATE page_lists SET digest = ?1", [&digest])
            .unwrap();
        assert_eq!(catalog.page_list(&digest).unwrap(), None, "a changed hash");
        for tamper in [
            "UPDATE page_lists SET list = zeroblob(16020)",
            "UPDATE page_lists SET list = substr(list, 1, 16007)",
            "UPDATE page_lists SET list = x'0000'",
            "UPDATE page_lists SET list = 'text'",
        ] {
            catalog.conn.execute(tamper, []).unwrap();
            assert_eq!(catalog.page_list(&digest).unwrap(), None, "{tamper}");
        }
    }

    #[test]
    fn the_digest_of_the_rows_read_back_is_the_digest_of_the_entries_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut catalog = Catalog::open(&dir.path().join("c.sqlite")).unwrap();
        let entries = entries();
        catalog
            .record("r", &manifest("s1"), &entries, None)
            .unwrap();
        let expected = digest(&entries);
        let mut reversed = entries.clone();
        reversed.reverse();
        assert_eq!(digest(&reversed), expected, "the order must not matter");
        assert_eq!(digest(catalog.index().unwrap().values()), expected);
        // Any rewritten field shows, the database's stamp included.
        for update in [
            "UPDATE files SET mtime_ns = mtime_ns + 1 WHERE path = x'622f66696c65'",
            "UPDATE files SET db_stamp = 'db:absent' WHERE db_stamp IS NOT NULL",
        ] {
            catalog
                .record("r", &manifest("s1"), &entries, None)
                .unwrap();
            catalog.conn.execute(update, []).unwrap();
            assert_ne!(
                digest(catalog.index().unwrap().values()),
                expected,
                "{update}"
            );
        }
    }

    #[test]
    fn an_unusable_catalog_is_set_aside_and_a_fresh_one_started() {
        let dir = tempfile::tempdir().unwrap();
        let newer = dir.path().join("newer.sqlite");
        Connection::open(&newer)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let garbage = dir.path().join("garbage.sqlite");
        std::fs::write(&garbage, b"not a database at all, just bytes".repeat(200)).unwrap();
        let directory = dir.path().join("directory.sqlite");
        std::fs::create_dir(&directory).unwrap();
        for path in [&newer, &garbage, &directory] {
            let mut catalog = Catalog::open_cache(path).unwrap();
            catalog
                .record("r", &manifest("s1"), &entries(), None)
                .unwrap();
            assert_eq!(catalog.latest("r").unwrap().unwrap().id, "s1");
        }
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".unusable-")
            })
            .count();
        assert_eq!(aside, 3, "each unusable catalog is kept aside");
    }

    #[test]
    fn a_symlinked_catalog_is_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"precious").unwrap();
        let missing = dir.path().join("would-be-created");
        let path = dir.path().join("catalog.sqlite");
        for target in [&outside, &missing] {
            std::os::unix::fs::symlink(target, &path).unwrap();
            std::os::unix::fs::symlink(target, with_suffix(&path, "-journal")).unwrap();
            let mut catalog = Catalog::open_cache(&path).unwrap();
            catalog
                .record("r", &manifest("s1"), &entries(), None)
                .unwrap();
            drop(catalog);
            assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
            std::fs::remove_file(&path).unwrap();
        }
        assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
        assert!(!missing.exists(), "a file was created through the link");
        let err = format!("{:#}", {
            std::os::unix::fs::symlink(&outside, &path).unwrap();
            Catalog::open(&path).err().unwrap()
        });
        assert!(err.contains("cannot open the catalog"), "{err}");
    }
}
