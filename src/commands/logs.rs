//! `schoolgate logs --client`: one device's timeline, so a coordinator following up an
//! incident sees what else it asked for around it without reading raw files. Reads today's
//! plain file and compressed past days alike.

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use chrono::{DateTime, Days, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use ipnet::IpNet;
use schoolgate::config::{ClientMatch, Config};
use schoolgate::journal::{read_lines, Record, Stream};
use schoolgate::report::Day;
use schoolgate::timezone::Zone;

use crate::cli::LogsArgs;

/// Which records belong to the device asked about.
enum Who {
    Addr(IpAddr),
    Named { name: String, net: Option<IpNet> },
}

impl Who {
    fn matches(&self, r: &Record) -> bool {
        match self {
            Who::Addr(a) => r.client.parse::<IpAddr>().is_ok_and(|c| c == *a),
            Who::Named { name, net } => {
                r.client_name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
                    || net.is_some_and(|net| {
                        r.client.parse::<IpAddr>().is_ok_and(|c| net.contains(&c))
                    })
            }
        }
    }
}

pub fn run(config_path: &Path, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let tz = &config.time_zone;
    let who = match args.client.parse::<IpAddr>() {
        Ok(a) => Who::Addr(a),
        Err(_) => Who::Named {
            net: config.clients.iter().find_map(|c| match &c.matcher {
                ClientMatch::Net(net)
                    if c.name
                        .as_deref()
                        .is_some_and(|n| n.eq_ignore_ascii_case(&args.client)) =>
                {
                    Some(*net)
                }
                _ => None,
            }),
            name: args.client.clone(),
        },
    };
    let today = Utc::now().with_timezone(tz).date_naive();
    let (first, since) = match (&args.since, args.date) {
        (Some(s), _) => {
            let start = parse_since(s, today, tz)?;
            (start.with_timezone(tz).date_naive(), Some(start))
        }
        (None, Some(d)) => (d.resolve(tz), None),
        (None, None) => (Day::Today.resolve(tz), None),
    };
    let last = if since.is_some() { today } else { first };
    let stream = if args.breaches {
        Stream::Breach
    } else {
        Stream::Access
    };
    let mut day = first;
    let mut files = 0;
    let mut shown = 0u64;
    let mut out = std::io::stdout().lock();
    while day <= last {
        if let Some(path) = stream.existing(&config.logs.dir, day) {
            files += 1;
            let mut failed = None;
            read_lines::<Record>(&path, |r| {
                if failed.is_some() || !who.matches(&r) {
                    return;
                }
                if let Some(since) = since {
                    if DateTime::parse_from_rfc3339(&r.time).is_ok_and(|t| t < since) {
                        return;
                    }
                }
                shown += 1;
                if let Err(e) = print(&mut out, &r, args.json, first == last) {
                    failed = Some(e);
                }
            })
            .with_context(|| format!("cannot read {}", path.display()))?;
            if let Some(e) = failed {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(ExitCode::SUCCESS);
                }
                return Err(e.into());
            }
        }
        day = match day.checked_add_days(Days::new(1)) {
            Some(d) => d,
            None => break,
        };
    }
    if files == 0 {
        bail!(
            "no {} log for {} in {}; logs are kept for the configured retention only",
            stream.prefix(),
            if first == last {
                first.to_string()
            } else {
                format!("{first} to {last}")
            },
            config.logs.dir.display()
        );
    }
    if shown == 0 {
        eprintln!("no queries from {} in that period", args.client);
    }
    Ok(ExitCode::SUCCESS)
}

fn print(
    out: &mut impl std::io::Write,
    r: &Record,
    json: bool,
    one_day: bool,
) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default());
    }
    let time = if one_day {
        r.time.get(11..19).unwrap_or(&r.time)
    } else {
        r.time.get(..19).unwrap_or(&r.time)
    };
    let who = match &r.client_name {
        Some(n) => format!("{n} ({})", r.client),
        None => r.client.clone(),
    };
    writeln!(
        out,
        "{time}  {who:<24} {:<40} {:<6} {:<8} {}",
        r.name,
        r.qtype,
        r.action,
        r.category.as_deref().unwrap_or("")
    )
}

/// `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS]` or `YYYY-MM-DD HH:MM` (school time), `HH:MM` (today),
/// or a full RFC 3339 time.
fn parse_since(
    s: &str,
    today: NaiveDate,
    tz: &Zone,
) -> anyhow::Result<DateTime<chrono::FixedOffset>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t);
    }
    let local = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| d.and_time(NaiveTime::MIN))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M"))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M"))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S"))
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M").map(|t| today.and_time(t)))
        .ok()
        .with_context(|| {
            format!("{s:?} is not a time: use YYYY-MM-DD, YYYY-MM-DDTHH:MM or HH:MM (school time)")
        })?;
    let t = tz
        .from_local_datetime(&local)
        .earliest()
        .with_context(|| format!("{s:?} does not exist in {tz} (a clock change)"))?;
    Ok(t.fixed_offset())
}
