//! Page-level deltas of Signal's database: a backup after a few new messages uploads the
//! pages that changed, not the whole database again.
//!
//! SQLCipher encrypts every page with a fresh random IV, so two copies of an unchanged
//! database differ in every byte: pages can only be compared decrypted. `sqlite_dbpage`
//! (compiled in through `.cargo/config.toml`) reads them through the pager, decrypted; a
//! page's hash leaves out its reserve area (the IV and HMAC live there) and, on page 1,
//! the counters SQLite rewrites on its own ([`PAGE1_BOOKKEEPING`]).
//!
//! A backup hashes every page of its copy into a [`PageList`] (kept in the local catalog;
//! its digest is in the index entry, so the catalog digest and the signed manifest cover
//! it). The next backup compares its copy's list with the parent's and archives a
//! [`Delta`]: the changed pages, decrypted, inside the age-encrypted archive. A restore
//! unpacks the chain's full copy, applies each delta in order through `sqlite_dbpage`
//! (re-encrypted by SQLCipher as it writes), and checks that the result hashes to the
//! snapshot's list. The format is in docs/format.md, "Database deltas".

use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags, Statement, Transaction, params};
use sha2::{Digest, Sha256};

use crate::cancel::Cancel;
use crate::profile::DbKey;

/// The first bytes of a delta.
const MAGIC: &[u8; 8] = b"GWBDELT1";

/// Magic, page size, page count, pages in the delta, base and result digests.
pub const HEADER_LEN: u64 = 8 + 4 + 4 + 4 + 32 + 32;

/// Byte ranges of page 1 that SQLite rewrites by itself at every commit (file change
/// counter, version-valid-for, the writer's library version): not content, left out of
/// page 1's hash (sqlite.org/fileformat2.html, "The Database Header").
const PAGE1_BOOKKEEPING: [std::ops::Range<usize>; 2] = [24..28, 92..100];

/// More pages than SQLite allows (4294967294), or than any sane delta names.
const MAX_PAGES: u32 = u32::MAX - 1;

/// The page holding byte 2³⁰ of the file, which SQLite leaves unused for its file locks
/// (sqlite.org/fileformat2.html, "The Lock-Byte Page"): `sqlite_dbpage` reads it as zeros
/// and the pager refuses to write it (SQLITE_CORRUPT). A database grows past it.
pub fn pending_byte_page(page_size: u32) -> u32 {
    (1u32 << 30) / page_size + 1
}

/// A page's hash: the first 16 bytes of SHA-256 over its content.
pub type PageHash = [u8; 16];

/// The hash of every page of one database, in page order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageList {
    pub page_size: u32,
    /// Bytes at the end of each page that are not content (SQLCipher's IV and HMAC).
    pub reserve: u32,
    pub hashes: Vec<PageHash>,
}

/// Opens a database for its pages; `write` for a restore applying a delta.
pub fn open(path: &Path, key: &DbKey, write: bool) -> Result<Connection> {
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NOFOLLOW
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW
    };
    crate::sqlite::open(path, flags, Some(key))
}

impl PageList {
    /// Hashes every page of `conn`'s main database, inside one read transaction.
    pub fn read(conn: &Connection, cancel: &Cancel) -> Result<Self> {
        let tx = conn.unchecked_transaction()?;
        let mut statement = tx.prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")?;
        let mut rows = statement.query([])?;
        // Not `PRAGMA page_size`: SQLCipher answers it as `cipher_page_size`, in text.
        let mut list = Self {
            page_size: 0,
            reserve: 0,
            hashes: Vec::new(),
        };
        while let Some(row) = rows.next()? {
            if list.hashes.len().is_multiple_of(4096) {
                cancel.check()?;
            }
            let data = row.get_ref(0)?.as_blob()?;
            if list.hashes.is_empty() {
                list.page_size = data.len() as u32;
                list.reserve = u32::from(*data.get(20).context("page 1 is too short")?);
            } else if data.len() != list.page_size as usize {
                bail!("sqlite_dbpage returned a page of {} bytes", data.len());
            }
            list.hashes
                .push(page_hash(data, list.hashes.len() as u32 + 1, list.reserve));
        }
        Ok(list)
    }

    pub fn page_count(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// SHA-256 over the page size, the page count and every page's hash: what index
    /// entries and deltas name a database version by.
    pub fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(b"ghostwire-backup pages 1\n");
        hash.update(self.page_size.to_be_bytes());
        hash.update(self.page_count().to_be_bytes());
        for page in &self.hashes {
            hash.update(page);
        }
        hash.finalize().into()
    }

    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest())
    }

    /// The pages of `self` that differ from `base` (every page past its end included),
    /// or `None` when they cannot be compared (another page size or reserve).
    pub fn changed_since(&self, base: &PageList) -> Option<Vec<u32>> {
        if self.page_size != base.page_size || self.reserve != base.reserve {
            return None;
        }
        let changed = self
            .hashes
            .iter()
            .enumerate()
            .filter(|(n, hash)| base.hashes.get(*n) != Some(hash))
            .map(|(n, _)| n as u32 + 1)
            .collect();
        Some(changed)
    }

    /// The catalog's form: page size, reserve, then the hashes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(8 + self.hashes.len() * 16);
        bytes.extend_from_slice(&self.page_size.to_be_bytes());
        bytes.extend_from_slice(&self.reserve.to_be_bytes());
        for page in &self.hashes {
            bytes.extend_from_slice(page);
        }
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 8 || !(bytes.len() - 8).is_multiple_of(16) {
            return None;
        }
        Some(Self {
            page_size: u32::from_be_bytes(bytes[0..4].try_into().ok()?),
            reserve: u32::from_be_bytes(bytes[4..8].try_into().ok()?),
            hashes: bytes[8..]
                .chunks_exact(16)
                .map(|c| c.try_into().expect("16 bytes"))
                .collect(),
        })
    }
}

/// The hash of page `pgno`'s content: without its reserve bytes, and on page 1 without
/// [`PAGE1_BOOKKEEPING`].
pub fn page_hash(data: &[u8], pgno: u32, reserve: u32) -> PageHash {
    let content = &data[..data.len().saturating_sub(reserve as usize)];
    let mut hash = Sha256::new();
    if pgno == 1 && content.len() >= 100 {
        let mut masked = content.to_vec();
        for range in PAGE1_BOOKKEEPING {
            masked[range].fill(0);
        }
        hash.update(&masked);
    } else {
        hash.update(content);
    }
    hash.finalize()[..16].try_into().expect("16 bytes")
}

/// What a delta says of itself, before its pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaHeader {
    pub page_size: u32,
    /// Pages of the database after the delta: it shrinks or grows to this.
    pub page_count: u32,
    /// Pages the delta holds.
    pub pages: u32,
    /// The [`PageList::digest`] of the database the delta applies to, and of the result.
    pub base: [u8; 32],
    pub result: [u8; 32],
}

impl DeltaHeader {
    /// Bytes of the whole delta: header, then each page as its number and its content.
    pub fn bytes(&self) -> u64 {
        HEADER_LEN + u64::from(self.pages) * (4 + u64::from(self.page_size))
    }

    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(MAGIC)?;
        out.write_all(&self.page_size.to_be_bytes())?;
        out.write_all(&self.page_count.to_be_bytes())?;
        out.write_all(&self.pages.to_be_bytes())?;
        out.write_all(&self.base)?;
        out.write_all(&self.result)
    }

    /// Reads and checks a header from an archive entry of `entry_len` bytes.
    fn read(input: &mut impl Read, entry_len: u64) -> Result<Self> {
        let mut bytes = [0u8; HEADER_LEN as usize];
        input
            .read_exact(&mut bytes)
            .context("the database delta is shorter than its header")?;
        if &bytes[..8] != MAGIC {
            bail!("the database delta does not start with {MAGIC:?}: not a delta this agent wrote");
        }
        let number = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        let header = Self {
            page_size: number(8),
            page_count: number(12),
            pages: number(16),
            base: bytes[20..52].try_into().unwrap(),
            result: bytes[52..84].try_into().unwrap(),
        };
        if !(512..=65536).contains(&header.page_size) || !header.page_size.is_power_of_two() {
            bail!(
                "the database delta names a page size of {} bytes, which SQLite never uses",
                header.page_size
            );
        }
        if header.page_count == 0 || header.page_count > MAX_PAGES {
            bail!(
                "the database delta names {} pages, more than SQLite allows",
                header.page_count
            );
        }
        if header.pages > header.page_count || header.bytes() != entry_len {
            bail!(
                "the database delta is {entry_len} bytes but its header describes {} pages \
                 of {} bytes: damaged",
                header.pages,
                header.page_size
            );
        }
        Ok(header)
    }
}

/// A delta to archive: which pages of the database copy changed since the base.
#[derive(Clone)]
pub struct Delta {
    pub header: DeltaHeader,
    pub reserve: u32,
    pub changed: Vec<u32>,
}

impl Delta {
    /// The delta from the database `base` lists to the one `now` lists, or `None` when
    /// the two cannot be compared (another page size or reserve).
    pub fn between(base: &PageList, now: &PageList) -> Option<Self> {
        let mut changed = now.changed_since(base)?;
        // Never content, and SQLite refuses to write it: a restore leaves it out too.
        changed.retain(|&pgno| pgno != pending_byte_page(now.page_size));
        Some(Self {
            header: DeltaHeader {
                page_size: now.page_size,
                page_count: now.page_count(),
                pages: changed.len() as u32,
                base: base.digest(),
                result: now.digest(),
            },
            reserve: now.reserve,
            changed,
        })
    }
}

/// Reads a whole delta, header then pages, the pages from the database copy as it goes:
/// they are never written anywhere in plain text but into the encrypted archive.
pub struct DeltaReader {
    conn: Connection,
    changed: std::vec::IntoIter<u32>,
    page_size: usize,
    reserve: usize,
    buffer: Vec<u8>,
    position: usize,
}

impl DeltaReader {
    pub fn new(copy: &Path, key: &DbKey, delta: &Delta) -> Result<Self> {
        let mut buffer = Vec::with_capacity(HEADER_LEN as usize);
        delta.header.write(&mut buffer)?;
        let reader = Self {
            conn: open(copy, key, false)?,
            changed: delta.changed.clone().into_iter(),
            page_size: delta.header.page_size as usize,
            reserve: delta.reserve as usize,
            buffer,
            position: 0,
        };
        reader.conn.execute_batch("BEGIN")?; // one version of the copy throughout
        Ok(reader)
    }

    fn next_page(&mut self) -> Result<bool> {
        let Some(pgno) = self.changed.next() else {
            return Ok(false);
        };
        let data: Vec<u8> = self
            .conn
            .prepare_cached("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")?
            .query_row([pgno], |row| row.get(0))
            .with_context(|| format!("cannot read page {pgno} of the database copy"))?;
        if data.len() != self.page_size {
            bail!("page {pgno} of the database copy is {} bytes", data.len());
        }
        self.buffer.clear();
        self.position = 0;
        self.buffer.extend_from_slice(&pgno.to_be_bytes());
        self.buffer.extend_from_slice(&data);
        // The reserve holds the copy's IV and HMAC, meaningless anywhere else.
        let end = self.buffer.len();
        self.buffer[end - self.reserve..].fill(0);
        Ok(true)
    }
}

impl Read for DeltaReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.position == self.buffer.len() && !self.next_page().map_err(io::Error::other)? {
            return Ok(0);
        }
        let n = out.len().min(self.buffer.len() - self.position);
        out[..n].copy_from_slice(&self.buffer[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// Applies one delta (an archive entry of `entry_len` bytes) to the database `conn` holds
/// open, whose pages `list` describes; `expected_bytes` is the database's size after it,
/// from the snapshot that wrote the delta. All or nothing: one transaction, committed only
/// if the delta fits `list` (its base digest), every page is in range and in order, and
/// the result hashes to the delta's result digest. `list` then describes the result.
pub fn apply_delta(
    conn: &mut Connection,
    list: &mut PageList,
    delta: &mut impl Read,
    entry_len: u64,
    expected_bytes: u64,
    cancel: &Cancel,
) -> Result<()> {
    let header = DeltaHeader::read(delta, entry_len)?;
    header.check_applies_to(list, expected_bytes)?;
    let tx = conn.transaction()?;
    write_pages(&tx, list, &header, delta, cancel)?;
    if list.digest() != header.result {
        bail!("the database rebuilt with the delta does not hash to the delta's result: damaged");
    }
    tx.commit()?;
    Ok(())
}

impl DeltaHeader {
    fn check_applies_to(&self, list: &PageList, expected_bytes: u64) -> Result<()> {
        crate::raw_pages::check_delta_applies(
            (self.page_size, self.page_count, &self.base),
            (list.page_size, &list.digest()),
            expected_bytes,
        )
    }
}

/// Writes the delta's pages through `sqlite_dbpage` inside `tx`, hashing each into `list`,
/// then cuts the database to the delta's page count (it only checks that it grew to it).
fn write_pages(
    tx: &Transaction,
    list: &mut PageList,
    header: &DeltaHeader,
    delta: &mut impl Read,
    cancel: &Cancel,
) -> Result<()> {
    let mut write = tx.prepare("INSERT INTO sqlite_dbpage (pgno, data) VALUES (?1, ?2)")?;
    let lock_byte = LockBytePage::new(header.page_size, list.reserve);
    let mut order = PageOrder {
        old_count: list.page_count(),
        page_count: header.page_count,
        lock_byte: lock_byte.pgno,
        previous: 0,
    };
    let mut page = vec![0u8; header.page_size as usize];
    for n in 0..header.pages {
        if n.is_multiple_of(1024) {
            cancel.check()?;
        }
        let pgno = order.next(delta)?;
        delta.read_exact(&mut page)?;
        write.execute(params![pgno, page])?;
        let hash = page_hash(&page, pgno, list.reserve);
        lock_byte.grow_to(list, pgno);
        match list.hashes.get_mut(pgno as usize - 1) {
            Some(slot) => *slot = hash,
            None => list.hashes.push(hash),
        }
    }
    lock_byte.grow_to(list, header.page_count);
    end_at(&mut write, list, header.page_count)
}

/// Where each page of a delta may go: after the page before it, within the database's new
/// page count, never on the lock-byte page, and at most one page past the database's end.
struct PageOrder {
    /// Pages of the database before the delta.
    old_count: u32,
    /// Pages of the database after it.
    page_count: u32,
    lock_byte: u32,
    previous: u32,
}

impl PageOrder {
    /// Reads the next page's number from `delta` and checks that it may go there.
    fn next(&mut self, delta: &mut impl Read) -> Result<u32> {
        let mut number = [0u8; 4];
        delta.read_exact(&mut number)?;
        let pgno = u32::from_be_bytes(number);
        let previous = self.previous;
        if pgno <= previous || pgno > self.page_count || pgno == self.lock_byte {
            bail!(
                "the database delta names page {pgno} after page {previous}, in a database \
                 of {} pages: damaged or forged",
                self.page_count
            );
        }
        // SQLite grows a database one page at a time, at its end (past the lock-byte
        // page, which it never writes).
        let mut next = self.old_count.max(previous) + 1;
        if next == self.lock_byte {
            next += 1;
        }
        if pgno > next {
            bail!(
                "the database delta skips page {} of the database's new end",
                previous + 1
            );
        }
        self.previous = pgno;
        Ok(pgno)
    }
}

/// The lock-byte page ([`pending_byte_page`]) in a page list: no delta writes it, and
/// `sqlite_dbpage` reads it as zeros once the database reaches it.
struct LockBytePage {
    pgno: u32,
    hash: PageHash,
}

impl LockBytePage {
    fn new(page_size: u32, reserve: u32) -> Self {
        let pgno = pending_byte_page(page_size);
        let hash = page_hash(&vec![0u8; page_size as usize], pgno, reserve);
        Self { pgno, hash }
    }

    /// Adds the page's hash to `list` when the database, growing to `end` pages, passes it.
    fn grow_to(&self, list: &mut PageList, end: u32) {
        if list.page_count() + 1 == self.pgno && end >= self.pgno {
            list.hashes.push(self.hash);
        }
    }
}

/// Checks that the database grew to `page_count` pages; cuts it there if it was longer.
fn end_at(write: &mut Statement, list: &mut PageList, page_count: u32) -> Result<()> {
    if list.page_count() < page_count {
        bail!("the database delta does not hold the pages the database grew by");
    }
    if list.page_count() > page_count {
        // A NULL page truncates the database there (SQLite 3.48+).
        write.execute(params![page_count + 1, Option::<Vec<u8>>::None])?;
        list.hashes.truncate(page_count as usize);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "7f3c2a9be1d04c6f8a5b3e2d1c0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";

    fn key() -> DbKey {
        DbKey::from_hex(KEY).unwrap()
    }

    /// A SQLCipher database in WAL mode, as Signal keeps one, with `rows` messages.
    fn database(path: &Path, rows: u32) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(&key().pragma()).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT);",
        )
        .unwrap();
        add(&conn, 0, rows);
    }

    fn add(conn: &Connection, from: u32, rows: u32) {
        for n in from..from + rows {
            conn.execute(
                "INSERT INTO messages (id, body) VALUES (?1, ?2)",
                params![n, format!("message {n} {}", "x".repeat(200))],
            )
            .unwrap();
        }
    }

    fn list(path: &Path) -> PageList {
        PageList::read(&open(path, &key(), false).unwrap(), &Cancel::new()).unwrap()
    }

    fn delta_bytes(copy: &Path, base: &PageList) -> Vec<u8> {
        let delta = Delta::between(base, &list(copy)).unwrap();
        let mut bytes = Vec::new();
        DeltaReader::new(copy, &key(), &delta)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(bytes.len() as u64, delta.header.bytes());
        bytes
    }

    fn apply(db: &Path, delta: &[u8], expected_bytes: u64) -> Result<PageList> {
        let mut conn = open(db, &key(), true)?;
        let mut list = PageList::read(&conn, &Cancel::new())?;
        apply_delta(
            &mut conn,
            &mut list,
            &mut &delta[..],
            delta.len() as u64,
            expected_bytes,
            &Cancel::new(),
        )?;
        Ok(list)
    }

    fn rows(path: &Path) -> Vec<(i64, String)> {
        let conn = open(path, &key(), false).unwrap();
        let mut statement = conn
            .prepare("SELECT id, body FROM messages ORDER BY id")
            .unwrap();
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn size_of(list: &PageList) -> u64 {
        u64::from(list.page_count()) * u64::from(list.page_size)
    }

    #[test]
    fn pages_compare_decrypted_so_a_copy_of_an_unchanged_database_has_no_delta() {
        let dir = tempfile::tempdir().unwrap();
        let (live, copy) = (
            dir.path().join("live.sqlite"),
            dir.path().join("copy.sqlite"),
        );
        database(&live, 500);
        let before = list(&live);
        assert!(
            before.reserve > 0,
            "SQLCipher keeps its IV and HMAC in the reserve"
        );
        // The online backup API, as a backup copies: every page is encrypted again, with
        // new IVs, so the files differ and the pages do not.
        let source = open(&live, &key(), false).unwrap();
        let mut target = open_new(&copy);
        rusqlite::backup::Backup::new(&source, &mut target)
            .unwrap()
            .run_to_completion(1024, std::time::Duration::ZERO, None)
            .unwrap();
        drop(target);
        assert_ne!(std::fs::read(&live).unwrap(), std::fs::read(&copy).unwrap());
        assert_eq!(list(&copy).changed_since(&before), Some(vec![]));
    }

    fn open_new(path: &Path) -> Connection {
        let _ = std::fs::remove_file(path);
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(&key().pragma()).unwrap();
        conn
    }

    #[test]
    fn a_delta_rebuilds_the_newer_database_from_the_older_one_growing_and_shrinking() {
        let dir = tempfile::tempdir().unwrap();
        let (live, base) = (
            dir.path().join("live.sqlite"),
            dir.path().join("base.sqlite"),
        );
        database(&live, 2000);
        let checkpoint = |path: &Path| {
            open(path, &key(), true)
                .unwrap()
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
        };
        checkpoint(&live);
        std::fs::copy(&live, &base).unwrap();
        let base_list = list(&base);

        // Grow: a few new messages touch a few pages.
        add(
            &Connection::open(&live)
                .and_then(|c| c.execute_batch(&key().pragma()).map(|_| c))
                .unwrap(),
            2000,
            50,
        );
        let delta = delta_bytes(&live, &base_list);
        let grown = list(&live);
        assert!(
            delta.len() < (size_of(&grown) / 5) as usize,
            "{} bytes of delta for {} of database",
            delta.len(),
            size_of(&grown)
        );
        let rebuilt = apply(&base, &delta, size_of(&grown)).unwrap();
        assert_eq!(rebuilt, grown);
        assert_eq!(list(&base), grown);
        assert_eq!(rows(&base), rows(&live));

        // Shrink: delete most and vacuum; the delta truncates.
        let conn = open(&live, &key(), true).unwrap();
        conn.execute_batch("DELETE FROM messages WHERE id % 10 != 0; VACUUM;")
            .unwrap();
        drop(conn);
        let before = list(&base);
        let delta = delta_bytes(&live, &before);
        let shrunk = list(&live);
        assert!(shrunk.page_count() < before.page_count());
        apply(&base, &delta, size_of(&shrunk)).unwrap();
        assert_eq!(list(&base), shrunk);
        assert_eq!(rows(&base), rows(&live));
        let check = crate::sqlite::integrity_check(&base, Some(&key()), &Cancel::new()).unwrap();
        assert!(check.is_ok(), "{}", check.result);
    }

    #[test]
    fn a_database_growing_past_one_gib_leaves_the_lock_byte_page_out_of_its_delta() {
        let pending = pending_byte_page(4096);
        assert_eq!(u64::from(pending - 1) * 4096, 1 << 30);
        let list = |pages: u32| PageList {
            page_size: 4096,
            reserve: 80,
            hashes: (0..pages)
                .map(|n| page_hash(&vec![(n % 251) as u8; 4096], n + 1, 80))
                .collect(),
        };
        let delta = Delta::between(&list(pending - 2), &list(pending + 2)).unwrap();
        assert_eq!(delta.changed, vec![pending - 1, pending + 1, pending + 2]);
        assert_eq!(delta.header.page_count, pending + 2);
    }

    #[test]
    fn a_hostile_delta_is_refused_and_the_database_is_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (live, base) = (
            dir.path().join("live.sqlite"),
            dir.path().join("base.sqlite"),
        );
        database(&live, 1000);
        open(&live, &key(), true)
            .unwrap()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        std::fs::copy(&live, &base).unwrap();
        let base_list = list(&base);
        let conn = open(&live, &key(), true).unwrap();
        add(&conn, 1000, 40);
        drop(conn);
        let good = delta_bytes(&live, &base_list);
        let size = size_of(&list(&live));
        let original = std::fs::read(&base).unwrap();
        let page_size = base_list.page_size as usize;
        let first_page = HEADER_LEN as usize;

        let mut cases: Vec<(&str, Vec<u8>, u64)> = Vec::new();
        let mut far = good.clone();
        far[first_page..first_page + 4].copy_from_slice(&(1u32 << 31).to_be_bytes());
        cases.push(("page 2^31", far, size));
        let mut short = good.clone();
        short.truncate(good.len() - page_size / 2);
        cases.push(("a page of the wrong size", short, size));
        let mut other_base = good.clone();
        other_base[20] ^= 1;
        cases.push(("another base", other_base, size));
        let mut big_page = good.clone();
        big_page[8..12].copy_from_slice(&131072u32.to_be_bytes());
        cases.push(("page size 128 KiB", big_page, size));
        cases.push((
            "a size the snapshot does not record",
            good.clone(),
            size + 4096,
        ));
        let mut flipped = good.clone();
        let last = flipped.len() - 200;
        flipped[last] ^= 0xff;
        cases.push(("a changed page", flipped, size));
        let mut twice = good.clone();
        twice[first_page + 4 + page_size..first_page + 8 + page_size]
            .copy_from_slice(&good[first_page..first_page + 4]);
        cases.push(("a page named twice", twice, size));

        for (what, delta, expected) in cases {
            let err = apply(&base, &delta, expected).expect_err(what);
            eprintln!("{what}: {err:#}");
            assert_eq!(
                std::fs::read(&base).unwrap(),
                original,
                "{what} changed the database"
            );
            for companion in ["-wal", "-journal"] {
                let path = dir.path().join(format!("base.sqlite{companion}"));
                assert!(
                    std::fs::metadata(&path).map_or(true, |m| m.len() == 0),
                    "{what} left {companion} with content"
                );
            }
        }
        apply(&base, &good, size).unwrap();
        assert_eq!(rows(&base), rows(&live));
    }
}
