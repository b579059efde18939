//! The school's time zone: the day a log line belongs to, and the times people read.
//!
//! Zones come from the system's tz database (Debian's `tzdata`, kept current by the
//! system's updates) through jiff, with jiff's bundled copy when the system has none.
//! chrono-tz, used before, compiled every zone into the binary as tables of pointers that the
//! loader relocates at start-up: nearly 1 MiB of every server's resident memory for one zone.
//! [`Zone`] implements chrono's `TimeZone`, so the rest of the code keeps chrono's types.

use std::fmt;

use chrono::{FixedOffset, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use jiff::tz::AmbiguousOffset;
use jiff::Timestamp;

/// An IANA time zone such as `Europe/London`. Cloning it is cheap (shared data).
#[derive(Clone)]
pub struct Zone(jiff::tz::TimeZone);

/// A time zone name the tz database does not have.
#[derive(Debug, thiserror::Error)]
#[error("unknown time zone {0:?}; use an IANA name such as \"Europe/London\"")]
pub struct UnknownZone(String);

impl Zone {
    /// Looks `name` up in the tz database. The database is opened for the lookup and dropped:
    /// jiff's global one would keep every zone's name in the server's heap for good.
    pub fn named(name: &str) -> Result<Zone, UnknownZone> {
        jiff::tz::TimeZoneDatabase::from_env()
            .get(name)
            .map(Zone)
            .map_err(|_| UnknownZone(name.to_owned()))
    }

    /// Coordinated Universal Time.
    pub fn utc() -> Zone {
        Zone(jiff::tz::TimeZone::UTC)
    }

    /// The zone's IANA name.
    pub fn name(&self) -> &str {
        self.0.iana_name().unwrap_or("UTC")
    }

    /// The zone's offset at `at`, which chrono carries in every `DateTime<Zone>`.
    fn offset_at(&self, at: Timestamp) -> ZoneOffset {
        let seconds = self.0.to_offset(at).seconds();
        ZoneOffset {
            zone: self.clone(),
            at,
            fixed: fixed(seconds),
        }
    }

    /// The offset of the instant that reads `local` with `offset` on the clock.
    fn offset_of_local(&self, local: i64, offset: jiff::tz::Offset) -> ZoneOffset {
        ZoneOffset {
            zone: self.clone(),
            at: timestamp(local - i64::from(offset.seconds())),
            fixed: fixed(offset.seconds()),
        }
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Zone) -> bool {
        self.name() == other.name()
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name())
    }
}

/// A [`Zone`]'s offset at one instant. It keeps the zone because chrono rebuilds a
/// `DateTime`'s zone from its offset, and the instant for the abbreviation (`%Z`).
#[derive(Clone)]
pub struct ZoneOffset {
    zone: Zone,
    at: Timestamp,
    fixed: FixedOffset,
}

impl chrono::Offset for ZoneOffset {
    fn fix(&self) -> FixedOffset {
        self.fixed
    }
}

/// The abbreviation in force, such as `GMT` or `BST`: chrono's `%Z`.
impl fmt::Display for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.zone.0.to_offset_info(self.at).abbreviation())
    }
}

impl fmt::Debug for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self, self.fixed)
    }
}

impl TimeZone for Zone {
    type Offset = ZoneOffset;

    fn from_offset(offset: &ZoneOffset) -> Zone {
        offset.zone.clone()
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> LocalResult<ZoneOffset> {
        self.offset_from_local_datetime(&local.and_time(NaiveTime::MIN))
    }

    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> LocalResult<ZoneOffset> {
        let seconds = local.and_utc().timestamp();
        let Some(civil) = civil(local) else {
            return LocalResult::None;
        };
        match self.0.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => {
                LocalResult::Single(self.offset_of_local(seconds, offset))
            }
            AmbiguousOffset::Gap { .. } => LocalResult::None,
            AmbiguousOffset::Fold { before, after } => LocalResult::Ambiguous(
                self.offset_of_local(seconds, before),
                self.offset_of_local(seconds, after),
            ),
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> ZoneOffset {
        self.offset_from_utc_datetime(&utc.and_time(NaiveTime::MIN))
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> ZoneOffset {
        self.offset_at(timestamp(utc.and_utc().timestamp()))
    }
}

/// chrono's year range is wider than jiff's (-9999 to 9999); times outside it are clamped.
fn timestamp(seconds: i64) -> Timestamp {
    Timestamp::from_second(seconds).unwrap_or(if seconds < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

fn civil(local: &NaiveDateTime) -> Option<jiff::civil::DateTime> {
    use chrono::{Datelike, Timelike};
    jiff::civil::DateTime::new(
        i16::try_from(local.year()).ok()?,
        local.month() as i8,
        local.day() as i8,
        local.hour() as i8,
        local.minute() as i8,
        local.second() as i8,
        0,
    )
    .ok()
}

/// Real zones stay within a day of UTC, which is all chrono's `FixedOffset` holds.
fn fixed(seconds: i32) -> FixedOffset {
    FixedOffset::east_opt(seconds).unwrap_or(FixedOffset::east_opt(0).expect("zero offset"))
}

#[cfg(test)]
pub(crate) fn london() -> Zone {
    Zone::named("Europe/London").unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    #[test]
    fn london_keeps_british_summer_time() {
        let tz = london();
        let winter = Utc.with_ymd_and_hms(2026, 1, 15, 12, 0, 0).unwrap();
        let summer = Utc.with_ymd_and_hms(2026, 7, 15, 12, 0, 0).unwrap();
        assert_eq!(
            winter.with_timezone(&tz).to_rfc3339(),
            "2026-01-15T12:00:00+00:00"
        );
        assert_eq!(
            summer.with_timezone(&tz).format("%H:%M %Z %:z").to_string(),
            "13:00 BST +01:00"
        );
        assert_eq!(winter.with_timezone(&tz).format("%Z").to_string(), "GMT");
    }

    #[test]
    fn local_times_in_the_clock_changes_are_missing_or_twice() {
        let tz = london();
        let at = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap();
        // 29 March 2026: 01:00 GMT becomes 02:00 BST.
        assert_eq!(
            tz.from_local_datetime(&at("2026-03-29 01:30")),
            LocalResult::None
        );
        // 25 October 2026: 02:00 BST becomes 01:00 GMT, so 01:30 happens twice.
        let LocalResult::Ambiguous(first, second) = tz.from_local_datetime(&at("2026-10-25 01:30"))
        else {
            panic!("01:30 on the autumn change should be ambiguous");
        };
        assert_eq!(first.to_rfc3339(), "2026-10-25T01:30:00+01:00");
        assert_eq!(second.to_rfc3339(), "2026-10-25T01:30:00+00:00");
        assert_eq!(
            (second - first).num_minutes(),
            60,
            "the second 01:30 is an hour after the first"
        );
        let noon = tz.from_local_datetime(&at("2026-06-01 12:00")).unwrap();
        assert_eq!(
            noon.with_timezone(&Utc),
            DateTime::parse_from_rfc3339("2026-06-01T11:00:00Z").unwrap()
        );
    }

    #[test]
    fn a_date_time_in_a_zone_can_be_moved_to_another_and_back() {
        let tz = london();
        let new_york = Zone::named("America/New_York").unwrap();
        let t = Utc.with_ymd_and_hms(2026, 7, 4, 16, 0, 0).unwrap();
        let there = t.with_timezone(&tz).with_timezone(&new_york);
        assert_eq!(there.to_rfc3339(), "2026-07-04T12:00:00-04:00");
        assert_eq!(there.timezone(), new_york);
        assert_eq!(there.with_timezone(&Utc), t);
    }

    #[test]
    fn unknown_names_are_refused_by_name() {
        let err = Zone::named("Europe/Lundun").unwrap_err();
        assert!(err.to_string().contains("\"Europe/Lundun\""), "{err}");
        assert!(Zone::named("").is_err());
    }
}
