//! The PostgreSQL sink: aggregate tables and the progress row in Info Mart.
//!
//! One batch is one transaction: per table, one multi-row upsert
//! (`INSERT … SELECT FROM unnest(…) ON CONFLICT … DO UPDATE`) and one
//! multi-row delete, then the progress row. Statements are prepared once.

use super::{Sink, SinkError};
use crate::aggregate::catalog::FAMILIES;
use crate::aggregate::family::{Agg, Family};
use crate::aggregate::{Level, OutputRow, Settings};
use raa_state::Lsn;
use std::collections::HashMap;
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

struct TableStatements {
    upsert: Statement,
    delete: Statement,
}

pub struct PgSink {
    client: Client,
    slot: String,
    tables: HashMap<(u16, Level), TableStatements>,
    progress_stmt: Statement,
}

fn sql_err(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SinkError {
    let what = what.into();
    move |source| SinkError::Sql { what, source }
}

impl PgSink {
    /// Prepares the statements for every family at the configured levels.
    /// The tables must exist (`raa init`).
    pub async fn new(client: Client, slot: &str, settings: &Settings) -> Result<PgSink, SinkError> {
        let mut tables = HashMap::new();
        for (idx, family) in FAMILIES.iter().enumerate() {
            for &level in &settings.levels {
                let table = family.table_name(level);
                let upsert = client
                    .prepare(&upsert_sql(family, &table))
                    .await
                    .map_err(sql_err(format!("prepare upsert into {table}")))?;
                let delete = client
                    .prepare(&delete_sql(family, &table))
                    .await
                    .map_err(sql_err(format!("prepare delete from {table}")))?;
                tables.insert((idx as u16, level), TableStatements { upsert, delete });
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
        Ok(PgSink {
            client,
            slot: slot.to_owned(),
            tables,
            progress_stmt,
        })
    }
}

fn upsert_sql(family: &Family, table: &str) -> String {
    let key: Vec<&str> = std::iter::once("date_time_key")
        .chain(family.group_columns())
        .collect();
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

fn delete_sql(family: &Family, table: &str) -> String {
    let key: Vec<&str> = std::iter::once("date_time_key")
        .chain(family.group_columns())
        .collect();
    let unnest: Vec<String> = (1..=key.len()).map(|i| format!("${i}::int8[]")).collect();
    let mut cond = vec!["t.date_time_key = d.date_time_key".to_owned()];
    cond.extend(
        family
            .group_columns()
            .map(|c| format!("t.{c} IS NOT DISTINCT FROM d.{c}")),
    );
    format!(
        "DELETE FROM {table} t USING unnest({}) AS d({}) WHERE {}",
        unnest.join(", "),
        key.join(", "),
        cond.join(" AND ")
    )
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

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![&self.buckets];
        p.extend(self.groups.iter().map(|c| c as &(dyn ToSql + Sync)));
        p.extend(self.measures.iter().map(|c| c as &(dyn ToSql + Sync)));
        p
    }
}

impl Sink for PgSink {
    async fn progress(&mut self) -> Result<Option<Lsn>, SinkError> {
        read_progress(&self.client, &self.slot).await
    }

    async fn write(&mut self, lsn: Lsn, rows: &[OutputRow]) -> Result<(), SinkError> {
        let mut by_table: HashMap<(u16, Level), (Columns, Columns)> = HashMap::new();
        for row in rows {
            let family = FAMILIES[usize::from(row.family)];
            let (up, del) = by_table
                .entry((row.family, row.level))
                .or_insert_with(|| (Columns::new(family, true), Columns::new(family, false)));
            if row.values.is_some() {
                up.push(row)
            } else {
                del.push(row)
            }
        }
        let tx = self.client.transaction().await.map_err(sql_err("begin"))?;
        for ((family, level), (up, del)) in &by_table {
            let Some(stmts) = self.tables.get(&(*family, *level)) else {
                continue;
            };
            let table = || FAMILIES[usize::from(*family)].table_name(*level);
            if !up.buckets.is_empty() {
                tx.execute(&stmts.upsert, &up.params())
                    .await
                    .map_err(sql_err(format!("upsert into {}", table())))?;
            }
            if !del.buckets.is_empty() {
                tx.execute(&stmts.delete, &del.params())
                    .await
                    .map_err(sql_err(format!("delete from {}", table())))?;
            }
        }
        let updated = tx
            .execute(&self.progress_stmt, &[&self.slot, &lsn.to_string()])
            .await
            .map_err(sql_err("progress update"))?;
        if updated == 0 {
            let recorded = read_progress(&tx, &self.slot).await?.unwrap_or_default();
            return Err(SinkError::ProgressRegressed {
                slot: self.slot.clone(),
                recorded,
                lsn,
            });
        }
        tx.commit().await.map_err(sql_err("commit"))
    }
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

/// Whether `family`'s measure at `i` may be NULL in the table (a maximum).
pub fn nullable_measure(family: &Family, i: usize) -> bool {
    matches!(family.measures[i].agg, Agg::Max(_))
}
