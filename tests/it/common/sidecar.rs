//! A pod's native sidecar (`ghostwire-backup run`) as a process, and polling for an event
//! instead of sleeping.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use super::{Fixture, Spawned, TestCommand, free_port, http_get, metric, wait_for};

/// How long a sidecar may take to serve or to take the lease on a loaded machine.
pub const SIDECAR_WAIT: Duration = Duration::from_secs(30);

/// A sidecar (`ghostwire-backup run`) backing up `home`. Its schedule is once a year: the
/// only snapshot it takes is the final one.
pub struct Sidecar {
    process: Spawned,
    pub port: u16,
}

impl Sidecar {
    /// The sidecar of the pod `owner` (GWB_LEASE_OWNER), on the fixture's local repository.
    pub fn start(fx: &Fixture, owner: &str, home: &Path, extra: &[(&str, &str)]) -> Self {
        let mut command = fx.agent();
        command.env("GWB_LEASE_OWNER", owner);
        Self::start_with(command, fx, home, extra)
    }

    /// A sidecar run by `agent`, which says where the repository is and who it is.
    pub fn start_with(
        mut command: TestCommand,
        fx: &Fixture,
        home: &Path,
        extra: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let staging = fx.root.join(format!("staging-sidecar-{port}"));
        command
            .env("GWB_SOURCE", home)
            .env("GWB_RECIPIENTS", &fx.recipient)
            .env("GWB_STAGING_DIR", staging)
            .env("GWB_SCHEDULE", "0 0 1 1 *")
            .env("GWB_LISTEN", format!("127.0.0.1:{port}"))
            .env("GWB_FINAL_DEADLINE", "60");
        for (name, value) in extra {
            command.env(name, value);
        }
        let process = command.arg("run").spawn(Stdio::null(), Stdio::inherit());
        Self { process, port }
    }

    /// The status line and body of a GET, once the daemon listens.
    pub fn get(&self, path: &str) -> String {
        wait_for(
            &format!("the sidecar to serve {path}"),
            SIDECAR_WAIT,
            || http_get(self.port, path),
        )
    }

    pub fn started(&self) -> bool {
        self.get("/startupz").starts_with("HTTP/1.1 200")
    }

    pub fn metric(&self, name: &str) -> f64 {
        metric(&self.get("/metrics"), name).unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// Waits until its startupProbe passes: it holds the lease.
    pub fn wait_started(&self, who: &str) {
        wait_for(
            &format!("{who}'s sidecar to take the lease"),
            Duration::from_secs(60),
            || self.started().then_some(()),
        );
    }

    /// SIGTERM, as the kubelet sends it after Signal stopped; its exit status.
    pub fn terminate(mut self) -> ExitStatus {
        // SAFETY: kill on a child we spawned and have not reaped.
        unsafe { libc::kill(self.process.id() as i32, libc::SIGTERM) };
        self.process.wait().unwrap()
    }

    /// SIGTERM; waits for a clean exit.
    pub fn stop(self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "the sidecar did not stop cleanly: {status}"
        );
    }
}
