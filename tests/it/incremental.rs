//! Incremental snapshots, the catalog, retention and prune, end to end with the real
//! binary on a profile made by Signal's driver.

use std::path::{Path, PathBuf};

use ghostwire_backup::archive::DELETED_LIST;
use ghostwire_backup::catalog;
use serde_json::Value;

use crate::common::*;

/// A profile with many attachments, so reuse shows.
fn fixture() -> Fixture {
    Fixture::new(&["--messages", "400", "--attachments", "60"])
}

/// Backs the profile up to the local repository: the new snapshot's manifest.
fn backup(fx: &Fixture, extra: &[&str]) -> Value {
    fx.manifest(&fx.backup().args(extra).ok())
}

/// Restores snapshot `id` from the local repository into `target`.
fn restore(fx: &Fixture, id: &str, target: &Path) {
    fx.restore(target).args(["--snapshot", id]).ok();
}

/// Signal's attachment files in the home, sorted.
fn attachments(fx: &Fixture) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let root = fx.home().join(".config/Signal/attachments.noindex");
    for dir in std::fs::read_dir(&root).unwrap() {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            found.push(file.unwrap().path());
        }
    }
    found.sort();
    found
}

/// Changes the home the way a day of Signal use does: a new attachment, one deleted, one
/// rewritten (same name, new content), and new rows in the database.
fn use_signal(fx: &Fixture, round: u8) {
    let attachments = attachments(fx);
    std::fs::remove_file(&attachments[0]).unwrap();
    std::fs::write(&attachments[1], vec![round; 5000]).unwrap();
    let name = format!("{round:02x}{}", "e".repeat(62));
    let dir = fx
        .home()
        .join(format!(".config/Signal/attachments.noindex/{round:02x}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), vec![round; 70_000]).unwrap();
    let writer = Writer::start(
        &fx.profile.db(),
        &fx.profile.key,
        &fx.root.join(format!("ids-{round}.txt")),
    );
    writer.wait_for(20);
    writer.stop();
}

fn kept_tree(path: &Path) -> std::collections::BTreeMap<String, String> {
    tree(path, &not_backed_up)
}

#[test]
fn incrementals_upload_only_what_changed_and_every_snapshot_restores_exactly() {
    let fx = fixture();
    let first = backup(&fx, &[]);
    assert!(first["parent"].is_null(), "the first snapshot is full");
    let first_tree = kept_tree(fx.home());

    use_signal(&fx, 1);
    let second = backup(&fx, &[]);
    assert_eq!(second["parent"], first["id"]);
    assert_eq!(second["content"]["deleted"], 1);
    let reused = second["content"]["reused_files"].as_u64().unwrap();
    assert!(
        reused > 50,
        "unchanged attachments were archived again: {second}"
    );
    // What changed (the new and rewritten attachments, those the writer added) plus the
    // databases, nothing else.
    let second_tree = kept_tree(fx.home());
    let changed = second_tree
        .iter()
        .filter(|(path, what)| what.starts_with("file") && first_tree.get(*path) != Some(*what))
        .count() as u64;
    let databases = second["content"]["sqlite_snapshots"].as_u64().unwrap();
    assert!(changed >= 2);
    assert_eq!(
        second["content"]["files"].as_u64().unwrap(),
        databases + changed,
        "{second}"
    );
    assert!(
        second["archive"]["size"].as_u64().unwrap()
            < first["archive"]["size"].as_u64().unwrap() / 2
    );

    // Nothing changed but time: only the databases go up again.
    let third = backup(&fx, &[]);
    assert_eq!(third["parent"], second["id"]);
    assert_eq!(
        third["content"]["files"],
        third["content"]["sqlite_snapshots"]
    );
    assert_eq!(third["chain_length"], 2);

    for (snapshot, expected) in [
        (&first, &first_tree),
        (&second, &second_tree),
        (&third, &second_tree),
    ] {
        let id = snapshot["id"].as_str().unwrap();
        let target = fx.root.join(format!("restore-{id}"));
        restore(&fx, id, &target);
        assert_same_tree(&kept_tree(&target), expected);
        let db = check_db(
            &target.join(".config/Signal/sql/db.sqlite"),
            &fx.profile.key,
            None,
        );
        assert_eq!(db["integrity"], "ok");
        fx.verify_with(fx.agent(), id).ok();
        fx.agent()
            .args(["verify", "--quick", "--snapshot", id])
            .ok();
    }
    // The second incremental's restore holds every row the writer committed.
    let target = fx
        .root
        .join(format!("restore-{}", third["id"].as_str().unwrap()));
    let db = check_db(
        &target.join(".config/Signal/sql/db.sqlite"),
        &fx.profile.key,
        Some(&fx.root.join("ids-1.txt")),
    );
    assert_eq!(db["missingCount"], 0);
}

#[test]
fn a_chain_restores_with_stock_tools_full_then_each_incremental_then_its_deletions() {
    let fx = fixture();
    let first = backup(&fx, &[]);
    use_signal(&fx, 1);
    backup(&fx, &[]);
    use_signal(&fx, 2);
    let last = backup(&fx, &[]);
    let target = fx.root.join("by-hand");
    std::fs::create_dir(&target).unwrap();
    let mut chain: Vec<String> = last["depends_on"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    chain.sort();
    assert_eq!(chain.first().map(String::as_str), first["id"].as_str());
    // Each deletion list goes through docs/format.md's own delete_listed.
    let delete_listed = crate::security::documented_delete_listed();
    for id in chain {
        stock_tools(
            &format!(
                "{delete_listed}\ncat \"$2\"* | age -d -i \"$1\" | zstd -d | tar -x -C \"$3\"; \
                 delete_listed \"$3\""
            ),
            &[&fx.identity, &fx.archive(&id), &target],
        );
    }
    assert!(!target.join(DELETED_LIST).exists());
    assert_same_tree(&kept_tree(&target), &kept_tree(fx.home()));
    // The last incremental archived Signal's database as a page delta: stock tools give
    // its last full copy, without the newest messages (docs/format.md, "Which snapshots
    // need the agent"), and the delta lands as a file, which the documented loop reports.
    assert!(
        last["signal_db"]["delta_pages"].as_u64() > Some(0),
        "{last}"
    );
    assert!(target.join(".ghostwire-backup-db-delta").is_file());
    let newest = fx.root.join("ids-2.txt");
    let db = check_db(
        &target.join(".config/Signal/sql/db.sqlite"),
        &fx.profile.key,
        Some(&newest),
    );
    assert_eq!(db["integrity"], "ok", "{db}");
    let written = std::fs::read_to_string(&newest).unwrap().lines().count();
    assert_eq!(db["missingCount"].as_u64(), Some(written as u64), "{db}");
}

#[test]
fn chains_are_bounded_and_a_lost_catalog_means_a_full_snapshot() {
    let fx = fixture();
    backup(&fx, &["--full-every", "1"]);
    let second = backup(&fx, &["--full-every", "1"]);
    assert!(!second["parent"].is_null());
    let third = backup(&fx, &["--full-every", "1"]);
    assert!(
        third["parent"].is_null(),
        "after 1 incremental the next one must be full"
    );
    std::fs::remove_file(fx.home().join(catalog::DEFAULT_NAME)).unwrap();
    let fourth = backup(&fx, &[]);
    assert!(
        fourth["parent"].is_null(),
        "without a catalog the backup must be full"
    );
}

#[test]
fn a_restored_volume_continues_the_chain_without_uploading_its_files_again() {
    let fx = fixture();
    let first = backup(&fx, &[]);
    let volume = fx.root.join("green");
    restore(&fx, first["id"].as_str().unwrap(), &volume);
    assert!(
        volume.join(catalog::DEFAULT_NAME).exists(),
        "restore did not seed the catalog"
    );
    let next = fx.manifest(&fx.backup_of(fx.agent(), &volume).ok());
    assert_eq!(next["parent"], first["id"]);
    assert_eq!(
        next["content"]["files"], next["content"]["sqlite_snapshots"],
        "{next}"
    );
}

#[test]
fn prune_forgets_by_policy_but_keeps_what_restores_need() {
    let fx = fixture();
    let full = backup(&fx, &["--full-every", "0"]);
    let final_one = backup(&fx, &["--full-every", "0", "--final"]);
    // Incrementals on the final one; nothing changes before the first of them, so the
    // newest restores nothing from it.
    let unchanged = backup(&fx, &[]);
    use_signal(&fx, 1);
    let newest = backup(&fx, &[]);
    assert_eq!(newest["parent"], unchanged["id"]);
    let needs: Vec<&str> = newest["depends_on"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        needs,
        [
            final_one["id"].as_str().unwrap(),
            newest["id"].as_str().unwrap()
        ]
    );

    let dry = fx
        .agent()
        .args(["prune", "--keep-last", "1", "--dry-run"])
        .ok();
    assert!(dry.contains("would forget 2 of 4"), "{dry}");
    assert_eq!(
        std::fs::read_dir(fx.repo.join(Object::prefix_of(Object::Manifest)))
            .unwrap()
            .count(),
        8,
        "a dry run deleted something (4 manifests and their signatures)"
    );

    let report = fx.agent().args(["prune", "--keep-last", "1"]).ok();
    assert!(report.contains("forgot 2 snapshots"), "{report}");
    let ids = snapshot_ids(&mut fx.agent());
    // The final one is kept twice over: the newest final, and needed by the newest.
    assert_eq!(
        ids,
        [
            final_one["id"].as_str().unwrap(),
            newest["id"].as_str().unwrap()
        ]
    );
    for gone in [&full, &unchanged] {
        assert!(
            !fx.repo
                .join(gone["archive"]["key"].as_str().unwrap())
                .exists(),
            "a forgotten archive is still there"
        );
    }
    for id in ids {
        fx.verify_with(fx.agent(), &id).ok();
    }
    // The chain goes on from the catalog's latest, which prune kept.
    assert_eq!(backup(&fx, &[])["parent"], newest["id"]);
    fx.agent().arg("prune").fails_with(&["no --keep-* rule"]);
}

#[test]
fn object_lock_retention_is_set_on_upload_and_respected_by_prune() {
    let fx = fixture();
    let server = S3Server::start();
    server.create_bucket_with_object_lock("locked");
    let repo = "s3://locked/ghostwire";
    for _ in 0..2 {
        fx.backup_with(server.agent(repo))
            .args(["--object-lock-days", "1", "--full-every", "0"])
            .ok();
    }
    let report = server.agent(repo).args(["prune", "--keep-last", "1"]).ok();
    assert!(report.contains("under Object Lock retention"), "{report}");
    assert_eq!(
        snapshot_ids(&mut server.agent(repo)).len(),
        2,
        "a retained snapshot must stay whole"
    );
}

#[test]
fn a_damaged_manifest_is_skipped_and_breaks_no_later_backup() {
    let fx = fixture();
    let full = backup(&fx, &[]);
    let incremental = backup(&fx, &[]);
    assert_eq!(incremental["parent"], full["id"]);
    // Bit rot in the full snapshot's manifest: its whole chain is unrestorable now.
    let damaged = fx.manifest_path(full["id"].as_str().unwrap());
    std::fs::write(&damaged, b"{\"format\": 1, \"id\": ").unwrap();
    let listed = fx.agent().args(["snapshots", "--json"]).run();
    assert!(
        listed.status.success(),
        "one damaged manifest must not make the repository unusable:\n{listed}"
    );
    assert!(listed.stderr.contains("not trustworthy"), "{listed}");
    // The next backup notices the broken chain and starts a new full one.
    let next = backup(&fx, &[]);
    assert!(
        next["parent"].is_null(),
        "a backup extended a broken chain: {next}"
    );
    let target = fx.root.join("after");
    restore(&fx, "latest", &target);
    assert_same_tree(&kept_tree(&target), &kept_tree(fx.home()));
}
