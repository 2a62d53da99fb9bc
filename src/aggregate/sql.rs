//! SQL rendered from the family declarations: the aggregate tables' DDL and
//! the reference query `raa verify` diffs them against. The evaluation in
//! Rust ([`super::family`]) and this rendering must mean the same thing; the
//! integration tests hold them to it on a real PostgreSQL.

use super::bucket::Level;
use super::family::{Agg, Attribution, Cmp, Dim, Family, IntExpr, Operand, Params, Pred};
use super::interval::{GRID_SECONDS, MAX_PERIOD_SECONDS};
use crate::schema::TableSpec;

impl Dim {
    /// The alias of the dimension in rendered SQL.
    fn alias(self) -> &'static str {
        match self {
            Dim::Tenant => "tn",
            Dim::Resource => "r",
            Dim::TechnicalDescriptor => "td",
            Dim::ResourceState => "rs",
        }
    }
}

impl Family {
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
    ///
    /// An interval family's periods are cut into pieces at the 15-minute grid
    /// by a lateral `generate_series`, as [`super::interval::split`] does: each piece
    /// is bucketed by its first second, `secs` is its length within the
    /// (capped) period, and `first` marks the piece where the period starts.
    ///
    /// With `from`, facts that cannot reach a bucket at or after `from` are
    /// skipped early (a bucket never starts after the instants it holds); the
    /// caller still filters the result by `date_time_key`.
    pub fn reference_sql(
        &self,
        level: Level,
        params: &Params,
        subhr_seconds: i64,
        from: Option<i64>,
    ) -> String {
        let spec = self.source_spec();
        let col = |slot: usize| format!("f.{}", spec.columns[slot].name);
        let (ts, lateral, placed, first) = match self.attribution {
            Attribution::Disposition { ts } => {
                let ts = col(ts);
                let mut placed = format!("{ts} IS NOT NULL");
                if let Some(from) = from {
                    placed.push_str(&format!(" AND {ts} >= {from}"));
                }
                (ts, String::new(), placed, "TRUE".to_owned())
            }
            Attribution::Interval { start, end } => {
                let s = format!("{}::bigint", col(start));
                let e = format!("least({}::bigint, {s} + {MAX_PERIOD_SECONDS})", col(end));
                let floor = |t: &str| {
                    format!(
                        "({t} - mod(mod({t}, {GRID_SECONDS}) + {GRID_SECONDS}, {GRID_SECONDS}))"
                    )
                };
                let lateral = format!(
                    "\n  CROSS JOIN LATERAL (\n    \
                     SELECT q.t, q.t = {s} AS first,\n           \
                     greatest(0, least({} + {GRID_SECONDS}, {e}) - q.t) AS secs\n    \
                     FROM (SELECT {s} AS t\n          \
                     UNION ALL\n          \
                     SELECT generate_series({} + {GRID_SECONDS}, greatest({e}, {s} + 1) - 1, {GRID_SECONDS})) q\n  \
                     ) p",
                    floor("q.t"),
                    floor(&s),
                );
                let mut placed = format!("{} IS NOT NULL AND {} IS NOT NULL", col(start), col(end));
                if let Some(from) = from {
                    // A piece at or after `from` needs the period to reach past it.
                    placed.push_str(&format!(
                        " AND ({} > {from} OR {} >= {from})",
                        col(end),
                        col(start)
                    ));
                }
                ("p.t".to_owned(), lateral, placed, "p.first".to_owned())
            }
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
                Agg::Count(p) => format!(
                    "count(*) FILTER (WHERE {first} AND {})",
                    p.sql(spec, params)
                ),
                Agg::Sum(e, p) => format!(
                    "coalesce(sum({}) FILTER (WHERE {first} AND {}), 0)",
                    e.sql(spec),
                    p.sql(spec, params)
                ),
                Agg::Max(e) => format!("max({})", e.sql(spec)),
                Agg::Seconds(p) => match self.attribution {
                    Attribution::Disposition { .. } => "0".to_owned(),
                    Attribution::Interval { .. } => format!(
                        "coalesce(sum(p.secs) FILTER (WHERE {}), 0)",
                        p.sql(spec, params)
                    ),
                },
            };
            select.push(format!("{expr}::bigint AS {}", m.name));
        }
        let mut tables = format!("{} f", spec.name);
        for dim in self.dims() {
            let dspec = dim.table().spec();
            let key = dspec.columns[0].name;
            tables.push_str(&format!(
                "\n  LEFT JOIN {} {} ON {}.{key} = f.{key}",
                dspec.name,
                dim.alias(),
                dim.alias()
            ));
        }
        tables.push_str(&lateral);
        let group: Vec<String> = (1..=1 + self.group_by.len())
            .map(|i| i.to_string())
            .collect();
        format!(
            "SELECT {}\nFROM {tables}\nWHERE {placed} AND {}\nGROUP BY {}",
            select.join(",\n       "),
            self.filter.sql(spec, params),
            group.join(", ")
        )
    }
}

impl Pred {
    pub(super) fn sql(&self, spec: &TableSpec, params: &Params) -> String {
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
            Pred::NotNull(slot) => format!("f.{} IS NOT NULL", spec.columns[slot].name),
            Pred::DimPresent(dim) => format!(
                "{}.{} IS NOT NULL",
                dim.alias(),
                dim.table().spec().columns[0].name
            ),
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
    pub(super) fn sql(&self, spec: &TableSpec) -> String {
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

#[cfg(test)]
mod tests {
    use crate::aggregate::catalog::{I_STATE, QUEUE};
    use crate::aggregate::family::Params;
    use crate::aggregate::Level;

    const PARAMS: Params = Params {
        service_level_threshold: 20,
    };

    #[test]
    fn ddl_keys_and_nullable_maxima() {
        let ddl = QUEUE.ddl(Level::Week);
        assert!(
            ddl.starts_with("CREATE TABLE IF NOT EXISTS ag2_queue_week ("),
            "{ddl}"
        );
        assert!(ddl.contains("    max_mediation_time bigint,\n"), "{ddl}");
        assert!(ddl.contains("    entered bigint NOT NULL,\n"), "{ddl}");
        assert!(
            ddl.contains(
                "UNIQUE NULLS NOT DISTINCT (date_time_key, tenant_key, resource_key, \
                 media_type_key, interaction_type_key)"
            ),
            "{ddl}"
        );
    }

    #[test]
    fn interval_reference_cuts_at_the_grid_and_caps_and_joins() {
        let sql = I_STATE.reference_sql(Level::Hour, &PARAMS, 900, Some(1_000));
        for part in [
            "CROSS JOIN LATERAL",
            "generate_series(",
            "+ 2678400)",
            "LEFT JOIN resource_state rs ON rs.resource_state_key = f.resource_state_key",
            "rs.resource_state_key IS NOT NULL",
            "f.end_ts IS NOT NULL",
            "(f.end_ts > 1000 OR f.start_ts >= 1000)",
            "count(*) FILTER (WHERE p.first AND TRUE)::bigint AS state_count",
            "coalesce(sum(p.secs) FILTER (WHERE rs.state_type IN ('Ready')), 0)::bigint AS ready_time",
        ] {
            assert!(sql.contains(part), "{part} missing from\n{sql}");
        }
        let disposition = QUEUE.reference_sql(Level::Day, &PARAMS, 900, None);
        assert!(!disposition.contains("LATERAL"), "{disposition}");
        assert!(
            disposition.contains("max(coalesce(f.mediation_duration, 0))"),
            "{disposition}"
        );
    }
}
