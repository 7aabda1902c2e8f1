//! A newcomer's mistakes (issue 14): each one fails with the message and the exit code the
//! README documents, instead of succeeding silently or pointing the wrong way. Most run
//! without Signal's driver: a home without a Signal profile is the mistake itself.

use std::path::{Path, PathBuf};

use crate::common::*;

#[test]
fn a_backup_of_a_home_without_signal_fails_and_names_the_flag_that_allows_it() {
    let plain = Plain::new();
    plain.backup().fails_with_code(
        1,
        &[
            "no Signal profile in",
            ".config/Signal/sql/db.sqlite",
            "--allow-no-signal",
        ],
    );
    assert!(
        !plain
            .repo
            .join(Object::prefix_of(Object::Manifest))
            .exists(),
        "a refused backup wrote a snapshot"
    );
    let missing = plain.root.join("no-such-home");
    backup_command(
        plain.agent(),
        &missing,
        &plain.recipient,
        &plain.root.join("staging"),
    )
    .fails_with_code(1, &["does not exist", "--source (GWB_SOURCE)"]);
    // Allowed, it is a snapshot like any other.
    let id = plain.backed_up();
    assert!(plain.manifest_path(&id).is_file());
}

#[test]
fn read_only_commands_on_a_missing_local_repository_exit_3() {
    let plain = Plain::new();
    for args in [
        &["snapshots"][..],
        &["prune", "--keep-last", "1", "--dry-run"],
        &["check", "--max-age", "1h"],
        &["verify", "--quick"],
        &["unlock"],
    ] {
        plain.agent().args(args).fails_with_code(
            3,
            &[
                &format!("no repository at {}", plain.repo.display()),
                "does not exist",
                "--repo (GWB_REPO)",
            ],
        );
    }
    plain
        .restore(&plain.root.join("target"))
        .fails_with_code(3, &["no repository at"]);
    assert!(
        !plain.repo.exists(),
        "a read-only command created the repository"
    );
}

#[test]
fn a_url_typo_in_the_repository_is_a_usage_error() {
    let plain = Plain::new();
    for typo in ["s3:/bucket/prefix", "S3://bucket", "minio://host/bucket"] {
        let err = agent()
            .current_dir(&plain.root)
            .args(["snapshots", "--repo", typo])
            .fails_with_code(2, &["looks like a URL", "s3://BUCKET"]);
        assert!(err.contains(typo), "{err}");
    }
    // And through the environment, as Kubernetes sets it.
    agent()
        .current_dir(&plain.root)
        .env("GWB_REPO", "s3:/bucket")
        .arg("snapshots")
        .fails_with_code(2, &["s3://BUCKET"]);
    for dir in ["s3:", "S3:", "minio:"] {
        assert!(
            !plain.root.join(dir).exists(),
            "the typo became the local directory {dir}"
        );
    }
}

#[test]
fn a_snapshot_without_signal_is_restored_only_by_its_id() {
    let plain = Plain::new();
    let id = plain.backed_up();
    let target = plain.root.join("target");
    for selector in ["latest", "final"] {
        plain
            .restore(&target)
            .args(["--snapshot", selector])
            .fails_with_code(
                7,
                &["holds no Signal database", &format!("--snapshot {id}")],
            );
    }
    assert!(
        !target.join("Documents").exists(),
        "a refused restore wrote the snapshot"
    );
    assert_eq!(plain.restore(&target).args(["--snapshot", &id]).ok(), id);
    assert_eq!(
        std::fs::read_to_string(target.join("Documents/notes.txt")).unwrap(),
        "not a Signal profile"
    );
}

#[test]
fn check_exits_5_when_the_newest_snapshot_is_older_than_max_age() {
    let plain = Plain::new();
    std::fs::create_dir_all(&plain.repo).unwrap();
    // An existing but empty repository: there is no newest snapshot.
    plain
        .agent()
        .args(["check", "--max-age", "1h"])
        .fails_with_code(4, &["holds no snapshot yet"]);
    let id = plain.backed_up();
    // Make the snapshot two hours old, as if backups had stopped since.
    let path = plain.manifest_path(&id);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let two_hours_ago = chrono::Utc::now() - chrono::Duration::hours(2);
    manifest["finished_at"] = two_hours_ago.to_rfc3339().into();
    std::fs::write(&path, manifest.to_string()).unwrap();
    sign_manifest(&path);
    plain
        .agent()
        .args(["check", "--max-age", "1h"])
        .fails_with_code(5, &[&id, "older than the allowed 1h"]);
    let ok = plain.agent().args(["check", "--max-age", "3h"]).ok();
    assert!(ok.starts_with("ok: the newest snapshot"), "{ok}");
}

#[test]
fn a_snapshot_id_that_is_not_in_the_repository_exits_4() {
    let plain = Plain::new();
    plain.backed_up();
    let missing = "20990101T000000.000Z-deadbeef";
    plain
        .restore(&plain.root.join("target"))
        .args(["--snapshot", missing])
        .fails_with_code(4, &["no snapshot", missing, "ghostwire-backup snapshots"]);
    plain
        .agent()
        .args(["verify", "--quick", "--snapshot", missing])
        .fails_with_code(4, &["no snapshot", missing]);
    assert!(!plain.root.join("target").exists());
}

#[test]
fn an_s3_endpoint_without_its_scheme_is_a_usage_error() {
    agent()
        .arg("snapshots")
        .args([
            "--repo",
            "s3://bucket/prefix",
            "--s3-endpoint",
            "127.0.0.1:9",
        ])
        .fails_with_code(2, &["https://127.0.0.1:9", "http://127.0.0.1:9"]);
}

#[test]
fn without_a_region_no_instance_metadata_is_probed() {
    let s3 = S3Server::with_bucket("bucket");
    let mut agent = s3.agent("s3://bucket/prefix");
    // As on a laptop: no region anywhere, and nothing that turns the metadata probe off.
    agent
        .env_remove("GWB_S3_REGION")
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env("HOME", tempfile::tempdir().unwrap().path()); // no ~/.aws/config either
    let ran = agent.arg("snapshots").run();
    assert!(ran.status.success(), "{ran}");
    for noise in ["WARN", "metadata", "IMDS", "169.254.169.254"] {
        assert!(!ran.stderr.contains(noise), "{noise}:\n{ran}");
    }
}

/// `plain`'s directory readable by other users, as a shared volume is, so a test can run
/// the agent as `nobody` (the identity stays readable by root alone).
fn open_to_others(plain: &Plain) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode(&plain.root, 0o777);
    for entry in walkdir(&plain.repo) {
        mode(&entry, if entry.is_dir() { 0o777 } else { 0o666 });
    }
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walkdir(&path));
        } else {
            found.push(path);
        }
    }
    found
}

const NOBODY: u32 = 65534;

#[test]
fn permission_denied_names_the_path() {
    let plain = Plain::new();
    plain.backed_up();
    open_to_others(&plain);
    let mut verify = plain.agent();
    verify
        .user(NOBODY, NOBODY)
        .args(["verify", "--identity"])
        .arg(&plain.identity);
    verify.fails_with_code(
        1,
        &[
            &format!("cannot read identity file {}", plain.identity.display()),
            "Permission denied",
        ],
    );
}

#[test]
fn a_restore_target_that_is_a_file_is_refused_as_such() {
    let plain = Plain::new();
    let id = plain.backed_up();
    let file = plain.root.join("volume");
    std::fs::write(&file, "data").unwrap();
    plain
        .restore(&file)
        .args(["--snapshot", &id])
        .fails_with_code(7, &["is a file, not a directory", "--target (GWB_TARGET)"]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
}

#[test]
fn chown_without_root_fails_before_anything_is_restored() {
    let plain = Plain::new();
    let id = plain.backed_up();
    open_to_others(&plain);
    std::fs::copy(&plain.identity, plain.root.join("nobody-identity.txt")).unwrap();
    std::os::unix::fs::chown(plain.root.join("nobody-identity.txt"), Some(NOBODY), None).unwrap();
    let target = plain.root.join("target");
    let mut restore = plain.agent();
    restore
        .user(NOBODY, NOBODY)
        .args([
            "restore",
            "--snapshot",
            &id,
            "--chown",
            "1000:0",
            "--identity",
        ])
        .arg(plain.root.join("nobody-identity.txt"))
        .arg("--target")
        .arg(&target);
    restore.fails_with_code(1, &["--chown 1000:0 needs root", "runs as 65534:65534"]);
    assert!(!target.exists(), "it restored before failing");
}

#[test]
fn every_duration_flag_takes_seconds_and_units() {
    let plain = Plain::new();
    let id = plain
        .backup()
        .args([
            "--allow-no-signal",
            "--db-wait",
            "1m",
            "--full-max-age",
            "604800",
        ])
        .ok();
    let path = plain.manifest_path(&id);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest["finished_at"] = (chrono::Utc::now() - chrono::Duration::hours(2))
        .to_rfc3339()
        .into();
    std::fs::write(&path, manifest.to_string()).unwrap();
    sign_manifest(&path);
    let check = |max_age: &str| {
        let mut command = plain.agent();
        command.args(["check", "--max-age", max_age]);
        command
    };
    check("3600").fails_with_code(5, &["older than the allowed 1h"]);
    check("10800").ok();
    check("1h30m").fails_with_code(5, &["older than the allowed 1h 30m"]);
    check("3h").ok();
    check("two hours").fails_with_code(2, &["a duration is seconds (90) or a number with units"]);
    plain
        .backup()
        .args(["--db-wait", "soon"])
        .fails_with_code(2, &["--db-wait", "a duration is seconds"]);
}

/// The random tail of a snapshot id: what `--snapshot` also accepts.
fn tail(id: &str) -> &str {
    id.rsplit_once('-').unwrap().1
}

#[test]
fn a_snapshot_is_found_by_a_unique_prefix_or_its_tail() {
    let plain = Plain::new();
    let first = plain.backed_up();
    let second = plain.backed_up();
    let verify = |wanted: &str| {
        let mut command = plain.agent();
        command.args(["verify", "--quick", "--snapshot", wanted]);
        command
    };
    assert_eq!(verify(tail(&first)).ok(), first);
    assert_eq!(verify(&second[..second.len() - 3]).ok(), second);
    // The start both share names neither: the error lists them.
    verify("20").fails_with_code(
        1,
        &["matches 2 snapshots", &first, &second, "more of the id"],
    );
    verify("ffffffff").fails_with_code(4, &["no snapshot \"ffffffff\"", "last 8 hex digits"]);
    // An abbreviated id is an explicit choice: a snapshot without Signal restores by it.
    let target = plain.root.join("target");
    assert_eq!(
        plain
            .restore(&target)
            .args(["--snapshot", tail(&first)])
            .ok(),
        first
    );
}

#[test]
fn forget_removes_the_snapshots_named_and_their_objects() {
    let plain = Plain::new();
    let full = |plain: &Plain| {
        plain
            .backup()
            .args(["--allow-no-signal", "--full-every", "0"])
            .ok()
    };
    let (first, second, third) = (full(&plain), full(&plain), full(&plain));
    let objects = |id: &str| {
        [
            Object::Manifest(id.to_string()).key(),
            Object::Archive(id.to_string()).part_key(1),
            Object::Index(id.to_string()).key(),
        ]
        .map(|key| plain.repo.join(key))
    };
    let dry = plain
        .agent()
        .args(["forget", "--dry-run", tail(&first)])
        .ok();
    assert!(dry.contains(&format!("would forget {first}")), "{dry}");
    assert!(
        objects(&first).iter().all(|path| path.exists()),
        "--dry-run deleted"
    );
    let out = plain
        .agent()
        .args(["forget", tail(&first), &third[..third.len() - 2]])
        .ok();
    assert!(out.contains(&format!("forgot {first}")), "{out}");
    assert!(out.contains(&format!("forgot {third}")), "{out}");
    for id in [&first, &third] {
        for path in objects(id) {
            assert!(!path.exists(), "{} is still there", path.display());
        }
    }
    assert_eq!(snapshot_ids(&mut plain.agent()), vec![second.clone()]);
    assert!(objects(&second).iter().all(|path| path.exists()));
    plain
        .agent()
        .args(["forget", tail(&first)])
        .fails_with_code(4, &["no snapshot"]);
    plain.agent().arg("forget").fails_with_code(2, &["<ID>"]);
}

#[test]
fn forget_refuses_what_a_remaining_snapshot_needs_and_the_handoff() {
    let plain = Plain::new();
    let base = plain.backed_up();
    std::fs::write(plain.home.join("Documents/more.txt"), "changed").unwrap();
    let incremental = plain.backed_up();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plain.manifest_path(&incremental)).unwrap()).unwrap();
    assert!(
        manifest["depends_on"].to_string().contains(&base),
        "the second snapshot should reuse the first one's archive: {manifest}"
    );
    plain.agent().args(["forget", &base]).fails_with_code(
        1,
        &[&format!(
            "refusing to forget {base} (needed by {incremental})"
        )],
    );
    assert!(plain.manifest_path(&base).exists());

    // The blue instance stopped and released the lease with its final snapshot: green
    // restores exactly that one, so it must stay.
    let now = chrono::Utc::now().to_rfc3339();
    let lease = serde_json::json!({
        "owner": "blue", "acquired_at": now, "renewed_at": now, "expires_at": now,
        "released_at": now, "final_snapshot": incremental,
    });
    std::fs::write(plain.repo.join(Object::Lease.key()), lease.to_string()).unwrap();
    plain
        .agent()
        .args(["forget", &base, &incremental])
        .fails_with_code(
            1,
            &[&format!("refusing to forget {incremental}"), "handoff"],
        );
    assert!(plain.manifest_path(&incremental).exists());
    assert!(plain.manifest_path(&base).exists());
    // Forgotten together once nothing names them, the chain goes as a whole.
    std::fs::remove_file(plain.repo.join(Object::Lease.key())).unwrap();
    plain.agent().args(["forget", &base, &incremental]).ok();
    assert!(snapshot_ids(&mut plain.agent()).is_empty());
}

#[test]
fn logs_keep_the_restore_target_and_text_logs_are_plain() {
    let plain = Plain::new();
    let id = plain.backed_up();
    let target = plain.root.join("target");
    let mut restore = plain.restore(&target);
    restore
        .env("GWB_LOG_FORMAT", "json")
        .args(["--snapshot", &id]);
    let ran = restore.run();
    assert!(ran.status.success(), "{ran}");
    let restoring = ran
        .stderr
        .lines()
        .find(|line| line.contains("\"restoring\""))
        .unwrap_or_else(|| panic!("no restoring event:\n{ran}"));
    assert_eq!(restoring.matches("\"target\":").count(), 1, "{restoring}");
    let event: serde_json::Value = serde_json::from_str(restoring).unwrap();
    assert_eq!(event["target_dir"], target.display().to_string(), "{event}");

    // Text logs into a pipe (no terminal), colours not switched off: none anyway.
    let mut backup = plain.backup();
    backup
        .env("GWB_LOG_FORMAT", "text")
        .env_remove("NO_COLOR")
        .arg("--allow-no-signal");
    let ran = backup.run();
    assert!(ran.status.success(), "{ran}");
    assert!(ran.stderr.contains("INFO"), "{ran}");
    assert!(
        !ran.stderr.contains('\x1b'),
        "ANSI escapes in a pipe:\n{ran}"
    );
    assert!(
        !ran.stderr.contains("ghostwire_backup::"),
        "module paths:\n{ran}"
    );
}

#[test]
fn the_readme_documents_every_exit_code() {
    let table = agent().args(["reference", "--section", "exits"]).ok();
    for code in 1..=8 {
        assert!(
            table.contains(&format!("\n| {code} | ")),
            "{code}:\n{table}"
        );
    }
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    assert!(
        readme.contains(&table),
        "README.md's exit codes are stale: run scripts/gen-docs.sh\n{table}"
    );
}

#[test]
fn the_reference_names_every_environment_variable_the_binary_reads() {
    let reference = agent().args(["reference", "--json"]).ok();
    let mut read = std::collections::BTreeSet::new();
    let sources = walkdir(&repo_root().join("src"));
    for file in sources
        .iter()
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
    {
        let source = std::fs::read_to_string(file).unwrap();
        // std::env reads, and clap's `env = "GWB_…"` attributes (other `env = ` are cfgs
        // and the reference module's own test flags).
        for call in ["env::var(\"", "env::var_os(\"", "env = \"GWB_"] {
            let prefix = call.strip_prefix("env = \"").unwrap_or("");
            for rest in source.split(call).skip(1) {
                read.insert(format!("{prefix}{}", rest.split('"').next().unwrap()));
            }
        }
    }
    assert!(
        read.contains("GWB_REPO") && read.contains("HOSTNAME"),
        "{read:?}"
    );
    let missing: Vec<_> = read
        .iter()
        .filter(|name| {
            !reference.contains(&format!("\"{name}")) && !reference.contains(&format!(" {name}"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "read but not in the reference: {missing:?}"
    );
}

/// Every command but keygen opens a repository.
const REPOSITORY_COMMANDS: [&str; 9] = [
    "backup",
    "snapshots",
    "restore",
    "verify",
    "run",
    "prune",
    "forget",
    "unlock",
    "check",
];

#[test]
fn help_sets_repository_and_global_options_apart_and_shows_examples() {
    for command in std::iter::once("keygen").chain(REPOSITORY_COMMANDS) {
        let help = agent().args([command, "--help"]).ok();
        let (own, global) = help
            .split_once("Global options:")
            .unwrap_or_else(|| panic!("{command} --help has no Global options heading:\n{help}"));
        assert!(global.contains("--log-format"), "{command}:\n{help}");
        let examples = help
            .split_once("Examples:\n")
            .unwrap_or_else(|| panic!("{command} --help has no examples:\n{help}"))
            .1;
        assert!(
            examples.contains(&format!("ghostwire-backup {command}")),
            "{command}:\n{help}"
        );
        if command == "keygen" {
            continue;
        }
        let (own, repository) = own.split_once("Repository options:").unwrap_or_else(|| {
            panic!("{command} --help has no Repository options heading:\n{help}")
        });
        assert!(
            !own.contains("--repo ") && !own.contains("--s3-endpoint"),
            "{command}: repository flags among its own:\n{help}"
        );
        assert!(
            repository.contains("--repo ") && repository.contains("--s3-endpoint"),
            "{command}:\n{help}"
        );
    }
    let prune = agent().args(["prune", "--help"]).ok();
    let own = prune.split_once("Repository options:").unwrap().0;
    assert!(own.contains("--keep-last"), "{prune}");
}

#[test]
fn keygen_help_lists_only_its_own_flags_and_repository_commands_still_take_repo() {
    let keygen = agent().args(["keygen", "--help"]).ok();
    for repository_flag in ["--repo", "--s3-", "--object-lock", "GWB_REPO", "GWB_S3_"] {
        assert!(
            !keygen.contains(repository_flag),
            "keygen --help lists {repository_flag}, which keygen ignores:\n{keygen}"
        );
    }
    assert!(keygen.contains("--out"), "{keygen}");
    let backup = agent().args(["backup", "--help"]).ok();
    assert!(
        backup.contains("--repo ") && backup.contains("[env: GWB_REPO="),
        "{backup}"
    );
    // Given anyway, it is refused rather than ignored: the user expected it to matter.
    agent()
        .args(["keygen", "--repo", "./backups", "--out", "identity.txt"])
        .fails_with_code(2, &["--repo"]);
    // And every repository command still reads its location from GWB_REPO.
    let dir = tempfile::tempdir().unwrap();
    for command in REPOSITORY_COMMANDS {
        let help = agent_for(dir.path()).args([command, "--help"]).ok();
        assert!(
            help.contains(&format!("[env: GWB_REPO={}]", dir.path().display())),
            "{command} does not read GWB_REPO:\n{help}"
        );
    }
}

#[test]
fn snapshots_show_when_each_was_taken_and_what_restoring_its_chain_reads() {
    let plain = Plain::new();
    plain.add_incompressible("photo.raw", 256 << 10);
    let full = plain.backed_up();
    std::fs::write(plain.home.join("Documents/new.txt"), "one small change").unwrap();
    let incremental = plain.backed_up();

    let listed: serde_json::Value =
        serde_json::from_str(&plain.agent().args(["snapshots", "--json"]).ok()).unwrap();
    let row = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {listed:#}"))
            .clone()
    };
    let (full_row, incr_row) = (row(&full), row(&incremental));
    // The manifest's own fields are still there: --json only gains fields.
    for field in [
        "started_at",
        "finished_at",
        "archive",
        "content",
        "depends_on",
    ] {
        assert!(!incr_row[field].is_null(), "{field} is gone: {incr_row:#}");
    }
    assert_eq!(full_row["kind"], "full");
    assert_eq!(incr_row["kind"], "incremental");
    assert_eq!(incr_row["taken_at"], incr_row["started_at"]);
    assert_eq!(full_row["restore_archives"], 1);
    assert_eq!(incr_row["restore_archives"], 2);
    let full_archive = full_row["archive"]["size"].as_u64().unwrap();
    let incr_archive = incr_row["archive"]["size"].as_u64().unwrap();
    let restore_size = incr_row["restore_size"].as_u64().unwrap();
    assert!(
        incr_archive < full_archive,
        "the incremental's own archive should hold only the change: {incr_row:#}"
    );
    assert!(restore_size >= full_archive, "{incr_row:#}");
    assert_eq!(restore_size, full_archive + incr_archive);
    assert_eq!(full_row["restore_size"], full_archive);
    // Three files come back from the incremental although its own archive holds one.
    assert_eq!(incr_row["content"]["files"], 1);
    assert_eq!(incr_row["restore_files"], 3);

    let table = plain.agent().arg("snapshots").ok();
    let header = table.lines().next().unwrap();
    for column in [
        "TAKEN (UTC)",
        "KIND",
        "SIZE",
        "RESTORE SIZE",
        "CHAIN",
        "FILES",
    ] {
        assert!(header.contains(column), "no {column}: {table}");
    }
    let line = |id: &str| {
        table
            .lines()
            .find(|line| line.starts_with(id))
            .unwrap_or_else(|| panic!("{id} not in {table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let taken = full_row["started_at"].as_str().unwrap();
    let full_line = line(&full);
    assert_eq!(full_line[1], &taken[..10], "{table}");
    assert_eq!(full_line[2], &taken[11..19], "{table}");
    assert_eq!(full_line[3], "full", "{table}");
    let incr_line = line(&incremental);
    assert_eq!(incr_line[3], "incremental", "{table}");
    // SIZE and RESTORE SIZE are "N unit" pairs; then the chain and the files.
    assert_eq!(&incr_line[8..10], ["2", "3"], "{table}");
}

/// The `progress` events of a run's JSON logs.
fn progress_events(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["message"] == "progress")
        .collect()
}

/// The `progress` events of `phase`, checked to grow: bytes never go back and move at
/// least once.
fn growing(stderr: &str, phase: &str) -> Vec<serde_json::Value> {
    let events: Vec<serde_json::Value> = progress_events(stderr)
        .into_iter()
        .filter(|event| event["phase"] == phase)
        .collect();
    let bytes: Vec<u64> = events
        .iter()
        .map(|event| event["bytes"].as_u64().unwrap())
        .collect();
    assert!(
        bytes.windows(2).all(|pair| pair[0] <= pair[1]),
        "bytes went back: {bytes:?}"
    );
    let distinct: std::collections::BTreeSet<_> = bytes.iter().collect();
    assert!(
        distinct.len() >= 2,
        "no growing {phase} progress in:\n{stderr}"
    );
    events
}

#[test]
fn json_logs_report_progress_periodically_and_only_for_long_operations() {
    let plain = Plain::new();
    plain.add_incompressible("video.raw", 48 << 20);
    let ran = plain
        .backup()
        .arg("--allow-no-signal")
        .env("GWB_LOG_FORMAT", "json")
        .env("GWB_PROGRESS_EVERY", "5ms")
        .run();
    assert!(ran.status.success(), "{ran}");
    let id = ran.stdout_trimmed().to_string();
    let archiving = growing(&ran.stderr, "archive and upload");
    for event in &archiving {
        assert!(
            event["bytes_total"].as_u64().unwrap() >= 48 << 20,
            "{event}"
        );
        assert!(event["percent"].as_u64().unwrap() <= 100, "{event}");
        assert_eq!(event["files_total"], 2, "{event}");
    }

    // A restore reports the download against the stored archive's size.
    let target = plain.root.join("restored");
    let ran = plain
        .restore(&target)
        .args(["--snapshot", &id])
        .env("GWB_LOG_FORMAT", "json")
        .env("GWB_PROGRESS_EVERY", "5ms")
        .run();
    assert!(ran.status.success(), "{ran}");
    // Its parts' sizes, as stored.
    let archive = Object::Archive(id.to_string());
    let stored: u64 = (1..)
        .map(|n| plain.repo.join(archive.part_key(n)))
        .map_while(|part| std::fs::metadata(part).ok())
        .map(|meta| meta.len())
        .sum();
    let unpacking = growing(&ran.stderr, "download and unpack");
    for event in &unpacking {
        assert_eq!(event["bytes_total"], stored, "{event}");
        assert_eq!(event["archives"], 1, "{event}");
        assert_eq!(event["files_total"], 2, "{event}");
    }
    // Files count as they are written: notes.txt (first in the archive) while the video
    // is still coming in.
    assert!(
        unpacking
            .iter()
            .any(|event| event["files"] == 1 && event["bytes"].as_u64() < Some(stored)),
        "{unpacking:#?}"
    );

    // So does a quick verify, which downloads the archive and its index.
    let ran = plain
        .agent()
        .args(["verify", "--quick", "--snapshot", &id])
        .env("GWB_LOG_FORMAT", "json")
        .env("GWB_PROGRESS_EVERY", "5ms")
        .run();
    assert!(ran.status.success(), "{ran}");
    for event in growing(&ran.stderr, "download and checksum") {
        assert!(event["bytes_total"].as_u64().unwrap() > stored, "{event}");
    }

    // At the default interval (10 s) a backup of a few seconds logs no progress at all.
    let ran = plain
        .backup()
        .arg("--allow-no-signal")
        .env("GWB_LOG_FORMAT", "json")
        .run();
    assert!(ran.status.success(), "{ran}");
    assert_eq!(progress_events(&ran.stderr).len(), 0, "{ran}");
}

#[test]
fn a_progress_interval_that_is_not_a_duration_is_refused_by_name() {
    let plain = Plain::new();
    let ran = plain
        .backup()
        .arg("--allow-no-signal")
        .env("GWB_PROGRESS_EVERY", "often")
        .run();
    assert_eq!(ran.status.code(), Some(2), "{ran}");
    assert!(
        ran.stderr.contains("--progress-every") && ran.stderr.contains("often"),
        "the error must name the setting and its value: {ran}"
    );
    assert!(
        !plain.repo.exists(),
        "a refused command made the repository: {ran}"
    );
}

#[test]
fn a_terminal_shows_one_labeled_progress_line() {
    let plain = Plain::new();
    plain.add_incompressible("video.raw", 96 << 20);
    // `script` runs the backup on a pseudo-terminal and copies what it drew to stdout.
    let staging = plain.root.join("staging");
    let words = [
        env!("CARGO_BIN_EXE_ghostwire-backup"),
        "backup",
        "--allow-no-signal",
        "--repo",
        plain.repo.to_str().unwrap(),
        "--source",
        plain.home.to_str().unwrap(),
        "--recipient",
        &plain.recipient,
        "--staging-dir",
        staging.to_str().unwrap(),
    ];
    let line: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let mut script = TestCommand::new(require(Part::Script));
    script
        .args(["-qec", &line.join(" "), "/dev/null"])
        .env("GWB_LOG_FORMAT", "text")
        .env("GWB_SIGNING_KEY_FILE", &signing_keys().signing_key)
        .env("NO_COLOR", "1");
    let ran = script.ok();
    // The line is labeled with its phase, and cleared in place (never scrolled away) when a
    // log line or the next draw takes its place; how often it is drawn depends on the speed.
    assert!(
        ran.contains("archive and upload · "),
        "no progress line: {ran:?}"
    );
    assert!(
        ran.contains("\r\x1b[2K"),
        "the progress line is not cleared in place: {ran:?}"
    );
    assert!(ran.contains(" files · "), "no file counts: {ran:?}");
    assert!(ran.contains("MiB of "), "no byte counts: {ran:?}");
    assert_eq!(snapshot_ids(&mut plain.agent()).len(), 1);
}

#[test]
fn prune_removes_what_a_killed_backup_left_in_a_local_repository_once_it_is_old() {
    let plain = Plain::new();
    let id = plain.backed_up();
    // What `backup` killed by SIGKILL before its rename leaves: a `*.partial-*` file.
    let archives = plain.repo.join(Object::prefix_of(Object::Archive));
    let dead = archives.join("20261101T000000.000Z-0badf00d.tar.zst.age.partial-4242");
    let live = archives.join("20261202T000000.000Z-1badf00d.tar.zst.age.partial-4343");
    for partial in [&dead, &live] {
        std::fs::write(partial, vec![0u8; 1 << 20]).unwrap();
    }
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(&dead)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();

    plain
        .agent()
        .args(["prune", "--keep-last", "1", "--dry-run"])
        .ok();
    assert!(dead.exists(), "a dry run deleted a file");
    let report = plain.agent().args(["prune", "--keep-last", "1"]).ok();
    assert!(report.contains("1 files of interrupted writes"), "{report}");
    assert!(!dead.exists(), "a day-old partial file was kept");
    // A fresh one may belong to a backup still writing: it stays.
    assert!(live.exists(), "a fresh partial file was deleted");
    assert_eq!(snapshot_ids(&mut plain.agent()), [id]);
}

#[test]
fn ctrl_c_during_a_backup_leaves_no_partial_file_and_no_snapshot() {
    use std::io::{BufRead, BufReader};
    let plain = Plain::new();
    plain.add_incompressible("video.raw", 256 << 20);
    let mut backup = plain.backup();
    backup
        .arg("--allow-no-signal")
        .env("GWB_LOG_FORMAT", "json")
        .env("GWB_PROGRESS_EVERY", "5ms");
    let mut child = backup.spawn(std::process::Stdio::null(), std::process::Stdio::piped());
    // Ctrl-C once the archive is being written, so that a partial file exists.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    // The archive streams into archives/ (the layout README documents).
    let partials = || {
        std::fs::read_dir(plain.repo.join(Object::prefix_of(Object::Archive)))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().contains(".partial-"))
            .count()
    };
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the backup ended first:\n{log}"
        );
        log.push_str(&line);
        if line.contains("\"archive and upload\"") && partials() > 0 {
            break;
        }
    }
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(8), "{log}");
    assert_eq!(partials(), 0, "a cut backup left a partial file:\n{log}");
    assert!(snapshot_ids(&mut plain.agent()).is_empty(), "{log}");
}
