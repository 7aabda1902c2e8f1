//! The sidecar's backups: on the schedule (first at once when the newest snapshot is
//! older than the schedule's interval), one at a time, each cut at its timeout, until
//! SIGTERM or a lost lease ends them; then the final snapshot, cut at its deadline.
//!
//! The final snapshot is the point of running as a Kubernetes *native sidecar*: Kubernetes
//! stops it only after the Signal container has exited, so the snapshot it takes then is the
//! freshest consistent state there is. If it cannot finish within `--final-deadline`, it is
//! cut (within about a second, in whatever phase it is) and, as with any failed backup,
//! leaves no snapshot behind. Each backup runs on a thread of its own ([`crate::blocking`]);
//! a deadline or SIGTERM cancels its token and waits for it to stop.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tokio::signal::unix::{SignalKind, signal};

use crate::backup::{self, BackupOptions};
use crate::blocking;
use crate::cancel::Cancel;
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::repo::Repository;
use crate::schedule;

/// When the sidecar backs up, and how long each backup may take.
pub struct Timing {
    pub schedule: schedule::Schedule,
    /// Random delay added to each scheduled time.
    pub jitter: Duration,
    /// A scheduled backup still running after this long is cut (no snapshot).
    pub backup_timeout: Duration,
    /// Time allowed for the final snapshot.
    pub final_deadline: Duration,
}

/// Reads the repository's newest snapshot into the metrics, so a fresh pod reports the
/// state of its backups rather than zeros; returns when it was committed. A repository
/// that cannot be read now is logged and left to the first backup.
pub async fn show_newest_snapshot(
    repo: &Repository,
    metrics: &Metrics,
) -> Option<chrono::DateTime<chrono::Utc>> {
    match repo.newest_trustworthy().await {
        Ok(newest) => {
            let newest = newest?;
            metrics.newest_snapshot(&newest);
            tracing::info!(snapshot = %newest.id, finished = %newest.finished_at.to_rfc3339(), "the repository's newest snapshot");
            Some(newest.finished_at)
        }
        Err(err) => {
            tracing::warn!(
                error = format!("{err:#}"),
                "cannot list the repository's snapshots; the metrics show them after the first backup"
            );
            None
        }
    }
}

/// Older than the gap between two scheduled runs: the schedule would have taken a newer
/// one had a sidecar been running (a pod down for a while, or a previous owner that failed).
pub fn is_stale(finished: chrono::DateTime<chrono::Utc>, schedule: &schedule::Schedule) -> bool {
    let mut upcoming = schedule.upcoming();
    let (Some(first), Some(second)) = (upcoming.next(), upcoming.next()) else {
        return false;
    };
    chrono::Utc::now() - finished > second - first
}

/// Whether the sidecar backs up at once rather than at the first scheduled time: when the
/// newest snapshot (committed at `newest`) is older than the schedule's interval.
pub fn back_up_at_start(
    newest: Option<chrono::DateTime<chrono::Utc>>,
    schedule: &schedule::Schedule,
) -> bool {
    let now = newest.is_some_and(|finished| is_stale(finished, schedule));
    if now {
        tracing::info!("the newest snapshot is older than the schedule's interval: backing up now");
    }
    now
}

/// Why the scheduled backups ended.
pub enum Ended {
    /// SIGTERM or SIGINT: take the final snapshot.
    Stop,
    /// Another instance took the lease over.
    LeaseLost(anyhow::Error),
}

/// Waits for whichever ends the scheduled backups first.
pub struct EndWatch<'a> {
    pub stop: &'a mut Stop,
    pub lease_lost: &'a mut tokio::sync::oneshot::Receiver<anyhow::Error>,
}

impl EndWatch<'_> {
    async fn recv(&mut self) -> Ended {
        tokio::select! {
            _ = self.stop.recv() => Ended::Stop,
            lost = &mut *self.lease_lost => Ended::LeaseLost(
                lost.unwrap_or_else(|_| anyhow!("the lease renewal task stopped")),
            ),
        }
    }
}

/// SIGTERM (Kubernetes stopping the pod) or SIGINT.
pub struct Stop {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Stop {
    pub fn new() -> Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Backs up on the schedule (first at once if `now`) until told to stop or the lease is
/// lost; a backup running then is cut (it would hold up the final snapshot, or write for
/// an instance that no longer owns the identity) and waited for.
pub async fn scheduled_backups(
    repo: &Repository,
    backup: &BackupOptions,
    timing: &Timing,
    metrics: &Metrics,
    end: &mut EndWatch<'_>,
    mut now: bool,
) -> Result<Ended> {
    loop {
        if !std::mem::take(&mut now) {
            let next = schedule::next_run(&timing.schedule, timing.jitter)
                .context("the schedule has no future run time")?;
            tracing::info!(next = %next.to_rfc3339(), "next backup scheduled");
            let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                ended = end.recv() => return Ok(ended),
            }
        }
        let cancel = Cancel::new();
        let scheduled = timed_backup(repo, backup, timing.backup_timeout, metrics, &cancel);
        tokio::pin!(scheduled);
        tokio::select! {
            // A failure is counted and logged; the next run tries again.
            _ = &mut scheduled => {}
            ended = end.recv() => {
                tracing::warn!(phase = cancel.phase(), "stopping during a scheduled backup: it is cut");
                cancel.cancel();
                let _ = tokio::time::timeout(blocking::STOP_GRACE, scheduled).await;
                return Ok(ended);
            }
        }
    }
}

/// The final snapshot, cut at `--final-deadline`. A cut one leaves no manifest and keeps
/// the lease (it expires), so no other instance restores an older state by mistake.
pub async fn final_snapshot(
    repo: &Repository,
    backup: &BackupOptions,
    timing: &Timing,
    metrics: &Metrics,
) -> Result<Manifest> {
    tracing::info!(deadline = ?timing.final_deadline, "stopping: taking the final snapshot");
    let last = BackupOptions {
        r#final: true,
        ..backup.clone()
    };
    let cancel = Cancel::new();
    match timed_backup(repo, &last, timing.final_deadline, metrics, &cancel).await {
        Ok(manifest) => {
            tracing::info!(snapshot = %manifest.id, "final snapshot committed; stopping");
            Ok(manifest)
        }
        Err(err) if cancel.is_cancelled() => {
            tracing::error!(
                phase = cancel.phase(),
                deadline = ?timing.final_deadline,
                "final snapshot cut at deadline: no manifest was written and the lease is not released (it expires after --lease-ttl); the newest scheduled snapshot is the latest state saved"
            );
            Err(err.context("the final snapshot was cut at its deadline"))
        }
        Err(err) => Err(err.context("the final snapshot failed (the lease stays until it expires); the newest scheduled snapshot is the latest state saved")),
    }
}

/// One backup on a thread of its own, cut at `limit` (or when `cancel` is cancelled by
/// the caller), recorded in the metrics.
async fn timed_backup(
    repo: &Repository,
    options: &BackupOptions,
    limit: Duration,
    metrics: &Metrics,
    cancel: &Cancel,
) -> Result<Manifest> {
    let started = Instant::now();
    metrics.started();
    let options = options.clone();
    // A sidecar's long backup says how far it is (every 10 s in its JSON logs).
    let _display = crate::progress::Display::start(cancel.progress());
    let work = blocking::spawn(repo, cancel.clone(), move |remote| {
        backup::take(remote, &options)
    });
    tokio::pin!(work);
    let result = tokio::select! {
        result = &mut work => result,
        _ = tokio::time::sleep(limit) => {
            let phase = cancel.phase();
            cancel.cancel();
            blocking::stopped(work, cancel).await.with_context(|| {
                format!("the backup did not finish within {limit:?} and was cut during the {phase}")
            })
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    match &result {
        Ok(manifest) => metrics.succeeded(manifest, seconds),
        Err(err) => {
            metrics.failed(seconds);
            tracing::error!(error = format!("{err:#}"), "backup failed");
        }
    }
    result
}
