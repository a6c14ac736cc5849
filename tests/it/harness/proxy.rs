//! A TCP fault proxy: sits between tiercache and Redis (or the origin) on a loopback port and
//! does to the bytes what a failing network would. Modes, switched at any time:
//! - `Pass`: bytes flow both ways;
//! - `Latency(d)`: each chunk is delivered `d` after it arrived, in order (a slow link, not a
//!   slow peer: the next chunk is read while one waits);
//! - `Blackhole`: connections are accepted and bytes are read, but nothing is delivered in
//!   either direction until the mode changes — a partition, the case a reset-based test misses.
//!   Held bytes are delivered at heal, as TCP would once a partition ends;
//! - `Reset`: every open connection is closed with RST and new ones are reset on accept.
//!
//! `heal` is `Pass`. Stopped (listener and every connection) when dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Latency(Duration),
    Blackhole,
    Reset,
}

pub struct FaultProxy {
    pub port: u16,
    mode: watch::Sender<Fault>,
    accepted: Arc<AtomicU64>,
    server: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `127.0.0.1:upstream_port`, in `Pass`.
    pub async fn start(upstream_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fault proxy");
        let port = listener.local_addr().expect("local addr").port();
        let (mode, _) = watch::channel(Fault::Pass);
        let accepted = Arc::new(AtomicU64::new(0));
        let server = tokio::spawn(accept_loop(listener, upstream_port, mode.clone(), accepted.clone()));
        FaultProxy { port, mode, accepted, server }
    }

    pub fn set(&self, fault: Fault) {
        self.mode.send_replace(fault);
    }

    pub fn heal(&self) {
        self.set(Fault::Pass);
    }

    pub fn mode(&self) -> Fault {
        *self.mode.borrow()
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// A `redis://` URL through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// An `origin.url` template through the proxy, for a [`super::TestOrigin`] behind it.
    pub fn origin_url(&self) -> String {
        format!("http://127.0.0.1:{}/items/{{key}}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.server.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream_port: u16, mode: watch::Sender<Fault>, accepted: Arc<AtomicU64>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = listener.accept() => {
                let Ok((client, _)) = incoming else { continue };
                accepted.fetch_add(1, Ordering::Relaxed);
                connections.spawn(connection(client, upstream_port, mode.subscribe()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One proxied connection: two pumps until both sides close or the mode turns to `Reset`.
async fn connection(client: TcpStream, upstream_port: u16, mode: watch::Receiver<Fault>) {
    // During a blackhole the connection is accepted (above) and upstream is reached only after
    // it ends, so a connect attempt hangs the way it would behind a partition.
    let mut waiting = mode.clone();
    let fault = waiting.wait_for(|fault| *fault != Fault::Blackhole).await.map(|fault| *fault);
    if !matches!(fault, Ok(Fault::Pass | Fault::Latency(_))) {
        reset(&client);
        return;
    }
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
        reset(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::join!(pump(client_read, upstream_write, mode.clone()), pump(upstream_read, client_write, mode));
}

/// Copies `from` to `to`: the reader stamps each chunk with its arrival and keeps reading, the
/// writer delivers each chunk when the mode allows. Returns when the source closes (after
/// passing the close on) or the mode turns to `Reset` (after arming RST on both sockets; a
/// socket closes when both pumps holding its halves have returned).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mode: watch::Receiver<Fault>) {
    let (chunks, mut queue) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async {
        let chunks = chunks;
        let mut buffer = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buffer).await {
            if chunks.send((Instant::now(), buffer[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let mut writer_mode = mode.clone();
    let writer = async {
        while let Some((arrived, chunk)) = queue.recv().await {
            loop {
                let fault = *writer_mode.borrow_and_update();
                match fault {
                    Fault::Pass => break,
                    Fault::Latency(delay) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(arrived + delay) => break,
                            _ = writer_mode.changed() => {}
                        }
                    }
                    Fault::Blackhole | Fault::Reset => {
                        if writer_mode.changed().await.is_err() {
                            return;
                        }
                    }
                }
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let mut reset_watch = mode;
    let was_reset = tokio::select! {
        _ = async { tokio::join!(reader, writer) } => false,
        _ = reset_watch.wait_for(|fault| *fault == Fault::Reset) => true,
    };
    if was_reset {
        reset(from.as_ref());
        reset(to.as_ref());
        // Dropping a write half sends FIN first; `forget` leaves the close to the socket's drop.
        to.forget();
    }
}

/// Arms a close with RST instead of FIN (SO_LINGER 0); the RST goes when the socket is dropped.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}
