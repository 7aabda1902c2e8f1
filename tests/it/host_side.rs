//! The host side of a backup against the desktop user, who owns the home while the agent
//! may run as root: a Signal database planted as a link to a database outside the home,
//! a sparse file made to cost every backup and restore its full length, and restored
//! files with long runs of zeros, which must not take more disk than their data. (Files
//! and directories swapped for links between the walk and the read are tested in
//! src/reuse.rs, where the swap can be made exactly between the two.)

use std::os::unix::fs::{MetadataExt, symlink};
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn a_signal_database_planted_as_a_symlink_is_not_followed() {
    let fx = Fixture::new(&["--messages", "20"]);
    // Another database, which the agent could read and the user could not, outside the
    // home; Signal's own database path now points at it.
    let outside = fx.root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let db = fx.profile.db();
    for suffix in ["", "-wal", "-shm"] {
        let from = db.with_file_name(format!("db.sqlite{suffix}"));
        if from.exists() {
            std::fs::rename(&from, outside.join(format!("db.sqlite{suffix}"))).unwrap();
        }
    }
    symlink(outside.join("db.sqlite"), &db).unwrap();

    let backup = fx.backup().run();
    assert!(backup.status.success(), "{backup}");
    assert!(
        backup.stderr.contains("symlink") && backup.stderr.contains("not following"),
        "the refused link was not reported:\n{backup}"
    );
    let id = backup.stdout_trimmed();
    let manifest = fx.manifest(id);
    assert!(
        manifest["signal_db"].is_null(),
        "the database behind the link was snapshotted: {manifest}"
    );

    // A restore of `latest` refuses a snapshot without a database; by its id it restores.
    let target = fx.root.join("target");
    fx.restore(&target).args(["--snapshot", id]).ok();
    let restored = target.join(".config/Signal/sql/db.sqlite");
    let kind = std::fs::symlink_metadata(&restored).unwrap().file_type();
    assert!(
        kind.is_symlink(),
        "restored as {kind:?}, not as the inert link it was"
    );
}

#[test]
fn a_sparse_gigabyte_is_skipped_with_a_warning_and_the_backup_succeeds_quickly() {
    let fx = Fixture::new(&["--messages", "20"]);
    let sparse = fx.home().join(".config/Signal/huge.bin");
    // One GiB long, nothing on disk: it costs its owner nothing.
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    assert!(std::fs::metadata(&sparse).unwrap().blocks() < 8);

    let started = Instant::now();
    let backup = fx.backup().run();
    let took = started.elapsed();
    assert!(backup.status.success(), "{backup}");
    assert!(
        backup.stderr.contains("huge.bin") && backup.stderr.contains("sparse"),
        "the sparse file was not named in a warning:\n{backup}"
    );
    assert!(
        backup.stderr.contains("1.00 GiB"),
        "the warning must give the sizes:\n{backup}"
    );
    let manifest = fx.manifest(backup.stdout_trimmed());
    assert_eq!(manifest["content"]["sparse_skipped"], 1, "{manifest}");
    assert!(
        manifest["content"]["bytes"].as_u64().unwrap() < 1 << 28,
        "the gigabyte was read: {manifest}"
    );
    // Reading and compressing the gigabyte took longer than this on this machine; the
    // bound is loose on purpose (a shared 2-core machine), the manifest is the proof.
    assert!(took < Duration::from_secs(60), "the backup took {took:?}");

    let target = fx.root.join("target");
    fx.restore(&target).ok();
    assert!(!target.join(".config/Signal/huge.bin").exists());
    assert!(target.join(".config/Signal/config.json").exists());
}

#[test]
fn a_restored_file_with_long_runs_of_zeros_is_identical_and_takes_less_disk() {
    let fx = Fixture::new(&["--messages", "20"]);
    // Written out in full (not sparse, so it is backed up): data, 16 MiB of zeros, data
    // off a block boundary, 8 MiB of zeros at the end.
    let mut content = b"head".repeat(1000);
    content.resize(content.len() + (16 << 20), 0);
    content.extend_from_slice(&b"middle".repeat(20_000));
    content.resize(content.len() + (8 << 20), 0);
    let file = fx.home().join(".config/Signal/zeros.bin");
    std::fs::write(&file, &content).unwrap();
    let written = std::fs::metadata(&file).unwrap();
    assert!(
        written.blocks() * 512 >= written.len(),
        "the test file should be written out in full"
    );

    fx.backup().ok();
    let target = fx.root.join("target");
    fx.restore(&target).ok();
    let restored = target.join(".config/Signal/zeros.bin");
    assert!(
        std::fs::read(&restored).unwrap() == content,
        "the restored content differs"
    );
    let metadata = std::fs::metadata(&restored).unwrap();
    let allocated = metadata.blocks() * 512;
    assert!(
        allocated < metadata.len() / 4,
        "{allocated} bytes allocated for {} bytes, of which 24 MiB are zeros",
        metadata.len()
    );
}
