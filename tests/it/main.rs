//! The integration tests, as one binary (as ripgrep's are): the crate and the AWS SDK are
//! linked once, not once per file. Each module below is one area, run against the real
//! binary (`CARGO_BIN_EXE_ghostwire-backup`), a profile made by Signal's own driver and a
//! real S3 server; `cargo test --test it crash::` runs one area, `cargo test --test it
//! -- --ignored crash_trials_long` a long trial.
//!
//! The harness is `common/`: `common/fixture.rs` holds the shared fixture (`Fixture`: a
//! profile, a key pair, a local repository, and ready backup/restore commands;
//! `Fixture::backed_up` for "backed up once"), `common/command.rs` the command builder
//! (`agent().args([...]).ok()` returns stdout, `.fails()` stderr, `.fails_with(&[...])`
//! checks stderr too; every failure message holds the command line, the environment the
//! test set, stdout and stderr), `common/mod.rs` the parts (Signal's driver, moto's S3
//! server, `require(Part::…)` for anything cargo does not install) and tree comparisons,
//! `common/faults.rs` the fault-injecting S3 proxy. To add an area, write `tests/it/NAME.rs`
//! starting with `use crate::common::*;` and add `mod NAME;` below.

mod common;

mod adversaries;
mod backup_restore;
mod bluegreen;
mod crash;
mod daemon;
mod db_deltas;
mod db_unchanged;
mod deadlines;
mod failures;
mod host_side;
mod host_trust;
mod hostile;
mod incremental;
mod lease_faults;
mod lease_loss;
mod lease_s3;
mod locks;
mod newcomer;
mod page_auth;
mod s3_faults;
mod security;
mod signed;
mod store_contract;
mod update;
