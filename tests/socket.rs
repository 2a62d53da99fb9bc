//! A local source over its Unix socket: a connection string whose `host` is a
//! directory (`host=/run/postgresql port=5432 …`, as libpq reads it) makes
//! raa connect both its SQL connections (tokio-postgres) and its replication
//! connection (pgwire-replication) through the socket in that directory.
//!
//! Runs on the embedded cluster only (an external `RAA_TEST_PG_URL` server's
//! socket directory is not known here).

mod support;

use raa::aggregate::Settings;
use raa::loadgen::Generator;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::TestDb;

/// Monday 2026-10-26T00:00Z (as in tests/catalog.rs).
const WEEK: i64 = 1_792_972_800;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_source_streams_over_its_unix_socket() {
    let Some(pg) = support::embedded() else {
        eprintln!("skipped: RAA_TEST_PG_URL is set; the socket test needs the embedded cluster");
        return;
    };
    let settings = Settings::default();
    let db = TestDb::new().await;
    db.init(&settings).await;
    let url = pg.socket_url(&db.name);
    assert!(url.starts_with("host=/"), "{url}");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    // Facts before the first run (a backfill through the socket), more after
    // it (streamed through the socket).
    let mut c = support::connect(&url).await;
    let mut g = Generator::new(7, WEEK);
    g.dimensions(&c).await.unwrap();
    g.week(&mut c, 60, 20).await.unwrap();
    let first = db
        .catch_up_over(&url, &state, &settings, None)
        .await
        .expect("pipeline run over the socket");
    assert!(first.backfilled_rows() > 1_000, "{first:?}");
    db.assert_verified(&settings).await;
    g.week(&mut c, 40, 20).await.unwrap();
    g.chaos(&mut c, 20).await.unwrap();
    let second = db
        .catch_up_over(&url, &state, &settings, None)
        .await
        .expect("pipeline run over the socket");
    assert!(
        second.changes > 1_000 && second.backfilled_rows() == 0,
        "{second:?}"
    );
    db.assert_verified(&settings).await;

    // The binary, given the socket directory as host: the server sees its
    // replication connection come from a Unix socket (client_port -1).
    let log = dir.path().join("raa.log");
    let mut raa = support::Running::new(
        db.raa(&state)
            .env("RAA_SOURCE_URL", &url)
            .env("RAA_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("start raa"),
    );
    let app = format!("raa:{}", db.name);
    let deadline = Instant::now() + Duration::from_secs(60);
    let port: i32 = loop {
        let row = c
            .query_opt(
                "SELECT client_port FROM pg_stat_replication WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            break row.get(0);
        }
        if let Some(status) = raa.child().try_wait().unwrap() {
            panic!(
                "raa exited ({status}) before streaming:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no replication connection named {app} within 60 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        port, -1,
        "the replication connection came over TCP, not the socket"
    );
    // Traffic while it streams, then a clean stop and the tables check.
    g.week(&mut c, 20, 20).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !db.differences(&settings).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the tables did not converge within 120 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = raa.terminate();
    assert!(
        status.success(),
        "raa did not stop cleanly ({status}):\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    db.assert_verified(&settings).await;
}
