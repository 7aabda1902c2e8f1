//! The repository's id: a random name the backup side gives a repository at its first
//! signed write and keeps in `repository.json`, signed. Every signature made since names
//! it ([`crate::signing`]), so a genuine manifest or lease copied from another repository
//! signed with the same key does not verify here (issue 22, item 3).
//!
//! Why an id in the repository, not its location: a bucket renamed, copied to another
//! provider, or a local directory moved keeps its objects, so the id moves with them and
//! the history still verifies; a location (`s3://bucket/prefix`) would strand every
//! snapshot on a migration, and is spelled differently by different clients (an endpoint,
//! a trailing slash).
//!
//! `repository.json` is itself an object a bucket writer can replace (with another
//! repository's, signed by the same key). It is not trusted alone: a reader refuses to
//! choose any snapshot automatically while a manifest signed with the verify key names
//! another repository ([`crate::repo`]), whichever of the two is the copy.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::layout::{MAX_RECORD, REPOSITORY_ID};
use crate::signing::{Signer, Verifier};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// 32 hex digits.
    id: String,
    created_at: DateTime<Utc>,
    /// minisign signature by the signing key over the record without it (compact JSON),
    /// trusted comment `ghostwire-backup repository.json`.
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

/// What a reader knows of the repository's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// `repository.json` verifies with the verify key: the id.
    Id(String),
    /// No `repository.json`: no signature made by this version was ever written here.
    Absent,
    /// A `repository.json` the verify key does not accept, and why.
    Untrusted(String),
}

impl Known {
    pub fn id(&self) -> Option<&str> {
        match self {
            Known::Id(id) => Some(id),
            Known::Absent | Known::Untrusted(_) => None,
        }
    }
}

/// Reads `repository.json` (at most [`MAX_RECORD`] bytes) and checks its signature.
pub async fn read(store: &dyn Store, verifier: &Verifier) -> Result<Known> {
    let bytes = match store.get_versioned(REPOSITORY_ID, MAX_RECORD).await {
        Ok(None) => return Ok(Known::Absent),
        Ok(Some((bytes, _))) => bytes,
        Err(err @ StoreError::TooLarge { .. }) => return Ok(Known::Untrusted(err.to_string())),
        Err(err) => return Err(err).context("cannot read the repository's repository.json"),
    };
    let record: Record = match serde_json::from_slice(&bytes) {
        Ok(record) => record,
        Err(err) => return Ok(Known::Untrusted(format!("it is not JSON of an id ({err})"))),
    };
    let checked = match &record.signature {
        None => Err(crate::signing::Rejected::Unsigned),
        Some(signature) => verifier
            .verify(REPOSITORY_ID, None, &record.signed_bytes(), signature)
            .map(drop),
    };
    Ok(match checked {
        Ok(()) if is_id(&record.id) => Known::Id(record.id),
        Ok(()) => Known::Untrusted(format!("its id {:?} is not 32 hex digits", record.id)),
        Err(why) => Known::Untrusted(why.to_string()),
    })
}

/// The id the backup side signs with: `repository.json`'s, or a new one written now
/// (create-if-absent, so two first backups agree on one). A `repository.json` its own key
/// does not verify stops the write: signing under another id would split the history.
pub async fn for_signing(store: &dyn Store, location: &str, signer: &Signer) -> Result<String> {
    for _ in 0..3 {
        match read(store, signer.verifier()).await? {
            Known::Id(id) => return Ok(id),
            Known::Untrusted(why) => bail!(
                "the repository {location}'s repository.json (its id, which signatures name) \
                 is not trustworthy: {why}. Someone with write access to the bucket replaced \
                 or damaged it. Put back the original (a copy, or an object version), or \
                 delete it if this repository has no snapshot signed since ghostwire-backup \
                 named repositories; the next backup then names a new id"
            ),
            Known::Absent => {}
        }
        let mut record = Record {
            id: hex::encode(rand::random::<[u8; 16]>()),
            created_at: Utc::now(),
            signature: None,
        };
        record.signature = Some(signer.sign(REPOSITORY_ID, None, &record.signed_bytes()));
        let json = serde_json::to_vec_pretty(&record).expect("a record serializes");
        match store.put_if(REPOSITORY_ID, Bytes::from(json), None).await {
            Ok(_) => {
                tracing::info!(repository = %record.id, "named the repository: signatures name this id from now on");
                return Ok(record.id);
            }
            Err(StoreError::Conflict(_)) => continue, // another writer named it first
            Err(err) => return Err(err).context("cannot write the repository's repository.json"),
        }
    }
    bail!("the repository {location}'s repository.json kept changing while being written")
}

fn is_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}
