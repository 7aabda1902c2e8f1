//! The command line: flags ([`flags`]), the repository they name ([`open`]), logging
//! ([`logging`]), and the dispatch from a parsed command to the library's
//! ([`dispatch`]). `reference` prints all of it as data for the README.

pub mod dispatch;
pub mod flags;
pub mod logging;
pub mod open;
pub mod reference;
