//! Interval attribution: a period `[start, end)` split across the buckets it
//! overlaps, at every level, with the exact seconds it spends in each.
//!
//! The period is cut at the UTC 15-minute grid (Info Mart's DATE_TIME_KEY
//! grid) and each piece is placed in the bucket holding its first second.
//! That is exact whenever bucket boundaries lie on the grid, which holds for
//! sub-hour buckets (15 or 30 minutes) and, for hours and longer, for every
//! zone whose offsets and DST changes are whole quarter hours (every zone in
//! use today). `verify`'s SQL makes the same cut ([`super::family`]), so both
//! sides agree even for a zone where that does not hold.
//!
//! Cost is O(pieces) = O(sub-hour buckets touched). A period longer than
//! [`MAX_PERIOD_SECONDS`] is attributed only up to that length: an open-ended
//! or mistyped `end_ts` years away must not cost years of buckets.

use super::bucket::{BucketError, Level};
use super::calendar::Calendar;

/// The longest stretch of a period that is attributed (31 days); seconds
/// past `start + MAX_PERIOD_SECONDS` are not counted anywhere.
pub const MAX_PERIOD_SECONDS: i64 = 31 * 86_400;

/// The grid periods are cut at: 15 minutes, which every sub-hour width divides.
pub const GRID_SECONDS: i64 = 900;

/// What one period puts in one bucket of one level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// The bucket's `date_time_key`.
    pub bucket: i64,
    /// Seconds of the period inside the bucket.
    pub seconds: i64,
    /// Whether the period starts in this bucket.
    pub starts: bool,
}

/// The end actually attributed: `end`, capped at [`MAX_PERIOD_SECONDS`] after `start`.
pub fn capped_end(start: i64, end: i64) -> i64 {
    end.min(start.saturating_add(MAX_PERIOD_SECONDS))
}

/// Per level (aligned with `levels`), the buckets `[start, end)` overlaps, in
/// time order, in `calendar`'s zone. A period with `end <= start` touches only the bucket of its
/// start, with zero seconds: it still starts there.
pub fn split(
    start: i64,
    end: i64,
    levels: &[Level],
    calendar: &mut Calendar,
    subhr_seconds: i64,
) -> Result<Vec<Vec<Overlap>>, BucketError> {
    let end = capped_end(start, end);
    let stop = end.max(start.saturating_add(1));
    let mut out: Vec<Vec<Overlap>> = vec![Vec::new(); levels.len()];
    // Per level, the current day-or-longer bucket and where the next starts:
    // pieces before that need no calendar arithmetic.
    let mut current: Vec<Option<(i64, i64)>> = vec![None; levels.len()];
    let mut t = start;
    while t < stop {
        let next = (t - t.rem_euclid(GRID_SECONDS))
            .saturating_add(GRID_SECONDS)
            .min(stop);
        let seconds = (next.min(end) - t).max(0);
        for ((cells, level), known) in out.iter_mut().zip(levels).zip(&mut current) {
            let bucket = match *known {
                Some((bucket, until)) if t < until => bucket,
                _ => {
                    let (bucket, until) = calendar.bucket_span(*level, t, subhr_seconds)?;
                    if let Some(until) = until {
                        *known = Some((bucket, until));
                    }
                    bucket
                }
            };
            match cells.last_mut() {
                Some(last) if last.bucket == bucket => last.seconds += seconds,
                _ => cells.push(Overlap {
                    bucket,
                    seconds,
                    starts: t == start,
                }),
            }
        }
        t = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::bucket::zone;
    use jiff::tz::TimeZone;
    use jiff::Timestamp;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn ts(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    /// [`split`] as it was before the calendar, asking [`Level`] for every
    /// bucket: the oracle the cached one must equal.
    fn split_reference(
        start: i64,
        end: i64,
        levels: &[Level],
        tz: &TimeZone,
        subhr_seconds: i64,
    ) -> Result<Vec<Vec<Overlap>>, BucketError> {
        let end = capped_end(start, end);
        let stop = end.max(start.saturating_add(1));
        let mut out: Vec<Vec<Overlap>> = vec![Vec::new(); levels.len()];
        let mut current: Vec<Option<(i64, i64)>> = vec![None; levels.len()];
        let mut t = start;
        while t < stop {
            let next = (t - t.rem_euclid(GRID_SECONDS))
                .saturating_add(GRID_SECONDS)
                .min(stop);
            let seconds = (next.min(end) - t).max(0);
            for ((cells, level), known) in out.iter_mut().zip(levels).zip(&mut current) {
                let bucket = match *known {
                    Some((bucket, until)) if t < until => bucket,
                    _ => {
                        let bucket = level.bucket(t, tz, subhr_seconds)?;
                        if let Some(until) = level.next_start(bucket, tz)? {
                            *known = Some((bucket, until));
                        }
                        bucket
                    }
                };
                match cells.last_mut() {
                    Some(last) if last.bucket == bucket => last.seconds += seconds,
                    _ => cells.push(Overlap {
                        bucket,
                        seconds,
                        starts: t == start,
                    }),
                }
            }
            t = next;
        }
        Ok(out)
    }

    fn at(level: Level, start: &str, end: &str, z: &str) -> Vec<(i64, i64)> {
        let mut cal = Calendar::new(zone(Some(z)).unwrap());
        split(ts(start), ts(end), &[level], &mut cal, 900).unwrap()[0]
            .iter()
            .map(|o| (o.bucket, o.seconds))
            .collect()
    }

    #[test]
    fn kolkata_hours_split_at_half_past_utc() {
        assert_eq!(
            at(
                Level::Hour,
                "2026-03-01T10:15:00Z",
                "2026-03-01T11:45:10Z",
                "Asia/Kolkata"
            ),
            vec![
                (ts("2026-03-01T09:30:00Z"), 900),
                (ts("2026-03-01T10:30:00Z"), 3600),
                (ts("2026-03-01T11:30:00Z"), 910),
            ]
        );
    }

    #[test]
    fn dst_days_hold_23_and_25_hours() {
        let ny = "America/New_York";
        // A period over the whole of 2026-03-08 (spring forward) and 2026-11-01 (fall back).
        let spring = at(
            Level::Day,
            "2026-03-08T05:00:00Z",
            "2026-03-09T04:00:00Z",
            ny,
        );
        assert_eq!(spring, vec![(ts("2026-03-08T05:00:00Z"), 23 * 3600)]);
        let fall = at(
            Level::Day,
            "2026-11-01T04:00:00Z",
            "2026-11-02T05:00:00Z",
            ny,
        );
        assert_eq!(fall, vec![(ts("2026-11-01T04:00:00Z"), 25 * 3600)]);
        // The repeated 01:00 hour of the fall-back is two buckets of an hour each.
        let hours = at(
            Level::Hour,
            "2026-11-01T05:00:00Z",
            "2026-11-01T07:00:00Z",
            ny,
        );
        assert_eq!(
            hours,
            vec![
                (ts("2026-11-01T05:00:00Z"), 3600),
                (ts("2026-11-01T06:00:00Z"), 3600)
            ]
        );
    }

    #[test]
    fn empty_inverted_and_capped_periods() {
        let tz = TimeZone::UTC;
        let mut cal = Calendar::new(tz.clone());
        let s = ts("2026-05-01T10:07:00Z");
        for end in [s, s - 500] {
            let cells = split(s, end, &Level::ALL, &mut cal, 900).unwrap();
            for (level, c) in Level::ALL.iter().zip(&cells) {
                assert_eq!(c.len(), 1, "{level:?}");
                assert_eq!(c[0].seconds, 0);
                assert!(c[0].starts);
                assert_eq!(c[0].bucket, level.bucket(s, &tz, 900).unwrap());
            }
        }
        let cells = split(s, s + 10 * MAX_PERIOD_SECONDS, &[Level::Day], &mut cal, 900).unwrap();
        let total: i64 = cells[0].iter().map(|o| o.seconds).sum();
        assert_eq!(total, MAX_PERIOD_SECONDS);
        assert_eq!(cells[0].len(), 32);
    }

    proptest! {
        /// Against a minute-by-minute attribution: every minute of the period
        /// lands in the bucket holding it, at every level and in zones with
        /// DST and half-hour offsets; only the first bucket "starts".
        #[test]
        fn split_equals_minute_by_minute_attribution(
            // Anywhere over eight months, or within a day and a half of New York's
            // fall-back and spring-forward and Lord Howe's half-hour fall-back.
            start_min in prop_oneof![
                29_350_000_i64..29_700_000,
                29_365_700_i64..29_367_800,
                29_547_200_i64..29_549_300,
                29_588_000_i64..29_590_100,
            ],
            len_min in 0_i64..2_000,
            zone_idx in 0_usize..5,
            subhr in prop_oneof![Just(900_i64), Just(1800)],
        ) {
            let z = ["America/New_York", "Asia/Kolkata", "Europe/Berlin",
                     "Australia/Lord_Howe", "UTC"][zone_idx];
            let tz = zone(Some(z)).unwrap();
            let (start, end) = (start_min * 60, (start_min + len_min) * 60);
            let cells = split(start, end, &Level::ALL, &mut Calendar::new(tz.clone()), subhr).unwrap();
            for (level, got) in Level::ALL.iter().zip(&cells) {
                let mut expected: BTreeMap<i64, i64> = BTreeMap::new();
                expected.insert(level.bucket(start, &tz, subhr).unwrap(), 0);
                for m in 0..len_min {
                    let b = level.bucket(start + m * 60, &tz, subhr).unwrap();
                    *expected.entry(b).or_insert(0) += 60;
                }
                let mut merged: BTreeMap<i64, i64> = BTreeMap::new();
                for o in got {
                    *merged.entry(o.bucket).or_insert(0) += o.seconds;
                    prop_assert_eq!(o.starts, o.bucket == level.bucket(start, &tz, subhr).unwrap());
                }
                prop_assert_eq!(merged, expected, "{:?} in {}", level, z);
            }
        }
    }

    /// One calendar (holding a few days, so it evicts) through many periods
    /// in the zones of the bucket tests, against the uncached oracle.
    #[test]
    fn split_equals_the_uncached_split() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for z in [
            "America/New_York",
            "Asia/Kolkata",
            "Europe/Berlin",
            "Australia/Lord_Howe",
            "Asia/Kathmandu",
            "Pacific/Chatham",
            "UTC",
        ] {
            let tz = zone(Some(z)).unwrap();
            let mut cal = Calendar::with_limit(tz.clone(), 4);
            for _ in 0..300 {
                // Over 1970..2100, with lengths from nothing to past the cap.
                let start = rng.random_range(0_i64..4_102_444_800);
                let len = match rng.random_range(0..4) {
                    0 => rng.random_range(-1_000_i64..1_000),
                    1 => rng.random_range(0_i64..8 * 3600),
                    2 => rng.random_range(0_i64..4 * 86_400),
                    _ => rng.random_range(0_i64..2 * MAX_PERIOD_SECONDS),
                };
                for subhr in [900, 1800] {
                    let got = split(start, start + len, &Level::ALL, &mut cal, subhr).unwrap();
                    let want =
                        split_reference(start, start + len, &Level::ALL, &tz, subhr).unwrap();
                    assert_eq!(got, want, "{z}: {start} + {len}");
                }
            }
        }
    }

    proptest! {
        /// Periods over DST changes and anywhere in 1970..2100, some levels in
        /// any order, against the uncached oracle; errors included.
        #[test]
        fn split_with_calendar_equals_the_uncached_split(
            start in prop_oneof![
                0_i64..4_102_444_800,
                // Around New York's 2026 changes and Lord Howe's fall-back.
                1_772_900_000_i64..1_773_100_000,
                1_793_400_000_i64..1_793_600_000,
                1_775_200_000_i64..1_775_400_000,
                // At the end of jiff's range.
                253_402_000_000_i64..253_402_400_000,
            ],
            len in prop_oneof![-2_000_i64..2_000, 0_i64..200_000, 0_i64..3_000_000],
            levels in proptest::sample::subsequence(Level::ALL.to_vec(), 0..=7).prop_shuffle(),
            zone_idx in 0_usize..7,
            subhr in prop_oneof![Just(900_i64), Just(1800)],
        ) {
            let z = ["America/New_York", "Asia/Kolkata", "Europe/Berlin",
                     "Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Chatham", "UTC"][zone_idx];
            let tz = zone(Some(z)).unwrap();
            let mut cal = Calendar::with_limit(tz.clone(), 2);
            let shown = |r: Result<Vec<Vec<Overlap>>, BucketError>| {
                r.map_err(|e| format!("{e}: {}", e.source))
            };
            prop_assert_eq!(
                shown(split(start, start + len, &levels, &mut cal, subhr)),
                shown(split_reference(start, start + len, &levels, &tz, subhr))
            );
        }
    }
}
