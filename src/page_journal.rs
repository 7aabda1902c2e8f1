//! Page writes into a database file in place, behind a rollback journal of our own: a
//! kill at any moment leaves the file's old version or its new one, never a mix.
//!
//! Before the first page is written, [`PageJournal::begin`] saves the old bytes of every
//! page about to be written, with the file's old length and modification time, into
//! `<db>.ghostwire-backup-journal` beside it (mode 0600, created with `O_EXCL|O_NOFOLLOW`),
//! and makes the journal and its directory durable. Then the pages are written, the new
//! length set and the file synced. The journal stays until the caller's own commit point
//! (for `restore --update`, the restore's `ready` note: [`crate::restoration`]); then
//! [`PageJournal::commit`] removes it.
//!
//! Whoever finds a journal ([`recover`]) either removes it, when the caller's commit point
//! says the writes were committed, or puts the old pages back, sets the old length and
//! time, syncs, and then removes the journal. (Nothing beside the file is touched: the
//! writes are plain `pwrite`s, never through SQLite.) A journal shorter than its header says or failing its checksum is
//! torn: it was being written, so the file's writes had not begun; it is removed.
//! Rolling back is idempotent: killed while rolling back, the next run rolls back again.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::fsutil;

/// Appended to the database's file name.
pub const SUFFIX: &str = ".ghostwire-backup-journal";
const MAGIC: &[u8; 8] = b"GWBPJRN1";
/// The longest tag (the snapshot the writes bring the file to) a journal holds.
const MAX_TAG: usize = 255;

/// The journal's path beside `db`.
pub fn path_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(SUFFIX);
    PathBuf::from(name)
}

/// What a journal records before its pages.
#[derive(Debug, Clone, PartialEq)]
struct Header {
    tag: String,
    page_size: u32,
    old_len: u64,
    old_mtime: SystemTime,
    pages: u32,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let since = self
            .old_mtime
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut bytes = MAGIC.to_vec();
        bytes.push(self.tag.len() as u8);
        bytes.extend_from_slice(self.tag.as_bytes());
        bytes.extend_from_slice(&self.page_size.to_be_bytes());
        bytes.extend_from_slice(&self.old_len.to_be_bytes());
        bytes.extend_from_slice(&since.as_secs().to_be_bytes());
        bytes.extend_from_slice(&since.subsec_nanos().to_be_bytes());
        bytes.extend_from_slice(&self.pages.to_be_bytes());
        bytes
    }

    /// Reads a header; `None` when it is torn or not one of ours.
    fn decode(input: &mut impl Read) -> Option<Self> {
        let mut magic = [0u8; 9];
        input.read_exact(&mut magic).ok()?;
        if &magic[..8] != MAGIC {
            return None;
        }
        let mut tag = vec![0u8; usize::from(magic[8])];
        input.read_exact(&mut tag).ok()?;
        let mut rest = [0u8; 4 + 8 + 8 + 4 + 4];
        input.read_exact(&mut rest).ok()?;
        let u32_at = |at: usize| u32::from_be_bytes(rest[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_be_bytes(rest[at..at + 8].try_into().unwrap());
        let mtime = Duration::new(u64_at(12), u32_at(20));
        Some(Self {
            tag: String::from_utf8(tag).ok()?,
            page_size: u32_at(0),
            old_len: u64_at(4),
            old_mtime: UNIX_EPOCH.checked_add(mtime)?,
            pages: u32_at(24),
        })
        .filter(|h| (512..=65536).contains(&h.page_size) && h.page_size.is_power_of_two())
    }

    /// The journal's whole length: header, pages (number and bytes), checksum.
    fn journal_len(&self) -> u64 {
        self.encode().len() as u64 + u64::from(self.pages) * (4 + u64::from(self.page_size)) + 32
    }
}

/// Writes into a database file whose old pages are journaled.
pub struct PageJournal {
    db: File,
    journal: PathBuf,
    page_size: u32,
}

impl PageJournal {
    /// Saves the old bytes of `pages` (those within the file; the old length covers the
    /// rest) of the database at `db` into its journal, durably, and of every page past
    /// `shortest`, the fewest pages the file will have at any time during the writes (a
    /// truncation loses them). `tag` names what the writes bring the file to, for
    /// [`recover`]'s caller.
    pub fn begin(
        db: &Path,
        tag: &str,
        page_size: u32,
        pages: impl IntoIterator<Item = u32>,
        shortest: u32,
    ) -> Result<Self> {
        if tag.len() > MAX_TAG {
            bail!("a page journal's tag is at most {MAX_TAG} bytes");
        }
        let file = open_database(db)?;
        let metadata = file.metadata()?;
        let old_len = metadata.len();
        if !old_len.is_multiple_of(u64::from(page_size)) {
            bail!(
                "{} is {old_len} bytes, not a whole number of {page_size}-byte pages: not the \
                 database its snapshot restored",
                db.display()
            );
        }
        let old_pages = (old_len / u64::from(page_size)) as u32;
        let mut pages: Vec<u32> = pages
            .into_iter()
            .chain(shortest.saturating_add(1)..=old_pages)
            .filter(|&n| n >= 1 && u64::from(n) * u64::from(page_size) <= old_len)
            .collect();
        pages.sort_unstable();
        pages.dedup();
        let header = Header {
            tag: tag.to_string(),
            page_size,
            old_len,
            old_mtime: metadata.modified()?,
            pages: pages.len() as u32,
        };
        let journal = path_of(db);
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&journal)
            .with_context(|| format!("cannot create the page journal {}", journal.display()))?;
        let written = write_journal(&created, &file, &header, &pages).and_then(|()| {
            created.sync_all()?;
            sync_parent(&journal)
        });
        if let Err(err) = written {
            let _ = std::fs::remove_file(&journal); // no page was written yet
            return Err(err.context(format!(
                "cannot write the page journal {}",
                journal.display()
            )));
        }
        Ok(Self {
            db: file,
            journal,
            page_size,
        })
    }

    /// The database file, opened for writing (not through a link).
    pub fn file(&self) -> &File {
        &self.db
    }

    /// Writes page `pgno` (numbered from 1).
    pub fn write_page(&self, pgno: u32, data: &[u8]) -> Result<()> {
        if pgno == 0 || data.len() != self.page_size as usize {
            bail!(
                "page {pgno} of {} bytes does not fit the database",
                data.len()
            );
        }
        let offset = u64::from(pgno - 1) * u64::from(self.page_size);
        self.db.write_all_at(data, offset)?;
        Ok(())
    }

    /// Makes the file `pages` pages long.
    pub fn set_len(&self, pages: u32) -> Result<()> {
        self.db
            .set_len(u64::from(pages) * u64::from(self.page_size))?;
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<()> {
        self.db.sync_all()?;
        Ok(())
    }

    /// The writes were committed (the caller's commit point is durable): removes the
    /// journal.
    pub fn commit(self) -> Result<()> {
        remove_journal(&self.journal)
    }

    /// Undoes the writes: the old pages, length and time, then no journal.
    pub fn roll_back(self) -> Result<()> {
        let db = db_of(&self.journal);
        drop(self.db);
        recover(&db, |_| false).map(|_| ())
    }
}

/// What [`recover`] found beside a database.
#[derive(Debug, PartialEq)]
pub enum Recovered {
    /// No journal.
    Nothing,
    /// A torn journal (the writes had not begun): removed.
    Torn,
    /// The writes to `tag` were undone.
    RolledBack { tag: String },
    /// The writes to `tag` were committed: the journal was removed.
    Committed { tag: String },
}

/// Settles a journal left beside `db` by an interrupted run: `committed(tag)` tells
/// whether the writes that bring the file to `tag` reached the caller's commit point.
pub fn recover(db: &Path, committed: impl FnOnce(&str) -> bool) -> Result<Recovered> {
    let journal_path = path_of(db);
    let journal = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&journal_path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Recovered::Nothing),
        Err(err) => {
            return Err(err).with_context(|| {
                format!(
                    "cannot open the page journal {} (a link or something other than a \
                     file in its place?): remove it by hand once you know the database \
                     beside it is sound",
                    journal_path.display()
                )
            });
        }
    };
    if !journal.metadata()?.is_file() {
        bail!(
            "{} is not a regular file: not a page journal of ours; remove it",
            journal_path.display()
        );
    }
    let Some(header) = intact_header(&journal)? else {
        tracing::warn!(journal = %journal_path.display(), "removing a torn page journal: the writes it was to guard had not begun");
        remove_journal(&journal_path)?;
        return Ok(Recovered::Torn);
    };
    let tag = header.tag.clone();
    if committed(&tag) {
        remove_journal(&journal_path)?;
        return Ok(Recovered::Committed { tag });
    }
    tracing::warn!(database = %db.display(), to = %tag, "rolling back interrupted in-place writes: putting the old pages back");
    put_back(db, &journal, &header)?;
    remove_journal(&journal_path)?;
    Ok(Recovered::RolledBack { tag })
}

fn write_journal(out: &File, db: &File, header: &Header, pages: &[u32]) -> Result<()> {
    let mut out = HashingWriter {
        inner: BufWriter::new(out),
        hash: Sha256::new(),
    };
    out.write_all(&header.encode())?;
    let mut page = vec![0u8; header.page_size as usize];
    for &pgno in pages {
        db.read_exact_at(&mut page, u64::from(pgno - 1) * u64::from(header.page_size))?;
        out.write_all(&pgno.to_be_bytes())?;
        out.write_all(&page)?;
    }
    let checksum = out.hash.finalize();
    out.inner.write_all(&checksum)?;
    out.inner.flush()?;
    Ok(())
}

/// The journal's header, if the whole journal is there and its checksum holds.
fn intact_header(journal: &File) -> Result<Option<Header>> {
    let len = journal.metadata()?.len();
    let mut input = BufReader::new(journal);
    let Some(header) = Header::decode(&mut input) else {
        return Ok(None);
    };
    if len != header.journal_len() {
        return Ok(None);
    }
    let mut hash = Sha256::new();
    hash.update(header.encode());
    let mut left = len - header.encode().len() as u64 - 32;
    let mut buffer = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = buffer.len().min(left as usize);
        input.read_exact(&mut buffer[..n])?;
        hash.update(&buffer[..n]);
        left -= n as u64;
    }
    let mut stored = [0u8; 32];
    input.read_exact(&mut stored)?;
    Ok((stored == hash.finalize().as_slice()).then_some(header))
}

/// Writes the journal's pages back into `db`, then its old length and time, durably.
fn put_back(db: &Path, journal: &File, header: &Header) -> Result<()> {
    let file = open_database(db)?;
    let mut input = BufReader::new(journal);
    input.seek(SeekFrom::Start(0))?;
    Header::decode(&mut input).context("the page journal changed while it was read")?;
    let mut page = vec![0u8; header.page_size as usize];
    for _ in 0..header.pages {
        let mut number = [0u8; 4];
        input.read_exact(&mut number)?;
        input.read_exact(&mut page)?;
        let pgno = u32::from_be_bytes(number);
        if pgno == 0 {
            bail!("the page journal names page 0: not one of ours");
        }
        file.write_all_at(&page, u64::from(pgno - 1) * u64::from(header.page_size))?;
    }
    file.set_len(header.old_len)?;
    file.set_modified(header.old_mtime)?;
    file.sync_all()?;
    Ok(())
}

fn open_database(db: &Path) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(db)
        .with_context(|| format!("cannot open {} for writing", db.display()))?;
    if !file.metadata()?.is_file() {
        bail!("{} is not a regular file", db.display());
    }
    Ok(file)
}

fn remove_journal(journal: &Path) -> Result<()> {
    std::fs::remove_file(journal)
        .with_context(|| format!("cannot remove the page journal {}", journal.display()))?;
    sync_parent(journal)
}

fn sync_parent(path: &Path) -> Result<()> {
    fsutil::sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn db_of(journal: &Path) -> PathBuf {
    let name = journal.as_os_str().as_encoded_bytes();
    let db = &name[..name.len() - SUFFIX.len()];
    // SAFETY: cut at the end of an ASCII suffix appended to an OsStr.
    PathBuf::from(unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(db) })
}

struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hash.update(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u32 = 1024;

    /// Where a write through the journal is stopped (as a kill would stop it).
    #[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
    enum Stop {
        JournalWritten,
        HalfThePagesWritten,
        PagesWritten,
        LengthSet,
        Synced,
    }
    const STOPS: [Stop; 5] = [
        Stop::JournalWritten,
        Stop::HalfThePagesWritten,
        Stop::PagesWritten,
        Stop::LengthSet,
        Stop::Synced,
    ];

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PAGE as usize]
    }

    /// A file of `pages` pages, page n filled with n.
    fn old_file(dir: &Path, pages: u8) -> (PathBuf, Vec<u8>) {
        let db = dir.join("db.sqlite");
        let bytes: Vec<u8> = (1..=pages).flat_map(page).collect();
        std::fs::write(&db, &bytes).unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 0);
        File::options()
            .write(true)
            .open(&db)
            .unwrap()
            .set_modified(old)
            .unwrap();
        (db, bytes)
    }

    /// Rewrites pages 2 and 4 and the new end (page 7 of 6): returns the new content.
    fn write_until(db: &Path, stop: Stop, new_pages: u32) -> Vec<u8> {
        let writes = [(2u32, 0xa2u8), (4, 0xa4), (new_pages, 0xaf)];
        let shortest = new_pages.min(6);
        let journal =
            PageJournal::begin(db, "M", PAGE, writes.iter().map(|w| w.0), shortest).unwrap();
        let mut expected = std::fs::read(db).unwrap();
        expected.resize((new_pages * PAGE) as usize, 0);
        for (pgno, fill) in writes {
            let at = ((pgno - 1) * PAGE) as usize;
            expected[at..at + PAGE as usize].fill(fill);
        }
        let written = match stop {
            Stop::JournalWritten => 0,
            Stop::HalfThePagesWritten => 1,
            _ => writes.len(),
        };
        for (pgno, fill) in &writes[..written] {
            journal.write_page(*pgno, &page(*fill)).unwrap();
        }
        if stop >= Stop::LengthSet {
            journal.set_len(new_pages).unwrap();
        }
        if stop >= Stop::Synced {
            journal.sync().unwrap();
        }
        expected // the journal is left, as a kill leaves it
    }

    #[test]
    fn a_write_stopped_at_any_step_rolls_back_to_the_old_file() {
        for new_pages in [7u32, 5] {
            for stop in STOPS {
                let dir = tempfile::tempdir().unwrap();
                let (db, old) = old_file(dir.path(), 6);
                let old_mtime = std::fs::metadata(&db).unwrap().modified().unwrap();
                write_until(&db, stop, new_pages);
                assert_eq!(
                    recover(&db, |_| false).unwrap(),
                    Recovered::RolledBack { tag: "M".into() },
                    "{stop:?}"
                );
                assert_eq!(std::fs::read(&db).unwrap(), old, "{stop:?} to {new_pages}");
                let metadata = std::fs::metadata(&db).unwrap();
                assert_eq!(metadata.modified().unwrap(), old_mtime);
                assert!(!path_of(&db).exists());
                // Nothing left to do.
                assert_eq!(recover(&db, |_| false).unwrap(), Recovered::Nothing);
            }
        }
    }

    #[test]
    fn a_committed_write_keeps_the_new_file_and_drops_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = old_file(dir.path(), 6);
        let new = write_until(&db, Stop::Synced, 7);
        let found = recover(&db, |tag| tag == "M").unwrap();
        assert_eq!(found, Recovered::Committed { tag: "M".into() });
        assert_eq!(std::fs::read(&db).unwrap(), new);
        assert!(!path_of(&db).exists());
    }

    #[test]
    fn a_torn_journal_is_removed_and_the_file_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (db, old) = old_file(dir.path(), 6);
        write_until(&db, Stop::JournalWritten, 7);
        let journal = std::fs::read(path_of(&db)).unwrap();
        for cut in [0, 5, 20, 40, journal.len() / 2, journal.len() - 1] {
            std::fs::write(path_of(&db), &journal[..cut]).unwrap();
            assert_eq!(recover(&db, |_| false).unwrap(), Recovered::Torn, "{cut}");
            assert_eq!(std::fs::read(&db).unwrap(), old);
            assert!(!path_of(&db).exists());
        }
        // A flipped byte fails the checksum: as torn.
        let mut flipped = journal.clone();
        flipped[60] ^= 1;
        std::fs::write(path_of(&db), &flipped).unwrap();
        assert_eq!(recover(&db, |_| false).unwrap(), Recovered::Torn);
    }

    #[test]
    fn a_rollback_killed_halfway_is_rolled_back_again() {
        let dir = tempfile::tempdir().unwrap();
        let (db, old) = old_file(dir.path(), 6);
        write_until(&db, Stop::Synced, 5);
        let journal = std::fs::read(path_of(&db)).unwrap();
        recover(&db, |_| false).unwrap();
        // As if killed after putting pages back but before removing the journal.
        std::fs::write(path_of(&db), &journal).unwrap();
        assert!(matches!(
            recover(&db, |_| false).unwrap(),
            Recovered::RolledBack { .. }
        ));
        assert_eq!(std::fs::read(&db).unwrap(), old);
    }

    #[test]
    fn the_journal_is_private_and_never_replaces_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = old_file(dir.path(), 6);
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), path_of(&db)).unwrap();
        assert!(PageJournal::begin(&db, "M", PAGE, [1], 6).is_err());
        assert!(!dir.path().join("elsewhere").exists());
        std::fs::remove_file(path_of(&db)).unwrap();
        let journal = PageJournal::begin(&db, "M", PAGE, [1], 6).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(path_of(&db)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        journal.commit().unwrap();
        assert!(!path_of(&db).exists());
    }
}
