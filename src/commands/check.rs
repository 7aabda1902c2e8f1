//! `check`: fails when the newest snapshot is older than `--max-age`. For a `helm test`
//! pod, a probe or any monitor that can run a command; reads only the manifests.

use std::time::Duration;

use anyhow::Result;

use crate::exit::{self, Exit};

use crate::repo::{Repository, Selector};

pub async fn run(repo: &Repository, max_age: Duration) -> Result<()> {
    let newest = crate::selection::find(repo, &Selector::Latest).await?;
    let age = (chrono::Utc::now() - newest.finished_at)
        .to_std()
        .unwrap_or_default();
    let shown =
        |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
    if age > max_age {
        return Err(exit::coded(
            Exit::CheckStale,
            format!(
                "the newest snapshot, {}, is {} old: older than the allowed {}; check the backup logs",
                newest.id,
                shown(age),
                shown(max_age)
            ),
        ));
    }
    println!(
        "ok: the newest snapshot, {}, is {} old",
        newest.id,
        shown(age)
    );
    Ok(())
}
