//! End to end: a Signal profile made by Signal's driver, backed up by the real binary to a
//! local directory and to a real S3 server, restored into an empty directory, and checked
//! with Signal's driver.

use std::path::Path;

use ghostwire_backup::commands::restore::MARKER;

use crate::common::*;

/// The default profile of make-profile.mjs.
fn fixture() -> Fixture {
    Fixture::new(&[])
}

/// The restored home holds every kept file byte for byte, none of the excludes, and a
/// Signal database with every row, including those that lived only in the WAL.
fn assert_restored_matches(fx: &Fixture, target: &Path) {
    let expected = tree(fx.home(), &not_backed_up);
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
    assert!(target.join(MARKER).exists(), "no restore marker");
    let db = assert_signal_db(target, &fx.profile.key, fx.profile.messages);
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
    let fx = fixture();
    let id = fx.backup().ok();
    let listed = fx.agent().args(["snapshots", "--json"]).ok();
    let manifests: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(manifests[0]["id"], id.as_str());
    assert_eq!(manifests[0]["signal_db"]["check"], "ok");
    assert_eq!(manifests[0]["attachments"]["missing"], 0);
    assert!(manifests[0]["attachments"]["referenced"].as_u64().unwrap() > 0);
    let target = fx.root.join("restored");
    assert_eq!(fx.restore(&target).ok(), id);
    assert_restored_matches(&fx, &target);
    // The live profile is untouched: its WAL is still there, unmerged.
    assert!(fx.profile.db().with_file_name("db.sqlite-wal").exists());
}

#[test]
fn s3_round_trip_against_a_real_server() {
    let fx = fixture();
    let server = S3Server::with_bucket("ghostwire");
    let repo = "s3://ghostwire/blue/prod";
    // Small parts so the archive really goes up in several.
    let id = fx
        .backup_with(server.agent(repo))
        .args(["--part-size-mib", "1"])
        .ok();
    let (_, parts) = server.get(&format!(
        "/ghostwire?list-type=2&prefix=blue/prod/archives/{id}"
    ));
    assert!(parts.matches("<Key>").count() > 1, "one part only: {parts}");
    assert!(server.agent(repo).arg("snapshots").ok().contains(&id));
    let target = fx.root.join("restored");
    assert_eq!(fx.restore_with(server.agent(repo), &target).ok(), id);
    assert_restored_matches(&fx, &target);
    fx.verify_with(server.agent(repo), &id).ok();
}

#[test]
fn backup_while_signal_writes_keeps_every_committed_row_and_never_blocks_the_writer() {
    let fx = fixture();
    let ids = fx.root.join("ids.txt");
    let writer = Writer::start(&fx.profile.db(), &fx.profile.key, &ids);
    writer.wait_for(200);
    // Every id the writer reported before the backup began must be in the snapshot.
    let before = fx.root.join("before.txt");
    std::fs::copy(&ids, &before).unwrap();
    fx.backup().ok();
    let during = writer.committed();
    let report = writer.stop();
    assert_eq!(report["busy"], 0, "the writer hit SQLITE_BUSY: {report}");
    assert!(
        during > 200,
        "the writer made no progress during the backup"
    );
    let target = fx.root.join("restored");
    fx.restore(&target).ok();
    let db = check_db(
        &target.join(".config/Signal/sql/db.sqlite"),
        &fx.profile.key,
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
    let fx = fixture();
    let id = fx.backup().ok();
    let target = fx.root.join("by-hand");
    std::fs::create_dir(&target).unwrap();
    stock_tools(
        "cat \"$2\"* | age -d -i \"$1\" | zstd -d | tar -x -C \"$3\"",
        &[&fx.identity, &fx.archive(&id), &target],
    );
    assert_eq!(
        tree(&target, &not_backed_up),
        tree(fx.home(), &not_backed_up)
    );
    assert_signal_db(&target, &fx.profile.key, fx.profile.messages);
}
