//! The three adversaries, round two (issue 22): what someone who can write to the bucket
//! but holds no key, the desktop user and a kill can still do, each tried and refused.

use std::path::Path;

use crate::common::*;

/// The most memory a command may take with a planted giant object (issue 22): every
/// container in deploy/ has 256 MiB, and the agent needs about 20 without junk.
const PEAK_KIB: u64 = 64 * 1024;

/// A manifest id older than every real snapshot: junk dated there stops no `latest`.
const OLD_ID: &str = "20200101T000000.000Z-0badf00d";

/// Runs `command`, expecting success or failure as `succeeds` says and every one of
/// `words` in its output, with a peak resident memory of at most [`PEAK_KIB`].
fn bounded(command: &mut TestCommand, succeeds: bool, words: &[&str]) -> String {
    let (ran, peak_kib) = command.run_measured();
    assert_eq!(ran.status.success(), succeeds, "wrong outcome:\n{ran}");
    // `snapshots` lists a refused manifest in its table; the others warn or fail.
    let said = format!("{}{}", ran.stdout, ran.stderr);
    let missing: Vec<_> = words.iter().filter(|w| !said.contains(*w)).collect();
    assert!(missing.is_empty(), "stderr lacks {missing:?}:\n{ran}");
    assert!(
        peak_kib <= PEAK_KIB,
        "peak RSS {peak_kib} KiB over {PEAK_KIB} KiB: the junk object was read\n{ran}"
    );
    eprintln!(
        "peak RSS {peak_kib} KiB: {}",
        ran.stderr.lines().last().unwrap_or("")
    );
    ran.stderr
}

/// A sparse file of 1 GiB at `path`: junk as large as any, costing no disk.
fn plant_gib(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::File::create(path)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
}

#[test]
fn giant_objects_planted_in_a_local_repository_are_refused_unread() {
    let (fx, id) = Fixture::backed_up(&[]);
    let target = fx.root.join("restored");

    // An old-dated manifest: listed as refused, naming the object and the bound.
    let manifest = fx.manifest_path(OLD_ID);
    plant_gib(&manifest);
    let manifest_key = Object::Manifest(OLD_ID.to_string()).key();
    let manifest_words = &[manifest_key.as_str(), "larger than 1048576 bytes"];
    bounded(fx.agent().arg("snapshots"), true, manifest_words);
    bounded(
        fx.agent().args(["prune", "--keep-last", "5"]),
        true,
        manifest_words,
    );
    bounded(
        fx.restore(&target).args(["--snapshot", "latest"]),
        true,
        &[],
    );
    std::fs::remove_dir_all(&target).unwrap();

    // Its signature, beside a small manifest: refused the same way.
    std::fs::write(&manifest, b"{}").unwrap();
    let signature = Object::Signature(OLD_ID.to_string()).key();
    plant_gib(&fx.repo.join(&signature));
    bounded(
        fx.agent().arg("snapshots"),
        true,
        &[signature.as_str(), "larger than 16384 bytes"],
    );
    fx.agent().args(["forget", OLD_ID]).ok();

    // A lock: backup and prune stop naming it and `unlock`, which removes it.
    let lock_key = Object::Lock(OLD_ID.to_string()).key();
    let lock = fx.repo.join(&lock_key);
    plant_gib(&lock);
    let lock_words = &[lock_key.as_str(), "larger than 65536 bytes", "unlock"];
    bounded(&mut fx.backup(), false, lock_words);
    bounded(
        fx.agent().args(["prune", "--keep-last", "5"]),
        false,
        lock_words,
    );
    bounded(fx.agent().arg("unlock"), true, &[]);
    assert!(!lock.exists(), "unlock left the giant lock");

    // The signed list of manifests: ignored unread, every manifest read one by one.
    let list = fx.repo.join(MANIFEST_LIST);
    plant_gib(&list);
    bounded(fx.agent().args(["snapshots", "--json"]), true, &[]);
    assert_eq!(snapshot_ids(&mut fx.agent()), [id.as_str()]);
    std::fs::remove_file(&list).unwrap();

    // The lease: the init container's `--snapshot handoff` fails naming it, unread.
    plant_gib(&fx.repo.join(Object::Lease.key()));
    bounded(
        fx.restore(&target).args(["--snapshot", "handoff"]),
        false,
        &["lease.json", "larger than 65536 bytes"],
    );
    std::fs::remove_file(fx.repo.join(Object::Lease.key())).unwrap();

    // The index of the genuine snapshot: read no further than the size its manifest signs.
    let index = fx.repo.join(Object::Index(id.to_string()).key());
    let signed_size = fx.manifest(&id)["index"]["size"].as_u64().unwrap();
    plant_gib(&index);
    let index_words = &[
        &Object::Index(id.to_string()).key() as &str,
        &format!("larger than {signed_size} bytes"),
    ];
    bounded(&mut fx.restore(&target), false, index_words);
    bounded(&mut fx.verify_with(fx.agent(), &id), false, index_words);
    assert!(!target.exists(), "a refused restore wrote its target");
}

/// A replaced archive, encrypted to the public recipient as anyone can: one file of
/// `len` zero bytes under `name`, compressed to a few KiB.
fn zero_archive(recipient: &str, name: &str, len: u64) -> Vec<u8> {
    let mut tar = tar::Builder::new(zstd::Encoder::new(Vec::new(), 1).unwrap());
    let mut header = tar_header(tar::EntryType::Regular, len, 0o600);
    tar.append_data(
        &mut header,
        name,
        std::io::Read::take(std::io::repeat(0), len),
    )
    .unwrap();
    let plain = tar.into_inner().unwrap().finish().unwrap();
    age_encrypt(recipient, &plain)
}

#[test]
fn verify_holds_no_more_of_a_replaced_archive_than_its_manifest_declares() {
    let (fx, id) = Fixture::backed_up(&[]);
    // Signal's config.json and then its database as 1 GiB each: before the archive's hash
    // is checked at its end, verify held the first in memory and the second on disk.
    for name in [".config/Signal/config.json", ".config/Signal/sql/db.sqlite"] {
        fx.replace_archive(&id, &zero_archive(&fx.recipient, name, 1 << 30));
        bounded(
            &mut fx.verify_with(fx.agent(), &id),
            false,
            // Its parts are not the sizes the manifest states: refused at the first
            // short one, before the 1 GiB of zeros is held anywhere (a replacement of
            // the stated sizes meets the content cap: hostile.rs, the zstd bomb).
            &["does not match its manifest"],
        );
    }
}

#[test]
fn giant_objects_planted_on_s3_are_refused_unread() {
    // 256 MiB rather than 1 GiB: moto holds objects in memory, and four times the bound
    // proves the bound as well.
    const JUNK: usize = 256 << 20;
    let server = S3Server::with_bucket("ghostwire");
    let repo = "s3://ghostwire/adversaries";
    let fx = Fixture::new(&[]);
    fx.backup_with(server.agent(repo)).ok();
    let junk = "x".repeat(JUNK);
    let plant = |key: &str| {
        let (status, body) =
            server.request("PUT", &format!("/ghostwire/adversaries/{key}"), &[], &junk);
        assert_eq!(status, 200, "planting {key} failed: {body}");
    };

    let lock = Object::Lock(OLD_ID.to_string()).key();
    plant(&lock);
    let lock_words = &[lock.as_str(), "larger than 65536 bytes", "unlock"];
    bounded(&mut fx.backup_with(server.agent(repo)), false, lock_words);
    bounded(server.agent(repo).arg("unlock"), true, &[]);

    let manifest = Object::Manifest(OLD_ID.to_string()).key();
    plant(&manifest);
    bounded(
        server.agent(repo).arg("snapshots"),
        true,
        &[manifest.as_str(), "larger than 1048576 bytes"],
    );

    plant(&Object::Lease.key());
    let target = fx.root.join("restored");
    bounded(
        fx.restore_with(server.agent(repo), &target)
            .args(["--snapshot", "handoff"]),
        false,
        &["lease.json", "larger than 65536 bytes"],
    );
}

/// Every path below `dir`, with its mode bits, `dir` included.
fn modes(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, u32> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = std::collections::BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if metadata.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
        if !metadata.is_symlink() {
            found.insert(path, metadata.permissions().mode() & 0o7777);
        }
    }
    found
}

/// The paths below `dir` that were not in `before` and that others may write to.
fn new_and_writable_by_others(
    dir: &Path,
    before: &std::collections::BTreeMap<std::path::PathBuf, u32>,
) -> Vec<String> {
    modes(dir)
        .into_iter()
        .filter(|(path, mode)| !before.contains_key(path) && mode & 0o022 != 0)
        .map(|(path, mode)| format!("{} {mode:o}", path.display()))
        .collect()
}

#[test]
fn what_the_agent_creates_under_umask_000_is_not_writable_by_others() {
    let fx = Fixture::new(&[]);
    let before = modes(&fx.root);
    let keys = fx.root.join("keys");
    std::fs::create_dir(&keys).unwrap();
    fx.agent()
        .with_umask_000()
        .args(["keygen", "--out"])
        .arg(keys.join("identity.txt"))
        .arg("--signing-out")
        .arg(keys.join("signing.key"))
        .ok();
    let id = fx.backup().with_umask_000().ok();
    let target = fx.root.join("restored");
    fx.restore(&target).with_umask_000().ok();
    // Over the restored target: the replaced entries go to an aside directory.
    std::fs::write(target.join("planted"), b"x").unwrap();
    let mut again = fx.restore(&target);
    again
        .with_umask_000()
        .args(["--snapshot", &id, "--force"])
        .ok();

    let created = modes(&fx.root);
    assert!(
        created
            .keys()
            .any(|p| p.to_string_lossy().contains("-replaced-")),
        "the second restore moved nothing aside: the test proves less than it says"
    );
    let open = new_and_writable_by_others(&fx.root, &before);
    assert!(
        open.is_empty(),
        "writable by others under umask 000: {open:#?}"
    );
    for (path, mode) in created.range(fx.repo.clone()..) {
        if !path.starts_with(&fx.repo) {
            break;
        }
        let wanted = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, wanted, "{} in the local repository", path.display());
    }
    for key in ["identity.txt", "signing.key"] {
        assert_eq!(created[&keys.join(key)], 0o600, "{key}");
    }
}

#[test]
fn prune_deletes_the_parts_a_killed_backup_left_once_they_are_a_day_old() {
    let server = S3Server::with_bucket("ghostwire");
    let repo = "s3://ghostwire/killed";
    let fx = Fixture::new(&[]);
    let id = fx.backup_with(server.agent(repo)).ok();
    let listed = |prefix: &str| -> Vec<String> {
        let (status, body) = server.get(&format!("/ghostwire?list-type=2&prefix={prefix}"));
        assert_eq!(status, 200, "{body}");
        body.split("<Key>")
            .skip(1)
            .map(|rest| rest.split('<').next().unwrap().to_string())
            .collect()
    };
    let parts_of = |id: &str| listed(&format!("killed/archives/{id}"));
    let genuine = parts_of(&id);
    assert!(!genuine.is_empty());
    // What a backup killed after storing its parts, before its manifest, leaves: parts
    // under an id of their own, one from two days ago and one from now (which a backup
    // still running could own).
    let dated = |age: chrono::Duration| {
        format!(
            "{}-0badcafe",
            (chrono::Utc::now() - age).format("%Y%m%dT%H%M%S%.3fZ")
        )
    };
    let (old, young) = (
        dated(chrono::Duration::days(2)),
        dated(chrono::Duration::zero()),
    );
    for orphan in [&old, &young] {
        for key in &genuine {
            let copy = key.replace(&id, orphan);
            let source = format!("/ghostwire/{key}");
            let (status, body) = server.request(
                "PUT",
                &format!("/ghostwire/{copy}"),
                &[("x-amz-copy-source", &source)],
                "",
            );
            assert_eq!(status, 200, "{body}");
        }
    }
    let report = server.agent(repo).args(["prune", "--keep-last", "5"]).ok();
    assert_eq!(parts_of(&old), Vec::<String>::new(), "{report}");
    assert_eq!(parts_of(&young).len(), genuine.len(), "{report}");
    assert_eq!(parts_of(&id), genuine, "{report}");
    assert_eq!(snapshot_ids(&mut server.agent(repo)), vec![id]);
}

#[test]
fn a_newer_unsigned_snapshot_neither_prunes_signed_history_nor_restores_as_latest() {
    let (fx, first) = Fixture::backed_up(&[]);
    let second = fx.backup().ok();
    // A bucket writer's snapshot: the newest one, genuine-looking but with no signature.
    let planted = format!(
        "{}-0badcafe",
        (chrono::Utc::now() + chrono::Duration::seconds(1)).format("%Y%m%dT%H%M%S%.3fZ")
    );
    let text = std::fs::read_to_string(fx.manifest_path(&second)).unwrap();
    std::fs::write(fx.manifest_path(&planted), text.replace(&second, &planted)).unwrap();
    fx.replace_archive(&planted, &fx.archive_bytes(&second));
    let index = |id: &str| fx.repo.join(Object::Index(id.to_string()).key());
    if index(&second).exists() {
        std::fs::copy(index(&second), index(&planted)).unwrap();
    }

    // The migration prune docs/kubernetes.md prescribes, with the tightest policy.
    let report = fx
        .agent()
        .env("GWB_ALLOW_UNSIGNED", "true")
        .args(["prune", "--keep-last", "1"])
        .ok();
    for signed in [&first, &second] {
        assert!(
            fx.manifest_path(signed).exists(),
            "the migration prune forgot signed snapshot {signed}: {report}"
        );
    }
    let target = fx.root.join("restored");
    let err = fx.assert_restore_fails(
        fx.restore(&target).env("GWB_ALLOW_UNSIGNED", "true"),
        &target,
    );
    assert!(
        err.contains(&planted) && err.contains("no signature"),
        "{err}"
    );
}

/// The desktop user, who owns the home that root restores and updates on a host install.
const DESKTOP: u32 = 1000;

/// The marker's temporary name, which `write_json` creates and renames.
const MARKER_TEMP: &str = ".ghostwire-backup-restore.partial";

/// What only root may write: a file and a directory, each holding something to keep.
struct RootOnly {
    dir: std::path::PathBuf,
}

impl RootOnly {
    fn new(fx: &Fixture) -> Self {
        use std::os::unix::fs::PermissionsExt;
        // The desktop user must reach the volume inside the fixture's directory.
        std::fs::set_permissions(&fx.root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = fx.root.join("root-only");
        std::fs::create_dir_all(dir.join("dir")).unwrap();
        std::fs::write(dir.join("file"), b"root's own file\n").unwrap();
        std::fs::write(dir.join("dir/.bashrc"), b"# root's .bashrc\n").unwrap();
        for (path, mode) in [(dir.join("dir"), 0o700), (dir.clone(), 0o700)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        Self { dir }
    }

    fn file(&self) -> std::path::PathBuf {
        self.dir.join("file")
    }

    /// Every path below, with its content and mode: compared byte for byte.
    fn state(&self) -> std::collections::BTreeMap<String, String> {
        tree(&self.dir, &|_| false)
    }
}

/// Runs `script` with `sh` as the desktop user in `dir`.
fn as_desktop_user(dir: &Path, script: &str) {
    use std::os::unix::process::CommandExt;
    let ran = std::process::Command::new("/bin/sh")
        .args(["-c", script])
        .current_dir(dir)
        .uid(DESKTOP)
        .gid(DESKTOP)
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "the desktop user's `{script}` failed: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
}

/// Snapshot `id` restored into a new volume the desktop user owns, as root restores it.
fn desktop_volume(fx: &Fixture, id: &str) -> std::path::PathBuf {
    let volume = fx.root.join("volume");
    fx.restore(&volume)
        .args(["--snapshot", id, "--chown", "1000:1000"])
        .ok();
    std::os::unix::fs::chown(&volume, Some(DESKTOP), Some(DESKTOP)).unwrap();
    volume
}

fn is_regular_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
}

#[test]
fn a_marker_name_planted_as_a_link_or_fifo_is_never_opened() {
    let (fx, first) = Fixture::backed_up(&[]);
    let second = fx.backup().ok();
    let root_only = RootOnly::new(&fx);
    let before = root_only.state();
    let volume = desktop_volume(&fx, &first);
    let marker = volume.join(".ghostwire-backup-restore.json");
    let plant_temp = || {
        let link = format!("ln -sfn {} {MARKER_TEMP}", root_only.file().display());
        as_desktop_user(&volume, &link);
    };

    // The marker's temporary name as a link to root's file: removed, never followed.
    plant_temp();
    fx.restore(&volume)
        .args(["--update", "--snapshot", &second])
        .ok();
    plant_temp();
    fx.restore(&volume)
        .args(["--force", "--snapshot", &first])
        .ok();
    // A marker the desktop user wrote, `prestaged` and naming an older snapshot, with the
    // link beside it: the start catches the volume up (checking every file) and follows
    // nothing.
    let forged = serde_json::json!({
        "snapshot": first, "restored_at": "2099-01-01T00:00:00Z", "agent_version": "0",
        "gate": "ok", "prestaged": true
    });
    as_desktop_user(
        &volume,
        &format!(
            "rm -f .ghostwire-backup-restore.json && echo '{forged}' > .ghostwire-backup-restore.json"
        ),
    );
    plant_temp();
    crate::signed::release_lease(&fx.repo, Some(&signing_keys().signing_key), &second);
    fx.restore(&volume)
        .args([
            "--if-empty",
            "--snapshot",
            &second,
            "--lease-owner",
            "other/ns/pod",
        ])
        .ok();
    assert_eq!(
        root_only.state(),
        before,
        "root's file was written through the link"
    );
    assert!(
        is_regular_file(&marker),
        "the marker is not a file of its own"
    );
    assert!(
        !volume.join(MARKER_TEMP).exists(),
        "the planted link was left"
    );
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    assert_eq!(written["snapshot"], second.as_str());

    // The marker itself as a link, then as a FIFO: refused naming it, nothing followed.
    for plant in [
        format!(
            "rm -f .ghostwire-backup-restore.json && ln -s {} .ghostwire-backup-restore.json",
            root_only.file().display()
        ),
        "rm -f .ghostwire-backup-restore.json && mkfifo .ghostwire-backup-restore.json".to_string(),
    ] {
        as_desktop_user(&volume, &plant);
        for args in [
            ["--update", "--snapshot", &second],
            ["--force", "--snapshot", &first],
        ] {
            fx.restore(&volume).args(args).fails_with(&[
                ".ghostwire-backup-restore.json is",
                "never reads or writes through",
                "remove it",
            ]);
        }
    }
    assert_eq!(root_only.state(), before, "root's file changed");
}

#[test]
fn aside_directory_names_planted_as_links_are_never_followed() {
    let (fx, first) = Fixture::backed_up(&[]);
    let second = fx.backup().ok();
    let root_only = RootOnly::new(&fx);
    let before = root_only.state();
    let volume = desktop_volume(&fx, &first);
    // One link a second for the next three minutes (and the last few), each to root's
    // directory, as the desktop user plants them.
    let now = chrono::Utc::now().timestamp();
    let script: String = (now - 5..now + 180)
        .map(|second| {
            let time = chrono::DateTime::from_timestamp(second, 0).unwrap();
            format!(
                "ln -s {} .ghostwire-backup-replaced-{}\n",
                root_only.dir.join("dir").display(),
                time.format("%Y%m%dT%H%M%SZ")
            )
        })
        .collect();
    as_desktop_user(&volume, &script);
    let planted = std::fs::read_dir(&volume).unwrap().count();

    fx.restore(&volume)
        .args(["--update", "--snapshot", &second])
        .ok();
    fx.restore(&volume)
        .args(["--force", "--snapshot", &first])
        .ok();
    assert_eq!(
        root_only.state(),
        before,
        "something was moved into root's directory"
    );
    // The forced restore's entries went into a directory of its own, beside the links.
    let made: Vec<_> = std::fs::read_dir(&volume)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("-replaced-") && !p.is_symlink())
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    assert!(
        made[0].join(".bashrc").is_file(),
        "{} lacks .bashrc",
        made[0].display()
    );
    let links = std::fs::read_dir(&volume)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_symlink())
        .count();
    assert!(
        links > 180 && planted > links,
        "the planted links were changed"
    );
}

#[test]
fn a_file_rewritten_with_its_stat_kept_is_fetched_not_kept() {
    let (fx, first) = Fixture::backed_up(&[]);
    let second = fx.backup().ok();
    let volume = desktop_volume(&fx, &first);
    let bashrc = volume.join(".bashrc");
    let snapshot_bashrc = std::fs::read(fx.home().join(".bashrc")).unwrap();
    let before = std::fs::metadata(&bashrc).unwrap();
    // The attack, as the desktop user: same size and mode, the old mtime set back.
    as_desktop_user(
        &volume,
        "m=$(stat -c %Y .bashrc) && sed -i 's/alias ll=/alias l2=/' .bashrc && touch -d @$m .bashrc",
    );
    let rewritten = std::fs::read(&bashrc).unwrap();
    let after = std::fs::metadata(&bashrc).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        assert_ne!(
            rewritten, snapshot_bashrc,
            "the desktop user's rewrite did nothing"
        );
        assert_eq!(
            (after.len(), after.mode(), after.mtime(), after.mtime_nsec()),
            (
                before.len(),
                before.mode(),
                before.mtime(),
                before.mtime_nsec()
            ),
            "the rewrite must keep the stat for this test to mean anything"
        );
    }

    // Refused as a changed volume, naming the file; nothing changed.
    fx.restore(&volume)
        .args(["--update", "--snapshot", &second])
        .fails_with(&["changed since it was restored", ".bashrc", "--force"]);
    assert_eq!(std::fs::read(&bashrc).unwrap(), rewritten);
    // Forced: fetched from the repository, the rewritten one kept aside.
    fx.restore(&volume)
        .args(["--update", "--force", "--snapshot", &second])
        .ok();
    assert_eq!(std::fs::read(&bashrc).unwrap(), snapshot_bashrc);
    let aside = std::fs::read_dir(&volume)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("-replaced-"))
        .expect("an aside directory");
    assert_eq!(std::fs::read(aside.join(".bashrc")).unwrap(), rewritten);
}

#[test]
fn a_verify_cut_during_the_cipher_check_exits_cleanly() {
    let fx = Fixture::new(&[]);
    // 64 MiB more: the check of every page's HMAC takes a while.
    crate::deadlines::grow_database(&fx.profile.db(), &fx.profile.key, 64);
    let id = fx.backup().ok();
    let mut verify = fx
        .verify_with(fx.agent(), &id)
        .env("GWB_LOG", "ghostwire_backup=debug,info")
        .spawn(std::process::Stdio::null(), std::process::Stdio::piped());
    let stderr = verify.watch_stderr();
    // The event: the check has begun reading the pages.
    stderr.wait_for(
        &["cipher_integrity_check: verifying every page"],
        std::time::Duration::from_secs(120),
    );
    // SAFETY: kill only sends a signal to a process this test started.
    assert_eq!(unsafe { libc::kill(verify.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_for(
        "verify to exit after SIGTERM",
        std::time::Duration::from_secs(30),
        || verify.try_wait().unwrap(),
    );
    let log = stderr.all();
    eprintln!(
        "verify exited {status} after SIGTERM: {}",
        log.lines().last().unwrap_or("")
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        None,
        "verify died of a signal: {status}\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    if !status.success() {
        assert!(log.contains("stopped by SIGTERM"), "{status}\n{log}");
    }
}

#[test]
fn a_staging_directory_swapped_for_a_link_mid_unpack_redirects_nothing() {
    let fx = Fixture::new(&["--attachments", "200"]);
    let id = fx.backup().ok();
    let root_only = RootOnly::new(&fx);
    let before = root_only.state();
    let volume = fx.root.join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::os::unix::fs::chown(&volume, Some(DESKTOP), Some(DESKTOP)).unwrap();
    let mut restore = fx
        .restore(&volume)
        .args(["--snapshot", &id, "--chown", "1000:1000"])
        .env("GWB_LOG", "ghostwire_backup=debug,info")
        .spawn(std::process::Stdio::null(), std::process::Stdio::piped());
    let stderr = restore.watch_stderr();
    // The event: the unpack has begun; the desktop user swaps the directory for a link to
    // root's directory (which holds a `.bashrc` the snapshot has too).
    stderr.wait_for(
        &["entering", "download and unpack"],
        std::time::Duration::from_secs(60),
    );
    as_desktop_user(
        &volume,
        &format!(
            "mv .ghostwire-backup-restore.tmp moved-away && ln -s {} .ghostwire-backup-restore.tmp",
            root_only.dir.join("dir").display()
        ),
    );
    let status = restore.wait().unwrap();
    let log = stderr.all();
    assert_eq!(
        root_only.state(),
        before,
        "the restore wrote through the link\n{log}"
    );
    // Mostly the swap lands mid-unpack and the restore stops at the link ("… is a symbolic
    // link"); landing between the `mv` and the `ln`, it stops at the missing directory.
    assert!(
        !status.success(),
        "the restore went on past the swap:\n{log}"
    );
    assert!(log.contains(".ghostwire-backup-restore.tmp"), "{log}");
    assert!(!volume.join(".ghostwire-backup-restore.json").exists());
}

/// Exit code of a command that refused something untrustworthy.
const UNTRUSTED: i32 = 9;

/// What a bucket writer leaves where a snapshot's signature was: a write, not a delete.
fn junk_signature(fx: &Fixture, id: &str) {
    std::fs::write(
        fx.repo.join(Object::Signature(id.to_string()).key()),
        "untrusted comment: junk\nnot a signature\n",
    )
    .unwrap();
}

/// The snapshot a sidecar's lease hands over, once it stopped with its final snapshot.
fn handed_over(fx: &Fixture) -> String {
    let lease: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.repo.join(Object::Lease.key())).unwrap()).unwrap();
    lease["final_snapshot"].as_str().unwrap().to_string()
}

#[test]
fn a_rollback_through_handoff_with_junk_on_the_newer_signatures_is_refused() {
    let fx = Fixture::new(&["--messages", "5"]);
    let target = fx.root.join("green");
    let blue = Sidecar::start(&fx, "ghostwire-0", fx.home(), &[]);
    blue.wait_started("blue");
    blue.stop();
    let blue_final = handed_over(&fx);
    let blues_lease = std::fs::read(fx.repo.join(Object::Lease.key())).unwrap();
    let green = Sidecar::start(&fx, "ghostwire-green-0", fx.home(), &[]);
    green.wait_started("green");
    green.stop();
    let green_final = handed_over(&fx);
    assert!(green_final > blue_final);

    // Blue's older, genuinely signed lease put back, and junk over the signature of the
    // snapshot green took after it: the one thing that showed the lease was old.
    std::fs::write(fx.repo.join(Object::Lease.key()), &blues_lease).unwrap();
    junk_signature(&fx, &green_final);
    let err = fx
        .restore(&target)
        .args(["--snapshot", "handoff"])
        .fails_with_code(UNTRUSTED, &[&green_final, "not trustworthy", &blue_final]);
    assert!(err.contains("--snapshot ID"), "names no way out:\n{err}");
    assert!(!target.exists(), "a refused handoff wrote its target");

    // With the signatures intact, the older lease is refused as put back (a lease
    // rollback), and an explicit id is a person's choice.
    fx.agent().args(["forget", &green_final]).ok();
    let green = Sidecar::start(&fx, "ghostwire-green-1", fx.home(), &[]);
    green.wait_started("green");
    green.stop();
    std::fs::write(fx.repo.join(Object::Lease.key()), &blues_lease).unwrap();
    fx.restore(&target)
        .args(["--snapshot", "handoff"])
        .fails_with_code(UNTRUSTED, &["put back", "ghostwire-green-1"]);
    assert!(!target.exists(), "a refused handoff wrote its target");
    let restored = fx.restore(&target).args(["--snapshot", &blue_final]).ok();
    assert_eq!(restored, blue_final);
}

#[test]
fn a_rollback_through_final_with_junk_on_the_newest_final_signature_is_refused() {
    let fx = Fixture::new(&["--messages", "5"]);
    let target = fx.root.join("restored");
    // Two final snapshots (as sidecars take them at shutdown), then a scheduled one: a
    // full snapshot, since an incremental one on the junked final could not restore either.
    let older_final = fx.backup().arg("--final").ok();
    let newest_final = fx.backup().arg("--final").ok();
    let scheduled = fx.backup().args(["--full-every", "0"]).ok();
    assert!(older_final < newest_final && newest_final < scheduled);

    junk_signature(&fx, &newest_final);
    fx.restore(&target)
        .args(["--snapshot", "final"])
        .fails_with_code(UNTRUSTED, &[&newest_final, "not trustworthy", &older_final]);
    assert!(!target.exists(), "a refused restore wrote its target");
    // `latest` is still the scheduled snapshot, newer than the junk; an explicit id is
    // a person's choice.
    assert_eq!(
        fx.restore(&target).args(["--snapshot", "latest"]).ok(),
        scheduled
    );
    std::fs::remove_dir_all(&target).unwrap();
    assert_eq!(
        fx.restore(&target).args(["--snapshot", &older_final]).ok(),
        older_final
    );
}

/// Copies the objects of the S3 repository `from` whose keys start with one of
/// `prefixes` into the local repository `to`, byte for byte: what a bucket writer with
/// access to both does.
fn copy_from_s3(server: &S3Server, from: &str, to: &Path, prefixes: &[&str]) -> usize {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let repo = open_in_process(from, &server.endpoint, 3).await;
        let mut copied = 0;
        for object in repo.store().list("").await.unwrap() {
            if !prefixes.iter().any(|prefix| object.key.starts_with(prefix)) {
                continue;
            }
            let bytes = repo
                .store()
                .get_bounded(&object.key, 1 << 30)
                .await
                .unwrap();
            let path = to.join(&object.key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
            copied += 1;
        }
        copied
    })
}

#[test]
fn signed_objects_copied_from_another_repository_with_the_same_key_are_refused() {
    // One key pair, two repositories: X a local directory, Y on the S3 server, Y's
    // snapshot newer and holding a file X's does not.
    let (fx, x_snapshot) = Fixture::backed_up(&["--messages", "5"]);
    let server = S3Server::with_bucket("other");
    std::fs::write(fx.home().join("planted.txt"), "from repository Y").unwrap();
    let y_snapshot = fx.backup_with(server.agent("s3://other/y")).ok();
    assert!(y_snapshot > x_snapshot);
    let target = fx.root.join("restored");

    // Y's signed snapshot copied into X: refused, naming the repository mismatch.
    let snapshot_objects =
        [Object::Manifest, Object::Archive, Object::Index].map(Object::prefix_of);
    // The manifest, its signature, the index and the archive's parts.
    let copied = copy_from_s3(&server, "s3://other/y", &fx.repo, &snapshot_objects);
    assert!(copied >= 4, "{copied}");
    let mismatch = ["in repository", "not in this one", &y_snapshot];
    fx.restore(&target).fails_with_code(UNTRUSTED, &mismatch);
    fx.restore(&target)
        .args(["--snapshot", &y_snapshot])
        .fails_with_code(UNTRUSTED, &mismatch);
    let listed = fx.agent().arg("snapshots").ok();
    assert!(
        listed.lines().any(|line| line.starts_with(&y_snapshot)
            && line.contains("NOT TRUSTWORTHY")
            && line.contains("not in this one")),
        "{listed}"
    );
    assert!(!target.exists(), "a refused restore wrote its target");

    // Y's repository.json as well, so that Y's snapshot names "this" repository and X's
    // own look foreign: nothing is chosen automatically either.
    let x_record = std::fs::read(fx.repo.join(REPOSITORY_ID)).unwrap();
    copy_from_s3(&server, "s3://other/y", &fx.repo, &[REPOSITORY_ID]);
    assert_ne!(
        std::fs::read(fx.repo.join(REPOSITORY_ID)).unwrap(),
        x_record
    );
    fx.restore(&target)
        .fails_with_code(UNTRUSTED, &["in another repository", &x_snapshot]);
    assert!(!target.exists(), "a refused restore wrote its target");

    // The way out the errors name: the original repository.json back, the copy forgotten.
    std::fs::write(fx.repo.join(REPOSITORY_ID), &x_record).unwrap();
    fx.agent().args(["forget", &y_snapshot]).ok();
    assert_eq!(fx.restore(&target).ok(), x_snapshot);
    assert!(!target.join("planted.txt").exists());
}

/// Snapshot `from`'s manifest planted as snapshot `id`, signed with the real signing key
/// the way signatures were made before they named a repository: what a manifest copied
/// from another repository's old history looks like.
fn plant_legacy_signed(fx: &Fixture, from: &str, id: &str) {
    let manifest = std::fs::read_to_string(fx.manifest_path(from))
        .unwrap()
        .replace(from, id);
    let signer = ghostwire_backup::signing::Signer::load(&signing_keys().signing_key).unwrap();
    let key = Object::Manifest(id.to_string()).key();
    std::fs::write(fx.manifest_path(id), &manifest).unwrap();
    std::fs::write(
        fx.repo.join(format!("{key}.minisig")),
        signer.sign(&key, None, manifest.as_bytes()),
    )
    .unwrap();
}

#[test]
fn a_manifest_signed_before_repositories_had_ids_cannot_become_latest() {
    let (fx, named) = Fixture::backed_up(&["--messages", "5"]);
    let target = fx.root.join("restored");
    // Old history, signed before ids, still verifies: an old snapshot stays listed.
    let old = "20250101T000000.000Z-0000a0a0";
    plant_legacy_signed(&fx, &named, old);
    assert_eq!(snapshot_ids(&mut fx.agent()), [old, named.as_str()]);
    // One newer than the first snapshot that names the repository cannot be this
    // repository's: refused, and latest does not pass over it.
    let now = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let copied = format!("{now}-0000b0b0");
    plant_legacy_signed(&fx, &named, &copied);
    fx.restore(&target)
        .fails_with_code(UNTRUSTED, &[&copied, "names no repository", &named]);
    assert!(!target.exists(), "a refused restore wrote its target");
    fx.agent().args(["forget", &copied]).ok();
    assert_eq!(fx.restore(&target).ok(), named);
}

#[test]
fn the_signed_list_of_manifests_is_a_cache_that_junk_only_bypasses() {
    let (fx, first) = Fixture::backed_up(&["--messages", "5"]);
    std::fs::write(fx.home().join("notes.txt"), "a change").unwrap();
    let second = fx.backup().ok();
    let list = fx.repo.join(MANIFEST_LIST);
    let listed: serde_json::Value = serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
    assert!(listed["entries"][&first].is_object() && listed["entries"][&second].is_object());
    let both = [first.as_str(), second.as_str()];

    // The newest manifest replaced with junk of its own size: the signed list's copy, the
    // genuine manifest, is what counts (this is the list being read, not the object).
    let manifest = fx.manifest_path(&second);
    let size = std::fs::metadata(&manifest).unwrap().len() as usize;
    std::fs::write(&manifest, "x".repeat(size)).unwrap();
    assert_eq!(snapshot_ids(&mut fx.agent()), both);
    // Junk of another size is read and refused like any junk: latest does not pass it.
    std::fs::write(&manifest, "junk").unwrap();
    let target = fx.root.join("restored");
    fx.restore(&target)
        .fails_with_code(UNTRUSTED, &[&second, "not trustworthy"]);
    fx.agent().args(["forget", &second]).ok();

    // The list itself replaced with junk: every manifest is read one by one, and the next
    // backup writes a good list over it.
    std::fs::write(&list, "junk").unwrap();
    assert_eq!(snapshot_ids(&mut fx.agent()), [first.as_str()]);
    let third = fx.backup().ok();
    let listed: serde_json::Value = serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
    assert!(listed["entries"][&third].is_object(), "{listed}");
    assert!(
        listed["entries"][&second].is_null(),
        "a forgotten snapshot stays listed"
    );
    assert_eq!(fx.restore(&target).ok(), third);
}
