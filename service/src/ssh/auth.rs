//! Public-key authentication, trying the peer's identity sources in order: an
//! ssh-agent (every key it holds), a private key in the OS keychain, key files (an
//! encrypted file's passphrase comes from the keychain). What was tried and why it
//! failed is kept for the error message; no secret is ever logged.

use std::sync::Arc;

use russh::client::{self, AuthResult};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg};

use super::{MeshHandler, SshError};
use crate::config::{IdentitySource, SshServer};
use crate::keychain;

type Handle = client::Handle<MeshHandler>;

/// How a session logged in: the identity the server accepted, and what was
/// tried before it and why it did not serve (for `doctor`).
#[derive(Debug, Clone, Default)]
pub struct Login {
    pub user: String,
    pub with: String,
    pub before: Vec<String>,
}

/// Logs in to `server` with its identities, in order (`peer` names the peer in logs).
pub async fn authenticate(
    handle: &mut Handle,
    server: &SshServer,
    peer: &str,
) -> Result<Login, SshError> {
    let user = server.target.user.clone();
    let mut tried = Vec::new();
    // The agent offers the keys of these files first, as ssh does.
    let files: Vec<std::path::PathBuf> = server
        .identities
        .iter()
        .filter_map(|s| match s {
            IdentitySource::File { path } => Some(path.clone()),
            _ => None,
        })
        .collect();
    for source in &server.identities {
        let outcome = match source {
            IdentitySource::Agent { socket, only } => {
                try_agent(handle, &user, socket.as_deref(), only.as_deref(), &files).await
            }
            IdentitySource::Keychain { entry } => {
                let key = keychain(keychain_key(entry.clone())).await;
                with_key(handle, &user, key).await
            }
            IdentitySource::File { path } => {
                let path = path.clone();
                let key = blocking(move || load_file(&path)).await;
                with_key(handle, &user, key).await
            }
            IdentitySource::Credential { name } => {
                let name = name.clone();
                let key = blocking(move || load_credential(&name)).await;
                with_key(handle, &user, key).await
            }
        };
        match outcome {
            Outcome::Accepted => {
                if tried.is_empty() {
                    tracing::debug!(peer = %peer, "authenticated as {user} with {source}");
                } else {
                    // What did not work before is worth knowing (a keychain
                    // that is not there under a system service, say).
                    tracing::info!(peer = %peer, "authenticated as {user} with {source}, after: {}", tried.join(", "));
                }
                return Ok(Login {
                    user,
                    with: source.to_string(),
                    before: tried,
                });
            }
            Outcome::Refused(n) => tried.push(format!(
                "{source} ({n} key{} refused)",
                if n == 1 { "" } else { "s" }
            )),
            Outcome::Unusable(why) => tried.push(format!("{source} ({why})")),
            Outcome::Broken(e) => return Err(e),
        }
    }
    Err(SshError::AuthFailed {
        user,
        tried: if tried.is_empty() {
            "nothing".into()
        } else {
            tried.join(", ")
        },
    })
}

/// Offers `key` if it could be loaded; else says why not.
async fn with_key(handle: &mut Handle, user: &str, key: Result<PrivateKey, String>) -> Outcome {
    match key {
        Ok(key) => try_key(handle, user, key).await,
        Err(why) => Outcome::Unusable(why),
    }
}

/// How long a keychain may take to answer: a locked one can wait forever for
/// a password prompt nobody sees (a user manager before login).
const KEYCHAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A keychain read, given up after [`KEYCHAIN_WAIT`] (the next identity is
/// then tried; the blocked thread finishes on its own).
async fn keychain<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::time::timeout(KEYCHAIN_WAIT, blocking(f))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the keychain did not answer within {KEYCHAIN_WAIT:?} (locked, waiting for a password prompt?)"
            ))
        })
}

/// Keychain and file access block (D-Bus, disk): keep them off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("worker failed: {e}")))
}

enum Outcome {
    Accepted,
    Refused(usize),
    Unusable(String),
    Broken(SshError),
}

async fn try_agent(
    handle: &mut Handle,
    user: &str,
    socket: Option<&std::path::Path>,
    only: Option<&[std::path::PathBuf]>,
    files: &[std::path::PathBuf],
) -> Outcome {
    let agent = match socket {
        Some(path) => AgentClient::connect_uds(path).await,
        None => match std::env::var_os("SSH_AUTH_SOCK") {
            Some(p) => AgentClient::connect_uds(p).await,
            None => return Outcome::Unusable("SSH_AUTH_SOCK is not set".into()),
        },
    };
    let mut agent = match agent {
        Ok(a) => a,
        Err(e) => return Outcome::Unusable(format!("cannot connect: {e}")),
    };
    let mut identities = match agent.request_identities().await {
        Ok(ids) => ids,
        Err(e) => return Outcome::Unusable(format!("cannot list keys: {e}")),
    };
    // The keys of the identity files first, in their order; then the others, in
    // the agent's (what ssh does: the server sees the intended key first).
    let wanted: Vec<_> = files.iter().filter_map(|f| public_half(f)).collect();
    identities.sort_by_key(|id| match id {
        AgentIdentity::PublicKey { key, .. } => wanted
            .iter()
            .position(|w| w == key.key_data())
            .unwrap_or(usize::MAX),
        _ => usize::MAX,
    });
    // IdentitiesOnly: the public halves of the files (`FILE.pub`, or the public
    // part an OpenSSH private key file carries even when it is encrypted).
    let allowed: Option<Vec<russh::keys::ssh_key::public::KeyData>> =
        only.map(|files| files.iter().filter_map(|f| public_half(f)).collect());
    let mut refused = 0;
    let mut offered = 0;
    for id in identities {
        let AgentIdentity::PublicKey { key, .. } = id else {
            continue;
        };
        if allowed
            .as_ref()
            .is_some_and(|a| !a.contains(key.key_data()))
        {
            continue;
        }
        offered += 1;
        let hash = match rsa_hash(handle, key.algorithm().is_rsa()).await {
            Ok(h) => h,
            Err(e) => return Outcome::Broken(e),
        };
        match handle
            .authenticate_publickey_with(user, key, hash, &mut agent)
            .await
        {
            Ok(AuthResult::Success) => return Outcome::Accepted,
            Ok(AuthResult::Failure { .. }) => refused += 1,
            Err(e) => return Outcome::Unusable(format!("agent failed to sign: {e}")),
        }
    }
    if offered == 0 && only.is_some() {
        Outcome::Unusable("holds none of the identity files' keys (IdentitiesOnly)".into())
    } else if refused == 0 {
        Outcome::Unusable("holds no keys".into())
    } else {
        Outcome::Refused(refused)
    }
}

async fn try_key(handle: &mut Handle, user: &str, key: PrivateKey) -> Outcome {
    let hash = match rsa_hash(handle, key.algorithm().is_rsa()).await {
        Ok(h) => h,
        Err(e) => return Outcome::Broken(e),
    };
    match handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
        .await
    {
        Ok(AuthResult::Success) => Outcome::Accepted,
        Ok(AuthResult::Failure { .. }) => Outcome::Refused(1),
        Err(e) => Outcome::Broken(SshError::Protocol(e.to_string())),
    }
}

async fn rsa_hash(handle: &Handle, is_rsa: bool) -> Result<Option<HashAlg>, SshError> {
    if !is_rsa {
        return Ok(None);
    }
    match handle.best_supported_rsa_hash().await {
        Ok(h) => Ok(h.flatten().or(Some(HashAlg::Sha256))),
        Err(e) => Err(SshError::Protocol(e.to_string())),
    }
}

/// The private key stored in the keychain as `entry`.
fn keychain_key(entry: String) -> impl FnOnce() -> Result<PrivateKey, String> {
    move || match keychain::private_key(&entry).map(zeroize::Zeroizing::new) {
        Ok(pem) => {
            russh::keys::decode_secret_key(&pem, None).map_err(|e| format!("unreadable key: {e}"))
        }
        Err(keychain::KeychainError::NotFound(_)) => Err("no such entry".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The key systemd passed in as credential `name` (`LoadCredential=` or
/// `LoadCredentialEncrypted=`): `$CREDENTIALS_DIRECTORY/name`, decrypted by
/// systemd, readable by this unit only.
fn load_credential(name: &str) -> Result<PrivateKey, String> {
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
        return Err(format!(
            "no $CREDENTIALS_DIRECTORY: credential:{name} is for a systemd unit that passes it \
             (LoadCredentialEncrypted={name}:/etc/robbie-mesh/{name}.cred)"
        ));
    };
    let path = std::path::Path::new(&dir).join(name);
    if !path.exists() {
        return Err(format!(
            "the unit passes no credential `{name}` (add LoadCredentialEncrypted={name}:FILE to it)"
        ));
    }
    load_file(&path)
}

/// Reads a key file; an encrypted one is opened with the passphrase stored in the
/// keychain for that path.
fn load_file(path: &std::path::Path) -> Result<PrivateKey, String> {
    unprotected(path)?;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => zeroize::Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("missing".into()),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    match russh::keys::decode_secret_key(&text, None) {
        Ok(k) => Ok(k),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let account = keychain::passphrase_account(path);
            let pass = match keychain::get(&account) {
                Ok(Some(p)) => zeroize::Zeroizing::new(p),
                Ok(None) => {
                    return Err(format!(
                        "encrypted; store its passphrase in the keychain as `{account}`"
                    ))
                }
                Err(e) => return Err(format!("encrypted, and the keychain failed: {e}")),
            };
            russh::keys::decode_secret_key(&text, Some(&pass))
                .map_err(|e| format!("cannot decrypt with the keychain passphrase: {e}"))
        }
        Err(e) => Err(format!("unreadable key: {e}")),
    }
}

/// The public key of a key file, without its passphrase: `FILE.pub`, else the
/// public part of the private key file.
fn public_half(file: &std::path::Path) -> Option<russh::keys::ssh_key::public::KeyData> {
    let mut pub_file = file.as_os_str().to_owned();
    pub_file.push(".pub");
    if let Ok(text) = std::fs::read_to_string(&pub_file) {
        if let Ok(k) = russh::keys::PublicKey::from_openssh(text.trim()) {
            return Some(k.key_data().clone());
        }
    }
    let text = std::fs::read_to_string(file).ok()?;
    russh::keys::PrivateKey::from_openssh(text.trim())
        .ok()
        .map(|k| k.public_key().key_data().clone())
}

/// A key file of ours that others may read is refused, as OpenSSH refuses it
/// ("UNPROTECTED PRIVATE KEY FILE"): the key must be assumed known.
pub fn unprotected(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(()); // missing or unreadable: said when it is read
    };
    let mode = meta.mode() & 0o7777;
    if meta.uid() == nix::unistd::getuid().as_raw() && mode & 0o077 != 0 {
        return Err(format!(
            "permissions {mode:04o} are too open: others on this machine can read this private key, so it is not used \
             (OpenSSH refuses it too: UNPROTECTED PRIVATE KEY FILE); run `chmod 600 {}`",
            path.display()
        ));
    }
    Ok(())
}
