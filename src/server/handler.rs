//! Where a query is decided and answered. Both UDP and TCP listeners call [`Handler`].
//!
//! [`Handler::answer_now`] is the synchronous fast path: parse, access control, decision, and
//! either a complete answer (sinkhole, cache hit, error) or a request to go upstream. Only
//! allowed names missing from the cache ever reach [`Handler::answer_upstream`], the one place
//! that awaits.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::Utc;

use crate::cache::{finish_edns, AnswerCache, Freshness};
use crate::clients::ClientId;
use crate::config::SinkholeMode;
use crate::policy::{Action, Decision, Engine};
use crate::upstream::Upstream;
use crate::wire::{self, ede, rcode, rtype, Query, Reject, Writer};

/// The transport a query came over; UDP answers are size-limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Datagram.
    Udp,
    /// Stream.
    Tcp,
}

/// What the fast path produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `buf` holds a complete answer.
    Reply,
    /// Say nothing.
    Drop,
    /// An allowed name not in the cache: call [`Handler::answer_upstream`].
    Upstream,
}

/// Everything the query path shares across sockets and tasks.
pub struct Handler {
    engine: ArcSwap<Engine>,
    upstream: Upstream,
    cache: AnswerCache,
}

impl Handler {
    /// A handler over an initial engine.
    pub fn new(engine: Arc<Engine>, upstream: Upstream, cache: AnswerCache) -> Self {
        Handler {
            engine: ArcSwap::new(engine),
            upstream,
            cache,
        }
    }

    /// The engine in force.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.load_full()
    }

    /// Swaps in a new engine; queries in flight finish on the old one.
    pub fn replace_engine(&self, engine: Arc<Engine>) {
        self.engine.store(engine);
    }

    /// Answers from memory if possible. `buf` receives the answer on [`Outcome::Reply`].
    pub fn answer_now(&self, packet: &[u8], src: SocketAddr, transport: Transport, buf: &mut Vec<u8>) -> Outcome {
        let q = match wire::parse(packet) {
            Ok(q) => q,
            Err(r @ Reject::Error { .. }) => {
                return match Writer::reject(buf, packet, &r) {
                    Some(_) => Outcome::Reply,
                    None => Outcome::Drop,
                };
            }
            Err(Reject::Drop) => return Outcome::Drop,
        };
        let engine = self.engine.load();
        let addr = crate::clients::canonical(src.ip());
        if !engine.config().client_networks.iter().any(|n| n.contains(&addr)) {
            self.error(&q, buf, rcode::REFUSED, Some((ede::PROHIBITED, "schoolgate: not a school network")));
            return self.finish(&q, transport, buf);
        }
        if q.qclass != 1 || matches!(q.qtype, rtype::AXFR | rtype::IXFR) {
            self.error(&q, buf, rcode::REFUSED, None);
            return self.finish(&q, transport, buf);
        }
        let client = engine.identify(addr);
        let decision = engine.decide(&client, &q.name, Utc::now());
        match decision.action {
            Action::Block => {
                self.sinkhole(&engine, &q, &decision, None, buf);
                self.finish(&q, transport, buf)
            }
            Action::Allow => {
                if q.qtype == rtype::ANY {
                    self.minimal_any(&q, buf);
                    return self.finish(&q, transport, buf);
                }
                if q.name.is_root() {
                    self.error(&q, buf, rcode::REFUSED, None);
                    return self.finish(&q, transport, buf);
                }
                match self.cache.serve(&q, buf, false) {
                    Some(_) => {
                        if let Some(blocked) = self.cloaked(&engine, &client, buf) {
                            self.sinkhole(&engine, &q, &blocked.0, Some(&blocked.1), buf);
                        } else {
                            finish_edns(buf, &q, None);
                        }
                        self.finish(&q, transport, buf)
                    }
                    None => Outcome::Upstream,
                }
            }
        }
    }

    /// Resolves an allowed name upstream and writes the answer (or SERVFAIL) into `buf`.
    pub async fn answer_upstream(&self, packet: &[u8], src: SocketAddr, transport: Transport, buf: &mut Vec<u8>) -> Outcome {
        let Ok(q) = wire::parse(packet) else {
            return Outcome::Drop;
        };
        let result = self.upstream.resolve(q.name.as_str(), q.qtype).await;
        let engine = self.engine.load_full();
        let client = engine.identify(crate::clients::canonical(src.ip()));
        match result {
            Ok(answer) => {
                self.cache
                    .insert(q.name.as_str().as_bytes(), q.qtype, answer.bytes, answer.ttl);
                if self.cache.serve(&q, buf, true).is_none() {
                    self.error(&q, buf, rcode::SERVFAIL, None);
                    return self.finish(&q, transport, buf);
                }
                if let Some(blocked) = self.cloaked(&engine, &client, buf) {
                    self.sinkhole(&engine, &q, &blocked.0, Some(&blocked.1), buf);
                } else {
                    finish_edns(buf, &q, None);
                }
            }
            Err(e) => {
                tracing::debug!(name = q.name.as_str(), error = %e, "upstream failed");
                match self.cache.serve(&q, buf, true) {
                    Some(Freshness::Stale) | Some(Freshness::Fresh) => {
                        finish_edns(buf, &q, Some((ede::STALE_ANSWER, "schoolgate: upstream unreachable, stale answer")));
                    }
                    None => self.error(
                        &q,
                        buf,
                        rcode::SERVFAIL,
                        Some((ede::NO_REACHABLE_AUTHORITY, "schoolgate: upstream resolver failed")),
                    ),
                }
            }
        }
        self.finish(&q, transport, buf)
    }

    /// If an answer in `buf` leads by CNAME to a name this client may not reach, the decision
    /// that blocks it and the target's name.
    fn cloaked(&self, engine: &Engine, client: &ClientId, buf: &[u8]) -> Option<(Decision, String)> {
        let mut found = None;
        let now = Utc::now();
        wire::cname_targets(buf, |target| {
            if found.is_none() {
                let d = engine.decide(client, &target, now);
                if d.action == Action::Block {
                    found = Some((d, target.as_str().to_string()));
                }
            }
        });
        found
    }

    fn sinkhole(&self, engine: &Engine, q: &Query<'_>, d: &Decision, via: Option<&str>, buf: &mut Vec<u8>) {
        let sink = &engine.config().sinkhole;
        let rc = if sink.mode == SinkholeMode::Nxdomain {
            rcode::NXDOMAIN
        } else {
            rcode::NOERROR
        };
        let mut w = Writer::respond(buf, q, rc, false);
        match (sink.mode, q.qtype) {
            (SinkholeMode::Null, rtype::A) => w.answer(rtype::A, sink.ttl, &[0; 4]),
            (SinkholeMode::Null, rtype::AAAA) => w.answer(rtype::AAAA, sink.ttl, &[0; 16]),
            (SinkholeMode::Address, rtype::A) => {
                if let Some(ip) = sink.ipv4 {
                    w.answer(rtype::A, sink.ttl, &ip.octets());
                }
            }
            (SinkholeMode::Address, rtype::AAAA) => {
                if let Some(ip) = sink.ipv6 {
                    w.answer(rtype::AAAA, sink.ttl, &ip.octets());
                }
            }
            _ => {}
        }
        if let Some(e) = q.edns {
            let category = d
                .category
                .and_then(|c| engine.categories().get(c as usize))
                .map_or("policy", |c| c.name.as_str());
            let mut text = String::with_capacity(64);
            let _ = write!(text, "schoolgate: blocked, category {category}");
            if let Some(target) = via {
                let _ = write!(text, " (via CNAME {target})");
            }
            w.opt(e.dnssec_ok, 0, Some((ede::BLOCKED, &text)));
        }
    }

    /// RFC 8482: ANY gets one synthesised HINFO instead of everything we know.
    fn minimal_any(&self, q: &Query<'_>, buf: &mut Vec<u8>) {
        let mut w = Writer::respond(buf, q, rcode::NOERROR, false);
        w.answer(13, 3600, b"\x07RFC8482\x00");
        if let Some(e) = q.edns {
            w.opt(e.dnssec_ok, 0, None);
        }
    }

    fn error(&self, q: &Query<'_>, buf: &mut Vec<u8>, code: u8, ede: Option<(u16, &str)>) {
        let mut w = Writer::respond(buf, q, code, false);
        if let Some(e) = q.edns {
            w.opt(e.dnssec_ok, 0, ede);
        }
    }

    /// Enforces the UDP size limit: too big means TC and the client retries over TCP.
    fn finish(&self, q: &Query<'_>, transport: Transport, buf: &mut Vec<u8>) -> Outcome {
        if transport == Transport::Udp && buf.len() > q.udp_limit() {
            Writer::truncate_to_question(buf, q.question.len());
            if let Some(e) = q.edns {
                Writer::append(buf).opt(e.dnssec_ok, 0, None);
            }
        }
        Outcome::Reply
    }
}
