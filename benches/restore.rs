//! Rebuilding a pod from the share, timed: backfill `RAA_BENCH_ROWS` IRF rows
//! (default 1,000,000) with checkpoints on, stream more traffic past the
//! checkpoint, then start a second "pod" on an empty state directory: it
//! restores the checkpoint and replays the WAL after it. Prints the times,
//! the checkpoint's size and a split of restore and replay, and verifies.
//! Run: `cargo bench --bench restore` (see the README).

use raa::aggregate::Settings;
use raa::embedded::EmbeddedPostgres;
use raa::loadgen::Generator;
use raa::ops::shutdown::Shutdown;
use raa::pipeline::{self, AckPolicy, Checkpoints, Options, Summary};
use raa::share::Share;
use raa::sink::{postgres::ddl, PgSink};
use raa::source::{setup, SourceConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` (which also
    // enumerates with `--list`) does not: a run of minutes is no test.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("not run: this benchmark runs under `cargo bench`");
        return;
    }
    let rows: usize = std::env::var("RAA_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench(rows));
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c
}

async fn run(
    source: &SourceConfig,
    url: &str,
    settings: &Settings,
    state: &Path,
    share: &Share,
) -> (Summary, f64) {
    let store = Arc::new(raa_state::Store::open(state).expect("store"));
    let sink = PgSink::new(connect(url).await, &source.slot, settings)
        .await
        .expect("sink");
    let opts = Options {
        until_caught_up: true,
        checkpoints: Some(Checkpoints {
            share: share.clone(),
            interval: Duration::from_secs(3600),
            ack: AckPolicy::Checkpointed,
        }),
        ..Options::default()
    };
    let t = Instant::now();
    let summary = pipeline::run(
        source,
        store,
        settings.clone(),
        sink,
        opts,
        Shutdown::default(),
    )
    .await
    .expect("raa run");
    (summary, t.elapsed().as_secs_f64())
}

async fn bench(rows: usize) {
    let pg = EmbeddedPostgres::start().expect("throwaway PostgreSQL");
    connect(&pg.url("postgres"))
        .await
        .batch_execute("CREATE DATABASE bench")
        .await
        .expect("create db");
    let url = pg.url("bench");
    let source = SourceConfig::new(&url, "raa", "raa").expect("config");
    let mut c = connect(&url).await;
    c.batch_execute(raa::INFOMART_SQL).await.expect("schema");
    let settings = Settings::default();
    c.batch_execute(&ddl(&settings)).await.expect("raa ddl");
    setup::create_publication(&c, "raa")
        .await
        .expect("publication");
    let mut g = Generator::new(42, 1_774_569_600);
    g.dimensions(&c).await.expect("dimensions");
    g.day(&mut c, rows, 1_000).await.expect("load");

    let dir = tempfile::tempdir().expect("dir");
    let share = Share::new(&dir.path().join("share"), "raa", 3).expect("share");
    let (first, backfill_secs) = run(&source, &url, &settings, &dir.path().join("a"), &share).await;
    let checkpoint = share
        .list()
        .expect("list")
        .into_iter()
        .next()
        .expect("a checkpoint");
    let size = std::fs::metadata(&checkpoint).expect("size").len();

    // Traffic after the checkpoint, streamed by the first pod.
    g.day(&mut c, rows / 10, 1_000).await.expect("more");
    g.chaos(&mut c, 200).await.expect("chaos");
    let (streamed, _) = run(&source, &url, &settings, &dir.path().join("a"), &share).await;

    // Restore alone, for the split.
    let probe = raa_state::Store::open(&dir.path().join("probe")).expect("probe");
    let t = Instant::now();
    let info = probe.restore(&checkpoint).expect("restore");
    let restore_secs = t.elapsed().as_secs_f64();
    drop(probe);

    // The new pod: empty state, same share.
    let (replayed, pod_secs) = run(&source, &url, &settings, &dir.path().join("b"), &share).await;
    let diffs = raa::verify::verify(&c, &settings).await.expect("verify");

    println!("facts backfilled:            {}", first.backfilled_rows);
    println!("backfill + first checkpoint: {backfill_secs:.1} s");
    println!(
        "checkpoint:                  {:.1} MiB, {} entries, LSN {}",
        size as f64 / (1 << 20) as f64,
        info.entries,
        info.lsn
    );
    println!(
        "streamed after it:           {} changes in {} transactions",
        streamed.changes, streamed.transactions
    );
    println!(
        "new pod, restore + replay:   {pod_secs:.1} s (restore alone {restore_secs:.1} s; replayed {} changes)",
        replayed.changes
    );
    println!("verify differences:          {}", diffs.len());
    println!("peak resident memory:        {}", peak_rss());
    assert!(
        diffs.is_empty(),
        "aggregates differ from the SQL recomputation"
    );
}

/// The process's peak resident set (VmHWM), as the kernel reports it.
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l["VmHWM:".len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}
