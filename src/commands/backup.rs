//! `backup`: snapshot the databases, then archive the home, upload, and commit.
//!
//! Order matters for consistency. Signal writes an attachment file *before* the row that
//! references it, and deletes files *after* their row is gone. So the database snapshot is
//! taken first and the files are read after it: every attachment the snapshot references
//! already existed when it was taken. The only gap is a file deleted between the snapshot
//! and the walk (an expiring disappearing message); those are counted in the manifest as
//! `attachments.missing`, and Signal deletes their rows again at start-up.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;

use crate::archive::{ArchiveSettings, ArchiveWriter, FileOutcome};
use crate::manifest::{self, ArchiveInfo, AttachmentCheck, ContentCounts, DatabaseInfo, Manifest};
use crate::profile::{self, DbKey};
use crate::repo::Repository;
use crate::staging::Staging;
use crate::store::chunk_channel;
use crate::walk::{self, Kind};
use crate::{keys, sqlite};

#[derive(Clone)]
pub struct BackupOptions {
    pub source: PathBuf,
    pub recipients: Vec<String>,
    pub recipient_files: Vec<PathBuf>,
    pub excludes: Vec<String>,
    pub db_key_file: Option<PathBuf>,
    pub staging_dir: PathBuf,
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
    let started = Instant::now();
    let started_at = Utc::now();
    let recipients = keys::recipients(&options.recipients, &options.recipient_files)?;
    let excludes = profile::excludes(&options.excludes)?;
    let staging_dir = options.staging_dir.clone();
    let staging =
        tokio::task::spawn_blocking(move || Staging::acquire(&staging_dir, STAGING_WAIT)).await??;
    let id = manifest::new_snapshot_id(started_at);

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
    tracing::info!(
        snapshot = %id,
        entries = listing.entries.len(),
        bytes = listing.file_bytes,
        repository = %repo.location(),
        "backing up"
    );

    // 3. Stream tar → zstd → age into the store. The archive is built on a blocking thread;
    //    the upload runs here; a bounded channel between them bounds memory.
    let (sender, body) = chunk_channel(1);
    let archive_key = Repository::archive_key(&id);
    let settings = ArchiveSettings {
        zstd_level: options.zstd_level,
        zstd_threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        chunk_size,
    };
    let source = options.source.clone();
    let wait = options.db_wait;
    let producer = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut writer = ArchiveWriter::new(sender, &recipients, &settings)?;
        let mut counts = ContentCounts::default();
        let mut referenced = signal
            .as_ref()
            .map(|s| s.references.clone())
            .unwrap_or_default();
        for entry in &listing.entries {
            let full = source.join(&entry.path);
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
                    let Some(signal) = &signal else { continue };
                    writer.add_snapshot(&entry.path, &signal.copy, &entry.metadata)?;
                    counts.files += 1;
                    counts.sqlite_snapshots += 1;
                }
                Kind::PlainSqlite => {
                    let copy = staging.file("plain.sqlite");
                    match sqlite::snapshot(&full, &copy, None, wait) {
                        Ok(check) if check.is_ok() => {
                            writer.add_snapshot(&entry.path, &copy, &entry.metadata)?;
                            counts.sqlite_snapshots += 1;
                        }
                        outcome => {
                            // Not really a database, or a damaged one: keep the bytes as they are.
                            tracing::warn!(file = %full.display(), outcome = ?outcome.map(|c| c.result), "SQLite snapshot failed; archiving the file as is");
                            writer.add_file(&entry.path, &full)?;
                        }
                    }
                    std::fs::remove_file(&copy).ok();
                    counts.files += 1;
                }
                Kind::File => match writer.add_file(&entry.path, &full)? {
                    FileOutcome::Vanished => {
                        counts.vanished += 1;
                        continue;
                    }
                    outcome => {
                        counts.files += 1;
                        counts.changed_while_read +=
                            (outcome == FileOutcome::ChangedWhileRead) as u64;
                        if let Some(name) = attachment_name(&entry.path) {
                            referenced.remove(&name);
                        }
                    }
                },
            }
        }
        counts.bytes = writer.content_bytes;
        let sealed = writer.finish()?;
        drop(staging); // the snapshot copies are in the archive now
        Ok((sealed, counts, referenced.len() as u64, signal))
    });
    let uploaded = repo.store().put_stream(&archive_key, body).await;
    let produced = producer.await.context("the archive writer panicked")?;
    // Report the root cause: an upload failure makes the writer fail too, and vice versa.
    let (sealed, counts, missing, signal) = match (produced, uploaded) {
        (Ok(produced), Ok(_)) => produced,
        (Err(err), _) => {
            return Err(err.context("backup failed while archiving; no snapshot was written"));
        }
        (Ok(_), Err(err)) => {
            return Err(err.context("backup failed while uploading; no snapshot was written"));
        }
    };

    // 4. Commit: the manifest goes last; until it exists the snapshot does not.
    let manifest = Manifest {
        format: manifest::FORMAT_VERSION,
        id,
        started_at,
        finished_at: Utc::now(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        r#final: options.r#final,
        archive: ArchiveInfo {
            key: archive_key,
            size: sealed.size,
            sha256: sealed.sha256,
            encoding: crate::archive::ENCODING.to_string(),
        },
        content: counts,
        signal_db: signal.as_ref().map(|s| s.info.clone()),
        attachments: AttachmentCheck {
            referenced: signal.as_ref().map_or(0, |s| s.references.len() as u64),
            missing,
        },
    };
    repo.commit(&manifest).await?;
    if manifest.attachments.missing > 0 {
        tracing::warn!(
            missing = manifest.attachments.missing,
            "attachments referenced by the database snapshot were deleted before they could be read"
        );
    }
    tracing::info!(
        snapshot = %manifest.id,
        files = manifest.content.files,
        bytes = manifest.content.bytes,
        uploaded = manifest.archive.size,
        seconds = started.elapsed().as_secs_f64(),
        "snapshot committed"
    );
    Ok(manifest)
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
        .with_context(|| "cannot snapshot Signal's database".to_string())?;
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
