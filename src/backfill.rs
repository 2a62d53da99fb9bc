//! Initial backfill: the facts that exist before raa's slot, aggregated from
//! the snapshot exported when the slot was created.
//!
//! Why it is exact: the snapshot sees precisely the transactions that commit
//! before the slot's consistent point, and the slot streams precisely those
//! after it (see [`crate::source::snapshot`]).
//!
//! Why it is restartable: chunks are written to the state without an applied
//! LSN; only the last write sets it (to the consistent point) together with
//! [`RESYNC_SINK`]. A crash before that leaves a state without an applied
//! LSN, which the next start clears and backfills again from a new slot. The
//! sink is written once, by [`crate::pipeline`], from the whole state.

use crate::aggregate::family::Dim;
use crate::aggregate::{AggregateError, Engine, Work};
use crate::decode::Change;
use crate::schema::{Table, TableSpec, TABLES};
use crate::source::snapshot::{self, SnapshotError, SLICE_ROWS};
use crate::source::SourceConfig;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use raa_state::{Batch, Lsn, StateError, Store};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// State metadata: the sink must be rewritten from the whole state before
/// streaming (set by a backfill, cleared once the sink holds it).
pub const RESYNC_SINK: &str = "resync-sink";
/// State metadata: the source cluster's system identifier.
pub const SYSTEM_ID: &str = "source-system-id";

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot connect to the source database for the backfill")]
    Connect(#[source] tokio_postgres::Error),
    #[error("aggregating {table} rows of the snapshot")]
    Aggregate {
        table: &'static str,
        #[source]
        source: AggregateError,
    },
    #[error("finishing a chunk of the backfill")]
    Chunk(#[source] AggregateError),
    #[error("writing the backfilled state")]
    State(#[from] StateError),
    #[error("ending the snapshot read")]
    Finish(#[source] tokio_postgres::Error),
    /// The snapshot's rows are aggregated as facts never seen before
    /// ([`Engine::apply_snapshot`]): over an earlier state they would count twice.
    #[error("a backfill needs an empty state; this one holds entries (clear it first)")]
    NotEmpty,
}

/// What a backfill did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Backfilled {
    /// The slot's consistent point: the state's applied LSN.
    pub lsn: Lsn,
    pub rows: u64,
    pub secs: f64,
    /// State writes (see [`run`]), and those whose work outgrew memory and
    /// went through the disk.
    pub chunks: u64,
    pub spilled_chunks: u64,
    /// Of `secs`, the time aggregating and the time waiting for the state
    /// writer (the rest is the snapshot's read).
    pub aggregate_secs: f64,
    pub state_secs: f64,
}

/// Creates the slot, aggregates every row of the snapshot into `store`
/// (which must be empty) and anchors the state at the consistent point.
pub async fn run(
    source: &SourceConfig,
    store: &Store,
    engine: &mut Engine,
) -> Result<Backfilled, BackfillError> {
    let started = Instant::now();
    if !store.is_empty()? {
        return Err(BackfillError::NotEmpty);
    }
    let admin = source.connect().await.map_err(BackfillError::Connect)?;
    let slot = snapshot::create_slot(&admin, source).await?;
    let reader = source.connect().await.map_err(BackfillError::Connect)?;
    snapshot::begin(&reader, &slot).await?;
    // Dimensions first, so facts find theirs on first contribution.
    let mut order: Vec<&'static TableSpec> = TABLES.to_vec();
    order.sort_by_key(|s| Dim::of_table(s.table).is_none());
    let mut total = 0;
    for spec in &order {
        total += snapshot::count(&reader, spec).await?;
    }
    let progress = Progress::new(total);
    let mut done = Backfilled::default();
    engine
        .backfilling(total, async |engine| {
            aggregate_snapshot(&reader, store, engine, order, &progress, &mut done).await
        })
        .await?;
    reader
        .batch_execute("COMMIT")
        .await
        .map_err(BackfillError::Finish)?;
    let mut anchor = Batch::default();
    anchor.put_meta(RESYNC_SINK, &true)?;
    anchor.put_meta(SYSTEM_ID, &slot.system_id)?;
    // Also waits for the last chunks.
    let anchoring = Instant::now();
    store.commit(anchor, slot.consistent_point)?;
    done.state_secs += anchoring.elapsed().as_secs_f64();
    drop(slot);
    progress.finish();
    done.lsn = store.applied_lsn().unwrap_or_default();
    done.secs = started.elapsed().as_secs_f64();
    tracing::info!(rows = done.rows, secs = format!("{:.1}", done.secs), lsn = %done.lsn, "backfill complete");
    Ok(done)
}

/// Aggregates every row of the snapshot `reader` reads, table by table in
/// `order`, handing the state a chunk at a time.
async fn aggregate_snapshot(
    reader: &tokio_postgres::Client,
    store: &Store,
    engine: &mut Engine,
    order: Vec<&'static TableSpec>,
    progress: &Progress,
    done: &mut Backfilled,
) -> Result<(), BackfillError> {
    // Rows are aggregated SLICE_ROWS at a time; a chunk (one state write)
    // ends at half the work's bound, as the pipeline's batches do:
    // sized by state entries, not rows, since a row of a long period touches
    // hundreds of buckets and one of an instant a handful. A chunk that
    // outgrew memory would go through the disk twice.
    let chunk_entries = engine.work_entries() / 2;
    let mut work = Work::default();
    let mut dims_written = false;
    for spec in order {
        let table = spec.table;
        if !dims_written && Dim::of_table(table).is_none() {
            // The dimension rows (a few hundred) are a chunk of their own,
            // written before any fact: a stop from here on leaves a partial
            // state, which the next start finds and clears (the crash test
            // counts on seeing that happen).
            write_chunk(store, engine, std::mem::take(&mut work), done)?;
            let started = Instant::now();
            store.wait()?;
            done.state_secs += started.elapsed().as_secs_f64();
            dims_written = true;
        }
        let mut stream = Box::pin(snapshot::rows(reader, spec).await?);
        let mut changes = Vec::with_capacity(SLICE_ROWS);
        loop {
            let next = stream.next().await;
            let end = next.is_none();
            if let Some(tuple) = next {
                changes.push(Change::Insert { table, new: tuple? });
                if changes.len() < SLICE_ROWS {
                    continue;
                }
            }
            aggregate(engine, &mut work, table, std::mem::take(&mut changes), done)?;
            if work.entries() >= chunk_entries || work.is_spilled() {
                write_chunk(store, engine, std::mem::take(&mut work), done)?;
                progress.set(done.rows);
            }
            if end {
                break;
            }
        }
    }
    write_chunk(store, engine, work, done)?;
    progress.set(done.rows);
    Ok(())
}

/// Aggregates a slice of snapshot rows into `work`, counting it in `done`.
fn aggregate(
    engine: &mut Engine,
    work: &mut Work,
    table: Table,
    changes: Vec<Change>,
    done: &mut Backfilled,
) -> Result<(), BackfillError> {
    if changes.is_empty() {
        return Ok(());
    }
    done.rows += changes.len() as u64;
    let started = Instant::now();
    engine
        .apply_snapshot(work, changes)
        .map_err(|source| BackfillError::Aggregate {
            table: table.name(),
            source,
        })?;
    done.aggregate_secs += started.elapsed().as_secs_f64();
    Ok(())
}

/// Hands a chunk's work to the state (without an applied LSN); only the
/// wait for the chunk before (or the whole write, if it spilled) counts as
/// state time.
fn write_chunk(
    store: &Store,
    engine: &Engine,
    work: Work,
    done: &mut Backfilled,
) -> Result<(), BackfillError> {
    if work.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let out = engine.finish(work).map_err(BackfillError::Chunk)?;
    let aggregated = Instant::now();
    done.aggregate_secs += (aggregated - started).as_secs_f64();
    match out.spilled {
        // A slice of long periods (sessions over many sub-hour buckets) can
        // make the work outgrow memory before the chunk ends.
        Some(spilled) => {
            store.write_unanchored_provisional(spilled, out.state)?;
            done.spilled_chunks += 1;
        }
        // Written while the next chunk is aggregated: the anchoring commit
        // waits for it.
        None => store.submit_unanchored(out.state)?,
    }
    done.chunks += 1;
    done.state_secs += aggregated.elapsed().as_secs_f64();
    Ok(())
}

/// Progress: a bar (rows, rate, ETA) on a terminal, a log line every few
/// seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    started: Instant,
    last_log: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "backfill {bar:40} {human_pos}/{human_len} rows, {per_sec}, ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        tracing::info!(rows = total, "backfilling the facts that predate the slot");
        Progress {
            bar,
            total,
            started: Instant::now(),
            last_log: std::cell::Cell::new(Instant::now()),
        }
    }

    fn set(&self, rows: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(rows);
        } else if self.last_log.get().elapsed() >= Duration::from_secs(5) {
            self.last_log.set(Instant::now());
            let secs = self.started.elapsed().as_secs_f64();
            let rate = rows as f64 / secs.max(1e-9);
            let eta = self.total.saturating_sub(rows) as f64 / rate.max(1e-9);
            tracing::info!(
                rows,
                total = self.total,
                rate = format!("{rate:.0}/s"),
                eta = format!("{eta:.0}s"),
                "backfill progress"
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Settings;
    use std::sync::Arc;

    /// A backfill over a state that holds anything is refused before it
    /// touches the source (none answers at this address), and the state is
    /// left as it was.
    #[tokio::test]
    async fn a_backfill_over_a_state_with_entries_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut batch = Batch::default();
        batch.put_meta(SYSTEM_ID, &7_u64).unwrap();
        store.submit_unanchored(batch).unwrap();
        store.wait().unwrap();
        let mut engine = Engine::open(store.clone(), Settings::default()).unwrap();
        let source = SourceConfig::new("postgres://raa@127.0.0.1:1/none", "s", "p").unwrap();
        let refused = run(&source, &store, &mut engine).await;
        assert!(
            matches!(refused, Err(BackfillError::NotEmpty)),
            "{refused:?}"
        );
        assert_eq!(store.meta::<u64>(SYSTEM_ID).unwrap(), Some(7));
    }
}
