//! The store contract: what every backend of the `Store` trait must do, checked the same
//! way against each (like Litestream's `RunWithReplicaClient` and restic's backend test
//! suite): the local directory and the real S3 server (moto, through the fault proxy so a
//! download can be cut for real). A new backend gets one more `#[tokio::test]` calling
//! [`contract`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use ghostwire_backup::layout::Object;
use ghostwire_backup::manifest::{ArchiveInfo, ArchiveParts};
use ghostwire_backup::parts::{self, Uploaded};
use ghostwire_backup::store::local::LocalStore;
use ghostwire_backup::store::resume::ResumingReader;
use ghostwire_backup::store::s3::{S3Options, S3Store};
use ghostwire_backup::store::{
    ObjectInfo, ObjectReader, Retention, Store, StoreError, chunk_channel,
};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::common::S3Server;
use crate::common::faults::{Fault, FaultProxy};

/// A backend under test.
struct Backend {
    name: &'static str,
    store: Arc<dyn Store>,
    /// What interrupted writes left behind in the backend (partial files, open multipart
    /// uploads): must be nothing.
    leftovers: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    /// Breaks the connection of the next download of `key` mid-body, if the backend has
    /// a connection to break.
    cut_next_download: Option<Box<dyn Fn(&'static str) + Send + Sync>>,
}

/// A part of a test archive.
const PART: usize = 1 << 20;

async fn contract(backend: &Backend) {
    put_get_list_delete(backend).await;
    archives_go_up_in_parts_and_read_back_whole(backend).await;
    an_abandoned_archive_leaves_no_part(backend).await;
    conditional_writes(backend).await;
    racing_writers_exactly_one_wins(backend).await;
    reads_resume_where_they_stopped(backend).await;
}

async fn read_all(store: &dyn Store, key: &str, offset: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    store
        .get(key, offset)
        .await
        .unwrap_or_else(|e| panic!("get {key} from {offset}: {e:#}"))
        .read_to_end(&mut bytes)
        .await
        .unwrap();
    bytes
}

fn keys(listing: &[ObjectInfo]) -> Vec<&str> {
    listing.iter().map(|o| o.key.as_str()).collect()
}

async fn put(store: &dyn Store, key: &str, data: &'static [u8]) {
    store
        .put(key, Bytes::from_static(data), Retention::Replaceable)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e:#}"));
}

async fn put_get_list_delete(backend: &Backend) {
    let (name, store) = (backend.name, &*backend.store);
    for (key, data) in [
        ("basic/b", &b"bee"[..]),
        ("basic/a", &b"hello world"[..]),
        ("basic/a2", &b""[..]),
        ("basic/sub/c", &b"sea"[..]),
        ("other/x", &b"x"[..]),
    ] {
        put(store, key, data).await;
    }
    let listed = store.list("basic/").await.unwrap();
    assert_eq!(
        keys(&listed),
        ["basic/a", "basic/a2", "basic/b", "basic/sub/c"],
        "{name}: a listing is sorted by key and holds only the prefix"
    );
    assert_eq!(
        listed.iter().map(|o| o.size).collect::<Vec<_>>(),
        [11, 0, 3, 3],
        "{name}: sizes"
    );
    assert_eq!(
        keys(&store.list("basic/a").await.unwrap()),
        ["basic/a", "basic/a2"],
        "{name}: a prefix need not end at a slash"
    );
    assert!(store.list("nothing/").await.unwrap().is_empty(), "{name}");

    assert_eq!(
        read_all(store, "basic/a", 0).await,
        b"hello world",
        "{name}"
    );
    assert_eq!(
        read_all(store, "basic/a", 6).await,
        b"world",
        "{name}: offset"
    );
    assert_eq!(
        read_all(store, "basic/a", 11).await,
        b"",
        "{name}: offset at the end"
    );
    put(store, "basic/a", b"replaced").await;
    assert_eq!(
        read_all(store, "basic/a", 0).await,
        b"replaced",
        "{name}: put replaces"
    );

    match store.get("basic/missing", 0).await {
        Err(StoreError::NotFound(key)) => assert_eq!(key, "basic/missing", "{name}"),
        Err(e) => panic!("{name}: a missing key must be NotFound, not {e:#}"),
        Ok(_) => panic!("{name}: a missing key was found"),
    }
    store.delete("basic/b").await.unwrap();
    assert!(
        matches!(store.get("basic/b", 0).await, Err(StoreError::NotFound(_))),
        "{name}: deleted"
    );
    store
        .delete("basic/b")
        .await
        .unwrap_or_else(|e| panic!("{name}: deleting a missing object must succeed: {e:#}"));
    assert_eq!(
        keys(&store.list("basic/").await.unwrap()),
        ["basic/a", "basic/a2", "basic/sub/c"],
        "{name}"
    );
    for bad in ["", "/abs", "a//b", "a/../b", "./a"] {
        assert!(
            store.get(bad, 0).await.is_err(),
            "{name}: the key {bad:?} must be refused"
        );
    }
}

/// The bytes of a test archive: `parts` full parts and a short tail, each part filled
/// with its own byte so a reordering shows.
fn stream_content(parts: u8) -> Vec<Bytes> {
    let mut chunks: Vec<Bytes> = (0..parts)
        .map(|i| Bytes::from(vec![b'a' + i; PART]))
        .collect();
    chunks.push(Bytes::from_static(b"tail"));
    chunks
}

/// The snapshot id of the test archive.
const ARCHIVE: &str = "20261206T120000.000Z-0c0ffee0";

/// Uploads `chunks` as the test archive's parts ([`parts::upload`]), produced on a
/// thread as the archive writer does; without `finish`, the producer gives up.
async fn upload_archive(
    store: &Arc<dyn Store>,
    chunks: Vec<Bytes>,
    finish: bool,
) -> Result<Uploaded, StoreError> {
    let (tx, rx) = chunk_channel(1);
    let producer = std::thread::spawn(move || {
        for chunk in chunks {
            if tx.send(chunk).is_err() {
                return;
            }
        }
        if finish {
            tx.finish().unwrap();
        }
    });
    let uploaded = parts::upload(store, &Object::Archive(ARCHIVE.into()), rx).await;
    producer.join().unwrap();
    uploaded
}

/// What a manifest says of the test archive once uploaded.
fn archive_info(uploaded: Uploaded) -> ArchiveInfo {
    ArchiveInfo {
        key: Object::Archive(ARCHIVE.into()).key(),
        size: uploaded.size,
        sha256: String::new(),
        encoding: "tar+zstd+age".into(),
        header: None,
        parts: Some(ArchiveParts {
            size: uploaded.part_size,
        }),
    }
}

async fn archives_go_up_in_parts_and_read_back_whole(backend: &Backend) {
    let (name, store) = (backend.name, &backend.store);
    let chunks = stream_content(2);
    let expected: Vec<u8> = chunks.concat();
    let uploaded = upload_archive(store, chunks, true).await.unwrap();
    assert_eq!(
        uploaded,
        Uploaded {
            size: expected.len() as u64,
            part_size: PART as u64
        },
        "{name}"
    );
    let archive = Object::Archive(ARCHIVE.into());
    let sizes = [PART as u64, PART as u64, 4];
    let listed: Vec<ObjectInfo> = (1..=3)
        .map(|n| ObjectInfo {
            key: archive.part_key(n),
            size: sizes[n as usize - 1],
        })
        .collect();
    assert_eq!(store.list("archives/").await.unwrap(), listed, "{name}");
    let mut read = Vec::new();
    parts::open(store, ARCHIVE, &archive_info(uploaded))
        .await
        .unwrap()
        .read_to_end(&mut read)
        .await
        .unwrap();
    assert!(
        read == expected,
        "{name}: the parts, in order, are the archive"
    );
    parts::delete(store, &archive).await.unwrap();
    assert!(store.list("archives/").await.unwrap().is_empty(), "{name}");
}

async fn an_abandoned_archive_leaves_no_part(backend: &Backend) {
    let (name, store) = (backend.name, &backend.store);
    let result = upload_archive(store, stream_content(2), false).await;
    assert!(
        matches!(result, Err(StoreError::Abandoned)),
        "{name}: an abandoned stream must fail as Abandoned, not {:?}",
        result.map_err(|e| format!("{e:#}"))
    );
    assert!(store.list("archives/").await.unwrap().is_empty(), "{name}");
    let leftovers = (backend.leftovers)();
    assert!(
        leftovers.is_empty(),
        "{name}: an abandoned stream left {leftovers:?}"
    );
}

async fn conditional_writes(backend: &Backend) {
    let (name, store) = (backend.name, &*backend.store);
    let key = "cas/lease";
    assert!(
        store.get_versioned(key, 1 << 20).await.unwrap().is_none(),
        "{name}"
    );
    let v1 = store
        .put_if(key, Bytes::from_static(b"one"), None)
        .await
        .unwrap_or_else(|e| panic!("{name}: create if absent: {e:#}"));
    let (data, version) = store.get_versioned(key, 1 << 20).await.unwrap().unwrap();
    assert_eq!((&data[..], &version), (&b"one"[..], &v1), "{name}");
    let conflict = store.put_if(key, Bytes::from_static(b"x"), None).await;
    assert!(
        matches!(&conflict, Err(StoreError::Conflict(k)) if k == key),
        "{name}: create over an existing object must conflict: {:?}",
        conflict.map_err(|e| format!("{e:#}"))
    );
    let v2 = store
        .put_if(key, Bytes::from_static(b"two"), Some(&v1))
        .await
        .unwrap_or_else(|e| panic!("{name}: swap: {e:#}"));
    assert_ne!(v1, v2, "{name}: a new content has a new version");
    let stale = store.put_if(key, Bytes::from_static(b"x"), Some(&v1)).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict(_))),
        "{name}: a swap from a stale version must conflict"
    );
    // A plain put in between is a change too.
    put(store, key, b"three").await;
    let (_, v3) = store.get_versioned(key, 1 << 20).await.unwrap().unwrap();
    assert!(
        matches!(
            store.put_if(key, Bytes::from_static(b"x"), Some(&v2)).await,
            Err(StoreError::Conflict(_))
        ),
        "{name}"
    );
    // And so is a delete: the version expected is gone.
    store.delete(key).await.unwrap();
    let gone = store.put_if(key, Bytes::from_static(b"x"), Some(&v3)).await;
    assert!(
        matches!(gone, Err(StoreError::Conflict(_))),
        "{name}: a swap of a deleted object must conflict: {:?}",
        gone.map_err(|e| format!("{e:#}"))
    );
    assert!(
        store.get_versioned(key, 1 << 20).await.unwrap().is_none(),
        "{name}"
    );
}

async fn racing_writers_exactly_one_wins(backend: &Backend) {
    let (name, store) = (backend.name, &backend.store);
    const WRITERS: usize = 4;
    let race = async |key: &'static str, expected: Option<String>| {
        let writers = (0..WRITERS).map(|i| {
            let (store, expected) = (store.clone(), expected.clone());
            tokio::spawn(async move {
                // Never the content already there: versions may be content hashes (ETags
                // are), and rewriting the same bytes is no change to conflict with.
                let data = Bytes::from(format!("{key} writer {i} expecting {expected:?}"));
                (
                    data.clone(),
                    store.put_if(key, data, expected.as_deref()).await,
                )
            })
        });
        let mut winners = Vec::new();
        for writer in writers.collect::<Vec<_>>() {
            match writer.await.unwrap() {
                (data, Ok(version)) => winners.push((data, version)),
                (_, Err(StoreError::Conflict(_))) => {}
                (_, Err(e)) => panic!("{name}: a racing writer failed otherwise: {e:#}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "{name}: exactly one of {WRITERS} racing writers must win"
        );
        let (data, version) = winners.pop().unwrap();
        assert_eq!(
            store.get_versioned(key, 1 << 20).await.unwrap(),
            Some((data, version.clone())),
            "{name}: the winner's write is what is stored"
        );
        version
    };
    for round in 0..3 {
        let key = ["race/0", "race/1", "race/2"][round];
        let created = race(key, None).await;
        race(key, Some(created)).await;
    }
}

type Reopened = std::pin::Pin<Box<dyn Future<Output = Result<ObjectReader, StoreError>> + Send>>;

/// Hands out `limit` bytes of `inner`, then fails like a connection reset.
struct CutAfter {
    inner: ObjectReader,
    limit: usize,
}

impl AsyncRead for CutAfter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.limit == 0 {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
        }
        let mut part = vec![0; buf.remaining().min(self.limit)];
        let mut limited = ReadBuf::new(&mut part);
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        buf.put_slice(limited.filled());
        self.limit -= limited.filled().len();
        poll
    }
}

async fn reads_resume_where_they_stopped(backend: &Backend) {
    let (name, store) = (backend.name, &backend.store);
    let key = "resume/object";
    // 7.5 MiB: cut after 1 MB, then every 2 MB.
    let content: Vec<u8> = (0..15usize << 19).map(|i| (i % 251) as u8).collect();
    store
        .put(key, Bytes::from(content.clone()), Retention::Retain)
        .await
        .unwrap();

    // The resume protocol on top of the store's own ranged reads: a reader cut mid-object
    // continues from the byte it got to with `get(key, offset)`.
    let reopened = Arc::new(AtomicU32::new(0));
    let first: ObjectReader = Box::new(CutAfter {
        inner: store.get(key, 0).await.unwrap(),
        limit: 1_000_003,
    });
    let reopen = {
        let (store, reopened) = (store.clone(), reopened.clone());
        move |at: u64| -> Reopened {
            let (store, reopened) = (store.clone(), reopened.clone());
            Box::pin(async move {
                reopened.fetch_add(1, Ordering::SeqCst);
                let rest: ObjectReader = Box::new(CutAfter {
                    inner: store.get(key, at).await?,
                    limit: 2_000_000,
                });
                Ok(rest)
            })
        }
    };
    let mut resumed = Vec::new();
    ResumingReader::new(key.into(), first, 0, reopen)
        .read_to_end(&mut resumed)
        .await
        .unwrap_or_else(|e| panic!("{name}: resumed read: {e}"));
    assert!(resumed == content, "{name}: a resumed read is the object");
    assert_eq!(
        reopened.load(Ordering::SeqCst),
        4,
        "{name}: resumed 4 times"
    );

    // A real connection cut in the middle of a download.
    if let Some(cut) = &backend.cut_next_download {
        cut(key);
        assert!(
            read_all(&**store, key, 0).await == content,
            "{name}: a download cut mid-body resumes to the whole object"
        );
        cut(key);
        assert!(
            read_all(&**store, key, 1000).await == content[1000..],
            "{name}: a download from an offset cut mid-body resumes too"
        );
    }
    store.delete(key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_directory_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    contract(&Backend {
        name: "local",
        store: Arc::new(LocalStore::new(&root)),
        leftovers: Box::new(move || {
            let mut found = Vec::new();
            let mut dirs = vec![root.clone()];
            while let Some(dir) = dirs.pop() {
                for entry in std::fs::read_dir(&dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        dirs.push(path);
                    } else if path.to_string_lossy().contains(".partial-") {
                        found.push(path.display().to_string());
                    }
                }
            }
            found
        }),
        cut_next_download: None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_s3_store_keeps_the_contract() {
    let server = Arc::new(S3Server::start_serial());
    server.create_bucket("contract");
    let proxy = Arc::new(FaultProxy::start(&server, 7));
    let store = s3_store_through(&proxy, "contract").await;
    let uploads = server.clone();
    let cutter = proxy.clone();
    contract(&Backend {
        name: "s3",
        store: Arc::new(store),
        leftovers: Box::new(move || match uploads.open_uploads("contract", "repo/") {
            0 => Vec::new(),
            n => vec![format!("{n} open multipart uploads")],
        }),
        cut_next_download: Some(Box::new(move |key| {
            cutter.force("GET", key, Fault::CutBody);
        })),
    })
    .await;
    assert_eq!(proxy.pending_forced(), 0, "every forced cut hit a download");
    assert_eq!(proxy.stats().count(Fault::CutBody), 2);
}

/// The repository `repo` in `bucket`, reached through `proxy`: 3 attempts a request, 2
/// parts in flight.
async fn s3_store_through(proxy: &FaultProxy, bucket: &str) -> S3Store {
    crate::common::in_process_s3_credentials();
    let options = S3Options {
        endpoint: Some(proxy.endpoint.clone()),
        region: Some("us-east-1".into()),
        path_style: true,
        max_attempts: 3,
        parallel_parts: 2,
        object_lock: None,
    };
    S3Store::connect(bucket, "repo", &options).await.unwrap()
}

/// A part's CRC32 as S3 writes it: base64 of the big-endian value.
fn crc32_base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(crc32fast::hash(data).to_be_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_uploaded_part_carries_its_checksum_and_the_parts_are_the_archive() {
    let server = Arc::new(S3Server::with_bucket("checksums"));
    let proxy = FaultProxy::start(&server, 11);
    proxy.record("PUT", ".tar.zst.age.0");
    let store: Arc<dyn Store> = Arc::new(s3_store_through(&proxy, "checksums").await);
    let chunks = stream_content(3);
    let expected: Vec<u8> = chunks.concat();
    let uploaded = upload_archive(&store, chunks, true).await.unwrap();
    assert_eq!(uploaded.size, expected.len() as u64);

    // Every part carries the CRC32 of exactly the bytes it carries, as a plain header (the
    // proxy refuses aws-chunked bodies), so S3 can refuse a part damaged on the way.
    let mut parts: Vec<_> = proxy
        .stats()
        .recorded
        .iter()
        .map(|r| {
            assert_eq!(r.method, "PUT", "{}", r.target);
            let crc = r.header("x-amz-checksum-crc32");
            assert_eq!(crc, Some(crc32_base64(&r.body).as_str()), "{}", r.target);
            (r.target.clone(), r.body.clone())
        })
        .collect();
    parts.sort();
    assert_eq!(parts.len(), 4, "three full parts and the tail");
    assert!(
        parts
            .iter()
            .flat_map(|(_, body)| body.iter().copied())
            .eq(expected.iter().copied()),
        "the parts, in order, are the archive"
    );
    let mut read = Vec::new();
    parts::open(&store, ARCHIVE, &archive_info(uploaded))
        .await
        .unwrap()
        .read_to_end(&mut read)
        .await
        .unwrap();
    assert!(read == expected, "byte-identical");
}
