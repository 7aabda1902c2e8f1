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
//! The backups themselves are [`crate::scheduled`]'s; taking, renewing and losing the
//! lease [`crate::renewal`]'s. This file puts them in order.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;

use crate::backup::BackupOptions;
use crate::kube::OwnPod;
use crate::lease::Held;
use crate::metrics::{self, LeaseState, Metrics};
use crate::renewal::{self, Terms};
use crate::repo::Repository;
use crate::restoration;
use crate::scheduled::{self, EndWatch, Ended, Stop, Timing};

pub struct RunOptions {
    pub timing: Timing,
    pub lease: Terms,
    /// This pod, to delete when another instance took the lease over; `None` outside
    /// Kubernetes.
    pub own_pod: Option<OwnPod>,
    pub listen: SocketAddr,
    pub final_snapshot: bool,
}

pub async fn run(repo: &Repository, backup: &BackupOptions, options: &RunOptions) -> Result<()> {
    crate::backup::check_source(backup)?;
    let backup = &BackupOptions {
        lease_owner: Some(options.lease.owner.clone()),
        ..backup.clone()
    };
    let mut stop = Stop::new()?;
    let metrics = Arc::new(Metrics::new());
    // Before serving, so that no scrape sees zeros while the repository holds snapshots.
    // (Probes wait too: the kubelet runs no liveness probe before the startupProbe passed.)
    let newest = scheduled::show_newest_snapshot(repo, &metrics).await;
    metrics::serve(options.listen, metrics.clone()).await?;
    renewal::warn_if_no_pod(options.own_pod.as_ref());
    let Some(lease) = renewal::wait_for_lease(repo, &options.lease, &metrics, stop.recv()).await?
    else {
        tracing::info!("stopped before this instance held the lease: nothing to back up");
        return Ok(());
    };
    // Before /startupz lets Signal start: the volume no longer equals its snapshot then.
    restoration::record_signal_start(&backup.source, &options.lease.owner)?;
    metrics.lease(LeaseState::Held);
    let (lease, mut lease_lost) = renewal::start(repo.clone(), lease, metrics.clone());
    let back_up_now = scheduled::back_up_at_start(newest, &options.timing.schedule);
    let ended = {
        let mut end = EndWatch {
            stop: &mut stop,
            lease_lost: &mut lease_lost,
        };
        scheduled::scheduled_backups(
            repo,
            backup,
            &options.timing,
            &metrics,
            &mut end,
            back_up_now,
        )
        .await?
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
    stop_with_final_snapshot(repo, backup, options, &metrics, lease).await
}

/// Stopped by SIGTERM with the lease still held: takes the final snapshot (unless it is
/// disabled), then releases the lease.
async fn stop_with_final_snapshot(
    repo: &Repository,
    backup: &BackupOptions,
    options: &RunOptions,
    metrics: &Metrics,
    lease: Held,
) -> Result<()> {
    if !options.final_snapshot {
        tracing::info!("stopping; final snapshot disabled");
        return lease.release(repo, None).await;
    }
    let manifest = scheduled::final_snapshot(repo, backup, &options.timing, metrics).await?;
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
