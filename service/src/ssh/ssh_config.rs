//! A reader for the OpenSSH client config (`~/.ssh/config`), enough to resolve a
//! Host alias the way `ssh` does: `Host` blocks with wildcards and negation, the first
//! value obtained wins, `IdentityFile` accumulates, `Include` is followed, and the
//! `%h %d %u %r %p %%` tokens are expanded. `Match` blocks other than `Match all` are
//! skipped: robbie-mesh cannot evaluate `exec` or `canonical` conditions.

use std::path::{Path, PathBuf};

/// The values `ssh` would use for one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_files: Vec<PathBuf>,
    pub known_hosts_files: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
enum Condition {
    Always,
    Never,
    Hosts(Vec<String>),
}

#[derive(Debug, Clone)]
struct Directive {
    when: Condition,
    key: String,
    args: Vec<String>,
}

/// A parsed config (with its includes), ready to resolve hosts.
#[derive(Debug, Clone, Default)]
pub struct SshConfigFile {
    directives: Vec<Directive>,
    home: PathBuf,
}

impl SshConfigFile {
    /// Reads `path`; a missing or unreadable file is an empty config, as for `ssh`.
    pub fn load(path: &Path, home: &Path) -> SshConfigFile {
        let mut cfg = SshConfigFile {
            directives: Vec::new(),
            home: home.to_path_buf(),
        };
        cfg.read_file(path, 0);
        cfg
    }

    pub fn parse(text: &str, home: &Path) -> SshConfigFile {
        let mut cfg = SshConfigFile {
            directives: Vec::new(),
            home: home.to_path_buf(),
        };
        cfg.read_text(text, 0);
        cfg
    }

    fn read_file(&mut self, path: &Path, depth: usize) {
        if let Ok(text) = std::fs::read_to_string(path) {
            self.read_text(&text, depth);
        }
    }

    fn read_text(&mut self, text: &str, depth: usize) {
        let mut when = Condition::Always;
        for line in text.lines() {
            let Some((key, args)) = split_line(line) else {
                continue;
            };
            match key.as_str() {
                "host" => when = Condition::Hosts(args),
                "match" => {
                    let all = args.len() == 1 && args[0].eq_ignore_ascii_case("all");
                    when = if all {
                        Condition::Always
                    } else {
                        Condition::Never
                    };
                }
                "include" if depth < 16 => {
                    // Includes inherit the enclosing condition, as in ssh_config(5).
                    for pattern in &args {
                        for path in self.expand_include(pattern) {
                            let before = self.directives.len();
                            self.read_file(&path, depth + 1);
                            for d in &mut self.directives[before..] {
                                if matches!(d.when, Condition::Always) {
                                    d.when = when.clone();
                                }
                            }
                        }
                    }
                }
                _ => self.directives.push(Directive {
                    when: when.clone(),
                    key,
                    args,
                }),
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
        for d in &self.directives {
            let applies = match &d.when {
                Condition::Always => true,
                Condition::Never => false,
                Condition::Hosts(patterns) => host_matches(patterns, host),
            };
            let Some(first) = d.args.first().filter(|_| applies) else {
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
                _ => {}
            }
        }
        let tokens = Tokens {
            home: self.home.display().to_string(),
            host: r.hostname.clone().unwrap_or_else(|| host.to_string()),
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
        r
    }
}

struct Tokens {
    home: String,
    host: String,
    user: Option<String>,
    port: u16,
}

impl Tokens {
    fn path(&self, raw: &str, home: &Path) -> PathBuf {
        let local_user = std::env::var("USER").unwrap_or_default();
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
                Some('u') => out.push_str(&local_user),
                Some('r') => out.push_str(self.user.as_deref().unwrap_or(&local_user)),
                Some('p') => out.push_str(&self.port.to_string()),
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
fn host_matches(patterns: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let mut matched = false;
    for p in patterns.iter().flat_map(|p| p.split(',')) {
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
    fn wildcards() {
        assert!(wildcard_match("*.example.com", "a.example.com"));
        assert!(wildcard_match("host?", "host1"));
        assert!(!wildcard_match("host?", "host12"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("a*b", "acbx"));
    }
}
