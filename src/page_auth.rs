//! Signal's database pages authenticated as SQLCipher authenticates them, without SQLCipher:
//! the restore gate's one read of the rebuilt file ([`crate::db_rebuild`]) hashes each raw
//! page for the signed digest and checks its HMAC in the same pass, on every core.
//!
//! SQLCipher 4 with Signal's settings (a raw 32-byte key, SQLCipher's defaults otherwise;
//! `../shared/SIGNAL.md`), as `sqlcipher_cipher_ctx_key_derive`, `sqlcipher_page_hmac`
//! and the `cipher_integrity_check` pragma in SQLCipher's `sqlcipher.c` do it:
//! - the HMAC key is PBKDF2-HMAC-SHA512 of the raw key, with the file's first 16 bytes
//!   (the salt) each XORed with 0x3a as salt, 2 iterations, 32 bytes;
//! - each page ends in an 80-byte reserve: a 16-byte IV, then the 64-byte HMAC-SHA512 of
//!   the page up to that HMAC (the encrypted content and the IV) followed by the page
//!   number as a little-endian u32; page 1's HMAC starts after the salt;
//! - the page at the pending byte (1 GiB) holds nothing and is skipped.
//!
//! This module only ever says yes for certain: a page that fails here may still be good
//! under other cipher settings, so a caller that gets a failure asks SQLCipher
//! (`cipher_integrity_check`), which stays the authority.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Result, bail};
use hmac::{Hmac, Mac};
use sha2::Sha512;
use zeroize::Zeroizing;

use crate::cancel::Cancel;
use crate::profile::DbKey;
use crate::raw_pages::{self, RawPageHash, RawPageList};
use crate::sha512x8;

/// The salt at the start of page 1 (SQLCipher's `FILE_HEADER_SZ`).
pub const SALT_LEN: usize = 16;
/// The HMAC-SHA512 at the end of every page.
const HMAC_LEN: usize = 64;
/// The IV before it.
const IV_LEN: usize = 16;
/// IV and HMAC at the end of every page (SQLCipher 4's default reserve, a whole number of
/// AES blocks).
const RESERVE_LEN: usize = IV_LEN + HMAC_LEN;
/// What the salt is XORed with to salt the HMAC key's derivation (`HMAC_SALT_MASK`).
const HMAC_SALT_MASK: u8 = 0x3a;
/// PBKDF2 iterations of the HMAC key's derivation (`FAST_PBKDF2_ITER`).
const HMAC_KEY_ITERATIONS: u32 = 2;

/// Page failures named in a result; the rest are counted.
const FAILURES_NAMED: usize = 20;

/// Checks pages' HMACs for one database: its key and salt, its page size.
#[derive(Clone)]
pub struct PageAuth {
    /// HMAC-SHA512 keyed with the derived HMAC key, cloned for each page (the keyed state
    /// is as secret as the key; the crate keeps it in memory, as SQLCipher keeps its keys).
    keyed: Hmac<Sha512>,
    /// The same key for eight pages at once, where the CPU can ([`sha512x8`]).
    lanes: Option<sha512x8::Keyed>,
    page_size: usize,
    /// SQLite's lock page, which SQLCipher's check skips.
    pending_byte_page: u32,
}

impl PageAuth {
    /// For the database whose first 16 bytes are `salt`, keyed with `key`; `None` for a page
    /// size that cannot hold SQLCipher's reserve past page 1's salt.
    pub fn new(key: &DbKey, salt: &[u8; SALT_LEN], page_size: u32) -> Option<Self> {
        if !raw_pages::PAGE_SIZES.contains(&page_size) {
            return None;
        }
        let hmac_salt: Vec<u8> = salt.iter().map(|b| b ^ HMAC_SALT_MASK).collect();
        let mut hmac_key = Zeroizing::new([0u8; 32]);
        pbkdf2::pbkdf2_hmac::<Sha512>(
            key.raw().as_slice(),
            &hmac_salt,
            HMAC_KEY_ITERATIONS,
            hmac_key.as_mut_slice(),
        );
        let keyed = Hmac::<Sha512>::new_from_slice(hmac_key.as_slice()).ok()?;
        let lanes = sha512x8::available().then(|| sha512x8::Keyed::new(hmac_key.as_slice()));
        Some(Self {
            keyed,
            lanes,
            page_size: page_size as usize,
            pending_byte_page: crate::pages::pending_byte_page(page_size),
        })
    }

    /// Whether page `pgno` (`page_size` bytes as stored) carries the HMAC this key makes
    /// for its content and number, compared in constant time.
    pub fn authenticates(&self, pgno: u32, page: &[u8]) -> bool {
        if pgno == self.pending_byte_page {
            return true;
        }
        if page.len() != self.page_size {
            return false;
        }
        let start = if pgno == 1 { SALT_LEN } else { 0 };
        let end = self.mac_offset();
        let mut mac = self.keyed.clone();
        mac.update(&page[start..end]);
        mac.update(&pgno.to_le_bytes());
        mac.verify_slice(&page[end..]).is_ok()
    }

    /// Where a page's HMAC starts: it covers the encrypted content and the IV before it.
    fn mac_offset(&self) -> usize {
        self.page_size - RESERVE_LEN + IV_LEN
    }

    /// [`PageAuth::authenticates`] for the eight pages of `group`, the first being page
    /// `first`, computed side by side; `None` where the CPU cannot, or for a group that is
    /// shorter or holds page 1 (its salt) or the lock page (checked one at a time).
    fn authenticates8(&self, first: u32, group: &[u8]) -> Option<[bool; sha512x8::LANES]> {
        let lanes = self.lanes.as_ref()?;
        let pgnos = first..first + sha512x8::LANES as u32;
        if group.len() != self.page_size * sha512x8::LANES
            || pgnos.contains(&1)
            || pgnos.contains(&self.pending_byte_page)
        {
            return None;
        }
        let end = self.mac_offset();
        let pages: Vec<&[u8]> = group.chunks_exact(self.page_size).collect();
        let macs = sha512x8::hmac8(
            lanes,
            std::array::from_fn(|n| &pages[n][..end]),
            std::array::from_fn(|n| (first + n as u32).to_le_bytes()),
        );
        // Compared without an early exit, as `verify_slice` does.
        Some(std::array::from_fn(|n| {
            macs[n]
                .iter()
                .zip(&pages[n][end..])
                .fold(0, |diff, (a, b)| diff | (a ^ b))
                == 0
        }))
    }
}

/// Pages that did not authenticate: a few of them by number, and how many in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failures {
    pub first: Vec<u32>,
    pub count: u64,
}

impl Failures {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn add(&mut self, pgno: u32) {
        if self.first.len() < FAILURES_NAMED {
            self.first.push(pgno);
        }
        self.count += 1;
    }

    pub fn merge(&mut self, other: Failures) {
        for pgno in other.first {
            if self.first.len() < FAILURES_NAMED {
                self.first.push(pgno);
            }
        }
        self.count += other.count;
    }

    /// "pages 3, 9 (2 in all)", for a log line.
    pub fn describe(&self) -> String {
        let named: Vec<String> = self.first.iter().map(u32::to_string).collect();
        format!("pages {} ({} in all)", named.join(", "), self.count)
    }
}

/// One read of a raw database file: every page's hash, and which pages do not
/// authenticate with the key.
#[derive(Debug, Clone)]
pub struct Pass {
    pub list: RawPageList,
    /// The file's first 16 bytes, which keyed the check.
    pub salt: Option<[u8; SALT_LEN]>,
    pub failed: Failures,
}

/// Reads the database file `file` once, `page_size` bytes a page, on every core: hashes
/// each raw page (the list the signed digest is over) and checks its HMAC with `key`. A
/// file that is not a whole number of pages is refused. Every page fails when the page
/// size cannot be SQLCipher's.
pub fn hash_and_authenticate(
    file: &File,
    page_size: u32,
    key: &DbKey,
    cancel: &Cancel,
) -> Result<Pass> {
    let (pages, salt, auth) = keyed_for(file, page_size, key)?;
    let mut list = RawPageList::new(page_size);
    list.hashes = vec![RawPageHash::default(); pages as usize];
    let run = Run {
        file,
        page_size,
        auth: auth.as_ref(),
        cancel,
    };
    let failed = run.check(0, &mut list.hashes, raw_pages::CHUNKS_BYTES, true)?;
    Ok(Pass { list, salt, failed })
}

/// Which pages of the database file `file` (`page_size` bytes a page) do not authenticate
/// with `key`: [`hash_and_authenticate`] without the hashes, for a check of a whole copy
/// that needs no page list, a window of pages at a time.
pub fn authenticate_file(
    file: &File,
    page_size: u32,
    key: &DbKey,
    cancel: &Cancel,
) -> Result<Failures> {
    /// Pages per window: the threads share out a window's chunks; its (unfilled) page
    /// list costs 16 bytes a page.
    const WINDOW: u32 = 1 << 12;
    /// Bytes of pages read at a time by all threads together: beside the archive and the
    /// upload, as little as SQLCipher's own check held (its page cache).
    const BUFFERS: usize = 1 << 20;
    let (pages, _, auth) = keyed_for(file, page_size, key)?;
    let run = Run {
        file,
        page_size,
        auth: auth.as_ref(),
        cancel,
    };
    let mut unused = vec![RawPageHash::default(); WINDOW.min(pages) as usize];
    let mut failed = Failures::default();
    for base in (0..pages).step_by(WINDOW as usize) {
        let window = &mut unused[..WINDOW.min(pages - base) as usize];
        failed.merge(run.check(base, window, BUFFERS, false)?);
    }
    failed.first.sort_unstable();
    Ok(failed)
}

/// One read of a database file's pages, checked with `auth`.
struct Run<'a> {
    file: &'a File,
    page_size: u32,
    auth: Option<&'a PageAuth>,
    cancel: &'a Cancel,
}

impl Run<'_> {
    /// Reads and checks the pages `hashes` stands for, from page `base + 1`, on every core
    /// within `budget` bytes of buffers; fills `hashes` with their raw hashes if `hash`.
    fn check(
        &self,
        base: u32,
        hashes: &mut [RawPageHash],
        budget: usize,
        hash: bool,
    ) -> Result<Failures> {
        let size = self.page_size as usize;
        let failed = Mutex::new(Failures::default());
        raw_pages::for_each_chunk(
            budget,
            hashes,
            self.page_size,
            self.cancel,
            |first, buffer, hashes| {
                let first = base + first;
                let at = u64::from(first) * u64::from(self.page_size);
                self.file.read_exact_at(buffer, at)?;
                let found = match hash {
                    true => check_pages(buffer, size, first, self.auth, hashes),
                    false => authenticate_pages(buffer, size, first, self.auth),
                };
                failed
                    .lock()
                    .expect("no thread panics holding it")
                    .merge(found);
                Ok(())
            },
        )?;
        let mut failed = failed.into_inner().expect("no thread panicked holding it");
        failed.first.sort_unstable();
        Ok(failed)
    }
}

/// The pages of a database file, its salt, and the check keyed for it (none if the page
/// size cannot be SQLCipher's or the file has no salt). Fails for a file that is not a
/// whole number of pages.
fn keyed_for(
    file: &File,
    page_size: u32,
    key: &DbKey,
) -> Result<(u32, Option<[u8; SALT_LEN]>, Option<PageAuth>)> {
    let len = file.metadata()?.len();
    if !raw_pages::PAGE_SIZES.contains(&page_size) || !len.is_multiple_of(u64::from(page_size)) {
        bail!(
            "Signal's database copy is {len} bytes, not a whole number of {page_size}-byte \
             pages: damaged"
        );
    }
    let salt = read_salt(file, len)?;
    let auth = salt.and_then(|salt| PageAuth::new(key, &salt, page_size));
    Ok(((len / u64::from(page_size)) as u32, salt, auth))
}

/// The first 16 bytes of a file of `len` bytes, if it has them.
fn read_salt(file: &File, len: u64) -> Result<Option<[u8; SALT_LEN]>> {
    if len < SALT_LEN as u64 {
        return Ok(None);
    }
    let mut salt = [0u8; SALT_LEN];
    file.read_exact_at(&mut salt, 0)?;
    Ok(Some(salt))
}

/// Hashes and checks the whole pages of `chunk`, the first being page `index + 1`.
/// Each page's hash goes to the same place of `hashes`; returns the pages that fail.
fn check_pages(
    chunk: &[u8],
    page_size: usize,
    index: u32,
    auth: Option<&PageAuth>,
    hashes: &mut [RawPageHash],
) -> Failures {
    for (page, slot) in chunk.chunks_exact(page_size).zip(hashes.iter_mut()) {
        *slot = raw_pages::raw_page_hash(page);
    }
    authenticate_pages(chunk, page_size, index, auth)
}

/// The whole pages of `chunk` (the first being page `index + 1`) that do not authenticate
/// with `auth` (all of them without it), eight at a time where the CPU can.
fn authenticate_pages(
    chunk: &[u8],
    page_size: usize,
    index: u32,
    auth: Option<&PageAuth>,
) -> Failures {
    let mut failed = Failures::default();
    for (g, group) in chunk.chunks(page_size * sha512x8::LANES).enumerate() {
        let first = index + (g * sha512x8::LANES) as u32 + 1;
        let verdicts = auth.and_then(|auth| auth.authenticates8(first, group));
        for (n, page) in group.chunks_exact(page_size).enumerate() {
            let pgno = first + n as u32;
            let passed = match verdicts {
                Some(verdicts) => verdicts[n],
                None => auth.is_some_and(|auth| auth.authenticates(pgno, page)),
            };
            if !passed {
                failed.add(pgno);
            }
        }
    }
    failed
}

/// Reads again the pages `pgnos` of `file` (those a delta wrote): each must hash as `list`
/// says (or this fails), and the ones whose HMAC with `key` does not verify are returned.
/// Keyed with `salt`, the salt the first pass used: if the file's salt changed since,
/// every page named fails.
pub fn recheck_pages(
    file: &File,
    list: &RawPageList,
    pgnos: &[u32],
    salt: Option<[u8; SALT_LEN]>,
    key: &DbKey,
    cancel: &Cancel,
) -> Result<Failures> {
    let now = read_salt(file, file.metadata()?.len())?;
    let auth = salt
        .filter(|salt| now == Some(*salt))
        .and_then(|salt| PageAuth::new(key, &salt, list.page_size));
    let mut page = vec![0u8; list.page_size as usize];
    let mut failed = Failures::default();
    for (n, &pgno) in pgnos.iter().enumerate() {
        if n.is_multiple_of(1024) {
            cancel.check()?;
        }
        let Some(hash) = list.hashes.get(pgno as usize - 1) else {
            continue;
        };
        file.read_exact_at(&mut page, u64::from(pgno - 1) * u64::from(list.page_size))?;
        if raw_pages::raw_page_hash(&page) != *hash {
            bail!(
                "page {pgno} of Signal's rebuilt database does not read back as it was \
                 written: the disk under the restore is failing, or something else writes \
                 to the file"
            );
        }
        if !auth.as_ref().is_some_and(|a| a.authenticates(pgno, &page)) {
            failed.add(pgno);
        }
    }
    Ok(failed)
}

/// Bytes a [`StreamPass`] hands a worker at a time.
const STREAM_CHUNK: usize = 1 << 20;
/// Chunks in flight to the workers: the writer waits beyond that, so the pass keeps in
/// step with it in a few MiB.
const STREAM_CHUNKS_QUEUED: usize = 4;

/// Hashes and checked pages of one chunk: its first page index, its hashes, its failures.
type Piece = (u32, Vec<RawPageHash>, Failures);

/// [`hash_and_authenticate`] fed with the file's bytes as they are written (the unpack of
/// Signal's database), on worker threads beside the writer: the gate then reads nothing
/// again. The key is the one known when the file began; the gate uses the result only if
/// the restored key is the same.
pub struct StreamPass {
    key: DbKey,
    page_size: usize,
    pending: Vec<u8>,
    /// Page index of `pending`'s first byte.
    next_index: u32,
    salt: Option<[u8; SALT_LEN]>,
    sender: Option<SyncSender<(u32, Vec<u8>)>>,
    /// Chunk buffers the workers are done with, to fill again.
    returned: Option<Receiver<Vec<u8>>>,
    workers: Vec<JoinHandle<Vec<Piece>>>,
}

impl StreamPass {
    /// A pass over a file of `page_size`-byte pages, checked with `key`.
    pub fn new(key: &DbKey, page_size: u32) -> Self {
        Self {
            key: key.clone(),
            page_size: page_size as usize,
            pending: Vec::with_capacity(STREAM_CHUNK),
            next_index: 0,
            salt: None,
            sender: None,
            returned: None,
            workers: Vec::new(),
        }
    }

    /// The key the pass checks with.
    pub fn key(&self) -> &DbKey {
        &self.key
    }

    /// The next bytes of the file.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let take = data.len().min(STREAM_CHUNK - self.pending.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == STREAM_CHUNK {
                self.send()?;
            }
        }
        Ok(())
    }

    /// Hands the pending whole pages to the workers, started with the first chunk (whose
    /// first 16 bytes are the salt that keys the check).
    fn send(&mut self) -> Result<()> {
        if self.sender.is_none() {
            self.start_workers();
        }
        let whole = self.pending.len() / self.page_size * self.page_size;
        let mut next = (self.returned.as_ref())
            .and_then(|returned| returned.try_recv().ok())
            .unwrap_or_else(|| Vec::with_capacity(STREAM_CHUNK));
        next.clear();
        next.extend_from_slice(&self.pending[whole..]);
        self.pending.truncate(whole);
        let chunk = std::mem::replace(&mut self.pending, next);
        let pages = (chunk.len() / self.page_size) as u32;
        let sender = self.sender.as_ref().expect("started above");
        if sender.send((self.next_index, chunk)).is_err() {
            bail!("the page check beside the unpack stopped");
        }
        self.next_index += pages;
        Ok(())
    }

    fn start_workers(&mut self) {
        self.salt = self.pending.get(..SALT_LEN).map(|s| s.try_into().unwrap());
        let auth = self
            .salt
            .and_then(|salt| PageAuth::new(&self.key, &salt, self.page_size as u32));
        let (sender, receiver) = std::sync::mpsc::sync_channel(STREAM_CHUNKS_QUEUED);
        let receiver = Arc::new(Mutex::new(receiver));
        let (give_back, returned) = std::sync::mpsc::channel();
        let threads = crate::priority::default_threads().clamp(1, 8);
        self.workers = (0..threads)
            .map(|_| {
                let (receiver, auth, size) = (receiver.clone(), auth.clone(), self.page_size);
                let give_back = give_back.clone();
                std::thread::spawn(move || check_chunks(&receiver, &give_back, auth.as_ref(), size))
            })
            .collect();
        self.sender = Some(sender);
        self.returned = Some(returned);
    }

    /// What the pass found once the file ended; an error if it is not a whole number of
    /// pages (the gate then reads the file, and says so).
    pub fn finish(mut self) -> Result<Pass> {
        if !self.pending.len().is_multiple_of(self.page_size) {
            bail!("Signal's database copy is not a whole number of pages");
        }
        if !self.pending.is_empty() {
            self.send()?;
        }
        self.sender = None;
        let mut pieces = Vec::new();
        for worker in std::mem::take(&mut self.workers) {
            let done = worker.join();
            pieces.extend(done.map_err(|_| anyhow::anyhow!("a page check panicked"))?);
        }
        pieces.sort_by_key(|(index, _, _)| *index);
        let mut list = RawPageList::new(self.page_size as u32);
        let mut failed = Failures::default();
        for (index, hashes, failures) in pieces {
            if index != list.page_count() {
                bail!("the page check beside the unpack lost a chunk");
            }
            list.hashes.extend(hashes);
            failed.merge(failures);
        }
        Ok(Pass {
            list,
            salt: self.salt,
            failed,
        })
    }
}

impl Drop for StreamPass {
    fn drop(&mut self) {
        self.sender = None; // the workers finish what is queued, then end
        for worker in std::mem::take(&mut self.workers) {
            let _ = worker.join();
        }
    }
}

/// A worker: hashes and checks chunks until the writer is done, giving each buffer back.
fn check_chunks(
    receiver: &Mutex<Receiver<(u32, Vec<u8>)>>,
    give_back: &std::sync::mpsc::Sender<Vec<u8>>,
    auth: Option<&PageAuth>,
    page_size: usize,
) -> Vec<Piece> {
    let mut pieces = Vec::new();
    loop {
        let next = receiver
            .lock()
            .map_err(|_| ())
            .and_then(|r| r.recv().map_err(|_| ()));
        let Ok((index, chunk)) = next else {
            return pieces;
        };
        let mut hashes = vec![RawPageHash::default(); chunk.len() / page_size];
        let failed = check_pages(&chunk, page_size, index, auth, &mut hashes);
        pieces.push((index, hashes, failed));
        let _ = give_back.send(chunk); // gone once the writer finished: dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database SQLCipher wrote with a raw key, 4096-byte pages, about 2.5 MiB.
    fn sqlcipher_database(dir: &std::path::Path, key: &DbKey) -> std::path::PathBuf {
        let path = dir.join("db.sqlite");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&key.pragma()).unwrap();
        conn.execute_batch(
            "CREATE TABLE t(x);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600)
             INSERT INTO t SELECT randomblob(3900) FROM n;",
        )
        .unwrap();
        drop(conn);
        path
    }

    #[test]
    fn pages_checked_eight_at_once_fail_exactly_where_one_at_a_time_does() {
        let dir = tempfile::tempdir().unwrap();
        let key = DbKey::from_hex(&"5a".repeat(32)).unwrap();
        let mut bytes = std::fs::read(sqlcipher_database(dir.path(), &key)).unwrap();
        let pages = (bytes.len() / 4096) as u32;
        // In the first group (page 1's, one at a time), in groups of eight, and the last.
        let damaged = vec![4, 13, 100, 101, pages];
        for pgno in &damaged {
            bytes[(*pgno as usize - 1) * 4096 + 200] ^= 1;
        }
        let salt: [u8; SALT_LEN] = bytes[..SALT_LEN].try_into().unwrap();
        let auth = PageAuth::new(&key, &salt, 4096).unwrap();
        assert_eq!(auth.lanes.is_some(), sha512x8::available());
        let one_at_a_time = PageAuth {
            lanes: None,
            ..auth.clone()
        };
        let mut hashes = vec![RawPageHash::default(); pages as usize];
        let found = check_pages(&bytes, 4096, 0, Some(&auth), &mut hashes);
        let mut again = vec![RawPageHash::default(); pages as usize];
        let expected = check_pages(&bytes, 4096, 0, Some(&one_at_a_time), &mut again);
        assert_eq!(found.first, damaged);
        assert_eq!(found, expected);
        assert!(hashes == again, "the page hashes differ");
    }

    /// Fed in pieces of any size, as the unpack writes, the pass beside it finds what one
    /// read of the file finds.
    #[test]
    fn the_stream_pass_equals_the_pass_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = DbKey::from_hex(&"3c".repeat(32)).unwrap();
        let path = sqlcipher_database(dir.path(), &key);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3 * 4096 + 77] ^= 1; // page 4 damaged
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let read = hash_and_authenticate(&file, 4096, &key, &Cancel::new()).unwrap();
        assert_eq!(read.failed.first, vec![4]);
        assert_eq!(read.list.bytes(), bytes.len() as u64);
        for piece in [1, 4095, 65536, 1 << 20, 3 << 20] {
            let mut stream = StreamPass::new(&key, 4096);
            for part in bytes.chunks(piece) {
                stream.write(part).unwrap();
            }
            let streamed = stream.finish().unwrap();
            assert_eq!(streamed.list, read.list, "pieces of {piece}");
            assert_eq!(streamed.failed, read.failed, "pieces of {piece}");
            assert_eq!(streamed.salt, read.salt, "pieces of {piece}");
        }
    }
}
