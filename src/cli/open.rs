//! Opening the repository a command's flags name.

use anyhow::{Result, bail};
use aws_sdk_s3::types::ObjectLockMode;

use ghostwire_backup::repo::Repository;
use ghostwire_backup::store::s3::{ObjectLock, S3Options};

use super::flags::{LockMode, RepoArgs, TrustArgs};

/// Where `backup` writes without --repo: the quick start's local repository.
pub(crate) const DEFAULT_REPO: &str = "./backups";

/// Whether a command may create the repository or needs one that exists.
#[derive(Clone, Copy)]
pub(crate) enum Existing {
    /// `backup`: creates it, at [`DEFAULT_REPO`] without --repo.
    Created,
    /// `run`: creates it, but only where --repo says.
    CreatedWhereNamed,
    Required,
}

impl RepoArgs {
    /// The existing repository, trusting what `trust`'s verify key verifies: for every
    /// command that reads snapshots. The key is checked first, so a missing one is a usage
    /// error before any request.
    pub(crate) async fn open_to_read(&self, trust: &TrustArgs) -> Result<Repository> {
        let keys = trust.keys()?;
        Ok(self.open(1, Existing::Required).await?.with_keys(keys))
    }

    pub(crate) async fn open(
        &self,
        parallel_parts: usize,
        existing: Existing,
    ) -> Result<Repository> {
        let options = S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
            max_attempts: self.s3_attempts,
            parallel_parts,
            object_lock: self.object_lock_days.map(|days| ObjectLock {
                mode: match self.object_lock_mode {
                    LockMode::Governance => ObjectLockMode::Governance,
                    LockMode::Compliance => ObjectLockMode::Compliance,
                },
                days,
            }),
        };
        match (&self.repo, existing) {
            (Some(location), Existing::Required) => {
                Repository::open_existing(location, &options).await
            }
            (Some(location), _) => Repository::open(location, &options).await,
            (None, Existing::Required) => Repository::open_existing(DEFAULT_REPO, &options).await,
            // A daemon writing into the container's own filesystem loses every snapshot
            // with the pod: it must be told where.
            (None, Existing::CreatedWhereNamed) => bail!(
                "run needs a repository: set --repo (GWB_REPO) to s3://BUCKET/PREFIX or a \
                 directory on a volume that outlives the pod"
            ),
            (None, Existing::Created) => {
                tracing::info!(
                    repository = DEFAULT_REPO,
                    "no --repo (GWB_REPO): writing to the local directory {DEFAULT_REPO}"
                );
                Repository::open(DEFAULT_REPO, &options).await
            }
        }
    }
}
