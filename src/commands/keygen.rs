//! `keygen`: the repository's two key pairs. The age identity decrypts (restore side
//! only); the signing key signs snapshots (backup side only). Neither side can do the
//! other's work: a compromised backup pod cannot read a snapshot, and a compromised
//! restore side (or anyone with the bucket) cannot make one a restore accepts.

use std::path::Path;

use anyhow::Result;

/// Writes the keys asked for and prints their public halves as `NAME=value` lines, ready
/// for an env file or a ConfigMap.
pub fn run(identity_out: Option<&Path>, signing_out: Option<&Path>) -> Result<()> {
    if let Some(out) = identity_out {
        let recipient = crate::keys::generate(out)?;
        eprintln!(
            "Wrote the age identity to {}: the restore side's secret. Keep a copy somewhere \
             safe, away from the backups: without it no snapshot can be restored.",
            out.display()
        );
        println!("GWB_RECIPIENTS={recipient}");
    }
    if let Some(out) = signing_out {
        let verifier = crate::signing::generate(out)?;
        eprintln!(
            "Wrote the signing key to {}: the backup side's secret (--signing-key, \
             GWB_SIGNING_KEY_FILE). Restores trust only what it signed.",
            out.display()
        );
        println!("GWB_VERIFY_KEY={}", verifier.to_base64());
    }
    Ok(())
}
