//! Lists downloaded from URLs, kept on disk so filtering survives the source going away.
//!
//! Each download is parsed before it is trusted: one with no usable entry (an error page, an
//! empty body) or one that lost more than `max_shrink` of the previous copy's entries (a
//! truncated transfer, a publisher's mistake) is refused and reported, and the last good copy
//! stays in force. An accepted download replaces the copy by rename and is recorded in the
//! change-control log with the counts added and removed. Downloads run on their own thread, so
//! no query ever waits on the network for a list.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;

use super::parse::{parse, BadLine};
use crate::changes::{Actor, Change, ChangeError, ChangeLog};
use crate::config::{Category, Config, RemoteSource};

/// Largest download accepted; the biggest public lists are a few tens of megabytes.
const MAX_BODY: u64 = 512 * 1024 * 1024;
/// How long one download may take.
const TIMEOUT: Duration = Duration::from_secs(120);
/// How soon a failed download is tried again (or the refresh interval, if shorter).
const RETRY: Duration = Duration::from_secs(300);
/// How often the schedule is looked at.
const TICK: Duration = Duration::from_millis(500);

/// Why a download was not applied. The last good copy stays in force in every case.
#[derive(Debug, Error)]
pub enum RemoteError {
    /// The source could not be fetched.
    #[error("{url}: download failed ({source}); keeping the last good copy")]
    Http {
        /// The source.
        url: String,
        /// The cause.
        source: Box<ureq::Error>,
    },
    /// Nothing in the download was a usable entry.
    #[error("{url}: the download has no usable entry{}; keeping the last good copy", first.as_ref().map(|b| format!(" (first bad line {}: {})", b.line, b.reason)).unwrap_or_default())]
    Empty {
        /// The source.
        url: String,
        /// The first bad line, if there were any.
        first: Option<BadLine>,
    },
    /// The download lost too many entries at once.
    #[error("{url}: the download has {after} entries against {before} before, a loss of more than {:.0}% (lists.max_shrink); not applied, keeping the last good copy", max_shrink * 100.0)]
    Shrank {
        /// The source.
        url: String,
        /// Entries in the last good copy.
        before: usize,
        /// Entries in the download.
        after: usize,
        /// The configured limit.
        max_shrink: f64,
    },
    /// The copy could not be written.
    #[error("{}: cannot keep the downloaded copy: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The change could not be recorded.
    #[error(transparent)]
    Log(#[from] ChangeError),
}

/// What one refresh did.
#[derive(Debug)]
pub enum Refreshed {
    /// The source serves what the copy already holds.
    Unchanged,
    /// The copy was replaced; the record made for it, if the entries changed.
    Updated(Option<Box<Change>>),
}

/// Downloads remote sources.
pub struct Downloader {
    agent: ureq::Agent,
}

impl Default for Downloader {
    fn default() -> Self {
        Self::new()
    }
}

impl Downloader {
    /// A client with a timeout and the crate's user agent.
    pub fn new() -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .user_agent(concat!("schoolgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Downloader { agent }
    }

    /// Downloads one source, checks it, and if it is good replaces its last good copy and
    /// records the change.
    pub fn refresh(
        &self,
        category: &Category,
        source: &RemoteSource,
        max_shrink: f64,
        log: &ChangeLog,
    ) -> Result<Refreshed, RemoteError> {
        let url = &source.url;
        let http = |e| RemoteError::Http {
            url: url.clone(),
            source: Box::new(e),
        };
        let body = self
            .agent
            .get(url)
            .call()
            .map_err(http)?
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(http)?;
        let parsed = parse(&source.copy, &body);
        let after = parsed.entries.len() + parsed.keywords.len();
        if after == 0 {
            return Err(RemoteError::Empty {
                url: url.clone(),
                first: parsed.bad.into_iter().next(),
            });
        }
        let previous = fs::read(&source.copy).ok();
        if previous.as_deref() == Some(body.as_slice()) {
            return Ok(Refreshed::Unchanged);
        }
        if let Some(prev) = &previous {
            let p = parse(&source.copy, prev);
            let before = p.entries.len() + p.keywords.len();
            if (after as f64) < before as f64 * (1.0 - max_shrink) {
                return Err(RemoteError::Shrank {
                    url: url.clone(),
                    before,
                    after,
                    max_shrink,
                });
            }
        }
        let lock = log.lock()?;
        let io = |e| RemoteError::Io {
            path: source.copy.clone(),
            source: e,
        };
        if let Some(dir) = source.copy.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = source.copy.with_extension("download.tmp");
        fs::write(&tmp, &body).map_err(io)?;
        fs::rename(&tmp, &source.copy).map_err(io)?;
        let files = category.sources_on_disk();
        let change = log.record(
            &lock,
            &category.name,
            &source.copy,
            &files,
            Actor::Remote { url },
        )?;
        Ok(Refreshed::Updated(change.map(Box::new)))
    }
}

/// Refreshes every remote source on its schedule, forever. `config` gives the configuration in
/// force (sources follow config reloads); `applied` is called after a copy is replaced so the
/// caller can reload. Meant for a thread of its own: downloads block.
pub fn refresh_forever(config: impl Fn() -> Arc<Config>, applied: impl Fn()) {
    let downloader = Downloader::new();
    let mut next: HashMap<(String, PathBuf), Instant> = HashMap::new();
    loop {
        let config = config();
        let log = ChangeLog::new(&config);
        let now = Instant::now();
        for category in &config.categories {
            for source in &category.sources {
                let key = (source.url.clone(), source.copy.clone());
                let due = *next
                    .entry(key.clone())
                    .or_insert_with(|| first_due(source, now));
                if due > now {
                    continue;
                }
                let retry_at = match downloader.refresh(category, source, config.max_shrink, &log) {
                    Ok(Refreshed::Updated(change)) => {
                        tracing::info!(
                            url = %source.url,
                            category = %category.name,
                            added = change.as_ref().map_or(0, |c| c.added_count),
                            removed = change.as_ref().map_or(0, |c| c.removed_count),
                            "remote source updated"
                        );
                        applied();
                        source.refresh
                    }
                    Ok(Refreshed::Unchanged) => source.refresh,
                    Err(e) => {
                        tracing::error!(category = %category.name, "remote source: {e}");
                        source.refresh.min(RETRY)
                    }
                };
                next.insert(key, Instant::now() + retry_at);
            }
        }
        std::thread::sleep(TICK);
    }
}

/// A copy younger than the refresh interval is not fetched again at start-up.
fn first_due(source: &RemoteSource, now: Instant) -> Instant {
    let age = fs::metadata(&source.copy)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    match age {
        Some(age) if age < source.refresh => now + (source.refresh - age),
        _ => now,
    }
}
