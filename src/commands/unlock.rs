//! `unlock`: remove repository locks that hold nothing — expired, left by a process that
//! is gone, or unreadable — and with `--all` the live ones too (restic's word and rule).

use anyhow::Result;

use crate::lock::{self, Unlocked};
use crate::repo::Repository;

pub async fn run(repo: &Repository, all: bool) -> Result<()> {
    let done = lock::unlock(repo, all).await?;
    let mut removed = 0;
    for outcome in &done {
        match outcome {
            Unlocked::Stale { lock, why } => {
                removed += 1;
                println!("removed {lock}: {why}");
            }
            Unlocked::Live { lock, holder } => {
                removed += 1;
                tracing::warn!(
                    lock,
                    holder,
                    "--all: removed a live lock; if that run still goes on, another can now run alongside it"
                );
                println!("removed {lock} (--all): {holder}");
            }
            Unlocked::Kept { lock, holder } => {
                println!("kept {lock}: it may still be held ({holder}); --all removes it too");
            }
        }
    }
    println!("removed {removed} of {} locks", done.len());
    Ok(())
}
