//! Sockets: UDP and TCP listeners feeding the [`Handler`], and the server's lifecycle.
//!
//! Each UDP address gets one socket per worker thread (SO_REUSEPORT), each drained by its own
//! task that answers from memory without spawning; only upstream lookups become tasks. TCP
//! connections are limited in number per client and in total, and time out when idle.

mod handler;
mod inflight;
mod udp;
mod xdp;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken as CancelToken;

pub use handler::{Handler, Outcome, Received, Transport};
pub use xdp::XdpError;

/// TCP connections served at once, in total.
pub const MAX_TCP_CONNECTIONS: usize = 512;
/// TCP connections one client address may hold.
pub const MAX_TCP_PER_CLIENT: usize = 16;
/// A TCP connection with no complete query for this long is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum BindError {
    /// The address could not be bound (in use, no permission, not local).
    #[error("cannot listen on {addr} ({proto}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// Bound sockets, ready to serve.
pub struct Listeners {
    udp: Vec<Arc<UdpSocket>>,
    tcp: Vec<TcpListener>,
    /// The addresses actually bound (port 0 resolved).
    pub addrs: Vec<SocketAddr>,
    xdp: Option<xdp::FastPath>,
}

impl Listeners {
    /// Takes UDP queries to the listen port on `interface` through the XDP fast path
    /// (`src/server/xdp.rs`); says how it is attached. The sockets stay bound for everything else.
    pub fn attach_xdp(&mut self, interface: &str) -> Result<String, XdpError> {
        let port = self.addrs.first().ok_or(XdpError::NoPort)?.port();
        let listen = xdp::Listen {
            port,
            v4: family(&self.addrs, port, |ip| match ip {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            }),
            v6: family(&self.addrs, port, |ip| match ip {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            }),
        };
        if (listen.v4, listen.v6) == (xdp::Take::No, xdp::Take::No) {
            return Err(XdpError::NoPort);
        }
        let path = xdp::attach(interface, &listen)?;
        let said = format!("{} mode, {} queue(s)", path.mode, path.sockets.len());
        self.xdp = Some(path);
        Ok(said)
    }
}

/// Which of one family's queries the fast path takes: none when it has no listen address, or one
/// on another port than `port` (the program matches one port); one specific address is checked by
/// the program, several, or any, are not.
fn family<A: Copy>(
    addrs: &[SocketAddr],
    port: u16,
    ip: impl Fn(IpAddr) -> Option<A>,
) -> xdp::Take<A> {
    let mine: Vec<(A, &SocketAddr)> = addrs
        .iter()
        .filter_map(|a| Some((ip(a.ip())?, a)))
        .collect();
    if mine.iter().any(|(_, a)| a.port() != port) {
        return xdp::Take::No;
    }
    match mine.as_slice() {
        [] => xdp::Take::No,
        [(one, a)] if !a.ip().is_unspecified() => xdp::Take::Only(*one),
        _ => xdp::Take::Any,
    }
}

/// Binds every listen address for UDP (`per_addr` sockets each) and TCP on the same port.
pub fn bind(listen: &[SocketAddr], per_addr: usize) -> Result<Listeners, BindError> {
    let mut l = Listeners {
        udp: Vec::new(),
        tcp: Vec::new(),
        addrs: Vec::new(),
        xdp: None,
    };
    for &want in listen {
        let (udp, tcp, addr) = if want.port() == 0 {
            bind_any_port(want)?
        } else {
            let err = |proto| {
                move |source| BindError::Bind {
                    addr: want,
                    proto,
                    source,
                }
            };
            let udp = (0..per_addr.max(1))
                .map(|_| udp_socket(want, true).map(Arc::new).map_err(err("udp")))
                .collect::<Result<Vec<_>, _>>()?;
            (udp, tcp_listener(want).map_err(err("tcp"))?, want)
        };
        l.udp.extend(udp);
        l.tcp.push(tcp);
        l.addrs.push(addr);
    }
    Ok(l)
}

/// Port 0 (tests, ad-hoc runs): one UDP socket without SO_REUSEPORT, so the kernel's choice
/// cannot be a port another process shares, and TCP on the same number, retried if taken.
fn bind_any_port(
    want: SocketAddr,
) -> Result<(Vec<Arc<UdpSocket>>, TcpListener, SocketAddr), BindError> {
    let mut last = None;
    for _ in 0..20 {
        let udp = udp_socket(want, false).map_err(|source| BindError::Bind {
            addr: want,
            proto: "udp",
            source,
        })?;
        let addr = udp.local_addr().map_err(|source| BindError::Bind {
            addr: want,
            proto: "udp",
            source,
        })?;
        match tcp_listener(addr) {
            Ok(tcp) => return Ok((vec![Arc::new(udp)], tcp, addr)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(source) => {
                return Err(BindError::Bind {
                    addr,
                    proto: "tcp",
                    source,
                })
            }
        }
    }
    Err(BindError::Bind {
        addr: want,
        proto: "tcp",
        source: last.unwrap_or_else(|| std::io::Error::other("no free port")),
    })
}

fn udp_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(reuse_port)?;
    s.set_nonblocking(true)?;
    // Bursts from a whole school arrive at once; a deeper queue drops fewer.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight queries finish
/// (for at most `grace`).
pub async fn serve(
    handler: Arc<Handler>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let cancel = CancelToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    // Held until the tasks are done: dropping it gives the traffic back to the kernel.
    let mut fast = listeners.xdp;
    if let Some(fast) = fast.as_mut() {
        let socket_of = |v4: bool| {
            (listeners.udp.iter())
                .find(|s| s.local_addr().is_ok_and(|a| a.is_ipv4() == v4))
                .cloned()
        };
        let socks = ReplySockets {
            v4: socket_of(true),
            v6: socket_of(false),
        };
        for xsk in std::mem::take(&mut fast.sockets) {
            tasks.spawn(xdp_loop(
                handler.clone(),
                xsk,
                socks.clone(),
                cancel.clone(),
            ));
        }
    }
    for sock in listeners.udp {
        tasks.spawn(udp_loop(handler.clone(), sock, cancel.clone()));
    }
    let limits = Arc::new(TcpLimits::default());
    for l in listeners.tcp {
        tasks.spawn(tcp_accept(
            handler.clone(),
            l,
            limits.clone(),
            cancel.clone(),
        ));
    }
    shutdown.await;
    cancel.cancel();
    let _ = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    drop(fast);
}

/// Packets answered per wake-up before yielding, so one busy socket cannot starve the others.
const UDP_BATCH: usize = 256;
/// Datagrams moved per `recvmmsg`/`sendmmsg` call.
const UDP_PER_CALL: usize = 64;
/// Largest query read whole; a longer datagram is answered as malformed. A query is one
/// question and an OPT record: even with cookies and client subnet it is a few hundred bytes,
/// and one longer than a network frame would arrive in fragments that resolvers avoid (DNS Flag
/// Day 2020). Each socket keeps [`UDP_PER_CALL`] buffers of this size.
const UDP_QUERY_MAX: usize = 1500;
/// Upstream lookups one socket keeps in flight; past this a never-seen name is dropped and the
/// client asks again. At a 20 ms upstream round trip that is 50,000 lookups a second per socket,
/// and it bounds what a flood of unique names (or a stalled upstream) can hold in memory.
const UPSTREAM_IN_FLIGHT: usize = 1024;
/// How often a loop copies the kernel's count of its dropped queries into the metrics.
const DROPS_READ_EVERY: Duration = Duration::from_secs(1);

/// A kernel counter of queries dropped before a loop read them (a full socket buffer or XDP
/// ring), copied into a metric at most once a second rather than with a system call per
/// wake-up. Drops happen only while queries arrive, so a wake-up soon follows them.
struct Drops {
    seen: u64,
    read_at: Instant,
}

impl Drops {
    fn new() -> Self {
        Drops {
            seen: 0,
            read_at: Instant::now(),
        }
    }

    fn update(&mut self, metric: &prometheus::IntCounter, read: impl FnOnce() -> u64) {
        if self.read_at.elapsed() < DROPS_READ_EVERY {
            return;
        }
        let now = read();
        metric.inc_by(now.saturating_sub(self.seen));
        self.seen = now;
        self.read_at = Instant::now();
    }
}

/// Drains a UDP socket: after each readiness wake-up queued packets are read a batch per system
/// call, answered into per-slot buffers, and the replies sent back in one call, without going
/// back to the reactor, which is where most per-packet overhead would be.
async fn udp_loop(handler: Arc<Handler>, sock: Arc<UdpSocket>, cancel: CancelToken) {
    let mut rx = udp::RecvBatch::new(UDP_PER_CALL, UDP_QUERY_MAX);
    let mut tx = udp::SendBatch::new(UDP_PER_CALL, 1500);
    let inflight = Arc::new(Semaphore::new(UPSTREAM_IN_FLIGHT));
    let mut drops = Drops::new();
    'wait: loop {
        handler.wait_for_log().await;
        tokio::select! {
            r = sock.readable() => if let Err(e) = r {
                tracing::debug!(error = %e, "udp socket error");
                continue;
            },
            _ = cancel.cancelled() => break,
        }
        drops.update(&handler.metrics().udp_dropped, || udp::dropped(&sock));
        let mut handled = 0;
        while handled < UDP_BATCH {
            let n = match rx.try_recv(&sock) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    handler.flush_log();
                    continue 'wait;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive error");
                    handled += 1;
                    continue;
                }
            };
            handled += n;
            let received = Received::now();
            for d in rx.iter() {
                // A cut-off datagram keeps only its header, which the parser rejects as
                // malformed (FORMERR with the query's ID), rather than reading half a query.
                let pkt = if d.truncated {
                    &d.data[..d.data.len().min(12)]
                } else {
                    d.data
                };
                let src = d.src;
                if answer_datagram(
                    &handler,
                    &sock,
                    &inflight,
                    pkt,
                    src,
                    received,
                    tx.next_buf(),
                ) {
                    tx.push(src);
                }
            }
            let mut dropped = tx.try_send(&sock);
            if !tx.is_empty() {
                // The send buffer is full: hand the journal this thread's records before waiting.
                handler.flush_log();
                dropped += tx.send(&sock).await;
            }
            if dropped > 0 {
                handler.metrics().udp_replies_dropped.inc_by(dropped as u64);
            }
        }
        handler.flush_log();
        tokio::task::yield_now().await;
    }
    // Let spawned upstream lookups answer before the socket goes.
    let all = UPSTREAM_IN_FLIGHT as u32;
    let _ = tokio::time::timeout(Duration::from_secs(3), inflight.acquire_many(all)).await;
}

/// Answers one datagram; true when the reply is ready in `out`. A name that must be fetched
/// upstream is looked up in a task of its own, which replies through `sock`.
fn answer_datagram(
    handler: &Arc<Handler>,
    sock: &Arc<UdpSocket>,
    inflight: &Arc<Semaphore>,
    pkt: &[u8],
    src: SocketAddr,
    received: Received,
    out: &mut Vec<u8>,
) -> bool {
    match handler.answer_now(pkt, src, Transport::Udp, received, out) {
        Outcome::Reply => true,
        Outcome::Drop => false,
        Outcome::Upstream => {
            // Bound the lookups in flight so a flood of unique names cannot exhaust memory.
            let Ok(permit) = inflight.clone().try_acquire_owned() else {
                handler.metrics().upstream_busy.inc();
                return false;
            };
            let handler = handler.clone();
            let sock = sock.clone();
            let pkt = pkt.to_vec();
            tokio::spawn(async move {
                let mut out = Vec::new();
                if handler
                    .answer_upstream(&pkt, src, Transport::Udp, received, &mut out)
                    .await
                    == Outcome::Reply
                {
                    let _ = sock.send_to(&out, src).await;
                }
                drop(permit);
            });
            false
        }
    }
}

/// A listen socket of each family, for what the fast path answers another way.
#[derive(Clone)]
struct ReplySockets {
    v4: Option<Arc<UdpSocket>>,
    v6: Option<Arc<UdpSocket>>,
}

impl ReplySockets {
    fn to(&self, dest: SocketAddr) -> Option<&Arc<UdpSocket>> {
        if dest.is_ipv4() {
            self.v4.as_ref()
        } else {
            self.v6.as_ref()
        }
    }
}

/// Drains one AF_XDP socket as [`udp_loop`] drains a UDP socket. Upstream lookups and replies
/// too big for a frame go out through the listen socket of the client's family.
async fn xdp_loop(handler: Arc<Handler>, xsk: xdp::Xsk, socks: ReplySockets, cancel: CancelToken) {
    // SAFETY: the socket owns its descriptor, open and unchanged until it is dropped.
    let mut ready = match unsafe { AsyncFd::register_with_interest(xsk, Interest::READABLE) } {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot wait on the XDP socket; its queue goes unanswered");
            return;
        }
    };
    let inflight = Arc::new(Semaphore::new(UPSTREAM_IN_FLIGHT));
    let mut reply = Vec::with_capacity(1500);
    let mut spill = Vec::new();
    let mut drops = Drops::new();
    'wait: loop {
        handler.wait_for_log().await;
        let mut guard = tokio::select! {
            r = ready.readable_mut() => match r {
                Ok(g) => g,
                Err(e) => {
                    tracing::debug!(error = %e, "xdp socket error");
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        drops.update(&handler.metrics().xdp_dropped, || {
            guard.get_inner().dropped()
        });
        let mut handled = 0;
        while handled < UDP_BATCH {
            let received = Received::now();
            let n = guard
                .get_inner_mut()
                .serve_batch(&mut reply, &mut spill, |pkt, src, out| {
                    // The program takes a family only when it has a listen socket.
                    let Some(sock) = socks.to(src) else {
                        return false;
                    };
                    answer_datagram(&handler, sock, &inflight, pkt, src, received, out)
                });
            for (bytes, dest) in spill.drain(..) {
                let sent = socks.to(dest).map(|s| s.try_send_to(&bytes, dest));
                if !matches!(sent, Some(Ok(_))) {
                    handler.metrics().udp_replies_dropped.inc();
                }
            }
            if n == 0 {
                guard.clear_ready();
                handler.flush_log();
                continue 'wait;
            }
            handler.metrics().xdp_packets.inc_by(u64::from(n));
            handled += n as usize;
        }
        handler.flush_log();
        tokio::task::yield_now().await;
    }
    drop(ready);
    let all = UPSTREAM_IN_FLIGHT as u32;
    let _ = tokio::time::timeout(Duration::from_secs(3), inflight.acquire_many(all)).await;
}

#[derive(Default)]
struct TcpLimits {
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

impl TcpLimits {
    fn enter(&self, ip: IpAddr) -> bool {
        let mut m = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= MAX_TCP_PER_CLIENT {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: IpAddr) {
        let mut m = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

async fn tcp_accept(
    handler: Arc<Handler>,
    listener: TcpListener,
    limits: Arc<TcpLimits>,
    cancel: CancelToken,
) {
    let total = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, src) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "tcp accept error");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            continue;
        };
        let ip = crate::clients::canonical(src.ip());
        if !limits.enter(ip) {
            continue;
        }
        let handler = handler.clone();
        let limits = limits.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _ = tcp_conn(&handler, stream, src, cancel).await;
            limits.leave(ip);
            drop(permit);
        });
    }
}

/// Serves pipelined queries on one connection, in order, until idle, closed or shut down.
async fn tcp_conn(
    handler: &Handler,
    mut stream: TcpStream,
    src: SocketAddr,
    cancel: CancelToken,
) -> std::io::Result<()> {
    let mut packet = vec![0u8; 65535];
    let mut buf = Vec::with_capacity(1500);
    loop {
        // As the UDP loops do: no new query while the log writer is far behind on breaches.
        handler.wait_for_log().await;
        let len = tokio::select! {
            r = tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_u16()) => match r {
                Ok(Ok(n)) => n as usize,
                _ => return Ok(()),
            },
            _ = cancel.cancelled() => return Ok(()),
        };
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut packet[..len])).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let received = Received::now();
        let pkt = &packet[..len];
        let outcome = match handler.answer_now(pkt, src, Transport::Tcp, received, &mut buf) {
            Outcome::Upstream => {
                handler
                    .answer_upstream(pkt, src, Transport::Tcp, received, &mut buf)
                    .await
            }
            o => o,
        };
        if outcome == Outcome::Reply {
            let mut framed = Vec::with_capacity(buf.len() + 2);
            framed.extend_from_slice(&(buf.len() as u16).to_be_bytes());
            framed.extend_from_slice(&buf);
            stream.write_all(&framed).await?;
        }
    }
}
