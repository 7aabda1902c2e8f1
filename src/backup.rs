//! The backup pipeline, start to commit, as plain synchronous code: snapshot the databases,
//! then list the home, archive it while uploading, and commit.
//!
//! Order matters for consistency. Signal writes an attachment file *before* the row that
//! references it, and deletes files *after* their row is gone. So the database snapshot is
//! taken first and the files are read after it: every attachment the snapshot references
//! already existed when it was taken. The only gap is a file deleted between the snapshot
//! and the walk (an expiring disappearing message); those are counted in the manifest as
//! `attachments.missing`, and Signal deletes their rows again at start-up.
//!
//! Every phase looks at the [`Cancel`](crate::cancel::Cancel) token of its
//! [`Remote`]; a cut backup writes no manifest, so as for any failed backup there is no
//! snapshot (an uploaded archive without a manifest is never listed).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use chrono::Utc;
use sha2::{Digest, Sha256};

use crate::archive::{ArchiveSettings, ArchiveWriter, Sealed};
use crate::blocking::Remote;
use crate::cancel::is_cancelled;
use crate::catalog::{Catalog, Latest};
use crate::chain::{self, Policy};
use crate::index::{self, DbChain, IndexEntry};
use crate::keys::Recipients;
use crate::layout::Object;
use crate::manifest::{self, ArchiveInfo, AttachmentCheck, Manifest, ObjectRecord};
use crate::repo::Selector;
use crate::reuse::{ArchivePass, Archived};
use crate::signal_db::{self, Origin, PendingCheck, SignalSnapshot};
use crate::staging::Staging;
use crate::store::{StoreError, chunk_channel};
use crate::{keys, lock, profile, walk};

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
    /// The lease holder taking it (set by `run`); `None` for a backup run by hand or by a
    /// CronJob.
    pub lease_owner: Option<String>,
    /// Back up a home without a Signal profile instead of failing.
    pub allow_no_signal: bool,
    /// zstd worker threads.
    pub threads: u32,
}

/// How long to wait for another backup on this host to release the staging directory.
const STAGING_WAIT: Duration = Duration::from_secs(30);

/// Uploads allowed per archive; parts grow with the home so a big one still fits.
const MAX_PARTS: u64 = 9_000;

/// How long releasing the repository lock may take, also after a cut.
const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Takes one snapshot. Call from a thread of its own (see [`crate::blocking`]).
pub fn take(remote: &Remote, options: &BackupOptions) -> Result<Manifest> {
    check_source(options)?;
    // Backups share the repository; prune waits for them (and they for it).
    remote.cancel().enter("repository lock")?;
    let lock = remote.wait(lock::Lock::acquire(
        remote.repo(),
        lock::Mode::Shared,
        "backup",
    ))?;
    let result = take_locked(remote, options);
    if remote
        .wait_bounded(LOCK_RELEASE_WAIT, lock.release())
        .is_none()
    {
        tracing::warn!("could not release the repository lock in time; it expires on its own");
    }
    match result {
        Err(err) if remote.cancel().is_cancelled() && is_cancelled(&err) => {
            Err(err.context("no snapshot was written"))
        }
        other => other,
    }
}

/// Fails unless the source is a home with a Signal profile (or `--allow-no-signal`): a
/// wrong `--source` must not become the `latest` snapshot a restore then brings back empty.
pub fn check_source(options: &BackupOptions) -> Result<()> {
    let source = &options.source;
    if !source.is_dir() {
        let problem = if source.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        bail!(
            "the home to back up, {}, {problem}: set --source (GWB_SOURCE)",
            source.display()
        );
    }
    let db = source.join(profile::SIGNAL_DB);
    if !options.allow_no_signal && !db.exists() {
        bail!(
            "no Signal profile in {}: {} does not exist. Is --source (GWB_SOURCE) the home \
             Signal Desktop runs in? To back up a home without Signal, pass --allow-no-signal \
             (GWB_ALLOW_NO_SIGNAL)",
            source.display(),
            db.display()
        );
    }
    Ok(())
}

fn take_locked(remote: &Remote, options: &BackupOptions) -> Result<Manifest> {
    let started = Instant::now();
    let started_at = Utc::now();
    let cancel = remote.cancel();
    let recipients = keys::recipients(&options.recipients, &options.recipient_files)?;
    let excludes = profile::excludes(&options.excludes)?;
    cancel.enter("staging")?;
    let staging = Staging::acquire(&options.staging_dir, STAGING_WAIT, cancel)?;
    let id = manifest::new_snapshot_id(started_at);
    cancel.enter("chain choice")?;
    let mut catalog = Catalog::open_cache(&catalog_path(options))?;
    let (parent, previous) = choose_parent(remote, &catalog, options)?;

    // 1. Signal's database first (see the module docs for why), unless nothing wrote to it
    //    since the parent snapshot copied it. Its stamp is taken before the copy, so a
    //    write during the copy shows at the next backup.
    cancel.enter("database snapshot")?;
    let stamp = signal_db::stamp(&options.source)?;
    let parent_db = parent
        .as_ref()
        .and_then(|_| previous.get(Path::new(profile::SIGNAL_DB)));
    let parent_pages = parent_db
        .and_then(|entry| entry.db_chain.as_ref())
        .and_then(|chain| catalog.page_list(&chain.pages));
    let unchanged = parent.as_ref().and_then(|parent| {
        signal_db::unchanged_since(
            &parent.manifest,
            parent_db,
            parent_pages.clone(),
            stamp.as_ref(),
        )
    });
    let signal = match unchanged {
        Some(reused) => {
            tracing::info!(
                "Signal's database is unchanged since the parent snapshot: not copied again"
            );
            Some(reused)
        }
        None => {
            // The final snapshot, which the desktop waits for, writes only the changed pages.
            let changes = match (options.r#final, parent_pages.as_ref()) {
                (true, Some(base)) => signal_db::snapshot_changes(
                    &options.source,
                    options.db_key_file.as_deref(),
                    &staging,
                    options.db_wait,
                    parent_db,
                    base,
                    cancel,
                )?,
                _ => None,
            };
            match changes {
                Some(changes) => Some(SignalSnapshot {
                    stamp: stamp.clone(),
                    ..changes
                }),
                None => signal_db::snapshot_signal_db(
                    &options.source,
                    options.db_key_file.as_deref(),
                    &staging,
                    options.db_wait,
                    cancel,
                )?
                .map(|copied| {
                    let copied = SignalSnapshot { stamp, ..copied };
                    signal_db::as_delta(copied, parent_db, parent_pages.as_ref())
                }),
            }
        }
    };
    let db_pages = signal.as_ref().and_then(|s| s.pages.clone());
    // The copy's checks read the whole database: they run beside the archive and upload,
    // and not at all in the final snapshot, which the desktop waits for (docs/format.md,
    // "What a snapshot proves").
    let mut signal = signal;
    let pending_check = signal
        .as_ref()
        .filter(|_| !options.r#final)
        .and_then(PendingCheck::start);

    // 2. Then list the home.
    cancel.enter("walk")?;
    let listing = walk::list(
        &options.source,
        &excludes,
        &[Path::new(profile::SIGNAL_DB)],
        cancel,
    )?;
    let deleted = chain::deleted_paths(&previous, &listing);
    let files = listing
        .entries
        .iter()
        .filter(|e| matches!(e.kind, walk::Kind::File | walk::Kind::PlainSqlite))
        .count() as u64;
    tracing::info!(
        snapshot = %id,
        parent = parent.as_ref().map(|p| p.manifest.id.as_str()),
        entries = listing.entries.len(),
        bytes = listing.file_bytes,
        repository = %remote.repo().location(),
        "backing up"
    );

    // 3. Stream tar → zstd → age into the store.
    cancel.enter("archive and upload")?;
    cancel.progress().set_totals(files, listing.file_bytes);
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
        signal_db: signal.as_ref().map(|s| s.origin.clone()),
        db_stamp: signal.as_ref().and_then(|s| s.stamp.clone()),
        db_chain: signal.as_ref().and_then(|s| s.chain(&id)),
        cancel: cancel.clone(),
    };
    // Size the upload parts so the archive fits S3's limit.
    let chunk_size = options
        .part_size
        .max((listing.file_bytes * 11 / 10 / MAX_PARTS) as usize);
    let settings = ArchiveSettings {
        cancel: cancel.clone(),
        zstd_level: options.zstd_level,
        zstd_threads: options.threads,
        chunk_size,
    };
    // Borrows the staging directory: it outlives the check reading the copy in it.
    let work = |writer: &mut ArchiveWriter| pass.archive(writer, &listing, &staging);
    let (sealed, archived, recipients) =
        archive_and_upload(remote, &id, recipients, settings, work)?;
    if let (Some(pending), Some(signal)) = (pending_check, signal.as_mut()) {
        cancel.enter("database check")?;
        pending.finish(&mut signal.info, cancel)?;
    }

    // 4. The index, then the manifest: until the manifest exists the snapshot does not.
    cancel.enter("index upload")?;
    let index = upload_index(remote, &id, &archived.entries, &recipients)?;
    let manifest = describe(
        &id, started_at, options, parent, sealed, index, &archived, signal,
    );
    cancel.enter("commit")?;
    remote.commit(&manifest)?;
    // The catalog is a cache: if it cannot be updated, the next backup is larger, not wrong.
    if let Err(err) = catalog.record(
        remote.repo().location(),
        &manifest,
        &archived.entries,
        db_pages.as_ref(),
    ) {
        tracing::warn!(
            error = format!("{err:#}"),
            "could not update the local catalog"
        );
    }
    log_committed(&manifest, started);
    Ok(manifest)
}

fn catalog_path(options: &BackupOptions) -> PathBuf {
    options
        .catalog
        .clone()
        .unwrap_or_else(|| options.source.join(crate::catalog::DEFAULT_NAME))
}

/// The snapshot the next one is incremental on: where it sits in its chain, and its
/// verified manifest.
struct Parent {
    chain: Latest,
    manifest: Manifest,
}

/// The parent of the next snapshot (see [`chain::choose_parent`]), checked against the
/// repository, and its index from the catalog. Any failure to read a manifest counts as
/// "missing"; a cut stops the backup. The catalog is on the user's volume: its rows are
/// used only if they hash to the parent manifest's `catalog_digest`, else the snapshot is
/// a full one.
fn choose_parent(
    remote: &Remote,
    catalog: &Catalog,
    options: &BackupOptions,
) -> Result<(Option<Parent>, HashMap<PathBuf, IndexEntry>)> {
    let policy = Policy {
        full_every: options.full_every,
        full_max_age: options.full_max_age,
    };
    let latest = catalog
        .latest(remote.repo().location())
        .unwrap_or_else(|err| {
            tracing::warn!(
                error = format!("{err:#}"),
                "cannot read the catalog: taking a full snapshot"
            );
            None
        });
    let latest_id = latest.as_ref().map(|l| l.id.clone());
    let mut parent_manifest = None;
    let parent = chain::choose_parent(latest, &policy, Utc::now(), |id| {
        match remote.find(&Selector::Id(id.to_string())) {
            Ok(manifest) => {
                let needed = manifest.archives_needed();
                if latest_id.as_deref() == Some(id) {
                    parent_manifest = Some(manifest);
                }
                Ok(Some(needed))
            }
            Err(err) if is_cancelled(&err) => Err(err),
            Err(_) => Ok(None),
        }
    })?;
    match (parent, parent_manifest) {
        (Some(parent), Some(manifest)) => match trusted_index(catalog, &parent, &manifest) {
            Some(index) => Ok((
                Some(Parent {
                    chain: parent,
                    manifest,
                }),
                index,
            )),
            None => Ok((None, HashMap::new())),
        },
        _ => Ok((None, HashMap::new())),
    }
}

/// The catalog's index, if it is exactly what snapshot `manifest` left there (its chain
/// place and the digest of its rows); `None`, with a warning, otherwise.
fn trusted_index(
    catalog: &Catalog,
    parent: &Latest,
    manifest: &Manifest,
) -> Option<HashMap<PathBuf, IndexEntry>> {
    let index = catalog.index().map_err(|err| format!("{err:#}"));
    let problem = match (&index, &manifest.catalog_digest) {
        (Err(err), _) => err.clone(),
        (Ok(_), None) => "its manifest records no catalog digest".into(),
        (Ok(index), Some(expected)) if crate::catalog::digest(index.values()) != *expected => {
            "the file rows were changed".into()
        }
        _ if parent.chain_length != manifest.chain_length
            || parent.full_id != manifest.full_id() =>
        {
            "the chain it records was changed".into()
        }
        _ => return index.ok(),
    };
    tracing::warn!(
        snapshot = %manifest.id,
        problem = %problem,
        "the catalog does not match snapshot {}; taking a full snapshot",
        manifest.id
    );
    None
}

/// Builds the archive on a thread of its own while this one uploads it; a bounded channel
/// between them bounds memory. Returns the sealed archive, what `work` produced, and the
/// recipients back (they cannot be shared between threads, only moved).
fn archive_and_upload<T: Send>(
    remote: &Remote,
    id: &str,
    recipients: Recipients,
    settings: ArchiveSettings,
    work: impl FnOnce(&mut ArchiveWriter) -> Result<T> + Send,
) -> Result<(Sealed, T, Recipients)> {
    let (sender, body) = chunk_channel(1);
    let (produced, uploaded) = std::thread::scope(|scope| {
        let producer = scope.spawn(move || -> Result<_> {
            let mut writer = ArchiveWriter::new(sender, &recipients, &settings)?;
            let done = work(&mut writer)?;
            Ok((writer.finish()?, done, recipients))
        });
        let uploaded = remote.upload(&Object::Archive(id.to_string()), body);
        let produced = producer
            .join()
            .map_err(|_| anyhow!("the archive writer panicked"));
        (produced, uploaded)
    });
    let produced = produced?;
    if remote.cancel().is_cancelled() {
        return Err(remote.cancel().cancelled().into());
    }
    // Report the root cause: an upload failure makes the writer fail too, and vice versa.
    match (produced, uploaded) {
        (Ok(produced), Ok(_)) => Ok(produced),
        // The writer gives up when the upload stops, with a bare "the upload stopped": the
        // upload's own error (no such bucket, access denied…) is the one to show.
        (Err(_), Err(err)) if !matches!(err, StoreError::Abandoned) => {
            Err(anyhow::Error::from(err)
                .context("backup failed while uploading; no snapshot was written"))
        }
        (Err(err), _) => Err(err.context("backup failed while archiving; no snapshot was written")),
        (Ok(_), Err(err)) => Err(anyhow::Error::from(err)
            .context("backup failed while uploading; no snapshot was written")),
    }
}

fn upload_index(
    remote: &Remote,
    id: &str,
    entries: &[IndexEntry],
    recipients: &Recipients,
) -> Result<ObjectRecord> {
    let sealed = index::seal(entries, recipients)?;
    let index = Object::Index(id.to_string());
    let record = ObjectRecord {
        key: index.key(),
        size: sealed.len() as u64,
        sha256: hex::encode(Sha256::digest(&sealed)),
    };
    remote
        .put(&index, Bytes::from(sealed))
        .context("cannot upload the file index")?;
    Ok(record)
}

/// The manifest of a snapshot whose archive and index are uploaded.
#[allow(clippy::too_many_arguments)]
fn describe(
    id: &str,
    started_at: chrono::DateTime<Utc>,
    options: &BackupOptions,
    parent: Option<Parent>,
    sealed: Sealed,
    index: ObjectRecord,
    archived: &Archived,
    signal: Option<SignalSnapshot>,
) -> Manifest {
    let depends_on: BTreeSet<String> = archived
        .entries
        .iter()
        .flat_map(|e| {
            let deltas = e.db_chain.iter().flat_map(|chain| chain.deltas.iter());
            e.archive.iter().chain(deltas).cloned()
        })
        .chain([id.to_string()])
        .collect();
    let chains = || archived.entries.iter().filter_map(|e| e.db_chain.as_ref());
    let format = if chains().any(DbChain::is_raw) {
        manifest::FORMAT_VERSION
    } else if chains().any(|chain| !chain.deltas.is_empty()) {
        manifest::FORMAT_DECRYPTED_DELTAS // a reused parent's chain
    } else {
        manifest::FORMAT_WITHOUT_DELTAS
    };
    Manifest {
        format,
        id: id.to_string(),
        started_at,
        finished_at: Utc::now(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        r#final: options.r#final,
        lease_owner: options.lease_owner.clone(),
        archive: ArchiveInfo {
            key: Object::Archive(id.to_string()).key(),
            size: sealed.size,
            sha256: sealed.sha256,
            encoding: crate::archive::ENCODING.to_string(),
        },
        index: Some(index),
        parent: parent.as_ref().map(|p| p.chain.id.clone()),
        chain_length: parent.as_ref().map_or(0, |p| p.chain.chain_length + 1),
        chain_full: parent.as_ref().map(|p| p.chain.full_id.clone()),
        depends_on: depends_on.into_iter().collect(),
        content: archived.counts.clone(),
        attachments: match signal.as_ref() {
            // Signal deletes a file only after its row, which changes the database: a
            // file deleted while it stayed unchanged may be one it references.
            Some(SignalSnapshot {
                origin:
                    Origin::Parent {
                        attachments: parent,
                        ..
                    },
                ..
            }) => AttachmentCheck {
                referenced: parent.referenced,
                missing: parent.missing + archived.attachments_deleted,
            },
            _ => AttachmentCheck {
                referenced: signal.as_ref().map_or(0, |s| s.references.len() as u64),
                missing: archived.missing_attachments,
            },
        },
        signal_db: signal.map(|s| s.info),
        catalog_digest: Some(crate::catalog::digest(&archived.entries)),
    }
}

fn log_committed(manifest: &Manifest, started: Instant) {
    if manifest.attachments.missing > 0 {
        tracing::warn!(
            missing = manifest.attachments.missing,
            "attachments referenced by the database snapshot were deleted before they could be read"
        );
    }
    if manifest.content.sparse_skipped > 0 {
        tracing::warn!(
            sparse_skipped = manifest.content.sparse_skipped,
            "sparse files (mostly holes) were left out of this snapshot; each was named above"
        );
    }
    tracing::info!(
        snapshot = %manifest.id,
        kind = if manifest.parent.is_some() { "incremental" } else { "full" },
        files = manifest.content.files,
        reused = manifest.content.reused_files,
        sparse_skipped = manifest.content.sparse_skipped,
        bytes = manifest.content.bytes,
        uploaded = manifest.archive.size,
        seconds = started.elapsed().as_secs_f64(),
        "snapshot committed"
    );
}
