//! Families are data: group-by columns, measures, a filter and attribution,
//! declared once (see [`super::catalog`]) and interpreted twice:
//! - evaluated in Rust on one fact to get its contribution ([`Family::contribute`]);
//! - rendered to SQL for the aggregate table DDL, the sink statements and the
//!   reference query that `raa verify` diffs against.
//!
//! NULL semantics are the same on both sides: a measure expression reads a NULL
//! column as 0 (SQL: `coalesce`), a predicate on a NULL column or a missing
//! dimension row is false (SQL: NULL in a `FILTER`/`WHERE` is not true).

use super::bucket::Level;
use crate::schema::{Row, Table, TableSpec};

/// A dimension a fact references through the foreign key of the same name
/// (`tenant_key`, `resource_key`, `technical_descriptor_key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Tenant,
    Resource,
    TechnicalDescriptor,
}

impl Dim {
    pub const ALL: [Dim; 3] = [Dim::Tenant, Dim::Resource, Dim::TechnicalDescriptor];

    pub fn table(self) -> Table {
        match self {
            Dim::Tenant => Table::Tenant,
            Dim::Resource => Table::Resource,
            Dim::TechnicalDescriptor => Table::TechnicalDescriptor,
        }
    }

    pub fn of_table(table: Table) -> Option<Dim> {
        Dim::ALL.into_iter().find(|d| d.table() == table)
    }

    /// The alias of the dimension in rendered SQL.
    fn alias(self) -> &'static str {
        match self {
            Dim::Tenant => "tn",
            Dim::Resource => "r",
            Dim::TechnicalDescriptor => "td",
        }
    }

    /// The slot of the foreign key in `fact`: the column named like the
    /// dimension's primary key.
    pub fn fk_slot(self, fact: &TableSpec) -> Option<usize> {
        fact.slot(self.table().spec().columns[0].name)
    }
}

/// The dimension rows a fact references, as looked up when it is applied.
#[derive(Clone, Copy, Default)]
pub struct DimRows<'a> {
    pub tenant: Option<&'a Row>,
    pub resource: Option<&'a Row>,
    pub technical_descriptor: Option<&'a Row>,
}

impl<'a> DimRows<'a> {
    fn get(&self, dim: Dim) -> Option<&'a Row> {
        match dim {
            Dim::Tenant => self.tenant,
            Dim::Resource => self.resource,
            Dim::TechnicalDescriptor => self.technical_descriptor,
        }
    }
}

/// Configurable constants a declaration may refer to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// Ring time (seconds) at or under which an accepted invite counts as
    /// within the service level (`accepted_thr`).
    ServiceLevelThreshold,
}

/// Values of the [`Param`]s; part of the aggregation settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    pub service_level_threshold: i64,
}

impl Params {
    fn get(&self, p: Param) -> i64 {
        match p {
            Param::ServiceLevelThreshold => self.service_level_threshold,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Operand {
    Lit(i64),
    Param(Param),
}

#[derive(Clone, Copy, Debug)]
pub enum Cmp {
    Eq,
    Gt,
    Le,
}

/// An integer expression over the fact's columns; NULL reads as 0.
#[derive(Clone, Copy, Debug)]
pub enum IntExpr {
    Col(usize),
    Add(&'static [usize]),
}

/// A condition on the fact and its dimensions; NULL or missing is false.
#[derive(Clone, Copy, Debug)]
pub enum Pred {
    Always,
    /// fact column `cmp` operand.
    Int(usize, Cmp, Operand),
    /// dimension text column is one of the values.
    DimIn(Dim, usize, &'static [&'static str]),
    All(&'static [Pred]),
}

/// How a measure aggregates its per-fact value.
#[derive(Clone, Copy, Debug)]
pub enum Agg {
    /// Number of facts matching the predicate.
    Count(Pred),
    /// Sum of the expression over facts matching the predicate.
    Sum(IntExpr, Pred),
    /// Largest value of the expression; retractable (kept as a counted multiset).
    Max(IntExpr),
}

#[derive(Clone, Copy, Debug)]
pub struct Measure {
    pub name: &'static str,
    pub agg: Agg,
}

/// How a fact is placed in time.
#[derive(Clone, Copy, Debug)]
pub enum Attribution {
    /// Wholly to the bucket of this timestamp column.
    Disposition { ts: usize },
}

#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub source: Table,
    /// Fact columns (slots) grouped by, besides `date_time_key`.
    pub group_by: &'static [usize],
    /// Which facts the family counts at all.
    pub filter: Pred,
    pub attribution: Attribution,
    pub measures: &'static [Measure],
}

/// One fact's contribution to one family: the group, the bucket per level,
/// and the per-measure values (for `Max` measures, the candidate value).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Contribution {
    pub family: u16,
    pub group: Vec<Option<i64>>,
    pub buckets: Vec<i64>,
    pub values: Vec<i64>,
}

impl Family {
    pub fn source_spec(&self) -> &'static TableSpec {
        self.source.spec()
    }

    /// The dimensions the declaration reads (filter, measures), plus the tenant
    /// for its time zone.
    pub fn dims(&self) -> Vec<Dim> {
        let mut out = vec![Dim::Tenant];
        let mut visit = |p: &Pred| p.dims(&mut out);
        visit(&self.filter);
        for m in self.measures {
            match m.agg {
                Agg::Count(p) | Agg::Sum(_, p) => visit(&p),
                Agg::Max(_) => {}
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The fact's timestamp, or `None` when the fact cannot be placed (NULL).
    pub fn timestamp(&self, row: &Row) -> Option<i64> {
        match self.attribution {
            Attribution::Disposition { ts } => row.int(ts),
        }
    }

    /// Whether the fact counts in this family, given its dimensions.
    pub fn includes(&self, row: &Row, dims: &DimRows<'_>) -> bool {
        self.timestamp(row).is_some() && self.filter.eval(row, dims, None)
    }

    /// The per-measure values of one included fact.
    pub fn values(&self, row: &Row, dims: &DimRows<'_>, params: &Params) -> Vec<i64> {
        self.measures
            .iter()
            .map(|m| match m.agg {
                Agg::Count(p) => i64::from(p.eval(row, dims, Some(params))),
                Agg::Sum(e, p) => {
                    if p.eval(row, dims, Some(params)) {
                        e.eval(row)
                    } else {
                        0
                    }
                }
                Agg::Max(e) => e.eval(row),
            })
            .collect()
    }

    pub fn group(&self, row: &Row) -> Vec<Option<i64>> {
        self.group_by.iter().map(|&s| row.int(s)).collect()
    }

    pub fn group_columns(&self) -> impl Iterator<Item = &'static str> + '_ {
        let spec = self.source_spec();
        self.group_by.iter().map(move |&s| spec.columns[s].name)
    }

    /// The aggregate table's unique key, in order: `date_time_key`, then the group columns.
    pub fn key_columns(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once("date_time_key").chain(self.group_columns())
    }

    pub fn table_name(&self, level: Level) -> String {
        format!("ag2_{}_{}", self.name, level.name())
    }

    /// `CREATE TABLE IF NOT EXISTS` for one level. The unique key treats NULL
    /// group values as equal, since a NULL key is a group of its own.
    pub fn ddl(&self, level: Level) -> String {
        let table = self.table_name(level);
        let mut cols = vec!["    date_time_key bigint NOT NULL".to_owned()];
        cols.extend(self.group_columns().map(|c| format!("    {c} integer")));
        for m in self.measures {
            let null = if matches!(m.agg, Agg::Max(_)) {
                ""
            } else {
                " NOT NULL"
            };
            cols.push(format!("    {} bigint{null}", m.name));
        }
        let key: Vec<&str> = self.key_columns().collect();
        cols.push(format!(
            "    CONSTRAINT {table}_key UNIQUE NULLS NOT DISTINCT ({})",
            key.join(", ")
        ));
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (\n{}\n);\n",
            cols.join(",\n")
        )
    }

    /// The reference query: the family at `level` recomputed from the facts,
    /// with the same columns, in the same order, as the aggregate table.
    pub fn reference_sql(&self, level: Level, params: &Params, subhr_seconds: i64) -> String {
        let spec = self.source_spec();
        let ts = match self.attribution {
            Attribution::Disposition { ts } => format!("f.{}", spec.columns[ts].name),
        };
        let tz = "(CASE WHEN tn.time_zone IN (SELECT name FROM pg_timezone_names) \
                  THEN tn.time_zone ELSE 'UTC' END)";
        let mut select = vec![format!(
            "{} AS date_time_key",
            level.sql_bucket(&ts, tz, subhr_seconds)
        )];
        select.extend(self.group_columns().map(|c| format!("f.{c}")));
        for m in self.measures {
            let expr = match m.agg {
                Agg::Count(p) => format!("count(*) FILTER (WHERE {})", p.sql(spec, params)),
                Agg::Sum(e, p) => format!(
                    "coalesce(sum({}) FILTER (WHERE {}), 0)",
                    e.sql(spec),
                    p.sql(spec, params)
                ),
                Agg::Max(e) => format!("max({})", e.sql(spec)),
            };
            select.push(format!("{expr}::bigint AS {}", m.name));
        }
        let mut from = format!("{} f", spec.name);
        for dim in self.dims() {
            let dspec = dim.table().spec();
            let key = dspec.columns[0].name;
            from.push_str(&format!(
                "\n  LEFT JOIN {} {} ON {}.{key} = f.{key}",
                dspec.name,
                dim.alias(),
                dim.alias()
            ));
        }
        let group: Vec<String> = (1..=1 + self.group_by.len())
            .map(|i| i.to_string())
            .collect();
        format!(
            "SELECT {}\nFROM {from}\nWHERE {ts} IS NOT NULL AND {}\nGROUP BY {}",
            select.join(",\n       "),
            self.filter.sql(spec, params),
            group.join(", ")
        )
    }
}

impl Pred {
    fn eval(&self, row: &Row, dims: &DimRows<'_>, params: Option<&Params>) -> bool {
        match *self {
            Pred::Always => true,
            Pred::Int(slot, cmp, rhs) => {
                let Some(lhs) = row.int(slot) else {
                    return false;
                };
                let rhs = match rhs {
                    Operand::Lit(v) => v,
                    Operand::Param(p) => match params {
                        Some(ps) => ps.get(p),
                        None => return false,
                    },
                };
                match cmp {
                    Cmp::Eq => lhs == rhs,
                    Cmp::Gt => lhs > rhs,
                    Cmp::Le => lhs <= rhs,
                }
            }
            Pred::DimIn(dim, slot, values) => dims
                .get(dim)
                .and_then(|r| r.get(slot).as_text())
                .is_some_and(|v| values.contains(&v)),
            Pred::All(ps) => ps.iter().all(|p| p.eval(row, dims, params)),
        }
    }

    fn dims(&self, out: &mut Vec<Dim>) {
        match self {
            Pred::DimIn(d, _, _) => out.push(*d),
            Pred::All(ps) => ps.iter().for_each(|p| p.dims(out)),
            Pred::Always | Pred::Int(..) => {}
        }
    }

    fn sql(&self, spec: &TableSpec, params: &Params) -> String {
        match *self {
            Pred::Always => "TRUE".to_owned(),
            Pred::Int(slot, cmp, rhs) => {
                let rhs = match rhs {
                    Operand::Lit(v) => v,
                    Operand::Param(p) => params.get(p),
                };
                let op = match cmp {
                    Cmp::Eq => "=",
                    Cmp::Gt => ">",
                    Cmp::Le => "<=",
                };
                format!("f.{} {op} {rhs}", spec.columns[slot].name)
            }
            Pred::DimIn(dim, slot, values) => {
                let list: Vec<String> = values
                    .iter()
                    .map(|v| format!("'{}'", v.replace('\'', "''")))
                    .collect();
                format!(
                    "{}.{} IN ({})",
                    dim.alias(),
                    dim.table().spec().columns[slot].name,
                    list.join(", ")
                )
            }
            Pred::All(ps) => {
                let parts: Vec<String> = ps.iter().map(|p| p.sql(spec, params)).collect();
                format!("({})", parts.join(" AND "))
            }
        }
    }
}

impl IntExpr {
    fn eval(&self, row: &Row) -> i64 {
        match *self {
            IntExpr::Col(s) => row.int_or_zero(s),
            IntExpr::Add(slots) => slots.iter().map(|&s| row.int_or_zero(s)).sum(),
        }
    }

    fn sql(&self, spec: &TableSpec) -> String {
        let col = |s: usize| format!("coalesce(f.{}, 0)", spec.columns[s].name);
        match *self {
            IntExpr::Col(s) => col(s),
            IntExpr::Add(slots) => {
                let parts: Vec<String> = slots.iter().map(|&s| col(s)).collect();
                format!("({})", parts.join(" + "))
            }
        }
    }
}
