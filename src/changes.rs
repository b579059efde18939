//! The change-control log: every change to what is filtered, who made it, why, and the diff.
//!
//! School policy asks for "logs of changes to ... the filtering systems". Changes arrive three
//! ways (a technician's `schoolgate list` command, a hand edit of a list file, a remote source
//! refreshing), so the log is built from diffs, not from the commands: each list file has a
//! snapshot of its entries under the state directory, and whoever notices the file differs from
//! its snapshot appends one JSON line and moves the snapshot on. A command edit records itself
//! (with `--by` and `--reason`) and moves the snapshot, so the server's later diff finds nothing
//! left to record; a hand edit is found by the server's diff (on reload, or at start-up if it
//! happened while the server was down) and recorded as a "file edit".
//!
//! Both sides hold an exclusive lock on `changes.lock` while they compare, write and record, so
//! an edit is never recorded twice or half. The log file is only ever appended to, and each
//! record carries a link to the one before it (a SHA-256 chain), so a record edited, removed or
//! inserted afterwards is found ([`verify_log`]); the daily summary carries the last link.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::Config;
use crate::lists::{parse_each, EntryKind};

/// Names listed in one record; larger diffs (a remote refresh) keep only the counts beyond this.
const MAX_NAMES: usize = 1000;
/// Who a diff found without a recorded author is attributed to.
pub const FILE_EDIT: &str = "file edit";
/// Who a list's first sighting is attributed to.
pub const INITIAL_LOAD: &str = "initial load";
/// Who a remote source's refresh is attributed to.
pub const REMOTE_SOURCE: &str = "remote source";

/// Why the change log could not be read or written.
#[derive(Debug, Error)]
pub enum ChangeError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ChangeError + '_ {
    move |source| ChangeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who made a change.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    /// Nobody recorded it: someone edited the file.
    FileEdit,
    /// A technician through the command line.
    Person {
        /// `--by`.
        by: &'a str,
        /// `--reason`.
        reason: &'a str,
    },
    /// A remote source's refresh.
    Remote {
        /// The source.
        url: &'a str,
    },
}

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// When it was recorded.
    pub time: DateTime<Utc>,
    /// `--by`, "file edit", "remote source" or "initial load".
    pub by: String,
    /// `--reason`, for command edits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The category (or `allow`).
    pub category: String,
    /// The list file that changed.
    pub file: PathBuf,
    /// The remote source, for refreshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Names added (`@@name` for an exception, `keyword:rule` for a keyword), at most 1000.
    pub added: Vec<String>,
    /// Names removed, at most 1000.
    pub removed: Vec<String>,
    /// How many were added in all.
    pub added_count: usize,
    /// How many were removed in all.
    pub removed_count: usize,
    /// Entries across the category's files before the change.
    pub size_before: usize,
    /// And after.
    pub size_after: usize,
}

/// An exemption granted or withdrawn by `schoolgate exempt`, in the same log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExemptionChange {
    /// When it was recorded.
    pub time: DateTime<Utc>,
    /// Always `exemption`: tells these records from list changes.
    pub kind: String,
    /// `add` or `remove`.
    pub action: String,
    /// The approver.
    pub by: String,
    /// The client exempted.
    pub client: String,
    /// The categories lifted.
    pub categories: Vec<String>,
    /// When it ends.
    pub until: DateTime<Utc>,
    /// Why.
    pub reason: String,
}

/// A line of the change-control log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    /// An exemption (tried first: only it has `kind`).
    Exemption(ExemptionChange),
    /// A list change.
    List(Change),
}

impl Record {
    /// When it was recorded.
    pub fn time(&self) -> DateTime<Utc> {
        match self {
            Record::Exemption(e) => e.time,
            Record::List(c) => c.time,
        }
    }
}

/// The log and the snapshots it is diffed against.
pub struct ChangeLog {
    log: PathBuf,
    snapshots: PathBuf,
    lock: PathBuf,
}

/// Held while comparing, editing and recording; released on drop.
pub struct Lock {
    _file: File,
}

/// A list file's entries as last recorded, sorted and distinct.
struct Snapshot {
    stamp: String,
    entries: Entries,
}

/// Entries as the log names them, sorted and distinct, in one buffer: a list of millions of
/// names costs its text and eight bytes a name here, not a `String` each.
#[derive(Default)]
struct Entries {
    text: String,
    spans: Vec<(u32, u32)>,
}

impl Entries {
    fn push(&mut self, entry: &str) {
        let start = self.text.len() as u32;
        self.text.push_str(entry);
        self.spans.push((start, entry.len() as u32));
    }

    fn get(&self, (start, len): (u32, u32)) -> &str {
        self.text
            .get(start as usize..(start + len) as usize)
            .unwrap_or("")
    }

    /// Sorts and removes duplicates; call once after the pushes.
    fn sort(mut self) -> Self {
        let mut spans = std::mem::take(&mut self.spans);
        spans.sort_unstable_by(|a, b| self.get(*a).cmp(self.get(*b)));
        spans.dedup_by(|a, b| self.get(*a) == self.get(*b));
        self.spans = spans;
        self
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        self.spans.iter().map(|s| self.get(*s))
    }
}

impl<S: AsRef<str>> FromIterator<S> for Entries {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut e = Entries::default();
        iter.into_iter().for_each(|s| e.push(s.as_ref()));
        e.sort()
    }
}

/// What changed between two sorted entry sets: counts, and the first names of each side.
struct Diff<'a> {
    added: usize,
    removed: usize,
    added_names: Vec<&'a str>,
    removed_names: Vec<&'a str>,
}

impl ChangeLog {
    /// The log and snapshots a config names.
    pub fn new(config: &Config) -> Self {
        ChangeLog {
            log: config.changes_log.clone(),
            snapshots: config.state_dir.join("snapshots"),
            lock: config.state_dir.join("changes.lock"),
        }
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.log
    }

    /// Takes the lock that serialises every writer of lists, snapshots and the log.
    pub fn lock(&self) -> Result<Lock, ChangeError> {
        if let Some(dir) = self.lock.parent() {
            fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(io(&self.lock))?;
        file.lock().map_err(io(&self.lock))?;
        Ok(Lock { _file: file })
    }

    /// Records every list file of `config` that differs from its snapshot. Returns what was
    /// recorded and the files that could not be compared.
    pub fn record_all(&self, config: &Config) -> (Vec<Change>, Vec<ChangeError>) {
        let mut changes = Vec::new();
        let mut errors = Vec::new();
        let lock = match self.lock() {
            Ok(l) => l,
            Err(e) => return (changes, vec![e]),
        };
        match self.record_policy(&lock, config) {
            Ok(Some(c)) => changes.push(c),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        for (list, files) in lists_of(config) {
            for file in &files {
                let url = config
                    .categories
                    .iter()
                    .flat_map(|c| &c.sources)
                    .find(|s| &s.copy == file)
                    .map(|s| s.url.as_str());
                let actor = url.map_or(Actor::FileEdit, |url| Actor::Remote { url });
                match self.record(&lock, &list, file, &files, actor) {
                    Ok(Some(c)) => changes.push(c),
                    Ok(None) => {}
                    Err(e) => errors.push(e),
                }
            }
        }
        (changes, errors)
    }

    /// Compares one list file with its snapshot; if they differ, appends a record attributed to
    /// `actor` and moves the snapshot on. `category_files` are all files of the list, for sizes.
    pub fn record(
        &self,
        _lock: &Lock,
        list: &str,
        file: &Path,
        category_files: &[PathBuf],
        actor: Actor<'_>,
    ) -> Result<Option<Change>, ChangeError> {
        let snap_path = self.snapshot_path(list, file);
        let stamp = stamp(file).map_err(io(file))?;
        // Every start and reload asks about every file: the stamp line answers for an unchanged
        // one without reading the whole snapshot (a 1,000,000-name pass peaked 14 MB higher).
        if read_stamp(&snap_path).is_some_and(|s| s == stamp) {
            return Ok(None);
        }
        let previous = read_snapshot(&snap_path);
        let current = entries_of(file).map_err(io(file))?;
        let empty = Entries::default();
        let before = previous.as_ref().map_or(&empty, |p| &p.entries);
        let d = diff(before, &current);
        let mut change = None;
        if d.added + d.removed > 0 {
            let others: usize = category_files
                .iter()
                .filter(|f| f.as_path() != file)
                .filter_map(|f| snapshot_len(&self.snapshot_path(list, f)))
                .sum();
            let (by, reason, url) = match (&previous, actor) {
                (_, Actor::Person { by, reason }) => (by, Some(reason.to_string()), None),
                (_, Actor::Remote { url }) => (REMOTE_SOURCE, None, Some(url.to_string())),
                (None, Actor::FileEdit) => (INITIAL_LOAD, None, None),
                (Some(_), Actor::FileEdit) => (FILE_EDIT, None, None),
            };
            let c = Change {
                time: Utc::now(),
                by: by.to_string(),
                reason,
                category: list.to_string(),
                file: file.to_path_buf(),
                url,
                added_count: d.added,
                removed_count: d.removed,
                added: d.added_names.iter().map(|n| n.to_string()).collect(),
                removed: d.removed_names.iter().map(|n| n.to_string()).collect(),
                size_before: others + before.len(),
                size_after: others + current.len(),
            };
            self.append(&c)?;
            change = Some(c);
        }
        write_snapshot(&snap_path, &stamp, &current)?;
        Ok(change)
    }

    /// Records a change to the filtering settings of the config itself (what groups block,
    /// schedules, locked categories, who is in which group...), diffed as readable lines against
    /// the last recorded settings, so a config edit is in the log like a list edit.
    fn record_policy(&self, _lock: &Lock, config: &Config) -> Result<Option<Change>, ChangeError> {
        let snap_path = self.snapshots.join("config").join("policy.snapshot");
        let lines = policy_lines(config);
        let stamp = format!("{:016x}", fnv(lines.join("\n").as_bytes()));
        let current: Entries = lines.iter().collect();
        let previous = read_snapshot(&snap_path);
        if previous.as_ref().is_some_and(|p| p.stamp == stamp) {
            return Ok(None);
        }
        let empty = Entries::default();
        let before = previous.as_ref().map_or(&empty, |p| &p.entries);
        let d = diff(before, &current);
        let change = Change {
            time: Utc::now(),
            by: if previous.is_some() {
                FILE_EDIT
            } else {
                INITIAL_LOAD
            }
            .to_string(),
            reason: None,
            category: "config".to_string(),
            file: config.path.clone(),
            url: None,
            added_count: d.added,
            removed_count: d.removed,
            added: d.added_names.iter().map(|n| n.to_string()).collect(),
            removed: d.removed_names.iter().map(|n| n.to_string()).collect(),
            size_before: before.len(),
            size_after: current.len(),
        };
        if change.added_count + change.removed_count > 0 {
            self.append(&change)?;
        }
        write_snapshot(&snap_path, &stamp, &current)?;
        Ok((change.added_count + change.removed_count > 0).then_some(change))
    }

    fn append(&self, change: &Change) -> Result<(), ChangeError> {
        append_record(&self.log, change).map_err(io(&self.log))
    }

    fn snapshot_path(&self, list: &str, file: &Path) -> PathBuf {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let hash = fnv(file.as_os_str().as_encoded_bytes());
        self.snapshots
            .join(list)
            .join(format!("{name}-{:08x}.snapshot", hash as u32))
    }
}

/// Appends one record to the change-control log as one write to a file opened for appending
/// only. The server and the command line both append; one write each keeps their lines whole
/// (a record formatted in pieces could be split by the other's).
///
/// Each record ends with a link: a SHA-256 over the link of the record before it and the record
/// itself. Editing, removing or inserting a record breaks the links after it, which
/// [`verify_log`] finds; the daily report carries the last link, so cutting records off the end
/// is found by comparing it with an earlier report.
pub(crate) fn append_record(log: &Path, record: &impl Serialize) -> std::io::Result<()> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir)?;
    }
    let body = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    if body.last() != Some(&b'}') {
        return Err(std::io::Error::other(
            "a change record must be a JSON object",
        ));
    }
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o640)
        .open(log)?;
    // Every appender links to the record before its own: reading that link and writing must
    // not interleave with another appender's. Released when `f` closes.
    f.lock()?;
    let (previous, whole) = last_link(&f)?;
    let link = link(&previous, &body);
    // After a write cut short (a crash, a full disk) the new record starts on a line of its own.
    let mut line = if whole { Vec::new() } else { b"\n".to_vec() };
    line.extend_from_slice(&body);
    line.pop();
    line.extend_from_slice(LINK_FIELD.as_bytes());
    line.extend_from_slice(link.as_bytes());
    line.extend_from_slice(b"\"}\n");
    f.write_all(&line)?;
    f.sync_data()
}

/// How a record's link is written: the last field of its line.
const LINK_FIELD: &str = ",\"link\":\"";

/// The link of a record whose previous record had link `previous` ("" for the first).
fn link(previous: &str, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(previous.as_bytes());
    h.update(b"\n");
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A line split into the record as it was linked and its link; `None` for a line without one
/// (written before links were kept, or not by schoolgate).
fn unlink(line: &str) -> Option<(String, &str)> {
    // Quotes inside JSON strings are escaped, so this sequence only occurs as a field name.
    let at = line.rfind(LINK_FIELD)?;
    let link = line[at + LINK_FIELD.len()..].strip_suffix("\"}")?;
    Some((format!("{}}}", &line[..at]), link))
}

/// The link of the log's last line ("" when it has none), read from the end of the file, and
/// whether that line is whole (the file is empty or ends with a newline).
fn last_link(f: &File) -> std::io::Result<(String, bool)> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    let mut window = 4096u64;
    loop {
        let start = len.saturating_sub(window);
        let mut tail = vec![0u8; usize::try_from(len - start).unwrap_or(0)];
        f.read_exact_at(&mut tail, start)?;
        let whole = tail.last().is_none_or(|&b| b == b'\n');
        let text = tail.strip_suffix(b"\n").unwrap_or(&tail);
        let last = match memchr::memrchr(b'\n', text) {
            Some(nl) => &text[nl + 1..],
            None if start == 0 => text,
            None => {
                window *= 4;
                continue;
            }
        };
        let link = std::str::from_utf8(last)
            .ok()
            .and_then(unlink)
            .map(|(_, link)| link.to_string())
            .unwrap_or_default();
        return Ok((link, whole));
    }
}

/// What checking the change-control log's links found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verified {
    /// Records in the log.
    pub records: usize,
    /// Records at the start written before links were kept.
    pub unlinked_at_start: usize,
    /// The last record's link: keep it (the daily report carries it) to tell later whether
    /// records were cut off the end.
    pub last_link: String,
    /// Lines (1-based) whose link does not follow: that record was edited, or records before
    /// it were removed or inserted.
    pub broken: Vec<usize>,
}

impl Verified {
    /// One sentence for the daily summary.
    pub fn summary(&self) -> String {
        if !self.broken.is_empty() {
            let lines: Vec<String> = self.broken.iter().map(ToString::to_string).collect();
            return format!(
                "The change-control log's links are broken at line {}: those records were \
                 edited, or records before them removed or inserted. Run `schoolgate changes \
                 --verify` and find out who changed the file.",
                lines.join(", ")
            );
        }
        if self.last_link.is_empty() {
            return "The change-control log has no linked records yet.".to_string();
        }
        format!(
            "{} records, links intact; last link {}. Keep this summary: if records are later \
             cut from the end of the log, its last link will no longer match this one.",
            self.records, self.last_link
        )
    }
}

/// Checks every link of the change-control log.
pub fn verify_log(path: &Path) -> Result<Verified, ChangeError> {
    verify_log_reading(path, |_| {})
}

/// As [`verify_log`], handing `each` every record line on the way, so a reader of the records
/// (the daily summary) reads the log once.
pub fn verify_log_reading(
    path: &Path,
    mut each: impl FnMut(&str),
) -> Result<Verified, ChangeError> {
    let mut v = Verified::default();
    let mut linked = false;
    log_lines(path, |number, line| {
        each(line);
        v.records += 1;
        match unlink(line) {
            Some((body, stored)) => {
                if link(&v.last_link, body.as_bytes()) != stored {
                    v.broken.push(number);
                }
                v.last_link = stored.to_string();
                linked = true;
            }
            None if !linked => v.unlinked_at_start += 1,
            None => {
                v.broken.push(number);
                v.last_link.clear();
            }
        }
    })?;
    Ok(v)
}

/// Calls `each` with every non-blank line of the log and its 1-based number; a missing log has
/// none.
fn log_lines(path: &Path, mut each: impl FnMut(usize, &str)) -> Result<(), ChangeError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path)(e)),
    };
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(path))?;
        if !line.trim().is_empty() {
            each(i + 1, &line);
        }
    }
    Ok(())
}

/// Reads the log, oldest first, keeping records at or after `since`. Lines that do not parse
/// (a write cut short by a crash) are returned by number so they can be reported.
pub fn read_log(
    path: &Path,
    since: Option<DateTime<Utc>>,
) -> Result<(Vec<Record>, Vec<usize>), ChangeError> {
    let mut changes = Vec::new();
    let mut bad = Vec::new();
    log_lines(path, |number, line| {
        match serde_json::from_str::<Record>(line) {
            Ok(c) if since.is_none_or(|s| c.time() >= s) => changes.push(c),
            Ok(_) => {}
            Err(_) => bad.push(number),
        }
    })?;
    Ok((changes, bad))
}

/// The config's filtering settings as sorted, readable lines: the unit a config diff is made of.
fn policy_lines(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for c in &config.categories {
        if c.locked {
            out.push(format!("category {} is locked", c.name));
        }
        if c.alert {
            out.push(format!("category {} raises alerts", c.name));
        }
        for f in &c.files {
            out.push(format!("category {} reads {}", c.name, f.display()));
        }
        for s in &c.sources {
            out.push(format!("category {} downloads {}", c.name, s.url));
        }
    }
    for g in config.groups.values() {
        for c in &g.block {
            out.push(format!("group {} blocks {c}", g.name));
        }
        for s in &g.schedules {
            let days: Vec<String> = s.days.iter().map(|d| d.to_string()).collect();
            out.push(format!(
                "group {} schedule {:?}: {} {}-{}, blocks [{}], allows [{}]",
                g.name,
                s.name,
                days.join(","),
                s.from.format("%H:%M"),
                s.to.format("%H:%M"),
                s.block.join(", "),
                s.unblock.join(", ")
            ));
        }
        out.push(format!("group {} safe search {:?}", g.name, g.safesearch).to_lowercase());
        if g.block_unsafe_search {
            out.push(format!(
                "group {} blocks search engines without safe search",
                g.name
            ));
        }
        for f in &g.allow_files {
            out.push(format!("group {} allows names in {}", g.name, f.display()));
        }
        for f in &g.block_files {
            out.push(format!("group {} blocks names in {}", g.name, f.display()));
        }
    }
    for c in &config.clients {
        let who = match &c.matcher {
            crate::config::ClientMatch::Net(n) => n.to_string(),
            crate::config::ClientMatch::Mac(m) => m
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
            crate::config::ClientMatch::Hostname(h) => format!("hostname {h}"),
        };
        let name = c.name.as_deref().unwrap_or("");
        out.push(format!("client {who} {name:?} is in group {}", c.group));
    }
    for n in &config.client_networks {
        out.push(format!("answers network {n}"));
    }
    for a in &config.approvers {
        out.push(format!("exemptions approved by {a}"));
    }
    out.push(format!("blocked names answered {:?}", config.sinkhole.mode).to_lowercase());
    out.sort_unstable();
    out.dedup();
    out
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Every list of a config with the files it is compiled from.
fn lists_of(config: &Config) -> Vec<(String, Vec<PathBuf>)> {
    let mut out = Vec::new();
    if let Some(allow) = &config.allow_file {
        out.push(("allow".to_string(), vec![allow.clone()]));
    }
    for c in &config.categories {
        out.push((c.name.clone(), c.sources_on_disk()));
    }
    out
}

/// The entries of a list file as the log names them, sorted and distinct.
fn entries_of(file: &Path) -> std::io::Result<Entries> {
    let mut entries = Entries::default();
    let parsed = parse_each(file, &fs::read(file)?, |e| match e.kind {
        EntryKind::Block => entries.push(&e.name),
        EntryKind::Allow => entries.push(&format!("@@{}", e.name)),
    });
    for k in parsed.keywords {
        entries.push(&format!("keyword:{}", k.text));
    }
    Ok(entries.sort())
}

/// Added and removed between two sorted, distinct sets, in one pass over both; names beyond
/// [`MAX_NAMES`] a side are counted, not kept.
fn diff<'a>(before: &'a Entries, after: &'a Entries) -> Diff<'a> {
    let mut d = Diff {
        added: 0,
        removed: 0,
        added_names: Vec::new(),
        removed_names: Vec::new(),
    };
    let add = |d: &mut Diff<'a>, n: &'a str| {
        d.added += 1;
        if d.added_names.len() < MAX_NAMES {
            d.added_names.push(n);
        }
    };
    let remove = |d: &mut Diff<'a>, n: &'a str| {
        d.removed += 1;
        if d.removed_names.len() < MAX_NAMES {
            d.removed_names.push(n);
        }
    };
    let (mut b, mut a) = (before.iter().peekable(), after.iter().peekable());
    loop {
        match (b.peek().copied(), a.peek().copied()) {
            (Some(x), Some(y)) if x == y => {
                b.next();
                a.next();
            }
            (Some(x), Some(y)) if x < y => {
                remove(&mut d, x);
                b.next();
            }
            (_, Some(y)) => {
                add(&mut d, y);
                a.next();
            }
            (Some(x), None) => {
                remove(&mut d, x);
                b.next();
            }
            (None, None) => return d,
        }
    }
}

/// Size and modification time: equal stamps mean the file was not touched since the snapshot.
fn stamp(file: &Path) -> std::io::Result<String> {
    let md = fs::metadata(file)?;
    let mtime = md
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Ok(format!("{}:{}", md.len(), mtime))
}

/// A snapshot's stamp: its first line only.
fn read_stamp(path: &Path) -> Option<String> {
    let mut first = String::new();
    BufReader::new(File::open(path).ok()?)
        .read_line(&mut first)
        .ok()?;
    stamp_of(first.trim_end())
}

/// The stamp a snapshot's first line holds.
fn stamp_of(first_line: &str) -> Option<String> {
    Some(first_line.strip_prefix("# stamp ")?.to_string())
}

/// The second line of a snapshot: how many entries follow. Snapshots written before it was
/// kept have none and are counted by reading them.
const COUNT_LINE: &str = "# entries ";

fn read_snapshot(path: &Path) -> Option<Snapshot> {
    let text = fs::read_to_string(path).ok()?;
    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let stamp = stamp_of(first)?;
    let rest = match rest.split_once('\n') {
        Some((count, after)) if count.starts_with(COUNT_LINE) => after,
        _ => rest,
    };
    Some(Snapshot {
        stamp,
        entries: rest.lines().collect(),
    })
}

/// How many entries a snapshot holds, from its first two lines when it says.
fn snapshot_len(path: &Path) -> Option<usize> {
    let mut head = BufReader::new(File::open(path).ok()?);
    let (mut first, mut second) = (String::new(), String::new());
    head.read_line(&mut first).ok()?;
    head.read_line(&mut second).ok()?;
    match second.trim_end().strip_prefix(COUNT_LINE) {
        Some(n) => n.parse().ok(),
        None => read_snapshot(path).map(|s| s.entries.len()),
    }
}

fn write_snapshot(path: &Path, stamp: &str, entries: &Entries) -> Result<(), ChangeError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension("snapshot.tmp");
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let mut w = std::io::BufWriter::new(file);
    writeln!(w, "# stamp {stamp}")
        .and_then(|()| writeln!(w, "{COUNT_LINE}{}", entries.len()))
        .and_then(|()| entries.iter().try_for_each(|e| writeln!(w, "{e}")))
        .and_then(|()| w.flush())
        .map_err(io(&tmp))?;
    drop(w);
    fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, ChangeLog, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let log = ChangeLog {
            log: dir.path().join("logs/changes.jsonl"),
            snapshots: dir.path().join("state/snapshots"),
            lock: dir.path().join("state/changes.lock"),
        };
        let file = dir.path().join("adult.txt");
        (dir, log, file)
    }

    /// Writes and moves the mtime on, as a later edit would.
    fn edit(file: &Path, text: &str) {
        let before = fs::metadata(file).and_then(|m| m.modified()).ok();
        fs::write(file, text).unwrap();
        if let Some(t) = before {
            let later = t + std::time::Duration::from_secs(1);
            File::options()
                .write(true)
                .open(file)
                .unwrap()
                .set_modified(later)
                .unwrap();
        }
    }

    #[test]
    fn first_sight_then_hand_edit_then_person_each_recorded_once() {
        let (_dir, log, file) = setup();
        let files = vec![file.clone()];
        edit(&file, "a.example\nb.example\n");
        let lock = log.lock().unwrap();
        let first = log
            .record(&lock, "adult", &file, &files, Actor::FileEdit)
            .unwrap()
            .unwrap();
        assert_eq!(first.by, INITIAL_LOAD);
        assert_eq!(first.added, vec!["a.example", "b.example"]);
        assert!(log
            .record(&lock, "adult", &file, &files, Actor::FileEdit)
            .unwrap()
            .is_none());

        edit(&file, "a.example\n@@||ok.b.example^\nc.example\n");
        let hand = log
            .record(&lock, "adult", &file, &files, Actor::FileEdit)
            .unwrap()
            .unwrap();
        assert_eq!(hand.by, FILE_EDIT);
        assert_eq!(hand.added, vec!["@@ok.b.example", "c.example"]);
        assert_eq!(hand.removed, vec!["b.example"]);
        assert_eq!((hand.size_before, hand.size_after), (2, 3));

        edit(
            &file,
            "a.example\n@@||ok.b.example^\nc.example\nd.example\n",
        );
        let by = Actor::Person {
            by: "alice",
            reason: "ticket 42",
        };
        let person = log
            .record(&lock, "adult", &file, &files, by)
            .unwrap()
            .unwrap();
        assert_eq!(
            (person.by.as_str(), person.reason.as_deref()),
            ("alice", Some("ticket 42"))
        );
        assert!(log
            .record(&lock, "adult", &file, &files, Actor::FileEdit)
            .unwrap()
            .is_none());

        let (all, bad) = read_log(log.path(), None).unwrap();
        assert_eq!(
            all,
            vec![
                Record::List(first),
                Record::List(hand),
                Record::List(person.clone())
            ]
        );
        assert!(bad.is_empty());
        let (since, _) = read_log(log.path(), Some(person.time)).unwrap();
        assert_eq!(since, vec![Record::List(person)]);
    }

    #[test]
    fn diff_walks_both_sorted_lists() {
        let before: Entries = ["f", "c", "a", "d", "c"].into_iter().collect();
        let after: Entries = ["b", "c", "e", "f", "g"].into_iter().collect();
        let d = diff(&before, &after);
        assert_eq!(d.added_names, ["b", "e", "g"]);
        assert_eq!(d.removed_names, ["a", "d"]);
        assert_eq!((d.added, d.removed), (3, 2));
        let none = Entries::default();
        assert_eq!(diff(&none, &before).added, 4);
        assert_eq!(diff(&before, &none).removed, 4);
        let many: Entries = (0..MAX_NAMES + 5).map(|i| format!("n{i:05}")).collect();
        let d = diff(&none, &many);
        assert_eq!((d.added, d.added_names.len()), (MAX_NAMES + 5, MAX_NAMES));
    }

    #[test]
    fn touching_without_changing_records_nothing() {
        let (_dir, log, file) = setup();
        let files = vec![file.clone()];
        edit(&file, "a.example\n");
        let lock = log.lock().unwrap();
        log.record(&lock, "adult", &file, &files, Actor::FileEdit)
            .unwrap();
        edit(&file, "# a comment now\na.example\n");
        assert!(log
            .record(&lock, "adult", &file, &files, Actor::FileEdit)
            .unwrap()
            .is_none());
        let (all, _) = read_log(log.path(), None).unwrap();
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn log_is_created_0640_and_only_appended() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, log, file) = setup();
        let files = vec![file.clone()];
        let lock = log.lock().unwrap();
        edit(&file, "a.example\n");
        log.record(&lock, "adult", &file, &files, Actor::FileEdit)
            .unwrap();
        let first = fs::read(log.path()).unwrap();
        edit(&file, "b.example\n");
        log.record(&lock, "adult", &file, &files, Actor::FileEdit)
            .unwrap();
        let second = fs::read(log.path()).unwrap();
        assert!(second.starts_with(&first) && second.len() > first.len());
        let mode = fs::metadata(log.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o137, 0, "mode {mode:o}");
    }

    #[test]
    fn sizes_count_the_categorys_other_files_from_their_snapshot_headers() {
        let (dir, log, file) = setup();
        let other = dir.path().join("adult-extra.txt");
        let files = vec![file.clone(), other.clone()];
        let lock = log.lock().unwrap();
        edit(&file, "a.example\n");
        edit(&other, "x.example\ny.example\nz.example\n");
        for f in &files {
            log.record(&lock, "adult", f, &files, Actor::FileEdit)
                .unwrap();
        }
        let snap = log.snapshot_path("adult", &other);
        let text = fs::read_to_string(&snap).unwrap();
        assert!(text.lines().nth(1) == Some("# entries 3"), "{text}");
        assert_eq!(read_snapshot(&snap).unwrap().entries.len(), 3);
        let sizes_after_edit = |text: &str| {
            edit(&file, text);
            let c = log
                .record(&lock, "adult", &file, &files, Actor::FileEdit)
                .unwrap()
                .unwrap();
            (c.size_before, c.size_after)
        };
        assert_eq!(sizes_after_edit("a.example\nb.example\n"), (4, 5));

        // A snapshot from before the count line is counted by reading it.
        let old_format: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with(COUNT_LINE))
            .collect();
        fs::write(&snap, old_format.join("\n") + "\n").unwrap();
        assert_eq!(snapshot_len(&snap), Some(3));
        assert_eq!(sizes_after_edit("a.example\n"), (5, 4));
    }

    #[test]
    fn links_find_an_edited_removed_or_inserted_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("changes.jsonl");
        // Two records from before links were kept.
        fs::write(
            &path,
            "{\"by\":\"old\",\"n\":1}\n{\"by\":\"old\",\"n\":2}\n",
        )
        .unwrap();
        for n in 3..=6 {
            append_record(&path, &serde_json::json!({"by": "alice", "n": n})).unwrap();
        }
        let good = verify_log(&path).unwrap();
        assert_eq!((good.records, good.unlinked_at_start), (6, 2));
        assert!(good.broken.is_empty(), "{good:?}");
        assert_eq!(good.last_link.len(), 64);
        assert!(good.summary().contains("links intact"));

        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let check = |lines: &[&str]| {
            fs::write(&path, lines.join("\n") + "\n").unwrap();
            verify_log(&path).unwrap().broken
        };
        let edited = lines[3].replace("alice", "mallory");
        assert_eq!(
            check(&[lines[0], lines[1], lines[2], &edited, lines[4], lines[5]]),
            [4]
        );
        assert_eq!(
            check(&[lines[0], lines[1], lines[2], lines[4], lines[5]]),
            [4]
        );
        assert_eq!(
            check(&[lines[0], lines[1], lines[2], lines[3], lines[2], lines[4], lines[5]]),
            [5, 6]
        );
        assert_eq!(
            check(&[
                lines[0],
                lines[1],
                lines[2],
                lines[3],
                "{\"by\":\"x\"}",
                lines[4],
                lines[5]
            ]),
            [5, 6]
        );
        // Cutting records off the end keeps the links whole, but changes the last link that
        // the daily summary carries.
        let cut = {
            fs::write(&path, lines[..5].join("\n") + "\n").unwrap();
            verify_log(&path).unwrap()
        };
        assert!(cut.broken.is_empty());
        assert_ne!(cut.last_link, good.last_link);

        // A record cut short by a crash is reported, and the next one starts on its own line.
        fs::write(&path, format!("{text}{{\"by\":\"torn")).unwrap();
        append_record(&path, &serde_json::json!({"by": "carol"})).unwrap();
        let after_tear = fs::read_to_string(&path).unwrap();
        assert!(after_tear
            .lines()
            .last()
            .unwrap()
            .starts_with("{\"by\":\"carol\""));
        assert_eq!(verify_log(&path).unwrap().broken, [7]);

        // The next record links to the last one, whatever was there before.
        fs::write(&path, text).unwrap();
        append_record(
            &path,
            &serde_json::json!({"by": "bob", "reason": "a \",\"link\":\" trick"}),
        )
        .unwrap();
        let v = verify_log(&path).unwrap();
        assert!(v.broken.is_empty(), "{v:?}");
        assert_eq!(v.records, 7);
        assert!(v.summary().contains("links intact"));
    }
}
