//! Binary COPY of aggregate rows into one table, for the rewrite of every
//! table after a backfill: the rows go in as they are, without the
//! `ON CONFLICT` probe per row and the arrays an upsert builds and unnests.

use super::SinkError;
use crate::aggregate::catalog::FAMILIES;
use crate::aggregate::{Level, OutputRow};
use std::pin::Pin;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Statement, Transaction};

/// The name of the table of `family` at `level`, even for a family this
/// build does not know (a row read from a damaged state).
pub(super) fn table_name(family: u16, level: Level) -> String {
    match FAMILIES.get(usize::from(family)) {
        Some(f) => f.table_name(level),
        None => format!("(unknown family {family}) at level {level:?}"),
    }
}

/// The binary format carries an integer at exactly its column's width,
/// which the table decides (group keys are `integer`, the rest `bigint`).
#[derive(Clone, Copy, Debug)]
enum Width {
    I16,
    I32,
    I64,
}

impl Width {
    fn of(ty: &Type) -> Option<Width> {
        match *ty {
            Type::INT2 => Some(Width::I16),
            Type::INT4 => Some(Width::I32),
            Type::INT8 => Some(Width::I64),
            _ => None,
        }
    }

    /// `value` at this width; `None` when it does not fit.
    fn cell(self, value: Option<i64>) -> Option<Cell> {
        Some(match (self, value) {
            (Width::I16, v) => Cell::I16(v.map(i16::try_from).transpose().ok()?),
            (Width::I32, v) => Cell::I32(v.map(i32::try_from).transpose().ok()?),
            (Width::I64, v) => Cell::I64(v),
        })
    }
}

/// One value of a COPY row, at its column's width.
pub(super) enum Cell {
    I16(Option<i16>),
    I32(Option<i32>),
    I64(Option<i64>),
}

impl Cell {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::I16(v) => v,
            Cell::I32(v) => v,
            Cell::I64(v) => v,
        }
    }
}

/// One table's COPY: its statement and its columns (the key, then the
/// measures) with their types as the table declares them.
pub(super) struct CopyTable {
    target: (u16, Level),
    table: String,
    columns: Vec<&'static str>,
    types: Vec<Type>,
    widths: Vec<Width>,
    groups: usize,
    stmt: Statement,
}

/// An open COPY into one table; dropped unfinished, it is aborted.
pub(super) type Writer = Pin<Box<BinaryCopyInWriter>>;

impl CopyTable {
    /// Reads the column types of the table of `family` at `level` and
    /// prepares its COPY, in `tx`.
    pub(super) async fn prepare(
        tx: &Transaction<'_>,
        family: u16,
        level: Level,
    ) -> Result<CopyTable, SinkError> {
        let table = table_name(family, level);
        let Some(fam) = FAMILIES.get(usize::from(family)) else {
            return Err(SinkError::Unprepared { table });
        };
        let columns: Vec<&'static str> = fam
            .key_columns()
            .chain(fam.measures.iter().map(|m| m.name))
            .collect();
        let list = columns.join(", ");
        let (described, stmt) = futures_util::future::join(
            tx.prepare(&format!("SELECT {list} FROM {table}")),
            tx.prepare(&format!("COPY {table} ({list}) FROM STDIN (FORMAT binary)")),
        )
        .await;
        let what = || format!("prepare copy into {table}");
        let described = described.map_err(super::postgres::sql_err(what()))?;
        let stmt = stmt.map_err(super::postgres::sql_err(what()))?;
        let types: Vec<Type> = described
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect();
        let widths = columns
            .iter()
            .zip(&types)
            .map(|(&column, ty)| {
                Width::of(ty).ok_or_else(|| SinkError::ColumnType {
                    table: table.clone(),
                    column,
                    ty: ty.name().to_owned(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CopyTable {
            target: (family, level),
            table,
            columns,
            types,
            widths,
            groups: fam.group_by.len(),
            stmt,
        })
    }

    /// The family and level whose table this is.
    pub(super) fn target(&self) -> (u16, Level) {
        self.target
    }

    /// Starts the COPY.
    pub(super) async fn start(&self, tx: &Transaction<'_>) -> Result<Writer, SinkError> {
        let sink = tx
            .copy_in(&self.stmt)
            .await
            .map_err(super::postgres::sql_err(format!(
                "copy into {}",
                self.table
            )))?;
        Ok(Box::pin(BinaryCopyInWriter::new(sink, &self.types)))
    }

    /// Writes `row`; `cells` is scratch space, reused from row to row.
    pub(super) async fn write(
        &self,
        writer: &mut Writer,
        row: &OutputRow,
        cells: &mut Vec<Cell>,
    ) -> Result<(), SinkError> {
        let Some(values) = &row.values else {
            return Err(SinkError::DeletionInRewrite {
                table: self.table.clone(),
            });
        };
        let got = 1 + row.group.len() + values.len();
        if row.group.len() != self.groups || got != self.columns.len() {
            return Err(SinkError::RowShape {
                table: self.table.clone(),
                got,
                expected: self.columns.len(),
            });
        }
        cells.clear();
        let all = std::iter::once(Some(row.bucket))
            .chain(row.group.iter().copied())
            .chain(values.iter().copied());
        for ((value, width), &column) in all.zip(&self.widths).zip(&self.columns) {
            let cell = width.cell(value).ok_or_else(|| SinkError::OutOfRange {
                table: self.table.clone(),
                column,
                value: value.unwrap_or_default(),
            })?;
            cells.push(cell);
        }
        writer
            .as_mut()
            .write_raw(cells.iter().map(Cell::sql))
            .await
            .map_err(super::postgres::sql_err(format!(
                "copy into {}",
                self.table
            )))
    }

    /// Completes the COPY: where the server reports a row it refused.
    pub(super) async fn finish(&self, mut writer: Writer) -> Result<u64, SinkError> {
        writer
            .as_mut()
            .finish()
            .await
            .map_err(super::postgres::sql_err(format!(
                "copy into {}",
                self.table
            )))
    }
}
