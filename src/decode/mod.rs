//! Decode: pgoutput bytes in, whole typed source transactions out.
//!
//! Three pure pieces, no I/O:
//! - [`pgoutput`] parses one pgoutput (protocol v1, text mode) message from bytes.
//! - [`relation`] remembers Relation messages and maps each relation's columns
//!   onto raa's [`crate::schema`] slots *by name*, parsing text values to typed ones.
//! - [`txn`] checks transaction framing (Begin … Commit) and assembles a
//!   [`Transaction`] of [`Change`]s.
//!
//! Invariant: a [`Transaction`] is only produced at its Commit. A large one
//! comes as [`TxnPart`]s first, then the Transaction with the rest of its
//! changes; the pipeline never ends a batch between them.

pub mod pgoutput;
pub mod relation;
pub mod txn;

use crate::schema::{RowKey, Table, Value};
use raa_state::Lsn;

pub use pgoutput::DecodeError;
pub use relation::{MapError, Relations};
pub use txn::{FramingError, TxnAssembler, PART_CHANGES};

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// One committed source transaction, with the changes to the tables raa reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub xid: u32,
    /// LSN of the commit record (pgoutput Begin `final_lsn` / Commit `lsn`).
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: the position to acknowledge once durable,
    /// and the one raa deduplicates by on replay.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_ts_micros: i64,
    pub changes: Vec<Change>,
}

impl Transaction {
    /// Rows raa read itself with SQL (a backfill's snapshot, a
    /// reaggregation's range), applied as one transaction at `at`: no xid,
    /// no commit time.
    pub fn read_at(at: Lsn, changes: Vec<Change>) -> Transaction {
        Transaction {
            xid: 0,
            commit_lsn: at,
            end_lsn: at,
            commit_ts_micros: 0,
            changes,
        }
    }
}

/// The leading changes of a large transaction, before its Commit (see
/// [`TxnAssembler::take_part`]); its [`Transaction`] follows with the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnPart {
    pub xid: u32,
    pub commit_lsn: Lsn,
    pub changes: Vec<Change>,
}

/// One row's new values, slot by slot as in the table's [`crate::schema::TableSpec`].
/// `None` marks an unchanged TOAST value: the caller must take it from the row's
/// last stored image (or refuse), never read it as NULL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple(pub Vec<Option<Value>>);

/// A change to one row (or a TRUNCATE) of a table raa reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Insert {
        table: Table,
        new: Tuple,
    },
    Update {
        table: Table,
        /// The key the row had before, when it differs from the new key
        /// (a primary-key change) or the table has REPLICA IDENTITY FULL.
        old_key: Option<RowKey>,
        new: Tuple,
    },
    Delete {
        table: Table,
        key: RowKey,
    },
    Truncate {
        tables: Vec<Table>,
    },
}
