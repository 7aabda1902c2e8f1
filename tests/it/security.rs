//! What the backup side can and cannot do, and what never reaches a log: the backup side
//! holds only the age recipient (a public key), so it cannot read back what it wrote; no
//! secret (Signal's database key, the age identity, the S3 secret key and session token)
//! appears in any output, even with debug or trace logging, nor an age secret key pasted
//! where a recipient belongs; an identity file others can read draws a warning; the manual
//! recovery recipe in docs/format.md deletes nothing outside the volume.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::*;

fn fixture() -> Fixture {
    Fixture::new(&["--messages", "200", "--attachments", "4"])
}

/// The `AGE-SECRET-KEY-…` line of an identity file.
fn age_secret(identity: &Path) -> String {
    std::fs::read_to_string(identity)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string()
}

/// Every file below `dir`, read whole.
fn all_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(all_bytes(&path));
        } else {
            found.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_backup_side_cannot_read_back_what_it_wrote() {
    let fx = fixture();
    let id = fx.backup().ok();
    let repo = &fx.repo;

    // All the backup side has is its configuration: the recipient. As an identity it is
    // refused, by the agent and by stock age.
    let public_only = fx.root.join("recipient.txt");
    std::fs::write(&public_only, format!("{}\n", fx.recipient)).unwrap();
    std::fs::set_permissions(&public_only, std::fs::Permissions::from_mode(0o600)).unwrap();
    fx.agent()
        .args(["verify", "--snapshot", &id])
        .arg("--identity")
        .arg(&public_only)
        .fails_with(&["is not an age identity file"]);
    let archive = fx.root.join("archive.age");
    std::fs::write(&archive, fx.archive_bytes(&id)).unwrap();
    let age = require(Part::Age);
    for identity in [&public_only, &fx.root.join("missing.txt")] {
        let stock = TestCommand::new(&age)
            .arg("-d")
            .arg("-i")
            .arg(identity)
            .arg(&archive)
            .run();
        assert!(!stock.status.success(), "age decrypted:\n{stock}");
        assert!(stock.stdout.is_empty(), "{stock}");
    }
    // The identity does decrypt it: the failures above are about the key, not the file.
    TestCommand::new(&age)
        .arg("-d")
        .arg("-i")
        .arg(&fx.identity)
        .arg(&archive)
        .ok();

    // Nothing the backup wrote holds plaintext a reader could use without the identity:
    // not Signal's database key, not an attachment's bytes, not the secret key.
    let attachment = fx.profile.summary["attachments"][0].as_str().unwrap();
    let attachment = std::fs::read(
        fx.profile
            .home
            .join(".config/Signal/attachments.noindex")
            .join(attachment),
    )
    .unwrap();
    let secret = age_secret(&fx.identity);
    let mut written = all_bytes(repo);
    written.extend(all_bytes(&fx.root.join("staging")));
    for (path, bytes) in &written {
        assert!(
            !contains(bytes, fx.profile.key.as_bytes()),
            "{path:?} holds the database key"
        );
        assert!(
            !contains(bytes, &attachment[..64]),
            "{path:?} holds attachment plaintext"
        );
        assert!(
            !contains(bytes, secret.as_bytes()),
            "{path:?} holds the age secret key"
        );
    }
    // The staging directory keeps nothing once the backup is done.
    let staged: Vec<_> = written
        .iter()
        .filter(|(p, _)| p.starts_with(fx.root.join("staging")))
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(staged, vec!["lock".to_string()]);
}

#[test]
fn debug_logs_show_no_secret_through_a_whole_backup_and_restore() {
    let fx = fixture();
    let server = S3Server::with_bucket("ghostwire");
    let s3_secret = "s3-SECRET-4f9a2c1e7b3d8a6f0e5c9b2a7d4f1e8c";
    let age_secret = age_secret(&fx.identity);
    let agent = |format: &str| {
        let mut command = server.agent("s3://ghostwire/p");
        command
            .env("AWS_SECRET_ACCESS_KEY", s3_secret)
            .env("GWB_LOG", "debug")
            .env("GWB_LOG_FORMAT", format);
        command
    };
    let mut outputs = Vec::new();
    for format in ["text", "json"] {
        let backup = fx.backup_with(agent(format)).run();
        let id = backup.stdout_trimmed().to_string();
        outputs.push(backup);
        for verb in [
            &["snapshots", "--json"][..],
            &["verify", "--quick", "--snapshot", &id],
        ] {
            outputs.push(agent(format).args(verb).run());
        }
        outputs.push(fx.verify_with(agent(format), &id).run());
        let target = fx.root.join(format!("target-{format}"));
        outputs.push(fx.restore_with(agent(format), &target).run());
    }
    let mut seen = 0;
    for output in &outputs {
        assert!(output.status.success(), "{output}");
        let text = format!("{}{}", output.stdout, output.stderr);
        seen += text.len();
        for (what, secret) in [
            ("Signal's database key", fx.profile.key.as_str()),
            (
                "Signal's database key",
                fx.profile.key.to_uppercase().as_str(),
            ),
            ("the age secret key", age_secret.as_str()),
            ("the S3 secret key", s3_secret),
        ] {
            assert!(
                !text.contains(secret),
                "{what} appears in the output:\n{text}"
            );
        }
    }
    // Debug logging was really on: the test looked at plenty of output.
    assert!(seen > 20_000, "only {seen} bytes of output");
}

#[test]
fn an_identity_file_others_can_read_draws_a_warning() {
    let fx = fixture();
    fx.backup().ok();
    let verify = |mode: u32| {
        std::fs::set_permissions(&fx.identity, std::fs::Permissions::from_mode(mode)).unwrap();
        let verify = fx
            .agent()
            .arg("verify")
            .arg("--identity")
            .arg(&fx.identity)
            .run();
        assert!(verify.status.success(), "{verify}");
        verify
    };
    for loose in [0o644, 0o640, 0o604] {
        let verify = verify(loose);
        assert!(
            verify.stderr.contains("readable by other users")
                && verify.stderr.contains("chmod 600"),
            "mode {loose:o}:\n{verify}"
        );
    }
    for tight in [0o600, 0o400] {
        let verify = verify(tight);
        assert!(
            !verify.stderr.contains("readable by other users"),
            "mode {tight:o}:\n{verify}"
        );
    }
    // A Kubernetes Secret's file: root's, 0440, read by the agent through its group. (The
    // suite runs as root; as another owner the file reads like a mounted Secret.)
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&fx.identity, Some(1000), Some(0)).unwrap();
        let verify = verify(0o440);
        assert!(
            !verify.stderr.contains("readable by other users"),
            "a Secret's 0440 file:\n{verify}"
        );
    }
}

#[test]
fn a_secret_key_pasted_as_a_recipient_is_described_never_printed() {
    let plain = Plain::new();
    let secret = age_secret(&plain.identity);
    // What identifies the key: everything after its public prefix, in either case.
    let body = secret["AGE-SECRET-KEY-".len()..].to_ascii_lowercase();
    let file = plain.root.join("recipients.txt");
    std::fs::write(&file, format!("# ours\n  \"{secret}\"  \n")).unwrap();
    let repo = plain.repo.clone();
    for format in ["text", "json"] {
        let agent = || {
            let mut agent = agent_for(&repo);
            agent.env("GWB_LOG_FORMAT", format);
            agent
        };
        let given = [
            (
                plain
                    .backup_by(agent())
                    .arg("--allow-no-signal")
                    .args(["--recipient", &secret.to_ascii_lowercase()])
                    .run(),
                "the value given to --recipient",
            ),
            (
                plain
                    .backup_by(agent())
                    .arg("--allow-no-signal")
                    .env("GWB_RECIPIENTS", format!("{},'{secret}'", plain.recipient))
                    .run(),
                "value 2 of the 2 given to --recipient",
            ),
            (
                plain
                    .backup_by(agent())
                    .arg("--allow-no-signal")
                    .arg("--recipients-file")
                    .arg(&file)
                    .run(),
                "line 2 of the recipients file",
            ),
        ];
        for (ran, origin) in given {
            assert!(!ran.status.success(), "{ran}");
            let output = format!("{}{}", ran.stdout, ran.stderr);
            assert!(
                output.contains(origin) && output.contains("secret* key"),
                "{ran}"
            );
            assert!(
                !output.to_ascii_lowercase().contains(&body),
                "the secret key appears in the output:\n{ran}"
            );
        }
    }
    if repo.exists() {
        assert!(snapshot_ids(&mut agent_for(&repo)).is_empty());
    }
}

/// docs/format.md's `delete_listed`, the fenced bash block that defines it, as written there
/// (incremental.rs restores a real chain with it).
pub fn documented_delete_listed() -> String {
    let doc = std::fs::read_to_string(repo_root().join("docs/format.md")).unwrap();
    let blocks: Vec<&str> = doc
        .split("```bash\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(block, _)| block))
        .filter(|block| block.contains("delete_listed() ("))
        .collect();
    assert_eq!(
        blocks.len(),
        1,
        "docs/format.md must define delete_listed in one ```bash block"
    );
    blocks[0].to_string()
}

#[test]
fn the_documented_deletion_recipe_deletes_nothing_outside_the_volume() {
    let recipe = documented_delete_listed();
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    let volume = dir.path().join("volume");
    let list = volume.join(".ghostwire-backup-deleted");
    let build = || {
        let _ = std::fs::remove_dir_all(&volume);
        let _ = std::fs::remove_dir_all(&outside);
        for (path, text) in [
            (outside.join("keep.txt"), "outside"),
            (outside.join("sub/keep.txt"), "outside"),
            (volume.join("gone.txt"), "listed"),
            (volume.join("dir/sub/gone.txt"), "listed"),
            (volume.join("stay.txt"), "not listed"),
        ] {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        std::os::unix::fs::symlink("../outside", volume.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, volume.join("abs-link")).unwrap();
    };
    let delete = |entries: &[&str]| {
        let mut bytes = Vec::new();
        for entry in entries {
            bytes.extend_from_slice(entry.as_bytes());
            bytes.push(0);
        }
        std::fs::write(&list, bytes).unwrap();
        TestCommand::new("bash")
            .arg("-c")
            .arg(format!("{recipe}\ndelete_listed \"$1\""))
            .arg("recipe")
            .arg(&volume)
            .run()
    };
    // Everything, and everything but the list.
    let all = |_: &str| false;
    let not_the_list = |path: &str| path == ".ghostwire-backup-deleted";
    build();
    let outside_before = tree(&outside, &all);
    let absolute = outside.join("keep.txt");
    // Entries ghostwire-backup never writes: the whole list is refused, nothing deleted.
    for hostile in [
        "../outside/keep.txt",
        absolute.to_str().unwrap(),
        "dir/../../outside/keep.txt",
        "..",
        ".",
        "",
        "link/",
        "dir//sub",
        "./gone.txt",
    ] {
        build();
        let volume_before = tree(&volume, &all);
        let ran = delete(&["gone.txt", hostile, "dir/sub"]);
        assert!(!ran.status.success(), "{hostile:?} was accepted:\n{ran}");
        assert!(ran.stderr.contains("nothing deleted"), "{ran}");
        assert_eq!(tree(&outside, &all), outside_before, "{hostile:?}:\n{ran}");
        assert_eq!(
            tree(&volume, &not_the_list),
            volume_before,
            "{hostile:?}:\n{ran}"
        );
    }
    // Through a symlinked parent, relative or absolute: skipped; the rest is deleted, and a
    // listed symlink goes itself, not what it points to.
    build();
    let ran = delete(&[
        "gone.txt",
        "link/keep.txt",
        "link/sub",
        "abs-link/keep.txt",
        "dir/sub",
        "link",
        "missing/file",
    ]);
    assert!(ran.status.success(), "{ran}");
    assert!(ran.stderr.contains("link/keep.txt"), "{ran}");
    assert_eq!(tree(&outside, &all), outside_before, "{ran}");
    let left: Vec<String> = tree(&volume, &all).into_keys().collect();
    assert_eq!(left, ["abs-link", "dir", "stay.txt"], "{ran}");
}

#[test]
fn trace_logs_show_no_s3_secret_key_or_session_token() {
    let plain = Plain::new();
    let server = S3Server::with_bucket("ghostwire");
    let s3_secret = "s3-SECRET-9c2e7a4f1b8d3e6a0f5c2b9d7e4a1f8c";
    let session_token = "FwoGZXIvYXdzSESSION-TOKEN-7d3a9e1c5b2f8a4e6c0d9b3f7a1e5c2d";
    let agent = |format: &str| {
        let mut agent = server.agent("s3://ghostwire/p");
        agent
            .env("AWS_SECRET_ACCESS_KEY", s3_secret)
            .env("AWS_SESSION_TOKEN", session_token)
            .env("GWB_LOG", "trace")
            .env("RUST_LOG", "trace")
            .env("GWB_LOG_FORMAT", format);
        agent
    };
    let mut outputs = Vec::new();
    for format in ["text", "json"] {
        let backup = plain
            .backup_by(agent(format))
            .args(["--allow-no-signal", "--recipient", &plain.recipient])
            .run();
        let id = backup.stdout_trimmed().to_string();
        outputs.push(backup);
        outputs.push(agent(format).args(["snapshots", "--json"]).run());
        outputs.push(
            agent(format)
                .args(["restore", "--snapshot", &id, "--identity"])
                .arg(&plain.identity)
                .arg("--target")
                .arg(plain.root.join(format!("target-{format}")))
                .run(),
        );
    }
    let mut sdk_debug = 0;
    for output in &outputs {
        assert!(output.status.success(), "{output}");
        let text = format!("{}{}", output.stdout, output.stderr);
        // The SDK's events are still there, up to debug.
        sdk_debug += (text.lines())
            .filter(|l| l.contains("DEBUG") && l.contains("S3.PutObject"))
            .count();
        for (what, secret) in [
            ("the S3 secret key", s3_secret),
            ("the S3 session token", session_token),
        ] {
            assert!(
                !text.contains(secret),
                "{what} appears in the output:\n{text}"
            );
        }
    }
    assert!(sdk_debug > 0, "no debug event of the AWS SDK in the output");
}
