//! `restore --update` of Signal's database in place: the raw (format 3) deltas a newer
//! snapshot added to the chain are written into the volume's own `db.sqlite` behind a page
//! journal ([`crate::page_journal`]), instead of into a copy of the whole file.
//!
//! Before the first write, the journal saves the old bytes of every page the chain writes
//! (read from the deltas' page numbers) and of every page a shrink cuts off, with the old
//! length and time. Then each delta's pages are written at their offsets, still encrypted,
//! exactly as a restore writes them into its copy ([`raw_pages::apply_raw_delta`]). So the
//! file only ever holds the old version, the new one, or a mix the journal undoes.
//!
//! What is checked, without reading the pages nothing wrote: the raw page list of the old
//! version (from the volume's catalog, and hashing to the old snapshot's signed digest),
//! with the hashes of the pages each delta writes laid over it, must hash to each delta's
//! result and at the end to the newer snapshot's signed digest; then every page written,
//! and page 1, is read through SQLCipher, which checks its HMAC with the restored key. The
//! unchanged pages are the ones the earlier restore checked: [`crate::update`] writes in
//! place only while the file's inode and change time are those that restore recorded.
//! Decrypted (format 1 and 2) chains are copied and rebuilt whole, as before.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::fs::{Mode, OFlags};

use crate::cancel::Cancel;
use crate::db_rebuild::Deltas;
use crate::home::Home;
use crate::index::DbChain;
use crate::page_journal::PageJournal;
use crate::pages;
use crate::profile::{self, DbKey};
use crate::raw_pages::{self, RawDeltaHeader, RawPageList};

/// What a catch-up needs besides the database: the deltas set aside, which of them to
/// apply, and each delta snapshot's recorded database size.
pub struct Chain<'a> {
    pub deltas: &'a Deltas,
    pub chain: &'a DbChain,
    pub expected_bytes: &'a dyn Fn(&str) -> Option<u64>,
}

/// Brings the database at `db` (an [`AnchoredDb`] path), whose pages `base` lists, to the
/// version `chain` names, in place; `to` is the snapshot that version belongs to (the
/// journal's tag). SQLite reads the written pages back through `staged`, a link to the
/// same file in the restore's own staging directory (the `-wal` and `-shm` it makes stay
/// there). On an error the old version is put back. The journal is left for the
/// restore's commit point ([`crate::restoration::settle_db_journal`]). Returns the new
/// page list.
pub fn catch_up(
    db: &Path,
    staged: &Path,
    key: &DbKey,
    base: RawPageList,
    chain: &Chain,
    to: &str,
    cancel: &Cancel,
) -> Result<RawPageList> {
    let (written, shortest) = pages_written(chain, base.page_count(), cancel)?;
    let journal = PageJournal::begin(db, to, base.page_size, written.iter().copied(), shortest)?;
    tracing::info!(
        pages = written.len(),
        of = base.page_count(),
        "page journal written: catching up Signal's database in place"
    );
    let mut list = base;
    match write_and_check(staged, key, &mut list, chain, &written, &journal, cancel) {
        Ok(()) => Ok(list),
        Err(err) => {
            if let Err(undo) = journal.roll_back() {
                tracing::error!(
                    error = format!("{undo:#}"),
                    "cannot put the old pages back now; the next run rolls the journal back"
                );
            }
            Err(err)
        }
    }
}

/// Every page number the chain's deltas write, and the fewest pages the database has
/// along the way.
fn pages_written(chain: &Chain, old_pages: u32, cancel: &Cancel) -> Result<(BTreeSet<u32>, u32)> {
    let mut written = BTreeSet::new();
    let mut shortest = old_pages;
    for id in &chain.chain.deltas {
        cancel.check()?;
        let (mut delta, len) = chain.deltas.open(id)?;
        let (header, numbers) = delta_page_numbers(&mut delta, len)
            .with_context(|| format!("cannot read the database delta of snapshot {id}"))?;
        shortest = shortest.min(header.page_count);
        written.extend(numbers);
    }
    Ok((written, shortest))
}

/// A raw delta's header and the numbers of the pages it writes, read through without
/// keeping the pages.
fn delta_page_numbers(delta: &mut impl Read, len: u64) -> Result<(RawDeltaHeader, Vec<u32>)> {
    let header = RawDeltaHeader::read(delta, len)?;
    let mut numbers = Vec::with_capacity(header.pages as usize);
    for _ in 0..header.pages {
        let mut number = [0u8; 4];
        delta.read_exact(&mut number)?;
        numbers.push(u32::from_be_bytes(number));
        let page = u64::from(header.page_size);
        if std::io::copy(&mut delta.take(page), &mut std::io::sink())? != page {
            bail!("the database delta ended inside a page: damaged");
        }
    }
    Ok((header, numbers))
}

fn write_and_check(
    staged: &Path,
    key: &DbKey,
    list: &mut RawPageList,
    chain: &Chain,
    written: &BTreeSet<u32>,
    journal: &PageJournal,
    cancel: &Cancel,
) -> Result<()> {
    for id in &chain.chain.deltas {
        cancel.check()?;
        let (mut delta, len) = chain.deltas.open(id)?;
        let bytes = (chain.expected_bytes)(id).with_context(|| {
            format!("snapshot {id}, which holds a database delta, records no database")
        })?;
        raw_pages::apply_raw_delta(journal.file(), list, &mut delta, len, bytes, cancel)
            .with_context(|| format!("cannot apply the database delta of snapshot {id}"))?;
    }
    journal.sync()?;
    tracing::info!(
        deltas = chain.chain.deltas.len(),
        "deltas written into Signal's database in place and synced"
    );
    if list.digest_hex() != chain.chain.pages {
        bail!(
            "Signal's database brought forward is not the version the snapshot's index names \
             (its raw pages hash differently): an archive of the chain is damaged or was swapped"
        );
    }
    authenticate(staged, key, list.page_count(), written, cancel)?;
    tracing::info!(
        pages = written.len(),
        "pages written in place authenticated with the restored key"
    );
    Ok(())
}

/// Reads page 1 and every page written that the database still has through SQLCipher,
/// which checks each one's HMAC with `key`; and checks the page count.
fn authenticate(
    db: &Path,
    key: &DbKey,
    page_count: u32,
    written: &BTreeSet<u32>,
    cancel: &Cancel,
) -> Result<()> {
    // Read-write, as the last connection: closing it removes the `-wal`/`-shm` it made.
    let conn = pages::open(db, key, true)?;
    let tx = conn.unchecked_transaction()?;
    let count: u32 = tx.query_row("PRAGMA page_count", [], |row| row.get(0))?;
    if count != page_count {
        bail!(
            "Signal's database brought forward has {count} pages, not the {page_count} of its snapshot"
        );
    }
    let mut page_size = 0;
    let mut read = tx.prepare("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")?;
    for (n, &pgno) in std::iter::once(&1).chain(written).enumerate() {
        if n.is_multiple_of(1024) {
            cancel.check()?;
        }
        if pgno > count || (page_size > 0 && pgno == pages::pending_byte_page(page_size)) {
            continue;
        }
        let data: Vec<u8> = read.query_row([pgno], |row| row.get(0)).with_context(|| {
            format!("page {pgno} written in place does not authenticate with the restored key")
        })?;
        page_size = data.len() as u32;
    }
    drop(read);
    drop(tx);
    conn.close().map_err(|(_, err)| err)?;
    Ok(())
}

/// Signal's database of a volume reached through a handle on its directory, opened
/// without following a link at any level: `/proc/self/fd/N/db.sqlite` stays in that
/// directory whatever the desktop user renames or links meanwhile, so the journal, the
/// page writes and a rollback (run as root in an init container) never land outside the
/// volume.
pub struct AnchoredDb {
    _dir: OwnedFd,
    path: PathBuf,
}

impl AnchoredDb {
    pub fn open(volume: &Path) -> Result<Self> {
        let relative = Path::new(profile::SIGNAL_DB);
        let home = Home::open(volume)?;
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut dir: Option<OwnedFd> = None;
        for name in relative.parent().into_iter().flat_map(Path::components) {
            let at = dir.as_ref().map_or(home.root(), |d| d.as_fd());
            let opened = rustix::fs::openat(at, name.as_os_str(), flags, Mode::empty())
                .with_context(|| {
                    format!(
                        "cannot open the directory of {} without following a link",
                        volume.join(relative).display()
                    )
                })?;
            dir = Some(opened);
        }
        let dir = dir.context("Signal's database has no directory")?;
        let name = relative
            .file_name()
            .context("Signal's database has no name")?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        Ok(Self { _dir: dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
