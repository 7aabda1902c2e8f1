//! ghostwire-backup: backs up and restores a Signal Desktop profile (Ghostwire, on
//! Kubernetes) with a consistent snapshot of its SQLCipher database.
//!
//! The modules read as the pipeline:
//! [`profile`] (what Signal keeps where) → [`sqlite`] (consistent snapshots) → [`walk`]
//! (what to keep) → [`archive`] (tar → zstd → age) → [`store`] (local directory or S3,
//! behind one small trait) with [`layout`], [`repo`] and [`manifest`] (the repository format) →
//! [`unpack`] (safe extraction) and the restore gate. [`commands`] has one file per verb; `run` adds the
//! [`schedule`] and [`metrics`] of the sidecar daemon.

pub mod archive;
pub mod catalog;
pub mod commands;
pub mod index;
pub mod keys;
pub mod layout;
pub mod lease;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod profile;
pub mod repo;
pub mod retention;
pub mod schedule;
pub mod sqlite;
pub mod staging;
pub mod store;
pub mod unpack;
pub mod walk;
