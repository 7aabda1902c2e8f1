//! The lease on a cluster's bad days, with processes standing in for the pods' containers
//! in the kubelet's order, against a real S3 server (moto) behind the fault proxy, which
//! plays the network between blue and the bucket. moto keeps its objects in memory, so the
//! outage is the network's (every connection reset), not a restarted server.
//!
//! - an outage longer than the lease's TTL: nobody else wrote the lease, so blue takes it
//!   back once the bucket answers and carries on;
//! - another owner took the lease: blue's `/leasez` and `/startupz` never answer 200 again,
//!   it deletes its own pod (through a stand-in Kubernetes API on 127.0.0.1: no cluster
//!   exists here, see `common/kube.rs`), and its init container refuses;
//! - the same pod name in another namespace is another owner: it cannot take a live lease.

use std::time::{Duration, Instant};

use crate::common::faults::{Bucket, Fault};
use crate::common::kube::KubeApi;
use crate::common::*;
use ghostwire_backup::commands::restore::MARKER as MARKER_NAME;

fn now_seconds() -> f64 {
    chrono::Utc::now().timestamp_millis() as f64 / 1000.0
}

/// Asserts that both of blue's gates answer 200 (its Signal may run).
fn assert_gates_open(sidecar: &Sidecar) {
    for path in ["/leasez", "/startupz"] {
        let answer = sidecar.get(path);
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    }
}

#[test]
fn blue_carries_on_through_a_bucket_outage_longer_than_its_ttl() {
    let fx = Fixture::new(&["--messages", "20"]);
    let bucket = Bucket::new("outage", 21);
    let mut agent = bucket.through_proxy();
    agent.env("GWB_LEASE_OWNER", "test/ghostwire/ghostwire-0");
    let ttl = Duration::from_secs(3);
    let blue = Sidecar::start_with(agent, &fx, fx.home(), &[("GWB_LEASE_TTL", "3s")]);
    blue.wait_started("blue");

    // The network to the bucket goes down for longer than the TTL: the lease expires
    // unrenewed. Blue's Signal keeps running all along.
    bucket.proxy.set_faults(1.0, &[Fault::Reset]);
    let cut = Instant::now();
    wait_for(
        "the lease to expire during the outage",
        Duration::from_secs(60),
        || {
            assert_gates_open(&blue);
            let expires = blue.metric("ghostwire_backup_lease_expires_timestamp_seconds");
            (cut.elapsed() > ttl + Duration::from_secs(1) && now_seconds() > expires + 1.0)
                .then_some(())
        },
    );
    assert!(
        bucket.proxy.stats().count(Fault::Reset) > 0,
        "no renewal was cut"
    );

    // The bucket answers again: the next renewal takes the lease back.
    bucket.proxy.set_faults(0.0, &[]);
    wait_for(
        "blue to renew its lease after the outage",
        Duration::from_secs(60),
        || {
            assert_gates_open(&blue);
            let expires = blue.metric("ghostwire_backup_lease_expires_timestamp_seconds");
            (expires > now_seconds()).then_some(())
        },
    );
    assert_eq!(blue.metric("ghostwire_backup_lease_held"), 1.0);
    assert_eq!(blue.metric("ghostwire_backup_lease_lost"), 0.0);
    // It still owns the lease: its final snapshot releases it cleanly.
    blue.stop();
    let listed: serde_json::Value =
        serde_json::from_str(&bucket.direct().args(["snapshots", "--json"]).ok()).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["final"], true, "{listed}");
}

#[test]
fn blue_whose_lease_another_owner_took_never_runs_signal_again() {
    let fx = Fixture::new(&["--messages", "20"]);
    let bucket = Bucket::new("takeover", 22);
    let kube = KubeApi::start(&fx.root);
    let mut blue_agent = bucket.through_proxy();
    kube.configure(&mut blue_agent, "test", "ghostwire", "ghostwire-0");
    let blue = Sidecar::start_with(blue_agent, &fx, fx.home(), &[("GWB_LEASE_TTL", "2s")]);
    blue.wait_started("blue");

    // Blue is cut off from the bucket; its lease expires, and green (reaching the bucket,
    // its clock trusted to the second) takes it over.
    bucket.proxy.set_faults(1.0, &[Fault::Reset]);
    let mut green_agent = bucket.direct();
    kube.configure(
        &mut green_agent,
        "test",
        "ghostwire-green",
        "ghostwire-green-0",
    );
    let green = green_takes_over(&fx, green_agent);

    // Blue reaches the bucket again: its renewal finds green's lease. From then on its
    // gates never open, and it deletes its own pod.
    bucket.proxy.set_faults(0.0, &[]);
    let deleted = "DELETE /api/v1/namespaces/ghostwire/pods/ghostwire-0 authorized";
    wait_for(
        "blue to delete its own pod",
        Duration::from_secs(60),
        || kube.requests().iter().any(|r| r == deleted).then_some(()),
    );
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        for path in ["/leasez", "/startupz"] {
            let answer = blue.get(path);
            assert!(
                answer.starts_with("HTTP/1.1 503") && answer.contains("lease lost"),
                "{path}: {answer}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(blue.metric("ghostwire_backup_lease_lost"), 1.0);
    assert_eq!(blue.metric("ghostwire_backup_lease_held"), 0.0);
    assert_eq!(kube.requests(), [deleted], "one call, only for its own pod");

    // The kubelet stops the deleted pod: Signal, then the sidecar, which takes no final
    // snapshot (the identity is green's now) and says so with a failure.
    let status = blue.terminate();
    assert!(
        !status.success(),
        "blue's sidecar exited 0 after losing the lease"
    );
    // The StatefulSet makes the pod again: its init container refuses while green holds
    // the lease, so neither its sidecar nor Signal start.
    let mut init = fx.restore_with(bucket.direct(), fx.home());
    kube.configure(&mut init, "test", "ghostwire", "ghostwire-0");
    init.args(["--if-empty", "--snapshot", "handoff"]);
    init.fails_with_code(7, &["held by test/ghostwire-green/ghostwire-green-0"]);
    green.stop();
}

#[test]
fn the_same_pod_name_in_another_namespace_cannot_take_a_live_lease() {
    let fx = Fixture::new(&["--messages", "20"]);
    let kube = KubeApi::start(&fx.root);
    let mut blue_agent = fx.agent();
    kube.configure(&mut blue_agent, "eu-1", "ghostwire", "ghostwire-0");
    let blue = Sidecar::start_with(blue_agent, &fx, fx.home(), &[]);
    blue.wait_started("blue");

    // The same release in another namespace: same pod name, another owner.
    let other_home = fx.root.join("other-home");
    std::fs::create_dir(&other_home).unwrap();
    let mut init = fx.restore(&other_home);
    kube.configure(&mut init, "eu-1", "ghostwire-dr", "ghostwire-0");
    init.arg("--if-empty");
    init.fails_with_code(7, &["held by eu-1/ghostwire/ghostwire-0"]);
    let mut other_agent = fx.agent();
    kube.configure(&mut other_agent, "eu-1", "ghostwire-dr", "ghostwire-0");
    let other = Sidecar::start_with(other_agent, &fx, fx.home(), &[]);
    wait_for(
        "the other sidecar to name the lease's holder",
        Duration::from_secs(30),
        || {
            let startupz = other.get("/startupz");
            assert!(startupz.starts_with("HTTP/1.1 503"), "{startupz}");
            startupz
                .contains("held by eu-1/ghostwire/ghostwire-0")
                .then_some(())
        },
    );
    assert_eq!(other.metric("ghostwire_backup_lease_held"), 0.0);
    assert_eq!(blue.metric("ghostwire_backup_lease_held"), 1.0);
    other.stop();
    blue.stop();
}

#[test]
fn an_unreachable_bucket_at_pod_start_keeps_signal_down_with_its_own_exit_code() {
    let fx = Fixture::new(&["--messages", "20"]);
    let bucket = Bucket::new("down", 23);
    fx.backup_with(bucket.direct()).ok();
    let volume = fx.root.join("volume");
    let init = || {
        let mut agent = bucket.through_proxy();
        agent.env("GWB_S3_ATTEMPTS", "2");
        let mut command = fx.restore_with(agent, &volume);
        command
            .args(["--if-empty", "--snapshot", "latest"])
            .env("GWB_LEASE_OWNER", "test/ghostwire/ghostwire-0");
        command
    };
    bucket.proxy.set_faults(1.0, &[Fault::Reset]);
    init().fails_with_code(
        6,
        &[
            "the repository cannot be reached at pod start",
            "Signal does not start",
        ],
    );
    assert!(!volume.join(MARKER_NAME).exists());
    // The bucket answers again: the kubelet's next try restores.
    bucket.proxy.set_faults(0.0, &[]);
    init().ok();
    assert!(volume.join(MARKER_NAME).exists());
}

#[test]
fn without_a_kubernetes_api_blue_moves_signals_database_aside_instead() {
    let fx = Fixture::new(&["--messages", "20"]);
    let bucket = Bucket::new("fenced", 24);
    let mut blue_agent = bucket.through_proxy();
    blue_agent.env("GWB_LEASE_OWNER", "test/ghostwire/ghostwire-0");
    let blue = Sidecar::start_with(blue_agent, &fx, fx.home(), &[("GWB_LEASE_TTL", "2s")]);
    blue.wait_started("blue");
    let db_before = std::fs::read(fx.profile.db()).unwrap();

    bucket.proxy.set_faults(1.0, &[Fault::Reset]);
    let mut green_agent = bucket.direct();
    green_agent.env("GWB_LEASE_OWNER", "test/ghostwire-green/ghostwire-green-0");
    let green = green_takes_over(&fx, green_agent);
    bucket.proxy.set_faults(0.0, &[]);

    // No pod to delete: the identity's database leaves the place a restarted Signal looks.
    let moved = wait_for(
        "blue to move Signal's database aside",
        Duration::from_secs(60),
        || {
            std::fs::read_dir(fx.home())
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(".ghostwire-backup-fenced-")
                })
                .filter(|p| p.join("sql/db.sqlite").exists())
        },
    );
    assert!(!fx.home().join(".config/Signal/sql").exists());
    // Moved, not deleted: the same bytes.
    assert_eq!(
        std::fs::read(moved.join("sql/db.sqlite")).unwrap(),
        db_before
    );
    let leasez = blue.get("/leasez");
    assert!(leasez.starts_with("HTTP/1.1 503"), "{leasez}");
    assert!(!blue.terminate().success());
    green.stop();
}

/// SIGTERM while a renewal is on its way: the renewal is let finish, never cut, so the
/// release that follows the final snapshot knows the version the bucket holds. (A renewal
/// cut after the bucket took it would leave a version the sidecar never learned, and the
/// release would then conflict and record no handoff.)
#[test]
fn a_stop_during_a_renewal_still_releases_the_lease_with_the_final_snapshot() {
    let fx = Fixture::new(&["--messages", "20"]);
    let bucket = Bucket::new("stop", 25);
    let mut agent = bucket.through_proxy();
    agent.env("GWB_LEASE_OWNER", "test/ghostwire/ghostwire-0");
    let blue = Sidecar::start_with(agent, &fx, fx.home(), &[("GWB_LEASE_TTL", "3s")]);
    blue.wait_started("blue");
    // The next renewal reaches the bucket, which takes it; its answer is held back 3 s.
    bucket.proxy.set_stall(Duration::from_secs(3));
    bucket.proxy.force("PUT", "/lease.json", Fault::Stall);
    wait_for(
        "a renewal to be on its way",
        Duration::from_secs(30),
        || (bucket.proxy.stats().count(Fault::Stall) == 1).then_some(()),
    );
    blue.stop(); // exits 0 only if the release went through
    let mut green = fx.restore_with(bucket.direct(), &fx.root.join("green"));
    green
        .args(["--snapshot", "handoff"])
        .env("GWB_LEASE_OWNER", "test/ghostwire-green/ghostwire-green-0");
    let restored = green.ok();
    let listed: serde_json::Value =
        serde_json::from_str(&bucket.direct().args(["snapshots", "--json"]).ok()).unwrap();
    assert_eq!(listed[0]["id"], restored.as_str(), "{listed}");
    assert_eq!(listed[0]["final"], true, "{listed}");
}

/// Green, on a copy of blue's volume, takes the lease over once it expired (blue is cut off
/// from the bucket), trusting its clock to the second.
fn green_takes_over(fx: &Fixture, green_agent: TestCommand) -> Sidecar {
    let green_home = fx.root.join("green-home");
    copy_home(fx, &green_home);
    let green = Sidecar::start_with(
        green_agent,
        fx,
        &green_home,
        &[("GWB_LEASE_CLOCK_SKEW", "0s")],
    );
    green.wait_started("green");
    green
}
