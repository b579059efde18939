//! Where a query is decided and answered. Both UDP and TCP listeners call [`Handler`].
//!
//! [`Handler::answer_now`] is the synchronous fast path: parse, access control, rate limit,
//! decision, and either a complete answer (sinkhole, cache hit, error) or a request to go
//! upstream. Only allowed names missing from the cache ever reach
//! [`Handler::answer_upstream`], the one place that awaits. Every answered query is counted and
//! handed to the journal on the way out.
//!
//! Safe search rewrites are answered the way the vendors document: a CNAME to the safe host plus
//! the host's own records, resolved through the upstream and cached under the host's name, so
//! clients that do not chase CNAMEs still reach the safe host.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};

use crate::cache::{finish_edns, AnswerCache, Freshness};
use crate::clients::ClientId;
use crate::config::SinkholeMode;
use crate::journal::{self, Event, Journal, Notice};
use crate::metrics::{Metrics, QueryCounters};
use crate::policy::{Action, Decision, Engine};
use crate::ratelimit::{RateLimiter, Verdict};
use crate::server::inflight::{self, InFlight, Turn};
use crate::upstream::Upstream;
use crate::wire::{self, ede, rcode, rtype, Query, Writer};
use crate::zones::{Local, Route, Zones};

/// TTL of a rewrite's CNAME when the safe host's answer carries none.
const REWRITE_TTL: u32 = 300;

/// TTL of `localhost` answers: they never change.
const LOCAL_TTL: u32 = 86400;

/// How long a device may cache "no such name" or "no such record" for a built-in zone (the SOA
/// minimum unbound gives its local zones).
const LOCAL_NEGATIVE_TTL: u32 = 10800;

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

/// An engine and the metric counters resolved for it, swapped together.
struct Snapshot {
    engine: Arc<Engine>,
    counters: QueryCounters,
    /// The engine's config's upstreams: a reload can change them.
    upstream: Upstream,
    /// Names answered here or forwarded to the school's own DNS instead.
    zones: Zones,
}

/// Everything the query path shares across sockets and tasks.
pub struct Handler {
    snapshot: ArcSwap<Snapshot>,
    cache: AnswerCache,
    journal: Option<Journal>,
    metrics: Arc<Metrics>,
    limiter: RateLimiter,
    in_flight: InFlight,
}

/// When a query (or the batch of datagrams it came in) was read: the monotonic clock for its
/// latency and rate limit, the wall clock for its decision (schedules) and its log line. Read
/// once per batch rather than three times per query.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// For latency and rate limiting.
    pub at: Instant,
    /// For the log.
    pub wall: SystemTime,
    /// The wall clock as a date and time, for schedules: converted once per batch, not per
    /// query.
    utc: DateTime<Utc>,
}

impl Received {
    /// Now, on both clocks.
    pub fn now() -> Self {
        let wall = SystemTime::now();
        Received {
            at: Instant::now(),
            wall,
            utc: wall.into(),
        }
    }
}

/// One query in flight: the snapshot deciding it, who asked, what, over what, since when.
struct Ctx<'a, 'q> {
    snap: &'a Snapshot,
    client: ClientId,
    q: &'a Query<'q>,
    transport: Transport,
    received: Received,
    /// Logged into this thread's journal batch: the UDP loop flushes it before it waits.
    deferred: bool,
}

impl<'a, 'q> Ctx<'a, 'q> {
    /// Identifies the client (by `addr`, already canonical, or the router's hint for it).
    fn new(
        snap: &'a Snapshot,
        q: &'a Query<'q>,
        addr: IpAddr,
        transport: Transport,
        received: Received,
        deferred: bool,
    ) -> Self {
        Ctx {
            snap,
            client: snap
                .engine
                .identify_query(addr, q.edns.and_then(|e| e.hint)),
            q,
            transport,
            received,
            deferred,
        }
    }
}

/// How a query ended, for counting and logging.
struct Done<'a> {
    decision: Option<Decision>,
    outcome: journal::Outcome,
    via: Option<&'a str>,
}

impl Handler {
    /// A handler over an initial engine.
    pub fn new(
        engine: Arc<Engine>,
        cache: AnswerCache,
        journal: Option<Journal>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let config = engine.config().clone();
        let counters = metrics.counters_for(&engine);
        let upstream = Upstream::new(&config.upstreams, config.upstream_timeout);
        let zones = Zones::new(&config.forwards, config.upstream_timeout, None);
        metrics.mark_loaded();
        Handler {
            snapshot: ArcSwap::from_pointee(Snapshot {
                engine,
                counters,
                upstream,
                zones,
            }),
            cache,
            journal,
            metrics,
            limiter: RateLimiter::new(config.rate_limit_qps, config.rate_limit_burst),
            in_flight: InFlight::default(),
        }
    }

    /// The engine in force.
    pub fn engine(&self) -> Arc<Engine> {
        self.snapshot.load().engine.clone()
    }

    /// Swaps in a new engine; queries in flight finish on the old one.
    ///
    /// The old one's mapped pages are given back at once: under load the new index is resident
    /// within milliseconds, and until the last query and log record let go of the old engine
    /// both indexes were (6 MB of the server's peak during a reload of 1,000,000 names).
    pub fn replace_engine(&self, engine: Arc<Engine>) {
        let counters = self.metrics.counters_for(&engine);
        let config = engine.config();
        self.limiter
            .set_limits(config.rate_limit_qps, config.rate_limit_burst);
        let running = self.snapshot.load();
        let upstream = if running
            .upstream
            .serves(&config.upstreams, config.upstream_timeout)
        {
            running.upstream.clone()
        } else {
            tracing::info!(upstreams = ?config.upstreams, "upstream resolvers changed");
            Upstream::new(&config.upstreams, config.upstream_timeout)
        };
        let zones = Zones::new(
            &config.forwards,
            config.upstream_timeout,
            Some(&running.zones),
        );
        if config.forwards != running.engine.config().forwards {
            // Answers cached from the servers that used to answer a zone (an NXDOMAIN from the
            // internet for the school's own domain) would outlive the change by their TTL.
            tracing::info!(forwards = ?config.forwards, "forward zones changed; answer cache emptied");
            self.cache.clear();
        }
        drop(running);
        let old = self.snapshot.swap(Arc::new(Snapshot {
            engine,
            counters,
            upstream,
            zones,
        }));
        old.engine.release_pages();
    }

    /// Sends the journal records [`Handler::answer_now`] deferred on this thread.
    pub fn flush_log(&self) {
        journal::flush_deferred();
    }

    /// Waits while the log writer is too far behind on breaches (see [`Journal::behind`]): the
    /// query loops take no new queries meanwhile, so a flood is answered as fast as its breaches
    /// can be written instead of losing them.
    pub async fn wait_for_log(&self) {
        if let Some(j) = self.journal.as_ref().filter(|j| j.behind()) {
            j.catch_up().await;
        }
    }

    /// The upstreams in force and whether each is set aside (failed lately), for `/healthz`.
    pub fn upstream_health(&self) -> Vec<(SocketAddr, bool)> {
        self.snapshot.load().upstream.health()
    }

    /// The same for each forward zone's servers, with the zone.
    pub fn forward_health(&self) -> Vec<(String, SocketAddr, bool)> {
        self.snapshot.load().zones.forward_health()
    }

    /// The journal's counters, if queries are logged.
    pub fn journal_stats(&self) -> Option<&Arc<journal::Stats>> {
        self.journal.as_ref().map(Journal::stats)
    }

    /// The metrics this handler feeds.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Answers from memory if possible. `buf` receives the answer on [`Outcome::Reply`].
    ///
    /// UDP answers are logged into this thread's journal batch: the caller must call
    /// [`Handler::flush_log`] before it next awaits.
    pub fn answer_now(
        &self,
        packet: &[u8],
        src: SocketAddr,
        transport: Transport,
        received: Received,
        buf: &mut Vec<u8>,
    ) -> Outcome {
        let q = match wire::parse(packet) {
            Ok(q) => q,
            Err(r) => {
                self.metrics.malformed.inc();
                return match Writer::reject(buf, packet, &r) {
                    Some(_) => Outcome::Reply,
                    None => Outcome::Drop,
                };
            }
        };
        let snap = self.snapshot.load();
        let engine = &snap.engine;
        let addr = crate::clients::canonical(src.ip());
        let cx = Ctx::new(
            &snap,
            &q,
            addr,
            transport,
            received,
            transport == Transport::Udp,
        );
        if !engine
            .config()
            .client_networks
            .iter()
            .any(|n| n.contains(&addr))
        {
            self.error(
                &q,
                buf,
                rcode::REFUSED,
                Some((ede::PROHIBITED, "schoolgate: not a school network")),
            );
            return self.done(&cx, buf, Done::refused());
        }
        match self.limiter.check(cx.client.addr, received.at) {
            Verdict::Pass => {}
            verdict => {
                self.metrics.rate_limited.inc();
                snap.counters.count("ratelimited", None, cx.client.group);
                if let Verdict::Report(_) = verdict {
                    self.metrics.rate_limited_clients.inc();
                }
                if let (Verdict::Report(n), Some(j)) = (verdict, &self.journal) {
                    j.notice(Notice {
                        time: journal_time(engine),
                        kind: "rate_limited".into(),
                        count: n,
                        client: Some(cx.client.addr.to_string()),
                        detail: engine.client_name(&cx.client).map(str::to_string),
                    });
                }
                // Over UDP say nothing (no amplification); over TCP the client deserves a reason.
                if transport == Transport::Udp {
                    return Outcome::Drop;
                }
                self.error(&q, buf, rcode::REFUSED, None);
                return self.finish(&q, transport, buf);
            }
        }
        if q.qclass != 1 || matches!(q.qtype, rtype::AXFR | rtype::IXFR) {
            self.error(&q, buf, rcode::REFUSED, None);
            return self.done(&cx, buf, Done::refused());
        }
        let decision = engine.decide(&cx.client, &q.name, received.utc);
        match decision.action {
            Action::Nxdomain => {
                let mut w = Writer::respond(buf, &q, rcode::NXDOMAIN, false);
                if let Some(e) = q.edns {
                    w.opt(
                        e.dnssec_ok,
                        0,
                        Some((
                            ede::FILTERED,
                            "schoolgate: encrypted DNS and relays stay off on this network",
                        )),
                    );
                }
                self.done(&cx, buf, Done::decided(decision, None))
            }
            Action::Rewrite => {
                let written = match engine.rewrite_target(&decision.rule) {
                    Some(target) => self.rewrite(&q, target, false, buf),
                    None => {
                        self.error(&q, buf, rcode::SERVFAIL, None);
                        true
                    }
                };
                if !written {
                    self.metrics.cache_misses.inc();
                    return Outcome::Upstream;
                }
                self.done(&cx, buf, Done::decided(decision, None))
            }
            Action::Block => {
                self.sinkhole(engine, &q, &decision, None, buf);
                self.done(&cx, buf, Done::decided(decision, None))
            }
            Action::Allow => {
                if q.qtype == rtype::ANY {
                    self.minimal_any(&q, buf);
                    return self.done(&cx, buf, Done::decided(decision, None));
                }
                if q.name.is_root() {
                    self.error(&q, buf, rcode::REFUSED, None);
                    return self.done(&cx, buf, Done::refused());
                }
                if self.cache.serve(&q, buf, false, received.at).is_none() {
                    // Looked up only on a miss: answers from forward zones are cached like any.
                    if let Some(Route::Local { zone, answer }) = snap.zones.route(&q.name) {
                        self.local(&q, zone, answer, buf);
                        return self.done(&cx, buf, Done::decided(decision, None));
                    }
                    self.metrics.cache_misses.inc();
                    return Outcome::Upstream;
                }
                self.metrics.cache_hits.inc();
                match self.cloaked(engine, &cx.client, buf) {
                    Some((blocked, target)) => {
                        self.sinkhole(engine, &q, &blocked, Some(&target), buf);
                        self.done(&cx, buf, Done::decided(blocked, Some(&target)))
                    }
                    None => {
                        finish_edns(buf, &q, None);
                        self.done(&cx, buf, Done::decided(decision, None))
                    }
                }
            }
        }
    }

    /// Resolves an allowed name upstream and writes the answer (or SERVFAIL) into `buf`.
    pub async fn answer_upstream(
        &self,
        packet: &[u8],
        src: SocketAddr,
        transport: Transport,
        received: Received,
        buf: &mut Vec<u8>,
    ) -> Outcome {
        let Ok(q) = wire::parse(packet) else {
            return Outcome::Drop;
        };
        // One snapshot for the whole query, held across the lookup (an `Arc`, not a guard).
        let snap = self.snapshot.load_full();
        let addr = crate::clients::canonical(src.ip());
        let cx = Ctx::new(&snap, &q, addr, transport, received, false);
        let engine = &snap.engine;
        let decision = engine.decide(&cx.client, &q.name, received.utc);
        if decision.action == Action::Rewrite {
            return self.rewrite_upstream(&cx, decision, buf).await;
        }
        let metrics = &self.metrics;
        let upstream = match snap.zones.route(&q.name) {
            Some(Route::Forward { upstream, .. }) => upstream,
            _ => &snap.upstream,
        };
        let fetched = match self.in_flight.join(q.name.as_str(), q.qtype) {
            Turn::Follow(leader) => {
                metrics.upstream_joined.inc();
                inflight::follow(leader).await
            }
            Turn::Lead(lead) => {
                let cached = match upstream
                    .resolve(q.name.as_str(), q.qtype, |server, took, ok| {
                        metrics.upstream(server, took, ok)
                    })
                    .await
                {
                    Ok(answer) => {
                        let name = q.name.as_str().as_bytes();
                        self.cache.insert(name, q.qtype, &answer.bytes, answer.ttl);
                        true
                    }
                    Err(e) => {
                        tracing::debug!(name = q.name.as_str(), error = %e, "upstream failed");
                        false
                    }
                };
                lead.finish(cached);
                cached
            }
        };
        let done = if fetched {
            if self.cache.serve(&q, buf, true, Instant::now()).is_none() {
                self.error(&q, buf, rcode::SERVFAIL, None);
                return self.done(&cx, buf, Done::servfail());
            }
            match self.cloaked(engine, &cx.client, buf) {
                Some((blocked, target)) => {
                    self.sinkhole(engine, &q, &blocked, Some(&target), buf);
                    return self.done(&cx, buf, Done::decided(blocked, Some(&target)));
                }
                None => {
                    finish_edns(buf, &q, None);
                    Done::decided(decision, None)
                }
            }
        } else {
            match self.cache.serve(&q, buf, true, Instant::now()) {
                Some(Freshness::Stale) | Some(Freshness::Fresh) => {
                    finish_edns(
                        buf,
                        &q,
                        Some((
                            ede::STALE_ANSWER,
                            "schoolgate: upstream unreachable, stale answer",
                        )),
                    );
                    Done {
                        decision: Some(decision),
                        outcome: journal::Outcome::Stale,
                        via: None,
                    }
                }
                None => {
                    self.error(
                        &q,
                        buf,
                        rcode::SERVFAIL,
                        Some((
                            ede::NO_REACHABLE_AUTHORITY,
                            "schoolgate: upstream resolver failed",
                        )),
                    );
                    Done::servfail()
                }
            }
        };
        self.done(&cx, buf, done)
    }

    /// Resolves a safe host through the upstream, caches it under its own name, and answers.
    async fn rewrite_upstream(
        &self,
        cx: &Ctx<'_, '_>,
        decision: Decision,
        buf: &mut Vec<u8>,
    ) -> Outcome {
        let q = cx.q;
        let Some(target) = cx.snap.engine.rewrite_target(&decision.rule) else {
            self.error(q, buf, rcode::SERVFAIL, None);
            return self.done(cx, buf, Done::servfail());
        };
        let metrics = &self.metrics;
        match cx
            .snap
            .upstream
            .resolve(target, q.qtype, |server, took, ok| {
                metrics.upstream(server, took, ok)
            })
            .await
        {
            Ok(answer) => self
                .cache
                .insert(target.as_bytes(), q.qtype, &answer.bytes, answer.ttl),
            Err(e) => {
                tracing::debug!(name = target, error = %e, "upstream failed for safe search host")
            }
        }
        if !self.rewrite(q, target, true, buf) {
            self.error(
                q,
                buf,
                rcode::SERVFAIL,
                Some((
                    ede::NO_REACHABLE_AUTHORITY,
                    "schoolgate: upstream resolver failed",
                )),
            );
            return self.done(cx, buf, Done::servfail());
        }
        self.done(cx, buf, Done::decided(decision, None))
    }

    /// Writes a rewrite answer: CNAME to `target`, then (for A and AAAA) the target's cached
    /// records of the asked type. False when those records are not cached yet.
    fn rewrite(&self, q: &Query<'_>, target: &str, allow_stale: bool, buf: &mut Vec<u8>) -> bool {
        if !matches!(q.qtype, rtype::A | rtype::AAAA) {
            // Other types get the alias alone: the client asks the safe host itself, and no
            // HTTPS record can hand it the unsafe host's addresses.
            let mut w = Writer::respond(buf, q, rcode::NOERROR, false);
            w.cname(REWRITE_TTL, target);
            if let Some(e) = q.edns {
                w.opt(e.dnssec_ok, 0, None);
            }
            return true;
        }
        self.cache
            .read(target.as_bytes(), q.qtype, allow_stale, |bytes, aged| {
                let mut ttl = None::<u32>;
                wire::answers(bytes, |t, record_ttl, _| {
                    if t == q.qtype {
                        let aged = aged(record_ttl);
                        ttl = Some(ttl.map_or(aged, |m| m.min(aged)));
                    }
                });
                let rc = bytes.get(3).map_or(rcode::NOERROR, |b| b & 0x0F);
                let mut w = Writer::respond(buf, q, rc, false);
                let owner = w.cname(ttl.unwrap_or(REWRITE_TTL), target);
                wire::answers(bytes, |t, record_ttl, rdata| {
                    if t == q.qtype {
                        w.answer_at(owner, t, aged(record_ttl), rdata);
                    }
                });
                if let Some(e) = q.edns {
                    w.opt(e.dnssec_ok, 0, None);
                }
            })
            .is_some()
    }

    /// If an answer in `buf` leads by CNAME to a name this client may not reach, the decision
    /// that blocks it and the target's name.
    fn cloaked(
        &self,
        engine: &Engine,
        client: &ClientId,
        buf: &[u8],
    ) -> Option<(Decision, String)> {
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

    fn sinkhole(
        &self,
        engine: &Engine,
        q: &Query<'_>,
        d: &Decision,
        via: Option<&str>,
        buf: &mut Vec<u8>,
    ) {
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
            let category = engine.block_reason(d);
            let mut text = String::with_capacity(64);
            let _ = write!(text, "schoolgate: blocked, category {category}");
            if let Some(target) = via {
                let _ = write!(text, " (via CNAME {target})");
            }
            w.opt(e.dnssec_ok, 0, Some((ede::BLOCKED, &text)));
        }
    }

    /// A name in a built-in zone (see [`crate::zones`]), answered without asking anyone. A
    /// negative answer carries the zone's SOA, without which devices may not cache it (RFC 2308).
    fn local(&self, q: &Query<'_>, zone: &str, local: Local, buf: &mut Vec<u8>) {
        let code = match local {
            Local::NoSuchName => rcode::NXDOMAIN,
            Local::Loopback | Local::NoRecords => rcode::NOERROR,
        };
        let mut w = Writer::respond(buf, q, code, true);
        match (local, q.qtype) {
            (Local::Loopback, rtype::A) => w.answer(rtype::A, LOCAL_TTL, &[127, 0, 0, 1]),
            (Local::Loopback, rtype::AAAA) => w.answer(
                rtype::AAAA,
                LOCAL_TTL,
                &std::net::Ipv6Addr::LOCALHOST.octets(),
            ),
            _ => w.soa(zone, LOCAL_NEGATIVE_TTL),
        }
        if let Some(e) = q.edns {
            w.opt(e.dnssec_ok, 0, None);
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

    /// Counts, logs and size-checks an answer that is ready in `buf`.
    fn done(&self, cx: &Ctx<'_, '_>, buf: &mut Vec<u8>, done: Done<'_>) -> Outcome {
        let (snap, client, q) = (cx.snap, &cx.client, cx.q);
        let (transport, received) = (cx.transport, cx.received);
        let outcome = self.finish(q, transport, buf);
        let latency = received.at.elapsed();
        self.metrics.latency.observe(latency.as_secs_f64());
        let action = match done.outcome {
            journal::Outcome::Decided => done.decision.map_or("allow", |d| d.action.as_str()),
            journal::Outcome::Refused => "refused",
            journal::Outcome::ServFail => "servfail",
            journal::Outcome::Stale => "stale",
        };
        let group = done.decision.map_or(client.group, |d| d.group);
        snap.counters
            .count(action, done.decision.and_then(|d| d.category), group);
        if let Some(j) = &self.journal {
            let event = Event {
                time: received.wall,
                engine: &snap.engine,
                client: *client,
                name: q.name.as_str(),
                qtype: q.qtype,
                decision: done.decision,
                outcome: done.outcome,
                rcode: buf.get(3).map_or(0, |b| b & 0x0F),
                latency,
                via: done.via,
            };
            if cx.deferred {
                j.log_deferred(&event);
            } else {
                j.log(&event);
            }
        }
        outcome
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

impl Done<'_> {
    fn decided(decision: Decision, via: Option<&str>) -> Done<'_> {
        Done {
            decision: Some(decision),
            outcome: journal::Outcome::Decided,
            via,
        }
    }

    fn refused() -> Done<'static> {
        Done {
            decision: None,
            outcome: journal::Outcome::Refused,
            via: None,
        }
    }

    fn servfail() -> Done<'static> {
        Done {
            decision: None,
            outcome: journal::Outcome::ServFail,
            via: None,
        }
    }
}

fn journal_time(engine: &Engine) -> String {
    journal::format_time(SystemTime::now(), &engine.config().time_zone)
}
