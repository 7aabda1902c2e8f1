//! `prune`: forget snapshots a retention policy does not keep, and delete their objects.
//!
//! Runs alone (an exclusive repository lock). Deletes the manifest first, so a snapshot
//! disappears at once and a crash leaves only unlisted objects, which a later prune removes
//! as orphans. Objects still under S3 Object Lock retention are skipped and reported.

use std::collections::BTreeSet;

use anyhow::Result;
use chrono::{Duration, Utc};

use crate::layout::Object;
use crate::lock;
use crate::repo::Repository;
use crate::retention::{self, Policy};
use crate::store::StoreError;

pub struct PruneOptions {
    pub policy: Policy,
    pub dry_run: bool,
}

/// Objects without a manifest are left alone this long: a backup may still be uploading.
const ORPHAN_AGE: Duration = Duration::hours(24);

pub async fn run(repo: &Repository, options: &PruneOptions) -> Result<()> {
    options.policy.check()?;
    lock::exclusively(repo, "prune", options.dry_run, prune(repo, options)).await
}

async fn prune(repo: &Repository, options: &PruneOptions) -> Result<()> {
    let listing = repo.listing().await?;
    for refused in &listing.refused {
        tracing::warn!(snapshot = %refused.id, problem = %refused.why, "ignoring a snapshot manifest the verify key does not accept");
    }
    let decisions = retention::decide_apart(&listing.snapshots, &listing.unsigned, &options.policy);
    for decision in &decisions {
        println!(
            "{:<30} {:<6} {}",
            decision.id,
            if decision.keep { "keep" } else { "forget" },
            decision.reasons.join(", ")
        );
    }
    let forget: Vec<_> = decisions.iter().filter(|d| !d.keep).collect();
    let kept: BTreeSet<String> = decisions
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.id.clone())
        .collect();
    if options.dry_run {
        println!(
            "dry run: would forget {} of {} snapshots",
            forget.len(),
            decisions.len()
        );
        return Ok(());
    }
    let mut retained = 0;
    for decision in &forget {
        if let Some(why) = repo.forget(&decision.id).await? {
            retained += 1;
            println!("kept {why}");
        }
    }
    let orphans = delete_orphans(repo, &kept).await?;
    let interrupted = repo
        .store()
        .remove_interrupted(ORPHAN_AGE.to_std().expect("a positive age"))
        .await?;
    let uploads = abort_open_uploads(repo).await;
    println!(
        "forgot {} snapshots ({retained} still under Object Lock retention), removed {orphans} orphaned objects and {interrupted} files of interrupted writes, aborted {uploads} interrupted uploads; {} kept",
        forget.len() - retained,
        kept.len()
    );
    Ok(())
}

/// Aborts the uploads open in the repository and says how many, as a number or "no" when
/// they could not be listed or aborted (credentials without the right): a warning, not a
/// failed prune. Alone in the repository, no live backup can own an open upload.
async fn abort_open_uploads(repo: &Repository) -> String {
    match repo.store().abort_open_uploads().await {
        Ok(aborted) => aborted.to_string(),
        Err(err) => {
            tracing::warn!(
                error = format!("{:#}", anyhow::Error::from(err)),
                "could not abort the uploads backups killed mid-upload left open; prune's \
                 credentials need s3:ListBucketMultipartUploads and s3:AbortMultipartUpload \
                 (docs/kubernetes.md), else a lifecycle rule removes them"
            );
            "no".to_string()
        }
    }
}

/// Archives, indexes and signatures whose snapshot has no manifest object at all (an
/// interrupted backup or prune), once they are older than [`ORPHAN_AGE`]. A manifest that
/// does not verify still protects its objects: garbling the newest manifest must not make
/// prune delete the newest archive.
async fn delete_orphans(repo: &Repository, kept: &BTreeSet<String>) -> Result<u64> {
    let listed: BTreeSet<String> = repo.manifest_ids().await?.into_iter().collect();
    let mut removed = 0;
    for kind in [Object::Archive, Object::Index, Object::Signature] {
        for object in repo.list(kind).await? {
            let id = object.id().expect("archives and indexes have ids");
            if listed.contains(id) || kept.contains(id) {
                continue;
            }
            let Some(time) = crate::manifest::id_time(id) else {
                continue; // not ours
            };
            if Utc::now() - time < ORPHAN_AGE {
                continue;
            }
            match repo.delete(&object).await {
                Err(StoreError::Retained { .. }) => {}
                other => {
                    other?;
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}
