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
use crate::lease::Held;
use crate::manifest::Manifest;
use crate::metrics::{self, Metrics};
use crate::repo::Repository;
use crate::schedule;

pub struct RunOptions {
    pub schedule: cron::Schedule,
    pub lease_owner: String,
    pub lease_ttl: Duration,
    pub jitter: Duration,
    pub listen: SocketAddr,
    pub backup_timeout: Duration,
    pub final_snapshot: bool,
    pub final_deadline: Duration,
}

pub async fn run(repo: &Repository, backup: &BackupOptions, options: &RunOptions) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    metrics::serve(options.listen, metrics.clone()).await?;
    let mut stop = Stop::new()?;
    let lease = Held::acquire(repo, &options.lease_owner, options.lease_ttl).await?;
    let (lease, mut lease_lost) = keep_renewing(repo.clone(), lease);
    let stopped = scheduled_backups(repo, backup, options, &metrics, &mut stop);
    tokio::select! {
        result = stopped => result?,
        lost = &mut lease_lost => return Err(lost.unwrap_or_else(|_| anyhow!("the lease task stopped"))),
    }
    let lease = lease.stop().await;
    if !options.final_snapshot {
        tracing::info!("stopping; final snapshot disabled");
        return lease.release(repo, None).await;
    }
    let manifest = final_snapshot(repo, backup, options, &metrics).await?;
    // Only a final snapshot releases the lease: it is what the next instance restores.
    lease.release(repo, Some(&manifest.id)).await
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

/// Backs up on the schedule until told to stop; a backup running then is cut (it would
/// hold up the final snapshot) and waited for.
async fn scheduled_backups(
    repo: &Repository,
    backup: &BackupOptions,
    options: &RunOptions,
    metrics: &Metrics,
    stop: &mut Stop,
) -> Result<()> {
    loop {
        let next = schedule::next_run(&options.schedule, options.jitter)
            .context("the schedule has no future run time")?;
        tracing::info!(next = %next.to_rfc3339(), "next backup scheduled");
        let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.recv() => return Ok(()),
        }
        let cancel = Cancel::new();
        let scheduled = timed_backup(repo, backup, options.backup_timeout, metrics, &cancel);
        tokio::pin!(scheduled);
        tokio::select! {
            // A failure is counted and logged; the next run tries again.
            _ = &mut scheduled => {}
            _ = stop.recv() => {
                tracing::warn!(phase = cancel.phase(), "stopping during a scheduled backup: it is cut for the final snapshot");
                cancel.cancel();
                let _ = tokio::time::timeout(blocking::STOP_GRACE, scheduled).await;
                return Ok(());
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

/// Renews the lease in the background, also while a backup runs. The receiver resolves
/// with an error if the lease was lost (taken over by another instance): then this one
/// must stop backing up, since its snapshots would no longer be the latest state.
fn keep_renewing(
    repo: Repository,
    held: Held,
) -> (Renewing, tokio::sync::oneshot::Receiver<anyhow::Error>) {
    let (lost, lost_rx) = tokio::sync::oneshot::channel();
    let held = Arc::new(tokio::sync::Mutex::new(held));
    let task = tokio::spawn({
        let held = held.clone();
        async move {
            loop {
                let every = held.lock().await.renew_every();
                tokio::time::sleep(every).await;
                if let Err(err) = held.lock().await.renew(&repo).await {
                    tracing::error!(error = format!("{err:#}"), "lease lost; stopping");
                    let _ = lost.send(err);
                    return;
                }
            }
        }
    });
    (Renewing { held, task }, lost_rx)
}

struct Renewing {
    held: Arc<tokio::sync::Mutex<Held>>,
    task: tokio::task::JoinHandle<()>,
}

impl Renewing {
    /// Stops renewing and hands the lease back.
    async fn stop(self) -> Held {
        self.task.abort();
        let _ = self.task.await;
        Arc::into_inner(self.held)
            .expect("the renew task is gone")
            .into_inner()
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
