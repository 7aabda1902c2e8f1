//! The sync/async line, drawn once.
//!
//! Backup, restore and verify are plain synchronous code on their own thread; only the
//! store (S3 or a directory) and the daemon are async. The core reaches the store through
//! [`Remote`]: each call is run on the runtime with `Handle::block_on` and ends early when
//! the [`Cancel`] token is cancelled. [`spawn`] starts a core body on a thread of its own
//! (not one of Tokio's: a thread that does not stop at a deadline must not hold up the
//! runtime or the process's exit), and [`until_signal`] is how a one-shot command lets
//! SIGTERM/SIGINT cut it (and shows its progress).

use std::future::Future;
use std::io::{self, Read};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::runtime::Handle;
use tokio::signal::unix::{SignalKind, signal};

use crate::cancel::{Cancel, is_cancelled};
use crate::layout::Object;
use crate::manifest::{ArchiveInfo, Manifest};
use crate::parts::Uploaded;
use crate::repo::{Repository, Selector};
use crate::store::{ChunkStream, ObjectReader, StoreError};

/// After a cut, how long an archive's upload may take to delete the parts it stored
/// before it is dropped (what is left is an orphan, which prune deletes).
const ABORT_GRACE: Duration = Duration::from_millis(500);

/// After a cut, how long the caller waits for the core thread to notice and clean up.
pub const STOP_GRACE: Duration = Duration::from_millis(1500);

/// The repository as synchronous code sees it. Never call it from a Tokio worker.
#[derive(Clone)]
pub struct Remote {
    repo: Repository,
    handle: Handle,
    cancel: Cancel,
}

impl Remote {
    pub fn new(repo: Repository, handle: Handle, cancel: Cancel) -> Self {
        Self {
            repo,
            handle,
            cancel,
        }
    }

    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    /// Runs one async call to its end, or until the token is cancelled.
    pub fn wait<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        self.cancel.check()?;
        self.handle.block_on(async {
            tokio::select! {
                biased;
                _ = self.cancel.wait() => Err(self.cancel.cancelled().into()),
                result = work => result,
            }
        })
    }

    /// Runs a short call that must run even after a cut (releasing a lock), bounded.
    pub fn wait_bounded<T>(&self, limit: Duration, work: impl Future<Output = T>) -> Option<T> {
        self.handle
            .block_on(async { tokio::time::timeout(limit, work).await.ok() })
    }

    pub fn find(&self, selector: &Selector) -> Result<Manifest> {
        self.wait(crate::selection::find(&self.repo, selector))
    }

    pub fn snapshots(&self) -> Result<Vec<Manifest>> {
        self.wait(self.repo.snapshots())
    }

    pub fn put(&self, object: &Object, data: Bytes) -> Result<()> {
        self.wait(async { Ok(self.repo.put(object, data).await?) })
    }

    pub fn commit(&self, manifest: &Manifest) -> Result<()> {
        self.wait(self.repo.commit(manifest))
    }

    /// An object whole, never more than `limit` bytes of it (the size its signed
    /// manifest states): a larger one fails with [`StoreError::TooLarge`] unread.
    pub fn read_bounded(&self, key: &str, limit: u64) -> Result<Bytes> {
        self.wait(async { Ok(self.repo.store().get_bounded(key, limit).await?) })
    }

    /// An object as a blocking reader that stops at a cut.
    pub fn reader(&self, key: &str) -> Result<RemoteReader> {
        let inner = self.wait(async { Ok(self.repo.store().get(key, 0).await?) })?;
        Ok(self.blocking(inner))
    }

    /// Snapshot `id`'s archive as a blocking reader that stops at a cut: one stream,
    /// whether it is stored in one object or in parts.
    pub fn archive_reader(&self, id: &str, archive: &ArchiveInfo) -> Result<RemoteReader> {
        let inner = self.wait(async { Ok(self.repo.get_archive(id, archive).await?) })?;
        Ok(self.blocking(inner))
    }

    fn blocking(&self, inner: ObjectReader) -> RemoteReader {
        RemoteReader {
            inner,
            remote: self.clone(),
        }
    }

    /// Uploads snapshot `id`'s archive, a stream of chunks produced on another thread, in
    /// parts. After a cut the producer stops and drops its end, which makes the upload
    /// delete the parts it stored; it gets [`ABORT_GRACE`] to do so before the call is
    /// dropped.
    pub fn upload_archive(&self, id: &str, body: ChunkStream) -> Result<Uploaded, StoreError> {
        self.handle.block_on(async {
            let put = self.repo.put_archive(id, body);
            tokio::pin!(put);
            tokio::select! {
                result = &mut put => result,
                _ = self.cancel.wait() => {
                    let _ = tokio::time::timeout(ABORT_GRACE, put).await;
                    Err(StoreError::Other(self.cancel.cancelled().into()))
                }
            }
        })
    }
}

/// A store object read from synchronous code, one `read` at a time, each cancellable.
pub struct RemoteReader {
    inner: ObjectReader,
    remote: Remote,
}

impl Read for RemoteReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let cancel = &self.remote.cancel;
        cancel.check_io()?;
        self.remote.handle.block_on(async {
            tokio::select! {
                biased;
                _ = cancel.wait() => Err(io::Error::other(cancel.cancelled())),
                read = self.inner.read(buf) => read,
            }
        })
    }
}

/// Runs `body` on a thread of its own with a [`Remote`] for `repo`; resolves with its result.
pub fn spawn<T, F>(repo: &Repository, cancel: Cancel, body: F) -> impl Future<Output = Result<T>>
where
    T: Send + 'static,
    F: FnOnce(&Remote) -> Result<T> + Send + 'static,
{
    let remote = Remote::new(repo.clone(), Handle::current(), cancel);
    let (sender, result) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new()
        .name("ghostwire-core".into())
        .spawn(move || {
            let _ = sender.send(body(&remote));
        });
    async move {
        started.context("cannot start a thread")?;
        result
            .await
            .map_err(|_| anyhow!("the worker thread panicked"))?
    }
}

/// After cancelling, waits up to [`STOP_GRACE`] for the body to stop; a body that does not
/// is left behind (its thread ends with the process).
pub async fn stopped<T>(work: impl Future<Output = Result<T>>, cancel: &Cancel) -> Result<T> {
    match tokio::time::timeout(STOP_GRACE, work).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                phase = cancel.phase(),
                "the work did not stop in time; leaving it behind"
            );
            Err(cancel.cancelled().into())
        }
    }
}

/// Runs a one-shot command's body; SIGTERM or SIGINT cancels it. The body then cleans up
/// (within about a second) and this fails with a message naming the signal and the phase.
pub async fn until_signal<T, F>(repo: &Repository, body: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Remote) -> Result<T> + Send + 'static,
{
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let cancel = Cancel::new();
    // Dropped when this returns, however it returns: the line never outlives the work.
    let _display = crate::progress::Display::start(cancel.progress());
    let work = spawn(repo, cancel.clone(), body);
    tokio::pin!(work);
    let name = tokio::select! {
        result = &mut work => return result,
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::warn!(signal = name, phase = cancel.phase(), "stopping");
    cancel.cancel();
    match stopped(work, &cancel).await {
        Err(err) if is_cancelled(&err) => Err(err.context(format!("stopped by {name}"))),
        other => other,
    }
}
