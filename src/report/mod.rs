//! The e-safety coordinator's daily summary: serious alerts first, then breaches by category,
//! client, hour and name, circumvention attempts, filtering changes and logging problems.
//!
//! [`build`] reads one day's logs in a single streaming pass per file (the access file of a
//! busy day holds millions of lines and is never loaded into memory) and returns a [`Report`]
//! that every format in [`render`] draws from, so text, HTML, CSV and JSON always agree.

mod aggregate;
mod changes;
mod pseudonym;
pub mod render;

use chrono::{Days, NaiveDate, Utc};
use serde::Serialize;
use thiserror::Error;

use crate::config::Config;
use crate::timezone::Zone;

pub use pseudonym::Pseudonyms;

/// Why a report could not be built.
#[derive(Debug, Error)]
pub enum ReportError {
    /// A log file exists but cannot be read.
    #[error("cannot read {path}: {source}; check the file's permissions (run as the schoolgate user or root)")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The pseudonym key cannot be read or created.
    #[error("cannot use the pseudonym key {path}: {source}; the state directory must be writable the first time")]
    Key {
        /// The key file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A day as the user names it on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Day {
    /// The school's today.
    Today,
    /// The school's yesterday: what the morning email covers.
    Yesterday,
    /// A calendar date.
    Date(NaiveDate),
}

impl std::str::FromStr for Day {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "today" => Ok(Day::Today),
            "yesterday" => Ok(Day::Yesterday),
            _ => NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(Day::Date)
                .map_err(|_| format!("{s:?} is not a day: use YYYY-MM-DD, today or yesterday")),
        }
    }
}

impl Day {
    /// The calendar date in the school's time zone.
    pub fn resolve(self, tz: &Zone) -> NaiveDate {
        let today = Utc::now().with_timezone(tz).date_naive();
        match self {
            Day::Today => today,
            Day::Yesterday => today.checked_sub_days(Days::new(1)).unwrap_or(today),
            Day::Date(d) => d,
        }
    }
}

/// A device as the report shows it: a configured name and address, or a pseudonym.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Device {
    /// Address, or a pseudonym such as `Device-3F9A1C` when anonymised.
    pub addr: String,
    /// Configured name, if any (never set when anonymised).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n} ({})", self.addr),
            None => f.write_str(&self.addr),
        }
    }
}

/// One query in a timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// Local time (RFC 3339).
    pub time: String,
    /// Name asked for.
    pub name: String,
    /// What the server did.
    pub action: String,
    /// Category that blocked, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// A device that tried a locked or alert-flagged category, with what it did afterwards.
#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    /// The device.
    pub client: Device,
    /// Its group.
    pub group: String,
    /// Every attempt on a serious category, in time order.
    pub attempts: Vec<Attempt>,
    /// Serious attempts not listed.
    pub attempts_more: u64,
    /// The device's later blocked attempts that day (up to [`LATER_SHOWN`]).
    pub later: Vec<Attempt>,
    /// Later blocked attempts not shown.
    pub later_more: u64,
    /// Every query the device made after its first serious attempt (access log), allowed or
    /// not: what `schoolgate logs --client` would show.
    pub later_queries: u64,
}

/// Names listed per change; a first load of a big list is counted, not listed.
pub const NAMES_SHOWN: usize = 20;

/// How many of an incident device's later blocked attempts are listed.
pub const LATER_SHOWN: usize = 50;

/// Breaches in one category.
#[derive(Debug, Clone, Serialize)]
pub struct CategoryCount {
    /// Category name.
    pub category: String,
    /// Blocked queries.
    pub attempts: u64,
    /// Distinct devices.
    pub clients: u64,
    /// Locked or alert-flagged.
    pub serious: bool,
}

/// Breaches by one device.
#[derive(Debug, Clone, Serialize)]
pub struct ClientCount {
    /// The device.
    pub client: Device,
    /// Its group.
    pub group: String,
    /// Blocked queries.
    pub attempts: u64,
    /// The category it hit most.
    pub top_category: String,
    /// It kept trying one category (at least `report.repeat_threshold` times).
    pub repeated: bool,
}

/// A device that kept trying one category.
#[derive(Debug, Clone, Serialize)]
pub struct Repeat {
    /// The device.
    pub client: Device,
    /// The category.
    pub category: String,
    /// Attempts on it.
    pub attempts: u64,
}

/// A blocked name.
#[derive(Debug, Clone, Serialize)]
pub struct NameCount {
    /// The name.
    pub name: String,
    /// Its category.
    pub category: String,
    /// Blocked queries.
    pub attempts: u64,
    /// Distinct devices.
    pub clients: u64,
}

/// Attempts by one device on one circumvention name (DoH resolver, VPN, proxy).
#[derive(Debug, Clone, Serialize)]
pub struct Circumvention {
    /// The device.
    pub client: Device,
    /// The name.
    pub name: String,
    /// Blocked queries.
    pub attempts: u64,
    /// First attempt (local time).
    pub first: String,
}

/// One entry of the change-control log.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// When.
    pub time: String,
    /// Who made it.
    pub by: String,
    /// What was done (`grant`, `withdraw`, `add` ...), if the log says.
    pub action: String,
    /// The list, category or client it applies to.
    pub target: String,
    /// Names (or, for an exemption, categories) added (up to [`NAMES_SHOWN`]).
    pub added: Vec<String>,
    /// Names removed (up to [`NAMES_SHOWN`]).
    pub removed: Vec<String>,
    /// Names added in all.
    pub added_count: u64,
    /// Names removed in all.
    pub removed_count: u64,
    /// Why.
    pub reason: String,
}

/// Something about the logs or the server the coordinator should know.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// When (local time).
    pub time: String,
    /// `access_dropped`, `write_error`, `breach_lost`, `rate_limited`, or `no_logs` when the
    /// day has no logs at all.
    pub kind: String,
    /// Records or queries concerned.
    pub count: u64,
    /// The device, for `rate_limited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<Device>,
    /// Detail (left out when anonymised: it may name a device).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The day in numbers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Queries in the access log.
    pub queries: u64,
    /// Blocked queries (breach log).
    pub breaches: u64,
    /// Distinct devices that asked anything.
    pub clients: u64,
    /// Distinct devices with a breach.
    pub breach_clients: u64,
    /// Devices with a serious-category attempt.
    pub serious_clients: u64,
    /// Attempts on serious categories.
    pub serious_attempts: u64,
}

/// The daily summary.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The school, from `report.school`.
    pub school: String,
    /// The day (YYYY-MM-DD, school time).
    pub date: String,
    /// Names and addresses replaced by pseudonyms.
    pub anonymised: bool,
    /// The day in numbers.
    pub totals: Totals,
    /// Attempts on locked or alert-flagged categories, by device, first attempt first.
    pub serious: Vec<Incident>,
    /// Breaches by category, most first.
    pub by_category: Vec<CategoryCount>,
    /// Breaches by device, most first.
    pub by_client: Vec<ClientCount>,
    /// Breaches in each local hour, 0..24.
    pub by_hour: Vec<u64>,
    /// Most blocked names.
    pub top_names: Vec<NameCount>,
    /// Devices that kept trying one category.
    pub repeated: Vec<Repeat>,
    /// Circumvention attempts (encrypted DNS, VPN, proxy).
    pub circumvention: Vec<Circumvention>,
    /// Filtering changes made that day.
    pub changes: Vec<Change>,
    /// Exemptions granted that day.
    pub exemptions: Vec<Change>,
    /// Log drops, write errors and rate limiting.
    pub problems: Vec<Problem>,
    /// The change-control log's links as of this report.
    pub change_log: crate::changes::Verified,
}

/// Builds the report for `date` from the configured log directory. With `anonymise`, every
/// device address and name is replaced by a stable pseudonym before anything is rendered.
pub fn build(config: &Config, date: NaiveDate, anonymise: bool) -> Result<Report, ReportError> {
    let mut report = aggregate::day(config, date)?;
    report.changes_from(config, date)?;
    if anonymise {
        let key = Pseudonyms::load_or_create(&config.report.key_file).map_err(|source| {
            ReportError::Key {
                path: config.report.key_file.clone(),
                source,
            }
        })?;
        report.anonymise(&key);
    }
    Ok(report)
}

impl Report {
    fn changes_from(&mut self, config: &Config, date: NaiveDate) -> Result<(), ReportError> {
        let (changes, exemptions, links) =
            changes::read(&config.changes_log, date, &config.time_zone).map_err(
                |crate::changes::ChangeError::Io { path, source }| ReportError::Read {
                    path,
                    source,
                },
            )?;
        self.changes = changes;
        self.exemptions = exemptions;
        self.change_log = links;
        Ok(())
    }

    /// Replaces every address and device name with its pseudonym, and staff names in the
    /// change log with theirs.
    pub fn anonymise(&mut self, p: &Pseudonyms) {
        let dev = |d: &mut Device| {
            d.addr = p.device(&d.addr);
            d.name = None;
        };
        for i in &mut self.serious {
            dev(&mut i.client);
        }
        for c in &mut self.by_client {
            dev(&mut c.client);
        }
        for r in &mut self.repeated {
            dev(&mut r.client);
        }
        for c in &mut self.circumvention {
            dev(&mut c.client);
        }
        for c in &mut self.changes {
            c.by = p.person(&c.by);
            if c.target.parse::<std::net::IpAddr>().is_ok() {
                c.target = p.device(&c.target);
            }
            // Free text can name a pupil.
            c.reason.clear();
            // Config settings name client addresses and devices: governors get the counts.
            if c.target == "config" {
                c.added.clear();
                c.removed.clear();
            }
        }
        for e in &mut self.exemptions {
            e.by = p.person(&e.by);
            // An exemption is for a device, named or by address.
            e.target = p.device(&e.target);
            e.reason.clear();
        }
        for n in &mut self.problems {
            if let Some(c) = &mut n.client {
                dev(c);
            }
            n.detail = None;
        }
        self.anonymised = true;
    }
}
