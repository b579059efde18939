//! The on-disk shape of query logs, shared by the writer and every reader (`logs`, `report`).
//!
//! One JSON object per line. Access and breach files carry the same record; breach files hold
//! only blocked queries, and their `rule`, `list` and `source` say exactly which list line
//! decided, so an incident can be explained months later.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// One query, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Local time with offset (RFC 3339, microseconds).
    pub time: String,
    /// Client address.
    pub client: String,
    /// Configured or DHCP name, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// The client's group.
    pub group: String,
    /// Normalised query name.
    pub name: String,
    /// Query type (`A`, `AAAA`, `HTTPS` ...).
    #[serde(rename = "type")]
    pub qtype: String,
    /// `allow`, `block`, `rewrite`, `refused`, `servfail` ...
    pub action: String,
    /// Category that blocked, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The matching entry (`tiktok.com`, `keyword:porn`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The list it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    /// `file:line` of the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A CNAME target that caused the block (cloaking), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Response code sent.
    pub rcode: String,
    /// Time from receipt to answer, microseconds.
    pub latency_us: u32,
}

/// Something about the logging itself or the server a coordinator should know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// Local time with offset.
    pub time: String,
    /// `access_dropped`, `write_error`, `breach_lost`, `rate_limited`.
    pub kind: String,
    /// How many records or queries it concerns.
    #[serde(default)]
    pub count: u64,
    /// Client concerned, for `rate_limited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Detail for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The daily files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Every query.
    Access,
    /// Blocked queries.
    Breach,
    /// Notices.
    Notices,
}

impl Stream {
    /// File name prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Stream::Access => "access",
            Stream::Breach => "breach",
            Stream::Notices => "notices",
        }
    }

    /// Today's (uncompressed) file for a date.
    pub fn path(self, dir: &Path, date: NaiveDate) -> PathBuf {
        dir.join(format!(
            "{}-{}.jsonl",
            self.prefix(),
            date.format("%Y-%m-%d")
        ))
    }

    /// The file holding a date, compressed or not, if it exists.
    pub fn existing(self, dir: &Path, date: NaiveDate) -> Option<PathBuf> {
        let plain = self.path(dir, date);
        if plain.exists() {
            return Some(plain);
        }
        let gz = plain.with_extension("jsonl.gz");
        gz.exists().then_some(gz)
    }

    /// The date a file of this stream is for, from its name.
    pub fn date_of(self, file_name: &str) -> Option<NaiveDate> {
        let rest = file_name.strip_prefix(self.prefix())?.strip_prefix('-')?;
        let date = rest
            .strip_suffix(".jsonl")
            .or_else(|| rest.strip_suffix(".jsonl.gz"))?;
        NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()
    }
}

/// Reads every line of a day's file (plain or gzip), skipping lines that do not parse (a
/// crash can leave a torn last line).
pub fn read_lines<T: for<'de> Deserialize<'de>>(
    path: &Path,
    mut each: impl FnMut(T),
) -> std::io::Result<()> {
    use std::io::BufRead;
    let file = std::fs::File::open(path)?;
    let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(
            file,
        )))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    for line in reader.lines() {
        let line = line?;
        if let Ok(v) = serde_json::from_str::<T>(&line) {
            each(v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        let p = Stream::Breach.path(Path::new("/l"), d);
        assert_eq!(p, Path::new("/l/breach-2026-11-26.jsonl"));
        assert_eq!(
            Stream::Breach.date_of("breach-2026-11-26.jsonl.gz"),
            Some(d)
        );
        assert_eq!(Stream::Access.date_of("breach-2026-11-26.jsonl"), None);
    }
}
