//! Forwarding allowed names to the school's upstream resolvers.
//!
//! Each lookup is one query from a fresh socket (a random port chosen by the kernel) with a
//! random ID, the defences against spoofed answers (RFC 5452); a packet that is not the answer
//! to that query is ignored. Upstreams are asked in order, each for at most the timeout, so a
//! dead one is skipped; a truncated answer is asked again over TCP. What comes back is checked
//! and put in the answer cache's form by [`crate::wire::upstream_answer`].
//!
//! This replaced hickory-resolver here: its lookup (a resolver cache, a name-server pool, a
//! multiplexed stream per query) cost about 66 us of CPU per never-seen name on the load
//! benchmark, while the server forwards, caches and serves stale itself.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

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

/// The forwarding client: the upstreams, tried in order.
#[derive(Clone)]
pub struct Upstream {
    servers: Vec<SocketAddr>,
    timeout: Duration,
}

impl Upstream {
    /// Forwards to `servers`, giving each `timeout` to answer.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Self {
        Upstream {
            servers: servers.to_vec(),
            timeout,
        }
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
        for addr in &self.servers {
            let started = Instant::now();
            let query = wire::upstream_query(rand::random(), name, qtype);
            let result = tokio::time::timeout(self.timeout, ask(*addr, &query)).await;
            observe(addr, started.elapsed(), matches!(result, Ok(Ok(_))));
            match result {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: no answer within {:?}", self.timeout),
            }
        }
        Err(UpstreamError::Failed(last))
    }
}

/// One query to one upstream: UDP, then TCP if the answer was truncated.
async fn ask(addr: SocketAddr, query: &[u8]) -> Result<Answer, String> {
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    // Connected: the kernel drops packets from any other address or port.
    sock.connect(addr).await.map_err(|e| e.to_string())?;
    sock.send(query).await.map_err(|e| e.to_string())?;
    loop {
        sock.readable().await.map_err(|e| e.to_string())?;
        match read_answer(&sock, query) {
            Ok(Some(Upstreamed::Answer { bytes, ttl })) => return Ok(Answer { bytes, ttl }),
            Ok(Some(Upstreamed::Truncated)) => return ask_tcp(addr, query).await,
            // Nothing yet, or a stray packet: keep waiting (the caller's timeout bounds it).
            Ok(Some(Upstreamed::Stray)) | Ok(None) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads one datagram into a stack buffer: a plain function, so the buffer is never part of a
/// waiting lookup's state and a thousand lookups waiting on a slow upstream cost their sockets
/// only. `None` when nothing was there after all.
fn read_answer(sock: &UdpSocket, query: &[u8]) -> Result<Option<Upstreamed>, String> {
    let mut buf = [0u8; MAX_UDP_ANSWER];
    match sock.try_recv(&mut buf) {
        Ok(n) => wire::upstream_answer(&buf[..n], query)
            .map(Some)
            .map_err(str::to_string),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

async fn ask_tcp(addr: SocketAddr, query: &[u8]) -> Result<Answer, String> {
    let io = |e: std::io::Error| format!("over TCP: {e}");
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.map_err(io)?;
    let len = stream.read_u16().await.map_err(io)? as usize;
    let mut resp = vec![0u8; len];
    stream.read_exact(&mut resp).await.map_err(io)?;
    match wire::upstream_answer(&resp, query) {
        Ok(Upstreamed::Answer { bytes, ttl }) => Ok(Answer { bytes, ttl }),
        Ok(Upstreamed::Truncated) => Err("truncated answer over TCP".into()),
        Ok(Upstreamed::Stray) => Err("over TCP: not an answer to the query".into()),
        Err(e) => Err(format!("over TCP: {e}")),
    }
}
