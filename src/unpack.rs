//! Safe extraction of an archive into a directory we own.
//!
//! An archive is input from outside (a repository can be tampered with), so extraction
//! trusts no name in it: every path must be relative without `..`; nothing is written
//! through a symlink (each parent is checked with `lstat` and created as a real directory);
//! hard links may only point at files already extracted inside the tree; device nodes,
//! FIFOs and sockets are refused. Symlinks themselves are restored as inert links — Signal
//! has them (`SingletonLock` is one) — but never followed. Files get at most the permission
//! bits they were archived with (no setuid/setgid), and the total size is capped so a
//! decompression bomb cannot fill the volume.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use crate::profile::OWN_FILES_PREFIX;

pub struct UnpackOptions {
    /// Owner for every restored entry (`--chown`); otherwise the archived owner when
    /// running as root, else the current user.
    pub chown: Option<(u32, u32)>,
    pub preserve_owner: bool,
    /// Refuse archives that expand to more file content than this.
    pub max_content_bytes: u64,
    /// Where each restored file counts as done.
    pub progress: crate::progress::Progress,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// What is `left` of an archive's content budget (its signed manifest's `content.bytes`,
/// the most a restore writes) after an entry of `len` bytes: an archive is proven genuine
/// only by its hash at its end, so until then nothing may take more than it declared.
pub fn spend_budget(left: u64, len: u64, manifest: &crate::manifest::Manifest) -> Result<u64> {
    left.checked_sub(len).with_context(|| {
        format!(
            "the archive of snapshot {} expands to more than the {} bytes of content its \
             manifest declares: refusing it before reading further (damaged, replaced, or a \
             decompression bomb)",
            manifest.id, manifest.content.bytes
        )
    })
}

/// Checks an archive path and returns it as a relative path.
pub fn safe_relative_path(raw: &[u8]) -> Result<PathBuf> {
    let shown = String::from_utf8_lossy(raw);
    let path = Path::new(OsStr::from_bytes(raw));
    if raw.is_empty() || raw.contains(&0) {
        bail!("archive entry {shown:?} has an empty or invalid name");
    }
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                bail!(
                    "archive entry {shown:?} is an absolute path: refusing to write outside the target"
                )
            }
            Component::ParentDir => {
                bail!("archive entry {shown:?} contains '..': refusing to write outside the target")
            }
        }
    }
    if clean.as_os_str().is_empty() {
        bail!("archive entry {shown:?} names the target itself");
    }
    if clean
        .iter()
        .next()
        .is_some_and(|first| first.as_bytes().starts_with(OWN_FILES_PREFIX.as_bytes()))
    {
        bail!("archive entry {shown:?} would overwrite ghostwire-backup's own restore bookkeeping");
    }
    Ok(clean)
}

/// Sees the bytes of a restored file as they are written: how the restore gate hashes and
/// authenticates Signal's database in the same pass as the unpack
/// ([`crate::db_rebuild::FullCopyWatch`]).
pub trait Watch {
    /// An entry kept for `relative` starts, a regular file if `file`: whether to see its
    /// bytes. Any entry of a watched name ends what was seen of it before (the last entry
    /// of a name wins).
    fn begin(&mut self, relative: &Path, file: bool) -> bool;
    /// The next bytes of the file begun.
    fn bytes(&mut self, data: &[u8]) -> Result<()>;
    /// The file begun is written whole.
    fn end(&mut self) -> Result<()>;
}

/// Watches nothing.
pub struct NoWatch;

impl Watch for NoWatch {
    fn begin(&mut self, _: &Path, _: bool) -> bool {
        false
    }
    fn bytes(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn end(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Unpacks the entries of `archive` for which `keep` says yes below `dest`, which must
/// be a directory we created. An incremental archive's list of deleted paths is skipped:
/// a restore takes exactly the entries its snapshot's index names. A delta of Signal's
/// database, if kept, goes to `db_delta` with its length, never to a file. `watch` sees
/// the bytes of the files it asks for as they are written.
pub fn unpack<R: Read>(
    archive: &mut tar::Archive<R>,
    dest: &Path,
    options: &UnpackOptions,
    keep: &dyn Fn(&Path) -> bool,
    db_delta: &mut dyn FnMut(&mut dyn Read, u64) -> Result<()>,
    watch: &mut dyn Watch,
) -> Result<UnpackStats> {
    let mut unpacker = Unpacker {
        dest,
        options,
        stats: UnpackStats::default(),
        directories: Vec::new(),
        watch: Some(watch),
    };
    for entry in archive.entries().context("cannot read the archive")? {
        let mut entry = entry.map_err(crate::archive::explain_read_error)?;
        let raw = entry.path_bytes().into_owned();
        if raw == crate::archive::DELETED_LIST.as_bytes() {
            continue;
        }
        if raw == crate::archive::DB_DELTA.as_bytes() {
            if keep(Path::new(crate::archive::DB_DELTA)) {
                let len = entry.size();
                db_delta(&mut entry, len)?;
            }
            continue;
        }
        let relative = safe_relative_path(&raw)?;
        if keep(&relative) {
            unpacker.entry(&mut entry, &relative)?;
        }
    }
    unpacker.finish()
}

/// One archive's extraction in progress.
struct Unpacker<'a> {
    dest: &'a Path,
    options: &'a UnpackOptions,
    stats: UnpackStats,
    /// Directory permissions and times are applied last: a read-only directory would stop
    /// its own children from being written, and writing children changes its mtime.
    directories: Vec<(PathBuf, u32, u64)>,
    /// Taken out while a watched file is written through it.
    watch: Option<&'a mut dyn Watch>,
}

/// What an entry's header says about the file it makes, checked.
struct Attributes {
    /// Bytes of content the header declares.
    size: u64,
    mode: u32,
    mtime: u64,
    owner: (u32, u32),
}

impl Unpacker<'_> {
    /// One entry into place, by its kind; special files refused.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>, relative: &Path) -> Result<()> {
        let target = self.dest.join(relative);
        prepare_parents(self.dest, relative)?;
        let header = entry.header();
        if !matches!(
            header.entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) && let Some(watch) = self.watch.as_deref_mut()
        {
            watch.begin(relative, false);
        }
        let attributes = Attributes {
            size: header.size()?,
            mode: header.mode()? & 0o777,
            mtime: header.mtime()?,
            owner: archived_owner(header, relative)?,
        };
        match header.entry_type() {
            tar::EntryType::Directory => self.directory(target, relative, attributes),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.regular(entry, &target, relative, attributes)
            }
            tar::EntryType::Symlink => self.symlink(entry, &target, relative, attributes),
            tar::EntryType::Link => self.hard_link(entry, &target, relative),
            other => bail!(
                "archive entry {} is a {:?} (device node, FIFO or other special file): refusing it",
                relative.display(),
                other
            ),
        }
    }

    fn directory(
        &mut self,
        target: PathBuf,
        relative: &Path,
        attributes: Attributes,
    ) -> Result<()> {
        match fs::symlink_metadata(&target) {
            Ok(existing) if existing.is_dir() => {}
            Ok(_) => bail!(
                "archive entry {} is a directory over a non-directory",
                relative.display()
            ),
            Err(_) => fs::DirBuilder::new().mode(0o700).create(&target)?,
        }
        set_owner(&target, attributes.owner, self.options)?;
        self.directories
            .push((target, attributes.mode, attributes.mtime));
        self.stats.directories += 1;
        Ok(())
    }

    /// A regular file, created new (never through a link), within the content budget.
    fn file(
        &mut self,
        entry: &mut impl Read,
        target: &Path,
        relative: &Path,
        attributes: Attributes,
    ) -> Result<()> {
        remove_non_directory(target, relative)?;
        let create = |flags| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | flags)
                .open(target)
        };
        let direct = attributes.size >= DIRECT_MIN;
        let mut file = create(if direct { libc::O_DIRECT } else { 0 });
        if direct && file.as_ref().is_err_and(refuses_direct) {
            // A filesystem without O_DIRECT (older tmpfs, some FUSE) refuses it at open.
            file = create(0);
        }
        let mut file = file.with_context(|| format!("cannot create {}", target.display()))?;
        let max = self.options.max_content_bytes;
        let budget = max.saturating_sub(self.stats.bytes);
        let written = copy_with_holes(entry, &mut file, budget.saturating_add(1))
            .with_context(|| format!("cannot restore {}", target.display()))?;
        if written > budget {
            bail!(
                "the archive expands to more than the {max} bytes of content its manifest \
                 declares: refusing it (damaged, or a decompression bomb)"
            );
        }
        self.stats.bytes += written;
        file.set_permissions(fs::Permissions::from_mode(attributes.mode))?;
        set_owner(target, attributes.owner, self.options)?;
        file.set_modified(to_time(attributes.mtime))?;
        self.stats.files += 1;
        self.options.progress.add_files(1);
        Ok(())
    }

    /// A regular file, through the watch if it asks to see it.
    fn regular(
        &mut self,
        entry: &mut impl Read,
        target: &Path,
        relative: &Path,
        attributes: Attributes,
    ) -> Result<()> {
        let Some(watch) = self.watch.take() else {
            return self.file(entry, target, relative, attributes);
        };
        if !watch.begin(relative, true) {
            self.watch = Some(watch);
            return self.file(entry, target, relative, attributes);
        }
        let mut tee = Tee { entry, watch };
        let written = self.file(&mut tee, target, relative, attributes);
        let watch = tee.watch;
        let ended = written.and_then(|()| watch.end());
        self.watch = Some(watch);
        ended
    }

    /// An inert link: restored as it was, never followed.
    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<R>,
        target: &Path,
        relative: &Path,
        attributes: Attributes,
    ) -> Result<()> {
        let link = entry
            .link_name_bytes()
            .with_context(|| format!("symlink {} has no target", relative.display()))?;
        remove_non_directory(target, relative)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(&link), target)
            .with_context(|| format!("cannot create symlink {}", target.display()))?;
        set_owner(target, attributes.owner, self.options)?;
        self.stats.symlinks += 1;
        Ok(())
    }

    /// A hard link, only to a file this restore already wrote inside the tree.
    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<R>,
        target: &Path,
        relative: &Path,
    ) -> Result<()> {
        let link = entry
            .link_name_bytes()
            .with_context(|| format!("hard link {} has no target", relative.display()))?;
        let source = safe_relative_path(&link).with_context(|| {
            format!("hard link {} points outside the target", relative.display())
        })?;
        prepare_parents(self.dest, &source)?;
        let source = self.dest.join(source);
        if !fs::symlink_metadata(&source).is_ok_and(|m| m.is_file()) {
            bail!(
                "hard link {} points at {:?}, which is not a file restored earlier: refusing it",
                relative.display(),
                String::from_utf8_lossy(&link)
            );
        }
        remove_non_directory(target, relative)?;
        fs::hard_link(&source, target)?;
        self.stats.files += 1;
        self.options.progress.add_files(1);
        Ok(())
    }

    /// The directories' own permissions and times, deepest first.
    fn finish(self) -> Result<UnpackStats> {
        for (path, mode, mtime) in self.directories.into_iter().rev() {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
            File::open(&path)?.set_modified(to_time(mtime))?;
        }
        Ok(self.stats)
    }
}

/// An entry's bytes, shown to a watch as they are read.
struct Tee<'e, 'w, R: Read> {
    entry: &'e mut R,
    watch: &'w mut dyn Watch,
}

impl<R: Read> Read for Tee<'_, '_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.entry.read(out)?;
        self.watch.bytes(&out[..n]).map_err(io::Error::other)?;
        Ok(n)
    }
}

/// Blocks of zeros restored as holes: the size of a block is a multiple of every common
/// filesystem block, and a block starts at a multiple of it.
const HOLE_BLOCK: usize = 64 << 10;

/// Bytes read and written at a time: whole hole blocks, and large enough that a file
/// written around the page cache keeps the disk busy.
const COPY_BLOCK: usize = 16 * HOLE_BLOCK;

/// Files at least this large (Signal's database, a video) are written with `O_DIRECT`,
/// around the page cache. Measured here at 2 GiB: a buffered write spent 5.4 s of kernel
/// time finding page-cache pages (plus 0.7 s to flush them at the restore's sync) where a
/// direct one took 1.9 s, nearly all of it waiting on the disk while the other stages
/// run. A restored file is not read again before the desktop starts, so caching it buys
/// nothing.
const DIRECT_MIN: u64 = 8 << 20;

/// What `O_DIRECT` asks of a buffer's address, a write's offset and its length: the
/// logical block size, 4096 bytes at most on the disks this runs on.
const DIRECT_ALIGN: usize = 4096;

/// Copies at most `limit` bytes of `entry` into the new, empty `file`, and skips every
/// block of all zeros instead of writing it, so a file with long runs of zeros takes no
/// more disk than its data: a restore does not cost the space a sparse file never took,
/// whatever is in the archive. The content is the same byte for byte (a hole reads as
/// zeros); the length is set at the end for a trailing hole. A `file` opened with
/// `O_DIRECT` is written in aligned blocks; a write the filesystem refuses that way, and
/// the unaligned tail, are written through the page cache instead.
fn copy_with_holes(entry: &mut impl Read, file: &mut File, limit: u64) -> Result<u64> {
    let mut entry = entry.take(limit);
    let mut buffer = vec![0u8; COPY_BLOCK + DIRECT_ALIGN];
    let start = buffer.as_ptr().align_offset(DIRECT_ALIGN);
    let block = &mut buffer[start..start + COPY_BLOCK];
    let mut out = Positioned::new(file)?;
    let mut copied = 0u64;
    loop {
        let filled = fill_block(&mut entry, block).map_err(crate::archive::explain_read_error)?;
        // Each run of hole blocks that are not all zeros, in one write.
        let mut run: Option<usize> = None;
        for (k, data) in block[..filled].chunks(HOLE_BLOCK).enumerate() {
            let zeros = data.iter().all(|&byte| byte == 0);
            match (zeros, run) {
                (false, None) => run = Some(k * HOLE_BLOCK),
                (true, Some(from)) => {
                    out.write_at(&block[from..k * HOLE_BLOCK], copied + from as u64)?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(from) = run {
            out.write_at(&block[from..filled], copied + from as u64)?;
        }
        copied += filled as u64;
        if filled < block.len() {
            break;
        }
    }
    file.set_len(copied)?;
    Ok(copied)
}

/// Writes at given offsets, with `O_DIRECT` while the file has it.
struct Positioned<'f> {
    file: &'f File,
    direct: bool,
}

impl<'f> Positioned<'f> {
    fn new(file: &'f File) -> io::Result<Self> {
        let flags = rustix::fs::fcntl_getfl(file)?;
        Ok(Self {
            file,
            direct: flags.contains(rustix::fs::OFlags::DIRECT),
        })
    }

    /// Writes `data` at `offset`, leaving `O_DIRECT` for good if the write cannot be
    /// direct (an unaligned tail, or a filesystem that refuses it): rewriting the same
    /// bytes at the same offset through the page cache is harmless.
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        if self.direct && !data.len().is_multiple_of(DIRECT_ALIGN) {
            self.leave_direct()?;
        }
        match self.file.write_all_at(data, offset) {
            Err(e) if self.direct && refuses_direct(&e) => {
                self.leave_direct()?;
                self.file.write_all_at(data, offset)
            }
            written => written,
        }
    }

    fn leave_direct(&mut self) -> io::Result<()> {
        let flags = rustix::fs::fcntl_getfl(self.file)?;
        rustix::fs::fcntl_setfl(self.file, flags - rustix::fs::OFlags::DIRECT)?;
        self.direct = false;
        Ok(())
    }
}

/// The errors of a filesystem or device that cannot do `O_DIRECT` (or not with these
/// alignments).
fn refuses_direct(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP))
}

/// Reads until `block` is full or the entry ends: how much was read.
fn fill_block(entry: &mut impl Read, block: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < block.len() {
        match entry.read(&mut block[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Makes sure every parent of `relative` below `dest` is a real directory — creating
/// missing ones — so nothing is ever written through a symlink.
fn prepare_parents(dest: &Path, relative: &Path) -> Result<()> {
    let mut current = dest.to_path_buf();
    let Some(parent) = relative.parent() else {
        return Ok(());
    };
    for part in parent.components() {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(metadata) if metadata.file_type().is_symlink() => bail!(
                "archive entry {} would be written through the symlink {}: refusing it \
                 (a symlink escape)",
                relative.display(),
                current.strip_prefix(dest).unwrap_or(&current).display()
            ),
            Ok(_) => bail!(
                "archive entry {} is below {}, which is not a directory",
                relative.display(),
                current.strip_prefix(dest).unwrap_or(&current).display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new().mode(0o700).create(&current)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A later entry of the same name replaces an earlier one (the backup re-reads files that
/// changed while read); a directory is never replaced.
fn remove_non_directory(target: &Path, relative: &Path) -> Result<()> {
    match fs::symlink_metadata(target) {
        Ok(existing) if existing.is_dir() => {
            bail!(
                "archive entry {} would replace a directory",
                relative.display()
            )
        }
        Ok(_) => fs::remove_file(target).map_err(Into::into),
        Err(_) => Ok(()),
    }
}

/// The entry's owner as archived. A tar header holds ids up to 2^63; one past `u32` is
/// not one this tool wrote, and truncating it could make it another (0, root).
fn archived_owner(header: &tar::Header, relative: &Path) -> Result<(u32, u32)> {
    let id = |value: u64, which: &str| {
        u32::try_from(value).map_err(|_| {
            anyhow::anyhow!(
                "archive entry {} has {which} {value}, larger than any on Linux: the archive \
                 was not written by this tool",
                relative.display()
            )
        })
    };
    Ok((id(header.uid()?, "uid")?, id(header.gid()?, "gid")?))
}

fn set_owner(path: &Path, archived: (u32, u32), options: &UnpackOptions) -> Result<()> {
    let owner = match options.chown {
        Some(owner) => owner,
        None if options.preserve_owner => archived,
        None => return Ok(()),
    };
    std::os::unix::fs::lchown(path, Some(owner.0), Some(owner.1))
        .with_context(|| format!("cannot set the owner of {}", path.display()))
}

fn to_time(mtime: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(mtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> UnpackOptions {
        UnpackOptions {
            chown: None,
            preserve_owner: false,
            max_content_bytes: 1 << 20,
            progress: Default::default(),
        }
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(size);
        header
    }

    /// Writes raw names into headers, as a hostile archive would (tar::Builder refuses them).
    fn archive_with(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, data_or_link) in entries {
            let size = if *kind == tar::EntryType::Regular {
                data_or_link.len() as u64
            } else {
                0
            };
            let mut h = header(*kind, size);
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                gnu.linkname[..data_or_link.len()].copy_from_slice(data_or_link.as_bytes());
            }
            h.set_cksum();
            let data: &[u8] = if size > 0 {
                data_or_link.as_bytes()
            } else {
                b""
            };
            builder.append(&h, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn no_delta(_: &mut dyn Read, _: u64) -> Result<()> {
        panic!("no archive of these tests holds a database delta")
    }

    fn unpack_bytes(bytes: &[u8], dest: &Path) -> Result<UnpackStats> {
        unpack(
            &mut tar::Archive::new(bytes),
            dest,
            &options(),
            &|_| true,
            &mut no_delta,
            &mut NoWatch,
        )
    }

    #[test]
    fn hostile_entries_are_refused_and_nothing_lands_outside() {
        use tar::EntryType::*;
        type Entries<'a> = &'a [(&'a str, tar::EntryType, &'a str)];
        let cases: &[(&str, Entries, &str)] = &[
            ("absolute", &[("/tmp/gwb-evil", Regular, "x")], "absolute"),
            ("dotdot", &[("a/../../gwb-evil", Regular, "x")], ".."),
            (
                "symlink escape",
                &[
                    ("link", Symlink, "OUTSIDE"),
                    ("link/gwb-evil", Regular, "x"),
                ],
                "symlink",
            ),
            ("hard link out", &[("h", Link, "/etc/passwd")], "outside"),
            (
                "hard link via dotdot",
                &[("h", Link, "../outside/file")],
                "outside",
            ),
            ("device node", &[("dev", Char, "")], "special"),
            ("fifo", &[("fifo", Fifo, "")], "special"),
            (
                "own marker",
                &[(".ghostwire-backup-restore.json", Regular, "{}")],
                "bookkeeping",
            ),
        ];
        for (name, entries, expected) in cases {
            let root = tempfile::tempdir().unwrap();
            let dest = root.path().join("dest");
            let outside = root.path().join("outside");
            fs::create_dir(&dest).unwrap();
            fs::create_dir(&outside).unwrap();
            fs::write(outside.join("file"), "precious").unwrap();
            let entries: Vec<_> = entries
                .iter()
                .map(|(n, k, d)| {
                    (
                        *n,
                        *k,
                        if *d == "OUTSIDE" {
                            outside.to_str().unwrap()
                        } else {
                            *d
                        },
                    )
                })
                .collect();
            let err = unpack_bytes(&archive_with(&entries), &dest).unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{name}: {err:#}");
            let outside_now: Vec<_> = fs::read_dir(&outside)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                outside_now,
                vec![std::ffi::OsString::from("file")],
                "{name}"
            );
            assert_eq!(
                fs::read_to_string(outside.join("file")).unwrap(),
                "precious",
                "{name}"
            );
        }
    }

    #[test]
    fn later_entry_of_a_name_wins_and_modes_are_kept() {
        use tar::EntryType::*;
        let bytes = archive_with(&[
            ("d", Directory, ""),
            ("d/f", Regular, "torn"),
            ("d/f", Regular, "whole"),
            ("l", Symlink, "d/f"),
        ]);
        let dest = tempfile::tempdir().unwrap();
        let stats = unpack_bytes(&bytes, dest.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dest.path().join("d/f")).unwrap(),
            "whole"
        );
        assert_eq!(
            fs::read_link(dest.path().join("l")).unwrap(),
            Path::new("d/f")
        );
        assert_eq!(
            fs::metadata(dest.path().join("d/f"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o644
        );
        assert_eq!(stats.symlinks, 1);
    }

    /// An archive of one regular file of up to 1 GiB, unpacked into a new directory.
    fn unpack_file(name: &str, content: &[u8]) -> (tempfile::TempDir, UnpackStats) {
        let mut builder = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, content.len() as u64);
        builder.append_data(&mut h, name, content).unwrap();
        let bytes = builder.into_inner().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let options = UnpackOptions {
            max_content_bytes: 1 << 30,
            ..options()
        };
        let stats = unpack(
            &mut tar::Archive::new(&bytes[..]),
            dest.path(),
            &options,
            &|_| true,
            &mut no_delta,
            &mut NoWatch,
        )
        .unwrap();
        (dest, stats)
    }

    #[test]
    fn runs_of_zeros_are_restored_as_holes_with_the_same_content() {
        use std::os::unix::fs::MetadataExt;
        // Data, 8 MiB of zeros, data not on a block boundary, and trailing zeros.
        let mut content = vec![7u8; 1000];
        content.resize(1000 + (8 << 20), 0);
        content.extend_from_slice(&[9u8; 70_000]);
        content.resize(content.len() + (4 << 20), 0);
        let (dest, stats) = unpack_file("f", &content);
        assert_eq!(stats.bytes, content.len() as u64);
        let restored = dest.path().join("f");
        assert!(fs::read(&restored).unwrap() == content, "content differs");
        let allocated = fs::metadata(&restored).unwrap().blocks() * 512;
        assert!(
            allocated < 1 << 20,
            "{allocated} bytes allocated for {} bytes of mostly zeros",
            content.len()
        );
    }

    #[test]
    fn a_large_file_is_restored_whole_in_direct_blocks_and_its_unaligned_tail() {
        // Above DIRECT_MIN, with a hole in the middle and a length that is not a multiple
        // of the direct-write alignment.
        let mut content: Vec<u8> = (0..9u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
        content[3 << 20..(3 << 20) + (128 << 10)].fill(0);
        content.extend_from_slice(&[5u8; 123]);
        assert!(content.len() as u64 >= DIRECT_MIN);
        let (dest, stats) = unpack_file("big", &content);
        assert_eq!(stats.bytes, content.len() as u64);
        assert!(
            fs::read(dest.path().join("big")).unwrap() == content,
            "content differs"
        );
    }

    #[test]
    fn content_beyond_the_declared_size_is_refused() {
        let big = "x".repeat(4096);
        let bytes = archive_with(&[("big", tar::EntryType::Regular, &big)]);
        let dest = tempfile::tempdir().unwrap();
        let options = UnpackOptions {
            max_content_bytes: 1000,
            ..options()
        };
        let err = unpack(
            &mut tar::Archive::new(&bytes[..]),
            dest.path(),
            &options,
            &|_| true,
            &mut no_delta,
            &mut NoWatch,
        )
        .unwrap_err();
        assert!(err.to_string().contains("decompression bomb"), "{err:#}");
    }
}
