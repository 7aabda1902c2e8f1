//! A repository: snapshots laid out on a [`Store`] as [`crate::layout`] says. The archive
//! is uploaded first, then the index, then the manifest's signature, then the manifest, the
//! commit point: an archive without a manifest is an interrupted backup, never listed, never
//! restored.
//!
//! Only manifests the verify key accepts count (see [`crate::signing`]): anyone who can
//! write to the bucket can put objects there, so an unverifiable manifest is reported and
//! ignored, never chosen, never able to stop the rest. The archive's and the index's
//! hashes are in the signed manifest, which makes them as trustworthy as it is.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;

use crate::exit::{self, Exit};
use crate::layout::Object;
use crate::manifest::{ArchiveInfo, Manifest, ManifestError};
use crate::parts::{self, Uploaded};
use crate::repo_id::Known;
use crate::signing::{Named, Rejected, Signer, Verifier};
use crate::store::local::LocalStore;
use crate::store::s3::{S3Options, S3Store};
use crate::store::{self, ChunkStream, ObjectReader, Store, StoreError};

#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn Store>,
    location: String,
    keys: Keys,
    /// The repository's id once `repository.json` verified ([`crate::repo_id`]): it
    /// never changes under a running process that trusts it.
    id: Arc<std::sync::Mutex<Option<String>>>,
}

/// What a repository signs with and trusts.
#[derive(Clone, Default)]
pub struct Keys {
    /// The backup side's signing key: commits and lease writes are signed with it, and
    /// its verify key checks the chain a backup continues.
    pub signer: Option<Arc<Signer>>,
    /// The verify key of the commands that only read (restore, verify, prune, check…).
    pub verifier: Option<Verifier>,
    /// Also accept manifests that have no signature at all (made before signing existed),
    /// with a warning. A signature that is present must still verify.
    pub allow_unsigned: bool,
}

/// A manifest object the verify key does not accept: which snapshot it claims to be by
/// its name, and why it is not one.
#[derive(Debug, Clone)]
pub struct Refused {
    pub id: String,
    pub why: String,
    /// Signed with the verify key but in another repository: proof that signed objects
    /// were copied between repositories (or `repository.json` replaced), whatever its date.
    pub foreign: bool,
}

/// How an accepted manifest is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signature {
    /// Naming this repository.
    Named,
    /// Before signatures named the repository.
    Legacy,
    /// Not at all: accepted only through `--allow-unsigned`.
    Unsigned,
}

/// A manifest object checked: the snapshot and how it is signed, or why the verify key
/// does not accept it.
type Verdict = std::result::Result<(Manifest, Signature), Refused>;

/// Manifests (each with its signature) read at once by a listing: enough to hide S3's
/// round trips, few enough for a small bucket server.
const PARALLEL_READS: usize = 16;

/// Every manifest object of a repository, sorted by id: the snapshots and the refused.
pub struct Listing {
    pub snapshots: Vec<Manifest>,
    pub refused: Vec<Refused>,
    /// The ids of the snapshots accepted without a signature (`--allow-unsigned`).
    pub unsigned: std::collections::BTreeSet<String>,
}

/// Which snapshot to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The newest snapshot.
    Latest,
    /// The newest snapshot marked final (taken after Signal stopped), else the newest.
    Final,
    /// Exactly the snapshot the last lease holder released the lease with (its final
    /// snapshot), or an error saying why there is none: what green restores.
    Handoff,
    Id(String),
}

impl std::str::FromStr for Selector {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "latest" => Selector::Latest,
            "final" => Selector::Final,
            "handoff" => Selector::Handoff,
            id => Selector::Id(id.to_string()),
        })
    }
}

/// Rejects a location that looks like a URL but is not `s3://…` (`s3:/bucket`,
/// `S3://bucket`, `minio://…`): taken as a local directory it would quietly become
/// `./s3:/bucket`. A directory whose name has a colon can be written `./name:…`.
pub fn check_location(location: &str) -> std::result::Result<(), String> {
    if location.is_empty() {
        return Err("the repository is empty: use s3://BUCKET/PREFIX or a directory".into());
    }
    if location.starts_with("s3://") {
        return Ok(());
    }
    let scheme = location.split_once(':').map(|(scheme, _)| scheme);
    let looks_like_url = scheme.is_some_and(|scheme| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if looks_like_url {
        return Err(format!(
            "repository {location:?} looks like a URL but is not one this tool reads: use \
             s3://BUCKET[/PREFIX] for S3, or a directory (write ./{location} for a directory \
             whose name has a colon)"
        ));
    }
    Ok(())
}

impl Repository {
    /// Opens `s3://bucket/prefix` or a local directory path.
    pub async fn open(location: &str, s3: &S3Options) -> Result<Self> {
        check_location(location).map_err(|problem| anyhow!(problem))?;
        let store: Arc<dyn Store> = match location.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    bail!("repository {location:?} names no bucket: use s3://BUCKET[/PREFIX]");
                }
                Arc::new(S3Store::connect(bucket, prefix, s3).await?)
            }
            None => Arc::new(LocalStore::new(location)),
        };
        Ok(Self {
            store,
            location: location.to_string(),
            keys: Keys::default(),
            id: Default::default(),
        })
    }

    /// The same repository, signing and trusting with `keys`.
    pub fn with_keys(mut self, keys: Keys) -> Self {
        self.keys = keys;
        self
    }

    /// The key manifests are checked with: the verify key, or the signing key's own.
    pub fn verifier(&self) -> Result<&Verifier> {
        match (&self.keys.verifier, &self.keys.signer) {
            (Some(verifier), _) => Ok(verifier),
            (None, Some(signer)) => Ok(signer.verifier()),
            (None, None) => bail!(
                "no verify key: snapshots are signed, and this command accepts only what the \
                 backup side's signing key signed. Pass --verify-key (GWB_VERIFY_KEY), the \
                 RW… key `ghostwire-backup keygen` printed"
            ),
        }
    }

    /// The signing key, for what the backup side writes.
    pub fn signer(&self) -> Option<&Signer> {
        self.keys.signer.as_deref()
    }

    /// The repository's id as the verify key finds it in `repository.json`.
    pub async fn known_id(&self) -> Result<Known> {
        if let Some(id) = self.id.lock().expect("id lock").clone() {
            return Ok(Known::Id(id));
        }
        let known = crate::repo_id::read(self.store.as_ref(), self.verifier()?).await?;
        if let Known::Id(id) = &known {
            *self.id.lock().expect("id lock") = Some(id.clone());
        }
        Ok(known)
    }

    /// The id the backup side's signatures name, made at its first signed write.
    pub async fn id_for_signing(&self, signer: &Signer) -> Result<String> {
        if let Some(id) = self.id.lock().expect("id lock").clone() {
            return Ok(id);
        }
        let id = crate::repo_id::for_signing(self.store.as_ref(), &self.location, signer).await?;
        *self.id.lock().expect("id lock") = Some(id.clone());
        Ok(id)
    }

    /// Opens a repository that must exist already, for the commands that only read it (or
    /// clean it up): a missing local directory is an error with its own exit code, not an
    /// empty repository. (A missing bucket fails likewise at the first request.)
    pub async fn open_existing(location: &str, s3: &S3Options) -> Result<Self> {
        if !location.starts_with("s3://") && !Path::new(location).is_dir() {
            let problem = if Path::new(location).exists() {
                "is not a directory"
            } else {
                "does not exist"
            };
            return Err(exit::coded(
                Exit::RepositoryMissing,
                format!(
                    "no repository at {location}: the directory {problem}. Check --repo \
                     (GWB_REPO); only `backup` and `run` create a repository"
                ),
            ));
        }
        Self::open(location, s3).await
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Writes a small object whole, retained as its kind says.
    pub async fn put(&self, object: &Object, data: Bytes) -> store::Result<()> {
        self.store
            .put(&object.key(), data, object.retention())
            .await
    }

    /// Uploads an archive from a stream, in parts ([`crate::parts`]).
    pub async fn put_archive(&self, id: &str, body: ChunkStream) -> store::Result<Uploaded> {
        parts::upload(&self.store, &Object::Archive(id.to_string()), body).await
    }

    /// Snapshot `id`'s archive as one stream, in one object or in parts.
    pub async fn get_archive(
        &self,
        id: &str,
        archive: &ArchiveInfo,
    ) -> store::Result<ObjectReader> {
        parts::open(&self.store, id, archive).await
    }

    pub async fn get(&self, object: &Object, offset: u64) -> store::Result<ObjectReader> {
        self.store.get(&object.key(), offset).await
    }

    /// Reads a small object whole, never past its kind's bound ([`Object::max_size`]):
    /// fails with [`StoreError::TooLarge`] for a larger one. The archive and the index
    /// are read with the size their signed manifest states ([`Repository::read_bounded`]).
    pub async fn read(&self, object: &Object) -> store::Result<Bytes> {
        let Some(limit) = object.max_size() else {
            return Err(anyhow!("{object} has no size bound of its own: read it with one").into());
        };
        self.read_bounded(object, limit).await
    }

    /// Reads an object whole, never past `limit` bytes ([`Store::get_bounded`]).
    pub async fn read_bounded(&self, object: &Object, limit: u64) -> store::Result<Bytes> {
        self.store.get_bounded(&object.key(), limit).await
    }

    /// Deletes an object; an archive with its parts, if it has any.
    pub async fn delete(&self, object: &Object) -> store::Result<()> {
        self.store.delete(&object.key()).await?;
        if let Object::Archive(_) = object {
            parts::delete(&self.store, object).await?;
        }
        Ok(())
    }

    /// Deletes one snapshot, manifest first (the commit point: without it the rest is an
    /// orphan that prune removes later). The keys come from the id, never from what a
    /// manifest names: a forged manifest cannot make this delete another snapshot's
    /// objects. `Some(why)` when S3 Object Lock retains an object: the rest of the snapshot
    /// then stays whole, restorable.
    pub async fn forget(&self, id: &str) -> Result<Option<String>> {
        for object in [
            Object::Manifest(id.to_string()),
            Object::Signature(id.to_string()),
            Object::Index(id.to_string()),
            Object::Archive(id.to_string()),
        ] {
            match self.delete(&object).await {
                Err(err @ StoreError::Retained { .. }) => {
                    return Ok(Some(format!("{object}: {err}")));
                }
                other => other?,
            }
        }
        Ok(None)
    }

    /// Every object of one kind (`Object::Lock`, `Object::Archive`, …), sorted by key,
    /// each once (an archive in parts is one archive). Keys that are not part of the
    /// layout are left out.
    pub async fn list(&self, kind: fn(String) -> Object) -> store::Result<Vec<Object>> {
        let wanted = std::mem::discriminant(&kind(String::new()));
        let mut objects: Vec<Object> = self
            .store
            .list(Object::prefix_of(kind))
            .await?
            .into_iter()
            .filter_map(|info| Object::parse(&info.key))
            .filter(|object| std::mem::discriminant(object) == wanted)
            .collect();
        objects.sort();
        objects.dedup();
        Ok(objects)
    }

    /// The id of every manifest object, trustworthy or not, sorted.
    pub async fn manifest_ids(&self) -> store::Result<Vec<String>> {
        Ok(self
            .list(Object::Manifest)
            .await?
            .iter()
            .filter_map(|object| object.id().map(str::to_string))
            .collect())
    }

    /// Commits a snapshot: its manifest's signature, then the manifest itself.
    pub async fn commit(&self, manifest: &Manifest) -> Result<()> {
        let Some(signer) = self.signer() else {
            bail!("no signing key: snapshots must be signed (--signing-key, GWB_SIGNING_KEY_FILE)");
        };
        let object = Object::Manifest(manifest.id.clone());
        let json = manifest.to_json();
        let repository = self.id_for_signing(signer).await?;
        let signature = signer.sign(&object.key(), Some(&repository), &json);
        self.put(
            &Object::Signature(manifest.id.clone()),
            Bytes::from(signature.clone()),
        )
        .await
        .context("cannot write the snapshot manifest's signature")?;
        self.put(&object, Bytes::from(json.clone()))
            .await
            .context("cannot write the snapshot manifest")?;
        self.list_committed(signer, manifest, &json, &signature)
            .await;
        Ok(())
    }

    /// Every snapshot the verify key accepts, oldest first. Each refused manifest is
    /// reported with a warning and left out (see [`Repository::listing`]).
    pub async fn snapshots(&self) -> Result<Vec<Manifest>> {
        let listing = self.listing().await?;
        for refused in &listing.refused {
            tracing::warn!(
                snapshot = %refused.id,
                problem = %refused.why,
                "ignoring a snapshot manifest the verify key does not accept"
            );
        }
        Ok(listing.snapshots)
    }

    /// Every manifest object, read and checked. A manifest that is damaged, unsigned,
    /// signed by another key or for another name is refused, not an error: one junk
    /// object must not make the repository unusable. A signed manifest from a newer
    /// version, or a manifest that cannot be read at all, stops the listing: skipping those
    /// could make `latest` silently an older snapshot.
    pub async fn listing(&self) -> Result<Listing> {
        let mut listing = Listing {
            snapshots: Vec::new(),
            refused: Vec::new(),
            unsigned: Default::default(),
        };
        let known = self.known_id().await?;
        let verdicts = self.verdicts(&known).await?;
        let first_named = verdicts
            .iter()
            .find(|(_, verdict)| matches!(verdict, Some(Ok((_, Signature::Named)))))
            .map(|(id, _)| id.clone());
        for (id, verdict) in verdicts {
            match verdict {
                None => {} // forgotten meanwhile
                Some(Ok((_, Signature::Legacy)))
                    if first_named.as_ref().is_some_and(|named| id > *named) =>
                {
                    listing
                        .refused
                        .push(legacy_after_named(id, first_named.as_deref()));
                }
                Some(Ok((manifest, signature))) => {
                    if signature == Signature::Unsigned {
                        listing.unsigned.insert(id);
                    }
                    listing.snapshots.push(manifest);
                }
                Some(Err(refused)) => listing.refused.push(refused),
            }
        }
        listing.snapshots.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(listing)
    }

    /// The verdict on every manifest object, sorted by id: from `manifests.json` for those
    /// it holds with their objects' sizes unchanged, read one by one for the rest.
    async fn verdicts(&self, known: &Known) -> Result<Vec<(String, Option<Verdict>)>> {
        let mut sizes = std::collections::HashMap::new();
        let mut ids = Vec::new();
        for info in self.store.list(Object::prefix_of(Object::Manifest)).await? {
            match Object::parse(&info.key) {
                Some(Object::Manifest(id)) => ids.push(id),
                Some(Object::Signature(_)) => {}
                _ => continue,
            }
            sizes.insert(info.key, info.size);
        }
        let listed = crate::manifest_list::read(self.store.as_ref(), self.verifier()?, known.id())
            .await?
            .entries
            .unwrap_or_default();
        let (mut verdicts, mut unlisted) = (Vec::new(), Vec::new());
        for id in ids {
            let entry = listed.get(&id).filter(|entry| {
                sizes.get(&Object::Manifest(id.clone()).key()) == Some(&entry.manifest_size)
                    && sizes.get(&Object::Signature(id.clone()).key())
                        == Some(&entry.signature_size)
            });
            match entry.and_then(|entry| listed_manifest(&id, entry)) {
                Some(manifest) => verdicts.push((id, Some(Ok((manifest, Signature::Named))))),
                None => unlisted.push(id),
            }
        }
        verdicts.extend(self.verify_all(unlisted, known).await?);
        verdicts.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(verdicts)
    }

    /// Adds a committed manifest to `manifests.json`; a failure only costs readers time.
    async fn list_committed(
        &self,
        signer: &Signer,
        manifest: &Manifest,
        json: &[u8],
        signature: &str,
    ) {
        let listed = async {
            let repository = self.id_for_signing(signer).await?;
            let existing = self.manifest_ids().await?.into_iter().collect();
            let entry = crate::manifest_list::Entry {
                manifest: String::from_utf8(json.to_vec())?,
                manifest_size: json.len() as u64,
                signature_size: signature.len() as u64,
            };
            crate::manifest_list::add(
                self.store.as_ref(),
                signer,
                &repository,
                (&manifest.id, entry),
                &existing,
            )
            .await
        };
        if let Err(err) = listed.await {
            tracing::warn!(
                error = format!("{err:#}"),
                "the snapshot is committed, but manifests.json does not list it: listings read its manifest one by one"
            );
        }
    }

    /// The newest snapshot the verify key accepts, reading manifests newest first, a batch
    /// of [`PARALLEL_READS`] at a time, until one verifies: a LIST and a few GETs however
    /// many snapshots the repository holds. For display (what `run` shows before it
    /// serves); choosing a snapshot ([`crate::selection::find`]) reads every manifest, for its
    /// fail-closed rules.
    pub async fn newest_trustworthy(&self) -> Result<Option<Manifest>> {
        let known = self.known_id().await?;
        let ids = self.manifest_ids().await?;
        for batch in ids.rchunks(PARALLEL_READS) {
            let verdicts = self.verify_all(batch.to_vec(), &known).await?;
            let newest = verdicts
                .into_iter()
                .rev()
                .find_map(|(_, verdict)| match verdict {
                    Some(Ok((manifest, _))) => Some(manifest),
                    _ => None,
                });
            if newest.is_some() {
                return Ok(newest);
            }
        }
        Ok(None)
    }

    /// [`Repository::verified`] for each of `ids`, [`PARALLEL_READS`] at a time, sorted by
    /// id. Each costs two GETs (the manifest and its signature): one after the other, a
    /// thousand snapshots were two thousand round trips before `run` could serve.
    async fn verify_all(
        &self,
        ids: Vec<String>,
        known: &Known,
    ) -> Result<Vec<(String, Option<Verdict>)>> {
        let slots = Arc::new(tokio::sync::Semaphore::new(PARALLEL_READS));
        let mut reads = tokio::task::JoinSet::new();
        for id in ids {
            let (repo, slots, known) = (self.clone(), slots.clone(), known.clone());
            reads.spawn(async move {
                let _slot = slots.acquire_owned().await?;
                let verdict = repo.verified(&id, &known).await?;
                Ok::<_, anyhow::Error>((id, verdict))
            });
        }
        let mut verdicts = Vec::new();
        while let Some(done) = reads.join_next().await {
            verdicts.push(done??);
        }
        verdicts.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(verdicts)
    }

    /// Snapshot `id`'s manifest if the verify key accepts it under that name, in the
    /// repository `known` names: `None` if there is no such manifest, `Some(Err(_))` if it
    /// is refused.
    async fn verified(&self, id: &str, known: &Known) -> Result<Option<Verdict>> {
        let object = Object::Manifest(id.to_string());
        let refused = |why: String| Ok(Some(Err(Refused::new(id, why))));
        // An object over its bound is refused like any other junk, not an error: it
        // would otherwise stop every listing.
        let bytes = match self.read(&object).await {
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(err @ StoreError::TooLarge { .. }) => return refused(err.to_string()),
            other => other?,
        };
        let verifier = self.verifier()?;
        let checked = match self.read(&Object::Signature(id.to_string())).await {
            Ok(signature) => verifier.verify(
                &object.key(),
                known.id(),
                &bytes,
                &String::from_utf8_lossy(&signature),
            ),
            Err(StoreError::NotFound(_)) => Err(Rejected::Unsigned),
            Err(err @ StoreError::TooLarge { .. }) => return refused(err.to_string()),
            Err(err) => return Err(err.into()),
        };
        let signature = match checked {
            Ok(Named::This) => Signature::Named,
            Ok(Named::Nothing) => Signature::Legacy,
            Err(Rejected::Unsigned) if self.keys.allow_unsigned => {
                tracing::warn!(
                    snapshot = id,
                    "--allow-unsigned: accepting a snapshot with no signature"
                );
                Signature::Unsigned
            }
            Err(rejected @ Rejected::OtherRepository { .. }) => {
                return Ok(Some(Err(Refused {
                    foreign: true,
                    ..Refused::new(id, foreign_why(&rejected, known))
                })));
            }
            Err(rejected) => return refused(rejected.to_string()),
        };
        let manifest = match Manifest::from_json(&bytes, &object.key()) {
            Ok(manifest) => manifest,
            Err(err @ ManifestError::NewerFormat { .. }) => return Err(err.into()),
            Err(err) => return refused(format!("{:#}", anyhow::Error::from(err))),
        };
        Ok(Some(
            manifest
                .check_names(id, chrono::Utc::now())
                .map(|()| (manifest, signature))
                .map_err(|why| Refused::new(id, why)),
        ))
    }

    /// The id of the one manifest object named `wanted`, or whose id starts with it or
    /// ends with it as the id's random tail (`-9f3a1c2b`): ids are long to type, and their
    /// time part is shared by neighbours while the tail is not. Lists keys only; whether
    /// the manifest is trustworthy is for the caller to check.
    pub async fn resolve(&self, wanted: &str) -> Result<String> {
        let ids = self.manifest_ids().await?;
        if ids.iter().any(|id| id == wanted) {
            return Ok(wanted.to_string());
        }
        let mut candidates: Vec<String> = ids
            .into_iter()
            .filter(|id| {
                !wanted.is_empty()
                    && (id.starts_with(wanted)
                        || id.rsplit_once('-').is_some_and(|(_, tail)| tail == wanted))
            })
            .collect();
        match candidates.len() {
            0 => Err(exit::coded(
                Exit::SnapshotNotFound,
                format!(
                    "no snapshot {wanted:?} in {}: give an id, a unique start of one, or its \
                     last 8 hex digits; list them with `ghostwire-backup snapshots`",
                    self.location
                ),
            )),
            1 => Ok(candidates.pop().expect("one candidate")),
            _ => bail!(
                "{wanted:?} matches {} snapshots in {}: {}. Give more of the id",
                candidates.len(),
                self.location,
                candidates.join(", ")
            ),
        }
    }

    /// One snapshot's manifest by id; `None` if there is no such snapshot, an error if the
    /// verify key does not accept it.
    pub async fn manifest(&self, id: &str) -> Result<Option<Manifest>> {
        match self.verified(id, &self.known_id().await?).await? {
            None => Ok(None),
            Some(Ok((manifest, _))) => Ok(Some(manifest)),
            Some(Err(refused)) => Err(untrusted(id, &refused.why, &self.location)),
        }
    }
}

impl Refused {
    fn new(id: &str, why: String) -> Self {
        Self {
            id: id.to_string(),
            why,
            foreign: false,
        }
    }
}

/// A manifest as `manifests.json` holds it, if it still names what its id says.
fn listed_manifest(id: &str, entry: &crate::manifest_list::Entry) -> Option<Manifest> {
    let key = Object::Manifest(id.to_string()).key();
    let manifest = Manifest::from_json(entry.manifest.as_bytes(), &key).ok()?;
    manifest.check_names(id, chrono::Utc::now()).ok()?;
    Some(manifest)
}

/// Why a manifest signed in another repository is refused; with no trustworthy
/// `repository.json` here, why that is too.
fn foreign_why(rejected: &Rejected, known: &Known) -> String {
    match known {
        Known::Untrusted(why) => format!("{rejected} (repository.json: {why})"),
        Known::Absent => format!("{rejected} (repository.json is missing)"),
        Known::Id(_) => rejected.to_string(),
    }
}

/// A manifest whose signature names no repository, dated after the first that names
/// this one: the backup side named the repository by then, so it is not its.
fn legacy_after_named(id: String, first_named: Option<&str>) -> Refused {
    let why = format!(
        "its signature names no repository, yet it is newer than {}, the first snapshot \
         signed naming this repository: made by a ghostwire-backup from before signatures \
         named repositories (upgrade every backup writer), or copied from another \
         repository that shares the signing key",
        first_named.unwrap_or_default()
    );
    Refused::new(&id, why)
}

/// Snapshot `id` was asked for but its manifest does not verify (exit 9).
pub(crate) fn untrusted(id: &str, why: &str, location: &str) -> anyhow::Error {
    exit::coded(
        Exit::Untrusted,
        format!(
            "snapshot {id} in {location} is not trustworthy: {why}. It was not written by the \
             backup side whose verify key this is; choose another snapshot"
        ),
    )
}
