//! `backup`: snapshot the databases, then archive the home, upload, and commit.
//!
//! Order matters for consistency. Signal writes an attachment file *before* the row that
//! references it, and deletes files *after* their row is gone. So the database snapshot is
//! taken first and the files are read after it: every attachment the snapshot references
//! already existed when it was taken. The only gap is a file deleted between the snapshot
//! and the walk (an expiring disappearing message); those are counted in the manifest as
//! `attachments.missing`, and Signal deletes their rows again at start-up.
//!
//! A snapshot is incremental when the local catalog knows the previous one: files whose
//! stat is unchanged (or, when only the inode/ctime moved, whose content hash is) are not
//! archived again; the index points at the archive that holds them. Databases are always
//! archived. Chains stay bounded: a full snapshot every `full_every` incrementals or when
//! the chain's full snapshot is older than `full_max_age`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use chrono::Utc;
use sha2::{Digest, Sha256};

use crate::archive::{ArchiveSettings, ArchiveWriter, FileOutcome};
use crate::catalog::{Catalog, Latest};
use crate::index::{self, EntryKind, IndexEntry};
use crate::layout::Object;
use crate::manifest::{
    self, ArchiveInfo, AttachmentCheck, ContentCounts, DatabaseInfo, Manifest, ObjectRecord,
};
use crate::profile::{self, DbKey};
use crate::repo::{Repository, Selector};
use crate::staging::Staging;
use crate::store::{StoreError, chunk_channel};
use crate::walk::{self, Kind, Listing};
use crate::{keys, lock, sqlite};

#[derive(Clone)]
pub struct BackupOptions {
    pub source: PathBuf,
    pub recipients: Vec<String>,
    pub recipient_files: Vec<PathBuf>,
    pub excludes: Vec<String>,
    pub db_key_file: Option<PathBuf>,
    pub staging_dir: PathBuf,
    /// The local catalog; `None`: `.ghostwire-backup-catalog.sqlite` in the source.
    pub catalog: Option<PathBuf>,
    /// Incrementals before the next full snapshot; 0 makes every snapshot full.
    pub full_every: u32,
    /// A chain whose full snapshot is older than this gets a new full one.
    pub full_max_age: Duration,
    pub zstd_level: i32,
    pub part_size: usize,
    /// How long a locked database may hold up its snapshot.
    pub db_wait: Duration,
    /// Mark the snapshot as taken after Signal stopped.
    pub r#final: bool,
}

/// How long to wait for another backup on this host to release the staging directory.
const STAGING_WAIT: Duration = Duration::from_secs(30);

/// Uploads allowed per archive; parts grow with the home so a big one still fits.
const MAX_PARTS: u64 = 9_000;

pub async fn run(repo: &Repository, options: &BackupOptions) -> Result<Manifest> {
    // Backups share the repository; prune waits for them (and they for it).
    let lock = lock::Lock::acquire(repo, lock::Mode::Shared, "backup").await?;
    let result = run_locked(repo, options).await;
    lock.release().await;
    result
}

async fn run_locked(repo: &Repository, options: &BackupOptions) -> Result<Manifest> {
    let started = Instant::now();
    let started_at = Utc::now();
    let recipients = keys::recipients(&options.recipients, &options.recipient_files)?;
    let excludes = profile::excludes(&options.excludes)?;
    let staging_dir = options.staging_dir.clone();
    let staging =
        tokio::task::spawn_blocking(move || Staging::acquire(&staging_dir, STAGING_WAIT)).await??;
    let id = manifest::new_snapshot_id(started_at);
    let catalog_path = options
        .catalog
        .clone()
        .unwrap_or_else(|| options.source.join(crate::catalog::DEFAULT_NAME));
    let mut catalog = Catalog::open(&catalog_path)?;
    let parent = choose_parent(repo, &catalog, options).await?;
    let previous = if parent.is_some() {
        catalog.index()?
    } else {
        HashMap::new()
    };

    // 1. Signal's database first (see the module docs for why).
    let signal = snapshot_signal_db(
        &options.source,
        options.db_key_file.as_deref(),
        &staging,
        options.db_wait,
    )?;

    // 2. Then list the home, and size the upload parts so the archive fits S3's limit.
    let listing = walk::list(&options.source, &excludes, &[Path::new(profile::SIGNAL_DB)])?;
    let chunk_size = options
        .part_size
        .max((listing.file_bytes * 11 / 10 / MAX_PARTS) as usize);
    // Every path gone since the chain's full snapshot (the previous index keeps earlier
    // deletions as tombstones), so one archive's list is enough to finish a restore.
    let listed: HashSet<&Path> = listing.entries.iter().map(|e| e.path.as_path()).collect();
    let mut deleted: Vec<PathBuf> = previous
        .keys()
        .filter(|p| !listed.contains(p.as_path()))
        .cloned()
        .collect();
    deleted.sort();
    tracing::info!(
        snapshot = %id,
        parent = parent.as_ref().map(|p| p.id.as_str()),
        entries = listing.entries.len(),
        bytes = listing.file_bytes,
        repository = %repo.location(),
        "backing up"
    );

    // 3. Stream tar → zstd → age into the store. The archive is built on a blocking thread;
    //    the upload runs here; a bounded channel between them bounds memory.
    let (sender, body) = chunk_channel(1);
    let settings = ArchiveSettings {
        zstd_level: options.zstd_level,
        zstd_threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        chunk_size,
    };
    let pass = ArchivePass {
        id: id.clone(),
        source: options.source.clone(),
        wait: options.db_wait,
        previous,
        deleted,
        references: signal
            .as_ref()
            .map(|s| s.references.clone())
            .unwrap_or_default(),
        signal_copy: signal.as_ref().map(|s| s.copy.clone()),
    };
    let producer = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut writer = ArchiveWriter::new(sender, &recipients, &settings)?;
        let archived = pass.archive(&mut writer, &listing, &staging)?;
        let sealed = writer.finish()?;
        drop(staging); // the snapshot copies are in the archive now
        Ok((sealed, archived, recipients))
    });
    let archive = Object::Archive(id.clone());
    let uploaded = repo.put_stream(&archive, body).await;
    let produced = producer.await.context("the archive writer panicked")?;
    // Report the root cause: an upload failure makes the writer fail too, and vice versa.
    let (sealed, archived, recipients) = match (produced, uploaded) {
        (Ok(produced), Ok(_)) => produced,
        // The writer gives up when the upload stops, with a bare "the upload stopped": the
        // upload's own error (no such bucket, access denied…) is the one to show.
        (Err(_), Err(err)) if !matches!(err, StoreError::Abandoned) => {
            return Err(anyhow::Error::from(err)
                .context("backup failed while uploading; no snapshot was written"));
        }
        (Err(err), _) => {
            return Err(err.context("backup failed while archiving; no snapshot was written"));
        }
        (Ok(_), Err(err)) => {
            return Err(anyhow::Error::from(err)
                .context("backup failed while uploading; no snapshot was written"));
        }
    };

    // 4. The index, then the manifest: until the manifest exists the snapshot does not.
    let sealed_index = index::seal(&archived.entries, &recipients)?;
    let index = Object::Index(id.clone());
    let index_record = ObjectRecord {
        key: index.key(),
        size: sealed_index.len() as u64,
        sha256: hex::encode(Sha256::digest(&sealed_index)),
    };
    repo.put(&index, Bytes::from(sealed_index))
        .await
        .context("cannot upload the file index")?;
    let depends_on: BTreeSet<String> = archived
        .entries
        .iter()
        .filter_map(|e| e.archive.clone())
        .chain([id.clone()])
        .collect();
    let manifest = Manifest {
        format: manifest::FORMAT_VERSION,
        id: id.clone(),
        started_at,
        finished_at: Utc::now(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        r#final: options.r#final,
        archive: ArchiveInfo {
            key: archive.key(),
            size: sealed.size,
            sha256: sealed.sha256,
            encoding: crate::archive::ENCODING.to_string(),
        },
        index: Some(index_record),
        parent: parent.as_ref().map(|p| p.id.clone()),
        chain_length: parent.as_ref().map_or(0, |p| p.chain_length + 1),
        chain_full: parent.as_ref().map(|p| p.full_id.clone()),
        depends_on: depends_on.into_iter().collect(),
        content: archived.counts,
        signal_db: signal.as_ref().map(|s| s.info.clone()),
        attachments: AttachmentCheck {
            referenced: signal.as_ref().map_or(0, |s| s.references.len() as u64),
            missing: archived.missing_attachments,
        },
    };
    repo.commit(&manifest).await?;
    // The catalog is a cache: if it cannot be updated, the next backup is larger, not wrong.
    if let Err(err) = catalog.record(repo.location(), &manifest, &archived.entries) {
        tracing::warn!(
            error = format!("{err:#}"),
            "could not update the local catalog"
        );
    }
    if manifest.attachments.missing > 0 {
        tracing::warn!(
            missing = manifest.attachments.missing,
            "attachments referenced by the database snapshot were deleted before they could be read"
        );
    }
    tracing::info!(
        snapshot = %manifest.id,
        kind = if manifest.parent.is_some() { "incremental" } else { "full" },
        files = manifest.content.files,
        reused = manifest.content.reused_files,
        bytes = manifest.content.bytes,
        uploaded = manifest.archive.size,
        seconds = started.elapsed().as_secs_f64(),
        "snapshot committed"
    );
    Ok(manifest)
}

/// The parent of the next snapshot: the catalog's latest, if it is still in the
/// repository and its chain may grow.
async fn choose_parent(
    repo: &Repository,
    catalog: &Catalog,
    options: &BackupOptions,
) -> Result<Option<Latest>> {
    let Some(latest) = catalog.latest(repo.location())? else {
        tracing::info!("no catalog for this repository yet: taking a full snapshot");
        return Ok(None);
    };
    if latest.chain_length + 1 > options.full_every {
        tracing::info!(
            chain = latest.chain_length,
            "the chain is long enough: taking a full snapshot"
        );
        return Ok(None);
    }
    let full_age = latest
        .full_finished_at
        .map(|t| (Utc::now() - t).to_std().unwrap_or_default());
    if full_age.is_none_or(|age| age > options.full_max_age) {
        tracing::info!("the chain's full snapshot is too old: taking a full snapshot");
        return Ok(None);
    }
    // The new snapshot will need the archives its parent needs: every one of them must
    // still be in the repository with a readable manifest, or the chain is broken.
    let Ok(parent) = repo.find(&Selector::Id(latest.id.clone())).await else {
        tracing::warn!(snapshot = %latest.id, "the catalog's latest snapshot is gone from the repository: taking a full snapshot");
        return Ok(None);
    };
    for id in parent
        .archives_needed()
        .into_iter()
        .filter(|id| *id != parent.id)
    {
        if repo.find(&Selector::Id(id.clone())).await.is_err() {
            tracing::warn!(snapshot = %id, "the chain is broken (a snapshot it needs is missing or damaged): taking a full snapshot");
            return Ok(None);
        }
    }
    Ok(Some(latest))
}

/// What one archive pass produced.
struct Archived {
    entries: Vec<IndexEntry>,
    counts: ContentCounts,
    missing_attachments: u64,
}

/// Everything the archive pass needs, moved onto its blocking thread.
struct ArchivePass {
    id: String,
    source: PathBuf,
    wait: Duration,
    previous: HashMap<PathBuf, IndexEntry>,
    deleted: Vec<PathBuf>,
    references: HashSet<String>,
    signal_copy: Option<PathBuf>,
}

impl ArchivePass {
    fn archive(
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
                    let outcome = match sqlite::snapshot(&full, &copy, None, self.wait) {
                        Ok(check) if check.is_ok() => {
                            counts.sqlite_snapshots += 1;
                            writer.add_snapshot(&entry.path, &copy, &entry.metadata)?
                        }
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
                    } else {
                        let outcome = writer.add_file(&entry.path, &full)?;
                        self.record(&mut indexed, outcome, &mut counts);
                    }
                }
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
            None => match content_sha256(full) {
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

fn content_sha256(path: &Path) -> std::io::Result<String> {
    let mut hash = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hash)?;
    Ok(hex::encode(hash.finalize()))
}

struct SignalSnapshot {
    copy: PathBuf,
    info: DatabaseInfo,
    references: HashSet<String>,
}

/// Snapshots Signal's encrypted database, if the home has a Signal profile.
fn snapshot_signal_db(
    home: &Path,
    key_file: Option<&Path>,
    staging: &Staging,
    wait: Duration,
) -> Result<Option<SignalSnapshot>> {
    let db = home.join(profile::SIGNAL_DB);
    if !db.exists() {
        tracing::warn!(
            path = %db.display(),
            "no Signal database in this home; backing up the files only (is --source right?)"
        );
        return Ok(None);
    }
    let key = match key_file {
        Some(file) => DbKey::from_file(file)?,
        None => {
            let config = home.join(profile::SIGNAL_CONFIG);
            let bytes = zeroize::Zeroizing::new(std::fs::read(&config).with_context(|| {
                format!(
                    "cannot read Signal's database key from {}",
                    config.display()
                )
            })?);
            DbKey::from_config_json(&bytes, &config)?
        }
    };
    let copy = staging.file("signal.sqlite");
    let check = sqlite::snapshot(&db, &copy, Some(&key), wait)
        .context("cannot snapshot Signal's database")?;
    if !check.is_ok() {
        tracing::warn!(check = %check.result, "quick_check found problems in Signal's database; backing it up as it is");
    }
    let references = sqlite::attachment_references(&copy, &key)?;
    let info = DatabaseInfo {
        user_version: check.user_version,
        check: check.result,
        bytes: std::fs::metadata(&copy)?.len(),
    };
    Ok(Some(SignalSnapshot {
        copy,
        info,
        references,
    }))
}

/// `xx/<hash>` for a file in one of Signal's `*.noindex` directories.
fn attachment_name(path: &Path) -> Option<String> {
    let rest = path.strip_prefix(profile::SIGNAL_DIR).ok()?.to_str()?;
    let (dir, name) = rest.split_once('/')?;
    (dir.ends_with(".noindex") && sqlite::is_attachment_path(name)).then(|| name.to_string())
}
