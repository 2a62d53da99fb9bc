//! End-to-end catch-up benchmark, measured against references in the same run.
//!
//! Loads `RAA_BENCH_ROWS` IRF rows (default 1,000,000) of generated traffic
//! into a throwaway PostgreSQL with two slots created before the load, then
//! times, over the same changes:
//! - `pg_recvlogical` draining the second slot to /dev/null (the walsender's ceiling);
//! - raa catching up on its slot into the aggregate tables (PostgreSQL sink);
//!
//! and prints the ratio, then checks the result with `raa verify`'s SQL.
//! Run: `cargo bench --bench catchup` (see the README).

use raa::aggregate::Settings;
use raa::embedded::{find_binaries, EmbeddedPostgres};
use raa::loadgen::Generator;
use raa::ops::shutdown::Shutdown;
use raa::pipeline::{self, Options};
use raa::sink::{postgres::ddl, PgSink};
use raa::source::{setup, SourceConfig};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` enumerates; there is nothing to test here
    }
    let rows: usize = std::env::var("RAA_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(rows));
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c
}

async fn bench(rows: usize) {
    let pg = EmbeddedPostgres::start().expect("throwaway PostgreSQL");
    connect(&pg.url("postgres"))
        .await
        .batch_execute("CREATE DATABASE bench")
        .await
        .expect("create db");
    let source = SourceConfig::new(&pg.url("bench"), "raa", "raa").expect("config");
    let mut c = connect(&pg.url("bench")).await;
    c.batch_execute(raa::INFOMART_SQL).await.expect("schema");
    let settings = Settings::default();
    c.batch_execute(&ddl(&settings)).await.expect("raa ddl");
    setup::create_publication(&c, "raa")
        .await
        .expect("publication");
    // A first run on the empty database creates raa's slot (an empty
    // backfill), so the traffic below reaches raa by streaming.
    let state = tempfile::tempdir().expect("state dir");
    let run = |store| async {
        let sink = PgSink::new(connect(&pg.url("bench")).await, "raa", &settings)
            .await
            .expect("sink");
        let mut opts = Options {
            until_caught_up: true,
            ..Options::default()
        };
        if let Some(ms) = std::env::var("RAA_BENCH_BATCH_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            opts.batch_delay = std::time::Duration::from_millis(ms);
        }
        pipeline::run(
            &source,
            store,
            settings.clone(),
            sink,
            opts,
            Shutdown::default(),
        )
        .await
        .expect("raa catch-up")
    };
    let store = Arc::new(raa_state::Store::open(state.path()).expect("store"));
    run(store.clone()).await;
    c.execute(
        "SELECT pg_create_logical_replication_slot('reference', 'pgoutput')",
        &[],
    )
    .await
    .expect("reference slot");
    let started = Instant::now();
    let mut g = Generator::new(42, 1_774_569_600);
    g.dimensions(&c).await.expect("dimensions");
    let w = g.day(&mut c, rows, 1_000).await.expect("load");
    let end: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    eprintln!(
        "loaded {} inserts, {} updates, {} deletes in {} transactions ({:.1}s)",
        w.inserted,
        w.updated,
        w.deleted,
        w.transactions,
        started.elapsed().as_secs_f64()
    );

    let recv = find_binaries().expect("binaries").join("pg_recvlogical");
    let t = Instant::now();
    let status = std::process::Command::new(recv)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "bench",
        ])
        .args([
            "--slot",
            "reference",
            "--start",
            "--endpos",
            &end,
            "-f",
            "/dev/null",
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=raa",
            "--no-loop",
        ])
        .status()
        .expect("run pg_recvlogical");
    assert!(status.success(), "pg_recvlogical failed: {status}");
    let reference = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let summary = run(store).await;
    let raa_secs = t.elapsed().as_secs_f64();

    let diffs = raa::verify::verify(&c, &settings).await.expect("verify");
    println!("changes streamed:            {}", summary.changes);
    println!("pg_recvlogical drain:        {reference:.2} s");
    println!(
        "raa run --until-caught-up:   {raa_secs:.2} s ({:.0} changes/s)",
        summary.changes as f64 / raa_secs
    );
    println!("raa / pg_recvlogical time:   {:.2}x", raa_secs / reference);
    println!(
        "throughput ratio:            {:.2} (raa / pg_recvlogical)",
        reference / raa_secs
    );
    println!(
        "raa time by stage:           apply {:.1} s, finish {:.1} s, sink {:.1} s, state commit {:.1} s",
        summary.apply_secs, summary.finish_secs, summary.sink_secs, summary.state_secs
    );
    println!(
        "batches:                     {} ({:.0} changes each)",
        summary.batches,
        summary.changes as f64 / summary.batches.max(1) as f64
    );
    println!("verify differences:          {}", diffs.len());
    assert!(
        diffs.is_empty(),
        "aggregates differ from the SQL recomputation"
    );
}
