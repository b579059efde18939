//! The writer thread's state: open day files, rotation, compression, retention, and what to do
//! when the disk says no.
//!
//! A failed write never reaches the query path. Access lines that cannot be written are
//! counted as dropped; breach lines are kept in memory (up to [`MAX_PENDING_BREACH_BYTES`])
//! and written when the disk accepts them again.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Days, NaiveDate, Utc};
use hickory_proto::rr::RecordType;

use super::record::{Notice, Stream};
use super::{Event, Outcome, Stats};
use crate::config::Logs;
use crate::policy::Entry;
use crate::timezone::Zone;

/// Memory breach lines may hold while the disk refuses them (about 200,000 lines): enough for
/// days of a school's breaches, small enough for a small server. Past it the oldest are
/// counted lost.
pub const MAX_PENDING_BREACH_BYTES: usize = 64 << 20;
const FILE_MODE: u32 = 0o640;

/// Creates the log directory (0750) if needed.
pub(super) fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
}

/// One daily stream. Lines wait in `pending` chunks until a write of them succeeds, so a line
/// is only counted written once the kernel has it; after a failed write the next one starts on
/// a fresh line, so a torn line cannot swallow the one after it.
struct DayFile {
    stream: Stream,
    date: Option<NaiveDate>,
    file: Option<LogFile>,
    pending: VecDeque<Chunk>,
    /// Lines in `pending`.
    lines: usize,
    torn: bool,
    /// Buffers of written chunks, kept for the next ones.
    spare: Vec<String>,
}

/// Consecutive lines of one day, written with one call.
struct Chunk {
    date: NaiveDate,
    text: String,
    lines: usize,
}

/// Lines per chunk: bounds one write and what is cut at once when breaches overflow memory.
const CHUNK_LINES: usize = 4096;
/// Bytes a chunk's buffer is allocated with; a chunk is closed before a line could outgrow it.
/// Buffers this size come from the heap and are reused: chunks that grew to a megabyte were
/// mapped and unmapped each time, and faulting their pages in was one page fault per eight
/// queries under an all-blocked load.
const CHUNK_BYTES: usize = 64 * 1024;
/// Room left for the next line before a chunk is closed (a line is at most about 700 bytes).
const LINE_ROOM: usize = 1024;
/// Written chunks' buffers kept per stream.
const SPARE_CHUNKS: usize = 2;

impl DayFile {
    fn new(stream: Stream) -> Self {
        DayFile {
            stream,
            date: None,
            file: None,
            pending: VecDeque::new(),
            lines: 0,
            torn: false,
            spare: Vec::new(),
        }
    }

    /// The buffer the next line for `date` is appended to (the line is counted as pending).
    fn line(&mut self, date: NaiveDate) -> &mut String {
        let fits = self.pending.back().is_some_and(|c| {
            c.date == date && c.lines < CHUNK_LINES && c.text.capacity() - c.text.len() >= LINE_ROOM
        });
        if !fits {
            let text = self
                .spare
                .pop()
                .unwrap_or_else(|| String::with_capacity(CHUNK_BYTES));
            self.pending.push_back(Chunk {
                date,
                text,
                lines: 0,
            });
        }
        self.lines += 1;
        let chunk = self.pending.back_mut().expect("a chunk was just ensured");
        chunk.lines += 1;
        &mut chunk.text
    }

    /// Drops the oldest chunk; returns how many lines it held.
    fn drop_oldest(&mut self) -> usize {
        let Some(mut chunk) = self.pending.pop_front() else {
            return 0;
        };
        self.lines -= chunk.lines;
        if self.spare.len() < SPARE_CHUNKS && chunk.text.capacity() <= CHUNK_BYTES {
            chunk.text.clear();
            self.spare.push(chunk.text);
        }
        chunk.lines
    }

    fn clear(&mut self) -> usize {
        let n = self.lines;
        self.pending.clear();
        self.lines = 0;
        n
    }

    /// Writes pending lines, a chunk at a time. Returns how many were written; on error the
    /// unwritten lines stay pending.
    fn write_pending(&mut self, dir: &Path) -> Result<usize, std::io::Error> {
        let mut written = 0;
        while let Some(date) = self.pending.front().map(|c| c.date) {
            if self.date != Some(date) || self.file.is_none() {
                self.rotate(dir, date)?;
            }
            let chunk = &self.pending[0];
            let file = self
                .file
                .as_mut()
                .ok_or_else(|| std::io::Error::other("log file not open"))?;
            let result = if self.torn {
                file.write(b"\n")
                    .and_then(|()| file.write(chunk.text.as_bytes()))
            } else {
                file.write(chunk.text.as_bytes())
            };
            if let Err(e) = result {
                self.file = None;
                self.torn = true;
                return Err(e);
            }
            self.torn = false;
            written += self.drop_oldest();
        }
        Ok(written)
    }

    fn rotate(&mut self, dir: &Path, date: NaiveDate) -> std::io::Result<()> {
        let previous = self.date;
        self.file = None;
        if let Some(prev) = previous.filter(|p| *p < date) {
            let old = self.stream.path(dir, prev);
            std::thread::spawn(move || {
                if let Err(e) = compress(&old) {
                    tracing::warn!("cannot compress {}: {e}", old.display());
                }
            });
        }
        let path = self.stream.path(dir, date);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(&path)?;
        self.file = Some(LogFile::new(file)?);
        self.date = Some(date);
        Ok(())
    }
}

/// Bytes written to a log file between asking the kernel to write them to disk. The block
/// layer does the submitting on the asking thread's core: 8 MiB at a time held that core, and
/// every query waiting for it, for up to 2.3 ms; 1 MiB steps cost the same CPU in short pieces.
const WRITEBACK_STEP: u64 = 1 << 20;

/// How long lines sent to disk may take to get there before they are waited for (on the settling
/// thread) and dropped from the cache. A disk that stalls for a moment (this machine's has held
/// single writes for 0.2-0.6 s) is then absorbed by the page cache.
const WRITEBACK_PATIENCE: Duration = Duration::from_secs(2);
/// Bytes that may be on their way to disk at once, however young: bounds the page cache a log
/// holds when lines come faster than the disk takes them.
const WRITEBACK_MAX_BYTES: u64 = 256 << 20;
/// Ranges sent to disk end on a multiple of this (of every page size Linux uses): the page a
/// range ended inside was dirtied again by the next lines, so waiting for that range wrote the
/// page and waited for the disk, once a step, and for the whole of a stall.
const WRITEBACK_ALIGN: u64 = 64 * 1024;

/// A day's log file, appended to, whose written lines are sent to disk and dropped from the
/// page cache as it grows. A log is written once and read rarely: left to the kernel, a busy day
/// filled gigabytes of cache with dirty lines, and the writer then paid for the kernel making
/// room (the log path's CPU per blocked answer rose by half once two gigabytes were dirty).
struct LogFile {
    /// Shared with the settling thread while it drops ranges of it from the cache.
    file: Arc<File>,
    /// End of the file.
    end: u64,
    /// Where the bytes not yet sent to disk start.
    unsent: u64,
    /// Ranges sent to disk and still in the page cache, and when they were sent; oldest first.
    in_flight: VecDeque<(u64, u64, Instant)>,
    patience: Duration,
    max_in_flight: u64,
}

impl LogFile {
    fn new(file: File) -> std::io::Result<Self> {
        let end = file.metadata()?.len();
        Ok(LogFile {
            file: Arc::new(file),
            end,
            unsent: end,
            in_flight: VecDeque::new(),
            patience: WRITEBACK_PATIENCE,
            max_in_flight: WRITEBACK_MAX_BYTES,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        (&*self.file).write_all(bytes)?;
        self.end += bytes.len() as u64;
        if self.end - self.unsent >= WRITEBACK_STEP {
            self.write_back();
        }
        Ok(())
    }

    /// Has the settling thread start writing the new lines to disk, and hands it the ranges
    /// sent longest ago (or past the byte bound) to settle. A full queue means that thread is
    /// held: unsent lines are then written by the kernel's own writeback (or when their range is
    /// settled), and unsettled ones stay cached, clean, for the kernel to reclaim.
    fn write_back(&mut self) {
        let upto = self.end / WRITEBACK_ALIGN * WRITEBACK_ALIGN;
        let _ = settler().try_send(Settle::Send(self.file.clone(), self.unsent, upto));
        let now = Instant::now();
        self.in_flight.push_back((self.unsent, upto, now));
        self.unsent = upto;
        while let Some(&(start, end, sent)) = self.in_flight.front() {
            if now.duration_since(sent) < self.patience && upto - start <= self.max_in_flight {
                break;
            }
            self.in_flight.pop_front();
            let _ = settler().try_send(Settle::Drop(self.file.clone(), start, end));
        }
    }
}

/// Work queued for the settling thread: two items a megabyte of lines, so about half as many
/// megabytes.
const SETTLE_QUEUE: usize = 1024;

/// Work on a range of a log file (the file, where the range starts and where it ends).
enum Settle {
    /// Start writing the range to disk.
    Send(Arc<File>, u64, u64),
    /// Wait for the range to reach the disk, then drop it from the page cache.
    Drop(Arc<File>, u64, u64),
}

/// The thread that sends written ranges to disk, waits for them and drops them from the page
/// cache, so the writer never waits on the disk or the kernel. Starting the writing allocates
/// the lines' blocks and queues them, and in load runs (`benches/writer-offcpu.bt`) that held
/// the writer for 43-77 ms behind the block layer's throttle and ext4's block bitmaps. Dropping
/// them can wait on every CPU: `posix_fadvise` may drain the other CPUs' page lists through
/// their kernel workers, and waiting for one held the writer for 876 ms while its queue
/// overflowed.
fn settler() -> &'static std::sync::mpsc::SyncSender<Settle> {
    static SETTLER: std::sync::OnceLock<std::sync::mpsc::SyncSender<Settle>> =
        std::sync::OnceLock::new();
    SETTLER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Settle>(SETTLE_QUEUE);
        let spawned = std::thread::Builder::new()
            .name("log-settle".into())
            .spawn(move || {
                // It shares the query threads' core; short slices keep it from holding them.
                crate::sched::short_slices();
                for work in rx {
                    match work {
                        Settle::Send(file, start, end) => send(&file, start, end),
                        Settle::Drop(file, start, end) => settle(&file, start, end),
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("log lines will stay in the page cache: no settling thread: {e}");
        }
        tx
    })
}

/// Starts writing a range to disk. Advice only: errors change nothing that was written.
fn send(file: &File, start: u64, end: u64) {
    sync_range(file, start, end, libc::SYNC_FILE_RANGE_WRITE);
}

/// Waits for a sent range to reach the disk (writing what is still dirty of it) and drops it
/// from the page cache.
fn settle(file: &File, start: u64, end: u64) {
    sync_range(
        file,
        start,
        end,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    );
    // SAFETY: a plain system call on a descriptor kept open by `file`, with offsets inside it.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            start as libc::off_t,
            (end - start) as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

/// `sync_file_range(2)` over `start..end` of `file`.
fn sync_range(file: &File, start: u64, end: u64, flags: libc::c_uint) {
    // SAFETY: a plain system call on a descriptor kept open by `file`, with offsets inside it.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            start as libc::off64_t,
            (end - start) as libc::off64_t,
            flags,
        );
    }
}

/// Writes a stream's pending lines and keeps the longest such write so far, so a writer the disk
/// held can be told from one short of CPU.
fn write_timed(day: &mut DayFile, dir: &Path, stats: &Stats) -> std::io::Result<usize> {
    let started = Instant::now();
    let written = day.write_pending(dir);
    let ns = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
    stats.write_longest_ns.fetch_max(ns, Ordering::Relaxed);
    written
}

/// Gzips a finished day and removes the plain file.
fn compress(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let gz = path.with_extension("jsonl.gz");
    let tmp = path.with_extension("jsonl.gz.tmp");
    {
        let mut input = File::open(path)?;
        let out = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        let mut enc =
            flate2::write::GzEncoder::new(BufWriter::new(out), flate2::Compression::default());
        std::io::copy(&mut input, &mut enc)?;
        enc.finish()?.flush()?;
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(FILE_MODE))?;
    fs::rename(&tmp, &gz)?;
    fs::remove_file(path)
}

pub(super) struct Writer {
    logs: Logs,
    tz: Zone,
    stats: Arc<Stats>,
    access: DayFile,
    breach: DayFile,
    notices: DayFile,
    housekept: Option<NaiveDate>,
    /// After a failed write, the disk is left alone until then (see [`RETRY_EVERY`]).
    resting_until: Option<Instant>,
    /// Per [`WATCHED`] counter: the value last reported in a notice, and when.
    noticed: [(u64, Option<Instant>); WATCHED.len()],
    last_error_log: Option<Instant>,
    clock: Clock,
}

/// Lines of a stream buffered before a write is forced (access lines always; breach lines too
/// while a writer works through a backlog). A drain at full load holds fewer (about 700 in 2 ms
/// at 350,000 queries a second), so this only bounds a catch-up after the writer was held up:
/// five 30 ms stalls under a saturating blocked load raised peak RSS by 3.1-3.3 MiB at 4,096
/// lines, by 1.8-2.1 MiB at 1,024.
const WRITE_BATCH: usize = 1024;

/// The logging troubles the daily summary reports: (notice kind, what it means, the writer's
/// counter of it). The first of each kind is noticed at once, later ones a minute at a time.
type Watched = (&'static str, &'static str, fn(&Stats) -> &AtomicU64);

const WATCHED: [Watched; 4] = [
    (
        "access_dropped",
        "access log could not keep up or could not be written",
        |s| &s.access_dropped,
    ),
    (
        "write_error",
        "log writes failed (full disk or unwritable directory); breach records were held in memory",
        |s| &s.write_errors,
    ),
    (
        "breach_lost",
        "breach records lost: the log writer was stuck, or the disk refused them past the memory bound",
        |s| &s.breach_lost,
    ),
    (
        "log_paused",
        "answering paused until the log writer caught up on breaches (a flood of blocked queries)",
        |s| &s.paused,
    ),
];

/// How long the writer leaves a disk that refused a write before asking it again.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// Notice lines held while the disk refuses them (they are few: a handful a minute).
const MAX_PENDING_NOTICES: usize = 10_000;

impl Writer {
    pub(super) fn new(logs: Logs, tz: Zone, stats: Arc<Stats>) -> Self {
        let mut w = Writer {
            logs,
            tz,
            stats,
            access: DayFile::new(Stream::Access),
            breach: DayFile::new(Stream::Breach),
            notices: DayFile::new(Stream::Notices),
            housekept: None,
            resting_until: None,
            noticed: [(0, None); WATCHED.len()],
            last_error_log: None,
            clock: Clock::default(),
        };
        w.housekeep();
        w
    }

    fn today(&self) -> NaiveDate {
        Utc::now().with_timezone(&self.tz).date_naive()
    }

    pub(super) fn access(&mut self, ev: &Event<'_>) {
        let date = self.clock.at(ev.time, &self.tz);
        access_line(self.access.line(date), &self.clock, ev);
        if self.access.lines >= WRITE_BATCH {
            self.write_access();
        }
    }

    pub(super) fn breach(&mut self, ev: &Event<'_>) {
        let date = self.clock.at(ev.time, &self.tz);
        let access = self.access.line(date);
        let start = access.len();
        let origin_at = access_line(access, &self.clock, ev);
        let breach = self.breach.line(date);
        breach.push_str(&access[start..origin_at]);
        origin_fields(breach, ev);
        breach.push_str(&access[origin_at..]);
        // A writer catching up on a long backlog writes as it goes: formatting all of it before
        // writing any held every line in memory (400 MB of access lines behind 1.6 million
        // breaches) and cut breaches at the memory bound while the disk had room.
        if self.access.lines >= WRITE_BATCH {
            self.write_access();
        }
        if self.breach.lines >= WRITE_BATCH {
            self.write_breaches();
        }
        while self.breach.pending.len() * CHUNK_BYTES > MAX_PENDING_BREACH_BYTES {
            let lost = self.breach.drop_oldest();
            self.stats
                .breach_lost
                .fetch_add(lost as u64, Ordering::Relaxed);
        }
        self.stats
            .breach_pending
            .store(self.breach.lines as u64, Ordering::Relaxed);
    }

    pub(super) fn notice(&mut self, n: &Notice) {
        let date = self.today();
        if let Ok(line) = serde_json::to_string(n) {
            let out = self.notices.line(date);
            out.push_str(&line);
            out.push('\n');
        }
    }

    /// Whether a write failed less than [`RETRY_EVERY`] ago: a full disk is asked again a few
    /// times a second, not at every drain (1,400 failed writes a second under a flood, each
    /// counted as an error).
    fn resting(&self) -> bool {
        self.resting_until.is_some_and(|t| Instant::now() < t)
    }

    /// Access lines that cannot be written are dropped and counted: they must never hold up
    /// breaches or memory.
    fn write_access(&mut self) {
        let result = if self.resting() {
            Err(None)
        } else {
            write_timed(&mut self.access, &self.logs.dir, &self.stats).map_err(Some)
        };
        match result {
            Ok(n) => {
                self.stats
                    .access_written
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                let lost = self.access.clear() as u64;
                self.stats.access_dropped.fetch_add(lost, Ordering::Relaxed);
                if let Some(e) = e {
                    self.failed(Stream::Access, &e);
                }
            }
        }
    }

    /// Breach lines that cannot be written stay in memory until the disk takes them.
    fn write_breaches(&mut self) {
        if self.resting() {
            return;
        }
        match write_timed(&mut self.breach, &self.logs.dir, &self.stats) {
            Ok(n) => {
                self.stats
                    .breach_written
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => self.failed(Stream::Breach, &e),
        }
        self.stats
            .breach_pending
            .store(self.breach.lines as u64, Ordering::Relaxed);
    }

    fn failed(&mut self, stream: Stream, e: &std::io::Error) {
        self.resting_until = Some(Instant::now() + RETRY_EVERY);
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        let msg = format!(
            "cannot write {} log in {}: {e}",
            stream.prefix(),
            self.logs.dir.display()
        );
        // One line per ten seconds is enough to tell a technician the disk is the problem.
        if self
            .last_error_log
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            tracing::error!("{msg}; DNS keeps answering, breach records are held in memory");
            self.last_error_log = Some(Instant::now());
        }
        if let Ok(mut last) = self.stats.last_error.lock() {
            *last = Some(msg);
        }
    }

    /// Runs after every drain: breaches reach the disk within milliseconds of the query.
    pub(super) fn tick(&mut self) {
        self.flush();
        self.notice_troubles();
        if self.housekept != Some(self.today()) {
            self.housekeep();
        }
    }

    /// Notices each [`WATCHED`] counter that grew: the coordinator reads of a full disk or lost
    /// breaches in the daily summary, not only in metrics.
    fn notice_troubles(&mut self) {
        for (i, &(kind, meaning, counter)) in WATCHED.iter().enumerate() {
            let now = counter(&self.stats).load(Ordering::Relaxed);
            let (seen, at) = self.noticed[i];
            if now <= seen || at.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
                continue;
            }
            let last_error = self.stats.last_error.lock().ok().and_then(|e| e.clone());
            let detail = match last_error.filter(|_| kind == "write_error") {
                Some(e) => format!("{meaning}; last: {e}"),
                None => meaning.to_string(),
            };
            let n = Notice {
                time: self.now_string(),
                kind: kind.into(),
                count: now - seen,
                client: None,
                detail: Some(detail),
            };
            self.noticed[i] = (now, Some(Instant::now()));
            self.notice(&n);
        }
    }

    /// Writes everything pending. Notices a disk refuses wait for it, as breaches do: the
    /// notice that it was full is written when it has room again.
    pub(super) fn flush(&mut self) {
        self.write_breaches();
        self.write_access();
        if self.resting() {
            return;
        }
        if let Err(e) = self.notices.write_pending(&self.logs.dir) {
            if self.notices.lines > MAX_PENDING_NOTICES {
                self.notices.clear();
            }
            self.failed(Stream::Notices, &e);
        }
    }

    /// As [`Writer::flush`], asking the disk even if it refused a write a moment ago: someone
    /// is waiting for the lines (a flush request, or shutdown).
    pub(super) fn flush_now(&mut self) {
        self.resting_until = None;
        self.flush();
    }

    /// Once a day: compress finished days, delete expired ones.
    fn housekeep(&mut self) {
        let today = self.today();
        let Ok(entries) = fs::read_dir(&self.logs.dir) else {
            return;
        };
        let keep = |stream: Stream| match stream {
            Stream::Access => self.logs.access_retention_days,
            Stream::Breach | Stream::Notices => self.logs.breach_retention_days,
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            for stream in [Stream::Access, Stream::Breach, Stream::Notices] {
                let Some(date) = stream.date_of(name) else {
                    continue;
                };
                let path: PathBuf = entry.path();
                let cutoff = today.checked_sub_days(Days::new(keep(stream).into()));
                if cutoff.is_some_and(|c| date < c) {
                    if let Err(e) = fs::remove_file(&path) {
                        tracing::warn!("cannot delete expired log {}: {e}", path.display());
                    }
                } else if date < today && name.ends_with(".jsonl") {
                    if let Err(e) = compress(&path) {
                        tracing::warn!("cannot compress {}: {e}", path.display());
                    }
                }
            }
        }
        self.housekept = Some(today);
    }

    fn now_string(&self) -> String {
        format_time(SystemTime::now(), &self.tz)
    }
}

/// Appends the access line for `ev`, in the shape of [`Record`](super::Record), written by
/// hand: at full load the writer formats a few hundred thousand lines a second on a core it
/// shares with the server, so it formats the time once per second and allocates nothing.
///
/// Returns where in `out` a breach line's list fields go. A breach line is the access line with
/// the rule, list and `file:line` that decided inserted there ([`origin_fields`]), so a blocked
/// query's two lines are formatted once and copied: formatting was half the log writer's time.
fn access_line(out: &mut String, clock: &Clock, ev: &Event<'_>) -> usize {
    let engine = ev.engine;
    let group = ev.decision.map_or(ev.client.group, |d| d.group);
    let action = match ev.outcome {
        Outcome::Refused => "refused",
        Outcome::ServFail => "servfail",
        Outcome::Stale => "stale",
        Outcome::Decided => ev.decision.map_or("allow", |d| d.action.as_str()),
    };
    out.push_str("{\"time\":\"");
    clock.push_time(out, ev.time);
    out.push_str("\",\"client\":\"");
    push_ip(out, ev.client.addr);
    out.push('"');
    if let Some(name) = engine.client_name(&ev.client) {
        field(out, "client_name", name);
    }
    field(out, "group", engine.group_name(group));
    field(out, "name", ev.name);
    out.push_str(",\"type\":\"");
    push_type(out, ev.qtype);
    out.push_str("\",\"action\":\"");
    out.push_str(action);
    out.push('"');
    if let Some(d) = ev.decision {
        if let Some(c) = d.category.and_then(|c| engine.categories().get(c as usize)) {
            field(out, "category", &c.name);
        }
        if let Some(label) = engine.rule_label(&d.rule) {
            field(out, "rule", &label);
        }
    }
    let origin_at = out.len();
    if let Some(via) = ev.via {
        field(out, "via", via);
    }
    out.push_str(",\"rcode\":\"");
    out.push_str(rcode_name(ev.rcode));
    let latency = ev.latency.as_micros().min(u128::from(u32::MAX)) as u32;
    out.push_str("\",\"latency_us\":");
    out.push_str(itoa::Buffer::new().format(latency));
    out.push_str("}\n");
    origin_at
}

/// Appends the rule, list and `file:line` that blocked `ev`, for its breach line. Looked up only
/// here: access lines do not need them. Rules that are not a list line have none; their label
/// is in the access line already.
fn origin_fields(out: &mut String, ev: &Event<'_>) {
    let Some(o) = ev
        .decision
        .and_then(|d| ev.engine.origin_of(ev.name, &d.rule))
    else {
        return;
    };
    out.push_str(",\"rule\":");
    match o.entry {
        Entry::Name(n) => json_str(out, n),
        Entry::Keyword(w) => {
            out.push_str("\"keyword:");
            json_inner(out, w);
            out.push('"');
        }
    }
    field(out, "list", o.list);
    out.push_str(",\"source\":\"");
    // Checked as UTF-8 once: the lossy conversion's scan was dearer than the plain check.
    match o.file.to_str() {
        Some(path) => json_inner(out, path),
        None => json_inner(out, &o.file.to_string_lossy()),
    }
    out.push(':');
    out.push_str(itoa::Buffer::new().format(o.line));
    out.push('"');
}

fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = itoa::Buffer::new();
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(b.format(o));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_type(out: &mut String, qtype: u16) {
    match RecordType::from(qtype) {
        RecordType::A => out.push('A'),
        RecordType::AAAA => out.push_str("AAAA"),
        RecordType::HTTPS => out.push_str("HTTPS"),
        RecordType::Unknown(n) => {
            out.push_str("TYPE");
            out.push_str(itoa::Buffer::new().format(n));
        }
        t => {
            let _ = write!(out, "{t}");
        }
    }
}

/// Appends `,"key":"value"` with the value escaped as JSON.
fn field(out: &mut String, key: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
    json_str(out, value);
}

/// A JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    json_inner(out, s);
    out.push('"');
}

/// A JSON string's content. Domain names never need escaping; client names from the config and
/// file paths might.
fn json_inner(out: &mut String, s: &str) {
    // A fold with no early exit has no branch per byte: about twice as fast as `all` on names.
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// The local date, formatted time and zone offset of one second, reused for every line in it.
#[derive(Default)]
struct Clock {
    second: i64,
    date: Option<NaiveDate>,
    prefix: String,
    offset: String,
}

impl Clock {
    /// Moves the clock to `t`'s second in `tz`; returns its local date.
    fn at(&mut self, t: SystemTime, tz: &Zone) -> NaiveDate {
        // Only a new second needs the calendar: converting every record's time to a date was
        // 0.7% of the server's CPU under load.
        let second = t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        match self.date {
            Some(date) if second == self.second => date,
            _ => {
                let local = DateTime::<Utc>::from(t).with_timezone(tz);
                self.prefix.clear();
                self.offset.clear();
                let _ = write!(self.prefix, "{}", local.format("%Y-%m-%dT%H:%M:%S"));
                let _ = write!(self.offset, "{}", local.format("%:z"));
                self.second = second;
                *self.date.insert(local.date_naive())
            }
        }
    }

    /// Appends `t` (in the second [`Clock::at`] was last moved to) with microseconds.
    fn push_time(&self, out: &mut String, t: SystemTime) {
        out.push_str(&self.prefix);
        let micros = t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_micros());
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(micros);
        out.push('.');
        out.extend(std::iter::repeat_n('0', 6 - digits.len().min(6)));
        out.push_str(digits);
        out.push_str(&self.offset);
    }
}

/// RFC 3339 local time with microseconds, as every log line carries it.
pub fn format_time(t: SystemTime, tz: &Zone) -> String {
    DateTime::<Utc>::from(t)
        .with_timezone(tz)
        .format("%Y-%m-%dT%H:%M:%S%.6f%:z")
        .to_string()
}

fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timezone::london;
    use chrono::TimeZone;

    /// Pages of the file's first `len` bytes that are in the page cache.
    fn cached_pages(file: &File, len: usize) -> usize {
        // SAFETY: a read-only shared mapping of `len` bytes of a file at least that long, and a
        // vector of one byte per page for mincore; unmapped before returning.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let mut vec = vec![0u8; len.div_ceil(page)];
            assert_eq!(libc::mincore(map, len, vec.as_mut_ptr()), 0);
            libc::munmap(map, len);
            vec.iter().filter(|v| **v & 1 == 1).count()
        }
    }

    /// A log file in a directory on the disk the logs go to (tmpfs keeps every page whatever it
    /// is told).
    fn disk_log() -> (tempfile::TempDir, PathBuf, LogFile) {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("access-2026-01-01.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        (dir, path, LogFile::new(file).unwrap())
    }

    /// Writes about `steps` steps of lines, in pieces that end mid-page like real lines do.
    fn write_steps(log: &mut LogFile, steps: usize) {
        let chunk = vec![b'x'; 64 * 1024 + 1];
        for _ in 0..steps * WRITEBACK_STEP as usize / chunk.len() + 1 {
            log.write(&chunk).unwrap();
        }
    }

    /// Asserts the first `steps` of the file leave the page cache (the settling thread drops
    /// them a moment later).
    fn assert_dropped(path: &Path, steps: usize) {
        let (page, early) = (4096, steps * WRITEBACK_STEP as usize);
        let mut cached = 0;
        for _ in 0..200 {
            cached = cached_pages(&File::open(path).unwrap(), early);
            if cached < early / page / 10 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{cached} of the first {} pages still cached", early / page);
    }

    #[test]
    fn written_log_lines_leave_the_page_cache_once_the_disk_had_time() {
        let (_dir, path, mut log) = disk_log();
        log.patience = Duration::from_millis(50);
        write_steps(&mut log, 3);
        assert_eq!(log.in_flight.len(), 3, "young steps are not waited for");
        // A range that ended inside a page would be dirtied again by the next lines, and
        // waiting for it would wait for the disk.
        assert!(log.in_flight.iter().all(|r| r.1 % WRITEBACK_ALIGN == 0));
        std::thread::sleep(Duration::from_millis(60));
        write_steps(&mut log, 2);
        assert_dropped(&path, 3);
        assert_eq!(fs::metadata(&path).unwrap().len(), log.end);
    }

    #[test]
    fn lines_faster_than_the_disk_are_dropped_from_the_cache_past_the_bound() {
        let (_dir, path, mut log) = disk_log();
        log.patience = Duration::from_secs(3600);
        log.max_in_flight = 2 * WRITEBACK_STEP;
        write_steps(&mut log, 6);
        assert!(log.in_flight.len() <= 2);
        assert_dropped(&path, 3);
    }

    #[test]
    fn compress_replaces_plain_file_and_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access-2026-01-01.jsonl");
        fs::write(&p, "{\"a\":1}\n").unwrap();
        compress(&p).unwrap();
        assert!(!p.exists());
        let gz = dir.path().join("access-2026-01-01.jsonl.gz");
        let mode = fs::metadata(&gz).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let mut n = 0;
        super::super::read_lines::<serde_json::Value>(&gz, |_| n += 1).unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn json_strings_are_escaped_only_when_needed() {
        let mut out = String::new();
        json_str(&mut out, "www.example.org");
        json_str(&mut out, "Mr \"B\" \\ tab\t");
        assert_eq!(out, r#""www.example.org""Mr \"B\" \\ tab\u0009""#);
        let v: Vec<String> =
            serde_json::from_str(&format!("[{}]", out.replace("\"\"", "\",\""))).unwrap();
        assert_eq!(v[1], "Mr \"B\" \\ tab\t");
    }

    #[test]
    fn the_clock_reuses_the_second_and_keeps_microseconds() {
        let mut clock = Clock::default();
        let t = Utc.with_ymd_and_hms(2026, 7, 1, 12, 0, 0).unwrap()
            + chrono::Duration::microseconds(42);
        let mut out = String::new();
        let date = clock.at(t.into(), &london());
        assert_eq!(date, NaiveDate::from_ymd_opt(2026, 7, 1).unwrap());
        clock.push_time(&mut out, t.into());
        assert_eq!(out, "2026-07-01T13:00:00.000042+01:00");
        assert_eq!(out, format_time(t.into(), &london()));
    }

    #[test]
    fn time_zone_applies() {
        let t = Utc.with_ymd_and_hms(2026, 7, 1, 12, 0, 0).unwrap();
        let s = format_time(t.into(), &london());
        assert!(s.starts_with("2026-07-01T13:00:00.000000+01:00"), "{s}");
    }
}
