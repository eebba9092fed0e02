//! Validation of `[[peer]]`: the SSH target (with `~/.ssh/config`), identities, known hosts, jump hosts, keepalive, backoff and forwards.
//!
//! Longer than most files on purpose: a peer's SSH target, identities, known hosts
//! and jump chain are resolved together from `~/.ssh/config`.

use super::*;

pub(super) fn validate_peer(
    c: &mut Checker<'_>,
    rp: &RawPeer,
    field: &str,
    env: &Env,
    ssh_config: &SshConfigFile,
) -> Option<PeerConfig> {
    let errors_before = c.errors.len();
    let name = rp.name.get_ref().clone();

    // user@host:port, or an alias that ~/.ssh/config resolves.
    let target = match parse_ssh_target(rp.ssh.get_ref()) {
        Ok((user, host, port)) => Some(resolve_target(user, host, port, ssh_config, env)),
        Err(msg) => {
            c.err(Some(rp.ssh.span()), format!("{field}.ssh"), msg);
            None
        }
    };
    // The jump hosts on the way, each with its own `~/.ssh/config` block.
    let jump_targets = match target.as_ref().and_then(|(_, r)| r.proxy.as_ref()) {
        None => Vec::new(),
        Some(proxy) => match jump_chain(proxy, ssh_config, env, 0) {
            Ok(hops) => hops,
            Err(msg) => {
                c.err(Some(rp.ssh.span()), format!("{field}.ssh"), msg);
                Vec::new()
            }
        },
    };

    // `identity` and `known_hosts`, when given, serve the jump hosts too (as
    // one key and one known_hosts file usually do); otherwise each server gets
    // what its own `Host` block says.
    let identities = match &rp.identity {
        Some(list) if list.is_empty() => {
            c.err(
                None,
                format!("{field}.identity"),
                "is empty; list at least one of \"agent\", \"keychain:NAME\" or a key file",
            );
            Some(Vec::new())
        }
        Some(list) => Some(
            list.iter()
                .enumerate()
                .filter_map(|(j, s)| match parse_identity(s.get_ref(), env) {
                    Ok(id) => Some(id),
                    Err(msg) => {
                        c.err(Some(s.span()), format!("{field}.identity[{j}]"), msg);
                        None
                    }
                })
                .collect(),
        ),
        None => None,
    };
    let known_hosts = match &rp.known_hosts {
        Some(RawPaths::One(p)) => Some(vec![env.expand(p)]),
        Some(RawPaths::Many(ps)) if !ps.is_empty() => {
            Some(ps.iter().map(|p| env.expand(p)).collect())
        }
        Some(RawPaths::Many(_)) => {
            c.err(
                None,
                format!("{field}.known_hosts"),
                "is an empty list; give at least one file",
            );
            Some(Vec::new())
        }
        None => None,
    };
    let server_of = |(target, resolved): (SshTarget, Resolved)| SshServer {
        identities: identities
            .clone()
            .unwrap_or_else(|| default_identities(&resolved, env, &name)),
        known_hosts: known_hosts
            .clone()
            .unwrap_or_else(|| default_known_hosts(&resolved, env)),
        global_known_hosts: global_known_hosts(&resolved),
        target,
    };
    let jumps: Vec<SshServer> = jump_targets.into_iter().map(server_of).collect();

    let keepalive = validate_keepalive(c, rp.keepalive.as_ref(), field);
    let backoff = validate_backoff(c, rp.backoff.as_ref(), field);
    let connect_timeout = c.duration(
        &rp.connect_timeout,
        format!("{field}.connect_timeout"),
        Duration::from_secs(10),
    );
    let idle = c.duration(&rp.idle, format!("{field}.idle"), Duration::from_secs(300));
    let on_demand = match rp.connect.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "always")) => None,
        Some((_, "on-demand")) => Some(idle),
        Some((s, other)) => {
            c.err(
                Some(s.span()),
                format!("{field}.connect"),
                format!("`{other}` is not \"always\" or \"on-demand\""),
            );
            None
        }
    };

    let mut forwards = Vec::new();
    for (j, f) in rp.forward.iter().enumerate() {
        if let Some(f) = validate_forward(
            c,
            f,
            ForwardKind::Local,
            &format!("{field}.forward[{j}]"),
            &name,
        ) {
            forwards.push(f);
        }
    }
    let mut remote_binds: HashMap<HostPort, usize> = HashMap::new();
    for (j, f) in rp.reverse.iter().enumerate() {
        let ffield = format!("{field}.reverse[{j}]");
        if let Some(f) = validate_forward(c, f, ForwardKind::Remote, &ffield, &name) {
            if let Some(prev) = remote_binds.insert(f.remote.clone(), j) {
                let span = rp.reverse[j].remote.span();
                c.err(
                    Some(span),
                    format!("{ffield}.remote"),
                    format!(
                        "{} is already forwarded by {field}.reverse[{prev}]",
                        f.remote
                    ),
                );
            }
            forwards.push(f);
        }
    }

    if c.errors.len() > errors_before {
        return None;
    }
    let server = server_of(target?);
    Some(PeerConfig {
        name,
        ssh: rp.ssh.get_ref().clone(),
        server,
        jumps,
        accept_new: rp.accept_new,
        keepalive,
        backoff,
        connect_timeout,
        on_demand,
        forwards,
    })
}

/// `user`, `host`, `port` as written, completed from `~/.ssh/config` as `ssh`
/// does (what is written wins).
pub(super) fn resolve_target(
    user: Option<String>,
    host: String,
    port: Option<u16>,
    ssh_config: &SshConfigFile,
    env: &Env,
) -> (SshTarget, Resolved) {
    let resolved = ssh_config.resolve(&host);
    let target = SshTarget {
        user: user
            .or(resolved.user.clone())
            .unwrap_or_else(|| env.user.clone()),
        host: resolved.hostname.clone().unwrap_or(host),
        port: port.or(resolved.port).unwrap_or(22),
        host_key_alias: resolved.host_key_alias.clone(),
    };
    (target, resolved)
}

/// The jump hosts a `ProxyJump` line leads through, in the order they are
/// reached, as `ssh` builds the chain: `ProxyJump a,b` reaches `b` through `a`;
/// the first host's own `ProxyJump` (from its `Host` block) comes before it,
/// the others' are overridden, as `ssh -J` on a command line overrides them.
/// A `ProxyCommand` is refused, naming where it is set.
pub(super) fn jump_chain(
    proxy: &Proxy,
    ssh_config: &SshConfigFile,
    env: &Env,
    depth: usize,
) -> Result<Vec<(SshTarget, Resolved)>, String> {
    const MAX_DEPTH: usize = 8;
    let set = format!("{} sets {} {}", proxy.origin, proxy.keyword, proxy.value);
    if proxy.keyword == "ProxyCommand" {
        return Err(format!(
            "{set}, and robbie-mesh does not run a command to reach a server (it would not silently connect directly instead): \
             use `ProxyJump` for a jump host, set `ProxyCommand none` for this host in a `Host` block above that line, \
             or give the peer an address it can reach directly"
        ));
    }
    if depth > MAX_DEPTH {
        return Err(format!(
            "{set}: following the jump hosts' own ProxyJump lines goes more than {MAX_DEPTH} deep (a loop?); \
             set `ProxyJump none` in the jump host's `Host` block"
        ));
    }
    let mut hops = Vec::new();
    for (i, spec) in proxy.value.split(',').enumerate() {
        let spec = spec.trim();
        let (user, host, port) = parse_ssh_target(spec.strip_prefix("ssh://").unwrap_or(spec))
            .map_err(|m| format!("{set}: {m}"))?;
        let (target, resolved) = resolve_target(user, host, port, ssh_config, env);
        if i == 0 {
            if let Some(own) = &resolved.proxy {
                hops.extend(jump_chain(own, ssh_config, env, depth + 1)?);
            }
        }
        hops.push((target, resolved));
    }
    Ok(hops)
}

/// With no `identity` list: OpenSSH's order, the agent first, then our keychain
/// entry, then the files `~/.ssh/config` names (or the default key files). With
/// `IdentitiesOnly yes`, the agent offers only the files' keys.
pub(super) fn default_identities(
    resolved: &Resolved,
    env: &Env,
    peer: &str,
) -> Vec<IdentitySource> {
    let files = if resolved.identity_files.is_empty() {
        ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .map(|f| env.home.join(".ssh").join(f))
            .collect()
    } else {
        resolved.identity_files.clone()
    };
    let only = resolved.identities_only.then(|| files.clone());
    let mut ids = vec![
        IdentitySource::Agent { socket: None, only },
        IdentitySource::Keychain {
            entry: peer.to_string(),
        },
    ];
    ids.extend(files.into_iter().map(|path| IdentitySource::File { path }));
    ids
}

/// With no `known_hosts`: `UserKnownHostsFile`, or `~/.ssh/known_hosts`.
pub(super) fn default_known_hosts(resolved: &Resolved, env: &Env) -> Vec<PathBuf> {
    if resolved.known_hosts_files.is_empty() {
        vec![env.home.join(".ssh").join("known_hosts")]
    } else {
        resolved.known_hosts_files.clone()
    }
}

/// `GlobalKnownHostsFile`, or the system's files.
pub(super) fn global_known_hosts(resolved: &Resolved) -> Vec<PathBuf> {
    resolved
        .global_known_hosts_files
        .clone()
        .unwrap_or_else(|| {
            vec![
                PathBuf::from("/etc/ssh/ssh_known_hosts"),
                PathBuf::from("/etc/ssh/ssh_known_hosts2"),
            ]
        })
}

pub(super) fn validate_keepalive(
    c: &mut Checker<'_>,
    k: Option<&RawKeepalive>,
    field: &str,
) -> Keepalive {
    let d = Keepalive::default();
    let Some(k) = k else { return d };
    let interval = c.duration(
        &k.interval,
        format!("{field}.keepalive.interval"),
        d.interval,
    );
    let count = match &k.count {
        Some(n) if !(1..=100).contains(n.get_ref()) => {
            c.err(
                Some(n.span()),
                format!("{field}.keepalive.count"),
                "must be between 1 and 100 (the session is declared dead after this many unanswered keepalives)",
            );
            d.count
        }
        Some(n) => *n.get_ref(),
        None => d.count,
    };
    Keepalive { interval, count }
}

pub(super) fn validate_backoff(
    c: &mut Checker<'_>,
    b: Option<&RawBackoff>,
    field: &str,
) -> Backoff {
    let d = Backoff::default();
    let Some(b) = b else { return d };
    let initial = c.duration(&b.initial, format!("{field}.backoff.initial"), d.initial);
    let max = c.duration(&b.max, format!("{field}.backoff.max"), d.max.max(initial));
    if max < initial {
        let span = b.max.as_ref().map(|m| m.span());
        c.err(
            span,
            format!("{field}.backoff.max"),
            "must not be shorter than backoff.initial",
        );
    }
    Backoff { initial, max }
}

pub(super) fn validate_forward(
    c: &mut Checker<'_>,
    f: &RawForward,
    kind: ForwardKind,
    field: &str,
    peer: &str,
) -> Option<ForwardConfig> {
    let before = c.errors.len();
    let local = match kind {
        ForwardKind::Local => {
            loopback_addr(c, &f.local, &format!("{field}.local")).map(|a| HostPort {
                host: a.ip().to_string(),
                port: a.port(),
            })
        }
        ForwardKind::Remote => host_port(c, &f.local, &format!("{field}.local")),
    };
    let remote = host_port(c, &f.remote, &format!("{field}.remote"));
    let name = match &f.name {
        Some(n) if valid_name(n.get_ref()) => Some(n.get_ref().clone()),
        Some(n) => {
            c.err(
                Some(n.span()),
                format!("{field}.name"),
                name_rule(n.get_ref()),
            );
            None
        }
        None => None,
    };
    if c.errors.len() > before {
        return None;
    }
    let (local, remote) = (local?, remote?);
    let name = name.unwrap_or_else(|| match kind {
        ForwardKind::Local => format!("{peer}-L{}", local.port),
        ForwardKind::Remote => format!("{peer}-R{}", remote.port),
    });
    Some(ForwardConfig {
        name,
        kind,
        local,
        remote,
    })
}

/// `[user@]host[:port]`; user and port are `None` when not written.
pub(super) fn parse_ssh_target(s: &str) -> Result<(Option<String>, String, Option<u16>), String> {
    let s = s.trim();
    if s.is_empty() || s.contains(char::is_whitespace) {
        return Err(format!(
            "`{s}` is not user@host[:port] or a ~/.ssh/config Host alias"
        ));
    }
    let (user, rest) = match s.rsplit_once('@') {
        Some((u, r)) if !u.is_empty() => (Some(u.to_string()), r),
        Some(_) => return Err(format!("`{s}` has an empty user name")),
        None => (None, s),
    };
    let (host, port) = if rest.starts_with('[') {
        let hp = parse_host_port(rest)?;
        (hp.host, Some(hp.port))
    } else if let Some((h, p)) = rest.split_once(':') {
        let port = p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("`{p}` in `{s}` is not a port number (1-65535)"))?;
        (h.to_string(), Some(port))
    } else {
        (rest.to_string(), None)
    };
    if host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    Ok((user, host, port))
}

pub(super) fn parse_identity(s: &str, env: &Env) -> Result<IdentitySource, String> {
    let s = s.trim();
    if s == "agent" {
        Ok(IdentitySource::Agent {
            socket: None,
            only: None,
        })
    } else if let Some(p) = s.strip_prefix("agent:") {
        Ok(IdentitySource::Agent {
            socket: Some(env.expand(p)),
            only: None,
        })
    } else if let Some(e) = s.strip_prefix("keychain:") {
        if e.is_empty() {
            Err("`keychain:` needs an entry name, e.g. \"keychain:aurora\"".to_string())
        } else {
            Ok(IdentitySource::Keychain {
                entry: e.to_string(),
            })
        }
    } else if let Some(name) = s.strip_prefix("credential:") {
        if name.is_empty() || name.contains('/') {
            Err("`credential:` needs the credential's name, as in the unit's `LoadCredentialEncrypted=NAME:FILE`, e.g. \"credential:aurora\"".to_string())
        } else {
            Ok(IdentitySource::Credential {
                name: name.to_string(),
            })
        }
    } else if s.is_empty() {
        Err(
            "is empty; write \"agent\", \"keychain:NAME\", \"credential:NAME\" or a key file path"
                .to_string(),
        )
    } else {
        Ok(IdentitySource::File {
            path: env.expand(s),
        })
    }
}
