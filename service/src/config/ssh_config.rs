//! A reader for the OpenSSH client config (`~/.ssh/config`), enough to resolve a
//! Host alias the way `ssh` does: `Host` blocks with wildcards and negation, the first
//! value obtained wins, `IdentityFile` accumulates, `Include` is followed (under a
//! `Host` or `Match` block that does not apply, nothing it includes applies either,
//! as in `ssh`), and the `%h %n %k %d %u %l %L %r %p %C %%` tokens are expanded.
//! `Match` blocks other than `Match all` are skipped: robbie-mesh cannot evaluate
//! `exec` or `canonical` conditions. Files are read as bytes: a byte that is not
//! UTF-8 spoils only its own line.

use std::path::{Path, PathBuf};

/// The values `ssh` would use for one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_files: Vec<PathBuf>,
    pub known_hosts_files: Vec<PathBuf>,
    /// `GlobalKnownHostsFile`, when set (`none`: an empty list).
    pub global_known_hosts_files: Option<Vec<PathBuf>>,
    /// `HostKeyAlias`: the name known_hosts lists the host under.
    pub host_key_alias: Option<String>,
    /// `IdentitiesOnly yes`: only the identity files' keys are offered, from the
    /// agent or the files, never every key the agent holds.
    pub identities_only: bool,
    /// `ProxyJump` or `ProxyCommand` (other than `none`), and where it is set.
    pub proxy: Option<Proxy>,
}

/// A way of reaching the host through something else, as set in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// `ProxyJump` or `ProxyCommand`.
    pub keyword: &'static str,
    pub value: String,
    /// `file:line`.
    pub origin: String,
}

#[derive(Debug, Clone)]
enum Condition {
    Always,
    Never,
    Hosts(Vec<String>),
}

impl Condition {
    fn holds(&self, host: &str) -> bool {
        match self {
            Condition::Always => true,
            Condition::Never => false,
            Condition::Hosts(patterns) => host_matches(patterns, host),
        }
    }
}

#[derive(Debug, Clone)]
struct Directive {
    /// Every condition must hold: the block's own, and those of the blocks that
    /// included its file.
    when: Vec<Condition>,
    key: String,
    args: Vec<String>,
    origin: String,
}

/// A parsed config (with its includes), ready to resolve hosts.
#[derive(Debug, Clone, Default)]
pub struct SshConfigFile {
    directives: Vec<Directive>,
    home: PathBuf,
    /// Files (the config or an include) not read because others could change
    /// them, and why.
    refused: Vec<String>,
}

impl SshConfigFile {
    /// Reads `path`; a missing or unreadable file is an empty config, as for `ssh`.
    pub fn load(path: &Path, home: &Path) -> SshConfigFile {
        let mut cfg = SshConfigFile {
            directives: Vec::new(),
            home: home.to_path_buf(),
            refused: Vec::new(),
        };
        cfg.read_file(path, 0, &[]);
        cfg
    }

    pub fn parse(text: &str, home: &Path) -> SshConfigFile {
        let mut cfg = SshConfigFile {
            directives: Vec::new(),
            home: home.to_path_buf(),
            refused: Vec::new(),
        };
        cfg.read_text(text, Path::new("(config)"), 0, &[]);
        cfg
    }

    /// Files refused for their owner or permissions (see
    /// [`crate::config::unsafe_permissions`]).
    pub fn refused(&self) -> &[String] {
        &self.refused
    }

    fn read_file(&mut self, path: &Path, depth: usize, outer: &[Condition]) {
        if let Some(why) = crate::config::unsafe_permissions(path) {
            self.refused.push(why);
            return;
        }
        if let Ok(bytes) = std::fs::read(path) {
            self.read_text(&String::from_utf8_lossy(&bytes), path, depth, outer);
        }
    }

    fn read_text(&mut self, text: &str, file: &Path, depth: usize, outer: &[Condition]) {
        let mut own = Condition::Always;
        for (n, line) in text.lines().enumerate() {
            let Some((key, args)) = split_line(line) else {
                continue;
            };
            let when = || {
                let mut w = outer.to_vec();
                w.push(own.clone());
                w
            };
            match key.as_str() {
                "host" => own = Condition::Hosts(args),
                "match" => {
                    let all = args.len() == 1 && args[0].eq_ignore_ascii_case("all");
                    own = if all {
                        Condition::Always
                    } else {
                        Condition::Never
                    };
                }
                "include" if depth < 16 => {
                    // The included file's lines hold only where the block holds
                    // that includes it (ssh reads them with "never match" under a
                    // block that does not apply); its own Host lines end with it.
                    let when = when();
                    for pattern in &args {
                        for path in self.expand_include(pattern) {
                            self.read_file(&path, depth + 1, &when);
                        }
                    }
                }
                _ => {
                    let when = when();
                    self.directives.push(Directive {
                        when,
                        key,
                        args,
                        origin: format!("{}:{}", file.display(), n + 1),
                    })
                }
            }
        }
    }

    fn expand_include(&self, pattern: &str) -> Vec<PathBuf> {
        let path = crate::config::expand_tilde_path(pattern, &self.home);
        let path = if path.is_relative() {
            self.home.join(".ssh").join(path)
        } else {
            path
        };
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return vec![path];
        };
        if !name.contains(['*', '?']) {
            return vec![path];
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .is_some_and(|n| wildcard_match(name, n))
                    })
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    }

    /// What `ssh HOST` would use.
    pub fn resolve(&self, host: &str) -> Resolved {
        let mut r = Resolved::default();
        let mut identity = Vec::new();
        let mut known_hosts: Option<Vec<String>> = None;
        let mut global: Option<Vec<String>> = None;
        let mut identities_only: Option<bool> = None;
        let mut proxy_seen = false;
        for d in &self.directives {
            if !d.when.iter().all(|c| c.holds(host)) {
                continue;
            }
            let Some(first) = d.args.first() else {
                continue;
            };
            match d.key.as_str() {
                "hostname" if r.hostname.is_none() => {
                    r.hostname = Some(first.replace("%h", host).replace("%%", "%"))
                }
                "user" if r.user.is_none() => r.user = Some(first.clone()),
                "port" if r.port.is_none() => r.port = first.parse().ok(),
                "identityfile" => identity.push(first.clone()),
                "userknownhostsfile" if known_hosts.is_none() => known_hosts = Some(d.args.clone()),
                "globalknownhostsfile" if global.is_none() => global = Some(d.args.clone()),
                // ssh lowercases it, as every host name it looks up.
                "hostkeyalias" if r.host_key_alias.is_none() => {
                    r.host_key_alias = Some(first.to_ascii_lowercase())
                }
                "identitiesonly" if identities_only.is_none() => {
                    identities_only = Some(
                        first.eq_ignore_ascii_case("yes") || first.eq_ignore_ascii_case("true"),
                    )
                }
                // The first of the two obtained wins, as in ssh.
                "proxyjump" | "proxycommand" if !proxy_seen => {
                    proxy_seen = true;
                    if !first.eq_ignore_ascii_case("none") {
                        r.proxy = Some(Proxy {
                            keyword: if d.key == "proxyjump" {
                                "ProxyJump"
                            } else {
                                "ProxyCommand"
                            },
                            value: d.args.join(" "),
                            origin: d.origin.clone(),
                        });
                    }
                }
                _ => {}
            }
        }
        r.identities_only = identities_only.unwrap_or(false);
        let tokens = Tokens {
            home: self.home.display().to_string(),
            original: host.to_ascii_lowercase(),
            host: r
                .hostname
                .clone()
                .unwrap_or_else(|| host.to_ascii_lowercase()),
            alias: r.host_key_alias.clone(),
            user: r.user.clone(),
            port: r.port.unwrap_or(22),
        };
        r.identity_files = identity
            .iter()
            .map(|p| tokens.path(p, &self.home))
            .collect();
        r.known_hosts_files = known_hosts
            .unwrap_or_default()
            .iter()
            .filter(|p| p.as_str() != "none")
            .map(|p| tokens.path(p, &self.home))
            .collect();
        // ssh expands `~` in the system's files, not `%` tokens.
        r.global_known_hosts_files = global.map(|list| {
            list.iter()
                .filter(|p| p.as_str() != "none")
                .map(|p| crate::config::expand_tilde_path(p, &self.home))
                .collect()
        });
        r
    }
}

struct Tokens {
    home: String,
    /// The name as given (`%n`).
    original: String,
    /// After `HostName` (`%h`).
    host: String,
    alias: Option<String>,
    user: Option<String>,
    port: u16,
}

impl Tokens {
    fn path(&self, raw: &str, home: &Path) -> PathBuf {
        let local_user = std::env::var("USER").unwrap_or_default();
        let remote_user = self.user.as_deref().unwrap_or(&local_user);
        let mut out = String::new();
        let mut chars = raw.chars();
        while let Some(ch) = chars.next() {
            if ch != '%' {
                out.push(ch);
                continue;
            }
            match chars.next() {
                Some('d') => out.push_str(&self.home),
                Some('h') => out.push_str(&self.host),
                Some('n') => out.push_str(&self.original),
                Some('k') => out.push_str(self.alias.as_deref().unwrap_or(&self.original)),
                Some('l') => out.push_str(&local_hostname()),
                Some('L') => out.push_str(local_hostname().split('.').next().unwrap_or_default()),
                Some('u') => out.push_str(&local_user),
                Some('r') => out.push_str(remote_user),
                Some('p') => out.push_str(&self.port.to_string()),
                Some('C') => out.push_str(&connection_hash(
                    &local_hostname(),
                    &self.host,
                    self.port,
                    remote_user,
                )),
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            }
        }
        crate::config::expand_tilde_path(&out, home)
    }
}

/// `%l`: this machine's host name as the system gives it (`%L`: without its
/// domain).
fn local_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// `%C`: the SHA-1 of `%l%h%p%r` in hex, as `ssh` computes it (no `ProxyJump`
/// here, so its `%j` part is empty).
fn connection_hash(local: &str, host: &str, port: u16, user: &str) -> String {
    use sha1::Digest;
    let digest = sha1::Sha1::digest(format!("{local}{host}{port}{user}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `Keyword args…` or `Keyword=args…`, lower-cased keyword; `None` for blanks and comments.
fn split_line(line: &str) -> Option<(String, Vec<String>)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let split = line.find(|c: char| c.is_whitespace() || c == '=')?;
    let key = line[..split].to_ascii_lowercase();
    let rest = line[split..].trim_start_matches(|c: char| c.is_whitespace() || c == '=');
    Some((key, split_args(rest)))
}

/// Whitespace-separated arguments; double quotes group.
fn split_args(s: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for ch in s.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    args.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        args.push(cur);
    }
    args
}

/// A `Host` line matches when one pattern matches and no negated one does.
/// Its patterns are separated by whitespace only: `Host a,b` is one pattern
/// that matches nothing but the name `a,b`, as in ssh (commas separate
/// patterns in known_hosts and `Match host`, not here).
fn host_matches(patterns: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let mut matched = false;
    for p in patterns {
        let p = p.to_ascii_lowercase();
        if let Some(neg) = p.strip_prefix('!') {
            if wildcard_match(neg, &host) {
                return false;
            }
        } else if wildcard_match(&p, &host) {
            matched = true;
        }
    }
    matched
}

/// `*` and `?` wildcards, as in ssh_config(5) PATTERNS.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
# comment
Host aurora aurora-town
    HostName aurora-town-u44170.vm.elestio.app
    User root
    Port 2222
    IdentityFile ~/.ssh/aurora_ed25519
Host *.local !bad.local
    User allan
    IdentityFile %d/.ssh/%h_key
Host=vengeance
    HostName=%h.local
Host *
    User fallback
    IdentityFile ~/.ssh/id_ed25519
    UserKnownHostsFile ~/.ssh/known_hosts ~/.ssh/known_hosts2
"#;

    fn cfg() -> SshConfigFile {
        SshConfigFile::parse(CONFIG, Path::new("/home/u"))
    }

    #[test]
    fn alias_resolves_like_openssh() {
        let r = cfg().resolve("aurora");
        assert_eq!(
            r.hostname.as_deref(),
            Some("aurora-town-u44170.vm.elestio.app")
        );
        assert_eq!(r.user.as_deref(), Some("root"));
        assert_eq!(r.port, Some(2222));
        assert_eq!(
            r.identity_files,
            vec![
                PathBuf::from("/home/u/.ssh/aurora_ed25519"),
                PathBuf::from("/home/u/.ssh/id_ed25519")
            ]
        );
        assert_eq!(r.known_hosts_files.len(), 2);
    }

    #[test]
    fn first_value_wins_and_tokens_expand() {
        let r = cfg().resolve("vengeance");
        assert_eq!(r.hostname.as_deref(), Some("vengeance.local"));
        // `Host *.local` is matched against the alias, not the HostName.
        assert_eq!(r.user.as_deref(), Some("fallback"));
        let r = cfg().resolve("box.local");
        assert_eq!(r.user.as_deref(), Some("allan"));
        assert_eq!(
            r.identity_files[0],
            PathBuf::from("/home/u/.ssh/box.local_key")
        );
    }

    #[test]
    fn negation_excludes() {
        let r = cfg().resolve("bad.local");
        assert_eq!(r.user.as_deref(), Some("fallback"));
    }

    #[test]
    fn an_include_under_a_block_that_does_not_apply_applies_nowhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inc = dir.path().join("lab.conf");
        std::fs::write(&inc, "HostName lab.example\nHost *\n  HostName 127.66.66.66\n  UserKnownHostsFile /dev/null\n").expect("write");
        let main = format!(
            "Host lab-*\n  Include {}\nHost *\n  User after\n",
            inc.display()
        );
        let cfg = SshConfigFile::parse(&main, Path::new("/home/u"));
        let r = cfg.resolve("127.0.0.1");
        assert_eq!(r.hostname, None, "{r:?}");
        assert!(r.known_hosts_files.is_empty(), "{r:?}");
        assert_eq!(
            r.user.as_deref(),
            Some("after"),
            "the including file goes on after the include"
        );
        let r = cfg.resolve("lab-1");
        assert_eq!(r.hostname.as_deref(), Some("lab.example"), "{r:?}");
    }

    #[test]
    fn alias_identities_only_global_files_and_proxies() {
        let text = "Host a\n  HostKeyAlias Pinned-Name\n  IdentitiesOnly yes\n  GlobalKnownHostsFile /etc/k1 %d/k2\n  IdentityFile ~/.ssh/%k_%C\n\
                    Host j\n  ProxyJump hub\nHost n\n  ProxyCommand none\nHost *\n  ProxyCommand nc %h %p\n  IdentitiesOnly no\n";
        let cfg = SshConfigFile::parse(text, Path::new("/home/u"));
        let r = cfg.resolve("a");
        assert_eq!(r.host_key_alias.as_deref(), Some("pinned-name"));
        assert!(r.identities_only);
        assert_eq!(
            r.global_known_hosts_files,
            Some(vec![PathBuf::from("/etc/k1"), PathBuf::from("%d/k2")])
        );
        let id = r.identity_files[0].display().to_string();
        assert!(
            id.starts_with("/home/u/.ssh/pinned-name_")
                && id.len() == "/home/u/.ssh/pinned-name_".len() + 40,
            "{id}"
        );
        assert_eq!(r.proxy.as_ref().map(|p| p.keyword), Some("ProxyCommand"));
        let r = cfg.resolve("j");
        let p = r.proxy.expect("proxy");
        assert_eq!(
            (p.keyword, p.value.as_str(), p.origin.as_str()),
            ("ProxyJump", "hub", "(config):7")
        );
        assert!(!r.identities_only);
        assert_eq!(
            cfg.resolve("n").proxy,
            None,
            "the first value obtained wins, none included"
        );
    }

    #[test]
    fn a_byte_that_is_not_utf8_spoils_only_its_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("config");
        std::fs::write(&f, b"# caf\xe9\nHost a\n  User root\n").expect("write");
        let cfg = SshConfigFile::load(&f, Path::new("/home/u"));
        assert_eq!(cfg.resolve("a").user.as_deref(), Some("root"));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.example.com", "a.example.com"));
        assert!(wildcard_match("host?", "host1"));
        assert!(!wildcard_match("host?", "host12"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("a*b", "acbx"));
    }
}
