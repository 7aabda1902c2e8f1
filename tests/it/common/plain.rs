//! The plainest setup: a home that is not a Signal profile, a key pair and a local
//! repository, for what needs no Signal driver (backups with `--allow-no-signal`).

use std::path::{Path, PathBuf};

use super::{Object, TestCommand, agent_for, keygen, restore_command};

/// A temporary directory with a key pair, a home that is not a Signal profile (one file),
/// and the path of a local repository that does not exist yet.
pub struct Plain {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub home: PathBuf,
    pub identity: PathBuf,
    pub recipient: String,
    pub repo: PathBuf,
}

impl Plain {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let home = root.join("home");
        std::fs::create_dir_all(home.join("Documents")).unwrap();
        std::fs::write(home.join("Documents/notes.txt"), "not a Signal profile").unwrap();
        let (identity, recipient) = keygen(&root);
        Self {
            _dir: dir,
            repo: root.join("backups"),
            root,
            home,
            identity,
            recipient,
        }
    }

    pub fn agent(&self) -> TestCommand {
        agent_for(&self.repo)
    }

    pub fn backup(&self) -> TestCommand {
        let mut backup = self.backup_by(self.agent());
        backup.arg("--recipient").arg(&self.recipient);
        backup
    }

    /// `backup` of the home by `agent`, with no recipient yet.
    pub fn backup_by(&self, mut agent: TestCommand) -> TestCommand {
        agent
            .arg("backup")
            .arg("--source")
            .arg(&self.home)
            .arg("--staging-dir")
            .arg(self.root.join("staging"));
        agent
    }

    /// A snapshot of the home, allowed although it holds no Signal profile: its id.
    pub fn backed_up(&self) -> String {
        self.backup().arg("--allow-no-signal").ok()
    }

    pub fn restore(&self, target: &Path) -> TestCommand {
        restore_command(self.agent(), &self.identity, target)
    }

    /// A file of `len` bytes zstd cannot shrink, in the home's Documents.
    pub fn add_incompressible(&self, name: &str, len: usize) {
        std::fs::write(self.home.join("Documents").join(name), incompressible(len)).unwrap();
    }

    pub fn manifest_path(&self, id: &str) -> PathBuf {
        self.repo.join(Object::Manifest(id.to_string()).key())
    }
}

/// Bytes zstd cannot shrink (xorshift), so an archive's size follows its content.
pub fn incompressible(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
