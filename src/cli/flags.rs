//! Every flag of the binary, as clap reads it: each one also from a `GWB_*` environment
//! variable, since Kubernetes hands configuration over as env and mounted Secrets. The
//! flags' doc comments are the `--help` text and the README's configuration table
//! (`reference`), so they are written for users. Below them, what each group of flags turns
//! into: the options a command takes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};

use ghostwire_backup::commands::backup::BackupOptions;
use ghostwire_backup::commands::forget::ForgetOptions;
use ghostwire_backup::commands::prune::PruneOptions;
use ghostwire_backup::commands::restore::RestoreOptions;
use ghostwire_backup::commands::run::RunOptions;
use ghostwire_backup::commands::verify::VerifyOptions;
use ghostwire_backup::exit::{self, Exit};
use ghostwire_backup::renewal::Terms;
use ghostwire_backup::repo::{self, Keys, Selector};
use ghostwire_backup::retention::Policy;
use ghostwire_backup::scheduled::Timing;
use ghostwire_backup::signing::{Signer, Verifier};
use ghostwire_backup::{kube, lease, priority, schedule};

#[derive(Parser)]
#[command(
    version,
    about = "Back up and restore a Signal Desktop profile: consistent SQLCipher snapshot, tar → zstd → age, S3 or a local directory."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command takes, under their own heading in each command's --help so its
/// own options stand out.
#[derive(Args)]
#[command(next_help_heading = "Global options")]
pub(crate) struct Global {
    /// Log format; auto is JSON when stderr is not a terminal. GWB_LOG sets the level.
    #[arg(long, env = "GWB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub(crate) log_format: LogFormat,
    /// Off a terminal (JSON logs, a pipe, a container): how often a long operation logs a
    /// `progress` event. On a terminal with text logs, a progress line is redrawn instead.
    #[arg(long, env = "GWB_PROGRESS_EVERY", default_value = "10s", value_parser = parse_seconds, global = true)]
    pub(crate) progress_every: Duration,
}

/// Where the repository is and how to reach it: flattened into each command that opens
/// one (not clap globals, which every command's --help would list, keygen's too; clap
/// cannot hide a global in one command). Under a heading of their own, set on each one: a
/// struct's `next_help_heading` would also cover the flags that follow the flatten. Another
/// group of flags is made the same way: a struct, its heading on each flag, and one
/// `#[command(flatten)]` line in each command that takes it.
#[derive(Args)]
pub(crate) struct RepoArgs {
    /// Repository: s3://BUCKET/PREFIX, or a local directory (default: ./backups, except
    /// for `run`, which needs it set).
    #[arg(long, help_heading = REPOSITORY_OPTIONS, env = "GWB_REPO", value_parser = parse_repo)]
    pub(crate) repo: Option<String>,
    /// S3 endpoint URL of an S3-compatible server: MinIO, Ceph, R2… (default: AWS).
    #[arg(long, help_heading = REPOSITORY_OPTIONS, env = "GWB_S3_ENDPOINT", value_parser = parse_endpoint)]
    pub(crate) s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long, help_heading = REPOSITORY_OPTIONS, env = "GWB_S3_REGION")]
    pub(crate) s3_region: Option<String>,
    /// Path-style S3 addressing (most self-hosted servers need it).
    #[arg(long, help_heading = REPOSITORY_OPTIONS, env = "GWB_S3_PATH_STYLE")]
    pub(crate) s3_path_style: bool,
    /// Attempts per S3 request: throttling, 5xx responses and timeouts are retried with
    /// exponential backoff.
    #[arg(long, help_heading = REPOSITORY_OPTIONS, env = "GWB_S3_ATTEMPTS", default_value_t = 6)]
    pub(crate) s3_attempts: u32,
    /// Retain snapshot objects this many days with S3 Object Lock (the bucket must have
    /// Object Lock enabled); prune skips objects still retained.
    #[arg(long, help_heading = REPOSITORY_OPTIONS, env = "GWB_OBJECT_LOCK_DAYS")]
    pub(crate) object_lock_days: Option<u32>,
    /// Object Lock mode: governance (privileged users may lift it) or compliance (nobody can).
    #[arg(long, help_heading = REPOSITORY_OPTIONS, env = "GWB_OBJECT_LOCK_MODE", value_enum, default_value_t = LockMode::Governance)]
    pub(crate) object_lock_mode: LockMode,
}

/// The --help heading of [`RepoArgs`]; `reference` lists such a shared group once.
pub(crate) const REPOSITORY_OPTIONS: &str = "Repository options";

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LockMode {
    Governance,
    Compliance,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) struct PruneArgs {
    #[command(flatten)]
    pub(crate) repository: RepoArgs,
    /// Keep the newest N snapshots (restic's semantics, as are the other --keep-* flags).
    #[arg(long, env = "GWB_KEEP_LAST", default_value_t = 0)]
    pub(crate) keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one (UTC).
    #[arg(long, env = "GWB_KEEP_HOURLY", default_value_t = 0)]
    pub(crate) keep_hourly: u32,
    /// Likewise for days.
    #[arg(long, env = "GWB_KEEP_DAILY", default_value_t = 0)]
    pub(crate) keep_daily: u32,
    /// Likewise for ISO weeks (Monday to Sunday).
    #[arg(long, env = "GWB_KEEP_WEEKLY", default_value_t = 0)]
    pub(crate) keep_weekly: u32,
    /// Likewise for months.
    #[arg(long, env = "GWB_KEEP_MONTHLY", default_value_t = 0)]
    pub(crate) keep_monthly: u32,
    /// Print the keep/forget table; delete nothing.
    #[arg(long, env = "GWB_DRY_RUN")]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) trust: TrustArgs,
}

#[derive(Args)]
pub(crate) struct ForgetArgs {
    #[command(flatten)]
    pub(crate) repository: RepoArgs,
    /// Snapshots to forget: ids, unique id prefixes, or the ids' 8-hex suffixes.
    #[arg(required = true, value_name = "ID")]
    pub(crate) snapshots: Vec<String>,
    /// Print what would be forgotten; delete nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) trust: TrustArgs,
}

#[derive(Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) backup: BackupArgs,
    /// When to back up: a 5-field crontab expression as CronJobs use (`0 * * * *`), or
    /// @hourly, @daily…; a 6-field expression with seconds also works.
    #[arg(long, env = "GWB_SCHEDULE", default_value = "0 * * * *")]
    pub(crate) schedule: String,
    /// Random delay added to each scheduled time, e.g. 5m.
    #[arg(long, env = "GWB_JITTER", default_value = "0s", value_parser = parse_seconds)]
    pub(crate) jitter: Duration,
    /// Address for /metrics, /healthz, /readyz, /startupz and /leasez.
    #[arg(long, env = "GWB_LISTEN", default_value = "0.0.0.0:9464")]
    pub(crate) listen: std::net::SocketAddr,
    #[command(flatten)]
    pub(crate) lease: LeaseIdentityArgs,
    /// The pod's ServiceAccount directory (token, ca.crt): the sidecar deletes its own pod
    /// through the Kubernetes API when another instance took the lease over.
    #[arg(long, env = "GWB_KUBE_SERVICEACCOUNT_DIR", default_value = ghostwire_backup::kube::SERVICE_ACCOUNT_DIR)]
    pub(crate) kube_serviceaccount_dir: PathBuf,
    /// Lifetime of the lease; it is renewed every third of it.
    #[arg(long, env = "GWB_LEASE_TTL", default_value = "10m", value_parser = parse_seconds)]
    pub(crate) lease_ttl: Duration,
    /// A scheduled backup still running after this long is abandoned (no snapshot).
    #[arg(long, env = "GWB_BACKUP_TIMEOUT", default_value = "1h", value_parser = parse_seconds)]
    pub(crate) backup_timeout: Duration,
    /// Take a final snapshot on SIGTERM (marked final; it releases the lease).
    #[arg(long, env = "GWB_FINAL_SNAPSHOT", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) final_snapshot: bool,
    /// Time allowed for the final snapshot; keep it below the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "GWB_FINAL_DEADLINE", default_value = "90", value_parser = parse_seconds)]
    pub(crate) final_deadline: Duration,
}

/// Who this instance is for the repository's lease, and how far clocks may differ.
#[derive(Args)]
pub(crate) struct LeaseIdentityArgs {
    /// This instance's name for the repository lease, used as it is (default:
    /// <cluster>/<namespace>/<pod> from the three settings below; outside Kubernetes, the
    /// host name).
    #[arg(long, env = "GWB_LEASE_OWNER")]
    pub(crate) lease_owner: Option<String>,
    /// This cluster's id, unique among the clusters that share the repository (a DR
    /// cluster must differ): part of the lease owner.
    #[arg(long, env = "GWB_CLUSTER_ID")]
    pub(crate) cluster_id: Option<String>,
    /// The pod's namespace (the downward API's metadata.namespace): part of the lease owner.
    #[arg(long, env = "GWB_POD_NAMESPACE")]
    pub(crate) pod_namespace: Option<String>,
    /// The pod's name (the downward API's metadata.name): part of the lease owner.
    #[arg(long, env = "GWB_POD_NAME")]
    pub(crate) pod_name: Option<String>,
    /// How far another instance's clock may be behind this one's: its lease is honoured
    /// until it expired by this much.
    #[arg(long, env = "GWB_LEASE_CLOCK_SKEW", default_value = "60s", value_parser = parse_seconds)]
    pub(crate) lease_clock_skew: Duration,
}

impl LeaseIdentityArgs {
    pub(crate) fn owner(&self) -> Result<String> {
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
pub(crate) struct TrustArgs {
    /// The verify key (RW…, printed by `keygen` as GWB_VERIFY_KEY): only snapshots its
    /// signing key signed are listed, restored or kept.
    #[arg(long, help_heading = SIGNATURE_OPTIONS, env = "GWB_VERIFY_KEY")]
    pub(crate) verify_key: Option<String>,
    /// Also accept snapshots with no signature at all, made before signing existed (a
    /// signature that is there must still verify).
    #[arg(long, help_heading = SIGNATURE_OPTIONS, env = "GWB_ALLOW_UNSIGNED")]
    pub(crate) allow_unsigned: bool,
}

/// The heading of [`TrustArgs`]' flags, set on each flag as [`REPOSITORY_OPTIONS`] is.
pub(crate) const SIGNATURE_OPTIONS: &str = "Signature options";

impl TrustArgs {
    pub(crate) fn keys(&self) -> Result<Keys> {
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
pub(crate) struct BackupArgs {
    #[command(flatten)]
    pub(crate) repository: RepoArgs,
    /// The home directory to back up.
    #[arg(long, env = "GWB_SOURCE", default_value = "/home/kasm-user")]
    pub(crate) source: PathBuf,
    /// Signing key file (minisign, from `keygen --signing-out`): every snapshot and lease
    /// is signed with it, so a restore can tell them from anything else in the bucket.
    #[arg(long, env = "GWB_SIGNING_KEY_FILE")]
    pub(crate) signing_key: Option<PathBuf>,
    /// age recipient (public key, age1…); repeat or comma-separate for several.
    #[arg(long = "recipient", env = "GWB_RECIPIENTS", value_delimiter = ',')]
    pub(crate) recipients: Vec<String>,
    /// File of age recipients, one per line.
    #[arg(long = "recipients-file", env = "GWB_RECIPIENTS_FILE")]
    pub(crate) recipient_files: Vec<PathBuf>,
    /// Extra glob of home-relative paths to skip (repeat or comma-separate).
    #[arg(long = "exclude", env = "GWB_EXCLUDE", value_delimiter = ',')]
    pub(crate) excludes: Vec<String>,
    /// File holding Signal's database key (64 hex digits), when config.json has none
    /// (default: the key in config.json).
    #[arg(long, env = "GWB_DB_KEY_FILE")]
    pub(crate) db_key_file: Option<PathBuf>,
    /// Scratch directory for database snapshots (they stay encrypted); needs room for a
    /// copy of Signal's database (default: the temp dir, TMPDIR or /tmp).
    #[arg(long, env = "GWB_STAGING_DIR", default_value_os_t = std::env::temp_dir(), hide_default_value = true)]
    pub(crate) staging_dir: PathBuf,
    /// The local catalog that makes backups incremental; a cache, which backups skip
    /// (default: .ghostwire-backup-catalog.sqlite in the source).
    #[arg(long, env = "GWB_CATALOG")]
    pub(crate) catalog: Option<PathBuf>,
    /// Incremental snapshots between two full ones (0: every snapshot is full).
    #[arg(long, env = "GWB_FULL_EVERY", default_value_t = 24)]
    pub(crate) full_every: u32,
    /// Take a full snapshot when the chain's full one is older than this.
    #[arg(long, env = "GWB_FULL_MAX_AGE", default_value = "7d", value_parser = parse_seconds)]
    pub(crate) full_max_age: Duration,
    /// zstd level (1–19).
    #[arg(long, env = "GWB_ZSTD_LEVEL", default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub(crate) zstd_level: i32,
    /// Archive part size in MiB, from 1 to 512: the archive is stored as objects of this
    /// size (docs/format.md); it grows automatically so that an archive fits in 9,000 parts.
    #[arg(long, env = "GWB_PART_SIZE_MIB", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=512))]
    pub(crate) part_size_mib: u64,
    /// Parts uploaded to S3 at once (a directory takes two); the upload holds about
    /// (1 + this) × part size.
    #[arg(long, env = "GWB_PARALLEL_UPLOADS", default_value_t = 2)]
    pub(crate) parallel_uploads: usize,
    /// How long to wait for a locked database before failing.
    #[arg(long, env = "GWB_DB_WAIT", default_value = "60", value_parser = parse_seconds)]
    pub(crate) db_wait: Duration,
    /// Mark the snapshot final (taken after Signal stopped).
    #[arg(long = "final", env = "GWB_FINAL")]
    pub(crate) r#final: bool,
    /// Back up a home that holds no Signal profile (else such a backup fails: it is
    /// almost always a wrong --source).
    #[arg(long, env = "GWB_ALLOW_NO_SIGNAL")]
    pub(crate) allow_no_signal: bool,
    /// Compression threads (default: the CPUs this process may use, which honours a
    /// container's CPU limit).
    #[arg(long, env = "GWB_THREADS", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) threads: Option<u32>,
    /// Back up at low CPU (nice 10) and IO (best-effort 7) priority, so the desktop wins
    /// under contention; `--low-priority=false` backs up at normal priority.
    #[arg(long, env = "GWB_LOW_PRIORITY", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) low_priority: bool,
}

#[derive(Args)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    pub(crate) repository: RepoArgs,
    /// Snapshot: an id (a unique start of one, or its last 8 hex digits, will do),
    /// `latest`, `final` (the newest final one, else the latest), or
    /// `handoff` (exactly the final snapshot the last instance released the lease with;
    /// fails if it stopped without one).
    #[arg(long, env = "GWB_SNAPSHOT", default_value = "latest")]
    pub(crate) snapshot: Selector,
    /// age identity file (the secret key).
    #[arg(long, env = "GWB_IDENTITY_FILE")]
    pub(crate) identity: PathBuf,
    /// Directory to restore into: an empty volume.
    #[arg(long, env = "GWB_TARGET")]
    pub(crate) target: PathBuf,
    /// Restore into a non-empty target; entries the snapshot replaces are moved aside into
    /// .ghostwire-backup-replaced-<time>/, never deleted.
    /// With --if-empty: bring a volume that diverged from the snapshot to it anyway (same
    /// moving aside).
    #[arg(long, env = "GWB_FORCE")]
    pub(crate) force: bool,
    /// The init container's restore, safe on every pod start: an empty target is restored;
    /// one that holds data is left alone when it is this pod's own newest state (or no
    /// sidecar ever ran), left as it is when it equals the snapshot, caught up when it
    /// equals an older one, and refused (exit 7) when it diverged, unless --force.
    #[arg(long, env = "GWB_IF_EMPTY")]
    pub(crate) if_empty: bool,
    /// Bring a target that an earlier restore from this repository produced to the
    /// snapshot, fetching only what differs (new and changed files, database deltas).
    /// Refused if the target changed since that restore, unless --force. An empty target
    /// is restored in full.
    #[arg(long, env = "GWB_UPDATE", conflicts_with = "if_empty")]
    pub(crate) update: bool,
    /// Restore ahead of a blue/green switch while the running instance holds the lease (a
    /// Job on the new volume; never where Signal starts next): the new instance's
    /// `restore --if-empty` then fetches only what changed until the handoff.
    #[arg(long, env = "GWB_PRESTAGE", conflicts_with = "if_empty")]
    pub(crate) prestage: bool,
    /// Owner for every restored entry, UID:GID; Kasm's is 1000:0 (default: the archived
    /// owner when running as root, else yours).
    #[arg(long, env = "GWB_CHOWN", value_parser = parse_owner)]
    pub(crate) chown: Option<(u32, u32)>,
    #[command(flatten)]
    pub(crate) lease: LeaseIdentityArgs,
    /// Restore although another instance's lease is live (it is gone for good).
    #[arg(long, env = "GWB_BREAK_LEASE")]
    pub(crate) break_lease: bool,
    #[command(flatten)]
    pub(crate) trust: TrustArgs,
    /// Fail if the repository holds no snapshot, also with --if-empty (a wrong location
    /// must not start Signal on an empty profile); off only for a first install.
    #[arg(long, env = "GWB_REQUIRE_SNAPSHOT")]
    pub(crate) require_snapshot: bool,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) repository: RepoArgs,
    /// Snapshot: an id (or a unique start of one, or its last 8 hex digits), `latest`,
    /// `final` or `handoff`.
    #[arg(long, env = "GWB_SNAPSHOT", default_value = "latest")]
    pub(crate) snapshot: Selector,
    /// age identity file; not needed with --quick.
    #[arg(long, env = "GWB_IDENTITY_FILE", required_unless_present = "quick")]
    pub(crate) identity: Option<PathBuf>,
    /// Only check the archive's size and SHA-256 against its manifest (no key needed).
    #[arg(long, env = "GWB_QUICK")]
    pub(crate) quick: bool,
    #[command(flatten)]
    pub(crate) trust: TrustArgs,
}

/// Every duration flag: plain seconds (`90`, as Kubernetes fields are) or with units
/// (`90s`, `2h`, `1h30m`), so no flag takes a syntax another one refuses.
pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text).map_err(|e| {
            format!("{e}: a duration is seconds (90) or a number with units (90s, 15m, 2h, 7d)")
        }),
    }
}

impl BackupArgs {
    /// The signing key, which every backup needs.
    pub(crate) fn keys(&self) -> Result<Keys> {
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

    pub(crate) fn options(self) -> BackupOptions {
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

pub(crate) fn parse_repo(text: &str) -> Result<String, String> {
    repo::check_location(text).map(|()| text.to_string())
}

/// An endpoint without a scheme would reach the SDK as a relative URL and fail only after
/// every retry, as if the server were down.
pub(crate) fn parse_endpoint(text: &str) -> Result<String, String> {
    if text.starts_with("http://") || text.starts_with("https://") {
        return Ok(text.to_string());
    }
    Err(format!(
        "an S3 endpoint is a URL with its scheme: https://{text} (or http://{text} for a \
         server without TLS)"
    ))
}

pub(crate) fn parse_owner(text: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = text
        .split_once(':')
        .ok_or("expected UID:GID, e.g. 1000:0")?;
    Ok((
        uid.parse().map_err(|_| "UID must be a number")?,
        gid.parse().map_err(|_| "GID must be a number")?,
    ))
}

impl RunArgs {
    /// The daemon's own options (its backups take [`BackupArgs::options`]).
    pub(crate) fn options(&self) -> Result<RunOptions> {
        Ok(RunOptions {
            timing: Timing {
                schedule: schedule::parse(&self.schedule)?,
                jitter: self.jitter,
                backup_timeout: self.backup_timeout,
                final_deadline: self.final_deadline,
            },
            lease: Terms {
                owner: self.lease.owner()?,
                ttl: self.lease_ttl,
                skew: self.lease.lease_clock_skew,
            },
            own_pod: kube::OwnPod::from_env(
                self.lease.pod_namespace.as_deref(),
                self.lease.pod_name.as_deref(),
                &self.kube_serviceaccount_dir,
            )?,
            listen: self.listen,
            final_snapshot: self.final_snapshot,
        })
    }
}

impl PruneArgs {
    pub(crate) fn options(&self) -> PruneOptions {
        PruneOptions {
            policy: Policy {
                keep_last: self.keep_last,
                keep_hourly: self.keep_hourly,
                keep_daily: self.keep_daily,
                keep_weekly: self.keep_weekly,
                keep_monthly: self.keep_monthly,
            },
            dry_run: self.dry_run,
        }
    }
}

impl ForgetArgs {
    pub(crate) fn options(&self) -> ForgetOptions {
        ForgetOptions {
            snapshots: self.snapshots.clone(),
            dry_run: self.dry_run,
        }
    }
}

impl RestoreArgs {
    pub(crate) fn options(&self) -> Result<RestoreOptions> {
        Ok(RestoreOptions {
            snapshot: self.snapshot.clone(),
            identity: self.identity.clone(),
            target: self.target.clone(),
            force: self.force,
            if_empty: self.if_empty,
            chown: self.chown,
            lease_owner: self.lease.owner()?,
            lease_skew: self.lease.lease_clock_skew,
            break_lease: self.break_lease,
            require_snapshot: self.require_snapshot,
            update: self.update,
            prestage: self.prestage,
        })
    }
}

impl VerifyArgs {
    pub(crate) fn options(&self) -> VerifyOptions {
        VerifyOptions {
            snapshot: self.snapshot.clone(),
            identity: self.identity.clone(),
            quick: self.quick,
        }
    }
}
