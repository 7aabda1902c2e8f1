//! Incremental reuse: the archive pass that puts each listed entry into the archive, or —
//! for a file unchanged since the parent snapshot — points the index at the archive that
//! already holds it.
//!
//! A file is reused when its stat is unchanged, or when only the inode or ctime moved (a
//! restored volume) and its content hash is the same. Databases are archived from their
//! snapshots; Signal's is reused when its stamp shows nothing wrote to it (see
//! [`crate::signal_db::Stamp`]).

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::archive::{self, ArchiveWriter, FileOutcome};
use crate::cancel::{Cancel, is_cancelled};
use crate::home::{Home, Opened};
use crate::index::{DbChain, EntryKind, IndexEntry};
use crate::manifest::ContentCounts;
use crate::profile;
use crate::raw_pages::RawDeltaReader;
use crate::signal_db::{Origin, Stamp};
use crate::sqlite;
use crate::staging::Staging;
use crate::walk::{Entry, Kind, Listing};

/// What one archive pass produced.
pub struct Archived {
    pub entries: Vec<IndexEntry>,
    pub counts: ContentCounts,
    pub missing_attachments: u64,
    /// Attachment files deleted since the parent snapshot.
    pub attachments_deleted: u64,
}

/// Everything the archive pass needs, moved onto its blocking thread.
pub struct ArchivePass {
    /// The new snapshot's id: what its own entries' `archive` says.
    pub id: String,
    pub source: PathBuf,
    /// How long a locked plain SQLite database may hold up its snapshot.
    pub wait: Duration,
    /// The parent's index; empty for a full snapshot.
    pub previous: HashMap<PathBuf, IndexEntry>,
    pub deleted: Vec<PathBuf>,
    /// Attachments the Signal database snapshot references; those never found are missing.
    pub references: HashSet<String>,
    /// Signal's database; `None` if the home has none (or a link in its place).
    pub signal_db: Option<Origin>,
    /// Recorded in the database's entry for the next backup.
    pub db_stamp: Option<Stamp>,
    /// How the database's entry rebuilds it (see [`crate::index::DbChain`]).
    pub db_chain: Option<DbChain>,
    pub cancel: Cancel,
}

impl ArchivePass {
    pub fn archive(
        mut self,
        writer: &mut ArchiveWriter,
        listing: &Listing,
        staging: &Staging,
    ) -> Result<Archived> {
        let mut counts = ContentCounts {
            deleted: self.deleted.len() as u64,
            too_long_skipped: listing.too_long_skipped,
            ..ContentCounts::default()
        };
        if !self.deleted.is_empty() {
            writer.add_deleted_list(&self.deleted)?;
        }
        let home = Home::open(&self.source)?;
        let mut entries = Vec::with_capacity(listing.entries.len());
        for entry in &listing.entries {
            self.cancel.check()?;
            let kind = match entry.kind {
                Kind::Directory => EntryKind::Directory,
                Kind::Symlink(_) => EntryKind::Symlink,
                Kind::File | Kind::PlainSqlite => EntryKind::File,
            };
            let indexed = IndexEntry::new(&entry.path, kind, &entry.metadata);
            let added = self.add_entry(writer, &home, staging, entry, indexed, &mut counts)?;
            let Some(indexed) = added else {
                continue; // no Signal database to archive
            };
            if kind == EntryKind::File {
                self.cancel.progress().add_files(1); // done: archived, reused or vanished
            }
            if indexed.kind == EntryKind::File && indexed.archive.is_none() {
                continue; // vanished
            }
            if let Some(name) = attachment_name(&entry.path) {
                self.references.remove(&name);
            }
            entries.push(indexed);
        }
        entries.extend(self.deleted.iter().map(|path| IndexEntry::tombstone(path)));
        counts.bytes = writer.content_bytes;
        Ok(Archived {
            entries,
            counts,
            missing_attachments: self.references.len() as u64,
            attachments_deleted: self.attachments_deleted(),
        })
    }

    /// Puts one listed entry into the archive (or points `indexed` at the archive that
    /// already holds it) and returns its index entry; `None` for Signal's database when
    /// this snapshot has none.
    fn add_entry(
        &self,
        writer: &mut ArchiveWriter,
        home: &Home,
        staging: &Staging,
        entry: &Entry,
        mut indexed: IndexEntry,
        counts: &mut ContentCounts,
    ) -> Result<Option<IndexEntry>> {
        match &entry.kind {
            Kind::Directory => {
                writer.add_directory(&entry.path, &entry.metadata)?;
                counts.directories += 1;
            }
            Kind::Symlink(target) => {
                writer.add_symlink(&entry.path, target, &entry.metadata)?;
                counts.symlinks += 1;
            }
            Kind::File if entry.path == Path::new(profile::SIGNAL_DB) => {
                return self.add_signal_db(writer, entry, indexed, counts);
            }
            Kind::PlainSqlite => {
                let copy = staging.file("plain.sqlite");
                let outcome = self.add_plain_sqlite(writer, home, entry, &copy, counts);
                std::fs::remove_file(&copy).ok();
                self.record(&mut indexed, outcome?, counts);
            }
            Kind::File => {
                if let Some(reused) = self.reusable(&indexed, home, &entry.metadata)? {
                    indexed = reused;
                    counts.reused_files += 1;
                    // Not read, but done: the total counts every file's bytes.
                    self.cancel.progress().add_bytes(entry.metadata.len());
                } else {
                    let outcome = writer.add_file(&entry.path, home, &entry.metadata)?;
                    self.record(&mut indexed, outcome, counts);
                }
            }
        }
        Ok(Some(indexed))
    }

    /// Signal's database, from its snapshot: a full copy, the parent's copy reused, or the
    /// pages that changed since the parent's. `None` if this snapshot has none.
    fn add_signal_db(
        &self,
        writer: &mut ArchiveWriter,
        entry: &Entry,
        mut indexed: IndexEntry,
        counts: &mut ContentCounts,
    ) -> Result<Option<IndexEntry>> {
        match &self.signal_db {
            None => return Ok(None),
            Some(Origin::Copied { copy, .. }) => {
                let outcome = writer.add_snapshot(&entry.path, copy, &entry.metadata)?;
                counts.sqlite_snapshots += 1;
                self.record(&mut indexed, outcome, counts);
            }
            Some(Origin::Parent { entry: parent, .. }) => {
                indexed.sha256 = parent.sha256.clone();
                indexed.archive = parent.archive.clone();
                counts.reused_files += 1;
            }
            Some(Origin::Delta {
                copy,
                delta,
                parent,
                ..
            }) => {
                let pages = RawDeltaReader::new(copy, delta)?;
                writer.add_generated(archive::DB_DELTA, delta.header.bytes(), pages)?;
                // Archived, as the pages that changed.
                counts.files += 1;
                counts.sqlite_snapshots += 1;
                indexed.sha256 = parent.sha256.clone();
                indexed.archive = parent.archive.clone();
            }
        }
        indexed.db_stamp = self.db_stamp.as_ref().map(|s| s.0.clone());
        indexed.db_chain = self.db_chain.clone();
        Ok(Some(indexed))
    }

    /// Attachment files the parent snapshot held that were deleted since.
    fn attachments_deleted(&self) -> u64 {
        self.deleted
            .iter()
            .filter(|path| {
                attachment_name(path).is_some()
                    && self
                        .previous
                        .get(*path)
                        .is_some_and(|e| e.kind == EntryKind::File)
            })
            .count() as u64
    }

    /// A plain SQLite database as a consistent snapshot, or as it is if it is not really
    /// one. SQLite opens it by path: only once it is known to be the listed file, reached
    /// without links, and with `SQLITE_OPEN_NOFOLLOW`.
    fn add_plain_sqlite(
        &self,
        writer: &mut ArchiveWriter,
        home: &Home,
        entry: &Entry,
        copy: &Path,
        counts: &mut ContentCounts,
    ) -> Result<FileOutcome> {
        let full = home.path().join(&entry.path);
        match home.open_listed(&entry.path, &entry.metadata)? {
            Opened::File(..) => {}
            // Not read here: the plain read says why and counts it.
            _ => return writer.add_file(&entry.path, home, &entry.metadata),
        }
        let snapshot = sqlite::snapshot(
            &full,
            &entry.metadata,
            copy,
            None,
            self.wait,
            true,
            &self.cancel,
        );
        // The open is by path: make sure the file SQLite read is still the listed one.
        if !matches!(
            home.open_listed(&entry.path, &entry.metadata)?,
            Opened::File(..)
        ) {
            return writer.add_file(&entry.path, home, &entry.metadata);
        }
        match snapshot {
            Ok(check) if check.is_ok() => {
                counts.sqlite_snapshots += 1;
                writer.add_snapshot(&entry.path, copy, &entry.metadata)
            }
            Err(err) if is_cancelled(&err) => Err(err),
            outcome => {
                // Not really a database, or a damaged one: keep the bytes as they are.
                tracing::warn!(file = %full.display(), outcome = ?outcome.map(|c| c.result), "SQLite snapshot failed; archiving the file as is");
                writer.add_file(&entry.path, home, &entry.metadata)
            }
        }
    }

    /// Notes a file archived in this snapshot.
    fn record(&self, indexed: &mut IndexEntry, outcome: FileOutcome, counts: &mut ContentCounts) {
        let sha256 = match outcome {
            FileOutcome::Archived { sha256 } => sha256,
            FileOutcome::ChangedWhileRead { sha256 } => {
                counts.changed_while_read += 1;
                sha256
            }
            FileOutcome::Vanished => {
                counts.vanished += 1;
                return;
            }
            FileOutcome::Sparse(_) => {
                counts.sparse_skipped += 1;
                return;
            }
        };
        counts.files += 1;
        indexed.sha256 = Some(sha256);
        indexed.archive = Some(self.id.clone());
    }

    /// The parent's entry for a file that has not changed since, updated to its current
    /// stat; `None` if the file must be archived again.
    fn reusable(
        &self,
        current: &IndexEntry,
        home: &Home,
        listed: &Metadata,
    ) -> Result<Option<IndexEntry>> {
        let Some(old) = self
            .previous
            .get(&current.path)
            .filter(|old| old.kind == EntryKind::File && old.archive.is_some())
        else {
            return Ok(None);
        };
        let same = match old.unchanged(current) {
            Some(same) => same,
            // Only the inode or ctime moved (a restored volume): compare the content.
            None => match home.open_listed(&current.path, listed)? {
                Opened::File(file, _) => {
                    let sha256 = content_sha256(file, &self.cancel).with_context(|| {
                        format!("cannot read {}", home.path().join(&current.path).display())
                    })?;
                    old.sha256.as_deref() == Some(sha256.as_str())
                }
                // Archived instead, which says what became of it.
                Opened::Gone | Opened::Replaced | Opened::Sparse(_) => false,
            },
        };
        Ok(same.then(|| IndexEntry {
            sha256: old.sha256.clone(),
            archive: old.archive.clone(),
            ..current.clone()
        }))
    }
}

/// The SHA-256 of a file's content, as its index entry records it.
pub fn content_sha256(file: std::fs::File, cancel: &Cancel) -> std::io::Result<String> {
    let mut hash = Sha256::new();
    std::io::copy(&mut cancel.reader(file), &mut hash)?;
    Ok(hex::encode(hash.finalize()))
}

/// `xx/<hash>` for a file in one of Signal's `*.noindex` directories.
fn attachment_name(path: &Path) -> Option<String> {
    let rest = path.strip_prefix(profile::SIGNAL_DIR).ok()?.to_str()?;
    let (dir, name) = rest.split_once('/')?;
    (dir.ends_with(".noindex") && sqlite::is_attachment_path(name)).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{ArchiveSettings, open_plain_here};
    use crate::store::chunk_channel;
    use crate::walk;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    /// What only root could read: must never enter an archive of the home.
    const SECRET: &[u8] = b"ROOT-ONLY-SECRET";

    /// Archives `listing` of `home` as a backup does, then reads the archive back: the
    /// pass's result and every file entry's name and content.
    fn archive(home: &Path, listing: &Listing) -> (Archived, Vec<(PathBuf, Vec<u8>)>) {
        let identity = age::x25519::Identity::generate();
        let recipients: Vec<Box<dyn age::Recipient + Send>> = vec![Box::new(identity.to_public())];
        let (sender, mut stream) = chunk_channel(4);
        let collect = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut bytes = Vec::new();
            runtime.block_on(async {
                while let Some(chunk) = stream.next().await.unwrap() {
                    bytes.extend_from_slice(&chunk);
                }
            });
            bytes
        });
        let staging_dir = tempfile::tempdir().unwrap();
        let cancel = Cancel::new();
        let staging =
            Staging::acquire(staging_dir.path(), Duration::from_secs(5), &cancel).unwrap();
        let settings = ArchiveSettings {
            cancel: cancel.clone(),
            zstd_level: 1,
            zstd_threads: 1,
            chunk_size: 1 << 16,
        };
        let mut writer = ArchiveWriter::new(sender, &recipients, &settings).unwrap();
        let pass = ArchivePass {
            id: "snapshot".into(),
            source: home.to_path_buf(),
            wait: Duration::from_secs(5),
            previous: HashMap::new(),
            deleted: Vec::new(),
            references: HashSet::new(),
            signal_db: None,
            db_stamp: None,
            db_chain: None,
            cancel,
        };
        let archived = pass.archive(&mut writer, listing, &staging).unwrap();
        writer.finish().unwrap();
        let ciphertext = collect.join().unwrap();
        let identities: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(identity)];
        let mut tar = tar::Archive::new(open_plain_here(&ciphertext[..], &identities).unwrap());
        let mut files = Vec::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            files.push((entry.path().unwrap().into_owned(), content));
        }
        (archived, files)
    }

    fn list(home: &Path) -> Listing {
        let excludes = profile::excludes(&[]).unwrap();
        walk::list(home, &excludes, &[], &Cancel::new()).unwrap()
    }

    fn assert_no_secret(files: &[(PathBuf, Vec<u8>)]) {
        for (path, content) in files {
            assert!(
                !content.windows(SECRET.len()).any(|w| w == SECRET),
                "{} in the archive holds what only root could read",
                path.display()
            );
        }
    }

    /// A home with `docs/mine` and, outside it, `outside/docs/mine` holding the secret.
    fn home_and_outside() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let (home, outside) = (root.path().join("home"), root.path().join("outside"));
        std::fs::create_dir_all(home.join("docs")).unwrap();
        std::fs::create_dir_all(outside.join("docs")).unwrap();
        std::fs::write(home.join("docs/mine"), b"the user's own").unwrap();
        std::fs::write(home.join("kept"), b"kept").unwrap();
        std::fs::write(outside.join("docs/mine"), SECRET).unwrap();
        (root, home, outside)
    }

    #[test]
    fn a_file_swapped_for_a_symlink_after_the_walk_is_not_archived() {
        let (_root, home, outside) = home_and_outside();
        let listing = list(&home);
        std::fs::remove_file(home.join("docs/mine")).unwrap();
        symlink(outside.join("docs/mine"), home.join("docs/mine")).unwrap();
        let (archived, files) = archive(&home, &listing);
        assert_no_secret(&files);
        assert_eq!(archived.counts.vanished, 1);
        assert_eq!(archived.counts.files, 1, "the other file is archived");
        assert!(
            files
                .iter()
                .any(|(p, c)| p == Path::new("kept") && c == b"kept")
        );
        assert!(
            !archived
                .entries
                .iter()
                .any(|e| e.path == Path::new("docs/mine"))
        );
    }

    #[test]
    fn a_parent_directory_swapped_for_a_symlink_after_the_walk_lets_nothing_in() {
        let (root, home, outside) = home_and_outside();
        let listing = list(&home);
        std::fs::rename(home.join("docs"), root.path().join("moved")).unwrap();
        symlink(outside.join("docs"), home.join("docs")).unwrap();
        let (archived, files) = archive(&home, &listing);
        assert_no_secret(&files);
        assert_eq!(archived.counts.vanished, 1);
    }

    #[test]
    fn a_plain_database_swapped_for_a_symlink_to_another_is_not_snapshotted() {
        let (_root, home, outside) = home_and_outside();
        let make_db = |path: &Path, value: &[u8]| {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.execute_batch("CREATE TABLE t (v BLOB)").unwrap();
            conn.execute("INSERT INTO t VALUES (?1)", [value]).unwrap();
        };
        make_db(&home.join("app.db"), b"the user's own");
        make_db(&outside.join("other.db"), SECRET);
        let listing = list(&home);
        assert!(
            listing
                .entries
                .iter()
                .any(|e| matches!(e.kind, Kind::PlainSqlite))
        );
        std::fs::remove_file(home.join("app.db")).unwrap();
        symlink(outside.join("other.db"), home.join("app.db")).unwrap();
        let (archived, files) = archive(&home, &listing);
        assert_no_secret(&files);
        assert_eq!(archived.counts.sqlite_snapshots, 0);
        assert_eq!(archived.counts.vanished, 1);
    }

    #[test]
    fn a_sparse_file_is_refused_and_counted() {
        let (_root, home, _outside) = home_and_outside();
        std::fs::File::create(home.join("holes"))
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let listing = list(&home);
        assert!(
            listing.file_bytes < 1 << 20,
            "upload parts would be sized for the holes"
        );
        let (archived, files) = archive(&home, &listing);
        assert_eq!(archived.counts.sparse_skipped, 1);
        assert!(!files.iter().any(|(p, _)| p == Path::new("holes")));
        assert!(
            !archived
                .entries
                .iter()
                .any(|e| e.path == Path::new("holes"))
        );
        assert_eq!(archived.counts.files, 2);
    }
}
