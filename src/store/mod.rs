//! The storage seam: anything that can put, get, list and delete objects can hold a
//! repository. Like Litestream's `ReplicaClient`, the trait is small on purpose, so a new
//! backend touches nothing else: [`local`] (a directory, the embedded default) and [`s3`].

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};

pub mod local;
pub mod resume;
pub mod s3;

/// What a store's operations fail with. The cases a caller acts on have their own variant;
/// everything else (an unreachable server, access denied, a full disk) is [`Other`]
/// carrying a sentence that says what to fix.
///
/// [`Other`]: StoreError::Other
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key does not exist.
    #[error("object {0} not found in the repository")]
    NotFound(String),
    /// A conditional write whose condition did not hold: someone else wrote the object
    /// since it was read.
    #[error("object {0} was changed by someone else")]
    Conflict(String),
    /// A delete refused because the object is under S3 Object Lock retention.
    #[error("{key} is under Object Lock retention until {until}")]
    Retained { key: String, until: String },
    /// An object larger than the most its kind can be: read no further than `limit`
    /// bytes, so a planted object of any size costs no more memory than a genuine one.
    #[error(
        "object {key} is larger than {limit} bytes, the most such an object can be: this tool \
         never writes one that large (someone with write access to the repository may have \
         planted or replaced it); nothing past the bound was read. Delete the object if it \
         is junk"
    )]
    TooLarge { key: String, limit: u64 },
    /// A streamed upload whose producer gave up before finishing (the archive could not
    /// be completed): the producer's own error is the one to report.
    #[error("the archive stream was abandoned before it was complete")]
    Abandoned,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The store cannot be reached, or is not there: typed so that the command line can give
/// each its own exit code ([`crate::exit`]) without the storage layer knowing about them.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Unavailable {
    pub why: Unavailability,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailability {
    /// The endpoint gave no answer after every retry.
    Unreachable,
    /// The endpoint answered that the bucket does not exist.
    NoSuchBucket,
}

impl StoreError {
    /// Says what was being done, on an untyped error; the typed cases speak for themselves
    /// and stay matchable.
    pub fn context<C>(self, what: C) -> Self
    where
        C: std::fmt::Display + Send + Sync + 'static,
    {
        match self {
            StoreError::Other(err) => StoreError::Other(err.context(what)),
            typed => typed,
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(err: std::io::Error) -> Self {
        StoreError::Other(err.into())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Whether an object is kept under the store's retention (S3 Object Lock), if the store
/// has one. The repository layout decides ([`crate::layout::Object::retention`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// A part of a snapshot: under retention, no one can delete or overwrite it early.
    Retain,
    /// Replaced and deleted freely (locks, the lease).
    Replaceable,
}

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

pub type ObjectReader = Box<dyn AsyncRead + Send + Unpin>;

#[async_trait]
pub trait Store: Send + Sync {
    /// Writes a small object whole, replacing any object under `key`.
    async fn put(&self, key: &str, data: Bytes, retention: Retention) -> Result<()>;

    /// Reads an object from byte `offset` to its end. Fails with [`StoreError::NotFound`].
    async fn get(&self, key: &str, offset: u64) -> Result<ObjectReader>;

    /// Objects whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// Reads a small object whole, never more than `limit` bytes of it: fails with
    /// [`StoreError::TooLarge`] as soon as the object is known to be larger (from its
    /// stated size, or by counting what arrives), before anything else looks at it.
    async fn get_bounded(&self, key: &str, limit: u64) -> Result<Bytes> {
        read_bounded(self.get(key, 0).await?, key, limit).await
    }

    /// Reads a small object whole (at most `limit` bytes, as [`Store::get_bounded`]) with
    /// its version (an opaque tag that changes whenever the object does), or `None` if it
    /// does not exist.
    async fn get_versioned(&self, key: &str, limit: u64) -> Result<Option<(Bytes, String)>>;

    /// Writes a small object only if its version is still `expected` (`None`: only if it
    /// does not exist), and returns the new version; fails with [`StoreError::Conflict`]
    /// otherwise.
    /// The compare-and-swap that keeps two writers of one lease apart.
    async fn put_if(&self, key: &str, data: Bytes, expected: Option<&str>) -> Result<String>;

    /// Deletes an object; deleting a missing object is not an error. Fails with
    /// [`StoreError::Retained`] for an object still under Object Lock retention.
    async fn delete(&self, key: &str) -> Result<()>;

    /// How many writes (the parts of an archive, [`crate::parts`]) to have on their way
    /// at once.
    fn parallel_writes(&self) -> usize {
        4
    }

    /// Removes what writes that died (SIGKILL, a lost node) left behind, once older than
    /// `older_than` (so no live write loses its file), and says how many. Backends whose
    /// dead writes leave no objects have nothing to do: S3's open multipart uploads are
    /// [`Store::abort_open_uploads`]'s.
    async fn remove_interrupted(&self, _older_than: std::time::Duration) -> Result<u64> {
        Ok(0)
    }

    /// Aborts every upload still open under the repository (S3 multipart uploads, which
    /// versions before format 4 started for archives), and says how many: the parts a
    /// backup killed mid-upload left, billed until aborted. Only for a caller that holds
    /// the repository alone (prune's exclusive lock), when no live writer can own one.
    /// Backends without such uploads have nothing to do.
    async fn abort_open_uploads(&self) -> Result<u64> {
        Ok(0)
    }
}

/// Creates the two ends of a streamed upload; at most `depth` chunks wait in between,
/// which (with the chunk size) bounds the memory an upload holds.
pub fn chunk_channel(depth: usize) -> (ChunkSender, ChunkStream) {
    let (tx, rx) = mpsc::channel(depth);
    let handover = false;
    (ChunkSender { tx, handover }, ChunkStream { rx })
}

/// [`chunk_channel`] with no chunk waiting in between: each send returns once the consumer
/// has taken its chunk, so a producer that runs ahead of every upload slot holds one chunk
/// (the one it waits to hand over), not that one plus the next it went on to fill. An
/// archive's upload holds its parts on their way and one more: a 2 GiB backup, 5 MiB less.
pub fn handover_channel() -> (ChunkSender, ChunkStream) {
    let (tx, rx) = mpsc::channel(1);
    let handover = true;
    (ChunkSender { tx, handover }, ChunkStream { rx })
}

/// A chunk on its way; `_taken` is never sent on, only dropped when the consumer takes the
/// chunk, which wakes a producer waiting on the other end ([`handover_channel`]).
struct Handed {
    chunk: Bytes,
    _taken: Option<oneshot::Sender<()>>,
}

/// The producing end of a streamed upload, used from blocking code (the archive writer).
pub struct ChunkSender {
    tx: mpsc::Sender<Option<Handed>>,
    handover: bool,
}

impl ChunkSender {
    pub fn send(&self, chunk: Bytes) -> std::io::Result<()> {
        let (taken, handed_over) = self.handover.then(oneshot::channel).unzip();
        self.tx
            .blocking_send(Some(Handed {
                chunk,
                _taken: taken,
            }))
            .map_err(|_| upload_gone())?;
        if let Some(handed_over) = handed_over {
            // Returns, always as an error (nothing is ever sent), once the consumer took
            // the chunk or is gone: either way the chunk no longer waits.
            let _ = handed_over.blocking_recv();
        }
        Ok(())
    }

    /// Marks the stream complete: only now may the store make the object visible.
    pub fn finish(self) -> std::io::Result<()> {
        self.tx.blocking_send(None).map_err(|_| upload_gone())
    }
}

fn upload_gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped")
}

/// The consuming end of a streamed upload, read by a [`Store`].
pub struct ChunkStream {
    rx: mpsc::Receiver<Option<Handed>>,
}

impl ChunkStream {
    /// The next chunk, `None` at a finished end, or an error if the producer dropped the
    /// stream without finishing it (the archive could not be completed).
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        match self.rx.recv().await {
            Some(handed) => Ok(handed.map(|handed| handed.chunk)),
            None => Err(StoreError::Abandoned),
        }
    }
}

/// Reads `reader` to its end, failing with [`StoreError::TooLarge`] past `limit` bytes:
/// at most `limit + 1` bytes are ever held.
pub(crate) async fn read_bounded(
    reader: impl AsyncRead + Unpin,
    key: &str,
    limit: u64,
) -> Result<Bytes> {
    let mut bytes = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .await?;
    if bytes.len() as u64 > limit {
        return Err(too_large(key, limit));
    }
    Ok(Bytes::from(bytes))
}

/// The error for an object over its bound, found before reading it (its stated size).
pub(crate) fn too_large(key: &str, limit: u64) -> StoreError {
    StoreError::TooLarge {
        key: key.to_string(),
        limit,
    }
}

/// Rejects keys that could name something outside the repository.
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(anyhow::anyhow!("invalid object key {key:?}").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_handover_returns_once_the_chunk_is_taken_and_a_gone_consumer_frees_the_producer() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (sender, mut stream) = handover_channel();
        let returned = Arc::new(AtomicBool::new(false));
        let producer = std::thread::spawn({
            let returned = returned.clone();
            move || {
                sender.send(Bytes::from_static(b"first")).unwrap();
                returned.store(true, Ordering::SeqCst);
                sender.send(Bytes::from_static(b"second")).unwrap();
                sender.send(Bytes::from_static(b"third"))
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            !returned.load(Ordering::SeqCst),
            "send returned with its chunk still waiting"
        );
        let first = runtime.block_on(stream.next()).unwrap();
        assert_eq!(first.as_deref(), Some(&b"first"[..]));
        // The consumer gives up with "second" waiting: the producer is not left hanging.
        while stream.rx.is_empty() {
            std::thread::yield_now();
        }
        assert!(returned.load(Ordering::SeqCst));
        drop(stream);
        let third = producer.join().unwrap();
        assert_eq!(third.unwrap_err().kind(), std::io::ErrorKind::BrokenPipe);
    }
}
