//! A batch's upserts two ways, in the same run on the same tables: the
//! sink's (`INSERT … SELECT FROM unnest(…) ON CONFLICT … DO UPDATE`,
//! pipelined, [`Sink::write`]) against binary COPY into a `TEMP` table
//! (`ON COMMIT DELETE ROWS`, one per aggregate table) followed by
//! `INSERT … SELECT … FROM` it `ON CONFLICT … DO UPDATE`, with the same
//! progress update, one transaction a batch.
//!
//! The 35 tables of the default settings first hold `RAA_BENCH_ROWS` rows
//! (default 500,000); then, for each batch size of `RAA_BENCH_BATCHES`
//! (default `5000,20000,50000`), `RAA_BENCH_ROUNDS` (default 4) batches a
//! method, the methods in turn. A batch's rows are spread over every table,
//! 70 % updates of rows the tables hold and 30 % new rows. Per method and
//! size: wall time and the server's CPU, summed over its batches.
//!
//! Run: `cargo bench --bench upsert_copy`.

#[path = "support/cpu.rs"]
mod cpu;
// For its `cargo bench` guard and connections; the pipeline's Info Mart is not used here.
#[allow(dead_code)]
mod support;

use futures_util::future::join_all;
use raa::aggregate::catalog::FAMILIES;
use raa::aggregate::family::Agg;
use raa::aggregate::{Level, OutputRow, Settings};
use raa::embedded::EmbeddedPostgres;
use raa::sink::postgres::ddl;
use raa::sink::{PgSink, Sink};
use raa::Lsn;
use std::collections::HashMap;
use std::time::Instant;
use support::connect;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};

fn main() {
    support::main(500_000, bench);
}

const TABLES: usize = FAMILIES.len() * Level::ALL.len();

/// Row `k` of table `t`: its key, and values that change with `salt`.
fn row(t: usize, k: usize, salt: i64) -> OutputRow {
    let family = FAMILIES[t / Level::ALL.len()];
    let k = k as i64;
    OutputRow {
        family: (t / Level::ALL.len()) as u16,
        level: Level::ALL[t % Level::ALL.len()],
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
                    Agg::Max(_) if (k + salt) % 5 == 0 => None,
                    _ => Some(k * 37 + m as i64 + salt),
                })
                .collect(),
        ),
    }
}

/// Batch `b` of `n` rows over every table: 7 in 10 update rows the tables
/// hold (of `held` a table), the others are new (keys past any used).
fn batch(b: usize, n: usize, held: usize, fresh: &mut usize) -> Vec<OutputRow> {
    let offset = b * 7_919 % held;
    let per_table = n.div_ceil(TABLES);
    let rows = (0..n)
        .map(|i| {
            let (t, j) = (i % TABLES, i / TABLES);
            let k = if j % 10 < 7 {
                (offset + j) % held
            } else {
                *fresh + j
            };
            row(t, k, b as i64)
        })
        .collect();
    *fresh += per_table;
    rows
}

/// The other way: per table, a temp table, its COPY and its upsert.
struct TempCopy {
    client: Client,
    tables: HashMap<(u16, Level), (Statement, Statement, Vec<Type>)>,
    progress: Statement,
}

impl TempCopy {
    async fn new(client: Client) -> TempCopy {
        let mut tables = HashMap::new();
        for (f, family) in FAMILIES.iter().enumerate() {
            for level in Level::ALL {
                let table = family.table_name(level);
                let tmp = format!("tmp_{table}");
                let key: Vec<&str> = family.key_columns().collect();
                let measures: Vec<&str> = family.measures.iter().map(|m| m.name).collect();
                let cols = format!("{}, {}", key.join(", "), measures.join(", "));
                client
                    .batch_execute(&format!(
                        "CREATE TEMP TABLE {tmp} (LIKE {table}) ON COMMIT DELETE ROWS"
                    ))
                    .await
                    .expect("temp table");
                let copy = client
                    .prepare(&format!("COPY {tmp} ({cols}) FROM STDIN (FORMAT binary)"))
                    .await
                    .expect("prepare copy");
                let set: Vec<String> = measures
                    .iter()
                    .map(|m| format!("{m} = EXCLUDED.{m}"))
                    .collect();
                let upsert = client
                    .prepare(&format!(
                        "INSERT INTO {table} ({cols}) SELECT {cols} FROM {tmp} \
                         ON CONFLICT ({}) DO UPDATE SET {}",
                        key.join(", "),
                        set.join(", ")
                    ))
                    .await
                    .expect("prepare upsert");
                let mut types = vec![Type::INT8];
                types.extend(family.group_by.iter().map(|_| Type::INT4));
                types.extend(family.measures.iter().map(|_| Type::INT8));
                tables.insert((f as u16, level), (copy, upsert, types));
            }
        }
        let progress = client
            .prepare(
                "INSERT INTO raa_progress (slot_name, lsn, updated_at) VALUES ($1, $2::text::pg_lsn, now()) \
                 ON CONFLICT (slot_name) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = now() \
                 WHERE raa_progress.lsn <= EXCLUDED.lsn",
            )
            .await
            .expect("prepare progress");
        TempCopy {
            client,
            tables,
            progress,
        }
    }

    async fn write(&mut self, lsn: Lsn, rows: &[OutputRow]) {
        let mut by_table: HashMap<(u16, Level), Vec<&OutputRow>> = HashMap::new();
        for r in rows {
            by_table.entry((r.family, r.level)).or_default().push(r);
        }
        let mut by_table: Vec<_> = by_table.into_iter().collect();
        by_table.sort_by_key(|(t, _)| *t);
        let tx = self.client.transaction().await.expect("begin");
        for (t, rows) in &by_table {
            let (copy, _, types) = &self.tables[t];
            let sink = tx.copy_in(copy).await.expect("copy");
            let writer = BinaryCopyInWriter::new(sink, types);
            futures_util::pin_mut!(writer);
            for r in rows {
                let group: Vec<Option<i32>> = r
                    .group
                    .iter()
                    .map(|g| g.map(|v| i32::try_from(v).expect("an integer key")))
                    .collect();
                let values = r.values.as_ref().expect("upserts only");
                let mut cells: Vec<&(dyn ToSql + Sync)> = vec![&r.bucket];
                cells.extend(group.iter().map(|g| g as &(dyn ToSql + Sync)));
                cells.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
                writer.as_mut().write(&cells).await.expect("copy row");
            }
            writer.finish().await.expect("finish copy");
        }
        let lsn_text = lsn.to_string();
        let slot = "raa_copy".to_owned();
        let upserts = by_table.iter().map(|(t, _)| {
            let (_, upsert, _) = &self.tables[t];
            tx.execute(upsert, &[])
        });
        let (upserted, progress) = futures_util::future::join(
            join_all(upserts),
            tx.execute(&self.progress, &[&slot, &lsn_text]),
        )
        .await;
        for u in upserted {
            u.expect("upsert from the temp table");
        }
        assert_eq!(progress.expect("progress"), 1);
        tx.commit().await.expect("commit");
    }
}

async fn bench(held_rows: usize) {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let rounds: usize = env("RAA_BENCH_ROUNDS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let sizes: Vec<usize> = env("RAA_BENCH_BATCHES")
        .unwrap_or_else(|| "5000,20000,50000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("RAA_BENCH_BATCHES: sizes, comma-separated")
        })
        .collect();
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
    let mut temp = TempCopy::new(connect(&url).await).await;

    let held = held_rows.div_ceil(TABLES);
    let initial: Vec<OutputRow> = (0..TABLES)
        .flat_map(|t| (0..held).map(move |k| row(t, k, 0)))
        .collect();
    for (i, chunk) in initial.chunks(20_000).enumerate() {
        sink.write(Lsn(1 + i as u64), chunk).await.expect("fill");
    }
    let tables: Vec<String> = FAMILIES
        .iter()
        .flat_map(|f| Level::ALL.map(|l| f.table_name(l)))
        .collect();
    admin
        .batch_execute(&format!("VACUUM ANALYZE {}", tables.join(", ")))
        .await
        .expect("vacuum");
    println!(
        "{} rows held over {TABLES} tables; {rounds} batches a method and size",
        held * TABLES
    );
    println!(
        "{:>7} {:<12} {:>8} {:>8}",
        "batch", "method", "wall s", "pg cpu s"
    );
    let (mut lsn, mut fresh, mut b) = (1_000, held, 0);
    for &n in &sizes {
        let mut spent = [(0.0, 0.0); 2];
        for _ in 0..rounds {
            for (m, spent) in spent.iter_mut().enumerate() {
                b += 1;
                lsn += 1;
                let rows = batch(b, n, held, &mut fresh);
                let mark = cpu::Mark::now(&server);
                let started = Instant::now();
                if m == 0 {
                    sink.write(Lsn(lsn), &rows).await.expect("unnest upserts");
                } else {
                    temp.write(Lsn(lsn), &rows).await;
                }
                let wall = started.elapsed().as_secs_f64();
                let cpu = mark.spent(&server).server;
                *spent = (spent.0 + wall, spent.1 + cpu);
            }
        }
        for (m, name) in ["unnest", "temp + COPY"].iter().enumerate() {
            println!(
                "{n:>7} {name:<12} {:>8.3} {:>8.3}",
                spent[m].0 / rounds as f64,
                spent[m].1 / rounds as f64
            );
        }
        println!(
            "{n:>7} unnest / temp + COPY: wall x{:.2}, pg cpu x{:.2}",
            spent[0].0 / spent[1].0,
            spent[0].1 / spent[1].1
        );
    }
    let held_now: i64 = admin
        .query_one(
            &format!(
                "SELECT {}",
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
    println!("rows held at the end: {held_now}");
}
