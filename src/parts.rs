//! An archive stored in parts (format 4, [`crate::manifest::ArchiveParts`]): the upload
//! chunks the archive writer cuts become objects of their own, `<archive key>.000001`,
//! `.000002`, …, and a restore reads them back as one stream.
//!
//! Why parts rather than one multipart upload: a multipart upload ends with a completion
//! request in which the server assembles the object, and S3-compatible servers differ
//! there. moto copies every part again (7 s a GiB on this machine, longer than sending the
//! parts), some servers rewrite the parts into one file, and a server that loads an object
//! whole before its first byte (moto again) makes a multi-GiB restore wait for it. Plain
//! PUTs of a few MiB, as restic's pack files are, cost the same everywhere. The commit
//! point is unchanged: parts without a manifest are an interrupted backup, which prune
//! deletes as it deletes an orphan archive.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use anyhow::anyhow;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use crate::layout::Object;
use crate::manifest::ArchiveInfo;
use crate::store::{self, ChunkStream, ObjectReader, Retention, Store, StoreError};

/// Parts a restore asks for before it reads them: each GET's wait for its first byte
/// overlaps the reading of the part before. Each costs a connection's buffers, not a part.
const READ_AHEAD: usize = 2;

/// What an archive's upload stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    /// Bytes in all.
    pub size: u64,
    /// Bytes in every part but the last ([`crate::manifest::ArchiveParts::size`]).
    pub part_size: u64,
}

/// Uploads `body` as the parts of `archive`, at most `store.parallel_writes()` at a time.
/// Every chunk but the last must have the first one's size (the archive writer cuts them
/// so). On any failure, or if the producer gives up, the parts already stored are deleted
/// (best effort: what stays is an orphan for prune) and nothing claims to be complete.
pub async fn upload(
    store: &Arc<dyn Store>,
    archive: &Object,
    body: ChunkStream,
) -> store::Result<Uploaded> {
    let mut in_flight = JoinSet::new();
    let mut stored = 0u64;
    let result = send_parts(store, archive, body, &mut in_flight, &mut stored).await;
    if result.is_err() {
        // Let the parts in flight end first, so that none is stored after its delete.
        while in_flight.join_next().await.is_some() {}
        let keys = (1..=stored).map(|n| archive.part_key(n)).collect();
        if let Err(err) = delete_all(store, keys).await {
            tracing::warn!(
                archive = %archive,
                error = format!("{:#}", anyhow::Error::from(err)),
                "could not delete the parts of an unfinished archive; prune removes them"
            );
        }
    }
    result
}

/// Puts each chunk of `body` as the next part, counting in `stored` the parts sent, and
/// waits for them all.
async fn send_parts(
    store: &Arc<dyn Store>,
    archive: &Object,
    mut body: ChunkStream,
    in_flight: &mut JoinSet<store::Result<()>>,
    stored: &mut u64,
) -> store::Result<Uploaded> {
    let slots = Arc::new(Semaphore::new(store.parallel_writes().max(1)));
    let mut uploaded = Uploaded {
        size: 0,
        part_size: 0,
    };
    let mut last_was_short = false;
    loop {
        // The part's slot before the part: while every slot is busy the producer waits
        // holding its chunk, instead of this loop holding one more.
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(anyhow::Error::from)?;
        let Some(chunk) = body.next().await? else {
            break;
        };
        let len = chunk.len() as u64;
        if uploaded.part_size == 0 {
            uploaded.part_size = len;
        }
        if last_was_short || len > uploaded.part_size || len == 0 {
            return Err(anyhow!("the archive writer cut a part of {len} bytes out of turn").into());
        }
        last_was_short = len < uploaded.part_size;
        uploaded.size += len;
        // Surface a failed part early instead of uploading the rest for nothing.
        while let Some(done) = in_flight.try_join_next() {
            done.map_err(anyhow::Error::from)??;
        }
        *stored += 1;
        let (store, key) = (store.clone(), archive.part_key(*stored));
        in_flight.spawn(async move {
            let put = store.put(&key, chunk, Retention::Retain).await;
            drop(slot);
            put
        });
    }
    while let Some(done) = in_flight.join_next().await {
        done.map_err(anyhow::Error::from)??;
    }
    if uploaded.size == 0 {
        return Err(anyhow!("the archive stream ended before its first byte").into());
    }
    Ok(uploaded)
}

/// Deletes every part of `archive` a listing shows (the parts count of a manifest is not
/// needed: an interrupted upload has none).
pub async fn delete(store: &Arc<dyn Store>, archive: &Object) -> store::Result<()> {
    let keys = store
        .list(&format!("{}.", archive.key()))
        .await?
        .into_iter()
        .map(|info| info.key)
        .filter(|key| Object::parse(key).as_ref() == Some(archive))
        .collect();
    delete_all(store, keys).await
}

/// Deletes `keys`, several at a time (a 2 GiB archive has some 400 parts). A part under
/// Object Lock retention fails with [`StoreError::Retained`], after the others went.
async fn delete_all(store: &Arc<dyn Store>, keys: Vec<String>) -> store::Result<()> {
    let slots = Arc::new(Semaphore::new(store.parallel_writes().max(1)));
    let mut deletes = JoinSet::new();
    for key in keys {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(anyhow::Error::from)?;
        let store = store.clone();
        deletes.spawn(async move {
            let deleted = store.delete(&key).await;
            drop(slot);
            deleted
        });
    }
    let mut first_error = None;
    while let Some(done) = deletes.join_next().await {
        let deleted = done.unwrap_or_else(|panic| Err(anyhow::Error::from(panic).into()));
        if let Err(err) = deleted {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The archive of snapshot `id` as one stream of the bytes its manifest states: the
/// object under its key, or its parts in order, each read to exactly its stated size.
/// The first part is opened before this returns, so a missing archive fails here.
pub async fn open(
    store: &Arc<dyn Store>,
    id: &str,
    archive: &ArchiveInfo,
) -> store::Result<ObjectReader> {
    let Some(parts) = archive.parts else {
        return store.get(&archive.key, 0).await;
    };
    let object = Object::Archive(id.to_string());
    let mut reader = PartsReader {
        store: store.clone(),
        waiting: parts
            .ranges(archive.size)
            .into_iter()
            .map(|(number, size)| (object.part_key(number), size))
            .collect(),
        asked: VecDeque::new(),
        current: None,
    };
    reader.ask_ahead();
    if let Some((key, size, get)) = reader.asked.pop_front() {
        let first = get.await.map_err(anyhow::Error::from)??;
        reader.current = Some((key, first, size));
        reader.ask_ahead();
    }
    Ok(Box::new(reader))
}

/// A stored part whose size is not the one the manifest states.
fn mismatch(key: &str, how: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "archive part {key} does not match its manifest: it {how} the size the manifest \
             states (the repository's copy is damaged or was replaced)"
        ),
    )
}

/// Reads parts one after another, the next [`READ_AHEAD`] already asked for.
struct PartsReader {
    store: Arc<dyn Store>,
    /// Parts not asked for yet: key and size.
    waiting: VecDeque<(String, u64)>,
    /// Parts whose GET is on its way, in order.
    asked: VecDeque<(String, u64, JoinHandle<store::Result<ObjectReader>>)>,
    /// The part being read: key, reader, bytes still expected.
    current: Option<(String, ObjectReader, u64)>,
}

impl PartsReader {
    fn ask_ahead(&mut self) {
        while self.asked.len() < READ_AHEAD
            && let Some((key, size)) = self.waiting.pop_front()
        {
            let (store, name) = (self.store.clone(), key.clone());
            let get = tokio::spawn(async move { store.get(&name, 0).await });
            self.asked.push_back((key, size, get));
        }
    }
}

impl Drop for PartsReader {
    fn drop(&mut self) {
        for (_, _, get) in &self.asked {
            get.abort();
        }
    }
}

impl AsyncRead for PartsReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some((key, reader, left)) = &mut this.current {
                if *left == 0 {
                    // Its end must be here too: a longer part is another archive's.
                    let mut past = [0u8; 1];
                    let mut past = ReadBuf::new(&mut past);
                    ready!(Pin::new(reader).poll_read(cx, &mut past))?;
                    if !past.filled().is_empty() {
                        return Poll::Ready(Err(mismatch(key, "is longer than")));
                    }
                    this.current = None;
                    continue;
                }
                let room = buf
                    .remaining()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                let mut limited = buf.take(room);
                ready!(Pin::new(reader).poll_read(cx, &mut limited))?;
                let n = limited.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(mismatch(key, &format!("ends {left} bytes short of"))));
                }
                // SAFETY: `limited` filled these bytes of `buf`'s unfilled part.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                *left -= n as u64;
                return Poll::Ready(Ok(()));
            }
            let Some((key, size, get)) = this.asked.front_mut() else {
                return Poll::Ready(Ok(())); // every part read: the end
            };
            let opened = ready!(Pin::new(get).poll(cx))
                .map_err(io::Error::other)?
                .map_err(|err| match err {
                    StoreError::NotFound(key) => io::Error::new(
                        io::ErrorKind::NotFound,
                        format!(
                            "archive part {key} is missing: the repository's copy is \
                             damaged or was deleted"
                        ),
                    ),
                    other => io::Error::other(anyhow::Error::from(other)),
                })?;
            let (key, size) = (std::mem::take(key), *size);
            this.asked.pop_front();
            this.current = Some((key, opened, size));
            this.ask_ahead();
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::manifest::ArchiveParts;
    use crate::store::chunk_channel;
    use crate::store::local::LocalStore;

    const ID: &str = "20261206T120000.000Z-0badcafe";

    fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        Arc::new(LocalStore::new(dir.path()))
    }

    /// Uploads `chunks` as snapshot ID's archive, the producer on a thread as in a backup.
    async fn upload_chunks(
        store: &Arc<dyn Store>,
        chunks: Vec<Vec<u8>>,
        finish: bool,
    ) -> store::Result<Uploaded> {
        let (sender, body) = chunk_channel(1);
        let producer = std::thread::spawn(move || {
            // A refused chunk stops the upload, and with it the producer.
            for chunk in chunks {
                if sender.send(Bytes::from(chunk)).is_err() {
                    return;
                }
            }
            if finish {
                let _ = sender.finish();
            }
        });
        let uploaded = upload(store, &Object::Archive(ID.into()), body).await;
        producer.join().unwrap();
        uploaded
    }

    fn info(size: u64, part: u64) -> ArchiveInfo {
        ArchiveInfo {
            key: Object::Archive(ID.into()).key(),
            size,
            sha256: String::new(),
            encoding: crate::archive::ENCODING.into(),
            header: None,
            parts: Some(ArchiveParts { size: part }),
        }
    }

    async fn read_all(store: &Arc<dyn Store>, archive: &ArchiveInfo) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        open(store, ID, archive)
            .await
            .map_err(io::Error::other)?
            .read_to_end(&mut bytes)
            .await?;
        Ok(bytes)
    }

    async fn keys(store: &Arc<dyn Store>) -> Vec<String> {
        let listed = store.list("archives/").await.unwrap();
        listed.into_iter().map(|info| info.key).collect()
    }

    fn content(parts: usize, last: usize) -> Vec<Vec<u8>> {
        (0..parts)
            .map(|k| {
                let len = if k + 1 == parts { last } else { 1000 };
                (0..len).map(|i| (i * 7 + k * 13) as u8).collect()
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_archive_goes_up_in_numbered_parts_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let chunks = content(12, 345);
        let whole = chunks.concat();
        let uploaded = upload_chunks(&store, chunks, true).await.unwrap();
        assert_eq!(
            uploaded,
            Uploaded {
                size: whole.len() as u64,
                part_size: 1000
            }
        );
        let archive = Object::Archive(ID.into());
        let expected: Vec<String> = (1..=12).map(|n| archive.part_key(n)).collect();
        assert_eq!(keys(&store).await, expected);
        assert_eq!(
            read_all(&store, &info(uploaded.size, 1000)).await.unwrap(),
            whole
        );
        // An archive whose size is a whole number of parts.
        let parts = ArchiveParts { size: 1000 };
        assert_eq!(parts.ranges(12_000).len(), 12);
        assert_eq!(parts.ranges(12_001).last(), Some(&(13, 1)));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_missing_or_short_part_fails_the_read_and_names_the_part() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let uploaded = upload_chunks(&store, content(5, 10), true).await.unwrap();
        let archive = Object::Archive(ID.into());
        let whole = info(uploaded.size, uploaded.part_size);

        let third = archive.part_key(3);
        let full = std::fs::read(dir.path().join(&third)).unwrap();
        std::fs::write(dir.path().join(&third), &full[..999]).unwrap();
        let err = read_all(&store, &whole).await.unwrap_err().to_string();
        assert!(
            err.contains(&third) && err.contains("ends 1 bytes short"),
            "{err}"
        );

        std::fs::remove_file(dir.path().join(&third)).unwrap();
        let err = read_all(&store, &whole).await.unwrap_err();
        assert!(format!("{err:#}").contains(&third), "{err:#}");

        std::fs::write(dir.path().join(&third), [full.as_slice(), b"junk"].concat()).unwrap();
        let err = read_all(&store, &whole).await.unwrap_err().to_string();
        assert!(
            err.contains(&third) && err.contains("is longer than"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_abandoned_upload_leaves_no_part() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let err = upload_chunks(&store, content(6, 1000), false)
            .await
            .unwrap_err();
        assert!(matches!(err, store::StoreError::Abandoned), "{err}");
        assert_eq!(keys(&store).await, Vec::<String>::new());

        // Chunks cut out of turn (a short one before the end) are refused the same way.
        let mut chunks = content(4, 1000);
        chunks[1].truncate(10);
        let err = upload_chunks(&store, chunks, true).await.unwrap_err();
        assert!(err.to_string().contains("out of turn"), "{err}");
        assert_eq!(keys(&store).await, Vec::<String>::new());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn deleting_an_archive_deletes_its_parts_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        upload_chunks(&store, content(3, 10), true).await.unwrap();
        let other = Object::Archive("20261206T120001.000Z-0badcafe".into());
        store
            .put(
                &other.part_key(1),
                Bytes::from_static(b"x"),
                Retention::Retain,
            )
            .await
            .unwrap();
        delete(&store, &Object::Archive(ID.into())).await.unwrap();
        assert_eq!(keys(&store).await, vec![other.part_key(1)]);
    }
}
