//! Bad input gets a clear error, a non-zero exit, and nothing lost: no restore marker, no
//! write outside the target, no snapshot that looks complete.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Repo {
    _dir: tempfile::TempDir,
    root: PathBuf,
    repo: PathBuf,
    identity: PathBuf,
    recipient: String,
    id: String,
}

/// A small profile backed up once to a local repository.
fn backed_up() -> Repo {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let profile = make_profile(
        &root.join("home"),
        &["--messages", "300", "--attachments", "8"],
    );
    let (identity, recipient) = keygen(&root);
    let repo = root.join("backups");
    let id = run_ok(&mut backup_command(
        &repo,
        &profile.home,
        &recipient,
        root.join("staging"),
    ));
    Repo {
        _dir: dir,
        root,
        repo,
        identity,
        recipient,
        id,
    }
}

impl Repo {
    fn restore(&self, target: &Path, identity: &Path, extra: &[&str]) -> Command {
        let mut command = agent();
        command
            .env("GWB_REPO", &self.repo)
            .arg("restore")
            .arg("--identity")
            .arg(identity)
            .arg("--target")
            .arg(target)
            .args(extra);
        command
    }

    fn archive(&self) -> PathBuf {
        self.repo.join(format!("archives/{}.tar.zst.age", self.id))
    }

    /// A restore that must fail: returns stderr, checks no marker and nothing in `root`
    /// beyond what was there.
    fn restore_fails(&self, identity: &Path) -> String {
        let target = self.root.join("target");
        let before = tree(&self.root, &|p| p.starts_with("target"));
        let err = run_err(&mut self.restore(&target, identity, &[]));
        assert!(
            !target.join(".ghostwire-backup-restore.json").exists(),
            "a failed restore left a marker"
        );
        assert!(
            !target.join(".ghostwire-backup-restore.tmp").exists(),
            "a failed restore left its staging directory behind"
        );
        assert_eq!(
            tree(&self.root, &|p| p.starts_with("target")),
            before,
            "a failed restore wrote outside its target"
        );
        err
    }
}

#[test]
fn wrong_identity_is_named_as_such() {
    let r = backed_up();
    let other = tempfile::tempdir().unwrap();
    let (wrong, _) = keygen(other.path());
    let err = r.restore_fails(&wrong);
    assert!(
        err.contains("none of the given identities can decrypt"),
        "{err}"
    );
}

#[test]
fn a_flipped_byte_anywhere_fails_authentication() {
    let r = backed_up();
    let original = std::fs::read(r.archive()).unwrap();
    // In the age header, early in the payload, in the middle, at the very end.
    for offset in [40, 400, original.len() / 2, original.len() - 1] {
        let mut damaged = original.clone();
        damaged[offset] ^= 0x01;
        std::fs::write(r.archive(), &damaged).unwrap();
        let err = r.restore_fails(&r.identity);
        assert!(
            err.contains("damaged")
                || err.contains("tampered")
                || err.contains("not an age file")
                || err.contains("cannot decrypt"),
            "offset {offset}: {err}"
        );
        let _ = std::fs::remove_dir_all(r.root.join("target"));
    }
}

#[test]
fn a_truncated_archive_is_refused() {
    let r = backed_up();
    let original = std::fs::read(r.archive()).unwrap();
    for keep in [original.len() - 1, original.len() - 20, original.len() / 3] {
        std::fs::write(r.archive(), &original[..keep]).unwrap();
        let err = r.restore_fails(&r.identity);
        assert!(
            err.contains("truncated") || err.contains("damaged"),
            "kept {keep}: {err}"
        );
        let _ = std::fs::remove_dir_all(r.root.join("target"));
    }
}

#[test]
fn an_archive_swapped_in_from_another_backup_is_caught_by_the_manifest_hash() {
    let r = backed_up();
    // A second, valid snapshot encrypted to the same key; its archive replaces the first's.
    let second = run_ok(&mut backup_command(
        &r.repo,
        &r.root.join("home"),
        &r.recipient,
        r.root.join("staging"),
    ));
    std::fs::copy(
        r.repo.join(format!("archives/{second}.tar.zst.age")),
        r.archive(),
    )
    .unwrap();
    let target = r.root.join("target");
    let err = run_err(&mut r.restore(&target, &r.identity, &["--snapshot", &r.id]));
    assert!(err.contains("does not match its manifest"), "{err}");
    assert!(!target.join(".ghostwire-backup-restore.json").exists());
    let quick =
        run_err(
            agent()
                .env("GWB_REPO", &r.repo)
                .args(["verify", "--quick", "--snapshot", &r.id]),
        );
    assert!(quick.contains("does not match its manifest"), "{quick}");
}

#[test]
fn a_snapshot_without_its_archive_or_manifest_is_reported() {
    let r = backed_up();
    std::fs::remove_file(r.archive()).unwrap();
    let err = r.restore_fails(&r.identity);
    assert!(err.contains("archive cannot be read"), "{err}");
    std::fs::remove_file(r.repo.join(format!("snapshots/{}.json", r.id))).unwrap();
    let err = r.restore_fails(&r.identity);
    assert!(err.contains("holds no snapshot"), "{err}");
    let err = run_err(&mut r.restore(
        &r.root.join("target"),
        &r.identity,
        &["--snapshot", "20990101T000000Z-00000000"],
    ));
    assert!(err.contains("no snapshot"), "{err}");
}

#[test]
fn a_non_empty_target_is_refused_and_if_empty_leaves_it_alone() {
    let r = backed_up();
    let target = r.root.join("target");
    std::fs::create_dir_all(target.join("lost+found")).unwrap();
    std::fs::write(target.join("precious.txt"), "user data").unwrap();
    let err = run_err(&mut r.restore(&target, &r.identity, &[]));
    assert!(
        err.contains("is not empty") && err.contains("--force"),
        "{err}"
    );
    run_ok(&mut r.restore(&target, &r.identity, &["--if-empty"]));
    assert_eq!(
        std::fs::read_to_string(target.join("precious.txt")).unwrap(),
        "user data"
    );
    assert!(!target.join(".ghostwire-backup-restore.json").exists());
    // lost+found alone does not count as data.
    let fresh = r.root.join("fresh");
    std::fs::create_dir_all(fresh.join("lost+found")).unwrap();
    run_ok(&mut r.restore(&fresh, &r.identity, &["--if-empty"]));
    assert!(fresh.join(".ghostwire-backup-restore.json").exists());
    // Run again as an init container would on every pod start: a no-op.
    let before = tree(&fresh, &|_| false);
    run_ok(&mut r.restore(&fresh, &r.identity, &["--if-empty"]));
    assert_eq!(tree(&fresh, &|_| false), before);
}

#[test]
fn force_moves_replaced_entries_aside_instead_of_deleting_them() {
    let r = backed_up();
    let target = r.root.join("target");
    std::fs::create_dir_all(target.join(".config")).unwrap();
    std::fs::write(target.join(".config/old.txt"), "old data").unwrap();
    run_ok(&mut r.restore(&target, &r.identity, &["--force"]));
    assert!(target.join(".config/Signal/config.json").exists());
    let aside: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".ghostwire-backup-replaced-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read_to_string(target.join(&aside[0]).join(".config/old.txt")).unwrap(),
        "old data"
    );
}

#[test]
fn an_interrupted_restore_is_discarded_and_redone() {
    let r = backed_up();
    let target = r.root.join("target");
    // What a restore killed mid-unpack leaves: a staging directory with part of the tree.
    std::fs::create_dir_all(target.join(".ghostwire-backup-restore.tmp/.config/Signal")).unwrap();
    std::fs::write(
        target.join(".ghostwire-backup-restore.tmp/.config/Signal/half"),
        "x",
    )
    .unwrap();
    run_ok(&mut r.restore(&target, &r.identity, &["--if-empty"]));
    assert!(target.join(".ghostwire-backup-restore.json").exists());
    assert!(!target.join(".ghostwire-backup-restore.tmp").exists());
    assert!(!target.join(".config/Signal/half").exists());
}

#[test]
fn a_malicious_archive_writes_nothing_outside_the_target() {
    let r = backed_up();
    // Replace the archive with a hostile one, encrypted to the right key, and fix up the
    // manifest so only the unpacker stands in the way.
    let outside = r.root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    link.set_uid(0);
    link.set_gid(0);
    link.set_mtime(0);
    tar.append_link(&mut link, "escape", &outside).unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_size(5);
    file.set_mode(0o644);
    file.set_uid(0);
    file.set_gid(0);
    file.set_mtime(0);
    tar.append_data(&mut file, "escape/pwned", &b"pwned"[..])
        .unwrap();
    let plain = zstd::encode_all(&tar.into_inner().unwrap()[..], 3).unwrap();
    let recipient: age::x25519::Recipient = r.recipient.parse().unwrap();
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .unwrap();
    let mut ciphertext = Vec::new();
    let mut writer = encryptor.wrap_output(&mut ciphertext).unwrap();
    writer.write_all(&plain).unwrap();
    writer.finish().unwrap();
    std::fs::write(r.archive(), &ciphertext).unwrap();
    let manifest_path = r.repo.join(format!("snapshots/{}.json", r.id));
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    // Without an index, restore takes every entry of the archive: only the unpacker stands
    // in the way. (With the index, entries it does not name are never written at all.)
    manifest.as_object_mut().unwrap().remove("index");
    manifest["archive"]["size"] = ciphertext.len().into();
    manifest["archive"]["sha256"] =
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&ciphertext)).into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let err = r.restore_fails(&r.identity);
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
    let err = run_err(
        agent()
            .env("GWB_REPO", "s3://bucket/prefix")
            .env("GWB_S3_ENDPOINT", format!("http://127.0.0.1:{port}"))
            .env("GWB_S3_PATH_STYLE", "true")
            .env("GWB_S3_REGION", "us-east-1")
            .env("GWB_S3_ATTEMPTS", "2")
            .env("AWS_ACCESS_KEY_ID", "k")
            .env("AWS_SECRET_ACCESS_KEY", "s")
            .arg("backup")
            .arg("--source")
            .arg(&home)
            .arg("--recipient")
            .arg(&recipient)
            .arg("--staging-dir")
            .arg(dir.path().join("staging")),
    );
    assert!(err.contains("is the S3 endpoint reachable"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn a_profile_with_only_an_encrypted_key_is_refused_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let profile = make_profile(
        &dir.path().join("home"),
        &["--messages", "20", "--attachments", "2"],
    );
    let config = profile.home.join(".config/Signal/config.json");
    std::fs::write(
        &config,
        r#"{"encryptedKey":"7631309a8b","safeStorageBackend":"gnome_libsecret"}"#,
    )
    .unwrap();
    let (_, recipient) = keygen(dir.path());
    let repo = dir.path().join("backups");
    let err = run_err(&mut backup_command(
        &repo,
        &profile.home,
        &recipient,
        dir.path().join("staging"),
    ));
    assert!(err.contains("--password-store=basic"), "{err}");
    assert!(
        !repo.join("snapshots").exists(),
        "a failed backup must not leave a snapshot"
    );
    // And with the key given explicitly, it works.
    let key_file = dir.path().join("db.key");
    std::fs::write(&key_file, &profile.key).unwrap();
    run_ok(
        backup_command(&repo, &profile.home, &recipient, dir.path().join("staging"))
            .arg("--db-key-file")
            .arg(&key_file),
    );
}

#[test]
fn a_wrong_database_key_fails_the_backup_without_showing_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let profile = make_profile(
        &dir.path().join("home"),
        &["--messages", "20", "--attachments", "2"],
    );
    let wrong = "0".repeat(64);
    std::fs::write(
        profile.home.join(".config/Signal/config.json"),
        format!("{{\"key\":\"{wrong}\"}}"),
    )
    .unwrap();
    let (_, recipient) = keygen(dir.path());
    let repo = dir.path().join("backups");
    let output = run(agent()
        .env("GWB_REPO", &repo)
        .env("GWB_LOG", "debug")
        .arg("backup")
        .arg("--source")
        .arg(&profile.home)
        .arg("--recipient")
        .arg(&recipient)
        .arg("--staging-dir")
        .arg(dir.path().join("staging")));
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("database key is wrong"), "{err}");
    assert!(
        !err.contains(&wrong) && !err.contains(&profile.key),
        "the key leaked into the output"
    );
    assert!(!repo.join("snapshots").exists());
}

#[test]
fn the_init_container_on_a_first_install_starts_with_an_empty_volume() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, _) = keygen(dir.path());
    let target = dir.path().join("volume");
    std::fs::create_dir_all(target.join("lost+found")).unwrap();
    let restore = |extra: &[&str]| {
        let mut command = agent();
        command
            .env("GWB_REPO", dir.path().join("empty-repo"))
            .arg("restore")
            .arg("--identity")
            .arg(&identity)
            .arg("--target")
            .arg(&target)
            .args(extra);
        command
    };
    run_ok(&mut restore(&["--if-empty"]));
    assert!(!target.join(".ghostwire-backup-restore.json").exists());
    // Asked for explicitly, a restore from an empty repository is an error.
    let err = run_err(&mut restore(&[]));
    assert!(err.contains("holds no snapshot"), "{err}");
}
