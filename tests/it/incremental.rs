//! Incremental snapshots, the catalog, retention and prune, end to end with the real
//! binary on a profile made by Signal's driver.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    profile: Profile,
    repo: PathBuf,
    identity: PathBuf,
    recipient: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let profile = make_profile(
        &root.join("home"),
        &["--messages", "400", "--attachments", "60"],
    );
    let (identity, recipient) = keygen(&root);
    Setup {
        _dir: dir,
        repo: root.join("backups"),
        root,
        profile,
        identity,
        recipient,
    }
}

impl Setup {
    fn backup(&self, extra: &[&str]) -> Value {
        let id = run_ok(
            backup_command(
                &self.repo,
                &self.profile.home,
                &self.recipient,
                self.root.join("staging"),
            )
            .args(extra),
        );
        self.manifest(&id)
    }

    fn manifest(&self, id: &str) -> Value {
        serde_json::from_slice(
            &std::fs::read(self.repo.join(format!("snapshots/{id}.json"))).unwrap(),
        )
        .unwrap()
    }

    fn restore(&self, id: &str, target: &Path) {
        run_ok(
            agent()
                .env("GWB_REPO", &self.repo)
                .args(["restore", "--snapshot", id])
                .arg("--identity")
                .arg(&self.identity)
                .arg("--target")
                .arg(target),
        );
    }

    fn attachments(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let root = self.profile.home.join(".config/Signal/attachments.noindex");
        for dir in std::fs::read_dir(&root).unwrap() {
            for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
                found.push(file.unwrap().path());
            }
        }
        found.sort();
        found
    }

    /// Changes the home the way a day of Signal use does: a new attachment, one deleted,
    /// one rewritten (same name, new content), and new rows in the database.
    fn use_signal(&self, round: u8) {
        let attachments = self.attachments();
        std::fs::remove_file(&attachments[0]).unwrap();
        std::fs::write(&attachments[1], vec![round; 5000]).unwrap();
        let name = format!("{round:02x}{}", "e".repeat(62));
        let dir = self
            .profile
            .home
            .join(format!(".config/Signal/attachments.noindex/{round:02x}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), vec![round; 70_000]).unwrap();
        let writer = Writer::start(
            &self.profile.db(),
            &self.profile.key,
            &self.root.join(format!("ids-{round}.txt")),
        );
        while writer.committed() < 20 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        writer.stop();
    }
}

fn kept_tree(path: &Path) -> std::collections::BTreeMap<String, String> {
    tree(path, &not_backed_up)
}

#[test]
fn incrementals_upload_only_what_changed_and_every_snapshot_restores_exactly() {
    let s = setup();
    let first = s.backup(&[]);
    assert!(first["parent"].is_null(), "the first snapshot is full");
    let first_tree = kept_tree(&s.profile.home);

    s.use_signal(1);
    let second = s.backup(&[]);
    assert_eq!(second["parent"], first["id"]);
    assert_eq!(second["content"]["deleted"], 1);
    let reused = second["content"]["reused_files"].as_u64().unwrap();
    assert!(
        reused > 50,
        "unchanged attachments were archived again: {second}"
    );
    // What changed (the new and rewritten attachments, those the writer added) plus the
    // databases, nothing else.
    let second_tree = kept_tree(&s.profile.home);
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
    let third = s.backup(&[]);
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
        let target = s.root.join(format!("restore-{id}"));
        s.restore(id, &target);
        assert_same_tree(&kept_tree(&target), expected);
        let db = check_db(
            &target.join(".config/Signal/sql/db.sqlite"),
            &s.profile.key,
            None,
        );
        assert_eq!(db["integrity"], "ok");
        run_ok(
            agent()
                .env("GWB_REPO", &s.repo)
                .args(["verify", "--snapshot", id])
                .arg("--identity")
                .arg(&s.identity),
        );
        run_ok(
            agent()
                .env("GWB_REPO", &s.repo)
                .args(["verify", "--quick", "--snapshot", id]),
        );
    }
    // The second incremental's restore holds every row the writer committed.
    let target = s
        .root
        .join(format!("restore-{}", third["id"].as_str().unwrap()));
    let db = check_db(
        &target.join(".config/Signal/sql/db.sqlite"),
        &s.profile.key,
        Some(&s.root.join("ids-1.txt")),
    );
    assert_eq!(db["missingCount"], 0);
}

#[test]
fn a_chain_restores_with_stock_tools_full_then_each_incremental_then_its_deletions() {
    let s = setup();
    let first = s.backup(&[]);
    s.use_signal(1);
    s.backup(&[]);
    s.use_signal(2);
    let last = s.backup(&[]);
    let target = s.root.join("by-hand");
    std::fs::create_dir(&target).unwrap();
    let mut chain: Vec<String> = last["depends_on"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    chain.sort();
    assert_eq!(chain.first().map(String::as_str), first["id"].as_str());
    for id in chain {
        let archive = s.repo.join(format!("archives/{id}.tar.zst.age"));
        let status = Command::new("bash")
            .arg("-c")
            .arg(
                "set -eo pipefail; age -d -i \"$1\" \"$2\" | zstd -d | tar -x -C \"$3\"; cd \"$3\"; \
                 if [ -f .ghostwire-backup-deleted ]; then xargs -0 -r rm -rf -- < .ghostwire-backup-deleted; \
                 rm .ghostwire-backup-deleted; fi",
            )
            .args(["sh", s.identity.to_str().unwrap(), archive.to_str().unwrap(), target.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
    }
    assert_same_tree(&kept_tree(&target), &kept_tree(&s.profile.home));
}

#[test]
fn chains_are_bounded_and_a_lost_catalog_means_a_full_snapshot() {
    let s = setup();
    s.backup(&["--full-every", "1"]);
    let second = s.backup(&["--full-every", "1"]);
    assert!(!second["parent"].is_null());
    let third = s.backup(&["--full-every", "1"]);
    assert!(
        third["parent"].is_null(),
        "after 1 incremental the next one must be full"
    );
    std::fs::remove_file(s.profile.home.join(".ghostwire-backup-catalog.sqlite")).unwrap();
    let fourth = s.backup(&[]);
    assert!(
        fourth["parent"].is_null(),
        "without a catalog the backup must be full"
    );
}

#[test]
fn a_restored_volume_continues_the_chain_without_uploading_its_files_again() {
    let s = setup();
    let first = s.backup(&[]);
    let volume = s.root.join("green");
    s.restore(first["id"].as_str().unwrap(), &volume);
    assert!(
        volume.join(".ghostwire-backup-catalog.sqlite").exists(),
        "restore did not seed the catalog"
    );
    let next = serde_json::from_slice::<Value>(
        &std::fs::read(s.repo.join(format!(
            "snapshots/{}.json",
            run_ok(&mut backup_command(
                &s.repo,
                &volume,
                &s.recipient,
                s.root.join("staging")
            ),)
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(next["parent"], first["id"]);
    assert_eq!(
        next["content"]["files"], next["content"]["sqlite_snapshots"],
        "{next}"
    );
}

#[test]
fn prune_forgets_by_policy_but_keeps_what_restores_need() {
    let s = setup();
    let full = s.backup(&["--full-every", "0"]);
    let final_one = s.backup(&["--full-every", "0", "--final"]);
    // Incrementals on the final one; nothing changes before the first of them, so the
    // newest restores nothing from it.
    let unchanged = s.backup(&[]);
    s.use_signal(1);
    let newest = s.backup(&[]);
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

    let dry =
        run_ok(
            agent()
                .env("GWB_REPO", &s.repo)
                .args(["prune", "--keep-last", "1", "--dry-run"]),
        );
    assert!(dry.contains("would forget 2 of 4"), "{dry}");
    assert_eq!(
        std::fs::read_dir(s.repo.join("snapshots")).unwrap().count(),
        4,
        "a dry run deleted something"
    );

    let report = run_ok(
        agent()
            .env("GWB_REPO", &s.repo)
            .args(["prune", "--keep-last", "1"]),
    );
    assert!(report.contains("forgot 2 snapshots"), "{report}");
    let listed: Value = serde_json::from_str(&run_ok(
        agent()
            .env("GWB_REPO", &s.repo)
            .args(["snapshots", "--json"]),
    ))
    .unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
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
            !s.repo
                .join(gone["archive"]["key"].as_str().unwrap())
                .exists(),
            "a forgotten archive is still there"
        );
    }
    for id in ids {
        run_ok(
            agent()
                .env("GWB_REPO", &s.repo)
                .args(["verify", "--snapshot", id])
                .arg("--identity")
                .arg(&s.identity),
        );
    }
    // The chain goes on from the catalog's latest, which prune kept.
    assert_eq!(s.backup(&[])["parent"], newest["id"]);
    let refused = run_err(agent().env("GWB_REPO", &s.repo).arg("prune"));
    assert!(refused.contains("no --keep-* rule"), "{refused}");
}

#[test]
fn object_lock_retention_is_set_on_upload_and_respected_by_prune() {
    let s = setup();
    let server = S3Server::start();
    server.create_bucket_with_object_lock("locked");
    let configure = |c: &mut Command| {
        server.configure(c);
        c.env("GWB_REPO", "s3://locked/ghostwire");
    };
    for _ in 0..2 {
        let mut backup = agent();
        configure(&mut backup);
        backup
            .arg("backup")
            .arg("--source")
            .arg(&s.profile.home)
            .arg("--recipient")
            .arg(&s.recipient);
        backup
            .arg("--staging-dir")
            .arg(s.root.join("staging"))
            .args(["--object-lock-days", "1", "--full-every", "0"]);
        run_ok(&mut backup);
    }
    let mut prune = agent();
    configure(&mut prune);
    let report = run_ok(prune.args(["prune", "--keep-last", "1"]));
    assert!(report.contains("under Object Lock retention"), "{report}");
    let mut list = agent();
    configure(&mut list);
    let listed: Value = serde_json::from_str(&run_ok(list.args(["snapshots", "--json"]))).unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "a retained snapshot must stay whole"
    );
}

#[test]
fn a_damaged_manifest_is_skipped_and_breaks_no_later_backup() {
    let s = setup();
    let full = s.backup(&[]);
    let incremental = s.backup(&[]);
    assert_eq!(incremental["parent"], full["id"]);
    // Bit rot in the full snapshot's manifest: its whole chain is unrestorable now.
    let damaged = s
        .repo
        .join(format!("snapshots/{}.json", full["id"].as_str().unwrap()));
    std::fs::write(&damaged, b"{\"format\": 1, \"id\": ").unwrap();
    let listed = run(agent()
        .env("GWB_REPO", &s.repo)
        .args(["snapshots", "--json"]));
    assert!(
        listed.status.success(),
        "one damaged manifest must not make the repository unusable"
    );
    assert!(
        String::from_utf8_lossy(&listed.stderr).contains("skipping a damaged snapshot manifest")
    );
    // The next backup notices the broken chain and starts a new full one.
    let next = s.backup(&[]);
    assert!(
        next["parent"].is_null(),
        "a backup extended a broken chain: {next}"
    );
    let target = s.root.join("after");
    s.restore("latest", &target);
    assert_same_tree(&kept_tree(&target), &kept_tree(&s.profile.home));
}
