//! Exactly once through `kill -9`: the `raa` binary is killed at random
//! moments of a mixed workload (backfill, inserts, updates, deletes, late
//! facts, key changes, multi-statement and rolled-back transactions, one big
//! transaction) and restarted each time; the aggregate tables must end equal
//! to their SQL recomputation. Then a new "pod" with an empty state volume
//! restores from the share and must reach the same tables.
//!
//! `RAA_CRASH_KILLS` (default 24) and `RAA_CRASH_BIG_TXN_ROWS` (default
//! 300 000: enough to arrive in parts and spill, as a larger one would, and
//! a third of the time of a million) scale it.

mod support;

use raa::aggregate::Settings;
use raa::loadgen::Generator;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::TestDb;

const DAY: i64 = 1_774_569_600;
/// Logged once a transaction larger than a batch is aggregated, before its commit.
const BIG_BATCH: &str = "a transaction larger than a batch is aggregated";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn raa(db: &TestDb, state: &Path, share: &Path, log: &Path, args: &[&str]) -> support::Running {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let child = db
        .raa(state)
        .arg("run")
        .args(args)
        .env("RAA_SHARE_DIR", share)
        .env("RAA_CHECKPOINT_INTERVAL_SECONDS", "2")
        .env("RAA_BATCH_CHANGES", "2000")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start raa");
    support::Running::new(child)
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // Without the indented backtrace frames, which would crowd out the error.
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("  ")).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn log_count(log: &Path, what: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(what)
        .count()
}

/// Waits (up to `minutes`) until `what` appears `n` times in the log of the
/// running `child`.
async fn wait_for_log(
    child: &mut std::process::Child,
    log: &Path,
    what: &str,
    n: usize,
    minutes: u64,
) {
    for _ in 0..minutes * 600 {
        if log_count(log, what) >= n {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "raa exited ({status}) while waiting for {what:?}:\n{}",
                tail(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what:?} did not appear {n} times in the log:\n{}",
        tail(log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_loses_and_doubles_nothing() {
    let kills = env_or("RAA_CRASH_KILLS", 24);
    let big = env_or("RAA_CRASH_BIG_TXN_ROWS", 300_000);
    let settings = Settings::default();
    let db = TestDb::new().await;
    db.init(&settings).await;
    let dir = tempfile::tempdir().unwrap();
    let (state, share, log) = (
        dir.path().join("state"),
        dir.path().join("share"),
        dir.path().join("raa.log"),
    );

    // Facts that predate raa: the first runs are killed inside the backfill.
    let mut c = db.client().await;
    let mut g = Generator::new(77, DAY);
    g.dimensions(&c).await.unwrap();
    g.day(&mut c, 20_000, 1_000).await.unwrap();

    // The mixed workload, started once the backfill is done, so its kills
    // land in streaming.
    let big_committed = Arc::new(AtomicBool::new(false));
    let committed = big_committed.clone();
    let start_workload = move || {
        tokio::spawn(async move {
            for round in 0..8 {
                g.chaos(&mut c, 25).await.unwrap();
                g.day(&mut c, 600, 60).await.unwrap();
                if round == 2 {
                    // One transaction of `big` rows (plus its updates and deletes).
                    g.day(&mut c, big, big).await.unwrap();
                    committed.store(true, Ordering::Release);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            g.written
        })
    };
    let mut start_workload = Some(start_workload);
    let mut workload = None;

    // The first kills land inside the backfill (soon after it starts), the
    // next run is let finish it and its sink rewrite and start streaming, the
    // rest land at random moments of streaming, the last two once the big
    // transaction has committed: one while it is read and aggregated, one
    // while its batch is committed. So each phase is covered however fast
    // this machine is.
    let backfill_kills = 3.min(kills);
    let big_kills = 2.min(kills - backfill_kills);
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    for kill in 0..kills {
        let started = log_count(&log, "backfilling the facts");
        let committing = log_count(&log, BIG_BATCH);
        let mut running = raa(&db, &state, &share, &log, &[]);
        let child = running.child();
        if kill < backfill_kills {
            wait_for_log(child, &log, "backfilling the facts", started + 1, 10).await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        } else if kill >= kills - big_kills {
            let workload: &tokio::task::JoinHandle<_> =
                workload.as_ref().expect("the workload runs");
            while !big_committed.load(Ordering::Acquire) {
                assert!(!workload.is_finished(), "the workload ended early");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if kill == kills - big_kills {
                tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..20_000))).await;
            } else {
                // Reading and aggregating the big transaction takes minutes
                // in a debug build on a loaded machine.
                wait_for_log(child, &log, BIG_BATCH, committing + 1, 40).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..5_000))).await;
            }
        } else {
            if kill == backfill_kills {
                wait_for_log(child, &log, "raa::pipeline: streaming", 1, 10).await;
                workload = start_workload.take().map(|f| f());
            }
            let wait = rng.random_range(100..2_500);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "raa exited by itself ({status}) before kill {kill}:\n{}",
                tail(&log)
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let workload = workload.unwrap_or_else(|| start_workload.take().expect("workload")());
    let written = workload.await.unwrap();
    assert!(written.transactions > 100, "{written:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    let seen = |what: &str| logged.matches(what).count();
    println!(
        "{kills} kills: {} backfills started over, {} completed, {} runs reached streaming, \
         {} checkpoints, the big transaction's batch reached {} times",
        seen("interrupted backfill"),
        seen("backfill complete"),
        seen(" streaming"),
        seen("checkpoint written"),
        seen(BIG_BATCH),
    );
    // The kills landed in the backfill and in streaming, not only in start-up.
    assert!(seen("interrupted backfill") >= 1, "{}", tail(&log));
    assert!(seen("backfill complete") == 1, "{}", tail(&log));

    let status = raa(&db, &state, &share, &log, &["--until-caught-up"])
        .child()
        .wait()
        .unwrap();
    assert!(status.success(), "final run: {status}\n{}", tail(&log));
    db.assert_verified(&settings).await;

    // A new pod: empty state volume, same share. It restores the newest
    // checkpoint, replays the WAL after it and reaches the same tables.
    let checkpoints = std::fs::read_dir(share.join(&db.name)).unwrap().count();
    assert!(checkpoints >= 1, "no checkpoint on the share");
    let totals =
        "SELECT coalesce(sum(invite), 0)::bigint * 1000003 + count(*) FROM ag2_agent_subhr";
    let before = db.count(totals).await;
    let pod2 = dir.path().join("state-pod2");
    let status = raa(&db, &pod2, &share, &log, &["--until-caught-up"])
        .child()
        .wait()
        .unwrap();
    assert!(status.success(), "restore run: {status}\n{}", tail(&log));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("restored the state from a checkpoint"),
        "{}",
        tail(&log)
    );
    assert_eq!(db.count(totals).await, before);
    db.assert_verified(&settings).await;
}
