//! Forwarding allowed names to the school's upstream resolvers with hickory-resolver.
//!
//! The resolver brings retries, failover between upstreams, TCP on truncation and its own
//! cache. What comes back is encoded once into wire bytes for [`crate::cache::AnswerCache`].

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use thiserror::Error;

/// Why an upstream answer could not be had.
#[derive(Debug, Error)]
pub enum UpstreamError {
    /// No upstream is configured.
    #[error("no upstream resolver configured; set server.upstreams or pass --upstream")]
    NotConfigured,
    /// Every upstream failed or timed out.
    #[error("upstream failed: {0}")]
    Failed(String),
    /// The resolver could not be built.
    #[error("cannot set up upstream resolver: {0}")]
    Setup(String),
}

/// An encoded upstream answer.
pub struct Answer {
    /// Wire bytes, ID 0, question in lower case, no OPT.
    pub bytes: Vec<u8>,
    /// How long it may be cached.
    pub ttl: u32,
}

/// Entries kept by each hickory resolver's own cache.
const RESOLVER_CACHE: usize = 1024;

/// The forwarding client: one resolver per upstream, tried in order, so each upstream's
/// failures and latency can be seen separately and a dead one is skipped.
#[derive(Clone)]
pub struct Upstream {
    servers: Vec<(SocketAddr, TokioResolver)>,
    timeout: Duration,
}

impl Upstream {
    /// Builds a resolver for each of `servers` (UDP with TCP fallback, each on its own port).
    pub fn new(
        servers: &[SocketAddr],
        timeout: Duration,
        cache_size: usize,
    ) -> Result<Self, UpstreamError> {
        let mut built = Vec::new();
        for s in servers {
            let mut udp = ConnectionConfig::new(ProtocolConfig::Udp);
            udp.port = s.port();
            let mut tcp = ConnectionConfig::new(ProtocolConfig::Tcp);
            tcp.port = s.port();
            let config = ResolverConfig::from_parts(
                None,
                vec![],
                vec![NameServerConfig::new(s.ip(), true, vec![udp, tcp])],
            );
            let mut opts = ResolverOpts::default();
            opts.timeout = timeout;
            opts.attempts = 1;
            // schoolgate's answer cache (bytes, serve-stale) is the main cache; the resolver's own
            // stays small, a second level for names that expire there first.
            opts.cache_size = cache_size.min(RESOLVER_CACHE) as u64;
            opts.use_hosts_file = ResolveHosts::Never;
            opts.preserve_intermediates = true;
            opts.ndots = 0;
            opts.edns0 = true;
            opts.num_concurrent_reqs = 1;
            let mut builder =
                Resolver::builder_with_config(config, TokioRuntimeProvider::default());
            *builder.options_mut() = opts;
            let resolver = builder
                .build()
                .map_err(|e| UpstreamError::Setup(format!("{s}: {e}")))?;
            built.push((*s, resolver));
        }
        Ok(Upstream {
            servers: built,
            timeout,
        })
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
        let fqdn = Name::from_ascii(format!("{name}."))
            .map_err(|e| UpstreamError::Failed(e.to_string()))?;
        let rtype = RecordType::from(qtype);
        let mut last = String::new();
        for (addr, resolver) in &self.servers {
            let started = std::time::Instant::now();
            // The resolver's own timeout applies per attempt; this bounds the whole lookup.
            let result = tokio::time::timeout(
                self.timeout + Duration::from_millis(250),
                resolver.lookup(fqdn.clone(), rtype),
            )
            .await;
            let answered = matches!(&result, Ok(Ok(_)))
                || matches!(&result, Ok(Err(e)) if e.is_no_records_found());
            observe(addr, started.elapsed(), answered);
            match result {
                Ok(r) if answered => return encode(Query::query(fqdn, rtype), r),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                _ => last = format!("{addr}: timed out"),
            }
        }
        Err(UpstreamError::Failed(last))
    }
}

fn encode(
    query: Query,
    result: Result<hickory_resolver::lookup::Lookup, hickory_resolver::net::NetError>,
) -> Result<Answer, UpstreamError> {
    let mut msg = Message::new(0, MessageType::Response, OpCode::Query);
    msg.metadata.recursion_available = true;
    msg.add_query(query);
    let ttl = match result {
        Ok(lookup) => {
            msg.add_answers(lookup.answers().iter().cloned());
            lookup.answers().iter().map(|r| r.ttl).min().unwrap_or(60)
        }
        Err(e) => {
            msg.metadata.response_code = if e.is_nx_domain() {
                ResponseCode::NXDomain
            } else {
                ResponseCode::NoError
            };
            match e.into_soa() {
                Some(soa) => {
                    let ttl = soa.ttl.min(soa.data.minimum);
                    msg.add_authority(soa.into_record_of_rdata());
                    ttl
                }
                None => 60,
            }
        }
    };
    let bytes = msg
        .to_vec()
        .map_err(|e| UpstreamError::Failed(format!("cannot encode answer: {e}")))?;
    Ok(Answer { bytes, ttl })
}
