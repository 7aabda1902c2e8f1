//! The pod lifecycle, run locally: the sidecar daemon backs up a live profile on its
//! schedule while Signal writes; Signal stops; SIGTERM makes the daemon take a `final`
//! snapshot; the init container's `restore --if-empty` brings it into an empty volume and
//! its gate passes; on the next pod start the same init container does nothing.

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use ghostwire_backup::commands::restore::MARKER;
use ghostwire_backup::layout::Object;

use crate::common::*;

#[test]
fn sidecar_backs_up_on_schedule_and_takes_a_final_snapshot_that_restores() {
    let fx = Fixture::new(&["--messages", "500", "--attachments", "10"]);
    let root = &fx.root;
    let port = free_port();
    let ids = root.join("ids.txt");
    let writer = Writer::start(&fx.profile.db(), &fx.profile.key, &ids);

    let mut daemon_command = fx.agent();
    daemon_command
        .env("GWB_SOURCE", fx.home())
        .env("GWB_RECIPIENTS", &fx.recipient)
        .env("GWB_STAGING_DIR", root.join("staging"))
        .env("GWB_SCHEDULE", "*/2 * * * * *") // every 2 s, with seconds
        .env("GWB_LISTEN", format!("127.0.0.1:{port}"))
        .env("GWB_FINAL_DEADLINE", "60")
        .env("GWB_LEASE_OWNER", "ghostwire-0")
        .arg("run");
    let mut daemon = daemon_command.spawn(Stdio::inherit(), Stdio::piped());

    // Wait for a scheduled backup to succeed, as Prometheus would see it.
    let metrics = wait_for(
        "a scheduled backup to succeed",
        Duration::from_secs(60),
        || {
            http_get(port, "/metrics").filter(|text| {
                metric(text, "ghostwire_backup_last_success_timestamp_seconds")
                    .is_some_and(|t| t > 0.0)
            })
        },
    );
    assert!(
        metric(&metrics, "ghostwire_backup_uploaded_bytes_total").unwrap() > 0.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "ghostwire_backup_failures_total"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "ghostwire_backup_restore_gate_ok"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        http_get(port, "/healthz")
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        http_get(port, "/readyz")
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    fx.agent().args(["check", "--max-age", "10m"]).ok();

    // While blue runs, green may not be restored: blue's sidecar holds the lease.
    let volume = root.join("green-volume");
    std::fs::create_dir_all(volume.join("lost+found")).unwrap();
    let restore = || {
        let mut command = fx.agent();
        command
            .env("GWB_IDENTITY_FILE", &fx.identity)
            .env("GWB_TARGET", &volume)
            .env("GWB_SNAPSHOT", "final")
            .env("GWB_LEASE_OWNER", "ghostwire-green-0")
            .args(["restore", "--if-empty"]);
        command
    };
    restore().fails_with(&["lease is held by ghostwire-0"]);
    assert!(!volume.join(MARKER).exists());

    // Signal stops first (the native sidecar outlives it); then the sidecar gets SIGTERM.
    let report = writer.stop();
    assert_eq!(
        report["busy"], 0,
        "the daemon's backups blocked Signal's writer: {report}"
    );
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    let mut log = String::new();
    daemon
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        status.success(),
        "the daemon failed to stop cleanly ({status}):\n{daemon_command}\n{log}"
    );

    let listed: serde_json::Value =
        serde_json::from_str(&fx.agent().args(["snapshots", "--json"]).ok()).unwrap();
    let snapshots = listed.as_array().unwrap();
    assert!(
        snapshots.len() >= 2,
        "expected scheduled snapshots and a final one"
    );
    let last = snapshots.last().unwrap();
    assert_eq!(last["final"], true, "the last snapshot is not marked final");
    assert!(
        snapshots[..snapshots.len() - 1]
            .iter()
            .all(|s| s["final"] == false)
    );

    // Blue's final snapshot released the lease: green's init container restores it into
    // the empty volume.
    assert_eq!(restore().ok(), last["id"].as_str().unwrap());
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(volume.join(MARKER)).unwrap()).unwrap();
    assert_eq!(marker["gate"], "ok");
    // Every row Signal committed before it stopped is in the final snapshot.
    let db = check_db(
        &volume.join(".config/Signal/sql/db.sqlite"),
        &fx.profile.key,
        Some(&ids),
    );
    assert_eq!(db["integrity"], "ok");
    assert_eq!(
        db["missingCount"], 0,
        "the final snapshot lacks committed rows: {db}"
    );

    // Next pod start: the same init container leaves the volume alone.
    let before = tree(&volume, &|_| false);
    restore().ok();
    assert_eq!(tree(&volume, &|_| false), before);
}

#[test]
fn check_fails_when_the_newest_snapshot_is_too_old() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("backups");
    let check = |max_age: &str| {
        let mut command = agent_for(&repo);
        command.args(["check", "--max-age", max_age]);
        command
    };
    check("1h").fails_with_code(3, &["no repository at"]);
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(home.join("notes.txt"), "x").unwrap();
    let (_, recipient) = keygen(dir.path());
    let id = backup_command(
        agent_for(&repo),
        &home,
        &recipient,
        &dir.path().join("staging"),
    )
    .arg("--allow-no-signal")
    .ok();
    check("1h").ok();
    let manifest = std::fs::read(repo.join(Object::Manifest(id).key())).unwrap();
    wait_until_older_than(
        &serde_json::from_slice(&manifest).unwrap(),
        Duration::from_secs(1),
    );
    check("1s").fails_with_code(5, &["older than the allowed"]);
}
