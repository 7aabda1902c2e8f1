//! Signal's database as raw pages: the bytes of each page as SQLCipher wrote them, still
//! encrypted, hashed and copied without the key (format 3, docs/format.md "Database
//! deltas").
//!
//! A checkpoint copies WAL frames into `db.sqlite` as they are, so a page's raw bytes
//! change only when a transaction rewrote it (SIGNAL.md, "Raw (still encrypted) page
//! bytes"), and an encrypted page is valid at its own page number under the same key and
//! salt. So a [`RawPageList`] compares two versions of the database without decrypting
//! either, and a [`RawDelta`] rebuilds the newer one from the older by writing pages at
//! their offsets. The key is only needed to check the result (`cipher_integrity_check`
//! verifies every page's HMAC).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::cancel::Cancel;

/// A raw page's hash: the first 16 bytes of SHA-256 over the whole page as stored.
pub type RawPageHash = [u8; 16];

/// Smallest and largest page size SQLite uses.
pub const PAGE_SIZES: std::ops::RangeInclusive<u32> = 512..=65536;

/// The hash of every raw page of one database version, in page order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPageList {
    pub page_size: u32,
    pub hashes: Vec<RawPageHash>,
}

/// The hash of one raw page.
pub fn raw_page_hash(page: &[u8]) -> RawPageHash {
    Sha256::digest(page)[..16].try_into().expect("16 bytes")
}

/// Hashes each `page_size`-byte page of `chunk` into the same place of `hashes`.
pub fn hash_pages(chunk: &[u8], page_size: usize, hashes: &mut [RawPageHash]) {
    debug_assert_eq!(chunk.len(), hashes.len() * page_size);
    for (page, slot) in chunk.chunks_exact(page_size).zip(hashes) {
        *slot = raw_page_hash(page);
    }
}

/// Most threads that read and hash pages at once. SHA-256 (SHA-NI) hashes about 1.5 GiB/s
/// on one core, about as fast as the page cache is read: past a few threads, more only
/// adds buffers.
const MAX_PAGE_THREADS: usize = 4;

/// Bytes of pages read and hashed at a time by all threads together: each thread's buffer
/// is its share, so memory stays the same whatever the number of cores.
pub const CHUNKS_BYTES: usize = 4 << 20;

/// Threads that read and hash the pages of a whole database: the cores this process may
/// use (a cgroup CPU limit shows here), at most [`MAX_PAGE_THREADS`].
pub fn page_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_PAGE_THREADS)
}

/// Runs `work` over every page of a database of `hashes.len()` pages of `page_size` bytes,
/// a chunk of consecutive pages at a time, on [`page_threads`] threads: the hashing of a
/// whole database is most of the time a raw image or a page list takes, and its pages hash
/// independently. `work(first, buffer, hashes)` gets the index of the chunk's first page
/// (page number − 1), a buffer of the chunk's size to read it into, and the chunk's slice
/// of `hashes` to fill, in page order. The buffers total `budget` bytes ([`CHUNKS_BYTES`],
/// or less for a pass that runs beside others: a backup's check of its copy, beside the
/// archive and upload). Chunks are handed out in order; after an error or a cancel no
/// thread takes another, and that error is returned.
pub fn for_each_chunk<F>(
    budget: usize,
    hashes: &mut [RawPageHash],
    page_size: u32,
    cancel: &Cancel,
    work: F,
) -> Result<()>
where
    F: Fn(u32, &mut [u8], &mut [RawPageHash]) -> Result<()> + Sync,
{
    for_each_chunk_on(page_threads(), budget, hashes, page_size, cancel, work)
}

fn for_each_chunk_on<F>(
    threads: usize,
    budget: usize,
    hashes: &mut [RawPageHash],
    page_size: u32,
    cancel: &Cancel,
    work: F,
) -> Result<()>
where
    F: Fn(u32, &mut [u8], &mut [RawPageHash]) -> Result<()> + Sync,
{
    let size = page_size as usize;
    let per_chunk = (budget / threads / size).max(1);
    let chunks = hashes.len().div_ceil(per_chunk);
    let threads = threads.clamp(1, chunks.max(1));
    let buffer_pages = per_chunk.min(hashes.len());
    let queue = Mutex::new(hashes.chunks_mut(per_chunk).enumerate());
    let stop = AtomicBool::new(false);
    let worker = || -> Result<()> {
        let mut buffer = vec![0u8; buffer_pages * size];
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let next = queue.lock().expect("no thread panics holding it").next();
            let Some((n, slice)) = next else {
                return Ok(());
            };
            let done = cancel.check().map_err(anyhow::Error::from).and_then(|()| {
                let first = u32::try_from(n * per_chunk).context("more pages than SQLite has")?;
                work(first, &mut buffer[..slice.len() * size], slice)
            });
            if done.is_err() {
                stop.store(true, Ordering::Relaxed);
                return done;
            }
        }
    };
    if threads == 1 {
        return worker();
    }
    std::thread::scope(|scope| {
        let running: Vec<_> = (0..threads).map(|_| scope.spawn(worker)).collect();
        let mut result = Ok(());
        for thread in running {
            let done = thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            if result.is_ok() {
                result = done;
            }
        }
        result
    })
}

impl RawPageList {
    pub fn new(page_size: u32) -> Self {
        Self {
            page_size,
            hashes: Vec::new(),
        }
    }

    pub fn page_count(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// Bytes of the database file this list describes.
    pub fn bytes(&self) -> u64 {
        u64::from(self.page_count()) * u64::from(self.page_size)
    }

    /// SHA-256 over `"ghostwire-backup raw pages 3\n"`, the page size, the page count
    /// (u32, big-endian) and every page's hash: what index entries and raw deltas name a
    /// database version by. Another domain than the decrypted lists' digest, so the two
    /// never match by accident.
    pub fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(b"ghostwire-backup raw pages 3\n");
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

    /// Hashes every page of the file `file` (a raw full copy, unpacked), `page_size` bytes
    /// each; a file that is not a whole number of pages is refused.
    pub fn of_file(file: &File, page_size: u32, cancel: &Cancel) -> Result<Self> {
        let len = file.metadata()?.len();
        if !PAGE_SIZES.contains(&page_size) || !len.is_multiple_of(u64::from(page_size)) {
            bail!(
                "Signal's database copy is {len} bytes, not a whole number of {page_size}-byte \
                 pages: damaged"
            );
        }
        let pages = usize::try_from(len / u64::from(page_size))?;
        let mut hashes = vec![RawPageHash::default(); pages];
        for_each_chunk(
            CHUNKS_BYTES,
            &mut hashes,
            page_size,
            cancel,
            |first, chunk, hashes| {
                file.read_exact_at(chunk, u64::from(first) * u64::from(page_size))?;
                hash_pages(chunk, page_size as usize, hashes);
                Ok(())
            },
        )?;
        Ok(Self { page_size, hashes })
    }

    /// Pages of `self` whose raw bytes differ from `base`'s (every page past its end
    /// included), or `None` when the page sizes differ.
    pub fn changed_since(&self, base: &RawPageList) -> Option<Vec<u32>> {
        if self.page_size != base.page_size {
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
}

/// The pages that turn one raw database version into the next: the page size, the page
/// count after it (the file is cut or grown to it), and each changed page's number and
/// raw bytes, ascending. Streamed, never held whole: see docs/format.md for its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDeltaHeader {
    pub page_size: u32,
    pub page_count: u32,
    /// Pages the delta holds.
    pub pages: u32,
    /// [`RawPageList::digest`] of the version it applies to, and of the result.
    pub base: [u8; 32],
    pub result: [u8; 32],
}

/// The first bytes of a raw delta.
pub const RAW_DELTA_MAGIC: &[u8; 8] = b"GWBRAWD3";

/// Magic, page size, page count, pages in the delta, base and result digests.
pub const RAW_DELTA_HEADER_LEN: u64 = 8 + 4 + 4 + 4 + 32 + 32;

impl RawDeltaHeader {
    /// Bytes of the whole delta: header, then each page as its number and its bytes.
    pub fn bytes(&self) -> u64 {
        RAW_DELTA_HEADER_LEN + u64::from(self.pages) * (4 + u64::from(self.page_size))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RAW_DELTA_HEADER_LEN as usize);
        out.extend_from_slice(RAW_DELTA_MAGIC);
        out.extend_from_slice(&self.page_size.to_be_bytes());
        out.extend_from_slice(&self.page_count.to_be_bytes());
        out.extend_from_slice(&self.pages.to_be_bytes());
        out.extend_from_slice(&self.base);
        out.extend_from_slice(&self.result);
        out
    }
}

impl RawDeltaHeader {
    /// Reads and checks a header from an archive entry of `entry_len` bytes: page size a
    /// power of two SQLite uses, page count possible, length exactly as it says.
    pub fn read(input: &mut impl Read, entry_len: u64) -> Result<Self> {
        let mut bytes = [0u8; RAW_DELTA_HEADER_LEN as usize];
        input
            .read_exact(&mut bytes)
            .context("the database delta is shorter than its header")?;
        if &bytes[..8] != RAW_DELTA_MAGIC {
            bail!(
                "the database delta does not start with {RAW_DELTA_MAGIC:?}: not a raw delta \
                 this agent wrote"
            );
        }
        let number = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        let header = Self {
            page_size: number(8),
            page_count: number(12),
            pages: number(16),
            base: bytes[20..52].try_into().unwrap(),
            result: bytes[52..84].try_into().unwrap(),
        };
        if !PAGE_SIZES.contains(&header.page_size) || !header.page_size.is_power_of_two() {
            bail!(
                "the database delta names a page size of {} bytes, which SQLite never uses",
                header.page_size
            );
        }
        if header.page_count == 0 || header.page_count == u32::MAX {
            bail!(
                "the database delta names {} pages, which SQLite never has",
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

/// A raw delta to archive: the header and which pages of the image changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDelta {
    pub header: RawDeltaHeader,
    pub changed: Vec<u32>,
}

impl RawDelta {
    /// The delta from `base` to `now`, or `None` when the page sizes differ.
    pub fn between(base: &RawPageList, now: &RawPageList) -> Option<Self> {
        let changed = now.changed_since(base)?;
        Some(Self {
            header: RawDeltaHeader {
                page_size: now.page_size,
                page_count: now.page_count(),
                pages: changed.len() as u32,
                base: base.digest(),
                result: now.digest(),
            },
            changed,
        })
    }
}

/// Reads a whole raw delta, header then pages, the pages from the raw image `image` as it
/// goes (still encrypted: nothing is decrypted).
pub struct RawDeltaReader {
    image: File,
    changed: std::vec::IntoIter<u32>,
    page_size: usize,
    buffer: Vec<u8>,
    position: usize,
}

impl RawDeltaReader {
    pub fn new(image: &std::path::Path, delta: &RawDelta) -> Result<Self> {
        let image = File::open(image)
            .with_context(|| format!("cannot open the database image {}", image.display()))?;
        Ok(Self {
            image,
            changed: delta.changed.clone().into_iter(),
            page_size: delta.header.page_size as usize,
            buffer: delta.header.to_bytes(),
            position: 0,
        })
    }

    fn next_page(&mut self) -> io::Result<bool> {
        let Some(pgno) = self.changed.next() else {
            return Ok(false);
        };
        self.buffer.clear();
        self.buffer.extend_from_slice(&pgno.to_be_bytes());
        self.buffer.resize(4 + self.page_size, 0);
        let offset = u64::from(pgno - 1) * self.page_size as u64;
        self.image.read_exact_at(&mut self.buffer[4..], offset)?;
        self.position = 0;
        Ok(true)
    }
}

impl Read for RawDeltaReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.position == self.buffer.len() && !self.next_page()? {
            return Ok(0);
        }
        let n = out.len().min(self.buffer.len() - self.position);
        out[..n].copy_from_slice(&self.buffer[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// Applies one raw delta (an archive entry of `entry_len` bytes) to the database file `db`
/// (a copy we unpacked, never the user's live file), whose raw pages `list` describes:
/// each page is written at `(pgno - 1) × page_size`, then the file is cut or grown to the
/// delta's page count. `expected_bytes` is the database's size after it, from the snapshot
/// that wrote the delta. The delta is refused before anything is written unless its header
/// is sound and its base is `list`; a page out of order or past the end stops it, and the
/// result must hash to the delta's result digest: a caller that gets an error throws the
/// file away. `list` then describes the result.
pub fn apply_raw_delta(
    db: &File,
    list: &mut RawPageList,
    delta: &mut impl Read,
    entry_len: u64,
    expected_bytes: u64,
    cancel: &Cancel,
) -> Result<()> {
    let header = RawDeltaHeader::read(delta, entry_len)?;
    header.check_applies_to(list, expected_bytes)?;
    // The pages a database grows by are pushed one by one: room for exactly them, not a
    // doubled list (16 bytes a page: 8 MiB more at 2 GiB).
    let growth = header.page_count.saturating_sub(list.page_count());
    list.hashes.reserve_exact(growth as usize);
    write_raw_pages(db, list, &header, delta, cancel)?;
    if list.page_count() < header.page_count {
        bail!("the database delta does not hold the pages the database grew by");
    }
    list.hashes.truncate(header.page_count as usize);
    db.set_len(expected_bytes)?;
    if list.digest() != header.result {
        bail!("the database rebuilt with the delta does not hash to the delta's result: damaged");
    }
    Ok(())
}

impl RawDeltaHeader {
    fn check_applies_to(&self, list: &RawPageList, expected_bytes: u64) -> Result<()> {
        check_delta_applies(
            (self.page_size, self.page_count, &self.base),
            (list.page_size, &list.digest()),
            expected_bytes,
        )
    }
}

/// Refuses a delta (its page size, page count and base digest) that is not the next one
/// for the database whose page size and digest are `database`: other pages, another base,
/// or a result of another size than its snapshot recorded (`expected_bytes`). The same
/// rule for raw deltas and the decrypted ones of formats 1 and 2 ([`crate::pages`]).
pub fn check_delta_applies(
    (page_size, page_count, base): (u32, u32, &[u8; 32]),
    (database_page_size, database_digest): (u32, &[u8; 32]),
    expected_bytes: u64,
) -> Result<()> {
    if page_size != database_page_size {
        bail!(
            "the database delta has pages of {page_size} bytes but the database it applies to \
             has {database_page_size}: it belongs to another database"
        );
    }
    if base != database_digest {
        bail!(
            "the database delta does not apply to the database rebuilt so far (its base \
             digest differs): it belongs to another chain, or an archive was swapped"
        );
    }
    if u64::from(page_count) * u64::from(page_size) != expected_bytes {
        bail!(
            "the database delta makes a database of {page_count} pages of {page_size} bytes, but \
             its snapshot records {expected_bytes} bytes"
        );
    }
    Ok(())
}

/// Writes each page of the delta at its place in `db` and its hash into `list`; a page
/// out of order, or past the end it grows from or to, stops it.
fn write_raw_pages(
    db: &File,
    list: &mut RawPageList,
    header: &RawDeltaHeader,
    delta: &mut impl Read,
    cancel: &Cancel,
) -> Result<()> {
    let mut page = vec![0u8; header.page_size as usize];
    let mut previous = 0u32;
    for n in 0..header.pages {
        if n.is_multiple_of(1024) {
            cancel.check()?;
        }
        let mut number = [0u8; 4];
        delta.read_exact(&mut number)?;
        let pgno = u32::from_be_bytes(number);
        if pgno <= previous || pgno > header.page_count || pgno > list.page_count() + 1 {
            bail!(
                "the database delta names page {pgno} after page {previous}, in a database \
                 of {} pages growing to {}: damaged or forged",
                list.page_count(),
                header.page_count
            );
        }
        delta.read_exact(&mut page)?;
        db.write_all_at(&page, u64::from(pgno - 1) * u64::from(header.page_size))?;
        let hash = raw_page_hash(&page);
        match list.hashes.get_mut(pgno as usize - 1) {
            Some(slot) => *slot = hash,
            None => list.hashes.push(hash),
        }
        previous = pgno;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pages: &[u8]) -> RawPageList {
        RawPageList {
            page_size: 4096,
            hashes: pages.iter().map(|&b| raw_page_hash(&[b; 4096])).collect(),
        }
    }

    #[test]
    fn a_delta_names_the_pages_that_differ_and_every_page_past_the_old_end() {
        let delta = RawDelta::between(&list(&[1, 2, 3]), &list(&[1, 9, 3, 4, 5])).unwrap();
        assert_eq!(delta.changed, vec![2, 4, 5]);
        assert_eq!(delta.header.page_count, 5);
        assert_eq!(delta.header.bytes(), RAW_DELTA_HEADER_LEN + 3 * 4100);
        assert_ne!(list(&[1, 2]).digest(), list(&[1, 2, 2]).digest());
        let other_size = RawPageList {
            page_size: 1024,
            ..list(&[1])
        };
        assert_eq!(RawDelta::between(&other_size, &list(&[1])), None);
    }

    fn file_of(dir: &std::path::Path, name: &str, pages: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        let bytes: Vec<u8> = pages.iter().flat_map(|&b| [b; 4096]).collect();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn rebuild(base: &[u8], now: &[u8]) -> Result<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (
            file_of(dir.path(), "old", base),
            file_of(dir.path(), "new", now),
        );
        let cancel = Cancel::new();
        let mut list = RawPageList::of_file(&File::open(&old)?, 4096, &cancel)?;
        let target = RawPageList::of_file(&File::open(&new)?, 4096, &cancel)?;
        let delta = RawDelta::between(&list, &target).unwrap();
        let mut bytes = Vec::new();
        RawDeltaReader::new(&new, &delta)?.read_to_end(&mut bytes)?;
        assert_eq!(bytes.len() as u64, delta.header.bytes());
        let db = File::options().read(true).write(true).open(&old)?;
        apply_raw_delta(
            &db,
            &mut list,
            &mut &bytes[..],
            bytes.len() as u64,
            target.bytes(),
            &cancel,
        )?;
        assert_eq!(list, target);
        Ok(std::fs::read(&old)?)
    }

    /// Pages that differ from each other (each one's number in every 8 bytes), so a page
    /// hashed into another page's place shows.
    fn numbered_pages(count: u32) -> Vec<u8> {
        (1..=count)
            .flat_map(|pgno| u64::from(pgno).to_le_bytes().repeat(4096 / 8))
            .collect()
    }

    #[test]
    fn pages_hashed_on_several_threads_are_the_pages_hashed_one_by_one_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = Cancel::new();
        // Several chunks ending in a short one (an odd count), and less than one chunk.
        for count in [2047u32, 3] {
            let bytes = numbered_pages(count);
            let path = dir.path().join(format!("db-{count}"));
            std::fs::write(&path, &bytes).unwrap();
            let file = File::open(&path).unwrap();
            let one_by_one: Vec<RawPageHash> = bytes.chunks(4096).map(raw_page_hash).collect();
            let listed = RawPageList::of_file(&file, 4096, &cancel).unwrap();
            assert!(listed.hashes == one_by_one, "{count} pages, of_file");
            for threads in 1..=4 {
                let mut hashes = vec![RawPageHash::default(); count as usize];
                for_each_chunk_on(
                    threads,
                    CHUNKS_BYTES,
                    &mut hashes,
                    4096,
                    &cancel,
                    |first, chunk, hashes| {
                        file.read_exact_at(chunk, u64::from(first) * 4096)?;
                        hash_pages(chunk, 4096, hashes);
                        Ok(())
                    },
                )
                .unwrap();
                assert!(hashes == one_by_one, "{count} pages, {threads} threads");
            }
        }
    }

    #[test]
    fn an_error_or_a_cancel_on_any_thread_stops_the_hashing() {
        let taken = std::sync::atomic::AtomicUsize::new(0);
        let all_but_the_first_fail = |first: u32, _: &mut [u8], _: &mut [RawPageHash]| {
            taken.fetch_add(1, Ordering::Relaxed);
            match first {
                0 => Ok(()),
                _ => bail!("chunk at page {} unreadable", first + 1),
            }
        };
        type Work<'a> = dyn Fn(u32, &mut [u8], &mut [RawPageHash]) -> Result<()> + Sync + 'a;
        let run = |threads, cancel: &Cancel, work: &Work| {
            let mut hashes = vec![RawPageHash::default(); 4000];
            for_each_chunk_on(threads, CHUNKS_BYTES, &mut hashes, 4096, cancel, work).unwrap_err()
        };
        // One thread: chunks of 1024 pages, and none taken after the one that failed.
        let err = run(1, &Cancel::new(), &all_but_the_first_fail);
        assert!(err.to_string().starts_with("chunk at page 1025"), "{err}");
        assert_eq!(
            taken.load(Ordering::Relaxed),
            2,
            "a chunk was taken after a failure"
        );
        // Two threads: whichever chunk failed first, its error is the answer.
        let err = run(2, &Cancel::new(), &all_but_the_first_fail);
        assert!(err.to_string().starts_with("chunk at page "), "{err}");
        let cancel = Cancel::new();
        cancel.cancel();
        let err = run(2, &cancel, &|_, _, _| Ok(()));
        assert!(crate::cancel::is_cancelled(&err), "{err}");
    }

    #[test]
    fn a_raw_delta_rebuilds_the_newer_file_growing_and_shrinking() {
        for (base, now) in [
            (&[1u8, 2, 3][..], &[1u8, 9, 3, 4, 5][..]),
            (&[1, 2, 3, 4], &[1, 7]),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let expected = std::fs::read(file_of(dir.path(), "x", now)).unwrap();
            assert!(rebuild(base, now).unwrap() == expected);
        }
    }

    #[test]
    fn a_forged_raw_delta_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (
            file_of(dir.path(), "old", &[1, 2, 3]),
            file_of(dir.path(), "new", &[1, 9, 3, 4]),
        );
        let cancel = Cancel::new();
        let base = RawPageList::of_file(&File::open(&old).unwrap(), 4096, &cancel).unwrap();
        let target = RawPageList::of_file(&File::open(&new).unwrap(), 4096, &cancel).unwrap();
        let delta = RawDelta::between(&base, &target).unwrap();
        let mut good = Vec::new();
        RawDeltaReader::new(&new, &delta)
            .unwrap()
            .read_to_end(&mut good)
            .unwrap();
        let first = RAW_DELTA_HEADER_LEN as usize;
        let mut cases: Vec<(&str, Vec<u8>, u64)> =
            vec![("a size not recorded", good.clone(), 8192)];
        let mut other_base = good.clone();
        other_base[20] ^= 1;
        cases.push(("another base", other_base, target.bytes()));
        let mut far = good.clone();
        far[first..first + 4].copy_from_slice(&9u32.to_be_bytes());
        cases.push(("a page past the end", far, target.bytes()));
        let mut changed = good.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        cases.push(("a changed page", changed, target.bytes()));
        let mut short = good.clone();
        short.truncate(good.len() - 10);
        cases.push(("a cut delta", short, target.bytes()));
        for (what, bytes, expected) in cases {
            let db = File::options().read(true).write(true).open(&old).unwrap();
            let mut list = base.clone();
            let len = bytes.len() as u64;
            let err = apply_raw_delta(&db, &mut list, &mut &bytes[..], len, expected, &cancel);
            assert!(err.is_err(), "{what} was applied");
        }
    }
}
