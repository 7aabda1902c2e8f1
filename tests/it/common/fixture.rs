//! The setup most tests start from: in a temporary directory, a Signal profile made by
//! Signal's driver (`home/`), a key pair made by the agent (`identity.txt` and its
//! recipient), a local repository (`backups/`) and a staging directory (`staging/`).
//! Commands for the profile's backup and restore come ready to run, against the local
//! repository or, given an agent pointed elsewhere (`S3Server::agent`), any other.

use std::io::Write;
use std::path::{Path, PathBuf};

use ghostwire_backup::commands::restore::{MARKER, STAGING};
use serde_json::Value;

use super::{
    Object, Profile, TestCommand, agent_for, assert_same_tree, keygen, make_profile, tree,
};

pub struct Fixture {
    _dir: tempfile::TempDir,
    /// The temporary directory that holds everything below.
    pub root: PathBuf,
    pub profile: Profile,
    pub identity: PathBuf,
    pub recipient: String,
    /// The local repository.
    pub repo: PathBuf,
}

impl Fixture {
    /// A profile made with `make-profile.mjs` options such as `["--messages", "200"]`.
    pub fn new(profile: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let profile = make_profile(&root.join("home"), profile);
        let (identity, recipient) = keygen(&root);
        Self {
            _dir: dir,
            repo: root.join("backups"),
            root,
            profile,
            identity,
            recipient,
        }
    }

    /// The same, backed up once to the local repository: the fixture and the snapshot id.
    pub fn backed_up(profile: &[&str]) -> (Self, String) {
        let fixture = Self::new(profile);
        let id = fixture.backup().ok();
        (fixture, id)
    }

    pub fn home(&self) -> &Path {
        &self.profile.home
    }

    /// The agent with the local repository.
    pub fn agent(&self) -> TestCommand {
        agent_for(&self.repo)
    }

    /// `backup` of the profile to the local repository, ready for more flags.
    pub fn backup(&self) -> TestCommand {
        self.backup_with(self.agent())
    }

    /// `backup` of the profile by `agent`, which says where the repository is.
    pub fn backup_with(&self, agent: TestCommand) -> TestCommand {
        self.backup_of(agent, self.home())
    }

    /// `backup` of another tree (a restored volume, an odd home) with this key.
    pub fn backup_of(&self, agent: TestCommand, source: &Path) -> TestCommand {
        backup_command(agent, source, &self.recipient, &self.root.join("staging"))
    }

    /// Backs `home` up once Signal's database is quiet (see [`super::wait_for_quiet_database`]):
    /// the snapshot's manifest.
    pub fn quiet_backup_of(&self, home: &Path) -> Value {
        super::wait_for_quiet_database(home);
        self.manifest(&self.backup_of(self.agent(), home).ok())
    }

    /// Restores snapshot `manifest` into a new directory and checks its database with
    /// Signal's driver: it opens, passes integrity_check and, given `ids`, holds every one.
    pub fn restore_and_check(&self, manifest: &Value, ids: Option<&Path>) -> (PathBuf, Value) {
        let id = manifest["id"].as_str().unwrap();
        let target = self.root.join(format!("restore-{id}"));
        self.restore(&target).args(["--snapshot", id]).ok();
        let db = super::check_db(
            &target.join(".config/Signal/sql/db.sqlite"),
            &self.profile.key,
            ids,
        );
        assert_eq!(db["integrity"], "ok", "{db}");
        if ids.is_some() {
            assert_eq!(
                db["missingCount"], 0,
                "rows committed before snapshot {id} are missing: {db}"
            );
        }
        (target, db)
    }

    /// `restore` from the local repository into `target`, ready for more flags.
    pub fn restore(&self, target: &Path) -> TestCommand {
        self.restore_with(self.agent(), target)
    }

    /// `restore` by `agent`, which says where the repository is.
    pub fn restore_with(&self, agent: TestCommand, target: &Path) -> TestCommand {
        restore_command(agent, &self.identity, target)
    }

    /// `verify` of snapshot `id` with the identity, by `agent`.
    pub fn verify_with(&self, mut agent: TestCommand, id: &str) -> TestCommand {
        agent
            .args(["verify", "--snapshot", id])
            .arg("--identity")
            .arg(&self.identity);
        agent
    }

    /// Where the local repository keeps a snapshot's archive (docs/format.md's layout):
    /// the name its parts are numbered after (`<this>.000001`, …).
    pub fn archive(&self, id: &str) -> PathBuf {
        self.repo.join(Object::Archive(id.to_string()).key())
    }

    /// The stored files of snapshot `id`'s archive, in order: its parts, or the one file.
    pub fn archive_files(&self, id: &str) -> Vec<PathBuf> {
        let whole = self.archive(id);
        let name = whole.file_name().unwrap().to_str().unwrap().to_string();
        let mut parts: Vec<PathBuf> = std::fs::read_dir(whole.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                let file = path.file_name().unwrap().to_str().unwrap();
                file.strip_prefix(&name)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        parts.sort();
        if whole.exists() {
            parts.insert(0, whole);
        }
        parts
    }

    /// Snapshot `id`'s archive as stored, its parts put together.
    pub fn archive_bytes(&self, id: &str) -> Vec<u8> {
        let files = self.archive_files(id);
        assert!(!files.is_empty(), "snapshot {id} has no archive");
        files
            .iter()
            .flat_map(|f| std::fs::read(f).unwrap())
            .collect()
    }

    /// Stores `bytes` as snapshot `id`'s archive in place of what is there, cut into parts
    /// as its manifest says (the manifest is left alone): what someone with write access
    /// to the repository, but not the signing key, can do.
    pub fn replace_archive(&self, id: &str, bytes: &[u8]) {
        self.remove_archive(id);
        let part = self.manifest(id)["archive"]["parts"]["size"].as_u64();
        write_parts(&self.archive(id), bytes, part);
    }

    /// Deletes every stored file of snapshot `id`'s archive.
    pub fn remove_archive(&self, id: &str) {
        for file in self.archive_files(id) {
            std::fs::remove_file(file).unwrap();
        }
    }

    /// Where the local repository keeps a snapshot's manifest.
    pub fn manifest_path(&self, id: &str) -> PathBuf {
        self.repo.join(Object::Manifest(id.to_string()).key())
    }

    pub fn manifest(&self, id: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.manifest_path(id)).unwrap()).unwrap()
    }

    /// Runs `restore`, a restore into `target` that must fail, and returns its stderr;
    /// checks it left no marker and no staging directory, and changed nothing in the
    /// fixture's directory outside `target`.
    pub fn assert_restore_fails(&self, restore: &mut TestCommand, target: &Path) -> String {
        let target_name = target.strip_prefix(&self.root).unwrap().to_str().unwrap();
        let outside = |path: &str| path.starts_with(target_name);
        let before = tree(&self.root, &outside);
        let err = restore.fails();
        assert!(
            !target.join(MARKER).exists(),
            "a failed restore left a marker: {err}"
        );
        assert!(
            !target.join(STAGING).exists(),
            "a failed restore left its staging directory behind: {err}"
        );
        assert_same_tree(&tree(&self.root, &outside), &before);
        err
    }

    /// Replaces snapshot `id`'s archive with what `build` writes, compressed and encrypted
    /// to the right key, and fixes and re-signs the manifest so only the unpacker (and the
    /// content cap) stand in the way. The manifest also loses its file index and chain (a
    /// full snapshot without an index is still a valid one), so every entry reaches the
    /// unpacker: what a stolen signing key could do, and what extraction must survive.
    /// `edit` changes the manifest further.
    pub fn plant(&self, id: &str, build: impl FnOnce(&mut Tar), edit: impl FnOnce(&mut Value)) {
        let mut tar = tar::Builder::new(zstd::Encoder::new(Vec::new(), 3).unwrap());
        build(&mut tar);
        let plain = tar.into_inner().unwrap().finish().unwrap();
        let ciphertext = age_encrypt(&self.recipient, &plain);
        self.remove_archive(id);
        write_parts(&self.archive(id), &ciphertext, Some(PLANTED_PART));
        let mut manifest = self.manifest(id);
        manifest["archive"]["parts"] = serde_json::json!({ "size": PLANTED_PART });
        for field in ["index", "parent", "chain_full", "depends_on"] {
            manifest.as_object_mut().unwrap().remove(field);
        }
        manifest["archive"]["size"] = ciphertext.len().into();
        manifest["archive"]["sha256"] =
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&ciphertext)).into();
        edit(&mut manifest);
        std::fs::write(self.manifest_path(id), manifest.to_string()).unwrap();
        // Signed, as only the backup side could: what stands in the way of a hostile
        // archive even then is the unpacker.
        super::sign_manifest(&self.manifest_path(id));
    }
}

/// Parts of a planted archive: small, so that even a small one spans several.
const PLANTED_PART: u64 = 64 << 10;

/// Writes `bytes` at `whole` (`None`) or as its parts of `part` bytes.
fn write_parts(whole: &Path, bytes: &[u8], part: Option<u64>) {
    let Some(part) = part else {
        return std::fs::write(whole, bytes).unwrap();
    };
    for (k, chunk) in bytes.chunks(part as usize).enumerate() {
        let name = format!("{}.{:06}", whole.display(), k + 1);
        std::fs::write(name, chunk).unwrap();
    }
}

/// `backup` of `source` to `recipient` by `agent`, which says where the repository is:
/// for a home that is not a fixture's.
pub fn backup_command(
    mut agent: TestCommand,
    source: &Path,
    recipient: &str,
    staging: &Path,
) -> TestCommand {
    agent
        .arg("backup")
        .arg("--source")
        .arg(source)
        .arg("--recipient")
        .arg(recipient)
        .arg("--staging-dir")
        .arg(staging);
    agent
}

/// `restore` into `target` with `identity` by `agent`, which says where the repository is:
/// for a key that is not a fixture's.
pub fn restore_command(mut agent: TestCommand, identity: &Path, target: &Path) -> TestCommand {
    agent
        .arg("restore")
        .arg("--identity")
        .arg(identity)
        .arg("--target")
        .arg(target);
    agent
}

/// An archive being written by a test: tar into zstd.
pub type Tar = tar::Builder<zstd::Encoder<'static, Vec<u8>>>;

/// A tar header owned by root, dated 1970.
pub fn tar_header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// `plain` encrypted to the age `recipient` (public: anyone can do this).
pub fn age_encrypt(recipient: &str, plain: &[u8]) -> Vec<u8> {
    let recipient: age::x25519::Recipient = recipient.parse().unwrap();
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .unwrap();
    let mut ciphertext = Vec::new();
    let mut writer = encryptor.wrap_output(&mut ciphertext).unwrap();
    writer.write_all(plain).unwrap();
    writer.finish().unwrap();
    ciphertext
}

/// A copy of the fixture's home at `to`: another pod's volume with the same profile.
pub fn copy_home(fx: &Fixture, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(fx.home())
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}
