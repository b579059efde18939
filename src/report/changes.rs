//! Reading the change-control log for one day.
//!
//! The log is append-only JSON lines written when filtering changes. It is read leniently:
//! any line with a `time` on the day counts, and missing fields show as blank, so an older or
//! newer writer never makes the report fail.

use std::path::Path;

use chrono::{DateTime, NaiveDate};
use serde_json::Value;

use super::{Change, NAMES_SHOWN};
use crate::changes::{verify_log_reading, ChangeError, Verified};
use crate::timezone::Zone;

/// The day's changes and exemptions (entries with `"kind": "exemption"`), and the state of the
/// log's links, from one read. A missing file is an empty day.
pub(super) fn read(
    path: &Path,
    date: NaiveDate,
    tz: &Zone,
) -> Result<(Vec<Change>, Vec<Change>, Verified), ChangeError> {
    let mut changes = Vec::new();
    let mut exemptions = Vec::new();
    let verified = verify_log_reading(path, |line| {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return;
        };
        let time = text(&v, &["time"]);
        if day_of(&time, tz) != Some(date) {
            return;
        }
        let mut added = names(&v, &["added", "add", "domains", "categories"]);
        let mut removed = names(&v, &["removed", "remove"]);
        let count = |key: &str, shown: usize| {
            v.get(key)
                .and_then(Value::as_u64)
                .unwrap_or(shown as u64)
                .max(shown as u64)
        };
        let added_count = count("added_count", added.len());
        let removed_count = count("removed_count", removed.len());
        added.truncate(NAMES_SHOWN);
        removed.truncate(NAMES_SHOWN);
        let change = Change {
            time,
            by: text(&v, &["by", "who", "user"]),
            action: text(&v, &["action"]),
            target: text(&v, &["list", "category", "client", "target"]),
            added,
            removed,
            added_count,
            removed_count,
            reason: text(&v, &["reason"]),
        };
        if v.get("kind").and_then(Value::as_str) == Some("exemption") {
            exemptions.push(change);
        } else {
            changes.push(change);
        }
    })?;
    Ok((changes, exemptions, verified))
}

fn day_of(time: &str, tz: &Zone) -> Option<NaiveDate> {
    DateTime::parse_from_rfc3339(time)
        .map(|t| t.with_timezone(tz).date_naive())
        .ok()
        .or_else(|| NaiveDate::parse_from_str(time.get(..10)?, "%Y-%m-%d").ok())
}

fn text(v: &Value, keys: &[&str]) -> String {
    keys.iter()
        .find_map(|k| match v.get(*k)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        })
        .unwrap_or_default()
}

fn names(v: &Value, keys: &[&str]) -> Vec<String> {
    keys.iter()
        .find_map(|k| match v.get(*k)? {
            Value::Array(a) => Some(
                a.iter()
                    .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                    .collect(),
            ),
            Value::String(s) => Some(vec![s.clone()]),
            _ => None,
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timezone::london;

    #[test]
    fn reads_the_day_and_splits_exemptions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("changes.jsonl");
        std::fs::write(
            &p,
            concat!(
                "{\"time\":\"2026-11-25T09:00:00+00:00\",\"by\":\"jsmith\",\"list\":\"gambling\",\"added\":[\"a.com\"],\"reason\":\"new site\"}\n",
                "{\"time\":\"2026-11-26T10:00:00+00:00\",\"by\":\"jsmith\",\"category\":\"adult\",\"removed\":[\"b.com\"],\"reason\":\"false positive\"}\n",
                "not json\n",
                "{\"time\":\"2026-11-26T11:00:00+00:00\",\"kind\":\"exemption\",\"action\":\"grant\",\"by\":\"head\",\"client\":\"LIB-PC-07\",\"categories\":[\"social_media\"]}\n",
            ),
        )
        .unwrap();
        let d = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        let (c, e, links) = read(&p, d, &london()).unwrap();
        assert_eq!(
            (links.records, links.unlinked_at_start),
            (4, 4),
            "the links are checked in the same read"
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].target, "adult");
        assert_eq!(c[0].removed, vec!["b.com"]);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].target, "LIB-PC-07");
        assert_eq!(e[0].added, vec!["social_media"]);
        assert_eq!(e[0].action, "grant");
    }

    #[test]
    fn big_first_loads_are_counted_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("changes.jsonl");
        let names: Vec<String> = (0..30).map(|i| format!("n{i}.example")).collect();
        let line = serde_json::json!({
            "time": "2026-11-26T08:00:00Z", "by": "initial load", "category": "adult",
            "added": names, "removed": [], "added_count": 1000, "removed_count": 0,
        });
        std::fs::write(&p, format!("{line}\n")).unwrap();
        let d = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        let (c, _, _) = read(&p, d, &london()).unwrap();
        assert_eq!(c[0].added.len(), NAMES_SHOWN);
        assert_eq!((c[0].added_count, c[0].removed_count), (1000, 0));
    }
}
