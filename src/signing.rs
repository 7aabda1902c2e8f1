//! Signatures over what the backup side writes. age authenticates nothing about the sender
//! (the recipient is public configuration), so without these anyone who can write to the
//! bucket could choose what a restore installs. The backup side holds a signing key (it can
//! sign, never decrypt); restore, verify, prune and check hold the public verify key and
//! accept only manifests and handoffs it verifies.
//!
//! The format is minisign's (Ed25519): `minisign -Vm snapshots/<id>.json -P <verify key>`
//! checks a manifest with the stock tool (docs/format.md). The signature's trusted comment
//! names the object's key, so a genuine manifest copied under another name does not verify,
//! and the repository's id ([`crate::repo_id`]), so one copied from another repository
//! signed with the same key does not either. Signatures made before they named the
//! repository (`ghostwire-backup <key>` alone) still verify, as [`Named::Nothing`].

use std::io::{Cursor, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// What a signature's trusted comment says: the object it was made for, and the
/// repository it was made in when the signer named one.
fn trusted_comment(object_key: &str, repository: Option<&str>) -> String {
    match repository {
        Some(repository) => format!("ghostwire-backup {object_key} in repository {repository}"),
        None => format!("ghostwire-backup {object_key}"),
    }
}

/// Which repository a verified signature names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// The repository it was checked for.
    This,
    /// None: made before signatures named the repository (or an object, like the
    /// repository's id itself, that names none).
    Nothing,
}

/// The backup side's secret signing key.
pub struct Signer {
    secret: minisign::SecretKey,
    verifier: Verifier,
}

impl Signer {
    /// Loads a minisign secret key file without a password (what `keygen` writes, or
    /// `minisign -G -W`). Its contents never reach an error or a log.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the signing key file {} (--signing-key, GWB_SIGNING_KEY_FILE)",
                path.display()
            )
        })?;
        if let Ok(metadata) = std::fs::metadata(path) {
            crate::fsutil::warn_if_others_can_read(path, &metadata, "signing key file");
        }
        let not_a_key = || {
            anyhow::anyhow!(
                "{} is not a minisign secret key without a password (make one with \
                 `ghostwire-backup keygen --signing-out FILE`)",
                path.display()
            )
        };
        let secret = minisign::SecretKeyBox::from_string(&text)
            .and_then(|boxed| boxed.into_unencrypted_secret_key())
            .map_err(|_| not_a_key())?;
        let public = minisign::PublicKey::from_secret_key(&secret).map_err(|_| not_a_key())?;
        Ok(Self {
            secret,
            verifier: Verifier { public },
        })
    }

    /// A minisign signature (the text of a `.minisig` file) over `data`, made for the
    /// object `object_key` in the repository whose id is `repository`.
    pub fn sign(&self, object_key: &str, repository: Option<&str>, data: &[u8]) -> String {
        minisign::sign(
            Some(&self.verifier.public),
            &self.secret,
            Cursor::new(data),
            Some(&trusted_comment(object_key, repository)),
            Some("signed by ghostwire-backup"),
        )
        .expect("signing bytes in memory with a loaded key cannot fail")
        .into_string()
    }

    /// The verify key of this signing key: the backup side checks the chain it continues.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }
}

/// The public verify key.
#[derive(Clone)]
pub struct Verifier {
    public: minisign::PublicKey,
}

/// Why a signature was not accepted. Never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("it has no signature")]
    Unsigned,
    #[error("its signature is not a minisign signature")]
    Malformed,
    #[error("its signature was made with another key than the verify key")]
    OtherKey,
    #[error("its signature does not verify with the verify key (forged or altered)")]
    Invalid,
    #[error("its signature was made for {0:?}, not for this object (copied from elsewhere)")]
    WrongObject(String),
    /// Signed with the verify key, in another repository: a genuine object copied over.
    #[error(
        "its signature was made in repository {named}, not in this one ({}): copied from \
         another repository that shares the signing key, or this repository's \
         repository.json was replaced",
        expected.as_deref().unwrap_or("which has no trustworthy repository.json")
    )]
    OtherRepository {
        named: String,
        expected: Option<String>,
    },
}

impl Verifier {
    /// Parses a verify key: the `RW…` line minisign prints, or the text of a minisign
    /// public key file.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let line = text
            .lines()
            .map(str::trim)
            .rfind(|line| !line.is_empty() && !line.starts_with("untrusted comment:"))
            .unwrap_or_default();
        match minisign::PublicKey::from_base64(line) {
            Ok(public) => Ok(Self { public }),
            Err(_) => bail!(
                "the verify key (--verify-key, GWB_VERIFY_KEY) is not a minisign public key: \
                 expected the RW… line that `ghostwire-backup keygen` prints as GWB_VERIFY_KEY"
            ),
        }
    }

    /// The `RW…` form, for display and for `minisign -P`.
    pub fn to_base64(&self) -> String {
        self.public.to_base64()
    }

    /// Checks `signature` (a `.minisig` file's text) over `data` for the object `object_key`
    /// in the repository whose id is `repository` (`None`: its id is not known).
    pub fn verify(
        &self,
        object_key: &str,
        repository: Option<&str>,
        data: &[u8],
        signature: &str,
    ) -> std::result::Result<Named, Rejected> {
        let signature =
            minisign::SignatureBox::from_string(signature).map_err(|_| Rejected::Malformed)?;
        if signature.keynum() != self.public.keynum() {
            return Err(Rejected::OtherKey);
        }
        minisign::verify(
            &self.public,
            &signature,
            Cursor::new(data),
            true,
            false,
            false,
        )
        .map_err(|_| Rejected::Invalid)?;
        let comment = signature
            .trusted_comment()
            .map_err(|_| Rejected::Malformed)?;
        if comment == trusted_comment(object_key, None) {
            return Ok(Named::Nothing);
        }
        let prefix = format!("{} in repository ", trusted_comment(object_key, None));
        match comment.strip_prefix(&prefix) {
            Some(named) if Some(named) == repository => Ok(Named::This),
            Some(named) => Err(Rejected::OtherRepository {
                named: named.to_string(),
                expected: repository.map(str::to_string),
            }),
            None => Err(Rejected::WrongObject(comment)),
        }
    }
}

/// Writes a new signing key to `out` (mode 0600, never over an existing file) and returns
/// its verify key.
pub fn generate(out: &Path) -> Result<Verifier> {
    let pair = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|err| anyhow::anyhow!("cannot generate a signing key: {err}"))?;
    let secret = pair
        .sk
        .to_box(Some("ghostwire-backup signing key (backup side only)"))
        .map_err(|err| anyhow::anyhow!("cannot encode the signing key: {err}"))?;
    let mut file = crate::fsutil::create_secret_file(out)?;
    file.write_all(secret.into_string().as_bytes())?;
    file.sync_all()?;
    Ok(Verifier { public: pair.pk })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn new_signer() -> (tempfile::TempDir, Signer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        generate(&path).unwrap();
        let signer = Signer::load(&path).unwrap();
        (dir, signer)
    }

    #[test]
    fn a_signature_verifies_for_its_object_repository_and_data_only() {
        let (_dir, signer) = new_signer();
        let verifier = Verifier::parse(&signer.verifier().to_base64()).unwrap();
        let signature = signer.sign("snapshots/a.json", Some("x"), b"manifest");
        let verify = |key, repository, data: &[u8], signature: &str| {
            verifier.verify(key, repository, data, signature)
        };
        assert_eq!(
            verify("snapshots/a.json", Some("x"), b"manifest", &signature).unwrap(),
            Named::This
        );
        assert!(matches!(
            verify("snapshots/a.json", Some("y"), b"manifest", &signature),
            Err(Rejected::OtherRepository { named, .. }) if named == "x"
        ));
        assert!(matches!(
            verify("snapshots/a.json", None, b"manifest", &signature),
            Err(Rejected::OtherRepository { .. })
        ));
        assert!(matches!(
            verify("snapshots/b.json", Some("x"), b"manifest", &signature),
            Err(Rejected::WrongObject(_))
        ));
        assert!(matches!(
            verify("snapshots/a.json", Some("x"), b"manifesT", &signature),
            Err(Rejected::Invalid)
        ));
        assert!(matches!(
            verify("snapshots/a.json", Some("x"), b"manifest", "junk"),
            Err(Rejected::Malformed)
        ));
        // Made before signatures named the repository: still verifies, naming nothing.
        let legacy = signer.sign("snapshots/a.json", None, b"manifest");
        assert_eq!(
            verify("snapshots/a.json", Some("x"), b"manifest", &legacy).unwrap(),
            Named::Nothing
        );
        let (_other_dir, other) = new_signer();
        assert!(matches!(
            verify(
                "snapshots/a.json",
                Some("x"),
                b"manifest",
                &other.sign("snapshots/a.json", Some("x"), b"manifest")
            ),
            Err(Rejected::OtherKey)
        ));
    }

    #[test]
    fn keys_are_private_files_never_overwritten_and_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        generate(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            generate(&path).is_err(),
            "keygen must never overwrite a key"
        );
        let junk = dir.path().join("junk.key");
        std::fs::write(&junk, "untrusted comment: x\nRWQsecretsecretsecret\n").unwrap();
        let err = Signer::load(&junk).err().unwrap().to_string();
        assert!(!err.contains("secretsecret"), "{err}");
        let err = Verifier::parse("RWQsecretsecret")
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("secretsecret"), "{err}");
    }
}
