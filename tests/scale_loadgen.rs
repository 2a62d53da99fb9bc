//! The benchmark-scale generator against a real PostgreSQL: facts in time
//! order over the shape's window, consistent with the dimensions, the same
//! for the same seed; the streaming shape's transactions, inserts and
//! moving updates; large transactions of the history's rows.

mod support;

use raa::loadgen::scale::{self, Shape, AGENT_BASE, QUEUES, QUEUE_BASE};
use raa::loadgen::Written;
use std::time::Instant;
use support::TestDb;
use tokio_postgres::Client;

fn small() -> Shape {
    Shape {
        agents: 50,
        days: 30,
        ..Shape::default()
    }
}

async fn one(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// An md5 of the whole fact table in id order.
async fn digest(c: &Client) -> String {
    c.query_one(
        "SELECT md5(string_agg(f::text, ',' ORDER BY interaction_resource_id)) \
         FROM interaction_resource_fact f",
        &[],
    )
    .await
    .expect("digest")
    .get(0)
}

/// A fresh database with the shape's dimensions.
async fn database(shape: &Shape) -> (TestDb, Client) {
    let db = TestDb::new().await;
    let c = db.client().await;
    scale::dimensions(&c, shape).await.expect("dimensions");
    (db, c)
}

/// A logical slot decoding what follows into text (`test_decoding`).
async fn slot(c: &Client, name: &str) {
    c.execute(
        "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
        &[&name],
    )
    .await
    .expect("create slot");
}

/// The transactions the slot decoded since it was created: per transaction
/// its IRF inserts and updates.
async fn decoded(c: &Client, name: &str) -> Vec<(u64, u64)> {
    let rows = c
        .query(
            "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL)",
            &[&name],
        )
        .await
        .expect("slot changes");
    let mut txns = Vec::new();
    for row in rows {
        let data: String = row.get(0);
        if data.starts_with("BEGIN") {
            txns.push((0, 0));
        } else if let Some(change) = data.strip_prefix("table public.interaction_resource_fact: ") {
            let last = txns.last_mut().expect("a change inside a transaction");
            if change.starts_with("INSERT") {
                last.0 += 1;
            } else if change.starts_with("UPDATE") {
                last.1 += 1;
            } else {
                panic!("unexpected change {data}");
            }
        }
    }
    txns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_time_ordered_consistent_and_deterministic() {
    let shape = small();
    let (facts, first) = (5_000_i64, 101_i64);
    let mut digests = Vec::new();
    for _ in 0..2 {
        let (_db, c) = database(&shape).await;
        // Idempotent.
        scale::dimensions(&c, &shape)
            .await
            .expect("dimensions again");
        scale::history(&c, &shape, facts as u64, first)
            .await
            .expect("history");
        let extent = scale::extent(&c).await.expect("extent");
        assert_eq!(extent.rows, facts);
        assert_eq!(
            extent.ids,
            Some(first..=first + facts - 1),
            "consecutive ids"
        );
        assert_eq!(extent.next_id(), first + facts);

        assert_eq!(
            one(&c, "SELECT count(*) FROM resource_").await,
            i64::from(shape.agents) + i64::from(QUEUES)
        );
        assert_eq!(
            one(&c, "SELECT count(*) FROM technical_descriptor").await,
            36
        );
        assert_eq!(
            one(
                &c,
                "SELECT technical_descriptor_key::int8 FROM technical_descriptor \
                 WHERE technical_result = 'Abandoned' AND resource_role = 'ReceivedConsult'"
            )
            .await,
            6,
            "keyed as the other generator keys them"
        );
        assert_eq!(one(&c, "SELECT count(*) FROM tenant").await, 3);
        assert_eq!(
            one(
                &c,
                "SELECT count(*) FROM (SELECT start_ts < lag(start_ts) OVER (ORDER BY \
                 interaction_resource_id) AS back FROM interaction_resource_fact) s WHERE back"
            )
            .await,
            0,
            "start_ts grows with the id"
        );
        let (begin, end) = (shape.begin(), shape.end);
        assert_eq!(begin, shape.end - i64::from(shape.days) * 86_400);
        assert_eq!(
            one(
                &c,
                &format!(
                    "SELECT count(*) FROM interaction_resource_fact WHERE NOT (\
                     start_ts >= {begin} AND start_ts < {end} \
                     AND start_date_time_key = start_ts - start_ts % 900 \
                     AND end_ts >= start_ts)"
                )
            )
            .await,
            0,
            "starts within the window, interval keys and ends follow them"
        );
        // The first and last fact lie near the window's ends: spread evenly.
        assert!(extent.last_start.expect("a start") >= end - 86_400);
        assert!(
            one(
                &c,
                "SELECT min(start_ts)::int8 FROM interaction_resource_fact"
            )
            .await
                < begin + 86_400
        );
        let agent_rows = one(
            &c,
            &format!(
                "SELECT count(*) FROM interaction_resource_fact f JOIN resource_ r \
                 USING (resource_key) WHERE r.resource_type = 'Agent' \
                 AND f.tenant_key = 1 + (f.resource_key - {AGENT_BASE}) % 3"
            ),
        )
        .await;
        let queue_rows = one(
            &c,
            &format!(
                "SELECT count(*) FROM interaction_resource_fact f JOIN resource_ r \
                 USING (resource_key) WHERE r.resource_type = 'Queue' \
                 AND f.tenant_key = 1 + (f.resource_key - {QUEUE_BASE}) % 3"
            ),
        )
        .await;
        assert_eq!(
            agent_rows + queue_rows,
            facts,
            "every fact's resource exists, with its tenant"
        );
        assert!(
            (facts * 84 / 100..facts * 92 / 100).contains(&agent_rows),
            "about 88 % agents: {agent_rows}"
        );
        assert_eq!(
            one(
                &c,
                "SELECT count(*) FROM interaction_resource_fact WHERE least(ring_count, \
                 ring_duration, talk_count, talk_duration, hold_count, hold_duration, \
                 after_call_work_count, after_call_work_duration, cons_init_count, \
                 cons_rcv_count) < 0 \
                 OR media_type_key NOT BETWEEN 1 AND 3 \
                 OR interaction_type_key NOT BETWEEN 1 AND 3 \
                 OR technical_descriptor_key NOT BETWEEN 1 AND 36 \
                 OR interaction_descriptor_key NOT BETWEEN 1 AND 5 \
                 OR irf_anchor NOT IN (0, 1)"
            )
            .await,
            0,
            "columns in their ranges"
        );
        for (sql, low, high) in [
            ("irf_anchor = 1", 55, 65),
            ("talk_count = 1", 75, 85),
            ("interaction_descriptor_key IS NULL", 16, 24),
            ("hold_count = 1", 20, 28),
        ] {
            let n = one(
                &c,
                &format!("SELECT count(*) FROM interaction_resource_fact WHERE {sql}"),
            )
            .await;
            assert!(
                (facts * low / 100..facts * high / 100).contains(&n),
                "{sql}: {n} of {facts}"
            );
        }
        assert_eq!(
            one(
                &c,
                "SELECT count(DISTINCT technical_descriptor_key) FROM interaction_resource_fact"
            )
            .await,
            36
        );
        digests.push(digest(&c).await);
    }
    assert_eq!(digests[0], digests[1], "the same seed writes the same rows");

    let (_db, c) = database(&shape).await;
    let other = Shape { seed: 2, ..shape };
    scale::history(&c, &other, facts as u64, first)
        .await
        .expect("history");
    assert_ne!(digest(&c).await, digests[0], "another seed, other rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_mixes_inserts_and_moving_updates_in_exactly_its_transactions() {
    let shape = small();
    let (history, new_facts, updates, txns) = (4_000_i64, 600_u64, 900_u64, 6_u64);
    let mut digests = Vec::new();
    for _ in 0..2 {
        let (db, mut c) = database(&shape).await;
        scale::history(&c, &shape, history as u64, 1)
            .await
            .expect("history");
        c.batch_execute("CREATE TABLE before AS SELECT * FROM interaction_resource_fact")
            .await
            .expect("copy");
        slot(&c, &db.name).await;

        let written = scale::stream(&mut c, &shape, new_facts, updates, txns)
            .await
            .expect("stream");
        assert_eq!(
            written,
            Written {
                inserted: new_facts,
                updated: updates,
                deleted: 0,
                transactions: txns,
            }
        );
        let decoded = decoded(&c, &db.name).await;
        assert_eq!(
            decoded,
            vec![(new_facts / txns, updates / txns); txns as usize],
            "equal transactions, each inserting and updating"
        );

        let extent = scale::extent(&c).await.expect("extent");
        assert_eq!(extent.rows, history + new_facts as i64);
        assert_eq!(extent.ids, Some(1..=history + new_facts as i64));
        let end = shape.end;
        assert_eq!(
            one(
                &c,
                &format!(
                    "SELECT count(*) FROM (SELECT start_ts, lag(start_ts) OVER (ORDER BY \
                     interaction_resource_id) AS prev FROM interaction_resource_fact \
                     WHERE interaction_resource_id > {history}) s \
                     WHERE start_ts < {end} OR start_ts < prev \
                     OR start_ts >= {end} + 30 * 86400"
                )
            )
            .await,
            0,
            "new facts after the history, in time order, at its rate"
        );
        assert_eq!(
            one(
                &c,
                "SELECT count(*) FROM interaction_resource_fact f JOIN before b \
                 USING (interaction_resource_id) WHERE f IS DISTINCT FROM b"
            )
            .await,
            updates as i64,
            "distinct old facts updated"
        );
        let begin = shape.begin();
        assert_eq!(
            one(
                &c,
                &format!(
                    "SELECT count(*) FROM interaction_resource_fact f JOIN before b \
                     USING (interaction_resource_id) WHERE f IS DISTINCT FROM b AND NOT (\
                     abs(f.start_ts - b.start_ts) >= 86400 \
                     AND f.start_ts >= {begin} AND f.start_ts < {end} \
                     AND f.start_date_time_key = f.start_ts - f.start_ts % 900 \
                     AND f.end_ts - f.start_ts = b.end_ts - b.start_ts \
                     AND f.tenant_key = b.tenant_key \
                     AND (f.resource_key = b.resource_key OR (b.resource_key >= {AGENT_BASE} \
                       AND f.resource_key BETWEEN {AGENT_BASE} AND {AGENT_BASE} + {agents} - 1 \
                       AND f.tenant_key = 1 + (f.resource_key - {AGENT_BASE}) % 3)) \
                     AND (f.interaction_id, f.media_type_key, f.talk_duration, \
                          f.technical_descriptor_key) \
                         IS NOT DISTINCT FROM (b.interaction_id, b.media_type_key, \
                          b.talk_duration, b.technical_descriptor_key))",
                    agents = shape.agents
                )
            )
            .await,
            0,
            "each update moves its fact a day or more within the history, \
             to another agent of the same tenant at most"
        );
        let reassigned = one(
            &c,
            "SELECT count(*) FROM interaction_resource_fact f JOIN before b \
             USING (interaction_resource_id) WHERE f.resource_key <> b.resource_key",
        )
        .await;
        assert!(
            (updates as i64 * 30 / 100..updates as i64 * 60 / 100).contains(&reassigned),
            "about half of the agents' facts change agent: {reassigned}"
        );
        // Updates reach over the whole history.
        assert!(
            one(
                &c,
                "SELECT max(interaction_resource_id) - min(interaction_resource_id) \
                 FROM interaction_resource_fact f JOIN before b \
                 USING (interaction_resource_id) WHERE f IS DISTINCT FROM b"
            )
            .await
                > history * 9 / 10
        );
        c.batch_execute("DROP TABLE before").await.expect("drop");
        digests.push(digest(&c).await);
    }
    assert_eq!(
        digests[0], digests[1],
        "the same seed makes the same changes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_transactions_write_the_history_in_transactions_of_a_size() {
    let shape = small();
    let (db, c) = database(&shape).await;
    slot(&c, &db.name).await;
    scale::big_transactions(&c, &shape, 2_500, 1_000, 7)
        .await
        .expect("big transactions");
    assert_eq!(
        decoded(&c, &db.name).await,
        vec![(1_000, 0), (1_000, 0), (500, 0)]
    );
    let extent = scale::extent(&c).await.expect("extent");
    assert_eq!((extent.rows, extent.ids), (2_500, Some(7..=2_506)));

    let (_other, h) = database(&shape).await;
    scale::history(&h, &shape, 2_500, 7).await.expect("history");
    assert_eq!(
        digest(&c).await,
        digest(&h).await,
        "the history's rows, in other transactions"
    );
}

/// The generator's speed: `cargo test --release --test scale_loadgen --
/// --ignored --nocapture` (`RAA_SCALE_ROWS` rows, default 1 000 000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of a million rows"]
async fn history_rate() {
    let rows: u64 = std::env::var("RAA_SCALE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let shape = Shape::default();
    let (_db, c) = database(&shape).await;
    let t = Instant::now();
    scale::history(&c, &shape, rows, 1).await.expect("history");
    let secs = t.elapsed().as_secs_f64();
    println!(
        "history: {rows} rows in {secs:.2} s, {:.0} rows/s",
        rows as f64 / secs
    );
    assert_eq!(scale::extent(&c).await.expect("extent").rows, rows as i64);
}
