//! Prometheus metrics, and the counters the query path bumps without looking anything up.
//!
//! Labelled counters normally cost a hash lookup per increment. The query path instead uses a
//! [`QueryCounters`] table built once per engine snapshot: one pre-resolved counter per
//! (action, category, group), indexed by numbers the decision already carries.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::journal::Stats;
use crate::policy::Engine;

/// Every action a query can end in, in label order.
pub const ACTIONS: &[&str] = &[
    "allow",
    "block",
    "rewrite",
    "nxdomain",
    "refused",
    "servfail",
    "stale",
    "ratelimited",
];

/// All of schoolgate's metrics, registered in one registry.
pub struct Metrics {
    registry: Registry,
    queries: IntCounterVec,
    /// Answer latency (receipt to send) in seconds.
    pub latency: Histogram,
    /// Upstream answers served from the cache.
    pub cache_hits: IntCounter,
    /// Allowed names that had to go upstream.
    pub cache_misses: IntCounter,
    upstream_errors: IntCounterVec,
    upstream_latency: HistogramVec,
    list_names: IntGaugeVec,
    reloads: IntCounterVec,
    last_good_load: IntGauge,
    /// Packets that could not be parsed.
    pub malformed: IntCounter,
    /// Queries refused or dropped by per-client rate limiting.
    pub rate_limited: IntCounter,
    /// UDP answers the kernel refused to send (unreachable or filtered destination).
    pub udp_replies_dropped: IntCounter,
    /// Queries the kernel dropped at a full listen socket before they were read.
    pub udp_dropped: IntCounter,
    /// Never-seen names dropped because a socket already had its most lookups in flight.
    pub upstream_busy: IntCounter,
    /// Queries that waited for a lookup of the same name already on its way upstream.
    pub upstream_joined: IntCounter,
    /// Packets taken by the XDP fast path.
    pub xdp_packets: IntCounter,
    /// Queries the kernel dropped at the fast path's full receive ring.
    pub xdp_dropped: IntCounter,
    /// Times a client went over its limit (at most once a minute per client).
    pub rate_limited_clients: IntCounter,
    log_records: IntCounterVec,
    log_errors: IntCounter,
    log_pauses: IntCounter,
    log_write_longest: Gauge,
    journal: Option<Arc<Stats>>,
    last_journal: std::sync::Mutex<[u64; 4]>,
}

/// Registers a metric built from constant names; either failing is a bug, caught by any test
/// that starts the server.
fn registered<C: Collector + Clone + 'static>(r: &Registry, made: prometheus::Result<C>) -> C {
    let c = made.expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(r, IntCounterVec::new(Opts::new(name, help), labels))
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    registered(r, IntCounter::new(name, help))
}

impl Metrics {
    /// Registers everything. `journal` feeds the log counters at scrape time.
    pub fn new(journal: Option<Arc<Stats>>) -> Self {
        let r = Registry::new();
        let latency = registered(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "schoolgate_answer_duration_seconds",
                    "Time from receiving a query to sending its answer",
                )
                .buckets(prometheus::exponential_buckets(0.000_005, 2.5, 12).expect("buckets")),
            ),
        );
        let upstream_latency = registered(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "schoolgate_upstream_duration_seconds",
                    "Time the upstream resolver took to answer",
                )
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).expect("buckets")),
                &["upstream"],
            ),
        );
        let list_names = registered(
            &r,
            IntGaugeVec::new(
                Opts::new("schoolgate_list_names", "Names in each compiled list"),
                &["list"],
            ),
        );
        let last_good_load = registered(
            &r,
            IntGauge::new(
                "schoolgate_last_good_load_timestamp_seconds",
                "Unix time the lists in force were loaded",
            ),
        );
        let log_write_longest = registered(
            &r,
            Gauge::new(
            "schoolgate_log_write_longest_seconds",
            "The longest one write of a log's lines has taken since start (the kernel and the disk)",
        ),
        );
        Metrics {
            queries: counter_vec(
                &r,
                "schoolgate_queries_total",
                "Queries answered, by outcome, category and group",
                &["action", "category", "group"],
            ),
            latency,
            cache_hits: counter(
                &r,
                "schoolgate_cache_hits_total",
                "Allowed queries answered from the cache",
            ),
            cache_misses: counter(
                &r,
                "schoolgate_cache_misses_total",
                "Allowed queries forwarded upstream",
            ),
            upstream_errors: counter_vec(
                &r,
                "schoolgate_upstream_errors_total",
                "Upstream lookups that failed or timed out",
                &["upstream"],
            ),
            upstream_latency,
            list_names,
            reloads: counter_vec(
                &r,
                "schoolgate_reloads_total",
                "List and config reloads, by result",
                &["result"],
            ),
            last_good_load,
            malformed: counter(
                &r,
                "schoolgate_malformed_packets_total",
                "Packets that were not valid DNS queries",
            ),
            rate_limited: counter(
                &r,
                "schoolgate_rate_limited_total",
                "Queries over a client's rate limit",
            ),
            udp_replies_dropped: counter(
                &r,
                "schoolgate_udp_replies_dropped_total",
                "UDP answers the kernel refused to send (unreachable or filtered destination)",
            ),
            udp_dropped: counter(
                &r,
                "schoolgate_udp_dropped_total",
                "UDP queries the kernel dropped before schoolgate read them (a listen socket's receive buffer was full)",
            ),
            upstream_busy: counter(
                &r,
                "schoolgate_upstream_busy_dropped_total",
                "Queries dropped because too many upstream lookups were already in flight",
            ),
            upstream_joined: counter(
                &r,
                "schoolgate_upstream_joined_total",
                "Queries answered by a lookup of the same name already on its way upstream, not one of their own",
            ),
            xdp_packets: counter(
                &r,
                "schoolgate_xdp_packets_total",
                "UDP queries taken by the XDP fast path rather than a socket",
            ),
            xdp_dropped: counter(
                &r,
                "schoolgate_xdp_dropped_total",
                "UDP queries the kernel dropped before the XDP fast path read them (its receive ring was full)",
            ),
            rate_limited_clients: counter(
                &r,
                "schoolgate_rate_limited_clients_total",
                "Clients found over their rate limit (once a minute each at most)",
            ),
            log_records: counter_vec(
                &r,
                "schoolgate_log_records_total",
                "Log records by log and fate",
                &["log", "result"],
            ),
            log_errors: counter(
                &r,
                "schoolgate_log_write_errors_total",
                "Failed log writes (full disk, unwritable directory)",
            ),
            log_pauses: counter(
                &r,
                "schoolgate_log_pauses_total",
                "Times a query loop stopped taking queries until the log writer caught up on breaches",
            ),
            log_write_longest,
            journal,
            last_journal: std::sync::Mutex::new([0; 4]),
            registry: r,
        }
    }

    /// Pre-resolves the query counters for an engine's categories and groups.
    pub fn counters_for(&self, engine: &Engine) -> QueryCounters {
        let categories: Vec<&str> = std::iter::once("none")
            .chain(engine.categories().iter().map(|c| c.name.as_str()))
            .collect();
        let groups: Vec<&str> = (0..engine.group_count())
            .map(|g| engine.group_name(g as u16))
            .collect();
        let mut table = Vec::with_capacity(ACTIONS.len() * categories.len() * groups.len());
        for a in ACTIONS {
            for c in &categories {
                for g in &groups {
                    table.push(self.queries.with_label_values(&[a, c, g]));
                }
            }
        }
        for l in engine.lists() {
            self.list_names
                .with_label_values(&[&l.name])
                .set(l.len() as i64);
        }
        QueryCounters {
            table,
            categories: categories.len(),
            groups: groups.len(),
        }
    }

    /// Records a reload's outcome.
    pub fn reloaded(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        if ok {
            self.mark_loaded();
        }
    }

    /// Stamps the time the lists in force were loaded.
    pub fn mark_loaded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_good_load.set(now as i64);
    }

    /// Records one upstream lookup.
    pub fn upstream(&self, server: &SocketAddr, took: Duration, ok: bool) {
        let label = server.to_string();
        self.upstream_latency
            .with_label_values(&[&label])
            .observe(took.as_secs_f64());
        if !ok {
            self.upstream_errors.with_label_values(&[&label]).inc();
        }
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        self.sync_journal();
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Copies the journal's atomics into the registry's counters.
    fn sync_journal(&self) {
        let Some(stats) = &self.journal else { return };
        let now = [
            stats.access_written.load(Ordering::Relaxed),
            stats.access_dropped.load(Ordering::Relaxed),
            stats.breach_written.load(Ordering::Relaxed),
            stats.breach_lost.load(Ordering::Relaxed),
        ];
        let Ok(mut last) = self.last_journal.lock() else {
            return;
        };
        let labels = [
            ["access", "written"],
            ["access", "dropped"],
            ["breach", "written"],
            ["breach", "lost"],
        ];
        for i in 0..4 {
            self.log_records
                .with_label_values(&labels[i])
                .inc_by(now[i].saturating_sub(last[i]));
        }
        *last = now;
        let errors = stats.write_errors.load(Ordering::Relaxed);
        self.log_errors
            .inc_by(errors.saturating_sub(self.log_errors.get()));
        let pauses = stats.paused.load(Ordering::Relaxed);
        self.log_pauses
            .inc_by(pauses.saturating_sub(self.log_pauses.get()));
        let longest = stats.write_longest_ns.load(Ordering::Relaxed);
        self.log_write_longest.set(longest as f64 / 1e9);
    }
}

/// Counters indexed by (action, category, group) for one engine snapshot.
pub struct QueryCounters {
    table: Vec<IntCounter>,
    categories: usize,
    groups: usize,
}

impl QueryCounters {
    /// Counts one query. `category` is the engine's category index, if any.
    #[inline]
    pub fn count(&self, action: &str, category: Option<u8>, group: u16) {
        let a = ACTIONS.iter().position(|x| *x == action).unwrap_or(0);
        let c = category.map_or(0, |c| c as usize + 1);
        let g = group as usize;
        if c < self.categories && g < self.groups {
            self.table[(a * self.categories + c) * self.groups + g].inc();
        }
    }
}
