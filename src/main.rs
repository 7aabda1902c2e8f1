//! The `ghostwire-backup` binary: parses flags (every one also read from a `GWB_*`
//! environment variable, since Kubernetes hands configuration over as env and mounted
//! Secrets), sets up logging, and calls the command.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use aws_sdk_s3::types::ObjectLockMode;
use ghostwire_backup::commands::forget::ForgetOptions;
use ghostwire_backup::commands::prune::PruneOptions;
use ghostwire_backup::commands::{
    self, backup::BackupOptions, restore, restore::RestoreOptions, run::RunOptions,
    verify::VerifyOptions,
};
use ghostwire_backup::exit::{self, Exit};
use ghostwire_backup::renewal::Terms;
use ghostwire_backup::repo::{self, Keys, Repository, Selector};
use ghostwire_backup::retention::Policy;
use ghostwire_backup::scheduled::Timing;
use ghostwire_backup::signing::{Signer, Verifier};
use ghostwire_backup::store::s3::{ObjectLock, S3Options};
use ghostwire_backup::{lease, priority, progress, schedule};

mod reference;

#[derive(Parser)]
#[command(
    version,
    about = "Back up and restore a Signal Desktop profile: consistent SQLCipher snapshot, tar → zstd → age, S3 or a local directory."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes, under their own heading in each command's --help so its
/// own options stand out.
#[derive(Args)]
#[command(next_help_heading = "Global options")]
struct Global {
    /// Log format; auto is JSON when stderr is not a terminal. GWB_LOG sets the level.
    #[arg(long, env = "GWB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto, global = true)]
    log_format: LogFormat,
    /// Off a terminal (JSON logs, a pipe, a container): how often a long operation logs a
    /// `progress` event. On a terminal with text logs, a progress line is redrawn instead.
    #[arg(long, env = "GWB_PROGRESS_EVERY", default_value = "10s", value_parser = parse_seconds, global = true)]
    progress_every: Duration,
}

/// Where the repository is and how to reach it: flattened into each command that opens
/// one (not clap globals, which every command's --help would list, keygen's too; clap
/// cannot hide a global in one command). Under a heading of their own, set on each one: a
/// struct's `next_help_heading` would also cover the flags that follow the flatten. Another
/// group of flags is made the same way: a struct, its heading on each flag, and one
/// `#[command(flatten)]` line in each command that takes it.
#[derive(Args)]
struct RepoArgs {
    /// Repository: s3://BUCKET/PREFIX, or a local directory (default: ./backups, except
    /// for `run`, which needs it set).
    #[arg(long, help_heading = REPOSITORY_OPTIONS, env = "GWB_REPO", value_parser = parse_repo)]
    repo: Option<String>,
    /// S3 endpoint URL of an S3-compatible server: MinIO, Ceph, R2… (default: AWS).
    #[arg(long, help_heading = REPOSITORY_OPTIONS, env = "GWB_S3_ENDPOINT", value_parser = parse_endpoint)]
    s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long, help_heading = REPOSITORY_OPTIONS, env = "GWB_S3_REGION")]
    s3_region: Option<String>,
    /// Path-style S3 addressing (most self-hosted servers need it).
    #[arg(long, help_heading = REPOSITORY_OPTIONS, env = "GWB_S3_PATH_STYLE")]
    s3_path_style: bool,
    /// Attempts per S3 request: throttling, 5xx responses and timeouts are retried with
    /// exponential backoff.
    #[arg(long, help_heading = REPOSITORY_OPTIONS, env = "GWB_S3_ATTEMPTS", default_value_t = 6)]
    s3_attempts: u32,
    /// Retain snapshot objects this many days with S3 Object Lock (the bucket must have
    /// Object Lock enabled); prune skips objects still retained.
    #[arg(long, help_heading = REPOSITORY_OPTIONS, env = "GWB_OBJECT_LOCK_DAYS")]
    object_lock_days: Option<u32>,
    /// Object Lock mode: governance (privileged users may lift it) or compliance (nobody can).
    #[arg(long, help_heading = REPOSITORY_OPTIONS, env = "GWB_OBJECT_LOCK_MODE", value_enum, default_value_t = LockMode::Governance)]
    object_lock_mode: LockMode,
}

/// The --help heading of [`RepoArgs`]; `reference` lists such a shared group once.
const REPOSITORY_OPTIONS: &str = "Repository options";

#[derive(Clone, Copy, ValueEnum)]
enum LockMode {
    Governance,
    Compliance,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Create the two key pairs: the age identity (restore side) and the signing key
    /// (backup side); prints their public halves as GWB_RECIPIENTS= and GWB_VERIFY_KEY=.
    #[command(
        after_long_help = "Examples:\n  ghostwire-backup keygen --out identity.txt --signing-out signing.key > public.env\n  ghostwire-backup keygen --signing-out signing.key   # add signing to an older repository\n\nidentity.txt goes to the restore side only, signing.key to the backup side only; \npublic.env holds what both sides may know.\n"
    )]
    Keygen {
        /// Where to write the age identity, the secret key that decrypts (must not exist).
        #[arg(long, env = "GWB_KEYGEN_OUT", required_unless_present = "signing_out")]
        out: Option<PathBuf>,
        /// Where to write the signing key, the secret key that signs snapshots (must not
        /// exist).
        #[arg(long, env = "GWB_KEYGEN_SIGNING_OUT")]
        signing_out: Option<PathBuf>,
    },
    /// Take a snapshot of the home and upload it.
    #[command(
        after_long_help = "Examples:\n  ghostwire-backup backup --repo ./backups --source /home/kasm-user --recipient age1…\n  GWB_REPO=s3://bucket/ghostwire ghostwire-backup backup --recipients-file recipients.txt\n"
    )]
    Backup(BackupArgs),
    /// List the snapshots in the repository.
    #[command(
        after_long_help = "Examples:\n  ghostwire-backup snapshots --repo ./backups\n  ghostwire-backup snapshots --json | jq -r '.[-1].id'   # the newest id\n"
    )]
    Snapshots {
        #[command(flatten)]
        repository: RepoArgs,
        /// Machine-readable output: the manifests as a JSON array.
        #[arg(long, env = "GWB_JSON")]
        json: bool,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Restore a snapshot into an empty directory (a fresh volume).
    #[command(
        after_long_help = "Examples:\n  ghostwire-backup restore --identity identity.txt --target /mnt/fresh-pvc\n  ghostwire-backup restore --snapshot 9f3a1c2b --identity identity.txt --target ./restored\n  ghostwire-backup restore --snapshot handoff --if-empty --chown 1000:0 --identity /keys/identity.txt --target /home/kasm-user\n"
    )]
    Restore(RestoreArgs),
    /// Check that a snapshot restores, without writing anything.
    #[command(
        after_long_help = "Examples:\n  ghostwire-backup verify --identity identity.txt           # the latest snapshot, fully\n  ghostwire-backup verify --quick --snapshot 9f3a1c2b       # sizes and hashes only, no key\n"
    )]
    Verify(VerifyArgs),
    /// The sidecar daemon: back up on a schedule, serve metrics, final snapshot on SIGTERM.
    #[command(
        after_long_help = "Examples:\n  GWB_REPO=s3://bucket/ghostwire GWB_RECIPIENTS=age1… ghostwire-backup run --schedule '@hourly' --final-deadline 90\n"
    )]
    Run(Box<RunArgs>),
    /// Forget snapshots a retention policy does not keep, and delete their objects.
    #[command(
        after_long_help = "Examples:\n  ghostwire-backup prune --keep-daily 14 --keep-weekly 8 --dry-run   # show the table first\n  ghostwire-backup prune --keep-daily 14 --keep-weekly 8\n"
    )]
    Prune(PruneArgs),
    /// Remove the snapshots named, with their objects (refusing one a remaining snapshot
    /// needs, or the lease's handoff snapshot).
    #[command(
        after_long_help = "Examples:\n  ghostwire-backup forget --dry-run 9f3a1c2b\n  ghostwire-backup forget 9f3a1c2b 20261126T2330\n"
    )]
    Forget(ForgetArgs),
    /// Remove repository locks left by runs that are gone (expired, their process gone on
    /// this host, or unreadable); --all removes live locks too.
    #[command(
        after_long_help = "Examples:\n  ghostwire-backup unlock          # removes only locks that hold nothing\n"
    )]
    Unlock {
        #[command(flatten)]
        repository: RepoArgs,
        /// Also remove locks that may still be held: only when no backup or prune runs.
        #[arg(long)]
        all: bool,
    },
    /// Fail when the newest snapshot is older than --max-age (for helm test and probes).
    #[command(
        after_long_help = "Examples:\n  ghostwire-backup check --max-age 2h   # exit 5 when the newest snapshot is older\n"
    )]
    Check {
        #[command(flatten)]
        repository: RepoArgs,
        /// The oldest acceptable newest snapshot, e.g. 2h or 90m.
        #[arg(long, env = "GWB_MAX_AGE", value_parser = parse_seconds)]
        max_age: Duration,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Print every flag, environment variable and metric as Markdown, for the README
    /// (scripts/gen-docs.sh) and the deploy checks (scripts/check-deploy.sh).
    #[command(hide = true)]
    Reference {
        /// Everything as JSON instead.
        #[arg(long)]
        json: bool,
        /// Only one table.
        #[arg(long, value_parser = ["flags", "metrics", "exits"])]
        section: Option<String>,
    },
}

#[derive(Args)]
struct PruneArgs {
    #[command(flatten)]
    repository: RepoArgs,
    /// Keep the newest N snapshots (restic's semantics, as are the other --keep-* flags).
    #[arg(long, env = "GWB_KEEP_LAST", default_value_t = 0)]
    keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one (UTC).
    #[arg(long, env = "GWB_KEEP_HOURLY", default_value_t = 0)]
    keep_hourly: u32,
    /// Likewise for days.
    #[arg(long, env = "GWB_KEEP_DAILY", default_value_t = 0)]
    keep_daily: u32,
    /// Likewise for ISO weeks (Monday to Sunday).
    #[arg(long, env = "GWB_KEEP_WEEKLY", default_value_t = 0)]
    keep_weekly: u32,
    /// Likewise for months.
    #[arg(long, env = "GWB_KEEP_MONTHLY", default_value_t = 0)]
    keep_monthly: u32,
    /// Print the keep/forget table; delete nothing.
    #[arg(long, env = "GWB_DRY_RUN")]
    dry_run: bool,
    #[command(flatten)]
    trust: TrustArgs,
}

#[derive(Args)]
struct ForgetArgs {
    #[command(flatten)]
    repository: RepoArgs,
    /// Snapshots to forget: ids, unique id prefixes, or the ids' 8-hex suffixes.
    #[arg(required = true, value_name = "ID")]
    snapshots: Vec<String>,
    /// Print what would be forgotten; delete nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    trust: TrustArgs,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    backup: BackupArgs,
    /// When to back up: a 5-field crontab expression as CronJobs use (`0 * * * *`), or
    /// @hourly, @daily…; a 6-field expression with seconds also works.
    #[arg(long, env = "GWB_SCHEDULE", default_value = "0 * * * *")]
    schedule: String,
    /// Random delay added to each scheduled time, e.g. 5m.
    #[arg(long, env = "GWB_JITTER", default_value = "0s", value_parser = parse_seconds)]
    jitter: Duration,
    /// Address for /metrics, /healthz, /readyz, /startupz and /leasez.
    #[arg(long, env = "GWB_LISTEN", default_value = "0.0.0.0:9464")]
    listen: std::net::SocketAddr,
    #[command(flatten)]
    lease: LeaseIdentityArgs,
    /// The pod's ServiceAccount directory (token, ca.crt): the sidecar deletes its own pod
    /// through the Kubernetes API when another instance took the lease over.
    #[arg(long, env = "GWB_KUBE_SERVICEACCOUNT_DIR", default_value = ghostwire_backup::kube::SERVICE_ACCOUNT_DIR)]
    kube_serviceaccount_dir: PathBuf,
    /// Lifetime of the lease; it is renewed every third of it.
    #[arg(long, env = "GWB_LEASE_TTL", default_value = "10m", value_parser = parse_seconds)]
    lease_ttl: Duration,
    /// A scheduled backup still running after this long is abandoned (no snapshot).
    #[arg(long, env = "GWB_BACKUP_TIMEOUT", default_value = "1h", value_parser = parse_seconds)]
    backup_timeout: Duration,
    /// Take a final snapshot on SIGTERM (marked final; it releases the lease).
    #[arg(long, env = "GWB_FINAL_SNAPSHOT", default_value_t = true, action = clap::ArgAction::Set)]
    final_snapshot: bool,
    /// Time allowed for the final snapshot; keep it below the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "GWB_FINAL_DEADLINE", default_value = "90", value_parser = parse_seconds)]
    final_deadline: Duration,
}

/// Who this instance is for the repository's lease, and how far clocks may differ.
#[derive(Args)]
struct LeaseIdentityArgs {
    /// This instance's name for the repository lease, used as it is (default:
    /// <cluster>/<namespace>/<pod> from the three settings below; outside Kubernetes, the
    /// host name).
    #[arg(long, env = "GWB_LEASE_OWNER")]
    lease_owner: Option<String>,
    /// This cluster's id, unique among the clusters that share the repository (a DR
    /// cluster must differ): part of the lease owner.
    #[arg(long, env = "GWB_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// The pod's namespace (the downward API's metadata.namespace): part of the lease owner.
    #[arg(long, env = "GWB_POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// The pod's name (the downward API's metadata.name): part of the lease owner.
    #[arg(long, env = "GWB_POD_NAME")]
    pod_name: Option<String>,
    /// How far another instance's clock may be behind this one's: its lease is honoured
    /// until it expired by this much.
    #[arg(long, env = "GWB_LEASE_CLOCK_SKEW", default_value = "60s", value_parser = parse_seconds)]
    lease_clock_skew: Duration,
}

impl LeaseIdentityArgs {
    fn owner(&self) -> Result<String> {
        lease::Identity {
            owner: self.lease_owner.clone(),
            cluster: self.cluster_id.clone(),
            namespace: self.pod_namespace.clone(),
            pod: self.pod_name.clone(),
        }
        .owner()
        .map_err(|err| exit::coded(Exit::Usage, format!("{err:#}")))
    }
}

/// What the commands that read snapshots trust.
#[derive(Args)]
struct TrustArgs {
    /// The verify key (RW…, printed by `keygen` as GWB_VERIFY_KEY): only snapshots its
    /// signing key signed are listed, restored or kept.
    #[arg(long, help_heading = SIGNATURE_OPTIONS, env = "GWB_VERIFY_KEY")]
    verify_key: Option<String>,
    /// Also accept snapshots with no signature at all, made before signing existed (a
    /// signature that is there must still verify).
    #[arg(long, help_heading = SIGNATURE_OPTIONS, env = "GWB_ALLOW_UNSIGNED")]
    allow_unsigned: bool,
}

/// The heading of [`TrustArgs`]' flags, set on each flag as [`REPOSITORY_OPTIONS`] is.
const SIGNATURE_OPTIONS: &str = "Signature options";

impl TrustArgs {
    fn keys(&self) -> Result<Keys> {
        let Some(text) = &self.verify_key else {
            return Err(exit::coded(
                Exit::Usage,
                "no verify key: snapshots are signed, and only what the backup side's signing \
                 key signed is trusted. Pass --verify-key (GWB_VERIFY_KEY), the RW… key \
                 `ghostwire-backup keygen` printed",
            ));
        };
        Ok(Keys {
            signer: None,
            verifier: Some(Verifier::parse(text)?),
            allow_unsigned: self.allow_unsigned,
        })
    }
}

#[derive(Args)]
struct BackupArgs {
    #[command(flatten)]
    repository: RepoArgs,
    /// The home directory to back up.
    #[arg(long, env = "GWB_SOURCE", default_value = "/home/kasm-user")]
    source: PathBuf,
    /// Signing key file (minisign, from `keygen --signing-out`): every snapshot and lease
    /// is signed with it, so a restore can tell them from anything else in the bucket.
    #[arg(long, env = "GWB_SIGNING_KEY_FILE")]
    signing_key: Option<PathBuf>,
    /// age recipient (public key, age1…); repeat or comma-separate for several.
    #[arg(long = "recipient", env = "GWB_RECIPIENTS", value_delimiter = ',')]
    recipients: Vec<String>,
    /// File of age recipients, one per line.
    #[arg(long = "recipients-file", env = "GWB_RECIPIENTS_FILE")]
    recipient_files: Vec<PathBuf>,
    /// Extra glob of home-relative paths to skip (repeat or comma-separate).
    #[arg(long = "exclude", env = "GWB_EXCLUDE", value_delimiter = ',')]
    excludes: Vec<String>,
    /// File holding Signal's database key (64 hex digits), when config.json has none
    /// (default: the key in config.json).
    #[arg(long, env = "GWB_DB_KEY_FILE")]
    db_key_file: Option<PathBuf>,
    /// Scratch directory for database snapshots (they stay encrypted); needs room for a
    /// copy of Signal's database (default: the temp dir, TMPDIR or /tmp).
    #[arg(long, env = "GWB_STAGING_DIR", default_value_os_t = std::env::temp_dir(), hide_default_value = true)]
    staging_dir: PathBuf,
    /// The local catalog that makes backups incremental; a cache, which backups skip
    /// (default: .ghostwire-backup-catalog.sqlite in the source).
    #[arg(long, env = "GWB_CATALOG")]
    catalog: Option<PathBuf>,
    /// Incremental snapshots between two full ones (0: every snapshot is full).
    #[arg(long, env = "GWB_FULL_EVERY", default_value_t = 24)]
    full_every: u32,
    /// Take a full snapshot when the chain's full one is older than this.
    #[arg(long, env = "GWB_FULL_MAX_AGE", default_value = "7d", value_parser = parse_seconds)]
    full_max_age: Duration,
    /// zstd level (1–19).
    #[arg(long, env = "GWB_ZSTD_LEVEL", default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    zstd_level: i32,
    /// Upload part size in MiB, from 5 (S3's minimum) to 512; it grows automatically so
    /// that an archive fits in 9,000 parts.
    #[arg(long, env = "GWB_PART_SIZE_MIB", default_value_t = 5, value_parser = clap::value_parser!(u64).range(5..=512))]
    part_size_mib: u64,
    /// Parts uploaded at once; memory ≈ (2 + this) × part size.
    #[arg(long, env = "GWB_PARALLEL_UPLOADS", default_value_t = 2)]
    parallel_uploads: usize,
    /// How long to wait for a locked database before failing.
    #[arg(long, env = "GWB_DB_WAIT", default_value = "60", value_parser = parse_seconds)]
    db_wait: Duration,
    /// Mark the snapshot final (taken after Signal stopped).
    #[arg(long = "final", env = "GWB_FINAL")]
    r#final: bool,
    /// Back up a home that holds no Signal profile (else such a backup fails: it is
    /// almost always a wrong --source).
    #[arg(long, env = "GWB_ALLOW_NO_SIGNAL")]
    allow_no_signal: bool,
    /// Compression threads (default: the CPUs this process may use, which honours a
    /// container's CPU limit).
    #[arg(long, env = "GWB_THREADS", value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: Option<u32>,
    /// Back up at low CPU (nice 10) and IO (best-effort 7) priority, so the desktop wins
    /// under contention; `--low-priority=false` backs up at normal priority.
    #[arg(long, env = "GWB_LOW_PRIORITY", default_value_t = true, action = clap::ArgAction::Set)]
    low_priority: bool,
}

#[derive(Args)]
struct RestoreArgs {
    #[command(flatten)]
    repository: RepoArgs,
    /// Snapshot: an id (a unique start of one, or its last 8 hex digits, will do),
    /// `latest`, `final` (the newest final one, else the latest), or
    /// `handoff` (exactly the final snapshot the last instance released the lease with;
    /// fails if it stopped without one).
    #[arg(long, env = "GWB_SNAPSHOT", default_value = "latest")]
    snapshot: Selector,
    /// age identity file (the secret key).
    #[arg(long, env = "GWB_IDENTITY_FILE")]
    identity: PathBuf,
    /// Directory to restore into: an empty volume.
    #[arg(long, env = "GWB_TARGET")]
    target: PathBuf,
    /// Restore into a non-empty target; entries the snapshot replaces are moved aside into
    /// .ghostwire-backup-replaced-<time>/, never deleted.
    /// With --if-empty: bring a volume that diverged from the snapshot to it anyway (same
    /// moving aside).
    #[arg(long, env = "GWB_FORCE")]
    force: bool,
    /// The init container's restore, safe on every pod start: an empty target is restored;
    /// one that holds data is left alone when it is this pod's own newest state (or no
    /// sidecar ever ran), left as it is when it equals the snapshot, caught up when it
    /// equals an older one, and refused (exit 7) when it diverged, unless --force.
    #[arg(long, env = "GWB_IF_EMPTY")]
    if_empty: bool,
    /// Bring a target that an earlier restore from this repository produced to the
    /// snapshot, fetching only what differs (new and changed files, database deltas).
    /// Refused if the target changed since that restore, unless --force. An empty target
    /// is restored in full.
    #[arg(long, env = "GWB_UPDATE", conflicts_with = "if_empty")]
    update: bool,
    /// Restore ahead of a blue/green switch while the running instance holds the lease (a
    /// Job on the new volume; never where Signal starts next): the new instance's
    /// `restore --if-empty` then fetches only what changed until the handoff.
    #[arg(long, env = "GWB_PRESTAGE", conflicts_with = "if_empty")]
    prestage: bool,
    /// Owner for every restored entry, UID:GID; Kasm's is 1000:0 (default: the archived
    /// owner when running as root, else yours).
    #[arg(long, env = "GWB_CHOWN", value_parser = parse_owner)]
    chown: Option<(u32, u32)>,
    #[command(flatten)]
    lease: LeaseIdentityArgs,
    /// Restore although another instance's lease is live (it is gone for good).
    #[arg(long, env = "GWB_BREAK_LEASE")]
    break_lease: bool,
    #[command(flatten)]
    trust: TrustArgs,
    /// Fail if the repository holds no snapshot, also with --if-empty (a wrong location
    /// must not start Signal on an empty profile); off only for a first install.
    #[arg(long, env = "GWB_REQUIRE_SNAPSHOT")]
    require_snapshot: bool,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    repository: RepoArgs,
    /// Snapshot: an id (or a unique start of one, or its last 8 hex digits), `latest`,
    /// `final` or `handoff`.
    #[arg(long, env = "GWB_SNAPSHOT", default_value = "latest")]
    snapshot: Selector,
    /// age identity file; not needed with --quick.
    #[arg(long, env = "GWB_IDENTITY_FILE", required_unless_present = "quick")]
    identity: Option<PathBuf>,
    /// Only check the archive's size and SHA-256 against its manifest (no key needed).
    #[arg(long, env = "GWB_QUICK")]
    quick: bool,
    #[command(flatten)]
    trust: TrustArgs,
}

/// Every duration flag: plain seconds (`90`, as Kubernetes fields are) or with units
/// (`90s`, `2h`, `1h30m`), so no flag takes a syntax another one refuses.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text).map_err(|e| {
            format!("{e}: a duration is seconds (90) or a number with units (90s, 15m, 2h, 7d)")
        }),
    }
}

impl BackupArgs {
    /// The signing key, which every backup needs.
    fn keys(&self) -> Result<Keys> {
        let Some(path) = &self.signing_key else {
            return Err(exit::coded(
                Exit::Usage,
                "no signing key: every snapshot is signed, so that a restore can tell it from \
                 anything else someone put in the bucket. Make one with `ghostwire-backup \
                 keygen --signing-out signing.key` and pass --signing-key (GWB_SIGNING_KEY_FILE); \
                 give restore the GWB_VERIFY_KEY it prints",
            ));
        };
        Ok(Keys {
            signer: Some(Arc::new(Signer::load(path)?)),
            ..Keys::default()
        })
    }

    fn options(self) -> BackupOptions {
        BackupOptions {
            source: self.source,
            recipients: self.recipients,
            recipient_files: self.recipient_files,
            excludes: self.excludes,
            db_key_file: self.db_key_file,
            staging_dir: self.staging_dir,
            catalog: self.catalog,
            full_every: self.full_every,
            full_max_age: self.full_max_age,
            zstd_level: self.zstd_level,
            part_size: (self.part_size_mib << 20) as usize,
            db_wait: self.db_wait,
            r#final: self.r#final,
            lease_owner: None,
            allow_no_signal: self.allow_no_signal,
            threads: self.threads.unwrap_or_else(priority::default_threads),
        }
    }
}

fn parse_repo(text: &str) -> Result<String, String> {
    repo::check_location(text).map(|()| text.to_string())
}

/// An endpoint without a scheme would reach the SDK as a relative URL and fail only after
/// every retry, as if the server were down.
fn parse_endpoint(text: &str) -> Result<String, String> {
    if text.starts_with("http://") || text.starts_with("https://") {
        return Ok(text.to_string());
    }
    Err(format!(
        "an S3 endpoint is a URL with its scheme: https://{text} (or http://{text} for a \
         server without TLS)"
    ))
}

fn parse_owner(text: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = text
        .split_once(':')
        .ok_or("expected UID:GID, e.g. 1000:0")?;
    Ok((
        uid.parse().map_err(|_| "UID must be a number")?,
        gid.parse().map_err(|_| "GID must be a number")?,
    ))
}

fn main() -> ExitCode {
    return_large_buffers_to_the_kernel();
    ghostwire_backup::fsutil::never_create_writable_by_others();
    let cli = Cli::parse();
    let json_logs = init_logging(&cli.global);
    // Before the runtime: its threads, and the ones backups start, inherit the priority.
    let low_priority = match &cli.command {
        Command::Backup(args) => args.low_priority,
        Command::Run(args) => args.backup.low_priority,
        _ => false,
    };
    if low_priority {
        priority::yield_to_the_desktop();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line a person can act on; in JSON mode, one event a log pipeline can too.
            if json_logs {
                tracing::error!(error = format!("{err:#}"), "failed");
            } else {
                eprintln!("error: {err:#}");
            }
            ExitCode::from(Exit::of(&err).code())
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { out, signing_out } => {
            commands::keygen::run(out.as_deref(), signing_out.as_deref())
        }
        Command::Backup(args) => {
            let keys = args.keys()?;
            let repo = (args.repository)
                .open(args.parallel_uploads, Existing::Created)
                .await?
                .with_keys(keys);
            let manifest = commands::backup::run(&repo, &args.options()).await?;
            println!("{}", manifest.id);
            Ok(())
        }
        Command::Run(args) => {
            let args = *args;
            let options = RunOptions {
                timing: Timing {
                    schedule: schedule::parse(&args.schedule)?,
                    jitter: args.jitter,
                    backup_timeout: args.backup_timeout,
                    final_deadline: args.final_deadline,
                },
                lease: Terms {
                    owner: args.lease.owner()?,
                    ttl: args.lease_ttl,
                    skew: args.lease.lease_clock_skew,
                },
                own_pod: ghostwire_backup::kube::OwnPod::from_env(
                    args.lease.pod_namespace.as_deref(),
                    args.lease.pod_name.as_deref(),
                    &args.kube_serviceaccount_dir,
                )?,
                listen: args.listen,
                final_snapshot: args.final_snapshot,
            };
            let keys = args.backup.keys()?;
            let repo = (args.backup.repository)
                .open(args.backup.parallel_uploads, Existing::CreatedWhereNamed)
                .await?
                .with_keys(keys);
            commands::run::run(&repo, &args.backup.options(), &options).await
        }
        Command::Prune(args) => {
            let options = PruneOptions {
                policy: Policy {
                    keep_last: args.keep_last,
                    keep_hourly: args.keep_hourly,
                    keep_daily: args.keep_daily,
                    keep_weekly: args.keep_weekly,
                    keep_monthly: args.keep_monthly,
                },
                dry_run: args.dry_run,
            };
            commands::prune::run(&args.repository.open_to_read(&args.trust).await?, &options).await
        }
        Command::Forget(args) => {
            let options = ForgetOptions {
                snapshots: args.snapshots,
                dry_run: args.dry_run,
            };
            commands::forget::run(&args.repository.open_to_read(&args.trust).await?, &options).await
        }
        Command::Unlock { repository, all } => {
            commands::unlock::run(&repository.open(1, Existing::Required).await?, all).await
        }
        Command::Check {
            repository,
            max_age,
            trust,
        } => commands::check::run(&repository.open_to_read(&trust).await?, max_age).await,
        Command::Reference { json, section } => {
            let reference = reference::Reference::new(&Cli::command(), ENV_ONLY);
            let text = match (json, section.as_deref()) {
                (true, _) => reference.json()?,
                (false, Some("flags")) => reference.flags_markdown(),
                (false, Some("exits")) => reference::exits_markdown(),
                (false, Some(_)) => reference.metrics_markdown(),
                (false, None) => {
                    reference.flags_markdown()
                        + "\n"
                        + &reference.metrics_markdown()
                        + "\n"
                        + &reference::exits_markdown()
                }
            };
            print!("{text}");
            Ok(())
        }
        Command::Snapshots {
            repository,
            json,
            trust,
        } => commands::snapshots::run(&repository.open_to_read(&trust).await?, json).await,
        Command::Restore(args) => {
            let outcome = restore::run(
                &args.repository.open_to_read(&args.trust).await?,
                &RestoreOptions {
                    snapshot: args.snapshot,
                    identity: args.identity,
                    target: args.target,
                    force: args.force,
                    if_empty: args.if_empty,
                    chown: args.chown,
                    lease_owner: args.lease.owner()?,
                    lease_skew: args.lease.lease_clock_skew,
                    break_lease: args.break_lease,
                    require_snapshot: args.require_snapshot,
                    update: args.update,
                    prestage: args.prestage,
                },
            )
            .await?;
            match outcome {
                restore::Outcome::Restored(marker)
                | restore::Outcome::Completed(marker)
                | restore::Outcome::UpToDate(marker) => {
                    println!("{}", marker.snapshot);
                }
                restore::Outcome::LeftAlone(why) => {
                    tracing::info!(reason = %why, "--if-empty: nothing to restore")
                }
            }
            Ok(())
        }
        Command::Verify(args) => {
            let manifest = commands::verify::run(
                &args.repository.open_to_read(&args.trust).await?,
                &VerifyOptions {
                    snapshot: args.snapshot,
                    identity: args.identity,
                    quick: args.quick,
                },
            )
            .await?;
            println!("{}", manifest.id);
            Ok(())
        }
    }
}

/// Where `backup` writes without --repo: the quick start's local repository.
const DEFAULT_REPO: &str = "./backups";

/// Whether a command may create the repository or needs one that exists.
#[derive(Clone, Copy)]
enum Existing {
    /// `backup`: creates it, at [`DEFAULT_REPO`] without --repo.
    Created,
    /// `run`: creates it, but only where --repo says.
    CreatedWhereNamed,
    Required,
}

impl RepoArgs {
    /// The existing repository, trusting what `trust`'s verify key verifies: for every
    /// command that reads snapshots. The key is checked first, so a missing one is a usage
    /// error before any request.
    async fn open_to_read(&self, trust: &TrustArgs) -> Result<Repository> {
        let keys = trust.keys()?;
        Ok(self.open(1, Existing::Required).await?.with_keys(keys))
    }

    async fn open(&self, parallel_parts: usize, existing: Existing) -> Result<Repository> {
        let options = S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
            max_attempts: self.s3_attempts,
            parallel_parts,
            object_lock: self.object_lock_days.map(|days| ObjectLock {
                mode: match self.object_lock_mode {
                    LockMode::Governance => ObjectLockMode::Governance,
                    LockMode::Compliance => ObjectLockMode::Compliance,
                },
                days,
            }),
        };
        match (&self.repo, existing) {
            (Some(location), Existing::Required) => {
                Repository::open_existing(location, &options).await
            }
            (Some(location), _) => Repository::open(location, &options).await,
            (None, Existing::Required) => Repository::open_existing(DEFAULT_REPO, &options).await,
            // A daemon writing into the container's own filesystem loses every snapshot
            // with the pod: it must be told where.
            (None, Existing::CreatedWhereNamed) => bail!(
                "run needs a repository: set --repo (GWB_REPO) to s3://BUCKET/PREFIX or a \
                 directory on a volume that outlives the pod"
            ),
            (None, Existing::Created) => {
                tracing::info!(
                    repository = DEFAULT_REPO,
                    "no --repo (GWB_REPO): writing to the local directory {DEFAULT_REPO}"
                );
                Repository::open(DEFAULT_REPO, &options).await
            }
        }
    }
}

/// The level or filter of the logs: the one setting of ours without a flag.
const LOG_FILTER: reference::EnvOnly = reference::EnvOnly {
    name: "GWB_LOG",
    default: "info",
    help: "What to log: a level (debug, trace…) or a tracing filter such as ghostwire_backup=debug; other libraries log at most debug (the AWS SDK's trace holds the session token)",
};

/// Every variable the binary reads outside clap, for the reference: ours, and the
/// standard ones it honours.
const ENV_ONLY: &[reference::EnvOnly] = &[
    LOG_FILTER,
    reference::EnvOnly {
        name: "NO_COLOR",
        default: "unset",
        help: "Set and not empty: text logs on a terminal without colours (https://no-color.org)",
    },
    reference::EnvOnly {
        name: "HOSTNAME",
        default: "the machine's node name",
        help: "Who holds a lock or the lease, in their records (Kubernetes sets it to the pod's name)",
    },
    reference::EnvOnly {
        name: "KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT",
        default: "set by Kubernetes",
        help: "The API server `run` asks to delete its own pod when another instance takes the lease (with the token under --kube-serviceaccount-dir)",
    },
    reference::EnvOnly {
        name: "AWS_REGION, AWS_DEFAULT_REGION",
        default: "us-east-1",
        help: "The S3 region when --s3-region is not given",
    },
    reference::EnvOnly {
        name: "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE, AWS_PROFILE…",
        default: "the AWS default chain",
        help: "S3 credentials, read by the AWS SDK's default chain (environment, web identity/IRSA, profile files, container and instance metadata)",
    },
];

/// Sets up logging to stderr and says whether it is JSON.
fn init_logging(global: &Global) -> bool {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_FILTER.name)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match global.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    progress::init(json, global.progress_every);
    // Whatever GWB_LOG asks for: the AWS SDK's trace events print each request's headers
    // (x-amz-security-token, the session token, in the clear), the canonical request and
    // credential responses. Only our own code may log at trace.
    let at_most_debug = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::level_filters::LevelFilter::DEBUG)
        .with_target(
            "ghostwire_backup",
            tracing::level_filters::LevelFilter::TRACE,
        );
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .finish()
            .with(at_most_debug)
            .init();
    } else {
        // For people: no module path (it says nothing to a user), and colours only on a
        // terminal that has not asked for none (https://no-color.org).
        let colours = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
        builder
            .with_writer(|| progress::LogWriter)
            .compact()
            .with_target(false)
            .with_ansi(colours)
            .finish()
            .with(at_most_debug)
            .init();
    }
    json
}

/// Allocations of 1 MiB and more (upload parts, zstd jobs) are mapped on their own and
/// unmapped when freed. glibc's adaptive threshold would otherwise move them into its
/// per-thread heaps after the first free, where freed parts stay resident: a 2 GiB backup's
/// peak RSS crept from 58 to 74 MiB that way (measured with `bench/run.sh`).
fn return_large_buffers_to_the_kernel() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
