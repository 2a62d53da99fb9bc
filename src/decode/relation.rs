//! Relation messages, and mapping a relation's columns onto raa's slots by name.
//!
//! A Relation can arrive at any time (after DDL); it replaces the mapping for
//! its id. Columns raa does not use are skipped; a column raa needs that the
//! relation lacks, or that has an incompatible type, is refused at once.

use super::pgoutput::{Datum, RelationBody, TupleData};
use super::Tuple;
use crate::schema::{Kind, RowKey, Table, TableSpec, Value};
use std::collections::HashMap;

const INT2: u32 = 21;
const INT4: u32 = 23;
const INT8: u32 = 20;
const TEXT_TYPES: [u32; 4] = [25, 1043, 1042, 19]; // text, varchar, bpchar, name

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("table {table} (relation {relation_id}) has no column {column}, which raa reads")]
    MissingColumn {
        table: &'static str,
        relation_id: u32,
        column: &'static str,
    },
    #[error("column {table}.{column} has type oid {type_oid}; raa reads it as {expected}")]
    ColumnType {
        table: &'static str,
        column: &'static str,
        type_oid: u32,
        expected: &'static str,
    },
    #[error("change for relation {0}, which no Relation message announced")]
    UnknownRelation(u32),
    #[error("{table}.{column}: value {value:?} is not an integer raa can read")]
    BadInt {
        table: &'static str,
        column: &'static str,
        value: String,
    },
    #[error("{table}.{column}: value is not valid UTF-8")]
    BadText {
        table: &'static str,
        column: &'static str,
    },
    #[error("{table}.{column}: binary-format value; raa asks for text format")]
    Binary {
        table: &'static str,
        column: &'static str,
    },
    #[error("{table}: primary key {column} is NULL or unchanged-TOAST in a key tuple")]
    NoKey {
        table: &'static str,
        column: &'static str,
    },
}

enum Mapping {
    /// A table raa does not read.
    Ignored,
    /// `slots[position]` is the spec slot of relation column `position`, if used.
    Bound {
        spec: &'static TableSpec,
        slots: Vec<Option<usize>>,
    },
}

/// Every relation announced on the stream.
#[derive(Default)]
pub struct Relations {
    by_id: HashMap<u32, Mapping>,
}

impl Relations {
    /// Records (or replaces) a relation's mapping.
    pub fn on_relation(&mut self, rel: &RelationBody<'_>) -> Result<(), MapError> {
        let Some(table) = Table::by_name(rel.name) else {
            self.by_id.insert(rel.id, Mapping::Ignored);
            return Ok(());
        };
        let spec = table.spec();
        let mut slots = vec![None; rel.columns.len()];
        for (slot, col) in spec.columns.iter().enumerate() {
            let pos = rel.columns.iter().position(|c| c.name == col.name).ok_or(
                MapError::MissingColumn {
                    table: spec.name,
                    relation_id: rel.id,
                    column: col.name,
                },
            )?;
            let oid = rel.columns[pos].type_oid;
            let ok = match col.kind {
                Kind::Int => [INT2, INT4, INT8].contains(&oid),
                Kind::Text => TEXT_TYPES.contains(&oid),
            };
            if !ok {
                return Err(MapError::ColumnType {
                    table: spec.name,
                    column: col.name,
                    type_oid: oid,
                    expected: match col.kind {
                        Kind::Int => "smallint, integer or bigint",
                        Kind::Text => "text",
                    },
                });
            }
            slots[pos] = Some(slot);
        }
        self.by_id.insert(rel.id, Mapping::Bound { spec, slots });
        Ok(())
    }

    fn mapping(&self, relation_id: u32) -> Result<&Mapping, MapError> {
        self.by_id
            .get(&relation_id)
            .ok_or(MapError::UnknownRelation(relation_id))
    }

    /// The table a relation id stands for; `None` for a table raa does not read.
    pub fn table(&self, relation_id: u32) -> Result<Option<Table>, MapError> {
        Ok(match self.mapping(relation_id)? {
            Mapping::Ignored => None,
            Mapping::Bound { spec, .. } => Some(spec.table),
        })
    }

    /// Maps a new-row tuple onto slots; `None` for a table raa does not read.
    pub fn tuple(
        &self,
        relation_id: u32,
        data: &TupleData<'_>,
    ) -> Result<Option<(Table, Tuple)>, MapError> {
        let Mapping::Bound { spec, slots } = self.mapping(relation_id)? else {
            return Ok(None);
        };
        let mut out = vec![Some(Value::Null); spec.columns.len()];
        for (datum, slot) in data.0.iter().zip(slots) {
            let Some(slot) = *slot else { continue };
            out[slot] = match datum {
                Datum::Null => Some(Value::Null),
                Datum::Unchanged => None,
                Datum::Text(bytes) => Some(parse(spec, slot, bytes)?),
                Datum::Binary(_) => {
                    return Err(MapError::Binary {
                        table: spec.name,
                        column: spec.columns[slot].name,
                    })
                }
            };
        }
        Ok(Some((spec.table, Tuple(out))))
    }

    /// The primary key of a key (or full old) tuple; `None` for a table raa does not read.
    pub fn key(
        &self,
        relation_id: u32,
        data: &TupleData<'_>,
    ) -> Result<Option<(Table, RowKey)>, MapError> {
        let Some((table, tuple)) = self.tuple(relation_id, data)? else {
            return Ok(None);
        };
        match tuple.0.first() {
            Some(Some(Value::Int(k))) => Ok(Some((table, RowKey(*k)))),
            _ => Err(MapError::NoKey {
                table: table.name(),
                column: table.spec().columns[0].name,
            }),
        }
    }
}

fn parse(spec: &'static TableSpec, slot: usize, bytes: &[u8]) -> Result<Value, MapError> {
    let column = spec.columns[slot].name;
    let text = std::str::from_utf8(bytes).map_err(|_| MapError::BadText {
        table: spec.name,
        column,
    })?;
    match spec.columns[slot].kind {
        Kind::Text => Ok(Value::Text(text.to_owned())),
        Kind::Int => text
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| MapError::BadInt {
                table: spec.name,
                column,
                value: text.chars().take(40).collect(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::pgoutput::ColumnDef;
    use crate::schema::TENANT;

    fn col(name: &str, oid: u32) -> ColumnDef<'_> {
        ColumnDef {
            flags: 0,
            name,
            type_oid: oid,
            type_modifier: -1,
        }
    }

    fn tenant_rel(columns: Vec<ColumnDef<'_>>) -> RelationBody<'_> {
        RelationBody {
            id: 7,
            namespace: "public",
            name: "tenant",
            replica_identity: b'd',
            columns,
        }
    }

    #[test]
    fn maps_by_name_whatever_the_order_and_extra_columns() {
        let mut rels = Relations::default();
        rels.on_relation(&tenant_rel(vec![
            col("time_zone", 25),
            col("extra", 23),
            col("tenant_name", 1043),
            col("tenant_key", 23),
        ]))
        .unwrap();
        let data = TupleData(vec![
            Datum::Text(b"Asia/Kolkata"),
            Datum::Text(b"99"),
            Datum::Unchanged,
            Datum::Text(b"2"),
        ]);
        let (table, tuple) = rels.tuple(7, &data).unwrap().unwrap();
        assert_eq!(table, Table::Tenant);
        assert_eq!(
            tuple,
            Tuple(vec![
                Some(Value::Int(2)),
                None,
                Some(Value::Text("Asia/Kolkata".into()))
            ])
        );
        assert_eq!(
            rels.key(7, &data).unwrap(),
            Some((Table::Tenant, RowKey(2)))
        );
    }

    #[test]
    fn refuses_missing_and_mistyped_columns_and_bad_values() {
        let mut rels = Relations::default();
        let err = rels
            .on_relation(&tenant_rel(vec![col("tenant_key", 23)]))
            .unwrap_err();
        assert!(err.to_string().contains("no column tenant_name"), "{err}");
        let err = rels
            .on_relation(&tenant_rel(vec![
                col("tenant_key", 1700),
                col("tenant_name", 25),
                col("time_zone", 25),
            ]))
            .unwrap_err();
        assert!(
            matches!(
                err,
                MapError::ColumnType {
                    column: "tenant_key",
                    ..
                }
            ),
            "{err}"
        );
        rels.on_relation(&tenant_rel(vec![
            col("tenant_key", 20),
            col("tenant_name", 25),
            col("time_zone", 25),
        ]))
        .unwrap();
        let err = rels
            .tuple(
                7,
                &TupleData(vec![Datum::Text(b"1x"), Datum::Null, Datum::Null]),
            )
            .unwrap_err();
        assert!(err.to_string().contains("tenant.tenant_key"), "{err}");
        let err = rels
            .key(7, &TupleData(vec![Datum::Null, Datum::Null, Datum::Null]))
            .unwrap_err();
        assert!(matches!(err, MapError::NoKey { .. }), "{err}");
        assert!(matches!(
            rels.tuple(8, &TupleData(vec![])),
            Err(MapError::UnknownRelation(8))
        ));
        assert_eq!(TENANT.columns.len(), 3);
    }

    #[test]
    fn tables_raa_does_not_read_are_skipped() {
        let mut rels = Relations::default();
        let rel = RelationBody {
            id: 9,
            namespace: "public",
            name: "gcxi_notes",
            replica_identity: b'd',
            columns: vec![col("id", 23)],
        };
        rels.on_relation(&rel).unwrap();
        assert_eq!(
            rels.tuple(9, &TupleData(vec![Datum::Text(b"1")])).unwrap(),
            None
        );
        assert_eq!(rels.table(9).unwrap(), None);
    }
}
