//! Times typed by people: RFC 3339, or a local date and time in the school's time zone.

use anyhow::Context;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use schoolgate::timezone::Zone;

/// Parses `--at` / `--until`: RFC 3339 (`2026-11-27T12:30:00Z`) or `YYYY-MM-DD HH:MM[:SS]`
/// (a `T` in place of the space is fine) in `tz`.
pub fn parse(text: &str, tz: &Zone) -> anyhow::Result<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let local = [
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
    .with_context(|| {
        format!("{text:?} is not a time; use \"YYYY-MM-DD HH:MM\" ({tz}) or RFC 3339")
    })?;
    tz.from_local_datetime(&local)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| format!("{text:?} does not exist in {tz} (the clocks change then)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_rfc3339() {
        let tz = &Zone::named("Europe/London").unwrap();
        let summer = parse("2026-07-01 12:30", tz).unwrap();
        assert_eq!(summer.to_rfc3339(), "2026-07-01T11:30:00+00:00");
        let utc = parse("2026-07-01T12:30:00Z", tz).unwrap();
        assert_eq!(utc.to_rfc3339(), "2026-07-01T12:30:00+00:00");
        assert!(parse("lunchtime", tz).is_err());
        assert!(parse("2026-03-29 01:30", tz).is_err());
    }
}
