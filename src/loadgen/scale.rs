//! Info Mart traffic at benchmark scale (millions of facts), generated inside
//! PostgreSQL.
//!
//! [`super::Generator`] builds each row in Rust and ships it as parameters:
//! right for tests of thousands of rows, far too slow for a state of millions.
//! Here each statement is one set-based `INSERT … SELECT` or `UPDATE … FROM`
//! over `generate_series`, whose pseudo-random columns are hashes of the row
//! id (or of the update's index) salted by the seed (`hashint8extended`, the
//! stable hash of hash partitioning): the same [`Shape`] writes the same rows
//! on any database, and only a few numbers cross the connection.
//!
//! - [`dimensions`]: tenants in New York, Kolkata and Berlin, agents and
//!   queues, every technical descriptor, the resource states.
//! - [`history`]: facts whose start grows with their id, spread evenly over
//!   the shape's days.
//! - [`stream`]: new facts after the history mixed with updates that move
//!   old facts to another day, in a given number of transactions.
//! - [`big_transactions`]: the rows of [`history`] in transactions of a
//!   given size.
//! - [`extent`]: the facts' count and id range, for the benchmarks.

use super::{Written, RESOURCE_STATES, RESULTS, ROLES, TENANTS};
use std::ops::RangeInclusive;
use tokio_postgres::{Client, Error, GenericClient};

/// Agent `k` (from 0) is `resource_` row `AGENT_BASE + k`, of tenant
/// `1 + k % 3`: clear of the keys [`super::Generator`] uses, so both can
/// share a database.
pub const AGENT_BASE: i32 = 100_000;
/// Queue `q` (from 0) is `resource_` row `QUEUE_BASE + q`, of tenant `1 + q % 3`.
pub const QUEUE_BASE: i32 = 90_000;
pub const QUEUES: i32 = 12;
/// Rows per statement of [`history`]: bounds the WAL and memory of each.
pub const CHUNK: u64 = 100_000;
/// Tenants 1..=3 of `super::TENANTS`: New York and Berlin (DST, on
/// different dates) and Kolkata (+05:30), so the hour, day and week buckets of
/// the aggregates differ per tenant.
pub const SCALE_TENANTS: usize = 3;

const DAY: i64 = 86_400;

/// What the generated facts look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Agents (`resource_` rows of type Agent; 0 counts as 1).
    pub agents: u32,
    /// Days the history spans (0 counts as 1).
    pub days: u32,
    /// End of the history, exclusive (UTC epoch seconds).
    pub end: i64,
    /// Seed of every pseudo-random column and choice.
    pub seed: u64,
}

impl Default for Shape {
    /// 2 000 agents, 120 days whose last is 2026-11-30 (the history ends at
    /// 2026-12-01T00:00Z), seed 1.
    fn default() -> Shape {
        Shape {
            agents: 2_000,
            days: 120,
            end: 1_796_083_200,
            seed: 1,
        }
    }
}

impl Shape {
    fn agents(&self) -> i64 {
        i64::from(self.agents.max(1))
    }

    fn span(&self) -> i64 {
        i64::from(self.days.max(1)) * DAY
    }

    /// First second of the history.
    pub fn begin(&self) -> i64 {
        self.end - self.span()
    }

    /// A salt for the hashes of one purpose (`tag`), from the seed.
    fn salt(&self, tag: u64) -> i64 {
        mix(self.seed ^ mix(tag) as u64)
    }
}

/// splitmix64's finaliser: spreads seeds and tags over all 64 bits.
fn mix(x: u64) -> i64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as i64
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `total * part / parts` without overflow: the bounds of equal shares.
fn share(total: u64, part: u64, parts: u64) -> u64 {
    (u128::from(total) * u128::from(part) / u128::from(parts)) as u64
}

/// Where inserted facts start: fact `id` at `t0 + (id - id0) * span / count`,
/// so the start grows with the id at `count` facts per `span` seconds.
#[derive(Clone, Copy)]
struct Timeline {
    id0: i64,
    t0: i64,
    span: i64,
    count: i64,
}

/// Loads the dimension rows the generated facts reference (idempotent):
/// [`SCALE_TENANTS`] tenants, `shape.agents` agents, [`QUEUES`] queues,
/// media and interaction types 1..=3, the 36 technical descriptors (results
/// × roles, keyed as [`super::Generator`] keys them), the resource states.
pub async fn dimensions(c: &impl GenericClient, shape: &Shape) -> Result<(), Error> {
    let tenants = &TENANTS[..SCALE_TENANTS];
    let keys: Vec<i32> = tenants.iter().map(|t| t.0).collect();
    let names: Vec<&str> = tenants.iter().map(|t| t.1).collect();
    let zones: Vec<Option<&str>> = tenants.iter().map(|t| t.2).collect();
    c.execute(
        "INSERT INTO tenant SELECT * FROM unnest($1::int4[], $2::text[], $3::text[]) \
         ON CONFLICT DO NOTHING",
        &[&keys, &names, &zones],
    )
    .await?;
    c.batch_execute(
        "INSERT INTO media_type VALUES (1, 'voice'), (2, 'chat'), (3, 'email') \
           ON CONFLICT DO NOTHING; \
         INSERT INTO interaction_type VALUES (1, 'Inbound'), (2, 'Outbound'), (3, 'Internal') \
           ON CONFLICT DO NOTHING",
    )
    .await?;
    c.execute(
        "INSERT INTO technical_descriptor \
         SELECT (r.i - 1) * cardinality($2::text[]) + o.j, r.result, 'Unspecified', o.role \
         FROM unnest($1::text[]) WITH ORDINALITY AS r(result, i), \
              unnest($2::text[]) WITH ORDINALITY AS o(role, j) \
         ON CONFLICT DO NOTHING",
        &[&RESULTS.as_slice(), &ROLES.as_slice()],
    )
    .await?;
    let keys: Vec<i32> = RESOURCE_STATES.iter().map(|s| s.0).collect();
    let types: Vec<&str> = RESOURCE_STATES.iter().map(|s| s.1).collect();
    let names: Vec<&str> = RESOURCE_STATES.iter().map(|s| s.2).collect();
    c.execute(
        "INSERT INTO resource_state SELECT * FROM unnest($1::int4[], $2::text[], $3::text[]) \
         ON CONFLICT DO NOTHING",
        &[&keys, &types, &names],
    )
    .await?;
    c.execute(
        &format!(
            "INSERT INTO resource_ \
             SELECT {AGENT_BASE} + k, 'Agent', 'agent' || k, 'E' || lpad(k::text, 6, '0') \
             FROM generate_series(0, $1::int8 - 1) k ON CONFLICT DO NOTHING"
        ),
        &[&shape.agents()],
    )
    .await?;
    c.execute(
        &format!(
            "INSERT INTO resource_ SELECT {QUEUE_BASE} + q, 'Queue', 'queue' || q, NULL \
             FROM generate_series(0, {QUEUES} - 1) q ON CONFLICT DO NOTHING"
        ),
        &[],
    )
    .await?;
    Ok(())
}

/// `INSERT … SELECT` of the facts with ids `$1..=$2` (see [`Timeline`] for
/// `$3..=$6`; `$7`, `$8` salts; `$9` agents). The columns follow
/// `Generator::irf_row`: 88 % agents (the fact takes the agent's tenant),
/// the rest queues; 80 % talked; some holds; 2 % NULL talk or wrap
/// durations. Four 31-bit numbers from two hashes give every column, small
/// choices by mixed radix (`v / 36 % 3` …); `OFFSET 0` keeps each subquery
/// whole, so the hashes are computed once per row.
fn insert_sql() -> String {
    format!(
        "INSERT INTO interaction_resource_fact ({columns}) \
         SELECT id, \
           CASE WHEN agent THEN 1 + pick % $9::int8 % 3 ELSE 1 + pick % {QUEUES} % 3 END, \
           id / 2, v2 / 36 % 3 + 1, v2 / 108 % 3 + 1, \
           CASE WHEN agent THEN {AGENT_BASE} + pick % $9::int8 \
                ELSE {QUEUE_BASE} + pick % {QUEUES} END, \
           v2 % 36 + 1, \
           CASE WHEN v2 / 324 % 5 = 0 THEN NULL ELSE v2 / 1620 % 5 + 1 END, \
           st - st % 900, st, st + ring + talk + hold + acw, \
           (v2 / 8100 % 5 < 3)::int, \
           1, ring, talked, CASE WHEN v3 / 3000 % 50 = 0 THEN NULL ELSE talk END, \
           (hold > 0)::int, hold, (acw > 0)::int, \
           CASE WHEN v3 / 150000 % 50 = 0 THEN NULL ELSE acw END, \
           v2 / 40500 % 2, v2 / 81000 % 2 \
         FROM ( \
           SELECT id, st, v2, v3, v1 % 100 < 88 AS agent, v1 / 100 AS pick, talked, \
             v3 / 5 % 60 AS ring, \
             talked * (10 + v4 % 890) AS talk, \
             CASE WHEN talked = 1 AND v3 / 300 % 10 < 3 THEN 5 + v4 / 160200 % 115 \
                  ELSE 0 END AS hold, \
             talked * (v4 / 890 % 180) AS acw \
           FROM ( \
             SELECT id, st, h1 & 2147483647 AS v1, (h1 >> 32) & 2147483647 AS v2, \
               h2 & 2147483647 AS v3, (h2 >> 32) & 2147483647 AS v4, \
               ((h2 & 2147483647) % 5 < 4)::int AS talked \
             FROM ( \
               SELECT id, $4::int8 + (id - $3::int8) * $5::int8 / $6::int8 AS st, \
                 hashint8extended(id, $7::int8) AS h1, hashint8extended(id, $8::int8) AS h2 \
               FROM generate_series($1::int8, $2::int8) id OFFSET 0 \
             ) g OFFSET 0 \
           ) v OFFSET 0 \
         ) r",
        columns = super::IRF_COLUMNS,
    )
}

/// Inserts `rows` facts from `first_id`, `chunk` per statement.
async fn insert(
    c: &impl GenericClient,
    shape: &Shape,
    first_id: i64,
    rows: u64,
    chunk: u64,
    time: Timeline,
) -> Result<(), Error> {
    if rows == 0 {
        return Ok(());
    }
    let statement = c.prepare(&insert_sql()).await?;
    let (salt1, salt2) = (shape.salt(1), shape.salt(2));
    let chunk = chunk.max(1);
    let mut done = 0;
    while done < rows {
        let n = chunk.min(rows - done);
        let lo = first_id.saturating_add(signed(done));
        let hi = lo.saturating_add(signed(n) - 1);
        c.execute(
            &statement,
            &[
                &lo,
                &hi,
                &time.id0,
                &time.t0,
                &time.span,
                &time.count.max(1),
                &salt1,
                &salt2,
                &shape.agents(),
            ],
        )
        .await?;
        done += n;
    }
    Ok(())
}

fn history_timeline(shape: &Shape, facts: u64, first_id: i64) -> Timeline {
    Timeline {
        id0: first_id,
        t0: shape.begin(),
        span: shape.span(),
        count: signed(facts),
    }
}

/// Inserts `facts` facts with ids `first_id..first_id + facts`, starting in
/// id order at evenly spread times of `[shape.begin(), shape.end)`, in
/// statements of [`CHUNK`] rows: one transaction each on a [`Client`], or
/// all in the caller's transaction when `c` is one.
pub async fn history(
    c: &impl GenericClient,
    shape: &Shape,
    facts: u64,
    first_id: i64,
) -> Result<(), Error> {
    let time = history_timeline(shape, facts, first_id);
    insert(c, shape, first_id, facts, CHUNK, time).await
}

/// The rows `history(c, shape, rows, first_id)` writes, in transactions of
/// `txn_rows` rows (the last may be smaller), one `INSERT … SELECT` each:
/// what a source transaction of any size costs downstream.
pub async fn big_transactions(
    c: &Client,
    shape: &Shape,
    rows: u64,
    txn_rows: u64,
    first_id: i64,
) -> Result<(), Error> {
    let time = history_timeline(shape, rows, first_id);
    insert(c, shape, first_id, rows, txn_rows, time).await
}

/// The facts in `interaction_resource_fact` now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    pub rows: i64,
    /// The smallest and largest id (None when the table is empty).
    pub ids: Option<RangeInclusive<i64>>,
    /// The latest `start_ts`.
    pub last_start: Option<i64>,
}

impl Extent {
    /// The id after the largest (1 in an empty table).
    pub fn next_id(&self) -> i64 {
        self.ids.as_ref().map_or(1, |ids| ids.end() + 1)
    }
}

/// Counts the facts and reads their id range (one scan of the table).
pub async fn extent(c: &impl GenericClient) -> Result<Extent, Error> {
    let row = c
        .query_one(
            "SELECT count(*), min(interaction_resource_id), max(interaction_resource_id), \
               max(start_ts)::int8 \
             FROM interaction_resource_fact",
            &[],
        )
        .await?;
    let (first, last): (Option<i64>, Option<i64>) = (row.try_get(1)?, row.try_get(2)?);
    Ok(Extent {
        rows: row.try_get(0)?,
        ids: first.zip(last).map(|(a, b)| a..=b),
        last_start: row.try_get(3)?,
    })
}

/// Moves the facts with ids `$3 + ($4 + i * $5) % $6` for `i` in `$1..=$2`
/// (`$5` prime to `$6`: no fact twice) by `d` seconds around the window of
/// `$8` seconds from `$9`, with `d` in `[1 day, $8 - 1 day)`: the new start is
/// at least a day from the old one however the old one lies. Half of the
/// agents' facts also move to another agent of the same tenant (`$10`
/// agents), so the fact's tenant still holds. The duration is kept.
fn update_sql() -> String {
    let new_start = "($9::int8 + ((f.start_ts - $9::int8 + u.d) % $8::int8 + $8::int8) % $8::int8)";
    // Agent k = c + 3j of a tenant's m agents moves to j' = j + 1 + pick % (m - 1) mod m.
    let k = format!("(f.resource_key - {AGENT_BASE})");
    let m = format!("(($10::int8 - {k} % 3 + 2) / 3)");
    format!(
        "UPDATE interaction_resource_fact f SET \
           start_ts = {new_start}, \
           start_date_time_key = {new_start} - {new_start} % 900, \
           end_ts = {new_start} + (f.end_ts - f.start_ts), \
           resource_key = CASE \
             WHEN u.swap AND f.resource_key >= {AGENT_BASE} \
                  AND f.resource_key < {AGENT_BASE} + $10::int8 \
             THEN {AGENT_BASE} + {k} % 3 \
                  + 3 * (({k} / 3 + 1 + u.pick % greatest({m} - 1, 1)) % {m}) \
             ELSE f.resource_key END \
         FROM ( \
           SELECT $3::int8 + ($4::int8 + i * $5::int8) % $6::int8 AS id, \
             {DAY} + (h & 2147483647) % ($8::int8 - 2 * {DAY}) AS d, \
             ((h >> 32) & 2147483647) % 2 = 0 AS swap, \
             ((h >> 32) & 2147483647) / 2 AS pick \
           FROM ( \
             SELECT i, hashint8extended(i, $7::int8) AS h \
             FROM generate_series($1::int8, $2::int8) i OFFSET 0 \
           ) g \
         ) u \
         WHERE f.interaction_resource_id = u.id"
    )
}

fn gcd(mut a: i64, mut b: i64) -> i64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

/// A step through `0..n` that visits every position once before repeating
/// and spreads consecutive ones far apart (near `n` times the golden ratio).
fn stride(n: i64) -> i64 {
    let mut s = ((n as f64 * 0.618_033_988_75) as i64).max(1);
    while gcd(s, n) != 1 {
        s += 1;
    }
    s
}

/// The streaming shape of a benchmark over a large state: `new_facts` facts
/// inserted after the current ones (next ids, starts from `shape.end` or
/// after the latest start, at the table's rate of facts per `shape.days`)
/// and `updates` distinct facts of the table as it was (ids spread over its
/// whole range, at most its size) moved to a start at least a day away in
/// the last `max(shape.days, 3)` days before `shape.end`, half of the
/// agents' ones to another agent of the same tenant. Written in exactly
/// `txns` transactions (0 counts as 1) of equal shares of both, inserts
/// first; a transaction left with nothing writes nothing. The same table and
/// seed give the same changes.
pub async fn stream(
    c: &mut Client,
    shape: &Shape,
    new_facts: u64,
    updates: u64,
    txns: u64,
) -> Result<Written, Error> {
    let before = extent(&*c).await?;
    let first_new = before.next_id();
    let time = Timeline {
        id0: first_new,
        t0: before
            .last_start
            .map_or(shape.end, |s| shape.end.max(s + 1)),
        span: shape.span(),
        count: if before.rows > 0 {
            before.rows
        } else {
            signed(new_facts)
        },
    };
    let (low, n) = match &before.ids {
        Some(ids) => (*ids.start(), ids.end() - ids.start() + 1),
        None => (0, 0),
    };
    let updates = updates.min(u64::try_from(n).unwrap_or(0));
    let pick_salt = mix(shape.seed ^ mix(first_new as u64) as u64);
    let offset = if n > 0 { pick_salt.rem_euclid(n) } else { 0 };
    let step = if n > 0 { stride(n) } else { 1 };
    let move_span = i64::from(shape.days.max(3)) * DAY;
    let move_salt = shape.salt(3) ^ pick_salt;

    let insert_statement = c.prepare(&insert_sql()).await?;
    let update_statement = c.prepare(&update_sql()).await?;
    let (salt1, salt2) = (shape.salt(1), shape.salt(2));
    let txns = txns.max(1);
    let mut written = Written::default();
    for t in 0..txns {
        let (i_lo, i_hi) = (share(new_facts, t, txns), share(new_facts, t + 1, txns));
        let (u_lo, u_hi) = (share(updates, t, txns), share(updates, t + 1, txns));
        let tx = c.transaction().await?;
        if i_hi > i_lo {
            let lo = first_new.saturating_add(signed(i_lo));
            let hi = first_new.saturating_add(signed(i_hi) - 1);
            written.inserted += tx
                .execute(
                    &insert_statement,
                    &[
                        &lo,
                        &hi,
                        &time.id0,
                        &time.t0,
                        &time.span,
                        &time.count.max(1),
                        &salt1,
                        &salt2,
                        &shape.agents(),
                    ],
                )
                .await?;
        }
        if u_hi > u_lo {
            written.updated += tx
                .execute(
                    &update_statement,
                    &[
                        &signed(u_lo),
                        &(signed(u_hi) - 1),
                        &low,
                        &offset,
                        &step,
                        &n,
                        &move_salt,
                        &move_span,
                        &(shape.end - move_span),
                        &shape.agents(),
                    ],
                )
                .await?;
        }
        tx.commit().await?;
        if i_hi > i_lo || u_hi > u_lo {
            written.transactions += 1;
        }
    }
    Ok(written)
}
