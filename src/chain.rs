//! Chains of snapshots: whether the next one is incremental (and on which parent), and
//! what it must record as deleted.
//!
//! A snapshot is incremental when the local catalog knows the previous one: files whose
//! stat is unchanged are not archived again (see [`crate::reuse`]). Chains stay bounded: a
//! full snapshot every `full_every` incrementals, or when the chain's full snapshot is
//! older than `full_max_age`, or when the chain is no longer whole in the repository.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::catalog::Latest;
use crate::index::IndexEntry;
use crate::walk::Listing;

/// When a chain must end with a new full snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Incrementals before the next full snapshot; 0 makes every snapshot full.
    pub full_every: u32,
    /// A chain whose full snapshot is older than this gets a new full one.
    pub full_max_age: Duration,
}

/// The parent of the next snapshot: the catalog's `latest`, if its chain may grow and is
/// still whole. `needs(id)` gives the archives snapshot `id` needs, or `None` if its
/// manifest is gone or unreadable; an error from it (a cut) stops the choice.
pub fn choose_parent(
    latest: Option<Latest>,
    policy: &Policy,
    now: DateTime<Utc>,
    mut needs: impl FnMut(&str) -> Result<Option<Vec<String>>>,
) -> Result<Option<Latest>> {
    let Some(latest) = latest else {
        tracing::info!("no catalog for this repository yet: taking a full snapshot");
        return Ok(None);
    };
    if latest.chain_length + 1 > policy.full_every {
        tracing::info!(
            chain = latest.chain_length,
            "the chain is long enough: taking a full snapshot"
        );
        return Ok(None);
    }
    let full_age = latest
        .full_finished_at
        .map(|t| (now - t).to_std().unwrap_or_default());
    if full_age.is_none_or(|age| age > policy.full_max_age) {
        tracing::info!("the chain's full snapshot is too old: taking a full snapshot");
        return Ok(None);
    }
    // The new snapshot will need the archives its parent needs: every one of them must
    // still be in the repository with a readable manifest, or the chain is broken.
    let Some(needed) = needs(&latest.id)? else {
        tracing::warn!(snapshot = %latest.id, "the catalog's latest snapshot is gone from the repository: taking a full snapshot");
        return Ok(None);
    };
    for id in needed.iter().filter(|id| **id != latest.id) {
        if needs(id)?.is_none() {
            tracing::warn!(snapshot = %id, "the chain is broken (a snapshot it needs is missing or damaged): taking a full snapshot");
            return Ok(None);
        }
    }
    Ok(Some(latest))
}

/// Every path gone since the chain's full snapshot (the previous index keeps earlier
/// deletions as tombstones), sorted, so one archive's list is enough to finish a restore.
pub fn deleted_paths(previous: &HashMap<PathBuf, IndexEntry>, listing: &Listing) -> Vec<PathBuf> {
    let listed: HashSet<&Path> = listing.entries.iter().map(|e| e.path.as_path()).collect();
    let mut deleted: Vec<PathBuf> = previous
        .keys()
        .filter(|p| !listed.contains(p.as_path()))
        .cloned()
        .collect();
    deleted.sort();
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    const DAY: Duration = Duration::from_secs(86_400);

    fn latest(chain_length: u32, full_age: Option<Duration>) -> Latest {
        Latest {
            id: "s3".into(),
            chain_length,
            full_id: "s1".into(),
            full_finished_at: full_age.map(|age| Utc::now() - TimeDelta::from_std(age).unwrap()),
        }
    }

    /// A repository in which `s1 ← s2 ← s3` exist, minus `missing`.
    fn repository(
        missing: &'static [&'static str],
    ) -> impl FnMut(&str) -> Result<Option<Vec<String>>> {
        move |id| {
            Ok((!missing.contains(&id) && ["s1", "s2", "s3"].contains(&id))
                .then(|| vec!["s1".into(), "s2".into(), id.to_string()]))
        }
    }

    fn choose(
        latest: Option<Latest>,
        policy: Policy,
        missing: &'static [&'static str],
    ) -> Option<String> {
        choose_parent(latest, &policy, Utc::now(), repository(missing))
            .unwrap()
            .map(|l| l.id)
    }

    const POLICY: Policy = Policy {
        full_every: 24,
        full_max_age: Duration::from_secs(7 * 86_400),
    };

    #[test]
    fn a_whole_young_short_chain_grows() {
        assert_eq!(
            choose(Some(latest(2, Some(DAY))), POLICY, &[]),
            Some("s3".into())
        );
    }

    #[test]
    fn no_catalog_means_a_full_snapshot() {
        assert_eq!(choose(None, POLICY, &[]), None);
    }

    #[test]
    fn full_every_bounds_the_chain() {
        let policy = Policy {
            full_every: 3,
            ..POLICY
        };
        assert_eq!(
            choose(Some(latest(2, Some(DAY))), policy, &[]),
            Some("s3".into())
        );
        assert_eq!(choose(Some(latest(3, Some(DAY))), policy, &[]), None);
        let every_full = Policy {
            full_every: 0,
            ..POLICY
        };
        assert_eq!(choose(Some(latest(0, Some(DAY))), every_full, &[]), None);
    }

    #[test]
    fn an_old_or_undated_full_snapshot_starts_a_new_chain() {
        assert_eq!(choose(Some(latest(1, Some(8 * DAY))), POLICY, &[]), None);
        assert_eq!(choose(Some(latest(1, None)), POLICY, &[]), None);
    }

    #[test]
    fn a_missing_parent_or_a_broken_chain_means_a_full_snapshot() {
        assert_eq!(choose(Some(latest(2, Some(DAY))), POLICY, &["s3"]), None);
        assert_eq!(choose(Some(latest(2, Some(DAY))), POLICY, &["s1"]), None);
    }

    #[test]
    fn a_cut_while_checking_the_chain_is_an_error_not_a_full_snapshot() {
        let cut = |_: &str| -> Result<Option<Vec<String>>> { anyhow::bail!("cut") };
        assert!(choose_parent(Some(latest(1, Some(DAY))), &POLICY, Utc::now(), cut).is_err());
    }

    #[test]
    fn deletions_are_what_the_previous_index_has_and_the_listing_lacks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kept"), b"x").unwrap();
        let listing = crate::walk::list(
            dir.path(),
            &globset::GlobSet::empty(),
            &[],
            &crate::cancel::Cancel::new(),
        )
        .unwrap();
        let metadata = std::fs::metadata(dir.path().join("kept")).unwrap();
        let previous: HashMap<PathBuf, IndexEntry> = ["kept", "b-gone", "a-gone"]
            .into_iter()
            .map(|p| {
                let entry = IndexEntry::new(Path::new(p), crate::index::EntryKind::File, &metadata);
                (PathBuf::from(p), entry)
            })
            .collect();
        assert_eq!(
            deleted_paths(&previous, &listing),
            vec![PathBuf::from("a-gone"), PathBuf::from("b-gone")]
        );
    }
}
