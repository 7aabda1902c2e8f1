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

use sha2::{Digest, Sha256};

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
}
