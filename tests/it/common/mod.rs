//! The test harness: real parts only. A Signal profile made by Signal's own SQLite driver
//! (`tests/node`, `@signalapp/sqlcipher`), a real S3 server process (moto) on 127.0.0.1,
//! the real binary, real files.
#![allow(dead_code)]

pub mod faults;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary under test, with a clean environment: no GWB_* or AWS_* from the caller.
pub fn agent() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ghostwire-backup"));
    for (name, _) in std::env::vars() {
        if name.starts_with("GWB_") || name.starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    // Never let the AWS chain look for instance metadata: tests talk to 127.0.0.1 only.
    command
        .env("GWB_LOG_FORMAT", "text")
        .env("NO_COLOR", "1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    command
}

/// Runs the agent and returns its output, printing it for the test log.
pub fn run(command: &mut Command) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .expect("the agent runs");
    eprintln!(
        "--- {:?}\nstatus: {}\nstdout: {}\nstderr: {}",
        command.get_args().collect::<Vec<_>>(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn run_ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(output.status.success(), "the agent failed");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Runs the agent, expects failure, and returns stderr.
pub fn run_err(command: &mut Command) -> String {
    let output = run(command);
    assert!(!output.status.success(), "the agent should have failed");
    String::from_utf8(output.stderr).unwrap()
}

fn node_script(name: &str) -> Command {
    let dir = repo_root().join("tests/node");
    assert!(
        dir.join("node_modules/@signalapp/sqlcipher").exists(),
        "Signal's driver is not installed: run `npm ci --prefix tests/node` (scripts/test.sh does)"
    );
    let mut command = Command::new("node");
    command.arg(dir.join(name));
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
    let output = node_script("make-profile.mjs")
        .arg(home)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "make-profile failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).expect("make-profile prints JSON");
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
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "check-db could not open {}: {}",
        db.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Signal's writer: small transactions through Signal's driver, until stopped.
pub struct Writer {
    child: Child,
    pub ids: PathBuf,
}

impl Writer {
    pub fn start(db: &Path, key: &str, ids: &Path) -> Self {
        let child = node_script("writer.mjs")
            .arg(db)
            .arg(key)
            .arg(ids)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
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

    /// Stops it with SIGTERM and returns its report (commits, busy, latencies).
    pub fn stop(mut self) -> Value {
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
    child: Child,
    pub endpoint: String,
    port: u16,
}

impl S3Server {
    pub fn start() -> Self {
        let moto = std::env::var("GWB_TEST_MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join(".venv-s3/bin/moto_server"));
        assert!(
            moto.exists(),
            "{} is missing: scripts/test.sh installs moto[server] into .venv-s3",
            moto.display()
        );
        let port = free_port();
        let child = Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        }
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

    /// Points the agent at this server.
    pub fn configure(&self, command: &mut Command) {
        command
            .env("GWB_S3_ENDPOINT", &self.endpoint)
            .env("GWB_S3_PATH_STYLE", "true")
            .env("GWB_S3_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test-access-key")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret-key");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `backup` of `home` into the repository `repo`, ready for more flags.
pub fn backup_command(
    repo: impl AsRef<std::ffi::OsStr>,
    home: &Path,
    recipient: &str,
    staging: impl AsRef<std::ffi::OsStr>,
) -> Command {
    let mut command = agent();
    command
        .env("GWB_REPO", repo)
        .arg("backup")
        .arg("--source")
        .arg(home)
        .arg("--recipient")
        .arg(recipient)
        .arg("--staging-dir")
        .arg(staging);
    command
}

/// A key pair made by the agent itself.
pub fn keygen(dir: &Path) -> (PathBuf, String) {
    let identity = dir.join("identity.txt");
    let recipient = run_ok(agent().arg("keygen").arg("--out").arg(&identity));
    (identity, recipient)
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
        || path.starts_with(".ghostwire-backup")
}
