//! Tunnel benchmark: robbie-mesh against OpenSSH's `ssh -L/-R` (same sshd, same cipher)
//! and a direct connection, all measured in one run.
//!
//!     bash tests/bench.sh            # builds the release binary, then runs this
//!
//! Prints throughput (1 GiB up and down), connect-and-echo latency through -L and -R
//! (median and p90 of 200), and the RSS of the robbie-mesh service and of `ssh`, idle
//! and with 100 open connections, each with its ratio to OpenSSH.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_tests::servers::echo;
use mesh_tests::sshd::Sshd;
use mesh_tests::{free_port, trust, wait_for, whoami, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CIPHER: &str = "aes128-gcm@openssh.com";
const GIB: u64 = 1 << 30;
const ROUNDS: usize = 1000;
const TRANSFER_RUNS: usize = 5;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// CPU seconds (user + system) used so far.
    fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap_or_default();
        // Fields after the command name (which may contain spaces) start at ") ".
        let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        // utime and stime are fields 14 and 15 of stat; here at index 11 and 12.
        let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
        ticks as f64 / 100.0
    }

    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

/// Reads everything a client sends, then answers with the byte count (8 bytes).
async fn sink() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut n = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k as u64,
                    }
                }
                let _ = s.write_all(&n.to_be_bytes()).await;
            });
        }
    });
    addr
}

/// Sends the 8-byte count it is asked for, then closes.
async fn source() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut want = [0u8; 8];
                if s.read_exact(&mut want).await.is_err() {
                    return;
                }
                let mut left = u64::from_be_bytes(want);
                let chunk = vec![0x5au8; 256 * 1024];
                while left > 0 {
                    let k = left.min(chunk.len() as u64) as usize;
                    if s.write_all(&chunk[..k]).await.is_err() {
                        return;
                    }
                    left -= k as u64;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// MB/s sending `GIB` to the sink through `port`.
async fn upload(port: u16) -> f64 {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let chunk = vec![0xa5u8; 256 * 1024];
    let mut left = GIB;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..k]).await.expect("write");
        left -= k as u64;
    }
    s.shutdown().await.expect("shutdown");
    let mut n = [0u8; 8];
    s.read_exact(&mut n).await.expect("count");
    assert_eq!(u64::from_be_bytes(n), GIB, "every byte arrived");
    GIB as f64 / 1e6 / start.elapsed().as_secs_f64()
}

/// MB/s receiving `GIB` from the source through `port`.
async fn download(port: u16) -> f64 {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(&GIB.to_be_bytes()).await.expect("ask");
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf).await.expect("read") {
            0 => break,
            k => n += k as u64,
        }
    }
    assert_eq!(n, GIB, "every byte arrived");
    GIB as f64 / 1e6 / start.elapsed().as_secs_f64()
}

/// Connect, send 16 bytes, read them back, close.
async fn connect_echo_once(port: u16, i: usize) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let msg = [i as u8; 16];
    s.write_all(&msg).await.expect("write");
    let mut back = [0u8; 16];
    s.read_exact(&mut back).await.expect("echo");
    assert_eq!(back, msg);
    start.elapsed()
}

/// `ROUNDS` connect-and-echo rounds on each port, in blocks of `BLOCK` back-to-back
/// connections (the pattern that costs OpenSSH's -R a delayed ACK), the blocks of
/// the contenders interleaved so that noise on this machine hits them alike.
async fn connect_echo(ports: &[u16]) -> Vec<Vec<Duration>> {
    const BLOCK: usize = 20;
    let mut out = vec![Vec::with_capacity(ROUNDS); ports.len()];
    for b in 0..ROUNDS / BLOCK {
        for (k, port) in ports.iter().enumerate() {
            for j in 0..BLOCK {
                out[k].push(connect_echo_once(*port, b * BLOCK + j).await);
            }
        }
    }
    for v in &mut out {
        v.sort();
    }
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn robbie_mesh_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    let target = exe
        .parent()
        .and_then(|d| d.parent())
        .and_then(|d| d.parent())
        .expect("target dir");
    let bin = target.join("release").join("robbie-mesh");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --release -p robbie-mesh` (tests/bench.sh does)",
        bin.display()
    );
    bin
}

async fn hold_open(port: u16, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(b"x").await.expect("write");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("echo");
        held.push(s);
    }
    held
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sshd = Sshd::start();
    let known_hosts = trust(&sshd);
    let (sink, source, echo) = (sink().await, source().await, echo().await);
    let user = whoami();

    // robbie-mesh, as a separate process (its RSS is the whole service's).
    let (m_up, m_down, m_echo, m_rev, m_api) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = format!(
        "node = \"bench\"\n[api]\nlisten = \"127.0.0.1:{m_api}\"\n[[peer]]\nname = \"s\"\nssh = \"{user}@127.0.0.1:{port}\"\n\
         identity = [\"{key}\"]\nknown_hosts = \"{kh}\"\n\
         [[peer.forward]]\nlocal = \"127.0.0.1:{m_up}\"\nremote = \"{sink}\"\n\
         [[peer.forward]]\nlocal = \"127.0.0.1:{m_down}\"\nremote = \"{source}\"\n\
         [[peer.forward]]\nlocal = \"127.0.0.1:{m_echo}\"\nremote = \"{echo}\"\n\
         [[peer.reverse]]\nremote = \"127.0.0.1:{m_rev}\"\nlocal = \"{echo}\"\n[store]\npath = \"{store}\"\n",
        store = dir.path().join("store.db").display(),
        port = sshd.port,
        key = sshd.client_key.private.display(),
        kh = known_hosts.display(),
    );
    let cfg_path = dir.path().join("bench.toml");
    std::fs::write(&cfg_path, cfg).expect("config");
    let mesh = Proc(
        Command::new(robbie_mesh_bin())
            .args(["run", "--config"])
            .arg(&cfg_path)
            .env("ROBBIE_MESH_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .expect("robbie-mesh"),
    );

    // OpenSSH with the same forwards and the same cipher.
    let (s_up, s_down, s_echo, s_rev) = (free_port(), free_port(), free_port(), free_port());
    let ssh = Proc(
        Command::new("ssh")
            .args([
                "-N",
                "-T",
                "-c",
                CIPHER,
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ServerAliveInterval=5",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .arg("-i")
            .arg(&sshd.client_key.private)
            .args([
                "-L",
                &format!("127.0.0.1:{s_up}:{sink}"),
                "-L",
                &format!("127.0.0.1:{s_down}:{source}"),
            ])
            .args([
                "-L",
                &format!("127.0.0.1:{s_echo}:{echo}"),
                "-R",
                &format!("127.0.0.1:{s_rev}:{echo}"),
            ])
            .args(["-p", &sshd.port.to_string(), &format!("{user}@127.0.0.1")])
            .stderr(std::fs::File::create(dir.path().join("ssh.log")).expect("ssh.log"))
            .spawn()
            .expect("ssh"),
    );

    let up = |port: u16| {
        move || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                s.write_all(b"p").is_ok() && s.read_exact(&mut [0u8; 1]).is_ok()
            })
        }
    };
    for (name, port) in [
        ("robbie-mesh -L", m_echo),
        ("robbie-mesh -R", m_rev),
        ("ssh -L", s_echo),
        ("ssh -R", s_rev),
    ] {
        wait_for(DEADLINE, up(port), || {
            let log = std::fs::read_to_string(dir.path().join("ssh.log")).unwrap_or_default();
            format!(
                "{name} did not come up; ssh said: {log}\nsshd said: {}",
                sshd.log()
            )
        });
    }
    // Profiling aid: MESH_BENCH_PROFILE=down|up|connect repeats one robbie-mesh transfer
    // (attach `perf record -p <robbie-mesh pid>` meanwhile) and exits.
    if let Ok(what) = std::env::var("MESH_BENCH_PROFILE") {
        eprintln!("robbie-mesh pid {}", mesh.0.id());
        if what == "connect" {
            for (who, port) in [
                ("robbie-mesh", m_echo),
                ("ssh", s_echo),
                ("robbie-mesh", m_echo),
                ("ssh", s_echo),
            ] {
                let mut v = Vec::new();
                for i in 0..1000 {
                    v.push(connect_echo_once(port, i).await);
                }
                v.sort();
                eprintln!(
                    "{who} -L connect: median {} p90 {}",
                    ms(pct(&v, 0.5)),
                    ms(pct(&v, 0.9))
                );
            }
            return;
        }
        for (who, up_port, down_port) in [("robbie-mesh", m_up, m_down), ("ssh", s_up, s_down)] {
            for _ in 0..5 {
                let mbs = if what == "up" {
                    upload(up_port).await
                } else {
                    download(down_port).await
                };
                eprintln!("{who} {what}: {mbs:.0} MB/s");
            }
        }
        return;
    }
    let mesh_idle = mesh.rss_kib();
    let ssh_idle = ssh.rss_kib();

    println!(
        "robbie-mesh tunnel benchmark — sshd OpenSSH on loopback, cipher {CIPHER}; {ROUNDS} connect rounds; \
         1 GiB transfers, median of {TRANSFER_RUNS} interleaved runs"
    );
    println!();

    // Throughput: interleaved runs, the median of each (this machine is noisy),
    // and the CPU time each client process spent per GiB (steadier than MB/s).
    let mut runs: [Vec<f64>; 6] = Default::default();
    let mut cpu: [f64; 4] = [0.0; 4];
    for _ in 0..TRANSFER_RUNS {
        runs[0].push(upload(sink.port()).await);
        runs[1].push(download(source.port()).await);
        let c = mesh.cpu_secs();
        runs[2].push(upload(m_up).await);
        cpu[0] += mesh.cpu_secs() - c;
        let c = ssh.cpu_secs();
        runs[3].push(upload(s_up).await);
        cpu[1] += ssh.cpu_secs() - c;
        let c = mesh.cpu_secs();
        runs[4].push(download(m_down).await);
        cpu[2] += mesh.cpu_secs() - c;
        let c = ssh.cpu_secs();
        runs[5].push(download(s_down).await);
        cpu[3] += ssh.cpu_secs() - c;
    }
    let cpu = cpu.map(|c| c / TRANSFER_RUNS as f64);
    let [direct_up, direct_down, mesh_up, ssh_up, mesh_down, ssh_down] = runs.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    });
    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>10}",
        "throughput (MB/s)", "direct", "robbie-mesh", "ssh", "mesh/ssh"
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>12.0} {:>9.2}x",
        "1 GiB up (client -> server)",
        direct_up,
        mesh_up,
        ssh_up,
        mesh_up / ssh_up
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>12.0} {:>9.2}x",
        "1 GiB down (server -> client)",
        direct_down,
        mesh_down,
        ssh_down,
        mesh_down / ssh_down
    );
    println!(
        "{:<34} {:>12} {:>12.2} {:>12.2} {:>9.2}x",
        "CPU s per GiB up (lower is better)",
        "-",
        cpu[0],
        cpu[1],
        cpu[0] / cpu[1]
    );
    println!(
        "{:<34} {:>12} {:>12.2} {:>12.2} {:>9.2}x",
        "CPU s per GiB down",
        "-",
        cpu[2],
        cpu[3],
        cpu[2] / cpu[3]
    );
    println!();

    // Connection setup.
    let (mesh_cpu, ssh_cpu) = (mesh.cpu_secs(), ssh.cpu_secs());
    let mut lat = connect_echo(&[echo.port(), m_echo, s_echo, m_rev, s_rev])
        .await
        .into_iter();
    // Each client served 2 × ROUNDS connections (-L and -R).
    let per_conn = |c: f64| c * 1e6 / (2 * ROUNDS) as f64;
    let (mesh_cpu, ssh_cpu) = (
        per_conn(mesh.cpu_secs() - mesh_cpu),
        per_conn(ssh.cpu_secs() - ssh_cpu),
    );
    let mut next = || lat.next().unwrap_or_default();
    let (direct, mesh_l, ssh_l, mesh_r, ssh_r) = (next(), next(), next(), next(), next());
    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>10}",
        "connect + 16 B echo", "direct", "robbie-mesh", "ssh", "mesh/ssh"
    );
    for (label, p) in [("-L median", 0.5), ("-L p90", 0.9)] {
        let (d, m, s) = (pct(&direct, p), pct(&mesh_l, p), pct(&ssh_l, p));
        println!(
            "{:<34} {:>12} {:>12} {:>12} {:>9.2}x",
            label,
            ms(d),
            ms(m),
            ms(s),
            m.as_secs_f64() / s.as_secs_f64()
        );
    }
    for (label, p) in [("-R median", 0.5), ("-R p90", 0.9)] {
        let (m, s) = (pct(&mesh_r, p), pct(&ssh_r, p));
        println!(
            "{:<34} {:>12} {:>12} {:>12} {:>9.2}x",
            label,
            "-",
            ms(m),
            ms(s),
            m.as_secs_f64() / s.as_secs_f64()
        );
    }
    println!(
        "{:<34} {:>12} {:>12.0} {:>12.0} {:>9.2}x",
        "CPU us per connection",
        "-",
        mesh_cpu,
        ssh_cpu,
        mesh_cpu / ssh_cpu
    );
    println!();

    // Memory.
    let held_mesh = hold_open(m_echo, 100).await;
    let held_ssh = hold_open(s_echo, 100).await;
    let (mesh_busy, ssh_busy) = (mesh.rss_kib(), ssh.rss_kib());
    drop((held_mesh, held_ssh));
    println!(
        "{:<34} {:>12} {:>12} {:>10}",
        "RSS (MiB)", "robbie-mesh", "ssh", "mesh/ssh"
    );
    println!(
        "{:<34} {:>12.1} {:>12.1} {:>9.2}x",
        "idle, all tunnels up",
        mesh_idle as f64 / 1024.0,
        ssh_idle as f64 / 1024.0,
        mesh_idle as f64 / ssh_idle as f64
    );
    println!(
        "{:<34} {:>12.1} {:>12.1} {:>9.2}x",
        "100 open connections",
        mesh_busy as f64 / 1024.0,
        ssh_busy as f64 / 1024.0,
        mesh_busy as f64 / ssh_busy as f64
    );
    println!();
    println!("goals: throughput >= 1.0x ssh both ways; -L setup <= 1.0x ssh; -R setup <= 1 ms; idle RSS <= 15 MiB");
}
