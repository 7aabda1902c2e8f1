//! The sidecar's hold on the lease while it runs: renewing it in the background, stopping
//! that without losing the release, and what follows when the lease is lost.
//!
//! Two ways a renewal can fail, told apart by the conditional write itself (If-Match on
//! the version this instance wrote last):
//! - **the bucket does not answer** (an outage, also one longer than the TTL): the lease is
//!   still this instance's unless someone else wrote it, so renewals go on and the first
//!   one that gets through takes it back; Signal carries on.
//! - **the version is gone**: another instance wrote the lease (it took it over after it
//!   expired, or broke it). This instance no longer owns the identity, and its Signal must
//!   never run again — restarts included, which skip every gate of a running pod. So the
//!   sidecar deletes its own pod ([`crate::kube`]): the new pod goes back through its
//!   `restore` init container, which refuses while the other owner holds the lease. Where
//!   the pod cannot be deleted, Signal's database is moved aside on the volume instead.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::oneshot;

use crate::kube::OwnPod;
use crate::lease::{self, Attempt, Held, NoConditionalWrites, Renewal};
use crate::metrics::{LeaseState, Metrics};
use crate::repo::Repository;
use crate::volume;

/// How soon a renewal that failed (not lost) is tried again, at most.
const RENEW_RETRY: Duration = Duration::from_secs(10);
/// How soon a pod deletion that failed is tried again.
const DELETE_RETRY: Duration = Duration::from_secs(10);

/// Whose lease, for how long, and how far other clocks may be ahead.
#[derive(Debug, Clone)]
pub struct Terms {
    pub owner: String,
    pub ttl: Duration,
    /// Another instance's lease is honoured until it expired by this much.
    pub skew: Duration,
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
pub async fn wait_for_lease(
    repo: &Repository,
    terms: &Terms,
    metrics: &Metrics,
    stopped: impl std::future::Future<Output = ()>,
) -> Result<Option<Held>> {
    tokio::pin!(stopped);
    let mut logged: Option<Instant> = None;
    let mut probed = false;
    loop {
        let why = match take_lease(repo, terms, &mut probed).await {
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
            _ = &mut stopped => return Ok(None),
        }
    }
}

/// One attempt at the lease, after checking once that the store honours conditional
/// writes (`probed`).
async fn take_lease(repo: &Repository, terms: &Terms, probed: &mut bool) -> Result<Attempt> {
    if !*probed {
        lease::check_conditional_writes(repo).await?;
        *probed = true;
    }
    Held::try_acquire(repo, &terms.owner, terms.ttl, terms.skew).await
}

/// The renewal running in the background.
pub struct Renewing {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Held>,
}

/// Renews `held` every third of its TTL, also while a backup runs. The receiver resolves
/// with why if the lease was lost (another instance wrote it).
pub fn start(
    repo: Repository,
    held: Held,
    metrics: Arc<Metrics>,
) -> (Renewing, oneshot::Receiver<anyhow::Error>) {
    let (lost, lost_rx) = oneshot::channel();
    let (stop, stop_rx) = oneshot::channel();
    metrics.lease_expires(held.expires_at());
    let task = tokio::spawn(keep_renewing(repo, held, metrics, lost, stop_rx));
    (Renewing { stop, task }, lost_rx)
}

impl Renewing {
    /// Stops renewing and hands the lease back, with the version it was last written at.
    /// A renewal in flight is let finish, never cut: a conditional write aborted after it
    /// reached the bucket would leave a version this instance does not know, and the
    /// release would then conflict and record no handoff.
    pub async fn stop(self) -> Held {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("the lease renewal task does not panic")
    }
}

async fn keep_renewing(
    repo: Repository,
    mut held: Held,
    metrics: Arc<Metrics>,
    lost: oneshot::Sender<anyhow::Error>,
    mut stop: oneshot::Receiver<()>,
) -> Held {
    let every = held.renew_every();
    let mut wait = every;
    loop {
        // Stopping is looked at only here, between writes.
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => return held,
        }
        match held.renew(&repo).await {
            Ok(()) => {
                metrics.lease_expires(held.expires_at());
                wait = every;
            }
            Err(Renewal::Failed(err)) => {
                tracing::warn!(error = format!("{err:#}"), "lease renewal failed; retrying");
                wait = RENEW_RETRY.min(every);
            }
            Err(Renewal::Lost(err)) => {
                let _ = lost.send(err);
                return held;
            }
        }
    }
}

/// Warns at start when this sidecar could not delete its pod after losing the lease (no
/// Kubernetes API), so that the fallback [`after_loss`] takes then is known beforehand.
pub fn warn_if_no_pod(pod: Option<&OwnPod>) {
    if pod.is_none() {
        tracing::warn!(
            "no Kubernetes API configured (KUBERNETES_SERVICE_HOST, GWB_POD_NAME and GWB_POD_NAMESPACE): if another instance ever takes the lease over, this sidecar cannot delete its pod, and moves Signal's database aside on the volume instead to keep Signal down"
        );
    }
}

/// After the lease was lost: `/leasez` and `/startupz` answer 503 for good, and the pod is
/// deleted, retried until it is or SIGTERM comes (`stopped`). Where it cannot be (no
/// Kubernetes API: not in a cluster, or the pod's name and namespace unknown; or the first
/// call failed), the fail-safe is the volume: Signal's database directory in `volume` is
/// moved aside ([`volume::fence_signal`]), so a Signal the kubelet restarts here has no
/// identity to run. Nothing is deleted.
pub async fn after_loss(
    err: &anyhow::Error,
    pod: Option<&OwnPod>,
    volume: &Path,
    metrics: &Metrics,
    stopped: impl std::future::Future<Output = ()>,
) {
    metrics.lease(LeaseState::Lost(format!("{err:#}")));
    tracing::error!(
        error = format!("{err:#}"),
        "lease lost to another instance: no more backups and no final snapshot; /leasez and /startupz answer 503 from now on"
    );
    tokio::pin!(stopped);
    let mut fenced = false;
    loop {
        let deleted = match pod {
            None => Err(anyhow::anyhow!(
                "no Kubernetes API to delete this pod through (KUBERNETES_SERVICE_HOST, GWB_POD_NAME or GWB_POD_NAMESPACE unset)"
            )),
            Some(pod) => pod.delete().await,
        };
        match deleted {
            Ok(()) => {
                let pod = pod.expect("deleted a pod");
                tracing::warn!(namespace = %pod.namespace, pod = %pod.name, "deleted this pod so that Signal never runs here again: the new pod's restore init container refuses while the other instance holds the lease");
                break;
            }
            Err(err) => tracing::error!(
                error = format!("{err:#}"),
                "cannot delete this pod; retrying"
            ),
        }
        if !std::mem::replace(&mut fenced, true) {
            fence(volume);
        }
        if pod.is_none() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(DELETE_RETRY) => {}
            _ = &mut stopped => return,
        }
    }
    stopped.await;
}

/// The volume half of the fail-safe, logged either way.
fn fence(volume: &Path) {
    match volume::fence_signal(volume) {
        Ok(Some(moved)) => tracing::warn!(
            moved_to = %moved.display(),
            "moved Signal's database directory aside so that a Signal the kubelet restarts in this pod has no identity to run (nothing was deleted)"
        ),
        Ok(None) => {}
        Err(err) => tracing::error!(
            error = format!("{err:#}"),
            "cannot move Signal's database aside: only the livenessProbe on /leasez stops Signal now; delete this pod by hand"
        ),
    }
}
