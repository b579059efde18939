//! Per-client access and breach logs, written off the query path.
//!
//! The query path describes each answered query as a borrowed [`Event`] and hands it to
//! [`Journal::log`] (one record, sent at once) or [`Journal::log_deferred`] (appended to this
//! thread's batch, sent by [`flush_deferred`] before the caller next waits: the UDP loop answers
//! a socket's backlog and then sends one batch). A batch holds its records compactly (the names
//! share one buffer) and is sent over one channel to a dedicated writer thread, which turns them
//! into JSON lines every few milliseconds, rotates files at local midnight, compresses finished
//! days and deletes days past their retention.
//!
//! Logging itself never waits. Access records beyond the configured queue are dropped and
//! counted when the writer falls behind. Breach records are not dropped for a slow writer: past
//! [`BREACH_PAUSE_AT`] queued breaches the query loops (UDP and TCP) stop taking queries until
//! the writer catches up ([`Journal::catch_up`]), so a flood is answered as fast as its breaches
//! can be written.
//! Only a writer stuck for longer than [`BREACH_WAIT`] (a hung disk) lets breaches queue on, up to
//! [`BREACH_LOSE_AT`], past which they are counted lost rather than exhaust memory.

mod record;
mod writer;

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};

pub use record::{read_lines, Notice, Record, Stream};
pub use writer::format_time;

use crate::alerts::Alerter;
use crate::clients::ClientId;
use crate::config::Logs;
use crate::policy::{Decision, Engine};
use crate::timezone::Zone;

/// What the server did with a query, beyond the policy decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered as the decision said (allow, block, rewrite ...).
    Decided,
    /// Refused: not a school network, or rate-limited, or an unsupported class/type.
    Refused,
    /// The upstream failed and nothing was cached.
    ServFail,
    /// Served from cache past its TTL because the upstream failed.
    Stale,
}

/// One answered query, borrowed from the query path. Carries the engine snapshot that decided
/// it, so names and list lines are looked up by the writer, not on the query path.
#[derive(Clone, Copy)]
pub struct Event<'a> {
    /// When it arrived.
    pub time: SystemTime,
    /// The engine that decided.
    pub engine: &'a Arc<Engine>,
    /// Who asked.
    pub client: ClientId,
    /// What for (normalised).
    pub name: &'a str,
    /// Query type.
    pub qtype: u16,
    /// The policy decision, if one was made.
    pub decision: Option<Decision>,
    /// What the server did.
    pub outcome: Outcome,
    /// Response code sent.
    pub rcode: u8,
    /// Time from receipt to answer.
    pub latency: Duration,
    /// The CNAME target that caused a block (cloaking).
    pub via: Option<&'a str>,
}

impl Event<'_> {
    /// Blocked queries go to the breach log as well.
    pub fn is_breach(&self) -> bool {
        is_breach(self.outcome, self.decision)
    }
}

/// The one test of what goes to the breach log, for events and for batched records alike.
fn is_breach(outcome: Outcome, decision: Option<Decision>) -> bool {
    outcome == Outcome::Decided && decision.is_some_and(|d| d.action.is_breach())
}

/// Counters the metrics endpoint and the daily summary report.
#[derive(Default)]
pub struct Stats {
    /// Access records written.
    pub access_written: AtomicU64,
    /// Access records dropped because the writer could not keep up or the disk failed.
    pub access_dropped: AtomicU64,
    /// Breach records written.
    pub breach_written: AtomicU64,
    /// Breach records lost: only when the writer is stuck (see [`BREACH_LOSE_AT`]) or the disk
    /// stays unwritable past the writer's in-memory bound.
    pub breach_lost: AtomicU64,
    /// Write errors (full disk, unwritable directory).
    pub write_errors: AtomicU64,
    /// Breach records held in memory waiting for the disk.
    pub breach_pending: AtomicU64,
    /// Times a query loop paused for the writer to catch up on breaches.
    pub paused: AtomicU64,
    /// The longest one write of a log's lines has taken (the kernel, and waiting for the disk),
    /// in nanoseconds: a slow or stalled disk shows here before access records are dropped.
    pub write_longest_ns: AtomicU64,
    /// The last write error, for `/healthz` and logs.
    pub last_error: Mutex<Option<String>>,
}

enum Msg {
    Notice(Notice),
    Flush(Sender<()>),
    Alerts(Option<Alerter>),
}

/// Records one thread logged, decided by one engine. The names share `text`.
#[derive(Default)]
struct Batch {
    engine: Option<Arc<Engine>>,
    records: Vec<Compact>,
    text: String,
    breaches: usize,
}

/// An [`Event`] with its strings moved into the batch's buffer, and its times narrowed
/// (nanoseconds since 1970, microseconds of latency): 96 bytes a record, not 112, for
/// what a backlog holds while the writer catches up.
struct Compact {
    time_ns: u64,
    client: ClientId,
    qtype: u16,
    decision: Option<Decision>,
    outcome: Outcome,
    rcode: u8,
    latency_us: u32,
    name: (u32, u32),
    via: Option<(u32, u32)>,
}

/// Appends `s` to a batch's shared buffer; where it went.
fn keep(text: &mut String, s: &str) -> (u32, u32) {
    let at = text.len() as u32;
    text.push_str(s);
    (at, text.len() as u32)
}

impl Batch {
    fn push(&mut self, ev: &Event<'_>) {
        let name = keep(&mut self.text, ev.name);
        let via = ev.via.map(|v| keep(&mut self.text, v));
        if ev.is_breach() {
            self.breaches += 1;
            if let Some(d) = &ev.decision {
                ev.engine.prefetch_origin(&d.rule);
            }
        }
        self.records.push(Compact {
            time_ns: ev
                .time
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            client: ev.client,
            qtype: ev.qtype,
            decision: ev.decision,
            outcome: ev.outcome,
            rcode: ev.rcode,
            latency_us: ev.latency.as_micros().min(u128::from(u32::MAX)) as u32,
            name,
            via,
        });
    }

    /// A copy of just the breach records, in buffers their own size, leaving this batch empty
    /// for reuse. A full batch holds about 40 KB; once the writer is so far behind that access
    /// records are cut, queuing that much for the few breaches of each batch grew the server by
    /// megabytes in a second's stall.
    fn take_breaches(&mut self) -> Batch {
        let breaches = || {
            self.records
                .iter()
                .filter(|r| is_breach(r.outcome, r.decision))
        };
        let len = |(a, b): (u32, u32)| (b - a) as usize;
        let bytes = breaches().map(|r| len(r.name) + r.via.map_or(0, len)).sum();
        let mut out = Batch {
            engine: self.engine.clone(),
            records: Vec::with_capacity(self.breaches),
            text: String::with_capacity(bytes),
            breaches: self.breaches,
        };
        for r in breaches() {
            let name = keep(&mut out.text, self.text_at(r.name));
            let via = r.via.map(|v| keep(&mut out.text, self.text_at(v)));
            out.records.push(Compact { name, via, ..*r });
        }
        self.clear();
        out
    }

    fn text_at(&self, (a, b): (u32, u32)) -> &str {
        self.text.get(a as usize..b as usize).unwrap_or("")
    }

    /// The batch's records as events, for the writer.
    fn events(&self) -> impl Iterator<Item = Event<'_>> {
        let engine = self.engine.as_ref();
        let text = |at| self.text_at(at);
        self.records.iter().filter_map(move |r| {
            Some(Event {
                time: UNIX_EPOCH + Duration::from_nanos(r.time_ns),
                engine: engine?,
                client: r.client,
                name: text(r.name),
                qtype: r.qtype,
                decision: r.decision,
                outcome: r.outcome,
                rcode: r.rcode,
                latency: Duration::from_micros(r.latency_us.into()),
                via: r.via.map(text),
            })
        })
    }

    fn clear(&mut self) {
        self.engine = None;
        self.records.clear();
        self.text.clear();
        self.breaches = 0;
    }
}

/// Records a batch holds before it is sent even without a flush.
const BATCH_MAX: usize = 256;
/// Emptied batches kept for reuse. A batch keeps its capacity (about 40 KB when full), so
/// keeping every batch a burst needed held 2-3 MB of heap for good; a few cover the steady
/// flow of the two UDP loops, and a burst beyond them allocates and frees.
const SPARE_BATCHES: usize = 8;

/// What the handles share with each other and the writer's counters.
struct Shared {
    batches: Sender<Batch>,
    /// Emptied batches coming back, so steady logging allocates nothing.
    spare: Receiver<Batch>,
    control: Sender<Msg>,
    stats: Arc<Stats>,
    access_limit: usize,
    /// Access-only records sent and not yet formatted.
    queued_access: AtomicUsize,
    /// Breach records sent and not yet formatted.
    queued_breaches: AtomicUsize,
    /// Set when a pause for the writer timed out, cleared when the writer drains below the
    /// pause bound again: a stuck writer must not stall every answer.
    stuck: AtomicBool,
    bounds: BreachBounds,
}

/// When the query path pauses for the writer, how long it waits, and when breaches are lost.
#[derive(Clone, Copy)]
struct BreachBounds {
    pause_at: usize,
    wait: Duration,
    lose_at: usize,
}

impl Default for BreachBounds {
    fn default() -> Self {
        BreachBounds {
            pause_at: BREACH_PAUSE_AT,
            wait: BREACH_WAIT,
            lose_at: BREACH_LOSE_AT,
        }
    }
}

impl Shared {
    fn take_batch(&self) -> Batch {
        self.spare.try_recv().unwrap_or_default()
    }

    /// Sends a batch, first cutting what the queue bounds allow no room for: access records
    /// when the writer is that far behind, breaches only past [`BREACH_LOSE_AT`]. When access
    /// records were cut, a copy of the breaches goes and the emptied batch comes back for reuse.
    fn send(&self, mut batch: Batch) -> Option<Batch> {
        let access = batch.records.len() - batch.breaches;
        let mut emptied = None;
        if access > 0 && self.queued_access.load(Ordering::Relaxed) + access > self.access_limit {
            let breaches = batch.take_breaches();
            emptied = Some(std::mem::replace(&mut batch, breaches));
            self.stats
                .access_dropped
                .fetch_add(access as u64, Ordering::Relaxed);
        }
        let access = batch.records.len() - batch.breaches;
        if batch.breaches > 0
            && self.queued_breaches.load(Ordering::Relaxed) + batch.breaches > self.bounds.lose_at
        {
            self.stats
                .breach_lost
                .fetch_add(batch.breaches as u64, Ordering::Relaxed);
            batch.records.clear();
            batch.breaches = 0;
        }
        if !batch.records.is_empty() {
            self.queued_access.fetch_add(access, Ordering::Relaxed);
            self.queued_breaches
                .fetch_add(batch.breaches, Ordering::Relaxed);
            let _ = self.batches.send(batch);
        }
        emptied
    }
}

/// The handle the server holds. Cloning is cheap.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

/// This thread's deferred records and the journal they are for.
#[derive(Default)]
struct Deferred {
    journal: Option<Arc<Shared>>,
    batch: Batch,
}

thread_local! {
    static DEFERRED: RefCell<Deferred> = RefCell::default();
}

impl Deferred {
    /// Sends the batch (if any) to its journal and starts an empty one.
    fn send(&mut self) {
        if let Some(shared) = self.journal.take() {
            let batch = std::mem::take(&mut self.batch);
            self.batch = shared.send(batch).unwrap_or_else(|| shared.take_batch());
        }
    }
}

/// Sends the records this thread deferred. Call it before the task that logged them waits.
pub fn flush_deferred() {
    DEFERRED.with(|d| d.borrow_mut().send());
}

impl Journal {
    /// Starts the writer thread for `logs` in the school's time zone. The thread drains and
    /// exits when every handle is dropped; [`Journal::flush`] is the way to wait for the disk.
    pub fn start(logs: &Logs, tz: Zone) -> std::io::Result<Journal> {
        Self::start_with_alerts(logs, tz, None)
    }

    /// As [`Journal::start`], and offers every breach to `alerts` on the writer thread.
    pub fn start_with_alerts(
        logs: &Logs,
        tz: Zone,
        alerts: Option<Alerter>,
    ) -> std::io::Result<Journal> {
        Self::start_bounded(logs, tz, alerts, BreachBounds::default())
    }

    fn start_bounded(
        logs: &Logs,
        tz: Zone,
        alerts: Option<Alerter>,
        bounds: BreachBounds,
    ) -> std::io::Result<Journal> {
        writer::prepare_dir(&logs.dir)?;
        let (batches, batch_rx) = crossbeam_channel::unbounded();
        let (spare_tx, spare) = crossbeam_channel::bounded(SPARE_BATCHES);
        let (control, control_rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared {
            batches,
            spare,
            control,
            stats: stats.clone(),
            access_limit: logs.queue,
            queued_access: AtomicUsize::new(0),
            queued_breaches: AtomicUsize::new(0),
            stuck: AtomicBool::new(false),
            bounds,
        });
        let w = writer::Writer::new(logs.clone(), tz, stats);
        let queues = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                crate::sched::short_slices();
                run(Drain {
                    w,
                    batches: batch_rx,
                    spare: spare_tx,
                    control: control_rx,
                    alerts,
                    shared: queues,
                })
            })?;
        Ok(Journal { shared })
    }

    /// Whether the writer is so far behind on breaches that the query loops should take no more
    /// queries until it catches up. False while the writer is stuck (see [`Journal::catch_up`]).
    pub fn behind(&self) -> bool {
        let s = &self.shared;
        s.queued_breaches.load(Ordering::Relaxed) >= s.bounds.pause_at
            && !s.stuck.load(Ordering::Relaxed)
    }

    /// Waits until the writer is back under the pause bound, or [`BREACH_WAIT`] has passed. A
    /// writer that does not catch up in that time is stuck (a hung disk): the query path stops
    /// pausing for it until it drains, so the school keeps its DNS and breaches queue on up to
    /// [`BREACH_LOSE_AT`].
    pub async fn catch_up(&self) {
        let s = &self.shared;
        s.stats.paused.fetch_add(1, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + s.bounds.wait;
        while s.queued_breaches.load(Ordering::Relaxed) >= s.bounds.pause_at {
            if tokio::time::Instant::now() >= deadline {
                s.stuck.store(true, Ordering::Relaxed);
                tracing::warn!(
                    "the log writer has not written breaches for {:?}: answering on without \
                     waiting for it (check the log disk)",
                    s.bounds.wait
                );
                return;
            }
            tokio::time::sleep(DRAIN_EVERY).await;
        }
    }

    /// Logs a query now. Never blocks; a breach is never dropped.
    pub fn log(&self, event: &Event<'_>) {
        let mut batch = self.shared.take_batch();
        batch.engine = Some(event.engine.clone());
        batch.push(event);
        self.shared.send(batch);
    }

    /// Logs a query into this thread's batch, sent when it is full or at [`flush_deferred`].
    pub fn log_deferred(&self, event: &Event<'_>) {
        DEFERRED.with(|d| {
            let mut d = d.borrow_mut();
            let d = &mut *d;
            let same_journal = d
                .journal
                .as_ref()
                .is_some_and(|j| Arc::ptr_eq(j, &self.shared));
            let same_engine = d
                .batch
                .engine
                .as_ref()
                .is_some_and(|e| Arc::ptr_eq(e, event.engine));
            if !(same_journal && same_engine) || d.batch.records.len() >= BATCH_MAX {
                d.send();
                d.journal = Some(self.shared.clone());
                d.batch.engine = Some(event.engine.clone());
            }
            d.batch.push(event);
        });
    }

    /// Records a notice (rate limiting, etc.) in the day's notice file.
    pub fn notice(&self, notice: Notice) {
        let _ = self.shared.control.send(Msg::Notice(notice));
    }

    /// Hands breaches to `alerts` from now on (after a reload changed the alert settings); the
    /// previous alerter's thread delivers what it has queued, then ends.
    pub fn replace_alerts(&self, alerts: Option<Alerter>) {
        let _ = self.shared.control.send(Msg::Alerts(alerts));
    }

    /// Writes everything queued so far and waits (at most `timeout`) until it is on disk.
    pub fn flush(&self, timeout: Duration) -> bool {
        flush_deferred();
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.shared.control.send(Msg::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }

    /// The writer's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.shared.stats
    }
}

/// Breach records waiting for the writer at which the query loops pause. A few seconds of a
/// flood: reached only when the writer has lost its core to the query path.
pub const BREACH_PAUSE_AT: usize = 100_000;
/// How long a pause waits for the writer before calling it stuck.
pub const BREACH_WAIT: Duration = Duration::from_secs(1);
/// Breach records waiting for a stuck writer past which new ones are counted lost: about
/// 50 MB of records.
pub const BREACH_LOSE_AT: usize = 400_000;

/// How often the writer wakes to drain the queues and write. The query path never wakes it: a
/// wake-up per query would cost a context switch per query on a two-core server. Short enough
/// that each drain is small: on a core it shares with the server, a drain holds up answers for
/// as long as it runs (measured p99 at 60,000 blocked queries a second: 5 ms with 250 ms drains,
/// 0.7 ms with 10 ms; at 100,000 a second with 10 ms drains, 0.9-1.9 ms, with 2 ms drains
/// 0.4-1.5 ms, five hundred wake-ups a second costing nothing measurable).
const DRAIN_EVERY: Duration = Duration::from_millis(2);

/// The writer thread's side of the channels.
struct Drain {
    w: writer::Writer,
    batches: Receiver<Batch>,
    spare: Sender<Batch>,
    control: Receiver<Msg>,
    alerts: Option<Alerter>,
    shared: std::sync::Weak<Shared>,
}

fn run(mut d: Drain) {
    let tick = crossbeam_channel::tick(DRAIN_EVERY);
    loop {
        crossbeam_channel::select! {
            recv(d.control) -> msg => match msg {
                Ok(Msg::Notice(n)) => d.w.notice(&n),
                Ok(Msg::Alerts(a)) => d.alerts = a,
                Ok(Msg::Flush(done)) => {
                    d.drain();
                    d.w.flush_now();
                    let _ = done.send(());
                }
                Err(_) => break,
            },
            recv(tick) -> _ => {
                d.drain();
                d.w.tick();
            }
        }
    }
    d.drain();
    d.w.flush_now();
}

impl Drain {
    fn drain(&mut self) {
        for mut batch in self.batches.try_iter() {
            for ev in batch.events() {
                if ev.is_breach() {
                    // Alerts are decided before the breach is written, so a slow disk never
                    // delays them.
                    if let Some(a) = &mut self.alerts {
                        a.offer(&ev);
                    }
                    self.w.breach(&ev);
                } else {
                    self.w.access(&ev);
                }
            }
            if let Some(shared) = self.shared.upgrade() {
                let access = batch.records.len() - batch.breaches;
                shared.queued_access.fetch_sub(access, Ordering::Relaxed);
                let before = shared
                    .queued_breaches
                    .fetch_sub(batch.breaches, Ordering::Relaxed);
                if before - batch.breaches < shared.bounds.pause_at {
                    shared.stuck.store(false, Ordering::Relaxed);
                }
            }
            batch.clear();
            let _ = self.spare.try_send(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::domain::QueryName;
    use crate::timezone::london;
    use chrono::Utc;

    fn school() -> (tempfile::TempDir, Arc<Engine>, Logs) {
        let dir = tempfile::tempdir().unwrap();
        let lists = dir.path().join("lists");
        std::fs::create_dir_all(&lists).unwrap();
        std::fs::write(lists.join("adult.txt"), "# adult\nbad.example\n").unwrap();
        let text = "[lists]\ndir = \"lists\"\ncache_dir = \"cache\"\n\
                    [[category]]\nname = \"adult\"\nfiles = [\"adult.txt\"]\n\
                    [groups.default]\nblock = [\"adult\"]\n";
        let config = Config::from_toml(&dir.path().join("schoolgate.toml"), text).unwrap();
        let engine = Arc::new(Engine::load(Arc::new(config)).unwrap().engine);
        let logs = Logs {
            dir: dir.path().join("logs"),
            access_retention_days: 30,
            breach_retention_days: 365,
            queue: 1024,
        };
        (dir, engine, logs)
    }

    fn lines(logs: &Logs, prefix: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&logs.dir).unwrap().flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                read_lines::<serde_json::Value>(&entry.path(), |v| out.push(v)).unwrap();
            }
        }
        out
    }

    fn ask<'a>(engine: &'a Arc<Engine>, name: &'a QueryName) -> Event<'a> {
        let client = engine.identify("127.0.0.9".parse().unwrap());
        Event {
            time: SystemTime::now(),
            engine,
            client,
            name: name.as_str(),
            qtype: 1,
            decision: Some(engine.decide(&client, name, Utc::now())),
            outcome: Outcome::Decided,
            rcode: 0,
            latency: Duration::from_micros(40),
            via: None,
        }
    }

    #[test]
    fn the_writer_asks_for_short_slices_where_the_kernel_has_them() {
        let slice = |task: &std::path::Path| {
            let sched = std::fs::read_to_string(task.join("sched")).ok()?;
            let line = sched.lines().find(|l| l.starts_with("se.slice "))?;
            line.split(':').nth(1)?.trim().parse::<u64>().ok()
        };
        if slice(std::path::Path::new("/proc/thread-self")).is_none() {
            eprintln!("no custom slices in this kernel; nothing to check");
            return;
        }
        let (_dir, _engine, logs) = school();
        let _journal = Journal::start(&logs, london()).unwrap();
        std::thread::sleep(DRAIN_EVERY * 5);
        let writers: Vec<u64> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.path();
                let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                (comm.trim() == "journal").then(|| slice(&t)).flatten()
            })
            .collect();
        assert!(!writers.is_empty());
        assert!(
            writers
                .iter()
                .all(|&s| s == crate::sched::SLICE.as_nanos() as u64),
            "{writers:?}"
        );
    }

    #[test]
    fn deferred_records_are_sent_at_the_flush_and_breaches_name_their_list_line() {
        let (_dir, engine, logs) = school();
        let journal = Journal::start(&logs, london()).unwrap();
        let allowed = QueryName::parse("good.example").unwrap();
        let blocked = QueryName::parse("www.bad.example").unwrap();
        journal.log_deferred(&ask(&engine, &allowed));
        journal.log_deferred(&ask(&engine, &blocked));
        std::thread::sleep(DRAIN_EVERY * 5);
        let (tx, rx) = crossbeam_channel::bounded(1);
        journal.shared.control.send(Msg::Flush(tx)).unwrap();
        rx.recv().unwrap();
        assert!(lines(&logs, "access").is_empty(), "sent before the flush");
        flush_deferred();
        assert!(journal.flush(Duration::from_secs(5)));
        let access = lines(&logs, "access");
        assert_eq!(access.len(), 2);
        assert_eq!(access[0]["name"], "good.example");
        assert_eq!(access[0]["client"], "127.0.0.9");
        assert_eq!(access[0]["latency_us"], 40);
        let breach = lines(&logs, "breach");
        assert_eq!(breach.len(), 1);
        assert_eq!(breach[0]["name"], "www.bad.example");
        assert_eq!(breach[0]["rule"], "bad.example");
        assert_eq!(breach[0]["list"], "adult");
        let source = breach[0]["source"].as_str().unwrap();
        assert!(source.ends_with("adult.txt:2"), "{source}");
        // The breach line is the access line with the list fields added, the rest the same.
        let (access, breach) = (
            access[1].as_object().unwrap(),
            breach[0].as_object().unwrap(),
        );
        for field in ["rule", "list", "source"] {
            assert!(!access.contains_key(field), "{field} in {access:?}");
        }
        for (field, value) in access {
            assert_eq!(breach.get(field), Some(value), "{field}");
        }
        assert_eq!(breach.len(), access.len() + 3, "{breach:?}");
    }

    #[test]
    fn a_full_queue_drops_access_records_but_keeps_breaches() {
        let (_dir, engine, logs) = school();
        let journal = Journal::start(&logs, london()).unwrap();
        let allowed = QueryName::parse("good.example").unwrap();
        let blocked = QueryName::parse("bad.example").unwrap();
        // As if the writer were a whole queue behind.
        journal
            .shared
            .queued_access
            .fetch_add(logs.queue, Ordering::Relaxed);
        for _ in 0..3 {
            journal.log_deferred(&ask(&engine, &allowed));
        }
        journal.log_deferred(&ask(&engine, &blocked));
        flush_deferred();
        assert!(journal.flush(Duration::from_secs(5)));
        assert_eq!(journal.stats().access_dropped.load(Ordering::Relaxed), 3);
        let breach = lines(&logs, "breach");
        assert_eq!(breach.len(), 1);
        assert_eq!(breach[0]["name"], "bad.example");
        let access = lines(&logs, "access");
        assert_eq!(access.len(), 1, "the breach's own access line");
        assert_eq!(access[0]["name"], "bad.example");
    }

    #[test]
    fn a_batch_cut_to_its_breaches_holds_only_their_bytes() {
        let (_dir, engine, _logs) = school();
        let allowed = QueryName::parse("a-rather-long-allowed-name.example").unwrap();
        let blocked = QueryName::parse("bad.example").unwrap();
        let mut batch = Batch {
            engine: Some(engine.clone()),
            ..Batch::default()
        };
        for i in 0..BATCH_MAX {
            let name = if i % 10 == 9 { &blocked } else { &allowed };
            batch.push(&ask(&engine, name));
        }
        let cut = batch.take_breaches();
        assert_eq!(cut.breaches, 25);
        assert_eq!(cut.records.capacity(), 25);
        assert_eq!(cut.text.capacity(), 25 * "bad.example".len());
        assert!(cut
            .events()
            .all(|e| e.name == "bad.example" && e.is_breach()));
        assert!(batch.records.is_empty() && batch.text.is_empty() && batch.engine.is_none());
        assert!(batch.records.capacity() >= BATCH_MAX, "kept for reuse");
    }

    #[test]
    fn a_writer_catching_up_on_a_backlog_writes_as_it_goes() {
        let (_dir, engine, logs) = school();
        let stats = Arc::new(Stats::default());
        writer::prepare_dir(&logs.dir).unwrap();
        let mut w = writer::Writer::new(logs.clone(), london(), stats.clone());
        let blocked = QueryName::parse("bad.example").unwrap();
        let ev = ask(&engine, &blocked);
        for _ in 0..10_000 {
            w.breach(&ev);
        }
        // Before any tick: what was drained is on disk, not all held in memory.
        let written = stats.breach_written.load(Ordering::Relaxed);
        assert!(written >= 8_000, "{written} breaches written");
        assert!(stats.access_written.load(Ordering::Relaxed) >= 8_000);
        assert!(stats.breach_pending.load(Ordering::Relaxed) < 4_096);
        assert_eq!(stats.breach_lost.load(Ordering::Relaxed), 0);
        assert!(
            stats.write_longest_ns.load(Ordering::Relaxed) > 0,
            "the time the writes took is kept"
        );
    }

    /// Holds the writer thread until the returned receiver is read or dropped: the writer
    /// answers a flush on a channel with no room, so it waits there once it has taken the flush
    /// and written the (empty) queues.
    fn wedge(journal: &Journal) -> Receiver<()> {
        let (tx, rx) = crossbeam_channel::bounded(0);
        journal.shared.control.send(Msg::Flush(tx)).unwrap();
        while !journal.shared.control.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        rx
    }

    fn bounded(logs: &Logs, pause_at: usize, wait: Duration, lose_at: usize) -> Journal {
        let bounds = BreachBounds {
            pause_at,
            wait,
            lose_at,
        };
        Journal::start_bounded(logs, london(), None, bounds).unwrap()
    }

    fn breaches(journal: &Journal, engine: &Arc<Engine>, n: usize) {
        let blocked = QueryName::parse("bad.example").unwrap();
        for _ in 0..n {
            journal.log(&ask(engine, &blocked));
        }
    }

    #[tokio::test]
    async fn a_writer_behind_on_breaches_pauses_the_query_path_until_it_catches_up() {
        let (_dir, engine, logs) = school();
        let journal = bounded(&logs, 4, Duration::from_secs(30), 1000);
        let held = wedge(&journal);
        breaches(&journal, &engine, 3);
        assert!(!journal.behind());
        breaches(&journal, &engine, 2);
        assert!(journal.behind());
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            held.recv().unwrap();
        });
        let waited = std::time::Instant::now();
        journal.catch_up().await;
        assert!(
            waited.elapsed() >= Duration::from_millis(150),
            "{:?}",
            waited.elapsed()
        );
        assert!(!journal.behind());
        release.join().unwrap();
        assert!(journal.flush(Duration::from_secs(5)));
        assert_eq!(lines(&logs, "breach").len(), 5);
        let stats = journal.stats();
        assert_eq!(stats.breach_lost.load(Ordering::Relaxed), 0);
        assert_eq!(stats.paused.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_stuck_writer_stops_pausing_the_query_path_and_only_then_breaches_are_lost() {
        let (_dir, engine, logs) = school();
        let journal = bounded(&logs, 2, Duration::from_millis(100), 4);
        let held = wedge(&journal);
        breaches(&journal, &engine, 3);
        assert!(journal.behind());
        journal.catch_up().await;
        assert!(
            !journal.behind(),
            "a stuck writer must not pause every answer"
        );
        breaches(&journal, &engine, 3);
        assert_eq!(journal.stats().breach_lost.load(Ordering::Relaxed), 2);
        drop(held);
        assert!(journal.flush(Duration::from_secs(5)));
        assert_eq!(lines(&logs, "breach").len(), 4);
        assert!(
            !journal.shared.stuck.load(Ordering::Relaxed),
            "a writer that drained is waited for again"
        );
        // The daily summary reads of both from the notices.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let count = |kind: &str| {
            lines(&logs, "notices")
                .iter()
                .filter(|n| n["kind"] == kind)
                .map(|n| n["count"].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        while count("breach_lost") == 0 && std::time::Instant::now() < deadline {
            assert!(journal.flush(Duration::from_secs(5)));
        }
        assert_eq!(count("breach_lost"), 2);
        assert_eq!(count("log_paused"), 1);
    }
}
