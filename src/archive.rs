//! The archive stream: tar → zstd → age, and back.
//!
//! Every layer is the stock format, so `age -d -i key.txt | zstd -d | tar -x` restores an
//! archive without this program. The writer streams into fixed-size chunks handed to the
//! uploader, so memory stays bounded whatever the size of the home; the SHA-256 of the
//! ciphertext is computed on the way and recorded in the manifest.

use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use sha2::{Digest as _, Sha256};

use crate::cancel::Cancel;
use crate::home::{self, Home, Opened, Sparse};
use crate::manifest::HeaderPin;
use crate::store::ChunkSender;

/// The manifest's name for this encoding.
pub const ENCODING: &str = "tar+zstd+age";

/// How often a file that changes while it is read is read again before giving up.
const READ_ATTEMPTS: usize = 3;

/// Input per zstd worker job. zstd's default is four windows (8 MiB at level 3), and its
/// multi-threaded mode keeps about ten jobs' worth of input and output buffers: ~65 MiB
/// of the backup's memory. 1 MiB jobs keep that near 12 MiB at the same speed, and cost
/// no measurable ratio: each job still sees the end of the previous one.
const ZSTD_JOB_SIZE: u32 = 1 << 20;

// ---------------------------------------------------------------------------------------
// Writing

/// The ciphertext end: cuts the stream into upload chunks and hashes it.
struct ChunkWriter {
    sender: ChunkSender,
    buffer: BytesMut,
    chunk_size: usize,
    hash: Sha256,
    size: u64,
    /// The stream's first bytes, where the age header is ([`HeaderPin`]).
    prefix: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.chunk_size - self.buffer.len());
        self.buffer.extend_from_slice(&data[..n]);
        self.hash.update(&data[..n]);
        let room = MAX_HEADER_PIN.saturating_sub(self.prefix.len()).min(n);
        self.prefix.extend_from_slice(&data[..room]);
        self.size += n as u64;
        if self.buffer.len() == self.chunk_size {
            // The next buffer after the send, which waits while every part is on its way:
            // not one more part's worth held meanwhile.
            let chunk = self.buffer.split().freeze();
            self.sender.send(chunk)?;
            self.buffer.reserve(self.chunk_size);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How a file went into the archive; the hash is the SHA-256 of the content archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    Archived {
        sha256: String,
    },
    /// Still changing after every attempt; the last read is archived and reported.
    ChangedWhileRead {
        sha256: String,
    },
    /// Deleted, or replaced by something that is not the listed file, before it could be
    /// opened.
    Vanished,
    /// Mostly holes (see [`crate::home::sparse`]): refused, not archived.
    Sparse(Sparse),
}

/// Where the content of a file entry comes from.
enum Source<'a> {
    /// A file the walk listed in the home: opened below the home without following links.
    Listed {
        home: &'a Home,
        listed: &'a Metadata,
    },
    /// A database snapshot in our own staging directory.
    Staged(&'a Path),
}

impl Source<'_> {
    fn display(&self, path: &Path) -> std::path::PathBuf {
        match self {
            Source::Listed { home, .. } => home.path().join(path),
            Source::Staged(copy) => copy.to_path_buf(),
        }
    }

    fn open(&self, path: &Path) -> Result<Opened> {
        match self {
            Source::Listed { home, listed } => home.open_listed(path, listed),
            Source::Staged(copy) => {
                // Non-blocking like the home's files; the staging directory is ours.
                let file = match File::options()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(copy)
                {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::Gone),
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot read {}", copy.display()));
                    }
                };
                let metadata = file.metadata()?;
                Ok(match metadata.is_file() {
                    true => Opened::File(file, metadata),
                    false => Opened::Replaced,
                })
            }
        }
    }
}

/// The name of the tar entry, first in an incremental archive, that lists (NUL-separated)
/// the paths deleted since the parent. Restore applies it and never writes it; with stock
/// tools, `xargs -0 rm -rf` applies it (docs/format.md).
pub const DELETED_LIST: &str = ".ghostwire-backup-deleted";

/// The entry holding a page delta of Signal's database ([`crate::pages`]): a name no file
/// of a home can have in an archive (backups skip everything named so).
pub const DB_DELTA: &str = ".ghostwire-backup-db-delta";

type Encoder = zstd::stream::write::Encoder<'static, age::stream::StreamWriter<ChunkWriter>>;

pub struct ArchiveWriter {
    tar: tar::Builder<Encoder>,
    /// Checked before every entry and on every read of a file: a cut stops a large file.
    cancel: Cancel,
    /// Bytes of file content appended, retries included.
    pub content_bytes: u64,
}

pub struct ArchiveSettings {
    pub cancel: Cancel,
    pub zstd_level: i32,
    pub zstd_threads: u32,
    pub chunk_size: usize,
}

/// The finished archive as stored.
pub struct Sealed {
    pub size: u64,
    pub sha256: String,
    pub header: Option<HeaderPin>,
}

/// The most bytes an age header and payload nonce may take to be pinned: a header with a
/// few dozen recipients.
const MAX_HEADER_PIN: usize = 16 << 10;

/// Length of the age header of `ciphertext` plus the 16-byte payload nonce after it, if
/// both are in it. The header ends with its MAC line, the only line that starts with
/// `---` (stanza lines start with `->`, and their bodies are base64, which has no `-`).
pub fn age_header_len(ciphertext: &[u8]) -> Option<usize> {
    const INTRO: &[u8] = b"age-encryption.org/v1\n";
    const NONCE: usize = 16;
    if !ciphertext.starts_with(INTRO) {
        return None;
    }
    let mac_line = INTRO.len() - 1 + find(&ciphertext[INTRO.len() - 1..], b"\n--- ")? + 1;
    let end = mac_line + find(&ciphertext[mac_line..], b"\n")? + 1 + NONCE;
    (end <= ciphertext.len()).then_some(end)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl ArchiveWriter {
    pub fn new(
        sender: ChunkSender,
        recipients: &[Box<dyn age::Recipient + Send>],
        settings: &ArchiveSettings,
    ) -> Result<Self> {
        let sink = ChunkWriter {
            sender,
            buffer: BytesMut::with_capacity(settings.chunk_size),
            chunk_size: settings.chunk_size,
            hash: Sha256::new(),
            size: 0,
            prefix: Vec::new(),
        };
        let encryptor = age::Encryptor::with_recipients(
            recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient),
        )
        .context("cannot set up age encryption")?;
        let mut zstd =
            zstd::stream::write::Encoder::new(encryptor.wrap_output(sink)?, settings.zstd_level)?;
        if settings.zstd_threads > 1 {
            zstd.multithread(settings.zstd_threads)?;
            zstd.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
        }
        let mut tar = tar::Builder::new(zstd);
        tar.mode(tar::HeaderMode::Complete);
        tar.follow_symlinks(false);
        Ok(Self {
            tar,
            cancel: settings.cancel.clone(),
            content_bytes: 0,
        })
    }

    pub fn add_directory(&mut self, path: &Path, metadata: &Metadata) -> Result<()> {
        self.cancel.check()?;
        let mut header = header_for(metadata, tar::EntryType::Directory, 0);
        self.tar.append_data(&mut header, path, io::empty())?;
        Ok(())
    }

    pub fn add_symlink(&mut self, path: &Path, target: &Path, metadata: &Metadata) -> Result<()> {
        let mut header = header_for(metadata, tar::EntryType::Symlink, 0);
        self.tar.append_link(&mut header, path, target)?;
        Ok(())
    }

    /// Archives the listed file `path` of `home`, opened without following links (see
    /// [`crate::home`]), if it is still the file the walk listed. The file is stat'ed on
    /// its open handle before and again after reading; if it changed in between (size,
    /// mtime, ctime, inode) the archived copy may be torn, so it is read again into a new
    /// entry of the same name — extraction keeps the last one, in tar as here.
    pub fn add_file(&mut self, path: &Path, home: &Home, listed: &Metadata) -> Result<FileOutcome> {
        self.add_file_with(path, Source::Listed { home, listed }, None)
    }

    /// Archives `copy` (a database snapshot) under `path` with the live file's metadata.
    pub fn add_snapshot(
        &mut self,
        path: &Path,
        copy: &Path,
        live: &Metadata,
    ) -> Result<FileOutcome> {
        self.add_file_with(path, Source::Staged(copy), Some(live))
    }

    fn add_file_with(
        &mut self,
        path: &Path,
        source: Source,
        shown: Option<&Metadata>,
    ) -> Result<FileOutcome> {
        let file_path = source.display(path);
        let mut last_read = None;
        for attempt in 0..READ_ATTEMPTS {
            self.cancel.check()?;
            let (file, before) = match source.open(path)? {
                Opened::File(file, before) => (file, before),
                // Changed in place, then gone or replaced: the last read is what there is.
                _ if last_read.is_some() => {
                    tracing::warn!(file = %file_path.display(), "changed while read, then deleted or replaced; archived the last read");
                    let sha256 = last_read.expect("checked above");
                    return Ok(FileOutcome::ChangedWhileRead { sha256 });
                }
                not_read => return Ok(outcome_unread(not_read, &file_path)),
            };
            let size = before.len();
            let mut header = header_for(shown.unwrap_or(&before), tar::EntryType::Regular, size);
            let mut reader = ExactLength {
                inner: self
                    .cancel
                    .progress()
                    .reader(self.cancel.reader(&file))
                    .take(size),
                remaining: size,
                short: false,
                sha256: Sha256::new(),
            };
            self.tar
                .append_data(&mut header, path, &mut reader)
                .with_context(|| format!("cannot archive {}", file_path.display()))?;
            self.content_bytes += size;
            // Stat'ed on the handle read, not by path: a new file under the name is never
            // read (see crate::home), so only this one's changes matter.
            let after = file
                .metadata()
                .with_context(|| format!("cannot stat {}", file_path.display()))?;
            let sha256 = hex::encode(reader.sha256.finalize());
            if same_version(&before, &after) && !reader.short {
                return Ok(FileOutcome::Archived { sha256 });
            }
            if attempt + 1 == READ_ATTEMPTS {
                tracing::warn!(file = %file_path.display(), "kept changing while read; archived the last read");
                return Ok(FileOutcome::ChangedWhileRead { sha256 });
            }
            tracing::debug!(file = %file_path.display(), "changed while read; reading again");
            last_read = Some(sha256);
        }
        unreachable!("the last attempt returns")
    }

    /// Archives `size` bytes that `content` makes (not a file of the home) under `name`;
    /// fails unless it makes exactly that many.
    pub fn add_generated(&mut self, name: &str, size: u64, content: impl Read) -> Result<()> {
        self.cancel.check()?;
        let mut header = own_header(size);
        let mut reader = ExactLength {
            inner: self.cancel.reader(content).take(size),
            remaining: size,
            short: false,
            sha256: Sha256::new(),
        };
        self.tar
            .append_data(&mut header, name, &mut reader)
            .with_context(|| format!("cannot archive {name}"))?;
        if reader.short {
            bail!("{name} ended before its {size} bytes");
        }
        self.content_bytes += size;
        Ok(())
    }

    /// Writes the list of paths deleted since the parent snapshot, NUL-separated.
    pub fn add_deleted_list(&mut self, deleted: &[std::path::PathBuf]) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let mut list = Vec::new();
        for path in deleted {
            list.extend_from_slice(path.as_os_str().as_bytes());
            list.push(0);
        }
        let mut header = own_header(list.len() as u64);
        self.tar.append_data(&mut header, DELETED_LIST, &list[..])?;
        Ok(())
    }

    /// Ends the tar stream, the zstd frame and the age stream, and hands over the last
    /// chunk. Only after this may the upload complete.
    pub fn finish(self) -> Result<Sealed> {
        let zstd = self
            .tar
            .into_inner()
            .context("cannot finish the tar stream")?;
        let age = zstd.finish().context("cannot finish the zstd stream")?;
        let mut sink = age.finish().context("cannot finish the age stream")?;
        let last = sink.buffer.split().freeze();
        if !last.is_empty() {
            sink.sender.send(last)?;
        }
        sink.sender.finish()?;
        let header = age_header_len(&sink.prefix).map(|len| HeaderPin {
            bytes: len as u64,
            sha256: hex::encode(Sha256::digest(&sink.prefix[..len])),
        });
        Ok(Sealed {
            size: sink.size,
            sha256: hex::encode(sink.hash.finalize()),
            header,
        })
    }
}

/// The header of an entry of ours, not a file of the home.
fn own_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o600);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
    header.set_size(size);
    header
}

fn header_for(metadata: &Metadata, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(metadata.mode() & 0o7777);
    header.set_uid(metadata.uid() as u64);
    header.set_gid(metadata.gid() as u64);
    header.set_mtime(metadata.mtime().max(0) as u64);
    header.set_size(size);
    header
}

/// Whether a file read between the stats `a` and `b` (of the same handle) was read whole.
/// A file unlinked meanwhile (deleted, or renamed over) only had its ctime and link count
/// moved: what was read of it is whole.
fn same_version(a: &Metadata, b: &Metadata) -> bool {
    let content = a.len() == b.len()
        && a.ino() == b.ino()
        && a.mtime() == b.mtime()
        && a.mtime_nsec() == b.mtime_nsec();
    content && ((a.ctime() == b.ctime() && a.ctime_nsec() == b.ctime_nsec()) || b.nlink() == 0)
}

/// The outcome for a listed file that was not read: gone (quietly: normal for caches),
/// replaced (a link, a FIFO, another file) or sparse, each with its warning.
fn outcome_unread(opened: Opened, file_path: &Path) -> FileOutcome {
    match opened {
        Opened::Sparse(sizes) => {
            home::warn_sparse(file_path, sizes);
            FileOutcome::Sparse(sizes)
        }
        Opened::Replaced => {
            tracing::warn!(file = %file_path.display(), "no longer the regular file listed (replaced by a link, a FIFO or another file, or below a directory replaced by a link); not archived, not read");
            FileOutcome::Vanished
        }
        Opened::Gone | Opened::File(..) => FileOutcome::Vanished,
    }
}

/// Yields exactly the length promised in the tar header: a file that shrank while being
/// read is padded with zeros (and flagged, so it is read again) instead of tearing the
/// archive's framing.
struct ExactLength<R> {
    inner: R,
    remaining: u64,
    short: bool,
    sha256: Sha256,
}

impl<R: Read> Read for ExactLength<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let mut n = if self.short {
            0
        } else {
            self.inner.read(&mut buf[..want])?
        };
        if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            n = want;
        }
        self.remaining -= n as u64;
        self.sha256.update(&buf[..n]);
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------
// Reading

/// Size and SHA-256 of a ciphertext, to compare with the manifest's record. With a pinned
/// age header ([`HeaderPin`]) only the header is hashed once it matches: decrypting the
/// rest authenticates it. A header that does not match the pin (a manifest rewritten by
/// someone who kept the old pin) falls back to hashing every byte, so the check is never
/// weaker than the whole object's SHA-256.
#[derive(Clone, Default)]
pub struct Digest {
    sha256: Sha256,
    bytes: u64,
    pin: Option<HeaderPin>,
    header: Sha256,
    /// Whether the first `pin.bytes` bytes matched the pin, once they are all read.
    header_matched: Option<bool>,
}

impl Digest {
    /// Hashes the whole object, or once its header matches `pin`, only that.
    pub fn pinned(pin: Option<HeaderPin>) -> Self {
        Self {
            pin,
            ..Self::default()
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        if self.header_matched != Some(true) {
            self.sha256.update(data);
        }
        if let (Some(pin), None) = (&self.pin, self.header_matched) {
            let take = pin.bytes.saturating_sub(self.bytes).min(data.len() as u64) as usize;
            self.header.update(&data[..take]);
            if self.bytes + take as u64 == pin.bytes {
                let header = hex::encode(self.header.clone().finalize());
                self.header_matched = Some(header == pin.sha256);
            }
        }
        self.bytes += data.len() as u64;
    }

    /// Fails unless what was read is exactly the object the manifest describes: its size,
    /// and its pinned header or else `sha256`, the whole object's.
    pub fn check(&self, size: u64, sha256: &str) -> Result<()> {
        let hashed = match self.header_matched {
            Some(true) => None,
            _ => Some(hex::encode(self.sha256.clone().finalize())),
        };
        if self.bytes != size || hashed.as_ref().is_some_and(|actual| actual != sha256) {
            bail!(
                "the archive does not match its manifest ({} bytes read, {size} expected; \
                 sha256 {}, {sha256} expected): it was damaged or replaced in the repository",
                self.bytes,
                hashed
                    .as_deref()
                    .unwrap_or("not needed: its pinned age header matched")
            );
        }
        Ok(())
    }
}

/// Hashes the ciphertext as it is read; the digest stays readable after the reader is
/// consumed by the decryption layers.
pub struct HashingReader<R> {
    inner: R,
    digest: Arc<Mutex<Digest>>,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, digest: Digest) -> (Self, Arc<Mutex<Digest>>) {
        let digest = Arc::new(Mutex::new(digest));
        (
            Self {
                inner,
                digest: digest.clone(),
            },
            digest,
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digest.lock().unwrap().update(&buf[..n]);
        Ok(n)
    }
}

pub type PlainReader<R> = zstd::stream::read::Decoder<'static, io::BufReader<ReadAhead<R>>>;

/// Decrypts and decompresses an archive. The age payload is authenticated chunk by chunk
/// (a flipped byte fails at its chunk, a truncation at the end), so nothing read from here
/// is trusted until [`finish_plain`] has read it to its end.
pub fn open_plain<R: Read + Send + 'static>(
    ciphertext: R,
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> Result<PlainReader<R>> {
    let plain = decrypt(ciphertext, identities)?;
    Ok(zstd::stream::read::Decoder::new(ReadAhead::spawn(plain))?)
}

/// [`open_plain`] on the caller's thread, for small objects such as file indexes.
pub fn open_plain_here<R: Read>(
    ciphertext: R,
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> Result<impl Read> {
    Ok(zstd::stream::read::Decoder::new(decrypt(
        ciphertext, identities,
    )?)?)
}

fn decrypt<R: Read>(
    ciphertext: R,
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> Result<age::stream::StreamReader<R>> {
    let decryptor = age::Decryptor::new(ciphertext).map_err(|e| match e {
        age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
            anyhow::anyhow!(
                "the archive is not an age file (damaged, or not written by ghostwire-backup)"
            )
        }
        other => anyhow::anyhow!("cannot read the archive's age header: {other}"),
    })?;
    let plain = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => anyhow::anyhow!(
                "none of the given identities can decrypt this snapshot: it was encrypted to \
                 other recipients (check --identity), or its header is damaged"
            ),
            other => anyhow::anyhow!("cannot decrypt the archive: {other}"),
        })?;
    Ok(plain)
}

/// Bytes the decrypting thread may run ahead of the decompressing one.
const READ_AHEAD_BLOCK: usize = 256 << 10;
const READ_AHEAD_BLOCKS: usize = 4;

/// The decrypted stream, read on a thread of its own: downloading, hashing and decrypting
/// there overlap with decompressing and writing files on the caller's thread. On one
/// thread a restore is bound by one core (profiled: SHA-256, ChaCha20-Poly1305 and zstd
/// plus the file writes, one after the other). Holds at most 1 MiB.
pub struct ReadAhead<R> {
    blocks: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    position: usize,
    ended: bool,
    /// The error the stream failed with, given again to every later read: the thread
    /// sent it once and is gone.
    failed: Option<(io::ErrorKind, String)>,
    source: std::marker::PhantomData<fn() -> R>,
}

impl<R: Read + Send + 'static> ReadAhead<R> {
    fn spawn(mut inner: age::stream::StreamReader<R>) -> Self {
        let (sender, blocks) = std::sync::mpsc::sync_channel(READ_AHEAD_BLOCKS);
        std::thread::spawn(move || {
            loop {
                let mut block = vec![0; READ_AHEAD_BLOCK];
                let (filled, error) = fill(&mut inner, &mut block);
                block.truncate(filled);
                let end = filled < READ_AHEAD_BLOCK; // the stream ended, or failed
                if filled > 0 && sender.send(Ok(block)).is_err() {
                    return; // the reader gave up
                }
                if end {
                    // An empty block marks the end; anything else is the error.
                    let _ = sender.send(error.map_or(Ok(Vec::new()), Err));
                    return;
                }
            }
        });
        Self {
            blocks,
            current: Vec::new(),
            position: 0,
            ended: false,
            failed: None,
            source: std::marker::PhantomData,
        }
    }
}

/// Reads until `buf` is full, the stream ends or fails: how much was read, and the error.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (filled, Some(e)),
        }
    }
    (filled, None)
}

impl<R> Read for ReadAhead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.current.len() {
            if self.ended {
                return Ok(0);
            }
            if let Some((kind, message)) = &self.failed {
                return Err(io::Error::new(*kind, message.clone()));
            }
            match self.blocks.recv() {
                Ok(Ok(block)) if block.is_empty() => self.ended = true,
                Ok(Ok(block)) => {
                    self.current = block;
                    self.position = 0;
                }
                Ok(Err(e)) => {
                    self.failed = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
                // The thread never stops without an end marker or an error, unless it died.
                Err(_) => return Err(io::Error::other("the decrypting thread stopped")),
            }
        }
        let n = buf.len().min(self.current.len() - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// Reads what is left after the tar end-of-archive marker, which makes age authenticate
/// the final chunk and zstd check the frame end. Fails if the stream is damaged there.
pub fn finish_plain<R>(mut plain: PlainReader<R>) -> Result<()> {
    io::copy(&mut plain, &mut io::sink())
        .map_err(|e| anyhow::anyhow!("the archive is damaged or truncated: {e}"))?;
    Ok(())
}

/// Turns an I/O error from the decrypting reader into one that says what it means.
pub fn explain_read_error(err: io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "the archive is damaged, truncated or tampered with (authentication failed): {err}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::chunk_channel;
    use std::time::Duration;

    /// An empty archive to `recipient`: its ciphertext and how it was sealed.
    fn sealed_archive(recipient: &age::x25519::Recipient) -> (Vec<u8>, Sealed) {
        let (sender, mut stream) = chunk_channel(64);
        let recipients: Vec<Box<dyn age::Recipient + Send>> = vec![Box::new(recipient.clone())];
        let settings = ArchiveSettings {
            cancel: Cancel::new(),
            zstd_level: 1,
            zstd_threads: 1,
            chunk_size: 1 << 16,
        };
        let sealed = ArchiveWriter::new(sender, &recipients, &settings)
            .unwrap()
            .finish()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut ciphertext = Vec::new();
        runtime.block_on(async {
            while let Some(chunk) = stream.next().await.unwrap() {
                ciphertext.extend_from_slice(&chunk);
            }
        });
        (ciphertext, sealed)
    }

    #[test]
    fn the_pinned_header_is_the_age_header_and_nonce_and_a_stale_pin_falls_back_to_the_whole_hash()
    {
        let recipient = age::x25519::Identity::generate().to_public();
        let (ciphertext, sealed) = sealed_archive(&recipient);
        let pin = sealed.header.clone().expect("an age header is pinned");
        let text = String::from_utf8_lossy(&ciphertext[..pin.bytes as usize - 16]);
        assert!(
            text.starts_with("age-encryption.org/v1\n-> X25519 "),
            "{text}"
        );
        assert!(
            text.rsplit('\n').nth(1).unwrap().starts_with("--- "),
            "{text}"
        );
        let digest_of = |bytes: &[u8], pin: &HeaderPin| {
            let mut digest = Digest::pinned(Some(pin.clone()));
            // In pieces that split the header, as reads do.
            for piece in bytes.chunks(7) {
                digest.update(piece);
            }
            digest
        };
        let digest = digest_of(&ciphertext, &pin);
        assert_eq!(digest.header_matched, Some(true));
        // The header alone decides: the whole hash is not even looked at.
        digest.check(sealed.size, "not the whole hash").unwrap();
        assert!(digest.check(sealed.size + 1, &sealed.sha256).is_err());
        // The same (empty) content sealed again to the same recipient: another header, so
        // the pin falls back to the whole object's hash, which must then match.
        let (again, resealed) = sealed_archive(&recipient);
        let digest = digest_of(&again, &pin);
        assert_ne!(digest.header_matched, Some(true));
        let err = digest.check(resealed.size, &sealed.sha256).unwrap_err();
        assert!(
            format!("{err}").contains("does not match its manifest"),
            "{err}"
        );
        digest.check(resealed.size, &resealed.sha256).unwrap();
        assert_eq!(age_header_len(b"not an age file"), None);
        assert_eq!(age_header_len(&ciphertext[..pin.bytes as usize - 1]), None);
    }

    #[test]
    fn a_file_replaced_by_a_fifo_is_skipped_instead_of_blocking_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("attachment");
        std::fs::write(&fifo, b"listed as a file").unwrap();
        let listed = std::fs::symlink_metadata(&fifo).unwrap();
        std::fs::remove_file(&fifo).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let (sender, mut stream) = chunk_channel(4);
        let drain = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(async { while let Ok(Some(_)) = stream.next().await {} });
        });
        let (done, outcome) = std::sync::mpsc::channel();
        // Without a writer on the FIFO, a blocking open would never return: run it aside
        // and give it a deadline, so a regression fails instead of hanging the suite.
        std::thread::spawn(move || {
            let recipient = age::x25519::Identity::generate().to_public();
            let recipients: Vec<Box<dyn age::Recipient + Send>> = vec![Box::new(recipient)];
            let settings = ArchiveSettings {
                cancel: Cancel::new(),
                zstd_level: 1,
                zstd_threads: 1,
                chunk_size: 1 << 16,
            };
            let mut writer = ArchiveWriter::new(sender, &recipients, &settings).unwrap();
            let home = Home::open(dir.path()).unwrap();
            let result = writer
                .add_file(Path::new("attachment"), &home, &listed)
                .unwrap();
            writer.finish().unwrap();
            done.send(result).unwrap();
        });
        let result = outcome
            .recv_timeout(Duration::from_secs(20))
            .expect("archiving a FIFO blocked");
        assert_eq!(result, FileOutcome::Vanished);
        drain.join().unwrap();
    }
}
