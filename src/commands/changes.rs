//! `schoolgate changes`: the change-control log, for the e-safety coordinator and governors.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use schoolgate::changes::{read_log, verify_log, Change, ChangeLog, ExemptionChange, Record};
use schoolgate::config::Config;
use schoolgate::timezone::Zone;

use crate::cli::ChangesArgs;

pub fn run(config_path: &Path, args: ChangesArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    if args.record {
        return record(&config, args.json);
    }
    if args.verify {
        return verify(&config.changes_log, args.json);
    }
    let tz = &config.time_zone;
    let since = args.since.as_deref().map(|s| since(s, tz)).transpose()?;
    let (changes, bad) = read_log(&config.changes_log, since)?;
    for line in bad {
        eprintln!(
            "warning: {}:{line}: not a change record, skipped",
            config.changes_log.display()
        );
    }
    if args.json {
        for c in &changes {
            println!("{}", serde_json::to_string(c)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if changes.is_empty() {
        println!("no changes recorded in {}", config.changes_log.display());
    }
    for record in &changes {
        match record {
            Record::List(c) => print_list_change(c, tz),
            Record::Exemption(e) => print_exemption(e, tz),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `changes --record`: what the server does after each reload, by hand.
fn record(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let (changes, errors) = ChangeLog::new(config).record_all(config);
    for c in &changes {
        if json {
            println!("{}", serde_json::to_string(c)?);
        } else {
            print_list_change(c, &config.time_zone);
        }
    }
    if !json && changes.is_empty() && errors.is_empty() {
        println!("no list or setting changed since the last record");
    }
    for e in &errors {
        eprintln!("schoolgate: {e}");
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `changes --verify`: are the log's links whole?
fn verify(log: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let v = verify_log(log)?;
    if json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        for line in &v.broken {
            eprintln!(
                "schoolgate: {}:{line}: this record does not follow from the one before it: it \
                 was edited, or records before it were removed or inserted",
                log.display()
            );
        }
        if v.broken.is_empty() {
            println!(
                "{}: {} records, links intact; last link {}",
                log.display(),
                v.records,
                if v.last_link.is_empty() {
                    "(none yet)"
                } else {
                    &v.last_link
                }
            );
        }
        if v.unlinked_at_start > 0 {
            println!(
                "({} records at the start were written before records were linked and cannot be \
                 checked)",
                v.unlinked_at_start
            );
        }
    }
    Ok(if v.broken.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_list_change(c: &Change, tz: &Zone) {
    let when = c.time.with_timezone(tz).format("%Y-%m-%d %H:%M:%S");
    let source = c
        .url
        .clone()
        .unwrap_or_else(|| c.file.display().to_string());
    println!(
        "{when}  {}  {}  +{} -{}  ({} -> {} entries)  {source}",
        c.by, c.category, c.added_count, c.removed_count, c.size_before, c.size_after
    );
    if let Some(r) = &c.reason {
        println!("    reason: {r}");
    }
    for n in &c.added {
        println!("    + {n}");
    }
    for n in &c.removed {
        println!("    - {n}");
    }
    let unlisted = (c.added_count + c.removed_count) - (c.added.len() + c.removed.len());
    if unlisted > 0 {
        println!("    ... and {unlisted} more (counts only)");
    }
}

fn print_exemption(e: &ExemptionChange, tz: &Zone) {
    let when = e.time.with_timezone(tz).format("%Y-%m-%d %H:%M:%S");
    let until = e.until.with_timezone(tz).format("%Y-%m-%d %H:%M");
    println!(
        "{when}  {}  exemption {}: {} lifted for {} until {until}",
        e.by,
        e.action,
        e.categories.join(", "),
        e.client
    );
    println!("    reason: {}", e.reason);
}

/// A date means its local midnight; anything else must be an RFC 3339 instant.
fn since(s: &str, tz: &Zone) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let midnight = d.and_hms_opt(0, 0, 0).unwrap_or_default();
        return tz
            .from_local_datetime(&midnight)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .with_context(|| format!("{s} has no midnight in {tz}"));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| {
            format!(
                "--since {s:?}: use a date like 2026-11-26 or an instant like 2026-11-26T09:00:00Z"
            )
        })
}
