//! Checkpoints on the share, `raa checkpoint`, `raa replay` and restoring
//! past a damaged checkpoint, through the binary as an operator runs it.

mod support;

use raa::aggregate::Settings;
use raa::loadgen::Generator;
use raa::pipeline::Failpoint;
use raa::reaggregate::{self, Range};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use support::TestDb;

const DAY: i64 = 1_774_569_600;

fn raa(db: &TestDb, state: &Path, share: &Path, args: &[&str]) -> Output {
    db.raa(state)
        .args(args)
        .env("RAA_SHARE_DIR", share)
        .env("RAA_CHECKPOINT_RETAIN", "2")
        .env("RUST_LOG", "info")
        .output()
        .expect("run raa")
}

fn ok(out: Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{}\n{text}", out.status);
    text
}

fn checkpoints(share: &Path, slot: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(share.join(slot))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "raa"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_replay_and_restore_past_a_damaged_checkpoint() {
    let settings = Settings::default();
    let db = TestDb::new().await;
    db.init(&settings).await;
    let dir = tempfile::tempdir().unwrap();
    let (state, share) = (dir.path().join("state"), dir.path().join("share"));
    let mut c = db.client().await;
    let mut g = Generator::new(31, DAY);
    g.dimensions(&c).await.unwrap();
    g.day(&mut c, 3_000, 300).await.unwrap();

    let out = ok(raa(&db, &state, &share, &["run", "--until-caught-up"]));
    assert!(out.contains("backfill complete"), "{out}");
    let first = checkpoints(&share, &db.name);
    assert_eq!(first.len(), 1, "a checkpoint after the backfill");

    // The next run is not due for a checkpoint (900 s interval); `raa
    // checkpoint` makes one now; the one after that keeps streaming.
    g.chaos(&mut c, 40).await.unwrap();
    ok(raa(&db, &state, &share, &["run", "--until-caught-up"]));
    assert_eq!(checkpoints(&share, &db.name), first);
    let out = ok(raa(&db, &state, &share, &["checkpoint"]));
    let files = checkpoints(&share, &db.name);
    assert_eq!(files.len(), 2, "{out}\n{files:?}");
    g.day(&mut c, 500, 50).await.unwrap();
    ok(raa(&db, &state, &share, &["run", "--until-caught-up"]));
    db.assert_verified(&settings).await;
    // Retention keeps 2: a third checkpoint prunes the oldest.
    ok(raa(&db, &state, &share, &["checkpoint"]));
    let files = checkpoints(&share, &db.name);
    assert_eq!(files.len(), 2);
    assert!(!files.contains(&first[0]));

    // Replay from the oldest retained checkpoint to now: the scratch result
    // equals the live tables, which the replay did not touch.
    let first = files;
    let progress = "SELECT (lsn - '0/0')::bigint FROM raa_progress";
    let sink_before = db.count(progress).await;
    let dump = dir.path().join("replay.csv");
    let out = ok(raa(
        &db,
        &state,
        &share,
        &[
            "replay",
            "--from-checkpoint",
            first[0].to_str().unwrap(),
            "--dump",
            dump.to_str().unwrap(),
        ],
    ));
    assert!(out.contains("replayed from checkpoint"), "{out}");
    assert_eq!(
        db.count(progress).await,
        sink_before,
        "replay wrote to the sink"
    );
    let replayed: BTreeSet<String> = std::fs::read_to_string(&dump)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("ag2_agent_day,"))
        .map(str::to_owned)
        .collect();
    let live: BTreeSet<String> = db
        .client()
        .await
        .query(
            "SELECT concat_ws(',', 'ag2_agent_day', t.*) FROM (SELECT * FROM ag2_agent_day) t",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    assert!(!live.is_empty());
    assert_eq!(replayed.len(), live.len());
    assert_eq!(
        db.count("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'raa_replay_%'")
            .await,
        0,
        "the replay's slot copy is dropped"
    );

    // A new pod whose newest checkpoint is torn falls back to the one before.
    let newest = checkpoints(&share, &db.name).pop().unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let pod2 = dir.path().join("state-pod2");
    let out = ok(raa(&db, &pod2, &share, &["run", "--until-caught-up"]));
    assert!(out.contains("refusing a checkpoint"), "{out}");
    assert!(
        out.contains("restored the state from a checkpoint"),
        "{out}"
    );
    db.assert_verified(&settings).await;
}

/// Facts changed where replication cannot see them: the table is out of the
/// publication while they change.
async fn hidden_changes(db: &TestDb, salt: i64) {
    db.client()
        .await
        .batch_execute(&format!(
            "ALTER PUBLICATION raa DROP TABLE interaction_resource_fact;
             UPDATE interaction_resource_fact SET talk_duration = talk_duration + {salt}
               WHERE interaction_resource_id % 5 = 0;
             DELETE FROM interaction_resource_fact WHERE interaction_resource_id % 17 = 0;
             CREATE TEMP TABLE copied AS
               SELECT * FROM interaction_resource_fact WHERE interaction_resource_id % 23 = 0;
             UPDATE copied SET interaction_resource_id = interaction_resource_id + 100000000 * {salt};
             INSERT INTO interaction_resource_fact SELECT * FROM copied;
             ALTER PUBLICATION raa ADD TABLE interaction_resource_fact;"
        ))
        .await
        .unwrap();
}

/// A reaggregation is read and applied a slice at a time. One whose read
/// fails after a slice was applied leaves nothing in the tables (the hidden
/// changes differ exactly as before), the run goes on and answers the error,
/// and the request made again repairs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaggregation_that_fails_midway_leaves_nothing_and_can_be_made_again() {
    let settings = Settings::default();
    let db = TestDb::new().await;
    db.init(&settings).await;
    let state = tempfile::tempdir().unwrap();
    let mut c = db.client().await;
    let mut g = Generator::new(43, DAY);
    g.dimensions(&c).await.unwrap();
    g.day(&mut c, 3_000, 200).await.unwrap();
    db.catch_up(state.path(), &settings).await;
    hidden_changes(&db, 7).await;
    let hidden = db.differences(&settings).await;
    assert!(!hidden.is_empty(), "hidden changes are hidden");
    // From 2026-01-01: the traffic holds late facts weeks before its day.
    let range = Range::new(1_767_225_600, DAY + 2 * 86_400).unwrap();

    reaggregate::request(state.path(), range).unwrap();
    db.catch_up_opts(&db.url, state.path(), &settings, |o| {
        o.failpoint = Some(Failpoint::ReaggregateRead(1));
    })
    .await
    .expect("a failed reaggregation does not stop the run");
    let answer = reaggregate::result(state.path()).unwrap_or_default();
    assert!(
        answer.starts_with("error:") && answer.contains("after 1 slices"),
        "{answer}"
    );
    assert_eq!(db.differences(&settings).await, hidden);

    // Again, with traffic the stream delivers queued behind it.
    g.chaos(&mut c, 30).await.unwrap();
    reaggregate::request(state.path(), range).unwrap();
    let run = db.catch_up(state.path(), &settings).await;
    assert!(run.transactions > 0, "{run:?}");
    let answer = reaggregate::result(state.path()).unwrap_or_default();
    assert!(answer.starts_with("ok:"), "{answer}");
    db.assert_verified(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaggregate_repairs_what_replication_missed_while_streaming_and_offline() {
    let settings = Settings::default();
    let db = TestDb::new().await;
    db.init(&settings).await;
    let dir = tempfile::tempdir().unwrap();
    let (state, share) = (dir.path().join("state"), dir.path().join("share"));
    let mut c = db.client().await;
    let mut g = Generator::new(41, DAY);
    g.dimensions(&c).await.unwrap();
    g.day(&mut c, 2_000, 200).await.unwrap();
    ok(raa(&db, &state, &share, &["run", "--until-caught-up"]));
    let range = [
        "--from",
        "2026-01-01T00:00:00Z",
        "--to",
        &(DAY + 2 * 86_400).to_string(),
    ];

    // While raa streams: hidden changes, then more traffic it does see.
    let mut running = support::Running::new(
        db.raa(&state)
            .arg("run")
            .env("RAA_SHARE_DIR", &share)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    hidden_changes(&db, 3).await;
    g.chaos(&mut c, 30).await.unwrap();
    assert!(
        !db.differences(&settings).await.is_empty(),
        "hidden changes are hidden"
    );
    let out = ok(raa(
        &db,
        &state,
        &share,
        &[&["reaggregate"][..], &range[..]].concat(),
    ));
    assert!(out.contains("ok:"), "{out}");
    g.chaos(&mut c, 10).await.unwrap();
    assert!(running.terminate().success());
    ok(raa(&db, &state, &share, &["run", "--until-caught-up"]));
    db.assert_verified(&settings).await;

    // Offline: nothing running holds the state; the command serves itself.
    hidden_changes(&db, 5).await;
    assert!(!db.differences(&settings).await.is_empty());
    let out = ok(raa(
        &db,
        &state,
        &share,
        &[&["reaggregate"][..], &range[..]].concat(),
    ));
    assert!(out.contains("ok:"), "{out}");
    db.assert_verified(&settings).await;

    // A range that ends before it starts is refused.
    let out = raa(
        &db,
        &state,
        &share,
        &["reaggregate", "--from", "200", "--to", "100"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be before"));
}
