//! Micro-benchmarks of the pure stages, per change, for each fact table:
//! pgoutput decode + column mapping, and aggregation into the state (sled in
//! a temp dir holding the dimension rows the facts reference, no sink).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use raa::aggregate::{Engine, Level, Settings, Work};
use raa::decode::pgoutput::{self, encode, ColumnDef, Datum, Message, RelationBody, TupleData};
use raa::decode::{Change, Transaction, Tuple, TxnAssembler};
use raa::schema::{Kind, TableSpec, Value, IRF, MSF, RESOURCE, RESOURCE_STATE, SM_RES_SESSION};
use raa::schema::{SM_RES_STATE, TECHNICAL_DESCRIPTOR, TENANT};
use raa_state::Lsn;
use std::sync::Arc;

const DAY: i64 = 1_774_569_600;
const STATE_TYPES: [&str; 4] = ["Ready", "NotReady", "Busy", "AfterCallWork"];

/// The fact tables, each with its relation id and how long its periods last.
const FACTS: [(&TableSpec, u32, i64); 4] = [
    (&IRF, 1, 900),
    (&MSF, 2, 300),
    (&SM_RES_STATE, 3, 1_800),
    (&SM_RES_SESSION, 4, 8 * 3_600),
];

fn relation(spec: &'static TableSpec, id: u32) -> Message<'static> {
    Message::Relation(RelationBody {
        id,
        namespace: "public",
        name: spec.name,
        replica_identity: b'd',
        columns: spec
            .columns
            .iter()
            .map(|c| ColumnDef {
                flags: 0,
                name: c.name,
                type_oid: if matches!(c.kind, Kind::Int) { 20 } else { 25 },
                type_modifier: -1,
            })
            .collect(),
    })
}

/// Column values of fact `id` as text: a period of up to `period` seconds
/// in the day, keys that find the dimension rows of [`dimensions`].
fn fact_texts(spec: &TableSpec, id: i64, period: i64) -> Vec<String> {
    let start = DAY + id * 7 % 86_400;
    spec.columns
        .iter()
        .enumerate()
        .map(|(i, c)| match c.name {
            _ if i == 0 => id.to_string(),
            "start_ts" => start.to_string(),
            "end_ts" => (start + 30 + id * 13 % period).to_string(),
            "start_date_time_key" => (start - start % 900).to_string(),
            "tenant_key" => (1 + id % 3).to_string(),
            "resource_key" => (1 + id % 50).to_string(),
            "resource_state_key" => (1 + id % 4).to_string(),
            "technical_descriptor_key" => (1 + id % 8).to_string(),
            _ => ((id + i as i64) % 40).to_string(),
        })
        .collect()
}

fn insert_bytes(spec: &TableSpec, rel: u32, id: i64, period: i64) -> Vec<u8> {
    let texts = fact_texts(spec, id, period);
    let tuple = TupleData(texts.iter().map(|t| Datum::Text(t.as_bytes())).collect());
    encode::message(&Message::Insert {
        relation_id: rel,
        new: tuple,
    })
}

/// The dimension rows the facts reference: three zoned tenants, 50 agents,
/// eight technical descriptors and four state types.
fn dimensions() -> Transaction {
    let zones = ["America/New_York", "Asia/Kolkata", "Europe/Berlin"];
    let mut changes = Vec::new();
    for (spec, n) in [
        (&TENANT, 3),
        (&RESOURCE, 50),
        (&TECHNICAL_DESCRIPTOR, 8),
        (&RESOURCE_STATE, 4),
    ] {
        for key in 1..=n {
            let values = spec
                .columns
                .iter()
                .map(|c| {
                    Some(match (c.kind, c.name) {
                        (Kind::Int, _) => Value::Int(key),
                        (_, "time_zone") => Value::Text(zones[key as usize - 1].into()),
                        (_, "resource_type") => Value::Text("Agent".into()),
                        (_, "state_type") => Value::Text(STATE_TYPES[key as usize - 1].into()),
                        (_, "technical_result") => Value::Text("Completed".into()),
                        (_, "resource_role") => Value::Text("Received".into()),
                        _ => Value::Text(format!("{}{key}", c.name)),
                    })
                })
                .collect();
            changes.push(Change::Insert {
                table: spec.table,
                new: Tuple(values),
            });
        }
    }
    Transaction {
        xid: 1,
        commit_lsn: Lsn(50),
        end_lsn: Lsn(58),
        commit_ts_micros: 0,
        changes,
    }
}

fn assembler() -> TxnAssembler {
    let mut asm = TxnAssembler::default();
    for (spec, rel, _) in FACTS {
        asm.push(&relation(spec, rel)).unwrap();
    }
    asm
}

fn transaction(msgs: &[Vec<u8>]) -> Transaction {
    let mut asm = assembler();
    asm.begin(Lsn(100), 1, 0).unwrap();
    for m in msgs {
        asm.push(&pgoutput::decode(m).unwrap()).unwrap();
    }
    asm.commit(Lsn(100), Lsn(108), 0).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("per change");
    for (spec, rel, period) in FACTS {
        let short = spec.name;
        let msgs: Vec<Vec<u8>> = (0..1_000)
            .map(|id| insert_bytes(spec, rel, id, period))
            .collect();
        g.throughput(Throughput::Elements(msgs.len() as u64));
        g.bench_function(format!("decode + map 1000 {short} inserts"), |b| {
            let mut asm = assembler();
            b.iter(|| {
                asm.begin(Lsn(100), 1, 0).unwrap();
                for m in &msgs {
                    asm.push(&pgoutput::decode(m).unwrap()).unwrap();
                }
                asm.commit(Lsn(100), Lsn(108), 0).unwrap()
            })
        });
        let txn = transaction(&msgs);
        g.bench_function(
            format!("aggregate 1000 {short} inserts (sled, no sink)"),
            |b| {
                let dir = tempfile::tempdir().unwrap();
                let store = Arc::new(raa_state::Store::open(dir.path()).unwrap());
                let mut engine = Engine::open(store.clone(), Settings::default()).unwrap();
                let mut work = Work::default();
                engine.apply(&mut work, dimensions()).unwrap();
                store
                    .commit(engine.finish(work).unwrap().state, Lsn(58))
                    .unwrap();
                // The copy the engine consumes is made outside the timing.
                b.iter_batched(
                    || txn.clone(),
                    |txn| {
                        let mut work = Work::default();
                        engine.apply(&mut work, txn).unwrap();
                        engine.finish(work).unwrap()
                    },
                    criterion::BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
    let mut g = c.benchmark_group("interval split");
    let tz = raa::aggregate::bucket::zone(Some("America/New_York")).unwrap();
    let mut cal = raa::aggregate::Calendar::new(tz);
    let start = 1_793_480_000; // the evening before New York's 2026 fall-back
    for (name, hours) in [
        ("15 minutes", 0.25),
        ("8-hour session", 8.0),
        ("4-day session", 96.0),
    ] {
        let end = start + (hours * 3600.0) as i64;
        g.bench_function(format!("{name}, seven levels"), |b| {
            b.iter(|| {
                raa::aggregate::interval::split(start, end, &Level::ALL, &mut cal, 900).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
