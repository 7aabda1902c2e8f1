//! What we know about the data we protect: where Signal keeps its profile inside the home,
//! where its database key is, and what is cache (see SIGNAL.md in the project's notes).

use std::path::Path;

use anyhow::{Context, Result, bail};
use globset::{GlobSet, GlobSetBuilder};
use zeroize::Zeroizing;

/// Signal Desktop's profile (Electron's userData), relative to the home.
pub const SIGNAL_DIR: &str = ".config/Signal";
pub const SIGNAL_CONFIG: &str = ".config/Signal/config.json";
pub const SIGNAL_DB: &str = ".config/Signal/sql/db.sqlite";

/// Everything ghostwire-backup itself leaves in a home (restore marker, restore staging,
/// moved-aside entries) starts with this, so backups skip it and archives may not hold it.
pub const OWN_FILES_PREFIX: &str = ".ghostwire-backup";

/// Paths (relative to the home) that are never worth keeping. A matching directory is
/// skipped with everything below it.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    // The filesystem's own, at the root of every ext4 volume: a fresh volume brings its own,
    // and restoring this one would move the new volume's aside.
    "lost+found",
    // Electron single-instance locks: a stale one makes Signal quit at start-up.
    "**/Singleton*",
    // Kasm regenerates these at every start.
    ".vnc",
    ".kasmpasswd",
    ".cache",
    // Signal's caches, logs and scratch space.
    ".config/Signal/temp",
    ".config/Signal/update-cache",
    ".config/Signal/downloads.noindex",
    ".config/Signal/logs",
    ".config/Signal/Cache",
    ".config/Signal/Code Cache",
    ".config/Signal/GPUCache",
    ".config/Signal/Dawn*",
    ".config/Signal/Crashpad",
    ".config/Signal/blob_storage",
    ".ghostwire-backup*",
];

/// The default excludes plus the user's, as one matcher over home-relative paths.
pub fn excludes(extra: &[String]) -> Result<GlobSet> {
    let mut set = GlobSetBuilder::new();
    for pattern in DEFAULT_EXCLUDES
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        let glob = globset::GlobBuilder::new(pattern.trim_end_matches('/'))
            .literal_separator(true)
            .build()
            .with_context(|| format!("invalid --exclude pattern {pattern:?}"))?;
        set.add(glob);
    }
    Ok(set.build()?)
}

/// Signal's SQLCipher key: 32 raw bytes as 64 hex digits. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DbKey(Zeroizing<String>);

impl std::fmt::Debug for DbKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbKey(<redacted>)")
    }
}

impl DbKey {
    pub fn from_hex(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "a Signal database key is 64 hex digits; this one is not (its value is not shown)"
            );
        }
        Ok(Self(Zeroizing::new(text.to_ascii_lowercase())))
    }

    /// Reads the key from Signal's `config.json`. A profile that only has `encryptedKey`
    /// was written with an OS keyring, which a backup cannot reach.
    pub fn from_config_json(bytes: &[u8], source: &Path) -> Result<Self> {
        let config: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|_| anyhow::anyhow!("{} is not valid JSON", source.display()))?;
        match (config.get("key"), config.get("encryptedKey")) {
            (Some(serde_json::Value::String(key)), _) => Self::from_hex(key)
                .with_context(|| format!("the \"key\" in {} is malformed", source.display())),
            (None, Some(_)) => bail!(
                "{} holds only \"encryptedKey\": Signal encrypted its database key with an OS \
                 keyring that this backup cannot reach, and the profile cannot be moved to \
                 another host either. Start Signal with --password-store=basic (Kasm has no \
                 keyring) so it stores a plain \"key\", or pass the key with --db-key-file",
                source.display()
            ),
            _ => bail!(
                "{} has no \"key\": is this a Signal Desktop profile? Pass the key with \
                 --db-key-file if it is kept elsewhere",
                source.display()
            ),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read database key file {}", path.display()))?,
        );
        Self::from_hex(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The 32 bytes the hex digits spell: the raw key SQLCipher keys the database with
    /// (for [`crate::page_auth`]).
    pub fn raw(&self) -> Zeroizing<[u8; 32]> {
        let mut raw = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(self.0.as_bytes(), raw.as_mut_slice())
            .expect("64 hex digits, checked when the key was made");
        raw
    }

    /// The SQLCipher statement that applies this key: a raw key, no KDF, as Signal does.
    pub fn pragma(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("PRAGMA key = \"x'{}'\";", self.0.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_skip_caches_and_locks_but_keep_data() {
        let set = excludes(&["Downloads/*.iso".into()]).unwrap();
        for skipped in [
            ".config/Signal/SingletonLock",
            ".config/Signal/SingletonSocket",
            ".config/Signal/Cache",
            ".config/Signal/Code Cache",
            ".config/Signal/DawnGraphiteCache",
            ".cache",
            ".vnc",
            ".ghostwire-backup-restore.json",
            "lost+found",
            "Downloads/big.iso",
        ] {
            assert!(set.is_match(skipped), "{skipped} should be excluded");
        }
        for kept in [
            ".config/Signal/config.json",
            ".config/Signal/sql/db.sqlite",
            ".config/Signal/attachments.noindex/ab/ab12",
            ".config/Signal/Local Storage/leveldb/000003.log",
            "Downloads/notes/a.iso.txt",
            "Documents/lost+found",
            ".bashrc",
        ] {
            assert!(!set.is_match(kept), "{kept} should be kept");
        }
    }

    #[test]
    fn key_is_read_from_config_and_never_shown() {
        let hex = "ab".repeat(32);
        let key =
            DbKey::from_config_json(format!("{{\"key\":\"{hex}\"}}").as_bytes(), Path::new("c"))
                .unwrap();
        assert!(key.pragma().contains(&hex));
        assert!(!format!("{key:?}").contains(&hex));
    }

    #[test]
    fn encrypted_key_only_explains_the_way_out() {
        let err = DbKey::from_config_json(
            br#"{"encryptedKey":"763130deadbeef","safeStorageBackend":"gnome_libsecret"}"#,
            Path::new("config.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--password-store=basic") && err.contains("--db-key-file"),
            "{err}"
        );
    }

    #[test]
    fn malformed_key_is_refused_without_echoing_it() {
        let err = DbKey::from_hex("secretsecret").unwrap_err().to_string();
        assert!(!err.contains("secretsecret"));
    }
}
