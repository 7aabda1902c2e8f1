//! `snapshots`: what the repository holds, from the manifests alone (no key needed).
//!
//! An incremental snapshot's own archive holds only what changed, so its own size says
//! little about what restoring it costs. Each row therefore also shows its chain: the
//! archives a restore of it reads (its `depends_on`, as [`crate::readback::Plan`] reads
//! them) and their total size.

use std::collections::HashMap;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::manifest::Manifest;
use crate::repo::Repository;
use indicatif::HumanBytes;

/// One row: the manifest as before (so `--json` only gains fields), plus its chain.
#[derive(Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    manifest: &'a Manifest,
    /// "full" or "incremental".
    kind: &'static str,
    /// When the snapshot was taken: its start, which is also the time in its id.
    taken_at: DateTime<Utc>,
    /// Archives a restore of it reads, itself included.
    restore_archives: usize,
    /// Stored bytes of those archives; `None` if one of them is missing (a broken chain).
    restore_size: Option<u64>,
    /// Files a restore writes: those in its own archive and those reused from older ones.
    restore_files: u64,
}

impl<'a> Row<'a> {
    fn new(manifest: &'a Manifest, by_id: &HashMap<&str, &Manifest>) -> Self {
        let needed = manifest.archives_needed();
        let restore_size = needed
            .iter()
            .map(|id| by_id.get(id.as_str()).map(|m| m.archive.size))
            .sum();
        Self {
            manifest,
            kind: if manifest.parent.is_some() {
                "incremental"
            } else {
                "full"
            },
            taken_at: manifest.started_at,
            restore_archives: needed.len(),
            restore_size,
            restore_files: manifest.content.files + manifest.content.reused_files,
        }
    }
}

pub async fn run(repo: &Repository, json: bool) -> Result<()> {
    let listing = repo.listing().await?;
    if json {
        // The JSON lists snapshots only; what was refused goes to the log.
        for refused in &listing.refused {
            tracing::warn!(snapshot = %refused.id, problem = %refused.why, "not trustworthy: left out");
        }
    }
    let manifests = listing.snapshots;
    let by_id: HashMap<&str, &Manifest> = manifests.iter().map(|m| (m.id.as_str(), m)).collect();
    let rows: Vec<Row> = manifests.iter().map(|m| Row::new(m, &by_id)).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<30} {:<19} {:<11} {:>10} {:>12} {:>5} {:>8} {:>6} {:<8} FINAL",
        "ID", "TAKEN (UTC)", "KIND", "SIZE", "RESTORE SIZE", "CHAIN", "FILES", "SCHEMA", "DB CHECK"
    );
    for row in &rows {
        let m = row.manifest;
        let (schema, check) = match &m.signal_db {
            Some(db) => (db.user_version.to_string(), db.check.clone()),
            None => ("-".into(), "no db".into()),
        };
        println!(
            "{:<30} {:<19} {:<11} {:>10} {:>12} {:>5} {:>8} {:>6} {:<8} {}",
            m.id,
            row.taken_at.format("%Y-%m-%d %H:%M:%S"),
            row.kind,
            HumanBytes(m.archive.size).to_string(),
            row.restore_size
                .map_or_else(|| "broken".into(), |size| HumanBytes(size).to_string()),
            row.restore_archives,
            row.restore_files,
            schema,
            check,
            if m.r#final { "final" } else { "" }
        );
    }
    for refused in &listing.refused {
        println!(
            "{:<30} NOT TRUSTWORTHY: {} (never restored; `forget` removes it)",
            refused.id, refused.why
        );
    }
    if manifests.is_empty() {
        eprintln!("no snapshots in {}", repo.location());
    }
    Ok(())
}
