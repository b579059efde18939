//! Forwarding allowed names to the school's upstream resolvers.
//!
//! Each lookup is one query from a fresh socket (a random port chosen by the kernel) with a
//! random ID, the defences against spoofed answers (RFC 5452); a packet that is not the answer
//! to that query is ignored. Upstreams are asked in order, each for at most the timeout; one
//! that fails is set aside for [`SET_ASIDE`], asked only when every other has failed too, so a
//! dead first upstream costs one timeout every half minute rather than one per never-seen name.
//! A truncated answer is asked again over TCP. What comes back is checked and put in the answer
//! cache's form by [`crate::wire::upstream_answer`].
//!
//! This replaced hickory-resolver here: its lookup (a resolver cache, a name-server pool, a
//! multiplexed stream per query) cost about 66 us of CPU per never-seen name on the load
//! benchmark, while the server forwards, caches and serves stale itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::wire::{self, Upstreamed};

/// Why an upstream answer could not be had.
#[derive(Debug, Error)]
pub enum UpstreamError {
    /// No upstream is configured.
    #[error("no upstream resolver configured; set server.upstreams or pass --upstream")]
    NotConfigured,
    /// Every upstream failed or timed out.
    #[error("upstream failed: {0}")]
    Failed(String),
}

/// An encoded upstream answer.
pub struct Answer {
    /// Wire bytes, ID 0, question in lower case, no OPT.
    pub bytes: Vec<u8>,
    /// How long it may be cached.
    pub ttl: u32,
}

/// Largest UDP answer read; the query offers 1232 bytes, so more is a misbehaving upstream.
const MAX_UDP_ANSWER: usize = 4096;

/// How long an upstream that failed is asked only after the others.
pub const SET_ASIDE: Duration = Duration::from_secs(30);

/// The forwarding client: the upstreams, tried in order, those that failed lately last.
#[derive(Clone)]
pub struct Upstream {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    /// Per server: until when (milliseconds since `epoch`) it is set aside; 0 when healthy.
    aside_until: Arc<[AtomicU64]>,
    epoch: Instant,
}

impl Upstream {
    /// Forwards to `servers`, giving each `timeout` to answer.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Self {
        Upstream {
            servers: servers.to_vec(),
            timeout,
            aside_until: servers.iter().map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        }
    }

    /// Whether this client forwards to `servers` with `timeout` (a reload that changed neither
    /// keeps it, and what it learned of which upstreams are down).
    pub fn serves(&self, servers: &[SocketAddr], timeout: Duration) -> bool {
        self.servers == servers && self.timeout == timeout
    }

    /// Each server and whether it is set aside now (it failed within [`SET_ASIDE`]).
    pub fn health(&self) -> Vec<(SocketAddr, bool)> {
        let now = self.now_ms();
        self.servers
            .iter()
            .zip(self.aside_until.iter())
            .map(|(s, until)| (*s, until.load(Ordering::Relaxed) > now))
            .collect()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The servers' indexes in the order to ask them: healthy ones in configured order, then
    /// those set aside, as a last resort. Taken once per lookup, so a server this lookup sets
    /// aside is not asked again.
    fn order(&self) -> Vec<usize> {
        let health = self.health();
        let (healthy, aside): (Vec<usize>, Vec<usize>) =
            (0..health.len()).partition(|&i| !health[i].1);
        [healthy, aside].concat()
    }

    /// Resolves `name` (normalised, no trailing dot) and encodes the answer. `observe` hears
    /// about every attempt: which upstream, how long, whether it answered.
    pub async fn resolve(
        &self,
        name: &str,
        qtype: u16,
        observe: impl Fn(&SocketAddr, Duration, bool),
    ) -> Result<Answer, UpstreamError> {
        if self.servers.is_empty() {
            return Err(UpstreamError::NotConfigured);
        }
        let mut last = String::new();
        for i in self.order() {
            let addr = &self.servers[i];
            let started = Instant::now();
            let query = wire::upstream_query(rand::random(), name, qtype);
            let result = tokio::time::timeout(self.timeout, ask(*addr, &query)).await;
            observe(addr, started.elapsed(), matches!(result, Ok(Ok(_))));
            match result {
                Ok(Ok(answer)) => {
                    self.aside_until[i].store(0, Ordering::Relaxed);
                    return Ok(answer);
                }
                // It answered, with an error for this name: ask the next, but it is alive.
                Ok(Err(Miss::Answered(e))) => {
                    last = format!("{addr}: {e}");
                    continue;
                }
                Ok(Err(Miss::Unreachable(e))) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: no answer within {:?}", self.timeout),
            }
            let until = self.now_ms() + SET_ASIDE.as_millis() as u64;
            self.aside_until[i].store(until, Ordering::Relaxed);
        }
        Err(UpstreamError::Failed(last))
    }
}

/// Why one upstream gave no answer to use.
enum Miss {
    /// It answered, but with an error (SERVFAIL, REFUSED, a malformed message).
    Answered(String),
    /// It could not be reached.
    Unreachable(String),
}

fn unreachable(e: std::io::Error) -> Miss {
    Miss::Unreachable(e.to_string())
}

/// One query to one upstream: UDP, then TCP if the answer was truncated.
async fn ask(addr: SocketAddr, query: &[u8]) -> Result<Answer, Miss> {
    let sock = connected(addr).map_err(unreachable)?;
    sock.send(query).await.map_err(unreachable)?;
    loop {
        sock.readable().await.map_err(unreachable)?;
        match read_answer(&sock, query)? {
            Some(Upstreamed::Answer { bytes, ttl }) => return Ok(Answer { bytes, ttl }),
            Some(Upstreamed::Truncated) => return ask_tcp(addr, query).await,
            // Nothing yet, or a stray packet: keep waiting (the caller's timeout bounds it).
            Some(Upstreamed::Stray) | None => continue,
        }
    }
}

/// A fresh UDP socket connected to `addr`: the kernel drops packets from any other address or
/// port. Connecting binds it to a random port, as binding to port 0 would, so it takes two
/// system calls, non-blocking from the start, where binding first took four: opening, using and
/// closing a socket is over a quarter of a never-seen name's CPU.
fn connected(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    s.connect(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// Reads one datagram into a stack buffer: a plain function, so the buffer is never part of a
/// waiting lookup's state and a thousand lookups waiting on a slow upstream cost their sockets
/// only. `None` when nothing was there after all.
fn read_answer(sock: &UdpSocket, query: &[u8]) -> Result<Option<Upstreamed>, Miss> {
    let mut buf = [0u8; MAX_UDP_ANSWER];
    match sock.try_recv(&mut buf) {
        Ok(n) => wire::upstream_answer(&buf[..n], query)
            .map(Some)
            .map_err(|e| Miss::Answered(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        // An ICMP port unreachable comes back as a refused receive: nothing listens there.
        Err(e) => Err(unreachable(e)),
    }
}

async fn ask_tcp(addr: SocketAddr, query: &[u8]) -> Result<Answer, Miss> {
    let io = |e: std::io::Error| Miss::Unreachable(format!("over TCP: {e}"));
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.map_err(io)?;
    let len = stream.read_u16().await.map_err(io)? as usize;
    let mut resp = vec![0u8; len];
    stream.read_exact(&mut resp).await.map_err(io)?;
    let answered = |e: &str| Miss::Answered(format!("over TCP: {e}"));
    match wire::upstream_answer(&resp, query) {
        Ok(Upstreamed::Answer { bytes, ttl }) => Ok(Answer { bytes, ttl }),
        Ok(Upstreamed::Truncated) => Err(answered("truncated answer")),
        Ok(Upstreamed::Stray) => Err(answered("not an answer to the query")),
        Err(e) => Err(answered(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_set_aside_are_asked_last_until_their_time_is_up() {
        let servers: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut u = Upstream::new(&servers, Duration::from_secs(1));
        // Ten seconds into serving, so a time in the past can be written.
        u.epoch -= Duration::from_secs(10);
        assert_eq!(u.order(), [0, 1, 2]);
        u.aside_until[0].store(u.now_ms() + 60_000, Ordering::Relaxed);
        assert_eq!(u.order(), [1, 2, 0]);
        u.aside_until[0].store(0, Ordering::Relaxed);
        u.aside_until[1].store(u.now_ms() + 60_000, Ordering::Relaxed);
        u.aside_until[2].store(u.now_ms() + 60_000, Ordering::Relaxed);
        assert_eq!(u.order(), [0, 1, 2]);
        assert_eq!(u.clone().order(), [0, 1, 2], "clones share what they learn");
        u.aside_until[0].store(u.now_ms() + 60_000, Ordering::Relaxed);
        u.aside_until[2].store(1, Ordering::Relaxed);
        assert_eq!(
            u.order(),
            [2, 0, 1],
            "a server whose time is up is asked again"
        );
    }
}
