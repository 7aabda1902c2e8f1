//! A backup after Signal wrote a few messages archives the database pages that changed,
//! not the whole database; a restore rebuilds the database from the chain's full copy and
//! its deltas, with every committed row, and the restored volume continues the chain.

use serde_json::Value;

use crate::common::*;

fn db_bytes(manifest: &Value) -> u64 {
    manifest["signal_db"]["bytes"].as_u64().unwrap()
}

fn delta_pages(manifest: &Value) -> Option<u64> {
    manifest["signal_db"]["delta_pages"].as_u64()
}

#[test]
fn a_few_hundred_new_messages_upload_a_small_share_of_a_300_mib_database() {
    let fx = Fixture::new(&["--messages", "330000", "--attachments", "5"]);
    let home = fx.home().to_path_buf();
    let full = fx.quiet_backup_of(&home);
    let bytes = db_bytes(&full);
    assert!(bytes >= 300 << 20, "the database is {bytes} bytes: {full}");
    assert_eq!(
        full["signal_db"]["check"], "ok",
        "a full copy is checked: {full}"
    );

    let ids = fx.root.join("ids.txt");
    commit_messages(&home, &fx.profile.key, &ids, 300);
    let first = fx.quiet_backup_of(&home);
    let written = commit_messages(&home, &fx.profile.key, &ids, 300);
    let second = fx.quiet_backup_of(&home);
    for delta in [&first, &second] {
        eprintln!(
            "{} new messages: {} pages, {} bytes uploaded for a database of {bytes} ({:.2}%)",
            300,
            delta_pages(delta).unwrap_or(0),
            uploaded(delta),
            100.0 * uploaded(delta) as f64 / bytes as f64
        );
        assert!(delta_pages(delta).is_some(), "not a delta: {delta}");
        // Taken as the final snapshot is: only the changed pages written, no whole-database
        // check (that is the full copy's, and the scheduled verify's), and it says so.
        assert_eq!(delta["signal_db"]["check"], "not checked", "{delta}");
        assert!(
            uploaded(delta) * 20 <= bytes,
            "300 new messages uploaded {} bytes, over 5% of the {bytes}-byte database",
            uploaded(delta)
        );
    }
    assert_eq!(second["parent"], first["id"]);

    // The newest snapshot rebuilds the database from the full copy and both deltas.
    let (_, db) = fx.restore_and_check(&second, Some(&ids));
    assert_eq!(db["messages"].as_u64(), Some(fx.profile.messages + written));
}

#[test]
fn a_chain_of_deltas_restores_every_snapshot_and_a_restored_volume_continues_it() {
    let fx = Fixture::new(&["--messages", "3000"]);
    let home = fx.home().to_path_buf();
    // The desktop user plants what looks like our delta entry: backups skip our names.
    std::fs::write(home.join(".ghostwire-backup-db-delta"), b"GWBDELT1 planted").unwrap();
    let full = fx.quiet_backup_of(&home);
    assert_eq!(delta_pages(&full), None, "{full}");

    let ids = fx.root.join("ids.txt");
    let first_ids = fx.root.join("first-ids.txt");
    let mut chain = Vec::new();
    let mut written = Vec::new();
    for round in 0..3 {
        written.push(commit_messages(&home, &fx.profile.key, &ids, 20));
        if round == 0 {
            std::fs::copy(&ids, &first_ids).unwrap();
        }
        let snapshot = fx.quiet_backup_of(&home);
        assert!(delta_pages(&snapshot).is_some(), "{snapshot}");
        assert_eq!(
            snapshot["format"], 4,
            "raw page deltas in an archive in parts are format 4: {snapshot}"
        );
        assert!(uploaded(&snapshot) < db_bytes(&full) / 4, "{snapshot}");
        let delta_ids: Vec<&Value> = snapshot["depends_on"].as_array().unwrap().iter().collect();
        assert!(
            delta_ids.contains(&&full["id"])
                && chain.iter().all(|s: &Value| delta_ids.contains(&&s["id"])),
            "a delta snapshot keeps the full copy and every delta before it: {snapshot}"
        );
        chain.push(snapshot);
    }
    // Each snapshot of the chain restores its own version: the older ones lack the newer
    // rows, which the newest has.
    let (_, oldest) = fx.restore_and_check(&chain[0], Some(&first_ids));
    let (restored, newest) = fx.restore_and_check(&chain[2], Some(&ids));
    assert_eq!(
        oldest["messages"].as_u64(),
        Some(fx.profile.messages + written[0])
    );
    assert_eq!(
        newest["messages"].as_u64(),
        Some(fx.profile.messages + written[2])
    );
    fx.verify_with(fx.agent(), chain[2]["id"].as_str().unwrap())
        .ok();

    // The restored volume (green) continues the chain: its catalog knows the pages.
    let written = commit_messages(&restored, &fx.profile.key, &ids, 20);
    let continued = fx.quiet_backup_of(&restored);
    assert_eq!(continued["parent"], chain[2]["id"], "{continued}");
    assert!(delta_pages(&continued).is_some(), "{continued}");
    let (_, db) = fx.restore_and_check(&continued, Some(&ids));
    assert_eq!(db["messages"].as_u64(), Some(fx.profile.messages + written));
}

#[test]
fn a_page_list_planted_in_the_catalog_makes_a_full_copy_not_a_wrong_delta() {
    let fx = Fixture::new(&["--messages", "3000"]);
    let home = fx.home().to_path_buf();
    fx.quiet_backup_of(&home);
    let ids = fx.root.join("ids.txt");
    commit_messages(&home, &fx.profile.key, &ids, 20);

    // The desktop user rewrites the stored page hashes so that the pages Signal just
    // changed look unchanged: the delta would leave them out.
    let catalog =
        rusqlite::Connection::open(home.join(".ghostwire-backup-catalog.sqlite")).unwrap();
    let changed = catalog
        .execute("UPDATE page_lists SET list = zeroblob(length(list))", [])
        .unwrap();
    assert_eq!(changed, 1, "the catalog keeps one page list");
    drop(catalog);
    let next = fx.quiet_backup_of(&home);
    assert_eq!(
        delta_pages(&next),
        None,
        "a delta on a planted list: {next}"
    );
    fx.restore_and_check(&next, Some(&ids));
}

/// The final snapshot is taken while the desktop is down: it runs no whole-database check
/// on its copy, and says so. A restore of it still passes the gate (every page read back
/// with the restored key and equal to the signed digest), and `verify` runs the full check.
#[test]
fn a_final_snapshot_skips_the_whole_database_checks_and_still_passes_the_gate() {
    let fx = Fixture::new(&["--messages", "3000"]);
    let home = fx.home().to_path_buf();
    let full = fx.quiet_backup_of(&home);
    assert_eq!(full["signal_db"]["check"], "ok", "{full}");
    assert_eq!(
        full["signal_db"]["checks"],
        serde_json::json!(["cipher_integrity_check"]),
        "{full}"
    );

    let ids = fx.root.join("ids.txt");
    commit_messages(&home, &fx.profile.key, &ids, 20);
    wait_for_quiet_database(&home);
    let taken = fx.backup().arg("--final").run();
    assert!(taken.status.success(), "{taken}");
    assert!(
        taken.stderr.contains("only the pages that changed"),
        "the final snapshot should write only the changed pages, not a whole image: {taken}"
    );
    let id = taken.stdout.trim().to_string();
    let last = fx.manifest(&id);
    assert_eq!(last["final"], true, "{last}");
    assert_eq!(last["signal_db"]["check"], "not checked", "{last}");
    assert_eq!(last["signal_db"]["checks"], serde_json::json!([]), "{last}");
    assert!(delta_pages(&last).is_some(), "{last}");

    let target = fx.root.join("green");
    let restored = fx.restore(&target).args(["--snapshot", &id]).run();
    assert!(restored.status.success(), "{restored}");
    assert!(
        restored
            .stderr
            .contains("equal to the snapshot's signed digest")
            && !restored.stderr.contains("integrity_check ok"),
        "the gate should rest on the read-back pages, not a full integrity_check: {restored}"
    );
    let db = check_db(
        &target.join(".config/Signal/sql/db.sqlite"),
        &fx.profile.key,
        Some(&ids),
    );
    assert_eq!(db["integrity"], "ok", "{db}");
    assert_eq!(db["missingCount"], 0, "{db}");
    fx.verify_with(fx.agent(), &id).ok();
}

/// The raw image of Signal's database (its pages as stored, still encrypted; format 3),
/// taken again and again while Signal's driver commits and checkpoints (TRUNCATE, as
/// Signal does, here every 20 ms so that the WAL restarts during the reads): each image
/// holds every message committed before it began, opens with Signal's key, and passes
/// `cipher_integrity_check` and `quick_check`.
#[test]
fn a_raw_image_taken_while_signal_writes_holds_every_committed_row() {
    let fx = Fixture::new(&["--messages", "20000"]);
    let db = fx.profile.db();
    let key = ghostwire_backup::profile::DbKey::from_hex(&fx.profile.key).unwrap();
    let ids = fx.root.join("ids.txt");
    let writer = Writer::start_with(&db, &fx.profile.key, &ids, &["--checkpoint-ms", "20"]);
    let mut committed_before = 0;
    for round in 0..6 {
        writer.wait_for(committed_before + 30);
        let before = fx.root.join(format!("ids-{round}.txt"));
        std::fs::copy(&ids, &before).unwrap();
        committed_before = std::fs::read_to_string(&before).unwrap().lines().count();
        let image = fx.root.join(format!("image-{round}.sqlite"));
        let list = ghostwire_backup::wal::raw_image(
            &db,
            &std::fs::metadata(&db).unwrap(),
            &image,
            Some(&key),
            std::time::Duration::from_secs(5),
            &ghostwire_backup::cancel::Cancel::new(),
        )
        .unwrap();
        assert_eq!(list.bytes(), std::fs::metadata(&image).unwrap().len());
        let check =
            ghostwire_backup::sqlite::check_copy(&image, Some(&key), &Default::default()).unwrap();
        assert!(check.is_ok(), "round {round}: {check:?}");
        let found = check_db(&image, &fx.profile.key, Some(&before));
        assert_eq!(found["integrity"], "ok", "round {round}: {found}");
        assert_eq!(found["missingCount"], 0, "round {round}: {found}");
        assert!(
            found["messages"].as_u64().unwrap() >= fx.profile.messages + committed_before as u64,
            "round {round}: {found}"
        );
    }
    let report = writer.stop();
    eprintln!("writer: {report}");
}

/// A repository an older agent wrote (tests/fixtures/format2/make.sh): a format-1 full
/// snapshot and a format-2 snapshot with a decrypted page delta. Both still restore with
/// every committed row and verify, and a backup of the restored volume does not continue
/// the decrypted chain: it starts a raw one (format 3, a full copy), which restores too.
#[test]
fn format_1_and_2_snapshots_still_restore_and_verify_and_a_backup_starts_a_raw_chain() {
    let fixture = repo_root().join("tests/fixtures/format2");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(fixture.join("repo"))
        .arg(&repo)
        .status()
        .unwrap();
    assert!(copied.success());
    let facts: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("facts.json")).unwrap())
            .unwrap();
    let key = facts["key"].as_str().unwrap();
    let identity = fixture.join("identity.txt");
    let agent = || {
        let mut agent = agent_for(&repo);
        agent
            .env("GWB_VERIFY_KEY", facts["verify_key"].as_str().unwrap())
            .env("GWB_SIGNING_KEY_FILE", fixture.join("signing.key"));
        agent
    };
    let snapshots = snapshot_ids(&mut agent());
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    let newest_ids = fixture.join("ids.txt");
    let mut restored = std::path::PathBuf::new();
    for (n, (format, ids)) in [(1, None), (2, Some(newest_ids.as_path()))]
        .into_iter()
        .enumerate()
    {
        let id = &snapshots[n];
        let manifest: Value = serde_json::from_slice(
            &std::fs::read(repo.join(Object::Manifest(id.to_string()).key())).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest["format"], format, "{manifest}");
        restored = dir.path().join(format!("restored-{format}"));
        restore_command(agent(), &identity, &restored)
            .args(["--snapshot", id])
            .ok();
        let db = check_db(&restored.join(".config/Signal/sql/db.sqlite"), key, ids);
        assert_eq!(db["integrity"], "ok", "{db}");
        assert_eq!(db["missingCount"], 0, "{db}");
        let messages = if format == 1 {
            3000
        } else {
            facts["messages"].as_u64().unwrap()
        };
        assert_eq!(db["messages"].as_u64(), Some(messages), "{db}");
        let mut verify = agent();
        verify
            .args(["verify", "--snapshot", id])
            .arg("--identity")
            .arg(&identity);
        verify.ok();
    }

    // The restored volume's next backup: a raw full copy on the format-2 parent.
    let recipient = std::fs::read_to_string(&identity)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .unwrap();
    wait_for_quiet_database(&restored);
    // The fixture ages: keep its chain open whatever the date.
    let id = backup_command(agent(), &restored, &recipient, &dir.path().join("staging"))
        .args(["--full-max-age", "36500d"])
        .ok();
    let next: Value = serde_json::from_slice(
        &std::fs::read(repo.join(Object::Manifest(id.to_string()).key())).unwrap(),
    )
    .unwrap();
    assert_eq!(next["format"], 4, "{next}");
    assert_eq!(next["parent"], snapshots[1].as_str(), "{next}");
    assert_eq!(
        delta_pages(&next),
        None,
        "a raw chain starts with a full copy: {next}"
    );
    let again = dir.path().join("restored-3");
    restore_command(agent(), &identity, &again)
        .args(["--snapshot", &id])
        .ok();
    let db = check_db(
        &again.join(".config/Signal/sql/db.sqlite"),
        key,
        Some(&newest_ids),
    );
    assert_eq!(db["missingCount"], 0, "{db}");
    assert_eq!(db["messages"].as_u64(), facts["messages"].as_u64(), "{db}");
}

/// docs/format.md's few lines of Python rebuild a raw delta chain with stock tools: each
/// archive of the chain through `age -d | zstd -d | tar -x`, each delta set aside, then the
/// recipe writes their pages at their offsets, skipping a delta that does not fit. The
/// result holds every committed row.
#[test]
fn the_documented_python_recipe_rebuilds_a_raw_delta_chain() {
    let fx = Fixture::new(&["--messages", "3000"]);
    let home = fx.home().to_path_buf();
    fx.quiet_backup_of(&home);
    let ids = fx.root.join("ids.txt");
    commit_messages(&home, &fx.profile.key, &ids, 20);
    fx.quiet_backup_of(&home);
    commit_messages(&home, &fx.profile.key, &ids, 20);
    let last = fx.quiet_backup_of(&home);
    assert!(delta_pages(&last).is_some(), "{last}");

    let target = fx.root.join("stock");
    let deltas = fx.root.join("deltas");
    std::fs::create_dir_all(&deltas).unwrap();
    let mut delta_files = Vec::new();
    for id in last["depends_on"].as_array().unwrap() {
        let id = id.as_str().unwrap();
        stock_tools(
            "mkdir -p \"$3\"; cat \"$2\"* | age -d -i \"$1\" | zstd -d | tar -x -C \"$3\"",
            &[&fx.identity, &fx.archive(id), &target],
        );
        let delta = target.join(".ghostwire-backup-db-delta");
        if delta.exists() {
            let aside = deltas.join(id);
            std::fs::rename(&delta, &aside).unwrap();
            delta_files.push(aside);
        }
    }
    assert_eq!(delta_files.len(), 2, "{last}");
    let doc = std::fs::read_to_string(repo_root().join("docs/format.md")).unwrap();
    let recipe = doc
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split_once("\n```"))
        .map(|(block, _)| block)
        .expect("docs/format.md has the raw-delta recipe in a ```python block");
    let script = fx.root.join("apply.py");
    std::fs::write(&script, recipe).unwrap();
    let db = target.join(".config/Signal/sql/db.sqlite");
    // The first delta twice: the second time it fits no more, and is skipped.
    let applied = TestCommand::new("python3")
        .arg(&script)
        .arg(&db)
        .arg(&delta_files[0])
        .args(&delta_files)
        .run();
    assert!(applied.status.success(), "{applied}");
    assert!(
        applied.stderr.contains("made for an older copy"),
        "{applied}"
    );
    let found = check_db(&db, &fx.profile.key, Some(&ids));
    assert_eq!(found["integrity"], "ok", "{found}");
    assert_eq!(found["missingCount"], 0, "{found}");
}
