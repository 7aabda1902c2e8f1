//! The repository layout: what a repository holds and under which key. Every object key is
//! built by [`Object::key`] and read back by [`Object::parse`]; nothing else spells a key
//! (docs/format.md describes the same table for readers without ghostwire-backup).
//!
//! ```text
//! archives/<id>.tar.zst.age   the archive (tar → zstd → age), uploaded first: one object
//!                             in formats 1–3; from format 4 in numbered parts,
//!                             archives/<id>.tar.zst.age.000001, .000002, … (like `split`)
//! indexes/<id>.json.zst.age   the file index (JSON lines → zstd → age)
//! snapshots/<id>.json.minisig the manifest's signature (minisign), uploaded before it
//! snapshots/<id>.json         the manifest, uploaded last: the commit point
//! locks/<id>.json             a repository lock (backups share, prune is alone)
//! lease.json                  which instance may run (single-writer fencing)
//! repository.json             the repository's id, which new signatures name
//! ```

use crate::store::Retention;

/// One object of a repository. The snapshot's parts carry the snapshot id; a lock carries
/// its own id (time-sortable like a snapshot id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Object {
    Archive(String),
    Index(String),
    Manifest(String),
    Signature(String),
    Lock(String),
    Lease,
}

/// Directory and file name ending of each kind that has an id.
const ARCHIVES: (&str, &str) = ("archives/", ".tar.zst.age");
const INDEXES: (&str, &str) = ("indexes/", ".json.zst.age");
const MANIFESTS: (&str, &str) = ("snapshots/", ".json");
const SIGNATURES: (&str, &str) = ("snapshots/", ".json.minisig");
const LOCKS: (&str, &str) = ("locks/", ".json");
const LEASE: &str = "lease.json";
/// The repository's id ([`crate::repo_id`]): no [`Object`], since nothing lists, prunes
/// or forgets it.
pub const REPOSITORY_ID: &str = "repository.json";

/// Bounds of [`Object::max_size`], each far above what this tool writes (a manifest's
/// chain list grows with `--full-every`, a few dozen bytes a snapshot).
const MAX_MANIFEST: u64 = 1 << 20;
const MAX_SIGNATURE: u64 = 16 << 10;
pub const MAX_RECORD: u64 = 64 << 10;

/// A directory and a file ending: how one kind of object is named.
type Naming = (&'static str, &'static str);
/// A variant's constructor, such as `Object::Lock`.
type Constructor = fn(String) -> Object;

impl Object {
    /// The object's key in the store.
    pub fn key(&self) -> String {
        match self.naming() {
            Some(((dir, ending), id)) => format!("{dir}{id}{ending}"),
            None => LEASE.to_string(),
        }
    }

    /// Part `number` (from 1) of an archive stored in parts: the archive's key and the
    /// number in six digits (a manifest names at most
    /// [`crate::manifest::MAX_ARCHIVE_PARTS`]), so that the parts sort in order, as `split -d` names them.
    pub fn part_key(&self, number: u64) -> String {
        format!("{}.{number:06}", self.key())
    }

    /// The object a key names, or `None` for a key that is not part of the layout (a
    /// stray file, a `*.partial-*` upload, a key of a future version). A part of an
    /// archive ([`Object::part_key`]) names its archive.
    pub fn parse(key: &str) -> Option<Self> {
        if key == LEASE {
            return Some(Object::Lease);
        }
        if let Some((archive, number)) = key.rsplit_once('.')
            && number.len() >= 6
            && number.bytes().all(|b| b.is_ascii_digit())
        {
            return Self::parse(archive).filter(|object| matches!(object, Object::Archive(_)));
        }
        let kinds: [(Naming, Constructor); 5] = [
            (ARCHIVES, Object::Archive),
            (INDEXES, Object::Index),
            (SIGNATURES, Object::Signature),
            (MANIFESTS, Object::Manifest),
            (LOCKS, Object::Lock),
        ];
        kinds.into_iter().find_map(|((dir, ending), kind)| {
            let id = key.strip_prefix(dir)?.strip_suffix(ending)?;
            is_id(id).then(|| kind(id.to_string()))
        })
    }

    /// The snapshot (or lock) id in the key; `None` for the lease.
    pub fn id(&self) -> Option<&str> {
        self.naming().map(|(_, id)| id)
    }

    /// The key prefix every object of `kind` shares: what to list to find them all.
    /// `kind` is a variant's constructor, such as `Object::Lock`.
    pub fn prefix_of(kind: fn(String) -> Object) -> &'static str {
        match kind(String::new()).naming() {
            Some(((dir, _), _)) => dir,
            None => LEASE,
        }
    }

    /// Whether the store keeps this object under its retention (S3 Object Lock): the parts
    /// of a snapshot do; locks and the lease must stay replaceable and deletable.
    pub fn retention(&self) -> Retention {
        match self {
            Object::Archive(_) | Object::Index(_) | Object::Manifest(_) | Object::Signature(_) => {
                Retention::Retain
            }
            Object::Lock(_) | Object::Lease => Retention::Replaceable,
        }
    }

    /// The most a small object of this kind can hold, read no further: a manifest is a
    /// few KiB, a signature a few hundred bytes, a lock or the lease a few hundred. `None`
    /// for the archive and the index, whose sizes the signed manifest states.
    pub fn max_size(&self) -> Option<u64> {
        match self {
            Object::Manifest(_) => Some(MAX_MANIFEST),
            Object::Signature(_) => Some(MAX_SIGNATURE),
            Object::Lock(_) | Object::Lease => Some(MAX_RECORD),
            Object::Archive(_) | Object::Index(_) => None,
        }
    }

    fn naming(&self) -> Option<((&'static str, &'static str), &str)> {
        match self {
            Object::Archive(id) => Some((ARCHIVES, id)),
            Object::Index(id) => Some((INDEXES, id)),
            Object::Manifest(id) => Some((MANIFESTS, id)),
            Object::Signature(id) => Some((SIGNATURES, id)),
            Object::Lock(id) => Some((LOCKS, id)),
            Object::Lease => None,
        }
    }
}

impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

/// An id is one path segment: never empty, never `.` or `..`, no `/`.
fn is_id(id: &str) -> bool {
    !id.is_empty() && id != "." && id != ".." && !id.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_key() {
        let id = "20261126T233000.123Z-9f3a1c2b".to_string();
        for object in [
            Object::Archive(id.clone()),
            Object::Index(id.clone()),
            Object::Manifest(id.clone()),
            Object::Signature(id.clone()),
            Object::Lock(id.clone()),
            Object::Lease,
        ] {
            assert_eq!(Object::parse(&object.key()), Some(object.clone()));
        }
        assert_eq!(
            Object::Archive(id.clone()).key(),
            format!("archives/{id}.tar.zst.age")
        );
        assert_eq!(
            Object::Index(id.clone()).key(),
            format!("indexes/{id}.json.zst.age")
        );
        assert_eq!(
            Object::Manifest(id.clone()).key(),
            format!("snapshots/{id}.json")
        );
        assert_eq!(
            Object::Signature(id.clone()).key(),
            format!("snapshots/{id}.json.minisig")
        );
        assert_eq!(Object::Lock(id.clone()).key(), format!("locks/{id}.json"));
        assert_eq!(Object::Lease.key(), "lease.json");
    }

    #[test]
    fn an_archive_part_names_its_archive() {
        let archive = Object::Archive("20261126T233000.123Z-9f3a1c2b".into());
        assert_eq!(
            archive.part_key(7),
            "archives/20261126T233000.123Z-9f3a1c2b.tar.zst.age.000007"
        );
        for number in [1, 999_999, 1_000_000] {
            assert_eq!(
                Object::parse(&archive.part_key(number)),
                Some(archive.clone())
            );
        }
        // Parts sort in order as text (what `ls` and a listing give `cat`).
        assert!(archive.part_key(9) < archive.part_key(10));
        for key in [
            "archives/x.tar.zst.age.00001",
            "archives/x.tar.zst.age.00000a",
            "indexes/x.json.zst.age.000001",
            "snapshots/x.json.000001",
        ] {
            assert_eq!(Object::parse(key), None, "{key}");
        }
    }

    #[test]
    fn keys_outside_the_layout_are_not_objects() {
        for key in [
            "archives/x.tar.zst",
            "archives/.tar.zst.age",
            "archives/a/b.tar.zst.age",
            "snapshots/x.json.partial-0011",
            "snapshots/x.txt",
            "indexes/x.json",
            "other/x.json",
            "lease.json.lock",
        ] {
            assert_eq!(Object::parse(key), None, "{key}");
        }
    }

    #[test]
    fn listing_prefixes_and_retention() {
        assert_eq!(Object::prefix_of(Object::Archive), "archives/");
        assert_eq!(Object::prefix_of(Object::Manifest), "snapshots/");
        assert_eq!(Object::prefix_of(Object::Lock), "locks/");
        assert_eq!(Object::Archive("a".into()).retention(), Retention::Retain);
        assert_eq!(Object::Lock("a".into()).retention(), Retention::Replaceable);
        assert_eq!(Object::Lease.retention(), Retention::Replaceable);
    }
}
