//! The pod lifecycle, run locally: the sidecar daemon backs up a live profile on its
//! schedule while Signal writes; Signal stops; SIGTERM makes the daemon take a `final`
//! snapshot; the init container's `restore --if-empty` brings it into an empty volume and
//! its gate passes; on the next pod start the same init container does nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// The value of a metric line `name value` in a Prometheus text response.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn sidecar_backs_up_on_schedule_and_takes_a_final_snapshot_that_restores() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let profile = make_profile(
        &root.join("home"),
        &["--messages", "500", "--attachments", "10"],
    );
    let (identity, recipient) = keygen(root);
    let repo = root.join("backups");
    let port = free_port();
    let ids = root.join("ids.txt");
    let writer = Writer::start(&profile.db(), &profile.key, &ids);

    let mut daemon = agent()
        .env("GWB_REPO", &repo)
        .env("GWB_SOURCE", &profile.home)
        .env("GWB_RECIPIENTS", &recipient)
        .env("GWB_STAGING_DIR", root.join("staging"))
        .env("GWB_SCHEDULE", "*/2 * * * * *") // every 2 s, with seconds
        .env("GWB_LISTEN", format!("127.0.0.1:{port}"))
        .env("GWB_FINAL_DEADLINE", "60")
        .env("GWB_LEASE_OWNER", "ghostwire-0")
        .arg("run")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Wait for a scheduled backup to succeed, as Prometheus would see it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        assert!(
            Instant::now() < deadline,
            "no scheduled backup succeeded within 60 s"
        );
        if let Some(text) = http_get(port, "/metrics")
            && metric(&text, "ghostwire_backup_last_success_timestamp_seconds")
                .is_some_and(|t| t > 0.0)
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
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
    run_ok(
        agent()
            .env("GWB_REPO", &repo)
            .args(["check", "--max-age", "10m"]),
    );

    // While blue runs, green may not be restored: blue's sidecar holds the lease.
    let volume = root.join("green-volume");
    std::fs::create_dir_all(volume.join("lost+found")).unwrap();
    let restore = |c: &mut std::process::Command| {
        c.env("GWB_REPO", &repo)
            .env("GWB_IDENTITY_FILE", &identity)
            .env("GWB_TARGET", &volume)
            .env("GWB_SNAPSHOT", "final")
            .env("GWB_LEASE_OWNER", "ghostwire-green-0")
            .args(["restore", "--if-empty"]);
    };
    let mut early = agent();
    restore(&mut early);
    let refused = run_err(&mut early);
    assert!(
        refused.contains("lease is held by ghostwire-0"),
        "{refused}"
    );
    assert!(!volume.join(".ghostwire-backup-restore.json").exists());

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
        "the daemon failed to stop cleanly:\n{log}"
    );

    let listed: serde_json::Value = serde_json::from_str(&run_ok(
        agent().env("GWB_REPO", &repo).args(["snapshots", "--json"]),
    ))
    .unwrap();
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
    let mut first = agent();
    restore(&mut first);
    assert_eq!(run_ok(&mut first), last["id"].as_str().unwrap());
    let marker: serde_json::Value = serde_json::from_slice(
        &std::fs::read(volume.join(".ghostwire-backup-restore.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(marker["gate"], "ok");
    // Every row Signal committed before it stopped is in the final snapshot.
    let db = check_db(
        &volume.join(".config/Signal/sql/db.sqlite"),
        &profile.key,
        Some(&ids),
    );
    assert_eq!(db["integrity"], "ok");
    assert_eq!(
        db["missingCount"], 0,
        "the final snapshot lacks committed rows: {db}"
    );

    // Next pod start: the same init container leaves the volume alone.
    let before = tree(&volume, &|_| false);
    let mut again = agent();
    restore(&mut again);
    run_ok(&mut again);
    assert_eq!(tree(&volume, &|_| false), before);
}

#[test]
fn check_fails_when_the_newest_snapshot_is_too_old() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("backups");
    let err = run_err(
        agent()
            .env("GWB_REPO", &repo)
            .args(["check", "--max-age", "1h"]),
    );
    assert!(err.contains("holds no snapshot"), "{err}");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(home.join("notes.txt"), "x").unwrap();
    let (_, recipient) = keygen(dir.path());
    run_ok(&mut backup_command(
        &repo,
        &home,
        &recipient,
        dir.path().join("staging"),
    ));
    run_ok(
        agent()
            .env("GWB_REPO", &repo)
            .args(["check", "--max-age", "1h"]),
    );
    std::thread::sleep(Duration::from_millis(1100));
    let err = run_err(
        agent()
            .env("GWB_REPO", &repo)
            .args(["check", "--max-age", "1s"]),
    );
    assert!(err.contains("older than the allowed"), "{err}");
}
