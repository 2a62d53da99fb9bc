//! End-to-end benchmark, measured against references in the same run, on the
//! same data.
//!
//! Loads generated traffic into a throwaway PostgreSQL (by default
//! [`Generator::week`]: every fact table, with updates, deletes, late facts
//! and open periods; `RAA_BENCH_TRAFFIC=day` loads IRF only), with raa's and
//! the reference slots created before the load, then times:
//! - `pg_recvlogical` draining a slot to /dev/null (the walsender's ceiling),
//!   over TCP and over the Unix socket;
//! - raa catching up on its slot into the aggregate tables (PostgreSQL sink,
//!   all five families at seven levels), over TCP and over the Unix socket;
//! - PostgreSQL's own recomputation: `INSERT INTO scratch SELECT … GROUP BY`
//!   of every family and level (the reference SQL `raa verify` uses), into
//!   scratch tables made for the run, timed as one run of all of them;
//! - raa's backfill of the same facts: a fresh state and a new slot on the
//!   database that already holds the rows (snapshot read, aggregation, and
//!   the write of every aggregate row).
//!
//! It prints the ratios and checks the results: the streamed tables against
//! the scratch recomputation, the backfilled ones with `raa verify`. Beside
//! each time it prints the CPU raa and the server spent on it, and from the
//! server's share the ratio a raa costing no CPU would reach: how much of
//! the catch-up PostgreSQL itself takes for the rows raa writes.
//!
//! Settings (environment): `RAA_BENCH_ROWS` facts to insert (default
//! 1,000,000), `RAA_BENCH_TRAFFIC` (`week` | `day`), `RAA_BENCH_TRANSPORT`
//! (`both` | `tcp` | `socket`), `RAA_BENCH_SCRATCH` (`logged` | `unlogged`),
//! `RAA_BENCH_BATCH_DELAY_MS`, `RAA_BENCH_BATCH_ENTRIES` (the work bound,
//! `batch_entries`), `RAA_BENCH_SQL_JIT` (`off` | `on`: PostgreSQL's JIT for
//! the SQL recomputation; off by default, its fastest here),
//! `RAA_BENCH_STREAM` (`on` | `off`: off skips the drains and raa's
//! catch-up, for sizes where only the backfill against the SQL is wanted in
//! reasonable time). Run: `cargo bench --bench catchup` or
//! `scripts/bench.sh` (see the README).

#[path = "support/cpu.rs"]
mod cpu;

use raa::aggregate::catalog::FAMILIES;
use raa::aggregate::Settings;
use raa::embedded::{find_binaries, EmbeddedPostgres};
use raa::loadgen::Generator;
use raa::ops::shutdown::Shutdown;
use raa::pipeline::{self, Options, Summary};
use raa::sink::{postgres::ddl, PgSink};
use raa::source::{setup, SourceConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Monday 2026-10-26T00:00Z: the week holds New York's fall-back.
const WEEK: i64 = 1_792_972_800;
/// 2026-03-27T00:00Z, the day `Generator::day` traffic has always used here.
const DAY: i64 = 1_774_569_600;
/// No stage of the run may take longer than this.
const STAGE_LIMIT: Duration = Duration::from_secs(3 * 3600);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Tcp,
    Socket,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Socket => "Unix socket",
        }
    }
}

struct Knobs {
    rows: usize,
    week: bool,
    transports: Vec<Transport>,
    unlogged: bool,
    batch_delay: Option<Duration>,
    batch_entries: Option<usize>,
    /// `jit` for the SQL recomputation's session. Off by default: compiling
    /// the 35 queries cost more than it saved (10.1 s against 6.4 s at
    /// 100 000 facts, 6.2 against 2.7 s at 30 000), and the reference should
    /// be PostgreSQL at its fastest. `"on"` or `"off"`, as `SET` takes it.
    sql_jit: &'static str,
    /// Whether to time the drains and raa's catch-up (the streaming half).
    stream: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Knobs {
    fn from_env() -> Knobs {
        let rows = env("RAA_BENCH_ROWS")
            .map(|v| v.parse().expect("RAA_BENCH_ROWS: a number of facts"))
            .unwrap_or(1_000_000);
        let week = match env("RAA_BENCH_TRAFFIC").as_deref() {
            None | Some("week") => true,
            Some("day") => false,
            Some(other) => panic!("RAA_BENCH_TRAFFIC: week or day, not {other:?}"),
        };
        let transports = match env("RAA_BENCH_TRANSPORT").as_deref() {
            None | Some("both") => vec![Transport::Tcp, Transport::Socket],
            Some("tcp") => vec![Transport::Tcp],
            Some("socket") => vec![Transport::Socket],
            Some(other) => panic!("RAA_BENCH_TRANSPORT: both, tcp or socket, not {other:?}"),
        };
        let unlogged = match env("RAA_BENCH_SCRATCH").as_deref() {
            None | Some("logged") => false,
            Some("unlogged") => true,
            Some(other) => panic!("RAA_BENCH_SCRATCH: logged or unlogged, not {other:?}"),
        };
        let batch_delay = env("RAA_BENCH_BATCH_DELAY_MS").map(|v| {
            Duration::from_millis(v.parse().expect("RAA_BENCH_BATCH_DELAY_MS: milliseconds"))
        });
        let batch_entries = env("RAA_BENCH_BATCH_ENTRIES").map(|v| {
            v.parse()
                .ok()
                .filter(|&n| n > 0)
                .expect("RAA_BENCH_BATCH_ENTRIES: a positive number of entries")
        });
        let sql_jit = match env("RAA_BENCH_SQL_JIT").as_deref() {
            None | Some("off") => "off",
            Some("on") => "on",
            Some(other) => panic!("RAA_BENCH_SQL_JIT: on or off, not {other:?}"),
        };
        let stream = match env("RAA_BENCH_STREAM").as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(other) => panic!("RAA_BENCH_STREAM: on or off, not {other:?}"),
        };
        Knobs {
            stream,
            rows,
            week,
            transports,
            unlogged,
            batch_delay,
            batch_entries,
            sql_jit,
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` (which also
    // enumerates with `--list`) does not: a run of minutes is no test.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("not run: this benchmark runs under `cargo bench` (see scripts/bench.sh)");
        return;
    }
    let knobs = Knobs::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(knobs));
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c
}

/// The server, and how to reach the bench database by each transport.
struct Bench {
    pg: EmbeddedPostgres,
    settings: Settings,
    knobs: Knobs,
}

impl Bench {
    fn url(&self, t: Transport) -> String {
        match t {
            Transport::Tcp => self.pg.url("bench"),
            Transport::Socket => self.pg.socket_url("bench"),
        }
    }

    fn source(&self, t: Transport, slot: &str) -> SourceConfig {
        SourceConfig::new(&self.url(t), slot, "raa").expect("source config")
    }

    /// One `pipeline::run` until caught up (or a backfill, on an empty state).
    async fn raa(&self, t: Transport, slot: &str, state: &std::path::Path) -> (Summary, f64) {
        let started = Instant::now();
        let store = Arc::new(raa_state::Store::open(state).expect("store"));
        let sink = PgSink::new(connect(&self.url(t)).await, slot, &self.settings)
            .await
            .expect("sink");
        let mut opts = Options {
            until_caught_up: true,
            ..Options::default()
        };
        if let Some(d) = self.knobs.batch_delay {
            opts.batch_delay = d;
        }
        if let Some(n) = self.knobs.batch_entries {
            opts.batch_entries = n;
        }
        let source = self.source(t, slot);
        let run = pipeline::run(
            &source,
            store,
            self.settings.clone(),
            sink,
            opts,
            Shutdown::default(),
        );
        let summary = tokio::time::timeout(STAGE_LIMIT, run)
            .await
            .expect("raa finished within the stage limit")
            .expect("raa run");
        (summary, started.elapsed().as_secs_f64())
    }

    /// `pg_recvlogical` draining `slot` up to `end`, by `t`; seconds.
    fn recvlogical(&self, t: Transport, slot: &str, end: &str) -> f64 {
        let recv = find_binaries().expect("binaries").join("pg_recvlogical");
        let host = match t {
            Transport::Tcp => "127.0.0.1".to_owned(),
            Transport::Socket => self.pg.socket_dir().display().to_string(),
        };
        let port = self.pg.port().to_string();
        let started = Instant::now();
        let status = std::process::Command::new(recv)
            .args(["-h", &host, "-p", &port])
            .args(["-U", "postgres", "-d", "bench", "--slot", slot, "--start"])
            .args(["--endpos", end, "-f", "/dev/null", "--no-loop"])
            .args(["-o", "proto_version=1", "-o", "publication_names=raa"])
            .status()
            .expect("run pg_recvlogical");
        assert!(status.success(), "pg_recvlogical failed: {status}");
        started.elapsed().as_secs_f64()
    }
}

/// raa's slot and the two reference slots of a transport.
fn slot_names(t: Transport) -> (&'static str, [&'static str; 2]) {
    match t {
        Transport::Tcp => ("raa_tcp", ["ref_tcp_1", "ref_tcp_2"]),
        Transport::Socket => ("raa_sock", ["ref_sock_1", "ref_sock_2"]),
    }
}

fn tables(settings: &Settings) -> Vec<(usize, raa::aggregate::Level, String)> {
    FAMILIES
        .iter()
        .enumerate()
        .flat_map(|(i, f)| {
            settings
                .levels
                .iter()
                .map(move |&l| (i, l, f.table_name(l)))
        })
        .collect()
}

async fn truncate_aggregates(c: &tokio_postgres::Client, settings: &Settings) {
    let names: Vec<String> = tables(settings).into_iter().map(|t| t.2).collect();
    c.batch_execute(&format!("TRUNCATE {}", names.join(", ")))
        .await
        .expect("truncate the aggregate tables");
}

/// Loads the traffic; returns the end LSN and a description.
async fn load(c: &mut tokio_postgres::Client, knobs: &Knobs) -> (String, String) {
    let started = Instant::now();
    let (mut g, what) = if knobs.week {
        (Generator::new(42, WEEK), "a week of every fact table")
    } else {
        (
            Generator::new(42, DAY),
            "a day of interaction_resource_fact only",
        )
    };
    g.truncate = false;
    g.dimensions(c).await.expect("dimensions");
    let w = if knobs.week {
        // Per transaction of n: n IRF, MSF and state facts and n/4 sessions.
        let per_day = (knobs.rows * 4 / (7 * 13)).max(1);
        g.week(c, per_day, 300).await.expect("load")
    } else {
        g.day(c, knobs.rows, 1_000).await.expect("load")
    };
    let end: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    let mut counts = Vec::new();
    for t in [
        "interaction_resource_fact",
        "mediation_segment_fact",
        "sm_res_state_fact",
        "sm_res_session_fact",
    ] {
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .expect("count")
            .get(0);
        counts.push(format!("{t} {n}"));
    }
    let text = format!(
        "{what}: {} inserts, {} updates, {} deletes in {} transactions ({:.1} s)\n\
         facts held:                  {}",
        w.inserted,
        w.updated,
        w.deleted,
        w.transactions,
        started.elapsed().as_secs_f64(),
        counts.join(", ")
    );
    (end, text)
}

/// PostgreSQL's own recomputation of every family and level into scratch
/// tables: seconds, seconds per family, and seconds of one read of
/// `pg_timezone_names` (each query does one).
async fn recompute(c: &tokio_postgres::Client, b: &Bench) -> (f64, Vec<(String, f64)>, f64) {
    let kind = if b.knobs.unlogged { "UNLOGGED " } else { "" };
    for (_, _, table) in tables(&b.settings) {
        c.batch_execute(&format!(
            "DROP TABLE IF EXISTS scratch_{table};\n\
             CREATE {kind}TABLE scratch_{table} (LIKE {table} INCLUDING ALL)"
        ))
        .await
        .expect("scratch table");
    }
    c.batch_execute("CHECKPOINT").await.expect("checkpoint");
    c.batch_execute(&format!("SET jit = {}", b.knobs.sql_jit))
        .await
        .expect("set jit");
    // Every reference query maps unknown zones to UTC through
    // pg_timezone_names, which PostgreSQL builds by reading the zone files.
    let t = Instant::now();
    c.batch_execute("SELECT count(*) FROM pg_timezone_names")
        .await
        .expect("zones");
    let zone_secs = t.elapsed().as_secs_f64();
    let mut per_family: Vec<(String, f64)> =
        FAMILIES.iter().map(|f| (f.name.to_owned(), 0.0)).collect();
    let started = Instant::now();
    for (idx, level, table) in tables(&b.settings) {
        let sql =
            FAMILIES[idx].reference_sql(level, &b.settings.params, b.settings.subhr_seconds, None);
        let t = Instant::now();
        c.batch_execute(&format!("INSERT INTO scratch_{table} {sql}"))
            .await
            .expect("recompute");
        per_family[idx].1 += t.elapsed().as_secs_f64();
    }
    (started.elapsed().as_secs_f64(), per_family, zone_secs)
}

/// Rows that differ between each aggregate table and its scratch twin.
async fn differences_from_scratch(c: &tokio_postgres::Client, settings: &Settings) -> i64 {
    let mut total = 0;
    for (_, _, table) in tables(settings) {
        let n: i64 = c
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM (TABLE {table} EXCEPT ALL TABLE scratch_{table}) a) \
                          + (SELECT count(*) FROM (TABLE scratch_{table} EXCEPT ALL TABLE {table}) b)"
                ),
                &[],
            )
            .await
            .expect("compare with scratch")
            .get(0);
        total += n;
    }
    total
}

/// Waits until the server runs no backend but `c`'s (raa's sink and
/// walsender, `pg_recvlogical`'s walsender, have ended) and the postmaster
/// has had time to reap them, so [`cpu::Mark::spent`] counts their time.
async fn quiet(c: &tokio_postgres::Client) {
    for _ in 0..200 {
        let others: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE backend_type IN ('client backend', 'walsender') AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .expect("backends")
            .get(0);
        if others == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("backends still running 10 s after their client ended");
}

/// Cores the machine offers: the capacity a stretch's CPU is spread over.
fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

async fn bench(knobs: Knobs) {
    let b = Bench {
        pg: EmbeddedPostgres::start().expect("throwaway PostgreSQL"),
        settings: Settings::default(),
        knobs,
    };
    connect(&b.pg.url("postgres"))
        .await
        .batch_execute("CREATE DATABASE bench")
        .await
        .expect("create db");
    let mut c = connect(&b.url(Transport::Tcp)).await;
    let backend: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("backend pid")
        .get(0);
    let server = cpu::Server::of_backend(backend);
    c.batch_execute(raa::INFOMART_SQL).await.expect("schema");
    c.batch_execute(&ddl(&b.settings)).await.expect("raa ddl");
    setup::create_publication(&c, "raa")
        .await
        .expect("publication");
    // The transports streamed over: none when only the backfill is timed.
    let streaming: &[Transport] = if b.knobs.stream {
        &b.knobs.transports
    } else {
        &[]
    };
    // A first run on the empty database creates each raa slot (an empty
    // backfill), so the traffic below reaches raa by streaming.
    let states: Vec<tempfile::TempDir> = streaming
        .iter()
        .map(|_| tempfile::tempdir().expect("state dir"))
        .collect();
    for (&t, state) in streaming.iter().zip(&states) {
        let (raa_slot, ref_slots) = slot_names(t);
        b.raa(t, raa_slot, state.path()).await;
        for slot in ref_slots {
            c.execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await
            .expect("reference slot");
        }
    }
    let (end, loaded) = load(&mut c, &b.knobs).await;
    eprintln!("{loaded}");

    // Each transport drains two slots, in the order A B B A (A alone with
    // one transport), so neither profits from going second; the mean counts.
    let n = streaming.len();
    let mut recv = vec![0.0; n];
    let mut recv_cpu = vec![(0.0, 0.0); n];
    for round in 0..2 {
        for k in 0..n {
            let i = if round == 0 { k } else { n - 1 - k };
            let t = streaming[i];
            let mark = cpu::Mark::now(&server);
            recv[i] += b.recvlogical(t, slot_names(t).1[round], &end) / 2.0;
            quiet(&c).await;
            let spent = mark.spent(&server);
            recv_cpu[i].0 += spent.server / 2.0;
            recv_cpu[i].1 += spent.children / 2.0;
        }
    }
    let mut streamed = Vec::new();
    for (i, (&t, state)) in streaming.iter().zip(&states).enumerate() {
        if i > 0 {
            // Each run writes the aggregate tables from empty, as the first did.
            truncate_aggregates(&c, &b.settings).await;
        }
        let mark = cpu::Mark::now(&server);
        let (summary, secs) = b.raa(t, slot_names(t).0, state.path()).await;
        quiet(&c).await;
        streamed.push((summary, secs, mark.spent(&server)));
    }
    let mark = cpu::Mark::now(&server);
    let (sql_secs, sql_per_family, zone_secs) = recompute(&c, &b).await;
    let sql_cpu = mark.spent(&server);
    let stream_diffs = if streaming.is_empty() {
        None
    } else {
        Some(differences_from_scratch(&c, &b.settings).await)
    };

    // Backfill: a fresh state and a new slot, over the last transport.
    let backfill_transport = *b.knobs.transports.last().expect("a transport");
    truncate_aggregates(&c, &b.settings).await;
    c.batch_execute("CHECKPOINT").await.expect("checkpoint");
    let fresh = tempfile::tempdir().expect("state dir");
    let mark = cpu::Mark::now(&server);
    let (backfill, backfill_secs) = b
        .raa(backfill_transport, "raa_backfill", fresh.path())
        .await;
    quiet(&c).await;
    let backfill_cpu = mark.spent(&server);
    let verifying = Instant::now();
    let diffs = raa::verify::verify(&c, &b.settings).await.expect("verify");
    let verify_secs = verifying.elapsed().as_secs_f64();

    println!("traffic:                     {loaded}");
    println!(
        "levels:                      {} families x {} levels ({} tables)",
        FAMILIES.len(),
        b.settings.levels.len(),
        tables(&b.settings).len()
    );
    for (i, &t) in streaming.iter().enumerate() {
        let (summary, raa_secs, spent) = &streamed[i];
        println!("--- streaming over {}", t.name());
        println!(
            "pg_recvlogical drain:        {:.2} s (mean of two slots); CPU: server {:.2} s, pg_recvlogical {:.2} s",
            recv[i], recv_cpu[i].0, recv_cpu[i].1
        );
        println!(
            "raa run --until-caught-up:   {raa_secs:.2} s ({} changes in {} transactions, {:.0} changes/s)",
            summary.changes,
            summary.transactions,
            summary.changes as f64 / raa_secs
        );
        println!(
            "raa time by stage:           apply {:.1} s, finish {:.1} s, sink {:.1} s, state commit {:.1} s; {} batches ({} spilled)",
            summary.apply_secs,
            summary.finish_secs,
            summary.sink_secs,
            summary.state_secs,
            summary.batches,
            summary.spilled_batches
        );
        println!(
            "aggregate rows sunk:         {} ({:.2} a change)",
            summary.sink_rows,
            summary.sink_rows as f64 / summary.changes.max(1) as f64
        );
        println!(
            "CPU of the catch-up:         raa {:.1} s, PostgreSQL {:.1} s ({:.1} s on {} cores over the run)",
            spent.own,
            spent.server,
            raa_secs * cores(),
            cores()
        );
        let ratio = recv[i] / raa_secs;
        println!(
            "throughput ratio:            {ratio:.3} (raa / pg_recvlogical; target >= 0.9: {})",
            verdict(ratio >= 0.9)
        );
        // Were raa free, the server's work for the same rows would still
        // take its CPU spread over every core: the best ratio left.
        println!(
            "  bound by the server alone: {:.3} (the drain over PostgreSQL's CPU for this catch-up, on {} cores)",
            recv[i] / (spent.server / cores()),
            cores()
        );
    }
    if streaming.len() == 2 {
        println!("--- Unix socket vs TCP (time over TCP / time over the socket; > 1: the socket is faster)");
        println!("pg_recvlogical:              {:.3}", recv[0] / recv[1]);
        println!(
            "raa catch-up:                {:.3}",
            streamed[0].1 / streamed[1].1
        );
    }
    println!(
        "--- recomputation from the facts (backfill over {})",
        backfill_transport.name()
    );
    let scratch = if b.knobs.unlogged {
        "UNLOGGED"
    } else {
        "regular (logged)"
    };
    let jit = b.knobs.sql_jit;
    println!(
        "SQL INSERT ... SELECT ... GROUP BY: {sql_secs:.2} s for all {} tables, into {scratch} scratch tables with the aggregate tables' unique keys (jit = {jit})",
        tables(&b.settings).len()
    );
    let parts: Vec<String> = sql_per_family
        .iter()
        .map(|(f, s)| format!("{f} {s:.1} s"))
        .collect();
    println!("  by family:                 {}", parts.join(", "));
    println!(
        "  of which pg_timezone_names: about {:.2} s ({zone_secs:.3} s read once per query)",
        zone_secs * tables(&b.settings).len() as f64
    );
    println!(
        "  CPU:                       PostgreSQL {:.1} s",
        sql_cpu.server
    );
    println!(
        "raa backfill:                {backfill_secs:.2} s ({} rows read from the snapshot, aggregated and written to all tables)",
        backfill.backfilled_rows()
    );
    if let Some(done) = &backfill.backfill {
        println!(
            "  by stage:                  slot and snapshot read {:.1} s, aggregation {:.1} s, state {:.1} s, rewrite of the tables {:.1} s ({} rows); {} chunks spilled",
            done.secs - done.aggregate_secs - done.state_secs,
            done.aggregate_secs,
            done.state_secs,
            backfill.resync_secs,
            backfill.resync_rows,
            done.spilled_chunks
        );
    }
    println!(
        "  CPU:                       raa {:.1} s, PostgreSQL {:.1} s ({:.1} s on {} cores over the run)",
        backfill_cpu.own,
        backfill_cpu.server,
        backfill_secs * cores(),
        cores()
    );
    let ratio = sql_secs / backfill_secs;
    println!(
        "SQL / raa backfill time:     {ratio:.3} (> 1: raa's backfill is faster; target > 1: {})",
        verdict(ratio > 1.0)
    );
    match stream_diffs {
        Some(n) => println!("streamed tables vs the SQL recomputation: {n} rows differ"),
        None => println!(
            "streamed tables vs the SQL recomputation: not streamed (RAA_BENCH_STREAM=off)"
        ),
    }
    println!(
        "backfilled tables, raa verify: {} tables differ ({verify_secs:.2} s)",
        diffs.len()
    );
    assert!(
        stream_diffs.is_none_or(|n| n == 0),
        "streamed aggregates differ from the SQL recomputation"
    );
    assert!(
        diffs.is_empty(),
        "backfilled aggregates differ from the SQL recomputation"
    );
}
