//! Rust's bucketing and `verify`'s SQL bucketing agree, on a real PostgreSQL,
//! for random instants in zones with DST and half-hour offsets.

mod support;

use raa::aggregate::{bucket, Level};
use rand::{Rng, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_sql_buckets_agree() {
    let db = support::TestDb::new().await;
    let client = db.client().await;
    let zones = [
        "America/New_York",
        "Asia/Kolkata",
        "Europe/Berlin",
        "Australia/Lord_Howe",
        "UTC",
    ];
    // Instants from 2020 to 2030, plus a dense sample around New York's 2026 DST changes.
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let mut instants: Vec<i64> = (0..200)
        .map(|_| rng.random_range(1_577_836_800_i64..1_893_456_000))
        .collect();
    for edge in [1_772_953_200_i64, 1_793_512_800] {
        instants.extend((-7_200..7_200).step_by(900).map(|d| edge + d));
    }
    for zone in zones {
        let tz = bucket::zone(Some(zone)).unwrap();
        for level in Level::ALL {
            let sql = format!(
                "SELECT {} FROM unnest($1::int8[]) WITH ORDINALITY AS t(ts, ord) ORDER BY ord",
                level.sql_bucket("t.ts", &format!("'{zone}'"), 900)
            );
            let rows = client.query(&sql, &[&instants]).await.unwrap();
            for (ts, row) in instants.iter().zip(rows) {
                let expected: i64 = row.get(0);
                let got = level.bucket(*ts, &tz, 900).unwrap();
                assert_eq!(got, expected, "{zone} {level:?} at {ts}");
            }
        }
    }
}
