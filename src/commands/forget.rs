//! `forget ID…`: remove chosen snapshots, where `prune` removes what a policy does not keep.
//!
//! Runs alone, under the exclusive repository lock as prune does, and deletes in prune's
//! order: the manifest first (the commit point: the snapshot is gone at once, and a crash
//! leaves only unlisted objects that prune removes as orphans), then index and archive.
//! Refused, before anything is deleted: a snapshot whose archive another remaining
//! snapshot restores files from, and the final snapshot a released lease hands over (what
//! the next instance restores with `--snapshot handoff`).

use std::collections::BTreeSet;

use anyhow::{Result, bail};

use crate::lease;
use crate::lock;
use crate::repo::Repository;

pub struct ForgetOptions {
    /// Snapshot ids, unique prefixes or 8-hex suffixes.
    pub snapshots: Vec<String>,
    pub dry_run: bool,
}

pub async fn run(repo: &Repository, options: &ForgetOptions) -> Result<()> {
    lock::exclusively(repo, "forget", options.dry_run, forget(repo, options)).await
}

async fn forget(repo: &Repository, options: &ForgetOptions) -> Result<()> {
    let mut chosen = BTreeSet::new();
    for wanted in &options.snapshots {
        // By name, trustworthy or not: removing a junk manifest someone put in the bucket
        // is what `latest` asks for when it refuses to pass one.
        chosen.insert(repo.resolve(wanted).await?);
    }
    check_nothing_depends_on(repo, &chosen).await?;
    if let Some(handoff) = lease::handed_over_snapshot(repo).await?
        && chosen.contains(&handoff)
    {
        bail!(
            "refusing to forget {handoff}: it is the final snapshot the repository's lease \
             hands over to the next instance (`restore --snapshot handoff`). Forget it after \
             the next instance has started and taken the lease"
        );
    }
    if options.dry_run {
        for id in &chosen {
            println!("would forget {id}");
        }
        println!("dry run: would forget {} snapshots", chosen.len());
        return Ok(());
    }
    let mut retained = 0;
    for id in &chosen {
        match repo.forget(id).await? {
            Some(kept) => {
                retained += 1;
                println!("kept {id}: {kept}");
            }
            None => println!("forgot {id}"),
        }
    }
    println!(
        "forgot {} snapshots ({retained} still under Object Lock retention)",
        chosen.len() - retained
    );
    Ok(())
}

/// Fails when a snapshot that stays restores files from the archive of one to forget.
async fn check_nothing_depends_on(repo: &Repository, chosen: &BTreeSet<String>) -> Result<()> {
    let mut needed = Vec::new();
    for manifest in repo.snapshots().await? {
        if chosen.contains(&manifest.id) {
            continue;
        }
        for dependency in manifest.archives_needed() {
            if chosen.contains(&dependency) {
                needed.push(format!("{dependency} (needed by {})", manifest.id));
            }
        }
    }
    if !needed.is_empty() {
        bail!(
            "refusing to forget {}: snapshots that stay restore files from their archives. \
             Forget those snapshots too (in the same command), or keep these",
            needed.join(", ")
        );
    }
    Ok(())
}
