//! Families are data: group-by columns, measures, a filter and attribution,
//! declared once (see [`super::catalog`]) and interpreted twice:
//! - evaluated in Rust on one fact to get its contribution ([`Family::contribute`]);
//! - rendered to SQL for the aggregate table DDL, the sink statements and the
//!   reference query that `raa verify` diffs against ([`super::sql`]).
//!
//! NULL semantics are the same on both sides: a measure expression reads a NULL
//! column as 0 (SQL: `coalesce`), a predicate on a NULL column or a missing
//! dimension row is false (SQL: NULL in a `FILTER`/`WHERE` is not true).
//!
//! Time attribution ([`Attribution`]): a disposition family puts a fact
//! wholly in the bucket of one timestamp. An interval family splits the
//! period `[start, end)` across the buckets it overlaps ([`super::interval`]):
//! [`Agg::Seconds`] measures are split by the seconds in each bucket, while
//! `Count` and `Sum` measures go to the bucket where the period starts (so a
//! `Count` is "periods that start in the bucket") and `Max` sees the fact in
//! every bucket it touches. A period with a NULL end is open and contributes
//! nothing until it closes.

use super::bucket::{BucketError, Level};
use super::calendar::Calendar;
use super::interval;
use crate::schema::{Row, Table, TableSpec};

/// A dimension a fact references through the foreign key of the same name
/// (`tenant_key`, `resource_key`, `technical_descriptor_key`, `resource_state_key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Tenant,
    Resource,
    TechnicalDescriptor,
    ResourceState,
}

impl Dim {
    pub const ALL: [Dim; 4] = [
        Dim::Tenant,
        Dim::Resource,
        Dim::TechnicalDescriptor,
        Dim::ResourceState,
    ];

    pub fn table(self) -> Table {
        match self {
            Dim::Tenant => Table::Tenant,
            Dim::Resource => Table::Resource,
            Dim::TechnicalDescriptor => Table::TechnicalDescriptor,
            Dim::ResourceState => Table::ResourceState,
        }
    }

    pub fn of_table(table: Table) -> Option<Dim> {
        Dim::ALL.into_iter().find(|d| d.table() == table)
    }

    /// Whether one row of this dimension is referenced by few facts: the
    /// state indexes every fact by the rows of a selective dimension, and by
    /// the others' rows only while the row is missing (a fact that came
    /// before its dimension row), so the row's arrival finds its facts.
    ///
    /// Why not index all: tenants, technical descriptors and resource states
    /// are a few rows, each referenced by much of the fact tables, so such an
    /// index held a state entry a fact (two in three of the index at 100 000
    /// facts, every one a sled write) and a change to one of their rows,
    /// rare, re-derives much of the facts either way. A change to a present
    /// row scans the facts of the tables that read it instead.
    pub fn selective(self) -> bool {
        matches!(self, Dim::Resource)
    }

    /// The slot of the foreign key in `fact`: the column named like the
    /// dimension's primary key.
    pub fn fk_slot(self, fact: &TableSpec) -> Option<usize> {
        fact.slot(self.table().spec().columns[0].name)
    }
}

/// The dimension rows a fact references, as looked up when it is applied,
/// indexed like [`Dim::ALL`].
#[derive(Clone, Copy, Default)]
pub struct DimRows<'a>(pub [Option<&'a Row>; Dim::ALL.len()]);

impl<'a> DimRows<'a> {
    /// Looks every dimension up with `lookup`.
    pub fn new(lookup: impl FnMut(Dim) -> Option<&'a Row>) -> DimRows<'a> {
        DimRows(Dim::ALL.map(lookup))
    }

    pub fn get(&self, dim: Dim) -> Option<&'a Row> {
        self.0[dim as usize]
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
    pub(super) fn get(&self, p: Param) -> i64 {
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
    /// fact column is not NULL.
    NotNull(usize),
    /// dimension text column is one of the values.
    DimIn(Dim, usize, &'static [&'static str]),
    /// the referenced dimension row exists (an inner join).
    DimPresent(Dim),
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
    /// Seconds of the fact's period inside the bucket, for facts matching
    /// the predicate (interval attribution; 0 under disposition).
    Seconds(Pred),
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
    /// Split across the buckets `[start, end)` overlaps; a NULL `end` is an
    /// open period, which contributes nothing.
    Interval { start: usize, end: usize },
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

/// One fact's contribution to one family: the group, and per level the
/// buckets it touches with the per-measure values it puts there (for `Max`
/// measures, the candidate value). Stored with the fact, so a retraction
/// removes exactly what was added whatever changed since.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Contribution {
    pub family: u16,
    pub group: Vec<Option<i64>>,
    pub cells: Cells,
}

/// Where a contribution lands, per level (aligned with the settings' levels).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Cells {
    /// Disposition: the same values in one bucket per level (kept once, not per level).
    Whole { buckets: Vec<i64>, values: Vec<i64> },
    /// Interval: per level, each bucket the period touches and its values there.
    Split(Vec<Vec<Cell>>),
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cell {
    pub bucket: i64,
    pub values: Vec<i64>,
}

impl Contribution {
    /// Every (level, bucket, values) the contribution touches.
    pub fn cells<'a>(&'a self, levels: &'a [Level]) -> Vec<(Level, i64, &'a [i64])> {
        match &self.cells {
            Cells::Whole { buckets, values } => levels
                .iter()
                .zip(buckets)
                .map(|(&l, &b)| (l, b, values.as_slice()))
                .collect(),
            Cells::Split(per_level) => levels
                .iter()
                .zip(per_level)
                .flat_map(|(&l, cells)| {
                    cells
                        .iter()
                        .map(move |c| (l, c.bucket, c.values.as_slice()))
                })
                .collect(),
        }
    }
}

/// What a fact's contribution is computed with, besides the fact and its dimensions.
pub struct Placing<'a> {
    pub levels: &'a [Level],
    /// The tenant's zone.
    pub calendar: &'a mut Calendar,
    pub subhr_seconds: i64,
    pub params: &'a Params,
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
                Agg::Count(p) | Agg::Sum(_, p) | Agg::Seconds(p) => visit(&p),
                Agg::Max(_) => {}
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The fact's period: its start and, for interval families, its end.
    /// `None` when the fact cannot be placed (NULL start) or is still open (NULL end).
    pub fn period(&self, row: &Row) -> Option<(i64, Option<i64>)> {
        match self.attribution {
            Attribution::Disposition { ts } => Some((row.int(ts)?, None)),
            Attribution::Interval { start, end } => Some((row.int(start)?, Some(row.int(end)?))),
        }
    }

    /// Whether the fact counts in this family, given its dimensions.
    pub fn includes(&self, row: &Row, dims: &DimRows<'_>) -> bool {
        self.period(row).is_some() && self.filter.eval(row, dims, None)
    }

    /// The fact's contribution to this family (`idx` in the catalog), or
    /// `None` when the family does not count it.
    pub fn contribute(
        &self,
        idx: u16,
        row: &Row,
        dims: &DimRows<'_>,
        at: &mut Placing<'_>,
    ) -> Result<Option<Contribution>, BucketError> {
        let Some((start, end)) = self.period(row) else {
            return Ok(None);
        };
        if !self.filter.eval(row, dims, None) {
            return Ok(None);
        }
        let cells = match end {
            None => {
                let mut buckets = vec![0; at.levels.len()];
                at.calendar
                    .buckets(start, at.levels, at.subhr_seconds, &mut buckets)?;
                Cells::Whole {
                    buckets,
                    values: self.values(row, dims, at.params, 0, true),
                }
            }
            Some(end) => Cells::Split(
                interval::split(start, end, at.levels, at.calendar, at.subhr_seconds)?
                    .into_iter()
                    .map(|overlaps| {
                        overlaps
                            .into_iter()
                            .map(|o| Cell {
                                bucket: o.bucket,
                                values: self.values(row, dims, at.params, o.seconds, o.starts),
                            })
                            .collect()
                    })
                    .collect(),
            ),
        };
        Ok(Some(Contribution {
            family: idx,
            group: self.group(row),
            cells,
        }))
    }

    /// The per-measure values of one included fact in one bucket, where it
    /// spends `seconds` and which it `starts` in (always, under disposition).
    pub fn values(
        &self,
        row: &Row,
        dims: &DimRows<'_>,
        params: &Params,
        seconds: i64,
        starts: bool,
    ) -> Vec<i64> {
        self.measures
            .iter()
            .map(|m| match m.agg {
                Agg::Count(p) => i64::from(starts && p.eval(row, dims, Some(params))),
                Agg::Sum(e, p) => {
                    if starts && p.eval(row, dims, Some(params)) {
                        e.eval(row)
                    } else {
                        0
                    }
                }
                Agg::Max(e) => e.eval(row),
                Agg::Seconds(p) => {
                    if p.eval(row, dims, Some(params)) {
                        seconds
                    } else {
                        0
                    }
                }
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
            Pred::NotNull(slot) => row.int(slot).is_some(),
            Pred::DimIn(dim, slot, values) => dims
                .get(dim)
                .and_then(|r| r.get(slot).as_text())
                .is_some_and(|v| values.contains(&v)),
            Pred::DimPresent(dim) => dims.get(dim).is_some(),
            Pred::All(ps) => ps.iter().all(|p| p.eval(row, dims, params)),
        }
    }

    fn dims(&self, out: &mut Vec<Dim>) {
        match self {
            Pred::DimIn(d, _, _) | Pred::DimPresent(d) => out.push(*d),
            Pred::All(ps) => ps.iter().for_each(|p| p.dims(out)),
            Pred::Always | Pred::Int(..) | Pred::NotNull(_) => {}
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
}
