//! `snapshots`: what the repository holds, from the manifests alone (no key needed).

use anyhow::Result;

use crate::fsutil::human_bytes;
use crate::repo::Repository;

pub async fn run(repo: &Repository, json: bool) -> Result<()> {
    let manifests = repo.snapshots().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&manifests)?);
        return Ok(());
    }
    println!(
        "{:<30} {:<20} {:>10} {:>8} {:>7} {:<9} FINAL",
        "ID", "TIME (UTC)", "SIZE", "FILES", "SCHEMA", "DB CHECK"
    );
    for m in &manifests {
        let (schema, check) = match &m.signal_db {
            Some(db) => (db.user_version.to_string(), db.check.clone()),
            None => ("-".into(), "no db".into()),
        };
        println!(
            "{:<30} {:<20} {:>10} {:>8} {:>7} {:<9} {}",
            m.id,
            m.finished_at.format("%Y-%m-%d %H:%M:%S"),
            human_bytes(m.archive.size),
            m.content.files,
            schema,
            check,
            if m.r#final { "final" } else { "" }
        );
    }
    if manifests.is_empty() {
        eprintln!("no snapshots in {}", repo.location());
    }
    Ok(())
}
