//! Live Info Mart traffic for load tests: calls arriving at a target rate, as
//! Info Mart's ETL would write them, through ordinary SQL.
//!
//! Calls arrive as a Poisson process. Each call's rows are inserted when it
//! starts and updated as it progresses, so raa sees the update-heavy stream
//! of a real Info Mart rather than inserts of finished facts:
//!
//! | when | rows |
//! |---|---|
//! | the call arrives | MSF (queue segment) and IRF (agent leg, ringing) inserted |
//! | the agent answers | MSF closed; IRF ring time; agent state `Busy` inserted |
//! | the call ends | IRF talk/hold time; `Busy` closed; `AfterCallWork` inserted |
//! | wrap-up ends | IRF wrap time; `AfterCallWork` closed |
//!
//! A share of calls is abandoned while ringing; a share of finished IRF rows
//! is deleted a little later; a share of facts arrives late (finished calls of
//! past hours and days). Agents' sessions (`sm_res_session_fact`) open at the
//! start and close at the end. Call phases last seconds (time is compressed)
//! and the durations written are the real ones.
//!
//! The arrival rate is the target change rate divided by the changes a call
//! makes on average ([`Plan::changes_per_call`]); the achieved rate is reported. When the
//! duration ends (or on SIGINT/SIGTERM), arrivals stop and the calls in
//! progress are finished at once, so the tables end consistent.
//! This module is separate from [`crate::loadgen`], whose seeded batch
//! generator serves tests and benchmarks.

use crate::ops::shutdown::Shutdown;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

mod calls;
mod progress;

use calls::RESOURCE_STATES;
use progress::Progress;

/// Row changes a call that is answered makes (see the table above); an
/// abandoned call makes [`CHANGES_PER_ABANDONED_CALL`].
pub const CHANGES_PER_CALL: f64 = 10.0;
pub const CHANGES_PER_ABANDONED_CALL: f64 = 4.0;

/// The traffic to generate.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Target row changes per second.
    pub rate: f64,
    pub duration: Duration,
    pub seed: u64,
    /// Share of calls abandoned while ringing.
    pub abandon_share: f64,
    /// Extra late facts, as a share of calls.
    pub late_share: f64,
    /// Share of finished IRF rows deleted later.
    pub delete_share: f64,
    /// Mean talk time of a call (real seconds).
    pub mean_talk: Duration,
}

impl Plan {
    /// Expected row changes per arriving call: answered or abandoned, plus
    /// the late facts and deletions that come with calls.
    pub fn changes_per_call(&self) -> f64 {
        let abandon = share(self.abandon_share);
        (1.0 - abandon) * (CHANGES_PER_CALL + share(self.delete_share))
            + abandon * CHANGES_PER_ABANDONED_CALL
            + share(self.late_share)
    }
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            rate: 100.0,
            duration: Duration::from_secs(60),
            seed: 1,
            abandon_share: 0.08,
            late_share: 0.05,
            delete_share: 0.02,
            mean_talk: Duration::from_secs(8),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error("the rate must be a positive number of changes per second, not {0}")]
    BadRate(f64),
    #[error("writing traffic failed")]
    Sql(#[from] tokio_postgres::Error),
}

/// What a run wrote.
#[derive(Clone, Debug, Default)]
pub struct Done {
    pub calls: u64,
    pub changes: u64,
    pub transactions: u64,
    /// Seconds in all, finishing the calls in progress included.
    pub secs: f64,
    /// Changes written, and seconds taken, while calls arrived.
    pub load_changes: u64,
    pub load_secs: f64,
}

impl fmt::Display for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The rate counts every change of the calls that arrived during the
        // load, those written when the calls in progress were finished included.
        write!(
            f,
            "wrote {} calls arriving over {:.1}s: {} row changes ({:.0} changes/s) in {} transactions; \
             the last {} changes finished the calls in progress when arrivals stopped",
            self.calls,
            self.load_secs,
            self.changes,
            self.changes as f64 / self.load_secs.max(1e-9),
            self.transactions,
            self.changes - self.load_changes,
        )
    }
}

/// A call in progress.
#[derive(Clone, Debug)]
struct Call {
    irf: i64,
    msf: i64,
    tenant: i64,
    agent: i64,
    start_ts: i64,
    ring: i64,
    talk: i64,
    /// The agent-state row open for this call (Busy, then AfterCallWork).
    state_row: i64,
}

#[derive(Clone, Debug)]
enum Event {
    Answer(Call),
    Abandon(Call),
    HangUp(Call),
    WrapUpEnds(Call),
    Delete(i64),
}

/// Events ordered by due time (milliseconds from the start), then by insertion.
type Queue = BinaryHeap<Reverse<(u64, u64, Slot)>>;

/// An [`Event`] in the queue; ordered only by its position in the queue.
#[derive(Debug)]
struct Slot(Event);
impl PartialEq for Slot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Slot {}
impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Slot {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

struct Traffic {
    rng: StdRng,
    plan: Plan,
    queue: Queue,
    seq: u64,
    next_irf: i64,
    next_msf: i64,
    next_state: i64,
    next_session: i64,
    /// Statements prepared once per connection: a statement executed by its
    /// text would be prepared again each time, one more round trip.
    statements: HashMap<&'static str, Statement>,
    done: Done,
}

/// A probability: `p` within [0, 1], NaN as 0 (`random_bool` panics otherwise).
fn share(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 1.0)
    }
}

/// An exponential inter-arrival time (seconds) for `rate` events per second:
/// the gaps of a Poisson process.
fn exponential(rng: &mut StdRng, rate: f64) -> f64 {
    let u: f64 = rng.random_range(0.0..1.0);
    -(1.0 - u).ln() / rate
}

fn now_ts() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Generates `plan`'s traffic until its duration ends or shutdown.
pub async fn run(
    client: &mut Client,
    plan: &Plan,
    mut shutdown: Shutdown,
) -> Result<Done, TrafficError> {
    if !(plan.rate.is_finite() && plan.rate > 0.0) {
        return Err(TrafficError::BadRate(plan.rate));
    }
    for (key, name) in RESOURCE_STATES {
        client
            .execute(
                "INSERT INTO resource_state VALUES ($1, 'AgentState', $2) ON CONFLICT DO NOTHING",
                &[&key, &name],
            )
            .await?;
    }
    let mut t = Traffic::new(client, plan.clone()).await?;
    let started = Instant::now();
    let progress = Progress::new(plan.duration);
    let sessions = t.open_sessions(client).await?;
    let calls_per_sec = plan.rate / plan.changes_per_call();
    let mut next_arrival = t.exponential(calls_per_sec);
    let end = plan.duration.as_secs_f64();
    loop {
        let elapsed = started.elapsed().as_secs_f64();
        let stopping = elapsed >= end || shutdown.is_triggered();
        if stopping {
            break;
        }
        // Everything due by now: arrivals and the phases of calls in progress.
        let now_ms = (elapsed * 1000.0) as u64;
        let mut arrivals = 0;
        while next_arrival <= elapsed {
            arrivals += 1;
            next_arrival += t.exponential(calls_per_sec);
        }
        let due = t.take_due(now_ms);
        if arrivals > 0 || !due.is_empty() {
            t.write(client, arrivals, due, now_ms).await?;
        }
        progress.tick(&t.done, started.elapsed());
        let wake = next_arrival
            .min(t.next_due().map_or(f64::MAX, |ms| ms as f64 / 1000.0))
            .min(end);
        let sleep =
            Duration::from_secs_f64((wake - started.elapsed().as_secs_f64()).clamp(0.001, 0.1));
        tokio::select! {
            _ = shutdown.wait() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
    t.done.load_changes = t.done.changes;
    t.done.load_secs = started.elapsed().as_secs_f64();
    // Finish the calls in progress at once, then close the sessions.
    while t.next_due().is_some() {
        let due = t.take_due(u64::MAX);
        t.write(client, 0, due, u64::MAX).await?;
    }
    t.close_sessions(client, sessions).await?;
    t.done.secs = started.elapsed().as_secs_f64();
    progress.finish(&t.done);
    Ok(t.done)
}

impl Traffic {
    async fn new(client: &Client, plan: Plan) -> Result<Traffic, TrafficError> {
        // Continue after the ids present, so runs can follow each other.
        let next = |table: &str, col: &str| {
            format!("SELECT coalesce(max({col}), 0)::int8 + 1 FROM {table}")
        };
        let mut ids = [0_i64; 4];
        for (i, (table, col)) in [
            ("interaction_resource_fact", "interaction_resource_id"),
            ("mediation_segment_fact", "mediation_segment_id"),
            ("sm_res_state_fact", "sm_res_state_fact_key"),
            ("sm_res_session_fact", "sm_res_session_fact_key"),
        ]
        .into_iter()
        .enumerate()
        {
            ids[i] = client.query_one(&next(table, col), &[]).await?.get(0);
        }
        Ok(Traffic {
            rng: StdRng::seed_from_u64(plan.seed),
            plan,
            queue: BinaryHeap::new(),
            seq: 0,
            next_irf: ids[0],
            next_msf: ids[1],
            next_state: ids[2],
            next_session: ids[3],
            statements: HashMap::new(),
            done: Done::default(),
        })
    }

    /// Executes `sql` (prepared on first use) in `tx`.
    async fn exec(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = match self.statements.get(sql) {
            Some(s) => s.clone(),
            None => {
                let s = tx.prepare(sql).await?;
                self.statements.insert(sql, s.clone());
                s
            }
        };
        tx.execute(&statement, params).await
    }

    fn exponential(&mut self, rate: f64) -> f64 {
        exponential(&mut self.rng, rate)
    }

    fn schedule(&mut self, at_ms: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at_ms, self.seq, Slot(event))));
    }

    fn next_due(&self) -> Option<u64> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }

    fn take_due(&mut self, now_ms: u64) -> Vec<Event> {
        let mut due = Vec::new();
        while self.next_due().is_some_and(|at| at <= now_ms) {
            if let Some(Reverse((_, _, Slot(e)))) = self.queue.pop() {
                due.push(e);
            }
        }
        due
    }

    fn secs_ms(secs: i64) -> u64 {
        secs.max(0) as u64 * 1000
    }

    /// Writes `arrivals` new calls and the `due` events in one transaction.
    async fn write(
        &mut self,
        client: &mut Client,
        arrivals: usize,
        due: Vec<Event>,
        now_ms: u64,
    ) -> Result<(), TrafficError> {
        let tx = client.transaction().await?;
        let mut changes = 0;
        for _ in 0..arrivals {
            changes += self.arrive(&tx, now_ms).await?;
        }
        for event in due {
            changes += self.apply(&tx, event, now_ms).await?;
        }
        tx.commit().await?;
        self.done.changes += changes;
        self.done.transactions += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_exponential_with_the_asked_mean() {
        let mut rng = StdRng::seed_from_u64(3);
        let n = 20_000;
        let rate = 50.0;
        let sum: f64 = (0..n).map(|_| exponential(&mut rng, rate)).sum();
        let mean = sum / n as f64;
        assert!((mean - 1.0 / rate).abs() < 0.001, "{mean}");
    }

    #[test]
    fn the_arrival_rate_accounts_for_abandoned_calls() {
        let plan = Plan {
            abandon_share: 0.5,
            late_share: 0.0,
            delete_share: 0.0,
            ..Plan::default()
        };
        assert_eq!(plan.changes_per_call(), 7.0);
        let odd = Plan {
            abandon_share: f64::NAN,
            late_share: 7.0,
            delete_share: -1.0,
            ..Plan::default()
        };
        assert_eq!(odd.changes_per_call(), CHANGES_PER_CALL + 1.0);
    }
}
