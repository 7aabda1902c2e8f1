//! `verify`: prove a snapshot restorable without writing a restore anywhere.
//!
//! `--quick` needs no key: it downloads every archive the snapshot needs (and its index)
//! and checks sizes and SHA-256 against the manifests. The full check also decrypts and
//! decompresses every stream, checks every entry name as a restore would, checks that
//! each file of the index is in its archive, and runs the restore gate on the Signal
//! database (copied to a temporary file, which stays encrypted with Signal's key).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::io::AsyncReadExt;

use super::Plan;
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
        tracing::info!(snapshot = %manifest.id, "quick check passed: every archive present, sizes and sha256 match");
        return Ok(manifest);
    }
    let identity = options
        .identity
        .as_ref()
        .context("a full verify needs --identity (or use --quick)")?;
    let identities = Arc::new(crate::keys::identities(identity)?);
    let plan = Plan::new(repo, &manifest, &identities).await?;
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut config = zeroize::Zeroizing::new(Vec::new());
    let mut db = None;
    for step in &plan.steps {
        let wanted = step.wanted.clone();
        let (found, step_config, step_db) =
            super::read_snapshot(repo, &step.manifest, identities.clone(), move |tar| {
                let mut found = Vec::new();
                let mut config = zeroize::Zeroizing::new(Vec::new());
                let mut db = None;
                for entry in tar.entries()? {
                    let mut entry = entry.map_err(archive::explain_read_error)?;
                    let raw = entry.path_bytes().into_owned();
                    if raw == archive::DELETED_LIST.as_bytes() {
                        continue;
                    }
                    let path = safe_relative_path(&raw)?;
                    if !wanted.as_ref().is_none_or(|w| w.contains(&path)) {
                        continue;
                    }
                    if entry.header().entry_type().is_file() {
                        found.push(path.clone());
                    }
                    if path == Path::new(profile::SIGNAL_CONFIG) {
                        config.clear();
                        entry
                            .read_to_end(&mut config)
                            .map_err(archive::explain_read_error)?;
                    } else if path == Path::new(profile::SIGNAL_DB) {
                        let mut copy = tempfile::NamedTempFile::new()?;
                        std::io::copy(&mut entry, &mut copy)
                            .map_err(archive::explain_read_error)?;
                        copy.flush()?;
                        db = Some(copy);
                    } else {
                        std::io::copy(&mut entry, &mut std::io::sink())
                            .map_err(archive::explain_read_error)?;
                    }
                }
                Ok((found, config, db))
            })
            .await?;
        seen.extend(found);
        // Each path is taken from exactly one archive: whichever holds it.
        if !step_config.is_empty() {
            config = step_config;
        }
        if step_db.is_some() {
            db = step_db;
        }
    }
    let missing = plan.files().filter(|e| !seen.contains(&e.path)).count();
    if missing > 0 {
        bail!(
            "snapshot {}: {missing} files of its index are not in their archives",
            manifest.id
        );
    }
    match (manifest.signal_db.is_some(), db) {
        (true, Some(db)) => {
            let check = super::restore::check_signal_db(&config, db.path())?;
            tracing::info!(snapshot = %manifest.id, user_version = check.user_version, "verify passed: streams authenticated, manifests match, integrity_check ok");
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

/// Checks every object the snapshot needs against its manifest, without the key.
async fn quick(repo: &Repository, manifest: &Manifest) -> Result<()> {
    if let Some(index) = &manifest.index {
        check_object(repo, &index.key, index.size, &index.sha256).await?;
    }
    for id in manifest.archives_needed() {
        let needed = if id == manifest.id {
            manifest.clone()
        } else {
            repo.find(&Selector::Id(id)).await?
        };
        check_object(
            repo,
            &needed.archive.key,
            needed.archive.size,
            &needed.archive.sha256,
        )
        .await
        .with_context(|| format!("snapshot {}", needed.id))?;
    }
    Ok(())
}

async fn check_object(repo: &Repository, key: &str, size: u64, sha256: &str) -> Result<()> {
    let mut object = repo.store().get(key, 0).await?;
    let mut digest = Digest::default();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = object.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        digest.update(&buffer[..n]);
    }
    digest.check(size, sha256)
}
