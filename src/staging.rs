//! Scratch space for database snapshots while a backup runs.
//!
//! `ghostwire-backup-staging` under the base directory holds a `lock`, locked with `flock`
//! for the whole backup: the lock is what keeps two backups on one host from running at
//! once, and it dies with its process, so a killed run never blocks the next one. Whoever
//! takes the lock removes what a killed run left. The data itself goes into a fresh
//! directory of this run's own (random name, mode 0700) inside it.
//!
//! The base is often shared (`/tmp`), so the fixed name can be taken by another user
//! before us: made by another uid it would capture the snapshot copies, and as a symlink it
//! would make the clean-up empty whatever it points at. So it is opened without following
//! links and used only if it is a directory owned by this agent that no one else may write;
//! every removal works on directory handles (`openat`/`unlinkat`, `O_NOFOLLOW`), never
//! through a path a link could redirect.
//! Only snapshot copies live here: Signal's stays encrypted with Signal's key.

use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::fs::{AtFlags, Dir, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::cancel::Cancel;

/// The fixed directory under the base: what the lock and the clean-up need a known name for.
pub const NAME: &str = "ghostwire-backup-staging";
const LOCK: &str = "lock";

pub struct Staging {
    /// This run's own directory inside `root`: where the data goes.
    dir: PathBuf,
    /// The fixed directory, opened without following links and checked to be ours.
    root: OwnedFd,
    root_path: PathBuf,
    _lock: File,
}

impl Staging {
    /// Takes the staging directory under `base`, waiting up to `wait` for a backup that
    /// holds it (such as one the daemon just abandoned) to let go.
    pub fn acquire(base: &Path, wait: Duration, cancel: &Cancel) -> Result<Self> {
        let root_path = base.join(NAME);
        let root = open_own_root(base, &root_path)?;
        let lock = rustix::fs::openat(
            &root,
            LOCK,
            OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|err| refusal(&root_path.join(LOCK), &format!("cannot be opened ({err})")))?;
        let lock = File::from(lock);
        let deadline = Instant::now() + wait;
        while rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            cancel.check()?;
            if Instant::now() >= deadline {
                bail!(
                    "another backup is running on this host (it holds {}); try again when it ends",
                    root_path.join(LOCK).display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        clear(&root, Some(LOCK)).with_context(|| {
            format!("cannot clean the staging directory {}", root_path.display())
        })?;
        let dir = make_run_dir(&root, &root_path)?;
        Ok(Self {
            dir,
            root,
            root_path,
            _lock: lock,
        })
    }

    /// A path for a new scratch file.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(err) = clear(&self.root, Some(LOCK)) {
            tracing::warn!(dir = %self.root_path.display(), error = %err, "could not clean the staging directory");
        }
    }
}

/// The error for a staging path that is not safely ours: names it and the ways out.
fn refusal(path: &Path, problem: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "refusing to use the staging directory {}: it {problem}. Another user may have made \
         it to read the database snapshots or to redirect this agent; nothing was written \
         into it. Remove it (as its owner or root), or set --staging-dir (GWB_STAGING_DIR) to \
         a directory only this agent can write",
        path.display()
    )
}

/// Creates or opens `base/NAME` without following a link, and checks it is a directory of
/// this agent's that no one else may write.
fn open_own_root(base: &Path, root_path: &Path) -> Result<OwnedFd> {
    let cannot = || {
        format!(
            "cannot create staging directory {} (set --staging-dir)",
            root_path.display()
        )
    };
    fs::create_dir_all(base).with_context(cannot)?;
    let base_fd = rustix::fs::open(
        base,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(cannot)?;
    match rustix::fs::mkdirat(&base_fd, NAME, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(err) => return Err(err).with_context(cannot),
    }
    let root = match rustix::fs::openat(
        &base_fd,
        NAME,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(root) => root,
        Err(Errno::LOOP | Errno::NOTDIR) => {
            return Err(refusal(root_path, "is a symbolic link or not a directory"));
        }
        Err(err) => return Err(err).with_context(cannot),
    };
    let stat = rustix::fs::fstat(&root)?;
    check_ours(root_path, stat.st_uid, stat.st_mode)?;
    // Ours and not writable by others: tighten a readable one, which may hold nothing yet.
    rustix::fs::fchmod(&root, Mode::from_raw_mode(0o700))?;
    Ok(root)
}

fn check_ours(path: &Path, uid: u32, mode: u32) -> Result<()> {
    let me = rustix::process::geteuid().as_raw();
    if uid != me {
        return Err(refusal(
            path,
            &format!("belongs to uid {uid}, not to this agent (uid {me})"),
        ));
    }
    if mode & 0o022 != 0 {
        return Err(refusal(
            path,
            &format!("is writable by group or others (mode {:o})", mode & 0o7777),
        ));
    }
    Ok(())
}

/// A fresh directory with a random name, mode 0700, checked after creation.
fn make_run_dir(root: &OwnedFd, root_path: &Path) -> Result<PathBuf> {
    let name = format!("run-{:016x}", rand::random::<u64>());
    let path = root_path.join(&name);
    rustix::fs::mkdirat(root, name.as_str(), Mode::from_raw_mode(0o700))
        .with_context(|| format!("cannot create {}", path.display()))?;
    let stat = rustix::fs::statat(root, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return Err(refusal(&path, "is not the directory just made"));
    }
    check_ours(&path, stat.st_uid, stat.st_mode)?;
    if stat.st_mode & 0o077 != 0 {
        return Err(refusal(&path, "is readable by group or others"));
    }
    Ok(path)
}

/// Removes everything in the directory `dir` (but `keep`), never following a link: a
/// symlink is unlinked, a directory is opened with `O_NOFOLLOW` and emptied through its
/// handle.
fn clear(dir: &OwnedFd, keep: Option<&str>) -> rustix::io::Result<()> {
    let mut names: Vec<(CString, FileType)> = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." || keep.is_some_and(|k| name.to_bytes() == k.as_bytes()) {
            continue;
        }
        names.push((name.to_owned(), entry.file_type()));
    }
    for (name, kind) in names {
        remove_at(dir, &name, kind)?;
    }
    Ok(())
}

fn remove_at(dir: &OwnedFd, name: &CStr, kind: FileType) -> rustix::io::Result<()> {
    let is_dir = match kind {
        FileType::Unknown => {
            let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            FileType::from_raw_mode(stat.st_mode) == FileType::Directory
        }
        kind => kind == FileType::Directory,
    };
    if !is_dir {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty());
    }
    let child = rustix::fs::openat(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    clear(&child, None)?;
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn acquire(base: &Path) -> Result<Staging> {
        Staging::acquire(base, Duration::ZERO, &Cancel::new())
    }

    #[test]
    fn one_backup_at_a_time_and_leftovers_are_cleared() {
        let base = tempfile::tempdir().unwrap();
        let first = acquire(base.path()).unwrap();
        let err = acquire(base.path()).err().unwrap().to_string();
        assert!(err.contains("another backup is running"), "{err}");
        drop(first);
        // What a killed run leaves behind: a snapshot copy in its own directory, and a
        // symlink, next to a lock nobody holds.
        let root = base.path().join(NAME);
        let killed = root.join("run-0123456789abcdef");
        fs::create_dir(&killed).unwrap();
        fs::write(killed.join("signal.sqlite"), b"x").unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), b"k").unwrap();
        std::os::unix::fs::symlink(outside.path(), killed.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
        let _second = acquire(base.path()).unwrap();
        assert!(!killed.exists(), "a killed run's directory was left");
        assert!(fs::symlink_metadata(root.join("link")).is_err());
        assert_eq!(
            fs::read(outside.path().join("keep")).unwrap(),
            b"k",
            "the clean-up followed a link"
        );
    }

    #[test]
    fn data_goes_into_a_fresh_private_directory_of_each_run() {
        let base = tempfile::tempdir().unwrap();
        let first = acquire(base.path()).unwrap();
        let dir = first.file("signal.sqlite").parent().unwrap().to_path_buf();
        assert_ne!(
            dir,
            base.path().join(NAME),
            "data in the fixed-name directory"
        );
        let metadata = fs::symlink_metadata(&dir).unwrap();
        assert!(metadata.is_dir());
        assert_eq!(metadata.mode() & 0o777, 0o700);
        assert_eq!(metadata.uid(), rustix::process::geteuid().as_raw());
        drop(first);
        assert!(!dir.exists(), "the run's directory outlived the run");
        let second = acquire(base.path()).unwrap();
        assert_ne!(second.file("signal.sqlite").parent().unwrap(), dir);
    }

    /// The error a refusal must give: names the path and the ways out.
    fn assert_refused(base: &Path) {
        let err = format!(
            "{:#}",
            acquire(base)
                .err()
                .expect("a hostile staging directory was used")
        );
        assert!(
            err.contains(&base.join(NAME).display().to_string())
                && err.contains("--staging-dir")
                && err.contains("Remove it"),
            "{err}"
        );
    }

    #[test]
    fn a_symlink_in_place_of_the_staging_directory_is_never_followed_nor_emptied() {
        let base = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        fs::write(victim.path().join("precious"), b"data").unwrap();
        std::os::unix::fs::symlink(victim.path(), base.path().join(NAME)).unwrap();
        assert_refused(base.path());
        let left: Vec<_> = fs::read_dir(victim.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["precious"], "the victim directory was changed");
    }

    #[test]
    fn a_staging_directory_others_may_write_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join(NAME);
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(root.join("planted"), b"x").unwrap();
        assert_refused(base.path());
        assert!(
            root.join("planted").exists(),
            "a refused directory was emptied"
        );
        assert!(
            !root.join(LOCK).exists(),
            "a refused directory was written into"
        );
    }

    #[test]
    fn a_staging_directory_made_by_another_uid_is_refused() {
        if !crate::fsutil::is_root() {
            eprintln!("skipped: making a directory of another uid needs root");
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join(NAME);
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::lchown(&root, Some(1000), Some(1000)).unwrap();
        assert_refused(base.path());
        assert!(
            !root.join(LOCK).exists(),
            "a refused directory was written into"
        );
        assert_eq!(fs::symlink_metadata(&root).unwrap().uid(), 1000);
    }
}
