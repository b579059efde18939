//! Exemptions: filtering lifted for one client, for some categories, until a time, because a
//! named approver agreed.
//!
//! School policy says switching filtering off for anyone "must be agreed by the Headteacher or
//! E-Safety Coordinator", so only approvers named in the config are accepted, every grant and
//! withdrawal goes to the change-control log, locked categories are never lifted, and an
//! exemption ends at its `until` by itself: the decision compares the clock with it, so nothing
//! has to remember to switch filtering back on.
//!
//! Exemptions live in one JSON file in the state directory, replaced atomically; the server
//! watches it and reloads.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use thiserror::Error;

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use crate::clients::{canonical, ClientId, Clients};
use crate::config::{parse_mac, Config};

const FILE_MODE: u32 = 0o640;

/// One approved exemption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exemption {
    /// The client as given: an address, a configured name, a DHCP hostname or a MAC.
    pub client: String,
    /// Categories lifted.
    pub categories: Vec<String>,
    /// When it ends.
    pub until: DateTime<Utc>,
    /// Who agreed (one of the configured approvers).
    pub approved_by: String,
    /// Why.
    pub reason: String,
    /// When it was granted.
    pub added: DateTime<Utc>,
}

#[derive(Default, Serialize, Deserialize)]
struct Stored {
    exemptions: Vec<Exemption>,
}

/// Why an exemption could not be read, granted or withdrawn.
#[derive(Debug, Error)]
pub enum ExemptionError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The exemptions file is not what this program writes.
    #[error("{} is not a valid exemptions file ({source}); fix or remove it (no exemption applies until then)", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// The approver is not named in the config.
    #[error("{name:?} is not an approver; exemptions must be agreed by one of: {allowed} (config [exemptions] approvers)")]
    NotApprover {
        /// Who was given.
        name: String,
        /// Who may approve.
        allowed: String,
    },
    /// A locked category was asked for.
    #[error("category {0:?} is locked (illegal content) and can never be exempted")]
    Locked(String),
    /// No such category.
    #[error("no category named {0:?}; see the [[category]] entries in the config")]
    UnknownCategory(String),
    /// Nothing to lift.
    #[error("name at least one category to lift (--categories social_media,gambling)")]
    NoCategories,
    /// The end is not in the future.
    #[error("--until {0} is not in the future")]
    Past(DateTime<Utc>),
    /// Nothing to withdraw.
    #[error("no exemption for client {0:?}; see `schoolgate exempt list`")]
    NotFound(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExemptionError + '_ {
    move |source| ExemptionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the exemptions file; a missing file means none.
pub fn load(path: &Path) -> Result<Vec<Exemption>, ExemptionError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e)),
    };
    serde_json::from_str::<Stored>(&text)
        .map(|s| s.exemptions)
        .map_err(|source| ExemptionError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
}

/// The configured approver matching `name` (case-insensitive), spelled as in the config.
pub fn approver<'a>(config: &'a Config, name: &str) -> Result<&'a str, ExemptionError> {
    config
        .approvers
        .iter()
        .find(|a| a.trim().eq_ignore_ascii_case(name.trim()))
        .map(String::as_str)
        .ok_or_else(|| ExemptionError::NotApprover {
            name: name.to_string(),
            allowed: if config.approvers.is_empty() {
                "nobody is configured".into()
            } else {
                config.approvers.join(", ")
            },
        })
}

/// Grants an exemption: checks the approver and categories, stores it, logs the change.
pub fn add(config: &Config, mut ex: Exemption, now: DateTime<Utc>) -> Result<(), ExemptionError> {
    ex.approved_by = approver(config, &ex.approved_by)?.to_string();
    if ex.categories.is_empty() {
        return Err(ExemptionError::NoCategories);
    }
    for c in &ex.categories {
        match config.category(c) {
            None => return Err(ExemptionError::UnknownCategory(c.clone())),
            Some(cat) if cat.locked => return Err(ExemptionError::Locked(c.clone())),
            Some(_) => {}
        }
    }
    if ex.until <= now {
        return Err(ExemptionError::Past(ex.until));
    }
    let _lock = lock(&config.exemptions_file)?;
    let mut all = load(&config.exemptions_file)?;
    all.retain(|e| e.until > now);
    all.push(ex.clone());
    save(&config.exemptions_file, &all)?;
    record(config, "add", &ex.approved_by, &ex, &ex.reason, now)
}

/// Withdraws every exemption of `client` early; returns what was withdrawn.
pub fn remove(
    config: &Config,
    client: &str,
    by: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Exemption>, ExemptionError> {
    let by = approver(config, by)?;
    let _lock = lock(&config.exemptions_file)?;
    let mut all = load(&config.exemptions_file)?;
    let (gone, kept): (Vec<_>, Vec<_>) = all
        .drain(..)
        .partition(|e| e.client.eq_ignore_ascii_case(client.trim()));
    let kept: Vec<_> = kept.into_iter().filter(|e| e.until > now).collect();
    if gone.is_empty() {
        return Err(ExemptionError::NotFound(client.to_string()));
    }
    save(&config.exemptions_file, &kept)?;
    for e in &gone {
        record(config, "remove", by, e, reason, now)?;
    }
    Ok(gone)
}

/// Serialises writers (two technicians at once must not lose each other's exemption).
fn lock(path: &Path) -> Result<File, ExemptionError> {
    let lock_path = path.with_extension("lock");
    if let Some(dir) = lock_path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(FILE_MODE)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    f.lock().map_err(io(&lock_path))?;
    Ok(f)
}

/// Written to a temporary file and renamed, so the server never reads half a file.
fn save(path: &Path, all: &[Exemption]) -> Result<(), ExemptionError> {
    let text = serde_json::to_string_pretty(&Stored {
        exemptions: all.to_vec(),
    })
    .unwrap_or_default();
    let tmp = path.with_extension("json.tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.write_all(b"\n").map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(FILE_MODE)).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// Appends one change-control record.
fn record(
    config: &Config,
    action: &str,
    by: &str,
    ex: &Exemption,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), ExemptionError> {
    let path = &config.changes_log;
    let line = json!({
        "time": now.with_timezone(&config.time_zone).to_rfc3339(),
        "kind": "exemption",
        "action": action,
        "by": by,
        "client": ex.client,
        "categories": ex.categories,
        "until": ex.until.with_timezone(&config.time_zone).to_rfc3339(),
        "reason": reason,
    });
    crate::changes::append_record(path, &line).map_err(io(path))
}

/// Exemptions as the decision sees them: who (by address, configured client or MAC, since a
/// device named by hostname keeps its MAC when its address changes), which category bits, until
/// when. Looked up only when there are any.
#[derive(Default)]
pub struct Table {
    by_addr: FxHashMap<IpAddr, Vec<u16>>,
    by_named: FxHashMap<u32, Vec<u16>>,
    by_mac: FxHashMap<[u8; 6], Vec<u16>>,
    lifts: Vec<(u32, DateTime<Utc>)>,
}

impl Table {
    /// Resolves each exemption's client; `mask` turns category names into index bits (locked
    /// ones excluded). Returns the table and the clients that matched nobody.
    pub fn build(
        exemptions: &[Exemption],
        clients: &Clients,
        mask: impl Fn(&[String]) -> u32,
    ) -> (Self, Vec<String>) {
        let mut t = Table::default();
        let mut unknown = Vec::new();
        for (i, e) in exemptions.iter().enumerate().take(u16::MAX as usize) {
            let i = i as u16;
            t.lifts.push((mask(&e.categories), e.until));
            let name = e.client.trim();
            if let Ok(ip) = name.parse::<IpAddr>() {
                t.by_addr.entry(canonical(ip)).or_default().push(i);
                continue;
            }
            if let Some(mac) = parse_mac(name) {
                t.by_mac.entry(mac).or_default().push(i);
                continue;
            }
            let mut found = false;
            for n in clients.configured_named(name) {
                t.by_named.entry(n).or_default().push(i);
                found = true;
            }
            for l in clients.leases_named(name) {
                match l.mac {
                    Some(mac) => t.by_mac.entry(mac).or_default().push(i),
                    None => t.by_addr.entry(l.ip).or_default().push(i),
                }
                found = true;
            }
            if !found {
                unknown.push(e.client.clone());
            }
        }
        (t, unknown)
    }

    /// The first exemption in force for a client and the category bits all of them lift.
    #[inline]
    pub fn active(
        &self,
        client: &ClientId,
        mac: Option<[u8; 6]>,
        now: DateTime<Utc>,
    ) -> (Option<u16>, u32) {
        if self.lifts.is_empty() {
            return (None, 0);
        }
        let (mut first, mut lifted) = (None, 0u32);
        let candidates = [
            (!self.by_addr.is_empty())
                .then(|| self.by_addr.get(&client.addr))
                .flatten(),
            client
                .named
                .filter(|_| !self.by_named.is_empty())
                .and_then(|n| self.by_named.get(&n)),
            mac.filter(|_| !self.by_mac.is_empty())
                .and_then(|m| self.by_mac.get(&m)),
        ];
        for i in candidates.into_iter().flatten().flatten() {
            let (bits, until) = self.lifts[*i as usize];
            if now < until {
                first = first.or(Some(*i));
                lifted |= bits;
            }
        }
        (first, lifted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        fs::write(dir.join("sm.txt"), "tiktok.com\n").unwrap();
        fs::write(dir.join("illegal.txt"), "").unwrap();
        let text = "[lists]\ndir = \".\"\n[logs]\ndir = \"logs\"\n[exemptions]\napprovers = [\"Head Teacher\"]\nfile = \"state/exemptions.json\"\n\
                    [[category]]\nname = \"illegal\"\nfiles = [\"illegal.txt\"]\nlocked = true\n\
                    [[category]]\nname = \"social_media\"\nfiles = [\"sm.txt\"]\n";
        Config::from_toml(&dir.join("schoolgate.toml"), text).unwrap()
    }

    fn exemption(by: &str, cats: &[&str], until: DateTime<Utc>) -> Exemption {
        Exemption {
            client: "LIB-PC-07".into(),
            categories: cats.iter().map(|c| c.to_string()).collect(),
            until,
            approved_by: by.into(),
            reason: "media studies".into(),
            added: Utc::now(),
        }
    }

    #[test]
    fn add_list_remove_with_change_records() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let now = Utc::now();
        let until = now + chrono::Duration::hours(1);
        add(&c, exemption("head teacher", &["social_media"], until), now).unwrap();
        let all = load(&c.exemptions_file).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].approved_by, "Head Teacher");
        let mode = fs::metadata(&c.exemptions_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);

        remove(&c, "lib-pc-07", "Head Teacher", "lesson over", now).unwrap();
        assert!(load(&c.exemptions_file).unwrap().is_empty());
        let log = fs::read_to_string(&c.changes_log).unwrap();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["action"], "add");
        assert_eq!(lines[0]["kind"], "exemption");
        assert_eq!(lines[1]["action"], "remove");
        assert_eq!(lines[1]["reason"], "lesson over");
    }

    #[test]
    fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let now = Utc::now();
        let until = now + chrono::Duration::hours(1);
        let err = add(&c, exemption("Mr Smith", &["social_media"], until), now).unwrap_err();
        assert!(matches!(err, ExemptionError::NotApprover { .. }), "{err}");
        let err = add(&c, exemption("Head Teacher", &["illegal"], until), now).unwrap_err();
        assert!(err.to_string().contains("locked"), "{err}");
        let err = add(&c, exemption("Head Teacher", &["social_media"], now), now).unwrap_err();
        assert!(matches!(err, ExemptionError::Past(_)), "{err}");
        assert!(!c.exemptions_file.exists());
        assert!(!c.changes_log.exists());
    }
}
