//! A consistent raw image of a live WAL-mode database: its pages as stored (for Signal's,
//! still encrypted), read at the speed of reading the file once, without decrypting.
//!
//! Why it is consistent (docs/benchmarks.md, "Raw pages"; the way Litestream reads a live
//! database): we hold a read transaction on SQLite's own connection. A reader on read-mark
//! *i* ≥ 1 keeps checkpoints from copying frames past its mark into `db.sqlite` and
//! writers from restarting the WAL; one on read-lock 0 keeps checkpoints out of
//! `db.sqlite` altogether. So while it is held, the only pages of `db.sqlite` that can
//! change under us are pages with a frame in the WAL at or below the reader's mark, and
//! reading the file, then laying over it every WAL frame up to the last valid commit
//! (salts and cumulative checksums checked, as SQLite's recovery reads it) gives the
//! database at one commit at or after the reader's snapshot. On read-lock 0 a writer may
//! restart the WAL meanwhile (rewriting it from the start, under new salts): the WAL's
//! header is read again after the image is written, and if it moved, the image is made
//! again inside the same transaction (`db.sqlite` cannot change under read-lock 0, and the
//! new WAL cannot be restarted again, its frames being kept out of the file).
//!
//! Both files are read through the descriptors SQLite itself opened, so they are the
//! files the transaction locks, whatever the home's owner does to their paths. Those
//! descriptors are never closed here: closing any descriptor of a file drops every POSIX
//! lock the process holds on it, SQLite's included.

use std::collections::{HashMap, HashSet};
use std::fs::{File, Metadata};
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags};

use crate::cancel::Cancel;
use crate::profile::DbKey;
use crate::raw_pages::{self, RawPageHash, RawPageList};
use crate::sqlite;

const WAL_HEADER_LEN: u64 = 32;
const FRAME_HEADER_LEN: u64 = 24;
/// The WAL header's magic; its lowest bit says the checksums read big-endian words.
const WAL_MAGIC: u32 = 0x377f_0682;
const WAL_VERSION: u32 = 3_007_000;

/// Bytes of `db.sqlite` read, overlaid, hashed and written at a time; also the most of the
/// WAL read at a time. Memory stays at a few of these whatever the database's size.
const CHUNK_BYTES: usize = 4 << 20;

/// Images made inside one read transaction before giving up: a WAL restart can move the
/// header once (see the module docs), so the second always holds.
const ATTEMPTS: usize = 3;

/// The WAL's header: byte order of its checksums, page size, salts, checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WalHeader {
    big_endian: bool,
    page_size: u32,
    salts: [u8; 8],
    checksum: (u32, u32),
}

/// The committed frames of the WAL's current contents.
#[derive(Default)]
struct Frames {
    /// Page number → offset in the WAL of the page's newest committed frame's content.
    newest: HashMap<u32, u64>,
    /// The database's pages after the last valid commit.
    db_pages: Option<u32>,
}

/// A consistent raw image of the live database `source` in the new file `copy`, and the
/// hash of each of its pages. `listed` is the stat the walk recorded for `source`: SQLite
/// must have opened that file (see [`sqlite::snapshot`]). The key only opens the live
/// database (to take the read lock); no page is decrypted. `wait` bounds how long a
/// rollback-journal database mid-write may hold us up.
pub fn raw_image(
    source: &Path,
    listed: &Metadata,
    copy: &Path,
    key: Option<&DbKey>,
    wait: Duration,
    cancel: &Cancel,
) -> Result<RawPageList> {
    let taken = take(source, listed, copy, key, wait, None, cancel, |_| Ok(()))?;
    Ok(taken.0)
}

/// What [`raw_changes`] read: the image's page list, the attachment references and the
/// `user_version` of the database.
pub struct Changes {
    pub pages: RawPageList,
    pub references: HashSet<String>,
    pub user_version: i64,
}

/// Like [`raw_image`], but writes only the pages whose raw hash differs from `base`'s, at
/// their offsets, into a sparse `copy` (the rest are holes): not a database, only the
/// source of a delta against `base`. Writing a GiB-sized image costs seconds on a slow
/// disk; the final snapshot, which the desktop waits for, needs only the changes. The
/// attachment references are read in the same read transaction, from the live database
/// (at the transaction's snapshot, which with Signal down is the image's).
pub fn raw_changes(
    source: &Path,
    listed: &Metadata,
    copy: &Path,
    key: &DbKey,
    base: &RawPageList,
    wait: Duration,
    cancel: &Cancel,
) -> Result<Changes> {
    let read = |live: &mut Connection| -> Result<(HashSet<String>, i64)> {
        let references = sqlite::references_of(live, cancel)?;
        let user_version = live.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        Ok((references, user_version))
    };
    let (pages, (references, user_version)) = take(
        source,
        listed,
        copy,
        Some(key),
        wait,
        Some(base),
        cancel,
        read,
    )?;
    Ok(Changes {
        pages,
        references,
        user_version,
    })
}

/// The image, with the pages equal to `unchanged`'s left out if given, and what `inside`
/// reads from the live database inside the same read transaction.
#[allow(clippy::too_many_arguments)]
fn take<T>(
    source: &Path,
    listed: &Metadata,
    copy: &Path,
    key: Option<&DbKey>,
    wait: Duration,
    unchanged: Option<&RawPageList>,
    cancel: &Cancel,
    inside: impl FnOnce(&mut Connection) -> Result<T>,
) -> Result<(RawPageList, T)> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let mut live = sqlite::open(source, flags, key)?;
    sqlite::check_opened(&live, source, listed)?;
    let page_size = page_size(&live, source)?;
    let wal_mode = journal_mode(&live)? == "wal";
    let out = File::options()
        .write(true)
        .create_new(true)
        .open(copy)
        .with_context(|| format!("cannot create {}", copy.display()))?;
    let started = Instant::now();
    sqlite::begin_read(&live, source, wait, cancel)?;
    let db = borrowed(sqlite::main_file_descriptor(&live), source)?;
    let wal = match wal_mode {
        true => Some(borrowed(sqlite::wal_file_descriptor(&live), source)?),
        false => None,
    };
    let snapshot_pages: u32 = live.query_row("PRAGMA page_count", [], |row| row.get(0))?;
    for _ in 0..ATTEMPTS {
        let header = wal.as_deref().map(read_header).transpose()?.flatten();
        let frames = match (&wal, header) {
            (Some(wal), Some(header)) => read_frames(wal, header, page_size, cancel)?,
            _ => Frames::default(),
        };
        let page_count = frames.db_pages.unwrap_or(snapshot_pages);
        out.set_len(0)?;
        let image = Image {
            db: &db,
            wal: wal.as_deref(),
            frames: &frames,
            source,
            unchanged,
        };
        let list = image.write(page_size, page_count, &out, cancel)?;
        if wal.as_deref().map(read_header).transpose()?.flatten() == header {
            let read = inside(&mut live)?;
            drop(live); // ends the read transaction: Signal's checkpoints may go on
            tracing::debug!(db = %source.display(), pages = page_count, elapsed = ?started.elapsed(), "raw database image taken");
            return Ok((list, read));
        }
        tracing::debug!(db = %source.display(), "the WAL was restarted while it was read: reading it again");
    }
    bail!(
        "the WAL of {} kept changing under a read transaction, which SQLite does not allow: \
         is another program rewriting it? Not snapshotted",
        source.display()
    )
}

/// What the image is made of.
struct Image<'a> {
    db: &'a File,
    wal: Option<&'a File>,
    frames: &'a Frames,
    source: &'a Path,
    /// Pages whose hash is this list's are not written (a sparse image of the changes).
    unchanged: Option<&'a RawPageList>,
}

impl Image<'_> {
    /// Writes pages 1 to `page_count` into `out` at their offsets, each from the WAL if a
    /// committed frame holds it, else from the database file, and returns their hashes.
    /// Chunks of pages are read, hashed and written on several threads at once
    /// ([`raw_pages::for_each_chunk`]): this runs inside the read transaction, which
    /// Signal's checkpoints wait for.
    fn write(
        &self,
        page_size: u32,
        page_count: u32,
        out: &File,
        cancel: &Cancel,
    ) -> Result<RawPageList> {
        let mut hashes = vec![RawPageHash::default(); page_count as usize];
        raw_pages::for_each_chunk(
            raw_pages::CHUNKS_BYTES,
            &mut hashes,
            page_size,
            cancel,
            |first, chunk, hashes| self.write_chunk(page_size, first + 1, chunk, hashes, out),
        )?;
        out.set_len(u64::from(page_count) * u64::from(page_size))?;
        Ok(RawPageList { page_size, hashes })
    }

    /// Reads the pages from number `first` on into `chunk` (one per hash of `hashes`),
    /// hashes them, and writes them into `out` (only those that differ from `unchanged`'s,
    /// when it is given).
    fn write_chunk(
        &self,
        page_size: u32,
        first: u32,
        chunk: &mut [u8],
        hashes: &mut [RawPageHash],
        out: &File,
    ) -> Result<()> {
        let size = page_size as usize;
        let offset = u64::from(first - 1) * u64::from(page_size);
        let in_file = read_at_most(self.db, chunk, offset)?;
        for (n, (page, slot)) in chunk.chunks_exact_mut(size).zip(hashes).enumerate() {
            let pgno = first + n as u32;
            match (self.frames.newest.get(&pgno), self.wal) {
                (Some(&at), Some(wal)) => wal.read_exact_at(page, at)?,
                _ if (n + 1) * size <= in_file => {}
                _ => bail!(
                    "page {pgno} of {} is in neither the file nor its WAL: the database \
                     is damaged or was cut while we read it. Not snapshotted",
                    self.source.display()
                ),
            }
            *slot = raw_pages::raw_page_hash(page);
            if let Some(base) = self.unchanged
                && base.hashes.get(pgno as usize - 1) != Some(slot)
            {
                out.write_all_at(page, u64::from(pgno - 1) * u64::from(page_size))?;
            }
        }
        if self.unchanged.is_none() {
            out.write_all_at(chunk, offset)?;
        }
        Ok(())
    }
}

/// A file SQLite holds open, read without ever closing it (see the module docs).
fn borrowed(fd: Option<RawFd>, source: &Path) -> Result<ManuallyDrop<File>> {
    let fd = fd.with_context(|| {
        format!(
            "cannot tell which files SQLite opened for {}",
            source.display()
        )
    })?;
    // SAFETY: SQLite keeps the descriptor open while the connection lives, which outlives
    // every use of it here; ManuallyDrop keeps us from closing it.
    Ok(ManuallyDrop::new(unsafe { File::from_raw_fd(fd) }))
}

/// The page size SQLite reads `conn`'s database with (SQLCipher answers in text).
fn page_size(conn: &Connection, source: &Path) -> Result<u32> {
    let value: rusqlite::types::Value = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
    let size = match value {
        rusqlite::types::Value::Integer(n) => u32::try_from(n).ok(),
        rusqlite::types::Value::Text(text) => text.trim().parse().ok(),
        _ => None,
    };
    size.filter(|s| raw_pages::PAGE_SIZES.contains(s) && s.is_power_of_two())
        .with_context(|| format!("cannot read the page size of {}", source.display()))
}

fn journal_mode(conn: &Connection) -> Result<String> {
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
    Ok(mode.to_ascii_lowercase())
}

/// Reads into `buffer` from `offset` until it is full or the file ends; returns the bytes
/// read.
fn read_at_most(file: &File, buffer: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut read = 0;
    while read < buffer.len() {
        match file.read_at(&mut buffer[read..], offset + read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(read)
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `sums`.
fn checksum(big_endian: bool, data: &[u8], sums: (u32, u32)) -> (u32, u32) {
    let word = |bytes: &[u8]| {
        let bytes: [u8; 4] = bytes.try_into().expect("4 bytes");
        if big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        }
    };
    let (mut s0, mut s1) = sums;
    for pair in data.chunks_exact(8) {
        s0 = s0.wrapping_add(word(&pair[..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(word(&pair[4..])).wrapping_add(s0);
    }
    (s0, s1)
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The WAL's header, or `None` if it has none that SQLite would take (empty, cut, or
/// being rewritten): then no frame of it counts.
fn read_header(wal: &File) -> std::io::Result<Option<WalHeader>> {
    let mut bytes = [0u8; WAL_HEADER_LEN as usize];
    if read_at_most(wal, &mut bytes, 0)? < bytes.len() {
        return Ok(None);
    }
    let magic = be32(&bytes, 0);
    if magic & !1 != WAL_MAGIC || be32(&bytes, 4) != WAL_VERSION {
        return Ok(None);
    }
    let big_endian = magic & 1 == 1;
    let checksum_found = (be32(&bytes, 24), be32(&bytes, 28));
    if checksum(big_endian, &bytes[..24], (0, 0)) != checksum_found {
        return Ok(None);
    }
    Ok(Some(WalHeader {
        big_endian,
        page_size: be32(&bytes, 8),
        salts: bytes[16..24].try_into().expect("8 bytes"),
        checksum: checksum_found,
    }))
}

/// The frames of the WAL up to its last valid commit: each frame's salts must be the
/// header's and its checksum must continue the chain, as SQLite's recovery requires.
fn read_frames(wal: &File, header: WalHeader, page_size: u32, cancel: &Cancel) -> Result<Frames> {
    if header.page_size != page_size {
        bail!(
            "the WAL has pages of {} bytes but its database {page_size}: not SQLite's",
            header.page_size
        );
    }
    let frame_len = FRAME_HEADER_LEN as usize + page_size as usize;
    let mut buffer = vec![0u8; (CHUNK_BYTES / frame_len).max(1) * frame_len];
    let (mut frames, mut pending) = (Frames::default(), Vec::new());
    let (mut offset, mut sums) = (WAL_HEADER_LEN, header.checksum);
    loop {
        cancel.check()?;
        let read = read_at_most(wal, &mut buffer, offset)?;
        for frame in buffer[..read].chunks_exact(frame_len) {
            let (head, page) = frame.split_at(FRAME_HEADER_LEN as usize);
            let pgno = be32(head, 0);
            if pgno == 0 || head[8..16] != header.salts {
                return Ok(frames);
            }
            sums = checksum(header.big_endian, &head[..8], sums);
            sums = checksum(header.big_endian, page, sums);
            if sums != (be32(head, 16), be32(head, 20)) {
                return Ok(frames);
            }
            pending.push((pgno, offset + FRAME_HEADER_LEN));
            let db_pages = be32(head, 4);
            if db_pages != 0 {
                frames.newest.extend(pending.drain(..));
                frames.db_pages = Some(db_pages);
            }
            offset += frame_len as u64;
        }
        if read < buffer.len() {
            return Ok(frames);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "7f3c2a9be1d04c6f8a5b3e2d1c0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";

    fn key() -> DbKey {
        DbKey::from_hex(KEY).unwrap()
    }

    fn count(path: &Path) -> i64 {
        let conn = sqlite::open(path, OpenFlags::SQLITE_OPEN_READ_ONLY, Some(&key())).unwrap();
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// Commits sit in the WAL, some pages of the file are stale: the image holds every
    /// commit, opens with the key and passes `cipher_integrity_check`; its bytes are the
    /// checkpointed file's, page for page. (Some 1600 pages: several chunks, imaged on
    /// several threads.)
    #[test]
    fn the_image_holds_the_wal_commits_and_equals_the_checkpointed_file() {
        let dir = tempfile::tempdir().unwrap();
        let live_path = dir.path().join("live.sqlite");
        let live = Connection::open(&live_path).unwrap();
        live.execute_batch(&key().pragma()).unwrap();
        live.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE t(x);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO t SELECT randomblob(300) FROM n;
             PRAGMA wal_checkpoint(TRUNCATE);
             INSERT INTO t VALUES (1), (2), (3);
             UPDATE t SET x = randomblob(310) WHERE rowid % 50 = 0;",
        )
        .unwrap();
        let image = dir.path().join("image.sqlite");
        let listed = std::fs::metadata(&live_path).unwrap();
        let list = raw_image(
            &live_path,
            &listed,
            &image,
            Some(&key()),
            Duration::from_secs(1),
            &Cancel::new(),
        )
        .unwrap();
        assert_eq!(count(&image), 20003);
        let check = sqlite::check_copy(&image, Some(&key()), &Cancel::new()).unwrap();
        assert!(check.is_ok(), "{check:?}");
        assert_eq!(list.bytes(), std::fs::metadata(&image).unwrap().len());
        live.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let checkpointed = std::fs::read(&live_path).unwrap();
        let imaged = std::fs::read(&image).unwrap();
        assert_eq!(checkpointed.len(), imaged.len());
        assert!(
            checkpointed == imaged,
            "raw pages differ from the checkpointed file"
        );
    }

    /// The final snapshot's changes: the same hashes as a whole image, and the pages
    /// that differ from the base, byte for byte; the others are not written.
    #[test]
    fn the_changes_hold_the_pages_that_differ_from_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let live_path = dir.path().join("live.sqlite");
        let live = Connection::open(&live_path).unwrap();
        live.execute_batch(&key().pragma()).unwrap();
        live.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t(x, path);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO t SELECT randomblob(300), NULL FROM n;",
        )
        .unwrap();
        let take_whole = |name: &str| {
            let path = dir.path().join(name);
            let listed = std::fs::metadata(&live_path).unwrap();
            let list = raw_image(
                &live_path,
                &listed,
                &path,
                Some(&key()),
                Duration::from_secs(1),
                &Cancel::new(),
            )
            .unwrap();
            (list, std::fs::read(&path).unwrap())
        };
        let (base, _) = take_whole("base.sqlite");
        let name = format!("ab/ab{}", "0".repeat(62));
        live.execute("INSERT INTO t VALUES (randomblob(5000), ?1)", [&name])
            .unwrap();
        let (whole, whole_bytes) = take_whole("whole.sqlite");
        let changes_path = dir.path().join("changes.sqlite");
        let listed = std::fs::metadata(&live_path).unwrap();
        let changes = raw_changes(
            &live_path,
            &listed,
            &changes_path,
            &key(),
            &base,
            Duration::from_secs(1),
            &Cancel::new(),
        )
        .unwrap();
        assert_eq!(changes.pages, whole);
        assert!(
            changes.references.contains(&name),
            "{:?}",
            changes.references
        );
        let sparse = std::fs::read(&changes_path).unwrap();
        assert_eq!(sparse.len(), whole_bytes.len());
        let changed = whole.changed_since(&base).unwrap();
        assert!(!changed.is_empty() && changed.len() < whole.hashes.len() / 4);
        for (n, (page, expected)) in sparse
            .chunks(4096)
            .zip(whole_bytes.chunks(4096))
            .enumerate()
        {
            if changed.contains(&(n as u32 + 1)) {
                assert!(
                    page == expected,
                    "page {} differs from the whole image",
                    n + 1
                );
            } else {
                assert!(
                    page.iter().all(|&b| b == 0),
                    "page {} written though unchanged",
                    n + 1
                );
            }
        }
    }

    /// Signal quit: the database was checkpointed and its `-wal` removed.
    #[test]
    fn a_database_whose_wal_was_removed_is_imaged_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let live_path = dir.path().join("live.sqlite");
        let live = Connection::open(&live_path).unwrap();
        live.execute_batch(&key().pragma()).unwrap();
        live.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t(x);
             INSERT INTO t VALUES (1), (2);",
        )
        .unwrap();
        drop(live);
        assert!(!dir.path().join("live.sqlite-wal").exists());
        let image = dir.path().join("image.sqlite");
        let listed = std::fs::metadata(&live_path).unwrap();
        raw_image(
            &live_path,
            &listed,
            &image,
            Some(&key()),
            Duration::from_secs(1),
            &Cancel::new(),
        )
        .unwrap();
        assert_eq!(count(&image), 2);
        assert!(std::fs::read(&live_path).unwrap() == std::fs::read(&image).unwrap());
    }

    #[test]
    fn a_frame_with_a_broken_checksum_ends_the_committed_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(5000));
             INSERT INTO t VALUES (randomblob(5000));",
        )
        .unwrap();
        let wal_path = dir.path().join("plain.sqlite-wal");
        let wal = File::open(&wal_path).unwrap();
        let header = read_header(&wal).unwrap().unwrap();
        let all = read_frames(&wal, header, header.page_size, &Cancel::new()).unwrap();
        let last_commit = all.db_pages.unwrap();
        // Damage the last frame: the last transaction no longer counts.
        let mut bytes = std::fs::read(&wal_path).unwrap();
        let end = bytes.len() - 1;
        bytes[end] ^= 1;
        let damaged = dir.path().join("damaged-wal");
        std::fs::write(&damaged, &bytes).unwrap();
        let file = File::open(&damaged).unwrap();
        let fewer = read_frames(&file, header, header.page_size, &Cancel::new()).unwrap();
        assert!(fewer.newest.len() < all.newest.len());
        assert!(fewer.db_pages.unwrap() <= last_commit);
        let other_salts = WalHeader {
            salts: [0; 8],
            ..header
        };
        let none = read_frames(&wal, other_salts, header.page_size, &Cancel::new()).unwrap();
        assert!(none.newest.is_empty() && none.db_pages.is_none());
    }
}
