//! The rows of a call, phase by phase, written through prepared statements
//! (the table in [`super`]'s documentation).

use super::{now_ts, share, Call, Event, Traffic, TrafficError};
use crate::loadgen::{AGENTS, TENANTS};
use rand::Rng;
use tokio_postgres::Client;

/// Queues (`resource_` rows of type Queue) that [`crate::loadgen`] creates.
const QUEUES: std::ops::Range<i64> = 1000..1008;

/// Agent states (`resource_state` rows).
const READY: i64 = 1;
const BUSY: i64 = 2;
const AFTER_CALL_WORK: i64 = 3;
pub(super) const RESOURCE_STATES: [(i32, &str); 4] = [
    (1, "Ready"),
    (2, "Busy"),
    (3, "AfterCallWork"),
    (4, "NotReady"),
];

/// `technical_descriptor` keys as [`crate::loadgen`] numbers them
/// (result × role): Completed/Received and Abandoned/Received.
const TD_COMPLETED: i64 = 1;
const TD_ABANDONED: i64 = 5;

const MSF_INSERT: &str = "INSERT INTO mediation_segment_fact (mediation_segment_id, tenant_key, \
    interaction_id, media_type_key, interaction_type_key, resource_key, technical_descriptor_key, \
    start_date_time_key, start_ts, target_irf_id) \
    VALUES ($1::int8, $2::int8, $3::int8, $4::int8, 1, $5::int8, $6::int8, $7::int8, $8::int8, \
    $9::int8)";

const IRF_INSERT: &str = "INSERT INTO interaction_resource_fact (interaction_resource_id, \
    tenant_key, interaction_id, media_type_key, interaction_type_key, resource_key, \
    technical_descriptor_key, start_date_time_key, start_ts, end_ts, irf_anchor, ring_count, \
    ring_duration, talk_count, talk_duration, hold_count, hold_duration, after_call_work_count, \
    after_call_work_duration, cons_init_count, cons_rcv_count) \
    VALUES ($1::int8, $2::int8, $3::int8, $4::int8, 1, $5::int8, $6::int8, $7::int8, $8::int8, \
    $9::int8, 1, 1, $10::int8, $11::int8, $12::int8, 0, 0, $13::int8, $14::int8, 0, 0)";

impl Traffic {
    pub(super) async fn arrive(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        now_ms: u64,
    ) -> Result<u64, TrafficError> {
        self.done.calls += 1;
        let r = &mut self.rng;
        let call = Call {
            irf: self.next_irf,
            msf: self.next_msf,
            tenant: r.random_range(1..=TENANTS.len() as i64),
            agent: r.random_range(1..=AGENTS as i64),
            start_ts: now_ts(),
            ring: r.random_range(1..8),
            talk: 0,
            state_row: 0,
        };
        self.next_irf += 1;
        self.next_msf += 1;
        let queue = self.rng.random_range(QUEUES);
        let media = self.rng.random_range(1..=3_i64);
        let mut n = self
            .exec(
                tx,
                MSF_INSERT,
                &[
                    &call.msf,
                    &call.tenant,
                    &call.irf,
                    &media,
                    &queue,
                    &TD_COMPLETED,
                    &(call.start_ts - call.start_ts.rem_euclid(900)),
                    &call.start_ts,
                    &call.irf,
                ],
            )
            .await?;
        n += self
            .insert_irf(tx, &call, media, TD_COMPLETED, None)
            .await?;
        let abandon = self.rng.random_bool(share(self.plan.abandon_share));
        let at = now_ms + Self::secs_ms(call.ring);
        self.schedule(
            at,
            if abandon {
                Event::Abandon(call)
            } else {
                Event::Answer(call)
            },
        );
        if self.rng.random_bool(share(self.plan.late_share)) {
            n += self.late_fact(tx).await?;
        }
        Ok(n)
    }

    /// A finished call of the past hours or days, arriving now.
    async fn late_fact(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<u64, TrafficError> {
        let r = &mut self.rng;
        let back = r.random_range(3600..3 * 86_400);
        let call = Call {
            irf: self.next_irf,
            msf: 0,
            tenant: r.random_range(1..=TENANTS.len() as i64),
            agent: r.random_range(1..=AGENTS as i64),
            start_ts: now_ts() - back,
            ring: r.random_range(1..20),
            talk: r.random_range(10..600),
            state_row: 0,
        };
        self.next_irf += 1;
        let wrap = self.rng.random_range(0..120);
        Ok(self
            .insert_irf(tx, &call, 1, TD_COMPLETED, Some(wrap))
            .await?)
    }

    pub(super) async fn apply(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        event: Event,
        now_ms: u64,
    ) -> Result<u64, TrafficError> {
        let n = match event {
            Event::Answer(mut call) => {
                let mut n = self
                    .exec(
                        tx,
                        "UPDATE interaction_resource_fact SET ring_duration = $2::int8, talk_count = 1 \
                         WHERE interaction_resource_id = $1",
                        &[&call.irf, &call.ring],
                    )
                    .await?;
                n += self.close_msf(tx, &call, 1).await?;
                call.state_row = self.open_state(tx, &call, BUSY).await?;
                n += 1;
                let mean = self.plan.mean_talk.as_secs_f64().max(1.0);
                call.talk = (self.exponential(1.0 / mean).ceil() as i64).clamp(1, 120);
                self.schedule(
                    now_ms.saturating_add(Self::secs_ms(call.talk)),
                    Event::HangUp(call),
                );
                n
            }
            Event::Abandon(call) => {
                let n = self
                    .exec(
                        tx,
                        "UPDATE interaction_resource_fact SET ring_duration = $2::int8, \
                           technical_descriptor_key = $3::int8, end_ts = $4::int8 \
                         WHERE interaction_resource_id = $1",
                        &[
                            &call.irf,
                            &call.ring,
                            &TD_ABANDONED,
                            &(call.start_ts + call.ring),
                        ],
                    )
                    .await?;
                n + self.close_msf(tx, &call, 0).await?
            }
            Event::HangUp(mut call) => {
                let hold = if self.rng.random_bool(0.3) {
                    self.rng.random_range(1..30_i64)
                } else {
                    0
                };
                let mut n = self
                    .exec(
                        tx,
                        "UPDATE interaction_resource_fact SET talk_duration = $2::int8, \
                           hold_count = $3::int8, hold_duration = $4::int8, end_ts = $5::int8 \
                         WHERE interaction_resource_id = $1",
                        &[
                            &call.irf,
                            &call.talk,
                            &i64::from(hold > 0),
                            &hold,
                            &(call.start_ts + call.ring + call.talk),
                        ],
                    )
                    .await?;
                n += self.close_state(tx, call.state_row).await?;
                call.state_row = self.open_state(tx, &call, AFTER_CALL_WORK).await?;
                n += 1;
                let wrap = self.rng.random_range(1..10);
                self.schedule(
                    now_ms.saturating_add(Self::secs_ms(wrap)),
                    Event::WrapUpEnds(call),
                );
                n
            }
            Event::WrapUpEnds(call) => {
                let mut n = self
                    .exec(
                        tx,
                        "UPDATE interaction_resource_fact SET after_call_work_count = 1, \
                           after_call_work_duration = $2::int8 - end_ts, end_ts = $2::int8 \
                         WHERE interaction_resource_id = $1",
                        &[&call.irf, &now_ts()],
                    )
                    .await?;
                n += self.close_state(tx, call.state_row).await?;
                if self.rng.random_bool(share(self.plan.delete_share)) {
                    let later = self.rng.random_range(1..10);
                    self.schedule(
                        now_ms.saturating_add(Self::secs_ms(later)),
                        Event::Delete(call.irf),
                    );
                }
                n
            }
            Event::Delete(irf) => {
                self.exec(
                    tx,
                    "DELETE FROM interaction_resource_fact WHERE interaction_resource_id = $1",
                    &[&irf],
                )
                .await?
            }
        };
        Ok(n)
    }

    /// Inserts an open agent-state row; returns its key.
    async fn open_state(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        call: &Call,
        state: i64,
    ) -> Result<i64, TrafficError> {
        let key = self.next_state;
        self.next_state += 1;
        self.exec(
            tx,
            "INSERT INTO sm_res_state_fact (sm_res_state_fact_key, tenant_key, resource_key, \
               media_type_key, resource_state_key, start_ts) \
             VALUES ($1::int8, $2::int8, $3::int8, 1, $4::int8, $5::int8)",
            &[&key, &call.tenant, &call.agent, &state, &now_ts()],
        )
        .await?;
        Ok(key)
    }

    /// One open session per agent (and one `Ready` state row each).
    pub(super) async fn open_sessions(
        &mut self,
        client: &mut Client,
    ) -> Result<Vec<i64>, TrafficError> {
        let tx = client.transaction().await?;
        let mut keys = Vec::new();
        for agent in 1..=AGENTS as i64 {
            let key = self.next_session;
            self.next_session += 1;
            let tenant = 1 + agent % TENANTS.len() as i64;
            self.exec(
                &tx,
                "INSERT INTO sm_res_session_fact (sm_res_session_fact_key, tenant_key, resource_key, \
                   media_type_key, start_ts) VALUES ($1::int8, $2::int8, $3::int8, 1, $4::int8)",
                &[&key, &tenant, &agent, &now_ts()],
            )
            .await?;
            let call = Call {
                irf: 0,
                msf: 0,
                tenant,
                agent,
                start_ts: 0,
                ring: 0,
                talk: 0,
                state_row: 0,
            };
            self.open_state(&tx, &call, READY).await?;
            keys.push(key);
        }
        tx.commit().await?;
        self.done.changes += 2 * keys.len() as u64;
        self.done.transactions += 1;
        Ok(keys)
    }

    pub(super) async fn close_sessions(
        &mut self,
        client: &mut Client,
        keys: Vec<i64>,
    ) -> Result<(), TrafficError> {
        let n = client
            .execute(
                "UPDATE sm_res_session_fact SET end_ts = $2::int8, total_duration = $2::int8 - start_ts \
                 WHERE sm_res_session_fact_key = ANY($1)",
                &[&keys, &now_ts()],
            )
            .await?;
        self.done.changes += n;
        self.done.transactions += 1;
        Ok(())
    }

    /// Inserts a call's IRF row: ringing, or (`finished_with_wrap`) a
    /// finished call arriving late.
    async fn insert_irf(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        call: &Call,
        media: i64,
        td: i64,
        finished_with_wrap: Option<i64>,
    ) -> Result<u64, tokio_postgres::Error> {
        let (end, talk_count, wrap_count) = match finished_with_wrap {
            Some(w) => (
                Some(call.start_ts + call.ring + call.talk + w),
                1_i64,
                Some(i64::from(w > 0)),
            ),
            None => (None, 0, None),
        };
        let ring = if finished_with_wrap.is_some() {
            call.ring
        } else {
            0
        };
        let start_key = call.start_ts - call.start_ts.rem_euclid(900);
        self.exec(
            tx,
            IRF_INSERT,
            &[
                &call.irf,
                &call.tenant,
                &call.irf,
                &media,
                &call.agent,
                &td,
                &start_key,
                &call.start_ts,
                &end,
                &ring,
                &talk_count,
                &call.talk,
                &wrap_count,
                &finished_with_wrap,
            ],
        )
        .await
    }

    async fn close_msf(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        call: &Call,
        met_objective: i64,
    ) -> Result<u64, tokio_postgres::Error> {
        self.exec(
            tx,
            "UPDATE mediation_segment_fact SET end_ts = $2::int8, mediation_duration = $3::int8, \
           met_service_objective_flag = $4::int8 WHERE mediation_segment_id = $1",
            &[
                &call.msf,
                &(call.start_ts + call.ring),
                &call.ring,
                &met_objective,
            ],
        )
        .await
    }

    async fn close_state(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        key: i64,
    ) -> Result<u64, tokio_postgres::Error> {
        self.exec(
            tx,
            "UPDATE sm_res_state_fact SET end_ts = $2::int8, total_duration = $2::int8 - start_ts \
         WHERE sm_res_state_fact_key = $1",
            &[&key, &now_ts()],
        )
        .await
    }
}
