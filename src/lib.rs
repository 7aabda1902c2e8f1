//! ghostwire-backup: backs up and restores a Signal Desktop profile (Ghostwire, on
//! Kubernetes) with a consistent snapshot of its SQLCipher database.
//!
//! The modules read as the pipeline (ARCHITECTURE.md has the map). Backup:
//! [`profile`] (what Signal keeps where) → [`chain`] (full or incremental, on which parent)
//! → [`signal_db`] over [`sqlite`] (consistent snapshots and their checks) → [`walk`] (what
//! to keep) → [`reuse`] (unchanged files point at older archives) → [`archive`] (tar → zstd
//! → age) → [`store`] (local directory or S3, behind one small trait) with [`layout`], [`repo`]
//! and [`manifest`] (the repository format); [`backup`] runs these in order. Restore and verify:
//! [`readback`] (plan, authenticated streams) → [`unpack`] (safe extraction) →
//! [`signal_db`]'s gate → [`restoration`] (the target's state machine).
//!
//! The core is synchronous and runs on threads of its own; [`blocking`] is the one place
//! it reaches the async store, and [`cancel`] the token every long phase checks, so
//! deadlines and signals cut it within about a second; [`progress`] shows how far it is. [`commands`] has one thin file per
//! verb; `run` adds the [`schedule`] and [`metrics`] of the sidecar daemon.

pub mod archive;
pub mod backup;
pub mod blocking;
pub mod cancel;
pub mod catalog;
pub mod catch_up;
pub mod chain;
pub mod commands;
pub mod cut_vfs;
pub mod db_rebuild;
pub mod exit;
pub mod fsutil;
pub mod home;
pub mod index;
pub mod keys;
pub mod kube;
pub mod layout;
pub mod lease;
pub mod lock;
pub mod manifest;
pub mod manifest_list;
pub mod metrics;
pub mod page_auth;
pub mod page_journal;
pub mod pages;
pub mod parts;
pub mod priority;
pub mod profile;
pub mod progress;
pub mod raw_pages;
pub mod readback;
pub mod renewal;
pub mod repo;
pub mod repo_id;
pub mod restoration;
pub mod retention;
pub mod reuse;
pub mod schedule;
pub mod scheduled;
pub mod selection;
pub mod sha512x8;
pub mod signal_db;
pub mod signing;
pub mod sqlite;
pub mod staging;
pub mod store;
pub mod unpack;
pub mod update;
pub mod volume;
pub mod wal;
pub mod walk;
