//! What the desktop user controls and the agent must not trust (issue 10, host side): the
//! desktop user owns the home and the volume while the agent may run as root, and another
//! uid may share the temp dir. Each test plays one such user against the real binary.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

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
    // a real Signal profile; the backup archives the link as a link.
    let elsewhere = fx.root.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::rename(fx.home().join(".config"), elsewhere.join(".config")).unwrap();
    symlink(elsewhere.join(".config"), fx.home().join(".config")).unwrap();
    let (manifest, _) = backup(&fx);
    assert!(!manifest["signal_db"].is_null(), "{manifest}");
    let before = bytes_and_times(&elsewhere);

    let target = fx.root.join("restored");
    let id = manifest["id"].as_str().unwrap();
    let err = fx.assert_restore_fails(fx.restore(&target).args(["--snapshot", id]), &target);
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
