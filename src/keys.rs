//! age keys. The backup side needs only recipients (public keys), so a compromised backup
//! pod cannot read any snapshot; restore and verify need an identity (the secret key).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use age::secrecy::ExposeSecret;
use anyhow::{Context, Result, bail};

pub type Recipients = Vec<Box<dyn age::Recipient + Send>>;
pub type Identities = Vec<Box<dyn age::Identity + Send + Sync>>;

/// Parses `age1…` recipients given directly and from recipients files (one per line,
/// `#` comments), as `age -r` and `age -R` take them.
pub fn recipients(given: &[String], files: &[std::path::PathBuf]) -> Result<Recipients> {
    let mut lines: Vec<(String, String)> = given
        .iter()
        .map(|r| (r.trim().to_string(), "--recipient".to_string()))
        .collect();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read recipients file {}", file.display()))?;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            lines.push((line.to_string(), file.display().to_string()));
        }
    }
    let mut parsed: Recipients = Vec::new();
    for (text, origin) in lines.into_iter().filter(|(t, _)| !t.is_empty()) {
        if text.starts_with("AGE-SECRET-KEY-") {
            bail!(
                "{origin} holds an age *secret* key; the backup side takes only public keys \
                 (age1…). Print the public key with `ghostwire-backup keygen` output or \
                 `age-keygen -y`"
            );
        }
        let recipient: age::x25519::Recipient = text
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid age recipient {text:?} in {origin}: {e}"))?;
        parsed.push(Box::new(recipient));
    }
    if parsed.is_empty() {
        bail!(
            "no age recipient given: pass --recipient age1… (or GWB_RECIPIENTS); \
             `ghostwire-backup keygen --out identity.txt` makes a key pair"
        );
    }
    Ok(parsed)
}

/// Loads an age identity file (the format `age-keygen` writes). Warns if other users can
/// read it.
pub fn identities(path: &Path) -> Result<Identities> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read identity file {}", path.display()))?;
    if metadata.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            "the identity file is readable by other users; chmod 600 it (in Kubernetes, \
             mount the Secret with defaultMode 0400)"
        );
    }
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read identity file {}", path.display()))?;
    let identities = age::IdentityFile::from_buffer(std::io::BufReader::new(file))
        .and_then(|f| f.into_identities().map_err(std::io::Error::other))
        .map_err(|_| {
            anyhow::anyhow!(
                "{} is not an age identity file (expected lines starting with AGE-SECRET-KEY-)",
                path.display()
            )
        })?;
    if identities.is_empty() {
        bail!("{} holds no age identity", path.display());
    }
    Ok(identities)
}

/// Writes a new identity to `out` (mode 0600, never over an existing file) and returns
/// its public recipient.
pub fn generate(out: &Path) -> Result<String> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist yet)", out.display()))?;
    writeln!(
        file,
        "# created: {}\n# public key: {recipient}\n{}",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        identity.to_string().expose_secret()
    )?;
    file.sync_all()?;
    Ok(recipient)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_file_whose_public_key_parses() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("identity.txt");
        let recipient = generate(&out).unwrap();
        assert!(recipient.starts_with("age1"));
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(identities(&out).unwrap().len(), 1);
        assert_eq!(recipients(&[recipient], &[]).unwrap().len(), 1);
        assert!(generate(&out).is_err(), "keygen must never overwrite a key");
    }

    #[test]
    fn a_secret_key_given_as_recipient_is_refused() {
        let err = recipients(&["AGE-SECRET-KEY-1QQQ".into()], &[])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("public keys"), "{err}");
        assert!(!err.contains("AGE-SECRET-KEY-1QQQ"));
    }
}
