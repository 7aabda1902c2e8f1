//! End to end: a Signal profile made by Signal's driver, backed up by the real binary to a
//! local directory and to a real S3 server, restored into an empty directory, and checked
//! with Signal's driver.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

struct Setup {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    profile: Profile,
    identity: std::path::PathBuf,
    recipient: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let profile = make_profile(&root.join("home"), &[]);
    let (identity, recipient) = keygen(&root);
    Setup {
        _dir: dir,
        root,
        profile,
        identity,
        recipient,
    }
}

fn backup(s: &Setup, configure: &dyn Fn(&mut Command)) -> String {
    let mut command = agent();
    configure(&mut command);
    command
        .arg("backup")
        .arg("--source")
        .arg(&s.profile.home)
        .arg("--recipient")
        .arg(&s.recipient);
    command.arg("--staging-dir").arg(s.root.join("staging"));
    run_ok(&mut command)
}

fn restore(s: &Setup, target: &Path, configure: &dyn Fn(&mut Command)) -> String {
    let mut command = agent();
    configure(&mut command);
    command
        .arg("restore")
        .arg("--identity")
        .arg(&s.identity)
        .arg("--target")
        .arg(target);
    run_ok(&mut command)
}

/// The restored home holds every kept file byte for byte, none of the excludes, and a
/// Signal database with every row, including those that lived only in the WAL.
fn assert_restored_matches(s: &Setup, target: &Path) {
    let expected = tree(&s.profile.home, &not_backed_up);
    let restored = tree(target, &not_backed_up);
    assert_same_tree(&restored, &expected);
    let everything = tree(target, &|_| false);
    assert!(
        everything
            .keys()
            .all(|p| !p.rsplit('/').next().unwrap().starts_with("Singleton")),
        "a Singleton* lock was restored"
    );
    for skipped in [
        ".cache",
        ".vnc",
        ".kasmpasswd",
        ".config/Signal/Cache",
        ".config/Signal/logs",
        ".config/Signal/sql/db.sqlite-wal",
    ] {
        assert!(
            !everything.contains_key(skipped),
            "{skipped} should not be restored"
        );
    }
    assert!(
        target.join(".ghostwire-backup-restore.json").exists(),
        "no restore marker"
    );
    let db = check_db(
        &target.join(".config/Signal/sql/db.sqlite"),
        &s.profile.key,
        None,
    );
    assert_eq!(db["integrity"], "ok");
    assert_eq!(
        db["messages"].as_u64().unwrap(),
        s.profile.messages,
        "rows lost (the WAL's?)"
    );
    // Plain SQLite databases are snapshots too: the WAL-only rows are in.
    assert_eq!(
        count_rows(&target.join(".local/share/kasm/state.sqlite"), "sessions"),
        120
    );
    assert_eq!(
        count_rows(&target.join(".config/Signal/Cookies"), "cookies"),
        1
    );
    // Attachments the database references are all there.
    for path in db["attachmentPaths"].as_array().unwrap() {
        let file = target
            .join(".config/Signal/attachments.noindex")
            .join(path.as_str().unwrap());
        assert!(
            file.is_file(),
            "referenced attachment {} missing",
            file.display()
        );
    }
}

#[test]
fn local_repository_round_trip_restores_every_kept_byte() {
    let s = setup();
    let repo = s.root.join("backups");
    let with_repo = |c: &mut Command| {
        c.env("GWB_REPO", &repo);
    };
    let id = backup(&s, &with_repo);
    let listed = run_ok(agent().env("GWB_REPO", &repo).args(["snapshots", "--json"]));
    let manifests: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(manifests[0]["id"], id.as_str());
    assert_eq!(manifests[0]["signal_db"]["check"], "ok");
    assert_eq!(manifests[0]["attachments"]["missing"], 0);
    assert!(manifests[0]["attachments"]["referenced"].as_u64().unwrap() > 0);
    let target = s.root.join("restored");
    assert_eq!(restore(&s, &target, &with_repo), id);
    assert_restored_matches(&s, &target);
    // The live profile is untouched: its WAL is still there, unmerged.
    assert!(s.profile.db().with_file_name("db.sqlite-wal").exists());
}

#[test]
fn s3_round_trip_against_a_real_server() {
    let s = setup();
    let server = S3Server::start();
    server.create_bucket("ghostwire");
    let configure = |c: &mut Command| {
        server.configure(c);
        c.env("GWB_REPO", "s3://ghostwire/blue/prod");
    };
    // Small parts so the archive really goes up as a multipart upload.
    let id = {
        let mut command = agent();
        configure(&mut command);
        command
            .arg("backup")
            .arg("--source")
            .arg(&s.profile.home)
            .arg("--recipient")
            .arg(&s.recipient);
        command
            .arg("--staging-dir")
            .arg(s.root.join("staging"))
            .args(["--part-size-mib", "5"]);
        run_ok(&mut command)
    };
    let mut list = agent();
    configure(&mut list);
    assert!(run_ok(list.arg("snapshots")).contains(&id));
    let target = s.root.join("restored");
    assert_eq!(restore(&s, &target, &configure), id);
    assert_restored_matches(&s, &target);
    let mut verify = agent();
    configure(&mut verify);
    run_ok(
        verify
            .args(["verify", "--snapshot", &id])
            .arg("--identity")
            .arg(&s.identity),
    );
}

#[test]
fn backup_while_signal_writes_keeps_every_committed_row_and_never_blocks_the_writer() {
    let s = setup();
    let repo = s.root.join("backups");
    let ids = s.root.join("ids.txt");
    let writer = Writer::start(&s.profile.db(), &s.profile.key, &ids);
    while writer.committed() < 200 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Every id the writer reported before the backup began must be in the snapshot.
    let before = s.root.join("before.txt");
    std::fs::copy(&ids, &before).unwrap();
    backup(&s, &|c| {
        c.env("GWB_REPO", &repo);
    });
    let during = writer.committed();
    let report = writer.stop();
    assert_eq!(report["busy"], 0, "the writer hit SQLITE_BUSY: {report}");
    assert!(
        during > 200,
        "the writer made no progress during the backup"
    );
    let target = s.root.join("restored");
    restore(&s, &target, &|c| {
        c.env("GWB_REPO", &repo);
    });
    let db = check_db(
        &target.join(".config/Signal/sql/db.sqlite"),
        &s.profile.key,
        Some(&before),
    );
    assert_eq!(db["integrity"], "ok");
    assert_eq!(
        db["missingCount"], 0,
        "rows committed before the backup are missing: {db}"
    );
}

#[test]
fn stock_tools_restore_the_archive_without_the_agent() {
    let s = setup();
    let repo = s.root.join("backups");
    let id = backup(&s, &|c| {
        c.env("GWB_REPO", &repo);
    });
    let archive = repo.join(format!("archives/{id}.tar.zst.age"));
    let target = s.root.join("by-hand");
    std::fs::create_dir(&target).unwrap();
    let status = Command::new("bash")
        .arg("-c")
        .arg("set -o pipefail; age -d -i \"$1\" \"$2\" | zstd -d | tar -x -C \"$3\"")
        .args([
            "sh",
            s.identity.to_str().unwrap(),
            archive.to_str().unwrap(),
            target.to_str().unwrap(),
        ])
        .status()
        .expect("Debian's age, zstd and tar are installed (scripts/test.sh)");
    assert!(status.success());
    assert_eq!(
        tree(&target, &not_backed_up),
        tree(&s.profile.home, &not_backed_up)
    );
    let db = check_db(
        &target.join(".config/Signal/sql/db.sqlite"),
        &s.profile.key,
        None,
    );
    assert_eq!(db["integrity"], "ok");
    assert_eq!(db["messages"].as_u64().unwrap(), s.profile.messages);
}
