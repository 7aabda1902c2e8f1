//! Deadlines are kept on any size of database: `run --final-deadline` cuts the final
//! snapshot within about a second of its deadline, whatever phase it is in, and SIGTERM
//! stops `restore` and `verify` within about a second, leaving the target as it was.
//!
//! The operations are made to last, whatever the machine's speed: the repository is on a
//! real S3 server behind a proxy that holds the archive's uploads and downloads for a
//! minute, and the database is grown so its snapshot takes a while too. A deadline that is
//! only checked between phases, or a store call that does not race the cut, is missed.
//! Each signal is sent on an event the agent serves or logs (the lease taken, a phase
//! entered), never after a guessed sleep. Should a restore or verify still win the race and
//! finish before it sees the signal, it must have finished completely (exit 0, the volume
//! restored and marked); otherwise it must have stopped with nothing written.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ghostwire_backup::commands::restore::MARKER;

use crate::common::faults::{Bucket, Fault, FaultProxy};
use crate::common::*;

/// Size of the padding added to Signal's database.
const PADDING_MIB: u32 = 64;

const BUCKET: &str = "ghostwire";

/// How long the proxy holds a stalled request: far longer than any bound here.
const STALL: Duration = Duration::from_secs(60);

/// Adds `mib` MiB of incompressible rows to a Signal database, through SQLCipher with its key.
pub fn grow_database(db: &Path, key: &str, mib: u32) {
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

/// On a loaded 2-core machine (the suite runs tests side by side), how long after SIGTERM
/// an agent that keeps "within about a second" may take to exit.
const STOP_BOUND: Duration = Duration::from_secs(3);

/// Sends SIGTERM and waits for `child` to exit; returns its status, how long it took from
/// the signal, and all it wrote to stderr.
fn stop_with_sigterm(mut child: Spawned, stderr: Stderr) -> (ExitStatus, Duration, String) {
    // SAFETY: kill only sends a signal to a process this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let signalled = Instant::now();
    let status = wait_for(
        "the agent to exit after SIGTERM",
        STOP_BOUND + Duration::from_secs(30),
        || child.try_wait().unwrap(),
    );
    let elapsed = signalled.elapsed();
    let log = stderr.all();
    eprintln!("--- exited {status} {elapsed:?} after SIGTERM:\n{log}");
    (status, elapsed, log)
}

/// `command` started with debug logs (each phase it enters is logged) and its stderr watched.
fn start_logging_phases(command: &mut TestCommand) -> (Spawned, Stderr) {
    let mut child = command
        .env("GWB_LOG", "ghostwire_backup=debug,info")
        .spawn(Stdio::null(), Stdio::piped());
    let stderr = child.watch_stderr();
    (child, stderr)
}

/// Holds the next `count` requests of `method` whose target contains `target` for [`STALL`]
/// (`fault` says how: the whole answer, or a body cut off midway).
fn stall(proxy: &FaultProxy, method: &'static str, target: &'static str, fault: Fault) {
    proxy.set_stall(STALL);
    for _ in 0..64 {
        proxy.force(method, target, fault);
    }
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
    let staging = root.join("staging");
    let bucket = Bucket::with_prefix(BUCKET, "blue", 1);
    let proxy = &bucket.proxy;
    let agent = || bucket.through_proxy();

    // The final snapshot of a sidecar whose deadline is shorter than the snapshot takes.
    let port = free_port();
    let mut daemon = agent()
        .env("GWB_SOURCE", &profile.home)
        .env("GWB_RECIPIENTS", &recipient)
        .env("GWB_STAGING_DIR", &staging)
        .env("GWB_SCHEDULE", "0 0 1 1 *") // not during this test
        .env("GWB_LISTEN", format!("127.0.0.1:{port}"))
        .env("GWB_FINAL_DEADLINE", "2")
        .env("GWB_LEASE_OWNER", "ghostwire-0")
        .arg("run")
        .spawn(Stdio::null(), Stdio::piped());
    let stderr = daemon.watch_stderr();
    // The final snapshot is taken only by the lease's holder: /startupz says it holds it.
    wait_for(
        "the sidecar to take the lease",
        Duration::from_secs(60),
        || http_get(port, "/startupz").filter(|answer| answer.starts_with("HTTP/1.1 200")),
    );
    stall(proxy, "PUT", ".tar.zst.age.0", Fault::Stall); // the archive's parts
    let (status, elapsed, log) = stop_with_sigterm(daemon, stderr);
    assert!(
        !status.success(),
        "a cut final snapshot must fail the daemon:\n{log}"
    );
    assert!(
        elapsed < Duration::from_secs(2) + STOP_BOUND,
        "took {elapsed:?} after SIGTERM with --final-deadline 2:\n{log}"
    );
    assert!(log.contains("final snapshot cut at deadline"), "{log}");
    assert!(log.contains("lease is not released"), "{log}");
    assert!(
        snapshot_ids(&mut agent()).is_empty(),
        "a cut final snapshot must leave no manifest"
    );

    // The next backup works.
    proxy.clear_forced();
    let id = backup_command(agent(), &profile.home, &recipient, &staging).ok();
    assert_eq!(snapshot_ids(&mut agent()), [id.as_str()]);

    // SIGTERM in the middle of a restore: it stops, and the volume is as it was.
    let volume = root.join("volume");
    std::fs::create_dir_all(volume.join("lost+found")).unwrap();
    stall(proxy, "GET", "/archives/", Fault::StallBody);
    let (restore, stderr) = start_logging_phases(
        agent()
            .args(["restore", "--snapshot", &id, "--target"])
            .arg(&volume)
            .arg("--identity")
            .arg(&identity)
            .arg("--break-lease"), // the cut final snapshot kept it
    );
    stderr.wait_for(
        &["entering", "download and unpack"],
        Duration::from_secs(60),
    );
    let (status, elapsed, log) = stop_with_sigterm(restore, stderr);
    let left: Vec<_> = std::fs::read_dir(&volume)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    if status.success() {
        // It finished before it saw the signal: then the restore is whole.
        assert_signal_db(&volume, &profile.key, profile.messages);
        assert!(volume.join(MARKER).is_file(), "no marker: {left:?}\n{log}");
    } else {
        assert!(log.contains("stopped by SIGTERM"), "{log}");
        assert_eq!(left, ["lost+found"], "the restore left something behind");
        assert!(
            elapsed < STOP_BOUND,
            "restore took {elapsed:?} to stop:\n{log}"
        );
    }

    // SIGTERM in the middle of a verify.
    let (verify, stderr) = start_logging_phases(
        agent()
            .args(["verify", "--snapshot", &id, "--identity"])
            .arg(&identity),
    );
    stderr.wait_for(
        &["entering", "download and unpack"],
        Duration::from_secs(60),
    );
    let (status, elapsed, log) = stop_with_sigterm(verify, stderr);
    if status.success() {
        assert!(log.contains("verify passed"), "{log}");
    } else {
        assert!(log.contains("stopped by SIGTERM"), "{log}");
        assert!(
            elapsed < STOP_BOUND,
            "verify took {elapsed:?} to stop:\n{log}"
        );
    }
}
