//! `raa verify`: recompute aggregate tables from the facts with plain SQL
//! (the family declarations rendered by [`crate::aggregate::family`]) and
//! diff them against what raa wrote. `EXCEPT ALL` both ways treats NULL group
//! values as equal, as the tables' keys do. A [`Slice`] narrows the check to
//! one family, one level and a range of buckets.

use crate::aggregate::catalog::{self, FAMILIES};
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
pub enum VerifyError {
    #[error("verifying {table} failed")]
    Query {
        table: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("there is no family {name:?}; the families are {known}")]
    UnknownFamily { name: String, known: String },
    #[error("level {level} is not among the configured levels ({configured})")]
    LevelNotConfigured {
        level: &'static str,
        configured: String,
    },
    #[error("{what} the verification's read-only transaction failed")]
    Transaction {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// The part of the aggregates to check; every field left `None` means all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slice {
    /// A family name (`agent`, `queue`, …).
    pub family: Option<String>,
    pub level: Option<Level>,
    /// Only buckets whose `date_time_key` is at or after this (epoch seconds).
    pub from: Option<i64>,
    /// Only buckets whose `date_time_key` is before this (epoch seconds).
    pub to: Option<i64>,
}

/// Reads a time bound: UTC epoch seconds, or an RFC 3339 instant
/// (`2026-11-01T00:00:00Z`, `2026-11-01T00:00:00-04:00`).
pub fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_second())
        .map_err(|e| format!("{text:?} is neither epoch seconds nor an RFC 3339 instant: {e}"))
}

/// The SQL listing the differences of one family table, within `[from, to)`.
pub fn diff_sql(
    family_idx: usize,
    level: Level,
    settings: &Settings,
    from: Option<i64>,
    to: Option<i64>,
) -> String {
    let family = FAMILIES[family_idx];
    let reference = family.reference_sql(level, &settings.params, settings.subhr_seconds, from);
    let cols: Vec<&str> = family
        .key_columns()
        .chain(family.measures.iter().map(|m| m.name))
        .collect();
    let mut range = vec!["TRUE".to_owned()];
    range.extend(from.map(|t| format!("date_time_key >= {t}")));
    range.extend(to.map(|t| format!("date_time_key < {t}")));
    let range = range.join(" AND ");
    format!(
        "WITH expected AS (SELECT * FROM ({reference}) r WHERE {range}),\n\
         actual AS (SELECT {} FROM {} WHERE {range})\n\
         SELECT 'expected', to_jsonb(e)::text FROM (SELECT * FROM expected EXCEPT ALL SELECT * FROM actual) e\n\
         UNION ALL\n\
         SELECT 'actual', to_jsonb(a)::text FROM (SELECT * FROM actual EXCEPT ALL SELECT * FROM expected) a\n\
         ORDER BY 2",
        cols.join(", "),
        family.table_name(level)
    )
}

/// The (family, level) tables a slice covers, or why the slice is invalid.
pub fn tables(slice: &Slice, settings: &Settings) -> Result<Vec<(usize, Level)>, VerifyError> {
    let families: Vec<usize> = match &slice.family {
        None => (0..FAMILIES.len()).collect(),
        Some(name) => match catalog::by_name(name) {
            Some((idx, _)) => vec![usize::from(idx)],
            None => {
                let known: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
                return Err(VerifyError::UnknownFamily {
                    name: name.clone(),
                    known: known.join(", "),
                });
            }
        },
    };
    let levels: Vec<Level> = match slice.level {
        None => settings.levels.clone(),
        Some(l) if settings.levels.contains(&l) => vec![l],
        Some(l) => {
            let configured: Vec<&str> = settings.levels.iter().map(|l| l.name()).collect();
            return Err(VerifyError::LevelNotConfigured {
                level: l.name(),
                configured: configured.join(", "),
            });
        }
    };
    Ok(families
        .into_iter()
        .flat_map(|f| levels.iter().map(move |&l| (f, l)))
        .collect())
}

/// Diffs every family table at the configured levels; only tables with
/// differences are returned.
pub async fn verify(client: &Client, settings: &Settings) -> Result<Vec<TableDiff>, VerifyError> {
    verify_slice(client, settings, &Slice::default()).await
}

/// Diffs the tables and bucket range `slice` selects; only tables with
/// differences are returned.
///
/// In a read-only transaction of its own on `client`: every table is
/// compared at one snapshot, and without PostgreSQL's JIT, whose compiling
/// of the recomputations cost more than running them (`catchup` bench,
/// 100 000 facts: 12.38 s with it, 6.97 s without).
pub async fn verify_slice(
    client: &Client,
    settings: &Settings,
    slice: &Slice,
) -> Result<Vec<TableDiff>, VerifyError> {
    let tables = tables(slice, settings)?;
    let begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL jit = off";
    control(client, begin, "starting").await?;
    let diffs = diff_tables(client, settings, slice, tables).await;
    match diffs {
        Ok(_) => control(client, "COMMIT", "ending").await?,
        // The query's error is the one to report.
        Err(_) => {
            let _ = client.batch_execute("ROLLBACK").await;
        }
    }
    diffs
}

/// Starts or ends the verification's transaction; `what` names the step.
async fn control(client: &Client, sql: &str, what: &'static str) -> Result<(), VerifyError> {
    client
        .batch_execute(sql)
        .await
        .map_err(|source| VerifyError::Transaction { what, source })
}

async fn diff_tables(
    client: &Client,
    settings: &Settings,
    slice: &Slice,
    tables: Vec<(usize, Level)>,
) -> Result<Vec<TableDiff>, VerifyError> {
    let mut out = Vec::new();
    for (idx, level) in tables {
        let table = FAMILIES[idx].table_name(level);
        let rows = client
            .query(&diff_sql(idx, level, settings, slice.from, slice.to), &[])
            .await
            .map_err(|source| VerifyError::Query {
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
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_epoch_seconds_or_rfc3339() {
        assert_eq!(parse_time("1793512800"), Ok(1_793_512_800));
        assert_eq!(parse_time("-5"), Ok(-5));
        assert_eq!(parse_time("2026-11-01T06:00:00Z"), Ok(1_793_512_800));
        assert_eq!(parse_time("2026-11-01T01:00:00-05:00"), Ok(1_793_512_800));
        assert!(parse_time("yesterday").unwrap_err().contains("yesterday"));
    }

    #[test]
    fn slices_select_tables_and_refuse_unknown_names() {
        let settings = Settings::default();
        let all = tables(&Slice::default(), &settings).unwrap();
        assert_eq!(all.len(), FAMILIES.len() * settings.levels.len());
        let one = Slice {
            family: Some("queue".into()),
            level: Some(Level::Week),
            ..Slice::default()
        };
        let got = tables(&one, &settings).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(FAMILIES[got[0].0].table_name(got[0].1), "ag2_queue_week");
        let bad = Slice {
            family: Some("agents".into()),
            ..Slice::default()
        };
        let err = tables(&bad, &settings).unwrap_err().to_string();
        assert!(err.contains("agents") && err.contains("i_session"), "{err}");
        let narrow = Settings {
            levels: vec![Level::Hour],
            ..Settings::default()
        };
        let err = tables(&one, &narrow).unwrap_err().to_string();
        assert!(err.contains("week") && err.contains("hour"), "{err}");
        let sql = diff_sql(got[0].0, Level::Week, &settings, Some(10), Some(20));
        assert!(
            sql.contains("date_time_key >= 10 AND date_time_key < 20"),
            "{sql}"
        );
    }
}
