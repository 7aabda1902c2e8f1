//! Restore and verify of a snapshot whose Signal database is a full copy plus page deltas
//! ([`crate::pages`]): the deltas are set aside while the archives are read, then applied
//! in order to the full copy once everything is in, since the key that opens the database
//! (`config.json`) may come from any archive of the chain, the last included.
//!
//! Set aside, a delta is sealed with age to a key made for this run and held only in
//! memory: its pages are decrypted database content and never touch a disk in plain text.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cancel::Cancel;
use crate::index::DbChain;
use crate::pages::{self, PageList};
use crate::profile::{self, DbKey};

/// The deltas read so far, by the snapshot whose archive held each.
pub struct Deltas {
    identity: age::x25519::Identity,
    dir: PathBuf,
    sealed: HashMap<String, (tempfile::NamedTempFile, u64)>,
}

impl Deltas {
    /// Sealed deltas go to files in `dir` (removed when this is dropped).
    pub fn new(dir: &Path) -> Self {
        Self {
            identity: age::x25519::Identity::generate(),
            dir: dir.to_path_buf(),
            sealed: HashMap::new(),
        }
    }

    /// Sets aside the delta of length `len` that snapshot `id`'s archive holds; `limit` is
    /// that archive's declared content, which no entry may exceed.
    pub fn set_aside(
        &mut self,
        id: &str,
        entry: &mut dyn Read,
        len: u64,
        limit: u64,
    ) -> Result<()> {
        if self.sealed.contains_key(id) {
            bail!("the archive of snapshot {id} holds two database deltas: damaged or forged");
        }
        if len > limit {
            bail!(
                "the database delta of snapshot {id} is larger than the archive's declared \
                 content: damaged or forged"
            );
        }
        let file = tempfile::Builder::new()
            .prefix(profile::OWN_FILES_PREFIX)
            .suffix("-delta")
            .tempfile_in(&self.dir)?;
        let recipient = self.identity.to_public();
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))?;
        let mut sealed = encryptor.wrap_output(std::io::BufWriter::new(file.reopen()?))?;
        let copied = std::io::copy(&mut entry.take(len), &mut sealed)
            .map_err(crate::archive::explain_read_error)?;
        if copied != len {
            bail!("the database delta of snapshot {id} ended early: damaged");
        }
        sealed.finish()?.flush()?;
        self.sealed.insert(id.to_string(), (file, len));
        Ok(())
    }

    /// Snapshot `id`'s delta, unsealed as it is read, and its length.
    pub fn open(&self, id: &str) -> Result<(impl Read + use<>, u64)> {
        let (file, len) = self.sealed.get(id).with_context(|| {
            format!("the database delta of snapshot {id} was not in its archive")
        })?;
        let decryptor = age::Decryptor::new(std::io::BufReader::new(file.reopen()?))?;
        let plain = decryptor.decrypt(std::iter::once(&self.identity as &dyn age::Identity))?;
        Ok((plain, *len))
    }

    /// Applies the deltas `chain` names, in order, to the full copy at `db` (a file we
    /// unpacked), and checks that the result is the version `chain` describes, page for
    /// page. `expected_bytes` gives each delta snapshot's database size. Returns the
    /// result's page list, for the restored volume's catalog.
    pub fn rebuild(
        self,
        db: &Path,
        key: &DbKey,
        chain: &DbChain,
        expected_bytes: impl Fn(&str) -> Option<u64>,
        cancel: &Cancel,
    ) -> Result<PageList> {
        if !chain.deltas.is_empty() {
            let mut conn = pages::open(db, key, true)?;
            let mut list = PageList::read(&conn, cancel)?;
            for id in &chain.deltas {
                cancel.check()?;
                let (mut delta, len) = self.open(id)?;
                let bytes = expected_bytes(id).with_context(|| {
                    format!("snapshot {id}, which holds a database delta, records no database")
                })?;
                pages::apply_delta(&mut conn, &mut list, &mut delta, len, bytes, cancel)
                    .with_context(|| format!("cannot apply the database delta of snapshot {id}"))?;
            }
            conn.close().map_err(|(_, err)| err)?;
            tracing::info!(
                deltas = chain.deltas.len(),
                "Signal's database rebuilt from its full copy and deltas"
            );
        }
        // Read again from the file: what SQLite wrote, not what we meant it to. Read-write,
        // as the last connection: closing it removes the `-wal`/`-shm` files opening made.
        let conn = pages::open(db, key, true)?;
        let rebuilt = PageList::read(&conn, cancel)?;
        conn.close().map_err(|(_, err)| err)?;
        if rebuilt.digest_hex() != chain.pages {
            bail!(
                "Signal's database rebuilt from this snapshot's archives is not the version its \
                 index names (its pages hash differently): an archive of the chain is damaged \
                 or was swapped. Restore another snapshot"
            );
        }
        Ok(rebuilt)
    }
}
