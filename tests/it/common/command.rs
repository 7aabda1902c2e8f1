//! A command under test, after ripgrep's `TestCommand`: whatever goes wrong, the failure
//! message holds the command line, the environment variables the test set (secret values
//! hidden), the exit status, stdout and stderr, so a failure in CI reads without a re-run.
//!
//! `ok()` expects success and returns stdout; `fails()` expects failure and returns
//! stderr; `fails_with(&[...])` also expects words in stderr, `fails_with_code(code,
//! &[...])` an exit code too; `run()` expects nothing and
//! returns a [`Ran`] whose `Display` is the whole story, for a test's own assertions.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

pub struct TestCommand {
    command: Command,
}

impl TestCommand {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            command: Command::new(program),
        }
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.command.arg(arg);
        self
    }

    pub fn args(&mut self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> &mut Self {
        self.command.args(args);
        self
    }

    pub fn env(&mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.command.env(name, value);
        self
    }

    pub fn env_remove(&mut self, name: impl AsRef<OsStr>) -> &mut Self {
        self.command.env_remove(name);
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<std::path::Path>) -> &mut Self {
        self.command.current_dir(dir);
        self
    }

    /// Runs it as another user (the test must be root). That user may not be able to enter
    /// the directory the program was built in (a clone inside a 0700 home, or in a
    /// `mktemp -d` directory), so the program runs from [`reachable_by_everyone`]'s copy.
    pub fn user(&mut self, uid: u32, gid: u32) -> &mut Self {
        use std::os::unix::process::CommandExt;
        let program = reachable_by_everyone(Path::new(self.command.get_program()));
        let mut moved = self.relaunched([program.as_os_str()]);
        moved.uid(uid).gid(gid);
        self.command = moved;
        self
    }

    /// A new command line, `words` then this command's arguments, with this command's
    /// environment and directory: how it is run as another user, under a umask, or timed.
    fn relaunched<'a>(&self, words: impl IntoIterator<Item = &'a OsStr>) -> Command {
        let mut words = words.into_iter();
        let mut command = Command::new(words.next().expect("a program"));
        command.args(words).args(self.command.get_args());
        for (name, value) in self.command.get_envs() {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        if let Some(dir) = self.command.get_current_dir() {
            command.current_dir(dir);
        }
        command
    }

    /// The same command started through `sh` with umask 000: what a careless service
    /// manager or a desktop session may hand the agent.
    pub fn with_umask_000(&mut self) -> &mut Self {
        let program = self.command.get_program().to_owned();
        let wrapped = self.relaunched([
            OsStr::new("/bin/sh"),
            OsStr::new("-c"),
            OsStr::new("umask 000; exec \"$0\" \"$@\""),
            &program,
        ]);
        self.command = wrapped;
        self
    }

    /// Runs it to the end with stdin closed, asserting nothing.
    pub fn run(&mut self) -> Ran {
        let output = self
            .command
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot start it: {e}\n{self}"));
        Ran {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            command: self.to_string(),
        }
    }

    /// Runs it to the end like [`TestCommand::run`], and also returns its peak resident
    /// memory in KiB, as GNU time reports it. Not the test's own `wait4`: a child started
    /// from the test process inherits that process's high-water mark at `exec`, while
    /// time's own child starts from time's few hundred KiB.
    pub fn run_measured(&mut self) -> (Ran, u64) {
        const TIME: &str = "/usr/bin/time";
        assert!(
            Path::new(TIME).exists(),
            "{TIME} is missing: scripts/install-test-deps.sh installs it (Debian: apt-get install time)"
        );
        let report = tempfile::NamedTempFile::new().unwrap();
        let program = self.command.get_program().to_owned();
        let timed = self.relaunched([
            OsStr::new(TIME),
            OsStr::new("-f"),
            OsStr::new("%M"),
            OsStr::new("-o"),
            report.path().as_os_str(),
            &program,
        ]);
        let ran = TestCommand { command: timed }.run();
        // After "Command exited with non-zero status N", when it did.
        let text = std::fs::read_to_string(report.path()).unwrap();
        let kib = text
            .lines()
            .last()
            .and_then(|line| line.trim().parse().ok())
            .unwrap_or_else(|| panic!("time reported no peak memory: {text:?}\n{ran}"));
        (ran, kib)
    }

    /// Runs it, expects success, and returns stdout without its surrounding white space.
    pub fn ok(&mut self) -> String {
        let ran = self.run();
        assert!(ran.status.success(), "it failed:\n{ran}");
        ran.stdout.trim().to_string()
    }

    /// Runs it, expects failure, and returns stderr.
    pub fn fails(&mut self) -> String {
        let ran = self.run();
        assert!(!ran.status.success(), "it should have failed:\n{ran}");
        ran.stderr
    }

    /// Runs it, expects failure with every one of `words` in stderr, and returns stderr.
    pub fn fails_with(&mut self, words: &[&str]) -> String {
        let ran = self.run();
        assert!(!ran.status.success(), "it should have failed:\n{ran}");
        let missing: Vec<_> = words.iter().filter(|w| !ran.stderr.contains(*w)).collect();
        assert!(missing.is_empty(), "stderr lacks {missing:?}:\n{ran}");
        ran.stderr
    }

    /// Runs it, expects it to end with exit code `code` and every one of `words` in
    /// stderr (the README's exit-code table is part of the interface), and returns stderr.
    pub fn fails_with_code(&mut self, code: i32, words: &[&str]) -> String {
        let ran = self.run();
        assert_eq!(ran.status.code(), Some(code), "wrong exit code:\n{ran}");
        let missing: Vec<_> = words.iter().filter(|w| !ran.stderr.contains(*w)).collect();
        assert!(missing.is_empty(), "stderr lacks {missing:?}:\n{ran}");
        ran.stderr
    }

    /// Starts it without waiting, stdin closed, stdout and stderr as given. It is killed
    /// if the test ends (or fails) before it does.
    pub fn spawn(&mut self, stdout: Stdio, stderr: Stdio) -> Spawned {
        let child = self
            .command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start it: {e}\n{self}"));
        Spawned(child)
    }
}

/// `program` in a directory of its own that every user can enter (under the system's temp
/// directory, mode 0755), made once per program per test run: a hard link where the file
/// system allows one, else a copy. It is left behind when the tests end (a hard link costs
/// nothing; the directory names say what they are).
fn reachable_by_everyone(program: &Path) -> PathBuf {
    static MOVED: Mutex<Option<HashMap<PathBuf, PathBuf>>> = Mutex::new(None);
    let mut moved = MOVED.lock().unwrap();
    let moved = moved.get_or_insert_with(HashMap::new);
    if let Some(reachable) = moved.get(program) {
        return reachable.clone();
    }
    let dir = tempfile::Builder::new()
        .prefix("gwb-test-bin-")
        .tempdir()
        .unwrap()
        .keep();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let reachable = dir.join(program.file_name().expect("a program's file name"));
    if std::fs::hard_link(program, &reachable).is_err() {
        std::fs::copy(program, &reachable)
            .unwrap_or_else(|e| panic!("cannot copy {} for another user: {e}", program.display()));
    }
    std::fs::set_permissions(&reachable, std::fs::Permissions::from_mode(0o755)).unwrap();
    moved.insert(program.to_path_buf(), reachable.clone());
    reachable
}

/// A started process that does not outlive its test: a failed assertion must not leave a
/// daemon or a writer running.
pub struct Spawned(Child);

impl std::ops::Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Spawned {
    /// Reads its stderr (spawned piped) on a thread of its own from now on, so that the test
    /// can wait for the line that says an event happened instead of sleeping and hoping.
    pub fn watch_stderr(&mut self) -> Stderr {
        let stream = self
            .0
            .stderr
            .take()
            .expect("stderr spawned as Stdio::piped()");
        let (sender, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Stderr {
            lines,
            seen: RefCell::new(String::new()),
            reader,
        }
    }
}

/// A running process's stderr, line by line as it is written (see [`Spawned::watch_stderr`]).
pub struct Stderr {
    lines: mpsc::Receiver<String>,
    seen: RefCell<String>,
    reader: std::thread::JoinHandle<()>,
}

impl Stderr {
    /// Waits for a line holding every one of `words` and returns it; panics, with all that
    /// was written, if the process closes stderr first or nothing matches within `limit`.
    pub fn wait_for(&self, words: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "no line with {words:?} within {limit:?}; stderr so far:\n{}",
                    self.seen.borrow()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "stderr closed before a line with {words:?}:\n{}",
                    self.seen.borrow()
                ),
            };
            let seen = &mut *self.seen.borrow_mut();
            seen.push_str(&line);
            seen.push('\n');
            if words.iter().all(|word| line.contains(word)) {
                return line;
            }
        }
    }

    /// Everything it wrote, once it closed stderr (normally: once it exited).
    pub fn all(self) -> String {
        let mut seen = self.seen.into_inner();
        for line in self.lines.iter() {
            seen.push_str(&line);
            seen.push('\n');
        }
        self.reader.join().unwrap();
        seen
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The command line and the environment variables the test set: `command: …` and
/// `env: …` lines.
impl fmt::Display for TestCommand {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "command:")?;
        let program = std::iter::once(self.command.get_program());
        for word in program.chain(self.command.get_args()) {
            write!(f, " {}", quoted(word))?;
        }
        write!(f, "\nenv:")?;
        for (name, value) in self.command.get_envs() {
            let Some(value) = value else { continue };
            let name = name.to_string_lossy();
            if is_secret(&name) {
                write!(f, " {name}=(secret)")?;
            } else {
                write!(f, " {name}={}", quoted(value))?;
            }
        }
        Ok(())
    }
}

/// A variable whose value must not reach a log, even a test's.
fn is_secret(name: &str) -> bool {
    ["SECRET", "TOKEN", "PASSWORD"]
        .iter()
        .any(|word| name.contains(word))
}

/// A word as a shell would need it, so a failed command line can be pasted and rerun.
fn quoted(word: &OsStr) -> String {
    let text = word.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// A finished command: its status and output, and (as `Display`) everything about it.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    command: String,
}

impl Ran {
    /// stdout without its surrounding white space (an id, a count).
    pub fn stdout_trimmed(&self) -> &str {
        self.stdout.trim()
    }
}

impl fmt::Display for Ran {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{}\nstatus: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}
