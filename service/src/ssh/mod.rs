//! SSH sessions to peers, with russh: TCP connect, algorithm preferences, strict
//! host-key checking (`known_hosts`), authentication (`auth`), and the dispatch of
//! server-opened `forwarded-tcpip` channels to the `-R` forwards that asked for them.
//!
//! A session is a [`Session`]: the russh handle plus what the supervisor needs to
//! know about it. Keepalives and reconnects are the supervisor's job (`tunnel`).
//!
//! Longer than most files on purpose: one session from dial to authenticated, jump
//! hosts included, in the order it happens.

pub mod auth;
pub mod known_hosts;
mod socket;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::PublicKey;
use tokio_util::sync::CancellationToken;

use crate::config::{HostPort, PeerConfig, SshServer, SshTarget};
use known_hosts::{HostKeyVerdict, KnownHosts};

/// Why a session could not be set up. Each message says what to do next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SshError {
    #[error("cannot reach {target}: {reason}")]
    Unreachable { target: String, reason: String },
    #[error("no answer from {target} within {timeout:?} (handshake not completed)")]
    Timeout { target: String, timeout: Duration },
    #[error("host key changed for {name} (REMOTE HOST IDENTIFICATION HAS CHANGED): the server presented the {algo} key {fingerprint}, but {file}:{line} lists another {known} key for it; someone may be in the middle. If the server really was reinstalled, remove that line (ssh-keygen -f '{file}' -R '{name}') and connect again")]
    HostKeyChanged {
        name: String,
        algo: String,
        fingerprint: String,
        known: String,
        file: String,
        line: usize,
    },
    #[error(
        "host key for {name} is unknown ({fingerprint}) and accept_new cannot record it: {why}"
    )]
    HostKeyNotRecorded {
        name: String,
        fingerprint: String,
        why: String,
    },
    #[error("host key for {name} is revoked ({file}:{line})")]
    HostKeyRevoked {
        name: String,
        file: String,
        line: usize,
    },
    #[error("host key for {name} is unknown ({fingerprint}); add it to known_hosts (ssh-keyscan -p PORT HOST) or set accept_new = true for this peer")]
    HostKeyUnknown {
        name: String,
        fingerprint: String,
        /// The key the server offered: what `init` records once the user has
        /// confirmed its fingerprint.
        key: Box<PublicKey>,
    },
    #[error("cannot read known_hosts file {file}: {why}; no host key is trusted until it can be read (fix its permissions, or point known_hosts at a file)")]
    KnownHostsUnreadable { file: String, why: String },
    #[error("authentication as {user} failed; tried {tried}")]
    AuthFailed { user: String, tried: String },
    #[error("ssh protocol error: {0}")]
    Protocol(String),
    /// Something above went wrong at a jump host on the way to the peer.
    #[error("at the jump host {via}: {error}")]
    Jump { via: String, error: Box<SshError> },
}

impl SshError {
    /// A short machine-friendly reason, for states and events.
    pub fn kind(&self) -> &'static str {
        match self {
            SshError::Unreachable { .. } => "unreachable",
            SshError::Timeout { .. } => "timeout",
            SshError::HostKeyChanged { .. } => "host key changed",
            SshError::HostKeyRevoked { .. } => "host key revoked",
            SshError::HostKeyUnknown { .. } => "host key unknown",
            SshError::HostKeyNotRecorded { .. } => "host key not recorded",
            SshError::KnownHostsUnreadable { .. } => "known_hosts unreadable",
            SshError::AuthFailed { .. } => "auth failed",
            SshError::Protocol(_) => "protocol error",
            SshError::Jump { error, .. } => error.kind(),
        }
    }

    /// Host-key problems are alarms (possible man in the middle), not outages.
    pub fn is_host_key_alarm(&self) -> bool {
        if let SshError::Jump { error, .. } = self {
            return error.is_host_key_alarm();
        }
        matches!(
            self,
            SshError::HostKeyChanged { .. }
                | SshError::HostKeyRevoked { .. }
                | SshError::HostKeyUnknown { .. }
                | SshError::HostKeyNotRecorded { .. }
                | SshError::KnownHostsUnreadable { .. }
        )
    }
}

/// Where the server's `forwarded-tcpip` channels go: (bind address, port) as we asked
/// sshd to listen, to whoever asked for that `-R` forward. The SSH layer only
/// finds the route and hands the channel over; what to do with it (connect the
/// local target, count bytes) is the caller's (`crate::tunnel`).
#[derive(Default)]
pub struct ReverseRoutes {
    routes: Mutex<HashMap<(String, u32), Arc<ReverseRoute>>>,
}

/// Takes a channel the server opened for one `-R` forward, and the handle that
/// accepts or rejects it; called on the session's task, so it must not block.
pub type ReverseRoute =
    dyn Fn(russh::Channel<client::Msg>, client::ChannelOpenHandle) + Send + Sync;

impl ReverseRoutes {
    pub fn insert(&self, bind: &HostPort, route: Arc<ReverseRoute>) {
        self.lock()
            .insert((bind.host.clone(), u32::from(bind.port)), route);
    }

    pub fn remove(&self, bind: &HostPort) {
        self.lock()
            .remove(&(bind.host.clone(), u32::from(bind.port)));
    }

    fn find(&self, address: &str, port: u32) -> Option<Arc<ReverseRoute>> {
        let routes = self.lock();
        routes
            .get(&(address.to_string(), port))
            // sshd echoes the address we asked for; match on the port if it did not.
            .or_else(|| routes.iter().find(|((_, p), _)| *p == port).map(|(_, r)| r))
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), Arc<ReverseRoute>>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// russh callbacks for one session.
pub struct MeshHandler {
    known_hosts_name: String,
    /// The peer's known_hosts files, read once per connection attempt.
    known_hosts: KnownHosts,
    /// The server this session is with (the peer's, or a jump host).
    server: SshServer,
    /// The peer's name, for logs.
    peer: String,
    accept_new: bool,
    /// Why the host key was refused, read after the handshake fails.
    refusal: Arc<Mutex<Option<SshError>>>,
    reverse: Arc<ReverseRoutes>,
    /// Cancelled when russh drops the handler, i.e. when the session has ended.
    closed: CancellationToken,
    /// Why the session ended, when russh says (an error, or the server's
    /// disconnect message).
    ended: Arc<Mutex<Option<String>>>,
}

impl Drop for MeshHandler {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl client::Handler for MeshHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey {
            key: server_public_key,
            ..
        } = offered
        else {
            // We never advertise certificate host-key algorithms.
            return Ok(false);
        };
        let name = &self.known_hosts_name;
        let refusal = match self.known_hosts.check(name, server_public_key) {
            HostKeyVerdict::Trusted => return Ok(true),
            HostKeyVerdict::Changed { file, line, known } => SshError::HostKeyChanged {
                name: name.clone(),
                algo: server_public_key.algorithm().to_string(),
                fingerprint: fingerprint(server_public_key),
                known,
                file: file.display().to_string(),
                line,
            },
            HostKeyVerdict::Revoked { file, line } => SshError::HostKeyRevoked {
                name: name.clone(),
                file: file.display().to_string(),
                line,
            },
            HostKeyVerdict::Unknown if self.accept_new => {
                let Some(file) = self.server.known_hosts.first() else {
                    return Ok(false);
                };
                match known_hosts::append(file, name, server_public_key) {
                    Ok(()) => {
                        tracing::info!(
                            peer = %self.peer,
                            "accepted new host key {} for {name} (saved to {})",
                            fingerprint(server_public_key),
                            file.display()
                        );
                        return Ok(true);
                    }
                    Err(e) => SshError::HostKeyNotRecorded {
                        name: name.clone(),
                        fingerprint: fingerprint(server_public_key),
                        why: e.to_string(),
                    },
                }
            }
            HostKeyVerdict::Unknown => SshError::HostKeyUnknown {
                name: name.clone(),
                fingerprint: fingerprint(server_public_key),
                key: Box::new(server_public_key.clone()),
            },
            HostKeyVerdict::Unreadable { file, why } => SshError::KnownHostsUnreadable {
                file: file.display().to_string(),
                why,
            },
        };
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(refusal);
        Ok(false)
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let (why, result) = match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => (
                format!(
                    "the server disconnected ({:?}: {})",
                    info.reason_code, info.message
                ),
                Ok(()),
            ),
            client::DisconnectReason::Error(e) => (e.to_string(), Err(e)),
        };
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        result
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let Some(route) = self.reverse.find(connected_address, connected_port) else {
            tracing::warn!(peer = %self.peer, "server opened a channel for {connected_address}:{connected_port}, which no -R forward asked for");
            drop(reply); // rejects
            return Ok(());
        };
        route(channel, reply);
        Ok(())
    }
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
}

/// An authenticated session.
pub struct Session {
    pub handle: client::Handle<MeshHandler>,
    /// Cancelled once the session is over, whoever ended it (the server, the
    /// network, or the supervisor declaring it dead): every channel on it ends.
    pub closed: CancellationToken,
    /// Why it ended, if russh said (see [`Session::end_reason`]).
    ended: Arc<Mutex<Option<String>>>,
    /// What has arrived from the server: while it grows, the peer is alive (a
    /// keepalive answer may be waiting behind bulk data).
    pub arrivals: Arc<socket::Arrivals>,
    /// `user@host:port`, for messages.
    server: String,
    /// The jump host's session this one runs through: kept while this one lives.
    via: Option<Box<Session>>,
    /// How it logged in.
    pub login: auth::Login,
}

impl Session {
    /// Why the session ended on its own: the error russh ended it with (a
    /// protocol violation, a broken connection) or the server's disconnect
    /// message; "connection closed by the server" when nothing more is known.
    /// Through a jump host whose session ended first, that is the reason.
    pub fn end_reason(&self) -> String {
        let own = self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone();
        own.or_else(|| {
            let jump = self.via.as_deref().filter(|j| j.closed.is_cancelled())?;
            Some(format!(
                "the jump host {}: {}",
                jump.server,
                jump.end_reason()
            ))
        })
        .unwrap_or_else(|| "connection closed by the server".to_string())
    }
}

/// Connects, checks the host key and authenticates, each step within the peer's
/// connect timeout: to the peer's server directly, or through its jump hosts
/// (each one's host key checked and each one logged in to before anything is
/// sent through it, as `ssh -J` does).
pub async fn connect(peer: &PeerConfig, reverse: Arc<ReverseRoutes>) -> Result<Session, SshError> {
    // The reverse routes belong to the peer's own server: a jump host is asked
    // for no `-R` forward, and any channel it opens is refused.
    let routes_of = |server: &SshServer| {
        if std::ptr::eq(server, &peer.server) {
            reverse.clone()
        } else {
            Arc::new(ReverseRoutes::default())
        }
    };
    // Errors at a jump host say so: "authentication failed" alone would send
    // the user to the wrong server.
    let at = |server: &SshServer, e: SshError| {
        if std::ptr::eq(server, &peer.server) {
            e
        } else {
            SshError::Jump {
                via: server.target.to_string(),
                error: Box::new(e),
            }
        }
    };
    let mut servers = peer.jumps.iter().chain(std::iter::once(&peer.server));
    let first = servers.next().unwrap_or(&peer.server);
    let tcp = dial(&first.target, peer.connect_timeout)
        .await
        .map_err(|e| at(first, e))?;
    let arrivals = Arc::new(socket::Arrivals::default());
    let wire = socket::QuickAck::new(tcp, arrivals.clone());
    let mut session = handshake(peer, first, wire, arrivals, routes_of(first), None)
        .await
        .map_err(|e| at(first, e))?;
    for next in servers {
        let stream = through(&session, &next.target, peer.connect_timeout)
            .await
            .map_err(|e| at(next, e))?;
        let arrivals = Arc::new(socket::Arrivals::default());
        let wire = socket::Counted::new(stream, arrivals.clone());
        session = handshake(peer, next, wire, arrivals, routes_of(next), Some(session))
            .await
            .map_err(|e| at(next, e))?;
    }
    Ok(session)
}

/// A TCP connection to `target`.
async fn dial(target: &SshTarget, timeout: Duration) -> Result<tokio::net::TcpStream, SshError> {
    let addr = format!("{}:{}", target.host, target.port);
    let tcp = tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| SshError::Timeout {
        target: addr.clone(),
        timeout,
    })?
    .map_err(|e| SshError::Unreachable {
        target: addr.clone(),
        reason: e.to_string(),
    })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// A connection to `target` made by the jump host `jump` (a `direct-tcpip`
/// channel, as `ssh -W`).
async fn through(
    jump: &Session,
    target: &SshTarget,
    timeout: Duration,
) -> Result<russh::ChannelStream<client::Msg>, SshError> {
    let addr = format!("{}:{}", target.host, target.port);
    let open = jump.handle.channel_open_direct_tcpip(
        target.host.clone(),
        u32::from(target.port),
        "127.0.0.1",
        0,
    );
    match tokio::time::timeout(timeout, open).await {
        Ok(Ok(channel)) => Ok(channel.into_stream()),
        Ok(Err(e)) => Err(SshError::Unreachable {
            target: addr,
            reason: format!(
                "the jump host {} could not connect to it ({e})",
                jump.server
            ),
        }),
        Err(_) => Err(SshError::Timeout {
            target: addr,
            timeout,
        }),
    }
}

/// The SSH handshake with `server` over `stream`: host key checked against its
/// known_hosts, then authentication, within the peer's connect timeout.
async fn handshake<S>(
    peer: &PeerConfig,
    server: &SshServer,
    stream: S,
    arrivals: Arc<socket::Arrivals>,
    reverse: Arc<ReverseRoutes>,
    via: Option<Session>,
) -> Result<Session, SshError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let target = &server.target;
    let timeout = peer.connect_timeout;
    let addr = format!("{}:{}", target.host, target.port);
    let known_hosts_name = target.known_hosts_name();
    let files: Vec<_> = server
        .known_hosts
        .iter()
        .chain(&server.global_known_hosts)
        .cloned()
        .collect();
    let (known_hosts, warnings) = KnownHosts::load(&files);
    for w in warnings {
        tracing::warn!(peer = %peer.name, "known_hosts: {w}");
    }
    let config = Arc::new(client_config(
        &known_hosts.known_algorithms(&known_hosts_name),
    ));
    let refusal = Arc::new(Mutex::new(None));
    let closed = CancellationToken::new();
    let ended = Arc::new(Mutex::new(None));
    let handler = MeshHandler {
        ended: ended.clone(),
        known_hosts_name,
        known_hosts,
        server: server.clone(),
        peer: peer.name.clone(),
        accept_new: peer.accept_new,
        refusal: refusal.clone(),
        reverse,
        closed: closed.clone(),
    };
    let handshake = async {
        let mut handle = client::connect_stream(config, stream, handler)
            .await
            .map_err(|e| {
                refusal
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .unwrap_or_else(|| protocol_error(&addr, e))
            })?;
        let login = auth::authenticate(&mut handle, server, &peer.name).await?;
        Ok(Session {
            login,
            handle,
            closed,
            ended,
            arrivals,
            server: target.to_string(),
            via: via.map(Box::new),
        })
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| SshError::Timeout {
            target: addr.clone(),
            timeout,
        })?
}

fn protocol_error(addr: &str, e: russh::Error) -> SshError {
    match e {
        russh::Error::IO(io) => SshError::Unreachable {
            target: addr.to_string(),
            reason: io.to_string(),
        },
        russh::Error::Disconnect | russh::Error::HUP => SshError::Unreachable {
            target: addr.to_string(),
            reason: "connection closed by the server".into(),
        },
        russh::Error::NoCommonAlgo { kind, theirs, .. } => SshError::Protocol(format!(
            "the server at {addr} offers no {kind:?} algorithm robbie-mesh accepts (it offers {}){}",
            theirs.join(", "),
            if theirs.iter().all(|a| a == "ssh-rsa" || a == "ssh-dss") {
                "; ssh-rsa signs with SHA-1, which OpenSSH also refuses by default: give the server an ed25519 key (ssh-keygen -A) or enable rsa-sha2-256 in its HostKeyAlgorithms"
            } else {
                ""
            }
        )),
        other => SshError::Protocol(other.to_string()),
    }
}

/// russh settings: `nodelay`, our own keepalives (none from russh), AES-GCM first
/// when the CPU has AES instructions, host-key algorithms as OpenSSH's defaults
/// (no SHA-1 `ssh-rsa`), those the host is already known with listed first.
fn client_config(known_algorithms: &[russh::keys::Algorithm]) -> client::Config {
    let mut preferred = russh::Preferred::default();
    // OpenSSH's defaults: no `ssh-rsa` host-key signatures (SHA-1).
    preferred.key = Cow::Owned(
        preferred
            .key
            .iter()
            .filter(|a| !matches!(a, russh::keys::Algorithm::Rsa { hash: None }))
            .cloned()
            .collect(),
    );
    if cpu_has_aes() {
        preferred.cipher = Cow::Borrowed(&[
            russh::cipher::AES_128_GCM,
            russh::cipher::AES_256_GCM,
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_256_CTR,
            russh::cipher::AES_128_CTR,
        ]);
    }
    if !known_algorithms.is_empty() {
        let mut keys: Vec<_> = known_algorithms.to_vec();
        // An RSA key is offered under rsa-sha2-512/256 signatures, all named "rsa".
        if known_algorithms
            .iter()
            .any(|a| matches!(a, russh::keys::Algorithm::Rsa { .. }))
        {
            keys.retain(|a| !matches!(a, russh::keys::Algorithm::Rsa { .. }));
            keys.extend(
                preferred
                    .key
                    .iter()
                    .filter(|a| matches!(a, russh::keys::Algorithm::Rsa { .. }))
                    .cloned(),
            );
        }
        keys.extend(
            preferred
                .key
                .iter()
                .filter(|a| !keys.contains(a))
                .cloned()
                .collect::<Vec<_>>(),
        );
        preferred.key = Cow::Owned(keys);
    }
    let defaults = client::Config::default();
    client::Config {
        // With the window granted on consumption (third_party/russh), a server
        // can have at most `window_size` bytes queued per channel; one slot per
        // byte means the session never waits on a channel's queue. Slots are
        // allocated on use, not up front.
        channel_buffer_size: defaults.window_size as usize,
        // Data from the server comes in packets up to this size: twice OpenSSH's
        // 32 KiB halves the per-packet work on both ends of a download.
        maximum_packet_size: 65535,
        nodelay: true,
        keepalive_interval: None,
        inactivity_timeout: None,
        preferred,
        ..defaults
    }
}

fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}
