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

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use crate::index::{EntryKind, IndexEntry};
use crate::manifest::Manifest;

pub const DEFAULT_NAME: &str = ".ghostwire-backup-catalog.sqlite";

/// Every migration, in order. Append only: never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_catalog.sql"),
    include_str!("../migrations/0002_chains.sql"),
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

impl Catalog {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open the catalog {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mut catalog = Self { conn };
        catalog
            .migrate()
            .with_context(|| format!("cannot prepare the catalog {}", path.display()))?;
        Ok(catalog)
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
            "SELECT path, kind, size, mtime_ns, ctime_ns, ino, mode, uid, gid, sha256, archive FROM files",
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
            })
        })?;
        let mut index = HashMap::new();
        for entry in rows {
            let entry = entry?;
            index.insert(entry.path.clone(), entry);
        }
        Ok(index)
    }

    /// Records a committed snapshot and makes `entries` the latest index, atomically.
    pub fn record(
        &mut self,
        repository: &str,
        manifest: &Manifest,
        entries: &[IndexEntry],
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO snapshots (id, kind, parent, finished_at, chain_length, full_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                manifest.id,
                if manifest.parent.is_some() { "incremental" } else { "full" },
                manifest.parent,
                manifest.finished_at.to_rfc3339(),
                manifest.chain_length,
                manifest.full_id(),
            ],
        )?;
        tx.execute("DELETE FROM files", [])?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO files (path, kind, size, mtime_ns, ctime_ns, ino, mode, uid, gid, sha256, archive)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for e in entries {
                let kind = match e.kind {
                    EntryKind::File => "file",
                    EntryKind::Directory => "directory",
                    EntryKind::Symlink => "symlink",
                    EntryKind::Deleted => "deleted",
                };
                insert.execute(params![
                    e.path.as_os_str().as_bytes(),
                    kind,
                    e.size as i64,
                    e.mtime_ns,
                    e.ctime_ns,
                    e.ino as i64,
                    e.mode,
                    e.uid,
                    e.gid,
                    e.sha256,
                    e.archive
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
}
