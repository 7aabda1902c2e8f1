//! Crash consistency: the agent is SIGKILLed at random moments of a backup and of a restore,
//! against a local repository and a real S3 server (moto), and after every kill:
//!
//! - every listed snapshot verifies (decrypts, matches its manifest, passes the gate);
//! - the next backup succeeds (a killed run's staging lock does not block it);
//! - the live profile is byte for byte what it was;
//! - a killed restore has left no marker unless it had finished, and `restore --if-empty`
//!   run again completes it with the whole snapshot.
//!
//! The default suite runs a few trials; `scripts/crash-trials.sh` runs the long version
//! (`GWB_CRASH_TRIALS`, default 50 of each kind). `GWB_CRASH_SEED` replays a run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ghostwire_backup::catalog;
use ghostwire_backup::commands::restore::{MARKER, READY, STAGING};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::common::faults::Bucket;
use crate::common::*;

const BUCKET: &str = "ghostwire";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Repo {
    Local,
    S3,
}

/// The fixture, and a bucket on an S3 server beside its local repository.
struct Lab {
    fx: Fixture,
    bucket: Bucket,
}

impl Lab {
    fn new() -> Self {
        Self {
            fx: Fixture::new(&["--messages", "1500", "--attachments", "24"]),
            bucket: Bucket::with_prefix(BUCKET, "crash", 0),
        }
    }

    fn agent(&self, repo: Repo) -> TestCommand {
        match repo {
            Repo::Local => self.fx.agent(),
            Repo::S3 => self.bucket.direct(),
        }
    }

    fn backup(&self, repo: Repo) -> TestCommand {
        let mut command = self.fx.backup_with(self.agent(repo));
        command.args(["--part-size-mib", "1"]);
        command
    }

    fn restore(&self, repo: Repo, target: &Path) -> TestCommand {
        let mut command = self.fx.restore_with(self.agent(repo), target);
        command.arg("--if-empty");
        command
    }

    fn listed(&self, repo: Repo) -> Vec<String> {
        snapshot_ids(&mut self.agent(repo))
    }

    fn verify(&self, repo: Repo, id: &str) {
        self.fx.verify_with(self.agent(repo), id).ok();
    }

    /// Archives in the repository with at least one part stored (a local `*.partial-*`
    /// file is not a part).
    fn archives(&self, repo: Repo) -> BTreeSet<Object> {
        let dir = Object::prefix_of(Object::Archive);
        let keys: Vec<String> = match repo {
            Repo::Local => std::fs::read_dir(self.fx.repo.join(dir))
                .map(|entries| {
                    entries
                        .map(|e| format!("{dir}{}", e.unwrap().file_name().to_string_lossy()))
                        .collect()
                })
                .unwrap_or_default(),
            Repo::S3 => {
                let (status, body) = self
                    .bucket
                    .server
                    .get(&format!("/{BUCKET}?list-type=2&prefix=crash/archives/"));
                assert_eq!(status, 200, "{body}");
                body.split("<Key>")
                    .skip(1)
                    .map(|rest| rest.split('<').next().unwrap().replacen("crash/", "", 1))
                    .collect()
            }
        };
        keys.iter().filter_map(|key| Object::parse(key)).collect()
    }

    /// Writes in progress: local `*.partial-*` files, or open S3 multipart uploads (this
    /// version starts none: an archive goes up in parts, each a plain PUT).
    fn unfinished_writes(&self, repo: Repo) -> usize {
        match repo {
            Repo::Local => ["archives", "snapshots"]
                .iter()
                .filter_map(|dir| std::fs::read_dir(self.fx.repo.join(dir)).ok())
                .flatten()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .contains(".partial-")
                })
                .count(),
            Repo::S3 => self.bucket.server.open_uploads(BUCKET, "crash/"),
        }
    }
}

/// Every entry of a tree with its content hash: unlike `tree`, databases are hashed too, so
/// any write to the live profile shows. Left out: SQLite's `-shm` index (a reader may
/// rebuild it, and it holds no data) and the agent's own catalog at the top of the home
/// (`.ghostwire-backup-catalog.sqlite`, which every backup updates by design).
fn fingerprint(root: &Path) -> BTreeMap<String, String> {
    let mut found = tree_hashes(root, root);
    found.retain(|path, _| !ours(path));
    found
}

fn tree_hashes(root: &Path, dir: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if name.ends_with("-shm") {
            continue;
        }
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        let description = if metadata.is_dir() {
            found.extend(tree_hashes(root, &path));
            format!("dir {:o}", metadata.mode())
        } else if metadata.is_file() {
            let mut hash = Sha256::new();
            let mut file = std::fs::File::open(&path).unwrap();
            let mut buffer = vec![0; 1 << 16];
            loop {
                let n = file.read(&mut buffer).unwrap();
                if n == 0 {
                    break;
                }
                hash.update(&buffer[..n]);
            }
            format!(
                "file {:o} {}",
                metadata.mode(),
                hex::encode(hash.finalize())
            )
        } else {
            format!("other {:o}", metadata.mode())
        };
        found.insert(name, description);
    }
    found
}

/// Starts `command`, SIGKILLs it after `delay` unless it ended first; says whether it was
/// killed.
fn kill_after(command: &mut TestCommand, delay: Duration) -> bool {
    let mut child = command.spawn(Stdio::null(), Stdio::null());
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: kill on a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    status.code().is_none()
}

fn timed(command: &mut TestCommand) -> Duration {
    let started = Instant::now();
    command.ok();
    started.elapsed()
}

fn seed() -> u64 {
    std::env::var("GWB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

#[derive(Default, Debug)]
struct Tally {
    trials: usize,
    killed: usize,
    /// Where the kills landed, as seen afterwards (and what the checks then found).
    phases: BTreeMap<String, usize>,
}

impl Tally {
    fn record(&mut self, killed: bool, phase: String) {
        self.trials += 1;
        self.killed += killed as usize;
        *self.phases.entry(phase).or_default() += 1;
    }
}

/// `trials` backups killed at random moments, alternating between a local and an S3
/// repository, each followed by the checks in the module docs.
fn killed_backups(lab: &Lab, trials: usize, rng: &mut StdRng) -> Tally {
    let live = fingerprint(lab.fx.home());
    let mut verified = BTreeSet::new();
    let mut tally = Tally::default();
    let mut durations = BTreeMap::new();
    for repo in [Repo::Local, Repo::S3] {
        // Whole backups first: how long a warm one takes is the window the kills fall in.
        lab.backup(repo).ok();
        durations.insert(repo, timed(&mut lab.backup(repo)));
    }
    for trial in 0..trials {
        let repo = if trial % 2 == 0 {
            Repo::Local
        } else {
            Repo::S3
        };
        // Squared, so the short early phases (snapshot, walk) get their share of kills.
        let delay = durations[&repo].mul_f64(rng.random::<f64>().powi(2));
        let listed_before = lab.listed(repo).len();
        let archives_before = lab.archives(repo).len();
        let unfinished_before = lab.unfinished_writes(repo);
        let killed = kill_after(&mut lab.backup(repo), delay);

        let listed = lab.listed(repo);
        let phase = if listed.len() > listed_before {
            "committed (manifest written)"
        } else if lab.archives(repo).len() > archives_before {
            "archive parts stored, no manifest"
        } else if lab.unfinished_writes(repo) > unfinished_before {
            "uploading the archive"
        } else {
            "before the upload (snapshot, walk)"
        };
        tally.record(killed, format!("{repo:?}: {phase}"));

        for id in listed {
            if !verified.contains(&id) {
                lab.verify(repo, &id);
                verified.insert(id);
            }
        }
        // The live profile is byte for byte what it was (differences are named).
        assert_same_tree(&fingerprint(lab.fx.home()), &live);
        // The next backup runs despite the dead one's staging lock and leftovers.
        let id = lab.backup(repo).ok();
        lab.verify(repo, &id);
        verified.insert(id);
    }
    // Every snapshot still verifies cheaply at the end: nothing later damaged an earlier one.
    for repo in [Repo::Local, Repo::S3] {
        for id in lab.listed(repo) {
            lab.agent(repo)
                .args(["verify", "--quick", "--snapshot", &id])
                .ok();
        }
    }
    eprintln!(
        "left behind by killed backups: local partial files {}, open S3 uploads {}, \
         orphan archives local {} / S3 {}",
        lab.unfinished_writes(Repo::Local),
        lab.unfinished_writes(Repo::S3),
        lab.archives(Repo::Local).len() - lab.listed(Repo::Local).len(),
        lab.archives(Repo::S3).len() - lab.listed(Repo::S3).len(),
    );
    tally
}

/// `trials` restores killed at random moments, each resumed with `restore --if-empty`.
fn killed_restores(lab: &Lab, trials: usize, rng: &mut StdRng) -> Tally {
    let mut tally = Tally::default();
    let mut durations = BTreeMap::new();
    let mut expected = BTreeMap::new();
    for repo in [Repo::Local, Repo::S3] {
        lab.backup(repo).ok();
        let reference = lab.fx.root.join(format!("reference-{repo:?}"));
        durations.insert(repo, timed(&mut lab.restore(repo, &reference)));
        expected.insert(repo, tree(&reference, &ours));
    }
    for trial in 0..trials {
        let repo = if trial % 2 == 0 {
            Repo::Local
        } else {
            Repo::S3
        };
        let target = lab.fx.root.join(format!("target-{trial}"));
        let delay = durations[&repo].mul_f64(rng.random::<f64>().powi(2));
        let killed = kill_after(&mut lab.restore(repo, &target), delay);

        let staging = target.join(STAGING);
        let phase = if target.join(MARKER).exists() {
            // A marker means a finished restore: all of it must be there.
            assert_same_tree(&tree(&target, &ours), &expected[&repo]);
            "finished (marker written)"
        } else if staging.join(READY).exists() {
            "moving into place (gate passed)"
        } else if staging.exists() {
            "unpacking or in the gate"
        } else {
            "before unpacking"
        };
        tally.record(killed, format!("{repo:?}: {phase}"));

        lab.restore(repo, &target).ok();
        assert!(
            target.join(MARKER).exists(),
            "trial {trial}: no marker after the re-run"
        );
        assert!(!staging.exists(), "trial {trial}: staging left behind");
        assert_same_tree(&tree(&target, &ours), &expected[&repo]);
        assert_signal_db(&target, &lab.fx.profile.key, lab.fx.profile.messages);
        // Killed after the marker, while it wrote the volume's catalog: SQLite's hot journal
        // is left, and the next backup of the volume must still run.
        if target
            .join(format!("{}-journal", catalog::DEFAULT_NAME))
            .exists()
        {
            tally.record(false, "catalog write interrupted; next backup ran".into());
            let scratch = agent_for(lab.fx.root.join("scratch-repo"));
            lab.fx.backup_of(scratch, &target).ok();
        }
        std::fs::remove_dir_all(&target).unwrap();
    }
    tally
}

fn crash_trials(backups: usize, restores: usize) {
    let seed = seed();
    eprintln!("crash trials: GWB_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let lab = Lab::new();
    let started = Instant::now();
    let backup_tally = killed_backups(&lab, backups, &mut rng);
    let backup_time = started.elapsed();
    let started = Instant::now();
    let restore_tally = killed_restores(&lab, restores, &mut rng);
    eprintln!(
        "crash trials (seed {seed}): backups {backup_tally:?} in {:.0}s; restores {restore_tally:?} in {:.0}s",
        backup_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn killed_backups_and_restores_leave_nothing_half_done() {
    crash_trials(6, 6);
}

/// The long run: `scripts/crash-trials.sh`, or `cargo test --test it -- --ignored crash_trials_long`.
#[test]
#[ignore]
fn crash_trials_long() {
    let trials = std::env::var("GWB_CRASH_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    crash_trials(trials, trials);
}
