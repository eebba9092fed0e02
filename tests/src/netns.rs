//! A machine of the mesh in its own network namespace (`ip netns`, needs root): a
//! veth pair to this namespace, its own loopback (so its services listen on the
//! usual ports, as on a real node) and the address of its `eth0` as its host name.
//! `cut()` downs the link (the node vanishes without a FIN or RST, as a laptop lid
//! or a lost route would), `heal()` brings it back. Every process started in it
//! and the namespace itself go away on drop.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::DEADLINE;

pub struct Netns {
    pub name: String,
    /// This namespace's end of the veth pair.
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    /// The node's address (its `eth0`), reachable from here while the link is up.
    pub ip: Ipv4Addr,
}

impl Netns {
    /// A fresh namespace, linked to this one by a /30.
    pub fn create(label: &str) -> Netns {
        Netns::create_in(label, None)
    }

    /// A fresh namespace linked to `parent` (not to this one): a machine only
    /// `parent` can reach, as a server on a network of its own. `host_if` and
    /// `host_ip` are then in `parent`.
    pub fn create_behind(parent: &Netns, label: &str) -> Netns {
        Netns::create_in(label, Some(&parent.name))
    }

    fn create_in(label: &str, parent: Option<&str>) -> Netns {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the multi-node tests put each node in its own network namespace, which needs root (CI runs as root)"
        );
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("rm-{pid}-{n}-{label}");
        let host_if = format!("rm{}x{n}", pid % 100_000);
        // 10.213.<n>.<4k+1, 4k+2>: one /30 per namespace of this process.
        let base = ((pid % 63) * 4) as u8;
        let host_ip = Ipv4Addr::new(10, 213, n as u8, base + 1);
        let ip = Ipv4Addr::new(10, 213, n as u8, base + 2);
        let ns = Netns {
            name,
            host_if,
            host_ip,
            ip,
        };
        ip_cmd(&["netns", "add", &ns.name]);
        // The host end's commands run in `parent` when there is one.
        let host = |args: &[&str]| match parent {
            Some(p) => {
                let mut all = vec!["-n", p];
                all.extend_from_slice(args);
                ip_cmd(&all);
            }
            None => ip_cmd(args),
        };
        host(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        host(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        host(&["link", "set", &ns.host_if, "up"]);
        ip_cmd(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/30", ns.ip),
            "dev",
            "eth0",
        ]);
        ip_cmd(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        ip_cmd(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// The node's link goes down: packets to and from it are lost from now on. The
    /// node's end is downed, so this end keeps its route (with no carrier) and a new
    /// connection times out as to a machine that is gone, rather than leaving by the
    /// default route.
    pub fn cut(&self) {
        ip_cmd(&["-n", &self.name, "link", "set", "eth0", "down"]);
    }

    pub fn heal(&self) {
        ip_cmd(&["-n", &self.name, "link", "set", "eth0", "up"]);
    }

    /// Starts `program` in the namespace and waits for its first stdout line to
    /// start with `ready` (it prints it once it serves).
    pub fn spawn_ready(&self, program: &Path, args: &[&str], ready: &str) -> Proc {
        let mut child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} in {}: {e}", program.display(), self.name));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(DEADLINE).unwrap_or_default();
        assert!(
            line.starts_with(ready),
            "{} in {} did not print {ready:?} (it printed {line:?})",
            program.display(),
            self.name
        );
        Proc(child)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs in it, then the namespace (which takes the veth pair along).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A process in a namespace, killed on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ip_cmd(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("`ip` must be installed (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Polls until `addr` accepts a TCP connection.
pub fn wait_listening(addr: std::net::SocketAddr, what: &str) {
    crate::wait_for(
        DEADLINE,
        || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
        || format!("{what} on {addr} did not start"),
    );
}
