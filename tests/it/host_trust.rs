//! What the desktop user controls and the agent must not trust (issue 10, host side): the
//! desktop user owns the home and the volume while the agent may run as root, and another
//! uid may share the temp dir. Each test plays one such user against the real binary.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

use ghostwire_backup::catalog;
use serde_json::Value;

use crate::common::*;

fn fixture() -> Fixture {
    Fixture::new(&["--messages", "50", "--attachments", "4"])
}

/// Every entry below `dir`, not following links: its bytes (or link target) and mtime.
fn bytes_and_times(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, i64, i64)> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        let content = if metadata.is_dir() {
            found.extend(bytes_and_times(&path));
            Vec::new()
        } else if metadata.file_type().is_symlink() {
            std::fs::read_link(&path)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if metadata.is_file() {
            std::fs::read(&path).unwrap()
        } else {
            b"special".to_vec() // Signal's sockets
        };
        found.insert(path, (content, metadata.mtime(), metadata.mtime_nsec()));
    }
    found
}

/// A backup that must succeed: its manifest and its stderr (the log).
fn backup(fx: &Fixture) -> (Value, String) {
    let ran = fx.backup().run();
    assert!(ran.status.success(), "the backup failed:\n{ran}");
    (fx.manifest(ran.stdout_trimmed()), ran.stderr)
}

#[test]
fn the_restore_gate_never_follows_a_symlinked_config_out_of_the_staging_tree() {
    let fx = fixture();
    // The desktop user made ~/.config a link, in their own home, to a directory that holds
    // a real Signal profile. The backup side does not follow it (src/home.rs): the
    // snapshot has the link, and no Signal database.
    let elsewhere = fx.root.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::rename(fx.home().join(".config"), elsewhere.join(".config")).unwrap();
    symlink(elsewhere.join(".config"), fx.home().join(".config")).unwrap();
    let (manifest, _) = backup(&fx);
    assert!(manifest["signal_db"].is_null(), "{manifest}");
    let id = manifest["id"].as_str().unwrap().to_string();
    // An archive that holds the link and claims a database anyway (an older agent's, or
    // one signed with a stolen key) must not make the gate follow the link.
    let outside = elsewhere.join(".config");
    fx.plant(
        &id,
        |tar| {
            let mut header = tar_header(tar::EntryType::Symlink, 0, 0o777);
            header.set_path(".config").unwrap();
            header.set_link_name(&outside).unwrap();
            header.set_cksum();
            tar.append(&header, std::io::empty()).unwrap();
        },
        |manifest| {
            manifest["signal_db"] =
                serde_json::json!({"user_version": 1, "check": "ok", "bytes": 1});
        },
    );
    let before = bytes_and_times(&elsewhere);

    let target = fx.root.join("restored");
    let err = fx.assert_restore_fails(fx.restore(&target).args(["--snapshot", &id]), &target);
    assert!(
        err.contains("not a plain directory tree") && err.contains(".config is a symbolic link"),
        "{err}"
    );
    assert_eq!(
        bytes_and_times(&elsewhere),
        before,
        "the gate opened the database the link points at"
    );
}

#[test]
fn a_rewritten_catalog_row_cannot_hide_a_changed_file() {
    let fx = fixture();
    let notes = fx.home().join("notes.txt");
    std::fs::write(&notes, b"version 1: the old text").unwrap();
    let (first, _) = backup(&fx);
    // The catalog's digest holds for a catalog nobody touched: the chain continues.
    let (second, _) = backup(&fx);
    assert_eq!(second["parent"], first["id"], "{second}");

    // The desktop user changes the file, then rewrites its row to the new stat, so that the
    // file looks unchanged since the last snapshot.
    std::fs::write(&notes, b"version 2: the NEW text").unwrap();
    let now = std::fs::symlink_metadata(&notes).unwrap();
    let conn = rusqlite::Connection::open(fx.home().join(catalog::DEFAULT_NAME)).unwrap();
    let rewritten = conn
        .execute(
            "UPDATE files SET size = ?1, mtime_ns = ?2, ctime_ns = ?3, ino = ?4 WHERE path = ?5",
            rusqlite::params![
                now.len() as i64,
                now.mtime() * 1_000_000_000 + now.mtime_nsec(),
                now.ctime() * 1_000_000_000 + now.ctime_nsec(),
                now.ino() as i64,
                b"notes.txt".as_slice(),
            ],
        )
        .unwrap();
    assert_eq!(rewritten, 1);
    drop(conn);

    let (third, log) = backup(&fx);
    assert!(
        third["parent"].is_null(),
        "a poisoned catalog was trusted: {third}"
    );
    let second_id = second["id"].as_str().unwrap();
    assert!(
        log.contains(&format!("the catalog does not match snapshot {second_id}")),
        "{log}"
    );
    let target = fx.root.join("restored");
    fx.restore(&target).ok();
    assert_eq!(
        std::fs::read(target.join("notes.txt")).unwrap(),
        b"version 2: the NEW text"
    );
}

#[test]
fn an_unusable_catalog_is_a_cache_miss_not_a_stopped_agent() {
    let fx = fixture();
    let path = fx.home().join(catalog::DEFAULT_NAME);
    let (first, _) = backup(&fx);
    // A catalog from the future, then one that is not SQLite at all.
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let (second, log) = backup(&fx);
    assert!(second["parent"].is_null(), "{second}");
    assert!(log.contains("the catalog cannot be used"), "{log}");
    std::fs::write(&path, b"garbage, not a database ".repeat(100)).unwrap();
    let (third, log) = backup(&fx);
    assert!(third["parent"].is_null(), "{third}");
    assert!(log.contains("the catalog cannot be used"), "{log}");
    // The fresh catalog works: the next backup continues its chain.
    let (fourth, _) = backup(&fx);
    assert_eq!(fourth["parent"], third["id"]);
    assert_ne!(first["id"], third["id"]);
}

#[test]
fn a_symlinked_catalog_is_replaced_and_its_target_left_alone() {
    let fx = fixture();
    let path = fx.home().join(catalog::DEFAULT_NAME);
    let existing = fx.root.join("victim.sqlite");
    std::fs::write(&existing, b"someone else's file").unwrap();
    let created = fx.root.join("would-be-created");
    for target in [&existing, &created] {
        symlink(target, &path).unwrap();
        let (manifest, log) = backup(&fx);
        assert!(manifest["parent"].is_null(), "{manifest}");
        assert!(log.contains("the catalog is a symbolic link"), "{log}");
        assert!(
            std::fs::symlink_metadata(&path).unwrap().is_file(),
            "the link was not replaced by a catalog"
        );
        std::fs::remove_file(&path).unwrap();
    }
    assert_eq!(std::fs::read(&existing).unwrap(), b"someone else's file");
    assert!(
        !created.exists(),
        "the agent created a file through the link"
    );
}

#[test]
fn a_staging_directory_planted_as_a_symlink_is_refused_and_its_target_kept() {
    let fx = fixture();
    let base = fx.root.join("shared-tmp");
    let victim = fx.root.join("victim");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("precious"), b"data").unwrap();
    symlink(&victim, base.join("ghostwire-backup-staging")).unwrap();
    backup_command(fx.agent(), fx.home(), &fx.recipient, &base).fails_with(&[
        "refusing to use the staging directory",
        "ghostwire-backup-staging",
        "--staging-dir",
    ]);
    assert_eq!(
        bytes_and_times(&victim).into_keys().collect::<Vec<_>>(),
        [victim.join("precious")]
    );
}
