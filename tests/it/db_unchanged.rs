//! A backup skips Signal's database when nothing wrote to it since the last snapshot, and
//! never when something did, even if the desktop user sets the file times back.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// Longer than the agent waits for a database to be quiet before it trusts its stamp.
const QUIET: Duration = Duration::from_millis(2_300);

fn backup(fx: &Fixture) -> Value {
    std::thread::sleep(QUIET);
    fx.manifest(&fx.backup().ok())
}

/// Databases a snapshot copied (Signal's and the profile's plain SQLite ones).
fn databases_copied(manifest: &Value) -> u64 {
    manifest["content"]["sqlite_snapshots"].as_u64().unwrap()
}

/// Bytes a snapshot uploaded: its archive and index.
fn uploaded(manifest: &Value) -> u64 {
    manifest["archive"]["size"].as_u64().unwrap() + manifest["index"]["size"].as_u64().unwrap()
}

/// Signal's driver commits `count` transactions; their ids go to `ids`.
fn write_messages(fx: &Fixture, ids: &Path, count: usize) {
    let writer = Writer::start(&fx.profile.db(), &fx.profile.key, ids);
    writer.wait_for(count);
    writer.stop();
}

fn restore_and_check(fx: &Fixture, manifest: &Value, ids: Option<&Path>) -> Value {
    let id = manifest["id"].as_str().unwrap();
    let target = fx.root.join(format!("restore-{id}"));
    fx.restore(&target).args(["--snapshot", id]).ok();
    let db = check_db(
        &target.join(".config/Signal/sql/db.sqlite"),
        &fx.profile.key,
        ids,
    );
    assert_eq!(db["integrity"], "ok", "{db}");
    db
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

    // Signal commits: the next backup copies the database again.
    let ids = fx.root.join("ids.txt");
    write_messages(&fx, &ids, 20);
    let changed = backup(&fx);
    assert_eq!(
        databases_copied(&changed),
        databases_copied(&first),
        "{changed}"
    );
    assert!(uploaded(&changed) > db_bytes / 4, "{changed}");

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
    let before = restore_and_check(&fx, &unchanged, None);
    assert_eq!(
        before["messages"].as_u64(),
        Some(fx.profile.messages),
        "{before}"
    );
    let after = restore_and_check(&fx, &changed, Some(&ids));
    assert_eq!(
        after["missingCount"], 0,
        "rows committed before the backup are lost: {after}"
    );
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
    write_messages(&fx, &ids, 10);
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
    let restored = restore_and_check(&fx, &second, Some(&ids));
    assert_eq!(restored["missingCount"], 0, "{restored}");
}
