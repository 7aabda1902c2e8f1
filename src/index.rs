//! The file index of a snapshot: every path it restores, with the metadata that tells
//! the next backup whether a file changed, and for files the snapshot whose archive holds
//! the content. It is what makes a snapshot incremental: unchanged files are not archived
//! again, their entries point at an older archive.
//!
//! Each snapshot uploads its index encrypted (JSON lines → zstd → age) next to its archive,
//! so a restore knows exactly which entry of which archive to take. The local catalog keeps
//! a plaintext copy of the latest index, as a cache for the backup side, which holds no
//! secret key.

use std::ffi::OsStr;
use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    /// A tombstone: the path was deleted since the chain's full snapshot. Kept so that every
    /// archive's deletion list covers the whole chain (docs/format.md), whichever archives
    /// prune removed in between.
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    #[serde(with = "path_text")]
    pub path: PathBuf,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Files: SHA-256 of the content as archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Files: the snapshot whose archive holds the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// Signal's database only: what its files looked like just before the snapshot was
    /// taken ([`crate::signal_db::Stamp`]). The next backup skips the database if it still
    /// looks so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_stamp: Option<String>,
    /// Signal's database only: how to rebuild it from the full copy in `archive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_chain: Option<DbChain>,
}

/// Signal's database as a full copy plus page deltas ([`crate::raw_pages`], or in formats 1
/// and 2 [`crate::pages`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbChain {
    /// Snapshots whose archives hold a delta of the database, applied in this order to the
    /// full copy the entry's `archive` holds; empty when that copy is this version.
    #[serde(default)]
    pub deltas: Vec<String>,
    /// The [`crate::pages::PageList::digest`] of this version of the database, in hex: the
    /// rebuilt database must hash to it, and the next backup's delta is taken against it.
    pub pages: String,
    /// Bytes of all those deltas: past a share of the database, the next copy is full.
    #[serde(default)]
    pub delta_bytes: u64,
    /// Present when the chain is raw pages (format 3, [`crate::raw_pages`]): the page size,
    /// and `pages` is then a [`crate::raw_pages::RawPageList::digest`]. Absent: decrypted
    /// pages (formats 1 and 2, [`crate::pages`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_page_size: Option<u32>,
}

impl DbChain {
    pub fn is_raw(&self) -> bool {
        self.raw_page_size.is_some()
    }
}

impl IndexEntry {
    pub fn new(path: &Path, kind: EntryKind, metadata: &std::fs::Metadata) -> Self {
        Self {
            path: path.to_path_buf(),
            kind,
            size: if kind == EntryKind::File {
                metadata.len()
            } else {
                0
            },
            mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
            ctime_ns: metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec(),
            ino: metadata.ino(),
            mode: metadata.mode() & 0o7777,
            uid: metadata.uid(),
            gid: metadata.gid(),
            sha256: None,
            archive: None,
            db_stamp: None,
            db_chain: None,
        }
    }

    pub fn tombstone(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            kind: EntryKind::Deleted,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            sha256: None,
            archive: None,
            db_stamp: None,
            db_chain: None,
        }
    }

    /// Whether `current` is the same file version without reading it: every stat field
    /// agrees. `Some(false)` when the content certainly differs or the owner/mode changed
    /// (both need a new archive entry); `None` when only the inode or ctime moved, as after
    /// a restore onto a new volume — then the content hash decides. A restore also leaves
    /// the mtime cut to whole seconds (tar keeps no more), so that counts as a move too.
    pub fn unchanged(&self, current: &IndexEntry) -> Option<bool> {
        let same_content_stat = self.kind == current.kind
            && self.size == current.size
            && self.mode == current.mode
            && self.uid == current.uid
            && self.gid == current.gid;
        let restored_mtime = self.mtime_ns - self.mtime_ns.rem_euclid(1_000_000_000);
        if !same_content_stat {
            Some(false)
        } else if self.mtime_ns == current.mtime_ns
            && self.ino == current.ino
            && self.ctime_ns == current.ctime_ns
        {
            Some(true)
        } else if self.mtime_ns == current.mtime_ns || current.mtime_ns == restored_mtime {
            None
        } else {
            Some(false)
        }
    }
}

/// JSON strings must be UTF-8; Linux paths need not be. Paths that are not UTF-8 are
/// written as `hex:<bytes>` (and a UTF-8 path that starts with `hex:` as well, so the
/// encoding stays unambiguous).
mod path_text {
    use super::*;

    pub fn serialize<S: serde::Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
        match path.to_str() {
            Some(text) if !text.starts_with("hex:") => serializer.serialize_str(text),
            _ => serializer
                .serialize_str(&format!("hex:{}", hex::encode(path.as_os_str().as_bytes()))),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<PathBuf, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.strip_prefix("hex:") {
            Some(encoded) => {
                let bytes = hex::decode(encoded).map_err(serde::de::Error::custom)?;
                Ok(PathBuf::from(OsStr::from_bytes(&bytes)))
            }
            None => Ok(PathBuf::from(text)),
        }
    }
}

/// Encodes an index for upload: JSON lines, zstd, age.
pub fn seal(
    entries: &[IndexEntry],
    recipients: &[Box<dyn age::Recipient + Send>],
) -> Result<Vec<u8>> {
    let encryptor = age::Encryptor::with_recipients(
        recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient),
    )?;
    let mut sealed = Vec::new();
    let mut zstd = zstd::stream::write::Encoder::new(encryptor.wrap_output(&mut sealed)?, 3)?;
    for entry in entries {
        serde_json::to_writer(&mut zstd, entry)?;
        zstd.write_all(b"\n")?;
    }
    zstd.finish()?.finish()?;
    Ok(sealed)
}

/// Decodes an index downloaded from the repository.
pub fn open(
    sealed: &[u8],
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> Result<Vec<IndexEntry>> {
    let plain = crate::archive::open_plain_here(sealed, identities)
        .context("cannot decrypt the snapshot's index")?;
    let mut entries = Vec::new();
    for line in std::io::BufReader::new(plain).lines() {
        let line = line.map_err(crate::archive::explain_read_error)?;
        entries.push(serde_json::from_str(&line).context("the snapshot's index is malformed")?);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips_through_age_including_non_utf8_names() {
        let identity = age::x25519::Identity::generate();
        let recipients: Vec<Box<dyn age::Recipient + Send>> = vec![Box::new(identity.to_public())];
        let identities: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(identity)];
        let metadata = std::fs::metadata(".").unwrap();
        let mut odd = IndexEntry::new(
            Path::new(OsStr::from_bytes(b"caf\xe9")),
            EntryKind::File,
            &metadata,
        );
        odd.sha256 = Some("ab".into());
        odd.archive = Some("s1".into());
        let plain = IndexEntry::new(
            Path::new("hex:looks-encoded"),
            EntryKind::Directory,
            &metadata,
        );
        let entries = vec![odd, plain];
        let sealed = seal(&entries, &recipients).unwrap();
        assert_eq!(open(&sealed, &identities).unwrap(), entries);
    }

    #[test]
    fn a_moved_inode_with_the_same_stat_is_ambiguous_not_changed() {
        let metadata = std::fs::metadata(".").unwrap();
        let old = IndexEntry::new(Path::new("f"), EntryKind::File, &metadata);
        assert_eq!(old.unchanged(&old), Some(true));
        let restored = IndexEntry {
            ino: old.ino + 1,
            ctime_ns: old.ctime_ns + 5,
            ..old.clone()
        };
        assert_eq!(old.unchanged(&restored), None);
        let restored_from_tar = IndexEntry {
            mtime_ns: old.mtime_ns - old.mtime_ns.rem_euclid(1_000_000_000),
            ..restored.clone()
        };
        assert_eq!(old.unchanged(&restored_from_tar), None);
        let touched = IndexEntry {
            mtime_ns: old.mtime_ns + 1_000_000_000,
            ..old.clone()
        };
        assert_eq!(old.unchanged(&touched), Some(false));
        let grown = IndexEntry {
            size: old.size + 1,
            ..old.clone()
        };
        assert_eq!(old.unchanged(&grown), Some(false));
        let chmodded = IndexEntry {
            mode: 0o600,
            ctime_ns: old.ctime_ns + 5,
            ..old.clone()
        };
        assert_eq!(old.unchanged(&chmodded), Some(false));
    }
}
