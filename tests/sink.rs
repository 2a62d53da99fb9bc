//! The PostgreSQL sink against a real server: a batch's statements are sent
//! together, yet a batch is still all or nothing, a failure names the
//! statement that failed (not the ones the aborted transaction refused after
//! it), and a batch behind the recorded progress is refused.

mod support;

use raa::aggregate::catalog::FAMILIES;
use raa::aggregate::{Level, OutputRow, Settings};
use raa::sink::{PgSink, RowChunks, Sink, SinkError};
use raa::Lsn;
use support::TestDb;

const SLOT: &str = "raa";

/// One row in every aggregate table (35: more than the 30 futures up to
/// which `join_all` polls them in a plain loop).
fn rows_everywhere(bucket: i64) -> Vec<OutputRow> {
    let mut rows = Vec::new();
    for (f, family) in FAMILIES.iter().enumerate() {
        for level in Level::ALL {
            rows.push(OutputRow {
                family: f as u16,
                level,
                bucket,
                group: vec![Some(1); family.group_by.len()],
                values: Some(vec![Some(7); family.measures.len()]),
            });
        }
    }
    rows
}

/// Makes `table` refuse rows of bucket `bucket` (a statement that fails
/// mid-batch); `None` lifts it again.
async fn refuse_bucket(admin: &tokio_postgres::Client, table: &str, bucket: Option<i64>) {
    let sql = match bucket {
        Some(b) => {
            format!("ALTER TABLE {table} ADD CONSTRAINT refused CHECK (date_time_key <> {b})")
        }
        None => format!("ALTER TABLE {table} DROP CONSTRAINT refused"),
    };
    admin.batch_execute(&sql).await.unwrap();
}

/// Rows in every aggregate table (the sink's tables are those of the default settings).
async fn total_rows(db: &TestDb) -> i64 {
    db.aggregate_rows(&Settings::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_atomic_name_the_failed_statement_and_never_go_back() {
    let (db, mut sink) = with_sink().await;

    sink.write(Lsn(200), &rows_everywhere(100))
        .await
        .expect("first batch");
    assert_eq!(total_rows(&db).await, 35);
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(200)));

    // The second batch: a new bucket everywhere, and one row of the first
    // batch deleted.
    let mut second = rows_everywhere(200);
    let gone = OutputRow {
        values: None,
        ..rows_everywhere(100).swap_remove(3)
    };
    let gone_table = FAMILIES[usize::from(gone.family)].table_name(gone.level);
    second.push(gone);

    // A constraint the new bucket breaks, in one table at a time: the batch
    // fails whole, and the error names that table's upsert.
    let admin = db.client().await;
    for (f, level) in [(0, Level::Subhr), (2, Level::Day), (4, Level::Year)] {
        let table = FAMILIES[f].table_name(level);
        refuse_bucket(&admin, &table, Some(200)).await;
        match sink.write(Lsn(300), &second).await {
            Err(SinkError::Sql { what, source }) => {
                assert_eq!(what, format!("upsert into {table}"), "{source}");
            }
            other => panic!("a failed batch must report its statement, got {other:?}"),
        }
        assert_eq!(total_rows(&db).await, 35, "nothing of a failed batch stays");
        assert_eq!(sink.progress().await.unwrap(), Some(Lsn(200)));
        refuse_bucket(&admin, &table, None).await;
    }

    sink.write(Lsn(300), &second).await.expect("second batch");
    assert_eq!(total_rows(&db).await, 69);
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM {gone_table} WHERE date_time_key = 100"
        ))
        .await,
        0
    );
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(300)));

    // A batch behind the recorded progress changes nothing.
    match sink.write(Lsn(250), &rows_everywhere(300)).await {
        Err(SinkError::ProgressRegressed { recorded, lsn, .. }) => {
            assert_eq!((recorded, lsn), (Lsn(300), Lsn(250)));
        }
        other => panic!("a batch behind the progress must be refused, got {other:?}"),
    }
    assert_eq!(total_rows(&db).await, 69);
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(300)));

    // A sink prepared for the day level alone refuses the batch with a row
    // of another level, whole, instead of leaving that row out.
    let day_only = Settings {
        levels: vec![Level::Day],
        ..Settings::default()
    };
    let mut narrow = PgSink::new(db.client().await, SLOT, &day_only)
        .await
        .expect("prepare the day-only sink");
    let mut rows = rows_everywhere(400);
    rows.retain(|r| r.level == Level::Day || r.family == 0 && r.level == Level::Year);
    match narrow.write(Lsn(400), &rows).await {
        Err(SinkError::Unprepared { table }) => {
            assert_eq!(table, FAMILIES[0].table_name(Level::Year))
        }
        other => panic!("a row outside the sink's tables must be refused, got {other:?}"),
    }
    assert_eq!(total_rows(&db).await, 69);
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(300)));
}

/// A database with raa's tables, and a sink whose statements hold at most 2
/// rows and whose waves hold at most 5.
async fn small_waves() -> (TestDb, PgSink) {
    let (db, sink) = with_sink().await;
    (db, sink.with_wave_limits(2, 5))
}

/// A database with raa's tables for the default settings, and a sink.
async fn with_sink() -> (TestDb, PgSink) {
    let db = TestDb::new().await;
    db.init(&Settings::default()).await;
    let sink = PgSink::new(db.client().await, SLOT, &Settings::default())
        .await
        .expect("prepare the sink");
    (db, sink)
}

/// A large batch is sent in several waves of statements; it is still one
/// transaction: a failure in any wave leaves nothing, and a success writes
/// every row of every wave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_in_many_waves_is_still_all_or_nothing() {
    let (db, mut sink) = small_waves().await;

    // One row in every table, and 9 more groups in the first table.
    let first_table = FAMILIES[0].table_name(Level::Subhr);
    let mut rows = rows_everywhere(100);
    let extra: Vec<OutputRow> = (2..11)
        .map(|g| OutputRow {
            group: vec![Some(g); FAMILIES[0].group_by.len()],
            ..rows[0].clone()
        })
        .collect();
    rows.extend(extra.iter().cloned());

    let admin = db.client().await;
    let last_table = FAMILIES[FAMILIES.len() - 1].table_name(Level::Year);
    for table in [&first_table, &last_table] {
        refuse_bucket(&admin, table, Some(100)).await;
        match sink.write(Lsn(200), &rows).await {
            Err(SinkError::Sql { what, source }) => {
                assert_eq!(what, format!("upsert into {table}"), "{source}");
            }
            other => panic!("a failed batch must report its statement, got {other:?}"),
        }
        assert_eq!(total_rows(&db).await, 0, "nothing of a failed batch stays");
        assert_eq!(sink.progress().await.unwrap(), None);
        refuse_bucket(&admin, table, None).await;
    }

    sink.write(Lsn(200), &rows).await.expect("first batch");
    assert_eq!(total_rows(&db).await, 35 + 9);
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(200)));

    // Deletes of the 9 extra rows, in statements of 2, beside upserts.
    let mut second: Vec<OutputRow> = extra
        .into_iter()
        .map(|r| OutputRow { values: None, ..r })
        .collect();
    second.extend(rows_everywhere(200));
    sink.write(Lsn(300), &second).await.expect("second batch");
    assert_eq!(total_rows(&db).await, 35 + 35);
    assert_eq!(
        db.count(&format!("SELECT count(*) FROM {first_table}"))
            .await,
        2
    );
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(300)));
}

/// A batch's rows a chunk at a time, as a spilled batch's are read from
/// disk; `fail_at`: the read that fails.
struct Chunks {
    chunks: std::collections::VecDeque<Vec<OutputRow>>,
    fail_at: Option<usize>,
    reads: usize,
}

impl Chunks {
    fn of(rows: &[OutputRow], size: usize, fail_at: Option<usize>) -> Chunks {
        Chunks {
            chunks: rows.chunks(size).map(<[OutputRow]>::to_vec).collect(),
            fail_at,
            reads: 0,
        }
    }
}

impl RowChunks for Chunks {
    fn next_chunk(&mut self) -> Result<Option<Vec<OutputRow>>, SinkError> {
        self.reads += 1;
        if self.fail_at == Some(self.reads) {
            return Err(SinkError::Rows("the disk went away".into()));
        }
        Ok(self.chunks.pop_front())
    }
}

/// A batch too large to hold is written chunk by chunk, still in one
/// transaction: a failed chunk read or a statement failing in the last chunk
/// leaves nothing and does not move the progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_written_in_chunks_is_still_all_or_nothing() {
    let (db, mut sink) = small_waves().await;
    let rows = rows_everywhere(100);

    match sink
        .write_chunks(Lsn(200), &mut Chunks::of(&rows, 12, Some(3)))
        .await
    {
        Err(SinkError::Rows(e)) => assert_eq!(e.to_string(), "the disk went away"),
        other => panic!("a failed read must fail the batch, got {other:?}"),
    }
    assert_eq!(total_rows(&db).await, 0, "nothing of a failed batch stays");
    assert_eq!(sink.progress().await.unwrap(), None);

    let last_table = FAMILIES[FAMILIES.len() - 1].table_name(Level::Year);
    let admin = db.client().await;
    refuse_bucket(&admin, &last_table, Some(100)).await;
    match sink
        .write_chunks(Lsn(200), &mut Chunks::of(&rows, 12, None))
        .await
    {
        Err(SinkError::Sql { what, .. }) => assert_eq!(what, format!("upsert into {last_table}")),
        other => panic!("a failed statement must fail the batch, got {other:?}"),
    }
    assert_eq!(total_rows(&db).await, 0, "nothing of a failed batch stays");
    refuse_bucket(&admin, &last_table, None).await;

    let mut chunks = Chunks::of(&rows, 12, None);
    sink.write_chunks(Lsn(200), &mut chunks)
        .await
        .expect("chunked batch");
    assert_eq!(chunks.reads, 4, "three chunks and the end");
    assert_eq!(total_rows(&db).await, 35);
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(200)));

    // Deletes in chunks; then a batch with no rows moves only the progress.
    let gone: Vec<OutputRow> = rows
        .into_iter()
        .map(|r| OutputRow { values: None, ..r })
        .collect();
    sink.write_chunks(Lsn(300), &mut Chunks::of(&gone, 10, None))
        .await
        .expect("chunked deletes");
    assert_eq!(total_rows(&db).await, 0);
    sink.write_chunks(Lsn(400), &mut Chunks::of(&[], 10, None))
        .await
        .expect("empty batch");
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(400)));
}

/// The rewrite after a backfill reads the whole state a chunk at a time, in
/// one transaction with the emptying of the tables: a failed read keeps the
/// tables and the progress as they were; a success leaves exactly its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_tables_in_chunks_is_all_or_nothing() {
    let (db, mut sink) = small_waves().await;
    sink.write(Lsn(200), &rows_everywhere(100))
        .await
        .expect("first batch");

    let state = rows_everywhere(300);
    match sink
        .replace_all(Lsn(400), &mut Chunks::of(&state, 12, Some(3)))
        .await
    {
        Err(SinkError::Rows(e)) => assert_eq!(e.to_string(), "the disk went away"),
        other => panic!("a failed read must fail the rewrite, got {other:?}"),
    }
    let first_table = FAMILIES[0].table_name(Level::Subhr);
    let in_bucket =
        |b: i64| format!("SELECT count(*) FROM {first_table} WHERE date_time_key = {b}");
    assert_eq!(total_rows(&db).await, 35, "the tables are as they were");
    assert_eq!(db.count(&in_bucket(100)).await, 1);
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(200)));

    let mut chunks = Chunks::of(&state, 12, None);
    sink.replace_all(Lsn(400), &mut chunks)
        .await
        .expect("rewrite");
    assert_eq!(chunks.reads, 4, "three chunks and the end");
    assert_eq!(total_rows(&db).await, 35, "only the state's rows");
    assert_eq!(db.count(&in_bucket(100)).await, 0, "the old rows are gone");
    assert_eq!(db.count(&in_bucket(300)).await, 1);
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(400)));
}

/// A submitted write runs in a task of its own and returns before it
/// commits; confirming reports its outcome, a failure included, and the
/// connection comes back for the next write either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_write_is_confirmed_with_its_outcome_and_hands_the_connection_back() {
    let (db, mut sink) = with_sink().await;
    assert_eq!(sink.confirm().await.unwrap(), None, "nothing submitted");

    sink.submit(Lsn(200), rows_everywhere(100)).await.unwrap();
    assert_eq!(sink.confirm().await.unwrap(), Some(Lsn(200)));
    assert_eq!(total_rows(&db).await, 35);
    assert_eq!(sink.confirm().await.unwrap(), None, "confirmed once");

    // Refused behind the progress: the error comes with the confirmation.
    sink.submit(Lsn(150), rows_everywhere(200)).await.unwrap();
    match sink.confirm().await {
        Err(SinkError::ProgressRegressed { recorded, lsn, .. }) => {
            assert_eq!((recorded, lsn), (Lsn(200), Lsn(150)));
        }
        other => panic!("a write behind the progress must be refused, got {other:?}"),
    }
    assert_eq!(total_rows(&db).await, 35);

    // Any other call waits for a submitted write first.
    sink.submit(Lsn(300), rows_everywhere(300)).await.unwrap();
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(300)));
    assert_eq!(total_rows(&db).await, 70);
    sink.write(Lsn(400), &rows_everywhere(400)).await.unwrap();
    assert_eq!(total_rows(&db).await, 105);
}

/// Every aggregate table, in the order the state gives its rows.
fn all_tables() -> Vec<(u16, Level)> {
    (0..FAMILIES.len() as u16)
        .flat_map(|f| Level::ALL.into_iter().map(move |l| (f, l)))
        .collect()
}

/// `n` rows with distinct keys over every table, one table after the other
/// in turn (every chunk holds rows of many tables): NULL group columns in
/// changing patterns, group values at the bounds of `integer`, NULL maxima
/// and `bigint` measures. `from` offsets the buckets.
fn state_rows(n: usize, from: i64) -> Vec<OutputRow> {
    let tables = all_tables();
    (0..n)
        .map(|i| {
            let (f, level) = tables[i % tables.len()];
            let family = FAMILIES[usize::from(f)];
            let k = (i / tables.len()) as i64;
            let group = (0..family.group_by.len())
                .map(|g| match (k >> g) % 4 {
                    0 => None,
                    1 => Some(if g % 2 == 0 { i32::MAX } else { i32::MIN }.into()),
                    _ => Some(k * 10 + g as i64),
                })
                .collect();
            let values = family
                .measures
                .iter()
                .enumerate()
                .map(|(m, measure)| {
                    let nullable = matches!(measure.agg, raa::aggregate::family::Agg::Max(_));
                    match (k + m as i64) % 3 {
                        0 if nullable => None,
                        1 => Some((1 << 40) + k),
                        _ => Some(k * 100 + m as i64),
                    }
                })
                .collect();
            OutputRow {
                family: f,
                level,
                bucket: from + k,
                group,
                values: Some(values),
            }
        })
        .collect()
}

/// The aggregate tables' rows, by table and key.
type Tables = std::collections::BTreeMap<raa::sink::memory::RowId, Vec<Option<i64>>>;

/// `got` is `want`; else the first row that differs, not thousands.
fn assert_same(got: &Tables, want: &Tables, what: &str) {
    if got == want {
        return;
    }
    let extra = got.iter().find(|(k, v)| want.get(*k) != Some(*v));
    let missing = want.iter().find(|(k, v)| got.get(*k) != Some(*v));
    panic!(
        "{what}: {} rows where {} were expected; first unexpected {extra:?}, first missing {missing:?}",
        got.len(),
        want.len()
    );
}

/// The rows of `rows` as the sink's tables should hold them.
fn as_tables(rows: &[OutputRow]) -> Tables {
    rows.iter()
        .map(|r| {
            let values = r.values.clone().expect("no deletion in a rewrite");
            ((r.family, r.level, r.bucket, r.group.clone()), values)
        })
        .collect()
}

/// What every aggregate table holds.
async fn contents(db: &TestDb) -> Tables {
    let client = db.client().await;
    let mut out = Tables::new();
    for (f, level) in all_tables() {
        let family = FAMILIES[usize::from(f)];
        let groups: Vec<String> = family
            .group_columns()
            .map(|c| format!("{c}::int8"))
            .collect();
        let measures: Vec<&str> = family.measures.iter().map(|m| m.name).collect();
        let mut columns = vec!["date_time_key".to_owned()];
        columns.extend(groups.iter().cloned());
        columns.extend(measures.iter().map(|m| m.to_string()));
        let sql = format!(
            "SELECT {} FROM {}",
            columns.join(", "),
            family.table_name(level)
        );
        for row in client.query(&sql, &[]).await.expect("read a table") {
            let group = (1..=groups.len()).map(|i| row.get(i)).collect();
            let values = (groups.len() + 1..row.len()).map(|i| row.get(i)).collect();
            let id = (f, level, row.get::<_, i64>(0), group);
            assert!(out.insert(id, values).is_none(), "a duplicate row");
        }
    }
    out
}

/// The rewrite writes exactly the rows it is given, NULLs included, into
/// every table, and nothing of what the tables held before: rows of many
/// tables in every chunk, or a table at a time across chunks as the state
/// gives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_tables_writes_exactly_the_rows_given() {
    let (db, mut sink) = with_sink().await;
    sink.write(Lsn(200), &rows_everywhere(100))
        .await
        .expect("first batch");

    let mixed = state_rows(30_000, 1_000);
    sink.replace_all(Lsn(400), &mut Chunks::of(&mixed, 7_000, None))
        .await
        .expect("rewrite, tables mixed");
    assert_same(&contents(&db).await, &as_tables(&mixed), "tables mixed");
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(400)));

    let mut in_order = state_rows(20_000, 50_000);
    in_order.sort_by_key(|r| (r.family, r.level, r.bucket));
    let mut chunks = Chunks::of(&in_order, 3_000, None);
    sink.replace_all(Lsn(500), &mut chunks)
        .await
        .expect("rewrite, table after table");
    assert_eq!(chunks.reads, 8, "seven chunks and the end");
    assert_same(&contents(&db).await, &as_tables(&in_order), "in order");
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(500)));

    // Nothing at all: the tables end empty.
    sink.replace_all(Lsn(600), &mut Chunks::of(&[], 10, None))
        .await
        .expect("empty rewrite");
    assert_eq!(total_rows(&db).await, 0);
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(600)));
}

/// A rewrite that fails midway, while a table's COPY is open, leaves the
/// tables and the progress exactly as they were, whatever failed: a chunk
/// read, a deletion among the rows, a value the column cannot hold, a row
/// the server refuses, or a progress past the rewrite's. The connection
/// serves the next rewrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_failing_midway_keeps_the_old_tables_and_progress() {
    let (db, mut sink) = with_sink().await;
    let old = state_rows(5_000, 1_000);
    sink.replace_all(Lsn(300), &mut Chunks::of(&old, 2_000, None))
        .await
        .expect("first rewrite");
    let before = contents(&db).await;
    assert_same(&before, &as_tables(&old), "first rewrite");

    let mut new = state_rows(20_000, 9_000);
    new.sort_by_key(|r| (r.family, r.level, r.bucket));
    let unchanged = |what: &'static str| {
        let (db, before) = (&db, &before);
        async move {
            assert_same(&contents(db).await, before, what);
        }
    };

    match sink
        .replace_all(Lsn(400), &mut Chunks::of(&new, 4_000, Some(3)))
        .await
    {
        Err(SinkError::Rows(e)) => assert_eq!(e.to_string(), "the disk went away"),
        other => panic!("a failed read must fail the rewrite, got {other:?}"),
    }
    unchanged("failed read").await;
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(300)));

    let mut with_deletion = new.clone();
    with_deletion[10_000].values = None;
    let deleted = &with_deletion[10_000];
    let deleted_table = FAMILIES[usize::from(deleted.family)].table_name(deleted.level);
    match sink
        .replace_all(Lsn(400), &mut Chunks::of(&with_deletion, 4_000, None))
        .await
    {
        Err(SinkError::DeletionInRewrite { table }) => assert_eq!(table, deleted_table),
        other => panic!("a deletion must fail the rewrite, got {other:?}"),
    }
    unchanged("deletion").await;

    let mut too_large = new.clone();
    let (i, row) = too_large
        .iter_mut()
        .enumerate()
        .skip(12_000)
        .find(|(_, r)| !r.group.is_empty())
        .expect("a row with group columns");
    row.group[0] = Some(i64::from(i32::MAX) + 1);
    let family = FAMILIES[usize::from(row.family)];
    let (big_table, big_column) = (
        family.table_name(row.level),
        family.group_columns().next().expect("a group column"),
    );
    match sink
        .replace_all(Lsn(400), &mut Chunks::of(&too_large, 4_000, None))
        .await
    {
        Err(SinkError::OutOfRange {
            table,
            column,
            value,
        }) => assert_eq!(
            (table, column, value),
            (big_table, big_column, i64::from(i32::MAX) + 1),
            "row {i}"
        ),
        other => panic!("a value out of the column's range must fail, got {other:?}"),
    }
    unchanged("out of range").await;

    let refused = &new[15_000];
    let refused_table = FAMILIES[usize::from(refused.family)].table_name(refused.level);
    let admin = db.client().await;
    refuse_bucket(&admin, &refused_table, Some(refused.bucket)).await;
    match sink
        .replace_all(Lsn(400), &mut Chunks::of(&new, 4_000, None))
        .await
    {
        Err(SinkError::Sql { what, source }) => {
            assert_eq!(what, format!("copy into {refused_table}"), "{source}")
        }
        other => panic!("a refused row must fail the rewrite, got {other:?}"),
    }
    unchanged("refused row").await;
    refuse_bucket(&admin, &refused_table, None).await;

    match sink
        .replace_all(Lsn(250), &mut Chunks::of(&new, 4_000, None))
        .await
    {
        Err(SinkError::ProgressRegressed { recorded, lsn, .. }) => {
            assert_eq!((recorded, lsn), (Lsn(300), Lsn(250)));
        }
        other => panic!("a rewrite behind the progress must be refused, got {other:?}"),
    }
    unchanged("behind the progress").await;
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(300)));

    sink.replace_all(Lsn(400), &mut Chunks::of(&new, 4_000, None))
        .await
        .expect("rewrite");
    assert_same(&contents(&db).await, &as_tables(&new), "rewrite");
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(400)));
}
