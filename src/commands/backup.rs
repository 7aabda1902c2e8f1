//! `backup`: one snapshot of the home (see [`crate::backup`] for the pipeline). SIGTERM or
//! SIGINT cut it: no snapshot is written and the upload is aborted.

use anyhow::Result;

pub use crate::backup::BackupOptions;
use crate::manifest::Manifest;
use crate::repo::Repository;
use crate::{backup, blocking};

pub async fn run(repo: &Repository, options: &BackupOptions) -> Result<Manifest> {
    let options = options.clone();
    blocking::until_signal(repo, move |remote| backup::take(remote, &options)).await
}
