//! The writer thread's state: open day files, rotation, compression, retention, and what to do
//! when the disk says no.
//!
//! A failed write never reaches the query path. Access lines that cannot be written are
//! counted as dropped; breach lines are kept in memory (up to [`MAX_PENDING_BREACHES`]) and
//! written when the disk accepts them again.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Days, NaiveDate, Utc};
use hickory_proto::rr::RecordType;

use super::record::{Notice, Stream};
use super::{Event, Outcome, Stats};
use crate::config::Logs;

/// Breach lines held in memory while the disk refuses them; beyond this they are counted lost.
pub const MAX_PENDING_BREACHES: usize = 1_000_000;
const FILE_MODE: u32 = 0o640;

/// Creates the log directory (0750) if needed.
pub(super) fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
}

/// One daily stream. Lines wait in `pending` until a write of them succeeds, so a line is
/// only counted written once the kernel has it; after a failed write the next one starts on a
/// fresh line, so a torn line cannot swallow the one after it.
struct DayFile {
    stream: Stream,
    date: Option<NaiveDate>,
    file: Option<File>,
    pending: VecDeque<(NaiveDate, String)>,
    torn: bool,
}

impl DayFile {
    fn new(stream: Stream) -> Self {
        DayFile {
            stream,
            date: None,
            file: None,
            pending: VecDeque::new(),
            torn: false,
        }
    }

    fn push(&mut self, date: NaiveDate, line: String) {
        self.pending.push_back((date, line));
    }

    /// Writes pending lines, a day at a time. Returns how many were written; on error the
    /// unwritten lines stay pending.
    fn write_pending(&mut self, dir: &Path) -> Result<usize, std::io::Error> {
        let mut written = 0;
        let mut chunk = String::new();
        while let Some((date, _)) = self.pending.front() {
            let date = *date;
            if self.date != Some(date) || self.file.is_none() {
                self.rotate(dir, date)?;
            }
            chunk.clear();
            if self.torn {
                chunk.push('\n');
            }
            let run = self.pending.iter().take_while(|(d, _)| *d == date).count();
            for (_, line) in self.pending.iter().take(run) {
                chunk.push_str(line);
                chunk.push('\n');
            }
            let file = self
                .file
                .as_mut()
                .ok_or_else(|| std::io::Error::other("log file not open"))?;
            if let Err(e) = file.write_all(chunk.as_bytes()) {
                self.file = None;
                self.torn = true;
                return Err(e);
            }
            self.torn = false;
            self.pending.drain(..run);
            written += run;
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
        self.file = Some(file);
        self.date = Some(date);
        Ok(())
    }
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
    tz: chrono_tz::Tz,
    stats: Arc<Stats>,
    access: DayFile,
    breach: DayFile,
    notices: DayFile,
    housekept: Option<NaiveDate>,
    dropped_noticed: u64,
    last_drop_notice: Instant,
    last_error_log: Option<Instant>,
    clock: Clock,
}

/// Access lines buffered before a write is forced.
const ACCESS_BATCH: usize = 4096;

impl Writer {
    pub(super) fn new(logs: Logs, tz: chrono_tz::Tz, stats: Arc<Stats>) -> Self {
        let mut w = Writer {
            logs,
            tz,
            stats,
            access: DayFile::new(Stream::Access),
            breach: DayFile::new(Stream::Breach),
            notices: DayFile::new(Stream::Notices),
            housekept: None,
            dropped_noticed: 0,
            last_drop_notice: Instant::now(),
            last_error_log: None,
            clock: Clock::default(),
        };
        w.housekeep();
        w
    }

    fn today(&self) -> NaiveDate {
        Utc::now().with_timezone(&self.tz).date_naive()
    }

    fn date_of(&self, t: SystemTime) -> NaiveDate {
        DateTime::<Utc>::from(t)
            .with_timezone(&self.tz)
            .date_naive()
    }

    pub(super) fn access(&mut self, ev: &Event) {
        let date = self.date_of(ev.time);
        let line = self.line(ev, false);
        self.access.push(date, line);
        if self.access.pending.len() >= ACCESS_BATCH {
            self.write_access();
        }
    }

    pub(super) fn breach(&mut self, ev: &Event) {
        let date = self.date_of(ev.time);
        let line = self.line(ev, false);
        self.access.push(date, line);
        let line = self.line(ev, true);
        self.breach.push(date, line);
        while self.breach.pending.len() > MAX_PENDING_BREACHES {
            self.breach.pending.pop_front();
            self.stats.breach_lost.fetch_add(1, Ordering::Relaxed);
        }
        self.stats
            .breach_pending
            .store(self.breach.pending.len() as u64, Ordering::Relaxed);
    }

    pub(super) fn notice(&mut self, n: &Notice) {
        let date = self.today();
        if let Ok(line) = serde_json::to_string(n) {
            self.notices.push(date, line);
        }
    }

    /// Access lines that cannot be written are dropped and counted: they must never hold up
    /// breaches or memory.
    fn write_access(&mut self) {
        match self.access.write_pending(&self.logs.dir) {
            Ok(n) => {
                self.stats
                    .access_written
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                let lost = self.access.pending.len() as u64;
                self.access.pending.clear();
                self.stats.access_dropped.fetch_add(lost, Ordering::Relaxed);
                self.failed(Stream::Access, &e);
            }
        }
    }

    /// Breach lines that cannot be written stay in memory until the disk takes them.
    fn write_breaches(&mut self) {
        match self.breach.write_pending(&self.logs.dir) {
            Ok(n) => {
                self.stats
                    .breach_written
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => self.failed(Stream::Breach, &e),
        }
        self.stats
            .breach_pending
            .store(self.breach.pending.len() as u64, Ordering::Relaxed);
    }

    fn failed(&mut self, stream: Stream, e: &std::io::Error) {
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
        let dropped = self.stats.access_dropped.load(Ordering::Relaxed);
        if dropped > self.dropped_noticed
            && self.last_drop_notice.elapsed() > Duration::from_secs(60)
        {
            let n = Notice {
                time: self.now_string(),
                kind: "access_dropped".into(),
                count: dropped - self.dropped_noticed,
                client: None,
                detail: Some("access log could not keep up or could not be written".into()),
            };
            self.dropped_noticed = dropped;
            self.last_drop_notice = Instant::now();
            self.notice(&n);
        }
        if self.housekept != Some(self.today()) {
            self.housekeep();
        }
    }

    /// Writes everything pending.
    pub(super) fn flush(&mut self) {
        self.write_breaches();
        self.write_access();
        if let Err(e) = self.notices.write_pending(&self.logs.dir) {
            self.notices.pending.clear();
            self.failed(Stream::Notices, &e);
        }
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
        format_time(SystemTime::now(), self.tz)
    }

    /// One JSON line for `ev`, in the shape of [`Record`], written by hand: at full load the
    /// writer formats a couple of hundred thousand lines a second on a core it shares with the
    /// server, so it reuses a buffer, formats the time once per second and allocates nothing
    /// for the fields.
    ///
    /// Access lines carry what was asked and what happened; breach lines add the rule, list and
    /// `file:line` that decided (looked up only for them).
    fn line(&mut self, ev: &Event, breach: bool) -> String {
        let engine = &ev.engine;
        let group = ev.decision.map_or(ev.client.group, |d| d.group);
        let action = match ev.outcome {
            Outcome::Refused => "refused",
            Outcome::ServFail => "servfail",
            Outcome::Stale => "stale",
            Outcome::Decided => ev.decision.map_or("allow", |d| d.action.as_str()),
        };
        let mut out = String::with_capacity(256);
        out.push_str("{\"time\":\"");
        self.clock.push_time(&mut out, ev.time, self.tz);
        out.push_str("\",\"client\":\"");
        let _ = write!(out, "{}", ev.client.addr);
        out.push('"');
        if let Some(name) = engine.client_name(&ev.client) {
            field(&mut out, "client_name", name);
        }
        field(&mut out, "group", engine.group_name(group));
        field(&mut out, "name", ev.name.as_str());
        out.push_str(",\"type\":\"");
        match RecordType::from(ev.qtype) {
            RecordType::Unknown(n) => {
                let _ = write!(out, "TYPE{n}");
            }
            t => {
                let _ = write!(out, "{t}");
            }
        }
        out.push('"');
        field(&mut out, "action", action);
        if let Some(d) = ev.decision {
            if let Some(c) = d.category.and_then(|c| engine.categories().get(c as usize)) {
                field(&mut out, "category", &c.name);
            }
            if let Some(label) = engine.rule_label(&d.rule) {
                field(&mut out, "rule", &label);
            } else if let Some(o) = breach.then(|| engine.origin(&ev.name, &d.rule)).flatten() {
                field(&mut out, "rule", &o.entry);
                field(&mut out, "list", &o.list);
                field(&mut out, "source", &o.location());
            }
        }
        if let Some(via) = ev.via.as_deref() {
            field(&mut out, "via", via);
        }
        field(&mut out, "rcode", rcode_name(ev.rcode));
        let latency = ev.latency.as_micros().min(u128::from(u32::MAX));
        let _ = write!(out, ",\"latency_us\":{latency}}}");
        out
    }
}

/// Appends `,"key":"value"` with the value escaped as JSON.
fn field(out: &mut String, key: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
    json_str(out, value);
}

/// A JSON string literal. Domain names never need escaping; client names from the config might.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push_str(s);
    } else {
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
    out.push('"');
}

/// The formatted time of the current second and its zone offset, reused for every line in it.
#[derive(Default)]
struct Clock {
    second: i64,
    prefix: String,
    offset: String,
}

impl Clock {
    fn push_time(&mut self, out: &mut String, t: SystemTime, tz: chrono_tz::Tz) {
        let utc = DateTime::<Utc>::from(t);
        let second = utc.timestamp();
        if second != self.second || self.prefix.is_empty() {
            let local = utc.with_timezone(&tz);
            self.prefix = local.format("%Y-%m-%dT%H:%M:%S").to_string();
            self.offset = local.format("%:z").to_string();
            self.second = second;
        }
        out.push_str(&self.prefix);
        let _ = write!(out, ".{:06}", utc.timestamp_subsec_micros());
        out.push_str(&self.offset);
    }
}

/// RFC 3339 local time with microseconds, as every log line carries it.
pub fn format_time(t: SystemTime, tz: chrono_tz::Tz) -> String {
    DateTime::<Utc>::from(t)
        .with_timezone(&tz)
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
    use chrono::TimeZone;

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
        clock.push_time(&mut out, t.into(), chrono_tz::Europe::London);
        assert_eq!(out, "2026-07-01T13:00:00.000042+01:00");
        assert_eq!(out, format_time(t.into(), chrono_tz::Europe::London));
    }

    #[test]
    fn time_zone_applies() {
        let t = Utc.with_ymd_and_hms(2026, 7, 1, 12, 0, 0).unwrap();
        let s = format_time(t.into(), chrono_tz::Europe::London);
        assert!(s.starts_with("2026-07-01T13:00:00.000000+01:00"), "{s}");
    }
}
