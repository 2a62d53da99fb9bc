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
use crate::aggregate::Engine;
use crate::decode::{Change, Transaction, Tuple};
use crate::schema::{RowKey, Value, TABLES};
use crate::source::snapshot::{self, SnapshotError};
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

/// The changes that bring the state's view of `range` (and of every
/// dimension) to what Info Mart holds now, as one transaction to apply.
pub async fn changes(
    client: &tokio_postgres::Client,
    engine: &Engine,
    range: Range,
    at: Lsn,
) -> Result<Transaction, ReaggregateError> {
    let mut changes = Vec::new();
    for spec in TABLES {
        let table = spec.table;
        let mut seen = HashSet::new();
        let push = |changes: &mut Vec<Change>, seen: &mut HashSet<RowKey>, tuple: Tuple| {
            if let Some(Some(Value::Int(k))) = tuple.0.first() {
                seen.insert(RowKey(*k));
            }
            changes.push(Change::Insert { table, new: tuple });
        };
        if Dim::of_table(table).is_some() {
            let mut rows = Box::pin(snapshot::rows(client, spec).await?);
            while let Some(t) = rows.next().await {
                push(&mut changes, &mut seen, t?);
            }
            for key in engine.dim_keys(table) {
                if !seen.contains(&key) {
                    changes.push(Change::Delete { table, key });
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
            push(&mut changes, &mut seen, t?);
        }
        // Keys the state places in the range but the query did not return:
        // gone, or moved out of the range (then re-read by key).
        let missing: Vec<i64> = engine
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
            push(&mut changes, &mut seen, t?);
        }
        for key in missing {
            if !seen.contains(&RowKey(key)) {
                changes.push(Change::Delete {
                    table,
                    key: RowKey(key),
                });
            }
        }
    }
    Ok(Transaction {
        xid: 0,
        commit_lsn: at,
        end_lsn: at,
        commit_ts_micros: 0,
        changes,
    })
}
