//! The checks of each peer, in the order a connection goes — the name, TCP,
//! the host key, the login, then each forward over that one session — and the
//! other nodes' clocks, through their APIs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::local::Running;
use super::{Finding, Setup};
use crate::api::wire::TunnelPhase;
use crate::config::{ForwardKind, PeerConfig};
use crate::ssh::{self, SshError};

/// How much two clocks may differ: sync's last-writer-wins orders edits of
/// one row made on two nodes by their clocks.
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(60);

pub async fn peer(setup: &Setup, peer: &PeerConfig, running: Option<&Running>) -> Vec<Finding> {
    let name = |what: &str| format!("peer {}: {what}", peer.name);
    let mut out = Vec::new();
    let first = peer.jumps.first().unwrap_or(&peer.server);
    let target = &first.target;
    let via = if peer.jumps.is_empty() {
        String::new()
    } else {
        format!(" (the jump host {target})")
    };

    // The name.
    let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((
        target.host.as_str(),
        target.port,
    ))
    .await
    {
        Ok(a) => a.collect(),
        Err(e) => {
            out.push(Finding::fail(
                    name("name"),
                    format!("{}{via} does not resolve: {e}", target.host),
                    format!(
                        "check the host name in `ssh = \"{}\"` (or its HostName in ~/.ssh/config), and this machine's network",
                        peer.ssh
                    ),
                ));
            return out;
        }
    };
    let Some(addr) = addrs.first().copied() else {
        out.push(Finding::fail(
            name("name"),
            format!("{}{via} resolves to no address", target.host),
            "check its DNS record",
        ));
        return out;
    };
    out.push(Finding::pass(
        name("name"),
        format!("{}{via} is {}", target.host, addr.ip()),
    ));

    // TCP.
    match tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => out.push(Finding::pass(
            name("TCP"),
            format!("{addr} accepts connections"),
        )),
        Ok(Err(e)) => {
            out.push(Finding::fail(
                name("TCP"),
                format!("{addr}: {e}"),
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    format!(
                        "nothing listens there: is sshd running on {} and on port {}?",
                        target.host, target.port
                    )
                } else {
                    "check the address and the network on the way".to_string()
                },
            ));
            return out;
        }
        Err(_) => {
            out.push(Finding::fail(
                name("TCP"),
                format!("{addr}: no answer within 3 s"),
                "the host is down or a firewall drops the packets: check it is up and that its SSH port is open to this machine",
            ));
            return out;
        }
    }

    // The host key and the login: one real session, as the service makes it.
    let mut p = peer.clone();
    p.connect_timeout = p.connect_timeout.min(Duration::from_secs(5));
    let session = match ssh::connect(&p, Arc::new(ssh::ReverseRoutes::default())).await {
        Ok(s) => s,
        Err(e) => {
            let inner = match &e {
                SshError::Jump { error, .. } => error.as_ref(),
                other => other,
            };
            match inner {
                SshError::HostKeyUnknown { fingerprint, .. } => out.push(Finding::fail(
                    name("host key"),
                    format!("unknown: the server offers {fingerprint}, and no known_hosts file lists {}", target.known_hosts_name()),
                    format!(
                        "compare {fingerprint} with the server's own (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on it), then connect once with `{}` and answer yes",
                        ssh_command(peer)
                    ),
                )),
                SshError::HostKeyChanged { file, name: host, .. } => out.push(Finding::fail(
                    name("host key"),
                    e.to_string(),
                    format!("only if the server was reinstalled: `ssh-keygen -f '{file}' -R '{host}'`, then connect once with `{}`; otherwise do not connect", ssh_command(peer)),
                )),
                k if k.is_host_key_alarm() => out.push(Finding::fail(
                    name("host key"),
                    e.to_string(),
                    "fix the known_hosts entry it names",
                )),
                SshError::AuthFailed { user, tried } => {
                    out.push(Finding::pass(name("host key"), "known and matching"));
                    out.push(Finding::fail(
                        name("login"),
                        format!("as {user}: refused; tried {tried}"),
                        format!(
                            "put this machine's public key in {user}'s ~/.ssh/authorized_keys on {}: `robbie-mesh keys generate {}` prints the line (or `{}`)",
                            peer.name,
                            peer.name,
                            ssh_command(peer).replacen("ssh", "ssh-copy-id", 1)
                        ),
                    ));
                }
                _ => out.push(Finding::fail(
                    name("SSH"),
                    e.to_string(),
                    "see the message: sshd may be overloaded, or not an SSH server",
                )),
            }
            return out;
        }
    };
    out.push(Finding::pass(name("host key"), "known and matching"));
    let login = &session.login;
    out.push(Finding::pass(
        name("login"),
        format!(
            "as {} with {}{}",
            login.user,
            login.with,
            if login.before.is_empty() {
                String::new()
            } else {
                format!(" (first tried: {})", login.before.join(", "))
            }
        ),
    ));

    // Each forward, over that session.
    for f in &peer.forwards {
        let check = name(&format!("{} {}", f.kind.flag(), f.name));
        match f.kind {
            ForwardKind::Local => {
                let open = session.handle.channel_open_direct_tcpip(
                    f.remote.host.clone(),
                    u32::from(f.remote.port),
                    "127.0.0.1",
                    0,
                );
                match tokio::time::timeout(Duration::from_secs(3), open).await {
                    Ok(Ok(ch)) => {
                        let _ = ch.close().await;
                        out.push(Finding::pass(check, format!("{} answers on {}", f.remote, peer.name)));
                    }
                    Ok(Err(e)) => out.push(Finding::fail(
                        check,
                        format!("nothing accepts {} on {} (its sshd could not connect: {e})", f.remote, peer.name),
                        format!(
                            "start what should listen on {} at {}{}, or correct the forward's `remote`",
                            f.remote,
                            peer.name,
                            what_belongs(setup, &f.name)
                        ),
                    )),
                    Err(_) => out.push(Finding::fail(
                        check,
                        format!("{} on {}: no answer within 3 s", f.remote, peer.name),
                        "something there accepts but hangs: look at it on that machine",
                    )),
                }
            }
            ForwardKind::Remote => {
                let state = running.and_then(|s| s.tunnels.iter().find(|t| t.name == f.name));
                match state {
                    Some(t) if t.state == TunnelPhase::Up => out.push(Finding::pass(
                        check,
                        format!("accepted: {} listens on {} for it", peer.name, f.remote),
                    )),
                    Some(t) => out.push(Finding::fail(
                        check,
                        format!(
                            "{:?}: {}",
                            t.state,
                            t.reason.as_deref().unwrap_or("no reason given")
                        )
                        .to_lowercase(),
                        "see the reason; `robbie-mesh reconnect` tries again at once",
                    )),
                    None => {
                        // The service does not run: ask sshd ourselves, then let go.
                        match session
                            .handle
                            .tcpip_forward(f.remote.host.clone(), u32::from(f.remote.port))
                            .await
                        {
                            Ok(_) => {
                                let _ = session
                                    .handle
                                    .cancel_tcpip_forward(f.remote.host.clone(), u32::from(f.remote.port))
                                    .await;
                                out.push(Finding::pass(
                                    check,
                                    format!("{} would listen on {} for it", peer.name, f.remote),
                                ))
                            }
                            Err(e) => out.push(Finding::fail(
                                check,
                                format!("{} refuses to listen on {}: {e}", peer.name, f.remote),
                                format!(
                                    "the port is taken on {} (an old session of this node? `ss -ltnp` there shows it) or its sshd forbids it (AllowTcpForwarding, PermitListen)",
                                    peer.name
                                ),
                            )),
                        }
                    }
                }
            }
        }
    }
    let _ = session
        .handle
        .disconnect(russh::Disconnect::ByApplication, "doctor is done", "en")
        .await;
    out
}

/// The OpenSSH command that reaches the peer: its alias as written, or
/// `ssh [-p PORT] user@host`.
fn ssh_command(peer: &PeerConfig) -> String {
    let t = &peer.server.target;
    if !peer.ssh.contains('@') && !peer.ssh.contains(':') {
        return format!("ssh {}", peer.ssh);
    }
    if t.port == 22 {
        format!("ssh {}@{}", t.user, t.host)
    } else {
        format!("ssh -p {} {}@{}", t.port, t.user, t.host)
    }
}

/// ": the own ollama of aurora (OLLAMA_HOST=…)" for a forward a candidate uses.
fn what_belongs(setup: &Setup, tunnel: &str) -> String {
    for s in &setup.config.services {
        for c in &s.candidates {
            if c.tunnel.as_deref() == Some(tunnel) {
                return format!(
                    " (its own {} for the {} endpoint here)",
                    s.kind.as_str(),
                    s.name
                );
            }
        }
    }
    if setup
        .config
        .nodes
        .iter()
        .any(|c| c.tunnel.as_deref() == Some(tunnel))
    {
        return " (its robbie-mesh API)".to_string();
    }
    String::new()
}

/// Each other node's clock against this one's, through its API.
pub async fn clocks(setup: &Setup, running: Option<&Running>) -> Vec<Finding> {
    let mut out = Vec::new();
    if setup.config.nodes.is_empty() {
        return out;
    }
    let checks = setup.config.nodes.iter().map(|n| async move {
        let check = format!("clock {}", n.node);
        let client = crate::client::Client::new(&n.address, Err(String::new()))
            .with_timeout(Duration::from_secs(3));
        let before = SystemTime::now();
        let health = client.health().await;
        let after = SystemTime::now();
        let health = match health {
            Ok(h) => h,
            Err(crate::client::ClientError::NotRunning { .. }) => {
                return Finding::skip(
                    check,
                    format!(
                        "its API does not answer at {}{}",
                        n.address,
                        if running.is_none() && n.tunnel.is_some() {
                            " (the tunnel to it is the service's: start the service)"
                        } else {
                            ""
                        }
                    ),
                )
            }
            // Something answers there, but not as a robbie-mesh API does.
            Err(e) => {
                return Finding::fail(
                    check,
                    format!("{}'s API at {}: {e}", n.node, n.address),
                    format!("check that `nodes` points at {}'s robbie-mesh API (its port 8007 through a tunnel)", n.node),
                )
            }
        };
        let Some(theirs) = health.time else {
            return Finding::skip(check, format!("{} runs a robbie-mesh that does not say its time ({})", n.node, health.version));
        };
        // Our clock halfway through the round trip.
        let rtt = after.duration_since(before).unwrap_or_default();
        let ours = before + rtt / 2;
        let (ahead, by) = match theirs.duration_since(ours) {
            Ok(d) => (true, d),
            Err(e) => (false, e.duration()),
        };
        let said = format!(
            "{}'s clock is {} {} this one's",
            n.node,
            // Seconds are enough past ten of them.
            humantime::format_duration(if by >= Duration::from_secs(10) {
                Duration::from_secs(by.as_secs_f64().round() as u64)
            } else {
                Duration::from_millis(by.as_millis() as u64)
            }),
            if ahead { "ahead of" } else { "behind" }
        );
        if by > CLOCK_TOLERANCE {
            Finding::fail(
                check,
                format!(
                    "{said}: sync's last-writer-wins trusts clocks within {}s, so an edit made there can lose to an older one or win over a newer one",
                    CLOCK_TOLERANCE.as_secs()
                ),
                format!("turn on time sync on {} and this machine (`timedatectl set-ntp true`; macOS: Date & Time, set automatically)", n.node),
            )
        } else {
            Finding::pass(check, format!("{said} (within {}s)", CLOCK_TOLERANCE.as_secs()))
        }
    });
    out.extend(futures_util::future::join_all(checks).await);
    out
}
