//! Reading the home without following links: every file the backup reads is opened
//! relative to a handle on the home, one path component at a time, never through a
//! symlink, and is only read if it is still the regular file the walk listed.
//!
//! Why: the home belongs to the desktop user while the agent may run as root. Between the
//! walk and the read, the user can swap any file, or any directory above it, for a
//! symlink to a file only root can read (`/etc/shadow`, another user's files), or for a
//! FIFO. Opening by path would archive what the link points at, and a restore would hand
//! it to the user. Here a link anywhere on the way fails the open (`O_NOFOLLOW` at every
//! level), a FIFO cannot block it (`O_NONBLOCK`), and the opened file must have the
//! device and inode the listing recorded.
//!
//! Sparse files are refused too: a 1 GiB file made with one `truncate` costs its owner no
//! disk but would cost the backup and every restore a full GiB of reads and writes.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{Mode, OFlags};

/// A file with more than this many bytes of holes…
pub const SPARSE_MIN_HOLES: u64 = 64 << 20;
/// …and whose apparent size is more than this many times its allocated size is refused.
/// Real data never looks like this (a database or a download in progress has a few holes,
/// not 7/8 of its size in holes over 64 MiB); a file made to cost the backup does.
pub const SPARSE_RATIO: u64 = 8;

/// An open handle on the home directory, the root every read starts from.
pub struct Home {
    root: OwnedFd,
    path: PathBuf,
}

/// What [`Home::open_listed`] found at a listed path.
pub enum Opened {
    /// The listed regular file, open for reading, and its stat at open.
    File(File, Metadata),
    /// Deleted since it was listed (normal for caches).
    Gone,
    /// No longer the listed file: replaced by (or reached through) a symlink, a FIFO, a
    /// socket or another file. Nothing was read from it.
    Replaced,
    /// The listed file, but mostly holes (see [`sparse`]).
    Sparse(Sparse),
}

/// The two sizes of a sparse file, for the warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sparse {
    pub apparent: u64,
    pub allocated: u64,
}

impl Home {
    /// Opens the home itself. Its own path may hold links (an administrator's choice,
    /// such as `/home` → `/var/home`); nothing below it may.
    pub fn open(path: &Path) -> Result<Self> {
        let cannot_open = || format!("cannot open the home directory {}", path.display());
        let path = std::fs::canonicalize(path).with_context(cannot_open)?;
        let root = rustix::fs::open(
            &path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(cannot_open)?;
        Ok(Self { root, path })
    }

    /// The home's path with no link in it: what SQLite is given, with
    /// `SQLITE_OPEN_NOFOLLOW`, for a database below it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `relative` for reading without following a symlink at any level. Fails with
    /// `ELOOP` (a link), `ENOTDIR` (a parent that is no directory) or `NotFound`.
    pub fn open_nofollow(&self, relative: &Path) -> io::Result<File> {
        self.open_with(relative, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)
    }

    /// The stat of `relative` itself (a link's own, never its target's), reached without
    /// following a link.
    pub fn lstat(&self, relative: &Path) -> io::Result<Metadata> {
        self.open_with(relative, OFlags::PATH)?.metadata()
    }

    /// Opens a file the walk listed with `listed` as its stat, if it still is that file.
    pub fn open_listed(&self, relative: &Path, listed: &Metadata) -> Result<Opened> {
        let file = match self.open_nofollow(relative) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::Gone),
            Err(e) if is_replaced(&e) => return Ok(Opened::Replaced),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read {}", self.path.join(relative).display())
                });
            }
        };
        let metadata = file
            .metadata()
            .with_context(|| format!("cannot stat {}", self.path.join(relative).display()))?;
        if !metadata.is_file() || metadata.dev() != listed.dev() || metadata.ino() != listed.ino() {
            return Ok(Opened::Replaced);
        }
        Ok(match sparse(&metadata) {
            Some(sizes) => Opened::Sparse(sizes),
            None => Opened::File(file, metadata),
        })
    }

    /// Opens the directories above `relative`, then `relative` itself with `flags`, each
    /// with `O_NOFOLLOW`.
    fn open_with(&self, relative: &Path, flags: OFlags) -> io::Result<File> {
        let mut names = Vec::new();
        for component in relative.components() {
            match component {
                Component::Normal(name) => names.push(name),
                Component::CurDir => {}
                // The walk only lists plain relative paths; anything else is a bug here.
                _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
            }
        }
        let Some((last, parents)) = names.split_last() else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        let mut dir: Option<OwnedFd> = None;
        for name in parents {
            let at = dir.as_ref().unwrap_or(&self.root);
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            dir = Some(rustix::fs::openat(at, *name, flags, Mode::empty())?);
        }
        let at = dir.as_ref().unwrap_or(&self.root);
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(
            at,
            *last,
            flags,
            Mode::empty(),
        )?))
    }
}

impl Home {
    /// The handle on the home itself, where a walk starts.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }
}

/// The names in the directory `dir` (`.` and `..` left out), in no particular order.
pub fn read_names(dir: BorrowedFd) -> io::Result<Vec<OsString>> {
    // `dir` is an O_PATH handle, which cannot be read: open the directory itself.
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let readable = rustix::fs::openat(dir, ".", flags, Mode::empty())?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::new(readable)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    Ok(names)
}

/// The stat of `name` in `dir` itself: a link's own, never its target's.
pub fn lstat_at(dir: BorrowedFd, name: &OsStr) -> io::Result<Metadata> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    File::from(rustix::fs::openat(dir, name, flags, Mode::empty())?).metadata()
}

/// Where the symlink `name` in `dir` points.
pub fn read_link_at(dir: BorrowedFd, name: &OsStr) -> io::Result<PathBuf> {
    let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
    Ok(PathBuf::from(OsString::from_vec(target.into_bytes())))
}

/// Opens the subdirectory `name` of `dir` without following a link, if it still is the
/// directory `listed` describes; `None` if it is gone or was replaced.
pub fn open_dir_at(
    dir: BorrowedFd,
    name: &OsStr,
    listed: &Metadata,
) -> io::Result<Option<OwnedFd>> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let opened = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(opened) => opened,
        Err(e) => {
            let e = io::Error::from(e);
            return match e.kind() == io::ErrorKind::NotFound || is_replaced(&e) {
                true => Ok(None),
                false => Err(e),
            };
        }
    };
    let file = File::from(opened);
    let metadata = file.metadata()?;
    let same = metadata.dev() == listed.dev() && metadata.ino() == listed.ino();
    Ok(same.then(|| OwnedFd::from(file)))
}

/// Errors that mean "not the listed file any more", not "cannot read the home": a link
/// (`ELOOP` under `O_NOFOLLOW`), a parent that is no longer a directory, a socket.
pub fn is_replaced(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ELOOP | libc::ENOTDIR | libc::ENXIO)
    )
}

/// The sizes of a file that is mostly holes: more than [`SPARSE_MIN_HOLES`] of them and an
/// apparent size over [`SPARSE_RATIO`] times what is allocated. `None` for any other file.
pub fn sparse(metadata: &Metadata) -> Option<Sparse> {
    let apparent = metadata.len();
    let allocated = metadata.blocks().saturating_mul(512);
    let holes = apparent.saturating_sub(allocated);
    (holes > SPARSE_MIN_HOLES && apparent > allocated.saturating_mul(SPARSE_RATIO)).then_some(
        Sparse {
            apparent,
            allocated,
        },
    )
}

/// Warns that a sparse file is left out, and what to do about it.
pub fn warn_sparse(path: &Path, sizes: Sparse) {
    tracing::warn!(
        file = %path.display(),
        apparent_bytes = sizes.apparent,
        allocated_bytes = sizes.allocated,
        "not backed up: a sparse file, {} long but only {} on disk (mostly holes). Such a \
         file costs every backup and restore its full length; if it is real data, write it \
         out in full (cp --sparse=never) or --exclude it",
        indicatif::HumanBytes(sizes.apparent),
        indicatif::HumanBytes(sizes.allocated),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn listed(path: &Path) -> Metadata {
        std::fs::symlink_metadata(path).unwrap()
    }

    #[test]
    fn a_listed_file_opens_and_a_swapped_one_does_not() {
        let root = tempfile::tempdir().unwrap();
        let (home_dir, outside) = (root.path().join("home"), root.path().join("outside"));
        std::fs::create_dir_all(home_dir.join("a/b")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(home_dir.join("a/b/file"), b"mine").unwrap();
        std::fs::write(outside.join("file"), b"secret").unwrap();
        let home = Home::open(&home_dir).unwrap();
        let file = listed(&home_dir.join("a/b/file"));
        assert!(matches!(
            home.open_listed(Path::new("a/b/file"), &file).unwrap(),
            Opened::File(..)
        ));

        // The file itself becomes a link to a file outside the home.
        std::fs::remove_file(home_dir.join("a/b/file")).unwrap();
        symlink(outside.join("file"), home_dir.join("a/b/file")).unwrap();
        assert!(matches!(
            home.open_listed(Path::new("a/b/file"), &file).unwrap(),
            Opened::Replaced
        ));

        // A directory above it becomes a link to a directory outside that has the name.
        std::fs::rename(home_dir.join("a"), root.path().join("moved")).unwrap();
        std::fs::create_dir_all(outside.join("b")).unwrap();
        std::fs::write(outside.join("b/file"), b"secret").unwrap();
        symlink(&outside, home_dir.join("a")).unwrap();
        assert!(matches!(
            home.open_listed(Path::new("a/b/file"), &file).unwrap(),
            Opened::Replaced
        ));
        // A directory opened with O_NOFOLLOW|O_DIRECTORY that is a link fails ENOTDIR.
        let err = home.open_nofollow(Path::new("a/b/file")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR), "{err}");
    }

    #[test]
    fn another_regular_file_under_the_listed_name_is_not_read() {
        let home_dir = tempfile::tempdir().unwrap();
        let path = home_dir.path().join("f");
        std::fs::write(&path, b"listed").unwrap();
        let file = listed(&path);
        std::fs::write(home_dir.path().join("g"), b"other").unwrap();
        std::fs::rename(home_dir.path().join("g"), &path).unwrap();
        let home = Home::open(home_dir.path()).unwrap();
        assert!(matches!(
            home.open_listed(Path::new("f"), &file).unwrap(),
            Opened::Replaced
        ));
    }

    #[test]
    fn mostly_holes_is_sparse_and_a_little_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let holes = dir.path().join("holes");
        File::create(&holes).unwrap().set_len(1 << 30).unwrap();
        let sizes = sparse(&listed(&holes)).expect("1 GiB of holes is sparse");
        assert_eq!(sizes.apparent, 1 << 30);
        assert!(sizes.allocated < 1 << 20, "{sizes:?}");
        // Under the 64 MiB floor: a small sparse file is kept.
        File::create(&holes).unwrap().set_len(32 << 20).unwrap();
        assert_eq!(sparse(&listed(&holes)), None);
        let full = dir.path().join("full");
        std::fs::write(&full, vec![1u8; 1 << 20]).unwrap();
        assert_eq!(sparse(&listed(&full)), None);
    }
}
