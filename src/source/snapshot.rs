//! The initial backfill's source: a new slot and the snapshot exported at its
//! consistent point.
//!
//! `CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT` on a replication session
//! returns the slot's consistent point and the name of a snapshot that sees
//! exactly the transactions committed before it. Reading the facts in that
//! snapshot and then streaming from the consistent point misses nothing and
//! counts nothing twice. The snapshot lives only while the replication session
//! stays open and idle, so [`ExportedSlot`] holds the session until the read
//! is done.

use super::setup::SetupError;
use super::SourceConfig;
use crate::decode::Tuple;
use crate::schema::{Kind, TableSpec, Value};
use futures_util::{Stream, StreamExt};
use pgwire_replication::{PgWireError, ReplicationClient};
use raa_state::Lsn;
use tokio_postgres::Client;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("replication session for the backfill: {what}")]
    Replication {
        what: &'static str,
        #[source]
        source: PgWireError,
    },
    #[error("the server answered {what} with something raa cannot read: {detail}")]
    Protocol { what: &'static str, detail: String },
    #[error("reading {table} in the exported snapshot")]
    Read {
        table: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("reading {table}.{column} in the exported snapshot")]
    Value {
        table: &'static str,
        column: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Setup(#[from] SetupError),
}

/// A freshly created slot whose exported snapshot is still valid.
pub struct ExportedSlot {
    /// Held open (and idle) to keep the snapshot alive.
    _session: ReplicationClient,
    /// Streaming from here follows the snapshot exactly.
    pub consistent_point: Lsn,
    pub snapshot: String,
    /// The source cluster's system identifier.
    pub system_id: String,
}

/// The cluster's system identifier, from a short replication session.
pub async fn system_id(cfg: &SourceConfig) -> Result<String, SnapshotError> {
    let mut session = ReplicationClient::connect_gated(cfg.replication())
        .await
        .map_err(repl("connect"))?;
    let id = session
        .identify_system()
        .await
        .map_err(repl("IDENTIFY_SYSTEM"))?;
    Ok(id.system_id)
}

fn repl(what: &'static str) -> impl FnOnce(PgWireError) -> SnapshotError {
    move |source| SnapshotError::Replication { what, source }
}

/// Creates `cfg.slot` (dropping an inactive leftover of that name first) and
/// exports its snapshot.
pub async fn create_slot(sql: &Client, cfg: &SourceConfig) -> Result<ExportedSlot, SnapshotError> {
    super::setup::drop_slot_if_exists(sql, &cfg.slot).await?;
    let mut session = ReplicationClient::connect_gated(cfg.replication())
        .await
        .map_err(repl("connect"))?;
    let system_id = session
        .identify_system()
        .await
        .map_err(repl("IDENTIFY_SYSTEM"))?
        .system_id;
    // The pre-15 spelling of SNAPSHOT 'export': accepted by every server
    // version with pgoutput.
    let rows = session
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
            cfg.slot
        ))
        .await
        .map_err(repl("CREATE_REPLICATION_SLOT"))?;
    let protocol = |detail: String| SnapshotError::Protocol {
        what: "CREATE_REPLICATION_SLOT",
        detail,
    };
    let row = rows
        .first()
        .filter(|r| r.len() >= 3)
        .ok_or_else(|| protocol(format!("{} rows", rows.len())))?;
    let text = |i: usize| {
        row[i]
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .ok_or_else(|| protocol(format!("column {i} is NULL")))
    };
    let point = text(1)?;
    let consistent_point = point
        .parse()
        .map_err(|_| protocol(format!("consistent point {point:?}")))?;
    let snapshot = text(2)?;
    if !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(protocol(format!("snapshot name {snapshot:?}")));
    }
    tracing::info!(slot = %cfg.slot, %consistent_point, "created replication slot with an exported snapshot");
    Ok(ExportedSlot {
        _session: session,
        consistent_point,
        snapshot,
        system_id,
    })
}

/// Opens a read-only transaction on `client` that sees the exported snapshot.
pub async fn begin(client: &Client, slot: &ExportedSlot) -> Result<(), SnapshotError> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            slot.snapshot
        ))
        .await
        .map_err(|source| SnapshotError::Read {
            table: "(snapshot)",
            source,
        })
}

/// The number of rows of `spec` in the open snapshot transaction.
pub async fn count(client: &Client, spec: &'static TableSpec) -> Result<u64, SnapshotError> {
    let n: i64 = client
        .query_one(&format!("SELECT count(*) FROM {}", spec.name), &[])
        .await
        .map_err(|source| SnapshotError::Read {
            table: spec.name,
            source,
        })?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Rows read with SQL (a backfill's, a reaggregation's) that are handed to
/// the engine at a time: what a query returns is never held whole.
pub const SLICE_ROWS: usize = 1_000;

/// Streams every row of `spec` as a tuple in the spec's column order.
pub async fn rows(
    client: &Client,
    spec: &'static TableSpec,
) -> Result<impl Stream<Item = Result<Tuple, SnapshotError>>, SnapshotError> {
    rows_where(client, spec, "true", &[]).await
}

/// Streams the rows of `spec` matching `condition` (SQL over the table's
/// columns, with `$n` parameters bound to `params`). Integer columns come
/// as `int8` (whatever their width in the table) and text columns as
/// `text`, both in binary: nothing to format on the server or to parse here.
pub async fn rows_where(
    client: &Client,
    spec: &'static TableSpec,
    condition: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<impl Stream<Item = Result<Tuple, SnapshotError>>, SnapshotError> {
    let read = |source| SnapshotError::Read {
        table: spec.name,
        source,
    };
    let columns: Vec<String> = spec
        .columns
        .iter()
        .map(|c| match c.kind {
            Kind::Int => format!("{}::int8", c.name),
            Kind::Text => format!("{}::text", c.name),
        })
        .collect();
    let stmt = format!(
        "SELECT {} FROM {} WHERE {condition}",
        columns.join(", "),
        spec.name
    );
    let stream = client
        .query_raw(&stmt, params.iter().copied())
        .await
        .map_err(read)?;
    Ok(stream.map(move |row| {
        let row = row.map_err(read)?;
        spec.columns
            .iter()
            .enumerate()
            .map(|(slot, column)| {
                let value = |source| SnapshotError::Value {
                    table: spec.name,
                    column: column.name,
                    source,
                };
                Ok(Some(match column.kind {
                    Kind::Int => row
                        .try_get::<_, Option<i64>>(slot)
                        .map_err(value)?
                        .map_or(Value::Null, Value::Int),
                    Kind::Text => row
                        .try_get::<_, Option<String>>(slot)
                        .map_err(value)?
                        .map_or(Value::Null, Value::Text),
                }))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Tuple)
    }))
}
