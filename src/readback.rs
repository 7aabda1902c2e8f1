//! Reading a snapshot back, for `restore` and `verify`: which archives it needs and which
//! entries to take from each ([`Plan`]), and each archive's tar stream, authenticated and
//! checked against its manifest ([`read_archive`]).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::Digest;

use crate::archive::{self, Digest as Checksum, HashingReader, PlainReader};
use crate::blocking::{Remote, RemoteReader};
use crate::index::{self, EntryKind, IndexEntry};
use crate::keys::Identities;
use crate::manifest::Manifest;
use crate::profile;
use crate::progress::{Counted, Progress};
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
        let sealed = remote.read_all(&record.key).with_context(|| {
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
        let entries = index::open(&sealed, identities)?;
        let mut steps = Vec::new();
        for id in manifest.archives_needed() {
            let own = id == manifest.id;
            let wanted = entries
                .iter()
                .filter(|e| {
                    e.archive.as_deref() == Some(id.as_str())
                        || (own && matches!(e.kind, EntryKind::Directory | EntryKind::Symlink))
                })
                .map(|e| e.path.clone())
                .collect();
            let step_manifest = if own {
                manifest.clone()
            } else {
                remote.find(&Selector::Id(id.clone())).with_context(|| {
                    format!("snapshot {} needs files from snapshot {id}, which is missing from the repository", manifest.id)
                })?
            };
            steps.push(Step {
                manifest: step_manifest,
                wanted: Some(wanted),
            });
        }
        steps.sort_by_key(|step| step.manifest.id == manifest.id);
        Ok(Self { steps, entries })
    }

    pub fn files(&self) -> impl Iterator<Item = &IndexEntry> {
        self.entries.iter().filter(|e| e.kind == EntryKind::File)
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
    let object = remote.reader(&manifest.archive.key).with_context(|| {
        format!(
            "snapshot {} has a manifest but its archive cannot be read",
            manifest.id
        )
    })?;
    let (ciphertext, digest) = HashingReader::new(remote.cancel().progress().reader(object));
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

/// Unpacks every archive of `plan` into `dest` (a directory we created) and checks that
/// every file of the index arrived.
pub fn unpack_into(
    remote: &Remote,
    plan: &Plan,
    identities: &Identities,
    dest: &Path,
    chown: Option<(u32, u32)>,
) -> Result<()> {
    let progress = plan.start_progress(remote);
    for (k, step) in plan.steps.iter().enumerate() {
        progress.set_archive(k + 1, plan.steps.len());
        let options = UnpackOptions {
            chown,
            preserve_owner: crate::fsutil::is_root(),
            max_content_bytes: step.manifest.content.bytes,
            progress: progress.clone(),
        };
        let stats = read_archive(remote, &step.manifest, identities, |archive| {
            unpack::unpack(archive, dest, &options, &|path| step.wants(path))
        })?;
        tracing::info!(archive = %step.manifest.id, files = stats.files, bytes = stats.bytes, "archive unpacked and authenticated");
    }
    let missing = plan
        .files()
        .filter(|e| !std::fs::symlink_metadata(dest.join(&e.path)).is_ok_and(|m| m.is_file()))
        .count();
    if missing > 0 {
        bail!("{missing} files of the snapshot's index were not in their archives");
    }
    Ok(())
}

/// What a full read of a snapshot found, without writing it anywhere but Signal's
/// database (to a temporary file, still encrypted with Signal's key).
#[derive(Default)]
pub struct Survey {
    pub files: HashSet<PathBuf>,
    pub config: zeroize::Zeroizing<Vec<u8>>,
    pub db: Option<tempfile::NamedTempFile>,
}

/// Reads every archive of `plan` to its end, checking every entry name as a restore would.
pub fn survey(remote: &Remote, plan: &Plan, identities: &Identities) -> Result<Survey> {
    let mut survey = Survey::default();
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
    for entry in tar.entries()? {
        let mut entry = entry.map_err(archive::explain_read_error)?;
        let raw = entry.path_bytes().into_owned();
        if raw == archive::DELETED_LIST.as_bytes() {
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
        check_object(remote, &index.key, index.size, &index.sha256)?;
    }
    for (k, needed) in chain.iter().enumerate() {
        progress.set_archive(k + 1, chain.len());
        let archive = &needed.archive;
        check_object(remote, &archive.key, archive.size, &archive.sha256)
            .with_context(|| format!("snapshot {}", needed.id))?;
    }
    Ok(())
}

fn check_object(remote: &Remote, key: &str, size: u64, sha256: &str) -> Result<()> {
    let mut object = remote.cancel().progress().reader(remote.reader(key)?);
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
