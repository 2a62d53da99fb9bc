//! Memory of one large source transaction: `RAA_BENCH_ROWS` IRF rows
//! (default 200,000) inserted, 10% of them updated and 2% deleted, all in a
//! single transaction, then streamed by `raa run --until-caught-up`. Prints
//! the process's peak resident memory during that run, what it grew by per
//! change, and verifies the aggregates. The issue-6 bound is 512 MiB
//! whatever the transaction size; a run above it prints MISSED.
//! Run: `cargo bench --bench big_txn` (or `scripts/bench.sh --only big_txn`).

use raa::aggregate::Settings;
use raa::embedded::EmbeddedPostgres;
use raa::loadgen::Generator;
use raa::ops::shutdown::Shutdown;
use raa::pipeline::{self, Options, Summary};
use raa::sink::{postgres::ddl, PgSink};
use raa::source::{setup, SourceConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The bound on resident memory.
const BOUND_MIB: u64 = 512;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("not run: this benchmark runs under `cargo bench`");
        return;
    }
    let rows: usize = std::env::var("RAA_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
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

async fn run(source: &SourceConfig, url: &str, settings: &Settings, state: &Path) -> Summary {
    let store = Arc::new(raa_state::Store::open(state).expect("store"));
    let sink = PgSink::new(connect(url).await, &source.slot, settings)
        .await
        .expect("sink");
    let opts = Options {
        until_caught_up: true,
        ..Options::default()
    };
    pipeline::run(
        source,
        store,
        settings.clone(),
        sink,
        opts,
        Shutdown::default(),
    )
    .await
    .expect("raa run")
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

    // The slot and a state holding the dimensions, before the transaction.
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    run(&source, &url, &settings, &state).await;
    g.day(&mut c, rows, rows).await.expect("one transaction");
    // The generator's connection keeps a buffer the size of its largest
    // statement (tens of MB): not raa's, so it goes before the measurement,
    // and the peak it raised is reset.
    drop(c);
    reset_peak();
    let before = status_kib("VmRSS");
    let t = Instant::now();
    let summary = run(&source, &url, &settings, &state).await;
    let secs = t.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM");
    let diffs = raa::verify::verify(&connect(&url).await, &settings)
        .await
        .expect("verify");

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "streamed:               {} changes in {} transaction(s), {} batch(es), {secs:.1} s",
        summary.changes, summary.transactions, summary.batches
    );
    println!("aggregate rows sunk:    {}", summary.sink_rows);
    println!("resident before:        {:.0} MiB", mib(before));
    println!("peak resident:          {:.0} MiB", mib(peak));
    println!(
        "growth per change:      {:.2} KiB",
        peak.saturating_sub(before) as f64 / summary.changes.max(1) as f64
    );
    let verdict = if peak / 1024 < BOUND_MIB {
        "met"
    } else {
        "MISSED"
    };
    // The bound holds for every size only if it holds for the largest.
    println!("bound {BOUND_MIB} MiB at {rows} rows: {verdict}");
    println!("verify differences:     {}", diffs.len());
    assert!(
        summary.changes as usize >= rows,
        "the run streamed fewer changes than were written"
    );
    assert!(
        diffs.is_empty(),
        "aggregates differ from the SQL recomputation"
    );
}

/// Resets the kernel's peak resident set (VmHWM) to the current one.
fn reset_peak() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak resident set ({e}): the peak may predate the run");
    }
}

/// A `/proc/self/status` field in KiB (0 when the kernel does not report it).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
