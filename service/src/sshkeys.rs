//! SSH keys kept in the OS keychain, managed by name: generate an ed25519 key,
//! import a key file, list, delete, and show the public half as an
//! `authorized_keys` line. The private key goes to the keychain entry
//! [`keychain::key_account`] — the entry `identity = ["keychain:NAME"]` logs in with —
//! so the tray app, the CLI and the service share one naming. The list of names
//! and public lines is kept in the keychain too (entry `ssh-key-index`), since a
//! keychain cannot be enumerated portably.

use std::path::Path;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};
use serde::{Deserialize, Serialize};

use crate::keychain::{self, KeychainError};

const INDEX: &str = "ssh-key-index";

/// A key in the keychain, as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub name: String,
    /// The line to append to `~/.ssh/authorized_keys` on a server.
    pub public: String,
    /// `SHA256:…`, as `ssh-keygen -l` shows it.
    pub fingerprint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Keychain(#[from] KeychainError),
    #[error("key name `{0}`: use letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("a key named `{0}` exists already; delete it first or choose another name")]
    Exists(String),
    #[error("no key named `{0}` in the keychain")]
    Missing(String),
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("cannot make the key: {0}")]
    Crypto(String),
}

fn index() -> Result<Vec<StoredKey>, KeyError> {
    Ok(keychain::get(INDEX)?
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default())
}

fn save_index(list: &[StoredKey]) -> Result<(), KeyError> {
    keychain::set(
        INDEX,
        &serde_json::to_string(list).unwrap_or_else(|_| "[]".into()),
    )?;
    Ok(())
}

fn check_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadName(name.to_string()))
    }
}

/// Stores `key` as `name` (which must be new) and lists it.
fn store(name: &str, mut key: PrivateKey) -> Result<StoredKey, KeyError> {
    check_name(name)?;
    let mut list = index()?;
    if list.iter().any(|k| k.name == name) || keychain::get(&keychain::key_account(name))?.is_some()
    {
        return Err(KeyError::Exists(name.to_string()));
    }
    if key.comment().is_empty() {
        key.set_comment(format!("robbie-mesh:{name}"));
    }
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| KeyError::Crypto(e.to_string()))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| KeyError::Crypto(e.to_string()))?;
    let stored = StoredKey {
        name: name.to_string(),
        public,
        fingerprint: key.public_key().fingerprint(HashAlg::Sha256).to_string(),
    };
    keychain::set(&keychain::key_account(name), &pem)?;
    list.push(stored.clone());
    save_index(&list)?;
    Ok(stored)
}

/// A new ed25519 key named `name`.
pub fn generate(name: &str) -> Result<StoredKey, KeyError> {
    let seed: [u8; 32] = rand::random();
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    store(name, key)
}

/// A key file (OpenSSH format; an encrypted one with its passphrase) into the
/// keychain as `name`. The file itself is left alone. A file others can read is
/// refused, as `ssh-add` refuses it: the key may no longer be a secret.
pub fn import(name: &str, path: &Path, passphrase: Option<&str>) -> Result<StoredKey, KeyError> {
    let file = |why: String| KeyError::File {
        path: path.display().to_string(),
        why,
    };
    crate::ssh::auth::unprotected(path).map_err(file)?;
    let text =
        zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?);
    let key = PrivateKey::from_openssh(text.as_str())
        .map_err(|e| file(format!("not an OpenSSH private key ({e})")))?;
    let key = if key.is_encrypted() {
        let pass = passphrase.ok_or_else(|| file("encrypted: give its passphrase".into()))?;
        key.decrypt(pass)
            .map_err(|_| file("the passphrase does not open it".into()))?
    } else {
        key
    };
    store(name, key)
}

/// Whether the key file needs a passphrase (so the CLI knows to ask for one).
pub fn is_encrypted(path: &Path) -> Result<bool, KeyError> {
    let text =
        zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| KeyError::File {
            path: path.display().to_string(),
            why: e.to_string(),
        })?);
    Ok(PrivateKey::from_openssh(text.as_str()).is_ok_and(|k| k.is_encrypted()))
}

pub fn list() -> Result<Vec<StoredKey>, KeyError> {
    index()
}

/// The key named `name`, as listed.
pub fn show(name: &str) -> Result<StoredKey, KeyError> {
    index()?
        .into_iter()
        .find(|k| k.name == name)
        .ok_or_else(|| KeyError::Missing(name.to_string()))
}

pub fn delete(name: &str) -> Result<(), KeyError> {
    let mut list = index()?;
    let before = list.len();
    list.retain(|k| k.name != name);
    if before == list.len() && keychain::get(&keychain::key_account(name))?.is_none() {
        return Err(KeyError::Missing(name.to_string()));
    }
    keychain::delete(&keychain::key_account(name))?;
    save_index(&list)
}

/// The key in the file at `path` (an OpenSSH private key, not encrypted), made
/// there first if there is none: a new ed25519 key, mode 0600, its public half
/// beside it (`.pub`), its directory made with mode 0700, as `ssh-keygen` does.
pub fn file_key(path: &Path, comment: &str) -> Result<StoredKey, KeyError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let file = |why: String| KeyError::File {
        path: path.display().to_string(),
        why,
    };
    let key = if path.exists() {
        crate::ssh::auth::unprotected(path).map_err(file)?;
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?,
        );
        let key = PrivateKey::from_openssh(text.as_str())
            .map_err(|e| file(format!("not an OpenSSH private key ({e})")))?;
        if key.is_encrypted() {
            return Err(file(
                "encrypted: robbie-mesh needs its passphrase in the keychain (`robbie-mesh keys import`) or an ssh-agent holding it"
                    .into(),
            ));
        }
        key
    } else {
        let seed: [u8; 32] = rand::random();
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        key.set_comment(comment);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| file(e.to_string()))?;
        }
        let pem = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| file(e.to_string()))?;
        f.write_all(pem.as_bytes())
            .map_err(|e| file(e.to_string()))?;
        key
    };
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| KeyError::Crypto(e.to_string()))?;
    let pub_path = std::path::PathBuf::from(format!("{}.pub", path.display()));
    if !pub_path.exists() {
        std::fs::write(&pub_path, format!("{public}\n")).map_err(|e| file(e.to_string()))?;
    }
    Ok(StoredKey {
        name: path.display().to_string(),
        public,
        fingerprint: key.public_key().fingerprint(HashAlg::Sha256).to_string(),
    })
}

#[cfg(test)]
mod import_tests {
    use std::os::unix::fs::PermissionsExt;

    /// Refused before anything is read or stored, saying how to fix it.
    #[test]
    fn a_key_file_others_can_read_is_not_imported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("id_ed25519");
        std::fs::write(&path, "-----BEGIN OPENSSH PRIVATE KEY-----\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = super::import("k", &path, None)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
    }
}
