//! Faults while `raa run` streams: PostgreSQL restarted, the connections cut,
//! the sink failing its commits for a while. raa retries with backoff, says
//! why in its log, and the tables end equal to the SQL recomputation. A
//! dropped slot is refused with what to do.
//!
//! This binary restarts its PostgreSQL cluster: it has one test, so no other
//! test shares the cluster while it restarts.

mod support;

use raa::aggregate::Settings;
use raa::loadgen::Generator;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::TestDb;

const DAY: i64 = 1_774_569_600;

fn start_raa(db: &TestDb, state: &Path, log: &Path) -> support::Running {
    let log = std::fs::File::create(log).expect("log file");
    support::Running::new(
        db.raa(state)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start raa"),
    )
}

/// Waits until the aggregate tables equal their recomputation (raa streams
/// in the background), or panics with the log after `limit`.
async fn converged(db: &TestDb, settings: &Settings, log: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let diffs = db.differences(settings).await;
        if diffs.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{} differences after {limit:?}, first {:?}\nlog:\n{}",
                diffs.len(),
                diffs.first(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn log_has(log: &Path, what: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(what)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_cut_connections_and_failing_sink_commits_lose_nothing() {
    let settings = Settings::default();
    let db = TestDb::new().await;
    db.init(&settings).await;
    let dir = tempfile::tempdir().unwrap();
    let (state, log) = (dir.path().join("state"), dir.path().join("raa.log"));
    let mut g = Generator::new(55, DAY);
    let mut c = db.client().await;
    g.dimensions(&c).await.unwrap();
    g.day(&mut c, 1_000, 100).await.unwrap();
    let mut raa = start_raa(&db, &state, &log);
    let limit = Duration::from_secs(120);
    converged(&db, &settings, &log, limit).await;

    // 1. The connections cut (replication and sink alike).
    g.chaos(&mut c, 20).await.unwrap();
    let cut = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = '{}' AND pid <> pg_backend_pid() \
         AND (application_name LIKE 'raa%' OR backend_type = 'walsender')",
        db.name
    );
    assert!(db.count(&cut).await >= 1, "raa had no connection to cut");
    g.chaos(&mut c, 20).await.unwrap();
    converged(&db, &settings, &log, limit).await;
    assert!(log_has(&log, "transient failure"), "the cut was not logged");

    // 2. The sink failing every commit for a while: a constraint the next
    // upsert violates, dropped once raa has logged the failure.
    db.client()
        .await
        .batch_execute("ALTER TABLE ag2_agent_day ADD CONSTRAINT fail_for_a_while CHECK (invite < 0) NOT VALID")
        .await
        .unwrap();
    g.chaos(&mut c, 20).await.unwrap();
    let deadline = Instant::now() + limit;
    while !log_has(&log, "fail_for_a_while") {
        assert!(Instant::now() < deadline, "sink failure never logged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    db.client()
        .await
        .batch_execute("ALTER TABLE ag2_agent_day DROP CONSTRAINT fail_for_a_while")
        .await
        .unwrap();
    converged(&db, &settings, &log, limit).await;

    // 3. PostgreSQL restarted mid-stream.
    if let Some(pg) = support::embedded() {
        g.chaos(&mut c, 20).await.unwrap();
        tokio::task::spawn_blocking(move || pg.restart())
            .await
            .unwrap()
            .expect("restart PostgreSQL");
        let mut c = db.client().await;
        g.chaos(&mut c, 20).await.unwrap();
        g.day(&mut c, 300, 50).await.unwrap();
        converged(&db, &settings, &log, limit).await;
    }
    assert!(raa.child().try_wait().unwrap().is_none(), "raa gave up");

    // SIGTERM: a clean stop.
    let status = raa.terminate();
    assert!(status.success(), "{status}");

    // 4. The slot dropped while raa was down: refused, with what to do.
    db.client()
        .await
        .execute("SELECT pg_drop_replication_slot($1)", &[&db.name])
        .await
        .unwrap();
    let out = db
        .raa(&state)
        .args(["run", "--until-caught-up"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not exist") && err.contains("Rebuild"),
        "{err}"
    );
}
