//! Exit codes: the one table a script reads to tell failures apart. An error that needs a
//! code other than 1 carries it as a [`Coded`] somewhere in its chain; `main` looks for it
//! with [`Exit::of`]. Usage errors (2) are clap's: a flag that does not parse or is missing
//! ends the process before any command starts.

use crate::cancel;
use crate::store::{StoreError, Unavailability, Unavailable};

/// How the process ends. The numbers are part of the interface: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Failure = 1,
    Usage = 2,
    RepositoryMissing = 3,
    SnapshotNotFound = 4,
    CheckStale = 5,
    S3Unreachable = 6,
    RestoreRefused = 7,
    Cancelled = 8,
    Untrusted = 9,
}

impl Exit {
    /// Every code and when it is used, for the README (`reference`) and `--help`.
    pub const TABLE: &[(Exit, &str)] = &[
        (
            Exit::Failure,
            "any other failure (the message says what to fix)",
        ),
        (
            Exit::Usage,
            "a flag is missing, unknown or does not parse (nothing was done)",
        ),
        (
            Exit::RepositoryMissing,
            "the repository does not exist: a local directory that is missing or an S3 bucket \
             that does not (read-only commands never create one)",
        ),
        (
            Exit::SnapshotNotFound,
            "the snapshot asked for is not in the repository, or it holds none yet",
        ),
        (
            Exit::CheckStale,
            "`check`: the newest snapshot is older than --max-age",
        ),
        (
            Exit::S3Unreachable,
            "the S3 endpoint gave no answer after every retry",
        ),
        (
            Exit::RestoreRefused,
            "`restore` refused: the target is not empty or is a file, another instance's lease \
             is live, or `latest`/`final` is a snapshot without a Signal database",
        ),
        (
            Exit::Cancelled,
            "cut by SIGTERM/SIGINT or a deadline before it finished (nothing half-done is kept)",
        ),
        (
            Exit::Untrusted,
            "the snapshot or handoff asked for does not verify with the verify key (forged, \
             altered, unsigned), or a newer snapshot than the one `latest` would pick does not: \
             nothing was restored or checked",
        ),
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    /// The code an error ends the process with: the first [`Coded`] in its chain, else
    /// [`Exit::Cancelled`] for a cut, else [`Exit::Failure`].
    pub fn of(err: &anyhow::Error) -> Exit {
        for cause in err.chain() {
            if let Some(coded) = cause.downcast_ref::<Coded>() {
                return coded.exit;
            }
            if let Some(unavailable) = cause.downcast_ref::<Unavailable>() {
                return match unavailable.why {
                    Unavailability::Unreachable => Exit::S3Unreachable,
                    Unavailability::NoSuchBucket => Exit::RepositoryMissing,
                };
            }
            // A store error wraps its cause transparently, which hides it from `chain`.
            if let Some(StoreError::Other(inner)) = cause.downcast_ref::<StoreError>() {
                match Exit::of(inner) {
                    Exit::Failure => {}
                    exit => return exit,
                }
            }
        }
        if cancel::is_cancelled(err) {
            return Exit::Cancelled;
        }
        Exit::Failure
    }
}

/// An error that ends the process with its own exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Coded {
    pub exit: Exit,
    pub message: String,
}

/// An error with exit code `exit`.
pub fn coded(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    Coded {
        exit,
        message: message.into(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_code_survives_context_and_cancellation_is_recognised() {
        let err = Err::<(), _>(coded(Exit::SnapshotNotFound, "no snapshot"))
            .context("restore failed")
            .unwrap_err();
        assert_eq!(Exit::of(&err), Exit::SnapshotNotFound);
        let cut = anyhow::Error::from(cancel::Cancelled { phase: "walk" }).context("backup");
        assert_eq!(Exit::of(&cut), Exit::Cancelled);
        assert_eq!(Exit::of(&anyhow::anyhow!("disk full")), Exit::Failure);
    }

    #[test]
    fn the_table_lists_every_code_once_in_order() {
        let codes: Vec<u8> = Exit::TABLE.iter().map(|(exit, _)| exit.code()).collect();
        assert_eq!(codes, (1..=9).collect::<Vec<u8>>());
    }
}
