//! A real OpenSSH `sshd` for tests: its own temp dir, host key, authorized_keys and
//! free port, started in the foreground (`-D -e`) and killed on drop. Readiness is
//! polled (the port answers with an SSH banner), never slept for.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::Netns;
use crate::{free_port, wait_for, DEADLINE};

pub const SSHD: &str = "/usr/sbin/sshd";

/// A key pair made by `ssh-keygen`.
pub struct KeyPair {
    pub private: PathBuf,
    pub public_line: String,
}

pub fn keygen(dir: &Path, name: &str) -> KeyPair {
    keygen_with(dir, name, "ed25519", "")
}

pub fn keygen_with(dir: &Path, name: &str, kind: &str, passphrase: &str) -> KeyPair {
    let private = dir.join(name);
    let _ = std::fs::remove_file(&private);
    let _ = std::fs::remove_file(private.with_extension("pub"));
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", passphrase, "-C", name, "-f"])
        .arg(&private)
        .status()
        .expect("ssh-keygen must be installed (openssh-client)");
    assert!(st.success(), "ssh-keygen failed");
    let public_line = std::fs::read_to_string(dir.join(format!("{name}.pub"))).expect("public key");
    KeyPair {
        private,
        public_line: public_line.trim().to_string(),
    }
}

pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub ip: IpAddr,
    pub port: u16,
    /// The network namespace it runs in (None: this one).
    netns: Option<String>,
    pub host_key: KeyPair,
    /// A client key in authorized_keys.
    pub client_key: KeyPair,
    child: Option<Child>,
    log: PathBuf,
    /// Debian's defaults for dead clients (no ClientAliveInterval): a session whose
    /// client vanished lives on until TCP gives up.
    stock: bool,
    /// Not reachable from the test's namespace: readiness is read from its log.
    hidden: bool,
    /// More sshd_config lines (see [`Sshd::configure`]).
    extra: String,
}

impl Sshd {
    /// On a free port of this machine's loopback.
    pub fn start() -> Sshd {
        Sshd::start_at(Ipv4Addr::LOCALHOST.into(), free_port(), None, false)
    }

    /// The same, with a stock sshd's handling of vanished clients (none).
    pub fn start_stock() -> Sshd {
        Sshd::start_at(Ipv4Addr::LOCALHOST.into(), free_port(), None, true)
    }

    /// As a node's own SSH server: port 22 of the node's address, in its namespace.
    pub fn start_in(ns: &Netns) -> Sshd {
        Sshd::start_at(ns.ip.into(), 22, Some(ns.name.clone()), false)
    }

    /// The same, with a stock sshd's handling of vanished clients (none).
    pub fn start_in_stock(ns: &Netns) -> Sshd {
        Sshd::start_at(ns.ip.into(), 22, Some(ns.name.clone()), true)
    }

    /// On a free port of a namespace's own loopback: reachable only from inside
    /// the namespace (a server behind a jump host), not from this one.
    /// In a namespace linked behind another one (`Netns::create_behind`):
    /// reachable from that one only, so its log says when it listens.
    pub fn start_behind(ns: &Netns) -> Sshd {
        Sshd::start_at_hidden(ns.ip.into(), 22, Some(ns.name.clone()), false, true)
    }

    pub fn start_in_loopback(ns: &Netns) -> Sshd {
        Sshd::start_at(
            Ipv4Addr::LOCALHOST.into(),
            free_port(),
            Some(ns.name.clone()),
            false,
        )
    }

    fn start_at(ip: IpAddr, port: u16, netns: Option<String>, stock: bool) -> Sshd {
        let hidden = netns.is_some() && ip.is_loopback();
        Sshd::start_at_hidden(ip, port, netns, stock, hidden)
    }

    fn start_at_hidden(
        ip: IpAddr,
        port: u16,
        netns: Option<String>,
        stock: bool,
        hidden: bool,
    ) -> Sshd {
        let dir = tempfile::tempdir().expect("tempdir");
        // sshd's privilege separation needs this directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let host_key = keygen(dir.path(), "host_ed25519");
        let client_key = keygen(dir.path(), "id_ed25519");
        std::fs::write(
            dir.path().join("authorized_keys"),
            format!("{}\n", client_key.public_line),
        )
        .expect("write");
        let mut s = Sshd {
            log: dir.path().join("sshd.log"),
            dir,
            ip,
            port,
            netns,
            host_key,
            client_key,
            child: None,
            stock,
            hidden,
            extra: String::new(),
        };
        s.write_config();
        s.spawn();
        s
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let cfg = format!(
            "Port {port}\nListenAddress {ip}\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nAllowTcpForwarding yes\nGatewayPorts no\n\
             {alive}MaxStartups 200:30:400\nMaxSessions 200\n\
             LogLevel VERBOSE\n{extra}",
            port = self.port,
            ip = self.ip,
            alive = if self.stock {
                ""
            } else {
                "ClientAliveInterval 1\nClientAliveCountMax 3\n"
            },
            extra = self.extra,
        );
        std::fs::write(self.dir.path().join("sshd_config"), cfg).expect("write sshd_config");
    }

    /// Authorizes another public key line.
    pub fn authorize(&self, public_line: &str) {
        let path = self.dir.path().join("authorized_keys");
        let mut keys = std::fs::read_to_string(&path).unwrap_or_default();
        keys.push_str(public_line);
        keys.push('\n');
        std::fs::write(path, keys).expect("write authorized_keys");
    }

    fn spawn(&mut self) {
        // A namespace's loopback (or one behind another) cannot be dialled
        // from here: its log says when.
        let hidden = self.hidden;
        let listening = format!("Server listening on {} port {}.", self.ip, self.port);
        let times =
            |log: &Path| std::fs::read_to_string(log).map_or(0, |l| l.matches(&listening).count());
        let before = times(&self.log);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, SSHD]);
                c
            }
            None => Command::new(SSHD),
        };
        let child = cmd
            .args(["-D", "-e", "-f"])
            .arg(self.dir.path().join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd must be installed (openssh-server); run `bash tests/setup.sh`");
        self.child = Some(child);
        let addr = self.addr();
        let log = self.log.clone();
        wait_for(
            DEADLINE,
            || {
                if hidden {
                    times(&log) > before
                } else {
                    banner(addr)
                }
            },
            || {
                format!(
                    "sshd on {addr} did not start; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            },
        );
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// The known_hosts line for this server as `ssh` writes it: `HOST ssh-ed25519 AAAA…`
    /// on port 22, `[HOST]:PORT …` on any other.
    /// This server's known_hosts line under another loopback port (a proxy in
    /// front of it: the address robbie-mesh or ssh dials).
    pub fn known_hosts_line_via(&self, port: u16) -> String {
        let line = self.known_hosts_line();
        let key = line.split_once(' ').map_or("", |(_, k)| k);
        format!("[127.0.0.1]:{port} {key}")
    }

    /// OpenSSH's own client to this server, the peer robbie-mesh is compared
    /// with: `ssh -N` in batch mode, strict host keys from `known_hosts`, this
    /// harness's client key, to `host:port`; `args` adds forwards and options.
    pub fn openssh(&self, host: &str, port: u16, known_hosts: &Path, args: &[String]) -> Command {
        let mut c = Command::new("ssh");
        c.args([
            "-N",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-i")
        .arg(&self.client_key.private)
        .args(["-p", &port.to_string()])
        .args(args)
        .arg(format!("{}@{host}", crate::whoami()));
        c
    }

    /// `ssh … true` to `host` on this server's port: no ~/.ssh/config, batch
    /// mode, this known_hosts file, key `identity`; `args` come first (the first
    /// value of an option wins; strict host-key checking unless they say
    /// otherwise). What OpenSSH's client does, to compare robbie-mesh with.
    pub fn openssh_true(
        &self,
        host: &str,
        known_hosts: &Path,
        identity: &Path,
        args: &[&str],
    ) -> std::process::Output {
        Command::new("ssh")
            .args(["-F", "none", "-o", "BatchMode=yes"])
            .args(args)
            .args(["-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .arg("-i")
            .arg(identity)
            .args(["-p", &self.port.to_string()])
            .arg(format!("{}@{host}", crate::whoami()))
            .arg("true")
            .output()
            .expect("ssh")
    }

    pub fn known_hosts_line(&self) -> String {
        let key: Vec<&str> = self
            .host_key
            .public_line
            .split_whitespace()
            .take(2)
            .collect();
        let host = if self.port == 22 {
            self.ip.to_string()
        } else {
            format!("[{}]:{}", self.ip, self.port)
        };
        format!("{host} {}", key.join(" "))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the listener and every session process (as if the machine died).
    pub fn kill(&mut self) {
        let sessions = self.session_pids();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in sessions {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
    }

    /// Starts again on the same port with the same keys.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Replaces the host key (as a reinstalled server would) and restarts.
    pub fn change_host_key(&mut self) {
        self.kill();
        self.host_key = keygen(self.dir.path(), "host_ed25519");
        self.spawn();
    }

    /// Adds sshd_config lines (e.g. `HostKeyAlgorithms ssh-rsa`) and restarts.
    pub fn configure(&mut self, lines: &str) {
        self.kill();
        self.extra.push_str(lines);
        self.extra.push('\n');
        self.write_config();
        self.spawn();
    }

    /// Replaces the host key with a new one of type `kind` (`rsa`, `ecdsa`,
    /// `ed25519`; the server then offers only that type) and restarts.
    pub fn use_host_key(&mut self, kind: &str) {
        self.kill();
        self.host_key = keygen_with(self.dir.path(), "host_ed25519", kind, "");
        self.spawn();
    }

    /// The per-connection sshd processes (children and grandchildren of the listener).
    pub fn session_pids(&self) -> Vec<u32> {
        let Some(root) = self.pid() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut frontier = vec![root];
        while let Some(p) = frontier.pop() {
            for c in children(p) {
                out.push(c);
                frontier.push(c);
            }
        }
        out
    }

    pub fn signal_sessions(&self, sig: Signal) -> usize {
        let pids = self.session_pids();
        for p in &pids {
            let _ = kill(Pid::from_raw(*p as i32), sig);
        }
        pids.len()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.signal_sessions(Signal::SIGCONT);
        self.kill();
    }
}

fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// True when `addr` answers with an SSH identification line.
fn banner(addr: SocketAddr) -> bool {
    let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).is_ok() && line.starts_with("SSH-")
}
