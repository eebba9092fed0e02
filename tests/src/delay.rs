//! A link with a long round trip, for tests (this kernel has no `netem`): a TCP
//! proxy on a free loopback port that holds every chunk for `one_way` before
//! passing it on, in both directions, keeping order and never slowing the rate.
//! Its sockets ACK at once (`TCP_QUICKACK` after every read): a proxy whose kernel
//! delayed its ACKs would add 40 ms stalls of its own to a sender that runs Nagle's
//! algorithm (sshd does), which a real path would not.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub struct DelayProxy {
    pub addr: SocketAddr,
    /// While set, nothing from the client reaches the server (held, not lost:
    /// the link went quiet one way, as when a route drops mid-conversation).
    frozen: Arc<AtomicBool>,
    /// Connections numbered below this are severed: see [`DelayProxy::sever_existing`].
    severed_below: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `target`, each way delayed.
    pub async fn start(target: SocketAddr, one_way: Duration) -> DelayProxy {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let frozen = Arc::new(AtomicBool::new(false));
        let severed_below = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let (up_frozen, severed, count) = (frozen.clone(), severed_below.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let link = Link {
                    number: count.fetch_add(1, Ordering::SeqCst),
                    frozen: up_frozen.clone(),
                    severed_below: severed.clone(),
                };
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let (to_server, to_client) = tokio::join!(
                        relay(cr, sw, one_way, &link, true),
                        relay(sr, cw, one_way, &link, false)
                    );
                    // Neither end of a severed connection is told: both sockets stay
                    // open, silent, for as long as the proxy lives.
                    if link.severed() {
                        let _held = (to_server, to_client);
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        DelayProxy {
            addr,
            frozen,
            severed_below,
            accepted,
            task,
        }
    }

    /// Holds (or lets go of) everything the client sends.
    pub fn freeze_upstream(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }

    /// Every connection open now goes silent for good, both ways, and its end is
    /// never passed on: the server keeps a session whose client vanished without a
    /// word (a laptop that slept, a Wi-Fi address that changed), the client sees
    /// no answer. Connections made afterwards work as before.
    pub fn sever_existing(&self) {
        self.severed_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// One proxied connection's view of the proxy's switches.
struct Link {
    number: u64,
    frozen: Arc<AtomicBool>,
    severed_below: Arc<AtomicU64>,
}

impl Link {
    fn severed(&self) -> bool {
        self.number < self.severed_below.load(Ordering::SeqCst)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads `from` as fast as it comes and writes each chunk to `to` `delay` after it
/// arrived (held while the link is frozen, if it is the upstream way; dropped once
/// it is severed). Gives back `to` if the link was severed, unclosed.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    link: &Link,
    upstream: bool,
) -> Option<tokio::net::tcp::OwnedWriteHalf> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let r = from.read(&mut buf).await;
            let _ = socket2::SockRef::from(from.as_ref()).set_tcp_quickack(true);
            match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            while upstream && link.frozen.load(Ordering::SeqCst) && !link.severed() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if link.severed() {
                continue;
            }
            if to.write_all(&chunk).await.is_err() {
                return None;
            }
        }
        if link.severed() {
            return Some(to);
        }
        let _ = to.shutdown().await;
        None
    };
    tokio::join!(reader, writer).1
}
