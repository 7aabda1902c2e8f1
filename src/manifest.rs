//! The snapshot manifest: a small plain-JSON object written last, after the archive. A
//! snapshot exists if and only if its manifest does. It holds no personal data (ids, times,
//! sizes, counts and hashes), so `snapshots` and `verify --quick` work without the key.
//! The repository format is described in docs/format.md; change both together.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The newest format this version reads, and the one it writes. Bump when a reader of the
/// previous version could misread a new snapshot. Format 2: Signal's database may be a
/// full copy plus page deltas (docs/format.md, "Database deltas"), which a format-1 reader
/// would restore as the stale full copy. Format 3: Signal's
/// database is raw pages (a raw full copy, plus raw deltas), named by a raw page digest
/// that a format-2 reader would take for a damaged archive. Format 4: the archive is
/// stored in parts ([`ArchiveInfo::parts`]), which a format-3 reader would not find; every
/// snapshot this version writes is format 4.
pub const FORMAT_VERSION: u32 = 4;

/// The most parts an archive may be stored in: a bound on what a manifest can make a
/// restore ask for, and the last number of six digits, so that `archives/<id>.tar.zst.age*`
/// lists every part in order (docs/format.md). The backup sizes its parts to stay under
/// 10,000.
pub const MAX_ARCHIVE_PARTS: u64 = 999_999;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub agent_version: String,
    /// Taken on shutdown, after Signal stopped: the freshest state, the one to restore for
    /// a green deploy.
    #[serde(default)]
    pub r#final: bool,
    /// The lease holder that took it (the sidecar); absent for a backup run by hand or by
    /// a CronJob. A newer one than a lease's handoff proves that lease is not current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    pub archive: ArchiveInfo,
    /// The encrypted file index (see src/index.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<ObjectRecord>,
    /// The snapshot this one is incremental on; absent for a full snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Incrementals since the chain's full snapshot: 0 for a full one.
    #[serde(default)]
    pub chain_length: u32,
    /// The chain's full snapshot; absent on a full snapshot (it is its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_full: Option<String>,
    /// Snapshots whose archives hold files this one restores, itself included, oldest
    /// first. Prune keeps them; restore reads each once.
    #[serde(default)]
    pub depends_on: Vec<String>,
    pub content: ContentCounts,
    /// The Signal database, if the home held a Signal profile.
    pub signal_db: Option<DatabaseInfo>,
    #[serde(default)]
    pub attachments: AttachmentCheck,
    /// SHA-256 over the file index this snapshot leaves in the local catalog
    /// ([`crate::catalog::digest`]): the next backup trusts the catalog, which lives on the
    /// user's volume, only if its rows still hash to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_digest: Option<String>,
}

/// The archive object and how to open it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArchiveInfo {
    pub key: String,
    /// Bytes of ciphertext as stored.
    pub size: u64,
    /// SHA-256 of the stored ciphertext: catches a swapped or damaged object without the
    /// secret key.
    pub sha256: String,
    /// Always "tar+zstd+age" in format 1: `age -d | zstd -d | tar -x` reads it.
    pub encoding: String,
    /// The age header, pinned: a restore, which decrypts, checks this instead of hashing
    /// every byte (absent from older snapshots; `sha256` is still written, for checks without the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderPin>,
    /// How the archive is stored in parts (format 4); absent: one object under `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<ArchiveParts>,
}

/// An archive stored as numbered objects ([`crate::layout::Object::part_key`]), each
/// `size` bytes but the last, which holds the rest: concatenated in order they are the
/// archive. Several small objects rather than one multipart upload: each part is a plain
/// PUT a server stores as it arrives, with no completion step that copies the whole
/// archive again, and a restore reads them one after another, the next already asked for.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ArchiveParts {
    pub size: u64,
}

impl ArchiveParts {
    /// The parts of an archive of `archive_size` bytes: `(part number, bytes)`, in order,
    /// numbered from 1, the last holding the rest.
    pub fn ranges(&self, archive_size: u64) -> Vec<(u64, u64)> {
        let part = self.size.max(1);
        (0..archive_size.div_ceil(part))
            .map(|k| (k + 1, part.min(archive_size - k * part)))
            .collect()
    }
}

/// The SHA-256 of an archive's first `bytes` bytes: its age header (recipient stanzas and
/// MAC) and the payload nonce after it. Those bytes fix the payload key, which only a
/// holder of an identity can derive, and every 64 KiB chunk of the payload is
/// ChaCha20-Poly1305-authenticated under it, in order, the last one marked: an archive
/// with this header that decrypts to its end and has the recorded size is the one the
/// backup wrote, as surely as one whose every byte hashes to `sha256`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeaderPin {
    pub bytes: u64,
    pub sha256: String,
}

/// A small object of the snapshot and how to check it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectRecord {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContentCounts {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// Bytes of file content in the archive, before compression.
    pub bytes: u64,
    /// SQLite databases archived as consistent snapshots (the Signal database included).
    pub sqlite_snapshots: u64,
    /// Files that kept changing while they were read; archived as last read and reported.
    pub changed_while_read: u64,
    /// Files that vanished between listing and reading (normal for caches and
    /// disappearing-message attachments).
    pub vanished: u64,
    /// Paths over PATH_MAX that no program can open, and directories nested over 256
    /// levels: not in the snapshot, reported here.
    #[serde(default)]
    pub too_long_skipped: u64,
    /// Files the snapshot restores from older archives (unchanged since its parent).
    #[serde(default)]
    pub reused_files: u64,
    /// Paths gone since the chain's full snapshot: the archive's deletion list.
    #[serde(default)]
    pub deleted: u64,
    /// Sparse files refused (mostly holes: see `home::sparse`): not in the snapshot.
    #[serde(default)]
    pub sparse_skipped: u64,
}

/// `signal_db.check` of a copy no whole-database check ran on.
pub const NOT_CHECKED: &str = "not checked";

/// The check a backup runs on a full copy, beside its upload: every page's HMAC. The
/// structural checks (`quick_check`, `integrity_check`) read and decode every b-tree, about
/// 10 s of a core per GiB: on two cores, beside zstd, age and the upload, they doubled a
/// full backup. They run in the scheduled `verify` instead, on every snapshot.
pub const COPY_CHECKS: [&str; 1] = ["cipher_integrity_check"];

/// What `signal_db.check` "ok" stands for in a snapshot written before the `checks` field.
const CHECKS_BEFORE_THE_FIELD: [&str; 2] = ["quick_check", "cipher_integrity_check"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatabaseInfo {
    /// Signal's schema version (`PRAGMA user_version`): restore into the same or a newer
    /// Signal.
    pub user_version: i64,
    /// What the backup's check of its copy found: "ok" when [`COPY_CHECKS`] passed (in
    /// snapshots of earlier agents, `quick_check` too), the first problems reported, or
    /// [`NOT_CHECKED`] for a copy taken without them (the final snapshot, whose downtime
    /// they would lengthen: the scheduled `verify` runs the full `integrity_check` on
    /// it). A reader that does not know [`NOT_CHECKED`] takes it as "not ok" and has its
    /// restore gate run the full check itself.
    pub check: String,
    /// The whole-database checks the copy passed, by their pragma's name; absent in a
    /// snapshot written before this field, where `check` "ok" means both passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<String>>,
    pub bytes: u64,
    /// Pages of the database this snapshot archived as a delta on its parent's version
    /// (docs/format.md, "Database deltas"); absent when it archived a full copy (or its
    /// parent's version was unchanged and reused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_pages: Option<u64>,
}

impl DatabaseInfo {
    /// Whether a check ran on the copy and found problems (not merely: none ran).
    pub fn check_failed(&self) -> bool {
        self.check != "ok" && self.check != NOT_CHECKED
    }

    /// The whole-database checks the copy passed.
    pub fn passed_checks(&self) -> Vec<String> {
        match (&self.checks, self.check.as_str()) {
            (Some(checks), _) => checks.clone(),
            (None, "ok") => CHECKS_BEFORE_THE_FIELD
                .iter()
                .map(|c| c.to_string())
                .collect(),
            (None, _) => Vec::new(),
        }
    }
}

/// Attachment files the database snapshot references, checked against the archive.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AttachmentCheck {
    pub referenced: u64,
    /// Referenced but not in the archive: deleted by Signal after the database snapshot
    /// (expired disappearing messages), or missing on the live volume already.
    pub missing: u64,
}

impl Manifest {
    /// The full snapshot at the root of this one's chain.
    pub fn full_id(&self) -> &str {
        self.chain_full.as_deref().unwrap_or(&self.id)
    }

    /// The snapshots whose archives a restore of this one reads, oldest first.
    pub fn archives_needed(&self) -> Vec<String> {
        if self.depends_on.is_empty() {
            vec![self.id.clone()]
        } else {
            self.depends_on.clone()
        }
    }

    /// Whether this manifest is what the object `snapshots/<id>.json` may hold: its id, its
    /// objects' keys and its chain all follow from `id`, and `id` is not from the future.
    /// The signature covers the manifest, so this binds the signed content to the name a
    /// restore chose it by: a genuine manifest copied under a newer (or a 2099) id fails.
    pub fn check_names(&self, id: &str, now: DateTime<Utc>) -> Result<(), String> {
        use crate::layout::Object;
        if self.id != id {
            return Err(format!("it says it is snapshot {}", self.id));
        }
        if self.archive.key != Object::Archive(id.to_string()).key()
            || self
                .index
                .as_ref()
                .is_some_and(|index| index.key != Object::Index(id.to_string()).key())
        {
            return Err("it names objects of another snapshot".into());
        }
        if let Some(parts) = self.archive.parts
            && (parts.size == 0 || self.archive.size.div_ceil(parts.size) > MAX_ARCHIVE_PARTS)
        {
            return Err(format!(
                "its archive of {} bytes is said to be in parts of {} bytes",
                self.archive.size, parts.size
            ));
        }
        let earlier = self.parent.iter().chain(&self.chain_full);
        if earlier
            .chain(&self.depends_on)
            .any(|other| other.as_str() > id)
        {
            return Err("it depends on a snapshot newer than itself".into());
        }
        match id_time(id) {
            Some(taken) if taken <= now + FUTURE_SKEW => Ok(()),
            Some(taken) => Err(format!(
                "its id is dated {}, in the future",
                taken.to_rfc3339()
            )),
            None => Err("its id is not a snapshot id".into()),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        json.push(b'\n');
        json
    }

    /// Parses a manifest, refusing formats this version does not know.
    pub fn from_json(bytes: &[u8], key: &str) -> Result<Self, ManifestError> {
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let key = key.to_string();
        let version: Version = match serde_json::from_slice(bytes) {
            Ok(version) => version,
            Err(source) => return Err(ManifestError::NotJson { key, source }),
        };
        if version.format > FORMAT_VERSION {
            return Err(ManifestError::NewerFormat {
                key,
                format: version.format,
            });
        }
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Malformed { key, source })
    }
}

/// Why a manifest cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Written by a newer ghostwire-backup. Never skipped like a damaged one: a `latest`
    /// that silently fell back to an older snapshot would restore stale Signal state.
    #[error(
        "snapshot manifest {key} has format {format}, but this ghostwire-backup reads up to \
         format {FORMAT_VERSION}: this snapshot was written by a newer ghostwire-backup; \
         upgrade to read it"
    )]
    NewerFormat { key: String, format: u32 },
    #[error("manifest {key} is not valid JSON")]
    NotJson {
        key: String,
        source: serde_json::Error,
    },
    #[error("manifest {key} is malformed")]
    Malformed {
        key: String,
        source: serde_json::Error,
    },
}

/// How far ahead of this host's clock a snapshot id may be dated (another host's clock
/// may run a little fast); anything later is refused, so a forged far-future id can never
/// pin `latest`.
pub const FUTURE_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// When the snapshot (or lock) with this id was started, from the id's time part.
pub fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let time = id.get(..19)?;
    chrono::NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%S%.3f")
        .ok()
        .filter(|_| id.as_bytes().get(19) == Some(&b'Z'))
        .map(|naive| naive.and_utc())
}

/// A new, time-sortable snapshot id such as `20261126T233000.123Z-9f3a1c2b`. Milliseconds,
/// because the daemon's final snapshot can start in the same second as a scheduled one and
/// must still sort after it.
pub fn new_snapshot_id(at: DateTime<Utc>) -> String {
    format!(
        "{}-{:08x}",
        at.format("%Y%m%dT%H%M%S%.3fZ"),
        rand::random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let now = Utc::now();
        Manifest {
            format: FORMAT_VERSION,
            id: new_snapshot_id(now),
            started_at: now,
            finished_at: now,
            agent_version: "test".into(),
            r#final: false,
            lease_owner: None,
            archive: ArchiveInfo {
                key: "archives/x.tar.zst.age".into(),
                size: 1,
                sha256: "00".into(),
                encoding: "tar+zstd+age".into(),
                header: None,
                parts: None,
            },
            index: None,
            parent: None,
            chain_length: 0,
            chain_full: None,
            depends_on: Vec::new(),
            content: ContentCounts::default(),
            signal_db: None,
            attachments: AttachmentCheck::default(),
            catalog_digest: None,
        }
    }

    #[test]
    fn manifest_round_trips_through_json() {
        let manifest = sample();
        assert_eq!(
            Manifest::from_json(&manifest.to_json(), "k").unwrap(),
            manifest
        );
    }

    #[test]
    fn a_newer_format_is_refused_with_upgrade_advice() {
        let mut json: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        json["format"] = (FORMAT_VERSION + 1).into();
        let err = Manifest::from_json(json.to_string().as_bytes(), "k").unwrap_err();
        assert!(
            err.to_string()
                .contains("written by a newer ghostwire-backup"),
            "{err}"
        );
    }

    #[test]
    fn malformed_json_names_the_manifest() {
        let err = Manifest::from_json(b"{\"format\": 1, \"id\": 3", "snapshots/x.json");
        let err = err.unwrap_err().to_string();
        assert!(
            err.contains("snapshots/x.json") && err.contains("not valid JSON"),
            "{err}"
        );
    }

    #[test]
    fn names_bind_the_manifest_to_its_object_and_refuse_the_future() {
        let mut manifest = sample();
        let now = Utc::now();
        let id = manifest.id.clone();
        manifest.archive.key = crate::layout::Object::Archive(id.clone()).key();
        assert_eq!(manifest.check_names(&id, now), Ok(()));
        let newer = new_snapshot_id(now + chrono::TimeDelta::seconds(1));
        assert!(manifest.check_names(&newer, now).is_err(), "replayed");
        let mut future = manifest.clone();
        future.id = new_snapshot_id(now + chrono::TimeDelta::days(365 * 70));
        future.archive.key = crate::layout::Object::Archive(future.id.clone()).key();
        let err = future.check_names(&future.id.clone(), now).unwrap_err();
        assert!(err.contains("future"), "{err}");
        let mut elsewhere = manifest.clone();
        elsewhere.archive.key = "archives/other.tar.zst.age".into();
        assert!(elsewhere.check_names(&id, now).is_err());
        let mut later_parent = manifest;
        later_parent.parent = Some(newer);
        assert!(later_parent.check_names(&id, now).is_err());
    }

    #[test]
    fn a_manifest_may_not_ask_for_more_parts_than_six_digits_number() {
        let mut manifest = sample();
        let id = manifest.id.clone();
        manifest.archive.key = crate::layout::Object::Archive(id.clone()).key();
        manifest.archive.size = MAX_ARCHIVE_PARTS * 1000;
        for (size, ok) in [(1000, true), (999, false), (0, false)] {
            manifest.archive.parts = Some(ArchiveParts { size });
            let checked = manifest.check_names(&id, Utc::now());
            assert_eq!(checked.is_ok(), ok, "parts of {size} bytes: {checked:?}");
        }
    }

    #[test]
    fn snapshot_ids_sort_by_time() {
        let early = new_snapshot_id("2026-01-02T03:04:05Z".parse().unwrap());
        let late = new_snapshot_id("2026-01-02T03:04:06Z".parse().unwrap());
        assert!(early < late);
        assert!(early.starts_with("20260102T030405.000Z-"));
        assert_eq!(
            id_time(&early),
            Some("2026-01-02T03:04:05Z".parse().unwrap())
        );
        assert_eq!(id_time("zzzz"), None);
    }
}
