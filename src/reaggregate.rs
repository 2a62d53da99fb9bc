//! `raa reaggregate --from T --to T`: rebuild a time range from the facts,
//! for facts changed where replication could not see them.
//!
//! The facts whose period overlaps the range are read from Info Mart *now*
//! and compared with the state: rows found are applied as inserts (an insert
//! replaces what the state holds for that key), keys the state holds in the
//! range that no longer exist are deleted, and the dimension tables are
//! re-read whole. The result is applied as one batch at the current durable
//! position, between two batches of the stream.
//!
//! Why that is safe while streaming continues: the read sees changes the
//! stream has not delivered yet. Every change the stream delivers sets a key
//! to a value or removes it, so replaying those changes after the
//! reaggregation lands each key on the same final value (a replayed insert
//! replaces, a replayed delete of a missing row does nothing).
//!
//! A running raa is asked through a request file in its state directory and
//! SIGUSR2; it answers in a result file. An idle state directory is served by
//! a catch-up run that handles the request once caught up.

use crate::aggregate::family::Dim;
use crate::aggregate::{Engine, Work};
use crate::decode::{Change, Transaction, Tuple};
use crate::schema::{RowKey, Table, Value, TABLES};
use crate::source::snapshot::{self, SnapshotError, SLICE_ROWS};
use futures_util::StreamExt;
use raa_state::Lsn;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

const REQUEST: &str = "reaggregate.request";
const RESULT: &str = "reaggregate.result";

#[derive(Debug, thiserror::Error)]
pub enum ReaggregateError {
    #[error("reaggregate: --from ({from}) must be before --to ({to})")]
    EmptyRange { from: i64, to: i64 },
    #[error("reaggregate request {path}: {op} failed")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("reaggregate request {path} is unreadable: {content:?}")]
    BadRequest { path: PathBuf, content: String },
    #[error(transparent)]
    Read(#[from] SnapshotError),
    #[error("reading the state")]
    Aggregate(#[from] crate::aggregate::AggregateError),
    #[error("aggregating the re-read rows")]
    Apply(#[source] crate::aggregate::AggregateError),
    #[error("the read failed on purpose after {slices} slices (test failpoint)")]
    Failpoint { slices: usize },
}

/// A time range `[from, to)` in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub from: i64,
    pub to: i64,
}

impl Range {
    pub fn new(from: i64, to: i64) -> Result<Range, ReaggregateError> {
        if from >= to {
            return Err(ReaggregateError::EmptyRange { from, to });
        }
        Ok(Range { from, to })
    }
}

/// Leaves a request in `state_dir` (replacing an older one).
pub fn request(state_dir: &Path, range: Range) -> Result<(), ReaggregateError> {
    let path = state_dir.join(REQUEST);
    let _ = std::fs::remove_file(state_dir.join(RESULT));
    let tmp = state_dir.join(format!("{REQUEST}.tmp"));
    let io = |op| {
        let path = path.clone();
        move |source| ReaggregateError::Io { path, op, source }
    };
    std::fs::write(&tmp, format!("from={}\nto={}\n", range.from, range.to)).map_err(io("write"))?;
    std::fs::rename(&tmp, &path).map_err(io("rename"))
}

/// The request pending in `state_dir`, if any.
pub fn pending(state_dir: &Path) -> Result<Option<Range>, ReaggregateError> {
    let path = state_dir.join(REQUEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ReaggregateError::Io {
                path,
                op: "read",
                source,
            })
        }
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('=')?.parse::<i64>().ok())
    };
    match (field("from"), field("to")) {
        (Some(from), Some(to)) => Range::new(from, to).map(Some),
        _ => Err(ReaggregateError::BadRequest {
            path,
            content: text.chars().take(200).collect(),
        }),
    }
}

/// Records the outcome and retires the request.
pub fn answer(state_dir: &Path, outcome: &str) -> Result<(), ReaggregateError> {
    let path = state_dir.join(RESULT);
    std::fs::write(&path, format!("{outcome}\n")).map_err(|source| ReaggregateError::Io {
        path: path.clone(),
        op: "write",
        source,
    })?;
    let request = state_dir.join(REQUEST);
    std::fs::remove_file(&request).map_err(|source| ReaggregateError::Io {
        path: request,
        op: "remove",
        source,
    })
}

/// The outcome of the last request, once answered.
pub fn result(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(state_dir.join(RESULT))
        .ok()
        .map(|t| t.trim().to_owned())
}

/// Applies to `work` the changes that bring the state's view of `range` (and
/// of every dimension) to what Info Mart holds now, [`SLICE_ROWS`] at a time
/// (the work spills past its bound, so a range of any size fits), as one
/// transaction at `at`; returns how many changes.
///
/// After an error the work and the engine must be dropped: the slices
/// applied before it changed the engine's dimension rows. With
/// `fail_after`, the read fails after that many slices (a test hook: a lost
/// connection).
pub async fn apply(
    client: &tokio_postgres::Client,
    engine: &mut Engine,
    work: &mut Work,
    range: Range,
    at: Lsn,
    fail_after: Option<usize>,
) -> Result<usize, ReaggregateError> {
    let mut out = Slices {
        engine,
        work,
        at,
        changes: Vec::with_capacity(SLICE_ROWS),
        applied: 0,
        slices: 0,
        fail_after,
    };
    for spec in TABLES {
        let table = spec.table;
        let mut seen = HashSet::new();
        if Dim::of_table(table).is_some() {
            let mut rows = Box::pin(snapshot::rows(client, spec).await?);
            while let Some(t) = rows.next().await {
                out.found(table, &mut seen, t?)?;
            }
            // Applied so far or not, the engine holds the dimension rows
            // read (all seen) and those it held before.
            for key in out.engine.dim_keys(table) {
                if !seen.contains(&key) {
                    out.push(Change::Delete { table, key })?;
                }
            }
            continue;
        }
        let (Some(_), end) = (spec.slot("start_ts"), spec.slot("end_ts")) else {
            continue;
        };
        let overlap = match end {
            Some(_) => "start_ts < $2::int8 AND coalesce(end_ts, start_ts) >= $1::int8",
            None => "start_ts < $2::int8 AND start_ts >= $1::int8",
        };
        let mut rows =
            Box::pin(snapshot::rows_where(client, spec, overlap, &[&range.from, &range.to]).await?);
        while let Some(t) = rows.next().await {
            out.found(table, &mut seen, t?)?;
        }
        // Keys the state places in the range but the query did not return:
        // gone, or moved out of the range (then re-read by key). The scan
        // reads the store, which the work has not changed yet.
        let missing: Vec<i64> = out
            .engine
            .fact_keys_in_range(table, range.from, range.to)?
            .into_iter()
            .filter(|k| !seen.contains(k))
            .map(|k| k.0)
            .collect();
        if missing.is_empty() {
            continue;
        }
        let pk = spec.columns[0].name;
        let mut rows = Box::pin(
            snapshot::rows_where(
                client,
                spec,
                &format!("{pk} = ANY($1::int8[])"),
                &[&missing],
            )
            .await?,
        );
        while let Some(t) = rows.next().await {
            out.found(table, &mut seen, t?)?;
        }
        for key in missing {
            if !seen.contains(&RowKey(key)) {
                out.push(Change::Delete {
                    table,
                    key: RowKey(key),
                })?;
            }
        }
    }
    out.apply()?;
    Ok(out.applied)
}

/// Changes on their way into the work, [`SLICE_ROWS`] at a time.
struct Slices<'a> {
    engine: &'a mut Engine,
    work: &'a mut Work,
    at: Lsn,
    changes: Vec<Change>,
    applied: usize,
    slices: usize,
    fail_after: Option<usize>,
}

impl Slices<'_> {
    /// A row Info Mart holds: applied as an insert, its key noted in `seen`.
    fn found(
        &mut self,
        table: Table,
        seen: &mut HashSet<RowKey>,
        tuple: Tuple,
    ) -> Result<(), ReaggregateError> {
        if let Some(Some(Value::Int(k))) = tuple.0.first() {
            seen.insert(RowKey(*k));
        }
        self.push(Change::Insert { table, new: tuple })
    }

    fn push(&mut self, change: Change) -> Result<(), ReaggregateError> {
        self.changes.push(change);
        if self.changes.len() < SLICE_ROWS {
            return Ok(());
        }
        self.apply()
    }

    fn apply(&mut self) -> Result<(), ReaggregateError> {
        if self.changes.is_empty() {
            return Ok(());
        }
        if self.fail_after == Some(self.slices) {
            return Err(ReaggregateError::Failpoint {
                slices: self.slices,
            });
        }
        let changes = std::mem::replace(&mut self.changes, Vec::with_capacity(SLICE_ROWS));
        self.applied += changes.len();
        self.slices += 1;
        let txn = Transaction::read_at(self.at, changes);
        let (engine, work) = (&mut *self.engine, &mut *self.work);
        crate::pipeline::blocking(|| engine.apply(work, txn)).map_err(ReaggregateError::Apply)
    }
}
