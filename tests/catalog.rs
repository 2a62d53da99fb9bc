//! The whole aggregate catalog against a real PostgreSQL: a generated week of
//! every fact table in three zones (one crossing DST, one at +05:30) verifies
//! for every family and level, through dimension and zone changes; and
//! hand-computed interval splits, DST days and retractable maxima.

mod support;

use raa::aggregate::catalog::FAMILIES;
use raa::aggregate::{Level, Settings};
use raa::loadgen::Generator;
use raa::pipeline::Failpoint;
use raa::verify::{verify_slice, Slice};
use support::TestDb;

/// Monday 2026-10-26T00:00Z: the week holds New York's fall-back (Sunday
/// 2026-11-01), its late facts reach back over Berlin's (2026-10-25).
const WEEK: i64 = 1_792_972_800;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_in_three_zones_verifies_for_every_family_and_level() {
    let settings = Settings::default();
    assert_eq!(settings.levels, Level::ALL.to_vec());
    let db = TestDb::new().await;
    db.init(&settings).await;
    let state = tempfile::tempdir().unwrap();
    let mut c = db.client().await;
    let mut g = Generator::new(41, WEEK);
    g.truncate = false;
    g.dimensions(&c).await.unwrap();
    let written = g.week(&mut c, 120, 40).await.unwrap();
    assert!(
        written.inserted > 2_500 && written.updated > 300 && written.deleted > 50,
        "{written:?}"
    );
    db.catch_up(state.path(), &settings).await;
    db.assert_verified(&settings).await;
    for family in FAMILIES {
        for level in Level::ALL {
            let table = family.table_name(level);
            let rows = db.count(&format!("SELECT count(*) FROM {table}")).await;
            assert!(rows > 0, "{table} is empty");
        }
    }
    for zone_bucket in [
        // New York's 25-hour day, Kolkata's hour at :30 UTC, Berlin's day.
        "SELECT count(*) FROM ag2_i_session_day WHERE tenant_key = 1 AND date_time_key = 1793505600",
        "SELECT count(*) FROM ag2_i_state_hour WHERE tenant_key = 2 AND date_time_key % 3600 = 1800",
        "SELECT count(*) FROM ag2_queue_day WHERE tenant_key = 3 AND date_time_key % 86400 = 82800",
    ] {
        assert!(db.count(zone_bucket).await > 0, "{zone_bucket}");
    }

    // Dimension rows change under the facts, a tenant moves to another zone;
    // state keys change, segments lose their start, sessions reopen, the
    // session table is truncated and half refilled; more traffic arrives.
    g.dimension_changes(&mut c).await.unwrap();
    c.batch_execute(
        "UPDATE tenant SET time_zone = 'Asia/Tokyo' WHERE tenant_key = 3;
         UPDATE resource_state SET state_type = 'Busy' WHERE resource_state_key = 1;
         UPDATE sm_res_state_fact SET sm_res_state_fact_key = sm_res_state_fact_key + 100000000
           WHERE sm_res_state_fact_key % 7 = 0;
         UPDATE mediation_segment_fact SET start_ts = NULL WHERE mediation_segment_id % 11 = 0;
         UPDATE sm_res_session_fact SET end_ts = NULL WHERE sm_res_session_fact_key % 5 = 0;
         BEGIN;
         CREATE TEMP TABLE kept ON COMMIT DROP AS
           SELECT * FROM sm_res_session_fact WHERE sm_res_session_fact_key % 2 = 0;
         TRUNCATE sm_res_session_fact;
         INSERT INTO sm_res_session_fact SELECT * FROM kept;
         COMMIT;",
    )
    .await
    .unwrap();
    g.chaos(&mut c, 15).await.unwrap();
    db.catch_up(state.path(), &settings).await;
    db.assert_verified(&settings).await;
    let berlin_days =
        "SELECT count(*) FROM ag2_queue_day WHERE tenant_key = 3 AND date_time_key % 86400 = 82800";
    assert_eq!(
        db.count(berlin_days).await,
        0,
        "tenant 3 left Berlin's calendar"
    );
    assert_eq!(
        db.count("SELECT coalesce(sum(ready_time), 0)::bigint FROM ag2_i_state_year")
            .await,
        0,
        "no state type is Ready any more"
    );

    // Slices starting mid-week (facts are skipped early there) agree too.
    let c = db.client().await;
    for from in [WEEK + 3 * 86_400 + 1_234, WEEK + 6 * 86_400] {
        let mid_week = Slice {
            from: Some(from),
            to: Some(from + 2 * 86_400),
            ..Slice::default()
        };
        let diffs = verify_slice(&c, &settings, &mid_week).await.unwrap();
        assert!(diffs.is_empty(), "{diffs:?}");
    }

    // A slice finds a tampered row in its range, and only there.
    let key: i64 = c
        .query_one(
            "UPDATE ag2_i_state_week SET busy_time = busy_time + 1 \
             WHERE ctid = (SELECT ctid FROM ag2_i_state_week ORDER BY date_time_key LIMIT 1) \
             RETURNING date_time_key",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let slice = |family: &str, from: i64, to: i64| Slice {
        family: Some(family.into()),
        level: Some(Level::Week),
        from: Some(from),
        to: Some(to),
    };
    let found = verify_slice(&c, &settings, &slice("i_state", key, key + 1))
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].table, "ag2_i_state_week");
    assert_eq!(
        (found[0].expected_only.len(), found[0].actual_only.len()),
        (1, 1)
    );
    for clean in [
        slice("i_state", key + 1, i64::MAX),
        slice("i_session", key, key + 1),
    ] {
        let none = verify_slice(&c, &settings, &clean).await.unwrap();
        assert!(none.is_empty(), "{clean:?}: {none:?}");
    }

    // Verifying runs in a read-only transaction of its own: the session's
    // settings are its own again after it, and a table that fails the
    // comparison is reported and leaves no aborted transaction behind.
    c.batch_execute("SET jit = on").await.unwrap();
    assert!(verify_slice(&c, &settings, &Slice::default())
        .await
        .unwrap()
        .iter()
        .any(|d| d.table == "ag2_i_state_week"));
    assert_eq!(jit(&c).await, "on");
    c.batch_execute("ALTER TABLE ag2_queue_day RENAME TO ag2_queue_day_gone")
        .await
        .unwrap();
    let err = verify_slice(&c, &settings, &Slice::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, raa::verify::VerifyError::Query { table, .. } if table == "ag2_queue_day"),
        "{err}"
    );
    assert_eq!(jit(&c).await, "on", "the session goes on after the failure");
    c.batch_execute("ALTER TABLE ag2_queue_day_gone RENAME TO ag2_queue_day")
        .await
        .unwrap();
}

/// A 30-minute sub-hour grid, on a shorter run that also crashes between
/// the sink commit and the state commit: split periods replay exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_minute_subhr_verifies_through_a_crash() {
    let settings = Settings {
        subhr_seconds: 1_800,
        ..Settings::default()
    };
    let db = TestDb::new().await;
    db.init(&settings).await;
    let state = tempfile::tempdir().unwrap();
    let mut c = db.client().await;
    let mut g = Generator::new(43, WEEK);
    g.dimensions(&c).await.unwrap();
    g.week(&mut c, 30, 10).await.unwrap();
    let err = db
        .catch_up_with(state.path(), &settings, Some(Failpoint::AfterSinkCommit(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, raa::pipeline::PipelineError::Failpoint(_)),
        "{err}"
    );
    g.dimension_changes(&mut c).await.unwrap();
    db.catch_up(state.path(), &settings).await;
    db.assert_verified(&settings).await;
    let off_grid = "SELECT count(*) FROM ag2_i_state_subhr WHERE date_time_key % 1800 <> 0";
    assert_eq!(db.count(off_grid).await, 0);
    assert!(db.count("SELECT count(*) FROM ag2_i_state_subhr").await > 0);
}

async fn exec(db: &TestDb, sql: &str) {
    db.client().await.batch_execute(sql).await.unwrap();
}

/// One measure of one row, or `None` when the row does not exist.
async fn cell(db: &TestDb, table: &str, measure: &str, filter: &str) -> Option<i64> {
    db.client()
        .await
        .query_opt(
            &format!("SELECT {measure} FROM {table} WHERE {filter}"),
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get::<_, Option<i64>>(0).unwrap_or(-1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_splits_dst_days_and_retractable_maxima_by_hand() {
    let settings = Settings::default();
    let db = TestDb::new().await;
    db.init(&settings).await;
    let state = tempfile::tempdir().unwrap();
    let c = db.client().await;
    Generator::new(1, WEEK).dimensions(&c).await.unwrap();
    // Sessions over New York's fall-back and spring-forward days; a Kolkata
    // state from 10:15 to 11:45 UTC in a state type of its own; an open state.
    exec(
        &db,
        "INSERT INTO resource_state VALUES (50, 'Ready', 'Ready (test)');
         INSERT INTO sm_res_session_fact VALUES
           (1, 1, 7001, 1, 1793505600, 1793595600, 90000),
           (2, 1, 7002, 1, 1772946000, 1773028800, 82800);
         INSERT INTO sm_res_state_fact VALUES
           (1, 2, 7003, 1, 50, 1793096100, 1793101500, 5400),
           (2, 2, 7004, 1, 1, 1793096100, NULL, NULL);
         INSERT INTO mediation_segment_fact (mediation_segment_id, tenant_key, resource_key, media_type_key,
             interaction_type_key, technical_descriptor_key, start_ts, mediation_duration)
         VALUES (1, 3, 1000, 1, 1, 1, 1793096100, 100), (2, 3, 1000, 1, 1, 1, 1793096200, 300),
                (3, 3, 1000, 1, 1, 1, 1793096300, 300);",
    )
    .await;
    db.catch_up(state.path(), &settings).await;
    let session_day = |r: i64, day: i64| format!("resource_key = {r} AND date_time_key = {day}");
    assert_eq!(
        cell(
            &db,
            "ag2_i_session_day",
            "active_time",
            &session_day(7001, 1793505600)
        )
        .await,
        Some(25 * 3600)
    );
    assert_eq!(
        cell(
            &db,
            "ag2_i_session_day",
            "active_time",
            &session_day(7002, 1772946000)
        )
        .await,
        Some(23 * 3600)
    );
    assert_eq!(
        cell(&db, "ag2_i_session_hour", "count(*)", "resource_key = 7001").await,
        Some(25)
    );
    let kolkata_hours = "SELECT array_agg(ARRAY[date_time_key, ready_time, state_count] ORDER BY date_time_key)::text \
                         FROM ag2_i_state_hour WHERE resource_key = 7003";
    let got: String = c.query_one(kolkata_hours, &[]).await.unwrap().get(0);
    assert_eq!(
        got,
        "{{1793093400,900,1},{1793097000,3600,0},{1793100600,900,0}}"
    );
    assert_eq!(
        cell(&db, "ag2_i_state_day", "count(*)", "resource_key = 7004").await,
        Some(0),
        "an open state contributes nothing"
    );
    let queue_hour = "resource_key = 1000 AND tenant_key = 3";
    assert_eq!(
        cell(&db, "ag2_queue_hour", "max_mediation_time", queue_hour).await,
        Some(300)
    );

    // The maximum survives one of its two facts leaving, then falls back;
    // the open state closes; the test state's type changes under its fact.
    exec(
        &db,
        "DELETE FROM mediation_segment_fact WHERE mediation_segment_id = 2",
    )
    .await;
    db.catch_up(state.path(), &settings).await;
    assert_eq!(
        cell(&db, "ag2_queue_hour", "max_mediation_time", queue_hour).await,
        Some(300)
    );
    exec(
        &db,
        "UPDATE mediation_segment_fact SET mediation_duration = 50 WHERE mediation_segment_id = 3;
         UPDATE sm_res_state_fact SET end_ts = start_ts + 60 WHERE sm_res_state_fact_key = 2;
         UPDATE resource_state SET state_type = 'NotReady' WHERE resource_state_key = 50;",
    )
    .await;
    db.catch_up(state.path(), &settings).await;
    assert_eq!(
        cell(&db, "ag2_queue_hour", "max_mediation_time", queue_hour).await,
        Some(100)
    );
    assert_eq!(
        cell(&db, "ag2_queue_hour", "mediation_time", queue_hour).await,
        Some(150)
    );
    assert_eq!(
        cell(&db, "ag2_queue_hour", "abandoned", queue_hour).await,
        Some(0)
    );
    // A technical result changes under the segments: they are abandoned now.
    exec(
        &db,
        "UPDATE technical_descriptor SET technical_result = 'CustomerAbandoned' WHERE technical_descriptor_key = 1",
    )
    .await;
    db.catch_up(state.path(), &settings).await;
    assert_eq!(
        cell(&db, "ag2_queue_year", "abandoned", queue_hour).await,
        Some(2)
    );
    assert_eq!(
        cell(&db, "ag2_i_state_day", "ready_time", "resource_key = 7004").await,
        Some(60)
    );
    let day_7003 = "resource_key = 7003";
    assert_eq!(
        cell(&db, "ag2_i_state_day", "ready_time", day_7003).await,
        Some(0)
    );
    assert_eq!(
        cell(&db, "ag2_i_state_day", "not_ready_time", day_7003).await,
        Some(5400)
    );

    // Kolkata moves to UTC: its facts are re-derived on whole-hour buckets.
    exec(
        &db,
        "UPDATE tenant SET time_zone = 'UTC' WHERE tenant_key = 2",
    )
    .await;
    db.catch_up(state.path(), &settings).await;
    let got: String = c
        .query_one(
            "SELECT array_agg(ARRAY[date_time_key, not_ready_time] ORDER BY date_time_key)::text \
             FROM ag2_i_state_hour WHERE resource_key = 7003",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(got, "{{1793095200,2700},{1793098800,2700}}");
    // Deleting the resource_state row drops the state from the (inner-joined) family.
    exec(
        &db,
        "DELETE FROM resource_state WHERE resource_state_key = 50",
    )
    .await;
    db.catch_up(state.path(), &settings).await;
    assert_eq!(
        cell(&db, "ag2_i_state_year", "count(*)", day_7003).await,
        Some(0)
    );
    db.assert_verified(&settings).await;
}

/// The session's `jit` setting.
async fn jit(c: &tokio_postgres::Client) -> String {
    c.query_one("SHOW jit", &[]).await.unwrap().get(0)
}
