//! A zone's calendar with its arithmetic cached: [`Level::bucket`] and
//! [`Level::next_start`] for any instant in nanoseconds instead of jiff
//! conversions on every call.
//!
//! The cache is keyed by UTC day. The first instant asked of a day computes,
//! with jiff, the stretches of that day over which both the zone's offset and
//! the local date are constant (one per local day it meets, split again at any
//! offset transition), and for each the start of its day, week, month,
//! quarter and year bucket and where that bucket ends. Those starts and ends
//! are computed by [`Level::bucket`] and [`Level::next_start`] themselves on
//! the stretch's first second: they depend only on the local date, so they
//! hold for the whole stretch. The hour needs only the offset. Every other
//! instant of the day is then a short scan and some arithmetic.
//!
//! Whatever the cache cannot answer (instants outside jiff's range, a bucket
//! or end jiff could not compute) is asked of [`Level`] directly, so results
//! and errors are exactly the reference's.

use super::bucket::{BucketError, Level};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use rustc_hash::FxHashMap;

/// The UTC days a [`Calendar`] holds before it starts over (about 5.6 years).
/// A day takes two or three stretches of about 180 bytes, so a zone's cache
/// stays under about 1.5 MB however much history flows through it.
pub const CACHE_DAYS: usize = 2048;

const DAY: i64 = 86_400;

/// Levels whose buckets come from the local calendar, by their index in
/// [`Stretch::starts`].
const LONG: [Level; 5] = [
    Level::Day,
    Level::Week,
    Level::Month,
    Level::Qrtr,
    Level::Year,
];

fn long_index(level: Level) -> Option<usize> {
    LONG.iter().position(|&l| l == level)
}

/// The sub-hour bucket, or `None` where it is not an `i64`.
fn subhr_start(ts: i64, subhr_seconds: i64) -> Option<i64> {
    ts.checked_sub(ts.checked_rem_euclid(subhr_seconds)?)
}

/// Seconds over which the offset and the local date are constant.
#[derive(Clone, Copy, Debug)]
struct Stretch {
    /// Its first second; it lasts until the next stretch's (or its day's end).
    from: i64,
    /// The UTC offset in force, in seconds.
    offset: i64,
    /// Per [`LONG`] level, the bucket start; `None` where jiff failed.
    starts: [Option<i64>; 5],
    /// Per [`LONG`] level, where that bucket ends (its `next_start`).
    ends: [Option<i64>; 5],
}

impl Stretch {
    /// The bucket of `ts` (inside this stretch), or `None` for the reference to say.
    #[inline]
    fn bucket(&self, level: Level, ts: i64, subhr_seconds: i64) -> Option<i64> {
        match level {
            Level::Subhr => subhr_start(ts, subhr_seconds),
            Level::Hour => Some(ts - (ts + self.offset).rem_euclid(3600)),
            Level::Day => self.starts[0],
            Level::Week => self.starts[1],
            Level::Month => self.starts[2],
            Level::Qrtr => self.starts[3],
            Level::Year => self.starts[4],
        }
    }
}

/// One time zone's buckets, cached by UTC day; see the module docs.
#[derive(Clone, Debug)]
pub struct Calendar {
    tz: TimeZone,
    /// Days held before the cache is emptied.
    limit: usize,
    /// jiff's range, in seconds: outside it every answer is the reference's.
    min: i64,
    max: i64,
    /// Per cached UTC day, its stretches' range in `stretches`.
    days: FxHashMap<i64, (u32, u32)>,
    stretches: Vec<Stretch>,
    /// The day looked up last and its range: consecutive facts share days.
    last: Option<(i64, u32, u32)>,
}

impl Calendar {
    /// A calendar holding up to [`CACHE_DAYS`] days.
    pub fn new(tz: TimeZone) -> Calendar {
        Calendar::with_limit(tz, CACHE_DAYS)
    }

    /// A calendar holding up to `days` UTC days (at least one) before it
    /// empties its cache.
    pub fn with_limit(tz: TimeZone, days: usize) -> Calendar {
        Calendar {
            tz,
            limit: days.max(1),
            min: Timestamp::MIN.as_second(),
            max: Timestamp::MAX.as_second(),
            days: FxHashMap::default(),
            stretches: Vec::new(),
            last: None,
        }
    }

    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }

    /// Equal to `level.bucket(ts, tz, subhr_seconds)`.
    pub fn bucket(
        &mut self,
        level: Level,
        ts: i64,
        subhr_seconds: i64,
    ) -> Result<i64, BucketError> {
        if level == Level::Subhr {
            if let Some(b) = subhr_start(ts, subhr_seconds) {
                return Ok(b);
            }
        } else if let Some(b) = self
            .stretch(ts)
            .and_then(|s| s.bucket(level, ts, subhr_seconds))
        {
            return Ok(b);
        }
        level.bucket(ts, &self.tz, subhr_seconds)
    }

    /// The buckets of `ts` at every level of `levels`, into `out` (aligned
    /// with `levels`; entries past the shorter of both are left alone), with
    /// one cache lookup. On error `out` may be partly written.
    pub fn buckets(
        &mut self,
        ts: i64,
        levels: &[Level],
        subhr_seconds: i64,
        out: &mut [i64],
    ) -> Result<(), BucketError> {
        if let Some(s) = self.stretch(ts) {
            let mut all = true;
            for (o, &level) in out.iter_mut().zip(levels) {
                match s.bucket(level, ts, subhr_seconds) {
                    Some(b) => *o = b,
                    None => {
                        all = false;
                        break;
                    }
                }
            }
            if all {
                return Ok(());
            }
        }
        for (o, &level) in out.iter_mut().zip(levels) {
            *o = level.bucket(ts, &self.tz, subhr_seconds)?;
        }
        Ok(())
    }

    /// Equal to `level.next_start(start, tz)`.
    pub fn next_start(&mut self, level: Level, start: i64) -> Result<Option<i64>, BucketError> {
        if let Some(k) = long_index(level) {
            if let Some(s) = self.stretch(start) {
                if s.starts[k] == Some(start) {
                    if let Some(end) = s.ends[k] {
                        return Ok(Some(end));
                    }
                }
            }
        }
        level.next_start(start, &self.tz)
    }

    /// The bucket of `ts` and, for a day-or-longer level, where it ends:
    /// `(b, level.next_start(b, tz)?)` with `b = level.bucket(ts, tz, subhr_seconds)?`,
    /// from one cache lookup.
    pub fn bucket_span(
        &mut self,
        level: Level,
        ts: i64,
        subhr_seconds: i64,
    ) -> Result<(i64, Option<i64>), BucketError> {
        let Some(k) = long_index(level) else {
            return Ok((self.bucket(level, ts, subhr_seconds)?, None));
        };
        if let Some(s) = self.stretch(ts) {
            if let (Some(start), Some(end)) = (s.starts[k], s.ends[k]) {
                return Ok((start, Some(end)));
            }
        }
        let start = level.bucket(ts, &self.tz, subhr_seconds)?;
        Ok((start, level.next_start(start, &self.tz)?))
    }

    /// The stretch holding `ts`, computing its UTC day if not cached; `None`
    /// outside jiff's range or where jiff cannot describe the day.
    #[inline]
    fn stretch(&mut self, ts: i64) -> Option<&Stretch> {
        if ts < self.min || ts > self.max {
            return None;
        }
        let day = ts.div_euclid(DAY);
        let (from, to) = match self.last {
            Some((d, from, to)) if d == day => (from, to),
            _ => {
                let range = match self.days.get(&day) {
                    Some(&range) => range,
                    None => self.fill(day)?,
                };
                self.last = Some((day, range.0, range.1));
                range
            }
        };
        let held = self.stretches.get(from as usize..to as usize)?;
        let i = held.partition_point(|s| s.from <= ts).checked_sub(1)?;
        held.get(i)
    }

    /// Computes and caches UTC day `day` (inside jiff's range), emptying the
    /// cache first when it is full.
    fn fill(&mut self, day: i64) -> Option<(u32, u32)> {
        let lo = (day * DAY).max(self.min);
        let hi = (day * DAY + DAY - 1).min(self.max);
        let offset_at = |s: i64| -> Option<i64> {
            Some(i64::from(
                self.tz.to_offset(Timestamp::from_second(s).ok()?).seconds(),
            ))
        };
        // Where the offset changes: the day's start, then each transition in it.
        let mut changes = vec![(lo, offset_at(lo)?)];
        for t in self.tz.following(Timestamp::from_second(lo).ok()?) {
            let at = t.timestamp().as_second();
            if at > hi {
                break;
            }
            changes.push((at, offset_at(at)?));
        }
        // Split at each local midnight, each stretch with its local day number.
        let mut day_stretches: Vec<(i64, Stretch)> = Vec::new();
        for (i, &(a, offset)) in changes.iter().enumerate() {
            let b = changes.get(i + 1).map_or(hi + 1, |c| c.0);
            let mut from = a;
            while from < b {
                let local_day = (from + offset).div_euclid(DAY);
                let same = day_stretches
                    .last()
                    .is_some_and(|(d, s)| *d == local_day && s.offset == offset);
                if !same {
                    // Bucket starts depend only on the local date: a date met
                    // again (across an offset change) is not recomputed.
                    let known = day_stretches.iter().find(|(d, _)| *d == local_day);
                    let stretch = match known {
                        Some((_, s)) => Stretch { from, offset, ..*s },
                        None => self.stretch_at(from, offset),
                    };
                    day_stretches.push((local_day, stretch));
                }
                from = ((local_day + 1) * DAY - offset).min(b);
            }
        }
        if self.days.len() >= self.limit {
            self.days.clear();
            self.stretches.clear();
            self.last = None;
        }
        let first = u32::try_from(self.stretches.len()).ok()?;
        self.stretches
            .extend(day_stretches.into_iter().map(|(_, s)| s));
        let range = (first, u32::try_from(self.stretches.len()).ok()?);
        self.days.insert(day, range);
        Some(range)
    }

    /// A stretch starting at `from`, its buckets computed by the reference
    /// (whose day-or-longer levels ignore the sub-hour width).
    fn stretch_at(&self, from: i64, offset: i64) -> Stretch {
        let mut starts = [None; 5];
        let mut ends = [None; 5];
        for (k, level) in LONG.into_iter().enumerate() {
            starts[k] = level.bucket(from, &self.tz, 900).ok();
            ends[k] = starts[k].and_then(|s| level.next_start(s, &self.tz).ok().flatten());
        }
        Stretch {
            from,
            offset,
            starts,
            ends,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::bucket::zone;
    use proptest::prelude::*;

    const ZONES: [&str; 7] = [
        "America/New_York",
        "Asia/Kolkata",
        "Europe/Berlin",
        "Australia/Lord_Howe",
        "Asia/Kathmandu",
        "Pacific/Chatham",
        "UTC",
    ];

    /// 1970-01-01 to 2100-01-01.
    const SPAN: std::ops::Range<i64> = 0..4_102_444_800;

    fn ts(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    fn calendar(z: &str) -> Calendar {
        Calendar::new(zone(Some(z)).unwrap())
    }

    /// A result as comparable text: the value, or the error and its cause.
    fn shown<T: std::fmt::Debug>(r: Result<T, BucketError>) -> String {
        match r {
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("error: {e}: {}", e.source),
        }
    }

    /// Asserts that every answer of `cal` about `t` at `level` is the reference's.
    fn agrees(cal: &mut Calendar, level: Level, t: i64, subhr: i64) -> Result<(), TestCaseError> {
        let tz = cal.tz().clone();
        let want = level.bucket(t, &tz, subhr);
        let next_want = want.as_ref().ok().map(|&b| shown(level.next_start(b, &tz)));
        let span_want = level
            .bucket(t, &tz, subhr)
            .and_then(|b| Ok((b, level.next_start(b, &tz)?)));
        prop_assert_eq!(
            shown(cal.bucket(level, t, subhr)),
            shown(want),
            "{:?} at {}",
            level,
            t
        );
        if let Ok(b) = cal.bucket(level, t, subhr) {
            prop_assert_eq!(
                Some(shown(cal.next_start(level, b))),
                next_want,
                "{:?} after {}",
                level,
                b
            );
        }
        prop_assert_eq!(
            shown(cal.bucket_span(level, t, subhr)),
            shown(span_want),
            "{:?} span at {}",
            level,
            t
        );
        // `next_start` of any instant, not only of a bucket start.
        prop_assert_eq!(
            shown(cal.next_start(level, t)),
            shown(level.next_start(t, &tz)),
            "{:?} next_start({})",
            level,
            t
        );
        Ok(())
    }

    /// Asserts that `buckets` at all levels is the reference's, level by level.
    fn agrees_all(cal: &mut Calendar, t: i64, subhr: i64) -> Result<(), TestCaseError> {
        let tz = cal.tz().clone();
        let want: Result<Vec<i64>, _> =
            Level::ALL.iter().map(|l| l.bucket(t, &tz, subhr)).collect();
        let mut got = [0; 7];
        let got = cal
            .buckets(t, &Level::ALL, subhr, &mut got)
            .map(|()| got.to_vec());
        prop_assert_eq!(shown(got), shown(want), "all levels at {}", t);
        Ok(())
    }

    /// Near jiff's limits, around zero and at `i64`'s ends.
    fn extreme() -> impl Strategy<Value = i64> {
        let (min, max) = (Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
        prop_oneof![
            (min - 3 * DAY)..(min + 3 * DAY),
            (max - 3 * DAY)..(max + 3 * DAY),
            -3 * DAY..3 * DAY,
            any::<i64>(),
            Just(i64::MIN),
            Just(i64::MIN + 1),
            Just(i64::MAX),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn calendar_equals_level_bucket(
            t in SPAN,
            zone_idx in 0..ZONES.len(),
            subhr in prop_oneof![Just(900_i64), Just(1800)],
        ) {
            let mut cal = calendar(ZONES[zone_idx]);
            for level in Level::ALL {
                agrees(&mut cal, level, t, subhr)?;
            }
            agrees_all(&mut cal, t, subhr)?;
        }

        #[test]
        fn calendar_equals_level_bucket_near_limits(
            t in extreme(),
            zone_idx in 0..ZONES.len(),
            subhr in prop_oneof![Just(900_i64), Just(1800)],
        ) {
            let mut cal = calendar(ZONES[zone_idx]);
            for level in Level::ALL {
                agrees(&mut cal, level, t, subhr)?;
            }
            agrees_all(&mut cal, t, subhr)?;
        }

        /// Many instants in any order through one calendar that holds a
        /// day or two, so lookups hit, miss and evict.
        #[test]
        fn calendar_agrees_in_any_order_with_evictions(
            base in SPAN,
            asks in proptest::collection::vec((0_i64..10 * DAY, 0..Level::ALL.len()), 1..200),
            zone_idx in 0..ZONES.len(),
            limit in 1_usize..3,
            subhr in prop_oneof![Just(900_i64), Just(1800)],
        ) {
            let mut cal = Calendar::with_limit(zone(Some(ZONES[zone_idx])).unwrap(), limit);
            for (offset, level_idx) in asks {
                agrees(&mut cal, Level::ALL[level_idx], base + offset, subhr)?;
                agrees_all(&mut cal, base + offset, subhr)?;
                prop_assert!(cal.days.len() <= limit);
            }
        }

        /// Any zone of the database, over two centuries of its history.
        #[test]
        fn calendar_equals_level_bucket_in_every_zone(
            t in -2_208_988_800_i64..4_102_444_800,
            pick in any::<prop::sample::Index>(),
        ) {
            let names: Vec<String> =
                jiff::tz::db().available().map(|n| n.as_str().to_owned()).collect();
            prop_assume!(!names.is_empty());
            let mut cal = calendar(&names[pick.index(names.len())]);
            agrees_all(&mut cal, t, 900)?;
            for level in Level::ALL {
                agrees(&mut cal, level, t, 900)?;
            }
        }
    }

    /// Every second around every transition of zones with odd days: a midnight
    /// skipped or repeated, a day skipped, a negative or two-hour DST.
    #[test]
    fn calendar_equals_level_bucket_around_transitions() {
        for z in [
            "America/Sao_Paulo",
            "Asia/Tehran",
            "Pacific/Apia",
            "America/Havana",
            "Asia/Gaza",
            "America/Santiago",
            "Antarctica/Troll",
            "Europe/Dublin",
            "Australia/Lord_Howe",
            "Pacific/Chatham",
            "Pacific/Kiritimati",
        ] {
            let mut cal = calendar(z);
            let tz = cal.tz().clone();
            let from = Timestamp::from_second(ts("1970-01-01T00:00:00Z")).unwrap();
            let until = ts("2040-01-01T00:00:00Z");
            let transitions: Vec<i64> = tz
                .following(from)
                .map(|t| t.timestamp().as_second())
                .take_while(|&t| t < until)
                .collect();
            for t in transitions {
                for d in [-DAY, -3601, -1, 0, 1, 1799, 3600, DAY - 1] {
                    agrees_all(&mut cal, t + d, 900).unwrap();
                    for level in Level::ALL {
                        agrees(&mut cal, level, t + d, 900).unwrap();
                    }
                }
            }
        }
    }

    #[test]
    fn new_york_dst_days() {
        let mut cal = calendar("America/New_York");
        let mut b = |level, at: &str| cal.bucket(level, ts(at), 900).unwrap();
        // 2026-03-08 springs forward at 02:00 local (07:00Z): a 23-hour day
        // whose 01:00 hour is followed by its 03:00 hour.
        let day = b(Level::Day, "2026-03-08T12:00:00Z");
        assert_eq!(day, ts("2026-03-08T05:00:00Z"));
        assert_eq!(b(Level::Day, "2026-03-09T03:59:59Z"), day);
        assert_eq!(
            b(Level::Day, "2026-03-09T04:00:00Z"),
            ts("2026-03-09T04:00:00Z")
        );
        assert_eq!(
            b(Level::Hour, "2026-03-08T06:59:59Z"),
            ts("2026-03-08T06:00:00Z")
        );
        assert_eq!(
            b(Level::Hour, "2026-03-08T07:00:00Z"),
            ts("2026-03-08T07:00:00Z")
        );
        // 2026-11-01 falls back at 02:00 local (06:00Z): a 25-hour day whose
        // repeated 01:00 hour is two buckets.
        let day = b(Level::Day, "2026-11-01T12:00:00Z");
        assert_eq!(day, ts("2026-11-01T04:00:00Z"));
        assert_eq!(b(Level::Day, "2026-11-02T04:59:59Z"), day);
        assert_eq!(
            b(Level::Hour, "2026-11-01T05:30:00Z"),
            ts("2026-11-01T05:00:00Z")
        );
        assert_eq!(
            b(Level::Hour, "2026-11-01T06:30:00Z"),
            ts("2026-11-01T06:00:00Z")
        );
        assert_eq!(
            b(Level::Hour, "2026-11-01T07:30:00Z"),
            ts("2026-11-01T07:00:00Z")
        );
        let day = ts("2026-11-01T04:00:00Z");
        assert_eq!(
            cal.next_start(Level::Day, day).unwrap(),
            Some(ts("2026-11-02T05:00:00Z"))
        );
        assert_eq!(
            cal.bucket_span(Level::Month, ts("2026-11-01T12:00:00Z"), 900)
                .unwrap(),
            (ts("2026-11-01T04:00:00Z"), Some(ts("2026-12-01T05:00:00Z")))
        );
        assert_eq!(cal.next_start(Level::Hour, day).unwrap(), None);
    }

    #[test]
    fn kolkata_hours_start_at_half_past_utc() {
        let mut cal = calendar("Asia/Kolkata");
        let mut out = [0; 7];
        cal.buckets(ts("2026-03-01T20:29:59Z"), &Level::ALL, 1800, &mut out)
            .unwrap();
        assert_eq!(
            out,
            [
                ts("2026-03-01T20:00:00Z"),
                ts("2026-03-01T19:30:00Z"),
                // Local midnight is 18:30 UTC the day before.
                ts("2026-03-01T18:30:00Z"),
                ts("2026-03-01T18:30:00Z"), // Monday 2026-03-02
                ts("2026-02-28T18:30:00Z"),
                ts("2025-12-31T18:30:00Z"),
                ts("2025-12-31T18:30:00Z"),
            ]
        );
        assert_eq!(
            cal.bucket(Level::Hour, ts("2026-03-01T20:30:00Z"), 900)
                .unwrap(),
            ts("2026-03-01T20:30:00Z")
        );
    }

    #[test]
    fn lord_howe_half_hour_fall_back() {
        // 2026-04-05 02:00 local (+11:00, 15:00Z) falls back to 01:30 (+10:30):
        // hours start at :00 UTC before and at :30 UTC after.
        let mut cal = calendar("Australia/Lord_Howe");
        let mut b = |level, at: &str| cal.bucket(level, ts(at), 900).unwrap();
        assert_eq!(
            b(Level::Hour, "2026-04-04T14:59:59Z"),
            ts("2026-04-04T14:00:00Z")
        );
        assert_eq!(
            b(Level::Hour, "2026-04-04T15:00:00Z"),
            ts("2026-04-04T14:30:00Z")
        );
        assert_eq!(
            b(Level::Hour, "2026-04-04T15:30:00Z"),
            ts("2026-04-04T15:30:00Z")
        );
        // That day (from local midnight, 13:00Z) lasts 24.5 hours.
        let day = b(Level::Day, "2026-04-04T15:00:00Z");
        assert_eq!(day, ts("2026-04-04T13:00:00Z"));
        assert_eq!(
            cal.next_start(Level::Day, day).unwrap(),
            Some(ts("2026-04-05T13:30:00Z"))
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cal = Calendar::with_limit(TimeZone::get("Europe/Berlin").unwrap(), 3);
        for day in 0..100 {
            cal.bucket(Level::Day, ts("2026-01-01T12:00:00Z") + day * DAY, 900)
                .unwrap();
            assert!(cal.days.len() <= 3);
            assert!(cal.stretches.len() <= 3 * 4);
        }
        let mut cal = calendar("UTC");
        for day in 0..(2 * CACHE_DAYS as i64) {
            cal.bucket(Level::Year, day * DAY, 900).unwrap();
        }
        assert!(cal.days.len() <= CACHE_DAYS);
    }
}
