//! A repository: snapshots laid out on a [`Store`].
//!
//! ```text
//! archives/<id>.tar.zst.age   the archive (tar → zstd → age), uploaded first
//! indexes/<id>.json.zst.age   the file index (JSON lines → zstd → age)
//! snapshots/<id>.json         the manifest, uploaded last: the commit point
//! ```
//! An archive without a manifest is an interrupted backup: never listed, never restored.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::manifest::{Manifest, NewerFormat};
use crate::store::local::LocalStore;
use crate::store::s3::{S3Options, S3Store};
use crate::store::{NotFound, Store};

const SNAPSHOTS: &str = "snapshots/";

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
    Id(String),
}

impl std::str::FromStr for Selector {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "latest" => Selector::Latest,
            "final" => Selector::Final,
            id => Selector::Id(id.to_string()),
        })
    }
}

impl Repository {
    /// Opens `s3://bucket/prefix` or a local directory path.
    pub async fn open(location: &str, s3: &S3Options) -> Result<Self> {
        let store: Arc<dyn Store> = match location.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    bail!("repository {location:?} names no bucket: use s3://BUCKET[/PREFIX]");
                }
                Arc::new(S3Store::connect(bucket, prefix, s3).await?)
            }
            None if location.contains("://") => {
                bail!("unsupported repository {location:?}: use s3://BUCKET/PREFIX or a directory")
            }
            None => Arc::new(LocalStore::new(location)),
        };
        Ok(Self {
            store,
            location: location.to_string(),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn archive_key(id: &str) -> String {
        format!("archives/{id}.tar.zst.age")
    }

    pub fn index_key(id: &str) -> String {
        format!("indexes/{id}.json.zst.age")
    }

    fn manifest_key(id: &str) -> String {
        format!("{SNAPSHOTS}{id}.json")
    }

    /// Commits a snapshot by writing its manifest.
    pub async fn commit(&self, manifest: &Manifest) -> Result<()> {
        self.store
            .put(
                &Self::manifest_key(&manifest.id),
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
        for object in self.store.list(SNAPSHOTS).await? {
            if !object.key.ends_with(".json") {
                continue;
            }
            let bytes = match self.read_object(&object.key).await {
                Err(err) if err.downcast_ref::<NotFound>().is_some() => continue, // pruned meanwhile
                other => other?,
            };
            match Manifest::from_json(&bytes, &object.key) {
                Ok(manifest) => manifests.push(manifest),
                Err(err) if err.downcast_ref::<NewerFormat>().is_some() => return Err(err),
                Err(err) => {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "skipping a damaged snapshot manifest"
                    );
                }
            }
        }
        manifests.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(manifests)
    }

    async fn read_object(&self, key: &str) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.store
            .get(key, 0)
            .await?
            .read_to_end(&mut bytes)
            .await?;
        Ok(bytes)
    }

    async fn read_manifest(&self, key: &str) -> Result<Manifest> {
        Manifest::from_json(&self.read_object(key).await?, key)
    }

    pub async fn find(&self, selector: &Selector) -> Result<Manifest> {
        if let Selector::Id(id) = selector {
            return match self.read_manifest(&Self::manifest_key(id)).await {
                Err(e) if e.downcast_ref::<NotFound>().is_some() => bail!(
                    "no snapshot {id:?} in {}: list them with `ghostwire-backup snapshots`",
                    self.location
                ),
                other => other,
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
        pick.with_context(|| format!("the repository {} holds no snapshot yet", self.location))
    }
}
