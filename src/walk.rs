//! Lists the home before it is archived: what to keep, in a stable order, without reading
//! file contents (except the 16-byte header that tells a plain SQLite database apart).
//!
//! Listing first lets the backup size its upload parts and count what it will do; the
//! archive pass then reads each file once and notices files that changed in between.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::Metadata;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use globset::GlobSet;

use crate::cancel::Cancel;
use crate::home::{self, Home, Opened};
use crate::sqlite::SQLITE_HEADER;

#[derive(Debug)]
pub enum Kind {
    Directory,
    File,
    /// A file that starts with the SQLite header: archived as a consistent snapshot.
    PlainSqlite,
    Symlink(PathBuf),
}

#[derive(Debug)]
pub struct Entry {
    /// Relative to the home.
    pub path: PathBuf,
    pub kind: Kind,
    pub metadata: Metadata,
}

#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<Entry>,
    /// Sum of file sizes, sparse files left out: what the archive will roughly hold.
    pub file_bytes: u64,
    /// Sockets, FIFOs and device nodes: never archived.
    pub special_skipped: u64,
    /// Paths over PATH_MAX, and directories nested over [`MAX_DEPTH`] levels: skipped
    /// with a warning (see [`list_dir`]).
    pub too_long_skipped: u64,
}

/// Directories nested deeper than this are skipped (with a warning, counted with the
/// paths over PATH_MAX): no real home comes near it.
const MAX_DEPTH: usize = 256;

/// Lists `home`, skipping excluded paths and the `-wal`/`-shm`/`-journal` companions of the
/// databases it will snapshot (`databases` names more of them, such as Signal's encrypted
/// one, which has no recognisable header).
pub fn list(
    home: &Path,
    excludes: &GlobSet,
    databases: &[&Path],
    cancel: &Cancel,
) -> Result<Listing> {
    let root = std::fs::symlink_metadata(home)
        .with_context(|| format!("cannot read the home directory {}", home.display()))?;
    if !root.is_dir() {
        bail!(
            "{} is not a directory: point --source at the home to back up",
            home.display()
        );
    }
    let handle = Home::open(home)?;
    let mut listing = Listing::default();
    list_dir(
        &handle,
        handle.root(),
        Path::new(""),
        excludes,
        &mut listing,
        cancel,
    )?;
    let mut snapshotted: HashSet<PathBuf> = databases.iter().map(|p| p.to_path_buf()).collect();
    for entry in &listing.entries {
        if matches!(entry.kind, Kind::PlainSqlite) {
            snapshotted.insert(entry.path.clone());
        }
    }
    listing
        .entries
        .retain(|entry| !is_companion(&entry.path, &snapshotted));
    listing.file_bytes = listing
        .entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::File | Kind::PlainSqlite))
        // A sparse file is refused when it is archived: counting its length would size
        // the upload parts (and so the memory) for content that never comes.
        .filter(|e| home::sparse(&e.metadata).is_none())
        .map(|e| e.metadata.len())
        .sum();
    Ok(listing)
}

/// Lists the directory `dir` of the home, open as `dir_fd`. Every entry is looked at
/// relative to its directory's handle, never by path, so a directory the user swaps for a
/// link while the walk runs cannot make it list anything outside the home.
fn list_dir(
    handle: &Home,
    dir_fd: BorrowedFd,
    dir: &Path,
    excludes: &GlobSet,
    listing: &mut Listing,
    cancel: &Cancel,
) -> Result<()> {
    let home = handle.path();
    let absolute = home.join(dir);
    let mut names = home::read_names(dir_fd).with_context(|| unreadable(&absolute))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        cancel.check()?;
        let path = dir.join(&name);
        if excludes.is_match(&path) {
            continue;
        }
        let full = home.join(&path);
        if beyond_path_max(&path, &full) {
            listing.too_long_skipped += 1;
            continue;
        }
        let Some(metadata) = lstat_unless_gone(dir_fd, &name).with_context(|| unreadable(&full))?
        else {
            continue; // deleted meanwhile
        };
        let kind = match classify(handle, dir_fd, &name, &path, &metadata, cancel)
            .with_context(|| unreadable(&full))?
        {
            Found::Kind(kind) => kind,
            Found::Special => {
                listing.special_skipped += 1;
                continue;
            }
            Found::Gone => continue, // deleted or replaced meanwhile
        };
        if matches!(kind, Kind::Directory) && too_deep(&path) {
            listing.too_long_skipped += 1;
            continue;
        }
        let subdirectory = match kind {
            Kind::Directory => match home::open_dir_at(dir_fd, &name, &metadata) {
                Ok(Some(fd)) => Some(fd),
                Ok(None) => continue, // deleted or replaced meanwhile
                Err(e) => return Err(e).with_context(|| unreadable(&full)),
            },
            _ => None,
        };
        listing.entries.push(Entry {
            path: path.clone(),
            kind,
            metadata,
        });
        if let Some(fd) = subdirectory {
            list_dir(handle, fd.as_fd(), &path, excludes, listing, cancel)?;
        }
    }
    Ok(())
}

/// Linux refuses a path over PATH_MAX to every path-based call, so such an entry can be
/// neither read here nor restored anywhere: skipped loudly rather than failing every
/// backup over it.
fn beyond_path_max(path: &Path, full: &Path) -> bool {
    if full.as_os_str().len() < libc::PATH_MAX as usize {
        return false;
    }
    let bytes = path.as_os_str().as_bytes();
    tracing::warn!(
        path = %format!("{}…", String::from_utf8_lossy(&bytes[..bytes.len().min(120)])),
        bytes = bytes.len(),
        "skipping a path too long to open (over PATH_MAX, 4096 bytes): it is not in this snapshot"
    );
    true
}

/// The walk holds a handle per level: a tree nested deeper than any real one could
/// otherwise run the process out of file descriptors and fail every backup.
fn too_deep(path: &Path) -> bool {
    if path.components().count() <= MAX_DEPTH {
        return false;
    }
    let bytes = path.as_os_str().as_bytes();
    tracing::warn!(
        path = %format!("{}…", String::from_utf8_lossy(&bytes[..bytes.len().min(120)])),
        "skipping a directory nested over {MAX_DEPTH} levels deep: it is not in this snapshot"
    );
    true
}

/// The entry's `lstat`, or `None` if it is no longer there.
fn lstat_unless_gone(
    dir_fd: BorrowedFd,
    name: &std::ffi::OsStr,
) -> std::io::Result<Option<Metadata>> {
    match home::lstat_at(dir_fd, name) {
        Ok(metadata) => Ok(Some(metadata)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What an entry of a directory turned out to be.
enum Found {
    Kind(Kind),
    /// A socket, FIFO or device: counted, never archived.
    Special,
    /// Deleted or replaced since its `lstat`.
    Gone,
}

/// What the entry `name` of `dir_fd` is.
fn classify(
    handle: &Home,
    dir_fd: BorrowedFd,
    name: &std::ffi::OsStr,
    path: &Path,
    metadata: &Metadata,
    cancel: &Cancel,
) -> Result<Found> {
    let file_type = metadata.file_type();
    let kind = if file_type.is_dir() {
        Kind::Directory
    } else if file_type.is_symlink() {
        Kind::Symlink(home::read_link_at(dir_fd, name)?)
    } else if file_type.is_file() {
        cancel.progress().add_files(1);
        match has_sqlite_header(handle, path, metadata)? {
            Some(true) => Kind::PlainSqlite,
            Some(false) => Kind::File,
            None => return Ok(Found::Gone),
        }
    } else {
        debug_assert!(
            file_type.is_socket()
                || file_type.is_fifo()
                || file_type.is_block_device()
                || file_type.is_char_device()
        );
        return Ok(Found::Special);
    };
    Ok(Found::Kind(kind))
}

fn unreadable(path: &Path) -> String {
    format!(
        "cannot read {}: a backup must not silently lack it; fix its permissions (the agent \
         runs as the profile's owner) or --exclude it",
        path.display()
    )
}

/// Whether the listed file starts with the SQLite header; `None` if it is no longer the
/// listed file (read without following links: see [`crate::home`]).
fn has_sqlite_header(home: &Home, path: &Path, listed: &Metadata) -> Result<Option<bool>> {
    let mut file = match home.open_listed(path, listed)? {
        Opened::File(file, _) => file,
        Opened::Gone | Opened::Replaced => return Ok(None),
        // Refused when it is archived, which says so.
        Opened::Sparse(_) => return Ok(Some(false)),
    };
    let mut header = [0u8; 16];
    match file.read_exact(&mut header) {
        Ok(()) => Ok(Some(&header == SQLITE_HEADER)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Some(false)),
        Err(e) => Err(e.into()),
    }
}

/// `db-wal`, `db-shm` and `db-journal` of a database we snapshot: its snapshot already
/// holds their content, and restoring a stale one next to it would corrupt it.
fn is_companion(path: &Path, databases: &HashSet<PathBuf>) -> bool {
    let bytes = path.as_os_str().as_bytes();
    [&b"-wal"[..], b"-shm", b"-journal"].iter().any(|suffix| {
        bytes
            .strip_suffix(*suffix)
            .is_some_and(|db| databases.contains(&PathBuf::from(OsString::from_vec(db.to_vec()))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile;

    #[test]
    fn listing_keeps_data_skips_excludes_sockets_and_wal_companions() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        std::fs::create_dir_all(h.join(".config/Signal/sql")).unwrap();
        std::fs::create_dir_all(h.join(".config/Signal/Cache")).unwrap();
        std::fs::write(h.join(".config/Signal/Cache/x"), b"cache").unwrap();
        std::fs::write(h.join(".config/Signal/sql/db.sqlite"), b"encrypted").unwrap();
        std::fs::write(h.join(".config/Signal/sql/db.sqlite-wal"), b"wal").unwrap();
        std::fs::write(h.join("plain.db"), [&SQLITE_HEADER[..], &[0; 100]].concat()).unwrap();
        std::fs::write(h.join("plain.db-shm"), b"shm").unwrap();
        std::os::unix::fs::symlink("host-1", h.join(".config/Signal/SingletonLock")).unwrap();
        std::os::unix::fs::symlink("plain.db", h.join("link")).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(h.join("sock")).unwrap();
        let excludes = profile::excludes(&[]).unwrap();
        let signal_db = Path::new(profile::SIGNAL_DB);
        let listing = list(h, &excludes, &[signal_db], &Cancel::new()).unwrap();
        let names: Vec<_> = listing
            .entries
            .iter()
            .map(|e| e.path.to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                ".config",
                ".config/Signal",
                ".config/Signal/sql",
                ".config/Signal/sql/db.sqlite",
                "link",
                "plain.db"
            ]
        );
        assert!(matches!(listing.entries[5].kind, Kind::PlainSqlite));
        assert!(matches!(&listing.entries[4].kind, Kind::Symlink(t) if t == Path::new("plain.db")));
        assert_eq!(listing.special_skipped, 1);
    }

    /// The user flips a directory between itself and a link to a directory outside the
    /// home, with the same names in it, while walks run: no walk may list a file from
    /// outside. (A race by nature: a path-based walk lists outside files within a few
    /// walks; by directory handles it cannot.)
    #[test]
    fn a_directory_swapped_for_a_link_during_the_walk_never_lists_outside() {
        use std::os::unix::fs::MetadataExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        let root = tempfile::tempdir().unwrap();
        let (home, outside) = (root.path().join("home"), root.path().join("outside"));
        std::fs::create_dir_all(home.join("dir")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let mut outside_inodes = HashSet::new();
        for n in 0..1000 {
            std::fs::write(home.join(format!("dir/f-{n}")), b"mine").unwrap();
            let secret = outside.join(format!("f-{n}"));
            std::fs::write(&secret, b"secret").unwrap();
            outside_inodes.insert(std::fs::metadata(&secret).unwrap().ino());
        }
        let stop = AtomicBool::new(false);
        let aside = root.path().join("aside");
        let excludes = profile::excludes(&[]).unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let phase = std::time::Duration::from_millis(1);
                while !stop.load(Ordering::Relaxed) {
                    std::fs::rename(home.join("dir"), &aside).unwrap();
                    std::os::unix::fs::symlink(&outside, home.join("dir")).unwrap();
                    std::thread::sleep(phase);
                    std::fs::remove_file(home.join("dir")).unwrap();
                    std::fs::rename(&aside, home.join("dir")).unwrap();
                    std::thread::sleep(phase);
                }
            });
            for _ in 0..50 {
                // A walk may fail on a directory gone at the wrong moment; none may leak.
                let Ok(listing) = list(&home, &excludes, &[], &Cancel::new()) else {
                    continue;
                };
                let leaked = listing
                    .entries
                    .iter()
                    .filter(|e| outside_inodes.contains(&e.metadata.ino()))
                    .count();
                if leaked > 0 {
                    stop.store(true, Ordering::Relaxed);
                    panic!("the walk listed {leaked} files from outside the home");
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
    }

    #[test]
    fn a_tree_nested_deeper_than_any_home_is_cut_with_a_count() {
        let home = tempfile::tempdir().unwrap();
        let deep: PathBuf = std::iter::repeat_n("d", MAX_DEPTH + 40).collect();
        std::fs::create_dir_all(home.path().join(&deep)).unwrap();
        let excludes = profile::excludes(&[]).unwrap();
        let listing = list(home.path(), &excludes, &[], &Cancel::new()).unwrap();
        assert_eq!(listing.entries.len(), MAX_DEPTH);
        assert_eq!(listing.too_long_skipped, 1);
    }
}
