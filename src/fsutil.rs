//! File helpers every part shares, once: atomic small writes, directory and filesystem
//! syncs, free space, and sizes for people.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cancel::Cancel;

/// The largest bookkeeping JSON file (a marker, a `ready` note) read: a few hundred bytes
/// are written, and a planted giant one must not be read whole.
const JSON_LIMIT: u64 = 1 << 20;

/// Reads a small JSON file of ours; `None` if it does not exist. Never through a link or a
/// FIFO (the directory's owner may plant either under our name): opened with `O_NOFOLLOW`
/// and `O_NONBLOCK`, and it must be a regular file of at most [`JSON_LIMIT`] bytes.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(planted(path, "a symbolic link")),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        bail!(planted(path, "not a regular file"));
    }
    if metadata.len() > JSON_LIMIT {
        bail!(planted(path, &format!("larger than {JSON_LIMIT} bytes")));
    }
    let mut bytes = Vec::new();
    file.take(JSON_LIMIT)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
        format!("{} is damaged; remove it to restore again", path.display())
    })?))
}

/// The error for a bookkeeping file of ours that is something else (`what`).
fn planted(path: &Path, what: &str) -> String {
    format!(
        "{} is {what}, which the agent never reads or writes through (someone who can write \
         to {} put it there): nothing was changed; remove it and run again",
        path.display(),
        path.parent().unwrap_or(Path::new("/")).display()
    )
}

/// Adds group and other write to the process's umask (keeping whatever else the caller
/// masks), first thing, before any thread exists. Called with umask 000, everything made
/// without a mode of its own (SQLite's catalog, a directory on the way to a target) would
/// be writable by every local user, who could then plant links for root to follow or act
/// as a bucket writer on a local repository. What holds secrets or matters sets its own
/// mode besides (keys 0600, staging and aside directories 0700, a local repository
/// 0700/0600, the marker 0644).
pub fn never_create_writable_by_others() {
    use rustix::fs::Mode;
    let old = rustix::process::umask(Mode::from_raw_mode(0o077));
    rustix::process::umask(old | Mode::from_raw_mode(0o022));
}

/// Writes a small JSON file atomically: temporary file (mode 0644 whatever the umask),
/// fsync, rename, fsync the directory. See [`write_json_in`].
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let parent = path.parent().expect("a file in a directory");
    let dir =
        fs::File::open(parent).with_context(|| format!("cannot open {}", parent.display()))?;
    write_json_in(&dir, path, value)
}

/// [`write_json`] with every name looked up in `dir`, the handle on `path`'s directory. The
/// directory's owner may plant links or FIFOs under either name: the temporary file is
/// created new (`O_EXCL|O_NOFOLLOW`, a leftover under its name unlinked first: a link
/// itself, never its target), the rename replaces whatever the name held without following
/// it, and the name must then be the file written, else the write fails naming it.
pub fn write_json_in<T: Serialize>(dir: &fs::File, path: &Path, value: &T) -> Result<()> {
    use std::io::Write;
    let name = path.file_name().expect("a file name");
    let temp = path.with_extension("partial");
    let temp_name = temp.file_name().expect("a file name");
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    let mut file = create_new_file_at(dir, temp_name, &temp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    rustix::fs::renameat(dir, temp_name, dir, name)
        .with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))?;
    let now = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
    let written = rustix::fs::fstat(&file)?;
    if (now.st_dev, now.st_ino) != (written.st_dev, written.st_ino) {
        bail!(planted(
            path,
            "not the file just written (it was swapped while written)"
        ));
    }
    dir.sync_all()
        .with_context(|| format!("cannot sync {}", temp.parent().unwrap_or(path).display()))
}

/// Creates `name` in `dir` (`shown` in messages) as a new regular file, mode 0644 whatever
/// the umask, never through a link and never into an existing file: one left under the
/// name (a killed write's, or planted) is unlinked first, once.
fn create_new_file_at(dir: &fs::File, name: &std::ffi::OsStr, shown: &Path) -> Result<fs::File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let create = || rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o644));
    let file = match create() {
        Err(rustix::io::Errno::EXIST) => {
            remove_leftover_at(dir, name, shown)?;
            create()
        }
        created => created,
    }
    .map_err(std::io::Error::from)
    .with_context(|| format!("cannot create {}", shown.display()))?;
    rustix::fs::fchmod(&file, Mode::from_raw_mode(0o644))?;
    Ok(fs::File::from(file))
}

/// Unlinks what is left under `name` in `dir`: a link is removed, never followed; a
/// directory is refused (it is not ours to empty).
fn remove_leftover_at(dir: &fs::File, name: &std::ffi::OsStr, shown: &Path) -> Result<()> {
    let stat = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
    let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    if kind == rustix::fs::FileType::Directory {
        bail!(planted(shown, "a directory"));
    }
    if kind != rustix::fs::FileType::RegularFile {
        tracing::warn!(path = %shown.display(), "removing a link or special file planted under a name of ours (not following it)");
    }
    rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty())
        .map_err(std::io::Error::from)
        .with_context(|| format!("cannot remove {}", shown.display()))
}

/// Whether two stats are of one file.
pub fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// A directory made by this call in `parent`, mode 0700: `stem`, or `stem-2`, `stem-3`, …
/// when the name is taken (by a directory or a link the parent's owner planted: never
/// reused), opened as [`open_own_dir`] opens it. Renames relative to the handle land in
/// this directory wherever it is moved, never in one put under its name instead.
pub fn create_fresh_dir(parent: &Path, stem: &str) -> Result<(PathBuf, OwnedFd)> {
    for attempt in 1..=100 {
        let path = match attempt {
            1 => parent.join(stem),
            n => parent.join(format!("{stem}-{n}")),
        };
        match rustix::fs::mkdir(&path, rustix::fs::Mode::from_raw_mode(0o700)) {
            Ok(()) => return Ok((path.clone(), open_own_dir(&path)?)),
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("cannot create {}", path.display()));
            }
        }
    }
    bail!(
        "{} holds 100 entries named {stem}[-<n>]: remove them (or move them away) and run again",
        parent.display()
    )
}

/// Opens `path`, a directory this process made, without following a link: it must be a
/// directory of this process's user that others may not write to, which the owner of the
/// directory around it cannot forge (they can swap it for a link or a directory of their
/// own, not for one of ours). Group write is let through: Kubernetes adds it for the pod's
/// `fsGroup` when it takes a volume over.
pub fn open_own_dir(path: &Path) -> Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(dir) => dir,
        // O_DIRECTORY on a link fails with ENOTDIR before O_NOFOLLOW's ELOOP.
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR)
            if fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) =>
        {
            bail!(planted(path, "a symbolic link"))
        }
        Err(rustix::io::Errno::NOTDIR) => bail!(planted(path, "not a directory")),
        Err(e) => {
            return Err(std::io::Error::from(e))
                .with_context(|| format!("cannot open {}", path.display()));
        }
    };
    let stat = rustix::fs::fstat(&dir)?;
    if stat.st_uid != rustix::process::geteuid().as_raw() || stat.st_mode & 0o002 != 0 {
        bail!(planted(
            path,
            "not a directory the agent made (another owner's, or writable by others)"
        ));
    }
    Ok(dir)
}

/// A path that reaches the directory `dir` is a handle on, wherever it is moved and
/// whatever is put under its old name: `/proc/self/fd/<n>`. Valid while `dir` is open.
pub fn path_of(dir: &OwnedFd) -> PathBuf {
    PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(dir)
    ))
}

/// Fails naming `path` unless it still is the directory `dir` is a handle on (see
/// [`open_own_dir`]): before its name is handed to something that opens by path.
pub fn check_still_own_dir(path: &Path, dir: &OwnedFd) -> Result<()> {
    let now = rustix::fs::fstat(open_own_dir(path)?)?;
    let made = rustix::fs::fstat(dir)?;
    if (now.st_dev, now.st_ino) != (made.st_dev, made.st_ino) {
        bail!(planted(
            path,
            "not the directory the agent made (it was swapped)"
        ));
    }
    Ok(())
}

/// Makes a directory's entries (new names, renames) durable.
/// Warns when a secret key file (`what`, e.g. "identity file") can be read by users who do
/// not need it: by others, or by its group although we own it. A Kubernetes Secret's files
/// are root's and reach the agent (uid 1000, group 0) only through their group, so a group
/// bit on a file we do not own is how it must be.
pub fn warn_if_others_can_read(path: &Path, metadata: &fs::Metadata, what: &str) {
    use std::os::unix::fs::MetadataExt;
    let mode = metadata.mode();
    let ours = metadata.uid() == rustix::process::geteuid().as_raw();
    if mode & 0o007 != 0 || (ours && mode & 0o070 != 0) {
        tracing::warn!(
            file = %path.display(),
            "the {what} is readable by other users; chmod 600 it (in Kubernetes, mount the \
             Secret read-only with defaultMode 0440: the agent reads it through its group)"
        );
    }
}

/// Creates `path` for a secret key: mode 0600, and never over an existing file (a key
/// overwritten is every snapshot made for it lost).
pub fn create_secret_file(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)?
        .sync_all()
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// One `syncfs` of the filesystem holding `path` instead of an fsync per file: tens of
/// thousands of attachments would otherwise cost a disk flush each. The flush runs on its
/// own thread so that a cancellation is noticed while it runs; the kernel finishes the
/// flush regardless.
pub fn sync_filesystem(path: &Path, cancel: &Cancel) -> Result<()> {
    let dir = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(rustix::fs::syncfs(&dir)));
    loop {
        match result.recv_timeout(Duration::from_millis(50)) {
            Ok(outcome) => return outcome.context("syncfs failed"),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => cancel.check()?,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => bail!("syncfs thread died"),
        }
    }
}

/// Fails with advice when the filesystem holding `target` has less than `needed` bytes
/// free. Not knowing (statvfs fails) is not a reason to refuse.
pub fn check_free_space(target: &Path, needed: u64) -> Result<()> {
    let Ok(stats) = rustix::fs::statvfs(target) else {
        return Ok(());
    };
    let available = stats.f_bavail.saturating_mul(stats.f_frsize);
    if available < needed {
        bail!(
            "{} has {} free but the snapshot holds {}: use a larger volume",
            target.display(),
            indicatif::HumanBytes(available),
            indicatif::HumanBytes(needed)
        );
    }
    Ok(())
}

/// Whether this process runs as root (and may therefore keep archived owners).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        assert!(read_json::<Vec<u32>>(&path).unwrap().is_none());
        write_json(&path, &vec![1u32, 2]).unwrap();
        assert_eq!(read_json::<Vec<u32>>(&path).unwrap(), Some(vec![1, 2]));
        assert!(!path.with_extension("partial").exists());
        sync_filesystem(dir.path(), &Cancel::new()).unwrap();
    }
}
