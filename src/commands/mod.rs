//! One file per command; each parses nothing and decides little — the pipeline lives in
//! the domain modules. What two commands share (reading a snapshot back) is here.

pub mod backup;
pub mod check;
pub mod keygen;
pub mod restore;
pub mod run;
pub mod snapshots;
pub mod verify;

use std::io::IsTerminal;

use anyhow::{Context, Result};
use tokio_util::io::SyncIoBridge;

use crate::archive::{self, HashingReader, PlainReader};
use crate::keys::Identities;
use crate::manifest::Manifest;
use crate::repo::Repository;

type Download = HashingReader<indicatif::ProgressBarIter<SyncIoBridge<crate::store::ObjectReader>>>;

/// Downloads a snapshot's archive and hands its tar stream to `consume` on a blocking
/// thread; then reads the stream to its end and checks it against the manifest. Nothing
/// `consume` produced may be trusted unless this returns Ok.
pub async fn read_snapshot<T, F>(
    repo: &Repository,
    manifest: &Manifest,
    identities: Identities,
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
