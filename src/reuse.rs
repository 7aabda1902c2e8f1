//! Incremental reuse: the archive pass that puts each listed entry into the archive, or —
//! for a file unchanged since the parent snapshot — points the index at the archive that
//! already holds it.
//!
//! A file is reused when its stat is unchanged, or when only the inode or ctime moved (a
//! restored volume) and its content hash is the same. Databases are always archived, from
//! their snapshots.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::archive::{ArchiveWriter, FileOutcome};
use crate::cancel::{Cancel, is_cancelled};
use crate::index::{EntryKind, IndexEntry};
use crate::manifest::ContentCounts;
use crate::profile;
use crate::sqlite;
use crate::staging::Staging;
use crate::walk::{Kind, Listing};

/// What one archive pass produced.
pub struct Archived {
    pub entries: Vec<IndexEntry>,
    pub counts: ContentCounts,
    pub missing_attachments: u64,
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
    /// The snapshot of Signal's database, archived in place of the live file.
    pub signal_copy: Option<PathBuf>,
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
        let mut entries = Vec::with_capacity(listing.entries.len());
        for entry in &listing.entries {
            self.cancel.check()?;
            let full = self.source.join(&entry.path);
            let kind = match entry.kind {
                Kind::Directory => EntryKind::Directory,
                Kind::Symlink(_) => EntryKind::Symlink,
                Kind::File | Kind::PlainSqlite => EntryKind::File,
            };
            let mut indexed = IndexEntry::new(&entry.path, kind, &entry.metadata);
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
                    let Some(copy) = &self.signal_copy else {
                        continue;
                    };
                    let outcome = writer.add_snapshot(&entry.path, copy, &entry.metadata)?;
                    counts.sqlite_snapshots += 1;
                    self.record(&mut indexed, outcome, &mut counts);
                }
                Kind::PlainSqlite => {
                    let copy = staging.file("plain.sqlite");
                    let outcome = match sqlite::snapshot(
                        &full,
                        &copy,
                        None,
                        self.wait,
                        &self.cancel,
                    ) {
                        Ok(check) if check.is_ok() => {
                            counts.sqlite_snapshots += 1;
                            writer.add_snapshot(&entry.path, &copy, &entry.metadata)?
                        }
                        Err(err) if is_cancelled(&err) => return Err(err),
                        outcome => {
                            // Not really a database, or a damaged one: keep the bytes as they are.
                            tracing::warn!(file = %full.display(), outcome = ?outcome.map(|c| c.result), "SQLite snapshot failed; archiving the file as is");
                            writer.add_file(&entry.path, &full)?
                        }
                    };
                    std::fs::remove_file(&copy).ok();
                    self.record(&mut indexed, outcome, &mut counts);
                }
                Kind::File => {
                    if let Some(reused) = self.reusable(&indexed, &full)? {
                        indexed = reused;
                        counts.reused_files += 1;
                        // Not read, but done: the total counts every file's bytes.
                        self.cancel.progress().add_bytes(entry.metadata.len());
                    } else {
                        let outcome = writer.add_file(&entry.path, &full)?;
                        self.record(&mut indexed, outcome, &mut counts);
                    }
                }
            }
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
        })
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
        };
        counts.files += 1;
        indexed.sha256 = Some(sha256);
        indexed.archive = Some(self.id.clone());
    }

    /// The parent's entry for a file that has not changed since, updated to its current
    /// stat; `None` if the file must be archived again.
    fn reusable(&self, current: &IndexEntry, full: &Path) -> Result<Option<IndexEntry>> {
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
            None => match content_sha256(full, &self.cancel) {
                Ok(sha256) => old.sha256.as_deref() == Some(sha256.as_str()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", full.display())),
            },
        };
        Ok(same.then(|| IndexEntry {
            sha256: old.sha256.clone(),
            archive: old.archive.clone(),
            ..current.clone()
        }))
    }
}

fn content_sha256(path: &Path, cancel: &Cancel) -> std::io::Result<String> {
    let mut hash = Sha256::new();
    std::io::copy(&mut cancel.reader(std::fs::File::open(path)?), &mut hash)?;
    Ok(hex::encode(hash.finalize()))
}

/// `xx/<hash>` for a file in one of Signal's `*.noindex` directories.
fn attachment_name(path: &Path) -> Option<String> {
    let rest = path.strip_prefix(profile::SIGNAL_DIR).ok()?.to_str()?;
    let (dir, name) = rest.split_once('/')?;
    (dir.ends_with(".noindex") && sqlite::is_attachment_path(name)).then(|| name.to_string())
}
