//! A download that survives a dropped connection.
//!
//! An S3 client retries a request that fails before its response arrives, but once the
//! body is streaming, a reset connection surfaces as a read error in the middle of the
//! object, and nobody retries that. A restore of a large archive over a flaky link would
//! then start again from byte zero, or fail. [`ResumingReader`] asks for the rest of the
//! object from the byte it got to instead, a bounded number of times in a row.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};

use super::{ObjectReader, Result, StoreError};

/// Failed reads in a row, without a byte of progress in between, before giving up.
pub const MAX_RESUMES: u32 = 5;

/// The first wait before asking again; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

type Reopen = Box<dyn Fn(u64) -> ReopenFuture + Send + Sync>;
type ReopenFuture = Pin<Box<dyn Future<Output = Result<ObjectReader>> + Send>>;

/// Reads an object from `offset` on; on a read error it calls `reopen(offset)` for the
/// rest of the object, where `offset` counts every byte already handed out.
pub struct ResumingReader {
    what: String,
    offset: u64,
    failures: u32,
    backoff: Duration,
    reopen: Reopen,
    state: State,
}

enum State {
    Reading(ObjectReader),
    Reopening(ReopenFuture),
    Failed,
}

impl ResumingReader {
    /// `first` reads the object from `offset`; `reopen(at)` must return a reader of the
    /// same object version from byte `at` (or fail). `what` names the object in errors.
    pub fn new(
        what: String,
        first: ObjectReader,
        offset: u64,
        reopen: impl Fn(u64) -> ReopenFuture + Send + Sync + 'static,
    ) -> Self {
        Self {
            what,
            offset,
            failures: 0,
            backoff: FIRST_BACKOFF,
            reopen: Box::new(reopen),
            state: State::Reading(first),
        }
    }

    #[cfg(test)]
    fn without_backoff(mut self) -> Self {
        self.backoff = Duration::ZERO;
        self
    }

    /// Counts a failure and schedules the next attempt, or gives up with `err`.
    fn retry_after(&mut self, err: StoreError) -> io::Result<()> {
        self.failures += 1;
        // A missing object will not come back: no point in asking again.
        if self.failures > MAX_RESUMES || matches!(err, StoreError::NotFound(_)) {
            self.state = State::Failed;
            return Err(io::Error::other(format!(
                "reading {} failed at byte {} after {} attempts in a row: {err:#}",
                self.what, self.offset, self.failures
            )));
        }
        tracing::warn!(
            object = %self.what,
            offset = self.offset,
            attempt = self.failures,
            error = %format!("{err:#}"),
            "download interrupted; asking for the rest of the object"
        );
        let wait = self.backoff * 2u32.pow(self.failures - 1);
        let next = (self.reopen)(self.offset);
        self.state = State::Reopening(Box::pin(async move {
            tokio::time::sleep(wait).await;
            next.await
        }));
        Ok(())
    }
}

impl AsyncRead for ResumingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Reading(reader) => {
                    let before = buf.filled().len();
                    match ready!(Pin::new(reader).poll_read(cx, buf)) {
                        Ok(()) => {
                            let read = (buf.filled().len() - before) as u64;
                            if read > 0 {
                                this.offset += read;
                                this.failures = 0;
                            }
                            return Poll::Ready(Ok(()));
                        }
                        Err(err) => {
                            // Bytes from a failed read are never handed out, so the
                            // offset still counts exactly what the caller has.
                            buf.set_filled(before);
                            this.retry_after(err.into())?;
                        }
                    }
                }
                State::Reopening(next) => match ready!(next.as_mut().poll(cx)) {
                    Ok(reader) => this.state = State::Reading(reader),
                    Err(err) => this.retry_after(err)?,
                },
                State::Failed => {
                    return Poll::Ready(Err(io::Error::other(format!(
                        "reading {} already failed",
                        this.what
                    ))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::AsyncReadExt;

    /// Serves `data[offset..]` but fails after `cut` bytes, like a connection reset
    /// mid-body.
    struct Flaky {
        data: &'static [u8],
        at: usize,
        cut: usize,
    }

    impl AsyncRead for Flaky {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.cut == 0 && self.at < self.data.len() {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            let n = buf
                .remaining()
                .min(self.cut)
                .min(self.data.len() - self.at)
                .min(3);
            let start = self.at;
            buf.put_slice(&self.data[start..start + n]);
            self.at += n;
            self.cut -= n;
            Poll::Ready(Ok(()))
        }
    }

    const DATA: &[u8] = b"the quick brown fox jumps over the lazy dog";

    fn flaky(offset: u64, cut: usize) -> ObjectReader {
        Box::new(Flaky {
            data: DATA,
            at: offset as usize,
            cut,
        })
    }

    #[tokio::test]
    async fn a_reset_mid_object_resumes_from_the_bytes_already_read() {
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        let mut reader = ResumingReader::new("obj".into(), flaky(4, 7), 4, move |at| {
            log.lock().unwrap().push(at);
            Box::pin(async move { Ok(flaky(at, 10)) })
        })
        .without_backoff();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, &DATA[4..]);
        // Each reopen starts exactly where the previous reader failed.
        assert_eq!(*asked.lock().unwrap(), vec![11, 21, 31, 41]);
    }

    #[tokio::test]
    async fn it_gives_up_after_a_bounded_number_of_failures_without_progress() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let mut reader = ResumingReader::new("obj".into(), flaky(0, 5), 0, move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err(anyhow::anyhow!("connection refused").into()) })
        })
        .without_backoff();
        let mut got = Vec::new();
        let err = reader.read_to_end(&mut got).await.unwrap_err().to_string();
        assert_eq!(calls.load(Ordering::SeqCst), MAX_RESUMES);
        assert!(err.contains("failed at byte 5"), "{err}");
        assert!(err.contains("connection refused"), "{err}");
    }

    #[tokio::test]
    async fn a_vanished_object_is_not_asked_for_again() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let mut reader = ResumingReader::new("obj".into(), flaky(0, 5), 0, move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err(StoreError::NotFound("obj".into())) })
        })
        .without_backoff();
        let mut got = Vec::new();
        assert!(reader.read_to_end(&mut got).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
