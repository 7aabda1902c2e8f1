//! age keys. The backup side needs only recipients (public keys), so a compromised backup
//! pod cannot read any snapshot; restore and verify need an identity (the secret key).

use std::io::Write;
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
        .enumerate()
        .map(|(i, r)| {
            let origin = match given.len() {
                1 => "the value given to --recipient (GWB_RECIPIENTS)".to_string(),
                n => format!(
                    "value {} of the {n} given to --recipient (GWB_RECIPIENTS)",
                    i + 1
                ),
            };
            (r.trim().to_string(), origin)
        })
        .collect();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read recipients file {}", file.display()))?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                let origin = format!(
                    "line {} of the recipients file {}",
                    number + 1,
                    file.display()
                );
                lines.push((line.to_string(), origin));
            }
        }
    }
    let mut parsed: Recipients = Vec::new();
    for (text, origin) in lines.into_iter().filter(|(t, _)| !t.is_empty()) {
        parsed.push(Box::new(recipient(&text, &origin)?));
    }
    if parsed.is_empty() {
        bail!(
            "no age recipient given: pass --recipient age1… (or GWB_RECIPIENTS); \
             `ghostwire-backup keygen --out identity.txt` makes a key pair"
        );
    }
    Ok(parsed)
}

/// One recipient. Its error says where the value came from and describes it, never prints
/// it: a value that is not a public key may be a secret one pasted in the wrong place
/// (lowercased, quoted), and errors go to logs.
fn recipient(text: &str, origin: &str) -> Result<age::x25519::Recipient> {
    let upper = text.to_ascii_uppercase();
    if upper.contains("AGE-SECRET-KEY-") || upper.contains("AGE-PLUGIN-") {
        bail!(
            "{origin} looks like an age *secret* key (AGE-SECRET-KEY-…, not printed here); \
             the backup side takes only public keys (age1…): give the one \
             `ghostwire-backup keygen` printed, or `age-keygen -y identity.txt` prints it"
        );
    }
    text.parse().map_err(|e| {
        anyhow::anyhow!(
            "{origin} is not an age recipient ({e}): {}; a recipient is a public key, age1 \
             and 58 more characters",
            describe(text)
        )
    })
}

/// What an error may say about a value that failed to parse as a recipient: whether it
/// starts with the public `age1`, its length, and whether it is quoted; nothing of the rest.
fn describe(text: &str) -> String {
    let bare = text.trim_matches(|c: char| c == '"' || c == '\'' || c.is_whitespace());
    let start = if bare.starts_with("age1") {
        "starts with age1"
    } else {
        "does not start with age1"
    };
    let quoted = if bare.len() == text.len() {
        ""
    } else {
        ", in quotes (give it without them)"
    };
    format!(
        "it {start} and is {} characters long{quoted}",
        text.chars().count()
    )
}

/// Loads an age identity file (the format `age-keygen` writes). Warns if other users can
/// read it.
pub fn identities(path: &Path) -> Result<Identities> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read identity file {}", path.display()))?;
    crate::fsutil::warn_if_others_can_read(path, &metadata, "identity file");
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
    let mut file = crate::fsutil::create_secret_file(out)?;
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
    use std::os::unix::fs::PermissionsExt;

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

    /// The part of an age secret key that must never be printed, in either case.
    fn secret_body(identity: &str) -> String {
        identity["AGE-SECRET-KEY-".len()..].to_ascii_lowercase()
    }

    #[test]
    fn a_secret_key_pasted_in_any_form_is_described_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let identity = age::x25519::Identity::generate();
        let secret = identity.to_string().expose_secret().to_string();
        let pasted = [
            secret.clone(),
            secret.to_ascii_lowercase(),
            format!("\"{secret}\""),
            format!("'{secret}'"),
            format!("\" {} \"", secret.to_ascii_lowercase()),
            format!("key: {secret}"),
        ];
        for (i, value) in pasted.iter().enumerate() {
            let file = dir.path().join(format!("recipients-{i}.txt"));
            std::fs::write(&file, format!("# mine\n{value}\n")).unwrap();
            for (err, origin) in [
                (recipients(std::slice::from_ref(value), &[]), "--recipient"),
                (recipients(&[], &[file]), "line 2 of the recipients file"),
            ] {
                let err = format!("{:#}", err.err().unwrap());
                assert!(err.contains("secret") && err.contains(origin), "{err}");
                assert!(
                    !err.to_ascii_lowercase()
                        .contains(&secret_body(&secret)[..12]),
                    "{value:?} was printed: {err}"
                );
            }
        }
    }

    #[test]
    fn an_invalid_recipient_is_described_by_prefix_and_length_only() {
        let public = age::x25519::Identity::generate().to_public().to_string();
        // Change the last character to a different one, so the checksum always fails.
        let last = if public.ends_with('x') { 'q' } else { 'x' };
        let broken = format!("{}{last}", &public[..public.len() - 1]);
        for (value, words) in [
            (broken.clone(), vec!["starts with age1", "62 characters"]),
            (
                format!("\"{public}\""),
                vec!["starts with age1", "in quotes"],
            ),
            (
                "hunter2-not-a-key".to_string(),
                vec!["does not start with age1", "17 characters"],
            ),
        ] {
            let err = format!(
                "{:#}",
                recipients(std::slice::from_ref(&value), &[]).err().unwrap()
            );
            for word in words {
                assert!(err.contains(word), "{err}");
            }
            let body = value.trim_matches('"');
            assert!(!err.contains(&body[4..]), "{value:?} was printed: {err}");
        }
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
