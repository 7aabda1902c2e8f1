//! `verify`: prove a snapshot restorable without writing a restore anywhere.
//!
//! `--quick` needs no key: it downloads the archive and checks its size and SHA-256
//! against the manifest. The full check also decrypts and decompresses the whole stream,
//! checks every entry name as a restore would, and runs the restore gate on the Signal
//! database (copied to a temporary file, which stays encrypted with Signal's key).

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use tokio::io::AsyncReadExt;

use crate::archive::{self, Digest};
use crate::manifest::Manifest;
use crate::profile;
use crate::repo::{Repository, Selector};
use crate::unpack::safe_relative_path;

pub struct VerifyOptions {
    pub snapshot: Selector,
    pub identity: Option<PathBuf>,
    pub quick: bool,
}

pub async fn run(repo: &Repository, options: &VerifyOptions) -> Result<Manifest> {
    let manifest = repo.find(&options.snapshot).await?;
    if options.quick {
        quick(repo, &manifest).await?;
        tracing::info!(snapshot = %manifest.id, "quick check passed: archive present, size and sha256 match");
        return Ok(manifest);
    }
    let identity = options
        .identity
        .as_ref()
        .context("a full verify needs --identity (or use --quick)")?;
    let identities = crate::keys::identities(identity)?;
    let expects_db = manifest.signal_db.is_some();
    let counted = super::read_snapshot(repo, &manifest, identities, move |tar| {
        let mut files = 0u64;
        let mut config = zeroize::Zeroizing::new(Vec::new());
        let mut db = None;
        for entry in tar.entries()? {
            let mut entry = entry.map_err(archive::explain_read_error)?;
            let path = safe_relative_path(&entry.path_bytes())?;
            if entry.header().entry_type().is_file() {
                files += 1;
            }
            if path == std::path::Path::new(profile::SIGNAL_CONFIG) {
                config.clear();
                entry
                    .read_to_end(&mut config)
                    .map_err(archive::explain_read_error)?;
            } else if path == std::path::Path::new(profile::SIGNAL_DB) {
                let mut copy = tempfile::NamedTempFile::new()?;
                std::io::copy(&mut entry, &mut copy).map_err(archive::explain_read_error)?;
                copy.flush()?;
                db = Some(copy);
            } else {
                std::io::copy(&mut entry, &mut std::io::sink())
                    .map_err(archive::explain_read_error)?;
            }
        }
        Ok((files, config, db))
    })
    .await?;
    let (files, config, db) = counted;
    // Re-reads of files that changed while read add entries beyond the file count.
    if files < manifest.content.files {
        bail!(
            "snapshot {} holds {files} files, its manifest says {}",
            manifest.id,
            manifest.content.files
        );
    }
    match (expects_db, db) {
        (true, Some(db)) => {
            let check = super::restore::check_signal_db(&config, db.path())?;
            tracing::info!(snapshot = %manifest.id, user_version = check.user_version, "verify passed: stream authenticated, manifest matches, integrity_check ok");
        }
        (true, None) => bail!(
            "snapshot {} should hold Signal's database but does not",
            manifest.id
        ),
        (false, _) => {
            tracing::info!(snapshot = %manifest.id, "verify passed (no Signal database in this snapshot)")
        }
    }
    Ok(manifest)
}

async fn quick(repo: &Repository, manifest: &Manifest) -> Result<()> {
    let mut object = repo.store().get(&manifest.archive.key, 0).await?;
    let mut digest = Digest::default();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = object.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        digest.update(&buffer[..n]);
    }
    digest.check(manifest.archive.size, &manifest.archive.sha256)
}
