//! Generated Info Mart traffic through ordinary SQL, seeded and repeatable.
//!
//! - [`Generator::dimensions`] loads tenants in several time zones, agents and
//!   queues, and every technical descriptor.
//! - [`Generator::day`] writes a day of IRF traffic: rows inserted as calls
//!   start, updated as they finish, a share deleted, a share arriving late.
//! - [`Generator::chaos`] mixes every change raa must survive: updates that
//!   move a fact to another bucket or group, primary-key changes, NULLs,
//!   dimension changes, rolled-back and multi-statement transactions, TRUNCATE.
//! - [`Generator::week`] writes a week of every fact table (IRF, mediation
//!   segments, agent states and sessions) for the tenants in New York, Kolkata
//!   and Berlin: periods that cross hours, days and DST changes, states and
//!   sessions left open then closed, updates, deletes and late facts.
//!   [`Generator::dimension_changes`] then changes dimension rows under them.
//! - [`scale`] generates millions of facts inside PostgreSQL, for benchmarks.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

pub mod scale;
mod week;
use week::WeekLive;

pub const TENANTS: [(i32, &str, Option<&str>); 4] = [
    (1, "east", Some("America/New_York")),
    (2, "india", Some("Asia/Kolkata")),
    (3, "europe", Some("Europe/Berlin")),
    (4, "unset", None),
];
const RESULTS: [&str; 9] = [
    "Completed",
    "Abandoned",
    "CustomerAbandoned",
    "Redirected",
    "Transferred",
    "Conferenced",
    "Diverted",
    "Cleared",
    "Rejected",
];
const ROLES: [&str; 4] = ["Received", "ReceivedConsult", "Initiated", "InConference"];
pub const AGENTS: i32 = 60;
/// `resource_state` rows: key, state type, state name. Key 7's type is one
/// no `i_state` measure reads; facts also reference key 99, which does not exist.
pub const RESOURCE_STATES: [(i32, &str, &str); 7] = [
    (1, "Ready", "Ready"),
    (2, "NotReady", "Break"),
    (3, "NotReady", "Lunch"),
    (4, "Busy", "Talking"),
    (5, "AfterCallWork", "Wrap up"),
    (6, "Busy", "Outbound"),
    (7, "Monitoring", "Coaching"),
];
/// The tenants of [`Generator::week`]: New York (DST), Kolkata (+05:30), Berlin.
pub const WEEK_TENANTS: [i64; 3] = [1, 2, 3];
const QUEUE_BASE: i32 = 1000;
const QUEUES: i32 = 8;

const IRF_COLUMNS: &str = "interaction_resource_id, tenant_key, interaction_id, media_type_key, \
    interaction_type_key, resource_key, technical_descriptor_key, interaction_descriptor_key, \
    start_date_time_key, start_ts, end_ts, irf_anchor, ring_count, ring_duration, talk_count, \
    talk_duration, hold_count, hold_duration, after_call_work_count, after_call_work_duration, \
    cons_init_count, cons_rcv_count";

/// What a run wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub transactions: u64,
}

pub struct Generator {
    rng: StdRng,
    next_id: i64,
    /// IRF ids believed present (a rolled-back or truncated write is reconciled).
    live: Vec<i64>,
    /// Start of the generated day (UTC epoch seconds).
    pub day_start: i64,
    /// Whether [`Generator::chaos`] may TRUNCATE the fact table.
    pub truncate: bool,
    pub written: Written,
    /// Ids of the week's facts believed present, per table (see [`Generator::week`]).
    week_live: WeekLive,
}

/// One IRF row, column-wise for `unnest`.
#[derive(Default)]
struct IrfColumns {
    cols: Vec<Vec<Option<i64>>>,
}

impl IrfColumns {
    fn push(&mut self, row: [Option<i64>; 22]) {
        if self.cols.is_empty() {
            self.cols = vec![Vec::new(); 22];
        }
        for (c, v) in self.cols.iter_mut().zip(row) {
            c.push(v);
        }
    }

    fn len(&self) -> usize {
        self.cols.first().map_or(0, Vec::len)
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect()
    }
}

fn insert_sql() -> String {
    let unnest: Vec<String> = (1..=22).map(|i| format!("${i}::int8[]")).collect();
    format!(
        "INSERT INTO interaction_resource_fact ({IRF_COLUMNS}) SELECT * FROM unnest({})",
        unnest.join(", ")
    )
}

impl Generator {
    pub fn new(seed: u64, day_start: i64) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            next_id: 1,
            live: Vec::new(),
            day_start,
            truncate: true,
            written: Written::default(),
            week_live: WeekLive::default(),
        }
    }

    /// Loads the dimension rows (idempotent).
    pub async fn dimensions(&mut self, c: &Client) -> Result<(), tokio_postgres::Error> {
        for (key, name, zone) in TENANTS {
            c.execute(
                "INSERT INTO tenant VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&key, &name, &zone],
            )
            .await?;
        }
        for (i, result) in RESULTS.iter().enumerate() {
            for (j, role) in ROLES.iter().enumerate() {
                let key = (i * ROLES.len() + j + 1) as i32;
                c.execute(
                    "INSERT INTO technical_descriptor VALUES ($1, $2, 'Unspecified', $3) ON CONFLICT DO NOTHING",
                    &[&key, result, role],
                )
                .await?;
            }
        }
        for key in 1..=AGENTS {
            c.execute(
                "INSERT INTO resource_ VALUES ($1, 'Agent', $2, $3) ON CONFLICT DO NOTHING",
                &[&key, &format!("agent{key}"), &format!("E{key:04}")],
            )
            .await?;
        }
        for (key, state_type, name) in RESOURCE_STATES {
            c.execute(
                "INSERT INTO resource_state VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&key, &state_type, &name],
            )
            .await?;
        }
        for key in QUEUE_BASE..QUEUE_BASE + QUEUES {
            c.execute(
                "INSERT INTO resource_ VALUES ($1, 'Queue', $2, NULL) ON CONFLICT DO NOTHING",
                &[&key, &format!("queue{key}")],
            )
            .await?;
        }
        Ok(())
    }

    /// A random IRF row starting at `start_ts`.
    fn irf_row(&mut self, id: i64, start_ts: i64) -> [Option<i64>; 22] {
        let r = &mut self.rng;
        let resource = if r.random_bool(0.88) {
            r.random_range(1..=AGENTS as i64)
        } else if r.random_bool(0.2) {
            // A resource whose dimension row arrives later, if at all.
            r.random_range(5000..6000)
        } else {
            r.random_range(QUEUE_BASE as i64..(QUEUE_BASE + QUEUES) as i64)
        };
        let td = r.random_range(1..=(RESULTS.len() * ROLES.len()) as i64);
        let talked = r.random_bool(0.8);
        let ring = r.random_range(0..60);
        let talk = if talked { r.random_range(10..900) } else { 0 };
        let hold = if talked && r.random_bool(0.3) {
            r.random_range(5..120)
        } else {
            0
        };
        let acw = if talked { r.random_range(0..180) } else { 0 };
        let maybe_null = |r: &mut StdRng, v: i64| if r.random_bool(0.02) { None } else { Some(v) };
        [
            Some(id),
            Some(r.random_range(1..=TENANTS.len() as i64)),
            Some(id / 2),
            Some(r.random_range(1..=3)),
            Some(r.random_range(1..=3)),
            Some(resource),
            Some(td),
            if r.random_bool(0.2) {
                None
            } else {
                Some(r.random_range(1..=5))
            },
            Some(start_ts - start_ts.rem_euclid(900)),
            Some(start_ts),
            Some(start_ts + ring + talk + hold + acw),
            Some(i64::from(r.random_bool(0.6))),
            Some(1),
            Some(ring),
            Some(i64::from(talked)),
            maybe_null(r, talk),
            Some(i64::from(hold > 0)),
            Some(hold),
            Some(i64::from(acw > 0)),
            maybe_null(r, acw),
            Some(r.random_range(0..2)),
            Some(r.random_range(0..2)),
        ]
    }

    fn random_ts(&mut self, late: bool) -> i64 {
        let back = if late {
            self.rng.random_range(86_400..40 * 86_400)
        } else {
            0
        };
        self.day_start + self.rng.random_range(0..86_400) - back
    }

    /// Inserts `n` new rows in one statement of the current transaction.
    async fn insert(
        &mut self,
        c: &impl tokio_postgres::GenericClient,
        n: usize,
        late_share: f64,
    ) -> Result<Vec<i64>, tokio_postgres::Error> {
        let mut cols = IrfColumns::default();
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.next_id;
            self.next_id += 1;
            let late = self.rng.random_bool(late_share);
            let ts = self.random_ts(late);
            cols.push(self.irf_row(id, ts));
            ids.push(id);
        }
        if cols.len() > 0 {
            c.execute(&insert_sql(), &cols.params()).await?;
        }
        Ok(ids)
    }

    /// Updates `n` live rows: durations grow (the call finished); some move to
    /// another bucket, agent or descriptor.
    async fn update(
        &mut self,
        c: &impl tokio_postgres::GenericClient,
        n: usize,
    ) -> Result<u64, tokio_postgres::Error> {
        if self.live.is_empty() {
            return Ok(0);
        }
        let mut ids: Vec<i64> = (0..n)
            .map(|_| self.live[self.rng.random_range(0..self.live.len())])
            .collect();
        ids.sort();
        ids.dedup();
        let (mut talk, mut starts, mut resources, mut tds) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in &ids {
            talk.push(self.rng.random_range(0..400_i64));
            let moved = self.rng.random_bool(0.2);
            let late = self.rng.random_bool(0.3);
            starts.push(if moved {
                Some(self.random_ts(late))
            } else {
                None
            });
            resources.push(if self.rng.random_bool(0.1) {
                Some(self.rng.random_range(1..=AGENTS as i64))
            } else {
                None
            });
            tds.push(if self.rng.random_bool(0.1) {
                Some(self.rng.random_range(1..=36_i64))
            } else {
                None
            });
        }
        let n = c
            .execute(
                "UPDATE interaction_resource_fact f SET \
                   talk_duration = coalesce(f.talk_duration, 0) + u.talk, \
                   talk_count = CASE WHEN coalesce(f.talk_duration, 0) + u.talk > 0 THEN 1 ELSE 0 END, \
                   start_ts = coalesce(u.start_ts, f.start_ts), \
                   resource_key = coalesce(u.resource_key, f.resource_key), \
                   technical_descriptor_key = coalesce(u.td, f.technical_descriptor_key), \
                   end_ts = coalesce(u.start_ts, f.start_ts) + coalesce(f.talk_duration, 0) + u.talk \
                 FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[]) \
                   AS u(id, talk, start_ts, resource_key, td) \
                 WHERE f.interaction_resource_id = u.id",
                &[&ids, &talk, &starts, &resources, &tds],
            )
            .await?;
        Ok(n)
    }

    /// Deletes `n` live rows.
    async fn delete(
        &mut self,
        c: &impl tokio_postgres::GenericClient,
        n: usize,
    ) -> Result<Vec<i64>, tokio_postgres::Error> {
        let mut ids = Vec::new();
        for _ in 0..n.min(self.live.len()) {
            let i = self.rng.random_range(0..self.live.len());
            ids.push(self.live.swap_remove(i));
        }
        c.execute(
            "DELETE FROM interaction_resource_fact WHERE interaction_resource_id = ANY($1)",
            &[&ids],
        )
        .await?;
        Ok(ids)
    }

    /// A day of traffic: `rows` IRF rows inserted in transactions of `txn_rows`,
    /// with 10% of rows later updated, 2% deleted and 5% arriving late.
    pub async fn day(
        &mut self,
        c: &mut Client,
        rows: usize,
        txn_rows: usize,
    ) -> Result<Written, tokio_postgres::Error> {
        let txn_rows = txn_rows.max(1);
        let mut left = rows;
        while left > 0 {
            let n = left.min(txn_rows);
            left -= n;
            let tx = c.transaction().await?;
            let ids = self.insert(&tx, n, 0.05).await?;
            let updated = self.update(&tx, n / 10).await?;
            let deleted = self.delete(&tx, n / 50).await?;
            tx.commit().await?;
            self.written.inserted += ids.len() as u64;
            self.live.extend(ids);
            self.written.updated += updated;
            self.written.deleted += deleted.len() as u64;
            self.written.transactions += 1;
        }
        Ok(self.written)
    }

    /// `rounds` random transactions mixing every kind of change.
    pub async fn chaos(
        &mut self,
        c: &mut Client,
        rounds: usize,
    ) -> Result<Written, tokio_postgres::Error> {
        for _ in 0..rounds {
            let rollback = self.rng.random_bool(0.1);
            let tx = c.transaction().await?;
            let mut inserted = Vec::new();
            let mut deleted = Vec::new();
            let statements = self.rng.random_range(1..6);
            for _ in 0..statements {
                match self.rng.random_range(0..100) {
                    0..=39 => {
                        let n = self.rng.random_range(1..200);
                        inserted.extend(self.insert(&tx, n, 0.2).await?);
                    }
                    40..=64 => {
                        let n = self.rng.random_range(1..50);
                        self.update(&tx, n).await?;
                    }
                    65..=79 => {
                        let n = self.rng.random_range(1..30);
                        deleted.extend(self.delete(&tx, n).await?);
                    }
                    80..=86 => self.change_key(&tx).await?,
                    87..=94 => self.change_dimension(&tx).await?,
                    95..=97 => self.null_columns(&tx).await?,
                    _ => {
                        if self.truncate && self.rng.random_bool(0.3) {
                            tx.execute("TRUNCATE interaction_resource_fact", &[])
                                .await?;
                            deleted.append(&mut self.live);
                        }
                    }
                }
            }
            if rollback {
                tx.rollback().await?;
                // Nothing happened: what we removed from `live` is still there.
                self.live.extend(deleted);
            } else {
                tx.commit().await?;
                self.written.inserted += inserted.len() as u64;
                self.written.deleted += deleted.len() as u64;
                self.live.extend(inserted);
                self.written.transactions += 1;
            }
        }
        // Rebuild `live` from the table: key changes and truncates reshuffle it.
        let rows = c
            .query(
                "SELECT interaction_resource_id FROM interaction_resource_fact",
                &[],
            )
            .await?;
        self.live = rows.iter().map(|r| r.get(0)).collect();
        Ok(self.written)
    }

    /// Moves a row to a new primary key (arrives as an update with the old key).
    async fn change_key(
        &mut self,
        c: &impl tokio_postgres::GenericClient,
    ) -> Result<(), tokio_postgres::Error> {
        if self.live.is_empty() {
            return Ok(());
        }
        let old = self.live[self.rng.random_range(0..self.live.len())];
        let new = self.next_id;
        self.next_id += 1;
        c.execute(
            "UPDATE interaction_resource_fact SET interaction_resource_id = $2 WHERE interaction_resource_id = $1",
            &[&old, &new],
        )
        .await?;
        Ok(())
    }

    /// Changes a dimension row that facts reference.
    async fn change_dimension(
        &mut self,
        c: &impl tokio_postgres::GenericClient,
    ) -> Result<(), tokio_postgres::Error> {
        match self.rng.random_range(0..4) {
            0 => {
                let key = self.rng.random_range(1..=36);
                let role = ROLES[self.rng.random_range(0..ROLES.len())];
                c.execute(
                    "UPDATE technical_descriptor SET resource_role = $2 WHERE technical_descriptor_key = $1",
                    &[&key, &role],
                )
                .await?;
            }
            1 => {
                let key = self.rng.random_range(1..=AGENTS);
                let kind = if self.rng.random_bool(0.5) {
                    "Agent"
                } else {
                    "Supervisor"
                };
                c.execute(
                    "UPDATE resource_ SET resource_type = $2 WHERE resource_key = $1",
                    &[&key, &kind],
                )
                .await?;
            }
            2 => {
                let key = self.rng.random_range(1..=36);
                let result = RESULTS[self.rng.random_range(0..RESULTS.len())];
                c.execute(
                    "UPDATE technical_descriptor SET technical_result = $2 WHERE technical_descriptor_key = $1",
                    &[&key, &result],
                )
                .await?;
            }
            _ => {
                // A fact referencing a resource that does not exist yet, then the resource.
                let key = 5000 + self.rng.random_range(0..1000);
                c.execute(
                    "INSERT INTO resource_ VALUES ($1, 'Agent', 'late agent', NULL) ON CONFLICT (resource_key) DO UPDATE SET resource_type = 'Agent'",
                    &[&key],
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Sets group or measure columns of a row to NULL.
    async fn null_columns(
        &mut self,
        c: &impl tokio_postgres::GenericClient,
    ) -> Result<(), tokio_postgres::Error> {
        if self.live.is_empty() {
            return Ok(());
        }
        let id = self.live[self.rng.random_range(0..self.live.len())];
        let col = [
            "media_type_key",
            "technical_descriptor_key",
            "hold_duration",
            "ring_duration",
            "start_ts",
        ][self.rng.random_range(0..5)];
        c.execute(
            &format!("UPDATE interaction_resource_fact SET {col} = NULL WHERE interaction_resource_id = $1"),
            &[&id],
        )
        .await?;
        Ok(())
    }
}
