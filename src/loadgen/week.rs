//! [`Generator::week`]: a week of every fact table in three zones, with
//! periods left open and closed later, updates, deletes and late facts.

use super::{
    Generator, Written, AGENTS, QUEUES, QUEUE_BASE, RESOURCE_STATES, RESULTS, ROLES, WEEK_TENANTS,
};
use rand::rngs::StdRng;
use rand::Rng;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

/// Facts [`Generator::week`] wrote and may update or delete.
#[derive(Default)]
pub(super) struct WeekLive {
    msf: Vec<i64>,
    states: Vec<i64>,
    sessions: Vec<i64>,
    /// Open periods (NULL `end_ts`): id and start.
    open_states: Vec<(i64, i64)>,
    open_sessions: Vec<(i64, i64)>,
}

impl Generator {
    /// A week of traffic in every fact table, starting at `day_start`: per day
    /// `per_day` facts of each table, in transactions of `txn_rows` facts that
    /// also close open periods, update and delete earlier facts. A share of
    /// the facts arrives late (starting up to ten days earlier); some states
    /// and sessions stay open for a while, some sessions last for days.
    pub async fn week(
        &mut self,
        c: &mut Client,
        per_day: usize,
        txn_rows: usize,
    ) -> Result<Written, tokio_postgres::Error> {
        let week_start = self.day_start;
        let txn_rows = txn_rows.max(1);
        for day in 0..7 {
            self.day_start = week_start + day * 86_400;
            let mut left = per_day;
            while left > 0 {
                let n = left.min(txn_rows);
                left -= n;
                let tx = c.transaction().await?;
                let irf = self.insert(&tx, n, 0.05).await?;
                self.insert_msf(&tx, n).await?;
                self.insert_states(&tx, n).await?;
                self.insert_sessions(&tx, n.div_ceil(4)).await?;
                self.close_periods(&tx, n / 3).await?;
                self.update_week_facts(&tx, n / 8).await?;
                self.delete_week_facts(&tx, n / 40 + 1).await?;
                tx.commit().await?;
                self.written.inserted += irf.len() as u64;
                self.live.extend(irf);
                self.written.transactions += 1;
            }
        }
        self.day_start = week_start;
        Ok(self.written)
    }

    /// A start in the current day, or up to ten days before it (late).
    fn week_ts(&mut self) -> i64 {
        let back = if self.rng.random_bool(0.08) {
            self.rng.random_range(3_600..10 * 86_400)
        } else {
            0
        };
        self.day_start + self.rng.random_range(0..86_400) - back
    }

    fn week_tenant(&mut self) -> i64 {
        WEEK_TENANTS[self.rng.random_range(0..WEEK_TENANTS.len())]
    }

    fn take_id(&mut self) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn insert_msf(
        &mut self,
        c: &impl tokio_postgres::GenericClient,
        n: usize,
    ) -> Result<(), tokio_postgres::Error> {
        let mut cols: Vec<Vec<Option<i64>>> = vec![Vec::new(); 14];
        for _ in 0..n {
            let id = self.take_id();
            let start = self.week_ts();
            let r = &mut self.rng;
            let duration = r.random_range(0..600);
            let accepted = r.random_bool(0.6);
            let row = [
                Some(id),
                Some(WEEK_TENANTS[r.random_range(0..WEEK_TENANTS.len())]),
                Some(id / 3),
                Some(r.random_range(1..=3)),
                Some(r.random_range(1..=3)),
                if r.random_bool(0.03) {
                    None
                } else {
                    Some(r.random_range(QUEUE_BASE as i64..(QUEUE_BASE + QUEUES) as i64))
                },
                Some(r.random_range(1..=(RESULTS.len() * ROLES.len()) as i64)),
                Some(start - start.rem_euclid(900)),
                Some(start),
                Some(start + duration),
                if r.random_bool(0.02) {
                    None
                } else {
                    Some(duration)
                },
                Some(i64::from(accepted && r.random_bool(0.7))),
                Some(i64::from(!accepted && r.random_bool(0.2))),
                if accepted { Some(id * 10) } else { None },
            ];
            for (col, v) in cols.iter_mut().zip(row) {
                col.push(v);
            }
            self.week_live.msf.push(id);
        }
        let params: Vec<&(dyn ToSql + Sync)> =
            cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        let unnest: Vec<String> = (1..=14).map(|i| format!("${i}::int8[]")).collect();
        c.execute(
            &format!(
                "INSERT INTO mediation_segment_fact (mediation_segment_id, tenant_key, interaction_id, \
                 media_type_key, interaction_type_key, resource_key, technical_descriptor_key, \
                 start_date_time_key, start_ts, end_ts, mediation_duration, met_service_objective_flag, \
                 short_abandoned_flag, target_irf_id) SELECT * FROM unnest({})",
                unnest.join(", ")
            ),
            &params,
        )
        .await?;
        self.written.inserted += n as u64;
        Ok(())
    }

    /// A period's length: mostly minutes, some hours, a few days.
    fn period_length(&mut self, long_share: f64) -> i64 {
        let r = &mut self.rng;
        if r.random_bool(long_share) {
            r.random_range(86_400..4 * 86_400)
        } else if r.random_bool(0.3) {
            r.random_range(3_600..12 * 3_600)
        } else {
            r.random_range(0..1_800)
        }
    }

    async fn insert_states(
        &mut self,
        c: &impl tokio_postgres::GenericClient,
        n: usize,
    ) -> Result<(), tokio_postgres::Error> {
        let mut cols: Vec<Vec<Option<i64>>> = vec![Vec::new(); 8];
        for _ in 0..n {
            let id = self.take_id();
            let start = self.week_ts();
            let len = self.period_length(0.01);
            let open = self.rng.random_bool(0.15);
            let tenant = self.week_tenant();
            let r = &mut self.rng;
            let state = if r.random_bool(0.03) {
                99
            } else {
                r.random_range(1..=RESOURCE_STATES.len() as i64)
            };
            let row = [
                Some(id),
                Some(tenant),
                Some(r.random_range(1..=AGENTS as i64)),
                if r.random_bool(0.02) {
                    None
                } else {
                    Some(r.random_range(1..=3))
                },
                Some(state),
                Some(start),
                if open { None } else { Some(start + len) },
                if open { None } else { Some(len) },
            ];
            for (col, v) in cols.iter_mut().zip(row) {
                col.push(v);
            }
            self.week_live.states.push(id);
            if open {
                self.week_live.open_states.push((id, start));
            }
        }
        let params: Vec<&(dyn ToSql + Sync)> =
            cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        c.execute(
            "INSERT INTO sm_res_state_fact (sm_res_state_fact_key, tenant_key, resource_key, \
             media_type_key, resource_state_key, start_ts, end_ts, total_duration) \
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], \
             $6::int8[], $7::int8[], $8::int8[])",
            &params,
        )
        .await?;
        self.written.inserted += n as u64;
        Ok(())
    }

    async fn insert_sessions(
        &mut self,
        c: &impl tokio_postgres::GenericClient,
        n: usize,
    ) -> Result<(), tokio_postgres::Error> {
        let mut cols: Vec<Vec<Option<i64>>> = vec![Vec::new(); 7];
        for _ in 0..n {
            let id = self.take_id();
            let start = self.week_ts();
            let len = self.period_length(0.05);
            let open = self.rng.random_bool(0.2);
            let tenant = self.week_tenant();
            let r = &mut self.rng;
            let row = [
                Some(id),
                Some(tenant),
                Some(r.random_range(1..=AGENTS as i64)),
                Some(r.random_range(1..=3)),
                Some(start),
                if open { None } else { Some(start + len) },
                if open { None } else { Some(len) },
            ];
            for (col, v) in cols.iter_mut().zip(row) {
                col.push(v);
            }
            self.week_live.sessions.push(id);
            if open {
                self.week_live.open_sessions.push((id, start));
            }
        }
        let params: Vec<&(dyn ToSql + Sync)> =
            cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        c.execute(
            "INSERT INTO sm_res_session_fact (sm_res_session_fact_key, tenant_key, resource_key, \
             media_type_key, start_ts, end_ts, total_duration) \
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], \
             $6::int8[], $7::int8[])",
            &params,
        )
        .await?;
        self.written.inserted += n as u64;
        Ok(())
    }

    /// Closes up to `n` open states and `n / 4` open sessions.
    async fn close_periods(
        &mut self,
        c: &impl tokio_postgres::GenericClient,
        n: usize,
    ) -> Result<(), tokio_postgres::Error> {
        for (table, key, sessions) in [
            ("sm_res_state_fact", "sm_res_state_fact_key", false),
            ("sm_res_session_fact", "sm_res_session_fact_key", true),
        ] {
            let want = if sessions { n.div_ceil(4) } else { n };
            let (mut ids, mut ends) = (Vec::new(), Vec::new());
            for _ in 0..want {
                let open = if sessions {
                    &mut self.week_live.open_sessions
                } else {
                    &mut self.week_live.open_states
                };
                if open.is_empty() {
                    break;
                }
                let (id, start) = open.swap_remove(self.rng.random_range(0..open.len()));
                let len = self.period_length(if sessions { 0.05 } else { 0.01 });
                ids.push(id);
                ends.push(start + len);
            }
            let n = c
                .execute(
                    &format!(
                        "UPDATE {table} f SET end_ts = u.end_ts, total_duration = u.end_ts - f.start_ts \
                         FROM unnest($1::int8[], $2::int8[]) AS u(id, end_ts) WHERE f.{key} = u.id"
                    ),
                    &[&ids, &ends],
                )
                .await?;
            self.written.updated += n;
        }
        Ok(())
    }

    /// Updates up to `n` facts of each week table: segments are finalised
    /// (duration, result, target), states change type or length, sessions
    /// move or reopen.
    async fn update_week_facts(
        &mut self,
        c: &impl tokio_postgres::GenericClient,
        n: usize,
    ) -> Result<(), tokio_postgres::Error> {
        let pick = |r: &mut StdRng, live: &[i64]| -> Vec<i64> {
            let mut ids: Vec<i64> = (0..n.min(live.len()))
                .map(|_| live[r.random_range(0..live.len())])
                .collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let ids = pick(&mut self.rng, &self.week_live.msf);
        let grow: Vec<i64> = ids.iter().map(|_| self.rng.random_range(0..900)).collect();
        let tds: Vec<Option<i64>> = ids
            .iter()
            .map(|_| {
                self.rng
                    .random_bool(0.3)
                    .then(|| self.rng.random_range(1..=36))
            })
            .collect();
        self.written.updated += c
            .execute(
                "UPDATE mediation_segment_fact f SET \
                   mediation_duration = coalesce(f.mediation_duration, 0) + u.grow, \
                   end_ts = f.end_ts + u.grow, \
                   technical_descriptor_key = coalesce(u.td, f.technical_descriptor_key), \
                   target_irf_id = CASE WHEN u.grow % 3 = 0 THEN NULL ELSE f.mediation_segment_id * 10 END \
                 FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS u(id, grow, td) \
                 WHERE f.mediation_segment_id = u.id",
                &[&ids, &grow, &tds],
            )
            .await?;
        let ids = pick(&mut self.rng, &self.week_live.states);
        let states: Vec<i64> = ids
            .iter()
            .map(|_| self.rng.random_range(1..=RESOURCE_STATES.len() as i64))
            .collect();
        let shift: Vec<i64> = ids
            .iter()
            .map(|_| self.rng.random_range(-3_600..3_600))
            .collect();
        self.written.updated += c
            .execute(
                "UPDATE sm_res_state_fact f SET resource_state_key = u.state, \
                   start_ts = f.start_ts + u.shift, end_ts = f.end_ts + u.shift \
                 FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS u(id, state, shift) \
                 WHERE f.sm_res_state_fact_key = u.id",
                &[&ids, &states, &shift],
            )
            .await?;
        let ids = pick(&mut self.rng, &self.week_live.sessions);
        let ends: Vec<Option<i64>> = ids
            .iter()
            .map(|_| (!self.rng.random_bool(0.1)).then(|| self.rng.random_range(0..6 * 3_600)))
            .collect();
        self.written.updated += c
            .execute(
                "UPDATE sm_res_session_fact f SET end_ts = f.start_ts + u.len, total_duration = u.len \
                 FROM unnest($1::int8[], $2::int8[]) AS u(id, len) \
                 WHERE f.sm_res_session_fact_key = u.id",
                &[&ids, &ends],
            )
            .await?;
        Ok(())
    }

    /// Deletes up to `n` facts of each week table.
    async fn delete_week_facts(
        &mut self,
        c: &impl tokio_postgres::GenericClient,
        n: usize,
    ) -> Result<(), tokio_postgres::Error> {
        for (table, key) in [
            ("mediation_segment_fact", "mediation_segment_id"),
            ("sm_res_state_fact", "sm_res_state_fact_key"),
            ("sm_res_session_fact", "sm_res_session_fact_key"),
        ] {
            let live = match table {
                "mediation_segment_fact" => &mut self.week_live.msf,
                "sm_res_state_fact" => &mut self.week_live.states,
                _ => &mut self.week_live.sessions,
            };
            let mut ids = Vec::new();
            for _ in 0..n.min(live.len()) {
                ids.push(live.swap_remove(self.rng.random_range(0..live.len())));
            }
            self.week_live
                .open_states
                .retain(|(id, _)| !ids.contains(id));
            self.week_live
                .open_sessions
                .retain(|(id, _)| !ids.contains(id));
            self.written.deleted += c
                .execute(
                    &format!("DELETE FROM {table} WHERE {key} = ANY($1)"),
                    &[&ids],
                )
                .await?;
        }
        Ok(())
    }

    /// Changes dimension rows the week's facts reference, in one transaction:
    /// a state type, a technical result, a resource role.
    pub async fn dimension_changes(&mut self, c: &mut Client) -> Result<(), tokio_postgres::Error> {
        let tx = c.transaction().await?;
        let state = self.rng.random_range(1..=RESOURCE_STATES.len() as i32);
        let (_, new_type, _) = RESOURCE_STATES[self.rng.random_range(0..RESOURCE_STATES.len())];
        tx.execute(
            "UPDATE resource_state SET state_type = $2 WHERE resource_state_key = $1",
            &[&state, &new_type],
        )
        .await?;
        for _ in 0..3 {
            self.change_dimension(&tx).await?;
        }
        tx.commit().await?;
        self.written.transactions += 1;
        Ok(())
    }
}
