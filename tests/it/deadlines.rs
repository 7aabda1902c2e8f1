//! Deadlines are kept on any size of database: `run --final-deadline` cuts the final
//! snapshot within about a second of its deadline, whatever phase it is in, and SIGTERM
//! stops `restore` and `verify` within about a second, leaving the target as it was.
//!
//! The profile's database is grown to a size whose uncut snapshot takes clearly longer than
//! the deadline, so a deadline that is only checked between phases would be missed.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::command::Spawned;
use crate::common::*;

/// Size of the padding added to Signal's database.
const PADDING_MIB: u32 = 128;

/// Adds `mib` MiB of incompressible rows to a Signal database, through SQLCipher with its key.
fn grow_database(db: &Path, key: &str, mib: u32) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let key = ghostwire_backup::profile::DbKey::from_hex(key).unwrap();
    conn.execute_batch(&key.pragma()).unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE padding(x BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {mib})
         INSERT INTO padding SELECT randomblob(1048576) FROM n;
         PRAGMA wal_checkpoint(TRUNCATE);"
    ))
    .unwrap();
}

fn sigterm(child: &Spawned) {
    // SAFETY: kill only sends a signal to a process this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}

/// Waits for `child` to exit, at most `limit`; returns its status, how long it took, and
/// its stderr.
fn exit_within(
    mut child: Spawned,
    limit: Duration,
) -> (std::process::ExitStatus, Duration, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit + Duration::from_secs(30) {
            child.kill().unwrap();
            panic!(
                "the agent did not exit within {:?} of SIGTERM",
                started.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    eprintln!("--- exited {status} after {elapsed:?}:\n{log}");
    (status, elapsed, log)
}

fn snapshot_count(repo: &Path) -> usize {
    snapshot_ids(&mut agent_for(repo)).len()
}

#[test]
fn deadlines_and_signals_cut_backup_restore_and_verify_within_about_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let profile = make_profile(
        &root.join("home"),
        &["--messages", "200", "--attachments", "5"],
    );
    grow_database(&profile.db(), &profile.key, PADDING_MIB);
    let (identity, recipient) = keygen(root);
    let repo = root.join("backups");
    let staging = root.join("staging");

    // The final snapshot of a sidecar whose deadline is shorter than the snapshot takes.
    let port = free_port();
    let daemon = agent()
        .env("GWB_REPO", &repo)
        .env("GWB_SOURCE", &profile.home)
        .env("GWB_RECIPIENTS", &recipient)
        .env("GWB_STAGING_DIR", &staging)
        .env("GWB_SCHEDULE", "0 0 1 1 *") // not during this test
        .env("GWB_LISTEN", format!("127.0.0.1:{port}"))
        .env("GWB_FINAL_DEADLINE", "2")
        .env("GWB_LEASE_OWNER", "ghostwire-0")
        .arg("run")
        .spawn(Stdio::null(), Stdio::piped());
    wait_for_port(port);
    sigterm(&daemon);
    let (status, elapsed, log) = exit_within(daemon, Duration::from_secs(3));
    assert!(
        !status.success(),
        "a cut final snapshot must fail the daemon:\n{log}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "took {elapsed:?} after SIGTERM with --final-deadline 2:\n{log}"
    );
    assert!(log.contains("final snapshot cut at deadline"), "{log}");
    assert!(log.contains("lease is not released"), "{log}");
    assert_eq!(
        snapshot_count(&repo),
        0,
        "a cut final snapshot must leave no manifest"
    );

    // The next backup works (and takes longer than the deadline: the cut was real).
    let started = Instant::now();
    let id = backup_command(agent_for(&repo), &profile.home, &recipient, &staging).ok();
    let uncut = started.elapsed();
    assert!(
        uncut > Duration::from_secs(2),
        "the uncut backup took only {uncut:?}: grow the database"
    );
    assert_eq!(snapshot_count(&repo), 1);

    // SIGTERM in the middle of a restore: it stops, and the volume is as it was.
    let volume = root.join("volume");
    std::fs::create_dir_all(volume.join("lost+found")).unwrap();
    let restore = agent_for(&repo)
        .args(["restore", "--snapshot", &id, "--target"])
        .arg(&volume)
        .arg("--identity")
        .arg(&identity)
        .arg("--break-lease") // the cut final snapshot kept it
        .spawn(Stdio::null(), Stdio::piped());
    std::thread::sleep(Duration::from_millis(700));
    sigterm(&restore);
    let (status, elapsed, log) = exit_within(restore, Duration::from_secs(2));
    assert!(
        !status.success(),
        "a restore stopped by SIGTERM must fail:\n{log}"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "restore took {elapsed:?} to stop:\n{log}"
    );
    assert!(log.contains("stopped by SIGTERM"), "{log}");
    let left: Vec<_> = std::fs::read_dir(&volume)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["lost+found"], "the restore left something behind");

    // SIGTERM in the middle of a verify.
    let verify = agent_for(&repo)
        .args(["verify", "--snapshot", &id, "--identity"])
        .arg(&identity)
        .spawn(Stdio::null(), Stdio::piped());
    std::thread::sleep(Duration::from_millis(700));
    sigterm(&verify);
    let (status, elapsed, log) = exit_within(verify, Duration::from_secs(2));
    assert!(
        !status.success(),
        "a verify stopped by SIGTERM must fail:\n{log}"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "verify took {elapsed:?} to stop:\n{log}"
    );
    assert!(log.contains("stopped by SIGTERM"), "{log}");
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not listen within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The signal handlers are installed right after the listener.
    std::thread::sleep(Duration::from_millis(200));
}
