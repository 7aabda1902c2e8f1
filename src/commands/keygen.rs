//! `keygen`: a new age key pair for the repository.

use std::path::Path;

use anyhow::Result;

/// Writes the identity to `out` and prints the public recipient for the backup side.
pub fn run(out: &Path) -> Result<()> {
    let recipient = crate::keys::generate(out)?;
    eprintln!(
        "Wrote the secret identity to {}: keep a copy somewhere safe, away from the backups; \
         without it no snapshot can be restored.\nThe public recipient (for --recipient) is:",
        out.display()
    );
    println!("{recipient}");
    Ok(())
}
