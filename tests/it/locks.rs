//! Repository locks through the binary: `unlock`, a junk lock, and a live process of
//! another user, which the kernel answers with EPERM instead of "no such process".

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use chrono::{Duration, Utc};

use crate::common::{Object, TestCommand, agent};

/// The host name the agent runs as in these tests (it reads HOSTNAME, as in a pod).
const HOST: &str = "lock-test-host";

fn unlock(repo: &Path) -> TestCommand {
    let mut command = agent();
    command
        .env("GWB_REPO", repo)
        .env("HOSTNAME", HOST)
        .arg("unlock");
    command
}

/// Writes a lock as a run on `host` in this boot and this PID namespace would.
fn place_lock(repo: &Path, id: &str, pid: u32, host: &str, expires_in: Duration) {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let pid_namespace = std::fs::metadata("/proc/self/ns/pid").unwrap().ino();
    let record = serde_json::json!({
        "mode": "exclusive",
        "purpose": "prune",
        "host": host,
        "pid": pid,
        "boot_id": boot_id.trim(),
        "pid_namespace": pid_namespace,
        "created_at": Utc::now(),
        "expires_at": Utc::now() + expires_in,
    });
    write_lock(repo, id, record.to_string().as_bytes());
}

fn write_lock(repo: &Path, id: &str, content: &[u8]) {
    let locks = repo.join(Object::prefix_of(Object::Lock));
    std::fs::create_dir_all(&locks).unwrap();
    std::fs::write(locks.join(format!("{id}.json")), content).unwrap();
}

fn locks_left(repo: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo.join(Object::prefix_of(Object::Lock)))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A pid no process has: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    child.id()
}

#[test]
fn a_junk_lock_names_unlock_which_removes_it_with_the_stale_ones_and_all_the_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let hour = Duration::hours(1);
    place_lock(
        &repo,
        "20261201T000000.000Z-00000001",
        std::process::id(),
        HOST,
        hour,
    );
    place_lock(
        &repo,
        "20261201T000000.000Z-00000002",
        dead_pid(),
        HOST,
        hour,
    );
    place_lock(
        &repo,
        "20261201T000000.000Z-00000003",
        1,
        "elsewhere",
        -hour,
    );
    write_lock(
        &repo,
        "20261201T000000.000Z-00000000",
        b"\x00\x01 not a lock",
    );

    // The junk lock stops a prune with an error that says what to do, every time.
    let mut prune = agent();
    prune
        .env("GWB_REPO", &repo)
        .env("HOSTNAME", HOST)
        .args(["prune", "--keep-last", "1"]);
    let err = prune.fails();
    assert!(
        err.contains("locks/20261201T000000.000Z-00000000.json cannot be read")
            && err.contains("ghostwire-backup unlock"),
        "{err}"
    );

    let report = unlock(&repo).ok();
    for removed in [
        "removed locks/20261201T000000.000Z-00000002.json: process ",
        "is gone; the exclusive lock of a prune on lock-test-host",
        "removed locks/20261201T000000.000Z-00000003.json: expired at ",
        "removed locks/20261201T000000.000Z-00000000.json: unreadable",
        "kept locks/20261201T000000.000Z-00000001.json: it may still be held",
        "removed 3 of 4 locks",
    ] {
        assert!(
            report.contains(removed),
            "{removed:?} missing from:\n{report}"
        );
    }
    assert_eq!(
        locks_left(&repo),
        ["20261201T000000.000Z-00000001.json"],
        "only the live lock stays"
    );

    let output = unlock(&repo).arg("--all").run();
    assert!(output.status.success(), "{output}");
    let report = &output.stdout;
    let warning = &output.stderr;
    assert!(
        report.contains("removed locks/20261201T000000.000Z-00000001.json (--all)"),
        "{report}"
    );
    assert!(
        warning.contains("WARN") && warning.contains("removed a live lock"),
        "{warning}"
    );
    assert!(locks_left(&repo).is_empty());
}

#[test]
fn a_live_process_of_another_user_holds_its_lock() {
    // The checker must not be allowed to signal the holder: as root, the agent runs as
    // nobody and the holder is this (root) test process; otherwise the holder is pid 1,
    // which must then belong to someone else.
    let root = rustix::process::geteuid().is_root();
    let holder = if root { std::process::id() } else { 1 };
    if !root {
        let owner = std::fs::metadata("/proc/1").unwrap().uid();
        assert_ne!(
            owner,
            rustix::process::getuid().as_raw(),
            "this test needs root, or a pid 1 of another user"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    place_lock(&repo, "live", holder, HOST, Duration::hours(1));
    // The same checker does see a gone process as gone: the same-host shortcut applies.
    place_lock(&repo, "crashed", dead_pid(), HOST, Duration::hours(1));
    for path in [
        dir.path(),
        &repo,
        &repo.join(Object::prefix_of(Object::Lock)),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    }

    let mut command = unlock(&repo);
    if root {
        command.user(65534, 65534);
    }
    let report = command.ok();
    assert!(report.contains("removed locks/crashed.json"), "{report}");
    assert!(report.contains("kept locks/live.json"), "{report}");
    assert_eq!(locks_left(&repo), ["live.json"]);
}
