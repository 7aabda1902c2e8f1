//! Restore and verify of a snapshot whose Signal database is a full copy plus page deltas:
//! raw pages ([`crate::raw_pages`], format 3) or, in formats 1 and 2, decrypted pages
//! ([`crate::pages`]). The deltas are set aside while the archives are read, then applied
//! in order to the full copy once everything is in, since the key that opens the database
//! (`config.json`) may come from any archive of the chain, the last included.
//!
//! Set aside, a delta is sealed with age to a key made for this run and held only in
//! memory: a decrypted delta's pages are database content in plain text, and never touch
//! a disk so (a raw delta's are still encrypted; it is sealed the same way).
//!
//! A raw chain is checked without decrypting what it does not need to: the full copy is
//! read once, on every core, hashing each page and checking its HMAC with the restored key
//! as SQLCipher does ([`crate::page_auth`]); each delta's pages are written at their
//! offsets, then read again, hashed and checked; the result's raw pages must hash to the
//! signed digest, and SQLCipher opens it with the key. Where our check finds a page bad,
//! SQLCipher's `cipher_integrity_check` decides. A decrypted chain is read back through
//! SQLCipher, page for page.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cancel::Cancel;
use crate::index::DbChain;
use crate::page_auth::{self, Failures};
use crate::pages::{self, PageList};
use crate::profile::{self, DbKey};
use crate::raw_pages::{self, RawPageList};
use crate::unpack;

/// Signal's database as a restore rebuilt it, equal to the snapshot's signed page digest
/// and authenticated with the restored key, page by page.
#[derive(Debug, Clone)]
pub enum Rebuilt {
    Decrypted(PageList),
    Raw(RawPageList),
}

impl Rebuilt {
    /// The raw page list, for the restored volume's catalog (a decrypted list cannot be a
    /// later backup's base: its next copy is full).
    pub fn raw(&self) -> Option<&RawPageList> {
        match self {
            Self::Raw(list) => Some(list),
            Self::Decrypted(_) => None,
        }
    }
}

/// The deltas read so far, by the snapshot whose archive held each.
pub struct Deltas {
    identity: age::x25519::Identity,
    dir: PathBuf,
    sealed: HashMap<String, (tempfile::NamedTempFile, u64)>,
    /// The full copy's pages, hashed and checked as the unpack wrote it.
    streamed: Option<Streamed>,
}

impl Deltas {
    /// Sealed deltas go to files in `dir` (removed when this is dropped).
    pub fn new(dir: &Path) -> Self {
        Self {
            identity: age::x25519::Identity::generate(),
            dir: dir.to_path_buf(),
            sealed: HashMap::new(),
            streamed: None,
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

    /// What `watch` saw of the full copy as it was unpacked, for the gate to use instead of
    /// reading the file again.
    pub fn streamed(&mut self, watch: FullCopyWatch) {
        self.streamed = watch.done;
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
    ) -> Result<Rebuilt> {
        match chain.raw_page_size {
            Some(page_size) => self
                .rebuild_raw(db, key, chain, page_size, expected_bytes, cancel)
                .map(Rebuilt::Raw),
            None => self
                .rebuild_decrypted(db, key, chain, expected_bytes, cancel)
                .map(Rebuilt::Decrypted),
        }
    }

    /// The raw chain in one read of the full copy, which hashes every page and checks its
    /// HMAC with `key` ([`page_auth`]); then each delta's pages written at their offsets
    /// and read again, hashed and checked; then the digest compared, and SQLCipher asked
    /// ([`confirm_with_sqlcipher`]).
    fn rebuild_raw(
        mut self,
        db: &Path,
        key: &DbKey,
        chain: &DbChain,
        page_size: u32,
        expected_bytes: impl Fn(&str) -> Option<u64>,
        cancel: &Cancel,
    ) -> Result<RawPageList> {
        // Written only to apply deltas: without, it may be a volume's file linked in.
        let file = std::fs::File::options()
            .read(true)
            .write(!chain.deltas.is_empty())
            .custom_flags(libc::O_NOFOLLOW)
            .open(db)
            .with_context(|| format!("cannot open {}", db.display()))?;
        let (pass, checked) = match self.streamed.take() {
            Some(streamed) if streamed.fits(key, page_size, file.metadata()?.len()) => {
                (streamed.pass, "as it was unpacked")
            }
            _ => (
                page_auth::hash_and_authenticate(&file, page_size, key, cancel)?,
                "in one read of the file",
            ),
        };
        let (mut list, mut failed) = (pass.list, pass.failed);
        if !chain.deltas.is_empty() {
            let base = list.clone();
            self.each_delta(chain, &expected_bytes, cancel, |mut delta, len, bytes| {
                raw_pages::apply_raw_delta(&file, &mut list, &mut delta, len, bytes, cancel)
            })?;
            file.sync_all()?;
            let written = list.changed_since(&base).unwrap_or_default();
            let recheck = page_auth::recheck_pages(&file, &list, &written, pass.salt, key, cancel);
            failed.merge(recheck?);
        }
        drop(file);
        if list.digest_hex() != chain.pages {
            bail!(
                "Signal's database rebuilt from this snapshot's archives is not the version its \
                 index names (its raw pages hash differently): an archive of the chain is \
                 damaged or was swapped. Restore another snapshot"
            );
        }
        confirm_with_sqlcipher(db, key, &failed, cancel)?;
        tracing::info!(
            deltas = chain.deltas.len(),
            pages = list.page_count(),
            checked,
            "Signal's database rebuilt from raw pages: equal to the signed digest, every page authenticated"
        );
        Ok(list)
    }

    /// Hands each delta of `chain`, in order, to `apply` with its length and the size of
    /// the database its snapshot records.
    fn each_delta(
        &self,
        chain: &DbChain,
        expected_bytes: &impl Fn(&str) -> Option<u64>,
        cancel: &Cancel,
        mut apply: impl FnMut(&mut dyn Read, u64, u64) -> Result<()>,
    ) -> Result<()> {
        for id in &chain.deltas {
            cancel.check()?;
            let (mut delta, len) = self.open(id)?;
            let bytes = expected_bytes(id).with_context(|| {
                format!("snapshot {id}, which holds a database delta, records no database")
            })?;
            apply(&mut delta, len, bytes)
                .with_context(|| format!("cannot apply the database delta of snapshot {id}"))?;
        }
        Ok(())
    }

    fn rebuild_decrypted(
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
            self.each_delta(chain, &expected_bytes, cancel, |mut delta, len, bytes| {
                pages::apply_delta(&mut conn, &mut list, &mut delta, len, bytes, cancel)
            })?;
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

/// The pass over the full copy as it was unpacked, and the key it checked with.
struct Streamed {
    pass: page_auth::Pass,
    key: DbKey,
}

impl Streamed {
    /// Whether it holds for the file of `len` bytes the gate checks with `key`: the same
    /// key (a later archive's `config.json` may have brought another), page size and length.
    fn fits(&self, key: &DbKey, page_size: u32, len: u64) -> bool {
        self.key == *key && self.pass.list.page_size == page_size && self.pass.list.bytes() == len
    }
}

/// Watches the unpack of Signal's database ([`unpack::Watch`]): a raw chain's full copy is
/// hashed and checked as it is written ([`page_auth::StreamPass`]), with the key of the
/// `config.json` unpacked before it. Without one (none yet, or not a raw chain) nothing is
/// watched, and the gate reads the file.
pub struct FullCopyWatch {
    dir: PathBuf,
    page_size: Option<u32>,
    current: Option<page_auth::StreamPass>,
    done: Option<Streamed>,
}

impl FullCopyWatch {
    /// For the unpack into `dir` (the staging directory, by its handle) of a snapshot whose
    /// raw chain has pages of `page_size` bytes (`None`: not a raw chain).
    pub fn new(dir: &Path, page_size: Option<u32>) -> Self {
        Self {
            dir: dir.to_path_buf(),
            page_size,
            current: None,
            done: None,
        }
    }

    /// The key in the `config.json` unpacked so far, read only through real directories.
    fn key(&self) -> Option<DbKey> {
        let config = Path::new(profile::SIGNAL_CONFIG);
        crate::signal_db::plain_tree(&self.dir, config).ok()?;
        let bytes = zeroize::Zeroizing::new(std::fs::read(self.dir.join(config)).ok()?);
        DbKey::from_config_json(&bytes, config).ok()
    }
}

impl unpack::Watch for FullCopyWatch {
    fn begin(&mut self, relative: &Path, file: bool) -> bool {
        if relative != Path::new(profile::SIGNAL_DB) {
            return false;
        }
        (self.current, self.done) = (None, None);
        let (Some(page_size), true) = (self.page_size, file) else {
            return false;
        };
        self.current = self
            .key()
            .map(|key| page_auth::StreamPass::new(&key, page_size));
        self.current.is_some()
    }

    fn bytes(&mut self, data: &[u8]) -> Result<()> {
        if let Some(pass) = &mut self.current
            && pass.write(data).is_err()
        {
            self.current = None; // the gate reads the file instead
        }
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        if let Some(pass) = self.current.take() {
            let key = pass.key().clone();
            self.done = pass.finish().ok().map(|pass| Streamed { pass, key });
        }
        Ok(())
    }
}

/// SQLCipher has the last word on the pages our check ([`page_auth`]) judged. All good:
/// SQLCipher opens the file with `key` and reads its schema, proving the key and the cipher
/// settings are ones it reads. Some failed (damage, a wrong key, or cipher settings other
/// than Signal's, which our check does not know): SQLCipher's `cipher_integrity_check`
/// decides, reading every page again.
fn confirm_with_sqlcipher(
    db: &Path,
    key: &DbKey,
    failed: &Failures,
    cancel: &Cancel,
) -> Result<()> {
    if failed.is_empty() {
        return crate::sqlite::opens_with_key(db, key).context(
            "Signal's database rebuilt from this snapshot has every page's HMAC right for the \
             restored key, but SQLCipher cannot open it with that key: its cipher settings \
             are not Signal's. Restore another snapshot",
        );
    }
    tracing::warn!(
        failed = failed.describe(),
        "pages did not authenticate with the restored key under Signal's cipher settings; \
         asking SQLCipher (cipher_integrity_check)"
    );
    let problems = crate::sqlite::cipher_check(db, key, cancel)?;
    if !problems.is_empty() {
        bail!(
            "Signal's database rebuilt from this snapshot fails cipher_integrity_check with \
             the restored key ({}): the key in the snapshot's config.json is not the \
             database's, or a page was damaged before the backup read it. Restore another \
             snapshot",
            problems.join("; ")
        );
    }
    tracing::warn!(
        "cipher_integrity_check finds every page of Signal's database good: it uses other \
         cipher settings than Signal's, and is accepted on SQLCipher's word"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::Watch;

    const KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

    fn watch_with_config(dir: &Path) -> FullCopyWatch {
        let config = dir.join(profile::SIGNAL_CONFIG);
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, format!("{{\"key\":\"{KEY}\"}}")).unwrap();
        FullCopyWatch::new(dir, Some(4096))
    }

    fn write_file(watch: &mut FullCopyWatch, pages: usize) {
        assert!(watch.begin(Path::new(profile::SIGNAL_DB), true));
        for n in 0..pages {
            watch.bytes(&[n as u8; 4096]).unwrap();
        }
        watch.end().unwrap();
    }

    /// The pass beside the unpack holds only for the file it saw, with the key it used:
    /// another key, another length, or a later entry of the database's name that is not
    /// a file (a link) leaves the gate to read the file itself.
    #[test]
    fn the_pass_beside_the_unpack_holds_only_for_the_file_and_key_it_saw() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = watch_with_config(dir.path());
        assert!(!watch.begin(Path::new(profile::SIGNAL_CONFIG), true));
        write_file(&mut watch, 3);
        let key = DbKey::from_hex(KEY).unwrap();
        let done = watch.done.as_ref().expect("a pass");
        assert_eq!(done.pass.list.page_count(), 3);
        assert_eq!(done.pass.failed.count, 3, "pages of no database");
        assert!(done.fits(&key, 4096, 3 * 4096));
        assert!(!done.fits(&DbKey::from_hex(&"11".repeat(32)).unwrap(), 4096, 3 * 4096));
        assert!(!done.fits(&key, 4096, 4 * 4096));
        assert!(!done.fits(&key, 8192, 3 * 4096));

        // A later entry of that name that is not a file: nothing holds.
        assert!(!watch.begin(Path::new(profile::SIGNAL_DB), false));
        assert!(watch.done.is_none());

        // No config.json unpacked yet, or not a raw chain: nothing is watched.
        let empty = tempfile::tempdir().unwrap();
        let mut unkeyed = FullCopyWatch::new(empty.path(), Some(4096));
        assert!(!unkeyed.begin(Path::new(profile::SIGNAL_DB), true));
        let mut decrypted = FullCopyWatch::new(dir.path(), None);
        assert!(!decrypted.begin(Path::new(profile::SIGNAL_DB), true));

        // A file that is not a whole number of pages leaves no pass.
        let mut torn = watch_with_config(dir.path());
        assert!(torn.begin(Path::new(profile::SIGNAL_DB), true));
        torn.bytes(&[1u8; 5000]).unwrap();
        torn.end().unwrap();
        assert!(torn.done.is_none());
    }
}
