//! `prune`: forget snapshots a retention policy does not keep, and delete their objects.
//!
//! Runs alone (an exclusive repository lock). Deletes the manifest first, so a snapshot
//! disappears at once and a crash leaves only unlisted objects, which a later prune removes
//! as orphans. Objects still under S3 Object Lock retention are skipped and reported.

use std::collections::BTreeSet;

use anyhow::Result;
use chrono::{Duration, NaiveDateTime, Utc};

use crate::lock::{Lock, Mode};
use crate::repo::Repository;
use crate::retention::{self, Policy};
use crate::store::Retained;

pub struct PruneOptions {
    pub policy: Policy,
    pub dry_run: bool,
}

/// Objects without a manifest are left alone this long: a backup may still be uploading.
const ORPHAN_AGE: Duration = Duration::hours(24);

pub async fn run(repo: &Repository, options: &PruneOptions) -> Result<()> {
    options.policy.check()?;
    let lock = if options.dry_run {
        None
    } else {
        Some(Lock::acquire(repo, Mode::Exclusive, "prune").await?)
    };
    let result = prune(repo, options).await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    result
}

async fn prune(repo: &Repository, options: &PruneOptions) -> Result<()> {
    let snapshots = repo.snapshots().await?;
    let decisions = retention::decide(&snapshots, &options.policy);
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
        let manifest = snapshots
            .iter()
            .find(|m| m.id == decision.id)
            .expect("decided from this list");
        let mut keys = vec![format!("snapshots/{}.json", manifest.id)];
        keys.extend(manifest.index.as_ref().map(|i| i.key.clone()));
        keys.push(manifest.archive.key.clone());
        for key in keys {
            match repo.store().delete(&key).await {
                Err(err) if err.downcast_ref::<Retained>().is_some() => {
                    retained += 1;
                    println!("kept {key}: {err}");
                    break; // the rest of the snapshot stays whole, restorable
                }
                other => other?,
            }
        }
    }
    let orphans = delete_orphans(repo, &kept).await?;
    println!(
        "forgot {} snapshots ({retained} still under Object Lock retention), removed {orphans} orphaned objects; {} kept",
        forget.len() - retained,
        kept.len()
    );
    Ok(())
}

/// Archives and indexes whose snapshot has no manifest (an interrupted backup or prune),
/// once they are older than [`ORPHAN_AGE`].
async fn delete_orphans(repo: &Repository, kept: &BTreeSet<String>) -> Result<u64> {
    let listed: BTreeSet<String> = repo.snapshots().await?.into_iter().map(|m| m.id).collect();
    let mut removed = 0;
    for prefix in ["archives/", "indexes/"] {
        for object in repo.store().list(prefix).await? {
            let name = &object.key[prefix.len()..];
            let Some(id) = name
                .strip_suffix(".tar.zst.age")
                .or_else(|| name.strip_suffix(".json.zst.age"))
            else {
                continue; // not ours
            };
            if listed.contains(id) || kept.contains(id) {
                continue;
            }
            let Some(time) = id
                .get(..19)
                .and_then(|t| NaiveDateTime::parse_from_str(t, "%Y%m%dT%H%M%S%.3f").ok())
            else {
                continue; // not ours
            };
            if Utc::now().naive_utc() - time < ORPHAN_AGE {
                continue;
            }
            match repo.store().delete(&object.key).await {
                Err(err) if err.downcast_ref::<Retained>().is_some() => {}
                other => {
                    other?;
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}
