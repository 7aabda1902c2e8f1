//! A backup skips Signal's database when nothing wrote to it since the last snapshot, and
//! never when something did, even if the desktop user sets the file times back.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ghostwire_backup::catalog;
use serde_json::Value;

use crate::common::*;

fn backup(fx: &Fixture) -> Value {
    fx.quiet_backup_of(fx.home())
}

/// Databases a snapshot copied (Signal's and the profile's plain SQLite ones).
fn databases_copied(manifest: &Value) -> u64 {
    manifest["content"]["sqlite_snapshots"].as_u64().unwrap()
}

#[test]
fn an_unchanged_database_is_not_uploaded_again_and_a_changed_one_is() {
    let fx = Fixture::new(&["--messages", "3000"]);
    let first = backup(&fx);
    let db_bytes = first["signal_db"]["bytes"].as_u64().unwrap();
    assert!(
        db_bytes > 1 << 20,
        "the profile should hold a real database: {first}"
    );

    // Nothing changed: the database is reused from the first snapshot, nothing re-read.
    let unchanged = backup(&fx);
    assert_eq!(
        databases_copied(&unchanged),
        databases_copied(&first) - 1,
        "{unchanged}"
    );
    assert!(
        uploaded(&unchanged) < 1 << 20,
        "an unchanged backup uploaded {} bytes",
        uploaded(&unchanged)
    );
    assert_eq!(unchanged["signal_db"], first["signal_db"]);
    assert_eq!(unchanged["attachments"], first["attachments"]);
    assert!(
        unchanged["depends_on"]
            .as_array()
            .unwrap()
            .contains(&first["id"]),
        "the unchanged snapshot must keep the archive holding its database: {unchanged}"
    );

    // Signal commits: the next backup copies the database again, and archives the pages
    // that changed (tests/it/db_deltas.rs).
    let ids = fx.root.join("ids.txt");
    commit_messages(fx.home(), &fx.profile.key, &ids, 20);
    let changed = backup(&fx);
    assert_eq!(
        databases_copied(&changed),
        databases_copied(&first),
        "{changed}"
    );
    assert!(
        changed["signal_db"]["delta_pages"].as_u64() > Some(0),
        "{changed}"
    );

    // Signal starts and quits without a commit (a desktop left idle, then stopped for a
    // switch): SQLite makes an empty WAL and deletes it again. Nothing to copy.
    open_and_quit(&fx.profile.db(), &fx.profile.key);
    let reopened = backup(&fx);
    assert_eq!(
        databases_copied(&reopened),
        databases_copied(&first) - 1,
        "{reopened}"
    );

    // Each snapshot restores the database it stands for.
    let (_, before) = fx.restore_and_check(&unchanged, None);
    assert_eq!(
        before["messages"].as_u64(),
        Some(fx.profile.messages),
        "{before}"
    );
    fx.restore_and_check(&changed, Some(&ids));
    fx.verify_with(fx.agent(), unchanged["id"].as_str().unwrap())
        .ok();
}

#[test]
fn a_database_written_with_its_times_set_back_is_copied_again() {
    let fx = Fixture::new(&["--messages", "200"]);
    let first = backup(&fx);
    let db = fx.profile.db();
    let wal = db.with_file_name("db.sqlite-wal");
    let times = |path: &Path| std::fs::metadata(path).ok().map(|m| m.modified().unwrap());
    let (db_time, wal_time) = (times(&db), times(&wal));

    // The desktop user writes, then puts the modification times back as they were: the
    // change time (which nobody can set) and the sizes still tell.
    let ids = fx.root.join("ids.txt");
    commit_messages(fx.home(), &fx.profile.key, &ids, 10);
    for (path, time) in [(&db, db_time), (&wal, wal_time)] {
        if let (Some(time), Ok(file)) = (time, std::fs::File::options().write(true).open(path)) {
            file.set_modified(time).unwrap();
        }
    }
    let second = backup(&fx);
    assert_eq!(second["parent"], first["id"]);
    assert_eq!(
        databases_copied(&second),
        databases_copied(&first),
        "{second}"
    );
    fx.restore_and_check(&second, Some(&ids));
}

/// Snapshot ids in the local repository, oldest first.
fn snapshot_ids(fx: &Fixture) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(fx.repo.join(Object::prefix_of(Object::Manifest)))
        .map(|dir| {
            dir.filter_map(|e| e.unwrap().file_name().into_string().ok())
                .filter_map(|name| name.strip_suffix(".json").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn an_idle_desktops_final_snapshot_does_not_copy_the_database_and_restores_it() {
    let fx = Fixture::new(&["--messages", "500"]);
    // Signal ran and quit: its WAL is checkpointed and gone, as on an idle desktop.
    open_and_quit(&fx.profile.db(), &fx.profile.key);
    wait_for_quiet_database(fx.home());

    let mut daemon = fx
        .agent()
        .env("GWB_SOURCE", fx.home())
        .env("GWB_RECIPIENTS", &fx.recipient)
        .env("GWB_STAGING_DIR", fx.root.join("staging"))
        .env("GWB_SCHEDULE", "*/2 * * * * *")
        .env("GWB_LEASE_OWNER", "ghostwire-0")
        .arg("run")
        .spawn(Stdio::null(), Stdio::null());
    wait_for("a scheduled backup", Duration::from_secs(60), || {
        (!snapshot_ids(&fx).is_empty()).then_some(())
    });
    // Signal is stopped first (it opens and quits without a commit), then the sidecar.
    open_and_quit(&fx.profile.db(), &fx.profile.key);
    // SAFETY: kill on a child we spawned and have not reaped.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());

    let ids = snapshot_ids(&fx);
    let first = fx.manifest(&ids[0]);
    let last = fx.manifest(ids.last().unwrap());
    assert_eq!(last["final"], true, "{last}");
    assert_eq!(
        databases_copied(&last),
        databases_copied(&first) - 1,
        "the final snapshot copied Signal's database: {last}"
    );

    // Green's init container restores the handed-over snapshot: the whole database.
    let volume = fx.root.join("green");
    fx.restore(&volume)
        .args(["--snapshot", "handoff", "--if-empty"])
        .ok();
    assert_signal_db(&volume, &fx.profile.key, fx.profile.messages);
}

#[test]
fn a_stamp_planted_in_the_catalog_cannot_hide_a_write() {
    let fx = Fixture::new(&["--messages", "200"]);
    backup(&fx);
    let ids = fx.root.join("ids.txt");
    commit_messages(fx.home(), &fx.profile.key, &ids, 10);
    wait_for_quiet_database(fx.home());

    // The desktop user owns the catalog: they record the database's new stamp in it, as
    // if the last snapshot had copied the database as it is now.
    let now = ghostwire_backup::signal_db::stamp(fx.home())
        .unwrap()
        .unwrap();
    let catalog = rusqlite::Connection::open(fx.home().join(catalog::DEFAULT_NAME)).unwrap();
    let planted = catalog
        .execute(
            "UPDATE files SET db_stamp = ?1 WHERE db_stamp IS NOT NULL",
            [&now.0],
        )
        .unwrap();
    assert_eq!(planted, 1, "the first snapshot recorded a stamp");
    drop(catalog);

    let second = backup(&fx);
    assert!(
        second["parent"].is_null(),
        "a planted catalog was trusted: {second}"
    );
    fx.restore_and_check(&second, Some(&ids));
}
