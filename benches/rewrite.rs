//! The rewrite of every aggregate table after a backfill
//! ([`Sink::replace_all`]), timed against the upserts it replaced, in the
//! same run on the same rows: `RAA_BENCH_ROWS` rows (default 500,000) over
//! the 35 tables of the default settings, each rewrite over tables that hold
//! the same number of rows (so each deletes them first). Per method and
//! round: wall time, and CPU of this process and of the server. Rounds:
//! `RAA_BENCH_ROUNDS` (default 3), methods in turn, the tables vacuumed and
//! checkpointed before each. `RAA_BENCH_READ_NS` (default 0): CPU
//! nanoseconds a row spent making the rows, as reading the state costs.
//!
//! Methods: `upserts` (the path of batches: `INSERT … SELECT FROM unnest(…)
//! ON CONFLICT`), `copy` (binary COPY, rows a table after another as the
//! state gives them), `copy, mixed` (the same rows with every chunk spread
//! over all tables: a COPY per table per chunk), and `delete only` (the
//! emptying alone, rolled back).
//!
//! Run: `cargo bench --bench rewrite`.

#[path = "support/cpu.rs"]
mod cpu;
// For its `cargo bench` guard and connections; the pipeline's Info Mart is not used here.
#[allow(dead_code)]
mod support;

use raa::aggregate::catalog::FAMILIES;
use raa::aggregate::family::Agg;
use raa::aggregate::{Level, OutputRow, Settings};
use raa::embedded::EmbeddedPostgres;
use raa::sink::postgres::ddl;
use raa::sink::{PgSink, RowChunks, Sink, SinkError};
use raa::Lsn;
use std::time::Instant;
use support::connect;

fn main() {
    support::main(500_000, bench);
}

/// Rows as the state gives them: `n` rows, `n / 35` per table.
struct Rows {
    n: usize,
    next: usize,
    /// Table after table (the state's key order), or round-robin.
    in_order: bool,
    /// CPU spent a row on making it, standing in for the state's read.
    read_cost: std::time::Duration,
}

/// Rows a chunk, as the pipeline reads them.
const CHUNK: usize = 20_000;

impl Rows {
    fn row(&self, i: usize) -> OutputRow {
        let tables = FAMILIES.len() * Level::ALL.len();
        let per_table = self.n.div_ceil(tables);
        let (t, k) = if self.in_order {
            (i / per_table, i % per_table)
        } else {
            (i % tables, i / tables)
        };
        let family = FAMILIES[t / Level::ALL.len()];
        let k = k as i64;
        OutputRow {
            family: (t / Level::ALL.len()) as u16,
            level: Level::ALL[t % Level::ALL.len()],
            // A day of 15-minute buckets, then groups within each.
            bucket: 1_774_569_600 + (k % 96) * 900,
            group: (0..family.group_by.len())
                .map(|g| (g != 3).then_some(k / 96 * 10 + g as i64))
                .collect(),
            values: Some(
                family
                    .measures
                    .iter()
                    .enumerate()
                    .map(|(m, measure)| match measure.agg {
                        Agg::Max(_) if k % 5 == 0 => None,
                        _ => Some(k * 37 + m as i64),
                    })
                    .collect(),
            ),
        }
    }
}

impl RowChunks for Rows {
    fn next_chunk(&mut self) -> Result<Option<Vec<OutputRow>>, SinkError> {
        let end = (self.next + CHUNK).min(self.n);
        // Off the runtime's worker, as the pipeline reads the state.
        let chunk: Vec<OutputRow> = tokio::task::block_in_place(|| {
            let started = Instant::now();
            let chunk = (self.next..end).map(|i| self.row(i)).collect();
            let cost = self.read_cost * (end - self.next) as u32;
            while started.elapsed() < cost {
                std::hint::spin_loop();
            }
            chunk
        });
        self.next = end;
        Ok((!chunk.is_empty()).then_some(chunk))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Upserts,
    Copy,
    CopyMixed,
    DeleteOnly,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Upserts => "upserts",
            Method::Copy => "copy",
            Method::CopyMixed => "copy, mixed",
            Method::DeleteOnly => "delete only",
        }
    }
}

async fn bench(n: usize) {
    let rounds: usize = std::env::var("RAA_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let pg = EmbeddedPostgres::start().expect("throwaway PostgreSQL");
    connect(&pg.url("postgres"))
        .await
        .batch_execute("CREATE DATABASE bench")
        .await
        .expect("create db");
    let url = pg.url("bench");
    let settings = Settings::default();
    let admin = connect(&url).await;
    admin.batch_execute(&ddl(&settings)).await.expect("raa ddl");
    let client = connect(&url).await;
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("backend pid")
        .get(0);
    let server = cpu::Server::of_backend(backend);
    let mut sink = PgSink::new(client, "raa", &settings).await.expect("sink");
    let read_cost = std::time::Duration::from_nanos(
        std::env::var("RAA_BENCH_READ_NS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let rows = |in_order| Rows {
        n,
        next: 0,
        in_order,
        read_cost,
    };
    sink.replace_all(Lsn(1), &mut rows(true))
        .await
        .expect("first fill");
    let tables: Vec<String> = FAMILIES
        .iter()
        .flat_map(|f| settings.levels.iter().map(|&l| f.table_name(l)))
        .collect();
    let deletes: String = tables.iter().map(|t| format!("DELETE FROM {t};")).collect();
    println!(
        "rewrite of {n} rows over {} tables, {rounds} rounds, rows made in {} ns each",
        tables.len(),
        read_cost.as_nanos()
    );
    println!(
        "{:<12} {:>5} {:>8} {:>10} {:>10}",
        "method", "round", "wall s", "raa cpu s", "pg cpu s"
    );
    let methods = [
        Method::Upserts,
        Method::Copy,
        Method::CopyMixed,
        Method::DeleteOnly,
    ];
    let mut totals = vec![(0.0, 0.0, 0.0); methods.len()];
    let mut lsn = 1;
    for round in 1..=rounds {
        for (m, &method) in methods.iter().enumerate() {
            for sql in [
                format!("VACUUM ANALYZE {}", tables.join(", ")),
                "CHECKPOINT".into(),
            ] {
                admin.batch_execute(&sql).await.expect("vacuum, checkpoint");
            }
            lsn += 1;
            let mark = cpu::Mark::now(&server);
            let started = Instant::now();
            match method {
                Method::Upserts => sink
                    .replace_all_by_upserts(Lsn(lsn), &mut rows(true))
                    .await
                    .expect("rewrite by upserts"),
                Method::Copy => sink
                    .replace_all(Lsn(lsn), &mut rows(true))
                    .await
                    .expect("rewrite by COPY"),
                Method::CopyMixed => sink
                    .replace_all(Lsn(lsn), &mut rows(false))
                    .await
                    .expect("rewrite by COPY, tables mixed"),
                Method::DeleteOnly => admin
                    .batch_execute(&format!("BEGIN; {deletes} ROLLBACK"))
                    .await
                    .expect("delete, rolled back"),
            }
            let wall = started.elapsed().as_secs_f64();
            let spent = mark.spent(&server);
            let held: i64 = admin
                .query_one(
                    &format!(
                        "SELECT {} ",
                        tables
                            .iter()
                            .map(|t| format!("(SELECT count(*) FROM {t})"))
                            .collect::<Vec<_>>()
                            .join(" + ")
                    ),
                    &[],
                )
                .await
                .expect("count")
                .get(0);
            assert_eq!(held as usize, n, "{} left the wrong rows", method.name());
            println!(
                "{:<12} {round:>5} {wall:>8.2} {:>10.2} {:>10.2}",
                method.name(),
                spent.own,
                spent.server
            );
            let t = &mut totals[m];
            *t = (t.0 + wall, t.1 + spent.own, t.2 + spent.server);
        }
    }
    let r = rounds as f64;
    let (uw, _, us) = totals[0];
    println!("means, and upserts / method:");
    for (m, &method) in methods.iter().enumerate() {
        let (w, o, s) = totals[m];
        println!(
            "{:<12} wall {:>6.2} s (x{:.2})  raa cpu {:>6.2} s  pg cpu {:>6.2} s (x{:.2})",
            method.name(),
            w / r,
            uw / w,
            o / r,
            s / r,
            us / s
        );
    }
}
