//! The test harness: real parts only. A Signal profile made by Signal's own SQLite driver
//! (`tests/node`, `@signalapp/sqlcipher`), a real S3 server process (moto) on 127.0.0.1,
//! the real binary, real files. `command` runs things so that failures say everything;
//! `fixture` is the profile + key + repository most tests start from; `faults` is a
//! fault-injecting proxy in front of the S3 server.

pub mod command;
pub mod faults;
pub mod fixture;
pub mod kube;
pub mod plain;
pub mod sidecar;

pub use command::{Ran, Spawned, Stderr, TestCommand};
pub use fixture::{
    Fixture, Tar, age_encrypt, backup_command, copy_home, restore_command, tar_header,
};
pub use plain::Plain;
pub use sidecar::{SIDECAR_WAIT, Sidecar};

/// The typed repository layout: tests name objects as the agent does, never by hand.
pub use ghostwire_backup::layout::{Object, REPOSITORY_ID};
pub use ghostwire_backup::manifest_list::KEY as MANIFEST_LIST;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The parts of the test setup that cargo does not install. A test that needs a missing
/// one stops at once with one line that says how to install it, instead of a timeout or a
/// confusing error further on.
#[derive(Debug, Clone, Copy)]
pub enum Part {
    Node,
    SignalDriver,
    Moto,
    Age,
    Zstd,
    /// Debian's minisign: the stock tool docs/format.md checks signatures with.
    Minisign,
    /// util-linux's `script`: a pseudo-terminal for what only a terminal shows.
    Script,
}

const INSTALL: &str = "run scripts/install-test-deps.sh";

/// Where `part` is installed; panics with the install command if it is not.
pub fn require(part: Part) -> PathBuf {
    let found = match part {
        Part::Node => on_path("node"),
        Part::SignalDriver => {
            Some(repo_root().join("tests/node/node_modules/@signalapp/sqlcipher"))
                .filter(|dir| dir.is_dir())
        }
        Part::Moto => Some(moto_server()).filter(|path| is_executable(path)),
        Part::Age => on_path("age"),
        Part::Zstd => on_path("zstd"),
        Part::Minisign => on_path("minisign"),
        Part::Script => on_path("script"),
    };
    found.unwrap_or_else(|| match part {
        Part::Node => panic!(
            "node (Node.js >= 20) is not on PATH: install it (Debian: apt-get install nodejs), then {INSTALL}"
        ),
        Part::SignalDriver => panic!(
            "Signal's SQLite driver (tests/node/node_modules/@signalapp/sqlcipher) is not installed: {INSTALL}"
        ),
        Part::Moto => panic!(
            "moto's S3 server ({}) is not installed: {INSTALL}",
            moto_server().display()
        ),
        Part::Age => panic!("age is not on PATH: {INSTALL}"),
        Part::Zstd => panic!("zstd is not on PATH: {INSTALL}"),
        Part::Minisign => panic!("minisign is not on PATH: {INSTALL}"),
        Part::Script => panic!("script is not on PATH: install util-linux's script (Debian: apt-get install bsdutils)"),
    })
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn moto_server() -> PathBuf {
    std::env::var_os("GWB_TEST_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-s3/bin/moto_server"))
}

/// The backup side's signing key of this test run, and its verify key: made once by the
/// binary's own `keygen`, and given to every agent, as a deployment gives the signing key
/// to the backup side and the verify key to the restore side.
pub struct SigningKeys {
    pub signing_key: PathBuf,
    pub verify_key: String,
}

pub fn signing_keys() -> &'static SigningKeys {
    static KEYS: OnceLock<SigningKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("gwb-test-signing-")
            .tempdir()
            .unwrap()
            .keep();
        let (signing_key, verify_key) = signing_keygen(&dir);
        SigningKeys {
            signing_key,
            verify_key,
        }
    })
}

/// A new signing key in `dir` made by the agent, and its verify key.
pub fn signing_keygen(dir: &Path) -> (PathBuf, String) {
    let signing_key = dir.join("signing.key");
    let printed = clean_agent()
        .arg("keygen")
        .arg("--signing-out")
        .arg(&signing_key)
        .ok();
    let verify_key = printed
        .strip_prefix("GWB_VERIFY_KEY=")
        .unwrap_or_else(|| panic!("keygen printed {printed:?}"))
        .to_string();
    (signing_key, verify_key)
}

/// Signs the manifest at `path` (a `snapshots/<id>.json` of a local repository) with this
/// run's signing key, as the backup side does: for tests that plant what only a holder of
/// the signing key could, to show what still stands in the way then.
pub fn sign_manifest(path: &Path) {
    let signer = ghostwire_backup::signing::Signer::load(&signing_keys().signing_key).unwrap();
    let id = path.file_stem().unwrap().to_str().unwrap();
    let key = Object::Manifest(id.to_string()).key();
    let repository = path.parent().unwrap().parent().unwrap().join(REPOSITORY_ID);
    let repository: Option<String> = std::fs::read(repository)
        .ok()
        .map(|record| serde_json::from_slice::<Value>(&record).unwrap()["id"].to_string())
        .map(|id| id.trim_matches('"').to_string());
    let signature = signer.sign(&key, repository.as_deref(), &std::fs::read(path).unwrap());
    std::fs::write(format!("{}.minisig", path.display()), signature).unwrap();
}

/// The binary under test with a clean environment (no GWB_* or AWS_* from the caller) and
/// this run's signing and verify keys.
pub fn agent() -> TestCommand {
    let keys = signing_keys();
    let mut command = clean_agent();
    command
        .env("GWB_SIGNING_KEY_FILE", &keys.signing_key)
        .env("GWB_VERIFY_KEY", &keys.verify_key);
    command
}

/// The binary under test, with a clean environment: no GWB_* or AWS_* from the caller.
fn clean_agent() -> TestCommand {
    let mut command = TestCommand::new(env!("CARGO_BIN_EXE_ghostwire-backup"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("GWB_") || name.starts_with("AWS_") {
            command.env_remove(&*name);
        }
    }
    // Never let the AWS chain look for instance metadata: tests talk to 127.0.0.1 only.
    command
        .env("GWB_LOG_FORMAT", "text")
        .env("NO_COLOR", "1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    command
}

/// The agent with the repository `repo` (a local directory or `s3://bucket/prefix`).
pub fn agent_for(repo: impl AsRef<std::ffi::OsStr>) -> TestCommand {
    let mut command = agent();
    command.env("GWB_REPO", repo);
    command
}

/// The ids `snapshots --json` lists, oldest first, in the repository `agent` points at.
pub fn snapshot_ids(agent: &mut TestCommand) -> Vec<String> {
    let listed: Value = serde_json::from_str(&agent.args(["snapshots", "--json"]).ok()).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// A key pair made by the agent itself.
pub fn keygen(dir: &Path) -> (PathBuf, String) {
    let identity = dir.join("identity.txt");
    let printed = agent().arg("keygen").arg("--out").arg(&identity).ok();
    let recipient = printed
        .strip_prefix("GWB_RECIPIENTS=")
        .unwrap_or_else(|| panic!("keygen printed {printed:?}"))
        .to_string();
    (identity, recipient)
}

/// One of the scripts in tests/node, with Signal's driver.
fn node_script(name: &str) -> TestCommand {
    require(Part::SignalDriver);
    let mut command = TestCommand::new(require(Part::Node));
    command.arg(repo_root().join("tests/node").join(name));
    command
}

/// A Signal-like home made with Signal's own driver.
pub struct Profile {
    pub home: PathBuf,
    pub key: String,
    pub messages: u64,
    pub summary: Value,
}

impl Profile {
    pub fn db(&self) -> PathBuf {
        self.home.join(".config/Signal/sql/db.sqlite")
    }
}

pub fn make_profile(home: &Path, extra: &[&str]) -> Profile {
    let printed = node_script("make-profile.mjs").arg(home).args(extra).ok();
    let summary: Value = serde_json::from_str(&printed).expect("make-profile prints JSON");
    Profile {
        home: home.to_path_buf(),
        key: summary["key"].as_str().unwrap().to_string(),
        messages: summary["messages"].as_u64().unwrap(),
        summary,
    }
}

/// Opens a database with Signal's driver: integrity, schema version, row counts.
pub fn check_db(db: &Path, key: &str, ids: Option<&Path>) -> Value {
    let mut command = node_script("check-db.mjs");
    command.arg(db).arg(key);
    if let Some(ids) = ids {
        command.arg(ids);
    }
    serde_json::from_str(&command.ok()).unwrap()
}

/// Opens a Signal database with Signal's driver and closes it as Signal does when it
/// quits (`PRAGMA optimize`, then close), committing nothing.
pub fn open_and_quit(db: &Path, key: &str) {
    node_script("check-db.mjs")
        .arg(db)
        .arg(key)
        .arg("--close")
        .ok();
}

/// The desktop stops cleanly: Signal quits (see [`open_and_quit`]) and so does every other
/// program that keeps a SQLite database in the home (Kasm's `state.sqlite`), which
/// checkpoints its WAL and removes it, as SQLite does when its last connection closes.
pub fn desktop_quits(home: &Path, key: &str) {
    open_and_quit(&home.join(".config/Signal/sql/db.sqlite"), key);
    let kasm = rusqlite::Connection::open(home.join(".local/share/kasm/state.sqlite")).unwrap();
    kasm.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .unwrap();
    kasm.close().unwrap();
}

/// Checks a restored Signal database with Signal's driver: it opens, passes its integrity
/// check, and holds `messages` messages. Returns what check-db reported.
pub fn assert_signal_db(home: &Path, key: &str, messages: u64) -> Value {
    let db = check_db(&home.join(".config/Signal/sql/db.sqlite"), key, None);
    assert_eq!(db["integrity"], "ok", "{db}");
    assert_eq!(
        db["messages"].as_u64().unwrap(),
        messages,
        "rows lost: {db}"
    );
    db
}

/// Waits until Signal's database in `home` has been quiet for as long as the agent needs to
/// trust its stamp (100 ms where file times have nanoseconds, 2 s where they are whole
/// seconds): asked of the agent's own rule, so the wait is right on either file system.
pub fn wait_for_quiet_database(home: &Path) {
    wait_for(
        "Signal's database to be quiet",
        Duration::from_secs(30),
        || ghostwire_backup::signal_db::stamp(home).unwrap(),
    );
}

/// Bytes a snapshot uploaded: its archive and index.
pub fn uploaded(manifest: &Value) -> u64 {
    manifest["archive"]["size"].as_u64().unwrap() + manifest["index"]["size"].as_u64().unwrap()
}

/// Signal's driver commits `count` or a few more messages to the database in `home` and
/// stops; their ids are appended to `ids`. Returns how many ids `ids` then holds.
pub fn commit_messages(home: &Path, key: &str, ids: &Path, count: usize) -> u64 {
    let lines = |ids: &Path| std::fs::read_to_string(ids).map_or(0, |text| text.lines().count());
    let writer = Writer::start(&home.join(".config/Signal/sql/db.sqlite"), key, ids);
    writer.wait_for(lines(ids) + count); // it counts the lines of `ids`
    writer.stop();
    lines(ids) as u64
}

/// An application writing a plain SQLite database in WAL mode (Chromium's `History`;
/// `DIPS`, `Trust Tokens`, `Cookies` in Signal's Electron profile): adds `rows` rows of about
/// 1 KiB, created if need be, and leaves them (and the pages they grow it by) in its
/// `-wal`, as a running application does. Returns the table's row count.
pub fn add_wal_rows(db: &Path, rows: usize) -> u64 {
    let printed = node_script("plain-wal-db.mjs")
        .arg(db)
        .arg(rows.to_string())
        .ok();
    let summary: Value = serde_json::from_str(&printed).expect("plain-wal-db prints JSON");
    summary["rows"].as_u64().unwrap()
}

/// Signal's writer: small transactions through Signal's driver, until stopped.
pub struct Writer {
    child: Spawned,
    pub ids: PathBuf,
}

impl Writer {
    pub fn start(db: &Path, key: &str, ids: &Path) -> Self {
        Self::start_with(db, key, ids, &[])
    }

    /// With writer.mjs's `options` (`--checkpoint-ms 20`, …).
    pub fn start_with(db: &Path, key: &str, ids: &Path, options: &[&str]) -> Self {
        let child = node_script("writer.mjs")
            .arg(db)
            .arg(key)
            .arg(ids)
            .args(options)
            .spawn(Stdio::piped(), Stdio::inherit());
        Self {
            child,
            ids: ids.to_path_buf(),
        }
    }

    pub fn committed(&self) -> usize {
        std::fs::read_to_string(&self.ids)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// Waits until it has committed `count` transactions.
    pub fn wait_for(&self, count: usize) {
        while self.committed() < count {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it with SIGTERM and returns its report (commits, busy, latencies).
    pub fn stop(mut self) -> Value {
        // SAFETY: kill on a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        self.child.wait().unwrap();
        serde_json::from_str(out.lines().last().expect("the writer reports")).unwrap()
    }
}

/// A real S3 server (moto) on 127.0.0.1, stopped on drop.
pub struct S3Server {
    /// Kept for its drop, which stops the server.
    _process: Spawned,
    /// The serial wrapper's script, for a server started with [`S3Server::start_serial`].
    _script: Option<tempfile::TempDir>,
    pub endpoint: String,
    port: u16,
}

impl S3Server {
    pub fn start() -> Self {
        let moto = require(Part::Moto);
        Self::start_with(TestCommand::new(&moto), moto, None)
    }

    /// moto, handling one request at a time. moto's conditional PUT checks the precondition
    /// and then writes, without a lock (moto 5.2 `s3/responses.py` `put_object`), so on its
    /// threaded server two racing conditional writers can both win, which S3 itself never
    /// lets happen. Handled in turn, moto keeps S3's guarantee and a race tests our client.
    pub fn start_serial() -> Self {
        let moto = require(Part::Moto);
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("moto_serial.py");
        std::fs::write(&script, MOTO_SERIAL).unwrap();
        let mut command = TestCommand::new(moto.with_file_name("python"));
        command.arg(&script);
        Self::start_with(command, moto, Some(dir))
    }

    fn start_with(
        mut command: TestCommand,
        moto: PathBuf,
        script: Option<tempfile::TempDir>,
    ) -> Self {
        let port = free_port();
        let mut child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .spawn(Stdio::null(), Stdio::null());
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "moto's S3 server ({}) exited at start ({status}): run it by hand to see why, or reinstall: {INSTALL}",
                    moto.display()
                );
            }
            assert!(Instant::now() < deadline, "moto did not start within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            _process: child,
            _script: script,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        }
    }

    /// A server with one bucket.
    pub fn with_bucket(bucket: &str) -> Self {
        let server = Self::start();
        server.create_bucket(bucket);
        server
    }

    /// Creates a bucket (moto does not check signatures on this call).
    pub fn create_bucket(&self, bucket: &str) {
        self.create_bucket_with(bucket, "");
    }

    /// Creates a bucket with S3 Object Lock enabled.
    pub fn create_bucket_with_object_lock(&self, bucket: &str) {
        self.create_bucket_with(bucket, "x-amz-bucket-object-lock-enabled: true\r\n");
    }

    fn create_bucket_with(&self, bucket: &str, headers: &str) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(stream, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n", self.port).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "bucket creation failed: {response}"
        );
    }

    /// A GET straight to the server, unsigned (moto checks no signatures unless told to):
    /// the status code and body.
    pub fn get(&self, target: &str) -> (u16, String) {
        self.request("GET", target, &[], "")
    }

    /// One request straight to the server: the status code and body.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.port,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        write!(stream, "{head}\r\n{body}").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// Multipart uploads started under `prefix` and neither completed nor aborted.
    pub fn open_uploads(&self, bucket: &str, prefix: &str) -> usize {
        let (status, body) = self.get(&format!("/{bucket}?uploads&prefix={prefix}"));
        assert_eq!(status, 200, "list multipart uploads failed: {body}");
        body.matches("<UploadId>").count()
    }

    /// Points the agent at this server (the repository is the caller's to set).
    pub fn configure(&self, command: &mut TestCommand) {
        command
            .env("GWB_S3_ENDPOINT", &self.endpoint)
            .env("GWB_S3_PATH_STYLE", "true")
            .env("GWB_S3_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test-access-key")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret-key");
    }

    /// The agent with the repository `repo` (`s3://bucket/prefix`) on this server.
    pub fn agent(&self, repo: &str) -> TestCommand {
        let mut command = agent_for(repo);
        self.configure(&mut command);
        command
    }
}

/// The repository `repo` (`s3://…`) at `endpoint`, opened inside the test process (the
/// lease tests call the crate directly), with `max_attempts` per request.
pub async fn open_in_process(
    repo: &str,
    endpoint: &str,
    max_attempts: u32,
) -> ghostwire_backup::repo::Repository {
    in_process_s3_credentials();
    let options = ghostwire_backup::store::s3::S3Options {
        endpoint: Some(endpoint.to_string()),
        region: Some("us-east-1".into()),
        path_style: true,
        max_attempts,
        parallel_parts: 1,
        object_lock: None,
    };
    ghostwire_backup::repo::Repository::open(repo, &options)
        .await
        .unwrap()
}

/// The SDK reads credentials from the environment, as in a pod. They are set once, to the
/// same values whichever test comes first, so tests running side by side never see them
/// change; the agents the other tests start do not inherit them (`agent()` clears AWS_*).
pub fn in_process_s3_credentials() {
    static SET: Once = Once::new();
    SET.call_once(|| {
        // SAFETY: std serialises its own environment access; nothing in this process reads
        // these variables outside std.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        }
    });
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a shell pipeline of stock tools (`$1`, `$2`… are `args`), for the tests that
/// restore without the agent.
pub fn stock_tools(script: &str, args: &[&Path]) {
    require(Part::Age);
    require(Part::Zstd);
    TestCommand::new("bash")
        .arg("-c")
        .arg(format!("set -eo pipefail; {script}"))
        .arg("sh")
        .args(args)
        .ok();
}

/// What a tree holds, entry by entry: kind, permission bits, and content hash or link
/// target. Paths for which `skip` says true are left out.
pub fn tree(root: &Path, skip: &dyn Fn(&str) -> bool) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    walk(root, root, skip, &mut found);
    found
}

fn walk(
    root: &Path,
    dir: &Path,
    skip: &dyn Fn(&str) -> bool,
    found: &mut BTreeMap<String, String>,
) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if skip(&relative) {
            continue;
        }
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        let mode = metadata.mode() & 0o777;
        let description = if metadata.is_dir() {
            walk(root, &path, skip, found);
            format!("dir {mode:o}")
        } else if metadata.file_type().is_symlink() {
            format!("link -> {}", std::fs::read_link(&path).unwrap().display())
        } else if metadata.is_file() {
            let content = std::fs::read(&path).unwrap();
            if content.starts_with(b"SQLite format 3\0") {
                // A snapshot is a new file with the same rows: compared by query instead.
                format!("sqlite {mode:o}")
            } else {
                format!("file {mode:o} {}", hex::encode(Sha256::digest(&content)))
            }
        } else {
            "special".to_string()
        };
        found.insert(relative, description);
    }
}

/// Rows in a plain SQLite table, read with SQLite itself.
pub fn count_rows(db: &Path, table: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
        row.get(0)
    })
    .unwrap()
}

/// Compares two trees and names only the entries that differ.
pub fn assert_same_tree(actual: &BTreeMap<String, String>, expected: &BTreeMap<String, String>) {
    let mut differences = Vec::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => differences.push(format!("missing: {path} ({want})")),
            Some(got) if got != want => {
                differences.push(format!("differs: {path}: {got} instead of {want}"))
            }
            _ => {}
        }
    }
    for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
        differences.push(format!("unexpected: {path}"));
    }
    assert!(
        differences.is_empty(),
        "trees differ:\n{}",
        differences.join("\n")
    );
}

/// The agent's own files at the top of a home or volume (catalog, restore marker,
/// staging): left out when trees are compared.
pub fn ours(path: &str) -> bool {
    path.starts_with(ghostwire_backup::profile::OWN_FILES_PREFIX)
}

/// Paths a backup must not carry: caches, locks, sockets, the live WAL files, and the
/// Signal database (compared through Signal's driver instead, since a snapshot is a new
/// file with the same rows).
pub fn not_backed_up(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap();
    let signal_skips = [
        "temp",
        "update-cache",
        "downloads.noindex",
        "logs",
        "Cache",
        "Code Cache",
        "GPUCache",
        "Crashpad",
        "blob_storage",
    ];
    name.starts_with("Singleton")
        || [".cache", ".vnc", ".kasmpasswd"].contains(&path)
        || path
            .strip_prefix(".config/Signal/")
            .is_some_and(|rest| signal_skips.contains(&rest) || rest.starts_with("Dawn"))
        || path.ends_with("-wal")
        || path.ends_with("-shm")
        || path.ends_with("-journal")
        || path.ends_with(".sock")
        || path == ".config/Signal/sql/db.sqlite"
        || ours(path)
}

const MOTO_SERIAL: &str = r#"
import sys, threading
import werkzeug.serving

run_simple = werkzeug.serving.run_simple
one_at_a_time = threading.Lock()

def serial(app):
    def handle(environ, start_response):
        with one_at_a_time:
            return list(app(environ, start_response))
    return handle

werkzeug.serving.run_simple = lambda host, port, app, **options: run_simple(
    host, port, serial(app), **options)

from moto.server import main
main(sys.argv[1:])
"#;

/// Polls `probe` every 50 ms until it gives a value, for at most `limit`: how a test waits
/// for an event it can observe (a port answering, a file appearing, a metric set).
pub fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the snapshot `manifest` (its JSON) finished more than `age` ago by the wall
/// clock: the moment a `check --max-age` must start calling it too old.
pub fn wait_until_older_than(manifest: &Value, age: Duration) {
    let finished = chrono::DateTime::parse_from_rfc3339(manifest["finished_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let old_enough = finished + chrono::Duration::from_std(age).unwrap();
    while let Ok(left) = (old_enough - chrono::Utc::now()).to_std() {
        std::thread::sleep(left + Duration::from_millis(10));
    }
}

/// A GET to the daemon on 127.0.0.1:`port`: the whole HTTP response, or `None` while
/// nothing listens.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// The value of a metric line `name value` in a Prometheus text response.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
