//! Who may use the API. Listening on loopback keeps other machines out, not
//! other users of this one, other programs, or a web page in a local browser,
//! so everything that reads conversations or changes state needs the API
//! token:
//!
//! - **The token** is 32 random bytes, created at the first start in
//!   `api-token` next to the store (the state directory: `/var/lib/robbie-mesh`
//!   for the system service, `~/.local/share/robbie-mesh` for a user), readable
//!   only by the service's user (0600). The CLI and the tray read it and send it
//!   as `Authorization: Bearer …`. `$ROBBIE_MESH_TOKEN` (16 characters or
//!   more) set for the service is its token instead, and no file is written;
//!   set for a client, it is what the client sends.
//! - **A browser** signs in with a one-time link (`robbie-mesh dashboard`, or
//!   the tray's dashboard): `GET /login?code=…` sets an HTTP-only, SameSite=Strict
//!   cookie and sends the browser to the dashboard. A code is good once, for two
//!   minutes, so the token never appears in a URL or a browser's history. A
//!   browser's state-changing call must also come from the API's own origin.
//! - Open without the token: `/health`, `/metrics`, the read-only status
//!   (`/v1/status`, `/v1/tunnels`, `/v1/node`, `/v1/events`) and the dashboard's
//!   files.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, Method};
use base64::Engine;

/// The cookie a signed-in browser sends.
pub const COOKIE: &str = "robbie_mesh_session";
/// How long a one-time sign-in code is good for.
pub const CODE_LIFETIME: Duration = Duration::from_secs(120);

/// Where the token lives for a store at `store`.
pub fn token_path(store: &Path) -> PathBuf {
    store
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("api-token")
}

/// The token a client sends: `$ROBBIE_MESH_TOKEN`, else the file next to the
/// store (an error that says why it cannot be read, and what to do).
pub fn client_token(store: &Path) -> Result<String, String> {
    if let Ok(t) = std::env::var("ROBBIE_MESH_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let path = token_path(store);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(format!("{} is empty; restart the service to make a new token", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
            "{} (the API token) is readable only by the service's user: run this as that user (e.g. `sudo -u robbie-mesh robbie-mesh …` for the system service) or as root",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "no API token at {}: the service makes it when it starts; is it running with this config?",
            path.display()
        )),
        Err(e) => Err(format!("cannot read the API token {}: {e}", path.display())),
    }
}

/// The running service's side: its token and the sign-in codes handed out.
pub struct Access {
    token: Result<String, String>,
    path: PathBuf,
    codes: Mutex<HashMap<String, Instant>>,
}

/// How a request proved itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    Bearer,
    Cookie,
    None,
}

fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Equal in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Access {
    /// Reads the token next to the store, or creates it (0600, never
    /// overwriting one another process wrote first). A failure is kept and
    /// told to every caller that needs the token; the rest of the API works.
    pub fn open(store: &Path) -> Access {
        let path = token_path(store);
        if let Some(t) = std::env::var("ROBBIE_MESH_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
        {
            if t.len() >= 16 {
                tracing::info!("API token from $ROBBIE_MESH_TOKEN (no token file is written)");
                return Access {
                    token: Ok(t),
                    path,
                    codes: Mutex::new(HashMap::new()),
                };
            }
            tracing::warn!(
                "$ROBBIE_MESH_TOKEN is shorter than 16 characters: ignored, using {}",
                path.display()
            );
        }
        Self::with_file(path)
    }

    /// The token in the file at `path`, made if missing.
    fn with_file(path: PathBuf) -> Access {
        let token = Self::read_or_create(&path).map_err(|e| {
            let why = format!(
                "no API token ({}: {e}); the API's conversation and control calls are refused until the directory is writable",
                path.display()
            );
            tracing::error!("{why}");
            why
        });
        Access {
            token,
            path,
            codes: Mutex::new(HashMap::new()),
        }
    }

    fn read_or_create(path: &Path) -> std::io::Result<String> {
        match std::fs::read_to_string(path) {
            Ok(t) if t.trim().len() >= 32 => return Ok(t.trim().to_string()),
            Ok(_) => {
                tracing::warn!(
                    "{} is too short to be a token: making a new one",
                    path.display()
                );
                std::fs::remove_file(path)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let token = random_secret();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(path) {
            Ok(mut f) => {
                f.write_all(format!("{token}\n").as_bytes())?;
                f.sync_all()?;
                tracing::info!("made the API token {}", path.display());
                Ok(token)
            }
            // Another process made it between our read and our create.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(std::fs::read_to_string(path)?.trim().to_string())
            }
            Err(e) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the request shows: a valid bearer token, a valid session cookie,
    /// or neither.
    pub fn proof(&self, headers: &HeaderMap) -> Proof {
        let Ok(token) = &self.token else {
            return Proof::None;
        };
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .any(|t| same(t.trim(), token));
        if bearer {
            return Proof::Bearer;
        }
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(k, v)| k == COOKIE && same(v, token));
        if cookie {
            Proof::Cookie
        } else {
            Proof::None
        }
    }

    /// Why a call that needs the token cannot have it, for the answer.
    pub fn missing(&self) -> String {
        match &self.token {
            Err(why) => why.clone(),
            Ok(_) => format!(
                "this call needs the API token: the CLI and the tray send it from {} (only its owner can read it); a browser signs in with `robbie-mesh dashboard`",
                self.path.display()
            ),
        }
    }

    /// A one-time sign-in code, good for [`CODE_LIFETIME`].
    pub fn new_code(&self) -> String {
        let code = random_secret();
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.retain(|_, t| t.elapsed() < CODE_LIFETIME);
        codes.insert(code.clone(), Instant::now());
        code
    }

    /// The session cookie for a code that is valid now (and never again).
    pub fn redeem(&self, code: &str) -> Option<String> {
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.retain(|_, t| t.elapsed() < CODE_LIFETIME);
        let found = codes.keys().find(|k| same(k, code)).cloned()?;
        codes.remove(&found);
        let token = self.token.as_ref().ok()?;
        Some(format!(
            "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age=31536000"
        ))
    }
}

/// Whether a call needs the token: anything touching conversations, and
/// anything that is not a read.
pub fn needs_token(method: &Method, path: &str) -> bool {
    let read = method == Method::GET || method == Method::HEAD;
    !read || path.starts_with("/v1/conversations") || path.starts_with("/v1/sync")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_token_is_made_once_private_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store.db");
        // (tests/run.sh sets $ROBBIE_MESH_TOKEN for the services it starts)
        let a = Access::with_file(token_path(&store));
        let token = std::fs::read_to_string(token_path(&store)).expect("token file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(token_path(&store))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            Access::with_file(token_path(&store)).token,
            a.token,
            "kept across restarts"
        );
        let mut h = HeaderMap::new();
        assert_eq!(a.proof(&h), Proof::None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", token.trim())).expect("v"),
        );
        assert_eq!(a.proof(&h), Proof::Bearer);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        assert_eq!(a.proof(&h), Proof::None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; {COOKIE}={}", token.trim())).expect("v"),
        );
        assert_eq!(a.proof(&h), Proof::Cookie);

        let code = a.new_code();
        assert!(a.redeem("not-a-code").is_none());
        let cookie = a.redeem(&code).expect("good once");
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        assert!(a.redeem(&code).is_none(), "and only once");
    }

    #[test]
    fn reads_are_open_except_conversations() {
        assert!(!needs_token(&Method::GET, "/v1/status"));
        assert!(!needs_token(&Method::GET, "/health"));
        assert!(needs_token(&Method::GET, "/v1/conversations"));
        assert!(needs_token(&Method::GET, "/v1/conversations/x/messages"));
        assert!(needs_token(&Method::POST, "/v1/tunnels/a/reconnect"));
        assert!(needs_token(&Method::DELETE, "/v1/services/o/pin"));
    }
}
