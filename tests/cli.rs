//! The `raa` binary as an operator uses it: init, run --until-caught-up and
//! verify against a database loaded with generated traffic, and verify
//! catching a tampered aggregate row.

mod support;

use std::process::{Command, Output};
use support::TestDb;

fn raa(args: &[&str], db: &TestDb, state: &std::path::Path) -> Output {
    db.raa(state)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run raa")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_run_verify_and_catch_tampering() {
    let db = TestDb::new().await;
    let state = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let out = raa(&["init"], &db, state.path());
        assert!(out.status.success(), "init is idempotent: {}", text(&out));
    }
    let out = raa(
        &[
            "loadgen",
            "--rows",
            "3000",
            "--txn-rows",
            "200",
            "--chaos",
            "40",
        ],
        &db,
        state.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = raa(&["run", "--until-caught-up"], &db, state.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("applied"),
        "{}",
        text(&out)
    );
    let out = raa(&["verify"], &db, state.path());
    assert!(out.status.success(), "{}", text(&out));

    db.client()
        .await
        .execute(
            "UPDATE ag2_agent_hour SET invite = invite + 1 WHERE ctid = (SELECT ctid FROM ag2_agent_hour LIMIT 1)",
            &[],
        )
        .await
        .unwrap();
    let out = raa(&["verify"], &db, state.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ag2_agent_hour: 1 rows expected"),
        "{}",
        text(&out)
    );
    assert!(!stdout.contains("ag2_agent_day"), "{}", text(&out));

    // Slices: the tampered table in a range holding it, other slices clean.
    let slice = |args: &[&str]| {
        let mut all = vec!["verify"];
        all.extend_from_slice(args);
        raa(&all, &db, state.path())
    };
    let out = slice(&[
        "--family",
        "agent",
        "--level",
        "hour",
        "--from",
        "2000-01-01T00:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ag2_agent_hour: 1 rows expected"),
        "{}",
        text(&out)
    );
    for clean in [
        &["--family", "agent", "--level", "day"][..],
        &["--level", "hour", "--to", "0"][..],
        &["--family", "queue"][..],
    ] {
        let out = slice(clean);
        assert!(out.status.success(), "{clean:?}: {}", text(&out));
    }
    let out = slice(&["--family", "agents"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("i_session"),
        "{}",
        text(&out)
    );
    let out = slice(&["--level", "decade"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = slice(&["--from", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn bad_configuration_is_refused_with_the_setting_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_raa"))
        .args(["run", "--subhr-minutes", "20"])
        .env("RAA_SOURCE_URL", "host=127.0.0.1 user=postgres dbname=x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--subhr-minutes") && err.contains("15 or 30"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_raa"))
        .args(["verify", "--slot", "Bad-Name"])
        .env("RAA_SOURCE_URL", "host=127.0.0.1 user=postgres dbname=x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Bad-Name"), "{err}");
}
