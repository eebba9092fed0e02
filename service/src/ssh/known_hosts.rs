//! Strict host-key checking against OpenSSH `known_hosts` files.
//!
//! Covers what `ssh` reads: comma-separated host patterns with `*`/`?` wildcards and
//! `!` negation, `[host]:port` for non-standard ports, hashed `|1|salt|hash` entries
//! (HMAC-SHA1), `@revoked` keys, comments and tabs. `@cert-authority` lines are skipped
//! (host certificates are not accepted). Writing appends a `[host]:port` line, as
//! `ssh -o StrictHostKeyChecking=accept-new` does (hashed if the file is).

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use hmac::{KeyInit, Mac};
use russh::keys::PublicKey;

use crate::config::ssh_config::wildcard_match;

/// The verdict on a server's host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyVerdict {
    /// A line lists this key for this host.
    Trusted,
    /// The key is marked `@revoked`.
    Revoked { file: PathBuf, line: usize },
    /// The host is known with a different key: of the same type, or only with
    /// keys of other types (a server does not lose its key of one type; as
    /// OpenSSH, this is a changed key, not a new one). `known` is that entry's
    /// key type.
    Changed {
        file: PathBuf,
        line: usize,
        known: String,
    },
    /// The host is not listed.
    Unknown,
    /// A known_hosts file exists but cannot be read: nothing can be trusted or
    /// added until it can (never treated as empty).
    Unreadable { file: PathBuf, why: String },
}

struct Entry {
    file: PathBuf,
    line: usize,
    revoked: bool,
    hosts: String,
    key: PublicKey,
}

/// All usable entries of a set of known_hosts files.
pub struct KnownHosts {
    entries: Vec<Entry>,
    /// A file that exists but could not be read, and why.
    unreadable: Option<(PathBuf, String)>,
}

impl KnownHosts {
    /// Reads every file, as bytes, line by line (a byte that is not UTF-8, in a
    /// comment say, costs nothing but that line's comment); missing files are
    /// empty, malformed lines are skipped (as `ssh` does) and returned as warnings.
    /// A file that exists but cannot be read (permissions, a directory) makes
    /// every check fail with its reason.
    pub fn load(files: &[PathBuf]) -> (KnownHosts, Vec<String>) {
        let mut kh = KnownHosts {
            entries: Vec::new(),
            unreadable: None,
        };
        let mut warnings = Vec::new();
        for f in files {
            match std::fs::read(f) {
                Ok(bytes) => kh.add_text(f, &bytes, &mut warnings),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    let why = if f.is_dir() {
                        "it is a directory, not a file".to_string()
                    } else {
                        e.to_string()
                    };
                    kh.unreadable.get_or_insert((f.clone(), why));
                }
            }
        }
        (kh, warnings)
    }

    pub fn parse(file: &Path, text: &str) -> KnownHosts {
        let mut kh = KnownHosts {
            entries: Vec::new(),
            unreadable: None,
        };
        kh.add_text(file, text.as_bytes(), &mut Vec::new());
        kh
    }

    fn add_text(&mut self, file: &Path, bytes: &[u8], warnings: &mut Vec<String>) {
        for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
            let text = String::from_utf8_lossy(raw);
            let line = text.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let mut first = fields.next().unwrap_or("");
            let mut revoked = false;
            if first.starts_with('@') {
                match first {
                    "@revoked" => revoked = true,
                    // Host certificates are not supported: such a line trusts nothing.
                    "@cert-authority" => continue,
                    other => {
                        warnings.push(format!(
                            "{}:{}: unknown marker {other}",
                            file.display(),
                            i + 1
                        ));
                        continue;
                    }
                }
                first = fields.next().unwrap_or("");
            }
            let (Some(kind), Some(b64)) = (fields.next(), fields.next()) else {
                warnings.push(format!(
                    "{}:{}: not `hosts keytype key`",
                    file.display(),
                    i + 1
                ));
                continue;
            };
            match PublicKey::from_openssh(&format!("{kind} {b64}")) {
                Ok(key) => self.entries.push(Entry {
                    file: file.to_path_buf(),
                    line: i + 1,
                    revoked,
                    hosts: first.to_string(),
                    key,
                }),
                Err(e) => warnings.push(format!(
                    "{}:{}: unreadable {kind} key: {e}",
                    file.display(),
                    i + 1
                )),
            }
        }
    }

    /// Checks `key` offered by the server known as `name` (`host` or `[host]:port`).
    pub fn check(&self, name: &str, key: &PublicKey) -> HostKeyVerdict {
        if let Some((file, why)) = &self.unreadable {
            return HostKeyVerdict::Unreadable {
                file: file.clone(),
                why: why.clone(),
            };
        }
        let algo = key.algorithm();
        // A revoked key is refused for every host.
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.revoked && e.key.key_data() == key.key_data())
        {
            return HostKeyVerdict::Revoked {
                file: e.file.clone(),
                line: e.line,
            };
        }
        // The first entry of the same type, else the first of any type.
        let mut changed: Option<&Entry> = None;
        for e in self
            .entries
            .iter()
            .filter(|e| !e.revoked && hosts_match(&e.hosts, name))
        {
            if e.key.key_data() == key.key_data() {
                return HostKeyVerdict::Trusted;
            }
            let same_type = e.key.algorithm() == algo;
            if changed.is_none_or(|c| same_type && c.key.algorithm() != algo) {
                changed = Some(e);
            }
        }
        match changed {
            Some(e) => HostKeyVerdict::Changed {
                file: e.file.clone(),
                line: e.line,
                known: e.key.algorithm().to_string(),
            },
            None => HostKeyVerdict::Unknown,
        }
    }

    /// Key algorithms this host is known with, so negotiation can prefer them
    /// (what `ssh` does to avoid a needless "unknown key type").
    pub fn known_algorithms(&self, name: &str) -> Vec<russh::keys::Algorithm> {
        let mut out = Vec::new();
        for e in self
            .entries
            .iter()
            .filter(|e| !e.revoked && hosts_match(&e.hosts, name))
        {
            let a = e.key.algorithm();
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }
}

/// Why a new host key could not be recorded: nothing is trusted then.
#[derive(Debug)]
pub enum AppendError {
    /// The file exists but cannot keep a key (`/dev/null`, a directory, a FIFO):
    /// accepting keys into it would accept any key on every connection.
    NotAFile(PathBuf),
    /// Between the check and the write, the file came to list this host with
    /// another key (another process wrote it): that is a changed key now.
    Changed {
        line: usize,
    },
    Io(PathBuf, std::io::Error),
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppendError::NotAFile(p) => write!(
                f,
                "{} is not a regular file, so it cannot remember the key and every connection would accept any key; point known_hosts at a file",
                p.display()
            ),
            AppendError::Changed { line } => write!(f, "another key for this host was written at line {line} meanwhile"),
            AppendError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

/// Can `accept_new` record keys in `file`? It must be a regular file, or not
/// exist yet.
pub fn can_record(file: &Path) -> Result<(), AppendError> {
    match std::fs::metadata(file) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(AppendError::NotAFile(file.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AppendError::Io(file.to_path_buf(), e)),
    }
}

/// Appends `name key` to `file` as `ssh -o StrictHostKeyChecking=accept-new`
/// does, but safely when several peers (or processes) do it at once: under an
/// exclusive lock on the file, after reading it again (the key is written once;
/// a key that appeared meanwhile for this host decides instead), as one write of
/// a whole line, after a newline if the file does not end with one, with the
/// name hashed if the file's entries are. Creates the file, and its directory
/// with mode 0700, if needed.
pub fn append(file: &Path, name: &str, key: &PublicKey) -> Result<(), AppendError> {
    use std::io::{Read, Seek};
    use std::os::unix::fs::DirBuilderExt;
    let io = |e| AppendError::Io(file.to_path_buf(), e);
    can_record(file)?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| AppendError::Io(dir.to_path_buf(), e))?;
    }
    let key_text = key.to_openssh().map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.to_string(),
        ))
    })?;
    let key_text = key_text
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(file)
        .map_err(io)?;
    f.lock().map_err(io)?;
    let mut now = Vec::new();
    f.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
    f.read_to_end(&mut now).map_err(io)?;
    let mut current = KnownHosts {
        entries: Vec::new(),
        unreadable: None,
    };
    current.add_text(file, &now, &mut Vec::new());
    match current.check(name, key) {
        HostKeyVerdict::Trusted => return Ok(()),
        HostKeyVerdict::Changed { line, .. } | HostKeyVerdict::Revoked { line, .. } => {
            return Err(AppendError::Changed { line })
        }
        HostKeyVerdict::Unknown | HostKeyVerdict::Unreadable { .. } => {}
    }
    let hashed_file = current.entries.iter().any(|e| e.hosts.starts_with("|1|"));
    let host_field = if hashed_file {
        hash_name(name)
    } else {
        name.to_string()
    };
    let mut line = Vec::with_capacity(host_field.len() + key_text.len() + 3);
    if now.last().is_some_and(|b| *b != b'\n') {
        line.push(b'\n');
    }
    line.extend_from_slice(format!("{host_field} {key_text}\n").as_bytes());
    // One write(2) of the whole line to a file opened for appending.
    f.write_all(&line).map_err(io)?;
    f.sync_data().map_err(io)
}

/// `|1|salt|hash` for `name`, as `ssh-keygen -H` writes it.
fn hash_name(name: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let salt: [u8; 20] = rand::random();
    let mut mac =
        hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt).expect("HMAC takes any key length");
    mac.update(name.as_bytes());
    format!(
        "|1|{}|{}",
        b64.encode(salt),
        b64.encode(mac.finalize().into_bytes())
    )
}

/// Does a known_hosts host field (comma-separated patterns or one hashed entry)
/// match? Host names compare lowercased, hashed ones too (OpenSSH lowercases the
/// name before it hashes it).
fn hosts_match(field: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if let Some(hashed) = field.strip_prefix("|1|") {
        return hashed_match(hashed, &name);
    }
    let mut matched = false;
    for p in field.split(',') {
        let p = p.to_ascii_lowercase();
        if let Some(neg) = p.strip_prefix('!') {
            if wildcard_match(neg, &name) {
                return false;
            }
        } else if wildcard_match(&p, &name) {
            matched = true;
        }
    }
    matched
}

/// `salt|hash`, both base64: HMAC-SHA1(key = salt, message = name) == hash.
fn hashed_match(salt_and_hash: &str, name: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some((salt, hash)) = salt_and_hash.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_that_is_not_utf8_costs_nothing_but_its_line_comment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("known_hosts");
        let mut bytes = b"# caf\xe9 (Latin-1)\n".to_vec();
        bytes.extend_from_slice(format!("[localhost]:2222 {ED1} r").as_bytes());
        bytes.extend_from_slice(b"\xe9sum\xe9\n");
        std::fs::write(&f, bytes).expect("write");
        let (kh, _) = KnownHosts::load(std::slice::from_ref(&f));
        let other = PublicKey::from_openssh(ED2).expect("key");
        assert!(matches!(
            kh.check("[localhost]:2222", &other),
            HostKeyVerdict::Changed { line: 2, .. }
        ));
    }

    #[test]
    fn an_unreadable_file_trusts_nothing_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (kh, _) = KnownHosts::load(&[dir.path().to_path_buf()]);
        let key = PublicKey::from_openssh(ED1).expect("key");
        match kh.check("localhost", &key) {
            HostKeyVerdict::Unreadable { why, .. } => assert!(why.contains("directory"), "{why}"),
            other => panic!("{other:?}"),
        }
        let (kh, _) = KnownHosts::load(&[dir.path().join("missing")]);
        assert!(
            matches!(kh.check("localhost", &key), HostKeyVerdict::Unknown),
            "a missing file is empty"
        );
    }

    #[test]
    fn hashed_names_match_lowercased() {
        let salt = [7u8; 20];
        let kh = KnownHosts::parse(
            Path::new("kh"),
            &format!("{} {ED1}", hashed("[localhost]:2222", &salt)),
        );
        let key = PublicKey::from_openssh(ED1).expect("key");
        assert_eq!(kh.check("[LOCALHOST]:2222", &key), HostKeyVerdict::Trusted);
    }

    const ED1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAA76dJieginodV+Ryl5SwxKSCYFUNVUSrZJnIi1kXs+";
    const ED2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEogFQF8fgu36LCxpMS30/sehb10sSt0LjcPVKVKYtf9";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).expect("test key")
    }

    fn hashed(name: &str, salt: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt).expect("hmac");
        mac.update(name.as_bytes());
        format!(
            "|1|{}|{}",
            b64.encode(salt),
            b64.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn plain_port_and_wildcard_entries() {
        let text = format!(
            "# c\nexample.com,10.0.0.1 {ED1}\n[example.com]:2222\t{ED2}\n*.lan,!bad.lan {ED1}\n"
        );
        let kh = KnownHosts::parse(Path::new("kh"), &text);
        assert_eq!(kh.check("example.com", &key(ED1)), HostKeyVerdict::Trusted);
        assert_eq!(kh.check("10.0.0.1", &key(ED1)), HostKeyVerdict::Trusted);
        assert_eq!(
            kh.check("[example.com]:2222", &key(ED2)),
            HostKeyVerdict::Trusted
        );
        assert!(matches!(
            kh.check("[example.com]:2222", &key(ED1)),
            HostKeyVerdict::Changed { line: 3, .. }
        ));
        assert_eq!(kh.check("box.lan", &key(ED1)), HostKeyVerdict::Trusted);
        assert_eq!(kh.check("bad.lan", &key(ED1)), HostKeyVerdict::Unknown);
        assert_eq!(kh.check("other", &key(ED1)), HostKeyVerdict::Unknown);
    }

    #[test]
    fn hashed_entries() {
        let text = format!(
            "{} {ED1}\n",
            hashed("[127.0.0.1]:2200", b"0123456789abcdefghij")
        );
        let kh = KnownHosts::parse(Path::new("kh"), &text);
        assert_eq!(
            kh.check("[127.0.0.1]:2200", &key(ED1)),
            HostKeyVerdict::Trusted
        );
        assert!(matches!(
            kh.check("[127.0.0.1]:2200", &key(ED2)),
            HostKeyVerdict::Changed { .. }
        ));
        assert_eq!(kh.check("127.0.0.1", &key(ED1)), HostKeyVerdict::Unknown);
    }

    #[test]
    fn revoked_wins_everywhere() {
        let text = format!("host {ED1}\n@revoked * {ED1}\n");
        let kh = KnownHosts::parse(Path::new("kh"), &text);
        assert!(matches!(
            kh.check("host", &key(ED1)),
            HostKeyVerdict::Revoked { line: 2, .. }
        ));
    }

    #[test]
    fn append_then_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("sub").join("known_hosts");
        append(&f, "[h]:2022", &key(ED1)).expect("append");
        let (kh, warnings) = KnownHosts::load(std::slice::from_ref(&f));
        assert!(warnings.is_empty());
        assert_eq!(kh.check("[h]:2022", &key(ED1)), HostKeyVerdict::Trusted);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("sub"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o700,
            "a directory made for known_hosts is private"
        );
    }

    #[test]
    fn an_append_to_a_file_without_a_final_newline_keeps_both_pins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("known_hosts");
        std::fs::write(&f, format!("[a]:2022 {ED1}")).expect("write");
        append(&f, "[b]:2022", &key(ED2)).expect("append");
        let (kh, warnings) = KnownHosts::load(std::slice::from_ref(&f));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(kh.check("[a]:2022", &key(ED1)), HostKeyVerdict::Trusted);
        assert_eq!(kh.check("[b]:2022", &key(ED2)), HostKeyVerdict::Trusted);
    }

    #[test]
    fn a_hashed_file_gets_a_hashed_line_and_a_second_append_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("known_hosts");
        std::fs::write(&f, format!("{} {ED1}\n", hashed("[a]:2022", &[1; 20]))).expect("write");
        append(&f, "[b]:2022", &key(ED2)).expect("append");
        append(&f, "[b]:2022", &key(ED2)).expect("append again");
        let text = std::fs::read_to_string(&f).expect("read");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.lines().all(|l| l.starts_with("|1|")), "{text}");
        assert!(!text.contains("[b]"), "{text}");
        let (kh, _) = KnownHosts::load(std::slice::from_ref(&f));
        assert_eq!(kh.check("[b]:2022", &key(ED2)), HostKeyVerdict::Trusted);
    }

    #[test]
    fn a_file_that_cannot_keep_keys_is_refused() {
        let err = append(Path::new("/dev/null"), "[b]:2022", &key(ED2)).expect_err("refused");
        assert!(matches!(err, AppendError::NotAFile(_)), "{err}");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_key_of_another_type_for_a_known_host_is_a_changed_key() {
        const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQCz7be/moem3xnB41RHUnJpW2/GZfnNmhqu6WK9vWXTqSgZZGGpUDgMpxwWhqyJTgN1TUy8lH8sI5DA1vHTUpxY4RZE3NQwdci2+SyicQjxqT3bk7OpscmCd062zacWjD3kniQb48S9vITYX77a0c1XNPckIFAokYSHHFAQlqAkvCgzopwpZ5n2lCt+ur9Xblh2/LPLFitG4uVKemAGtB6N4qloWM6wQYj0BlFyCl0DunItICRMP/139eEWWTPzTXRhDktf1dv7EN0UX0oBX7eQs6AB0HRkoIIj4K8Nd1Ct/kGFOx9Ozpot6Px34TvmkScfd4OkLoqwWAdE5bZv08LPdnh9HehAd8DGNyed2VmjkZgaUX9LyCxUfjrka3vnFbduV93kyM0STAezwT5iVZKaU7fuwOG08OgYj3728wLFec7TlbDyRTKsbMTwPZw9Gj1U6cddQVwhhI41zApv5lqH1zo64KucgGRGmZ2U+rwGyc0cxRtIiip6dUUqhk8zcPk=";
        let kh = KnownHosts::parse(
            Path::new("kh"),
            &format!("[a]:2022 {RSA}\n[a]:2022 {ED1}\n"),
        );
        assert_eq!(
            kh.check("[a]:2022", &key(ED2)),
            HostKeyVerdict::Changed {
                file: "kh".into(),
                line: 2,
                known: "ssh-ed25519".into()
            },
            "the entry of the same type is the one named"
        );
        let kh = KnownHosts::parse(Path::new("kh"), &format!("[a]:2022 {RSA}\n"));
        assert!(
            matches!(kh.check("[a]:2022", &key(ED2)), HostKeyVerdict::Changed { line: 1, ref known, .. } if known == "ssh-rsa"),
            "known only with an RSA key, presenting ed25519: changed, not new"
        );
    }

    #[test]
    fn concurrent_appends_each_write_one_whole_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("known_hosts");
        std::thread::scope(|s| {
            for i in 0..10 {
                let f = f.clone();
                s.spawn(move || {
                    append(
                        &f,
                        &format!("[h{i}]:2022"),
                        &key(if i % 2 == 0 { ED1 } else { ED2 }),
                    )
                    .expect("append")
                });
            }
        });
        let (kh, warnings) = KnownHosts::load(std::slice::from_ref(&f));
        assert!(warnings.is_empty(), "{warnings:?}");
        for i in 0..10 {
            assert_eq!(
                kh.check(
                    &format!("[h{i}]:2022"),
                    &key(if i % 2 == 0 { ED1 } else { ED2 })
                ),
                HostKeyVerdict::Trusted
            );
        }
        assert_eq!(
            std::fs::read_to_string(&f).expect("read").lines().count(),
            10
        );
    }
}
