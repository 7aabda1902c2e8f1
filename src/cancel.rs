//! Cancellation: one token, checked inside every long phase of the synchronous core.
//!
//! The daemon cancels it at a deadline (`--final-deadline`, `--backup-timeout`) or on
//! SIGTERM; `restore` and `verify` on SIGTERM/SIGINT. The core runs on a plain thread, so a
//! deadline can only be kept if the work itself looks at the token often: between database
//! pages, files, archive entries, reads of a large file, and from inside SQLite through a
//! progress handler. The token also remembers which phase the work is in, so a cut says
//! what it cut, and carries the work's [`Progress`] counters, so a progress display
//! names the same phases.

use std::io::{self, Read};

use tokio_util::sync::CancellationToken;

use crate::progress::Progress;

/// The error of work stopped by its token. `phase` is what was running.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cancelled during the {phase}")]
pub struct Cancelled {
    pub phase: &'static str,
}

/// A cloneable cancellation token with the name of the phase in progress.
#[derive(Clone, Default)]
pub struct Cancel {
    token: CancellationToken,
    progress: Progress,
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// `Err(Cancelled)` once cancelled: put `cancel.check()?` wherever work may stop.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(self.cancelled())
        } else {
            Ok(())
        }
    }

    /// Notes the phase the work enters, for the message of a cut, and checks the token.
    pub fn enter(&self, phase: &'static str) -> Result<(), Cancelled> {
        self.progress.enter(phase);
        tracing::debug!(phase, "entering");
        self.check()
    }

    /// Where the work reports how far the current phase is.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub fn phase(&self) -> &'static str {
        self.progress.phase()
    }

    /// The error for the current phase.
    pub fn cancelled(&self) -> Cancelled {
        Cancelled {
            phase: self.phase(),
        }
    }

    /// Resolves when cancelled: for the async edge (a store call, a signal wait).
    pub async fn wait(&self) {
        self.token.cancelled().await
    }

    /// The same check as an I/O error, for code that speaks `std::io`.
    pub fn check_io(&self) -> io::Result<()> {
        self.check().map_err(io::Error::other)
    }

    /// Wraps a reader so that every read checks the token: a large file or stream stops
    /// within one buffer of a cut.
    pub fn reader<R: Read>(&self, inner: R) -> CancelRead<R> {
        CancelRead {
            inner,
            cancel: self.clone(),
        }
    }
}

/// Whether an error is (or was caused by) a cancellation.
pub fn is_cancelled(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.is::<Cancelled>()
            || cause
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<Cancelled>())
    })
}

/// A reader that fails with [`Cancelled`] once its token is cancelled.
pub struct CancelRead<R> {
    inner: R,
    cancel: Cancel,
}

impl<R: Read> Read for CancelRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.cancel.check_io()?;
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_names_its_phase_and_stops_readers() {
        let cancel = Cancel::new();
        cancel.enter("walk").unwrap();
        let mut reader = cancel.clone().reader(&b"data"[..]);
        let mut buf = [0u8; 2];
        assert_eq!(reader.read(&mut buf).unwrap(), 2);
        cancel.cancel();
        let err = reader.read(&mut buf).unwrap_err();
        assert!(is_cancelled(&anyhow::Error::new(err)));
        assert_eq!(
            cancel.check().unwrap_err().to_string(),
            "cancelled during the walk"
        );
    }
}
