//! A repository: snapshots laid out on a [`Store`] as [`crate::layout`] says. The archive
//! is uploaded first, then the index, then the manifest, the commit point: an archive
//! without a manifest is an interrupted backup, never listed, never restored.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::exit::{self, Exit};
use crate::layout::Object;
use crate::manifest::{Manifest, ManifestError};
use crate::store::local::LocalStore;
use crate::store::s3::{S3Options, S3Store};
use crate::store::{self, ChunkStream, ObjectReader, Store, StoreError};

#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn Store>,
    location: String,
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
        })
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

    /// Uploads a large object from a stream (see [`Store::put_stream`]).
    pub async fn put_stream(&self, object: &Object, body: ChunkStream) -> store::Result<u64> {
        self.store
            .put_stream(&object.key(), body, object.retention())
            .await
    }

    pub async fn get(&self, object: &Object, offset: u64) -> store::Result<ObjectReader> {
        self.store.get(&object.key(), offset).await
    }

    /// Reads a small object whole.
    pub async fn read(&self, object: &Object) -> store::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.get(object, 0).await?.read_to_end(&mut bytes).await?;
        Ok(bytes)
    }

    pub async fn delete(&self, object: &Object) -> store::Result<()> {
        self.store.delete(&object.key()).await
    }

    /// Deletes one snapshot, manifest first (the commit point: without it the rest is an
    /// orphan that prune removes later). The keys come from the id, never from what a
    /// manifest names: a forged manifest cannot make this delete another snapshot's
    /// objects. `Some(why)` when S3 Object Lock retains an object: the rest of the snapshot
    /// then stays whole, restorable.
    pub async fn forget(&self, id: &str) -> Result<Option<String>> {
        for object in [
            Object::Manifest(id.to_string()),
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

    /// Every object of one kind (`Object::Lock`, `Object::Archive`, …), sorted by key.
    /// Keys that are not part of the layout are left out.
    pub async fn list(&self, kind: fn(String) -> Object) -> store::Result<Vec<Object>> {
        let wanted = std::mem::discriminant(&kind(String::new()));
        Ok(self
            .store
            .list(Object::prefix_of(kind))
            .await?
            .into_iter()
            .filter_map(|info| Object::parse(&info.key))
            .filter(|object| std::mem::discriminant(object) == wanted)
            .collect())
    }

    /// Commits a snapshot by writing its manifest.
    pub async fn commit(&self, manifest: &Manifest) -> Result<()> {
        self.put(
            &Object::Manifest(manifest.id.clone()),
            Bytes::from(manifest.to_json()),
        )
        .await
        .context("cannot write the snapshot manifest")
    }

    /// Every committed snapshot, oldest first.
    /// A manifest that does not parse is skipped with a warning, so one damaged object
    /// does not make the whole repository unusable. A manifest from a newer version, or
    /// one that cannot be read at all, stops the listing: skipping those could make
    /// `latest` silently an older snapshot.
    pub async fn snapshots(&self) -> Result<Vec<Manifest>> {
        let mut manifests = Vec::new();
        for object in self.list(Object::Manifest).await? {
            let bytes = match self.read(&object).await {
                Err(StoreError::NotFound(_)) => continue, // pruned meanwhile
                other => other?,
            };
            match Manifest::from_json(&bytes, &object.key()) {
                Ok(manifest) => manifests.push(manifest),
                Err(err @ ManifestError::NewerFormat { .. }) => return Err(err.into()),
                Err(err) => {
                    tracing::warn!(
                        error = format!("{:#}", anyhow::Error::from(err)),
                        "skipping a damaged snapshot manifest"
                    );
                }
            }
        }
        manifests.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(manifests)
    }

    pub async fn find(&self, selector: &Selector) -> Result<Manifest> {
        if let Selector::Handoff = selector {
            let id = crate::lease::handoff(self).await?;
            return self.manifest(&id).await?.with_context(|| {
                format!(
                    "the lease names snapshot {id} as the final snapshot its last holder \
                     released it with, but {} no longer holds it (pruned or deleted?). \
                     Choose a snapshot with `ghostwire-backup snapshots` and pass its id",
                    self.location
                )
            });
        }
        if let Selector::Id(id) = selector {
            return match self.manifest(id).await? {
                Some(manifest) => Ok(manifest),
                None => self.find_abbreviated(id).await,
            };
        }
        let mut all = self.snapshots().await?;
        let pick = match selector {
            Selector::Final => match all.iter().rposition(|m| m.r#final) {
                Some(index) => Some(all.swap_remove(index)),
                None => {
                    tracing::warn!("no final snapshot in the repository; using the latest");
                    all.pop()
                }
            },
            _ => all.pop(),
        };
        pick.ok_or_else(|| {
            exit::coded(
                Exit::SnapshotNotFound,
                format!("the repository {} holds no snapshot yet", self.location),
            )
        })
    }

    /// The one snapshot whose id starts with `wanted` or ends with it as the id's random
    /// tail (`-9f3a1c2b`): ids are long to type, and their time part is shared by
    /// neighbours while the tail is not. Lists keys only; reads the one manifest.
    async fn find_abbreviated(&self, wanted: &str) -> Result<Manifest> {
        let mut candidates: Vec<String> = self
            .list(Object::Manifest)
            .await?
            .iter()
            .filter_map(|object| object.id())
            .filter(|id| {
                !wanted.is_empty()
                    && (id.starts_with(wanted)
                        || id.rsplit_once('-').is_some_and(|(_, tail)| tail == wanted))
            })
            .map(str::to_string)
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
            1 => {
                let id = candidates.pop().expect("one candidate");
                self.manifest(&id).await?.ok_or_else(|| {
                    exit::coded(
                        Exit::SnapshotNotFound,
                        format!("snapshot {id} was forgotten while being looked up"),
                    )
                })
            }
            _ => bail!(
                "{wanted:?} matches {} snapshots in {}: {}. Give more of the id",
                candidates.len(),
                self.location,
                candidates.join(", ")
            ),
        }
    }

    /// One snapshot's manifest by id; `None` if there is no such snapshot.
    async fn manifest(&self, id: &str) -> Result<Option<Manifest>> {
        let object = Object::Manifest(id.to_string());
        match self.read(&object).await {
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(err) => Err(err.into()),
            Ok(bytes) => Ok(Some(Manifest::from_json(&bytes, &object.key())?)),
        }
    }
}
