//! `raa verify`: recompute every aggregate table from the facts with plain SQL
//! (the family declarations rendered by [`crate::aggregate::family`]) and
//! diff it against what raa wrote. `EXCEPT ALL` both ways treats NULL group
//! values as equal, as the tables' keys do.

use crate::aggregate::catalog::FAMILIES;
use crate::aggregate::{Level, Settings};
use tokio_postgres::Client;

/// One table's differences.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDiff {
    pub table: String,
    /// Rows the facts give that the table lacks or holds otherwise (as JSON).
    pub expected_only: Vec<String>,
    /// Rows the table holds that the facts do not give (as JSON).
    pub actual_only: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("verifying {table} failed")]
pub struct VerifyError {
    pub table: String,
    #[source]
    pub source: tokio_postgres::Error,
}

/// The SQL listing the differences of one family table.
pub fn diff_sql(family_idx: usize, level: Level, settings: &Settings) -> String {
    let family = FAMILIES[family_idx];
    let reference = family.reference_sql(level, &settings.params, settings.subhr_seconds);
    let cols: Vec<&str> = family
        .key_columns()
        .chain(family.measures.iter().map(|m| m.name))
        .collect();
    format!(
        "WITH expected AS ({reference}),\n\
         actual AS (SELECT {} FROM {})\n\
         SELECT 'expected', to_jsonb(e)::text FROM (SELECT * FROM expected EXCEPT ALL SELECT * FROM actual) e\n\
         UNION ALL\n\
         SELECT 'actual', to_jsonb(a)::text FROM (SELECT * FROM actual EXCEPT ALL SELECT * FROM expected) a\n\
         ORDER BY 2",
        cols.join(", "),
        family.table_name(level)
    )
}

/// Diffs every family table at the configured levels; only tables with
/// differences are returned.
pub async fn verify(client: &Client, settings: &Settings) -> Result<Vec<TableDiff>, VerifyError> {
    let mut out = Vec::new();
    for (idx, family) in FAMILIES.iter().enumerate() {
        for &level in &settings.levels {
            let table = family.table_name(level);
            let rows = client
                .query(&diff_sql(idx, level, settings), &[])
                .await
                .map_err(|source| VerifyError {
                    table: table.clone(),
                    source,
                })?;
            let mut diff = TableDiff {
                table,
                expected_only: Vec::new(),
                actual_only: Vec::new(),
            };
            for row in rows {
                let (side, json): (&str, String) = (row.get(0), row.get(1));
                if side == "expected" {
                    diff.expected_only.push(json);
                } else {
                    diff.actual_only.push(json);
                }
            }
            if !diff.expected_only.is_empty() || !diff.actual_only.is_empty() {
                out.push(diff);
            }
        }
    }
    Ok(out)
}
