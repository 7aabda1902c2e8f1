//! `restore --update` of Signal's database in place: the deltas a newer snapshot added to
//! the chain are written into the volume's own `db.sqlite` behind a page journal
//! ([`crate::page_journal`]), instead of into a copy of the whole file.
//!
//! Format 1 and 2 deltas hold decrypted pages, which SQLCipher must encrypt: they are
//! applied through `sqlite_dbpage`, one transaction per delta as a restore applies them,
//! then checkpointed into the file. Before the first write, the journal saves the old
//! bytes of every page the chain writes (read from the deltas' page numbers), of page 1
//! (SQLite may rewrite it at a commit) and of every page a shrink cuts off. So the file
//! only ever holds the old version, the new one, or a mix the journal undoes.
//!
//! What is checked, without reading the pages nothing wrote: the page list of the old
//! version (from the volume's catalog, and hashing to the old snapshot's signed digest),
//! with the hashes of the pages each delta writes laid over it, must hash to each delta's
//! result and at the end to the newer snapshot's signed digest ([`pages::apply_delta`]);
//! then every page written is read back through SQLCipher (its HMAC authenticates it with
//! the restored key) and must hash as the list says. The unchanged pages are the ones
//! the earlier restore checked: [`crate::update`] writes in place only when the file's
//! inode and change time are still the ones that restore recorded.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::cancel::Cancel;
use crate::db_rebuild::Deltas;
use crate::index::DbChain;
use crate::page_journal::PageJournal;
use crate::pages::{self, PageList};
use crate::profile::DbKey;

/// What a catch-up needs besides the database: the deltas set aside, which of them to
/// apply, and each delta snapshot's recorded database size.
pub struct Chain<'a> {
    pub deltas: &'a Deltas,
    pub chain: &'a DbChain,
    pub expected_bytes: &'a dyn Fn(&str) -> Option<u64>,
}

/// Brings the database at `db`, whose pages `base` lists, to the version `chain` names,
/// in place; `to` is the snapshot that version belongs to (the journal's tag). On an
/// error the old version is put back. The journal is left for the restore's commit point
/// ([`crate::restoration::settle_db_journal`]). Returns the new page list.
pub fn catch_up(
    db: &Path,
    key: &DbKey,
    base: PageList,
    chain: &Chain,
    to: &str,
    cancel: &Cancel,
) -> Result<PageList> {
    let (written, shortest) = pages_written(chain, base.page_count(), cancel)?;
    let journaled = written.iter().copied().chain([1]);
    let journal = PageJournal::begin(db, to, base.page_size, journaled, shortest)?;
    tracing::info!(
        pages = written.len(),
        of = base.page_count(),
        "page journal written: catching up Signal's database in place"
    );
    let mut list = base;
    match write_and_check(db, key, &mut list, chain, &written, &journal, cancel) {
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
        let (header, numbers) = pages::delta_page_numbers(&mut delta, len)
            .with_context(|| format!("cannot read the database delta of snapshot {id}"))?;
        shortest = shortest.min(header.page_count);
        written.extend(numbers);
    }
    Ok((written, shortest))
}

fn write_and_check(
    db: &Path,
    key: &DbKey,
    list: &mut PageList,
    chain: &Chain,
    written: &BTreeSet<u32>,
    journal: &PageJournal,
    cancel: &Cancel,
) -> Result<()> {
    let mut conn = pages::open(db, key, true)?;
    for id in &chain.chain.deltas {
        cancel.check()?;
        let (mut delta, len) = chain.deltas.open(id)?;
        let bytes = (chain.expected_bytes)(id).with_context(|| {
            format!("snapshot {id}, which holds a database delta, records no database")
        })?;
        pages::apply_delta(&mut conn, list, &mut delta, len, bytes, cancel)
            .with_context(|| format!("cannot apply the database delta of snapshot {id}"))?;
    }
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
    if busy != 0 {
        bail!("the deltas written into Signal's database could not be checkpointed (busy)");
    }
    conn.close().map_err(|(_, err)| err)?;
    journal.sync()?;
    tracing::info!(
        deltas = chain.chain.deltas.len(),
        "deltas written into Signal's database in place and synced"
    );
    if list.digest_hex() != chain.chain.pages {
        bail!(
            "Signal's database brought forward is not the version the snapshot's index names \
             (its pages hash differently): an archive of the chain is damaged or was swapped"
        );
    }
    read_back(db, key, list, written, cancel)?;
    tracing::info!(
        pages = written.len(),
        "pages written in place authenticated with the restored key"
    );
    Ok(())
}

/// Reads every page written (that the database still has) and page 1 through SQLCipher,
/// which authenticates each, and compares its hash with `list`; and the page count.
fn read_back(
    db: &Path,
    key: &DbKey,
    list: &PageList,
    written: &BTreeSet<u32>,
    cancel: &Cancel,
) -> Result<()> {
    // Read-write, as the last connection: closing it removes the `-wal`/`-shm` it made.
    let conn = pages::open(db, key, true)?;
    let tx = conn.unchecked_transaction()?;
    let count: u32 = tx.query_row("PRAGMA page_count", [], |row| row.get(0))?;
    if count != list.page_count() {
        bail!(
            "Signal's database brought forward has {count} pages, not the {} of its snapshot",
            list.page_count()
        );
    }
    let pending = pages::pending_byte_page(list.page_size);
    let mut read = tx.prepare("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")?;
    for (n, &pgno) in std::iter::once(&1).chain(written).enumerate() {
        if pgno > count || pgno == pending {
            continue;
        }
        if n.is_multiple_of(1024) {
            cancel.check()?;
        }
        let data: Vec<u8> = read
            .query_row([pgno], |row| row.get(0))
            .with_context(|| format!("page {pgno} written in place does not authenticate"))?;
        if pages::page_hash(&data, pgno, list.reserve) != list.hashes[pgno as usize - 1] {
            bail!("page {pgno} written in place does not read back as the snapshot's");
        }
    }
    drop(read);
    drop(tx);
    conn.close().map_err(|(_, err)| err)?;
    Ok(())
}
