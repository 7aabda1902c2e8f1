//! The daemon's Prometheus metrics and its HTTP endpoints: `/metrics`, `/healthz` (the
//! process is alive), `/readyz` (the agent is up), `/startupz` and `/leasez` (this
//! instance holds the repository's lease). Readiness deliberately does not depend on
//! backups succeeding: a native sidecar's readiness gates the Signal pod's, and a bucket
//! outage must not take Signal out of service. Staleness is what `check --max-age` and the
//! PrometheusRule alert on.
//!
//! `/startupz` is the sidecar's startupProbe: the kubelet starts the Signal container only
//! once it answers 200, so Signal never starts while another instance holds the lease.
//! `/leasez` is for a livenessProbe on the Signal container: it turns 503 when the lease is
//! lost, so the kubelet kills that Signal. Both answer 503 with one line saying why.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::manifest::Manifest;

/// Metric names are part of the interface (dashboards and alerts use them): keep them.
#[derive(Default)]
pub struct Metrics {
    registry: Registry,
    last_success: Gauge<f64, AtomicU64>,
    last_duration: Gauge<f64, AtomicU64>,
    uploaded: Counter,
    last_size: Gauge,
    failures: Counter,
    db_check_ok: Gauge,
    running: Gauge,
    lease_held: Gauge,
    handoff_missing: Gauge,
    lease_expires: Gauge<f64, AtomicU64>,
    lease_lost: Gauge,
    lease: Mutex<LeaseState>,
}

/// Where this instance stands with the repository's lease, as `/startupz` and `/leasez`
/// report it.
#[derive(Debug, Clone)]
pub enum LeaseState {
    /// Not taken yet: why (who holds it, until when; or the error reading it).
    Waiting(String),
    Held,
    /// Taken over by another instance, or no longer renewable: why.
    Lost(String),
}

impl Default for LeaseState {
    fn default() -> Self {
        Self::Waiting("the lease has not been requested yet".into())
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self::default();
        let mut registry = std::mem::take(&mut metrics.registry);
        metrics.register_backup(&mut registry);
        metrics.register_lease(&mut registry);
        metrics.registry = registry;
        metrics
    }

    /// What the backups do: their success, size, duration, failures.
    fn register_backup(&self, registry: &mut Registry) {
        registry.register(
            "ghostwire_backup_last_success_timestamp_seconds",
            "Unix time the last successful snapshot was committed",
            self.last_success.clone(),
        );
        registry.register(
            "ghostwire_backup_last_duration_seconds",
            "Duration of the last backup attempt",
            self.last_duration.clone(),
        );
        // Counters get their `_total` suffix from the library.
        registry.register(
            "ghostwire_backup_uploaded_bytes",
            "Archive bytes uploaded by committed snapshots",
            self.uploaded.clone(),
        );
        registry.register(
            "ghostwire_backup_last_snapshot_size_bytes",
            "Archive size of the last committed snapshot",
            self.last_size.clone(),
        );
        registry.register(
            "ghostwire_backup_failures",
            "Backup attempts that failed",
            self.failures.clone(),
        );
        registry.register(
            "ghostwire_backup_restore_gate_ok",
            "0 if the last snapshot's check of its Signal database copy found problems (its restore gate then runs the full integrity_check), 1 if not (a delta or a final snapshot, taken without the check, counts as 1)",
            self.db_check_ok.clone(),
        );
        registry.register(
            "ghostwire_backup_running",
            "1 while a backup runs",
            self.running.clone(),
        );
    }

    /// Whether this instance holds the lease, and what became of it.
    fn register_lease(&self, registry: &mut Registry) {
        registry.register(
            "ghostwire_backup_lease_held",
            "1 while this instance holds the repository's lease (it backs up and Signal may run), 0 while it waits for it or after losing it",
            self.lease_held.clone(),
        );
        registry.register(
            "ghostwire_backup_handoff_missing",
            "1 if the lease this instance took over was not released with a final snapshot (the previous owner stopped uncleanly: its last changes are lost)",
            self.handoff_missing.clone(),
        );
        registry.register(
            "ghostwire_backup_lease_expires_timestamp_seconds",
            "Unix time the lease, as this instance last wrote it, expires; below time() while a bucket outage keeps it from renewing (it is taken back once the bucket answers, unless another instance took it over)",
            self.lease_expires.clone(),
        );
        registry.register(
            "ghostwire_backup_lease_lost",
            "1 once another instance took this instance's lease over: /leasez and /startupz answer 503 for good and the sidecar deletes its own pod; 0 otherwise",
            self.lease_lost.clone(),
        );
    }

    /// Shows the repository's newest snapshot before this process has taken one, so that
    /// a fresh pod's metrics tell the truth rather than zeros.
    pub fn newest_snapshot(&self, manifest: &Manifest) {
        self.record_snapshot(manifest);
    }

    fn record_snapshot(&self, manifest: &Manifest) {
        self.last_success
            .set(manifest.finished_at.timestamp_millis() as f64 / 1000.0);
        self.last_size.set(manifest.archive.size as i64);
        if let Some(db) = &manifest.signal_db {
            self.db_check_ok.set(!db.check_failed() as i64);
        }
    }

    /// Records where this instance stands with the lease. Lost is for good: nothing
    /// moves it back to Held or Waiting, so `/leasez` and `/startupz` never answer 200
    /// again in this process.
    pub fn lease(&self, state: LeaseState) {
        let mut current = self.lease.lock().expect("the lease state lock");
        if matches!(*current, LeaseState::Lost(_)) {
            return;
        }
        self.lease_held
            .set(matches!(state, LeaseState::Held) as i64);
        self.lease_lost
            .set(matches!(state, LeaseState::Lost(_)) as i64);
        *current = state;
    }

    pub fn lease_expires(&self, at: chrono::DateTime<chrono::Utc>) {
        self.lease_expires
            .set(at.timestamp_millis() as f64 / 1000.0);
    }

    pub fn lease_state(&self) -> LeaseState {
        self.lease.lock().expect("the lease state lock").clone()
    }

    pub fn handoff_missing(&self, missing: bool) {
        self.handoff_missing.set(missing as i64);
    }

    pub fn started(&self) {
        self.running.set(1);
    }

    pub fn succeeded(&self, manifest: &Manifest, seconds: f64) {
        self.running.set(0);
        self.last_duration.set(seconds);
        self.uploaded.inc_by(manifest.archive.size);
        self.record_snapshot(manifest);
    }

    pub fn failed(&self, seconds: f64) {
        self.running.set(0);
        self.last_duration.set(seconds);
        self.failures.inc();
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// One metric family as Prometheus scrapes it, for the docs and the deploy checks
/// (`ghostwire-backup reference`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Descriptor {
    /// The family name (`ghostwire_backup_failures`).
    pub name: String,
    /// `counter`, `gauge`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub help: String,
    /// The series names a query uses (`ghostwire_backup_failures_total` for a counter).
    pub series: Vec<String>,
}

/// Every metric the daemon exports, read back from what a fresh registry renders, so that
/// the list is exactly what a scrape sees: names, the library's `_total` suffixes, types
/// and help texts are written once, in [`Metrics::new`].
pub fn descriptors() -> Vec<Descriptor> {
    let text = Metrics::new().render();
    let mut families: Vec<Descriptor> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.push(Descriptor {
                name: name.to_owned(),
                kind: String::new(),
                help: help.to_owned(),
                series: Vec::new(),
            });
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some(family) = families.iter_mut().find(|f| f.name == name) {
                family.kind = kind.to_owned();
            }
        } else if !line.starts_with('#') {
            // A sample: `name{labels} value` or `name value`, of the family before it.
            let series = line.split(['{', ' ']).next().unwrap_or_default();
            if let Some(family) = families.last_mut()
                && series.starts_with(&family.name)
                && !family.series.iter().any(|s| s == series)
            {
                family.series.push(series.to_owned());
            }
        }
    }
    families
}

/// Binds `listen` (failing now if it cannot) and serves the endpoints in the background.
pub async fn serve(listen: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/startupz", get(lease_status))
        .route("/leasez", get(lease_status))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (set --listen / GWB_LISTEN)"))?;
    tracing::info!(%listen, "serving /metrics, /healthz, /readyz, /startupz and /leasez");
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(error = %err, "the metrics server stopped");
        }
    });
    Ok(())
}

/// 200 while this instance holds the lease; 503 with the reason otherwise.
async fn lease_status(State(metrics): State<Arc<Metrics>>) -> (StatusCode, String) {
    match metrics.lease_state() {
        LeaseState::Held => (StatusCode::OK, "lease held\n".into()),
        LeaseState::Waiting(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for the lease: {why}\n"),
        ),
        LeaseState::Lost(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("lease lost: {why}\n"),
        ),
    }
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl axum::response::IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_name_the_series_a_query_uses() {
        let all = descriptors();
        let failures = all
            .iter()
            .find(|d| d.name == "ghostwire_backup_failures")
            .expect("the failure counter is listed");
        assert_eq!(failures.kind, "counter");
        assert_eq!(failures.series, ["ghostwire_backup_failures_total"]);
        // The library ends every help text with a full stop.
        assert_eq!(failures.help, "Backup attempts that failed.");
        let running = all
            .iter()
            .find(|d| d.name == "ghostwire_backup_running")
            .expect("the running gauge is listed");
        assert_eq!(running.kind, "gauge");
        assert_eq!(running.series, ["ghostwire_backup_running"]);
    }

    #[test]
    fn every_exported_metric_is_described() {
        let all = descriptors();
        let rendered = Metrics::new().render();
        let samples = rendered
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        assert_eq!(all.iter().map(|d| d.series.len()).sum::<usize>(), samples);
        for d in &all {
            assert!(d.name.starts_with("ghostwire_backup_"), "{d:?}");
            assert!(!d.kind.is_empty() && !d.help.is_empty(), "{d:?}");
        }
    }
}
