//! What the backup side can and cannot do, and what never reaches a log: the backup side
//! holds only the age recipient (a public key), so it cannot read back what it wrote; no
//! secret (Signal's database key, the age identity, the S3 secret key) appears in any output,
//! even with debug logging; an identity file others can read draws a warning.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    profile: Profile,
    identity: PathBuf,
    recipient: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let profile = make_profile(
        &root.join("home"),
        &["--messages", "200", "--attachments", "4"],
    );
    let (identity, recipient) = keygen(&root);
    Setup {
        _dir: dir,
        root,
        profile,
        identity,
        recipient,
    }
}

fn backup(s: &Setup, command: &mut Command) -> Output {
    run(command
        .arg("backup")
        .arg("--source")
        .arg(&s.profile.home)
        .arg("--recipient")
        .arg(&s.recipient)
        .arg("--staging-dir")
        .arg(s.root.join("staging")))
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
    let s = setup();
    let repo = s.root.join("backups");
    let output = backup(&s, agent().env("GWB_REPO", &repo));
    assert!(output.status.success());
    let id = String::from_utf8(output.stdout).unwrap().trim().to_string();

    // All the backup side has is its configuration: the recipient. As an identity it is
    // refused, by the agent and by stock age.
    let public_only = s.root.join("recipient.txt");
    std::fs::write(&public_only, format!("{}\n", s.recipient)).unwrap();
    std::fs::set_permissions(&public_only, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = run_err(
        agent()
            .env("GWB_REPO", &repo)
            .args(["verify", "--snapshot", &id])
            .arg("--identity")
            .arg(&public_only),
    );
    assert!(err.contains("is not an age identity file"), "{err}");
    let archive = repo.join(format!("archives/{id}.tar.zst.age"));
    for identity in [&public_only, &s.root.join("missing.txt")] {
        let stock = Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(identity)
            .arg(&archive)
            .output()
            .expect("Debian's age is installed (scripts/test.sh)");
        assert!(!stock.status.success(), "age decrypted with {identity:?}");
        assert!(stock.stdout.is_empty());
    }
    // The identity does decrypt it: the failures above are about the key, not the file.
    let stock = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&s.identity)
        .arg(&archive)
        .output()
        .unwrap();
    assert!(stock.status.success());

    // Nothing the backup wrote holds plaintext a reader could use without the identity:
    // not Signal's database key, not an attachment's bytes, not the secret key.
    let attachment = s.profile.summary["attachments"][0].as_str().unwrap();
    let attachment = std::fs::read(
        s.profile
            .home
            .join(".config/Signal/attachments.noindex")
            .join(attachment),
    )
    .unwrap();
    let identity = std::fs::read_to_string(&s.identity).unwrap();
    let secret = identity
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    let mut written = all_bytes(&repo);
    written.extend(all_bytes(&s.root.join("staging")));
    for (path, bytes) in &written {
        assert!(
            !contains(bytes, s.profile.key.as_bytes()),
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
        .filter(|(p, _)| p.starts_with(s.root.join("staging")))
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(staged, vec!["lock".to_string()]);
}

#[test]
fn debug_logs_show_no_secret_through_a_whole_backup_and_restore() {
    let s = setup();
    let server = S3Server::start();
    server.create_bucket("ghostwire");
    let s3_secret = "s3-SECRET-4f9a2c1e7b3d8a6f0e5c9b2a7d4f1e8c";
    let identity_text = std::fs::read_to_string(&s.identity).unwrap();
    let age_secret = identity_text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let configure = |command: &mut Command, format: &str| {
        server.configure(command);
        command
            .env("AWS_SECRET_ACCESS_KEY", s3_secret)
            .env("GWB_REPO", "s3://ghostwire/p")
            .env("GWB_LOG", "debug")
            .env("GWB_LOG_FORMAT", format);
    };
    let mut outputs = Vec::new();
    for format in ["text", "json"] {
        let mut command = agent();
        configure(&mut command, format);
        let output = backup(&s, &mut command);
        assert!(output.status.success());
        let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
        outputs.push(output);
        for verb in [
            &["snapshots", "--json"][..],
            &["verify", "--quick", "--snapshot", &id],
        ] {
            let mut command = agent();
            configure(&mut command, format);
            outputs.push(run(command.args(verb)));
        }
        let mut command = agent();
        configure(&mut command, format);
        outputs.push(run(command
            .args(["verify", "--snapshot", &id])
            .arg("--identity")
            .arg(&s.identity)));
        let mut command = agent();
        configure(&mut command, format);
        outputs.push(run(command
            .arg("restore")
            .arg("--identity")
            .arg(&s.identity)
            .arg("--target")
            .arg(s.root.join(format!("target-{format}")))));
    }
    let mut seen = 0;
    for output in &outputs {
        assert!(output.status.success());
        let text = [&output.stdout[..], &output.stderr[..]].concat();
        let text = String::from_utf8_lossy(&text);
        seen += text.len();
        for (what, secret) in [
            ("Signal's database key", s.profile.key.as_str()),
            (
                "Signal's database key",
                s.profile.key.to_uppercase().as_str(),
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
    let s = setup();
    let repo = s.root.join("backups");
    let output = backup(&s, agent().env("GWB_REPO", &repo));
    assert!(output.status.success());
    let verify = |mode: u32| {
        std::fs::set_permissions(&s.identity, std::fs::Permissions::from_mode(mode)).unwrap();
        let output = run(agent()
            .env("GWB_REPO", &repo)
            .arg("verify")
            .arg("--identity")
            .arg(&s.identity));
        assert!(output.status.success());
        String::from_utf8(output.stderr).unwrap()
    };
    for loose in [0o644, 0o640, 0o604] {
        let err = verify(loose);
        assert!(
            err.contains("readable by other users") && err.contains("chmod 600"),
            "mode {loose:o}: {err}"
        );
    }
    for tight in [0o600, 0o400] {
        let err = verify(tight);
        assert!(
            !err.contains("readable by other users"),
            "mode {tight:o}: {err}"
        );
    }
}
