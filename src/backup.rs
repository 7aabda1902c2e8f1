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
use globset::GlobSet;
use sha2::{Digest, Sha256};

use crate::archive::{ArchiveSettings, ArchiveWriter, Sealed};
use crate::blocking::Remote;
use crate::cancel::{Cancel, is_cancelled};
use crate::catalog::{Catalog, Latest};
use crate::chain::{self, Policy};
use crate::index::{self, IndexEntry};
use crate::keys::Recipients;
use crate::layout::Object;
use crate::manifest::{self, ArchiveInfo, ArchiveParts, AttachmentCheck, Manifest, ObjectRecord};
use crate::parts::Uploaded;
use crate::raw_pages::RawPageList;
use crate::repo::Selector;
use crate::reuse::{ArchivePass, Archived};
use crate::signal_db::{self, Origin, PendingCheck, SignalSnapshot, Stamp};
use crate::staging::Staging;
use crate::store::{StoreError, handover_channel};
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
    let backup = Backup {
        remote,
        options,
        id: manifest::new_snapshot_id(started_at),
        staging,
    };
    cancel.enter("chain choice")?;
    let mut catalog = Catalog::open_cache(&catalog_path(options))?;
    let (parent, previous) = choose_parent(remote, &catalog, options)?;

    // 1. Signal's database first (see the module docs for why).
    let mut signal = backup.snapshot_database(&catalog, parent.as_ref(), &previous)?;
    // Whole-database checks: beside the upload of a full copy only, not for a delta (its
    // staging file holds only the changed pages) nor the final snapshot; the scheduled
    // `verify` checks every snapshot whole (docs/format.md, "What a snapshot proves").
    let pending_check = signal
        .as_ref()
        .filter(|_| !options.r#final)
        .and_then(PendingCheck::start);

    // 2. Then list the home.
    let (listing, deleted) = backup.list_home(&excludes, parent.as_ref(), &previous)?;

    // 3. Stream tar → zstd → age into the store.
    cancel.enter("archive and upload")?;
    let files = files_listed(&listing);
    cancel.progress().set_totals(files, listing.file_bytes);
    let pass = backup.archive_pass(previous, deleted, signal.as_ref());
    let settings = backup.archive_settings(listing.file_bytes);
    // Borrows the staging directory: it outlives the check reading the copy in it.
    let work = |writer: &mut ArchiveWriter| pass.archive(writer, &listing, &backup.staging);
    let (stored, archived, recipients) =
        archive_and_upload(remote, &backup.id, recipients, settings, work)?;
    if let (Some(pending), Some(signal)) = (pending_check, signal.as_mut()) {
        cancel.enter("database check")?;
        pending.finish(&mut signal.info, cancel)?;
    }
    let db_pages = signal.as_mut().and_then(|s| s.pages.take()); // moved, not cloned

    // 4. The index, then the manifest: until the manifest exists the snapshot does not.
    cancel.enter("index upload")?;
    let id = &backup.id;
    let index = upload_index(remote, id, &archived.entries, &recipients)?;
    let manifest = describe(
        id, started_at, options, parent, stored, index, &archived, signal,
    );
    cancel.enter("commit")?;
    remote.commit(&manifest)?;
    backup.record_in_catalog(&mut catalog, &manifest, &archived, db_pages.as_ref());
    log_committed(&manifest, started);
    Ok(manifest)
}

/// One snapshot being taken: what its steps share.
struct Backup<'a> {
    remote: &'a Remote,
    options: &'a BackupOptions,
    /// The new snapshot's id.
    id: String,
    /// Held until the snapshot is committed: the database copies in it are read until then.
    staging: Staging,
}

impl Backup<'_> {
    fn cancel(&self) -> &Cancel {
        self.remote.cancel()
    }

    /// Snapshots Signal's database, unless nothing wrote to it since the parent snapshot
    /// copied it. Its stamp is taken before the copy, so a write during the copy shows at
    /// the next backup.
    fn snapshot_database(
        &self,
        catalog: &Catalog,
        parent: Option<&Parent>,
        previous: &HashMap<PathBuf, IndexEntry>,
    ) -> Result<Option<SignalSnapshot>> {
        self.cancel().enter("database snapshot")?;
        let stamp = signal_db::stamp(&self.options.source)?;
        let parent_db = parent.and_then(|_| previous.get(Path::new(profile::SIGNAL_DB)));
        let parent_pages = match parent_db.and_then(|entry| entry.db_chain.as_ref()) {
            // The catalog is a cache: unreadable, it costs a full copy, not the backup.
            Some(chain) => catalog.page_list(&chain.pages).unwrap_or_else(|err| {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "cannot read the parent's page list from the catalog; copying Signal's database in full"
                );
                None
            }),
            None => None,
        };
        let unchanged = parent.and_then(|parent| {
            signal_db::unchanged_since(
                &parent.manifest,
                parent_db,
                parent_pages.as_ref(),
                stamp.as_ref(),
            )
        });
        if let Some(reused) = unchanged {
            tracing::info!(
                "Signal's database is unchanged since the parent snapshot: not copied again"
            );
            return Ok(Some(reused));
        }
        self.copy_database(stamp, parent_db, parent_pages.as_ref())
    }

    /// Copies Signal's database: only the pages changed since the parent's copy
    /// (`parent_pages`) where a delta applies, so a backup after a few messages costs one
    /// read of the file and the changed pages; otherwise the whole database is imaged, and
    /// kept as a delta against the parent's version if that is small enough.
    fn copy_database(
        &self,
        stamp: Option<Stamp>,
        parent_db: Option<&IndexEntry>,
        parent_pages: Option<&RawPageList>,
    ) -> Result<Option<SignalSnapshot>> {
        let options = self.options;
        let (source, key_file) = (&options.source, options.db_key_file.as_deref());
        let (staging, wait, cancel) = (&self.staging, options.db_wait, self.cancel());
        let changes = match parent_pages {
            Some(base) => signal_db::snapshot_changes(
                source, key_file, staging, wait, parent_db, base, cancel,
            )?,
            None => None,
        };
        if let Some(changes) = changes {
            return Ok(Some(SignalSnapshot { stamp, ..changes }));
        }
        let copied = signal_db::snapshot_signal_db(source, key_file, staging, wait, cancel)?;
        Ok(copied.map(|copied| {
            let copied = SignalSnapshot { stamp, ..copied };
            signal_db::as_delta(copied, parent_db, parent_pages)
        }))
    }

    /// Lists the home, and what was deleted from it since the parent snapshot.
    fn list_home(
        &self,
        excludes: &GlobSet,
        parent: Option<&Parent>,
        previous: &HashMap<PathBuf, IndexEntry>,
    ) -> Result<(walk::Listing, Vec<PathBuf>)> {
        self.cancel().enter("walk")?;
        let listing = walk::list(
            &self.options.source,
            excludes,
            &[Path::new(profile::SIGNAL_DB)],
            self.cancel(),
        )?;
        let deleted = chain::deleted_paths(previous, &listing);
        tracing::info!(
            snapshot = %self.id,
            parent = parent.map(|p| p.manifest.id.as_str()),
            entries = listing.entries.len(),
            bytes = listing.file_bytes,
            repository = %self.remote.repo().location(),
            "backing up"
        );
        Ok((listing, deleted))
    }

    /// The archive pass: the parent's index, the paths deleted since, and what it needs of
    /// Signal's database snapshot.
    fn archive_pass(
        &self,
        previous: HashMap<PathBuf, IndexEntry>,
        deleted: Vec<PathBuf>,
        signal: Option<&SignalSnapshot>,
    ) -> ArchivePass {
        ArchivePass {
            id: self.id.clone(),
            source: self.options.source.clone(),
            wait: self.options.db_wait,
            previous,
            deleted,
            references: signal.map(|s| s.references.clone()).unwrap_or_default(),
            signal_db: signal.map(|s| s.origin.clone()),
            db_stamp: signal.and_then(|s| s.stamp.clone()),
            db_chain: signal.and_then(|s| s.chain(&self.id)),
            cancel: self.cancel().clone(),
        }
    }

    /// How the archive is written, its upload parts sized so that a home of `file_bytes`
    /// fits S3's limit.
    fn archive_settings(&self, file_bytes: u64) -> ArchiveSettings {
        let chunk_size = self
            .options
            .part_size
            .max((file_bytes * 11 / 10 / MAX_PARTS) as usize);
        ArchiveSettings {
            cancel: self.cancel().clone(),
            zstd_level: self.options.zstd_level,
            zstd_threads: self.options.threads,
            chunk_size,
        }
    }

    /// Records the committed snapshot in the local catalog. The catalog is a cache: if it
    /// cannot be updated, the next backup is larger, not wrong.
    fn record_in_catalog(
        &self,
        catalog: &mut Catalog,
        manifest: &Manifest,
        archived: &Archived,
        db_pages: Option<&RawPageList>,
    ) {
        let repository = self.remote.repo().location();
        if let Err(err) = catalog.record(repository, manifest, &archived.entries, db_pages) {
            tracing::warn!(
                error = format!("{err:#}"),
                "could not update the local catalog"
            );
        }
    }
}

/// The regular files (and plain SQLite databases) listed: what the progress counts.
fn files_listed(listing: &walk::Listing) -> u64 {
    listing
        .entries
        .iter()
        .filter(|e| matches!(e.kind, walk::Kind::File | walk::Kind::PlainSqlite))
        .count() as u64
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

/// Builds the archive on a thread of its own while this one uploads it, in parts; a
/// bounded channel between them bounds memory. Returns how the archive is stored, what
/// `work` produced, and the recipients back (they cannot be shared between threads, only
/// moved).
fn archive_and_upload<T: Send>(
    remote: &Remote,
    id: &str,
    recipients: Recipients,
    settings: ArchiveSettings,
    work: impl FnOnce(&mut ArchiveWriter) -> Result<T> + Send,
) -> Result<(ArchiveInfo, T, Recipients)> {
    let (sender, body) = handover_channel();
    let (produced, uploaded) = std::thread::scope(|scope| {
        let producer = scope.spawn(move || -> Result<_> {
            let mut writer = ArchiveWriter::new(sender, &recipients, &settings)?;
            let done = work(&mut writer)?;
            Ok((writer.finish()?, done, recipients))
        });
        let uploaded = remote.upload_archive(id, body);
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
        (Ok((sealed, done, recipients)), Ok(uploaded)) => {
            Ok((stored_archive(id, sealed, uploaded)?, done, recipients))
        }
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

/// The manifest's record of an archive the writer sealed and the store took in parts.
fn stored_archive(id: &str, sealed: Sealed, uploaded: Uploaded) -> Result<ArchiveInfo> {
    if uploaded.size != sealed.size {
        bail!(
            "the store took {} bytes of an archive of {}: no snapshot was written",
            uploaded.size,
            sealed.size
        );
    }
    Ok(ArchiveInfo {
        key: Object::Archive(id.to_string()).key(),
        size: sealed.size,
        sha256: sealed.sha256,
        header: sealed.header,
        encoding: crate::archive::ENCODING.to_string(),
        parts: Some(ArchiveParts {
            size: uploaded.part_size,
        }),
    })
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
    archive: ArchiveInfo,
    index: ObjectRecord,
    archived: &Archived,
    signal: Option<SignalSnapshot>,
) -> Manifest {
    Manifest {
        format: manifest::FORMAT_VERSION,
        id: id.to_string(),
        started_at,
        finished_at: Utc::now(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        r#final: options.r#final,
        lease_owner: options.lease_owner.clone(),
        archive,
        index: Some(index),
        parent: parent.as_ref().map(|p| p.chain.id.clone()),
        chain_length: parent.as_ref().map_or(0, |p| p.chain.chain_length + 1),
        chain_full: parent.as_ref().map(|p| p.chain.full_id.clone()),
        depends_on: depends_on(id, archived),
        content: archived.counts.clone(),
        attachments: attachment_check(signal.as_ref(), archived),
        signal_db: signal.map(|s| s.info),
        catalog_digest: Some(crate::catalog::digest(&archived.entries)),
    }
}

/// Every archive the snapshot's index points into, its own (`id`) included.
fn depends_on(id: &str, archived: &Archived) -> Vec<String> {
    let depends_on: BTreeSet<String> = archived
        .entries
        .iter()
        .flat_map(|e| {
            let deltas = e.db_chain.iter().flat_map(|chain| chain.deltas.iter());
            e.archive.iter().chain(deltas).cloned()
        })
        .chain([id.to_string()])
        .collect();
    depends_on.into_iter().collect()
}

/// The attachments Signal's database snapshot references, and how many of them were
/// missing from the home.
fn attachment_check(signal: Option<&SignalSnapshot>, archived: &Archived) -> AttachmentCheck {
    match signal {
        // Signal deletes a file only after its row, which changes the database: a file
        // deleted while it stayed unchanged may be one it references.
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
            referenced: signal.map_or(0, |s| s.references.len() as u64),
            missing: archived.missing_attachments,
        },
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
