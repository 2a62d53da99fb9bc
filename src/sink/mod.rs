//! Sink: changed aggregate rows out to the tables GCXI reads.
//!
//! Contract of a [`Sink`]:
//! - [`Sink::write`] applies one batch — upserts of absolute values, deletions
//!   of rows no fact contributes to any more, and the progress LSN — in one
//!   transaction, and returns only once it is durable. A reader sees all of a
//!   batch or none of it; a batch holds whole source transactions.
//! - Writing absolute values makes a replayed batch harmless.
//! - The progress LSN never moves backwards; a write that would move it back is
//!   refused (another raa on the same slot, or a restored database).

mod copy;
pub mod memory;
pub mod postgres;

use crate::aggregate::OutputRow;
use raa_state::Lsn;

pub use memory::MemorySink;
pub use postgres::PgSink;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot connect to the sink database")]
    Connect(#[source] tokio_postgres::Error),
    #[error("sink statement failed: {what}")]
    Sql {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "progress of slot {slot} is already at {recorded}, past this batch's {lsn}: \
         is another raa writing for the same slot?"
    )]
    ProgressRegressed {
        slot: String,
        recorded: Lsn,
        lsn: Lsn,
    },
    #[error("cannot read the batch's rows from its provisional state")]
    Rows(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "a row for {table}, which this sink's settings do not include: \
         the state and the sink disagree on the levels"
    )]
    Unprepared { table: String },
    #[error("progress of slot {slot} holds an unreadable LSN {text:?}")]
    BadProgress { slot: String, text: String },
    #[error("the sink's write task ended without handing its connection back")]
    WriteTaskLost,
    #[error(
        "the rewrite of the aggregate tables got a deletion for {table}: \
         the rows of a rewrite all hold values"
    )]
    DeletionInRewrite { table: String },
    #[error("a row for {table} has {got} columns where the table has {expected}")]
    RowShape {
        table: String,
        got: usize,
        expected: usize,
    },
    #[error("{table}.{column} is of type {ty}: raa writes integer columns only")]
    ColumnType {
        table: String,
        column: &'static str,
        ty: String,
    },
    #[error("{table}.{column}: {value} is out of the column's range")]
    OutOfRange {
        table: String,
        column: &'static str,
        value: i64,
    },
}

/// Where aggregate rows go.
#[allow(async_fn_in_trait)]
pub trait Sink {
    /// The LSN of the last batch committed for this slot, if any.
    async fn progress(&mut self) -> Result<Option<Lsn>, SinkError>;

    /// Writes `rows` and records `lsn` as progress, atomically and durably.
    async fn write(&mut self, lsn: Lsn, rows: &[OutputRow]) -> Result<(), SinkError>;

    /// [`Sink::write`] of a batch too large to hold in memory: its rows come a
    /// chunk at a time, and are still written in one transaction.
    async fn write_chunks(
        &mut self,
        lsn: Lsn,
        rows: &mut (dyn RowChunks + Send),
    ) -> Result<(), SinkError>;

    /// Replaces the whole content of the aggregate tables with `rows` (all
    /// upserts, read a chunk at a time: the whole state) and records `lsn`,
    /// in one transaction: after a backfill, the state holds rows no batch
    /// ever wrote. A deletion among `rows` is refused
    /// ([`SinkError::DeletionInRewrite`]): the state has none to give.
    async fn replace_all(
        &mut self,
        lsn: Lsn,
        rows: &mut (dyn RowChunks + Send),
    ) -> Result<(), SinkError>;

    /// Starts [`Sink::write`] of a batch and, where the sink can, returns
    /// before it is durable: the caller goes on while the database works,
    /// and [`Sink::confirm`] waits for it. One at a time: any other call
    /// first waits for the write submitted before. By default, a plain write.
    async fn submit(&mut self, lsn: Lsn, rows: Vec<OutputRow>) -> Result<(), SinkError> {
        self.write(lsn, &rows).await
    }

    /// Waits for the write [`Sink::submit`]ted last, if it is still running:
    /// its LSN once it is durable, or its error. `None` when none was
    /// running.
    async fn confirm(&mut self) -> Result<Option<Lsn>, SinkError> {
        Ok(None)
    }
}

/// A batch's rows, read a chunk at a time.
pub trait RowChunks {
    /// The next chunk; `None` once all are read.
    fn next_chunk(&mut self) -> Result<Option<Vec<OutputRow>>, SinkError>;
}

/// A borrowed sink is a sink: the caller keeps it to inspect after a run.
impl<S: Sink> Sink for &mut S {
    async fn progress(&mut self) -> Result<Option<Lsn>, SinkError> {
        (**self).progress().await
    }

    async fn write(&mut self, lsn: Lsn, rows: &[OutputRow]) -> Result<(), SinkError> {
        (**self).write(lsn, rows).await
    }

    async fn write_chunks(
        &mut self,
        lsn: Lsn,
        rows: &mut (dyn RowChunks + Send),
    ) -> Result<(), SinkError> {
        (**self).write_chunks(lsn, rows).await
    }

    async fn replace_all(
        &mut self,
        lsn: Lsn,
        rows: &mut (dyn RowChunks + Send),
    ) -> Result<(), SinkError> {
        (**self).replace_all(lsn, rows).await
    }

    async fn submit(&mut self, lsn: Lsn, rows: Vec<OutputRow>) -> Result<(), SinkError> {
        (**self).submit(lsn, rows).await
    }

    async fn confirm(&mut self) -> Result<Option<Lsn>, SinkError> {
        (**self).confirm().await
    }
}
