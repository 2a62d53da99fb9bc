//! Time buckets: which `date_time_key` an instant falls in, per level.
//!
//! Sub-hour buckets are plain UTC arithmetic (Info Mart's DATE_TIME_KEY grid).
//! Hour and longer buckets are periods of the tenant's local clock, identified
//! by the UTC epoch second at which they start:
//! - an hour starts where the local clock reads :00, so an `Asia/Kolkata` hour
//!   starts at :30 UTC, and the repeated hour of a DST fall-back is two buckets;
//! - a day, week (ISO, Monday), month, quarter or year starts at the first
//!   instant of its first local day, so a day can last 23 or 25 hours.
//!
//! `verify`'s SQL mirrors these rules ([`Level::sql_bucket`]); a property test
//! against a real PostgreSQL checks that both agree. These functions are the
//! reference: the engine asks a cached [`super::calendar::Calendar`], which
//! is tested equal to them.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// An aggregation level; tables are named `ag2_<family>_<level>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    Subhr,
    Hour,
    Day,
    Week,
    Month,
    Qrtr,
    Year,
}

#[derive(Debug, thiserror::Error)]
#[error("instant {ts} cannot be placed in a {level:?} bucket of time zone {zone}")]
pub struct BucketError {
    pub level: Level,
    pub ts: i64,
    pub zone: String,
    #[source]
    pub source: jiff::Error,
}

impl Level {
    pub const ALL: [Level; 7] = [
        Level::Subhr,
        Level::Hour,
        Level::Day,
        Level::Week,
        Level::Month,
        Level::Qrtr,
        Level::Year,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Level::Subhr => "subhr",
            Level::Hour => "hour",
            Level::Day => "day",
            Level::Week => "week",
            Level::Month => "month",
            Level::Qrtr => "qrtr",
            Level::Year => "year",
        }
    }

    pub fn by_name(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == name)
    }

    /// The start of the bucket holding `ts` (UTC epoch seconds).
    ///
    /// `subhr_seconds` is the sub-hour width (900 or 1800).
    pub fn bucket(self, ts: i64, tz: &TimeZone, subhr_seconds: i64) -> Result<i64, BucketError> {
        let err = |source| BucketError {
            level: self,
            ts,
            zone: tz.iana_name().unwrap_or("(fixed offset)").to_owned(),
            source,
        };
        match self {
            Level::Subhr => ts.checked_sub(ts.rem_euclid(subhr_seconds)).ok_or_else(|| {
                err(jiff::Error::from_args(format_args!(
                    "the bucket starts before the earliest representable second"
                )))
            }),
            Level::Hour => {
                let instant = Timestamp::from_second(ts).map_err(err)?;
                let offset = i64::from(tz.to_offset(instant).seconds());
                Ok(ts - (ts + offset).rem_euclid(3600))
            }
            _ => {
                let instant = Timestamp::from_second(ts).map_err(err)?;
                let date = instant.to_zoned_datetime(tz.clone()).date();
                let first = self.first_day(date).map_err(err)?;
                let start = first
                    .to_zoned_datetime(tz.clone())
                    .and_then(|z| z.start_of_day())
                    .map_err(err)?;
                Ok(start.timestamp().as_second())
            }
        }
    }

    /// For a day-or-longer level, the first instant after the bucket that
    /// starts at `start` (the start of the next bucket); `None` for sub-hour
    /// and hour buckets, which are cheap to compute anew.
    pub fn next_start(self, start: i64, tz: &TimeZone) -> Result<Option<i64>, BucketError> {
        let err = |source| BucketError {
            level: self,
            ts: start,
            zone: tz.iana_name().unwrap_or("(fixed offset)").to_owned(),
            source,
        };
        let span = match self {
            Level::Subhr | Level::Hour => return Ok(None),
            Level::Day => jiff::Span::new().days(1),
            Level::Week => jiff::Span::new().days(7),
            Level::Month => jiff::Span::new().months(1),
            Level::Qrtr => jiff::Span::new().months(3),
            Level::Year => jiff::Span::new().years(1),
        };
        let first = Timestamp::from_second(start)
            .map_err(err)?
            .to_zoned_datetime(tz.clone())
            .date();
        let next = first
            .checked_add(span)
            .and_then(|d| d.to_zoned_datetime(tz.clone()))
            .and_then(|z| z.start_of_day())
            .map_err(err)?;
        Ok(Some(next.timestamp().as_second()))
    }

    /// The first local day of the day-or-longer bucket holding `date`.
    fn first_day(self, date: Date) -> Result<Date, jiff::Error> {
        match self {
            Level::Subhr | Level::Hour | Level::Day => Ok(date),
            Level::Week => {
                let back = i64::from(date.weekday().to_monday_zero_offset());
                date.checked_sub(jiff::Span::new().days(back))
            }
            Level::Month => Ok(date.first_of_month()),
            Level::Qrtr => {
                let month = (date.month() - 1) / 3 * 3 + 1;
                Date::new(date.year(), month, 1)
            }
            Level::Year => Ok(date.first_of_year()),
        }
    }

    /// A SQL expression for the same bucket, over an epoch-seconds expression
    /// `ts` and a time zone name expression `tz` (both already SQL).
    pub fn sql_bucket(self, ts: &str, tz: &str, subhr_seconds: i64) -> String {
        let local = format!("(to_timestamp({ts}) AT TIME ZONE {tz})");
        match self {
            Level::Subhr => format!(
                "({ts} - mod(mod({ts}, {subhr_seconds}) + {subhr_seconds}, {subhr_seconds}))"
            ),
            Level::Hour => {
                format!("({ts} - mod(mod(extract(epoch FROM {local})::bigint, 3600) + 3600, 3600))")
            }
            Level::Day | Level::Week | Level::Month | Level::Year => format!(
                "extract(epoch FROM (date_trunc('{}', {local}) AT TIME ZONE {tz}))::bigint",
                self.name()
            ),
            Level::Qrtr => format!(
                "extract(epoch FROM (date_trunc('quarter', {local}) AT TIME ZONE {tz}))::bigint"
            ),
        }
    }
}

/// Resolves a tenant's IANA zone name; NULL means UTC.
pub fn zone(name: Option<&str>) -> Result<TimeZone, jiff::Error> {
    match name {
        None => Ok(TimeZone::UTC),
        Some(n) => TimeZone::get(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    fn b(level: Level, at: &str, zone_name: &str) -> i64 {
        level
            .bucket(ts(at), &zone(Some(zone_name)).unwrap(), 900)
            .unwrap()
    }

    #[test]
    fn subhr_is_the_utc_grid() {
        let tz = TimeZone::get("Asia/Kolkata").unwrap();
        let t = ts("2026-03-01T10:44:59Z");
        assert_eq!(
            Level::Subhr.bucket(t, &tz, 900).unwrap(),
            ts("2026-03-01T10:30:00Z")
        );
        assert_eq!(
            Level::Subhr.bucket(t, &tz, 1800).unwrap(),
            ts("2026-03-01T10:30:00Z")
        );
        assert_eq!(Level::Subhr.bucket(-1, &tz, 900).unwrap(), -900);
    }

    #[test]
    fn kolkata_hours_start_at_half_past_utc() {
        assert_eq!(
            b(Level::Hour, "2026-03-01T10:29:59Z", "Asia/Kolkata"),
            ts("2026-03-01T09:30:00Z")
        );
        assert_eq!(
            b(Level::Hour, "2026-03-01T10:30:00Z", "Asia/Kolkata"),
            ts("2026-03-01T10:30:00Z")
        );
        // Local midnight in Kolkata is 18:30 UTC the day before.
        assert_eq!(
            b(Level::Day, "2026-03-01T20:00:00Z", "Asia/Kolkata"),
            ts("2026-03-01T18:30:00Z")
        );
    }

    #[test]
    fn dst_days_last_23_and_25_hours() {
        let ny = "America/New_York";
        // 2026-03-08: clocks spring forward at 02:00 local.
        let spring = b(Level::Day, "2026-03-08T12:00:00Z", ny);
        let next = b(Level::Day, "2026-03-09T12:00:00Z", ny);
        assert_eq!(next - spring, 23 * 3600);
        // 2026-11-01: clocks fall back at 02:00 local.
        let fall = b(Level::Day, "2026-11-01T12:00:00Z", ny);
        let after = b(Level::Day, "2026-11-02T12:00:00Z", ny);
        assert_eq!(after - fall, 25 * 3600);
        // The repeated 01:00 hour is two buckets, each an hour long.
        let first = b(Level::Hour, "2026-11-01T05:30:00Z", ny);
        let second = b(Level::Hour, "2026-11-01T06:30:00Z", ny);
        assert_eq!(second - first, 3600);
    }

    #[test]
    fn longer_levels_start_on_local_calendar_boundaries() {
        let z = "Europe/Berlin";
        // 2026-05-14 is a Thursday; the ISO week starts Monday 2026-05-11.
        assert_eq!(
            b(Level::Week, "2026-05-14T12:00:00Z", z),
            ts("2026-05-10T22:00:00Z")
        );
        assert_eq!(
            b(Level::Month, "2026-05-14T12:00:00Z", z),
            ts("2026-04-30T22:00:00Z")
        );
        assert_eq!(
            b(Level::Qrtr, "2026-05-14T12:00:00Z", z),
            ts("2026-03-31T22:00:00Z")
        );
        assert_eq!(
            b(Level::Year, "2026-05-14T12:00:00Z", z),
            ts("2025-12-31T23:00:00Z")
        );
        assert_eq!(
            b(Level::Qrtr, "2026-02-14T12:00:00Z", z),
            ts("2025-12-31T23:00:00Z")
        );
    }

    proptest::proptest! {
        /// A day-or-longer bucket runs exactly up to `next_start`, where the
        /// next bucket starts.
        #[test]
        fn next_start_is_where_the_next_bucket_starts(
            t in 1_577_836_800_i64..1_893_456_000,
            zone_idx in 0_usize..5,
            level_idx in 2_usize..7,
        ) {
            let z = ["America/New_York", "Asia/Kolkata", "Europe/Berlin",
                     "Australia/Lord_Howe", "UTC"][zone_idx];
            let tz = zone(Some(z)).unwrap();
            let level = Level::ALL[level_idx];
            let start = level.bucket(t, &tz, 900).unwrap();
            let next = level.next_start(start, &tz).unwrap().unwrap();
            proptest::prop_assert!(start <= t && t < next);
            proptest::prop_assert_eq!(level.bucket(next - 1, &tz, 900).unwrap(), start);
            proptest::prop_assert_eq!(level.bucket(next, &tz, 900).unwrap(), next);
        }
    }

    #[test]
    fn unknown_zone_is_an_error() {
        assert!(zone(Some("Mars/Olympus_Mons")).is_err());
        assert_eq!(zone(None).unwrap(), TimeZone::UTC);
    }
}
