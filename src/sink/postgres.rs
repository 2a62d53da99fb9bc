//! The PostgreSQL sink: aggregate tables and the progress row in Info Mart.
//!
//! One batch is one transaction: per table, multi-row upserts
//! (`INSERT … SELECT FROM unnest(…) ON CONFLICT … DO UPDATE`) and multi-row
//! deletes, then the progress row. The statements are sent in waves of at
//! most `WAVE_ROWS` rows, each wave in one round trip (pipelined): a
//! usual batch is one wave, and a large one is never encoded whole.
//! Statements are prepared once.
//!
//! The rewrite of every table after a backfill ([`Sink::replace_all`]) is
//! one transaction too, but loads the emptied tables with binary COPY: no
//! row can conflict there, and COPY skips what an upsert costs per row.
//!
//! [`Sink::submit`] runs the transaction in a task of its own, so the
//! pipeline aggregates the next batch while PostgreSQL maintains the
//! aggregate tables' indexes (half of a catch-up's time, done one after the
//! other before). The connection moves into the task and back.

use super::copy::{self, CopyTable};
use super::{RowChunks, Sink, SinkError};
use crate::aggregate::catalog::FAMILIES;
use crate::aggregate::family::Family;
use crate::aggregate::{Level, OutputRow, Settings};
use raa_state::Lsn;
use std::collections::HashMap;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

/// raa's own progress table: per slot, the last LSN whose effects are in the
/// aggregate tables, written in the same transaction as those rows.
pub const PROGRESS_DDL: &str = "CREATE TABLE IF NOT EXISTS raa_progress (\n    \
    slot_name text PRIMARY KEY,\n    \
    lsn pg_lsn NOT NULL,\n    \
    updated_at timestamptz NOT NULL DEFAULT now()\n);\n";

/// All DDL raa owns in Info Mart for these settings: the progress table and
/// one aggregate table per family and level.
pub fn ddl(settings: &Settings) -> String {
    let mut out = String::from(PROGRESS_DDL);
    for family in FAMILIES {
        for &level in &settings.levels {
            out.push('\n');
            out.push_str(&family.ddl(level));
        }
    }
    out
}

/// Which group columns of a deleted row are NULL (bit i = group column i).
type NullMask = u32;

pub struct PgSink {
    /// The connection and its statements; `None` while a write task has it.
    conn: Option<Conn>,
    /// The submitted write: its LSN and its task, which hands `conn` back.
    in_flight: Option<(Lsn, WriteTask)>,
}

/// A write running in a task of its own; it hands the connection back.
type WriteTask = JoinHandle<(Conn, Result<(), SinkError>)>;

/// The connection and its prepared statements.
struct Conn {
    client: Client,
    slot: String,
    upserts: HashMap<(u16, Level), Statement>,
    /// Deletes, prepared on first use per table and NULL pattern.
    deletes: HashMap<(u16, Level, NullMask), Statement>,
    progress_stmt: Statement,
    /// See [`STATEMENT_ROWS`] and [`WAVE_ROWS`].
    statement_rows: usize,
    wave_rows: usize,
}

pub(super) fn sql_err(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SinkError {
    let what = what.into();
    move |source| SinkError::Sql { what, source }
}

impl PgSink {
    /// Prepares the statements for every family at the configured levels.
    /// The tables must exist (`raa init`).
    pub async fn new(client: Client, slot: &str, settings: &Settings) -> Result<PgSink, SinkError> {
        let mut upserts = HashMap::new();
        for (idx, family) in FAMILIES.iter().enumerate() {
            for &level in &settings.levels {
                let table = family.table_name(level);
                let upsert = client
                    .prepare(&upsert_sql(family, &table))
                    .await
                    .map_err(sql_err(format!("prepare upsert into {table}")))?;
                upserts.insert((idx as u16, level), upsert);
            }
        }
        let progress_stmt = client
            .prepare(
                "INSERT INTO raa_progress (slot_name, lsn, updated_at) VALUES ($1, $2::text::pg_lsn, now()) \
                 ON CONFLICT (slot_name) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = now() \
                 WHERE raa_progress.lsn <= EXCLUDED.lsn",
            )
            .await
            .map_err(sql_err("prepare progress update"))?;
        let conn = Conn {
            client,
            slot: slot.to_owned(),
            upserts,
            deletes: HashMap::new(),
            progress_stmt,
            statement_rows: STATEMENT_ROWS,
            wave_rows: WAVE_ROWS,
        };
        Ok(PgSink {
            conn: Some(conn),
            in_flight: None,
        })
    }

    /// The connection, once the submitted write (if any) has handed it back.
    /// Its error is the write's, reported once.
    async fn conn(&mut self) -> Result<&mut Conn, SinkError> {
        self.confirm().await?;
        self.conn.as_mut().ok_or(SinkError::WriteTaskLost)
    }
}

fn upsert_sql(family: &Family, table: &str) -> String {
    let key: Vec<&str> = family.key_columns().collect();
    let measures: Vec<&str> = family.measures.iter().map(|m| m.name).collect();
    let unnest: Vec<String> = (1..=key.len() + measures.len())
        .map(|i| format!("${i}::int8[]"))
        .collect();
    let set: Vec<String> = measures
        .iter()
        .map(|m| format!("{m} = EXCLUDED.{m}"))
        .collect();
    format!(
        "INSERT INTO {table} ({}, {}) SELECT * FROM unnest({}) ON CONFLICT ({}) DO UPDATE SET {}",
        key.join(", "),
        measures.join(", "),
        unnest.join(", "),
        key.join(", "),
        set.join(", ")
    )
}

/// A multi-row delete for rows whose NULL group columns are those in `nulls`.
/// Each column is matched with `=` or `IS NULL`, which the unique index can
/// serve (`IS NOT DISTINCT FROM` cannot, and would scan whole buckets).
/// Parameters: `date_time_key`, then the non-NULL group columns.
fn delete_sql(family: &Family, table: &str, nulls: NullMask) -> String {
    let mut key = vec!["date_time_key"];
    let mut cond = vec!["t.date_time_key = d.date_time_key".to_owned()];
    for (i, c) in family.group_columns().enumerate() {
        if nulls & (1 << i) != 0 {
            cond.push(format!("t.{c} IS NULL"));
        } else {
            key.push(c);
            cond.push(format!("t.{c} = d.{c}"));
        }
    }
    let unnest: Vec<String> = (1..=key.len()).map(|i| format!("${i}::int8[]")).collect();
    format!(
        "DELETE FROM {table} t USING unnest({}) AS d({}) WHERE {}",
        unnest.join(", "),
        key.join(", "),
        cond.join(" AND ")
    )
}

fn null_mask(row: &OutputRow) -> NullMask {
    row.group
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_none())
        .fold(0, |m, (i, _)| m | (1 << i))
}

/// Column-wise arrays for one table's upserts or deletes.
struct Columns {
    buckets: Vec<i64>,
    groups: Vec<Vec<Option<i64>>>,
    measures: Vec<Vec<Option<i64>>>,
}

impl Columns {
    fn new(family: &Family, with_measures: bool) -> Columns {
        Columns {
            buckets: Vec::new(),
            groups: vec![Vec::new(); family.group_by.len()],
            measures: vec![
                Vec::new();
                if with_measures {
                    family.measures.len()
                } else {
                    0
                }
            ],
        }
    }

    fn push(&mut self, row: &OutputRow) {
        self.buckets.push(row.bucket);
        for (col, v) in self.groups.iter_mut().zip(&row.group) {
            col.push(*v);
        }
        if let Some(values) = &row.values {
            for (col, v) in self.measures.iter_mut().zip(values) {
                col.push(*v);
            }
        }
    }

    /// Parameters of a delete: the bucket and the group columns not in `nulls`.
    fn delete_params(&self, nulls: NullMask) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![&self.buckets];
        for (i, col) in self.groups.iter().enumerate() {
            if nulls & (1 << i) == 0 {
                p.push(col);
            }
        }
        p
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![&self.buckets];
        p.extend(self.groups.iter().map(|c| c as &(dyn ToSql + Sync)));
        p.extend(self.measures.iter().map(|c| c as &(dyn ToSql + Sync)));
        p
    }
}

impl Sink for PgSink {
    async fn progress(&mut self) -> Result<Option<Lsn>, SinkError> {
        let conn = self.conn().await?;
        read_progress(&conn.client, &conn.slot).await
    }

    async fn write(&mut self, lsn: Lsn, rows: &[OutputRow]) -> Result<(), SinkError> {
        self.conn()
            .await?
            .write_in(lsn, Rows::Slice(rows), false)
            .await
    }

    async fn write_chunks(
        &mut self,
        lsn: Lsn,
        rows: &mut (dyn RowChunks + Send),
    ) -> Result<(), SinkError> {
        self.conn()
            .await?
            .write_in(lsn, Rows::Chunks(rows), false)
            .await
    }

    async fn replace_all(
        &mut self,
        lsn: Lsn,
        rows: &mut (dyn RowChunks + Send),
    ) -> Result<(), SinkError> {
        self.conn().await?;
        let Some(mut conn) = self.conn.take() else {
            return Err(SinkError::WriteTaskLost);
        };
        let (chunks, received) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(async move {
            let written = conn.replace(lsn, received).await;
            (conn, written)
        });
        // Held as a submitted write is: were this call dropped midway, the
        // next one would still get the connection back.
        self.in_flight = Some((lsn, task));
        let fed = feed(rows, &chunks).await;
        drop(chunks);
        let written = self.confirm().await;
        // A failed read ends the rewrite first: its error is the cause.
        fed?;
        written.map(drop)
    }

    async fn submit(&mut self, lsn: Lsn, rows: Vec<OutputRow>) -> Result<(), SinkError> {
        self.conn().await?;
        let Some(mut conn) = self.conn.take() else {
            return Err(SinkError::WriteTaskLost);
        };
        let task = tokio::spawn(async move {
            let written = conn.write_in(lsn, Rows::Slice(&rows), false).await;
            (conn, written)
        });
        self.in_flight = Some((lsn, task));
        Ok(())
    }

    async fn confirm(&mut self) -> Result<Option<Lsn>, SinkError> {
        let Some((lsn, task)) = self.in_flight.take() else {
            return Ok(None);
        };
        match task.await {
            Ok((conn, written)) => {
                self.conn = Some(conn);
                written.map(|()| Some(lsn))
            }
            // A panic in the task: the connection is gone with it.
            Err(_) => Err(SinkError::WriteTaskLost),
        }
    }
}

/// Where a row goes: one table's upsert, or its delete for one NULL pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Target {
    Upsert(u16, Level),
    Delete(u16, Level, NullMask),
}

impl Target {
    fn of(row: &OutputRow) -> Target {
        match row.values {
            Some(_) => Target::Upsert(row.family, row.level),
            None => Target::Delete(row.family, row.level, null_mask(row)),
        }
    }

    fn family(self) -> &'static Family {
        match self {
            Target::Upsert(f, _) | Target::Delete(f, _, _) => FAMILIES[usize::from(f)],
        }
    }

    fn level(self) -> Level {
        match self {
            Target::Upsert(_, l) | Target::Delete(_, l, _) => l,
        }
    }

    fn what(self) -> String {
        let (verb, level) = match self {
            Target::Upsert(_, l) => ("upsert into", l),
            Target::Delete(_, l, _) => ("delete from", l),
        };
        format!("{verb} {}", self.family().table_name(level))
    }
}

/// Splits statements of `sizes` rows into consecutive waves of at most
/// `wave_rows` rows (a larger statement is a wave of its own). Always at
/// least one wave, empty when there are no statements: the progress update
/// goes with the last.
fn waves(sizes: &[usize], wave_rows: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let mut end = start;
        let mut rows = 0;
        while end < sizes.len() && (end == start || rows + sizes[end] <= wave_rows) {
            rows += sizes[end];
            end += 1;
        }
        out.push(start..end);
        if end == sizes.len() {
            return out;
        }
        start = end;
    }
}

/// Rows one statement carries at most.
const STATEMENT_ROWS: usize = 5_000;
/// Rows whose statements are encoded and sent together (one round trip) at
/// most. Why a bound: a batch's statements were encoded all at once, and one
/// source transaction of 100 000 changes (483 305 rows) took ~400 MB of
/// heap to encode; a wave of 20 000 rows takes a few MB.
const WAVE_ROWS: usize = 20_000;

impl PgSink {
    /// [`Sink::replace_all`] as upserts, the way it was written before it
    /// used COPY: the benchmark's reference.
    #[doc(hidden)]
    pub async fn replace_all_by_upserts(
        &mut self,
        lsn: Lsn,
        rows: &mut (dyn RowChunks + Send),
    ) -> Result<(), SinkError> {
        self.conn()
            .await?
            .write_in(lsn, Rows::Chunks(rows), true)
            .await
    }

    /// Test hook: smaller statements and waves, so a small batch spans several.
    #[doc(hidden)]
    pub fn with_wave_limits(mut self, statement_rows: usize, wave_rows: usize) -> PgSink {
        if let Some(conn) = &mut self.conn {
            conn.statement_rows = statement_rows.max(1);
            conn.wave_rows = wave_rows.max(1);
        }
        self
    }
}

impl Conn {
    /// The sink's tables, in a fixed order.
    fn tables(&self) -> Vec<(u16, Level)> {
        let mut tables: Vec<(u16, Level)> = self.upserts.keys().copied().collect();
        tables.sort_unstable();
        tables
    }

    /// [`Sink::replace_all`] in the write task: the tables emptied, then
    /// loaded by COPY from the chunks [`feed`] hands over, one table's COPY
    /// at a time. The state gives its rows in key order, table after table,
    /// so a table's COPY stays open from chunk to chunk; rows of several
    /// tables in one chunk are sorted by table, the table still open first.
    /// Chunks stop coming without their end (`None`) when the read failed:
    /// the transaction is then rolled back.
    async fn replace(&mut self, lsn: Lsn, mut chunks: Chunks) -> Result<(), SinkError> {
        let tables = self.tables();
        let tx = self.client.transaction().await.map_err(sql_err("begin"))?;
        empty(&tx, &tables).await?;
        let copies: HashMap<(u16, Level), CopyTable> =
            futures_util::future::join_all(tables.into_iter().map(|(f, l)| {
                let tx = &tx;
                async move { Ok(((f, l), CopyTable::prepare(tx, f, l).await?)) }
            }))
            .await
            .into_iter()
            .collect::<Result<_, SinkError>>()?;
        let mut open: Option<(&CopyTable, copy::Writer)> = None;
        let mut cells = Vec::new();
        while let Some(rows) = chunks.recv().await.ok_or_else(|| {
            SinkError::Rows("the rewrite's rows stopped before their last chunk".into())
        })? {
            let current = open.as_ref().map(|(t, _)| t.target());
            let mut order: Vec<usize> = (0..rows.len()).collect();
            // Stable, and linear on rows already in table order.
            order.sort_by_key(|&i| {
                let t = (rows[i].family, rows[i].level);
                (Some(t) != current, t)
            });
            for i in order {
                let row = &rows[i];
                let target = (row.family, row.level);
                let Some(table) = copies.get(&target) else {
                    return Err(SinkError::Unprepared {
                        table: copy::table_name(row.family, row.level),
                    });
                };
                let writer = match &mut open {
                    Some((t, writer)) if t.target() == target => writer,
                    _ => {
                        if let Some((t, writer)) = open.take() {
                            t.finish(writer).await?;
                        }
                        &mut open.insert((table, table.start(&tx).await?)).1
                    }
                };
                table.write(writer, row, &mut cells).await?;
            }
        }
        if let Some((t, writer)) = open.take() {
            t.finish(writer).await?;
        }
        let lsn_text = lsn.to_string();
        let updated = tx
            .execute(&self.progress_stmt, &[&self.slot, &lsn_text])
            .await
            .map_err(sql_err("progress update"))?;
        if updated == 0 {
            return Err(regressed(&tx, &self.slot, lsn).await);
        }
        tx.commit().await.map_err(sql_err("commit"))
    }

    /// One sink transaction; with `replace`, the aggregate tables are
    /// emptied first.
    async fn write_in(&mut self, lsn: Lsn, rows: Rows<'_>, replace: bool) -> Result<(), SinkError> {
        let emptied = if replace { self.tables() } else { Vec::new() };
        let tx = self.client.transaction().await.map_err(sql_err("begin"))?;
        empty(&tx, &emptied).await?;
        let mut out = Out {
            tx: &tx,
            upserts: &self.upserts,
            deletes: &mut self.deletes,
            statement_rows: self.statement_rows,
            wave_rows: self.wave_rows,
        };
        let progress = Progress {
            stmt: &self.progress_stmt,
            slot: &self.slot,
            lsn,
        };
        match rows {
            Rows::Slice(rows) => out.send(rows, Some(&progress)).await?,
            Rows::Chunks(chunks) => {
                let mut chunk = chunks.next_chunk()?;
                while let Some(rows) = chunk {
                    let sending = out.send(&rows, None);
                    futures_util::pin_mut!(sending);
                    // Polled once, the chunk's first wave is encoded and
                    // sent (tokio-postgres sends a statement when it is
                    // first polled): the server works on it while the next
                    // chunk is read from the state. The rewrite after a
                    // backfill of 100 000 facts took 2.9 s so, 4.0 s with
                    // the two one after the other.
                    let sent = futures_util::poll!(sending.as_mut());
                    let next = chunks.next_chunk();
                    match sent {
                        std::task::Poll::Ready(done) => done?,
                        std::task::Poll::Pending => sending.await?,
                    }
                    chunk = next?;
                }
                out.send(&[], Some(&progress)).await?;
            }
        }
        tx.commit().await.map_err(sql_err("commit"))
    }
}

/// What one sink transaction writes: its rows whole, or a chunk at a time.
enum Rows<'a> {
    Slice(&'a [OutputRow]),
    Chunks(&'a mut (dyn RowChunks + Send)),
}

/// The progress update: sent with a transaction's last statements, or
/// after its last chunk.
struct Progress<'a> {
    stmt: &'a Statement,
    slot: &'a String,
    lsn: Lsn,
}

/// One open sink transaction and the statements it sends.
struct Out<'a, 't> {
    tx: &'a tokio_postgres::Transaction<'t>,
    upserts: &'a HashMap<(u16, Level), Statement>,
    deletes: &'a mut HashMap<(u16, Level, NullMask), Statement>,
    statement_rows: usize,
    wave_rows: usize,
}

impl Out<'_, '_> {
    /// Sends `rows` in waves; with `progress`, the progress update last.
    async fn send(
        &mut self,
        rows: &[OutputRow],
        progress: Option<&Progress<'_>>,
    ) -> Result<(), SinkError> {
        // Row indexes per statement target; the column arrays are built one
        // wave at a time.
        let mut targets: HashMap<Target, Vec<usize>> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            targets.entry(Target::of(row)).or_default().push(i);
        }
        let mut targets: Vec<(Target, Vec<usize>)> = targets.into_iter().collect();
        targets.sort_unstable_by_key(|(t, _)| *t);
        for &(target, _) in &targets {
            let (Target::Upsert(family, level) | Target::Delete(family, level, _)) = target;
            if !self.upserts.contains_key(&(family, level)) {
                // Not this sink's settings: a row lost silently would leave
                // GCXI a wrong total.
                return Err(SinkError::Unprepared {
                    table: target.family().table_name(level),
                });
            }
            let Target::Delete(family, level, mask) = target else {
                continue;
            };
            if !self.deletes.contains_key(&(family, level, mask)) {
                let table = target.family().table_name(level);
                let stmt = self
                    .tx
                    .prepare(&delete_sql(target.family(), &table, mask))
                    .await
                    .map_err(sql_err(format!("prepare delete from {table}")))?;
                self.deletes.insert((family, level, mask), stmt);
            }
        }
        let pieces: Vec<(Target, &[usize])> = targets
            .iter()
            .flat_map(|(t, idx)| idx.chunks(self.statement_rows).map(move |c| (*t, c)))
            .collect();
        let sizes: Vec<usize> = pieces.iter().map(|(_, idx)| idx.len()).collect();
        let waves = waves(&sizes, self.wave_rows);
        for (n, range) in waves.iter().enumerate() {
            let wave: Vec<(Target, Columns)> = pieces[range.clone()]
                .iter()
                .map(|&(t, idx)| {
                    let mut cols = Columns::new(t.family(), matches!(t, Target::Upsert(..)));
                    for &i in idx {
                        cols.push(&rows[i]);
                    }
                    (t, cols)
                })
                .collect();
            // A wave's statements are sent at once (tokio-postgres pipelines
            // futures polled together; `join_all`, then `join`, poll them in
            // order, the progress update last in the last wave): one round
            // trip instead of one per table. After a failure the server
            // answers the rest with "transaction is aborted", so the first
            // error in order is the cause.
            let mut statements = Vec::with_capacity(wave.len());
            for (target, cols) in &wave {
                let (stmt, params) = match *target {
                    Target::Upsert(f, l) => (self.upserts.get(&(f, l)), cols.params()),
                    Target::Delete(f, l, m) => {
                        (self.deletes.get(&(f, l, m)), cols.delete_params(m))
                    }
                };
                // Every target was checked (and its delete prepared) above.
                let stmt = stmt.ok_or_else(|| SinkError::Unprepared {
                    table: target.family().table_name(target.level()),
                })?;
                statements.push(execute(self.tx, stmt, params, target.what()));
            }
            let progress = progress.filter(|_| n + 1 == waves.len());
            let Some(progress) = progress else {
                for result in futures_util::future::join_all(statements).await {
                    result?;
                }
                continue;
            };
            let lsn_text = progress.lsn.to_string();
            let progress_params: Vec<&(dyn ToSql + Sync)> = vec![progress.slot, &lsn_text];
            let updated = execute(
                self.tx,
                progress.stmt,
                progress_params,
                "progress update".into(),
            );
            let (tables, updated) =
                futures_util::future::join(futures_util::future::join_all(statements), updated)
                    .await;
            for result in tables {
                result?;
            }
            if updated? == 0 {
                return Err(regressed(self.tx, progress.slot, progress.lsn).await);
            }
        }
        Ok(())
    }
}

/// A rewrite's chunks on their way to the write task; `None` ends them.
type Chunks = tokio::sync::mpsc::Receiver<Option<Vec<OutputRow>>>;

/// Reads `rows` and hands them to the write task a chunk at a time, the
/// next read while the task writes the chunk before: the server takes in
/// one chunk while raa reads the next from the state. A chunk is read once
/// the task has taken the one before, so two are in memory at most. Stops
/// early, without error, when the task has ended: its error says why.
async fn feed(
    rows: &mut (dyn RowChunks + Send),
    chunks: &tokio::sync::mpsc::Sender<Option<Vec<OutputRow>>>,
) -> Result<(), SinkError> {
    loop {
        let Ok(permit) = chunks.reserve().await else {
            return Ok(());
        };
        let chunk = rows.next_chunk()?;
        let last = chunk.is_none();
        permit.send(chunk);
        if last {
            return Ok(());
        }
    }
}

/// Empties `tables` in `tx`. DELETE, not TRUNCATE: GCXI readers keep
/// seeing the old rows until the commit instead of waiting on a lock, and a
/// reader's snapshot taken before the commit never sees the tables empty
/// (TRUNCATE is not MVCC-safe).
async fn empty(
    tx: &tokio_postgres::Transaction<'_>,
    tables: &[(u16, Level)],
) -> Result<(), SinkError> {
    for &(f, l) in tables {
        let table = copy::table_name(f, l);
        tx.batch_execute(&format!("DELETE FROM {table}"))
            .await
            .map_err(sql_err(format!("empty {table}")))?;
    }
    Ok(())
}

/// The error of a progress update that changed nothing: the recorded
/// progress is past `lsn`.
async fn regressed(tx: &tokio_postgres::Transaction<'_>, slot: &str, lsn: Lsn) -> SinkError {
    match read_progress(tx, slot).await {
        Ok(recorded) => SinkError::ProgressRegressed {
            slot: slot.to_owned(),
            recorded: recorded.unwrap_or_default(),
            lsn,
        },
        Err(e) => e,
    }
}

/// One statement of a batch, with what it was for in its error.
async fn execute(
    tx: &tokio_postgres::Transaction<'_>,
    stmt: &Statement,
    params: Vec<&(dyn ToSql + Sync)>,
    what: String,
) -> Result<u64, SinkError> {
    tx.execute(stmt, &params).await.map_err(sql_err(what))
}

/// Reads the progress LSN of `slot`.
pub async fn read_progress(
    client: &impl tokio_postgres::GenericClient,
    slot: &str,
) -> Result<Option<Lsn>, SinkError> {
    let row = client
        .query_opt(
            "SELECT lsn::text FROM raa_progress WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql_err("read progress"))?;
    let Some(row) = row else { return Ok(None) };
    let text: String = row.get(0);
    text.parse().map(Some).map_err(|_| SinkError::BadProgress {
        slot: slot.to_owned(),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::waves;

    #[test]
    fn statements_are_grouped_into_bounded_waves() {
        assert_eq!(waves(&[], 5), vec![0..0]);
        assert_eq!(waves(&[2, 2, 1, 2, 5], 5), vec![0..3, 3..4, 4..5]);
        // A statement larger than a wave is a wave of its own.
        assert_eq!(waves(&[7, 1, 7], 5), vec![0..1, 1..2, 2..3]);
        assert_eq!(waves(&[1, 1, 1], 20_000), vec![0..3]);
    }
}
