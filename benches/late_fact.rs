//! A late fact costs what a fresh one does, whatever the table size; a SQL
//! re-aggregation of its day does not.
//!
//! For each size N (`RAA_LATE_SIZES`, default `10000,100000,300000`):
//! - raa: a fresh state is filled with N `interaction_resource_fact` inserts
//!   spread over 60 days, through the library (`Engine` + `Store`, as the
//!   backfill and the pipeline drive them: apply, finish, atomic fsynced
//!   state commit; no sink, no replication). Then batches of
//!   `RAA_LATE_BATCH` (default 1000) new facts are timed, alternately for a
//!   day a month old and for the newest day; the median batch gives the cost
//!   per fact. The work per fact is every bucket it touches: agent and id
//!   families at seven levels.
//! - PostgreSQL: the same N facts and one late batch in a table (with an
//!   index on `start_ts`); timed, the re-aggregation of the late day: the
//!   reference SQL of the IRF families at subhr, hour and day, restricted as
//!   `raa verify --from D --to D+1d` restricts it, into scratch tables; with
//!   `jit = off` as `raa verify` runs it (`RAA_LATE_SQL_JIT=on` for the
//!   server's default).
//!
//! It prints the costs at each N and the growth from the smallest to the
//! largest N. Run: `cargo bench --bench late_fact` or `scripts/bench.sh`.

use raa::aggregate::catalog::FAMILIES;
use raa::aggregate::{Engine, Level, Settings, Work};
use raa::decode::{Change, Transaction, Tuple};
use raa::embedded::EmbeddedPostgres;
use raa::loadgen::Generator;
use raa::schema::{irf, Kind, Table, Value, IRF, TABLES};
use raa_state::{Lsn, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Instant;

/// 2026-11-30T00:00Z: the newest day; the facts span the 60 days before it.
const NEWEST: i64 = 1_796_083_200;
const SPAN_DAYS: i64 = 60;
/// The late day: a month before the newest.
const LATE: i64 = NEWEST - 30 * 86_400;
/// Timed batches of each kind per size.
const REPS: usize = 5;
/// Facts per fill transaction (the backfill's chunk).
const FILL_CHUNK: usize = 20_000;

type Row = [Option<i64>; 22];

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` (which also
    // enumerates with `--list`) does not: a run of minutes is no test.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("not run: this benchmark runs under `cargo bench` (see scripts/bench.sh)");
        return;
    }
    let sizes: Vec<usize> = std::env::var("RAA_LATE_SIZES")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "10000,100000,300000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("RAA_LATE_SIZES: numbers, comma-separated")
        })
        .collect();
    let batch: usize = std::env::var("RAA_LATE_BATCH")
        .ok()
        .map(|v| v.parse().expect("RAA_LATE_BATCH: a number of facts"))
        .unwrap_or(1_000);
    assert!(IRF.columns.iter().all(|c| matches!(c.kind, Kind::Int)));
    assert_eq!(IRF.columns.len(), 22);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(&sizes, batch));
}

/// Generated facts: ids are never reused.
struct Facts {
    rng: StdRng,
    next_id: i64,
}

impl Facts {
    fn new(seed: u64) -> Facts {
        Facts {
            rng: StdRng::seed_from_u64(seed),
            next_id: 1,
        }
    }

    /// One IRF row starting within `[day, day + 1d)`.
    fn row(&mut self, day: i64) -> Row {
        let r = &mut self.rng;
        let id = self.next_id;
        self.next_id += 1;
        let start = day + r.random_range(0..86_400);
        let resource = if r.random_bool(0.9) {
            r.random_range(1..=60)
        } else {
            r.random_range(1000..1008)
        };
        let talked = r.random_bool(0.8);
        let ring = r.random_range(0..60);
        let talk = if talked { r.random_range(10..900) } else { 0 };
        let hold = if talked && r.random_bool(0.3) {
            r.random_range(5..120)
        } else {
            0
        };
        let acw = if talked { r.random_range(0..180) } else { 0 };
        let mut row: Row = [Some(0); 22];
        row[irf::ID] = Some(id);
        row[irf::TENANT_KEY] = Some(r.random_range(1..=4));
        row[irf::INTERACTION_ID] = Some(id / 2);
        row[irf::MEDIA_TYPE_KEY] = Some(r.random_range(1..=3));
        row[irf::INTERACTION_TYPE_KEY] = Some(r.random_range(1..=3));
        row[irf::RESOURCE_KEY] = Some(resource);
        row[irf::TECHNICAL_DESCRIPTOR_KEY] = Some(r.random_range(1..=36));
        row[irf::INTERACTION_DESCRIPTOR_KEY] = Some(r.random_range(1..=5));
        row[irf::START_DATE_TIME_KEY] = Some(start - start.rem_euclid(900));
        row[irf::START_TS] = Some(start);
        row[irf::END_TS] = Some(start + ring + talk + hold + acw);
        row[irf::IRF_ANCHOR] = Some(i64::from(r.random_bool(0.6)));
        row[irf::RING_COUNT] = Some(1);
        row[irf::RING_DURATION] = Some(ring);
        row[irf::TALK_COUNT] = Some(i64::from(talked));
        row[irf::TALK_DURATION] = Some(talk);
        row[irf::HOLD_COUNT] = Some(i64::from(hold > 0));
        row[irf::HOLD_DURATION] = Some(hold);
        row[irf::AFTER_CALL_WORK_COUNT] = Some(i64::from(acw > 0));
        row[irf::AFTER_CALL_WORK_DURATION] = Some(acw);
        row[irf::CONS_INIT_COUNT] = Some(r.random_range(0..2));
        row[irf::CONS_RCV_COUNT] = Some(r.random_range(0..2));
        row
    }

    /// `n` facts spread evenly over the span.
    fn fill(&mut self, n: usize) -> Vec<Row> {
        (0..n)
            .map(|i| {
                let day = NEWEST - (SPAN_DAYS - 1 - (i as i64 % SPAN_DAYS)) * 86_400;
                self.row(day)
            })
            .collect()
    }

    fn day(&mut self, day: i64, n: usize) -> Vec<Row> {
        (0..n).map(|_| self.row(day)).collect()
    }
}

fn insert(table: Table, values: Vec<Option<Value>>) -> Change {
    Change::Insert {
        table,
        new: Tuple(values),
    }
}

fn irf_change(row: &Row) -> Change {
    let values = row
        .iter()
        .map(|v| Some(v.map_or(Value::Null, Value::Int)))
        .collect();
    insert(Table::Irf, values)
}

/// raa's state, and the LSN its next commit is anchored at.
struct Raa {
    engine: Engine,
    store: Arc<Store>,
    lsn: u64,
    _dir: tempfile::TempDir,
}

impl Raa {
    fn new(dims: &[Change]) -> Raa {
        let dir = tempfile::tempdir().expect("state dir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let engine = Engine::open(store.clone(), Settings::default()).expect("engine");
        let mut raa = Raa {
            engine,
            store,
            lsn: 0,
            _dir: dir,
        };
        raa.apply(dims.to_vec());
        raa
    }

    /// One transaction: apply, finish, commit the state (what a batch costs
    /// raa before the sink); seconds.
    fn apply(&mut self, changes: Vec<Change>) -> f64 {
        let started = Instant::now();
        self.lsn += 100;
        let txn = Transaction {
            xid: 1,
            commit_lsn: Lsn(self.lsn),
            end_lsn: Lsn(self.lsn + 8),
            commit_ts_micros: 0,
            changes,
        };
        let mut work = Work::default();
        self.engine.apply(&mut work, txn).expect("apply");
        let out = self.engine.finish(work).expect("finish");
        self.store
            .commit(out.state, Lsn(self.lsn + 8))
            .expect("state commit");
        started.elapsed().as_secs_f64()
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c
}

/// The dimension rows as inserts, read from a database `Generator` filled.
async fn dimension_changes(c: &tokio_postgres::Client) -> Vec<Change> {
    let mut out = Vec::new();
    for spec in TABLES.iter().filter(|s| {
        matches!(
            s.table,
            Table::Tenant | Table::Resource | Table::TechnicalDescriptor | Table::ResourceState
        )
    }) {
        let cols: Vec<String> = spec
            .columns
            .iter()
            .map(|c| format!("{}::text", c.name))
            .collect();
        let sql = format!("SELECT {} FROM {}", cols.join(", "), spec.name);
        for row in c.query(&sql, &[]).await.expect("dimension rows") {
            let values = spec
                .columns
                .iter()
                .enumerate()
                .map(|(i, col)| {
                    let text: Option<String> = row.get(i);
                    Some(match (text, col.kind) {
                        (None, _) => Value::Null,
                        (Some(t), Kind::Int) => Value::Int(t.parse().expect("integer")),
                        (Some(t), Kind::Text) => Value::Text(t),
                    })
                })
                .collect();
            out.push(insert(spec.table, values));
        }
    }
    out
}

async fn pg_insert(c: &tokio_postgres::Client, rows: &[Row]) {
    let names: Vec<&str> = IRF.columns.iter().map(|c| c.name).collect();
    let unnest: Vec<String> = (1..=22).map(|i| format!("${i}::int8[]")).collect();
    let sql = format!(
        "INSERT INTO {} ({}) SELECT * FROM unnest({})",
        IRF.name,
        names.join(", "),
        unnest.join(", ")
    );
    for chunk in rows.chunks(50_000) {
        let cols: Vec<Vec<Option<i64>>> = (0..22)
            .map(|i| chunk.iter().map(|r| r[i]).collect())
            .collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = cols
            .iter()
            .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        c.execute(&sql, &params).await.expect("insert facts");
    }
}

/// The IRF families at the levels a day holds.
fn day_tables() -> Vec<(usize, Level)> {
    FAMILIES
        .iter()
        .enumerate()
        .filter(|(_, f)| f.source == Table::Irf)
        .flat_map(|(i, _)| [Level::Subhr, Level::Hour, Level::Day].map(|l| (i, l)))
        .collect()
}

/// Re-aggregates the late day into the scratch tables; seconds.
async fn sql_day(c: &tokio_postgres::Client, settings: &Settings) -> f64 {
    for (i, level) in day_tables() {
        let t = FAMILIES[i].table_name(level);
        c.batch_execute(&format!("TRUNCATE scratch_{t}"))
            .await
            .expect("truncate scratch");
    }
    let started = Instant::now();
    for (i, level) in day_tables() {
        let family = FAMILIES[i];
        let sql = family.reference_sql(level, &settings.params, settings.subhr_seconds, Some(LATE));
        c.batch_execute(&format!(
            "INSERT INTO scratch_{} SELECT * FROM ({sql}) r \
             WHERE date_time_key >= {LATE} AND date_time_key < {}",
            family.table_name(level),
            LATE + 86_400
        ))
        .await
        .expect("re-aggregate the day");
    }
    started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Point {
    n: usize,
    fill_secs: f64,
    late_us: f64,
    fresh_us: f64,
    sql_ms: f64,
    /// Of `sql_ms`, the reads of `pg_timezone_names` (one per query).
    zones_ms: f64,
}

async fn measure(pg: &EmbeddedPostgres, n: usize, batch: usize, idx: usize) -> Point {
    let settings = Settings::default();
    let db = format!("late_{idx}");
    connect(&pg.url("postgres"))
        .await
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .expect("create db");
    let c = connect(&pg.socket_url(&db)).await;
    // As `raa verify` runs this SQL: PostgreSQL's JIT compile is a fixed
    // cost per query that would hide how the re-aggregation grows.
    // `RAA_LATE_SQL_JIT=on` gives the server's default.
    let jit = match std::env::var("RAA_LATE_SQL_JIT").as_deref() {
        Err(_) | Ok("off") => "off",
        Ok("on") => "on",
        Ok(other) => panic!("RAA_LATE_SQL_JIT: on or off, not {other:?}"),
    };
    c.batch_execute(&format!("SET jit = {jit}"))
        .await
        .expect("set jit");
    c.batch_execute(raa::INFOMART_SQL).await.expect("schema");
    c.batch_execute(&raa::sink::postgres::ddl(&settings))
        .await
        .expect("raa ddl");
    for (i, level) in day_tables() {
        let t = FAMILIES[i].table_name(level);
        c.batch_execute(&format!(
            "CREATE TABLE scratch_{t} (LIKE {t} INCLUDING ALL)"
        ))
        .await
        .expect("scratch");
    }
    Generator::new(1, NEWEST)
        .dimensions(&c)
        .await
        .expect("dimensions");
    let dims = dimension_changes(&c).await;

    let mut facts = Facts::new(n as u64);
    let fill = facts.fill(n);
    let mut raa = Raa::new(&dims);
    let started = Instant::now();
    for chunk in fill.chunks(FILL_CHUNK) {
        raa.apply(chunk.iter().map(irf_change).collect());
    }
    let fill_secs = started.elapsed().as_secs_f64();
    let (mut late, mut fresh) = (Vec::new(), Vec::new());
    let mut late_rows = Vec::new();
    for _ in 0..REPS {
        let rows = facts.day(LATE, batch);
        late.push(raa.apply(rows.iter().map(irf_change).collect()));
        late_rows.extend(rows);
        let rows = facts.day(NEWEST, batch);
        fresh.push(raa.apply(rows.iter().map(irf_change).collect()));
    }
    drop(raa);

    pg_insert(&c, &fill).await;
    pg_insert(&c, &late_rows[..batch]).await;
    for sql in [
        format!("CREATE INDEX ON {} (start_ts)", IRF.name),
        "VACUUM ANALYZE".to_owned(),
        "CHECKPOINT".to_owned(),
    ] {
        c.batch_execute(&sql).await.expect("index, analyze");
    }
    let mut sql = Vec::new();
    let mut zones = Vec::new();
    for _ in 0..3 {
        sql.push(sql_day(&c, &settings).await);
        // Each reference query reads pg_timezone_names once (a fixed cost).
        let t = Instant::now();
        c.batch_execute("SELECT count(*) FROM pg_timezone_names")
            .await
            .expect("zones");
        zones.push(t.elapsed().as_secs_f64() * day_tables().len() as f64);
    }
    Point {
        n,
        fill_secs,
        late_us: median(late) / batch as f64 * 1e6,
        fresh_us: median(fresh) / batch as f64 * 1e6,
        sql_ms: median(sql) * 1e3,
        zones_ms: median(zones) * 1e3,
    }
}

async fn bench(sizes: &[usize], batch: usize) {
    let pg = EmbeddedPostgres::start().expect("throwaway PostgreSQL");
    let mut points = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let p = measure(&pg, n, batch, i).await;
        eprintln!(
            "N={}: raa filled in {:.1} s; late {:.1} us/fact, fresh {:.1} us/fact; SQL day {:.1} ms",
            p.n, p.fill_secs, p.late_us, p.fresh_us, p.sql_ms
        );
        points.push(p);
    }
    println!(
        "late facts (a day 30 days old) vs fresh ones, {batch} facts per batch, median of {REPS} batches"
    );
    println!("raa: library Engine + sled Store (apply, finish, state commit; no sink), agent and id families at 7 levels");
    println!("SQL: reference SQL of agent and id at subhr, hour and day for the late day (raa verify's slice), into scratch tables, median of 3");
    println!(
        "{:>10} {:>16} {:>16} {:>12} {:>16} {:>18}",
        "facts",
        "raa late us/fact",
        "raa fresh us/f",
        "SQL day ms",
        "of which zones",
        "SQL us/late fact"
    );
    for p in &points {
        println!(
            "{:>10} {:>16.1} {:>16.1} {:>12.1} {:>16.1} {:>18.1}",
            p.n,
            p.late_us,
            p.fresh_us,
            p.sql_ms,
            p.zones_ms,
            p.sql_ms * 1e3 / batch as f64
        );
    }
    if let (Some(a), Some(b)) = (points.first(), points.last()) {
        if a.n != b.n {
            println!(
                "growth from {} to {} facts ({:.0}x the table): raa late {:.2}x, raa fresh {:.2}x, SQL day {:.2}x",
                a.n,
                b.n,
                b.n as f64 / a.n as f64,
                b.late_us / a.late_us,
                b.fresh_us / a.fresh_us,
                b.sql_ms / a.sql_ms
            );
            println!(
                "SQL day without its pg_timezone_names reads: {:.2}x",
                (b.sql_ms - b.zones_ms) / (a.sql_ms - a.zones_ms).max(1e-3)
            );
            println!(
                "late / fresh per-fact cost at {} facts: {:.2}",
                b.n,
                b.late_us / b.fresh_us
            );
        }
    }
}
