//! SSH private keys and passphrases in the OS keychain (Secret Service on Linux,
//! Keychain on macOS), through the `keyring` crate.
//!
//! The service and the tray app name entries with the same functions below, so a key
//! the tray stores is the key the service logs in with. Keyring's in-memory mock is
//! refused: a key that silently vanishes at exit is worse than a clear error.

use std::path::Path;

use keyring::credential::CredentialPersistence;

/// The keychain "service" every robbie-mesh entry is filed under.
pub const KEYCHAIN_SERVICE: &str = "robbie-mesh";

#[derive(Debug, thiserror::Error)]
pub enum KeychainError {
    #[error(
        "this build of robbie-mesh has no OS keychain backend; use an ssh-agent or a key file"
    )]
    NoBackend,
    #[error("no keychain entry `{0}`; store one with the tray app or `secret-tool store --label=robbie-mesh service robbie-mesh username {0}`")]
    NotFound(String),
    #[error("no keychain here: {0}")]
    Unavailable(String),
    #[error("the keychain is locked: a key in it cannot be read without a password prompt nobody may see")]
    Locked,
    #[error("keychain entry `{entry}`: {source}")]
    Keyring {
        entry: String,
        #[source]
        source: keyring::Error,
    },
}

/// The account name of the entry holding the private key `name` (e.g. a peer name).
pub fn key_account(name: &str) -> String {
    format!("ssh-key:{name}")
}

/// The account name of the entry holding the PostgreSQL password used for `service`
/// (its probe and the store's sync log in with it).
pub fn postgres_account(service: &str) -> String {
    format!("postgres:{service}")
}

/// The account name of the entry holding the passphrase of a key file.
pub fn passphrase_account(key_file: &Path) -> String {
    format!("passphrase:{}", key_file.display())
}

fn entry(account: &str) -> Result<keyring::Entry, KeychainError> {
    let persistent = !matches!(
        keyring::default::default_credential_builder().persistence(),
        CredentialPersistence::EntryOnly | CredentialPersistence::ProcessOnly
    );
    if !persistent {
        return Err(KeychainError::NoBackend);
    }
    session_bus()?;
    keyring::Entry::new(KEYCHAIN_SERVICE, account).map_err(|source| KeychainError::Keyring {
        entry: account.to_string(),
        source,
    })
}

/// On Linux the Secret Service is on the session's D-Bus: a system service, a
/// cron job or an SSH login without one has no keychain, and asking would only
/// fail slowly (libdbus tries to start a bus for an X display). Said at once.
fn session_bus() -> Result<(), KeychainError> {
    if !cfg!(target_os = "linux") || std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some() {
        return Ok(());
    }
    let bus = std::env::var_os("XDG_RUNTIME_DIR").map(|d| Path::new(&d).join("bus"));
    if bus.as_deref().is_some_and(Path::exists) {
        return Ok(());
    }
    Err(KeychainError::Unavailable(
        "no D-Bus session bus, so no Secret Service (a system service has none): use a key file, \
         an ssh-agent, or under systemd `credential:NAME`"
            .into(),
    ))
}

/// Whether the keychain can be used without a password prompt: `Ok(())`, or
/// why not ("locked", no session bus, no Secret Service). Asks the Secret
/// Service for its default collection's lock (Linux); elsewhere reads an entry
/// that does not exist, which answers only if the keychain is usable.
pub fn usable() -> Result<(), KeychainError> {
    session_bus()?;
    #[cfg(target_os = "linux")]
    {
        use dbus_secret_service::{EncryptionType, SecretService};
        let unavailable = |e: dbus_secret_service::Error| {
            KeychainError::Unavailable(format!("the Secret Service does not answer: {e}"))
        };
        let ss = SecretService::connect(EncryptionType::Plain).map_err(unavailable)?;
        let collection = ss.get_any_collection().map_err(unavailable)?;
        if collection.is_locked().map_err(unavailable)? {
            return Err(KeychainError::Locked);
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        get("robbie-mesh doctor: no such entry").map(|_| ())
    }
}

/// Reads a secret; `Ok(None)` when there is no such entry.
pub fn get(account: &str) -> Result<Option<String>, KeychainError> {
    match entry(account)?.get_password() {
        Ok(s) => Ok(Some(s)),
        Err(keyring::Error::NoEntry) => Ok(None),
        Err(source) => Err(KeychainError::Keyring {
            entry: account.to_string(),
            source,
        }),
    }
}

/// Stores (or replaces) a secret.
pub fn set(account: &str, secret: &str) -> Result<(), KeychainError> {
    entry(account)?
        .set_password(secret)
        .map_err(|source| KeychainError::Keyring {
            entry: account.to_string(),
            source,
        })
}

/// Deletes a secret; deleting a missing entry is not an error.
pub fn delete(account: &str) -> Result<(), KeychainError> {
    match entry(account)?.delete_credential() {
        Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
        Err(source) => Err(KeychainError::Keyring {
            entry: account.to_string(),
            source,
        }),
    }
}

/// The OpenSSH-format private key stored as `name`.
pub fn private_key(name: &str) -> Result<String, KeychainError> {
    let account = key_account(name);
    get(&account)?.ok_or(KeychainError::NotFound(account))
}
