//! `manifests.json`: every manifest the backup side committed, in one object it signs
//! (naming the repository), so that a listing costs a LIST and one GET instead of two GETs
//! per snapshot (issue 22, item 11).
//!
//! It is a cache of what was signed, never the source of truth: the LIST of `snapshots/`
//! says which snapshots exist. A reader takes a manifest from it only when the manifest
//! and signature objects the LIST shows have the sizes recorded with it; anything else (a
//! manifest newer than the list, one written by an older version, one a bucket writer
//! planted or replaced with other bytes) is read and verified one by one as before, so
//! the fail-closed rules of [`crate::repo`] see every unverifiable manifest. A list that
//! does not verify, names another repository, or is too large is ignored whole. A list put
//! back from earlier only holds fewer manifests. Replacing a committed manifest with junk
//! of exactly its size leaves the list's copy in use: the genuine, signed manifest.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::signing::{Named, Signer, Verifier};
use crate::store::{Store, StoreError};

pub const KEY: &str = "manifests.json";

/// Room for some 4 000 manifests (about 2 KiB each), small enough that parsing a planted
/// list of this size keeps a command within the memory the bounded reads promise
/// (docs/reliability.md). A larger list is ignored: listings read every manifest.
const MAX_SIZE: u64 = 8 << 20;

/// One committed manifest: its exact bytes, and the sizes its objects had when committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub manifest: String,
    pub manifest_size: u64,
    pub signature_size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    written_at: DateTime<Utc>,
    entries: BTreeMap<String, Entry>,
    /// minisign signature over the record without it (compact JSON), trusted comment
    /// `ghostwire-backup manifests.json in repository <id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
}

impl Record {
    fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = Record {
            signature: None,
            ..self.clone()
        };
        serde_json::to_vec(&unsigned).expect("a record serializes")
    }
}

/// What a reader finds: the entries if the list verifies for `repository`, and the
/// object's version when there is one (trusted or not, so that a writer can replace it).
pub struct Found {
    pub entries: Option<BTreeMap<String, Entry>>,
    pub version: Option<String>,
}

/// Reads the list (at most [`MAX_SIZE`] bytes) and checks it for `repository`; entries
/// `None` (and a debug line saying why) when there is none or it cannot be trusted.
pub async fn read(
    store: &dyn Store,
    verifier: &Verifier,
    repository: Option<&str>,
) -> Result<Found> {
    let (bytes, version) = match store.get_versioned(KEY, MAX_SIZE).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return Ok(Found {
                entries: None,
                version: None,
            });
        }
        Err(err @ StoreError::TooLarge { .. }) => {
            // Too large to read, so its version is unknown: a writer cannot replace it
            // by compare-and-swap, and readers read every manifest until it is removed.
            ignored::<()>(&err.to_string());
            return Ok(Found {
                entries: None,
                version: None,
            });
        }
        Err(err) => return Err(err).context("cannot read the repository's manifests.json"),
    };
    let entries = trusted_entries(&bytes, verifier, repository);
    Ok(Found {
        entries,
        version: Some(version),
    })
}

fn trusted_entries(
    bytes: &[u8],
    verifier: &Verifier,
    repository: Option<&str>,
) -> Option<BTreeMap<String, Entry>> {
    let record: Record = match serde_json::from_slice(bytes) {
        Ok(record) => record,
        Err(err) => return ignored(&format!("not a list of manifests ({err})")),
    };
    let Some(signature) = &record.signature else {
        return ignored("it has no signature");
    };
    match verifier.verify(KEY, repository, &record.signed_bytes(), signature) {
        Ok(Named::This) => Some(record.entries),
        Ok(Named::Nothing) => ignored("its signature names no repository"),
        Err(why) => ignored(&why.to_string()),
    }
}

fn ignored<T>(why: &str) -> Option<T> {
    tracing::debug!(
        problem = why,
        "not using manifests.json: reading every manifest"
    );
    None
}

/// Adds a committed manifest to the list and drops the entries whose manifests are gone
/// (`existing`: the manifest ids a LIST shows), by compare-and-swap, retried when another
/// backup wrote it meanwhile. The caller treats a failure as a warning: readers then
/// read the missing manifests one by one.
pub async fn add(
    store: &dyn Store,
    signer: &Signer,
    repository: &str,
    committed: (&str, Entry),
    existing: &std::collections::BTreeSet<String>,
) -> Result<()> {
    for _ in 0..4 {
        let found = read(store, signer.verifier(), Some(repository)).await?;
        let (mut entries, version) = (found.entries.unwrap_or_default(), found.version);
        entries.retain(|id, _| existing.contains(id));
        entries.insert(committed.0.to_string(), committed.1.clone());
        let mut record = Record {
            written_at: Utc::now(),
            entries,
            signature: None,
        };
        record.signature = Some(signer.sign(KEY, Some(repository), &record.signed_bytes()));
        let json = serde_json::to_vec(&record).expect("a record serializes");
        match store
            .put_if(KEY, Bytes::from(json), version.as_deref())
            .await
        {
            Ok(_) => return Ok(()),
            // There, but unread (over its bound): a cache, so it is replaced unread.
            Err(StoreError::Conflict(_)) if version.is_none() => store.delete(KEY).await?,
            Err(StoreError::Conflict(_)) => continue,
            Err(err) => return Err(err).context("cannot write manifests.json"),
        }
    }
    anyhow::bail!("manifests.json kept changing while being rewritten")
}
