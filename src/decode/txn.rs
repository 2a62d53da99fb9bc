//! Transaction framing: changes only between Begin and Commit, checked.
//!
//! A nested Begin, a Commit without Begin, a Commit whose LSN differs from
//! Begin's final LSN, or a row change outside a transaction is an error, never
//! skipped. A [`Transaction`] is produced at its Commit; a large one's earlier
//! changes are taken out as [`TxnPart`]s on the way (see [`TxnAssembler::take_part`]).

use super::pgoutput::{DecodeError, Message, OldTuple};
use super::relation::{MapError, Relations};
use super::{Change, Transaction, TxnPart, PG_EPOCH_OFFSET_MICROS};
use raa_state::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("Begin of transaction {xid} while transaction {open} is open")]
    NestedBegin { xid: u32, open: u32 },
    #[error("Commit at {commit_lsn} outside any transaction")]
    CommitWithoutBegin { commit_lsn: Lsn },
    #[error("Commit at {commit_lsn} does not match the open transaction's final LSN {final_lsn}")]
    CommitMismatch { commit_lsn: Lsn, final_lsn: Lsn },
    #[error("{what} outside any transaction")]
    OutsideTransaction { what: &'static str },
    #[error("in transaction {xid} (commits at {final_lsn})")]
    Map {
        xid: u32,
        final_lsn: Lsn,
        #[source]
        source: MapError,
    },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

struct Open {
    xid: u32,
    final_lsn: Lsn,
    changes: Vec<Change>,
}

/// Changes of an open transaction held before they are taken out as a part.
/// About 10 MB of decoded IRF rows.
pub const PART_CHANGES: usize = 10_000;

/// Builds transactions from a stream of decoded messages.
pub struct TxnAssembler {
    relations: Relations,
    open: Option<Open>,
    part_changes: usize,
}

impl Default for TxnAssembler {
    fn default() -> Self {
        TxnAssembler::with_part_changes(PART_CHANGES)
    }
}

impl TxnAssembler {
    /// An assembler whose parts hold `changes` changes (tests use small ones).
    pub fn with_part_changes(changes: usize) -> TxnAssembler {
        TxnAssembler {
            relations: Relations::default(),
            open: None,
            part_changes: changes.max(1),
        }
    }

    /// The open transaction's changes so far, once there are a part's worth:
    /// a large transaction is handed on in parts instead of held whole.
    /// pgoutput (protocol v1) sends a transaction only once it has committed,
    /// so a part's changes are committed ones; the rest come with the Commit.
    pub fn take_part(&mut self) -> Option<TxnPart> {
        let open = self.open.as_mut()?;
        if open.changes.len() < self.part_changes {
            return None;
        }
        Some(TxnPart {
            xid: open.xid,
            commit_lsn: open.final_lsn,
            changes: std::mem::take(&mut open.changes),
        })
    }

    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    pub fn begin(
        &mut self,
        final_lsn: Lsn,
        xid: u32,
        _commit_ts_pg: i64,
    ) -> Result<(), FramingError> {
        if let Some(open) = &self.open {
            return Err(FramingError::NestedBegin {
                xid,
                open: open.xid,
            });
        }
        self.open = Some(Open {
            xid,
            final_lsn,
            changes: Vec::new(),
        });
        Ok(())
    }

    pub fn commit(
        &mut self,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts_pg: i64,
    ) -> Result<Transaction, FramingError> {
        let open = self
            .open
            .take()
            .ok_or(FramingError::CommitWithoutBegin { commit_lsn })?;
        if open.final_lsn != commit_lsn {
            return Err(FramingError::CommitMismatch {
                commit_lsn,
                final_lsn: open.final_lsn,
            });
        }
        Ok(Transaction {
            xid: open.xid,
            commit_lsn,
            end_lsn,
            commit_ts_micros: commit_ts_pg.saturating_add(PG_EPOCH_OFFSET_MICROS),
            changes: open.changes,
        })
    }

    /// Takes one message; returns the transaction it completes, if any.
    pub fn push(&mut self, msg: &Message<'_>) -> Result<Option<Transaction>, FramingError> {
        match msg {
            Message::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => self.begin(*final_lsn, *xid, *commit_ts).map(|()| None),
            Message::Commit {
                commit_lsn,
                end_lsn,
                commit_ts,
                ..
            } => self.commit(*commit_lsn, *end_lsn, *commit_ts).map(Some),
            Message::Relation(rel) => {
                let result = self.relations.on_relation(rel);
                result.map_err(|e| self.map_err(e)).map(|()| None)
            }
            Message::Type { .. } => Ok(None),
            Message::Message { transactional, .. } => {
                if *transactional && self.open.is_none() {
                    return Err(FramingError::OutsideTransaction {
                        what: "transactional logical message",
                    });
                }
                Ok(None)
            }
            Message::Origin { .. } => self.open_txn("Origin").map(|_| None),
            Message::Insert { relation_id, new } => {
                let mapped = self
                    .relations
                    .tuple(*relation_id, new)
                    .map_err(|e| self.map_err(e))?;
                if let Some((table, new)) = mapped {
                    self.open_txn("Insert")?
                        .changes
                        .push(Change::Insert { table, new });
                } else {
                    self.open_txn("Insert")?;
                }
                Ok(None)
            }
            Message::Update {
                relation_id,
                old,
                new,
            } => {
                let old_key = match old {
                    Some(o) => self
                        .relations
                        .key(*relation_id, o.data())
                        .map_err(|e| self.map_err(e))?,
                    None => None,
                };
                let mapped = self
                    .relations
                    .tuple(*relation_id, new)
                    .map_err(|e| self.map_err(e))?;
                let open = self.open_txn("Update")?;
                if let Some((table, new)) = mapped {
                    open.changes.push(Change::Update {
                        table,
                        old_key: old_key.map(|(_, k)| k),
                        new,
                    });
                }
                Ok(None)
            }
            Message::Delete { relation_id, old } => {
                let data = match old {
                    OldTuple::Key(t) | OldTuple::Full(t) => t,
                };
                let key = self
                    .relations
                    .key(*relation_id, data)
                    .map_err(|e| self.map_err(e))?;
                let open = self.open_txn("Delete")?;
                if let Some((table, key)) = key {
                    open.changes.push(Change::Delete { table, key });
                }
                Ok(None)
            }
            Message::Truncate { relation_ids, .. } => {
                let mut tables = Vec::new();
                for id in relation_ids {
                    if let Some(t) = self.relations.table(*id).map_err(|e| self.map_err(e))? {
                        tables.push(t);
                    }
                }
                let open = self.open_txn("Truncate")?;
                if !tables.is_empty() {
                    open.changes.push(Change::Truncate { tables });
                }
                Ok(None)
            }
        }
    }

    fn open_txn(&mut self, what: &'static str) -> Result<&mut Open, FramingError> {
        self.open
            .as_mut()
            .ok_or(FramingError::OutsideTransaction { what })
    }

    fn map_err(&self, source: MapError) -> FramingError {
        let (xid, final_lsn) = self
            .open
            .as_ref()
            .map_or((0, Lsn::ZERO), |o| (o.xid, o.final_lsn));
        FramingError::Map {
            xid,
            final_lsn,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::pgoutput::{ColumnDef, Datum, RelationBody, TupleData};
    use crate::decode::Tuple;
    use crate::schema::{RowKey, Table, Value};

    fn rel<'a>(id: u32, name: &'a str, cols: &'a [(&'a str, u32)]) -> Message<'a> {
        Message::Relation(RelationBody {
            id,
            namespace: "public",
            name,
            replica_identity: b'd',
            columns: cols
                .iter()
                .map(|(n, oid)| ColumnDef {
                    flags: 0,
                    name: n,
                    type_oid: *oid,
                    type_modifier: -1,
                })
                .collect(),
        })
    }

    const TENANT_COLS: &[(&str, u32)] =
        &[("tenant_key", 23), ("tenant_name", 25), ("time_zone", 25)];

    fn begin(lsn: u64, xid: u32) -> Message<'static> {
        Message::Begin {
            final_lsn: Lsn(lsn),
            commit_ts: 0,
            xid,
        }
    }

    fn commit(lsn: u64) -> Message<'static> {
        Message::Commit {
            flags: 0,
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 8),
            commit_ts: 0,
        }
    }

    #[test]
    fn assembles_a_multi_table_transaction() {
        let mut a = TxnAssembler::default();
        assert!(a.push(&rel(1, "tenant", TENANT_COLS)).unwrap().is_none());
        a.push(&begin(100, 5)).unwrap();
        a.push(&Message::Insert {
            relation_id: 1,
            new: TupleData(vec![Datum::Text(b"3"), Datum::Text(b"x"), Datum::Null]),
        })
        .unwrap();
        // A relation announced mid-transaction, for a table raa ignores.
        a.push(&rel(2, "other", &[("id", 23)])).unwrap();
        a.push(&Message::Insert {
            relation_id: 2,
            new: TupleData(vec![Datum::Text(b"1")]),
        })
        .unwrap();
        a.push(&Message::Update {
            relation_id: 1,
            old: Some(OldTuple::Key(TupleData(vec![
                Datum::Text(b"3"),
                Datum::Null,
                Datum::Null,
            ]))),
            new: TupleData(vec![Datum::Text(b"4"), Datum::Unchanged, Datum::Null]),
        })
        .unwrap();
        a.push(&Message::Delete {
            relation_id: 1,
            old: OldTuple::Key(TupleData(vec![Datum::Text(b"4"), Datum::Null, Datum::Null])),
        })
        .unwrap();
        a.push(&Message::Truncate {
            options: 0,
            relation_ids: vec![2, 1],
        })
        .unwrap();
        let txn = a.push(&commit(100)).unwrap().unwrap();
        assert_eq!(txn.xid, 5);
        assert_eq!(txn.end_lsn, Lsn(108));
        assert_eq!(txn.commit_ts_micros, PG_EPOCH_OFFSET_MICROS);
        assert_eq!(
            txn.changes,
            vec![
                Change::Insert {
                    table: Table::Tenant,
                    new: Tuple(vec![
                        Some(Value::Int(3)),
                        Some(Value::Text("x".into())),
                        Some(Value::Null)
                    ]),
                },
                Change::Update {
                    table: Table::Tenant,
                    old_key: Some(RowKey(3)),
                    new: Tuple(vec![Some(Value::Int(4)), None, Some(Value::Null)]),
                },
                Change::Delete {
                    table: Table::Tenant,
                    key: RowKey(4),
                },
                Change::Truncate {
                    tables: vec![Table::Tenant],
                },
            ]
        );
        assert!(!a.in_transaction());
    }

    #[test]
    fn a_large_transaction_is_taken_out_in_parts_in_order() {
        let mut a = TxnAssembler::with_part_changes(2);
        a.push(&rel(1, "tenant", TENANT_COLS)).unwrap();
        assert_eq!(a.take_part(), None, "no transaction open");
        a.push(&begin(100, 5)).unwrap();
        let insert = |k: &'static str| Message::Insert {
            relation_id: 1,
            new: TupleData(vec![Datum::Text(k.as_bytes()), Datum::Null, Datum::Null]),
        };
        let mut parts = Vec::new();
        for k in ["1", "2", "3", "4", "5"] {
            a.push(&insert(k)).unwrap();
            parts.extend(a.take_part());
        }
        let txn = a.push(&commit(100)).unwrap().unwrap();
        let keys = |changes: &[Change]| -> Vec<i64> {
            changes
                .iter()
                .map(|c| match c {
                    Change::Insert { new, .. } => match &new.0[0] {
                        Some(Value::Int(k)) => *k,
                        other => panic!("{other:?}"),
                    },
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.xid == 5 && p.commit_lsn == Lsn(100)));
        assert_eq!(keys(&parts[0].changes), [1, 2]);
        assert_eq!(keys(&parts[1].changes), [3, 4]);
        assert_eq!(keys(&txn.changes), [5], "the rest comes with the commit");
        assert_eq!(a.take_part(), None);
    }

    #[test]
    fn framing_violations_are_errors() {
        let mut a = TxnAssembler::default();
        a.push(&rel(1, "tenant", TENANT_COLS)).unwrap();
        let insert = Message::Insert {
            relation_id: 1,
            new: TupleData(vec![Datum::Text(b"3"), Datum::Null, Datum::Null]),
        };
        assert!(matches!(
            a.push(&insert),
            Err(FramingError::OutsideTransaction { .. })
        ));
        assert!(matches!(
            a.push(&commit(5)),
            Err(FramingError::CommitWithoutBegin { .. })
        ));
        a.push(&begin(10, 1)).unwrap();
        assert!(matches!(
            a.push(&begin(20, 2)),
            Err(FramingError::NestedBegin { .. })
        ));
        assert!(matches!(
            a.push(&commit(11)),
            Err(FramingError::CommitMismatch { .. })
        ));
        let unknown = Message::Insert {
            relation_id: 42,
            new: TupleData(vec![]),
        };
        a.push(&begin(30, 3)).unwrap();
        let err = a.push(&unknown).unwrap_err();
        assert!(err.to_string().contains("transaction 3"), "{err}");
    }
}
