//! Bad input gets a clear error, a non-zero exit, and nothing lost: no restore marker, no
//! write outside the target, no snapshot that looks complete.

use std::path::Path;

use ghostwire_backup::commands::restore::{MARKER, STAGING};
use ghostwire_backup::profile::OWN_FILES_PREFIX;

use crate::common::*;

/// A small profile backed up once to the local repository.
fn backed_up() -> (Fixture, String) {
    Fixture::backed_up(&["--messages", "300", "--attachments", "8"])
}

/// A restore into `target/` with `identity` that must fail: its stderr.
fn restore_fails(fx: &Fixture, identity: &Path) -> String {
    let target = fx.root.join("target");
    let mut restore = fx.agent();
    restore
        .arg("restore")
        .arg("--identity")
        .arg(identity)
        .arg("--target")
        .arg(&target);
    fx.assert_restore_fails(&mut restore, &target)
}

#[test]
fn wrong_identity_is_named_as_such() {
    let (fx, _) = backed_up();
    let other = tempfile::tempdir().unwrap();
    let (wrong, _) = keygen(other.path());
    let err = restore_fails(&fx, &wrong);
    assert!(
        err.contains("none of the given identities can decrypt"),
        "{err}"
    );
}

#[test]
fn a_flipped_byte_anywhere_fails_authentication() {
    let (fx, id) = backed_up();
    let original = fx.archive_bytes(&id);
    // In the age header, early in the payload, in the middle, at the very end.
    for offset in [40, 400, original.len() / 2, original.len() - 1] {
        let mut damaged = original.clone();
        damaged[offset] ^= 0x01;
        fx.replace_archive(&id, &damaged);
        let err = restore_fails(&fx, &fx.identity);
        assert!(
            err.contains("damaged")
                || err.contains("tampered")
                || err.contains("not an age file")
                || err.contains("cannot decrypt"),
            "offset {offset}: {err}"
        );
        let _ = std::fs::remove_dir_all(fx.root.join("target"));
    }
}

#[test]
fn a_truncated_archive_is_refused() {
    let (fx, id) = backed_up();
    let original = fx.archive_bytes(&id);
    for keep in [original.len() - 1, original.len() - 20, original.len() / 3] {
        fx.replace_archive(&id, &original[..keep]);
        let err = restore_fails(&fx, &fx.identity);
        assert!(
            err.contains("truncated") || err.contains("damaged"),
            "kept {keep}: {err}"
        );
        let _ = std::fs::remove_dir_all(fx.root.join("target"));
    }
}

#[test]
fn an_archive_swapped_in_from_another_backup_is_caught_by_the_manifest_hash() {
    let (fx, id) = backed_up();
    // A second, valid snapshot encrypted to the same key; its archive replaces the first's.
    let second = fx.backup().ok();
    fx.replace_archive(&id, &fx.archive_bytes(&second));
    let target = fx.root.join("target");
    fx.restore(&target)
        .args(["--snapshot", &id])
        .fails_with(&["does not match its manifest"]);
    assert!(!target.join(MARKER).exists());
    fx.agent()
        .args(["verify", "--quick", "--snapshot", &id])
        .fails_with(&["does not match its manifest"]);
}

/// Where an age file's payload starts: after the header's MAC line and the 16-byte nonce.
fn payload_start(age: &[u8]) -> usize {
    let mac = age.windows(5).position(|w| w == b"\n--- ").unwrap() + 1;
    mac + age[mac..].iter().position(|&b| b == b'\n').unwrap() + 1 + 16
}

#[test]
fn an_archive_that_keeps_the_pinned_header_but_not_its_payload_is_refused() {
    // A restore hashes only the age header the manifest pins; decryption must catch the
    // rest. A bucket writer keeps the genuine header and splices in another snapshot's
    // payload (same recipient, valid chunks of another key), cut to the recorded size.
    let (fx, id) = backed_up();
    let second = fx.backup().ok();
    let genuine = fx.archive_bytes(&id);
    let other = fx.archive_bytes(&second);
    let mut spliced = genuine[..payload_start(&genuine)].to_vec();
    spliced.extend_from_slice(&other[payload_start(&other)..]);
    spliced.resize(genuine.len(), 0);
    fx.replace_archive(&id, &spliced);
    let err = restore_fails(&fx, &fx.identity);
    assert!(
        err.contains("damaged") || err.contains("cannot decrypt"),
        "{err}"
    );
}

#[test]
fn a_snapshot_without_its_archive_or_manifest_is_reported() {
    let (fx, id) = backed_up();
    fx.remove_archive(&id);
    let err = restore_fails(&fx, &fx.identity);
    assert!(err.contains("archive cannot be read"), "{err}");
    std::fs::remove_file(fx.manifest_path(&id)).unwrap();
    let err = restore_fails(&fx, &fx.identity);
    assert!(err.contains("holds no snapshot"), "{err}");
    fx.restore(&fx.root.join("target"))
        .args(["--snapshot", "20990101T000000Z-00000000"])
        .fails_with(&["no snapshot"]);
}

#[test]
fn a_non_empty_target_is_refused_and_if_empty_leaves_it_alone() {
    let (fx, _) = backed_up();
    let target = fx.root.join("target");
    std::fs::create_dir_all(target.join("lost+found")).unwrap();
    std::fs::write(target.join("precious.txt"), "user data").unwrap();
    fx.restore(&target).fails_with(&["is not empty", "--force"]);
    fx.restore(&target).arg("--if-empty").ok();
    assert_eq!(
        std::fs::read_to_string(target.join("precious.txt")).unwrap(),
        "user data"
    );
    assert!(!target.join(MARKER).exists());
    // lost+found alone does not count as data.
    let fresh = fx.root.join("fresh");
    std::fs::create_dir_all(fresh.join("lost+found")).unwrap();
    fx.restore(&fresh).arg("--if-empty").ok();
    assert!(fresh.join(MARKER).exists());
    // Run again as an init container would on every pod start: a no-op.
    let before = tree(&fresh, &|_| false);
    fx.restore(&fresh).arg("--if-empty").ok();
    assert_eq!(tree(&fresh, &|_| false), before);
}

#[test]
fn force_moves_replaced_entries_aside_instead_of_deleting_them() {
    let (fx, _) = backed_up();
    let target = fx.root.join("target");
    std::fs::create_dir_all(target.join(".config")).unwrap();
    std::fs::write(target.join(".config/old.txt"), "old data").unwrap();
    fx.restore(&target).arg("--force").ok();
    assert!(target.join(".config/Signal/config.json").exists());
    let replaced = format!("{OWN_FILES_PREFIX}-replaced-");
    let aside: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(&replaced))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read_to_string(target.join(&aside[0]).join(".config/old.txt")).unwrap(),
        "old data"
    );
}

#[test]
fn an_interrupted_restore_is_discarded_and_redone() {
    let (fx, _) = backed_up();
    let target = fx.root.join("target");
    // What a restore killed mid-unpack leaves: a staging directory with part of the tree.
    let staging = target.join(STAGING);
    std::fs::create_dir_all(staging.join(".config/Signal")).unwrap();
    std::fs::write(staging.join(".config/Signal/half"), "x").unwrap();
    fx.restore(&target).arg("--if-empty").ok();
    assert!(target.join(MARKER).exists());
    assert!(!staging.exists());
    assert!(!target.join(".config/Signal/half").exists());
}

#[test]
fn a_malicious_archive_writes_nothing_outside_the_target() {
    let (fx, id) = backed_up();
    // Replace the archive with a hostile one, encrypted to the right key, and fix up the
    // manifest so only the unpacker stands in the way: without an index, restore takes
    // every entry of the archive. (With the index, entries it does not name are never
    // written at all.)
    let outside = fx.root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    fx.plant(
        &id,
        |tar| {
            let mut link = tar_header(tar::EntryType::Symlink, 0, 0o777);
            tar.append_link(&mut link, "escape", &outside).unwrap();
            let mut file = tar_header(tar::EntryType::Regular, 5, 0o644);
            tar.append_data(&mut file, "escape/pwned", &b"pwned"[..])
                .unwrap();
        },
        |_| {},
    );
    let err = restore_fails(&fx, &fx.identity);
    assert!(err.contains("symlink escape"), "{err}");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written through the symlink"
    );
}

#[test]
fn an_unreachable_s3_server_fails_quickly_and_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let (_, recipient) = keygen(dir.path());
    let port = free_port(); // nothing listens there
    let started = std::time::Instant::now();
    let mut unreachable = agent_for("s3://bucket/prefix");
    unreachable
        .env("GWB_S3_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("GWB_S3_PATH_STYLE", "true")
        .env("GWB_S3_REGION", "us-east-1")
        .env("GWB_S3_ATTEMPTS", "2")
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s");
    backup_command(unreachable, &home, &recipient, &dir.path().join("staging"))
        .arg("--allow-no-signal")
        .fails_with_code(6, &["is the S3 endpoint reachable"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

/// A small profile, not backed up.
fn small() -> Fixture {
    Fixture::new(&["--messages", "20", "--attachments", "2"])
}

#[test]
fn a_profile_with_only_an_encrypted_key_is_refused_with_the_way_out() {
    let fx = small();
    let config = fx.home().join(".config/Signal/config.json");
    std::fs::write(
        &config,
        r#"{"encryptedKey":"7631309a8b","safeStorageBackend":"gnome_libsecret"}"#,
    )
    .unwrap();
    fx.backup().fails_with(&["--password-store=basic"]);
    assert!(
        !fx.repo.join(Object::prefix_of(Object::Manifest)).exists(),
        "a failed backup must not leave a snapshot"
    );
    // And with the key given explicitly, it works.
    let key_file = fx.root.join("db.key");
    std::fs::write(&key_file, &fx.profile.key).unwrap();
    fx.backup().arg("--db-key-file").arg(&key_file).ok();
}

#[test]
fn a_wrong_database_key_fails_the_backup_without_showing_the_key() {
    let fx = small();
    let wrong = "0".repeat(64);
    std::fs::write(
        fx.home().join(".config/Signal/config.json"),
        format!("{{\"key\":\"{wrong}\"}}"),
    )
    .unwrap();
    let mut debug = fx.agent();
    debug.env("GWB_LOG", "debug");
    let err = fx.backup_with(debug).fails_with(&["database key is wrong"]);
    assert!(
        !err.contains(&wrong) && !err.contains(&fx.profile.key),
        "the key leaked into the output"
    );
    assert!(!fx.repo.join(Object::prefix_of(Object::Manifest)).exists());
}

#[test]
fn the_init_container_on_a_first_install_starts_with_an_empty_volume() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, _) = keygen(dir.path());
    let target = dir.path().join("volume");
    std::fs::create_dir_all(target.join("lost+found")).unwrap();
    // A repository that exists but holds nothing yet (a missing one is exit 3).
    std::fs::create_dir(dir.path().join("empty-repo")).unwrap();
    let restore = || {
        let mut command = agent_for(dir.path().join("empty-repo"));
        command
            .arg("restore")
            .arg("--identity")
            .arg(&identity)
            .arg("--target")
            .arg(&target);
        command
    };
    restore().arg("--if-empty").ok();
    assert!(!target.join(MARKER).exists());
    // Asked for explicitly, a restore from an empty repository is an error.
    restore().fails_with_code(4, &["holds no snapshot"]);
}
