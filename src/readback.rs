//! Reading a snapshot back, for `restore` and `verify`: which archives it needs and which
//! entries to take from each ([`Plan`]), and each archive's tar stream, authenticated and
//! checked against its manifest ([`read_archive`]).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::Digest;

use crate::archive::{self, Digest as Checksum, HashingReader, PlainReader};
use crate::blocking::{Remote, RemoteReader};
use crate::cancel::{Cancel, is_cancelled};
use crate::db_rebuild::{Deltas, FullCopyWatch, Rebuilt};
use crate::index::{self, DbChain, EntryKind, IndexEntry};
use crate::keys::Identities;
use crate::manifest::{Manifest, ObjectRecord};
use crate::profile::{self, DbKey};
use crate::progress::{Counted, Progress};
use crate::raw_pages::RawPageList;
use crate::repo::Selector;
use crate::unpack::{self, UnpackOptions, safe_relative_path};

/// What a restore of one snapshot reads: each archive it needs once, with the entries to
/// take from it; the snapshot's own archive last (it holds every directory, so their
/// modes and times are applied after all files are in).
pub struct Plan {
    pub steps: Vec<Step>,
    /// The snapshot's index; empty for a snapshot without one.
    pub entries: Vec<IndexEntry>,
}

pub struct Step {
    pub manifest: Manifest,
    /// Paths to take from this archive; `None`: everything.
    pub wanted: Option<HashSet<PathBuf>>,
}

impl Step {
    pub fn wants(&self, path: &std::path::Path) -> bool {
        self.wanted.as_ref().is_none_or(|w| w.contains(path))
    }
}

impl Plan {
    pub fn new(remote: &Remote, manifest: &Manifest, identities: &Identities) -> Result<Self> {
        let Some(record) = &manifest.index else {
            let steps = vec![Step {
                manifest: manifest.clone(),
                wanted: None,
            }];
            return Ok(Self {
                steps,
                entries: Vec::new(),
            });
        };
        let entries = read_index(remote, manifest, record, identities)?;
        let db_deltas = entries
            .iter()
            .filter_map(|e| e.db_chain.as_ref())
            .flat_map(|chain| chain.deltas.iter())
            .collect::<HashSet<_>>();
        let mut steps = Vec::new();
        for id in manifest.archives_needed() {
            let mut wanted = wanted_from(&entries, &id, id == manifest.id);
            if db_deltas.contains(&id) {
                wanted.insert(PathBuf::from(archive::DB_DELTA));
            }
            steps.push(Step {
                manifest: step_manifest(remote, manifest, &id)?,
                wanted: Some(wanted),
            });
        }
        steps.sort_by_key(|step| step.manifest.id == manifest.id);
        Ok(Self { steps, entries })
    }

    pub fn files(&self) -> impl Iterator<Item = &IndexEntry> {
        self.entries.iter().filter(|e| e.kind == EntryKind::File)
    }

    /// Takes `paths` out of the archives (by snapshot id) that would have provided them,
    /// and drops every archive but the snapshot's own that is left with nothing to give.
    pub fn leave_out(&mut self, paths: &HashMap<String, Vec<PathBuf>>) {
        for step in &mut self.steps {
            if let (Some(wanted), Some(gone)) = (&mut step.wanted, paths.get(&step.manifest.id)) {
                for path in gone {
                    wanted.remove(path);
                }
            }
        }
        let own = self.steps.pop(); // last, and always read: it holds the directories
        self.steps
            .retain(|step| step.wanted.as_ref().is_none_or(|w| !w.is_empty()));
        self.steps.extend(own);
    }

    /// The index entry of Signal's database, if the snapshot has one.
    fn db_entry(&self) -> Option<&IndexEntry> {
        self.entries
            .iter()
            .find(|e| e.path == Path::new(profile::SIGNAL_DB))
    }

    /// How Signal's database is rebuilt, if the snapshot's index says.
    pub fn db_chain(&self) -> Option<&DbChain> {
        self.db_entry().and_then(|e| e.db_chain.as_ref())
    }

    /// Rebuilds Signal's database at `db` (its full copy, unpacked) with the `deltas` read
    /// from the plan's archives, keyed from `config` (the snapshot's `config.json`), and
    /// checks it is the snapshot's version; its page list, if the index names one.
    pub fn rebuild_db(
        &self,
        deltas: Deltas,
        db: &Path,
        config: &[u8],
        cancel: &Cancel,
    ) -> Result<Option<Rebuilt>> {
        self.rebuild_db_with(self.db_chain(), deltas, db, config, cancel)
    }

    fn rebuild_db_with(
        &self,
        chain: Option<&DbChain>,
        deltas: Deltas,
        db: &Path,
        config: &[u8],
        cancel: &Cancel,
    ) -> Result<Option<Rebuilt>> {
        let Some(chain) = chain else {
            return Ok(None);
        };
        let key = DbKey::from_config_json(config, Path::new(profile::SIGNAL_CONFIG))?;
        let bytes = |id: &str| self.db_bytes(id);
        deltas.rebuild(db, &key, chain, bytes, cancel).map(Some)
    }

    /// The size of Signal's database that snapshot `id` of the plan recorded.
    pub fn db_bytes(&self, id: &str) -> Option<u64> {
        let step = self.steps.iter().find(|s| s.manifest.id == id)?;
        Some(step.manifest.signal_db.as_ref()?.bytes)
    }

    /// Progress of reading the plan: the bytes to download (every archive's stored
    /// size) and the files of its index, where it has one.
    fn start_progress<'r>(&self, remote: &'r Remote) -> &'r Progress {
        let progress = remote.cancel().progress();
        let bytes = self.steps.iter().map(|s| s.manifest.archive.size).sum();
        progress.set_totals(self.files().count() as u64, bytes);
        progress
    }

    /// The content bytes of every archive read: what a restore needs free.
    pub fn content_bytes(&self) -> u64 {
        self.steps.iter().map(|s| s.manifest.content.bytes).sum()
    }
}

/// The snapshot's index, checked against the size and digest its manifest records.
fn read_index(
    remote: &Remote,
    manifest: &Manifest,
    record: &ObjectRecord,
    identities: &Identities,
) -> Result<Vec<IndexEntry>> {
    let sealed = remote
        .read_bounded(&record.key, record.size)
        .with_context(|| {
            format!(
                "snapshot {} has a manifest but its index cannot be read",
                manifest.id
            )
        })?;
    if sealed.len() as u64 != record.size
        || hex::encode(sha2::Sha256::digest(&sealed)) != record.sha256
    {
        bail!(
            "the index of snapshot {} does not match its manifest: it was damaged or replaced",
            manifest.id
        );
    }
    index::open(&sealed, identities)
}

/// The paths of `entries` that archive `id` provides; the snapshot's `own` archive also
/// provides every directory and link.
fn wanted_from(entries: &[IndexEntry], id: &str, own: bool) -> HashSet<PathBuf> {
    entries
        .iter()
        .filter(|e| {
            e.archive.as_deref() == Some(id)
                || (own && matches!(e.kind, EntryKind::Directory | EntryKind::Symlink))
        })
        .map(|e| e.path.clone())
        .collect()
}

/// The manifest of archive `id` that `manifest`'s snapshot needs: its own, or an older
/// snapshot's, which must be in the repository.
fn step_manifest(remote: &Remote, manifest: &Manifest, id: &str) -> Result<Manifest> {
    if id == manifest.id {
        return Ok(manifest.clone());
    }
    remote.find(&Selector::Id(id.to_owned())).with_context(|| {
        format!(
            "snapshot {} needs files from snapshot {id}, which is missing from the repository",
            manifest.id
        )
    })
}

pub type Download = HashingReader<Counted<RemoteReader>>;

/// Downloads a snapshot's archive and hands its tar stream to `consume`; then reads the
/// stream to its end and checks it against the manifest. Nothing `consume` produced may be
/// trusted unless this returns Ok. A cut stops the download within one read.
pub fn read_archive<T>(
    remote: &Remote,
    manifest: &Manifest,
    identities: &Identities,
    consume: impl FnOnce(&mut tar::Archive<PlainReader<Download>>) -> Result<T>,
) -> Result<T> {
    let object = remote
        .archive_reader(&manifest.id, &manifest.archive)
        .with_context(|| {
            format!(
                "snapshot {} has a manifest but its archive cannot be read",
                manifest.id
            )
        })?;
    // Decrypting authenticates every byte after a pinned header: only the header is hashed.
    let digest = Checksum::pinned(manifest.archive.header.clone());
    let (ciphertext, digest) =
        HashingReader::new(remote.cancel().progress().reader(object), digest);
    let mut tar = tar::Archive::new(archive::open_plain(ciphertext, identities)?);
    let result = consume(&mut tar);
    // A damaged stream often surfaces first as a tar error: prefer the real cause.
    let finished = archive::finish_plain(tar.into_inner());
    remote.cancel().check()?; // a cut reads as one, not as a damaged stream
    let result = match (result, finished) {
        (Ok(value), Ok(())) => value,
        (_, Err(err)) | (Err(err), _) => return Err(err),
    };
    let expected = &manifest.archive;
    digest
        .lock()
        .unwrap()
        .check(expected.size, &expected.sha256)?;
    Ok(result)
}

/// What a restore takes from the volume it updates instead of the repository. The update
/// ([`crate::update`]) decides what; reading the snapshot back only has it stage its files
/// and bring Signal's database forward, and does not depend on the update built over it.
pub trait TakenFromVolume {
    /// Puts what is taken from the volume into `staging`, before any archive is unpacked.
    fn stage(&self, staging: &Path, cancel: &Cancel) -> Result<()>;

    /// The deltas Signal's database needs on top of the volume's, if it is taken from the
    /// volume (none when it is unchanged).
    fn db_chain(&self) -> Option<&DbChain>;

    /// Whether those deltas are written into the volume's own database file, in place.
    fn db_written_in_place(&self) -> bool;

    /// Writes the newer deltas into the volume's database in place, keyed from `config`
    /// (the snapshot's `config.json`); `to` is the snapshot they bring it to; `staged` is
    /// the database's link in the staging directory. Returns its new page list.
    fn catch_up_in_place(
        &self,
        staged: &Path,
        deltas: &Deltas,
        expected_bytes: &dyn Fn(&str) -> Option<u64>,
        config: &[u8],
        to: &str,
        cancel: &Cancel,
    ) -> Result<RawPageList>;
}

/// Unpacks every archive of `plan` into `dest` (a directory we created), after what an
/// update takes from the volume, checks that every file of the index arrived, and
/// rebuilds Signal's database from its deltas; its page list, if the index names one.
pub fn unpack_into(
    remote: &Remote,
    plan: &Plan,
    identities: &Identities,
    dest: &Path,
    chown: Option<(u32, u32)>,
    from_volume: Option<&dyn TakenFromVolume>,
) -> Result<Option<Rebuilt>> {
    // `dest` is in the target, whose owner can rename it and plant a link under its name
    // while this runs: files are written through a handle on the directory made for this
    // restore instead. (SQLite refuses such a path: it opens the database by `dest`, with
    // no link followed.)
    let handle = crate::fsutil::open_own_dir(dest)?;
    let pinned = &crate::fsutil::path_of(&handle);
    if let Some(volume) = from_volume {
        volume.stage(pinned, remote.cancel())?;
    }
    let deltas = unpack_archives(remote, plan, identities, pinned, chown)?;
    check_files_arrived(plan, pinned)?;
    let (chain, on_volume) = match from_volume.and_then(TakenFromVolume::db_chain) {
        Some(newer) => (Some(newer), true),
        None => (plan.db_chain(), false),
    };
    if chain.is_none() {
        return Ok(None);
    }
    // SQLite opens by path: nothing on the way may be a link the archive made, and `dest`
    // must still be the directory made for this restore.
    for path in [profile::SIGNAL_CONFIG, profile::SIGNAL_DB] {
        crate::signal_db::plain_tree(pinned, Path::new(path))?;
    }
    crate::fsutil::check_still_own_dir(dest, &handle)?;
    let config = read_config(pinned)?;
    let db = dest.join(profile::SIGNAL_DB);
    let pages = match from_volume.filter(|v| v.db_written_in_place()) {
        Some(volume) => {
            let bytes = |id: &str| plan.db_bytes(id);
            let to = own_id(plan);
            let cancel = remote.cancel();
            let pages = volume.catch_up_in_place(&db, &deltas, &bytes, &config, &to, cancel)?;
            Some(Rebuilt::Raw(pages))
        }
        None => rebuild_db(remote, plan, chain, deltas, &db, &config, on_volume)?,
    };
    set_db_mtime(plan, &db)?;
    Ok(pages)
}

/// Unpacks each archive of `plan` into `pinned` (the staging directory, by its handle),
/// the entries its step wants; the database deltas are set aside, to apply once all are in.
fn unpack_archives(
    remote: &Remote,
    plan: &Plan,
    identities: &Identities,
    pinned: &Path,
    chown: Option<(u32, u32)>,
) -> Result<Deltas> {
    let progress = plan.start_progress(remote);
    let mut deltas = Deltas::new(pinned);
    let page_size = plan.db_chain().and_then(|chain| chain.raw_page_size);
    let mut watch = FullCopyWatch::new(pinned, page_size);
    for (k, step) in plan.steps.iter().enumerate() {
        progress.set_archive(k + 1, plan.steps.len());
        let options = UnpackOptions {
            chown,
            preserve_owner: crate::fsutil::is_root(),
            max_content_bytes: step.manifest.content.bytes,
            progress: progress.clone(),
        };
        let id = &step.manifest.id;
        let stats = read_archive(remote, &step.manifest, identities, |archive| {
            let mut set_aside = |delta: &mut dyn Read, len| {
                deltas.set_aside(id, delta, len, options.max_content_bytes)
            };
            unpack::unpack(
                archive,
                pinned,
                &options,
                &|path| step.wants(path),
                &mut set_aside,
                &mut watch,
            )
        })?;
        tracing::info!(archive = %step.manifest.id, files = stats.files, bytes = stats.bytes, "archive unpacked and authenticated");
    }
    deltas.streamed(watch);
    Ok(deltas)
}

/// Every file of the snapshot's index is in `pinned`, as a regular file.
fn check_files_arrived(plan: &Plan, pinned: &Path) -> Result<()> {
    let missing = plan
        .files()
        .filter(|e| !std::fs::symlink_metadata(pinned.join(&e.path)).is_ok_and(|m| m.is_file()))
        .count();
    if missing > 0 {
        bail!("{missing} files of the snapshot's index were not in their archives");
    }
    Ok(())
}

/// Rebuilds Signal's database at `db` with `chain`'s deltas; `on_volume`: its base is the
/// volume's database (an update), not the snapshot's full copy.
fn rebuild_db(
    remote: &Remote,
    plan: &Plan,
    chain: Option<&DbChain>,
    deltas: Deltas,
    db: &Path,
    config: &[u8],
    on_volume: bool,
) -> Result<Option<Rebuilt>> {
    plan.rebuild_db_with(chain, deltas, db, config, remote.cancel())
        .map_err(|err| match on_volume && !is_cancelled(&err) {
            // Its pages, not its stat, showed that the volume's database changed.
            true => err.context(
                "the target's Signal database is not the version its restore left, though its \
                 size and modification time say so: something wrote to it since (Signal, with \
                 its times set back?). Nothing was moved into place. Restore over it without \
                 --update (with --force), or into an empty volume",
            ),
            false => err,
        })
}

fn read_config(dest: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let config = std::fs::read(dest.join(profile::SIGNAL_CONFIG)).context(
        "the snapshot's Signal database has deltas but the snapshot has no config.json with its key",
    )?;
    Ok(zeroize::Zeroizing::new(config))
}

/// The id of the snapshot the plan restores (its own archive is read last).
fn own_id(plan: &Plan) -> String {
    plan.steps
        .last()
        .map(|s| s.manifest.id.clone())
        .unwrap_or_default()
}

/// As its archive entry would have it: a later `restore --update` compares the stat.
fn set_db_mtime(plan: &Plan, db: &Path) -> Result<()> {
    if let Some(entry) = plan.db_entry() {
        let seconds = entry.mtime_ns.div_euclid(1_000_000_000).max(0) as u64;
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
        std::fs::File::options()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(db)?
            .set_modified(mtime)?;
    }
    Ok(())
}

/// What a full read of a snapshot found, without writing it anywhere but Signal's
/// database (to a temporary file, still encrypted with Signal's key) and its deltas
/// (sealed, see [`Deltas`]).
pub struct Survey {
    pub files: HashSet<PathBuf>,
    pub config: zeroize::Zeroizing<Vec<u8>>,
    pub db: Option<tempfile::NamedTempFile>,
    pub deltas: Deltas,
}

/// Reads every archive of `plan` to its end, checking every entry name as a restore would.
pub fn survey(remote: &Remote, plan: &Plan, identities: &Identities) -> Result<Survey> {
    let mut survey = Survey {
        files: HashSet::new(),
        config: Default::default(),
        db: None,
        deltas: Deltas::new(&std::env::temp_dir()),
    };
    let progress = plan.start_progress(remote);
    for (k, step) in plan.steps.iter().enumerate() {
        progress.set_archive(k + 1, plan.steps.len());
        read_archive(remote, &step.manifest, identities, |tar| {
            survey_archive(tar, step, &mut survey, progress)
        })?;
    }
    Ok(survey)
}

fn survey_archive<R: Read>(
    tar: &mut tar::Archive<R>,
    step: &Step,
    survey: &mut Survey,
    progress: &Progress,
) -> Result<()> {
    let mut left = step.manifest.content.bytes;
    for entry in tar.entries()? {
        let mut entry = entry.map_err(archive::explain_read_error)?;
        let raw = entry.path_bytes().into_owned();
        if raw == archive::DELETED_LIST.as_bytes() {
            continue;
        }
        if raw == archive::DB_DELTA.as_bytes() {
            if step.wants(Path::new(archive::DB_DELTA)) {
                let len = entry.size();
                let limit = step.manifest.content.bytes;
                survey
                    .deltas
                    .set_aside(&step.manifest.id, &mut entry, len, limit)?;
            }
            continue;
        }
        let path = safe_relative_path(&raw)?;
        if !step.wants(&path) {
            continue; // each path is taken from exactly one archive: whichever holds it
        }
        if entry.header().entry_type().is_file() {
            survey.files.insert(path.clone());
            progress.add_files(1);
        }
        let len = entry.size();
        left = crate::unpack::spend_budget(left, len, &step.manifest)?;
        let mut entry = entry.take(len);
        if path == Path::new(profile::SIGNAL_CONFIG) {
            survey.config.clear();
            entry
                .read_to_end(&mut survey.config)
                .map_err(archive::explain_read_error)?;
        } else if path == Path::new(profile::SIGNAL_DB) {
            let mut copy = tempfile::NamedTempFile::new()?;
            std::io::copy(&mut entry, &mut copy).map_err(archive::explain_read_error)?;
            copy.flush()?;
            survey.db = Some(copy);
        } else {
            std::io::copy(&mut entry, &mut std::io::sink()).map_err(archive::explain_read_error)?;
        }
    }
    Ok(())
}

/// Checks every object a snapshot needs against its manifest, without the key.
pub fn check_objects(remote: &Remote, manifest: &Manifest) -> Result<()> {
    let mut chain = Vec::new();
    for id in manifest.archives_needed() {
        chain.push(if id == manifest.id {
            manifest.clone()
        } else {
            remote.find(&Selector::Id(id))?
        });
    }
    // The total before the first byte is read: the index and every archive of the chain.
    let index_size = manifest.index.as_ref().map_or(0, |index| index.size);
    let archives: u64 = chain.iter().map(|needed| needed.archive.size).sum();
    let progress = remote.cancel().progress();
    progress.set_totals(0, index_size + archives);
    if let Some(index) = &manifest.index {
        check_object(
            remote,
            remote.reader(&index.key)?,
            index.size,
            &index.sha256,
        )?;
    }
    for (k, needed) in chain.iter().enumerate() {
        progress.set_archive(k + 1, chain.len());
        let archive = &needed.archive;
        let object = remote.archive_reader(&needed.id, archive)?;
        check_object(remote, object, archive.size, &archive.sha256)
            .with_context(|| format!("snapshot {}", needed.id))?;
    }
    Ok(())
}

fn check_object(remote: &Remote, object: RemoteReader, size: u64, sha256: &str) -> Result<()> {
    let mut object = remote.cancel().progress().reader(object);
    let mut digest = Checksum::default();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = object.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        digest.update(&buffer[..n]);
    }
    digest.check(size, sha256)
}
