//! One pass over each of the day's files.
//!
//! The breach file (thousands to hundreds of thousands of lines) is read first and gives
//! almost everything. The access file (millions of lines) is then streamed once, in chunks
//! of whole lines that one thread reads (and decompresses) while another parses them without
//! copying, only to count queries, devices, and what incident devices asked after their first
//! serious attempt.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use chrono::NaiveDate;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Deserialize;

use super::{
    Attempt, CategoryCount, Circumvention, ClientCount, Device, Incident, NameCount, Problem,
    Repeat, Report, ReportError, Totals, LATER_SHOWN,
};
use crate::config::{ClientMatch, Config};
use crate::journal::{Notice, Record, Stream};

/// Attempts listed per incident device; the rest are counted.
const ATTEMPTS_SHOWN: usize = 200;

/// Builds the report from the day's breach, access and notice files.
pub(super) fn day(config: &Config, date: NaiveDate) -> Result<Report, ReportError> {
    let dir = &config.logs.dir;
    let mut agg = Breaches::new(config);
    if let Some(path) = Stream::Breach.existing(dir, date) {
        crate::journal::read_lines::<Record>(&path, |r| agg.add(r)).map_err(|source| {
            ReportError::Read {
                path: path.clone(),
                source,
            }
        })?;
    }
    let mut totals = Totals::default();
    if let Some(path) = Stream::Access.existing(dir, date) {
        access_pass(&path, &mut agg, &mut totals).map_err(|source| ReportError::Read {
            path: path.clone(),
            source,
        })?;
    }
    let mut problems = Vec::new();
    if let Some(path) = Stream::Notices.existing(dir, date) {
        let mut by_kind: FxHashMap<(String, Option<String>), Problem> = FxHashMap::default();
        crate::journal::read_lines::<Notice>(&path, |n| {
            let key = (n.kind.clone(), n.client.clone());
            by_kind
                .entry(key)
                .and_modify(|p| p.count += n.count.max(1))
                .or_insert_with(|| Problem {
                    time: n.time.clone(),
                    kind: n.kind.clone(),
                    count: n.count.max(1),
                    client: n.client.as_ref().map(|c| Device {
                        addr: c.clone(),
                        name: config_name(config, c),
                    }),
                    detail: n.detail.clone(),
                });
        })
        .map_err(|source| ReportError::Read {
            path: path.clone(),
            source,
        })?;
        problems = by_kind.into_values().collect();
        problems.sort_by(|a, b| a.time.cmp(&b.time).then(a.kind.cmp(&b.kind)));
    }
    if Stream::Access.existing(dir, date).is_none() && Stream::Breach.existing(dir, date).is_none()
    {
        // An empty day is news too: the server was stopped, or logs go somewhere else.
        problems.push(Problem {
            time: date.format("%Y-%m-%dT00:00:00").to_string(),
            kind: "no_logs".into(),
            count: 0,
            client: None,
            detail: Some(format!(
                "no access or breach log for this day in {}; was schoolgate running?",
                dir.display()
            )),
        });
    }
    Ok(agg.finish(config, date, totals, problems))
}

fn config_name(config: &Config, addr: &str) -> Option<String> {
    let ip: std::net::IpAddr = addr.parse().ok()?;
    config.clients.iter().find_map(|c| match &c.matcher {
        ClientMatch::Net(net) if net.contains(&ip) => c.name.clone(),
        _ => None,
    })
}

/// The fields of an access line the report needs, borrowed from the line where possible.
#[derive(Deserialize)]
struct AccessLine<'a> {
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow)]
    client: Cow<'a, str>,
}

/// Bytes handed from the reading thread to the parsing one at a time.
const CHUNK: usize = 4 << 20;

/// Decompressing and parsing run on two threads: on a finished (gzip) day each takes about
/// as long as the other.
fn access_pass(path: &Path, agg: &mut Breaches, totals: &mut Totals) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    let input: Box<dyn Read + Send> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(
            std::io::BufReader::with_capacity(1 << 20, file),
        ))
    } else {
        Box::new(file)
    };
    let (full_tx, full_rx) = crossbeam_channel::bounded::<Vec<u8>>(4);
    let (empty_tx, empty_rx) = crossbeam_channel::bounded::<Vec<u8>>(8);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_chunks(input, &full_tx, &empty_rx));
        let mut clients: FxHashSet<Box<str>> = FxHashSet::default();
        for chunk in full_rx {
            let mut start = 0;
            for end in memchr::memchr_iter(b'\n', &chunk).chain([chunk.len()]) {
                let line = &chunk[start..end];
                start = end + 1;
                let Ok(a) = serde_json::from_slice::<AccessLine>(line) else {
                    continue;
                };
                totals.queries += 1;
                if !clients.contains(a.client.as_ref()) {
                    clients.insert(a.client.as_ref().into());
                }
                if let Some(&i) = agg.incident_of.get(a.client.as_ref()) {
                    agg.later_access(i, &a);
                }
            }
            let _ = empty_tx.try_send(chunk);
        }
        totals.clients = clients.len() as u64;
        reader
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the log reading thread panicked")))
    })
}

/// Reads whole lines in chunks of about [`CHUNK`] bytes, reusing returned buffers.
fn read_chunks(
    mut input: impl Read,
    full: &crossbeam_channel::Sender<Vec<u8>>,
    empty: &crossbeam_channel::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    let mut carry = Vec::new();
    loop {
        let mut chunk = empty
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK + 64 * 1024));
        chunk.clear();
        chunk.append(&mut carry);
        let start = chunk.len();
        chunk.resize(start + CHUNK, 0);
        let mut filled = start;
        while filled < chunk.len() {
            match input.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let eof = filled < chunk.len();
        chunk.truncate(filled);
        if !eof {
            match memchr::memrchr(b'\n', &chunk) {
                Some(end) => carry.extend_from_slice(&chunk[end + 1..]),
                None => {
                    // One line longer than a chunk: keep reading it.
                    carry = chunk;
                    continue;
                }
            }
            let end = chunk.len() - carry.len();
            chunk.truncate(end);
        }
        if full.send(chunk).is_err() || eof {
            return Ok(());
        }
    }
}

#[derive(Default)]
struct ClientAgg {
    device: Option<Device>,
    group: String,
    attempts: u64,
    per_category: FxHashMap<String, u64>,
}

#[derive(Default)]
struct NameAgg {
    category: String,
    attempts: u64,
    clients: FxHashSet<String>,
}

struct IncidentAgg {
    incident: Incident,
    first: String,
    attempts_more: u64,
}

/// Running totals over the breach file.
struct Breaches {
    serious_categories: FxHashSet<String>,
    circumvention: FxHashSet<String>,
    total: u64,
    by_category: FxHashMap<String, (u64, FxHashSet<String>)>,
    by_client: FxHashMap<String, ClientAgg>,
    by_hour: [u64; 24],
    names: FxHashMap<String, NameAgg>,
    circumvented: FxHashMap<(String, String), Circumvention>,
    incidents: Vec<IncidentAgg>,
    incident_of: FxHashMap<String, usize>,
}

impl Breaches {
    fn new(config: &Config) -> Self {
        Breaches {
            serious_categories: config
                .categories
                .iter()
                .filter(|c| c.locked || c.alert)
                .map(|c| c.name.clone())
                .collect(),
            circumvention: config.report.circumvention.iter().cloned().collect(),
            total: 0,
            by_category: FxHashMap::default(),
            by_client: FxHashMap::default(),
            by_hour: [0; 24],
            names: FxHashMap::default(),
            circumvented: FxHashMap::default(),
            incidents: Vec::new(),
            incident_of: FxHashMap::default(),
        }
    }

    fn add(&mut self, r: Record) {
        self.total += 1;
        let category = r.category.clone().unwrap_or_else(|| "other".into());
        let device = Device {
            addr: r.client.clone(),
            name: r.client_name.clone(),
        };
        let cat = self.by_category.entry(category.clone()).or_default();
        cat.0 += 1;
        if !cat.1.contains(&r.client) {
            cat.1.insert(r.client.clone());
        }
        let c = self.by_client.entry(r.client.clone()).or_default();
        c.attempts += 1;
        if c.device.is_none() {
            c.device = Some(device.clone());
            c.group = r.group.clone();
        }
        *c.per_category.entry(category.clone()).or_default() += 1;
        if let Some(h) = hour(&r.time) {
            self.by_hour[h] += 1;
        }
        let n = self.names.entry(r.name.clone()).or_default();
        n.attempts += 1;
        if n.category.is_empty() {
            n.category = category.clone();
        }
        if !n.clients.contains(&r.client) {
            n.clients.insert(r.client.clone());
        }
        if self.circumvention.contains(&category) {
            self.circumvented
                .entry((r.client.clone(), r.name.clone()))
                .or_insert_with(|| Circumvention {
                    client: device.clone(),
                    name: r.name.clone(),
                    attempts: 0,
                    first: r.time.clone(),
                })
                .attempts += 1;
        }
        let attempt = Attempt {
            time: r.time.clone(),
            name: r.name,
            action: r.action,
            category: r.category,
        };
        let serious = self.serious_categories.contains(&category);
        match self.incident_of.get(&r.client) {
            Some(&i) => {
                let inc = &mut self.incidents[i];
                if serious {
                    if inc.incident.attempts.len() < ATTEMPTS_SHOWN {
                        inc.incident.attempts.push(attempt);
                    } else {
                        inc.attempts_more += 1;
                    }
                } else if inc.incident.later.len() < LATER_SHOWN {
                    inc.incident.later.push(attempt);
                } else {
                    inc.incident.later_more += 1;
                }
            }
            None if serious => {
                self.incident_of
                    .insert(r.client.clone(), self.incidents.len());
                self.incidents.push(IncidentAgg {
                    first: attempt.time.clone(),
                    incident: Incident {
                        client: device,
                        group: r.group,
                        attempts: vec![attempt],
                        attempts_more: 0,
                        later: Vec::new(),
                        later_more: 0,
                        later_queries: 0,
                    },
                    attempts_more: 0,
                });
            }
            None => {}
        }
    }

    /// An access line from an incident device after its first serious attempt: counted, so
    /// the coordinator knows how much more there is to look at with `logs --client`.
    fn later_access(&mut self, i: usize, a: &AccessLine) {
        let inc = &mut self.incidents[i];
        if a.time.as_ref() > inc.first.as_str() {
            inc.incident.later_queries += 1;
        }
    }

    fn finish(
        self,
        config: &Config,
        date: NaiveDate,
        mut totals: Totals,
        problems: Vec<Problem>,
    ) -> Report {
        let threshold = u64::from(config.report.repeat_threshold);
        let top = config.report.top;
        totals.breaches = self.total;
        totals.breach_clients = self.by_client.len() as u64;
        totals.serious_clients = self.incidents.len() as u64;
        totals.serious_attempts = self
            .incidents
            .iter()
            .map(|i| i.incident.attempts.len() as u64 + i.attempts_more)
            .sum();

        let mut by_category: Vec<CategoryCount> = self
            .by_category
            .into_iter()
            .map(|(category, (attempts, clients))| CategoryCount {
                serious: self.serious_categories.contains(&category),
                category,
                attempts,
                clients: clients.len() as u64,
            })
            .collect();
        by_category.sort_by(|a, b| {
            b.serious
                .cmp(&a.serious)
                .then(b.attempts.cmp(&a.attempts))
                .then(a.category.cmp(&b.category))
        });

        let mut repeated = Vec::new();
        let mut by_client: Vec<ClientCount> = self
            .by_client
            .into_values()
            .map(|c| {
                let device = c.device.unwrap_or_else(|| Device {
                    addr: String::new(),
                    name: None,
                });
                let mut cats: Vec<(&String, &u64)> = c.per_category.iter().collect();
                cats.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                let mut is_repeat = false;
                for (cat, n) in &cats {
                    if **n >= threshold {
                        is_repeat = true;
                        repeated.push(Repeat {
                            client: device.clone(),
                            category: (*cat).clone(),
                            attempts: **n,
                        });
                    }
                }
                ClientCount {
                    top_category: cats.first().map(|c| c.0.clone()).unwrap_or_default(),
                    client: device,
                    group: c.group,
                    attempts: c.attempts,
                    repeated: is_repeat,
                }
            })
            .collect();
        by_client.sort_by(|a, b| b.attempts.cmp(&a.attempts).then(a.client.cmp(&b.client)));
        by_client.truncate(top);
        repeated.sort_by(|a, b| b.attempts.cmp(&a.attempts).then(a.client.cmp(&b.client)));

        let mut top_names: Vec<NameCount> = self
            .names
            .into_iter()
            .map(|(name, n)| NameCount {
                name,
                category: n.category,
                attempts: n.attempts,
                clients: n.clients.len() as u64,
            })
            .collect();
        top_names.sort_by(|a, b| b.attempts.cmp(&a.attempts).then(a.name.cmp(&b.name)));
        top_names.truncate(top);

        let mut circumvention: Vec<Circumvention> = self.circumvented.into_values().collect();
        circumvention.sort_by(|a, b| b.attempts.cmp(&a.attempts).then(a.first.cmp(&b.first)));

        let serious = self
            .incidents
            .into_iter()
            .map(|mut i| {
                i.incident.attempts_more = i.attempts_more;
                i.incident
            })
            .collect();

        Report {
            school: config.report.school.clone(),
            date: date.format("%Y-%m-%d").to_string(),
            anonymised: false,
            totals,
            serious,
            by_category,
            by_client,
            by_hour: self.by_hour.to_vec(),
            top_names,
            repeated,
            circumvention,
            changes: Vec::new(),
            exemptions: Vec::new(),
            problems,
            change_log: Default::default(),
        }
    }
}

/// The local hour from an RFC 3339 time (`2026-11-26T09:...`).
fn hour(time: &str) -> Option<usize> {
    time.get(11..13)?.parse::<usize>().ok().filter(|h| *h < 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(input: &[u8]) -> Vec<Vec<u8>> {
        let (full_tx, full_rx) = crossbeam_channel::unbounded();
        let (_empty_tx, empty_rx) = crossbeam_channel::unbounded();
        read_chunks(std::io::Cursor::new(input.to_vec()), &full_tx, &empty_rx).unwrap();
        drop(full_tx);
        full_rx.iter().collect()
    }

    #[test]
    fn chunks_hold_whole_lines_even_longer_than_a_chunk() {
        let long = "x".repeat(CHUNK + 10);
        let mut input = String::new();
        for i in 0..200_000 {
            input.push_str(&format!("line {i}\n"));
        }
        input.push_str(&long);
        input.push_str("\nlast without newline");
        let chunks = chunks_of(input.as_bytes());
        assert!(chunks.len() > 1);
        for c in &chunks[..chunks.len() - 1] {
            assert_eq!(c.last(), Some(&b'\n'), "a chunk ends on a line boundary");
        }
        let joined: Vec<u8> = chunks.concat();
        assert_eq!(joined, input.as_bytes());
    }

    #[test]
    fn hour_comes_from_local_time() {
        assert_eq!(hour("2026-11-26T09:41:07.000000+00:00"), Some(9));
        assert_eq!(hour("garbage"), None);
    }
}
