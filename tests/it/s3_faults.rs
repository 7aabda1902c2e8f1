//! The agent against a real S3 server (moto) through a bad network: a fault-injecting
//! proxy (common/faults.rs) answers 500/503 itself, resets connections, loses
//! answers, cuts bodies and stalls. A backup and a restore must still come out right at a
//! tenth of requests failing; when every request fails they must stop in bounded time with
//! a clear error and leave no snapshot and no marker behind.

use std::path::Path;
use std::time::{Duration, Instant};

use ghostwire_backup::commands::restore::MARKER;

use crate::common::faults::{ALL_FAULTS, Bucket, Fault};
use crate::common::*;

const BUCKET: &str = "ghostwire";
const REPO: &str = "s3://ghostwire/blue";

struct World {
    fx: Fixture,
    bucket: Bucket,
}

/// A default-sized profile (about 25 MB of archive: five 5 MiB parts), an S3 server with a
/// bucket, and a proxy in front of it that injects nothing yet.
fn world(seed: u64) -> World {
    World {
        fx: Fixture::new(&[]),
        bucket: Bucket::with_prefix(BUCKET, "blue", seed),
    }
}

impl World {
    /// The agent, talking to S3 through the proxy.
    fn agent(&self) -> TestCommand {
        self.bucket.through_proxy()
    }

    fn backup(&self) -> Ran {
        self.fx
            .backup_with(self.agent())
            .args(["--part-size-mib", "1"])
            .run()
    }

    fn restore(&self, target: &Path) -> Ran {
        self.fx.restore_with(self.agent(), target).run()
    }

    /// The snapshots listed, asking S3 directly: the repository as it really is.
    fn listed(&self) -> Vec<String> {
        snapshot_ids(&mut self.bucket.direct())
    }

    /// The restored home holds every kept byte and a database with every row.
    fn assert_restored(&self, target: &Path) {
        assert_same_tree(
            &tree(target, &not_backed_up),
            &tree(self.fx.home(), &not_backed_up),
        );
        assert!(target.join(MARKER).exists());
        assert_signal_db(target, &self.fx.profile.key, self.fx.profile.messages);
    }
}

#[test]
fn backup_and_restore_come_out_right_with_a_tenth_of_requests_failing() {
    let w = world(10);
    w.bucket.proxy.set_faults(0.10, ALL_FAULTS);
    // Whatever the dice say, each kind of fault meets the request it matters most for.
    // Targets: `.tar.zst.age.0` is a part of the archive, `/snapshots/` is the manifest.
    const PART: &str = ".tar.zst.age.0";
    w.bucket.proxy.force("PUT", PART, Fault::SlowDown);
    w.bucket.proxy.force("PUT", PART, Fault::Reset);
    w.bucket.proxy.force("PUT", PART, Fault::LostResponse);
    w.bucket
        .proxy
        .force("PUT", "/snapshots/", Fault::ServerError);
    let started = Instant::now();
    let backup = w.backup();
    assert!(
        backup.status.success(),
        "backup failed under faults: {backup}\nfaults: {:?}",
        w.bucket.proxy.stats().log
    );
    let id = backup.stdout_trimmed().to_string();
    let backup_time = started.elapsed();

    // Cut the archive download twice and the list of manifests (which holds the
    // snapshot's manifest, so no manifest object is read) once: the restore must resume
    // them.
    w.bucket.proxy.force("GET", "/archives/", Fault::CutBody);
    w.bucket.proxy.force("GET", "/archives/", Fault::StallBody);
    w.bucket
        .proxy
        .force("GET", "/manifests.json", Fault::CutBody);
    w.bucket.proxy.force("GET", "list-type=2", Fault::CutBody);
    let target = w.fx.root.join("restored");
    let started = Instant::now();
    let restore = w.restore(&target);
    assert!(
        restore.status.success(),
        "restore failed under faults: {restore}\nfaults: {:?}",
        w.bucket.proxy.stats().log
    );
    let restore_time = started.elapsed();
    assert_eq!(restore.stdout_trimmed(), id);
    w.assert_restored(&target);
    assert!(
        restore.stderr.contains("asking for the rest of the object"),
        "the cut downloads were not resumed: {restore}"
    );

    let stats = w.bucket.proxy.stats();
    eprintln!(
        "10% faults: {} requests, {} faults {:?}; backup {:.1}s, restore {:.1}s\n{}",
        stats.requests,
        stats.faults(),
        stats.injected,
        backup_time.as_secs_f64(),
        restore_time.as_secs_f64(),
        stats.log.join("\n")
    );
    assert_eq!(
        w.bucket.proxy.pending_forced(),
        0,
        "a forced fault never happened"
    );
    assert_eq!(w.listed(), vec![id]);
}

#[test]
fn when_every_request_fails_backup_and_restore_stop_in_bounded_time_and_leave_nothing() {
    let w = world(100);
    w.bucket.proxy.set_stall(Duration::from_millis(500));
    let backup = w.backup();
    assert!(backup.status.success(), "{backup}");
    let id = backup.stdout_trimmed().to_string();

    // Every kind that fails a request (a mere `Stall` still answers in the end).
    let failing: Vec<Fault> = ALL_FAULTS
        .iter()
        .copied()
        .filter(|f| *f != Fault::Stall)
        .collect();
    w.bucket.proxy.set_faults(1.0, &failing);
    let started = Instant::now();
    let backup = w.backup();
    let took = started.elapsed();
    assert!(
        !backup.status.success(),
        "a backup succeeded with every request failing: {backup}"
    );
    // It fails wherever the first request does (taking the repository lock, starting the
    // upload…); what matters is that it says S3 is failing.
    assert!(
        backup.stderr.contains("S3") && backup.stderr.contains("after every retry"),
        "{backup}"
    );
    assert!(
        took < Duration::from_secs(120),
        "backup took {took:?} to give up"
    );

    let target = w.fx.root.join("restored");
    let started = Instant::now();
    let restore = w.restore(&target);
    let restore_took = started.elapsed();
    assert!(
        !restore.status.success(),
        "a restore succeeded with every request failing: {restore}"
    );
    assert!(
        restore.stderr.contains("S3") && restore.stderr.contains("after every retry"),
        "{restore}"
    );
    assert!(
        restore_took < Duration::from_secs(120),
        "restore took {restore_took:?} to give up"
    );
    assert!(!target.join(MARKER).exists());

    w.bucket.proxy.set_faults(0.0, &[]);
    assert_eq!(w.listed(), vec![id], "the failed backup left a snapshot");
    eprintln!(
        "100% faults: backup gave up after {:.1}s, restore after {:.1}s; {} requests; \
         multipart uploads left open on the server: {}",
        took.as_secs_f64(),
        restore_took.as_secs_f64(),
        w.bucket.proxy.stats().requests,
        w.bucket.server.open_uploads(BUCKET, "blue/")
    );
}

#[test]
fn a_download_that_stalls_mid_body_is_abandoned_and_resumed() {
    let w = world(7);
    let backup = w.backup();
    assert!(backup.status.success(), "{backup}");
    // The body stops flowing and the connection stays open: only a timeout can notice.
    w.bucket.proxy.set_stall(Duration::from_secs(600));
    w.bucket.proxy.force("GET", "/archives/", Fault::StallBody);
    let target = w.fx.root.join("restored");
    let started = Instant::now();
    let restore = w.restore(&target);
    let took = started.elapsed();
    assert!(restore.status.success(), "{restore}");
    assert_eq!(w.bucket.proxy.pending_forced(), 0);
    w.assert_restored(&target);
    eprintln!(
        "a stalled download was resumed; restore took {:.1}s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(90), "restore took {took:?}");
}

#[test]
fn a_missing_bucket_is_named_with_what_to_check() {
    let w = world(1);
    let missing = "s3://no-such-bucket/x";
    w.bucket
        .server
        .agent(missing)
        .arg("snapshots")
        // 3: the README's code for a repository that does not exist.
        .fails_with_code(
            3,
            &["the bucket \"no-such-bucket\" does not exist", "--repo"],
        );
    w.fx.backup_with(w.bucket.server.agent(missing))
        .fails_with(&["the bucket \"no-such-bucket\" does not exist"]);
}

/// An IAM call to moto, before it enforces signatures (it routes by the credential scope).
fn iam(server: &S3Server, params: &str) -> String {
    let auth = "AWS4-HMAC-SHA256 Credential=AKIAADMIN/20260101/us-east-1/iam/aws4_request, \
                SignedHeaders=host, Signature=00";
    let (status, body) = server.request(
        "POST",
        "/",
        &[
            ("Authorization", auth),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &format!("{params}&Version=2010-05-08"),
    );
    assert_eq!(status, 200, "IAM {params}: {body}");
    body
}

/// A user with an access key (and, if `policy`, every S3 permission): (key id, secret).
fn iam_user(server: &S3Server, name: &str, policy: bool) -> (String, String) {
    iam(server, &format!("Action=CreateUser&UserName={name}"));
    if policy {
        let document = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        let encoded: String = document
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        iam(
            server,
            &format!("Action=PutUserPolicy&UserName={name}&PolicyName=s3&PolicyDocument={encoded}"),
        );
    }
    let body = iam(server, &format!("Action=CreateAccessKey&UserName={name}"));
    let field = |tag: &str| {
        body.split(&format!("<{tag}>"))
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap()
            .to_string()
    };
    (field("AccessKeyId"), field("SecretAccessKey"))
}

#[test]
fn wrong_credentials_are_named_with_what_to_fix() {
    let server = S3Server::with_bucket(BUCKET);
    let (key, secret) = iam_user(&server, "backup", true);
    let (weak_key, weak_secret) = iam_user(&server, "nobody", false);
    // From here on moto checks every signature and permission, as AWS does.
    let (status, body) = server.request(
        "POST",
        "/moto-api/reset-auth",
        &[("Content-Type", "text/plain")],
        "0",
    );
    assert_eq!(status, 200, "{body}");
    let snapshots = |repo: &str, key: &str, secret: &str| {
        server
            .agent(repo)
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("GWB_S3_ATTEMPTS", "2")
            .arg("snapshots")
            .run()
    };
    // The right key works, so the failures below are about the credentials alone.
    let ok = snapshots(REPO, &key, &secret);
    assert!(ok.status.success(), "{ok}");

    let cases = [
        (
            "AKIAUNKNOWNKEY000000",
            secret.as_str(),
            REPO,
            "does not know this access key",
        ),
        (
            key.as_str(),
            "wrong-secret",
            REPO,
            "the secret key does not match",
        ),
        (weak_key.as_str(), weak_secret.as_str(), REPO, "was denied"),
        (
            key.as_str(),
            secret.as_str(),
            "s3://no-such-bucket/x",
            "does not exist",
        ),
    ];
    for (key, secret, repo, expected) in cases {
        let output = snapshots(repo, key, secret);
        assert!(!output.status.success(), "{key}: succeeded:\n{output}");
        assert!(
            output.stderr.contains(expected),
            "{key}: expected {expected:?} in:\n{output}"
        );
        assert!(
            !output.stderr.contains(secret) || secret == "wrong-secret",
            "the secret key leaked: {output}"
        );
    }
}

#[test]
fn missing_credentials_are_named_as_such() {
    let server = S3Server::with_bucket(BUCKET);
    let home = tempfile::tempdir().unwrap();
    server
        .agent(REPO)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("HOME", home.path())
        .env("GWB_S3_ATTEMPTS", "2")
        .arg("snapshots")
        .fails_with(&["no usable S3 credentials", "AWS_ACCESS_KEY_ID"]);
}

/// The long run (`scripts/crash-trials.sh`): `GWB_FAULT_ROUNDS` rounds (default 20) of a
/// backup and a restore at `GWB_FAULT_RATE` (default 0.10) random faults, no forced ones.
#[test]
#[ignore]
fn fault_soak() {
    let rounds: usize = std::env::var("GWB_FAULT_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let rate: f64 = std::env::var("GWB_FAULT_RATE")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.10);
    let seed = rand::random();
    eprintln!("fault soak: seed {seed}, {rounds} rounds at {rate}");
    let w = world(seed);
    w.bucket.proxy.set_stall(Duration::from_secs(1));
    w.bucket.proxy.set_faults(rate, ALL_FAULTS);
    let mut failures = Vec::new();
    let started = Instant::now();
    for round in 0..rounds {
        let backup = w.backup();
        if !backup.status.success() {
            failures.push(format!("round {round} backup: {backup}"));
            continue;
        }
        let target = w.fx.root.join(format!("restored-{round}"));
        let restore = w.restore(&target);
        if !restore.status.success() {
            failures.push(format!("round {round} restore: {restore}"));
            continue;
        }
        w.assert_restored(&target);
        std::fs::remove_dir_all(&target).unwrap();
    }
    let stats = w.bucket.proxy.stats();
    eprintln!(
        "fault soak: {rounds} rounds in {:.0}s, {} requests, {} faults {:?}, {} failed rounds",
        started.elapsed().as_secs_f64(),
        stats.requests,
        stats.faults(),
        stats.injected,
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
