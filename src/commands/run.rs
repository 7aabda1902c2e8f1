//! `run`: the sidecar daemon. Backs up on a schedule, one backup at a time, each with a
//! timeout; serves metrics; and on SIGTERM takes a final snapshot.
//!
//! The final snapshot is the point of running as a Kubernetes *native sidecar* (an init
//! container with `restartPolicy: Always`): Kubernetes stops it only after the Signal
//! container has exited, so the snapshot it takes then is the freshest consistent state
//! there is — the one a green deploy should start from. It must finish within
//! `--final-deadline` (keep that below the pod's terminationGracePeriodSeconds); if it
//! cannot, it is cut (within about a second, in whatever phase it is) and, as with any
//! failed backup, leaves no snapshot behind; the lease is not released then, it expires.
//!
//! The lease comes first: `run` takes the repository's lease before it backs up, waiting
//! (not exiting) while another instance holds it, and `/startupz` answers 200 only once it
//! holds it — the sidecar's startupProbe, so the kubelet does not start Signal before then.
//! A renewal that cannot reach the bucket is retried, also past the lease's expiry: the
//! first that gets through takes the lease back unless another instance wrote it
//! meanwhile. If another instance did (the lease is lost), backups stop, no final snapshot
//! is taken, `/leasez` and `/startupz` answer 503 for good, and the sidecar deletes its own
//! pod ([`crate::renewal`]).
//!
//! Each backup runs on a thread of its own ([`crate::blocking`]); a deadline or SIGTERM
//! cancels its token and waits for it to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tokio::signal::unix::{SignalKind, signal};

use crate::backup::{self, BackupOptions};
use crate::blocking;
use crate::cancel::Cancel;
use crate::kube::OwnPod;
use crate::lease::{self, Attempt, Held, NoConditionalWrites};
use crate::manifest::Manifest;
use crate::metrics::{self, LeaseState, Metrics};
use crate::repo::Repository;
use crate::{renewal, restoration, schedule};

pub struct RunOptions {
    pub schedule: cron::Schedule,
    pub lease_owner: String,
    pub lease_ttl: Duration,
    /// How far another instance's clock may be ahead: its lease is honoured until it
    /// expired by this much.
    pub lease_skew: Duration,
    /// This pod, to delete when another instance took the lease over; `None` outside
    /// Kubernetes.
    pub own_pod: Option<OwnPod>,
    pub jitter: Duration,
    pub listen: SocketAddr,
    pub backup_timeout: Duration,
    pub final_snapshot: bool,
    pub final_deadline: Duration,
}

pub async fn run(repo: &Repository, backup: &BackupOptions, options: &RunOptions) -> Result<()> {
    crate::backup::check_source(backup)?;
    let backup = &BackupOptions {
        lease_owner: Some(options.lease_owner.clone()),
        ..backup.clone()
    };
    let mut stop = Stop::new()?;
    let metrics = Arc::new(Metrics::new());
    // Before serving, so that no scrape sees zeros while the repository holds snapshots.
    // (Probes wait too: the kubelet runs no liveness probe before the startupProbe passed.)
    let newest = show_newest_snapshot(repo, &metrics).await;
    metrics::serve(options.listen, metrics.clone()).await?;
    if options.own_pod.is_none() {
        tracing::warn!(
            "no Kubernetes API configured (KUBERNETES_SERVICE_HOST, GWB_POD_NAME and GWB_POD_NAMESPACE): if another instance ever takes the lease over, this sidecar cannot delete its pod, and moves Signal's database aside on the volume instead to keep Signal down"
        );
    }
    let Some(lease) = wait_for_lease(repo, options, &metrics, &mut stop).await? else {
        tracing::info!("stopped before this instance held the lease: nothing to back up");
        return Ok(());
    };
    // Before /startupz lets Signal start: the volume no longer equals its snapshot then.
    restoration::record_signal_start(&backup.source, &options.lease_owner)?;
    metrics.lease(LeaseState::Held);
    let (lease, mut lease_lost) = renewal::start(repo.clone(), lease, metrics.clone());
    let back_up_now = newest.is_some_and(|finished| is_stale(finished, &options.schedule));
    if back_up_now {
        tracing::info!("the newest snapshot is older than the schedule's interval: backing up now");
    }
    let ended = {
        let mut end = EndWatch {
            stop: &mut stop,
            lease_lost: &mut lease_lost,
        };
        scheduled_backups(repo, backup, options, &metrics, &mut end, back_up_now).await?
    };
    if let Ended::LeaseLost(err) = ended {
        // Another instance owns the identity now: this one must neither back up (its
        // snapshots are no longer the latest state) nor let its Signal run on.
        renewal::after_loss(
            &err,
            options.own_pod.as_ref(),
            &backup.source,
            &metrics,
            stop.recv(),
        )
        .await;
        return Err(err.context("the lease was lost while running, so no final snapshot was taken"));
    }
    let lease = lease.stop().await;
    if !options.final_snapshot {
        tracing::info!("stopping; final snapshot disabled");
        return lease.release(repo, None).await;
    }
    let manifest = final_snapshot(repo, backup, options, &metrics).await?;
    // Signal has stopped: the volume equals the final snapshot, which its next start (this
    // pod's or another's, after a handoff) compares with the snapshot it is to run from.
    if let Err(err) = restoration::record_final_snapshot(&backup.source, &manifest.id) {
        tracing::warn!(
            error = format!("{err:#}"),
            "the volume does not record its final snapshot; its next start after a handoff refuses it as diverged"
        );
    }
    // Only a final snapshot releases the lease: it is what the next instance restores.
    lease.release(repo, Some(&manifest.id)).await
}

/// How long between two lease attempts while another instance holds it.
const LEASE_RETRY: Duration = Duration::from_secs(3);
/// At most one "still waiting" log line per this long.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(60);

/// Takes the lease, waiting for as long as another instance holds it live (until it is
/// released or expires). Signal must not start meanwhile: `/startupz` answers 503, and the
/// kubelet starts the Signal container only after the sidecar's startupProbe succeeds. The
/// process does not exit while it waits (a restarting sidecar would crash-loop), except
/// for a store that ignores conditional writes, where no lease can work. `None`: stopped
/// before the lease was ours.
async fn wait_for_lease(
    repo: &Repository,
    options: &RunOptions,
    metrics: &Metrics,
    stop: &mut Stop,
) -> Result<Option<Held>> {
    let mut logged: Option<Instant> = None;
    let mut probed = false;
    loop {
        let why = match take_lease(repo, options, &mut probed).await {
            Ok(Attempt::Taken {
                held,
                handoff_missing,
            }) => {
                metrics.handoff_missing(handoff_missing);
                return Ok(Some(held));
            }
            Ok(Attempt::Busy(holder)) => format!("the repository's lease is {holder}"),
            Err(err) if err.is::<NoConditionalWrites>() => return Err(err),
            // A bucket outage or a race with another writer: try again, as for a busy lease.
            Err(err) => format!("cannot take the lease: {err:#}"),
        };
        if logged.is_none_or(|at| at.elapsed() >= WAIT_LOG_EVERY) {
            tracing::warn!(
                reason = %why,
                "waiting for the lease; Signal does not start until this instance holds it (/startupz answers 503)"
            );
            logged = Some(Instant::now());
        }
        metrics.lease(LeaseState::Waiting(why));
        tokio::select! {
            _ = tokio::time::sleep(LEASE_RETRY) => {}
            _ = stop.recv() => return Ok(None),
        }
    }
}

/// One attempt at the lease, after checking once that the store honours conditional
/// writes (`probed`).
async fn take_lease(repo: &Repository, options: &RunOptions, probed: &mut bool) -> Result<Attempt> {
    if !*probed {
        lease::check_conditional_writes(repo).await?;
        *probed = true;
    }
    Held::try_acquire(
        repo,
        &options.lease_owner,
        options.lease_ttl,
        options.lease_skew,
    )
    .await
}

/// Reads the repository's newest snapshot into the metrics, so a fresh pod reports the
/// state of its backups rather than zeros; returns when it was committed. A repository
/// that cannot be read now is logged and left to the first backup.
async fn show_newest_snapshot(
    repo: &Repository,
    metrics: &Metrics,
) -> Option<chrono::DateTime<chrono::Utc>> {
    match repo.snapshots().await {
        Ok(snapshots) => {
            let newest = snapshots.iter().max_by_key(|m| m.finished_at)?;
            metrics.newest_snapshot(newest);
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
fn is_stale(finished: chrono::DateTime<chrono::Utc>, schedule: &cron::Schedule) -> bool {
    let mut upcoming = schedule.upcoming(chrono::Utc);
    let (Some(first), Some(second)) = (upcoming.next(), upcoming.next()) else {
        return false;
    };
    chrono::Utc::now() - finished > second - first
}

/// Why the scheduled backups ended.
enum Ended {
    /// SIGTERM or SIGINT: take the final snapshot.
    Stop,
    /// Another instance took the lease over.
    LeaseLost(anyhow::Error),
}

/// Waits for whichever ends the scheduled backups first.
struct EndWatch<'a> {
    stop: &'a mut Stop,
    lease_lost: &'a mut tokio::sync::oneshot::Receiver<anyhow::Error>,
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
struct Stop {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Backs up on the schedule (first at once if `now`) until told to stop or the lease is
/// lost; a backup running then is cut (it would hold up the final snapshot, or write for
/// an instance that no longer owns the identity) and waited for.
async fn scheduled_backups(
    repo: &Repository,
    backup: &BackupOptions,
    options: &RunOptions,
    metrics: &Metrics,
    end: &mut EndWatch<'_>,
    mut now: bool,
) -> Result<Ended> {
    loop {
        if !std::mem::take(&mut now) {
            let next = schedule::next_run(&options.schedule, options.jitter)
                .context("the schedule has no future run time")?;
            tracing::info!(next = %next.to_rfc3339(), "next backup scheduled");
            let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                ended = end.recv() => return Ok(ended),
            }
        }
        let cancel = Cancel::new();
        let scheduled = timed_backup(repo, backup, options.backup_timeout, metrics, &cancel);
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
async fn final_snapshot(
    repo: &Repository,
    backup: &BackupOptions,
    options: &RunOptions,
    metrics: &Metrics,
) -> Result<Manifest> {
    tracing::info!(deadline = ?options.final_deadline, "stopping: taking the final snapshot");
    let last = BackupOptions {
        r#final: true,
        ..backup.clone()
    };
    let cancel = Cancel::new();
    match timed_backup(repo, &last, options.final_deadline, metrics, &cancel).await {
        Ok(manifest) => {
            tracing::info!(snapshot = %manifest.id, "final snapshot committed; stopping");
            Ok(manifest)
        }
        Err(err) if cancel.is_cancelled() => {
            tracing::error!(
                phase = cancel.phase(),
                deadline = ?options.final_deadline,
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
    let _display = crate::progress::Display::start(cancel);
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
