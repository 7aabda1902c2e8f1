//! One file per command; each parses nothing and decides little — the pipeline lives in
//! the domain modules. What two commands share (reading a snapshot back) is here.

pub mod backup;
pub mod check;
pub mod keygen;
pub mod prune;
pub mod restore;
pub mod run;
pub mod snapshots;
pub mod unlock;
pub mod verify;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sha2::Digest;
use tokio::io::AsyncReadExt;
use tokio_util::io::SyncIoBridge;

use crate::archive::{self, HashingReader, PlainReader};
use crate::index::{self, EntryKind, IndexEntry};
use crate::keys::Identities;
use crate::manifest::Manifest;
use crate::repo::{Repository, Selector};

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

impl Plan {
    pub async fn new(
        repo: &Repository,
        manifest: &Manifest,
        identities: &Identities,
    ) -> Result<Self> {
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
        let mut sealed = Vec::new();
        repo.store()
            .get(&record.key, 0)
            .await
            .with_context(|| {
                format!(
                    "snapshot {} has a manifest but its index cannot be read",
                    manifest.id
                )
            })?
            .read_to_end(&mut sealed)
            .await?;
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
                repo.find(&Selector::Id(id.clone())).await.with_context(|| {
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
}

type Download = HashingReader<indicatif::ProgressBarIter<SyncIoBridge<crate::store::ObjectReader>>>;

/// Downloads a snapshot's archive and hands its tar stream to `consume` on a blocking
/// thread; then reads the stream to its end and checks it against the manifest. Nothing
/// `consume` produced may be trusted unless this returns Ok.
pub async fn read_snapshot<T, F>(
    repo: &Repository,
    manifest: &Manifest,
    identities: Arc<Identities>,
    consume: F,
) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut tar::Archive<PlainReader<Download>>) -> Result<T> + Send + 'static,
{
    let object = repo
        .store()
        .get(&manifest.archive.key, 0)
        .await
        .with_context(|| {
            format!(
                "snapshot {} has a manifest but its archive cannot be read",
                manifest.id
            )
        })?;
    let progress = progress_bar(manifest.archive.size);
    let handle = tokio::runtime::Handle::current();
    let expected = manifest.archive.clone();
    tokio::task::spawn_blocking(move || {
        let raw = progress.wrap_read(SyncIoBridge::new_with_handle(object, handle));
        let (ciphertext, digest) = HashingReader::new(raw);
        let mut tar = tar::Archive::new(archive::open_plain(ciphertext, &identities)?);
        let result = consume(&mut tar);
        // A damaged stream often surfaces first as a tar error: prefer the real cause.
        let finished = archive::finish_plain(tar.into_inner());
        progress.finish_and_clear();
        let result = match (result, finished) {
            (Ok(value), Ok(())) => value,
            (_, Err(err)) | (Err(err), _) => return Err(err),
        };
        digest
            .lock()
            .unwrap()
            .check(expected.size, &expected.sha256)?;
        Ok(result)
    })
    .await?
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("a valid template"),
    );
    bar
}
