//! The streaming core against a real PostgreSQL: random workloads leave the
//! aggregate tables equal to their SQL recomputation, restarts never double
//! count, and schema changes, TOAST and dimension changes are followed.

mod support;

use raa::aggregate::Settings;
use raa::loadgen::Generator;
use raa::pipeline::Failpoint;
use support::TestDb;

const DAY: i64 = 1_774_569_600; // 2026-03-27T00:00:00Z: New York is already on DST, Berlin not yet.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_match_the_sql_recomputation() {
    let settings = Settings::default();
    for seed in [11_u64, 12, 13] {
        let db = TestDb::new().await;
        db.init(&settings).await;
        let state = tempfile::tempdir().unwrap();
        // Seed 11 starts raa on a database that already holds facts (a
        // backfill); the others start it first, so everything streams.
        let backfill = seed == 11;
        if !backfill {
            db.catch_up(state.path(), &settings).await;
        }
        let mut c = db.client().await;
        let mut g = Generator::new(seed, DAY);
        g.dimensions(&c).await.unwrap();
        g.day(&mut c, 3_000, 150).await.unwrap();
        g.chaos(&mut c, 60).await.unwrap();
        // The backfill's work bound makes it several chunks, none spilled
        // (a chunk ends at half the bound; a slice of 1 000 rows is less):
        // the dimension rows', then at least two of facts.
        let first = db
            .catch_up_opts(&db.url, state.path(), &settings, |o| {
                if backfill {
                    o.batch_entries = 40_000;
                }
            })
            .await
            .expect("pipeline run");
        if backfill {
            let chunks = first.backfill.as_ref().map_or(0, |b| b.chunks);
            assert!(
                first.backfilled_rows() > 2_000
                    && first.changes == 0
                    && chunks >= 3
                    && first.spilled_batches == 0,
                "{first:?}"
            );
            // The tables were rewritten from the state, a chunk at a time:
            // they hold exactly the rows the rewrite reports.
            let held = db.aggregate_rows(&settings).await;
            assert!(
                first.resync_rows == held as u64 && held > 0 && first.backfill.is_some(),
                "{held} rows held, {first:?}"
            );
        } else {
            assert!(
                first.changes > 3_000 && first.backfilled_rows() == 0,
                "{first:?}"
            );
            // Every stage reports its time, and the sink what it wrote.
            let stages = [first.apply_secs, first.finish_secs, first.sink_secs];
            assert!(
                stages.iter().all(|&s| s > 0.0) && first.sink_rows > 0,
                "{first:?}"
            );
        }
        db.assert_verified(&settings).await;
        // More traffic after a clean stop: the restart resumes where it left off.
        g.chaos(&mut c, 60).await.unwrap();
        g.day(&mut c, 500, 50).await.unwrap();
        let second = db.catch_up(state.path(), &settings).await;
        assert!(
            second.transactions > 0 && second.durable > first.durable,
            "{second:?}"
        );
        db.assert_verified(&settings).await;
        assert!(db.count("SELECT count(*) FROM ag2_agent_subhr").await > 0);
    }
}

/// Transactions larger than the batch's memory bound arrive in parts, spill
/// their work to disk and still match the SQL recomputation, also when raa
/// stops between such a batch's sink commit and its state commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_larger_than_memory_spill_and_match_the_sql_recomputation() {
    let settings = Settings::default();
    let db = TestDb::new().await;
    db.init(&settings).await;
    let state = tempfile::tempdir().unwrap();
    let mut c = db.client().await;
    let mut g = Generator::new(21, DAY);
    g.dimensions(&c).await.unwrap();
    g.day(&mut c, 1_000, 1_000).await.unwrap();
    // The backfill's chunks spill too.
    let run = bounded(&db, state.path(), &settings, None).await.unwrap();
    assert!(
        run.backfilled_rows() > 1_000 && run.spilled_batches >= 1,
        "{run:?}"
    );
    db.assert_verified(&settings).await;
    // Transactions of 1 000 rows: thousands of state entries each.
    g.day(&mut c, 2_000, 1_000).await.unwrap();
    let err = bounded(
        &db,
        state.path(),
        &settings,
        Some(Failpoint::AfterSinkCommit(1)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, raa::pipeline::PipelineError::Failpoint(_)),
        "{err}"
    );
    let run = bounded(&db, state.path(), &settings, None).await.unwrap();
    assert!(
        run.spilled_batches >= 2 && run.transactions_in_parts >= 2,
        "{run:?}"
    );
    db.assert_verified(&settings).await;
    // Then with updates, deletes and late facts, and a dimension change.
    g.chaos(&mut c, 60).await.unwrap();
    g.day(&mut c, 1_000, 1_000).await.unwrap();
    let run = bounded(&db, state.path(), &settings, None).await.unwrap();
    assert!(run.spilled_batches >= 1, "{run:?}");
    db.assert_verified(&settings).await;
}

/// A catch-up whose batches hold 600 state entries in memory and whose
/// transactions come in parts of 300 changes.
async fn bounded(
    db: &TestDb,
    state: &std::path::Path,
    settings: &Settings,
    failpoint: Option<Failpoint>,
) -> Result<raa::pipeline::Summary, raa::pipeline::PipelineError> {
    db.catch_up_opts(&db.url, state, settings, |o| {
        o.batch_entries = 600;
        o.part_changes = 300;
        o.failpoint = failpoint;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_without_new_traffic_changes_nothing() {
    let settings = Settings::default();
    let db = TestDb::new().await;
    db.init(&settings).await;
    let state = tempfile::tempdir().unwrap();
    let mut c = db.client().await;
    let mut g = Generator::new(5, DAY);
    g.dimensions(&c).await.unwrap();
    g.day(&mut c, 1_000, 100).await.unwrap();
    db.catch_up(state.path(), &settings).await;
    let totals = "SELECT coalesce(sum(invite), 0)::bigint FROM ag2_agent_day";
    let before = db.count(totals).await;
    let again = db.catch_up(state.path(), &settings).await;
    assert_eq!(again.transactions, 0, "{again:?}");
    assert_eq!(db.count(totals).await, before);
    db.assert_verified(&settings).await;
}

/// The crash window between the sink commit and the state commit, on purpose:
/// the run stops after the sink committed a batch the state never did, so the
/// restart re-applies transactions the aggregate tables already hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_sink_and_state_commit_replays_without_double_counting() {
    let settings = Settings::default();
    let db = TestDb::new().await;
    db.init(&settings).await;
    let state = tempfile::tempdir().unwrap();
    let mut c = db.client().await;
    let mut g = Generator::new(9, DAY);
    g.dimensions(&c).await.unwrap();
    g.day(&mut c, 800, 80).await.unwrap();
    // First, the crash during the very first batch of a new state.
    crash_after_first_sink_commit(&db, state.path(), &settings).await;
    db.catch_up(state.path(), &settings).await;
    db.assert_verified(&settings).await;
    // Twice more, each time with new traffic and a crash after the run's first batch
    // (every run with traffic has one; later batches depend on timing).
    for _ in 0..2 {
        g.chaos(&mut c, 40).await.unwrap();
        crash_after_first_sink_commit(&db, state.path(), &settings).await;
    }
    let progress = "SELECT (lsn - '0/0')::bigint FROM raa_progress";
    let sink_before = db.count(progress).await;
    let replay = db.catch_up(state.path(), &settings).await;
    assert!(replay.transactions > 0, "{replay:?}");
    assert!(db.count(progress).await >= sink_before);
    db.assert_verified(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_toast_and_late_dimensions_are_followed() {
    let settings = Settings::default();
    let db = TestDb::new().await;
    db.init(&settings).await;
    let state = tempfile::tempdir().unwrap();
    let mut c = db.client().await;
    let mut g = Generator::new(21, DAY);
    g.dimensions(&c).await.unwrap();
    g.day(&mut c, 500, 100).await.unwrap();
    db.catch_up(state.path(), &settings).await;
    // Re-order IRF's columns (hold_count moves to the end, its values carried by row updates) and widen it.
    c.batch_execute(
        "BEGIN;
         ALTER TABLE interaction_resource_fact ADD COLUMN hold_count_new integer;
         UPDATE interaction_resource_fact SET hold_count_new = hold_count;
         ALTER TABLE interaction_resource_fact DROP COLUMN hold_count;
         ALTER TABLE interaction_resource_fact RENAME COLUMN hold_count_new TO hold_count;
         COMMIT;
         ALTER TABLE interaction_resource_fact ADD COLUMN site_note text;
         UPDATE interaction_resource_fact SET hold_count = 1, site_note = 'x' WHERE interaction_resource_id % 3 = 0;",
    )
    .await
    .unwrap();
    // A resource name stored out of line: updating another column sends it as unchanged TOAST.
    let long: String = (0..6000)
        .map(|i| char::from(b'a' + ((i * 7919) % 26) as u8))
        .collect();
    c.execute(
        "ALTER TABLE resource_ ALTER COLUMN resource_name SET STORAGE EXTERNAL",
        &[],
    )
    .await
    .unwrap();
    c.execute(
        "UPDATE resource_ SET resource_name = $1 WHERE resource_key = 3",
        &[&long],
    )
    .await
    .unwrap();
    db.catch_up(state.path(), &settings).await;
    c.execute(
        "UPDATE resource_ SET resource_type = 'Supervisor' WHERE resource_key = 3",
        &[],
    )
    .await
    .unwrap();
    // Facts for a resource that appears only afterwards.
    c.batch_execute(
        "INSERT INTO interaction_resource_fact (interaction_resource_id, tenant_key, resource_key, media_type_key,
             interaction_type_key, technical_descriptor_key, start_ts, talk_count, talk_duration)
         VALUES (900000001, 2, 7777, 1, 1, 1, 1774580000, 1, 42), (900000002, 2, 7777, 1, 1, 1, 1774590000, 0, 0);
         INSERT INTO resource_ VALUES (7777, 'Agent', 'new hire', 'E7777');",
    )
    .await
    .unwrap();
    g.chaos(&mut c, 30).await.unwrap();
    db.catch_up(state.path(), &settings).await;
    db.assert_verified(&settings).await;
    let agents_of_3 = db
        .count("SELECT count(*) FROM ag2_agent_day WHERE resource_key = 3")
        .await;
    assert_eq!(
        agents_of_3, 0,
        "a resource that is no longer an agent leaves the agent family"
    );
    let new_hire = db
        .count(
            "SELECT coalesce(sum(invite), 0)::bigint FROM ag2_agent_day WHERE resource_key = 7777",
        )
        .await;
    assert_eq!(new_hire, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_role_without_replication_and_a_slot_past_the_state() {
    let settings = Settings::default();
    let db = TestDb::new().await;
    db.init(&settings).await;
    let c = db.client().await;
    let role = format!("{}_reader", db.name);
    c.batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    let url = db.url.replace("user=postgres", &format!("user={role}"));
    let reader = support::connect(&url).await;
    let err = raa::source::setup::check_server(&reader)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("REPLICATION"), "{err}");

    // A state that lost its last run while the slot moved on: refuse, do not skip facts.
    let state = tempfile::tempdir().unwrap();
    let mut c = db.client().await;
    let mut g = Generator::new(3, DAY);
    g.dimensions(&c).await.unwrap();
    g.day(&mut c, 100, 50).await.unwrap();
    db.catch_up(state.path(), &settings).await;
    let other = tempfile::tempdir().unwrap();
    let err = db
        .try_catch_up(other.path(), &settings)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("state was lost"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_server_without_logical_decoding() {
    if support::embedded().is_none() {
        return; // needs a cluster of its own with another wal_level
    }
    let pg = tokio::task::spawn_blocking(|| {
        raa::embedded::EmbeddedPostgres::start_with(&[("wal_level", "replica")])
    })
    .await
    .unwrap()
    .unwrap();
    let c = support::connect(&pg.url("postgres")).await;
    let err = raa::source::setup::check_server(&c)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("wal_level = replica") && err.contains("logical"),
        "{err}"
    );
}

/// Runs the pipeline until it stops at the failpoint after its first sink commit.
async fn crash_after_first_sink_commit(db: &TestDb, state: &std::path::Path, settings: &Settings) {
    let err = db
        .catch_up_with(state, settings, Some(Failpoint::AfterSinkCommit(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, raa::pipeline::PipelineError::Failpoint(_)),
        "{err}"
    );
}
