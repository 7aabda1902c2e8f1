//! One file per command. A command parses nothing and decides little: it puts the domain
//! modules' calls in order, and runs the synchronous ones on a thread of their own through
//! [`crate::blocking`]. No command imports another.

pub mod backup;
pub mod check;
pub mod forget;
pub mod keygen;
pub mod prune;
pub mod restore;
pub mod run;
pub mod snapshots;
pub mod unlock;
pub mod verify;
