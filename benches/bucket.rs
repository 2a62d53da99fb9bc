//! Time bucketing per fact: the seven levels of 1,000 instants through
//! `Level::bucket` (jiff conversions on every call, the reference) and through
//! a `Calendar` (cached per UTC day), instants in time order within a day and
//! at random within a year. `decode_aggregate` times interval splitting.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use raa::aggregate::bucket::zone;
use raa::aggregate::{Calendar, Level};
use rand::{Rng, SeedableRng};
use std::hint::black_box;

/// 2026-01-01T00:00:00Z.
const YEAR: i64 = 1_767_225_600;

fn instants() -> [(&'static str, Vec<i64>); 2] {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut in_day: Vec<i64> = (0..1_000)
        .map(|_| YEAR + 180 * 86_400 + rng.random_range(0..86_400))
        .collect();
    in_day.sort_unstable();
    let in_year = (0..1_000)
        .map(|_| YEAR + rng.random_range(0..365 * 86_400))
        .collect();
    [
        ("time-ordered within a day", in_day),
        ("random within a year", in_year),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("bucket 1000 instants, seven levels");
    g.throughput(Throughput::Elements(1_000));
    for z in ["America/New_York", "Asia/Kolkata"] {
        let tz = zone(Some(z)).unwrap();
        for (order, ts) in instants() {
            g.bench_function(format!("{z}, {order}: Level::bucket"), |b| {
                b.iter(|| {
                    let mut sum = 0_i64;
                    for &t in &ts {
                        for level in Level::ALL {
                            sum = sum.wrapping_add(level.bucket(black_box(t), &tz, 900).unwrap());
                        }
                    }
                    sum
                })
            });
            // The steady state: a calendar that has met these days before.
            let mut cal = Calendar::new(tz.clone());
            g.bench_function(format!("{z}, {order}: Calendar::buckets"), |b| {
                b.iter(|| {
                    let mut sum = 0_i64;
                    let mut out = [0; 7];
                    for &t in &ts {
                        cal.buckets(black_box(t), &Level::ALL, 900, &mut out)
                            .unwrap();
                        sum = out.iter().fold(sum, |s, &x| s.wrapping_add(x));
                    }
                    sum
                })
            });
            // Every day met for the first time.
            g.bench_function(format!("{z}, {order}: Calendar::buckets, cold"), |b| {
                b.iter_batched(
                    || Calendar::new(tz.clone()),
                    |mut cal| {
                        let mut out = [0; 7];
                        for &t in &ts {
                            cal.buckets(black_box(t), &Level::ALL, 900, &mut out)
                                .unwrap();
                        }
                        out
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
