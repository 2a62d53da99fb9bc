//! Exact retraction in the engine, without PostgreSQL: any sequence of
//! inserts, updates, deletes and dimension changes (state types, tenant
//! zones, technical descriptors, resources; rows that arrive after their
//! facts, and rows deleted) over every fact table leaves the same aggregate
//! rows as loading only the final rows into an empty state. Interval
//! periods open, close, move and change type; maxima lose their maximal
//! fact; tables are truncated. The history runs with a work bound of a few
//! dozen entries, so its batches spill to disk mid-transaction and are read
//! back from there.

use proptest::prelude::*;
use raa::aggregate::{spilled_rows, Engine, Settings, Work};
use raa::decode::{Change, Transaction, Tuple};
use raa::schema::{RowKey, Table, Value};
use raa::Lsn;
use std::collections::BTreeMap;
use std::sync::Arc;

type Rows = BTreeMap<(u16, raa::aggregate::Level, i64, Vec<Option<i64>>), Vec<Option<i64>>>;

/// 2026-03-07T00:00Z: periods reach over New York's spring-forward.
const BASE: i64 = 1_772_841_600;
const ZONES: [Option<&str>; 3] = [Some("America/New_York"), Some("Asia/Kolkata"), None];
const STATE_TYPES: [&str; 3] = ["Ready", "Busy", "NotReady"];
/// Technical descriptors: (technical_result, resource_role).
const DESCRIPTORS: [(&str, &str); 3] = [
    ("Abandoned", "Received"),
    ("Completed", "Received"),
    ("Completed", "Initiated"),
];

#[derive(Clone, Debug)]
enum Op {
    /// A state (key, tenant, state key, start offset, length; `None` = open).
    State(i64, i64, i64, i64, Option<i64>),
    Session(i64, i64, i64, Option<i64>),
    /// A segment (key, tenant, queue, start offset, mediation duration).
    Segment(i64, i64, i64, i64, i64),
    /// An IRF row (key, tenant, anchor, start offset, talk duration,
    /// technical descriptor, resource).
    Irf(i64, i64, i64, i64, i64, i64, i64),
    Delete(Table, i64),
    Truncate(Table),
    StateType(i64, usize),
    Zone(i64, usize),
    Descriptor(i64, usize),
    /// A resource (key, whether it is an agent).
    Resource(i64, bool),
}

fn ints(values: &[Option<i64>]) -> Tuple {
    Tuple(
        values
            .iter()
            .map(|v| Some(v.map_or(Value::Null, Value::Int)))
            .collect(),
    )
}

fn text_row(key: i64, texts: &[Option<&str>]) -> Tuple {
    let mut out = vec![Some(Value::Int(key))];
    out.extend(
        texts
            .iter()
            .map(|t| Some(t.map_or(Value::Null, |s| Value::Text(s.to_owned())))),
    );
    Tuple(out)
}

fn change(op: &Op) -> Change {
    let upsert = |table, new| Change::Update {
        table,
        old_key: None,
        new,
    };
    match *op {
        Op::State(k, t, s, start, len) => upsert(
            Table::SmResState,
            ints(&[
                Some(k),
                Some(t),
                Some(7),
                Some(1),
                Some(s),
                Some(BASE + start),
                len.map(|l| BASE + start + l),
                len,
            ]),
        ),
        Op::Session(k, t, start, len) => upsert(
            Table::SmResSession,
            ints(&[
                Some(k),
                Some(t),
                Some(7),
                Some(1),
                Some(BASE + start),
                len.map(|l| BASE + start + l),
                len,
            ]),
        ),
        Op::Segment(k, t, q, start, d) => upsert(
            Table::Msf,
            ints(&[
                Some(k),
                Some(t),
                Some(k),
                Some(1),
                Some(1),
                Some(q),
                Some(1),
                None,
                Some(BASE + start),
                None,
                Some(d),
                Some(1),
                Some(0),
                (d % 2 == 0).then_some(k),
            ]),
        ),
        Op::Irf(k, t, anchor, start, talk, descriptor, resource) => {
            let mut v = vec![Some(1); 22];
            v[0] = Some(k);
            v[1] = Some(t);
            v[5] = Some(resource);
            v[6] = Some(descriptor);
            v[9] = Some(BASE + start);
            v[11] = Some(anchor);
            v[15] = Some(talk);
            upsert(Table::Irf, ints(&v))
        }
        Op::Delete(table, k) => Change::Delete {
            table,
            key: RowKey(k),
        },
        Op::Truncate(table) => Change::Truncate {
            tables: vec![table],
        },
        Op::StateType(k, ty) => upsert(
            Table::ResourceState,
            text_row(k, &[Some(STATE_TYPES[ty]), Some("s")]),
        ),
        Op::Zone(k, z) => upsert(Table::Tenant, text_row(k, &[Some("t"), ZONES[z]])),
        Op::Descriptor(k, d) => {
            let (result, role) = DESCRIPTORS[d];
            upsert(
                Table::TechnicalDescriptor,
                text_row(k, &[Some(result), None, Some(role)]),
            )
        }
        Op::Resource(k, agent) => upsert(
            Table::Resource,
            text_row(
                k,
                &[Some(if agent { "Agent" } else { "Queue" }), Some("r"), None],
            ),
        ),
    }
}

fn op() -> impl Strategy<Value = Op> {
    let key = 1_i64..6;
    // Tenant 3, state 3, descriptor 2 and resource 2 are not among the
    // first dimension rows: their facts come first, if they come at all.
    let tenant = 1_i64..4;
    let start = -7_200_i64..2 * 86_400;
    let len = prop_oneof![
        Just(None),
        (0_i64..40_000).prop_map(Some),
        (0_i64..300_000).prop_map(Some)
    ];
    let table = prop_oneof![
        Just(Table::SmResState),
        Just(Table::SmResSession),
        Just(Table::Msf),
        Just(Table::Irf),
        Just(Table::Tenant),
        Just(Table::ResourceState),
        Just(Table::TechnicalDescriptor),
        Just(Table::Resource)
    ];
    prop_oneof![
        (
            key.clone(),
            tenant.clone(),
            1_i64..4,
            start.clone(),
            len.clone()
        )
            .prop_map(|(k, t, s, st, l)| Op::State(k, t, s, st, l)),
        (key.clone(), tenant.clone(), start.clone(), len)
            .prop_map(|(k, t, st, l)| Op::Session(k, t, st, l)),
        (
            key.clone(),
            tenant.clone(),
            1000_i64..1002,
            start.clone(),
            0_i64..4
        )
            .prop_map(|(k, t, q, st, d)| Op::Segment(k, t, q, st, d * 100)),
        (
            key.clone(),
            tenant.clone(),
            0_i64..2,
            start,
            0_i64..3,
            1_i64..3,
            1_i64..3
        )
            .prop_map(|(k, t, a, st, d, td, r)| Op::Irf(k, t, a, st, d * 60, td, r)),
        (table.clone(), key).prop_map(|(t, k)| Op::Delete(t, k)),
        table.prop_map(Op::Truncate),
        (1_i64..4, 0_usize..3).prop_map(|(k, ty)| Op::StateType(k, ty)),
        (1_i64..4, 0_usize..3).prop_map(|(k, z)| Op::Zone(k, z)),
        (1_i64..3, 0_usize..3).prop_map(|(k, d)| Op::Descriptor(k, d)),
        (1_i64..3, any::<bool>()).prop_map(|(k, a)| Op::Resource(k, a)),
    ]
}

/// Applies transactions of changes, committing the state after each, and
/// returns the aggregate rows as a sink would hold them and how many batches
/// spilled. `work_entries`: the engine's memory bound for a batch.
fn run(txns: &[Vec<Change>], work_entries: usize) -> (Rows, usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(raa_state::Store::open(dir.path()).unwrap());
    let mut engine = Engine::open(store.clone(), Settings::default()).unwrap();
    engine.set_work_entries(work_entries);
    let mut rows = Rows::new();
    let mut spills = 0;
    for (i, changes) in txns.iter().enumerate() {
        let mut work = Work::default();
        let txn = Transaction {
            xid: i as u32,
            commit_lsn: Lsn(100 + i as u64 * 10),
            end_lsn: Lsn(108 + i as u64 * 10),
            commit_ts_micros: 0,
            changes: changes.clone(),
        };
        let end = txn.end_lsn;
        engine.apply(&mut work, txn).unwrap();
        let out = engine.finish(work).unwrap();
        let written = match &out.spilled {
            Some(s) => spilled_rows(s).map(Result::unwrap).collect(),
            None => out.rows,
        };
        for r in written {
            let id = (r.family, r.level, r.bucket, r.group);
            match r.values {
                Some(v) => rows.insert(id, v),
                None => rows.remove(&id),
            };
        }
        match out.spilled {
            Some(s) => {
                spills += 1;
                store.commit_provisional(s, out.state, end).unwrap();
            }
            None => store.commit(out.state, end).unwrap(),
        }
    }
    (rows, spills)
}

fn dims() -> Vec<Change> {
    let mut out = vec![
        change(&Op::Zone(1, 0)),
        change(&Op::Zone(2, 1)),
        change(&Op::StateType(1, 0)),
        change(&Op::StateType(2, 1)),
    ];
    out.push(Change::Insert {
        table: Table::TechnicalDescriptor,
        new: text_row(1, &[Some("Abandoned"), None, Some("Received")]),
    });
    out.push(Change::Insert {
        table: Table::Resource,
        new: text_row(1, &[Some("Agent"), Some("a"), None]),
    });
    out
}

/// Streams `ops` (after the dimensions) cut into transactions at `cuts`,
/// with the work bound `work_entries`; returns its rows, how many batches
/// spilled, and the rows of loading only the final images (never spilled).
fn stream_and_load(ops: &[Op], cuts: &[usize], work_entries: usize) -> (Rows, usize, Rows) {
    let mut txns = vec![dims()];
    let mut current = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        current.push(change(op));
        if cuts.contains(&i) {
            txns.push(std::mem::take(&mut current));
        }
    }
    txns.push(current);
    let (streamed, spills) = run(&txns, work_entries);

    // The final rows: the last image of every row still present.
    let mut last: BTreeMap<(Table, i64), Change> = BTreeMap::new();
    for c in dims().into_iter().chain(ops.iter().map(change)) {
        match &c {
            Change::Delete { table, key } => {
                last.remove(&(*table, key.0));
            }
            Change::Update { table, new, .. } | Change::Insert { table, new } => {
                let Some(Some(Value::Int(k))) = new.0.first() else {
                    unreachable!()
                };
                last.insert((*table, *k), c.clone());
            }
            Change::Truncate { tables } => last.retain(|(t, _), _| !tables.contains(t)),
        }
    }
    // Dimensions first, then facts, as one load.
    let (d, f): (Vec<_>, Vec<_>) = last
        .into_iter()
        .partition(|((t, _), _)| raa::aggregate::family::Dim::of_table(*t).is_some());
    let load: Vec<Change> = d.into_iter().chain(f).map(|(_, c)| c).collect();
    let (loaded, _) = run(&[load], usize::MAX);
    (streamed, spills, loaded)
}

/// Every kind of read a spilled batch makes: records, accumulators and
/// index entries on disk (a dimension change re-derives a spilled fact), a
/// truncate of facts on disk, a delete, a later transaction over the state.
#[test]
fn a_history_that_spills_equals_loading_the_final_rows() {
    let ops = [
        Op::Irf(1, 1, 0, 0, 60, 1, 1),
        Op::Segment(2, 1, 1000, 3_600, 200),
        Op::State(1, 1, 1, 0, Some(40_000)),
        Op::Session(1, 1, 0, Some(7_200)),
        Op::StateType(1, 1),
        Op::Zone(1, 1),
        Op::Irf(1, 2, 1, 86_400, 120, 1, 1),
        Op::Truncate(Table::SmResSession),
        Op::Session(2, 2, 600, Some(300)),
        Op::Delete(Table::Msf, 2),
        Op::Segment(3, 2, 1001, 7_200, 100),
        Op::Zone(2, 0),
        // Facts before their tenant, state, descriptor and resource rows.
        Op::State(2, 3, 3, 1_800, Some(600)),
        Op::Irf(2, 3, 0, 3_600, 60, 2, 2),
        Op::Segment(4, 3, 1000, 900, 300),
        Op::Zone(3, 2),
        Op::Descriptor(2, 0),
        Op::Resource(2, true),
        Op::StateType(3, 1),
        // Present rows deleted, then back.
        Op::Delete(Table::TechnicalDescriptor, 1),
        Op::Delete(Table::Tenant, 1),
        Op::Descriptor(1, 2),
        Op::Zone(1, 0),
        Op::Delete(Table::ResourceState, 3),
    ];
    let (streamed, spills, loaded) = stream_and_load(&ops, &[8, 14, 18], 10);
    assert!(spills >= 2, "{spills} spilled batches");
    assert!(!loaded.is_empty());
    assert_eq!(streamed, loaded);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_history_equals_loading_the_final_rows(
        ops in proptest::collection::vec(op(), 1..40),
        cuts in proptest::collection::vec(0_usize..40, 0..6),
        work_entries in prop_oneof![Just(usize::MAX), 1_usize..60],
    ) {
        let (streamed, _, loaded) = stream_and_load(&ops, &cuts, work_entries);
        prop_assert_eq!(streamed, loaded);
    }
}
